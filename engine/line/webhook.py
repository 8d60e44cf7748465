"""LINE webhooks -> engine events.

The runner reads the ``x-line-signature`` header case-insensitively (aiohttp's
``request.headers`` does), checks it with :func:`verify_signature` against the raw body, and
only then calls :func:`parse_webhook`.

The body is read as plain JSON rather than through line-bot-sdk's webhook models: those reject
a whole event whose message type they do not know yet, while a new kind of message from a
friend should still reach the rules as a message event (see docs/events.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

from engine.i18n import _
from engine.runtime.events import MAX_AT, MIN_AT, Event, EventError

log = logging.getLogger("linerules.webhook")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: A JSON escape of a UTF-16 surrogate (``\ud800``..``\udfff``), the only way a webhook body
#: that is valid UTF-8 can carry a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
#: LINE event types that become engine events; every other type is ignored.
MAPPED_TYPES = ("follow", "unfollow", "message", "postback", "accountLink")
#: The engine type of an ``accountLink`` event (engine/runtime/identity.py).
ACCOUNT_LINK = "line.accountLink"


def verify_signature(secret: str, body: bytes, signature: str | None) -> bool:
    """True when ``signature`` is base64(HMAC-SHA256(secret, body)), compared in constant time.

    A missing header, one that is not ASCII (a base64 signature always is; a header with other
    bytes is refused, not a server error), or a body that is not UTF-8 (LINE always sends UTF-8
    JSON), is False.
    """
    if not signature or not signature.isascii():
        return False
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    from linebot.v3.webhook import SignatureValidator  # imported here: rule tests and simulate never check signatures

    return SignatureValidator(secret).validate(text, signature)


def _get(
    obj: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    index: int,
    *,
    required: bool = True,
    field: str | None = None,
) -> Any:
    """``obj[key]`` checked against ``kind`` (bools are not ints); errors name the event index."""
    where = field or key
    if key not in obj:
        if required:
            raise EventError(index, where, _("is missing"), unit="event")
        return None
    value = obj[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise EventError(index, where, _("has the wrong type"), unit="event")
    if not isinstance(value, kind):
        raise EventError(index, where, _("has the wrong type ({type})", type=type(value).__name__), unit="event")
    return value


def _event(raw: Any, index: int) -> Event | None:
    """One LINE webhook event -> an engine Event, or None when it is not for the rules."""
    if not isinstance(raw, dict):
        raise EventError(index, None, _("a webhook event must be an object"), unit="event")
    kind = _get(raw, "type", str, index)
    if kind not in MAPPED_TYPES or raw.get("mode", "active") == "standby":
        return None
    source = _get(raw, "source", dict, index)
    if _get(source, "type", str, index, field="source.type") != "user":
        return None  # group and room chats are not friend events
    friend = _get(source, "userId", str, index, field="source.userId")
    if not friend:
        raise EventError(index, "source.userId", _("is empty"), unit="event")
    timestamp = _get(raw, "timestamp", int, index)
    delivery = _get(raw, "deliveryContext", dict, index, required=False) or {}
    data: dict[str, Any] = {
        "isRedelivery": bool(
            _get(delivery, "isRedelivery", bool, index, required=False, field="deliveryContext.isRedelivery")
        ),
    }
    event_id = _get(raw, "webhookEventId", str, index, required=False)
    if event_id:
        data["webhookEventId"] = event_id
    if kind == "follow":
        follow = _get(raw, "follow", dict, index, required=False) or {}
        data["isUnblocked"] = bool(_get(follow, "isUnblocked", bool, index, required=False, field="follow.isUnblocked"))
    elif kind == "message":
        message = _get(raw, "message", dict, index)
        data["message_type"] = _get(message, "type", str, index, field="message.type")
        if data["message_type"] == "text":
            data["text"] = _get(message, "text", str, index, field="message.text")
    elif kind == "postback":
        postback = _get(raw, "postback", dict, index)
        data["data"] = _get(postback, "data", str, index, field="postback.data")
        params = _get(postback, "params", dict, index, required=False, field="postback.params")
        if params is not None:
            data["params"] = params
    elif kind == "accountLink":
        link = _get(raw, "link", dict, index)
        data["result"] = _get(link, "result", str, index, field="link.result")
        data["nonce"] = _get(link, "nonce", str, index, required=False, field="link.nonce") or ""
        kind = ACCOUNT_LINK
    try:
        at = _EPOCH + dt.timedelta(milliseconds=timestamp)
    except OverflowError:
        at = None
    if at is None or not MIN_AT <= at < MAX_AT:
        raise EventError(index, "timestamp", _("is out of range"), unit="event") from None
    reply_token = _get(raw, "replyToken", str, index, required=False)
    return Event(type=kind, friend=friend, at=at, data=data, reply_token=reply_token, line=index)


def parse_webhook(body: bytes) -> list[Event]:
    """The friend events of a LINE webhook body, sorted by timestamp (LINE may send them out of
    order). Ignored: event types other than follow/unfollow/message/postback, ``standby`` mode,
    and group or room sources. ``{"events": []}`` (LINE's connectivity check) gives ``[]``.

    A body that is not a webhook payload raises :class:`EventError`; the index it names is the
    1-based position in ``events``.
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EventError(None, None, _("not JSON: {reason}", reason=e), unit="webhook body") from None
    except RecursionError:
        raise EventError(None, None, _("nested too deeply"), unit="webhook body") from None
    if _SURROGATE_ESCAPE.search(body):
        payload = _replace_lone_surrogates(payload)
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise EventError(
            None,
            "events",
            _("must be a list (a webhook body is an object with an `events` list)"),
            unit="webhook body",
        )
    events = [_event(raw, i) for i, raw in enumerate(payload["events"], start=1)]
    return sorted((e for e in events if e is not None), key=lambda e: e.at)


def _replace_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone UTF-16 surrogate (``"\\ud800"`` with no partner, which no
    text can be stored with) replaced by U+FFFD, the replacement character ``�``.

    LINE has signed the body, so its events are kept: a friend's message with a broken
    character is stored with that one character replaced rather than refused with the others
    of the same request (docs/events.md)."""
    if isinstance(value, str):
        if _LONE_SURROGATE.search(value):
            log.warning("webhook text held a lone UTF-16 surrogate; stored with U+FFFD in its place")
            return _LONE_SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    return value
