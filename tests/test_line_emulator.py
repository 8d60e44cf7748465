"""The LINE emulator answers like LINE: real HTTP on loopback, bodies the SDK would refuse."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.line.limits import (
    INVALID_REPLY_TOKEN_MESSAGE,
    MONTHLY_LIMIT_MESSAGE,
    RATE_LIMIT_MESSAGE,
    utf16_len,
)
from engine.testing.line_emulator import Emulator, RecordedRequest, busiest, run_in_thread

TEXT = {"type": "text", "text": "hello"}


class Client:
    """A bare aiohttp client speaking to the emulator."""

    def __init__(self, emulator: Emulator, session: aiohttp.ClientSession):
        self.emulator, self.session = emulator, session

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        retry_key: str | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 5.0,
    ) -> tuple[int, dict[str, str], Any]:
        headers = {"Authorization": f"Bearer {token or self.emulator.access_token}"}
        if retry_key is not None:
            headers["X-Line-Retry-Key"] = retry_key
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(
            method,
            self.emulator.base_url + path,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            return resp.status, dict(resp.headers), json.loads(text) if text else None

    async def push(self, messages: list[Any], to: str = "U1", **kw: Any):
        return await self.call("POST", "/v2/bot/message/push", {"to": to, "messages": messages}, **kw)


@pytest.fixture
async def client(line_emulator: Emulator):
    line_emulator.add_user("U1", "Hanako")
    line_emulator.add_user("U2", "Taro", language="en")
    line_emulator.add_user("UB", "Blocker", blocked=True)
    async with aiohttp.ClientSession() as session:
        yield Client(line_emulator, session)


def _flex_bubble(size: int) -> dict[str, Any]:
    return {
        "type": "bubble",
        "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "x" * size}]},
    }


def _buttons(**template: Any) -> dict[str, Any]:
    base = {
        "type": "buttons",
        "text": "Pick one",
        "actions": [{"type": "uri", "label": "Shop", "uri": "https://shop.example/"}],
    }
    return {"type": "template", "altText": "pick", "template": {**base, **template}}


def _uri(label: str = "Go", uri: str = "https://shop.example/") -> dict[str, str]:
    return {"type": "uri", "label": label, "uri": uri}


def _postback(data: str = "a=1", label: str = "Yes") -> dict[str, str]:
    return {"type": "postback", "label": label, "data": data}


def _column(actions: int = 1, **extra: Any) -> dict[str, Any]:
    return {"text": "column", "actions": [_uri() for _ in range(actions)], **extra}


def _quick(items: int, label: str = "ok") -> dict[str, Any]:
    return {
        **TEXT,
        "quickReply": {
            "items": [
                {"type": "action", "action": {"type": "message", "label": label, "text": "ok"}} for _ in range(items)
            ]
        },
    }


# (id, messages, property of the single error, words in its message)
BAD_MESSAGES = [
    ("six messages", [TEXT] * 6, "messages", "between 1 and 5"),
    ("no messages", [], "messages", "between 1 and 5"),
    ("unknown type", [{"type": "coupon-ish"}], "messages[0].type", "one of the following"),
    ("empty text", [{"type": "text", "text": ""}], "messages[0].text", "empty"),
    ("text 5001 units", [{"type": "text", "text": "x" * 5001}], "messages[0].text", "5000"),
    ("emoji text over 5000 units", [{"type": "text", "text": "😀" * 2501}], "messages[0].text", "5000"),
    ("altText 1501", [{**_buttons(), "altText": "a" * 1501}], "messages[0].altText", "1500"),
    ("buttons text 161", [_buttons(text="b" * 161)], "messages[0].template.text", "160"),
    ("buttons text 61 with title", [_buttons(text="b" * 61, title="Sale")], "messages[0].template.text", "60"),
    ("buttons 5 actions", [_buttons(actions=[_uri()] * 5)], "messages[0].template.actions", "between 1 and 4"),
    (
        "buttons http thumbnail",
        [_buttons(thumbnailImageUrl="http://img.example/a.jpg")],
        "messages[0].template.thumbnailImageUrl",
        "HTTPS",
    ),
    (
        "confirm text 241",
        [
            {
                "type": "template",
                "altText": "c",
                "template": {"type": "confirm", "text": "c" * 241, "actions": [_postback(), _postback()]},
            }
        ],
        "messages[0].template.text",
        "240",
    ),
    (
        "confirm 3 actions",
        [
            {
                "type": "template",
                "altText": "c",
                "template": {"type": "confirm", "text": "ok?", "actions": [_postback()] * 3},
            }
        ],
        "messages[0].template.actions",
        "between 2 and 2",
    ),
    (
        "carousel 11 columns",
        [{"type": "template", "altText": "c", "template": {"type": "carousel", "columns": [_column()] * 11}}],
        "messages[0].template.columns",
        "between 1 and 10",
    ),
    (
        "carousel uneven actions",
        [{"type": "template", "altText": "c", "template": {"type": "carousel", "columns": [_column(1), _column(2)]}}],
        "messages[0].template.columns",
        "same number of actions",
    ),
    ("action label 21", [_buttons(actions=[_uri(label="l" * 21)])], "messages[0].template.actions[0].label", "20"),
    (
        "uri 1001",
        [_buttons(actions=[_uri(uri="https://e.example/" + "u" * 983)])],
        "messages[0].template.actions[0].uri",
        "1000",
    ),
    (
        "postback data 301",
        [_buttons(actions=[_postback(data="d" * 301)])],
        "messages[0].template.actions[0].data",
        "300",
    ),
    (
        "image over http",
        [
            {
                "type": "image",
                "originalContentUrl": "http://img.example/a.jpg",
                "previewImageUrl": "https://img.example/p.jpg",
            }
        ],
        "messages[0].originalContentUrl",
        "HTTPS",
    ),
    (
        "image url 2001 chars",
        [
            {
                "type": "image",
                "previewImageUrl": "https://i.example/p.jpg",
                "originalContentUrl": "https://i.example/" + "a" * 1983,
            }
        ],
        "messages[0].originalContentUrl",
        "2000",
    ),
    ("quick reply 14 items", [_quick(14)], "messages[0].quickReply.items", "between 1 and 13"),
    ("quick reply label 21", [_quick(1, label="q" * 21)], "messages[0].quickReply.items[0].action.label", "20"),
    (
        "flex bubble over 30 KB",
        [{"type": "flex", "altText": "f", "contents": _flex_bubble(31_000)}],
        "messages[0].contents",
        "30 KB",
    ),
    (
        "flex carousel 13 bubbles",
        [{"type": "flex", "altText": "f", "contents": {"type": "carousel", "contents": [_flex_bubble(5)] * 13}}],
        "messages[0].contents.contents",
        "between 1 and 12",
    ),
    (
        "flex action label 41",
        [
            {
                "type": "flex",
                "altText": "f",
                "contents": {
                    "type": "bubble",
                    "footer": {
                        "type": "box",
                        "layout": "vertical",
                        "contents": [{"type": "button", "action": _uri(label="f" * 41)}],
                    },
                },
            }
        ],
        "messages[0].contents.footer.contents[0].action.label",
        "40",
    ),
]


@pytest.mark.parametrize(
    "messages,prop,words", [case[1:] for case in BAD_MESSAGES], ids=[case[0] for case in BAD_MESSAGES]
)
async def test_each_message_limit_answers_400_with_details(client, messages, prop, words):
    status, headers, body = await client.push(messages)
    assert status == 400
    assert body["message"] == "The request body has 1 error(s)"
    assert [d["property"] for d in body["details"]] == [prop]
    assert words in body["details"][0]["message"]
    assert "x-line-request-id" in headers
    assert client.emulator.delivered == []


async def test_messages_at_the_limits_are_accepted(client):
    at_limit = [
        {"type": "text", "text": "😀" * 2500},  # exactly 5000 UTF-16 units
        _buttons(text="b" * 160, actions=[_uri(label="l" * 20)] * 4),
        {"type": "template", "altText": "a" * 1500, "template": {"type": "carousel", "columns": [_column(3)] * 10}},
        _quick(13, label="q" * 20),
        {
            "type": "flex",
            "altText": "f",
            "contents": {
                "type": "bubble",
                "footer": {
                    "type": "box",
                    "layout": "vertical",
                    "contents": [{"type": "button", "action": _uri(label="f" * 40)}],
                },
            },
        },
    ]
    assert utf16_len(at_limit[0]["text"]) == 5000
    status, _, body = await client.push(at_limit)
    assert status == 200, body
    assert len(body["sentMessages"]) == 5
    assert client.emulator.inbox("U1") == at_limit


async def test_push_delivers_and_names_the_request(client):
    status, headers, body = await client.push([TEXT, {"type": "sticker", "packageId": "446", "stickerId": "1988"}])
    assert status == 200
    [delivery] = client.emulator.delivered
    assert delivery.user_id == "U1" and delivery.endpoint == "push"
    assert delivery.request_id == headers["x-line-request-id"]
    assert [m["id"] for m in body["sentMessages"]] == sorted({m["id"] for m in body["sentMessages"]})
    assert client.emulator.usage == 1  # one recipient, however many objects


async def test_missing_or_wrong_token_is_401(client):
    status, _, body = await client.push([TEXT], token="not-the-token")
    assert status == 401 and "Authentication failed" in body["message"]
    assert client.emulator.requests_to("push", 401)
    assert client.emulator.delivered == []


async def test_multicast_limits_and_unknown_or_blocked_users(client):
    status, _, body = await client.call(
        "POST", "/v2/bot/message/multicast", {"to": [f"U{i}" for i in range(501)], "messages": [TEXT]}
    )
    assert status == 400 and body["details"] == [{"message": "Size must be between 1 and 500", "property": "to"}]
    status, _, body = await client.call(
        "POST", "/v2/bot/message/multicast", {"to": ["U1", "U2", "UB", "Unobody"], "messages": [TEXT]}
    )
    assert (status, body) == (200, {})
    assert sorted(d.user_id for d in client.emulator.delivered) == ["U1", "U2"]
    assert sorted(d.user_id for d in client.emulator.undelivered) == ["UB", "Unobody"]
    assert client.emulator.usage == 2  # blocked and unknown users are not billed
    assert client.emulator.requests_to("multicast", 200)[0].json()["to"][2] == "UB"
    client.emulator.block("U2")
    assert (await client.call("POST", "/v2/bot/message/multicast", {"to": ["U1", "U2"], "messages": [TEXT]}))[0] == 200
    assert client.emulator.inbox("U2") == [TEXT] and client.emulator.usage == 3


async def test_body_over_2_mb_is_413(client):
    big = {"to": "U1", "messages": [TEXT], "padding": "p" * (2 * 1024 * 1024)}
    status, _, body = await client.call("POST", "/v2/bot/message/push", big)
    assert status == 413
    assert client.emulator.delivered == []


async def test_bad_json_and_content_type(client):
    status, _, body = await client.call("POST", "/v2/bot/message/push", raw=b'{"to": "U1",')
    assert status == 400 and "could not be parsed as JSON" in body["message"]
    status, _, body = await client.call(
        "POST", "/v2/bot/message/push", raw=b"to=U1", content_type="application/x-www-form-urlencoded"
    )
    assert status == 415


async def test_retry_key_must_be_a_uuid(client):
    status, _, body = await client.push([TEXT], retry_key="not-a-uuid")
    assert status == 400 and "X-Line-Retry-Key" in body["message"]
    assert client.emulator.delivered == []


async def test_reused_retry_key_answers_409_and_does_not_deliver_again(client):
    key = str(uuid.uuid4())
    status, first, sent = await client.push([TEXT], retry_key=key)
    assert status == 200
    status, headers, body = await client.push([TEXT], retry_key=key)
    assert status == 409
    assert headers["x-line-accepted-request-id"] == first["x-line-request-id"]
    assert headers["x-line-request-id"] != first["x-line-request-id"]
    assert body == {"message": "The retry key is already accepted", "sentMessages": sent["sentMessages"]}
    assert len(client.emulator.delivered) == 1 and client.emulator.usage == 1


async def test_retry_key_of_a_rejected_request_is_not_used_up(client):
    key = str(uuid.uuid4())
    assert (await client.push([{"type": "text", "text": ""}], retry_key=key))[0] == 400
    assert (await client.push([TEXT], retry_key=key))[0] == 200


async def test_reply_rejects_a_retry_key_and_tokens_are_single_use(client):
    token = client.emulator.issue_reply_token("U2")
    body = {"replyToken": token, "messages": [TEXT]}
    status, _, answer = await client.call("POST", "/v2/bot/message/reply", body, retry_key=str(uuid.uuid4()))
    assert status == 400 and "X-Line-Retry-Key" in answer["message"]
    status, _, answer = await client.call("POST", "/v2/bot/message/reply", body)
    assert status == 200 and len(answer["sentMessages"]) == 1
    status, _, answer = await client.call("POST", "/v2/bot/message/reply", body)
    assert (status, answer) == (400, {"message": INVALID_REPLY_TOKEN_MESSAGE})
    assert client.emulator.inbox("U2") == [TEXT]
    assert client.emulator.usage == 0  # replies are free


async def test_expired_and_unknown_reply_tokens_are_invalid(client):
    expired = client.emulator.issue_reply_token("U1", ttl=-1)
    for token in (expired, "0" * 32):
        status, _, answer = await client.call(
            "POST", "/v2/bot/message/reply", {"replyToken": token, "messages": [TEXT]}
        )
        assert (status, answer) == (400, {"message": INVALID_REPLY_TOKEN_MESSAGE})
    assert client.emulator.delivered == []


async def test_reply_token_ttl_is_configurable():
    emulator = Emulator(reply_token_ttl=0.05)
    await emulator.start()
    try:
        emulator.add_user("U1", "Hanako")
        token = emulator.issue_reply_token("U1")
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            status, _, answer = await Client(emulator, session).call(
                "POST", "/v2/bot/message/reply", {"replyToken": token, "messages": [TEXT]}
            )
        assert (status, answer) == (400, {"message": INVALID_REPLY_TOKEN_MESSAGE})
    finally:
        await emulator.stop()


async def test_monthly_quota_and_the_quota_endpoints(client):
    client.emulator.quota = 2
    for user in ("U1", "U2"):
        assert (await client.push([TEXT], to=user))[0] == 200
    status, _, body = await client.push([TEXT], to="U1")
    assert (status, body) == (429, {"message": MONTHLY_LIMIT_MESSAGE})
    assert (await client.push([TEXT], to="UB"))[0] == 200  # not billed: fits
    status, _, quota = await client.call("GET", "/v2/bot/message/quota")
    assert (status, quota) == (200, {"type": "limited", "value": 2})
    status, _, used = await client.call("GET", "/v2/bot/message/quota/consumption")
    assert (status, used) == (200, {"totalUsage": 2})
    assert len(client.emulator.delivered) == 2
    client.emulator.quota = None
    assert (await client.call("GET", "/v2/bot/message/quota"))[2] == {"type": "none"}


async def test_rate_limit_answers_429_at_a_small_rate(client):
    client.emulator.set_rate_limit("push", 2, capacity=5)
    answers = await asyncio.gather(*(client.push([TEXT]) for _ in range(8)))
    statuses = sorted(a[0] for a in answers)
    assert statuses == [200] * 5 + [429] * 3
    assert {a[2]["message"] for a in answers if a[0] == 429} == {RATE_LIMIT_MESSAGE}
    # other endpoints keep their own buckets
    assert (await client.call("GET", "/v2/bot/profile/U1"))[0] == 200
    await asyncio.sleep(0.55)  # refills at 2/s: one more token
    assert (await client.push([TEXT]))[0] == 200


async def test_injected_statuses_answer_without_processing(client):
    client.emulator.inject("/v2/bot/message/push", status=503, count=2)
    client.emulator.inject("multicast", status=429, headers={"Retry-After": "1"})
    assert [(await client.push([TEXT]))[0] for _ in range(3)] == [503, 503, 200]
    status, headers, body = await client.call("POST", "/v2/bot/message/multicast", {"to": ["U1"], "messages": [TEXT]})
    assert (status, headers["Retry-After"], body) == (429, "1", {"message": RATE_LIMIT_MESSAGE})
    assert len(client.emulator.delivered) == 1
    assert [r.note for r in client.emulator.requests_to("push")] == ["fault", "fault", ""]


async def test_injected_timeout_hangs_then_drops_without_delivering(client):
    client.emulator.inject_timeout("push", delay=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await client.push([TEXT], timeout=0.5)  # long enough to arrive on a busy machine
    assert [r.note for r in client.emulator.requests_to("push")] == ["timeout"]  # it arrived, and hangs
    await asyncio.sleep(0.6)  # the hang is over: the connection was dropped, nothing delivered
    assert client.emulator.delivered == []


async def test_lost_response_delivers_then_drops_so_a_retry_sees_409(client):
    key = str(uuid.uuid4())
    client.emulator.inject_lost_response("push")
    with pytest.raises(aiohttp.ClientError):
        await client.push([TEXT], retry_key=key)
    assert len(client.emulator.delivered) == 1
    status, headers, _ = await client.push([TEXT], retry_key=key)
    assert status == 409
    assert headers["x-line-accepted-request-id"] == client.emulator.requests_to("push")[0].request_id
    assert len(client.emulator.delivered) == 1


async def test_profiles(client):
    status, _, profile = await client.call("GET", "/v2/bot/profile/U2")
    assert (status, profile) == (200, {"displayName": "Taro", "userId": "U2", "language": "en"})
    for user in ("Unobody", "UB"):
        status, _, body = await client.call("GET", f"/v2/bot/profile/{user}")
        assert (status, body) == (404, {"message": "Not found"})


async def test_rich_menu_link_unlink_and_bulk_link(client):
    menu = "richmenu-" + "a" * 32
    status, _, body = await client.call("POST", f"/v2/bot/user/U1/richmenu/{menu}")
    assert (status, body) == (200, {})
    assert client.emulator.rich_menu_links == {"U1": menu}
    assert (await client.call("DELETE", "/v2/bot/user/U1/richmenu"))[0] == 200
    assert client.emulator.rich_menu_links == {}
    status, _, _ = await client.call(
        "POST", "/v2/bot/richmenu/bulk/link", {"richMenuId": menu, "userIds": ["U1", "U2"]}
    )
    assert status == 202 and client.emulator.rich_menu_links == {"U1": menu, "U2": menu}
    status, _, body = await client.call(
        "POST", "/v2/bot/richmenu/bulk/link", {"richMenuId": menu, "userIds": ["U"] * 501}
    )
    assert status == 400 and body["details"][0]["property"] == "userIds"


async def test_validate_endpoints_check_without_sending(client):
    for kind in ("push", "multicast", "reply"):
        path = f"/v2/bot/message/validate/{kind}"
        status, _, body = await client.call("POST", path, {"messages": [TEXT]})
        assert (status, body) == (200, {})
        status, _, body = await client.call("POST", path, {"messages": [{"type": "text"}]})
        assert status == 400 and body["details"][0]["property"] == "messages[0].text"
    assert client.emulator.delivered == [] and client.emulator.usage == 0


async def test_broadcast_and_narrowcast_reach_every_friend(client):
    status, _, _ = await client.call(
        "POST", "/v2/bot/message/broadcast", {"messages": [TEXT]}, retry_key=str(uuid.uuid4())
    )
    assert status == 200
    status, _, _ = await client.call("POST", "/v2/bot/message/narrowcast", {"messages": [TEXT]})
    assert status == 202
    assert sorted(d.user_id for d in client.emulator.delivered) == ["U1", "U1", "U2", "U2"]
    assert client.emulator.usage == 4


def test_thread_runner_serves_synchronous_callers():
    with run_in_thread(access_token="sync-token") as emulator:
        emulator.add_user("U1", "Hanako")
        request = urllib.request.Request(
            emulator.base_url + "/v2/bot/message/push",
            method="POST",
            data=json.dumps({"to": "U1", "messages": [TEXT]}).encode(),
            headers={"Authorization": "Bearer sync-token", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200 and resp.headers["x-line-request-id"]
        assert emulator.inbox("U1") == [TEXT]
        assert emulator.base_url.startswith("http://127.0.0.1:")


def test_standalone_server_runs_from_the_command_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.testing.line_emulator",
            "--port",
            str(port),
            "--user",
            "U1=Hanako",
            "--quota",
            "7",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert f"http://127.0.0.1:{port}" in proc.stdout.readline()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/bot/message/quota", headers={"Authorization": "Bearer emulator-token"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.load(resp) == {"type": "limited", "value": 7}

        def admin(path: str, body: dict[str, str] | None = None) -> Any:
            data = json.dumps(body).encode() if body is not None else None
            with urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}/_emulator/{path}", data=data), timeout=5
            ) as resp:
                return json.load(resp)

        assert admin("users", {"userId": "U2", "displayName": "Taro"}) == {"userId": "U2"}
        with pytest.raises(urllib.error.HTTPError) as bad:
            admin("users", {"displayName": "no id"})
        assert bad.value.code == 400
        token = admin("reply_tokens", {"userId": "U2"})["replyToken"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/bot/message/reply",
            method="POST",
            data=json.dumps({"replyToken": token, "messages": [TEXT]}).encode(),
            headers={"Authorization": "Bearer emulator-token", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        stats = admin("stats")
        assert stats["requests"] == {"quota": {"200": 1}, "reply": {"200": 1}}
        assert (stats["delivered"], stats["usage"], stats["quota"]) == (1, 0, 7)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@given(
    gaps=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5]) | st.floats(0, 1.5), max_size=60),
    endpoints=st.lists(st.sampled_from(["push", "multicast"]), min_size=60, max_size=60),
    set_back=st.none() | st.integers(0, 59),
)
def test_the_stats_kept_as_requests_arrive_are_the_counts_over_all_of_them(gaps, endpoints, set_back):
    # busiest_second and span are kept per arrival, so that polling stats costs nothing; they
    # must be what counting every recorded request gives, a clock set back included
    now = [1000.0]
    emulator = Emulator(clock=lambda: now[0])
    for n, (gap, endpoint) in enumerate(zip(gaps, endpoints)):
        now[0] += -0.75 if n == set_back else gap
        emulator._record(RecordedRequest("POST", "/", endpoint, "id", None, b"", now[0]))
    for endpoint in ("push", "multicast"):
        times = [r.time for r in emulator.requests if r.endpoint == endpoint]
        assert emulator.busiest_second(endpoint) == busiest(times)
        assert emulator.busiest_second(endpoint, 0.3) == busiest(times, 0.3)
        assert emulator.span(endpoint) == (max(times) - min(times) if len(times) > 1 else 0.0)
