"""Semantic checks over a whole rule folder: everything the grammar cannot say.

:func:`check_files` reports every independent problem in one run (errors and warnings) and
avoids cascades: a name whose definition failed to parse is not reported again where it is
used, and "unused message" warnings are left out while any file has a syntax error.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from engine.i18n import E, _, join
from engine.line.limits import MAX_OBJECTS, TEXT_LIMIT, URI_LIMIT, utf16_len
from engine.runtime.events import RULE_WORDS, meant_type

from . import astnodes as A
from . import ir, links
from .astnodes import rule_name_of
from .compiler import WEEKDAYS, compile_cond, describe_cond, event_form
from .diagnostics import WARNING, Diagnostic, Span, did_you_mean
from .timeutil import next_opening, sale_moment

NUMERIC_MEASURES = ("orders", "total_spent", "spent")
TEXT_MEASURES = ("display_name", "language")
#: Triggers whose audience is only friends who have not blocked the account.
_CURRENT_FRIEND_TRIGGERS = (A.MessageTrigger, A.PostbackTrigger, A.ScheduleTrigger, A.SaleTrigger)
_CRON_PROBE_START = dt.datetime(2026, 1, 1)


@dataclass
class Context:
    """What the rules are checked against. ``None`` means "do not check that kind of name"."""

    messages: Mapping[str, ir.MessageDef] | None = None
    #: Messages defined in messages.yaml with an error (reported there, so not "unknown").
    broken_messages: frozenset[str] = frozenset()
    menus: frozenset[str] | None = None
    sales: tuple[ir.Sale, ...] | None = None
    #: Rules and segments defined outside the checked files (single-file validation).
    other_rules: frozenset[str] = frozenset()
    other_segments: frozenset[str] = frozenset()
    #: Warn about messages no rule uses (only when the whole folder is checked).
    report_unused: bool = False
    messages_path: str = "messages.yaml"
    messages_text: str = ""
    #: settings.yaml's delivery window (a rule's own `window` overrides it) and time zone
    window: ir.Window | None = None
    tz: dt.tzinfo | None = None
    #: links get utm parameters, and go out as they are (no `base_url`: no click tracking,
    #: whose short links replace them): a fixed message's links are checked with them
    utm: bool = False


def check_files(files: list[A.RuleFile], ctx: Context) -> list[Diagnostic]:
    """All problems of these files, in no particular order (callers sort and dedupe)."""
    return _Checker(files, ctx).run()


def _name_span(rule: A.RuleDef) -> Span:
    """Where to point for a rule: its name, or the `when` of an unnamed rule."""
    if rule.name is not None:
        return rule.name.span
    s = rule.span
    return Span(s.path, s.line, s.column, s.line, s.column + 4)


def _where(span: Span) -> str:
    return f"{span.path}:{span.line}:{span.column}"


def _last_hour(window: ir.Window) -> str:
    """An hour before the end of ``window`` when that is inside it (20:00 for 09:00-21:00), else
    its start: a time of day to suggest for a send late in the window."""
    hour = (dt.datetime.combine(dt.date(2000, 1, 2), window.end) - dt.timedelta(hours=1)).time()
    start, end = window.start, window.end
    inside = start <= hour < end if start < end else (hour >= start or hour < end)
    return f"{hour:%H:%M}" if inside else f"{start:%H:%M}"


def walk(c: A.Cond) -> Iterator[A.Cond]:
    """Every condition node inside ``c``, ``c`` first."""
    yield c
    if isinstance(c, (A.And, A.Or)):
        for i in c.items:
            yield from walk(i)
    elif isinstance(c, A.Not):
        yield from walk(c.item)


@dataclass
class _RuleFacts:
    split: tuple[str, ...] | None = None
    variants: list[A.Variant] = field(default_factory=list)


class _Checker:
    def __init__(self, files: list[A.RuleFile], ctx: Context):
        self.files = files
        self.ctx = ctx
        self.diags: list[Diagnostic] = []
        self.rules: dict[str, A.RuleDef] = {}
        self.segments: dict[str, A.SegmentDef] = {}
        self.broken_rules = {n for f in files for n in f.broken_rules}
        self.broken_segments = {n for f in files for n in f.broken_segments}
        self.used_messages: set[str] = set()
        #: Cron expression -> :func:`_cron_verdict` (rules often share a schedule).
        self.cron_verdicts: dict[str, str] = {}
        #: The delivery window of the rule being checked (its own `window`, else the settings').
        self.window: ir.Window | None = None

    # -- helpers -----------------------------------------------------------------
    def error(self, span: Span | None, message: str, help: str | None = None) -> None:
        self.diags.append(Diagnostic.at(span, message, help=help))

    def warn(self, span: Span | None, message: str, help: str | None = None, path: str = "") -> None:
        self.diags.append(Diagnostic.at(span, message, severity=WARNING, help=help, path=path))

    def run(self) -> list[Diagnostic]:
        self._collect_names()
        for f in self.files:
            for item in f.items:
                if isinstance(item, A.RuleDef):
                    self._rule(item)
                else:
                    self._cond(item.cond, "segment", None)
        self._segment_cycles()
        self._unused_messages()
        return self.diags

    # -- folder ------------------------------------------------------------------
    def _collect_names(self) -> None:
        #: the rules a `start` step enters (their `reenter` counts there, whatever the trigger)
        self.started = {
            step.rule.value
            for f in self.files
            for item in f.items
            if isinstance(item, A.RuleDef)
            for step in item.steps
            if isinstance(step, A.StartStep)
        }
        for f in self.files:
            unnamed: A.RuleDef | None = None
            for item in f.items:
                if isinstance(item, A.SegmentDef):
                    first = self.segments.setdefault(item.name.value, item)
                    if first is not item:
                        self.error(
                            item.name.span,
                            E("LR106", "segment `{name}` is defined twice", name=item.name.value),
                            help=_(
                                "the first is at {where}; segment names are unique across the folder",
                                where=_where(first.name.span),
                            ),
                        )
                    continue
                if item.name is None:
                    if unnamed is not None:
                        self.error(
                            _name_span(item),
                            E("LR107", "a second rule without a name in this file"),
                            help=_(
                                "a file may hold one unnamed rule (named after the file); name this one: `rule NAME when ...`"
                            ),
                        )
                        continue
                    unnamed = item
                name = rule_name_of(item, f.path)
                first = self.rules.setdefault(name, item)
                if first is not item:
                    self.error(
                        _name_span(item),
                        E("LR106", "rule `{name}` is defined twice", name=name),
                        help=_(
                            "the first is at {where}; rule names are unique across the folder",
                            where=_where(_name_span(first)),
                        ),
                    )

    def _segment_cycles(self) -> None:
        refs = {name: [c for c in walk(seg.cond) if isinstance(c, A.InSegment)] for name, seg in self.segments.items()}
        done: set[str] = set()
        for name in refs:
            if name not in done:
                self._visit_segment(name, [name], refs, done)

    def _visit_segment(self, name: str, trail: list[str], refs: dict[str, list[A.InSegment]], done: set[str]) -> None:
        """Report the loops through ``name``, reached by ``trail``. (A method, not a closure:
        a recursive closure refers to itself, and that reference cycle would keep the checker
        and every syntax tree it holds alive until the next full garbage collection.)"""
        for ref in refs.get(name, ()):
            target = ref.name.value
            if target in trail:
                loop = trail[trail.index(target) :] + [target]
                self.error(
                    ref.name.span,
                    E(
                        "LR108",
                        "segment `{name}` refers to itself: {cycle}",
                        name=target,
                        cycle=" -> ".join(f"`{n}`" for n in loop),
                    ),
                    help=_("a segment cannot be defined in terms of itself"),
                )
            elif target not in done and target in refs:
                self._visit_segment(target, trail + [target], refs, done)
        done.add(name)

    def _unused_messages(self) -> None:
        if not self.ctx.report_unused or not self.ctx.messages:
            return
        if any(f.has_syntax_errors for f in self.files):
            return
        for name, msg in self.ctx.messages.items():
            if name not in self.used_messages:
                self.warn(
                    self._message_key_span(name) or msg.span,
                    E("LR109", "message `{name}` is not used by any rule", name=name),
                    help=_("remove it, or send it from a rule"),
                    path=self.ctx.messages_path,
                )

    def _message_key_span(self, name: str) -> Span | None:
        """Where ``name:`` starts a line of messages.yaml (the definition's own span points at
        its value)."""
        m = re.search(rf"^{re.escape(name)}[ \t]*:", self.ctx.messages_text, re.M)
        if m is None:
            return None
        line = self.ctx.messages_text.count("\n", 0, m.start()) + 1
        return Span(self.ctx.messages_path, line, 1, line, 1 + len(name))

    # -- rules -------------------------------------------------------------------
    def _rule(self, rule: A.RuleDef) -> None:
        facts = _RuleFacts()
        self._options(rule, facts)
        self.window = self.ctx.window
        for o in rule.options:
            if isinstance(o, A.Window) and all(t.hour <= 23 and t.minute <= 59 for t in (o.start, o.end)):
                self.window = ir.Window(dt.time(o.start.hour, o.start.minute), dt.time(o.end.hour, o.end.minute))
        self._trigger(rule.trigger)
        if rule.entry is not None:
            self._cond(rule.entry.cond, "entry", facts)
            self._entry_contradiction(rule)
        self._steps(rule, facts)
        self._decided_after(rule)
        self._clicked_before_entry(rule)
        for v in facts.variants:
            if facts.split is None:
                self.error(
                    v.name.span,
                    E("LR105", "`variant {name}`: this rule has no `split`", name=v.name.value),
                    help=_("add one, e.g. `split a 50%, b 50%`"),
                )
            elif v.name.value not in facts.split:
                self.error(
                    v.name.span,
                    E("LR105", "unknown variant `{name}`", name=v.name.value),
                    help=did_you_mean(v.name.value, facts.split),
                )

    def _trigger(self, t: A.Trigger) -> None:
        if isinstance(t, A.CondTrigger):
            if event_form(t.cond) is not None:
                self._event_pair(t.cond)
                if isinstance(t.cond, A.Tagged):  # `when tagged ＶＩＰ`, the event
                    self._wide_tag(t.cond.name)
            else:
                self._cond(t.cond, "trigger", None)
        elif isinstance(t, A.MessageTrigger):
            for k in t.keywords:
                if not k.value.strip():
                    self.error(
                        k.span,
                        E("LR304", "an empty keyword matches every message"),
                        help=_('give a word to look for, e.g. `message "coupon"`'),
                    )
        elif isinstance(t, A.ScheduleTrigger):
            self._schedule(t.cron)
        elif isinstance(t, A.SaleTrigger):
            self._sale(t)
        elif isinstance(t, A.EventTrigger):
            self._custom_event(t)

    def _custom_event(self, t: A.EventTrigger) -> None:
        """`event purchase`, `event carted`: built-in events are not custom events, and such
        a rule would never fire."""
        name = t.name.value
        builtin = meant_type(name) or name
        word = RULE_WORDS.get(builtin)
        if word is not None:
            self.error(
                t.name.span,
                E(
                    "LR311",
                    "`event {name}` never fires: `{builtin}` events are matched by `{word}`",
                    name=name,
                    builtin=builtin,
                    word=word,
                ),
                help=_("write `{word}` instead of `event {name}`", word=word, name=name),
            )

    def _schedule(self, cron: A.Str) -> None:
        expr = cron.value.strip()
        fields = expr.split()
        if len(fields) != 5:
            self.error(
                cron.span,
                E("LR303", "a schedule has 5 fields, this one has {count}", count=len(fields)),
                help=_('write minute hour day month weekday, e.g. "0 20 * * 5" for Fridays at 20:00'),
            )
            return
        verdict = self.cron_verdicts.get(expr)
        if verdict is None:
            verdict = self.cron_verdicts[expr] = _cron_verdict(expr)
        if verdict == "invalid":
            self.error(
                cron.span,
                E("LR303", "`{expr}` is not a valid cron expression", expr=expr),
                help=_('fields are minute (0-59) hour (0-23) day (1-31) month (1-12) weekday (0-6), e.g. "0 20 * * 5"'),
            )
        elif verdict == "never":
            self.warn(
                cron.span,
                E("LR401", "the schedule `{expr}` never fires, so this rule never runs", expr=expr),
                help=_("check the day and month fields (e.g. there is no 31 February)"),
            )

    def _sale(self, t: A.SaleTrigger) -> None:
        if t.at is not None:
            self._time(t.at)
            if t.before is not None and t.before.seconds % 86400:
                self.error(
                    t.before.span,
                    E(
                        "LR206",
                        "`in {before} at {at}`: with `at`, the offset is a number of days",
                        before=t.before.text,
                        at=t.at.text,
                    ),
                    help=_("write whole days, e.g. `in 2d at 10:00`, or drop `at` to count from the sale's exact time"),
                )
        sales = self.ctx.sales
        if sales is None:
            return
        if t.kind is not None:
            kinds = {s.kind for s in sales if s.kind}
            if t.kind.value not in kinds:
                self.warn(
                    t.kind.span,
                    E(
                        "LR401",
                        "no sale in sale_calendar.yaml has kind `{kind}`, so this rule never fires",
                        kind=t.kind.value,
                    ),
                    help=did_you_mean(t.kind.value, kinds) or _("add `kind:` to the sales in sale_calendar.yaml"),
                )
                return
        elif not sales:
            self.warn(
                t.span,
                E("LR401", "the sale calendar has no sales, so this rule never fires"),
                help=_("add the sales to sale_calendar.yaml"),
            )
            return
        if t.at is None and (t.edge != "ends" or t.before is None):
            return  # `sale starts in 3h`, `sale ends`: at or before the sale's own moment
        if t.at is not None and (t.at.hour > 23 or t.at.minute > 59 or (t.before and t.before.seconds % 86400)):
            return  # reported above
        self._sale_moment(t, [s for s in sales if t.kind is None or s.kind == t.kind.value])

    def _sale_moment(self, t: A.SaleTrigger, sales: list[ir.Sale]) -> None:
        """Warn when `in Nd at HH:MM` falls where it cannot be meant for some sale: after the
        end (`ends in 0d at 10:00` for a sale ending 01:59), before the start (`ends in 3d`
        of a two-day sale), or after the start (`starts in 0d at 21:00` of a sale starting
        20:00). The fix is suggested with the sale's own times."""
        days = t.before.seconds // 86400 if t.before else 0
        at = dt.time(t.at.hour, t.at.minute) if t.at is not None else None

        def moment(d: int, sale: ir.Sale) -> int:
            if at is None:  # `sale ends in 2h`: exactly the offset before the end
                return sale_moment(ir.SaleTrigger(t.edge, before=t.before.seconds), sale, sale.starts.tzinfo)
            return sale_moment(ir.SaleTrigger(t.edge, before=d * 86400, at=at), sale, sale.starts.tzinfo)

        def shown(ts: int, sale: ir.Sale) -> str:
            return dt.datetime.fromtimestamp(ts, sale.starts.tzinfo).strftime("%Y-%m-%d %H:%M")

        written = (
            f"sale {t.edge} in {days}d at {t.at.text}" if t.at is not None else f"sale {t.edge} in {t.before.text}"
        )
        for sale in sorted(sales, key=lambda s: s.starts):
            fires, starts, ends = moment(days, sale), sale.starts.timestamp(), sale.ends.timestamp()
            if t.edge == "ends" and fires >= ends and at is not None:
                self.warn(
                    t.span,
                    E(
                        "LR403",
                        "`{written}` fires at {shown}, after sale `{name}` has ended ({ends})",
                        written=written,
                        shown=shown(fires, sale),
                        name=sale.name,
                        ends=f"{sale.ends:%Y-%m-%d %H:%M}",
                    ),
                    help=_(
                        "to send on the sale's last day write `sale ends in {number}d at {at}`, or give a time before {ends}",
                        number=days + 1,
                        at=t.at.text,
                        ends=f"{sale.ends:%H:%M}",
                    ),
                )
                return
            window, tz = self.window, self.ctx.tz or sale.starts.tzinfo
            opens = fires if window is None else next_opening(fires, window, tz)
            if t.edge == "ends" and opens >= ends:  # it fires in the sale, but waits for the window
                self.warn(
                    t.span,
                    E(
                        "LR403",
                        "`{written}` fires at {shown}, outside the delivery window {window}: its sends "
                        "wait for {opens}, after sale `{name}` has ended ({ends})",
                        written=written,
                        shown=shown(fires, sale),
                        window=f"{window.start:%H:%M}-{window.end:%H:%M}",
                        opens=shown(opens, sale),
                        name=sale.name,
                        ends=f"{sale.ends:%Y-%m-%d %H:%M}",
                    ),
                    help=_(
                        "send the last call within the window the day before, e.g. `sale ends in {number}d at {at}`",
                        number=days + 1,
                        at=_last_hour(window),
                    ),
                )
                return
            if t.edge == "ends" and fires < starts:
                later = (
                    next((d for d in range(days - 1, -1, -1) if moment(d, sale) >= starts), None)
                    if at is not None
                    else None
                )
                if later is not None:
                    help_ = _(
                        "write `sale ends in {later}d at {at}`, or trigger on the start: `sale starts ...`",
                        later=later,
                        at=t.at.text,
                    )
                else:
                    help_ = _(
                        "give a time after the sale starts ({starts}), or trigger on the start: `sale starts ...`",
                        starts=f"{sale.starts:%H:%M}",
                    )
                self.warn(
                    t.span,
                    E(
                        "LR403",
                        "`{written}` fires at {shown}, before sale `{name}` has started ({starts})",
                        written=written,
                        shown=shown(fires, sale),
                        name=sale.name,
                        starts=f"{sale.starts:%Y-%m-%d %H:%M}",
                    ),
                    help=help_,
                )
                return
            if t.edge == "starts" and days == 0 and fires > starts:
                self.warn(
                    t.span,
                    E(
                        "LR403",
                        "`{written}` fires at {shown}, after sale `{name}` has started ({starts})",
                        written=written,
                        shown=shown(fires, sale),
                        name=sale.name,
                        starts=f"{sale.starts:%Y-%m-%d %H:%M}",
                    ),
                    help=_(
                        "write `sale starts` to send the moment it starts, or give a time before {starts}",
                        starts=f"{sale.starts:%H:%M}",
                    ),
                )
                return

    def _event_pair(self, cond: A.Cond) -> None:
        if isinstance(cond, A.Activity) and cond.pair is not None:
            allowed = ("product", "category") if cond.kind == "purchase" else ("product",)
            key = cond.pair.key
            if key.value not in allowed:
                self.error(
                    key.span,
                    E("LR302", "`{word}` does not take `{value}=`", word=cond.word, value=key.value),
                    help=_("it takes {fields}", fields=join((f"`{a}=...`" for a in allowed), " or ")),
                )

    def _entry_contradiction(self, rule: A.RuleDef) -> None:
        """Warn about an entry filter that can never hold for the trigger's friends."""
        entry = rule.entry
        positive, negative = _conjuncts(entry.cond, entry.negated)
        trigger = rule.trigger
        current = isinstance(trigger, _CURRENT_FRIEND_TRIGGERS) or (
            isinstance(trigger, A.CondTrigger) and isinstance(trigger.cond, A.Followed)
        )
        for c in positive:
            if isinstance(c, A.Blocked) and current:
                self.warn(
                    c.span,
                    E(
                        "LR401",
                        "this rule never fires: its trigger only reaches friends who have not blocked the account",
                    ),
                    help=_("remove `blocked` from the entry filter"),
                )
        if isinstance(trigger, A.UnfollowedTrigger):
            for c in negative:
                if isinstance(c, A.Blocked):
                    self.warn(
                        c.span,
                        E("LR401", "this rule never fires: `unfollowed` means the friend has blocked the account"),
                        help=_("the entry filter leaves out blocked friends; remove that part"),
                    )

    # -- options -----------------------------------------------------------------
    def _options(self, rule: A.RuleDef, facts: _RuleFacts) -> None:
        seen: dict[type, A.Option] = {}
        for o in rule.options:
            word = A.OPTION_WORDS[type(o)]
            if type(o) in seen:
                self.error(o.span, E("LR205", "`{word}` is given twice in this rule", word=word), help=_("keep one"))
                continue
            seen[type(o)] = o
            if isinstance(o, A.ExitWhen):
                self._cond(o.cond, "exit", facts)
            elif isinstance(o, A.Reenter):
                if o.after is not None and o.after.seconds == 0:
                    self.error(
                        o.after.span,
                        E("LR202", "`reenter after 0d` is the same as `reenter always`"),
                        help=_("write `reenter always`, or a longer time"),
                    )
                elif isinstance(rule.trigger, (A.ScheduleTrigger, A.SaleTrigger)) and not self._started(rule):
                    self.warn(
                        o.span,
                        E(
                            "LR406",
                            "`reenter` does nothing in a rule that starts by `{trigger}`: it enters every "
                            "friend once per occurrence",
                            trigger="schedule" if isinstance(rule.trigger, A.ScheduleTrigger) else "sale",
                        ),
                        help=_(
                            "remove it: each occurrence enters every current friend not still inside the rule from an earlier one"
                        ),
                    )
            elif isinstance(o, A.Window):
                ok = self._time(o.start) & self._time(o.end)
                if ok and (o.start.hour, o.start.minute) == (o.end.hour, o.end.minute):
                    self.error(
                        o.span,
                        E("LR204", "the window `{start}-{end}` is empty", start=o.start.text, end=o.end.text),
                        help=_("give a start and an end, e.g. `window 10:00-20:00`"),
                    )
            elif isinstance(o, A.Split):
                self._split(o, facts)
            elif isinstance(o, A.Holdout):
                if not 0 <= o.percent.value <= 100:
                    self.error(
                        o.percent.span,
                        E("LR203", "holdout `{percent}` is not between 0% and 100%", percent=o.percent.text),
                    )

    def _split(self, o: A.Split, facts: _RuleFacts) -> None:
        names: list[str] = []
        for item in o.items:
            if item.name.value in names:
                self.error(item.name.span, E("LR105", "variant `{name}` is listed twice", name=item.name.value))
            names.append(item.name.value)
            if item.percent.value <= 0:
                self.error(
                    item.percent.span,
                    E("LR105", "variant `{name}` gets {percent}", name=item.name.value, percent=item.percent.text),
                    help=_("give every variant more than 0%, or remove it"),
                )
        total = sum(i.percent.value for i in o.items)
        if abs(total - 100) > 1e-9:
            self.error(
                o.span,
                E("LR203", "the split adds up to {total}%, not 100%", total=f"{total:g}"),
                help=_("make the percentages add up to 100%, e.g. `split a 50%, b 50%`"),
            )
        facts.split = tuple(names)

    # -- steps -------------------------------------------------------------------
    def _steps(self, rule: A.RuleDef, facts: _RuleFacts) -> None:
        messages = self.ctx.messages or {}
        push: list[tuple[A.Name, int]] = []  # messages of the push being coalesced
        push_total = 0  # their message objects
        push_reported = False
        stopped = False
        # after `when unfollowed` the friend has blocked the account: until a `wait` (say, for
        # them to follow again) nothing can be sent to them
        blocked = isinstance(rule.trigger, A.UnfollowedTrigger)
        if blocked and rule.entry is not None:  # `when unfollowed unless blocked`: LR401 already
            blocked = not any(isinstance(c, A.Blocked) for c in _conjuncts(rule.entry.cond, rule.entry.negated)[1])
        for step in rule.steps:
            cls = step.__class__
            if cls in (A.TagStep, A.UntagStep):
                self._wide_tag(step.name)
            if cls in A.WAIT_STEPS:
                blocked = False
            elif blocked and cls is A.SendStep:
                self.warn(
                    step.span,
                    E("LR401", "this send is never made: after `unfollowed` the friend has blocked the account"),
                    help=_(
                        "a blocked friend gets nothing; to welcome them back, wait for it first: `wait for followed up to 30d`"
                    ),
                )
                blocked = False  # once per rule
            if stopped:
                self.warn(
                    step.span,
                    E("LR402", "this step is never reached: the `stop` before it always ends the rule"),
                    help=_("remove it, or give the `stop` a condition"),
                )
                stopped = False  # once per unconditional stop
            guard = getattr(step, "guard", None)
            if guard is not None:
                self._cond(guard.cond, "step", facts)
            if cls in A.WAIT_STEPS:
                push, push_total, push_reported = [], 0, False
            if cls is A.SendStep:
                for m in step.messages:
                    self._message(m)
                    defn = messages.get(m.value)
                    if defn is not None and self.ctx.utm:
                        self._links_with_utm(rule, m, defn)
                    if defn is not None:
                        push.append((m, len(defn.objects)))
                        push_total += len(defn.objects)
                if push_total > MAX_OBJECTS and len(push) > 1 and not push_reported:
                    push_reported = True
                    listed = ", ".join(f"`{m.value}` ({n})" for m, n in push)
                    self.error(
                        step.span,
                        E(
                            "LR310",
                            "these sends make one push of {count} message objects; LINE allows {limit}",
                            count=push_total,
                            limit=MAX_OBJECTS,
                        ),
                        help=_(
                            "sends with no `wait` between them go out together: {listed}; put a `wait` between them or send fewer messages",
                            listed=listed,
                        ),
                    )
            elif cls is A.WaitStep:
                if step.at is not None:
                    self._time(step.at)
                elif step.duration.seconds == 0:
                    self.error(
                        step.duration.span,
                        E("LR202", "`wait {duration}` waits for nothing", duration=step.duration.text),
                        help=_("remove it, or give a time of day: `wait 0d at 12:00`"),
                    )
            elif cls is A.WaitUntilStep:
                if step.at is not None:
                    self._time(step.at)
                if step.weekday is not None and step.weekday.value.lower() not in WEEKDAYS:
                    japanese = _JAPANESE_WEEKDAYS.get(step.weekday.value.removesuffix("日").removesuffix("曜"))
                    self.error(
                        step.weekday.span,
                        E("LR309", "`{weekday}` is not a day of the week", weekday=step.weekday.value),
                        help=_("write `{weekday}`", weekday=japanese)
                        if japanese
                        else did_you_mean(step.weekday.value.lower(), WEEKDAYS),
                    )
            elif cls is A.WaitForStep:
                self._wait_for(step)
            elif cls is A.SetStep:
                if step.attr.value in NUMERIC_MEASURES:
                    self.error(
                        step.attr.span,
                        E("LR308", "`{attr}` is computed from purchases and cannot be set", attr=step.attr.value),
                        help=_('set a custom attribute instead, e.g. `set rank = "gold"`'),
                    )
            elif cls is A.MenuStep:
                menus = self.ctx.menus
                if menus is not None and step.name.value not in menus:
                    self.error(
                        step.name.span,
                        E("LR104", "unknown rich menu `{name}`", name=step.name.value),
                        help=did_you_mean(step.name.value, menus) or _("name it under `rich_menus:` in settings.yaml"),
                    )
            elif cls is A.StartStep:
                name = step.rule.value
                if not any(name in names for names in (self.rules, self.ctx.other_rules, self.broken_rules)):
                    known = self.rules.keys() | self.ctx.other_rules
                    self.error(
                        step.rule.span, E("LR101", "unknown rule `{name}`", name=name), help=did_you_mean(name, known)
                    )
            elif cls is A.StopStep:
                stopped = step.guard is None

    def _clicked_before_entry(self, rule: A.RuleDef) -> None:
        """`clicked` asks about links this rule sent: in the trigger condition or the entry filter
        of a rule a friend enters once, nothing has been sent yet, so it never holds there."""
        reenter = next((o for o in rule.options if isinstance(o, A.Reenter)), None)
        if reenter is not None and reenter.mode != "never":
            return
        conds = []
        if isinstance(rule.trigger, A.CondTrigger) and event_form(rule.trigger.cond) is None:
            conds.append((rule.trigger.cond, False, True))
        if rule.entry is not None:
            conds.append((rule.entry.cond, rule.entry.negated, False))
        for cond, negated, trigger in conds:
            for span, what in self._positive_clicks(cond, negated, (), trigger):
                self.warn(
                    span,
                    E(
                        "LR405",
                        "{what} never holds here: it asks about links this rule sent, and a friend enters this rule once, before it has sent them anything",
                        what=what,
                    ),
                    help=_(
                        "let friends enter again, e.g. `reenter after 30d`, to ask about their last time in this rule; a step's condition (`send ... if clicked`) asks about this rule's links since entry"
                    ),
                )

    def _positive_clicks(
        self, c: A.Cond, negated: bool, trail: tuple[str, ...], trigger: bool
    ) -> Iterator[tuple[Span, str]]:
        """The `clicked` terms of ``c`` that must hold for ``c`` to hold (under no `not`): where
        to point (the term, or the `in segment` that holds it) and the words to name. In a
        ``trigger``, a term without `within` is an error already (LR301)."""
        cls = c.__class__
        if cls is A.And or cls is A.Or:
            for item in c.items:
                yield from self._positive_clicks(item, negated, trail, trigger)
        elif cls is A.Not:
            yield from self._positive_clicks(c.item, not negated, trail, trigger)
        elif cls is A.Activity and c.kind == "click" and not negated and not (trigger and c.within is None):
            yield c.span, "`" + c.word + (f" within {c.within.text}" if c.within is not None else "") + "`"
        elif cls is A.InSegment and c.name.value in self.segments and c.name.value not in trail:
            inner = self._positive_clicks(self.segments[c.name.value].cond, negated, (*trail, c.name.value), trigger)
            for _span, word in inner:
                yield c.span, f"`in segment {c.name.value}` ({word})"

    def _decided_after(self, rule: A.RuleDef) -> None:
        """A send is decided when it goes out, after the steps that follow it up to the next
        wait have run (docs/engine.md): warn when one of them changes what the send's condition
        reads, or makes the rule's ``exit when`` hold, so that the send is dropped."""
        exit_when = next((o.cond for o in rule.options if isinstance(o, A.ExitWhen)), None)
        exits = self._reads(exit_when) if exit_when is not None else set()
        pending: list[tuple[A.SendStep, set[tuple[str, str, bool]]]] = []
        first = True  # before the rule's first wait: an entry filter checks the same moment
        for step in rule.steps:
            cls = step.__class__
            if cls in A.WAIT_STEPS:
                pending, first = [], False
                continue
            if cls is A.SendStep:
                guard = step.guard
                pending.append((step, self._reads(guard.cond, guard.negated) if guard is not None else set()))
                continue
            if cls not in (A.TagStep, A.UntagStep, A.SetStep) or step.guard is not None or not pending:
                continue
            kind, name = ("attr", step.attr.value) if cls is A.SetStep else ("tag", step.name.value)
            later = f"set {name}" if cls is A.SetStep else f"{'tag' if cls is A.TagStep else 'untag'} {name}"
            # the value after the step: a tag added or removed (for which polarity of `tagged` makes
            # `exit when` hold), an attribute set to something (either polarity)
            makes = {True} if cls is A.TagStep else {False} if cls is A.UntagStep else {True, False}
            kept = []
            for send, reads in pending:
                args = {"names": ", ".join(m.value for m in send.messages), "later": later, "line": step.span.line}
                if any((k, n) == (kind, name) for k, n, _ in reads):
                    message = E(
                        "LR404",
                        "`send {names}` is decided when it goes out, after `{later}` (line {line}) has run: its condition sees what that step changed",
                        **args,
                    )
                    help_ = (
                        _(
                            "to check the condition before the change, check it when the friend enters the rule, e.g. `when ... {guard}`",
                            guard=self._guard_text(send.guard),
                        )
                        if first
                        else _("move `{later}` after a `wait` that ends once the send has gone out", later=later)
                    )
                elif any((k, n) == (kind, name) and positive in makes for k, n, positive in exits):
                    message = E(
                        "LR404",
                        "`send {names}` is never sent: `{later}` (line {line}) runs before it goes out and makes `exit when` hold",
                        **args,
                    )
                    help_ = _(
                        "use a name that `exit when` does not read for what this rule did, e.g. `{kind} {name}_sent`",
                        kind=later.split()[0],
                        name=name,
                    )
                else:
                    kept.append((send, reads))
                    continue
                self.warn(send.span, message, help=help_)
            pending = kept

    @staticmethod
    def _guard_text(guard: A.Guard) -> str:
        """A guard in the rule language: ``if ...`` / ``unless ...``."""
        return f"{'unless' if guard.negated else 'if'} {describe_cond(compile_cond(guard.cond))}"

    def _reads(self, c: A.Cond, negated: bool = False, trail: tuple[str, ...] = ()) -> set[tuple[str, str, bool]]:
        """What a condition reads of the friend's own state: ("tag", name, positive) for
        `tagged NAME` (positive: held under no or an even number of `not`s) and ("attr", name,
        positive) for a custom attribute compared, segments included."""
        out: set[tuple[str, str, bool]] = set()
        cls = c.__class__
        if cls is A.And or cls is A.Or:
            for item in c.items:
                out |= self._reads(item, negated, trail)
        elif cls is A.Not:
            out |= self._reads(c.item, not negated, trail)
        elif cls is A.Tagged:
            out.add(("tag", c.name.value, not negated))
        elif cls is A.Compare and c.measure.name.value not in NUMERIC_MEASURES and c.measure.within is None:
            out.add(("attr", c.measure.name.value, not negated))
        elif cls is A.InSegment and c.name.value in self.segments and c.name.value not in trail:
            out |= self._reads(self.segments[c.name.value].cond, negated, (*trail, c.name.value))
        return out

    def _links_with_utm(self, rule: A.RuleDef, m: A.Name, defn: ir.MessageDef) -> None:
        """A fixed message's links as this rule sends them, with their utm parameters: a link
        that fits LINE's limit as written can be too long once they are added, and so can the
        text holding it. (A template's are checked per friend when rendered.)"""
        if _has_template(defn.objects):
            return
        name = rule_name_of(rule, rule.span.path)
        for obj in copy.deepcopy(list(defn.objects)):
            if not isinstance(obj, dict):
                continue
            links.rewrite_links(obj, lambda url: links.add_utm(url, name, defn.name))
            long = [
                (key, len(o[key]), URI_LIMIT)
                for o, _path, key in links._uri_fields(obj, ())
                if isinstance(o.get(key), str) and len(o[key]) > URI_LIMIT
            ]
            if obj.get("type") == "text" and isinstance(obj.get("text"), str) and utf16_len(obj["text"]) > TEXT_LIMIT:
                long.append(("text", utf16_len(obj["text"]), TEXT_LIMIT))
            for key, length, limit in long[:1]:
                self.error(
                    m.span,
                    E(
                        "LR503",
                        "with its utm parameters for this rule, `{key}` of message `{message}` is {length} characters long; LINE allows at most {limit}",
                        key=key,
                        message=defn.name,
                        length=f"{length:,}",
                        limit=f"{limit:,}",
                    ),
                    help=_("shorten the link, or give it `utm_` parameters of its own (then none are added)"),
                )
                return

    def _message(self, m: A.Name) -> None:
        self.used_messages.add(m.value)
        messages = self.ctx.messages
        if m.value in self.ctx.broken_messages:
            return
        if messages is not None and m.value not in messages:
            help_ = did_you_mean(m.value, messages)
            if help_ and help_.startswith("did you mean `"):
                # The misspelt message is meant: do not also call it unused.
                self.used_messages.add(help_.split("`")[1])
            self.error(
                m.span,
                E("LR102", "unknown message `{value}`", value=m.value),
                help=help_ or _("define it in messages.yaml"),
            )

    def _wait_for(self, step: A.WaitForStep) -> None:
        t = step.trigger
        if step.up_to.seconds == 0:
            self.error(
                step.up_to.span,
                E("LR202", "`up to 0d` does not wait at all"),
                help=_("give a longer time, e.g. `up to 3d`"),
            )
        if isinstance(t, (A.ScheduleTrigger, A.SaleTrigger)) or (
            isinstance(t, A.CondTrigger) and event_form(t.cond) is None
        ):
            self.error(
                t.span,
                E("LR305", "`wait for` needs an event of this friend"),
                help=_("e.g. `wait for purchased up to 3d` or `wait for postback answer=yes up to 1d`"),
            )
        elif isinstance(t, A.CondTrigger):
            self._event_pair(t.cond)
        elif isinstance(t, (A.MessageTrigger, A.EventTrigger)):
            self._trigger(t)

    # -- conditions --------------------------------------------------------------
    def _cond(self, c: A.Cond, where: str, facts: _RuleFacts | None) -> None:
        """Check a condition; ``where`` is trigger, entry, exit, step or segment."""
        for node in walk(c):
            cls = node.__class__
            if cls is A.And or cls is A.Or or cls is A.Not:
                continue
            if cls is A.Activity:
                self._activity(node, where)
            elif cls is A.Tagged:
                self._wide_tag(node.name)
            elif cls is A.Followed and where == "trigger" and node is not c and not node.pairs:
                # `when followed and tagged vip`: not the follow event (that is `followed` alone)
                # but "has followed", which every friend a condition reaches has: it would enter
                # every tagged friend whenever the tag arrives (`followed via qr=shop` in a
                # condition is the add source, which tells friends apart: a condition of its own)
                self.error(
                    node.span,
                    E(
                        "LR301",
                        "`followed` is the follow event only on its own after `when`: as part of a "
                        "condition it would enter friends whenever the rest comes to hold",
                    ),
                    help=_(
                        "react to the follow and filter it: `when followed if ...`; for how long they have been a friend, `friend for 30d`"
                    ),
                )
            elif isinstance(node, (A.FriendFor, A.LastPurchaseOlder)):
                self._positive(node.duration)
            elif isinstance(node, A.Compare):
                self._measure(node.measure)
                self._compare_value(node)
            elif isinstance(node, A.Top):
                self._measure(node.measure)
                if not 0 < node.percent.value <= 100:
                    self.error(
                        node.percent.span,
                        E("LR203", "`top {percent}` is not between 0% and 100%", percent=node.percent.text),
                    )
                if node.measure.name.value in TEXT_MEASURES:
                    self.error(
                        node.measure.span,
                        E("LR307", "`{name}` is a text and cannot be ranked", name=node.measure.name.value),
                    )
            elif isinstance(node, A.InSegment):
                name = node.name.value
                if not any(name in names for names in (self.segments, self.ctx.other_segments, self.broken_segments)):
                    known = self.segments.keys() | self.ctx.other_segments
                    self.error(
                        node.name.span,
                        E("LR103", "unknown segment `{name}`", name=name),
                        help=did_you_mean(name, known) or _("define it: `segment NAME: CONDITION`"),
                    )
            elif isinstance(node, A.Variant):
                if facts is None:
                    self.error(
                        node.span,
                        E(
                            "LR105",
                            "`variant {name}` only means something inside a rule's entry filter, steps or `exit when`",
                            name=node.name.value,
                        ),
                        help=_("variants are assigned when a friend enters a rule with `split`"),
                    )
                else:
                    facts.variants.append(node)

    def _started(self, rule: A.RuleDef) -> bool:
        """Whether a `start` step of the folder enters ``rule`` (by its name)."""
        name = rule.name.value if rule.name is not None else None
        return name is not None and name in self.started

    def _wide_tag(self, name: A.Name) -> None:
        """A tag written in full-width letters or digits (`ＶＩＰ`) is another tag than the
        half-width one (`VIP`) events and other rules use: it is a name, so only a warning."""
        if any("\uff10" <= ch <= "\uff5a" for ch in name.value):
            meant = unicodedata.normalize("NFKC", name.value)
            self.warn(
                name.span,
                E(
                    "LR015",
                    "the tag `{name}` is written in full-width characters: `{meant}` is another tag",
                    name=name.value,
                    meant=meant,
                ),
                help=_("write `{meant}`, as events and the other rules do", meant=meant),
            )

    def _activity(self, a: A.Activity, where: str) -> None:
        if a.pair is not None:
            self._event_pair(a)
        if a.within is not None:
            self._positive(a.within)
        elif where == "trigger":
            if a.kind == "purchase":
                help_ = _(
                    "say how recent, e.g. `{word} within 30d`; or react to the event and filter "
                    'it: `when {word} if ...`; for "has ever purchased" write `orders >= 1`',
                    word=a.word,
                )
            elif a.kind != "click":
                help_ = _(
                    "say how recent, e.g. `{word} within 30d`; or react to the event and filter "
                    "it: `when {word} if ...`",
                    word=a.word,
                )
            else:
                help_ = _("say how recent, e.g. `{word} within 30d`", word=a.word)
            self.error(
                a.span,
                E("LR301", "`{word}` without `within` cannot be part of a condition trigger", word=a.word),
                help=help_,
            )

    def _measure(self, m: A.Measure) -> None:
        name = m.name.value
        if m.within is not None:
            self._positive(m.within)
            if name != "spent":
                self.error(
                    m.within.span,
                    E("LR306", "`within` does not go with `{name}`", name=name),
                    help=_("only `spent within D` counts over a period; see docs/language.md"),
                )
        elif name == "spent":
            self.error(
                m.span,
                E("LR306", "`spent` needs a period, e.g. `spent within 365d`"),
                help=_("for all time, use `total_spent`"),
            )

    def _compare_value(self, c: A.Compare) -> None:
        name = c.measure.name.value
        if name in NUMERIC_MEASURES and isinstance(c.value, A.Str):
            self.error(
                c.value.span,
                E("LR307", "`{name}` is a number; compare it with a number", name=name),
                help=_("e.g. `{name} >= 3`", name=name),
            )
        elif name in TEXT_MEASURES and isinstance(c.value, A.Number):
            self.error(
                c.value.span,
                E("LR307", "`{name}` is a text; compare it with a quoted text", name=name),
                help=_('e.g. `{name} = "ja"`', name=name),
            )

    def _positive(self, d: A.Duration) -> None:
        if d.seconds == 0:
            self.error(
                d.span,
                E("LR202", "`{text}` is no time at all here", text=d.text),
                help=_("give a longer time, e.g. `30d`"),
            )

    def _time(self, t: A.TimeOfDay) -> bool:
        if t.hour > 23 or t.minute > 59:
            self.error(
                t.span,
                E("LR201", "`{text}` is not a time of day", text=t.text),
                help=_("hours go from 00 to 23 and minutes from 00 to 59 (midnight is `00:00`)"),
            )
            return False
        return True


_cron_verdicts = None


def _has_template(value: object) -> bool:
    """Whether any text inside a message's objects is a Liquid template."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_template(v) for v in value)
    return False


def _cron_verdict(expr: str) -> str:
    """``ok``, ``invalid`` or ``never`` (valid, but no date ever matches) for a 5-field cron
    expression, kept in the user's cache folder (:class:`engine.language.cache.Kept`): a
    folder whose schedules were checked before does not import croniter."""
    global _cron_verdicts
    if _cron_verdicts is None:
        from .cache import Kept, module_stamp

        _cron_verdicts = Kept("cron.json", module_stamp("croniter") + "|" + _this_file_stamp())
    verdict = _cron_verdicts.get(expr)
    if verdict not in ("ok", "invalid", "never"):
        verdict = _cron_check(expr)
        _cron_verdicts.put(expr, verdict)
    return verdict


def _this_file_stamp() -> str:
    import os

    st = os.stat(__file__)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _cron_check(expr: str) -> str:
    import croniter  # imported here: only a schedule not checked before needs it

    if not croniter.croniter.is_valid(expr):
        return "invalid"
    try:
        croniter.croniter(expr, _CRON_PROBE_START).get_next(dt.datetime)
    except (croniter.CroniterBadDateError, croniter.CroniterError, ValueError):
        return "never"
    return "ok"


def _conjuncts(c: A.Cond, negated: bool) -> tuple[list[A.Cond], list[A.Cond]]:
    """The parts of a filter that must all hold: (conditions that must be true, conditions that
    must be false), looking through ``and``, ``not`` and a negated ``or``."""
    if isinstance(c, A.Not):
        return _conjuncts(c.item, not negated)
    if isinstance(c, A.And) and not negated or isinstance(c, A.Or) and negated:
        pos: list[A.Cond] = []
        neg: list[A.Cond] = []
        for i in c.items:
            p, n = _conjuncts(i, negated)
            pos += p
            neg += n
        return pos, neg
    return ([], [c]) if negated else ([c], [])


#: 月曜 / 月曜日 / 月 -> monday, for `wait until 月曜`.
_JAPANESE_WEEKDAYS = {
    "月": "monday",
    "火": "tuesday",
    "水": "wednesday",
    "木": "thursday",
    "金": "friday",
    "土": "saturday",
    "日": "sunday",
}
