"""The engine: runs a compiled :class:`~engine.language.ir.Project` against the friend state in a
:class:`~engine.runtime.store.Store`, one :meth:`Engine.tick` at a time.

A tick never reads the clock; the caller passes ``now``. Its stages run in this order, each a
module of :mod:`engine.stages` reading the project through one :class:`~engine.stages.context.Context`
and the database only through the store:

1. :class:`~engine.stages.events.EventStage`: applied events with ``at <= now`` in (at, seq)
   order: friend state changes, event triggers enrol friends, ``wait for`` enrollments resume,
   ``exit when`` is re-checked;
2. :class:`~engine.stages.triggers.TimeTriggers`: ``schedule`` and ``sale`` occurrences in
   (last tick, now] enrol their audience set-based (past its first sends, which the
   enrollments carry to the deliver stage);
3. :class:`~engine.stages.conditions.ConditionTriggers`: on a condition tick, every friend
   whose condition holds enters (in SQL);
4. :class:`~engine.stages.walk.WalkStage`: due enrollments walk their steps up to the next wait
   (those an event of this tick resumed last); their sends become intents, due at the window's
   next opening;
5. :class:`~engine.stages.deliver.DeliverStage`: every send due now is decided, whichever way
   it waited, by one procedure: current friend, ``exit when``, each step's ``if``, the cap by
   priority, the monthly quota, rendering; only then are outbox rows written.

:class:`Engine` only builds the stages for a project and runs them in order. The semantics and
the decisions behind them are described in docs/engine.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from engine.language import ir, timeutil
from engine.language.compiler import carried_step
from engine.line.limits import MAX_MULTICAST, MAX_OBJECTS
from engine.runtime.store import ApplyResult, Store

from .stages.conditions import ConditionTriggers
from .stages.context import Carry, Context, TickResult, rule_version
from .stages.deliver import DELIVER_CHUNK, DeliverStage
from .stages.entry import ANSWERED_TYPES, Entry
from .stages.events import EVENT_CHUNK, REPLIED_TYPES, REPLY_SECONDS, EventStage
from .stages.triggers import TimeTriggers
from .stages.walk import CHUNK, FIRST_CHUNK, MAX_ROUNDS, WRITE_BUDGET, WalkStage

__all__ = [
    "ANSWERED_TYPES",
    "CHUNK",
    "DELIVER_CHUNK",
    "EVENT_CHUNK",
    "FIRST_CHUNK",
    "FOLLOW_GRACE",
    "MAX_MULTICAST",
    "MAX_OBJECTS",
    "MAX_ROUNDS",
    "MAX_WAKEUP",
    "REPLIED_TYPES",
    "REPLY_SECONDS",
    "WRITE_BUDGET",
    "Engine",
    "TickResult",
    "rule_version",
]

#: Seconds a ``follow`` is held before it is processed when friend-add sources come through
#: LINE Login (the runner sets ``Engine.follow_grace``): LINE sends the follow webhook at about
#: the moment the user returns to the login callback that records the source, and
#: ``when followed via ...`` must see that source. Well inside the reply token's life.
FOLLOW_GRACE = 10
#: Latest moment :meth:`Engine.next_wakeup` considers (epoch seconds; intake accepts times
#: before 2200, see engine/runtime/events.py).
MAX_WAKEUP = int(dt.datetime(9000, 1, 1, tzinfo=dt.UTC).timestamp())


class Engine:
    """Runs ``project`` on ``store``. ``clock`` (returning an aware datetime) is only used by
    :meth:`reload`; ``condition_interval`` (seconds, 0 = every tick) sets how often condition
    triggers are checked, in slots aligned to local midnight; ``follow_grace`` (seconds, 0 =
    none) holds a ``follow`` until it was received that long ago, and the friend's later events
    with it (see :data:`FOLLOW_GRACE`); ``write_budget`` (seconds, None = CHUNK rows per walk
    transaction, the same rows every run) sizes walk transactions by time instead."""

    def __init__(
        self,
        project: ir.Project,
        store: Store,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        condition_interval: int = 0,
        follow_grace: int = 0,
        write_budget: float | None = None,
    ):
        self.store = store
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.condition_interval = condition_interval
        self._follow_grace = follow_grace
        self.write_budget = write_budget
        self._carry = Carry()
        self._use(project, int(self.clock().timestamp()))

    @property
    def follow_grace(self) -> int:
        """Seconds a ``follow`` is held (the runner sets it while friend-add links are in use)."""
        return self._follow_grace

    @follow_grace.setter
    def follow_grace(self, seconds: int) -> None:
        self._follow_grace = self.events.follow_grace = seconds

    def _use(self, project: ir.Project, now: int) -> None:
        """Build the stages for ``project`` and record its rule versions."""
        self.project = project
        self.settings = project.settings
        self.tz = project.settings.tz
        ctx = self.context = Context(project, self.store, self._carry)
        self.versions = ctx.versions
        entry = Entry(ctx)
        self.events = EventStage(ctx, entry, self.follow_grace)
        self.time_triggers = TimeTriggers(ctx, entry)
        self.conditions = ConditionTriggers(ctx, self.condition_interval)
        self.walk = WalkStage(ctx, entry, self.write_budget)
        self.deliver = DeliverStage(ctx)
        with self.store.transaction():
            for name, rule in project.rules.items():
                self.store.register_rule_version(name, self.versions[name], [s.id for s in rule.steps], now)

    def reload(self, new_project: ir.Project) -> dict[str, int]:
        """Switch to a new (validated) project; friends in flight follow the policy of
        docs/engine.md: same step id kept; a removed step -> the first surviving step after it
        in the old order; a removed rule -> its friends are *suspended* where they are (the
        runner ends them with ``rule_removed`` after a grace), and a rule that comes back
        resumes its suspended friends; due times of waits are kept. Returns how many friends
        were ``carried_over`` to a changed rule, ``suspended`` and ``resumed``."""
        now = int(self.clock().timestamp())
        new_versions = {name: rule_version(r) for name, r in new_project.rules.items()}
        counts = {"carried_over": 0, "suspended": 0, "resumed": 0}
        with self.store.transaction():
            for rule in new_project.rules:
                counts["resumed"] += self.store.unsuspend_rule(rule)
            for rule, version, step_id, state, count in self.store.open_positions():
                new_rule = new_project.rules.get(rule)
                if new_rule is None:
                    counts["suspended"] += self.store.suspend_rule(rule, now)
                    continue
                new_version = new_versions[rule]
                if version == new_version:
                    continue
                counts["carried_over"] += count
                new_ids = [s.id for s in new_rule.steps]
                if step_id is None:
                    self.store.move_enrollments(rule, version, step_id, state, new_version, step_id, state)
                    continue
                old_ids = self.store.rule_version_steps(rule, version) or []
                target, same = carried_step(old_ids, new_ids, step_id)
                self.store.move_enrollments(
                    rule, version, step_id, state, new_version, target, state if same else "active"
                )
            self._earlier_openings(new_project, now)
            self._use(new_project, now)
        return counts

    def _earlier_openings(self, new_project: ir.Project, now: int) -> None:
        """Sends waiting for a window's next opening wait for the new window's, when a reload
        makes it earlier (a window widened, or removed): a send deferred by a window is due at
        its next opening, whichever window is in use. (One that a narrower window finds
        closed when due waits again then: the deliver stage defers it.)"""
        old = self.project
        for name, rule in new_project.rules.items():
            before = old.rules.get(name)
            was = (before.window or old.settings.window) if before is not None else None
            now_window = rule.window or new_project.settings.window
            if was is None or was == now_window:
                continue
            waited = timeutil.next_opening(now, was, old.settings.tz)
            opening = timeutil.next_opening(now, now_window, new_project.settings.tz)
            if opening < waited:
                self.store.bring_forward(name, waited, opening)

    def apply_events(self, events: list, received_at: int | None = None) -> ApplyResult:
        """Store a validated batch for the next tick (see :meth:`Store.apply_events`)."""
        return self.store.apply_events(events, received_at=received_at)

    def tick(self, now: dt.datetime, *, conditions: bool | None = None) -> TickResult:
        """Do all work due at ``now`` (see the module docstring). Running it twice at the same
        ``now`` does nothing new. ``conditions`` forces (or skips) condition triggers."""
        ts = timeutil.epoch(now)
        result = TickResult(now=now)
        s = self.store
        self.events.run(ts, result)
        # audiences are entered in short transactions of their own (Store.enroll_audience);
        # the tick is recorded only after all of them, so a crash in between repeats the entry
        last = s.get_meta("engine.last_tick")
        self.time_triggers.run(int(last) if last is not None else ts, ts, result)
        slot = None
        if conditions is None:
            conditions, slot = self.conditions.slot(ts)
        if conditions:
            self.conditions.run(ts, result)
            result.conditions = True
        before = s.total_changes
        with s.transaction():
            if slot is not None:
                s.set_meta("engine.condition_slot", slot)
            s.set_meta("engine.last_tick", str(ts))
        self._carry.noise += s.total_changes - before  # bookkeeping, no condition reads it
        self.walk.run(ts, result)
        self.deliver.run(ts, result)
        return result

    def conditions_quiet_until(self, now: int) -> float:
        """The first moment at or after ``now`` at which a condition check may enter somebody
        (infinity: none can before something changes the database). The simulator skips the
        condition ticks before it: they would enter nobody."""
        return self.conditions.quiet_until(now)

    def next_wakeup(self, after: dt.datetime) -> dt.datetime | None:
        """The earliest moment strictly after ``after`` with work: an event, a due step, a
        deferred send, a schedule or sale occurrence. None when there is nothing ahead."""
        a = timeutil.epoch(after)
        s = self.store
        candidates = [
            s.next_work_at(a),
            self.events.next_moment(a),
            *self.time_triggers.next_moments(a),
        ]
        # a moment past what the clock can show (an event stored before times were bounded at
        # intake, in year 9999) is never a wake-up: it would fail every tick's scheduling
        moments = [c for c in candidates if c is not None and c < MAX_WAKEUP]
        return timeutil.local(min(moments), self.tz) if moments else None
