"""Engine events (SPEC §6): the one shape every input takes before it reaches the store.

Shop events (``POST /events``, ``simulate`` timelines) and LINE webhook events are both turned
into :class:`Event` values here; the store applies a batch of them in one transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

#: The types with a fixed meaning; any other type is a custom shop event (``event NAME``).
KNOWN_TYPES = (
    "follow",
    "unfollow",
    "message",
    "postback",
    "purchase",
    "cart",
    "view",
    "attributes",
    "tag",
    "identify",
    "unlink",
    "refund",
    "click",
)
#: Types that may name the shop's ``customer`` instead of the ``friend`` (custom types may too).
CUSTOMER_TYPES = ("purchase", "cart", "view", "attributes", "tag", "unlink", "refund")

#: Types spelled as the rules spell what happened (``when carted``, ``purchased``, ``blocked``)
#: rather than as the event that happened: the type each one means. A custom event of such a
#: name could never be told apart from the mistake, so it is refused (SPEC §6).
RULE_WORD_TYPES = {
    "carted": "cart",
    "purchased": "purchase",
    "viewed": "view",
    "followed": "follow",
    "unfollowed": "unfollow",
    "blocked": "unfollow",
    "unblocked": "follow",
    "clicked": "click",
    "tagged": "tag",
    "untagged": "tag",
    "order": "purchase",
    "ordered": "purchase",
    "bought": "purchase",
    "messaged": "message",
    "block": "unfollow",
    "orders": "purchase",
    "add_to_cart": "cart",
    "postbacked": "postback",
    "linked": "identify",
    "unlinked": "unlink",
    "refunded": "refund",
    "cancelled": "refund",
}

#: Times an event may carry (``at``): from the Unix epoch to the end of 2199 (UTC). Later
#: moments would overflow the engine's clock arithmetic (waits, local days) and earlier ones
#: cannot be meant; a client gets a 400 naming the field instead.
MIN_AT = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_AT = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def type_hint(kind: str) -> str | None:
    """The event type meant by ``kind`` when it is a rule word (``carted`` -> ``cart``) or a
    known type in other letter case (``Follow`` -> ``follow``); None for a fine custom type.

    One table for every place events come in: ``simulate`` timelines, ``linerules test`` and
    ``POST /events`` all refuse such a type with "did you mean `cart`?"."""
    lowered = kind.lower()
    if kind in KNOWN_TYPES:
        return None
    if lowered in KNOWN_TYPES:
        return lowered
    return RULE_WORD_TYPES.get(lowered)


def type_hint_message(kind: str, right: str) -> str:
    """The error text for a type :func:`type_hint` refused."""
    from engine.i18n import _

    if kind.lower() == right:
        return _("unknown type `{kind}` (did you mean `{right}`?)", kind=kind, right=right)
    return _(
        "unknown type `{kind}`: `{word}` is how rules say it; the event is `{right}` (did you mean `{right}`?)",
        kind=kind,
        word=kind.lower(),
        right=right,
    )


#: Built-in event types -> how a rule reacts to them (a rule's `event NAME` is for custom
#: events only).
RULE_WORDS = {
    "follow": "followed",
    "unfollow": "unfollowed",
    "purchase": "purchased",
    "cart": "carted",
    "view": "viewed",
    "click": "clicked",
    "tag": "tagged NAME",
    "message": 'message "..."',
    "postback": "postback KEY=VALUE",
}


def meant_type(type_: str) -> str | None:
    """The event type meant by a type spelled like a rule word (``carted`` -> ``cart``,
    ``order`` -> ``purchase``), or None when ``type_`` is not such a slip. For a refusal:
    ``f'unknown event type "{t}": did you mean "{meant_type(t)}"?'``."""
    return RULE_WORD_TYPES.get(type_.lower())


@dataclass(frozen=True)
class Event:
    type: str  # one of KNOWN_TYPES, or a custom event name
    friend: str  # LINE user id (or the shop's id for the friend)
    at: dt.datetime  # timezone-aware
    data: dict[str, Any] = field(default_factory=dict)  # the other validated fields
    id: str | None = None  # explicit event id, if given
    reply_token: str | None = None  # LINE reply token (webhook events only)
    line: int | None = None  # 1-based line (JSON Lines) or item index in the batch

    @property
    def dedupe_key(self) -> str | None:
        """Events with the same key are applied once: LINE ``webhookEventId``, a purchase's
        ``order_id``, or an explicit ``id``."""
        if self.data.get("webhookEventId"):
            return f"line:{self.data['webhookEventId']}"
        if self.type == "purchase" and self.data.get("order_id"):
            return f"order:{self.data['order_id']}"
        if self.id:
            return f"id:{self.id}"
        return None


def customer_key(value: str) -> str:
    """The shop's customer id as linerules keeps it: an e-mail address (Shopify's and Rakuten's
    customer key) is compared without case; any other id is kept as given."""
    text = value.strip()
    return text.lower() if "@" in text else text


class EventError(ValueError):
    """A malformed event: ``line`` is its line (or index) in the batch, ``field`` the bad field.

    ``unit`` names what ``line`` counts: ``"line"`` (JSON Lines, a JSON text), ``"item"`` (the
    position in a JSON list) or ``"event"`` (the position in a webhook's ``events``); without a
    line it names the whole input (``"event"`` by default). The text reads
    ``line 3: field "at": needs a UTC offset, like 2026-11-01T10:00:00+09:00``.
    """

    def __init__(self, line: int | None, field: str | None, message: str, *, unit: str = "line"):
        self.line, self.field, self.message, self.unit = line, field, message, unit
        #: the problems of the event's other fields, when they were all asked for
        self.others: tuple[EventError, ...] = ()
        self.text = self._text()
        super().__init__(str(self.text))

    def _text(self):
        """The whole reason as a translatable text (``str(self)`` is its English)."""
        from engine.i18n import _

        if self.line is not None:
            where = {"item": _("item {n}", n=self.line), "event": _("event {n}", n=self.line)}.get(
                self.unit, _("line {n}", n=self.line)
            )
        else:
            units = {"line": _("event"), "event": _("event"), "item": _("item"), "webhook body": _("webhook body")}
            where = units.get(self.unit, self.unit)
        if self.field:
            return _('{where}: field "{field}": {message}', where=where, field=self.field, message=self.message)
        return _("{where}: {message}", where=where, message=self.message)


def source_pairs(source: str | None) -> tuple[tuple[str, str], ...]:
    """The ``key=value`` pairs of a follow event's ``source``: ``"qr=shipping, ad=summer"`` ->
    ``(("qr", "shipping"), ("ad", "summer"))``. Spaces around parts are ignored; the intake
    has already rejected malformed sources."""
    if not source:
        return ()
    pairs = []
    for part in source.split(","):
        key, _, value = part.partition("=")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)
