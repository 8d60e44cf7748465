"""What every stage of a tick reads: the project as the engine runs it, and the store.

A :class:`Context` is made once per project (again on every reload); the stages keep no other
project state of their own. :class:`Carry` is what outlives a reload: the enrollments an event
of this tick resumed, and the engine's own writes the condition stage must not count as changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from engine.language import ir
from engine.runtime.sqlcond import Compiled, CondCompiler
from engine.runtime.store import Store


@dataclass
class TickResult:
    """What one tick did."""

    now: dt.datetime
    events: int = 0
    entered: int = 0
    advanced: int = 0
    queued: int = 0  # outbox rows written (push, multicast, reply, menu_link)
    capped: int = 0
    skipped: int = 0  # blocked or holdout friends
    exited: int = 0
    conditions: bool = False
    failed: int = 0  # events set aside and steps that failed for one friend (with the reason)


@dataclass
class Carry:
    """Engine state that outlives a reload of the project."""

    #: enrollments an event of this tick resumed (``wait for``): walked after all others
    resumed: set[int] = field(default_factory=set)
    #: changes the engine made for its own bookkeeping (no condition reads them)
    noise: int = 0


def rule_version(rule: ir.Rule) -> str:
    """The rule's compiled version, or a hash of its compiled form when none was given."""
    return (
        rule.version
        or hashlib.sha256(
            repr(
                (
                    rule.trigger,
                    rule.steps,
                    rule.entry,
                    rule.exit_when,
                    rule.reenter,
                    rule.window,
                    rule.priority,
                    rule.split,
                    rule.holdout,
                )
            ).encode()
        ).hexdigest()[:16]
    )


class Context:
    """The project, its settings and the store, with what the stages derive from the project
    once: rule versions, step positions, compiled conditions, JSON texts of step lists."""

    def __init__(self, project: ir.Project, store: Store, carry: Carry):
        self.project = project
        self.store = store
        self.carry = carry
        self.rules = project.rules
        self.settings = project.settings
        self.tz = project.settings.tz
        self.versions = {name: rule_version(r) for name, r in project.rules.items()}
        self._index = {name: {s.id: i for i, s in enumerate(r.steps)} for name, r in project.rules.items()}
        self._compilers = {
            flag: CondCompiler(project.segments, with_enrollment=flag, dialect="postgresql" if store.pg else "sqlite")
            for flag in (True, False)
        }
        self._compiled: dict[tuple[ir.Cond, bool], Compiled] = {}
        self._json: dict[Any, str] = {}

    def position(self, rule: str, step_id: str | None) -> int | None:
        """The index of ``step_id`` in the current version of ``rule`` (None: not there)."""
        return self._index[rule].get(step_id) if step_id is not None else None

    def cond(self, cond: ir.Cond, with_enrollment: bool) -> Compiled:
        """``cond`` compiled to SQL once (:mod:`engine.runtime.sqlcond`); ``with_enrollment``: evaluated
        for an enrollment ``e`` (a step's ``if``, ``exit when``) or for a friend alone."""
        key = (cond, with_enrollment)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compilers[with_enrollment].compile(cond)
        return compiled

    def encode(self, value: Any) -> str:
        """JSON text of a step list or message names, made once per distinct value."""
        text = self._json.get(value)
        if text is None:
            if len(self._json) > 10000:
                self._json.clear()
            text = self._json[value] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return text
