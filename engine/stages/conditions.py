"""Stage 3 of a tick: condition triggers, on a condition tick.

The condition, the entry filter and the re-entry policy are one SQL read; the friends it finds
are enrolled in chunks like an audience. The first check of a rule reads every friend; later
checks read only the friends for whom something may have changed the answer since the last
complete check (:meth:`ConditionTriggers.candidates`): a write to their row, activity or tags
(``friend_changes``), a stored time crossed by a term counting back from now, the end of an
enrollment that kept them out, or a ranking's threshold that moved past their value. A ``top``
ranks the kept value of each current friend (``measure_values``, refreshed the same way)
against a threshold found through an index. A rule whose last check entered nobody is not
checked again while nothing has changed that could change the answer (see
:meth:`ConditionTriggers.still_quiet`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import NamedTuple

from engine.language import ir, timeutil
from engine.runtime import sqlcond
from engine.runtime.store import ConditionState
from engine.stages.context import Context, TickResult

#: Seconds of slack when an ended enrollment's ``finished_at`` (the clock of the runner that
#: ended it) is compared with the last check's moment (another runner's clock, on PostgreSQL).
CLOCK_SLACK = 300


class ConditionTriggers:
    """The condition-triggered rules of the context's project. ``interval`` (seconds, 0 =
    every tick) sets how often they are checked, in slots aligned to local midnight."""

    def __init__(self, ctx: Context, interval: int = 0, incremental: bool = True):
        self.ctx = ctx
        self.interval = interval
        #: False: every check reads every friend (the reference the incremental checks are
        #: compared with in the tests)
        self.incremental = incremental
        #: rule -> seconds its latest check took (benchmarks/engine.py prints them)
        self.timings: dict[str, float] = {}
        #: rule -> (compiled check, its rankings), made once per project
        self._plans: dict[str, tuple[_Plan, list[sqlcond.Ranking]]] = {}
        self._forgotten = False
        #: states of the checks of this condition tick, saved together at its end
        self._states: dict[str, ConditionState] = {}
        #: (the saved states, the latest change) as this condition tick's first check read them
        self._read: tuple[dict[str, ConditionState], int] | None = None
        #: rule -> (database changes, moment, next moment time alone may change it) of its last
        #: check, when that check entered nobody
        self._quiet: dict[str, tuple[tuple[int, int], int, float | None]] = {}
        #: the rules whose ``exit when`` may come to hold with no event of the friend's (time,
        #: rankings): checked for their open enrollments on every condition tick
        self._drifting = [
            r
            for r in ctx.rules.values()
            if r.exit_when is not None and sqlcond.drifts(r.exit_when, ctx.project.segments)
        ]
        #: as ``_quiet``, for those rules' last exit checks
        self._exit_quiet: dict[str, tuple[tuple[int, int], int, float | None]] = {}

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
        self._states.clear()  # (a tick that failed half-way left its own)
        self._read = None
        self._exits(now, result)
        for rule in self.ctx.rules.values():
            if not isinstance(rule.trigger, ir.ConditionTrigger):
                continue
            if self.still_quiet(rule, now):
                continue
            before, started = s.total_changes, time.perf_counter()
            entered, noise = self.check(rule, now)
            self.timings[rule.name] = time.perf_counter() - started
            result.entered += entered
            if entered:
                self.ctx.carry.noise += noise
                self._quiet.pop(rule.name, None)
            else:
                self.ctx.carry.noise += s.total_changes - before  # its scratch rows only
                self._quiet[rule.name] = (self._changes(), now, None)
        before = s.total_changes
        keep = None if self._forgotten else self._kept()  # once per project: forget the rules gone
        s.save_condition_states(self._states, keep=keep)
        self._states.clear()
        self._read = None
        self._forgotten = True
        self.ctx.carry.noise += s.total_changes - before

    def _exits(self, now: int, result: TickResult) -> None:
        """``exit when`` of the open enrollments of the rules whose exit may come to hold with
        no event of the friend's (``exit when not in segment vip``, when others outspend them;
        ``exit when last purchase older than 30d``): a friend leaves at the first condition
        tick it holds, not only at their next step or event (SPEC §2.5: as soon as it holds).
        A rule is not checked again while nothing changed and no term crossed a stored time."""
        s = self.ctx.store
        for rule in self._drifting:
            if self._exits_quiet(rule, now):
                continue
            c = self.ctx.cond(rule.exit_when, True)
            ids = s.open_enrollments_where(rule.name, c.sql, {**c.params, "now": now})
            if ids:
                with s.transaction():
                    s.exit_enrollments(ids, "exit_when", now)
                result.exited += len(ids)
            self._exit_quiet[rule.name] = (self._changes(), now, None)

    def _exits_quiet(self, rule: ir.Rule, now: int) -> bool:
        """Whether ``rule``'s exit check now must find nobody, as its last did (as
        :meth:`still_quiet` for an entry check)."""
        memo = self._exit_quiet.get(rule.name)
        if memo is None or now < memo[1] or not self._unchanged(memo[0]):
            return False
        if memo[2] is None:
            memo = self._exit_quiet[rule.name] = (
                memo[0],
                memo[1],
                self._first_change(rule.exit_when, memo[1], rule.name),
            )
        return now < memo[2]

    def _kept(self) -> list[str]:
        """The names of the states the project's condition rules use."""
        out: list[str] = []
        for rule in self.ctx.rules.values():
            if isinstance(rule.trigger, ir.ConditionTrigger):
                out.append(rule.name)
                out.extend(f"measure:{r.key}" for r in self._plan(rule)[1])
        return out

    def _plan(self, rule: ir.Rule) -> tuple[_Plan, list[sqlcond.Ranking]]:
        plan = self._plans.get(rule.name)
        if plan is None:
            parts = tuple(c for c in (rule.trigger.cond, rule.entry) if c is not None)
            ranked: list[sqlcond.Ranking] = []
            dialect = "postgresql" if self.ctx.store.pg else "sqlite"
            compiler = sqlcond.CondCompiler(
                self.ctx.project.segments, with_enrollment=False, dialect=dialect, ranked=ranked
            )
            cond = ir.All(parts)
            where = sqlcond.audience(compiler.compile(cond) if parts else None)
            blocked = sqlcond.reentry_blocked(rule.reenter)
            variant, holdout, drawn = sqlcond.draw(rule.split, rule.holdout)
            fills = {
                r.key: (
                    sqlcond.measure_fill(r.measure, dialect, some=False),
                    sqlcond.measure_fill(r.measure, dialect, some=True),
                )
                for r in ranked
            }
            measure_moves = {
                r.key: sqlcond.crossings(ir.Top(0.0, r.measure), self.ctx.project.segments) or [] for r in ranked
            }
            checked = hashlib.sha256(
                json.dumps(
                    [
                        where.sql,
                        sorted(where.params.items()),
                        blocked.sql,
                        repr(rule.reenter),
                        [(r.key, r.share) for r in ranked],
                    ],
                    default=str,
                ).encode()
            ).hexdigest()[:16]
            plan = self._plans[rule.name] = (
                _Plan(
                    where=where,
                    blocked=blocked,
                    variant=variant,
                    holdout=holdout,
                    drawn=drawn,
                    moves=sqlcond.crossings(cond, self.ctx.project.segments),
                    fills=fills,
                    measure_moves=measure_moves,
                    checked=checked,
                ),
                ranked,
            )
        return plan

    def check(self, rule: ir.Rule, now: int) -> tuple[int, int]:
        """Check one condition rule now, entering whom it lets in: every friend on its first
        check (or when its condition changed), else only the candidates. Returns (how many
        entered, the store's changes that were bookkeeping)."""
        s = self.ctx.store
        plan, ranked = self._plan(rule)
        if self._read is None:  # once a condition tick, before its first check reads anything
            self._read = (s.condition_states() if self.incremental else {}, s.change_mark())
        saved, seen = self._read
        last = saved.get(rule.name)
        noise = s.total_changes
        tops = {r.param: self._refresh(r, plan, now, seen, saved.get(f"measure:{r.key}")) for r in ranked}
        params = {**plan.where.params, **plan.blocked.params, **plan.drawn, **tops}
        some = self._candidates(rule, plan, ranked, last, tops, now) if last is not None else None
        noise = s.total_changes - noise
        entered = (
            0
            if some == 0
            else s.enroll_audience(
                rule=rule.name,
                version=self.ctx.versions[rule.name],
                step_id=rule.steps[0].id if rule.steps else None,
                now=now,
                where_sql=plan.where.sql,
                params=params,
                occurrence=None,
                blocked_sql=plan.blocked.sql,
                variant_sql=plan.variant,
                holdout_sql=plan.holdout,
                candidates=some is not None,
            )
        )
        self._states[rule.name] = ConditionState(plan.checked, seen, now, tops)
        return entered, noise

    def _refresh(self, rank: sqlcond.Ranking, plan: _Plan, now: int, seen: int, last: ConditionState | None) -> float:
        """Bring a ranked measure's kept values up to now (from its ``last`` refresh, None: all
        of them); its threshold."""
        s = self.ctx.store
        name = f"measure:{rank.key}"
        if last is not None and last.at > now:  # the clock went back
            last = None
        if name not in self._states:  # (else refreshed already in this tick, for another rule)
            fill_all, fill_some = plan.fills[rank.key]
            s.refresh_measure(
                rank.key,
                (fill_all.sql, fill_all.params),
                (fill_some.sql, fill_some.params),
                last,
                plan.measure_moves[rank.key],
                now,
            )
            self._states[name] = ConditionState(rank.key, seen, now, {})
        return s.measure_threshold(rank.key, rank.share)

    def _candidates(
        self,
        rule: ir.Rule,
        plan: _Plan,
        ranked: list[sqlcond.Ranking],
        last: ConditionState,
        tops: dict[str, float],
        now: int,
    ) -> int | None:
        """Fill the candidates of an incremental check (``temp.lr_candidates``) and return how
        many; None when every friend must be read instead."""
        if plan.moves is None or last.checked != plan.checked or last.at > now:
            return None
        queries = list(plan.moves)
        params: dict[str, object] = {"since": last.at, "now": now, "rule": rule.name}
        for i, r in enumerate(ranked):
            old, new = last.tops.get(r.param), tops[r.param]
            if old is None or (old == -math.inf) != (new == -math.inf) or (old < 0) != (new < 0):
                return None  # everybody, or every friend without a value, moved in or out
            if old != new:
                params.update({f"rk{i}": r.key, f"rlo{i}": min(old, new), f"rhi{i}": max(old, new)})
                queries.append(
                    f"SELECT friend FROM measure_values WHERE measure = :rk{i} AND value > :rlo{i} AND value <= :rhi{i}"
                )
        reenter = rule.reenter
        if reenter.mode == "always":
            queries.append(
                f"SELECT friend FROM enrollments WHERE rule = :rule AND finished_at >= :since - {CLOCK_SLACK}"
            )
        elif reenter.mode == "after":
            after = int(reenter.after)
            queries.append(
                f"SELECT friend FROM enrollments WHERE rule = :rule AND finished_at > :since - {after + CLOCK_SLACK} "
                f"AND finished_at <= :now - {after}"
            )
        return self.ctx.store.condition_candidates(last.seen, queries, params)

    def quiet_until(self, now: int) -> float:
        """The first moment at or after ``now`` at which a condition check may enter somebody
        (or an exit check find someone to leave), as far as the last checks tell
        (:meth:`still_quiet`): ``now`` when a rule must be checked now, infinity when none can
        before something changes the database."""
        until = math.inf
        for rule in self.ctx.rules.values():
            if isinstance(rule.trigger, ir.ConditionTrigger):
                if not self.still_quiet(rule, now):
                    return now
                until = min(until, self._quiet[rule.name][2])
        for rule in self._drifting:  # and the exits checked with them
            if not self._exits_quiet(rule, now):
                return now
            until = min(until, self._exit_quiet[rule.name][2])
        return until

    def _changes(self) -> tuple[int, int]:
        """Changes any connection made to the database, less the engine's bookkeeping."""
        own, others = self.ctx.store.change_counts()
        return own - self.ctx.carry.noise, others

    def _unchanged(self, seen: tuple[int, int]) -> bool:
        """Whether the database is as it was when :meth:`_changes` gave ``seen``: this
        connection's own writes are counted in memory, and only when there are none the
        database is asked about the others' (``PRAGMA data_version``)."""
        if self.ctx.store.total_changes - self.ctx.carry.noise != seen[0]:
            return False
        return self._changes() == seen

    def still_quiet(self, rule: ir.Rule, now: int) -> bool:
        """Whether checking ``rule``'s condition now must enter nobody, as its last check did:
        nothing in the database changed since, and no term counting back from now
        (``within``, ``older than``, ``friend for``, ``reenter after``) crosses a stored time
        between then and now (:func:`engine.runtime.sqlcond.change_moments`). A check costs a pass over
        every friend; a quiet night of an account (and most hours of a simulation) skips it."""
        memo = self._quiet.get(rule.name)
        if memo is None or now < memo[1] or not self._unchanged(memo[0]):
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
        return self._first_change(ir.All(tuple(parts)), since, rule.name, rule.reenter)

    def _first_change(self, cond: ir.Cond, since: int, rule: str, reenter: ir.Reenter | None = None) -> float:
        """The first moment after ``since`` at which time alone may change ``cond`` (and the
        re-entry of ``reenter after``) for some friend: infinity, never; ``since``, unknown."""
        queries = sqlcond.change_moments(cond, self.ctx.project.segments)
        if queries is None:
            return since
        params = {"now": since, "rule": rule}
        if reenter is not None and reenter.mode == "after":
            queries.append(sqlcond.reentry_moment())
            params["reenter_after"] = int(reenter.after)
        moment = self.ctx.store.first_moment(queries, params)
        return math.inf if moment is None else moment


class _Plan(NamedTuple):
    """A condition rule's check, compiled once per project: the audience's SQL (``where``,
    ``blocked``, the split and holdout draw), the crossings of its terms (``moves``; None: every
    check reads every friend), each ranked measure's fills and crossings, and a hash of what it
    checks (a changed rule is checked in full again)."""

    where: sqlcond.Compiled
    blocked: sqlcond.Compiled
    variant: str
    holdout: str
    drawn: dict
    moves: list[str] | None
    fills: dict[str, tuple[sqlcond.Compiled, sqlcond.Compiled]]
    measure_moves: dict[str, list[str]]
    checked: str
