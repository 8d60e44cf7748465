"""Stage 2 of a tick: ``schedule`` and ``sale`` occurrences in (last tick, now].

For each time-triggered rule, the latest occurrence in the interval enrols its audience
(set-based, :meth:`engine.stages.entry.Entry.audience`), higher priority first; a sale rule's
occurrences are one per sale, so two sales at the same moment (or missed in one stall) each
enrol theirs. When the rule's
first steps are sends followed by a wait or the end, the audience is entered past them, each
enrollment carrying those sends to the deliver stage (:meth:`TimeTriggers.placement`): the same
sends a walk would queue, decided by the same procedure, without a walk per friend.
"""

from __future__ import annotations

from engine.language import ir, timeutil
from engine.runtime.store import Placement
from engine.stages.context import Context, TickResult
from engine.stages.entry import Entry


class TimeTriggers:
    """The schedule and sale rules of the context's project."""

    def __init__(self, ctx: Context, entry: Entry):
        self.ctx = ctx
        self.entry = entry
        self._sales: dict[ir.SaleTrigger, list[tuple[int, ir.Sale]]] = {}
        #: the time-triggered rules, higher priority first (ties: the folder's order)
        self.timed = sorted(
            (r for r in ctx.rules.values() if isinstance(r.trigger, (ir.ScheduleTrigger, ir.SaleTrigger))),
            key=lambda r: -r.priority,
        )

    def run(self, since: int, now: int, result: TickResult) -> None:
        """Enrol the audiences of the occurrences in (``since``, ``now``]; after a long stall
        only the latest missed occurrence of each schedule fires (of a sale rule: each sale's)."""
        # higher priority first, so that the cap keeps its sends
        for rule in self.timed:
            for occurrence in self.occurrences(rule, since, now):
                placed = self.placement(rule, now)
                entered = self.entry.audience(rule, now, None, occurrence, None, placed)
                result.entered += entered
                if placed is not None:
                    result.advanced += entered

    def occurrences(self, rule: ir.Rule, since: int, now: int) -> list[str]:
        """The keys of the rule's occurrences to fire for (``since``, ``now``]: a schedule's
        latest; each sale's moment in the interval, in the calendar's order (a sale rule fires
        once for each sale, and two sales may share a moment)."""
        trig = rule.trigger
        if isinstance(trig, ir.ScheduleTrigger):
            moment = timeutil.cron_latest(trig.cron, since, now, self.ctx.tz)
            return [] if moment is None else [f"schedule:{moment}"]
        if isinstance(trig, ir.SaleTrigger):
            return [
                f"sale:{sale.name}:{trig.edge}:{moment}"
                for moment, sale in self.sale_moments(trig)
                if since < moment <= now
            ]
        return []

    def next_moments(self, after: int) -> list[int | None]:
        """The next occurrence after ``after`` of every time-triggered rule."""
        out: list[int | None] = []
        for rule in self.timed:
            trig = rule.trigger
            if isinstance(trig, ir.ScheduleTrigger):
                out.append(timeutil.cron_next(trig.cron, after, self.ctx.tz))
            elif isinstance(trig, ir.SaleTrigger):
                out.append(min((m for m, _ in self.sale_moments(trig) if m > after), default=None))
        return out

    def sale_moments(self, trig: ir.SaleTrigger) -> list[tuple[int, ir.Sale]]:
        """Fixed for a project: worked out once per trigger (every tick asks)."""
        moments = self._sales.get(trig)
        if moments is None:
            moments = self._sales[trig] = [
                (timeutil.sale_moment(trig, sale, self.ctx.tz), sale)
                for sale in self.ctx.project.sales
                if trig.kind is None or sale.kind == trig.kind
            ]
        return moments

    def mass_plan(self, rule: ir.Rule, now: int) -> tuple | None:
        """For a rule whose first steps are sends followed by a wait or the end: (the sends'
        steps, message names, state, step, due) of the set-based entry. None when the rule
        needs the per-friend walk."""
        if rule.exit_when is not None:
            return None
        sends: list[ir.Send] = []
        for step in rule.steps:
            if type(step) is not ir.Send:
                break
            sends.append(step)
        rest = rule.steps[len(sends) :]
        if not sends or (rest and not isinstance(rest[0], ir.WAIT_STEPS)):
            return None
        names = tuple(n for step in sends for n in step.messages)
        if not rest:
            state, step_id, due = "done", None, None
        else:
            wait = rest[0]
            if isinstance(wait, ir.Wait):
                due = timeutil.wait_at(now, wait.seconds, wait.at, self.ctx.tz)
            elif isinstance(wait, ir.WaitUntil):
                due = timeutil.wait_until(now, wait.at, wait.weekday, self.ctx.tz)
            else:
                due = now + wait.up_to
            if due <= now:
                return None
            state, step_id = "waiting", wait.id
        return tuple((step.id, step.messages) for step in sends), names, state, step_id, due

    def placement(self, rule: ir.Rule, now: int) -> Placement | None:
        """Where the audience is entered when :meth:`mass_plan` allows: past its first sends,
        which the enrollments carry (``send_due``, at the window's next opening) to the deliver
        stage, decided there with every other send due then, like the intents a walk writes."""
        plan = self.mass_plan(rule, now)
        if plan is None:
            return None
        steps, names, state, step_id, due = plan
        window = rule.window or self.ctx.settings.window
        return Placement(
            state,
            step_id,
            due,
            now if state == "done" else None,
            timeutil.next_opening(now, window, self.ctx.tz),
            self.ctx.encode(steps),
            self.ctx.encode(names),
        )
