"""Stage 3 of a tick: condition triggers, on a condition tick.

The condition, the entry filter and the re-entry policy are one SQL read over all friends; the
friends it finds are enrolled in chunks like an audience. A rule whose last check entered nobody
is not checked again while nothing has changed that could change the answer (see
:meth:`ConditionTriggers.still_quiet`).
"""

from __future__ import annotations

import math

from engine.language import ir, timeutil
from engine.runtime import sqlcond
from engine.stages.context import Context, TickResult
from engine.stages.entry import Entry


class ConditionTriggers:
    """The condition-triggered rules of the context's project. ``interval`` (seconds, 0 =
    every tick) sets how often they are checked, in slots aligned to local midnight."""

    def __init__(self, ctx: Context, entry: Entry, interval: int = 0):
        self.ctx = ctx
        self.entry = entry
        self.interval = interval
        #: rule -> (database changes, moment, next moment time alone may change it) of its last
        #: check, when that check entered nobody
        self._quiet: dict[str, tuple[tuple[int, int], int, float | None]] = {}

    def slot(self, now: int) -> tuple[bool, str | None]:
        """Whether condition triggers are checked now, and the slot to record once they were."""
        if not self.interval:
            return True, None
        day, slot = timeutil.boundary_index(now, self.interval, self.ctx.tz)
        key = f"{day}#{slot}"
        if self.ctx.store.get_meta("engine.condition_slot") == key:
            return False, None
        return True, key

    def run(self, now: int, result: TickResult) -> None:
        s = self.ctx.store
        for rule in self.ctx.rules.values():
            if not isinstance(rule.trigger, ir.ConditionTrigger):
                continue
            if self.still_quiet(rule, now):
                continue
            before = s.total_changes
            entered = self.entry.audience(rule, now, rule.trigger.cond, None, rule.reenter)
            result.entered += entered
            if entered:
                self._quiet.pop(rule.name, None)
            else:
                self.ctx.carry.noise += s.total_changes - before  # its scratch rows only
                self._quiet[rule.name] = (self._changes(), now, None)

    def quiet_until(self, now: int) -> float:
        """The first moment at or after ``now`` at which a condition check may enter somebody,
        as far as the last checks tell (:meth:`still_quiet`): ``now`` when a rule must be
        checked now, infinity when none can before something changes the database."""
        until = math.inf
        for rule in self.ctx.rules.values():
            if isinstance(rule.trigger, ir.ConditionTrigger):
                if not self.still_quiet(rule, now):
                    return now
                until = min(until, self._quiet[rule.name][2])
        return until

    def _changes(self) -> tuple[int, int]:
        """Changes any connection made to the database, less the engine's bookkeeping."""
        own, others = self.ctx.store.change_counts()
        return own - self.ctx.carry.noise, others

    def still_quiet(self, rule: ir.Rule, now: int) -> bool:
        """Whether checking ``rule``'s condition now must enter nobody, as its last check did:
        nothing in the database changed since, and no term counting back from now
        (``within``, ``older than``, ``friend for``, ``reenter after``) crosses a stored time
        between then and now (:func:`engine.runtime.sqlcond.change_moments`). A check costs a pass over
        every friend; a quiet night of an account (and most hours of a simulation) skips it."""
        memo = self._quiet.get(rule.name)
        if memo is None or now < memo[1] or memo[0] != self._changes():
            return False
        until = memo[2]
        if until is None:
            until = self._next_change(rule, memo[1])
            self._quiet[rule.name] = (memo[0], memo[1], until)
        return now < until

    def _next_change(self, rule: ir.Rule, since: int) -> float:
        """The first moment after ``since`` at which time alone may change who enters ``rule``
        (infinity: never; ``since``: unknown, check every time)."""
        parts = [c for c in (rule.trigger.cond, rule.entry) if c is not None]
        queries = sqlcond.change_moments(ir.All(tuple(parts)), self.ctx.project.segments)
        if queries is None:
            return since
        params = {"now": since, "rule": rule.name}
        if rule.reenter.mode == "after":
            queries.append(sqlcond.reentry_moment())
            params["reenter_after"] = int(rule.reenter.after)
        moment = self.ctx.store.first_moment(queries, params)
        return math.inf if moment is None else moment
