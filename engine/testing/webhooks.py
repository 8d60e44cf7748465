"""Webhooks as LINE sends them: the body, its ``x-line-signature`` and the events in it; and
the shop's own ``POST /events`` (:func:`post_events`).

Computed here with :mod:`hmac` on their own (not with linerules' code), so that a test signing
with these checks the runner's verification rather than repeating it::

    body = webhook_body(line_event("follow", "U1"))
    headers = {"Content-Type": "application/json", "x-line-signature": signature(body, secret)}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import time
import urllib.request
from typing import Any

#: The header LINE signs its webhooks in.
SIGNATURE_HEADER = "x-line-signature"

_event_ids = itertools.count(1)
#: Eleven characters of this process's own, so that two processes (two scripts posting to one
#: runner) never make the same ``webhookEventId``: the runner takes a repeated id for LINE's
#: redelivery of an event it already has, and stores it once.
_PROCESS = secrets.token_hex(6)[:11].upper()


def signature(body: bytes, secret: str) -> str:
    """``x-line-signature`` for ``body``: base64 of HMAC-SHA256 keyed with the channel secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def post_events(base_url: str, events: list[dict[str, Any]], token: str, timeout: float = 5) -> Any:
    """POST ``events`` to a runner's ``/events`` with the API token; the answer's JSON (an
    ``HTTPError`` for a 4xx or 5xx)."""
    request = urllib.request.Request(
        base_url + "/events",
        data=json.dumps(events).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def webhook_body(*events: dict[str, Any], destination: str = "Ubot") -> bytes:
    """The JSON body LINE posts to the webhook URL, with ``events`` in order."""
    return json.dumps({"destination": destination, "events": list(events)}, ensure_ascii=False).encode()


def signed_webhook(*events: dict[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of one webhook request, ready to POST to the runner's ``/callback``."""
    body = webhook_body(*events)
    return body, {"Content-Type": "application/json", SIGNATURE_HEADER: signature(body, secret)}


def line_event(
    kind: str,
    user: str,
    *,
    event_id: str | None = None,
    reply_token: str | None = None,
    redelivery: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """One webhook event from the friend ``user``: ``follow``, ``unfollow``, ``message``
    (pass ``message={"type": "text", "id": "1", "text": "クーポン"}``), ``postback`` ...

    ``event_id`` is the ``webhookEventId`` (by default a new one per call, 26 characters as
    LINE's are, unique across processes too, ascending within one), ``reply_token``
    one the emulator issued (``line_emulator.issue_reply_token(user)``; LINE sends one with
    every follow and message); ``extra`` fields are added as they are (``message``,
    ``postback``, ``timestamp`` ...). A follow carries ``follow: {"isUnblocked": false}``."""
    event: dict[str, Any] = {
        "type": kind,
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "source": {"type": "user", "userId": user},
        "webhookEventId": event_id or f"01{_PROCESS}{next(_event_ids):013d}",
        "deliveryContext": {"isRedelivery": redelivery},
        **extra,
    }
    if kind == "follow":
        event.setdefault("follow", {"isUnblocked": False})
    if reply_token:
        event["replyToken"] = reply_token
    return event
