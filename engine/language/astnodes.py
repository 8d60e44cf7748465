"""The typed syntax tree of a rule file: what the parser builds and the checks read.

Every node is a dataclass with a :class:`~engine.language.diagnostics.Span`, so a check can point at the
smallest piece of text that is wrong. Values are kept as written (a time of day may be
``25:00`` here); :mod:`engine.language.checks` says what is wrong with them and :mod:`engine.language.compiler`
turns a checked tree into :mod:`engine.language.ir`.

The parser builds the nodes and nothing changes them afterwards. They are not ``frozen``: a
frozen dataclass sets each field through ``object.__setattr__``, which makes building the tens
of thousands of nodes of a large folder take about a fifth longer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

from .diagnostics import Span
from .records import Record

# ----------------------------------------------------------------------------- leaves

#: Where a leaf was written: the fields of its :class:`~engine.language.diagnostics.Span`, in order.
At = tuple[str, int, int, int | None, int | None]


class _Leaf(Record):
    """A single token's node. It keeps its place as a plain tuple and makes the
    :class:`~engine.language.diagnostics.Span` when asked: only diagnostics ask, and a folder has about
    as many leaves as it has tokens."""

    __slots__ = ()
    at: At

    @property
    def span(self) -> Span:
        return Span(*self.at)


@dataclass(slots=True, eq=False, repr=False)
class Name(_Leaf):
    """A name as written: a rule, message, tag, segment, variant, menu or attribute."""

    value: str
    at: At


@dataclass(slots=True, eq=False, repr=False)
class Str(_Leaf):
    """A quoted text, unescaped."""

    value: str
    at: At


@dataclass(slots=True, eq=False, repr=False)
class Number(_Leaf):
    value: int | float
    at: At


@dataclass(slots=True, eq=False, repr=False)
class Duration(_Leaf):
    """``1d12h``: ``seconds`` is the total; ``text`` is what was written."""

    seconds: int
    text: str
    at: At


@dataclass(slots=True, eq=False, repr=False)
class TimeOfDay(_Leaf):
    """``HH:MM`` as written; the numbers are not yet known to be a valid time."""

    hour: int
    minute: int
    text: str
    at: At


@dataclass(slots=True, eq=False, repr=False)
class Percent(_Leaf):
    value: float
    text: str
    at: At


@dataclass(slots=True, eq=False, repr=False)
class Pair(Record):
    """``key=value`` (the value may be quoted)."""

    key: Name
    value: str
    span: Span


# ----------------------------------------------------------------------------- conditions


@dataclass(slots=True, eq=False, repr=False)
class And(Record):
    items: tuple[Cond, ...]
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Or(Record):
    items: tuple[Cond, ...]
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Not(Record):
    item: Cond
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Activity(Record):
    """``purchased|clicked|viewed|carted [key=value] [within D]``; ``kind`` is the IR kind
    (``purchase``, ``click``, ``view``, ``cart``) and ``word`` the keyword written."""

    kind: str
    word: str
    pair: Pair | None
    within: Duration | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Tagged(Record):
    name: Name
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Blocked(Record):
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Followed(Record):
    """``followed [via k=v, ...]``."""

    pairs: tuple[Pair, ...]
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class FriendFor(Record):
    """``friend for D`` (mode ``for``) / ``friend within D`` (mode ``within``)."""

    mode: str
    duration: Duration
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class LastPurchaseOlder(Record):
    duration: Duration
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class NeverPurchased(Record):
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Measure(Record):
    """``orders``, ``spent within 365d``, a custom attribute..."""

    name: Name
    within: Duration | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Compare(Record):
    measure: Measure
    op: str
    value: Number | Str
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Top(Record):
    percent: Percent
    measure: Measure
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class InSegment(Record):
    name: Name
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Variant(Record):
    name: Name
    span: Span


Cond = Union[
    And,
    Or,
    Not,
    Activity,
    Tagged,
    Blocked,
    Followed,
    FriendFor,
    LastPurchaseOlder,
    NeverPurchased,
    Compare,
    Top,
    InSegment,
    Variant,
]

# ----------------------------------------------------------------------------- triggers


@dataclass(slots=True, eq=False, repr=False)
class CondTrigger(Record):
    """``when C``: an event trigger when C is exactly one of the event forms (``purchased``,
    ``tagged vip``, ``followed via ...``, ...), otherwise a condition trigger."""

    cond: Cond
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class UnfollowedTrigger(Record):
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class LinkedTrigger(Record):
    """``when linked``: the friend was just linked to a shop customer (docs/shop.md)."""

    span: Span


@dataclass(slots=True, eq=False, repr=False)
class MessageTrigger(Record):
    keywords: tuple[Str, ...]
    exact: bool
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class PostbackTrigger(Record):
    pairs: tuple[Pair, ...]
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class EventTrigger(Record):
    name: Name
    pairs: tuple[Pair, ...]
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class ScheduleTrigger(Record):
    cron: Str
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class SaleTrigger(Record):
    edge: str  # "starts" | "ends"
    kind: Name | None
    before: Duration | None
    at: TimeOfDay | None
    span: Span


Trigger = Union[
    CondTrigger,
    UnfollowedTrigger,
    LinkedTrigger,
    MessageTrigger,
    PostbackTrigger,
    EventTrigger,
    ScheduleTrigger,
    SaleTrigger,
]

# ----------------------------------------------------------------------------- steps


@dataclass(slots=True, eq=False, repr=False)
class Guard(Record):
    """``if C`` (negated False) / ``unless C`` (negated True), on a step or as entry filter."""

    cond: Cond
    negated: bool
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class SendStep(Record):
    messages: tuple[Name, ...]
    guard: Guard | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class WaitStep(Record):
    duration: Duration
    at: TimeOfDay | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class WaitUntilStep(Record):
    """``wait until HH:MM`` (weekday None) / ``wait until monday [at HH:MM]``."""

    at: TimeOfDay | None
    weekday: Name | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class WaitForStep(Record):
    trigger: Trigger
    up_to: Duration
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class TagStep(Record):
    name: Name
    guard: Guard | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class UntagStep(Record):
    name: Name
    guard: Guard | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class SetStep(Record):
    attr: Name
    value: Number | Str
    guard: Guard | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class MenuStep(Record):
    name: Name
    guard: Guard | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class StartStep(Record):
    rule: Name
    guard: Guard | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class StopStep(Record):
    guard: Guard | None
    span: Span


Step = Union[SendStep, WaitStep, WaitUntilStep, WaitForStep, TagStep, UntagStep, SetStep, MenuStep, StartStep, StopStep]
WAIT_STEPS = (WaitStep, WaitUntilStep, WaitForStep)

# ----------------------------------------------------------------------------- options


@dataclass(slots=True, eq=False, repr=False)
class ExitWhen(Record):
    cond: Cond
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Reenter(Record):
    mode: str  # "never" | "always" | "after"
    after: Duration | None
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Window(Record):
    start: TimeOfDay
    end: TimeOfDay
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Priority(Record):
    value: int
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class SplitItem(Record):
    name: Name
    percent: Percent
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Split(Record):
    items: tuple[SplitItem, ...]
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Holdout(Record):
    percent: Percent
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class Uncapped(Record):
    """``uncapped``: the rule's sends neither count against nor are stopped by max_per_day."""

    span: Span


Option = Union[ExitWhen, Reenter, Window, Priority, Uncapped, Split, Holdout]

#: The keyword each option is written with, for messages about repeated options.
OPTION_WORDS = {
    ExitWhen: "exit when",
    Reenter: "reenter",
    Window: "window",
    Priority: "priority",
    Uncapped: "uncapped",
    Split: "split",
    Holdout: "holdout",
}

# ----------------------------------------------------------------------------- files


@dataclass(slots=True, eq=False, repr=False)
class RuleDef(Record):
    """``rule NAME ["description"] when ...`` (name given) or a bare ``when ...`` (name None:
    the file's stem)."""

    name: Name | None
    description: Str | None
    trigger: Trigger
    entry: Guard | None
    options: tuple[Option, ...]
    steps: tuple[Step, ...]
    span: Span


@dataclass(slots=True, eq=False, repr=False)
class SegmentDef(Record):
    name: Name
    cond: Cond
    span: Span


Item = Union[RuleDef, SegmentDef]


@dataclass(slots=True, eq=False, repr=False)
class RuleFile(Record):
    """One parsed ``.rule`` file. ``broken`` names the rules and segments whose text could not
    be parsed (so that references to them are not reported again)."""

    path: str
    items: tuple[Item, ...]
    broken_rules: tuple[str, ...] = ()
    broken_segments: tuple[str, ...] = ()
    has_syntax_errors: bool = False


def rule_name_of(rule: RuleDef, path: str) -> str:
    """The rule's name: as written, or the file's stem for a bare rule."""
    return rule.name.value if rule.name is not None else os.path.splitext(os.path.basename(path))[0]
