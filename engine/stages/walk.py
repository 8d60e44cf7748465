"""Stage 4 of a tick: due enrollments walk their steps up to their next wait.

Enrollments due now are read in transactions of :data:`CHUNK` (or sized by a write budget),
higher-priority rules first; those an event of this tick resumed (``wait for``) go last, so their
steps see everything that event did. In each transaction a :class:`Walk` moves its enrollments
together, all friends at the same step of a rule at once (``exit when`` and a step's ``if`` are
one SQL query per group). Sends are not decided here: the sends of one enrollment between two
waits become one intent (:class:`engine.runtime.store.Intent`), due at its window's next opening, for
the deliver stage. Rich menu links are written as outbox rows at once.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable

from engine.language import ir, timeutil
from engine.runtime.store import Delivery, Intent, Move, OutboxRow, WalkRow, is_store_fault, menu_label
from engine.stages.context import Context, TickResult
from engine.stages.entry import Cause, Entry, Walker

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
#: Bound on step rounds in one walk (``start`` loops between rules with ``reenter always``).
MAX_ROUNDS = 1000


class WalkStage:
    """Walks the due enrollments of the context's project. ``write_budget`` (seconds, None =
    CHUNK rows per transaction, the same rows every run) sizes transactions by time instead."""

    def __init__(self, ctx: Context, entry: Entry, write_budget: float | None = None):
        self.ctx = ctx
        self.entry = entry
        self.write_budget = write_budget
        #: (rules, exclude, the same rules as a set) filters of the due walk, highest priority
        #: first; the last takes every other rule (also enrollments of rules no longer in the
        #: project)
        levels = sorted({r.priority for r in ctx.rules.values()}, reverse=True)
        higher = [[n for n, r in ctx.rules.items() if r.priority == p] for p in levels[:-1]]
        taken = [n for names in higher for n in names]
        self.order = [(names, False, frozenset(names)) for names in higher] + [
            (taken or None, bool(taken), frozenset(taken) if taken else None)
        ]

    def run(self, now: int, result: TickResult) -> None:
        s, carry = self.ctx.store, self.ctx.carry
        seen: set[int] = set(carry.resumed)
        later = len(seen)
        budget = self.write_budget
        size = CHUNK if budget is None else min(FIRST_CHUNK, CHUNK)
        # One read finds every due enrollment when they are fewer than a chunk (most ticks: a
        # few, or none), for every level; else, or once a walk entered others, each level
        # reads its own, chunk by chunk.
        every = s.due_enrollments(now, size + later) if len(self.order) > 1 else None
        if every is not None and len(every) >= size + later:
            every = None
        # Higher-priority rules are walked first, so that when max_per_day must choose, their
        # sends are recorded before those of lower priority even across chunks.
        for rules, exclude, named in self.order:
            while True:
                limit = size + later
                if every is not None:
                    read = [r for r in every if named is None or (r.rule in named) != exclude]
                else:
                    read = s.due_enrollments(now, limit, rules, exclude)
                rows = [r for r in read if r.id not in seen]
                if not rows:
                    break
                seen.update(r.id for r in rows)
                started = time.perf_counter()
                walk = Walk(self.ctx, self.entry, now, result)
                with s.transaction():
                    walk.run(rows)
                if budget is not None:
                    spent = max(time.perf_counter() - started, 1e-6)
                    size = max(100, min(CHUNK, 2 * size, int(len(rows) * budget / spent)))
                if walk.entered:  # a ``tag`` or ``start`` may have moved others: read again
                    every = None
                elif every is not None or len(read) < limit:
                    break  # every enrollment of the level due now was read
        # enrollments that an event of this tick resumed (``wait for``) go after everything else,
        # so that they see all the event did, also through the rules it entered (SPEC §4)
        resumed, carry.resumed = sorted(carry.resumed), set()
        for start in range(0, len(resumed), CHUNK):
            rows = s.enrollment_rows(resumed[start : start + CHUNK], now)
            if rows:
                with s.transaction():
                    Walk(self.ctx, self.entry, now, result).run(rows)


class Walk:
    """One transaction's enrollments moving through their steps up to the next wait: where
    each one ends up (:class:`engine.runtime.store.Move`), the intents of their sends and the rich menu
    links, written together at the end."""

    def __init__(self, ctx: Context, entry: Entry, now: int, result: TickResult):
        self.ctx = ctx
        self.entry = entry
        self.now = now
        self.result = result
        self.moves: dict[int, Move] = {}
        #: the intents of the walk, each with when its first send step ran in the walk
        self.intents: list[tuple[int, Intent]] = []
        self._sends = 0
        self.menus: list[tuple[Walker, ir.MenuStep]] = []
        self._openings: dict[str, int] = {}
        self._seen: set[int] = set()
        self._next: list[Walker] = []  # the walkers going on to their next step, this round
        #: steps run so far that wrote to the store (``tag``, ``untag``, ``set``, ``start``):
        #: an ``exit when`` that held not since the last one still holds not
        self.writes = 0
        #: whether the walk entered or resumed enrollments (``tag``, ``start``), which join it
        #: (and may have ended others)
        self.entered = False

    def run(self, rows: list[WalkRow]) -> None:
        frontier = self._load(rows)
        rounds = 0
        while frontier and rounds < MAX_ROUNDS:
            rounds += 1
            self._next = []
            groups: dict[tuple[str, int], list[Walker]] = defaultdict(list)
            for w in frontier:
                groups[(w.rule, w.pos)].append(w)
            for (rule_name, pos), walkers in groups.items():
                self._group(self.ctx.rules[rule_name], pos, walkers)
            frontier = self._next
        for w in frontier:  # a runaway loop of `start` steps: park them, due now
            self.finish(w, "active", self.ctx.rules[w.rule].steps[w.pos].id, self.now, None)
            log.error("rule %s: friend %s stopped after %d steps in one tick", w.rule, w.friend, MAX_ROUNDS)
        s = self.ctx.store
        s.update_enrollments(list(self.moves.values()))
        # in the order their first send steps ran (a rule entered by a `tag` step may reach its
        # wait before the rule that tagged), so that a friend's pushes go in the order sent
        self.intents.sort(key=lambda pair: pair[0])
        s.add_intents([intent for _, intent in self.intents])
        if self.menus:
            write_menu_links(self.ctx, self.menus, self.now, self.result)

    def _load(self, rows: list[WalkRow]) -> list[Walker]:
        """Walkers for the rows, each at the step it is to run next."""
        frontier: list[Walker] = []
        for row in rows:
            rule = self.ctx.rules.get(row.rule)
            if rule is None:
                self.moves[row.id] = Move("exited", row.step_id, None, self.now, "rule_removed", row.id)
                continue
            idx = self.ctx.position(row.rule, row.step_id)
            if idx is None:
                pos = len(rule.steps)
            else:
                pos = idx + 1 if row.state == "waiting" else idx
            frontier.append(
                Walker(
                    row.id,
                    row.friend,
                    row.rule,
                    pos,
                    row.entered_at,
                    row.due_at,
                    row.variant,
                    bool(row.holdout),
                    row.occurrence,
                    row.cause_seq,
                    row.reply_token,
                    row.reply_deadline,
                    row.event_seq,
                )
            )
            self._seen.add(row.id)
        self.result.advanced += len(frontier)
        return frontier

    def _group(self, rule: ir.Rule, pos: int, walkers: list[Walker]) -> None:
        """All walkers at one step of one rule: ``exit when`` and the step's ``if`` in one
        query each, then the step for each of them."""
        s, now = self.ctx.store, self.now
        params = {"now": now, "rule": rule.name}
        if pos >= len(rule.steps):
            for w in walkers:
                self.finish(w, "done", None, None, None)
            return
        if rule.exit_when is not None:
            # asked again only of walkers not asked since the walk last wrote: nothing it reads
            # changed since (``send`` steps only collect, waits and moves are written at the end)
            writes = self.writes
            ask = [w.id for w in walkers if w.stays != writes]
            if ask:
                c = self.ctx.cond(rule.exit_when, True)
                gone = s.select_enrollments(c.sql, {**c.params, **params}, ask)
                for w in walkers:
                    if w.id in gone:
                        self.finish(w, "exited", rule.steps[pos].id, None, "exit_when")
                    else:
                        w.stays = writes
                walkers = [w for w in walkers if w.id not in gone]
        step = rule.steps[pos]
        if type(step) is ir.Send:  # its `if` is decided when the send goes out (deliver stage)
            entry = (step.id, step.messages)
            for w in walkers:
                self._collect(w, entry)
                w.pos += 1
            self._next.extend(walkers)
            return
        cond = getattr(step, "cond", None)
        if cond is not None and walkers:
            c = self.ctx.cond(cond, True)
            ok = s.select_enrollments(c.sql, {**c.params, **params}, [w.id for w in walkers])
        else:
            ok = {w.id for w in walkers}
        writes = self._needs_savepoint(step)
        for w in walkers:
            try:
                if writes and w.id in ok:  # undone alone if it raises for this friend
                    self.writes += 1
                    with s.savepoint():
                        go_on = self._step(rule, step, w, True)
                else:
                    go_on = self._step(rule, step, w, w.id in ok)
            except Exception as exc:
                if is_store_fault(exc) or isinstance(exc, (OSError, MemoryError)):
                    raise  # the database or the machine failed: the chunk is redone
                # one friend's step that fails leaves that enrollment with the reason;
                # everyone else walks on (SPEC §4: one bad item never stops the others)
                reason = f"{type(exc).__name__}: {exc}"[:500]
                log.error(
                    "rule %s: step %s failed for friend %s, the friend leaves the rule: %s",
                    rule.name,
                    step.id,
                    w.friend,
                    reason,
                )
                self.finish(w, "exited", step.id, None, f"failed: {reason}")
                self.result.failed += 1
                continue
            if go_on:
                w.pos += 1
                self._next.append(w)

    @staticmethod
    def _needs_savepoint(step: ir.Step) -> bool:
        """Whether one friend's run of ``step`` writes to the store, so that a failure must be
        undone by a savepoint of its own: ``tag``, ``untag``, ``set``, ``start``. A wait, a
        ``menu`` (its link is written at the end of the walk) or a ``stop`` writes nothing then."""
        return isinstance(step, (ir.TagStep, ir.UntagStep, ir.SetStep, ir.StartStep))

    def _step(self, rule: ir.Rule, step: ir.Step, w: Walker, ok: bool) -> bool:
        """Run one step for one walker (``ok``: its ``if`` holds); True when it moves on to the
        next step in this tick."""
        if isinstance(step, ir.WAIT_STEPS):
            return self._wait(step, w)
        if not ok:
            return True
        s, now = self.ctx.store, self.now
        if isinstance(step, ir.Send):
            self._collect(w, (step.id, step.messages))
        elif isinstance(step, ir.TagStep):
            if s.add_tags(w.friend, [step.name], now):
                fired = self.entry.fire(
                    "tag",
                    {"add": [step.name]},
                    w.friend,
                    now,
                    now,
                    self._cause(w),
                    self.result,
                    w.event_seq,
                    walking=True,
                )
                self._next.extend(self._spawn(fired))
        elif isinstance(step, ir.UntagStep):
            s.remove_tags(w.friend, [step.name])
        elif isinstance(step, ir.SetStep):
            s.set_attributes(w.friend, {step.attr: step.value})
        elif isinstance(step, ir.MenuStep):
            self.menus.append((w, step))
        elif isinstance(step, ir.StartStep):
            target = self.ctx.rules.get(step.rule)
            entered = None
            if target is not None:
                # the started rule goes on from the same event: its sends of this tick answer the
                # friend's message as this rule's do, the event is the one its templates and
                # `purchased` see, and a friend held out of this rule is held out of that one too
                entered = self.entry.enter(
                    target, w.friend, now, now, cause=self._cause(w), event_seq=w.event_seq, holdout=w.holdout or None
                )
            if entered is not None:
                self.result.entered += 1
                self._next.extend(self._spawn([entered]))
        elif isinstance(step, ir.StopStep):
            self.finish(w, "exited", step.id, None, "stop")
            return False
        return True

    def _collect(self, w: Walker, entry: tuple[str, tuple[str, ...]]) -> None:
        """A send step's messages join the walker's next intent."""
        if not w.buffer:
            self._sends += 1
            w.first_send = self._sends
        w.buffer.append(entry)

    @staticmethod
    def _cause(w: Walker) -> Cause | None:
        """What a rule entered by this walker's ``tag`` or ``start`` step carries on: the event
        this walker answers or replies to in this tick (before its first wait), else nothing."""
        if w.answered or (w.cause_seq is None and w.reply_token is None):
            return None
        return Cause(w.cause_seq, w.reply_token, w.reply_deadline)

    def _wait(self, step: ir.Step, w: Walker) -> bool:
        """A wait step: the sends before it are queued; True when it is already over."""
        now, tz = self.now, self.ctx.tz
        if isinstance(step, ir.Wait):
            due = timeutil.wait_at(now, step.seconds, step.at, tz)
        elif isinstance(step, ir.WaitUntil):
            due = timeutil.wait_until(now, step.at, step.weekday, tz)
        else:
            due = now + step.up_to
        self.flush(w)
        if due <= now and not isinstance(step, ir.WaitFor):
            return True
        self.finish(w, "waiting", step.id, due, None)
        return False

    def flush(self, w: Walker) -> None:
        """The sends collected since the last wait become one intent (one push), due now for an
        answer, else at the window's next opening; decided when it is due."""
        if w.buffer:
            now, ctx = self.now, self.ctx
            steps = ctx.encode(tuple(w.buffer))
            names = ctx.encode(
                w.buffer[0][1] if len(w.buffer) == 1 else tuple(n for _, step_names in w.buffer for n in step_names)
            )
            answer = w.cause_seq is not None and not w.answered
            token = w.reply_token if not w.answered and (w.reply_deadline or 0) >= now else None
            if answer:
                due = now
            else:
                due = self._openings.get(w.rule)
                if due is None:
                    window = ctx.rules[w.rule].window or ctx.settings.window
                    due = self._openings[w.rule] = timeutil.next_opening(now, window, ctx.tz)
            self.intents.append(
                (
                    w.first_send,
                    Intent(
                        w.id,
                        w.friend,
                        w.rule,
                        steps,
                        names,
                        due,
                        now,
                        w.variant,
                        int(w.holdout),
                        w.occurrence,
                        w.event_seq,
                        int(answer),
                        token,
                        w.reply_deadline if token else None,
                    ),
                )
            )
            w.buffer = []
        w.answered = True

    def finish(self, w: Walker, state: str, step_id: str | None, due: int | None, reason: str | None) -> None:
        """The walker stops here for this tick (waiting, done, exited, or parked)."""
        self.flush(w)
        done = state in ("done", "exited")
        self.moves[w.id] = Move(state, step_id, due, self.now if done else None, reason, w.id)
        if state == "exited":
            self.result.exited += 1

    def _spawn(self, new: Iterable[Walker]) -> list[Walker]:
        """Enrollments entered during the walk (``tag``, ``start``) join it, once each."""
        self.entered = True
        fresh = [w for w in new if w.id not in self._seen]
        self._seen.update(w.id for w in fresh)
        self.result.advanced += len(fresh)
        return fresh


def write_menu_links(ctx: Context, menus: list[tuple[Walker, ir.MenuStep]], now: int, result: TickResult) -> None:
    """Rich menu links of a walk: an outbox row each (not for blocked or holdout friends)."""
    s, settings = ctx.store, ctx.settings
    blocked = s.blocked_among({w.friend for w, _ in menus})
    day_now = timeutil.local_day(now, ctx.tz)
    deliveries: list[Delivery] = []
    outbox: list[OutboxRow] = []
    for w, step in menus:
        menu_id, label = settings.rich_menu(step.menu), menu_label(step.menu)
        reason = (
            "blocked"
            if w.friend in blocked
            else "holdout"
            if w.holdout
            else "unknown_menu"
            if menu_id is None
            else None
        )
        if reason:
            deliveries.append(
                Delivery(w.friend, w.rule, step.id, w.id, None, label, "skipped", reason, w.variant, now, day_now, 0)
            )
            result.skipped += 1
            continue
        outbox.append(OutboxRow("menu_link", [w.friend], {"richMenuId": menu_id}, label, w.rule, now))
        result.queued += 1
        deliveries.append(
            Delivery(
                w.friend, w.rule, step.id, w.id, len(outbox) - 1, label, "queued", None, w.variant, now, day_now, 0
            )
        )
    ids = s.add_outbox_rows(outbox, now)
    s.add_deliveries(deliveries, ids)
