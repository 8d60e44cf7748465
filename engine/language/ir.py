"""The compiled form of a rule folder: what the engine runs. Plain dataclasses that cannot be
changed once made (:class:`engine.language.records.FrozenRecord`, which also gives their
equality, hash and repr).

The front end (grammar -> AST -> checks -> compile) produces a :class:`Project`; the engine,
the simulator, ``graph`` and ``report`` consume it. Nothing here knows about Lark.

Units: durations are whole seconds (``int``); times of day are :class:`datetime.time` in the
project's configured zone; percentages are floats in 0..100.

Every node carries an optional ``span`` (excluded from equality) so that runtime messages and
``graph`` can point back at the rule text.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Union

from .diagnostics import Span
from .records import FrozenRecord

_SPAN = dict(default=None, compare=False, repr=False)

# ----------------------------------------------------------------------------- names, durations

#: A name in the rule language (rules, tags, attributes, segments, messages, event types,
#: sale kinds): a letter or ``_``, then letters, digits, ``_`` and ``-``. The grammar's ``NAME``
#: terminal (engine/grammar.lark) is this pattern; everything else uses it from here.
NAME_RE = re.compile(r"[^\W\d][\w-]*")

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_DURATION_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, *, seconds: bool = True) -> int:
    """``30m``, ``2h``, ``1d12h``, ``45s`` -> seconds; ValueError on anything else.

    ``seconds=False`` is the rule language's grammar: no ``s`` unit, since rules run on the
    runner's tick (a minute or more) and ``wait 30s`` would promise a precision nobody gets;
    rule tests (``tick``, ``tolerance``, ``until``) and ``simulate --tick`` may say seconds."""
    number = text[:-1]
    unit = _DURATION_UNIT.get(text[-1:])
    if number.isdecimal() and unit is not None and (seconds or unit != 1):  # one part, as almost always
        return int(number) * unit
    s = text.strip()
    parts = _DURATION_PART.findall(s)
    if not s or "".join(n + u for n, u in parts) != s or (not seconds and "s" in s):
        raise ValueError(f"`{text}` is not a duration (use e.g. 30m, 1h, 1d12h)")
    return sum(int(n) * _DURATION_UNIT[u] for n, u in parts)


# ----------------------------------------------------------------------------- conditions


@dataclass(eq=False, repr=False)
class All(FrozenRecord):
    """``C and C and ...``"""

    items: tuple[Cond, ...]
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class AnyOf(FrozenRecord):
    """``C or C or ...``"""

    items: tuple[Cond, ...]
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Not(FrozenRecord):
    item: Cond
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Activity(FrozenRecord):
    """``purchased [product=X|category=Y] [within D]``, ``clicked [within D]``,
    ``viewed product=X [within D]``, ``carted [product=X] [within D]``.

    ``kind`` is one of ``purchase``, ``click``, ``view``, ``cart``. ``within`` is None for
    "since the friend entered this rule" (outside a rule, e.g. in a segment: ever).
    ``click`` counts only tracked links sent by the rule being evaluated.
    """

    kind: str
    product: str | None = None
    category: str | None = None
    within: int | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Tagged(FrozenRecord):
    name: str
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Blocked(FrozenRecord):
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class FollowedVia(FrozenRecord):
    """``followed via qr=shipping, ad=summer``: the friend's add source matches any pair.
    An empty tuple (plain ``followed``) is true for every current friend."""

    pairs: tuple[tuple[str, str], ...]
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class FriendFor(FrozenRecord):
    """``friend for 30d`` (mode ``for``: followed at least D ago) /
    ``friend within 30d`` (mode ``within``: followed less than D ago)."""

    seconds: int
    mode: str  # "for" | "within"
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class LastPurchaseOlder(FrozenRecord):
    """``last purchase older than 90d``: has purchased, and the last purchase is >= D ago."""

    seconds: int
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class NeverPurchased(FrozenRecord):
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Measure(FrozenRecord):
    """The left side of a comparison or a ``top`` ranking.

    ``name`` is ``orders``, ``total_spent``, ``spent`` (with ``within``: ``spent within 365d``),
    ``display_name``, ``language``, or a custom attribute name (set by ``attributes`` events or
    ``set`` steps).
    """

    name: str
    within: int | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Compare(FrozenRecord):
    """``ATTR OP VALUE``; op is one of ``= != < <= > >=``; value a number or a string."""

    measure: Measure
    op: str
    value: int | float | str
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Top(FrozenRecord):
    """``top 20% by spent within 365d``: among current (not blocked) friends."""

    percent: float
    measure: Measure
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class InSegment(FrozenRecord):
    name: str
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Variant(FrozenRecord):
    """``variant a``: the friend was assigned that split variant in the rule being evaluated."""

    name: str
    span: Span | None = field(**_SPAN)


Cond = Union[
    All,
    AnyOf,
    Not,
    Activity,
    Tagged,
    Blocked,
    FollowedVia,
    FriendFor,
    LastPurchaseOlder,
    NeverPurchased,
    Compare,
    Top,
    InSegment,
    Variant,
]

# ----------------------------------------------------------------------------- triggers
# Event triggers name the intake event type they listen to in ``event_type``.


@dataclass(eq=False, repr=False)
class Followed(FrozenRecord):
    """``followed [via k=v, ...]`` -- a follow event (new friend or unblock)."""

    via: tuple[tuple[str, str], ...] = ()
    span: Span | None = field(**_SPAN)
    event_type = "follow"


@dataclass(eq=False, repr=False)
class Unfollowed(FrozenRecord):
    span: Span | None = field(**_SPAN)
    event_type = "unfollow"


@dataclass(eq=False, repr=False)
class Linked(FrozenRecord):
    """``linked`` -- the friend was just linked to a shop customer (engine/runtime/identity.py)."""

    span: Span | None = field(**_SPAN)
    event_type = "linked"


@dataclass(eq=False, repr=False)
class MessageTrigger(FrozenRecord):
    """``message "a", "b"`` (contains any) / ``message exactly "はい"`` (equals any).
    Keywords are stored NFKC-normalised and casefolded; the engine normalises the text alike."""

    keywords: tuple[str, ...]
    exact: bool = False
    span: Span | None = field(**_SPAN)
    event_type = "message"


@dataclass(eq=False, repr=False)
class PostbackTrigger(FrozenRecord):
    """``postback action=survey_done``: the postback data (a query string) has every pair."""

    pairs: tuple[tuple[str, str], ...]
    span: Span | None = field(**_SPAN)
    event_type = "postback"


@dataclass(eq=False, repr=False)
class PurchasedTrigger(FrozenRecord):
    product: str | None = None
    category: str | None = None
    span: Span | None = field(**_SPAN)
    event_type = "purchase"


@dataclass(eq=False, repr=False)
class CartedTrigger(FrozenRecord):
    product: str | None = None
    span: Span | None = field(**_SPAN)
    event_type = "cart"


@dataclass(eq=False, repr=False)
class ViewedTrigger(FrozenRecord):
    product: str | None = None
    span: Span | None = field(**_SPAN)
    event_type = "view"


@dataclass(eq=False, repr=False)
class TaggedTrigger(FrozenRecord):
    """``tagged NAME``: the tag was added (by an event, a ``tag`` step, or the shop API)."""

    name: str
    span: Span | None = field(**_SPAN)
    event_type = "tag"


@dataclass(eq=False, repr=False)
class CustomEventTrigger(FrozenRecord):
    """``event shipped [key=value ...]``: a custom shop event whose top-level fields match."""

    name: str
    pairs: tuple[tuple[str, str], ...] = ()
    span: Span | None = field(**_SPAN)

    @property
    def event_type(self) -> str:
        return self.name


@dataclass(eq=False, repr=False)
class ScheduleTrigger(FrozenRecord):
    """``schedule "0 20 * * 5"``: croniter in the configured zone; audience: all current friends."""

    cron: str
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class SaleTrigger(FrozenRecord):
    """``sale [kind=K] starts|ends [in D [at HH:MM]]``.

    Without ``at``: fires at (sale instant - ``before`` seconds).
    With ``at``: fires at HH:MM local on the calendar day ``before // 86400`` days before the
    sale instant's local date (``before`` is then a whole number of days).
    Audience: all current friends; once per friend per sale occurrence.
    """

    edge: str  # "starts" | "ends"
    before: int = 0
    at: dt.time | None = None
    kind: str | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class ConditionTrigger(FrozenRecord):
    """Any other condition: the friend enters when it becomes true (checked on every tick)."""

    cond: Cond
    span: Span | None = field(**_SPAN)


EventTrigger = Union[
    Followed,
    Unfollowed,
    Linked,
    MessageTrigger,
    PostbackTrigger,
    PurchasedTrigger,
    CartedTrigger,
    ViewedTrigger,
    TaggedTrigger,
    CustomEventTrigger,
]
Trigger = Union[EventTrigger, ScheduleTrigger, SaleTrigger, ConditionTrigger]

# ----------------------------------------------------------------------------- steps
# Every step has a stable ``id`` (unique within its rule) that survives unrelated edits of the
# rule, so in-flight enrollments can be carried over to a new version (see docs/decisions.md).


@dataclass(eq=False, repr=False)
class Send(FrozenRecord):
    id: str
    messages: tuple[str, ...]
    cond: Cond | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Wait(FrozenRecord):
    """``wait D`` (at None) or ``wait D at HH:MM`` (first HH:MM at or after now + D)."""

    id: str
    seconds: int
    at: dt.time | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class WaitUntil(FrozenRecord):
    """``wait until HH:MM`` / ``wait until monday [at HH:MM]``: the next such moment strictly
    after now. ``weekday`` is 0=Monday..6=Sunday or None; ``at`` defaults to 00:00 with a weekday."""

    id: str
    at: dt.time | None = None
    weekday: int | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class WaitFor(FrozenRecord):
    """``wait for TRIGGER up to D``: resume on that event for this friend, or after D."""

    id: str
    trigger: EventTrigger
    up_to: int
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class TagStep(FrozenRecord):
    id: str
    name: str
    cond: Cond | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class UntagStep(FrozenRecord):
    id: str
    name: str
    cond: Cond | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class SetStep(FrozenRecord):
    id: str
    attr: str
    value: int | float | str
    cond: Cond | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class MenuStep(FrozenRecord):
    id: str
    menu: str
    cond: Cond | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class StartStep(FrozenRecord):
    id: str
    rule: str
    cond: Cond | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class StopStep(FrozenRecord):
    id: str
    cond: Cond | None = None
    span: Span | None = field(**_SPAN)


Step = Union[Send, Wait, WaitUntil, WaitFor, TagStep, UntagStep, SetStep, MenuStep, StartStep, StopStep]
WAIT_STEPS = (Wait, WaitUntil, WaitFor)

# ----------------------------------------------------------------------------- rules


@dataclass(eq=False, repr=False)
class Reenter(FrozenRecord):
    """``reenter never`` (default) / ``reenter after 90d`` / ``reenter always``."""

    mode: str = "never"  # "never" | "after" | "always"
    after: int = 0
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Window(FrozenRecord):
    """A daily delivery window, local time; ``end`` may be before ``start`` (over midnight)."""

    start: dt.time
    end: dt.time
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Rule(FrozenRecord):
    name: str
    trigger: Trigger
    steps: tuple[Step, ...]
    description: str | None = None
    entry: Cond | None = None  # ``if C`` / ``unless C`` (compiled as Not(C))
    exit_when: Cond | None = None
    reenter: Reenter = Reenter()
    window: Window | None = None  # overrides settings.window
    priority: int = 0
    uncapped: bool = False  # sends neither count against nor are stopped by max_per_day
    split: tuple[tuple[str, float], ...] = ()  # ((variant, percent), ...), sums to 100
    holdout: float = 0.0
    version: str = ""  # content hash of the rule's compiled form
    path: str = ""  # the file it came from
    span: Span | None = field(**_SPAN)

    def step(self, step_id: str) -> Step | None:
        for s in self.steps:
            if s.id == step_id:
                return s
        return None

    def index_of(self, step_id: str) -> int | None:
        for i, s in enumerate(self.steps):
            if s.id == step_id:
                return i
        return None


@dataclass(eq=False, repr=False)
class Segment(FrozenRecord):
    name: str
    cond: Cond
    span: Span | None = field(**_SPAN)


# ----------------------------------------------------------------------------- files beside the rules


@dataclass(eq=False, repr=False)
class MessageDef(FrozenRecord):
    """One name of messages.yaml: a list of LINE message objects (dicts in LINE's JSON shape).
    Strings inside may be Liquid templates; they are rendered per friend at send time."""

    name: str
    objects: tuple[dict, ...]
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Sale(FrozenRecord):
    name: str
    title: str
    starts: dt.datetime  # timezone-aware
    ends: dt.datetime  # timezone-aware
    kind: str | None = None
    url: str | None = None
    span: Span | None = field(**_SPAN)


@dataclass(eq=False, repr=False)
class Settings(FrozenRecord):
    timezone: str = "Asia/Tokyo"
    window: Window | None = None  # None: any time
    max_per_day: int | None = None  # pushes per friend per local day; None: no cap
    monthly_quota: int | None = None  # None: read from LINE's quota endpoint only
    rich_menus: tuple[tuple[str, str], ...] = ()  # (NAME, richmenu id)
    utm: bool = True  # add utm_* parameters to links
    attribution_days: int = 7  # conversion window for reports
    base_url: str | None = None  # public base URL of the runner (click tracking, /join)
    login_channel_id: str | None = None  # LINE Login channel for /join/<source>
    login_channel_secret: str | None = None
    language: str | None = None  # "ja" | "en": the language of diagnostics and reports
    account_link_url: str | None = None  # account_link.login_url: the shop's login page
    span: Span | None = field(**_SPAN)

    @property
    def tz(self):
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    def rich_menu(self, name: str) -> str | None:
        return dict(self.rich_menus).get(name)


@dataclass(eq=False, repr=False)
class Project(FrozenRecord):
    """A whole validated rule folder."""

    rules: dict[str, Rule]
    segments: dict[str, Segment]
    messages: dict[str, MessageDef]
    sales: tuple[Sale, ...]
    settings: Settings
    root: str = ""
    version: str = ""  # hash over every file of the folder
