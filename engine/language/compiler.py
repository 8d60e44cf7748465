"""Checked syntax tree -> :mod:`engine.language.ir`, and IR -> the rule's own words.

Compiling assumes :mod:`engine.language.checks` found no error (times are valid, percentages in range).

How ``when C`` is read: when C is exactly one of the event forms -- ``followed [via ...]``,
``purchased [product=X | category=Y]``, ``viewed [product=X]``, ``carted [product=X]``,
``tagged NAME`` -- with no ``within`` and nothing combined with it, the rule listens to that
event. Anything else (``purchased within 30d``, ``tagged vip and orders >= 3``, ``not tagged
vip``...) is a condition trigger: the friend enters when it becomes true.

The ``describe_*`` functions print IR back in the rule language; ``graph`` labels and step ids
use them, so what a reviewer reads is what the marketer wrote.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import re
import unicodedata

from . import astnodes as A
from . import ir
from .astnodes import rule_name_of

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_PLAIN_VALUE = re.compile(r'[^\s,"#()=]+')

# ----------------------------------------------------------------------------- AST -> IR


def event_form(cond: A.Cond) -> ir.EventTrigger | None:
    """The event a bare ``when`` condition listens to, or None for a condition trigger."""
    if isinstance(cond, A.Activity) and cond.within is None and cond.kind != "click":
        key = cond.pair.key.value if cond.pair else None
        value = cond.pair.value if cond.pair else None
        span = cond.span
        if cond.kind == "purchase":
            return ir.PurchasedTrigger(
                product=value if key == "product" else None, category=value if key == "category" else None, span=span
            )
        if cond.kind == "view":
            return ir.ViewedTrigger(product=value, span=span)
        return ir.CartedTrigger(product=value, span=span)
    if isinstance(cond, A.Tagged):
        return ir.TaggedTrigger(cond.name.value, span=cond.span)
    if isinstance(cond, A.Followed):
        return ir.Followed(_pairs(cond.pairs), span=cond.span)
    return None


def _pairs(pairs: tuple[A.Pair, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((p.key.value, p.value) for p in pairs)


def _time(t: A.TimeOfDay | None) -> dt.time | None:
    return None if t is None else dt.time(t.hour, t.minute)


def _seconds(d: A.Duration | None) -> int | None:
    return None if d is None else d.seconds


def compile_cond(c: A.Cond) -> ir.Cond:
    """A condition as the engine evaluates it."""
    if isinstance(c, A.And):
        return ir.All(tuple(compile_cond(i) for i in c.items), span=c.span)
    if isinstance(c, A.Or):
        return ir.AnyOf(tuple(compile_cond(i) for i in c.items), span=c.span)
    if isinstance(c, A.Not):
        return ir.Not(compile_cond(c.item), span=c.span)
    if isinstance(c, A.Activity):
        key = c.pair.key.value if c.pair else None
        value = c.pair.value if c.pair else None
        return ir.Activity(
            c.kind,
            product=value if key == "product" else None,
            category=value if key == "category" else None,
            within=_seconds(c.within),
            span=c.span,
        )
    if isinstance(c, A.Tagged):
        return ir.Tagged(c.name.value, span=c.span)
    if isinstance(c, A.Blocked):
        return ir.Blocked(span=c.span)
    if isinstance(c, A.Followed):
        return ir.FollowedVia(_pairs(c.pairs), span=c.span)
    if isinstance(c, A.FriendFor):
        return ir.FriendFor(c.duration.seconds, c.mode, span=c.span)
    if isinstance(c, A.LastPurchaseOlder):
        return ir.LastPurchaseOlder(c.duration.seconds, span=c.span)
    if isinstance(c, A.NeverPurchased):
        return ir.NeverPurchased(span=c.span)
    if isinstance(c, A.Compare):
        return ir.Compare(_measure(c.measure), c.op, c.value.value, span=c.span)
    if isinstance(c, A.Top):
        return ir.Top(c.percent.value, _measure(c.measure), span=c.span)
    if isinstance(c, A.InSegment):
        return ir.InSegment(c.name.value, span=c.span)
    if isinstance(c, A.Variant):
        return ir.Variant(c.name.value, span=c.span)
    raise TypeError(f"not a condition: {c!r}")


def _measure(m: A.Measure) -> ir.Measure:
    return ir.Measure(m.name.value, _seconds(m.within), span=m.span)


def normalise_keyword(text: str) -> str:
    """How message keywords and message texts are compared: NFKC, then case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def compile_trigger(t: A.Trigger) -> ir.Trigger:
    if isinstance(t, A.CondTrigger):
        return event_form(t.cond) or ir.ConditionTrigger(compile_cond(t.cond), span=t.span)
    if isinstance(t, A.UnfollowedTrigger):
        return ir.Unfollowed(span=t.span)
    if isinstance(t, A.LinkedTrigger):
        return ir.Linked(span=t.span)
    if isinstance(t, A.MessageTrigger):
        return ir.MessageTrigger(tuple(normalise_keyword(k.value) for k in t.keywords), t.exact, span=t.span)
    if isinstance(t, A.PostbackTrigger):
        return ir.PostbackTrigger(_pairs(t.pairs), span=t.span)
    if isinstance(t, A.EventTrigger):
        return ir.CustomEventTrigger(t.name.value, _pairs(t.pairs), span=t.span)
    if isinstance(t, A.ScheduleTrigger):
        return ir.ScheduleTrigger(" ".join(t.cron.value.split()), span=t.span)
    if isinstance(t, A.SaleTrigger):
        return ir.SaleTrigger(
            t.edge, before=_seconds(t.before) or 0, at=_time(t.at), kind=t.kind.value if t.kind else None, span=t.span
        )
    raise TypeError(f"not a trigger: {t!r}")


def _weekday(name: A.Name | None) -> int | None:
    return WEEKDAYS.index(name.value.lower()) if name else None


def _guard(g: A.Guard | None) -> ir.Cond | None:
    if g is None:
        return None
    cond = compile_cond(g.cond)
    return ir.Not(cond, span=g.span) if g.negated else cond


def compile_step(s: A.Step, step_id: str = "") -> ir.Step:
    """One step; ``step_id`` is filled in by :func:`compile_rule` (see :func:`step_ids`)."""
    if isinstance(s, A.SendStep):
        return ir.Send(step_id, tuple(m.value for m in s.messages), _guard(s.guard), span=s.span)
    if isinstance(s, A.WaitStep):
        return ir.Wait(step_id, s.duration.seconds, _time(s.at), span=s.span)
    if isinstance(s, A.WaitUntilStep):
        return ir.WaitUntil(step_id, _time(s.at), _weekday(s.weekday), span=s.span)
    if isinstance(s, A.WaitForStep):
        trigger = compile_trigger(s.trigger)
        return ir.WaitFor(step_id, trigger, s.up_to.seconds, span=s.span)  # type: ignore[arg-type]
    if isinstance(s, A.TagStep):
        return ir.TagStep(step_id, s.name.value, _guard(s.guard), span=s.span)
    if isinstance(s, A.UntagStep):
        return ir.UntagStep(step_id, s.name.value, _guard(s.guard), span=s.span)
    if isinstance(s, A.SetStep):
        return ir.SetStep(step_id, s.attr.value, s.value.value, _guard(s.guard), span=s.span)
    if isinstance(s, A.MenuStep):
        return ir.MenuStep(step_id, s.name.value, _guard(s.guard), span=s.span)
    if isinstance(s, A.StartStep):
        return ir.StartStep(step_id, s.rule.value, _guard(s.guard), span=s.span)
    if isinstance(s, A.StopStep):
        return ir.StopStep(step_id, _guard(s.guard), span=s.span)
    raise TypeError(f"not a step: {s!r}")


def step_ids(steps: tuple[A.Step, ...]) -> list[str]:
    """``"<keyword> <main argument>"`` per step (``send coupon15``, ``wait 3d at 12:00``,
    ``set rank``, ``stop``): the step as written without its condition or value, so the id
    survives edits of those. A repeat within the rule gets `` #2``, `` #3``..."""
    seen: dict[str, int] = {}
    out = []
    for s in steps:
        base = _step_key(s)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return out


_REPEAT = re.compile(r" #\d+$")


def carried_step(old_ids: list[str], new_ids: list[str], step_id: str) -> tuple[str | None, bool]:
    """Where a friend at ``step_id`` of a rule's old steps goes in its new steps: (the new step
    id, whether it is the same step), or (the first surviving step after it, False), or (None,
    False) when none survives. A step written once in both versions is found by its id; a
    repeated one (`wait 1d`, `wait 1d #2`) by its place among the steps, matched by what they
    say: renaming the first repeat renumbers the others, and the numbers alone would move a
    friend to another step. A friend at a wait rewritten in place goes on after the new wait
    (new steps written after it included)."""

    def key(sid: str) -> str:
        return _REPEAT.sub("", sid)

    old_keys, new_keys = [key(i) for i in old_ids], [key(i) for i in new_ids]
    mine = key(step_id)
    if step_id in old_ids and old_keys.count(mine) <= 1 and new_keys.count(mine) <= 1 and step_id in new_ids:
        return step_id, True
    if step_id not in old_ids:
        return (step_id, True) if step_id in new_ids else (None, False)
    match = difflib.SequenceMatcher(a=old_keys, b=new_keys, autojunk=False)
    matched: dict[int, int] = {}
    for a, b, size in match.get_matching_blocks():
        matched.update((a + k, b + k) for k in range(size))
    i = old_ids.index(step_id)
    if i in matched:
        return new_ids[matched[i]], True
    if mine.startswith("wait "):
        # a wait rewritten in place (`wait 3m` -> `wait 1m`, perhaps with new steps after it):
        # the friend goes on after the new wait, at its old due time
        for tag, i1, i2, j1, j2 in match.get_opcodes():
            if tag == "replace" and i1 <= i < i2:
                wait = next((j for j in range(j1, j2) if new_keys[j].startswith("wait ")), None)
                if wait is not None:
                    return (new_ids[wait + 1] if wait + 1 < len(new_ids) else None), False
    later = next((matched[j] for j in range(i + 1, len(old_ids)) if j in matched), None)
    return (new_ids[later] if later is not None else None), False


def _step_key(s: A.Step) -> str:
    if isinstance(s, A.SendStep):
        return "send " + ", ".join(m.value for m in s.messages)
    if isinstance(s, A.WaitStep):
        return _wait_words(s.duration.seconds, _time(s.at))
    if isinstance(s, A.WaitUntilStep):
        return _wait_until_words(_weekday(s.weekday), _time(s.at))
    if isinstance(s, A.WaitForStep):
        return describe_step(compile_step(s))
    if isinstance(s, A.SetStep):
        return f"set {s.attr.value}"
    if isinstance(s, A.StopStep):
        return "stop"
    name = s.rule if isinstance(s, A.StartStep) else s.name
    return f"{_STEP_WORDS[type(s)]} {name.value}"


_STEP_WORDS = {A.TagStep: "tag", A.UntagStep: "untag", A.MenuStep: "menu", A.StartStep: "start"}


def compile_rule(rule: A.RuleDef, path: str) -> ir.Rule:
    """One rule, with step ids and its content hash (``version``)."""
    steps = tuple(compile_step(s, i) for s, i in zip(rule.steps, step_ids(rule.steps)))
    options: dict = {}
    for o in rule.options:
        if isinstance(o, A.ExitWhen):
            options["exit_when"] = compile_cond(o.cond)
        elif isinstance(o, A.Reenter):
            options["reenter"] = ir.Reenter(o.mode, _seconds(o.after) or 0, span=o.span)
        elif isinstance(o, A.Window):
            options["window"] = ir.Window(_time(o.start), _time(o.end), span=o.span)
        elif isinstance(o, A.Priority):
            options["priority"] = o.value
        elif isinstance(o, A.Uncapped):
            options["uncapped"] = True
        elif isinstance(o, A.Split):
            options["split"] = tuple((i.name.value, i.percent.value) for i in o.items)
        elif isinstance(o, A.Holdout):
            options["holdout"] = o.percent.value
    options.update(
        name=rule_name_of(rule, path),
        trigger=compile_trigger(rule.trigger),
        steps=steps,
        description=rule.description.value if rule.description else None,
        entry=_guard(rule.entry),
        span=rule.span,
    )
    rule = ir.Rule(**options)
    # Its version is the digest of the rule as made so far (no version, no path); nothing has
    # seen the rule yet, so the two are filled in here rather than by making it a second time.
    made = rule.__dict__
    made["version"] = _digest(rule)
    made["path"] = path
    return rule


def rule_version(rule: ir.Rule) -> str:
    """A stable hash of what the rule does: spans, path and the version itself left out."""
    return _digest(dataclasses.replace(rule, version="", path=""))


def _digest(rule: ir.Rule) -> str:
    return hashlib.sha256(repr(rule).encode("utf-8")).hexdigest()[:16]


def compile_segment(seg: A.SegmentDef) -> ir.Segment:
    return ir.Segment(seg.name.value, compile_cond(seg.cond), span=seg.span)


# ----------------------------------------------------------------------------- IR -> words


def describe_duration(seconds: int) -> str:
    """Seconds as the language writes them: ``1d12h``, ``30m``, ``0d``."""
    if seconds == 0:
        return "0d"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0d"


def describe_time(t: dt.time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"


def _value(v: str) -> str:
    """A pair value, quoted when it would not read back as one word."""
    return v if _PLAIN_VALUE.fullmatch(v) else _quote(v)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _pairs_words(pairs: tuple[tuple[str, str], ...], sep: str = ", ") -> str:
    return sep.join(f"{k}={_value(v)}" for k, v in pairs)


def _number(v) -> str:
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _percent(p: float) -> str:
    return f"{_number(p)}%"


def _within(seconds: int | None) -> str:
    return "" if seconds is None else f" within {describe_duration(seconds)}"


def _measure_words(m: ir.Measure) -> str:
    return m.name + _within(m.within)


_ACTIVITY_WORDS = {"purchase": "purchased", "click": "clicked", "view": "viewed", "cart": "carted"}


def describe_cond(c: ir.Cond) -> str:
    """A condition in the rule language (``and`` groups are parenthesised inside ``or`` only
    where needed)."""
    if isinstance(c, ir.All):
        return " and ".join(_grouped(i, (ir.AnyOf,)) for i in c.items)
    if isinstance(c, ir.AnyOf):
        return " or ".join(describe_cond(i) for i in c.items)
    if isinstance(c, ir.Not):
        return "not " + _grouped(c.item, (ir.All, ir.AnyOf))
    if isinstance(c, ir.Activity):
        words = _ACTIVITY_WORDS[c.kind]
        if c.product is not None:
            words += f" product={_value(c.product)}"
        if c.category is not None:
            words += f" category={_value(c.category)}"
        return words + _within(c.within)
    if isinstance(c, ir.Tagged):
        return f"tagged {c.name}"
    if isinstance(c, ir.Blocked):
        return "blocked"
    if isinstance(c, ir.FollowedVia):
        return "followed" + (f" via {_pairs_words(c.pairs)}" if c.pairs else "")
    if isinstance(c, ir.FriendFor):
        return f"friend {c.mode} {describe_duration(c.seconds)}"
    if isinstance(c, ir.LastPurchaseOlder):
        return f"last purchase older than {describe_duration(c.seconds)}"
    if isinstance(c, ir.NeverPurchased):
        return "never purchased"
    if isinstance(c, ir.Compare):
        return f"{_measure_words(c.measure)} {c.op} {_number(c.value)}"
    if isinstance(c, ir.Top):
        return f"top {_percent(c.percent)} by {_measure_words(c.measure)}"
    if isinstance(c, ir.InSegment):
        return f"in segment {c.name}"
    if isinstance(c, ir.Variant):
        return f"variant {c.name}"
    raise TypeError(f"not a condition: {c!r}")


def _grouped(c: ir.Cond, needs_parens: tuple[type, ...]) -> str:
    text = describe_cond(c)
    return f"({text})" if isinstance(c, needs_parens) else text


def describe_trigger(t: ir.Trigger) -> str:
    """The trigger as written after ``when``."""
    if isinstance(t, ir.Followed):
        return "followed" + (f" via {_pairs_words(t.via)}" if t.via else "")
    if isinstance(t, ir.Unfollowed):
        return "unfollowed"
    if isinstance(t, ir.Linked):
        return "linked"
    if isinstance(t, ir.MessageTrigger):
        return "message " + ("exactly " if t.exact else "") + ", ".join(_quote(k) for k in t.keywords)
    if isinstance(t, ir.PostbackTrigger):
        return f"postback {_pairs_words(t.pairs)}"
    if isinstance(t, (ir.PurchasedTrigger, ir.CartedTrigger, ir.ViewedTrigger)):
        kind = {ir.PurchasedTrigger: "purchase", ir.CartedTrigger: "cart", ir.ViewedTrigger: "view"}[type(t)]
        return describe_cond(ir.Activity(kind, product=t.product, category=getattr(t, "category", None)))
    if isinstance(t, ir.TaggedTrigger):
        return f"tagged {t.name}"
    if isinstance(t, ir.CustomEventTrigger):
        return f"event {t.name}" + (f" {_pairs_words(t.pairs, ' ')}" if t.pairs else "")
    if isinstance(t, ir.ScheduleTrigger):
        return f"schedule {_quote(t.cron)}"
    if isinstance(t, ir.SaleTrigger):
        words = "sale" + (f" kind={t.kind}" if t.kind else "") + f" {t.edge}"
        if t.before or t.at is not None:
            words += f" in {describe_duration(t.before)}"
        if t.at is not None:
            words += f" at {describe_time(t.at)}"
        return words
    if isinstance(t, ir.ConditionTrigger):
        return describe_cond(t.cond)
    raise TypeError(f"not a trigger: {t!r}")


def describe_step(s: ir.Step, *, with_cond: bool = True) -> str:
    """The step as written (``send coupon15 if not purchased``); without its condition when
    ``with_cond`` is false."""
    cond = getattr(s, "cond", None)
    tail = f" if {describe_cond(cond)}" if (with_cond and cond is not None) else ""
    if isinstance(s, ir.Send):
        return "send " + ", ".join(s.messages) + tail
    if isinstance(s, ir.Wait):
        return _wait_words(s.seconds, s.at)
    if isinstance(s, ir.WaitUntil):
        return _wait_until_words(s.weekday, s.at)
    if isinstance(s, ir.WaitFor):
        return f"wait for {describe_trigger(s.trigger)} up to {describe_duration(s.up_to)}"
    if isinstance(s, ir.TagStep):
        return f"tag {s.name}{tail}"
    if isinstance(s, ir.UntagStep):
        return f"untag {s.name}{tail}"
    if isinstance(s, ir.SetStep):
        return f"set {s.attr} = {_number(s.value)}{tail}"
    if isinstance(s, ir.MenuStep):
        return f"menu {s.menu}{tail}"
    if isinstance(s, ir.StartStep):
        return f"start {s.rule}{tail}"
    if isinstance(s, ir.StopStep):
        return f"stop{tail}"
    raise TypeError(f"not a step: {s!r}")


def _wait_words(seconds: int, at: dt.time | None) -> str:
    return f"wait {describe_duration(seconds)}" + (f" at {describe_time(at)}" if at is not None else "")


def _wait_until_words(weekday: int | None, at: dt.time | None) -> str:
    parts = []
    if weekday is not None:
        parts.append(WEEKDAYS[weekday])
    if at is not None:
        parts.append(("at " if weekday is not None else "") + describe_time(at))
    return "wait until " + " ".join(parts)
