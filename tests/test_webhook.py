"""LINE webhook signature check and event mapping, with really signed bodies."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from multidict import CIMultiDict

from engine.line.webhook import parse_webhook, verify_signature
from engine.runtime.events import EventError
from engine.testing.webhooks import signature

SECRET = "8f0c1f1d2e3a4b5c6d7e8f9a0b1c2d3e"
TS = 1_762_000_000_123  # 2025-11-01T12:26:40.123Z


def sign(body: bytes, secret: str = SECRET) -> str:
    return signature(body, secret)


def line_event(kind: str, user: str = "U1", ts: int = TS, **extra) -> dict:
    event = {
        "type": kind,
        "mode": "active",
        "timestamp": ts,
        "source": {"type": "user", "userId": user},
        "webhookEventId": f"01HW{ts}{user}",
        "deliveryContext": {"isRedelivery": False},
    }
    if kind not in ("unfollow", "leave"):
        event["replyToken"] = f"rt-{ts}"
    event.update(extra)
    return event


def body_of(*events: dict) -> bytes:
    return json.dumps({"destination": "Ubot", "events": list(events)}, ensure_ascii=False).encode()


# ----------------------------------------------------------------------------- signatures


def test_signature_of_the_raw_body_verifies():
    body = body_of(line_event("follow", follow={"isUnblocked": False}))
    assert verify_signature(SECRET, body, sign(body))


@pytest.mark.parametrize("change", ["body", "secret", "missing", "garbage"])
def test_wrong_or_missing_signature_fails(change):
    body = body_of(line_event("message", message={"id": "1", "type": "text", "text": "クーポン"}))
    signature = {
        "body": sign(body + b" "),
        "secret": sign(body, SECRET + "x"),
        "missing": None,
        "garbage": "not base64 ✓",
    }[change]
    assert not verify_signature(SECRET, body, signature)


def test_non_utf8_body_fails_verification():
    body = b"\xff\xfe{}"
    assert not verify_signature(SECRET, body, sign(body))


@pytest.mark.parametrize("header", ["x-line-signature", "X-Line-Signature", "X-LINE-SIGNATURE"])
def test_signature_header_is_looked_up_case_insensitively(header):
    """The runner reads the header from aiohttp's case-insensitive headers, so any case works."""
    body = body_of(line_event("unfollow"))
    headers = CIMultiDict({header: sign(body), "Content-Type": "application/json"})
    assert verify_signature(SECRET, body, headers.get("x-line-signature"))


# ----------------------------------------------------------------------------- mapping


def test_follow_unfollow_message_postback_are_mapped():
    body = body_of(
        line_event("follow", ts=TS, follow={"isUnblocked": True}),
        line_event(
            "message", ts=TS + 1, message={"id": "1", "type": "text", "text": "クーポンください", "quoteToken": "q"}
        ),
        line_event("message", ts=TS + 2, message={"id": "2", "type": "sticker", "packageId": "1", "stickerId": "1"}),
        line_event(
            "postback", ts=TS + 3, postback={"data": "action=delivery&answer=yes", "params": {"date": "2026-11-03"}}
        ),
        line_event("unfollow", ts=TS + 4),
    )
    events = parse_webhook(body)
    assert [e.type for e in events] == ["follow", "message", "message", "postback", "unfollow"]
    follow, text, sticker, postback, unfollow = events
    assert follow.friend == "U1" and follow.reply_token == f"rt-{TS}"
    assert follow.at == dt.datetime(2025, 11, 1, 12, 26, 40, 123000, tzinfo=dt.UTC)
    assert follow.data == {"isUnblocked": True, "isRedelivery": False, "webhookEventId": f"01HW{TS}U1"}
    assert follow.dedupe_key == f"line:01HW{TS}U1"
    assert text.data["text"] == "クーポンください" and text.data["message_type"] == "text"
    assert sticker.data["message_type"] == "sticker" and "text" not in sticker.data
    assert postback.data["data"] == "action=delivery&answer=yes"
    assert postback.data["params"] == {"date": "2026-11-03"}
    assert unfollow.reply_token is None


def test_unknown_message_types_still_become_message_events():
    body = body_of(line_event("message", message={"id": "9", "type": "hologram"}))
    [event] = parse_webhook(body)
    assert event.type == "message" and event.data["message_type"] == "hologram"


def test_events_are_sorted_by_timestamp():
    body = body_of(
        line_event("unfollow", user="U2", ts=TS + 500),
        line_event("follow", user="U1", ts=TS),
        line_event("follow", user="U2", ts=TS + 100),
    )
    assert [(e.type, e.friend) for e in parse_webhook(body)] == [("follow", "U1"), ("follow", "U2"), ("unfollow", "U2")]


def test_redelivery_keeps_its_event_id():
    first = line_event("follow", follow={"isUnblocked": False})
    again = {**first, "deliveryContext": {"isRedelivery": True}}
    [a], [b] = parse_webhook(body_of(first)), parse_webhook(body_of(again))
    assert b.data["isRedelivery"] is True
    assert a.dedupe_key == b.dedupe_key


def test_ignored_events():
    body = body_of(
        line_event("message", mode="standby", message={"id": "1", "type": "text", "text": "hi"}),
        {
            **line_event("message", message={"id": "2", "type": "text", "text": "hi"}),
            "source": {"type": "group", "groupId": "G1", "userId": "U1"},
        },
        {**line_event("follow"), "source": {"type": "room", "roomId": "R1"}},
        line_event("join"),
        line_event("beacon", beacon={"hwid": "x", "type": "enter"}),
        line_event("somethingNew"),
    )
    assert parse_webhook(body) == []


def test_connectivity_check_is_empty():
    assert parse_webhook(b'{"destination": "Ubot", "events": []}') == []


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "webhook body: not JSON: Expecting value: line 1 column 1"),
        (b'{"events": {}}', 'webhook body: field "events": must be a list'),
        (b"[]", 'webhook body: field "events": must be a list'),
        (
            body_of({"type": "follow", "mode": "active", "source": {"type": "user", "userId": "U1"}}),
            'event 1: field "timestamp": is missing',
        ),
        (body_of(line_event("follow"), line_event("message")), 'event 2: field "message": is missing'),
        (body_of(line_event("message", message={"type": "text"})), 'event 1: field "message.text": is missing'),
        (body_of(line_event("follow", ts="1762000000123")), 'event 1: field "timestamp": has the wrong type'),
        (body_of(line_event("follow", ts=True)), 'event 1: field "timestamp": has the wrong type'),
        (body_of(line_event("follow", ts=10**20)), 'event 1: field "timestamp": is out of range'),
        (body_of({**line_event("follow"), "source": {"type": "user"}}), 'event 1: field "source.userId": is missing'),
        (body_of(line_event("postback", postback={})), 'event 1: field "postback.data": is missing'),
        (body_of(7), "event 1: a webhook event must be an object"),
    ],
)
def test_malformed_bodies_raise_event_errors(body, message):
    with pytest.raises(EventError) as info:
        parse_webhook(body)
    assert str(info.value).startswith(message)


def test_the_kits_event_ids_differ_between_processes():
    """Two scripts posting with the test kit's default ids must not look like LINE redelivering
    one event (the runner would store it once): ids are unique across processes, ascending and
    26 characters long within one."""
    import subprocess
    import sys

    code = (
        "from engine.testing.webhooks import line_event\n"
        "print(*(line_event('follow', 'U1')['webhookEventId'] for _ in range(3)))"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True) for _ in range(2)]
    ids = [run.stdout.split() for run in runs]
    assert all(len(i) == 26 for one in ids for i in one)
    assert all(one == sorted(one) and len(set(one)) == 3 for one in ids)
    assert not set(ids[0]) & set(ids[1])
