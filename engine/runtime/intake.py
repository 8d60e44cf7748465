"""Event intake (SPEC §6): JSON Lines or JSON text -> validated :class:`~engine.runtime.events.Event` values.

Every event of a batch is checked before anything is returned, so a caller that applies the
returned list in one transaction never half-applies a rejected batch. Errors are
:class:`~engine.runtime.events.EventError` values naming the line (or list item) and the field, e.g.
``line 3: field "at": needs a UTC offset, like 2026-11-01T10:00:00+09:00``.

The event format, field by field, is described in docs/events.md.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

from engine.i18n import _
from engine.language.diagnostics import did_you_mean
from engine.language.ir import NAME_RE

from .events import (
    CUSTOMER_TYPES,
    KNOWN_TYPES,
    MAX_AT,
    MIN_AT,
    Event,
    EventError,
    customer_key,
    type_hint,
    type_hint_message,
)

#: ``key=value`` with non-empty parts, for follow ``source`` values.
_PAIR_RE = re.compile(r"\s*[^\s=,]+\s*=\s*[^\s=,]+\s*\Z")
#: Fields every event may carry.
COMMON_FIELDS = ("type", "friend", "at", "id")
#: Measures computed from purchases; an ``attributes`` event cannot overwrite them.
COMPUTED_ATTRIBUTES = ("orders", "total_spent", "spent")
AT_EXAMPLE = "2026-11-01T10:00:00+09:00"
#: Largest ``amount`` and item ``price`` (a trillion, in the shop's currency): sums of many
#: orders stay exact, and price × quantity fits the store's 64-bit integers.
MAX_AMOUNT = 10**12
#: Longest friend, customer or order id, product, category (a LINE user id has 33 characters):
#: a runaway value would otherwise fill every log line and index it is in.
MAX_ID_CHARS = 1000
#: Largest item ``quantity``.
MAX_QUANTITY = 10**6
#: Whole numbers anywhere in an event (attributes, custom fields) fit SQLite's 64-bit integers.
MAX_INT = 2**63 - 1
#: Deepest nesting of lists and objects in a custom event's fields.
MAX_DEPTH = 20

Check = Callable[[Any, "_Ctx", str], Any]


class _Ctx:
    """Where an event sits in its batch, for error messages; with ``collect``, the errors of
    the event's fields that can be checked each on its own are gathered (:meth:`each`)."""

    def __init__(self, line: int | None, unit: str, collect: bool = False):
        self.line, self.unit = line, unit
        self.errors: list[EventError] | None = [] if collect else None

    def error(self, field: str | None, message: str) -> EventError:
        return EventError(self.line, field, message, unit=self.unit)

    def each(self, check: Callable[..., Any], *args: Any) -> Any:
        """``check(*args)``; when collecting, an error is noted and None returned instead."""
        try:
            return check(*args)
        except EventError as e:
            self.fail(e)
            return None

    def fail(self, error: EventError) -> None:
        """Raise ``error``, or note it when collecting (once per field: an unknown field is
        checked twice, against the event's fields and the type's, and the first says it best)."""
        if self.errors is None:
            raise error
        if not any(e.field == error.field for e in self.errors):
            self.errors.append(error)

    def raise_collected(self) -> None:
        """Raise the first gathered error, the others as its :attr:`EventError.others`."""
        if self.errors:
            first = self.errors[0]
            first.others = tuple(self.errors[1:])
            raise first


# ----------------------------------------------------------------------------- value checks


def _describe(value: Any) -> str:
    """A JSON-ish name for a value's type, for "got ..." in messages."""
    if value is None:
        return _("null")
    if isinstance(value, bool):
        return _("true") if value else _("false")
    if isinstance(value, (int, float)):
        return _("a number")
    if isinstance(value, str):
        return _("a string")
    if isinstance(value, list):
        return _("a list")
    if isinstance(value, dict):
        return _("an object")
    return type(value).__name__


def _string(value: Any, ctx: _Ctx, field: str) -> str:
    if not isinstance(value, str):
        raise ctx.error(field, _("must be a string, got {got}", got=_describe(value)))
    return value


def _nonempty(value: Any, ctx: _Ctx, field: str) -> str:
    text = _string(value, ctx, field)
    if not text.strip():
        raise ctx.error(field, _("must not be empty"))
    if len(text) > MAX_ID_CHARS:
        raise ctx.error(
            field,
            _(
                "is {length} characters long; ids, products and categories have at most {limit}",
                length=f"{len(text):,}",
                limit=f"{MAX_ID_CHARS:,}",
            ),
        )
    if text != text.strip():
        raise ctx.error(field, _("has spaces around it: {text}", text=json.dumps(text, ensure_ascii=False)))
    return text


def _name(value: Any, ctx: _Ctx, field: str) -> str:
    text = _string(value, ctx, field)
    if not NAME_RE.fullmatch(text):
        raise ctx.error(
            field,
            _(
                "{text} is not a name: names start with a letter and hold letters, digits, `_` and `-`",
                text=json.dumps(text, ensure_ascii=False),
            ),
        )
    return text


def _shown(value: int | float) -> str:
    """A number as shown in messages: huge ones in exponent form, not 30 digits."""
    return f"{value:.3g}" if abs(value) >= 10**15 else str(value)


def _number(value: Any, ctx: _Ctx, field: str) -> int | float:
    """An amount or price: a finite number from 0 to :data:`MAX_AMOUNT`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.error(field, _("must be a number, got {got}", got=_describe(value)))
    if isinstance(value, float) and not math.isfinite(value):
        raise ctx.error(field, _("must be a finite number"))
    if value < 0:
        raise ctx.error(field, _("must be 0 or more, got {shown}", shown=_shown(value)))
    if value > MAX_AMOUNT:
        raise ctx.error(
            field, _("is too large: {shown} (at most {limit})", shown=_shown(value), limit=f"{MAX_AMOUNT:,}")
        )
    return value


def _count(value: Any, ctx: _Ctx, field: str) -> int:
    """A quantity: a whole number from 1 to :data:`MAX_QUANTITY`. ``2.0`` (what some shop
    exports write) is 2; ``1.5`` is refused with the number shown."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= MAX_QUANTITY:
        value = int(value)
    if isinstance(value, float) and math.isfinite(value):
        raise ctx.error(field, _("must be a whole number, got {got}", got=_shown(value)))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(field, _("must be a whole number, got {got}", got=_describe(value)))
    if value < 1:
        raise ctx.error(field, _("must be 1 or more, got {shown}", shown=_shown(value)))
    if value > MAX_QUANTITY:
        raise ctx.error(
            field, _("is too large: {shown} (at most {limit})", shown=_shown(value), limit=f"{MAX_QUANTITY:,}")
        )
    return value


def parse_at(value: Any, ctx: _Ctx, field: str = "at") -> dt.datetime:
    """An ISO 8601 time that carries a UTC offset (``Z`` allowed), as an aware datetime."""
    text = _string(value, ctx, field)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ctx.error(
            field,
            _(
                "{text} is not an ISO 8601 time, like {example}",
                text=json.dumps(text, ensure_ascii=False),
                example=AT_EXAMPLE,
            ),
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ctx.error(field, _("needs a UTC offset, like {example}", example=AT_EXAMPLE))
    try:
        utc = when.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or not MIN_AT <= utc < MAX_AT:
        raise ctx.error(
            field,
            _(
                "{text} is out of range: times from {first} to {last} are accepted",
                text=text,
                first=MIN_AT.year,
                last=MAX_AT.year - 1,
            ),
        )
    return when


def _source(value: Any, ctx: _Ctx, field: str) -> str:
    text = _string(value, ctx, field)
    if not all(_PAIR_RE.match(part) for part in text.split(",")):
        raise ctx.error(
            field,
            _(
                '{text} is not a list of key=value pairs, like "qr=shipping" or "qr=shipping,ad=summer"',
                text=json.dumps(text, ensure_ascii=False),
            ),
        )
    return text


def _params(value: Any, ctx: _Ctx, field: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ctx.error(field, _("must be an object of strings, got {got}", got=_describe(value)))
    for key, item in value.items():
        _string(item, ctx, f"{field}.{key}")
    return dict(value)


def _attributes(value: Any, ctx: _Ctx, field: str) -> dict[str, str | int | float | bool]:
    if not isinstance(value, dict):
        raise ctx.error(field, _("must be an object of attribute names to values, got {got}", got=_describe(value)))
    for key, item in value.items():
        _name(key, ctx, f"{field}.{key}")
        if key in COMPUTED_ATTRIBUTES:
            raise ctx.error(f"{field}.{key}", _("`{key}` is computed from purchases and cannot be set", key=key))
        if not isinstance(item, (str, int, float, bool)):
            raise ctx.error(
                f"{field}.{key}", _("must be a string, number or true/false, got {got}", got=_describe(item))
            )
    return dict(value)


def _names(value: Any, ctx: _Ctx, field: str) -> list[str]:
    if not isinstance(value, list):
        raise ctx.error(field, _("must be a list of names, got {got}", got=_describe(value)))
    return [_name(item, ctx, f"{field}[{i}]") for i, item in enumerate(value)]


_ITEM_FIELDS: dict[str, tuple[bool, Check]] = {
    "product": (True, _nonempty),
    "category": (False, _nonempty),
    "price": (False, _number),
    "quantity": (False, _count),
}


def _items(value: Any, ctx: _Ctx, field: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ctx.error(
            field, _("must be a list of {{product, category, price, quantity}}, got {got}", got=_describe(value))
        )
    items = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise ctx.error(where, _('must be an object like {{"product": "SKU1"}}, got {got}', got=_describe(item)))
        items.append(_fields(item, _ITEM_FIELDS, ctx, _("a purchase item"), prefix=f"{where}."))
    return items


# ----------------------------------------------------------------------------- per type

#: For each known type: field -> (required, check). ``type``/``friend``/``at``/``id`` are common.
TYPE_FIELDS: dict[str, dict[str, tuple[bool, Check]]] = {
    "follow": {"source": (False, _source)},
    "unfollow": {},
    "message": {"text": (False, _string), "message_type": (False, _nonempty)},
    "postback": {"data": (True, _string), "params": (False, _params)},
    "purchase": {"order_id": (True, _nonempty), "amount": (True, _number), "items": (False, _items)},
    "cart": {"product": (True, _nonempty)},
    "view": {"product": (True, _nonempty)},
    "attributes": {"set": (True, _attributes)},
    "tag": {"add": (False, _names), "remove": (False, _names)},
    # a click on a link a rule sent (a timeline's stand-in for the runner's tracked links)
    "click": {"rule": (True, _nonempty), "message": (False, _nonempty), "url": (False, _string)},
}


def _customer(value: Any, ctx: _Ctx, field: str) -> str:
    return customer_key(_nonempty(value, ctx, field))


# the shop side (docs/shop.md): links, refunds, and shop events naming the shop's customer
TYPE_FIELDS["identify"] = {"customer": (True, _customer)}
TYPE_FIELDS["unlink"] = {}
TYPE_FIELDS["refund"] = {"order_id": (True, _nonempty), "amount": (False, _number), "reason": (False, _string)}
for _kind in CUSTOMER_TYPES:
    TYPE_FIELDS[_kind]["customer"] = (False, _customer)
TYPE_FIELDS["cart"]["checkout_url"] = (False, _nonempty)  # for the cart reminder's link
assert set(TYPE_FIELDS) == set(KNOWN_TYPES)


def _no_unknown(
    obj: dict[str, Any],
    spec: dict[str, tuple[bool, Check]],
    ctx: _Ctx,
    what: str,
    *,
    prefix: str = "",
    allowed: tuple[str, ...] = (),
) -> None:
    """Reject a field ``spec`` does not name (typos must not pass silently)."""
    for key in obj:
        if key not in spec and key not in allowed:
            ctx.each(_unknown, key, [*spec, *allowed], ctx, what, prefix)


def _unknown(key: str, known: list[str], ctx: _Ctx, what: str, prefix: str) -> NoReturn:
    hint = did_you_mean(key, known)
    raise ctx.error(
        f"{prefix}{key}",
        _("is not a field of {what} ({hint})", what=what, hint=hint)
        if hint
        else _("is not a field of {what}", what=what),
    )


def _fields(
    obj: dict[str, Any], spec: dict[str, tuple[bool, Check]], ctx: _Ctx, what: str, *, prefix: str = ""
) -> dict[str, Any]:
    """Check ``obj`` against ``spec``: no unknown field, every required field present."""
    _no_unknown(obj, spec, ctx, what, prefix=prefix)
    out = {}
    for key, (required, check) in spec.items():
        if key in obj:
            out[key] = ctx.each(check, obj[key], ctx, f"{prefix}{key}")
        elif required:
            ctx.fail(ctx.error(f"{prefix}{key}", _("is missing")))
    return out


def _check_value(value: Any, ctx: _Ctx, field: str | None, depth: int = 0) -> None:
    """Reject what the store cannot hold or the engine cannot process, wherever it sits in an
    event: strings that are not UTF-8 (lone surrogates from ``\\ud800`` escapes), whole numbers
    beyond 64 bits, non-finite numbers (``1e999``), nesting deeper than :data:`MAX_DEPTH`."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ctx.error(field, _("holds an invalid character (a lone UTF-16 surrogate)")) from None
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise ctx.error(
                field,
                _(
                    "is too large: {shown} (whole numbers go from -{limit} to {limit})",
                    shown=_shown(value),
                    limit=f"{MAX_INT:,}",
                ),
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ctx.error(field, _("must be a finite number"))
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise ctx.error(field, _("is nested too deeply (at most {limit} levels)", limit=MAX_DEPTH))
        if isinstance(value, dict):
            for key, item in value.items():
                _check_value(key, ctx, field, depth + 1)
                _check_value(item, ctx, f"{field}.{key}" if field else key, depth + 1)
        else:
            for i, item in enumerate(value):
                _check_value(item, ctx, f"{field}[{i}]", depth + 1)


def _event(obj: Any, ctx: _Ctx) -> Event:
    if not isinstance(obj, dict):
        raise ctx.error(
            None,
            _(
                'an event must be a JSON object like {{"type": "follow", "friend": "U1", "at": "{example}"}}, got {got}',
                example=AT_EXAMPLE,
                got=_describe(obj),
            ),
        )
    if "type" not in obj:
        raise ctx.error("type", _("is missing"))
    kind = _string(obj["type"], ctx, "type")
    if kind not in KNOWN_TYPES:
        right = type_hint(kind)
        if right is not None:
            raise ctx.error("type", type_hint_message(kind, right))
        _name(kind, ctx, "type")
    rest = {k: v for k, v in obj.items() if k not in COMMON_FIELDS}
    spec = TYPE_FIELDS.get(kind)
    if spec is not None:
        _no_unknown(rest, spec, ctx, _("{kind} events", kind=kind), allowed=COMMON_FIELDS)
    # without `friend`, the event applies to the friend linked to its `customer` (a refund: to
    # the owner of its order); friend "" until then
    by_customer = "friend" not in obj and (
        ("customer" in obj and (kind in CUSTOMER_TYPES or spec is None)) or kind == "refund"
    )
    if by_customer:
        obj = {**obj, "friend": ""}
    if kind == "unlink" and "customer" not in obj and "friend" not in obj:
        raise ctx.error("friend", _("is missing: an unlink event names the `friend` or the `customer`"))
    for key in ("friend", "at"):
        if key not in obj:
            close = difflib.get_close_matches(key, rest, n=1, cutoff=0.6)
            if ctx.errors and close and any(e.field == close[0] for e in ctx.errors):
                continue  # `freind`: told once, at the typo, with the field meant
            ctx.each(_missing, key, kind, spec, rest, ctx)
    friend = "" if by_customer or "friend" not in obj else ctx.each(_nonempty, obj["friend"], ctx, "friend")
    at = ctx.each(parse_at, obj["at"], ctx) if "at" in obj else None
    event_id = ctx.each(_nonempty, obj["id"], ctx, "id") if "id" in obj else None
    if spec is None:
        data = rest
        if "customer" in data:
            data = {**data, "customer": ctx.each(_customer, data["customer"], ctx, "customer")}
    else:
        data = _fields(rest, spec, ctx, _("{kind} events", kind=kind))
    ctx.raise_collected()  # what follows reads the fields' checked values
    if spec is not None:
        _check_type_rules(kind, data, ctx)
    _check_value(obj, ctx, None)  # after the fields' own checks, which say it more precisely
    return Event(type=kind, friend=friend, at=at, data=data, id=event_id, line=ctx.line)


def _missing(key: str, kind: str, spec: dict | None, rest: dict[str, Any], ctx: _Ctx) -> NoReturn:
    close = difflib.get_close_matches(key, rest, n=1, cutoff=0.6)
    hint = _(" (is `{close}` a typo of `{key}`?)", close=close[0], key=key) if close else ""
    if not hint and key == "friend" and (kind in CUSTOMER_TYPES or spec is None):
        hint = _(" (name the LINE `friend` or the shop's `customer`)")
    raise ctx.error(key, _("is missing{hint}", hint=hint))


def _check_type_rules(kind: str, data: dict[str, Any], ctx: _Ctx) -> None:
    """Rules that span several fields of one type."""
    if kind == "message":
        is_text = data.get("message_type", "text") == "text"
        if is_text and "text" not in data:
            raise ctx.error("text", _("is missing (a text message needs its text)"))
        if not is_text and "text" in data:
            raise ctx.error("text", _("only text messages have text, not {type} messages", type=data["message_type"]))
    if kind == "tag":
        if "add" not in data and "remove" not in data:
            raise ctx.error("add", _('is missing: a tag event needs "add" or "remove" (or both)'))
        both = sorted(set(data.get("add", ())) & set(data.get("remove", ())))
        if both:
            raise ctx.error("remove", _("`{both}` is both added and removed", both=both[0]))
        data.setdefault("add", [])
        data.setdefault("remove", [])


def parse_event_obj(obj: Any, line: int | None, *, unit: str = "line", every: bool = False) -> Event:
    """Validate one decoded event object; ``line`` (1-based, or None) goes into errors and
    :attr:`Event.line`. Raises :class:`EventError`: the first problem, and with ``every`` also
    the problems of its other fields (:attr:`EventError.others`), for a diagnostic of each."""
    return _event(obj, _Ctx(line, unit, collect=every))


# ----------------------------------------------------------------------------- JSON text


class _BadJSON(Exception):
    """Raised from json's hooks; turned into an EventError with the line by the caller."""

    def __init__(self, field: str | None, message: str):
        self.field, self.message = field, message


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _BadJSON(key, _("appears twice in one object"))
        obj[key] = value
    return obj


def _constant(name: str) -> Any:
    raise _BadJSON(None, _("invalid JSON: {name} is not a number JSON allows", name=name))


def _loads(text: str, ctx: _Ctx) -> Any:
    """``json.loads`` that rejects duplicate keys and NaN/Infinity; errors name the line."""
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except json.JSONDecodeError as e:
        line = ctx.line if ctx.line is not None else e.lineno
        raise EventError(
            line, None, _("invalid JSON at column {colno}: {msg}", colno=e.colno, msg=e.msg), unit="line"
        ) from None
    except _BadJSON as e:
        raise ctx.error(e.field, e.message) from None
    except RecursionError:
        raise ctx.error(None, _("invalid JSON: nested too deeply")) from None


def parse_events(text: str, fmt: str = "jsonl") -> list[Event]:
    """Parse and validate a whole batch; return its events in input order, or raise the first
    :class:`EventError` (and return nothing).

    ``fmt`` is ``"jsonl"`` (one event object per line; blank lines are skipped; errors name the
    1-based line) or ``"json"`` (one event object, whose errors name the line it starts on, or a
    list of them, whose errors name the 1-based item of the list).
    """
    if fmt == "jsonl":
        events = []
        for number, raw in enumerate(text.split("\n"), start=1):
            raw = raw.rstrip("\r")
            if raw.strip():
                ctx = _Ctx(number, "line")
                events.append(_event(_loads(raw, ctx), ctx))
        return events
    if fmt == "json":
        value = _loads(text, _Ctx(None, "line"))
        if isinstance(value, list):
            return [_event(item, _Ctx(i, "item")) for i, item in enumerate(value, start=1)]
        # one object: its errors name the line it starts on (blank lines before it counted)
        start = text[: len(text) - len(text.lstrip())].count("\n") + 1
        return [_event(value, _Ctx(start, "line"))]
    raise ValueError(f"unknown event format {fmt!r} (use 'jsonl' or 'json')")
