"""The engine: runs a compiled :class:`~engine.language.ir.Project` against the friend state in a
:class:`~engine.runtime.store.Store`, one :meth:`Engine.tick` at a time.

A tick never reads the clock; the caller passes ``now``. In one tick, in this order:

1. applied events with ``at <= now`` are processed in (at, seq) order: friend state changes,
   event triggers enrol friends, ``wait for`` enrollments resume, ``exit when`` is re-checked;
2. ``schedule`` and ``sale`` occurrences in (last tick, now] enrol their audience (set-based,
   and queue its first sends set-based);
3. on a condition tick, condition triggers enrol every friend whose condition holds (in SQL);
4. due enrollments walk their steps up to the next wait (those an event of this tick resumed
   last); their sends are coalesced into send intents, due at the window's next opening;
5. the deliver stage decides every intent due now, whichever path queued it: current friend,
   ``exit when``, each step's ``if``, the cap by priority, the monthly quota, rendering; only
   then are outbox rows written.

The semantics and the decisions behind them are described in docs/engine.md.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import time
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

from engine.runtime import identity
from engine.language import ir, timeutil
from engine.language.render import RenderError, render_hash, render_message, sale_vars
from engine.runtime.sqlcond import CURRENT, Compiled, CondCompiler, change_moments
from engine.runtime.store import ApplyResult, EventRow, Store, bucket, is_store_fault

log = logging.getLogger("linerules.engine")

#: Most enrollments walked per transaction.
CHUNK = 20000
#: With a write budget: enrollments walked in a tick's first transaction; the later ones are
#: sized to the budget from the time per row measured so far (growing at most twofold, at most
#: CHUNK).
FIRST_CHUNK = 500
#: The runner's write budget: seconds a walk transaction should hold SQLite's one write lock,
#: so that a webhook's INSERT never waits long (``Engine(write_budget=...)``).
WRITE_BUDGET = 0.05
#: Friends whose due sends the deliver stage decides per transaction (all of a friend's
#: competing sends are always decided together).
DELIVER_CHUNK = 5000
#: Events processed per transaction.
EVENT_CHUNK = 500
#: Seconds a reply token is used after its webhook arrived (LINE allows about one minute).
REPLY_SECONDS = 50
#: LINE's limits per request.
MAX_OBJECTS = 5
MAX_MULTICAST = 500
#: Bound on step rounds in one walk (``start`` loops between rules with ``reenter always``).
MAX_ROUNDS = 1000
ANSWERED_TYPES = ("message", "postback")
#: Seconds a ``follow`` is held before it is processed when friend-add sources come through
#: LINE Login (the runner sets ``Engine.follow_grace``): LINE sends the follow webhook at about
#: the moment the user returns to the login callback that records the source, and
#: ``when followed via ...`` must see that source. Well inside the reply token's life.
FOLLOW_GRACE = 10
#: Latest moment :meth:`Engine.next_wakeup` considers (epoch seconds; intake accepts times
#: before 2200, see engine/runtime/events.py).
MAX_WAKEUP = int(dt.datetime(9000, 1, 1, tzinfo=dt.timezone.utc).timestamp())
#: Other webhook events whose reply token is used when their sends go out at once.
REPLIED_TYPES = ("follow",)


@dataclass
class TickResult:
    """What one tick did."""
    now: dt.datetime
    events: int = 0
    entered: int = 0
    advanced: int = 0
    queued: int = 0        # outbox rows written (push, multicast, reply, menu_link)
    capped: int = 0
    skipped: int = 0       # blocked or holdout friends
    exited: int = 0
    conditions: bool = False
    failed: int = 0        # events set aside and steps that failed for one friend (with the reason)


@dataclass(slots=True)
class _Walker:
    """One enrollment moving through its steps in this tick."""
    id: int
    friend: str
    rule: str
    pos: int
    entered_at: int
    due_at: int
    variant: str | None
    holdout: bool
    occurrence: str | None
    cause_seq: int | None
    reply_token: str | None
    reply_deadline: int | None
    event_seq: int | None = None
    buffer: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    answered: bool = False


@dataclass(slots=True)
class _Group:
    """Consecutive sends of one enrollment, decided together: one push (or several if > 5
    objects). ``walker`` carries what rendering needs (friend, rule, occurrence, event)."""
    walker: _Walker
    step_id: str
    names: tuple[str, ...]
    reply: tuple[str, int] | None   # (token, deadline) when this goes as a reply
    answer: bool


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def rule_version(rule: ir.Rule) -> str:
    """The rule's compiled version, or a hash of its compiled form when none was given."""
    return rule.version or hashlib.sha256(repr((rule.trigger, rule.steps, rule.entry, rule.exit_when,
                                                 rule.reenter, rule.window, rule.priority,
                                                 rule.split, rule.holdout)).encode()).hexdigest()[:16]


class Engine:
    """Runs ``project`` on ``store``. ``clock`` (returning an aware datetime) is only used by
    :meth:`reload`; ``condition_interval`` (seconds, 0 = every tick) sets how often condition
    triggers are checked, in slots aligned to local midnight; ``follow_grace`` (seconds, 0 =
    none) holds a ``follow`` until it was received that long ago, and the friend's later events
    with it (see :data:`FOLLOW_GRACE`); ``write_budget`` (seconds, None = CHUNK rows per walk
    transaction, the same rows every run) sizes walk transactions by time instead."""

    def __init__(self, project: ir.Project, store: Store, *,
                 clock: Callable[[], dt.datetime] | None = None, condition_interval: int = 0,
                 follow_grace: int = 0, write_budget: float | None = None):
        self.store = store
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.condition_interval = condition_interval
        self.follow_grace = follow_grace
        self.write_budget = write_budget
        self._use(project, int(self.clock().timestamp()))

    # ------------------------------------------------------------------ project

    def _use(self, project: ir.Project, now: int) -> None:
        self.project = project
        self.settings = project.settings
        self.tz = project.settings.tz
        self.versions = {name: rule_version(r) for name, r in project.rules.items()}
        self._index = {name: {s.id: i for i, s in enumerate(r.steps)} for name, r in project.rules.items()}
        self._enr = CondCompiler(project.segments, with_enrollment=True)
        self._set = CondCompiler(project.segments, with_enrollment=False)
        self._cache: dict[tuple[ir.Cond, bool], Compiled] = {}
        self._static_names: dict[str | tuple[str, ...], bool] = {}   # message name or group
        self._rendered: dict[tuple, tuple[list, list]] = {}
        self._hashes: dict[int, tuple[list[dict], str]] = {}
        self._sale_cache: dict[ir.SaleTrigger, list[tuple[int, ir.Sale]]] = {}
        #: rule -> (database changes, moment, next moment time alone may change it) of its last
        #: condition check, when that check entered nobody (see :meth:`_still_quiet`)
        self._quiet: dict[str, tuple[tuple[int, int], int, float | None]] = {}
        self._noise = getattr(self, "_noise", 0)
        self._resumed: set[int] = getattr(self, "_resumed", set())
        self._json: dict[Any, str] = {}
        #: event types some ``wait for`` listens to; whether any rule has ``exit when``
        self.wait_types = {getattr(st.trigger, "event_type", None) for r in project.rules.values()
                           for st in r.steps if isinstance(st, ir.WaitFor)}
        self.has_exits = any(r.exit_when is not None for r in project.rules.values())
        #: (rules, exclude) filters of the due walk, highest priority first; the last takes every
        #: other rule (also enrollments of rules no longer in the project)
        levels = sorted({r.priority for r in project.rules.values()}, reverse=True)
        higher = [[n for n, r in project.rules.items() if r.priority == p] for p in levels[:-1]]
        taken = [n for names in higher for n in names]
        self._walk_order = [(names, False) for names in higher] + [(taken or None, bool(taken))]
        self.by_type: dict[str, list[ir.Rule]] = defaultdict(list)
        for rule in sorted(project.rules.values(), key=lambda r: (-r.priority, r.name)):
            event_type = getattr(rule.trigger, "event_type", None)
            if event_type is not None:
                self.by_type[event_type].append(rule)
        with self.store.transaction():
            for name, rule in project.rules.items():
                self.store.register_rule_version(name, self.versions[name], [s.id for s in rule.steps], now)

    def _sql(self, cond: ir.Cond, with_enrollment: bool) -> Compiled:
        key = (cond, with_enrollment)
        if key not in self._cache:
            self._cache[key] = (self._enr if with_enrollment else self._set).compile(cond)
        return self._cache[key]

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
                if step_id is None or step_id in new_ids:
                    self.store.move_enrollments(rule, version, step_id, state, new_version, step_id, state)
                    continue
                old_ids = self.store.rule_version_steps(rule, version) or []
                after = old_ids[old_ids.index(step_id) + 1:] if step_id in old_ids else []
                successor = next((s for s in after if s in new_ids), None)
                self.store.move_enrollments(rule, version, step_id, state, new_version, successor, "active")
            self._use(new_project, now)
        return counts

    # ------------------------------------------------------------------ the tick

    def apply_events(self, events: list, received_at: int | None = None) -> ApplyResult:
        """Store a validated batch for the next tick (see :meth:`Store.apply_events`)."""
        return self.store.apply_events(events, received_at=received_at)

    def tick(self, now: dt.datetime, *, conditions: bool | None = None) -> TickResult:
        """Do all work due at ``now`` (see the module docstring). Running it twice at the same
        ``now`` does nothing new. ``conditions`` forces (or skips) condition triggers."""
        ts = timeutil.epoch(now)
        result = TickResult(now=now)
        self._events(ts, result)
        # audiences are entered in short transactions of their own (Store.enroll_audience);
        # the tick is recorded only after all of them, so a crash in between repeats the entry
        self._time_triggers(ts, result)
        slot = None
        if conditions is None:
            conditions, slot = self._condition_slot(ts)
        if conditions:
            self._condition_triggers(ts, result)
            result.conditions = True
        before = self.store.conn.total_changes
        with self.store.transaction():
            if slot is not None:
                self.store.set_meta("engine.condition_slot", slot)
            self.store.set_meta("engine.last_tick", str(ts))
        self._noise += self.store.conn.total_changes - before   # bookkeeping, no condition reads it
        seen: set[int] = set(self._resumed)
        later = len(seen)
        budget = self.write_budget
        size = CHUNK if budget is None else min(FIRST_CHUNK, CHUNK)
        # Higher-priority rules are walked first, so that when max_per_day must choose, their
        # sends are recorded before those of lower priority even across chunks.
        for rules, exclude in self._walk_order:
            while True:
                rows = [r for r in self.store.due_enrollments(ts, size + later, rules, exclude)
                        if r[0] not in seen]
                if not rows:
                    break
                seen.update(r[0] for r in rows)
                started = time.perf_counter()
                with self.store.transaction():
                    self._walk(rows, ts, result)
                if budget is not None:
                    spent = max(time.perf_counter() - started, 1e-6)
                    size = max(100, min(CHUNK, 2 * size, int(len(rows) * budget / spent)))
        # enrollments that an event of this tick resumed (``wait for``) go after everything else,
        # so that they see all the event did, also through the rules it entered (SPEC §4)
        resumed, self._resumed = sorted(self._resumed), set()
        for start in range(0, len(resumed), CHUNK):
            rows = self.store.enrollment_rows(resumed[start:start + CHUNK], ts)
            if rows:
                with self.store.transaction():
                    self._walk(rows, ts, result)
        self._deliver_due(ts, result)
        return result

    def next_wakeup(self, after: dt.datetime) -> dt.datetime | None:
        """The earliest moment strictly after ``after`` with work: an event, a due step, a
        deferred send, a schedule or sale occurrence. None when there is nothing ahead."""
        a = timeutil.epoch(after)
        candidates = [self.store.next_event_at(a), self.store.next_due_at(a), self.store.next_outbox_at(a),
                      self.store.next_intent_at(a)]
        if self.follow_grace:
            held = self.store.first_held_follow(a - self.follow_grace)
            candidates.append(None if held is None else held + self.follow_grace)
        for rule in self.project.rules.values():
            trig = rule.trigger
            if isinstance(trig, ir.ScheduleTrigger):
                candidates.append(timeutil.cron_next(trig.cron, a, self.tz))
            elif isinstance(trig, ir.SaleTrigger):
                moments = [m for m, _ in self._sale_moments(trig) if m > a]
                candidates.append(min(moments, default=None))
        # a moment past what the clock can show (an event stored before times were bounded at
        # intake, in year 9999) is never a wake-up: it would fail every tick's scheduling
        moments = [c for c in candidates if c is not None and c < MAX_WAKEUP]
        return timeutil.local(min(moments), self.tz) if moments else None

    # ------------------------------------------------------------------ 1. events

    def _events(self, now: int, result: TickResult) -> None:
        held_after = now - self.follow_grace if self.follow_grace else None
        while True:
            rows = self.store.pending_events(now, EVENT_CHUNK, held_after=held_after)
            if not rows:
                return
            with self.store.transaction():
                for ev in rows:
                    # one event that fails for its friend is undone alone and set aside with the
                    # reason; the others of the chunk (and every later tick) go on (SPEC §4)
                    try:
                        with self.store.savepoint():
                            self._event(ev, now, result)
                    except Exception as exc:
                        if is_store_fault(exc) or isinstance(exc, (OSError, MemoryError)):
                            raise   # the database or the machine failed, not this event: the
                                    # chunk is rolled back and processed again at the next tick
                        reason = f"{type(exc).__name__}: {exc}"[:1000]
                        log.error("event %d (%s of friend %s) not processed, set aside: %s",
                                  ev.seq, ev.type, ev.friend, reason)
                        self.store.mark_failed(ev.seq, now, reason)
                        result.failed += 1
                        continue
                    self.store.mark_processed(ev.seq, now)
                    result.events += 1

    def _event(self, ev: EventRow, now: int, result: TickResult) -> None:
        s, friend, at, data = self.store, ev.friend, ev.at, ev.data
        # links, orders and refunds, events naming the shop's customer (engine/runtime/identity.py)
        shop = identity.handle(s, ev)
        if shop is not None:
            if shop.friend is None:
                return          # kept for a customer not linked yet; counts once linked
            friend, data = shop.friend, shop.data
        s.touch(friend, at, line=ev.type in ANSWERED_TYPES)
        if ev.type == "follow":
            s.follow(friend, at, data.get("source"))
        elif ev.type == "unfollow":
            s.unfollow(friend, at)
        elif ev.type in ("cart", "view"):
            s.track(friend, ev.type, data.get("product"), at, seq=ev.seq)
        elif ev.type == "click":
            s.click(friend, at, data.get("rule"), data.get("message"), data.get("url"), seq=ev.seq)
        elif ev.type == "attributes":
            s.set_attributes(friend, data.get("set") or {})
        elif ev.type == "tag":
            new = s.add_tags(friend, data.get("add") or [], at)
            s.remove_tags(friend, data.get("remove") or [])
            data = {**data, "add": new}
        cause = None
        if ev.type in ANSWERED_TYPES:
            cause = (ev.seq, ev.reply_token, ev.received_at + REPLY_SECONDS if ev.reply_token else None)
        elif ev.type in REPLIED_TYPES and ev.reply_token:
            # not an answer (window and cap apply), but a welcome sent at once goes as a free reply
            cause = (None, ev.reply_token, ev.received_at + REPLY_SECONDS)
        for linked, linked_data in shop.linked if shop is not None else ():
            self._fire(identity.LINKED, linked_data, linked, now, at, cause, result, event_seq=ev.seq)
        if shop is None or shop.fire:
            self._fire(ev.type, data, friend, now, at, cause, result, event_seq=ev.seq)
        result.exited += self._check_exits(friend, now)

    def _fire(self, event_type: str, data: dict, friend: str, now: int, at: int,
              cause: tuple | None, result: TickResult, event_seq: int | None = None) -> list[_Walker]:
        """Enter the rules this event triggers and resume matching ``wait for`` enrollments.
        Returns walkers for what became due now (the caller may walk them at once). Only a
        current friend enters a rule (``when unfollowed`` excepted: it fires on the block)."""
        out: list[_Walker] = []
        source = None
        rules = self.by_type.get(event_type, ())
        if rules and event_type != "unfollow":
            row = self.store.friend(friend) or {}
            if row.get("followed_at") is None or row.get("blocked_at") is not None:
                rules = ()
            source = row.get("source")
        for rule in rules:
            if self._matches(rule.trigger, event_type, data, source):
                walker = self._enter(rule, friend, now, at, cause=cause, event_seq=event_seq)
                if walker:
                    result.entered += 1
                    out.append(walker)
        for row in self.store.open_enrollments(friend) if event_type in self.wait_types else ():
            if row["state"] != "waiting":
                continue
            rule = self.project.rules.get(row["rule"])
            step = rule.step(row["step_id"]) if rule else None
            if isinstance(step, ir.WaitFor) and self._matches(step.trigger, event_type, data, source):
                pos = rule.index_of(step.id) + 1
                nxt = rule.steps[pos].id if pos < len(rule.steps) else None
                seq, token, deadline = cause or (None, None, None)
                self.store.resume(row["id"], nxt, now, seq, token, deadline, event_seq)
                if event_seq is not None:
                    self._resumed.add(row["id"])
                out.append(self._walker(row, rule, pos, cause))
        return out

    def _matches(self, trig: ir.EventTrigger, event_type: str, data: dict, source: str | None) -> bool:
        if getattr(trig, "event_type", None) != event_type:
            return False
        if isinstance(trig, ir.Followed):
            if not trig.via:
                return True
            pairs = set((source or "").split(","))
            return any(f"{k}={v}" in pairs for k, v in trig.via)
        if isinstance(trig, ir.MessageTrigger):
            text = _norm(data.get("text") or "")
            keys = [_norm(k) for k in trig.keywords]
            return any(text == k for k in keys) if trig.exact else any(k in text for k in keys)
        if isinstance(trig, ir.PostbackTrigger):
            got = dict(parse_qsl(data.get("data") or "", keep_blank_values=True))
            return all(got.get(k) == v for k, v in trig.pairs)
        if isinstance(trig, ir.PurchasedTrigger):
            if not (trig.product or trig.category):
                return True
            return any((trig.product is None or item.get("product") == trig.product)
                       and (trig.category is None or item.get("category") == trig.category)
                       for item in data.get("items") or [])
        if isinstance(trig, (ir.CartedTrigger, ir.ViewedTrigger)):
            return trig.product is None or data.get("product") == trig.product
        if isinstance(trig, ir.TaggedTrigger):
            return trig.name in (data.get("add") or [])
        if isinstance(trig, ir.CustomEventTrigger):
            return all(k in data and str(data[k]) == v for k, v in trig.pairs)
        return True  # Unfollowed, Linked

    def _check_exits(self, friend: str, now: int) -> int:
        """Re-check ``exit when`` of the friend's open enrollments after a state change."""
        exited: list[int] = []
        for row in self.store.open_enrollments(friend) if self.has_exits else ():
            rule = self.project.rules.get(row["rule"])
            if rule is not None and rule.exit_when is not None:
                c = self._sql(rule.exit_when, True)
                if self.store.select_enrollments(c.sql, {**c.params, "now": now, "rule": rule.name}, [row["id"]]):
                    exited.append(row["id"])
        self.store.exit_enrollments(exited, "exit_when", now)
        return len(exited)

    # ------------------------------------------------------------------ entering

    def _may_enter(self, rule: ir.Rule, last: Any, now: int) -> bool:
        if last is None:
            return True
        if last["state"] in ("active", "waiting"):
            return False
        mode = rule.reenter.mode
        if mode == "always":
            return True
        if mode == "after":
            return (last["finished_at"] or 0) <= now - rule.reenter.after
        return False

    def _draw(self, friend: str, rule: ir.Rule) -> tuple[str | None, bool]:
        """The friend's split variant and holdout membership in this rule (stable hashes)."""
        variant = None
        if rule.split:
            b, edge = bucket(friend, rule.name, "split"), 0
            for name, percent in rule.split:
                edge += round(percent * 100)
                variant = name
                if b < edge:
                    break
        holdout = bucket(friend, rule.name, "holdout") < round(rule.holdout * 100)
        return variant, holdout

    def _draw_sql(self, rule: ir.Rule) -> tuple[str, str]:
        """SQL twins of :meth:`_draw` for set-based entry (same hash, same buckets)."""
        variant = "NULL"
        if rule.split:
            cases, edge = [], 0
            for name, percent in rule.split[:-1]:
                edge += round(percent * 100)
                cases.append(f"WHEN lr_bucket(f.id, :rule, 'split') < {edge} THEN '{_q(name)}'")
            variant = f"CASE {' '.join(cases)} ELSE '{_q(rule.split[-1][0])}' END"
        holdout = f"(lr_bucket(f.id, :rule, 'holdout') < {round(rule.holdout * 100)})" if rule.holdout else "0"
        return variant, holdout

    def _enter(self, rule: ir.Rule, friend: str, now: int, entered_at: int, *,
               cause: tuple | None = None, occurrence: str | None = None,
               event_seq: int | None = None) -> _Walker | None:
        """Enrol one friend if the re-entry policy and the entry filter allow it."""
        if not self._may_enter(rule, self.store.last_enrollment(friend, rule.name), now):
            return None
        if rule.entry is not None:
            c = self._sql(rule.entry, False)
            if not self.store.friend_matches(friend, c.sql, {**c.params, "now": now, "rule": rule.name}):
                return None
        variant, holdout = self._draw(friend, rule)
        seq, token, deadline = cause or (None, None, None)
        first = rule.steps[0].id if rule.steps else None
        eid = self.store.enroll(friend=friend, rule=rule.name, version=self.versions[rule.name],
                                step_id=first, now=now, entered_at=entered_at, variant=variant,
                                holdout=holdout, occurrence=occurrence, cause_seq=seq,
                                reply_token=token, reply_deadline=deadline, event_seq=event_seq)
        if eid is None:
            return None
        return _Walker(eid, friend, rule.name, 0, entered_at, now, variant, holdout, occurrence,
                       seq, token, deadline, event_seq)

    def _walker(self, row: Any, rule: ir.Rule, pos: int, cause: tuple | None = None) -> _Walker:
        """A walker for an enrollment row (mapping) resumed now."""
        seq, token, deadline = cause or (row["cause_seq"], row["reply_token"], row["reply_deadline"])
        return _Walker(row["id"], row["friend"], row["rule"], pos, row["entered_at"], row["due_at"],
                       row["variant"], bool(row["holdout"]), row["occurrence"], seq, token, deadline,
                       row["event_seq"])

    def _enter_audience(self, rule: ir.Rule, now: int, cond: ir.Cond | None, occurrence: str | None,
                        blocked_sql: str, each: Callable[[int], None] | None = None) -> int:
        """Set-based entry of every current friend for whom ``cond`` and the entry filter hold,
        in short transactions (``each`` runs in each of them, see :meth:`Store.enroll_audience`)."""
        parts = tuple(c for c in (cond, rule.entry) if c is not None)
        where = self._sql(ir.All(parts), False) if parts else Compiled("1")
        variant, holdout = self._draw_sql(rule)
        first = rule.steps[0].id if rule.steps else None
        return self.store.enroll_audience(rule=rule.name, version=self.versions[rule.name], step_id=first,
                                          now=now, where_sql=f"{CURRENT} AND ({where.sql})",
                                          params=where.params, occurrence=occurrence,
                                          blocked_sql=blocked_sql, variant_sql=variant, holdout_sql=holdout,
                                          each=each)

    # ------------------------------------------------------------------ 2. time triggers

    def _sale_moments(self, trig: ir.SaleTrigger) -> list[tuple[int, ir.Sale]]:
        """Fixed for a project: worked out once per trigger (every tick asks)."""
        moments = self._sale_cache.get(trig)
        if moments is None:
            moments = self._sale_cache[trig] = [
                (timeutil.sale_moment(trig, sale, self.tz), sale) for sale in self.project.sales
                if trig.kind is None or sale.kind == trig.kind]
        return moments

    def _time_triggers(self, now: int, result: TickResult) -> None:
        last = self.store.get_meta("engine.last_tick")
        since = int(last) if last is not None else now
        open_only = "x.state IN ('active', 'waiting')"
        # higher priority first, so that the cap keeps its sends (ties: the folder's order)
        for rule in sorted(self.project.rules.values(), key=lambda r: -r.priority):
            trig, occurrence = rule.trigger, None
            if isinstance(trig, ir.ScheduleTrigger):
                moment = timeutil.cron_latest(trig.cron, since, now, self.tz)
                occurrence = None if moment is None else f"schedule:{moment}"
            elif isinstance(trig, ir.SaleTrigger):
                due = [(m, sale) for m, sale in self._sale_moments(trig) if since < m <= now]
                if due:
                    moment, sale = max(due, key=lambda d: d[0])
                    occurrence = f"sale:{sale.name}:{trig.edge}:{moment}"
            if occurrence is not None:
                def send(after_id: int, rule: ir.Rule = rule, occurrence: str = occurrence) -> None:
                    self._mass_send(rule, occurrence, now, result, after_id)
                result.entered += self._enter_audience(rule, now, None, occurrence, open_only, send)

    def _mass_plan(self, rule: ir.Rule, now: int) -> tuple | None:
        """For a rule whose first steps are sends followed by a wait or the end: (the sends'
        steps, message names, state, step, due) of the set-based queueing. None when the rule
        needs the per-friend walk."""
        if rule.exit_when is not None:
            return None
        sends: list[ir.Send] = []
        for step in rule.steps:
            if type(step) is not ir.Send:
                break
            sends.append(step)
        rest = rule.steps[len(sends):]
        if not sends or (rest and not isinstance(rest[0], ir.WAIT_STEPS)):
            return None
        names = tuple(n for step in sends for n in step.messages)
        if not rest:
            state, step_id, due = "done", None, None
        else:
            wait = rest[0]
            if isinstance(wait, ir.Wait):
                due = timeutil.wait_at(now, wait.seconds, wait.at, self.tz)
            elif isinstance(wait, ir.WaitUntil):
                due = timeutil.wait_until(now, wait.at, wait.weekday, self.tz)
            else:
                due = now + wait.up_to
            if due <= now:
                return None
            state, step_id = "waiting", wait.id
        return tuple((step.id, step.messages) for step in sends), names, state, step_id, due

    def _mass_send(self, rule: ir.Rule, occurrence: str, now: int, result: TickResult, after_id: int) -> None:
        """The audience of a time trigger (its enrollments above ``after_id``) queues its first
        sends set-based (one statement, not a walk per friend) when :meth:`_mass_plan` allows:
        the same intents a walk writes, decided by the deliver stage like every other send."""
        plan = self._mass_plan(rule, now)
        if plan is None:
            return
        steps, names, state, step_id, due = plan
        window = rule.window or self.settings.window
        count = self.store.mass_intents(
            rule=rule.name, occurrence=occurrence, now=now, after_id=after_id, steps=self._encode(steps),
            messages=self._encode(names), due_at=timeutil.next_opening(now, window, self.tz),
            state=state, next_step=step_id, due=due)
        result.advanced += count

    # ------------------------------------------------------------------ 3. condition triggers

    def _condition_slot(self, now: int) -> tuple[bool, str | None]:
        """Whether condition triggers are checked now, and the slot to record once they were."""
        if not self.condition_interval:
            return True, None
        day, slot = timeutil.boundary_index(now, self.condition_interval, self.tz)
        key = f"{day}#{slot}"
        if self.store.get_meta("engine.condition_slot") == key:
            return False, None
        return True, key

    def _condition_triggers(self, now: int, result: TickResult) -> None:
        conn = self.store.conn
        for rule in self.project.rules.values():
            if not isinstance(rule.trigger, ir.ConditionTrigger):
                continue
            if self._still_quiet(rule, now):
                continue
            mode = rule.reenter.mode
            if mode == "never":
                blocked = "1"
            elif mode == "after":
                blocked = (f"x.state IN ('active', 'waiting') OR x.finished_at > :now - "
                           f"{int(rule.reenter.after)}")
            else:
                blocked = "x.state IN ('active', 'waiting')"
            before = conn.total_changes
            entered = self._enter_audience(rule, now, rule.trigger.cond, None, blocked)
            result.entered += entered
            if entered:
                self._quiet.pop(rule.name, None)
            else:
                self._noise += conn.total_changes - before   # its scratch rows only
                self._quiet[rule.name] = (self._changes(), now, None)

    def conditions_quiet_until(self, now: int) -> float:
        """The first moment at or after ``now`` at which a condition check may enter somebody,
        as far as the last checks tell (:meth:`_still_quiet`): ``now`` when a rule must be
        checked now, infinity when none can before something changes the database. The
        simulator skips the condition ticks before it: they would enter nobody."""
        until = math.inf
        for rule in self.project.rules.values():
            if isinstance(rule.trigger, ir.ConditionTrigger):
                if not self._still_quiet(rule, now):
                    return now
                until = min(until, self._quiet[rule.name][2])
        return until

    def _changes(self) -> tuple[int, int]:
        """Changes any connection made to the database (this one's own, less the engine's
        bookkeeping; other connections' commits by ``PRAGMA data_version``)."""
        conn = self.store.conn
        return conn.total_changes - self._noise, conn.execute("PRAGMA data_version").fetchone()[0]

    def _still_quiet(self, rule: ir.Rule, now: int) -> bool:
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
        queries = change_moments(ir.All(tuple(parts)), self.project.segments)
        if queries is None:
            return since
        if rule.reenter.mode == "after":
            after = int(rule.reenter.after)
            queries.append(f"SELECT MIN(finished_at) + {after} FROM enrollments WHERE rule = :rule "
                           f"AND finished_at > :now - {after}")
        moments = [self.store.conn.execute(q, {"now": since, "rule": rule.name}).fetchone()[0] for q in queries]
        return min((m for m in moments if m is not None), default=math.inf)

    # ------------------------------------------------------------------ 4. walking steps

    def _walk(self, rows: list, now: int, result: TickResult) -> None:
        """Move due enrollments (``rows`` of WALK_COLUMNS) through their steps up to the next
        wait, all friends at the same step of a rule together, then record their sends."""
        frontier: list[_Walker] = []
        updates: dict[int, tuple] = {}
        intents: list[tuple] = []
        openings: dict[str, int] = {}
        menus: list[tuple[_Walker, ir.MenuStep]] = []
        seen: set[int] = set()
        for (eid, friend, rule_name, step_id, due_at, state, variant, holdout, entered_at, occurrence,
             cause_seq, reply_token, reply_deadline, event_seq) in rows:
            rule = self.project.rules.get(rule_name)
            if rule is None:
                updates[eid] = ("exited", step_id, None, now, "rule_removed")
                continue
            idx = self._index[rule_name].get(step_id) if step_id is not None else None
            if idx is None:
                pos = len(rule.steps)
            else:
                pos = idx + 1 if state == "waiting" else idx
            frontier.append(_Walker(eid, friend, rule_name, pos, entered_at, due_at, variant, bool(holdout),
                                    occurrence, cause_seq, reply_token, reply_deadline, event_seq))
            seen.add(eid)
        result.advanced += len(frontier)

        def flush(w: _Walker) -> None:
            """The sends collected since the last wait become one intent (one push), due now
            for an answer, else at the window's next opening; decided when it is due."""
            if w.buffer:
                steps = self._encode(tuple(w.buffer))
                names = self._encode(w.buffer[0][1] if len(w.buffer) == 1
                                     else tuple(n for _, step_names in w.buffer for n in step_names))
                answer = w.cause_seq is not None and not w.answered
                token = w.reply_token if not w.answered and (w.reply_deadline or 0) >= now else None
                if answer:
                    due = now
                else:
                    due = openings.get(w.rule)
                    if due is None:
                        window = self.project.rules[w.rule].window or self.settings.window
                        due = openings[w.rule] = timeutil.next_opening(now, window, self.tz)
                intents.append((w.id, w.friend, w.rule, steps, names, due, now, w.variant, int(w.holdout),
                                w.occurrence, w.event_seq, int(answer), token,
                                w.reply_deadline if token else None))
                w.buffer = []
            w.answered = True

        def finish(w: _Walker, state: str, step_id: str | None, due: int | None, reason: str | None) -> None:
            flush(w)
            done = state in ("done", "exited")
            updates[w.id] = (state, step_id, due, now if done else None, reason)
            if state == "exited":
                result.exited += 1

        def spawn(new: Iterable[_Walker]) -> list[_Walker]:
            fresh = [w for w in new if w.id not in seen]
            seen.update(w.id for w in fresh)
            result.advanced += len(fresh)
            return fresh

        rounds = 0
        while frontier and rounds < MAX_ROUNDS:
            rounds += 1
            nxt: list[_Walker] = []
            by: dict[tuple[str, int], list[_Walker]] = defaultdict(list)
            for w in frontier:
                by[(w.rule, w.pos)].append(w)
            for (rule_name, pos), walkers in by.items():
                rule = self.project.rules[rule_name]
                params = {"now": now, "rule": rule_name}
                if pos >= len(rule.steps):
                    for w in walkers:
                        finish(w, "done", None, None, None)
                    continue
                if rule.exit_when is not None:
                    c = self._sql(rule.exit_when, True)
                    gone = self.store.select_enrollments(c.sql, {**c.params, **params}, [w.id for w in walkers])
                    for w in walkers:
                        if w.id in gone:
                            finish(w, "exited", rule.steps[pos].id, None, "exit_when")
                    walkers = [w for w in walkers if w.id not in gone]
                step = rule.steps[pos]
                cond = getattr(step, "cond", None)
                if type(step) is ir.Send:   # its `if` is decided when the send goes out (deliver stage)
                    entry = (step.id, step.messages)
                    for w in walkers:
                        w.buffer.append(entry)
                        w.pos += 1
                    nxt.extend(walkers)
                    continue
                if cond is not None and walkers:
                    c = self._sql(cond, True)
                    ok = self.store.select_enrollments(c.sql, {**c.params, **params}, [w.id for w in walkers])
                else:
                    ok = {w.id for w in walkers}
                writes = not isinstance(step, ir.WAIT_STEPS)
                for w in walkers:
                    try:
                        if writes and w.id in ok:   # undone alone if it raises for this friend
                            with self.store.savepoint():
                                go_on = self._step(rule, step, w, True, now, result, flush, finish,
                                                   spawn, nxt, menus)
                        else:
                            go_on = self._step(rule, step, w, w.id in ok, now, result, flush, finish,
                                               spawn, nxt, menus)
                    except Exception as exc:
                        if is_store_fault(exc) or isinstance(exc, (OSError, MemoryError)):
                            raise   # the database or the machine failed: the chunk is redone
                        # one friend's step that fails leaves that enrollment with the reason;
                        # everyone else walks on (SPEC §4: one bad item never stops the others)
                        reason = f"{type(exc).__name__}: {exc}"[:500]
                        log.error("rule %s: step %s failed for friend %s, the friend leaves the "
                                  "rule: %s", rule_name, step.id, w.friend, reason)
                        finish(w, "exited", step.id, None, f"failed: {reason}")
                        result.failed += 1
                        continue
                    if go_on:
                        w.pos += 1
                        nxt.append(w)
            frontier = nxt
        for w in frontier:  # a runaway loop of `start` steps: park them, due now
            finish(w, "active", self.project.rules[w.rule].steps[w.pos].id, now, None)
            log.error("rule %s: friend %s stopped after %d steps in one tick", w.rule, w.friend, MAX_ROUNDS)
        self.store.update_enrollments([(*u, i) for i, u in updates.items()])
        self.store.add_intents(intents)
        self._deliver_menus(menus, now, result)

    def _step(self, rule: ir.Rule, step: ir.Step, w: _Walker, ok: bool, now: int, result: TickResult,
              flush, finish, spawn, nxt: list[_Walker], menus: list) -> bool:
        """Run one step for one walker; True when it moves on to the next step in this tick."""
        s = self.store
        if isinstance(step, ir.Wait):
            due = timeutil.wait_at(now, step.seconds, step.at, self.tz)
        elif isinstance(step, ir.WaitUntil):
            due = timeutil.wait_until(now, step.at, step.weekday, self.tz)
        elif isinstance(step, ir.WaitFor):
            due = now + step.up_to
        else:
            due = None
        if isinstance(step, ir.WAIT_STEPS):
            flush(w)
            if due <= now and not isinstance(step, ir.WaitFor):
                return True
            finish(w, "waiting", step.id, due, None)
            return False
        if not ok:
            return True
        if isinstance(step, ir.Send):
            w.buffer.append((step.id, step.messages))
        elif isinstance(step, ir.TagStep):
            if s.add_tags(w.friend, [step.name], now):
                nxt.extend(spawn(self._fire("tag", {"add": [step.name]}, w.friend, now, now, None, result)))
        elif isinstance(step, ir.UntagStep):
            s.remove_tags(w.friend, [step.name])
        elif isinstance(step, ir.SetStep):
            s.set_attributes(w.friend, {step.attr: step.value})
        elif isinstance(step, ir.MenuStep):
            menus.append((w, step))
        elif isinstance(step, ir.StartStep):
            target = self.project.rules.get(step.rule)
            entered = self._enter(target, w.friend, now, now) if target is not None else None
            if entered is not None:
                result.entered += 1
                nxt.extend(spawn([entered]))
        elif isinstance(step, ir.StopStep):
            finish(w, "exited", step.id, None, "stop")
            return False
        return True

    # ------------------------------------------------------------------ sends

    def _encode(self, value: Any) -> str:
        """JSON text of a step list or message names, made once per distinct value."""
        text = self._json.get(value)
        if text is None:
            if len(self._json) > 10000:
                self._json.clear()
            text = self._json[value] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return text

    def _deliver_menus(self, menus: list[tuple[_Walker, ir.MenuStep]], now: int, result: TickResult) -> None:
        """Rich menu links of the batch: an outbox row each (not for blocked or holdout friends)."""
        if not menus:
            return
        s, settings = self.store, self.settings
        blocked = s.blocked_among({w.friend for w, _ in menus})
        day_now = timeutil.local_day(now, self.tz)
        deliveries: list[tuple] = []
        outbox: list[tuple] = []
        for w, step in menus:
            menu_id, label = settings.rich_menu(step.menu), [f"menu:{step.menu}"]
            reason = ("blocked" if w.friend in blocked else "holdout" if w.holdout
                      else "unknown_menu" if menu_id is None else None)
            if reason:
                deliveries.append((w.friend, w.rule, step.id, w.id, None, label, "skipped", reason, w.variant,
                                   now, day_now, 0))
                result.skipped += 1
                continue
            outbox.append(("menu_link", [w.friend], {"richMenuId": menu_id}, label, w.rule, now, None, None))
            result.queued += 1
            deliveries.append((w.friend, w.rule, step.id, w.id, len(outbox) - 1, label, "queued", None,
                               w.variant, now, day_now, 0))
        ids = s.add_outbox_rows(outbox, now)
        s.add_deliveries(deliveries, ids)

    # ------------------------------------------------------------------ 5. the deliver stage

    def _deliver_due(self, now: int, result: TickResult) -> None:
        """Decide every send intent due at ``now``, whichever path queued it, with one procedure
        (SPEC §4 "decided when it goes out"): deferred again while its window is closed; dropped
        when its enrollment has left the rule or the rule's ``exit when`` holds now (the
        enrollment leaves); skipped for a friend who is not a current friend, or in the
        holdout; each step's ``if``/``unless`` checked now; ``max_per_day`` applied across all
        of a friend's sends due in this tick, higher priority first (``uncapped`` rules and
        answers neither count nor are stopped); ``monthly_quota``: the rest held to the next
        month's opening; rendered now. Only then are outbox rows written, due at once. Friends
        are decided DELIVER_CHUNK at a time, each chunk in one transaction."""
        s = self.store
        if not s.has_due_intents(now):
            return
        with s.transaction():
            for name, rule in self.project.rules.items():
                if rule.window or self.settings.window:
                    opening = timeutil.next_opening(now, rule.window or self.settings.window, self.tz)
                    if opening > now:
                        s.defer_intents(name, opening, now)
            s.start_deliver(now, [(name, r.priority, int(r.uncapped)) for name, r in self.project.rules.items()])
        today = timeutil.local_day(now, self.tz)
        after = ""
        while True:
            with s.transaction():
                last = s.load_due(now, DELIVER_CHUNK, after, today, self.settings.max_per_day)
                if last is None:
                    return
                self._decide(now, result)
            after = last

    def _decide(self, now: int, result: TickResult) -> None:
        """One chunk of the deliver stage, on ``temp.lr_due`` (see :meth:`_deliver_due`)."""
        s, settings = self.store, self.settings
        self._rendered.clear()    # friend-independent renders are shared within one chunk only
        self._hashes.clear()
        today = timeutil.local_day(now, self.tz)
        params = {"now": now}
        for name, rule in self.project.rules.items():
            if rule.exit_when is not None:
                c = self._sql(rule.exit_when, True)
                result.exited += s.due_exits(name, c.sql, {**c.params, **params, "rule": name}, now)
        # the steps' if/unless, now
        changes: list[tuple] = []
        for rule_name, steps_text in s.due_groups():
            rule = self.project.rules.get(rule_name)
            steps = self._split_steps(rule, json.loads(steps_text))
            failing: dict[int, set[str]] = defaultdict(set)
            for step_id, _names in steps:
                step = rule.step(step_id) if rule else None
                cond = getattr(step, "cond", None)
                if cond is None:
                    continue
                c = self._sql(cond, True)
                for i in s.due_failing(rule_name, steps_text, c.sql, {**c.params, **params, "rule": rule_name}):
                    failing[i].add(step_id)
            for i, gone in failing.items():
                kept = [[sid, names] for sid, names in steps if sid not in gone]
                names = [n for _, step_names in kept for n in step_names]
                changes.append((self._encode(tuple((sid, tuple(n)) for sid, n in kept)),
                                self._encode(tuple(names)), None if kept else "dropped",
                                None if kept else "condition", i))
        s.due_update(changes)
        if settings.max_per_day is not None:
            s.due_cap(settings.max_per_day)
        s.due_replies(now)
        held_until = None
        month = timeutil.local(now, self.tz).strftime("%Y-%m")
        if settings.monthly_quota is not None:
            if s.due_quota(settings.monthly_quota - s.quota_used(month)):
                held_until = self._next_month_opening(now)
        billed = 0
        # friend-independent messages: rendered once, sent set-based as multicasts
        if not settings.base_url:
            for rule_name, steps_text, names_text, occurrence in s.due_render_keys():
                names = tuple(json.loads(names_text))
                if not self._static(names):
                    continue
                w = _Walker(0, "", rule_name, 0, now, now, None, False, occurrence, None, None, None)
                rejected: list = []
                chunks = self._render(_Group(w, "", names, None, False), {}, now, rejected, today)
                if rejected or not chunks:
                    continue   # a message that does not render: recorded per friend below
                rows, count = s.due_static_send(rule_name, steps_text, names_text, occurrence,
                                                json.loads(steps_text)[0][0], chunks, now, today)
                result.queued += rows
                billed += count * len(chunks)
        billed += self._deliver_each(s.due_rows(), now, today, result)
        s.add_quota_used(month, billed)
        counts = s.due_finish(now, today, held_until)
        result.capped += counts.get("capped", 0)
        result.skipped += counts.get("skipped", 0)

    @staticmethod
    def _split_steps(rule: ir.Rule | None, steps: list) -> list:
        """A group rebuilt from its delivery rows (a send the dispatcher handed back) names only
        its first step: split its messages over the consecutive send steps they came from."""
        if rule is None or len(steps) != 1:
            return steps
        step_id, names = steps[0]
        pos = rule.index_of(step_id)
        if pos is None or not isinstance(rule.steps[pos], ir.Send) or tuple(rule.steps[pos].messages) == tuple(names):
            return steps
        out, rest = [], list(names)
        for step in rule.steps[pos:]:
            if not rest:
                break
            if isinstance(step, ir.WAIT_STEPS):
                break
            if not isinstance(step, ir.Send):
                continue
            if tuple(rest[:len(step.messages)]) == tuple(step.messages):
                out.append([step.id, list(step.messages)])
                rest = rest[len(step.messages):]
        return out if out and not rest else steps

    def _next_month_opening(self, now: int) -> int:
        """Where sends held by ``monthly_quota`` go: the first moment of next month (local)."""
        local = timeutil.local(now, self.tz)
        first = (local.replace(day=1) + dt.timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0,
                                                                         microsecond=0)
        return timeutil.epoch(first)

    def _deliver_each(self, rows: list, now: int, today: str, result: TickResult) -> int:
        """The due sends rendered per friend (personalised messages, tracked links, replies):
        outbox rows (identical renders of one rule still share a multicast) and deliveries.
        Returns the billed messages (recipients of pushes and multicasts)."""
        if not rows:
            return 0
        s = self.store
        friends = s.friends_for_render({r["friend"] for r in rows})
        events = s.events_data({r["event_seq"] for r in rows if r["event_seq"] is not None})
        deliveries: list[tuple] = []
        outbox: list[tuple] = []
        marks: dict[int, tuple] = {}
        multicast: dict[tuple, list] = defaultdict(list)
        chunk_keys: dict[int, tuple[list, list]] = {}
        billed = 0
        for r in rows:
            names = tuple(json.loads(r["messages"]))
            step_id = json.loads(r["steps"])[0][0]
            w = _Walker(r["enrollment"], r["friend"], r["rule"], 0, now, now, r["variant"], False, r["occurrence"],
                        None, None, None, r["event_seq"])
            g = _Group(w, step_id, names, None, bool(r["answer"]))
            friend = friends.get(r["friend"]) or {"id": r["friend"]}
            chunks = self._render(g, friend, now, deliveries, today, events.get(r["event_seq"]))
            if not chunks:
                marks[r["id"]] = ("rejected", None, None, r["id"])
                continue
            counts = 1 if r["counts"] else 0
            reason = "answer" if r["answer"] else None
            if r["kind"] == "reply" or r["answer"]:
                # for its one friend now: the first push as the reply, the rest as pushes
                first_ref = None
                for i, (push_names, objects) in enumerate(chunks):
                    token = r["reply_token"] if i == 0 and r["kind"] == "reply" else None
                    outbox.append(("reply" if token else "push", [r["friend"]], objects, push_names, r["rule"], now,
                                   token, r["reply_deadline"] if token else None))
                    billed += 0 if token else 1
                    ref = len(outbox) - 1
                    first_ref = ref if first_ref is None else first_ref
                    deliveries.append((r["friend"], r["rule"], step_id, r["enrollment"], ref, push_names, "queued",
                                       reason, r["variant"], now, today, counts if i == 0 else 0))
                marks[r["id"]] = ("sent", None, first_ref, r["id"])
                continue
            hit = chunk_keys.get(id(chunks))
            if hit is None:   # keeps ``chunks`` alive, so its id stays unique in this chunk
                hit = chunk_keys[id(chunks)] = (chunks, [
                    (r["rule"], self._hash(objects), tuple(push_names)) for push_names, objects in chunks])
            for i, key in enumerate(hit[1]):
                multicast[key].append((r, i, chunks[i][1], step_id, counts))
        for (rule, _hash, names), items in multicast.items():
            objects = items[0][2]
            for start in range(0, len(items), MAX_MULTICAST):
                part = items[start:start + MAX_MULTICAST]
                outbox.append(("multicast" if len(part) > 1 else "push", [r["friend"] for r, *_ in part],
                               objects, list(names), rule, now, None, None))
                billed += len(part)
                ref = len(outbox) - 1
                for r, i, _, step_id, counts in part:
                    deliveries.append((r["friend"], rule, step_id, r["enrollment"], ref, list(names), "queued",
                                       None, r["variant"], now, today, counts if i == 0 else 0))
                    if i == 0:
                        marks[r["id"]] = ("sent", None, ref, r["id"])
        ids = s.add_outbox_rows(outbox, now)
        result.queued += len(outbox)
        s.add_deliveries(deliveries, ids)
        s.due_mark([(status, reason, None if ref is None else ids[ref], i)
                    for status, reason, ref, i in marks.values()])
        return billed

    def _render(self, g: _Group, friend: dict, now: int, deliveries: list,
                day: str, event: dict | None = None) -> list[tuple[list[str], list[dict]]]:
        """Render the group's messages for one friend and pack them into pushes of at most five
        objects, keeping each message whole where it fits. A message that fails to render is
        recorded as a rejected delivery and left out. Messages that do not mention ``friend``
        (and carry no tracked links) are rendered once per batch and shared."""
        rule, occurrence = g.walker.rule, g.walker.occurrence
        key = None
        if not self.settings.base_url and self._static(g.names):
            key = (g.names, rule, occurrence if occurrence and occurrence.startswith("sale:") else None)
            hit = self._rendered.get(key)
            if hit is not None:
                chunks, failures = hit
                deliveries.extend((g.walker.friend, rule, g.step_id, g.walker.id, None, [name], "rejected",
                                   error, g.walker.variant, now, day, 0) for name, error in failures)
                return chunks
        sale = self._sale_of(g.walker)
        chunks: list[tuple[list[str], list[dict]]] = []
        failures: list[tuple[str, str]] = []
        for name in g.names:
            defn = self.project.messages.get(name)
            if defn is None:
                continue
            try:
                objects = render_message(defn, friend=friend, rule=rule, sale=sale, utm=self.settings.utm,
                                         link=self._linker(friend.get("id"), rule, name, now), event=event)
            except RenderError as exc:
                who = friend.get("id") or g.walker.friend
                if who:
                    log.error("rule %s: message %s not sent to %s: %s", rule, name, who, exc)
                else:   # a message the same for everyone: it fails for each friend it is due for
                    log.error("rule %s: message %s not sent to anyone it is due for: %s", rule, name, exc)
                failures.append((name, str(exc)))
                deliveries.append((g.walker.friend, rule, g.step_id, g.walker.id, None, [name], "rejected",
                                   str(exc), g.walker.variant, now, day, 0))
                continue
            if chunks and len(chunks[-1][1]) + len(objects) <= MAX_OBJECTS:
                chunks[-1][0].append(name)
                chunks[-1][1].extend(objects)
            else:
                chunks.extend(([name], objects[i:i + MAX_OBJECTS]) for i in range(0, len(objects), MAX_OBJECTS))
        if key is not None:
            self._rendered[key] = (chunks, failures)
        return chunks

    def _static(self, names: tuple[str, ...]) -> bool:
        """Whether these messages render the same for every friend (no ``friend`` or ``event``)."""
        known = self._static_names.get(names)
        if known is not None:
            return known
        self._static_names[names] = all(self._static_one(n) for n in names)
        return self._static_names[names]

    def _static_one(self, name: str) -> bool:
        if name not in self._static_names:
            defn = self.project.messages.get(name)
            text = "" if defn is None else repr(defn.objects)
            self._static_names[name] = "friend" not in text and "event" not in text
        return self._static_names[name]

    def _hash(self, objects: list[dict]) -> str:
        """``render_hash``, computed once per distinct payload object."""
        key = id(objects)
        if key not in self._hashes:
            self._hashes[key] = (objects, render_hash(objects))
        return self._hashes[key][1]

    def _linker(self, friend: str | None, rule: str, message: str, now: int) -> Callable[[str], str] | None:
        """Click tracking: each link becomes ``<base_url>/c/<token>`` when a base URL is set."""
        base = self.settings.base_url
        if not base or friend is None:
            return None
        return lambda url: f"{base.rstrip('/')}/c/{self.store.link_token(friend, rule, message, url, now)}"

    def _sale_of(self, w: _Walker) -> dict | None:
        if not (w.occurrence or "").startswith("sale:"):
            return None
        name = w.occurrence.split(":")[1]
        sale = next((s for s in self.project.sales if s.name == name), None)
        return sale_vars(sale, self.tz) if sale else None


def _q(text: str) -> str:
    return text.replace("'", "''")
