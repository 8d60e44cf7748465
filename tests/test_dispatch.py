"""The dispatcher sends through the real line-bot-sdk to the LINE emulator on loopback."""

from __future__ import annotations

import datetime
import json
import logging
import socket
import time
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.line.dispatch import (
    Dispatcher,
    DispatchResult,
    DryRunTransport,
    OutboxItem,
    make_transport,
)
from engine.testing.line_emulator import Emulator

TEXT = {"type": "text", "text": "こんにちは"}
MENU = "richmenu-" + "0" * 32


def push(item_id: int, user: str = "U1", messages: list[dict[str, Any]] | None = None, **kw: Any) -> OutboxItem:
    return OutboxItem(item_id, "push", [user], messages or [TEXT], str(uuid.uuid4()), **kw)


@pytest.fixture
def emulator(line_emulator: Emulator) -> Emulator:
    for i in range(1, 6):
        line_emulator.add_user(f"U{i}", f"Friend {i}")
    line_emulator.add_user("UB", "Blocker", blocked=True)
    return line_emulator


@pytest.fixture
async def dispatcher(emulator: Emulator):
    # a request timeout a busy machine does not reach by itself (the hang the timeout test
    # injects is longer)
    async with Dispatcher(
        emulator.access_token, emulator.base_url + "/", max_attempts=4, timeout=1.5, backoff_base=0.01, backoff_cap=0.05
    ) as d:
        yield d


async def test_push_and_multicast_arrive_exactly_once(dispatcher, emulator):
    items = [push(1, "U1"), OutboxItem(2, "multicast", ["U2", "U3", "UB"], [TEXT, TEXT], str(uuid.uuid4()))]
    results = await dispatcher.send(items)
    assert [(r.item_id, r.outcome, r.status, r.via, r.recipients) for r in results] == [
        (1, "sent", 200, "push", 1),
        (2, "sent", 200, "multicast", 3),
    ]
    assert sorted(d.user_id for d in emulator.delivered) == ["U1", "U2", "U3"]
    assert [d.user_id for d in emulator.undelivered] == ["UB"]
    assert results[0].request_id == emulator.requests_to("push")[0].request_id
    assert emulator.requests_to("push")[0].retry_key == items[0].retry_key
    assert emulator.requests_to("multicast")[0].retry_key == items[1].retry_key
    assert dispatcher.endpoint == emulator.base_url  # trailing slash dropped


async def test_5xx_then_success_delivers_once_with_identical_retries(dispatcher, emulator):
    emulator.inject("push", status=500)
    item = push(1)
    [result] = await dispatcher.send([item])
    assert result.outcome == "sent"
    attempts = emulator.requests_to("push")
    assert [r.status for r in attempts] == [500, 200]
    assert {r.retry_key for r in attempts} == {item.retry_key}
    assert attempts[0].body == attempts[1].body  # byte-identical retry
    assert len(emulator.delivered) == 1
    assert dispatcher.metrics["retries"] == 1
    assert dispatcher.metrics["requests"]["push"] == {"500": 1, "200": 1}


async def test_lost_response_is_retried_and_409_means_duplicate(dispatcher, emulator):
    emulator.inject_lost_response("push")
    item = push(1)
    [result] = await dispatcher.send([item])
    first, second = emulator.requests_to("push")
    assert (result.outcome, result.status) == ("duplicate", 409)
    assert result.request_id == first.request_id  # the request that was accepted
    assert (first.note, second.status) == ("lost", 409)
    assert first.body == second.body and first.retry_key == second.retry_key == item.retry_key
    assert len(emulator.delivered) == 1


async def test_timeout_is_retried_with_the_same_key(dispatcher, emulator):
    emulator.inject_timeout("push", delay=3.0)
    item = push(1)
    [result] = await dispatcher.send([item])
    assert result.outcome == "sent"
    assert [r.note for r in emulator.requests_to("push")] == ["timeout", ""]
    assert {r.retry_key for r in emulator.requests_to("push")} == {item.retry_key}
    assert dispatcher.metrics["requests"]["push"]["timeout"] == 1
    assert len(emulator.delivered) == 1


async def test_a_coupon_goes_as_lines_coupon_message(dispatcher, emulator):
    # a coupon made in LINE is sent by its id, after a text, in one push (LINE_FACTS: coupons)
    coupon = {"type": "coupon", "couponId": "01JCOUPON0000000000000000", "deliveryTag": "winter_push"}
    [result] = await dispatcher.send([push(1, messages=[TEXT, coupon])])
    assert (result.outcome, result.status) == ("sent", 200)
    [request] = emulator.requests_to("push")
    assert json.loads(request.body)["messages"] == [TEXT, coupon]
    [too_long] = await dispatcher.send([push(2, messages=[{**coupon, "deliveryTag": "x" * 31}])])
    assert (too_long.outcome, too_long.status) == ("rejected", 400)
    assert "messages[0].deliveryTag" in too_long.detail


async def test_400_is_rejected_and_never_retried(dispatcher, emulator):
    [result] = await dispatcher.send([push(1, messages=[{"type": "text", "text": "x" * 5001}])])
    assert (result.outcome, result.status) == ("rejected", 400)
    assert "messages[0].text" in result.detail
    assert len(emulator.requests_to("push")) == 1
    assert emulator.delivered == []


async def test_a_body_from_the_stored_json_is_the_same_request(dispatcher, emulator):
    to, messages = ["U2", "U3"], [TEXT, {"type": "text", "text": "二つ目 😀"}]
    stored = (json.dumps(to), json.dumps(messages, ensure_ascii=False))
    plain = OutboxItem(1, "multicast", to, messages, str(uuid.uuid4()))
    encoded = OutboxItem(2, "multicast", to, messages, str(uuid.uuid4()), encoded=stored)
    single = OutboxItem(3, "push", ["U4"], messages, str(uuid.uuid4()), encoded=(json.dumps(["U4"]), stored[1]))
    assert (
        json.loads(encoded.body({"to": to})) == json.loads(plain.body({"to": to})) == {"to": to, "messages": messages}
    )
    assert json.loads(single.body({"to": "U4"})) == {"to": "U4", "messages": messages}
    results = await dispatcher.send([plain, encoded, single])
    assert [r.outcome for r in results] == ["sent"] * 3
    bodies = [r.json() for r in emulator.requests_to("multicast") + emulator.requests_to("push")]
    assert bodies[0] == bodies[1] and bodies[2]["to"] == "U4"
    assert sorted(d.user_id for d in emulator.delivered) == ["U2", "U2", "U3", "U3", "U4"]


async def test_invalid_items_are_rejected_without_calling_line(dispatcher, emulator):
    items = [
        push(1, messages=[TEXT] * 6),
        OutboxItem(2, "push", ["U1", "U2"], [TEXT], str(uuid.uuid4())),
        OutboxItem(3, "push", ["U1"], [TEXT], "not-a-uuid"),
        push(4, messages=[{"type": "no-such-type"}]),
    ]
    results = await dispatcher.send(items)
    assert [r.outcome for r in results] == ["rejected"] * 4
    assert all(r.status is None and r.detail.startswith("invalid item") for r in results)
    assert emulator.requests_to("push") == []


async def test_rate_limit_429_backs_off_then_delivers_once(dispatcher, emulator):
    emulator.inject("push", status=429, count=2)
    [result] = await dispatcher.send([push(1)])
    assert result.outcome == "sent"
    assert [r.status for r in emulator.requests_to("push")] == [429, 429, 200]
    assert len({r.retry_key for r in emulator.requests_to("push")}) == 1
    assert dispatcher.metrics["rate_limited"] == 2
    assert len(emulator.delivered) == 1


async def test_retry_after_is_respected(dispatcher, emulator):
    emulator.inject("push", status=429, headers={"Retry-After": "0.3"})
    started = time.monotonic()
    [result] = await dispatcher.send([push(1)])
    assert result.outcome == "sent"
    assert time.monotonic() - started >= 0.3


async def test_persistent_5xx_ends_in_retry_and_a_later_send_delivers_once(dispatcher, emulator):
    emulator.inject("push", status=502, count=4)
    item = push(1)
    [result] = await dispatcher.send([item])
    assert (result.outcome, result.status) == ("retry", 502)
    assert len(emulator.requests_to("push")) == 4  # max_attempts
    [result] = await dispatcher.send([item])
    assert result.outcome == "sent"
    assert {r.retry_key for r in emulator.requests_to("push")} == {item.retry_key}
    assert len(emulator.delivered) == 1


async def test_unreachable_line_ends_in_retry():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # A refused connection fails at once; the long timeout keeps a busy machine from turning it into a timeout.
    async with Dispatcher("t", f"http://127.0.0.1:{port}", max_attempts=2, timeout=10, backoff_base=0.01) as d:
        [result] = await d.send([push(1)])
    assert (result.outcome, result.status) == ("retry", None)
    assert result.detail.startswith("error:")
    assert d.metrics["requests"]["push"] == {"error": 2}


async def test_quota_guard_holds_what_would_not_fit(dispatcher, emulator):
    emulator.quota = 3
    items = [push(i, f"U{i}") for i in range(1, 6)]
    results = await dispatcher.send(items)
    assert [r.outcome for r in results] == ["sent"] * 3 + ["held"] * 2
    assert "monthly quota" in results[3].detail and results[3].status is None
    assert len(emulator.requests_to("push")) == 3  # held items never reached LINE
    assert len(emulator.delivered) == 3
    assert dispatcher.remaining == 0


async def test_monthly_limit_429_holds_and_stops_pushes_for_the_month(dispatcher, emulator):
    emulator.quota = 10
    assert await dispatcher.refresh_quota() == 10
    emulator.usage = 10  # spent elsewhere since the last reading
    token = emulator.issue_reply_token("U3")
    [first] = await dispatcher.send([push(1, "U1")])
    assert (first.outcome, first.status) == ("held", 429)
    assert dispatcher.quota_exhausted
    [second] = await dispatcher.send([push(2, "U2")])
    assert (second.outcome, second.status) == ("held", None)  # held without a call
    assert len(emulator.requests_to("push")) == 1
    assert emulator.requests_to("push")[0].status == 429
    assert dispatcher.metrics["monthly_limited"] == 1
    # replies are free and still go out
    [reply] = await dispatcher.send([OutboxItem(3, "reply", ["U3"], [TEXT], str(uuid.uuid4()), reply_token=token)])
    assert (reply.outcome, reply.via) == ("sent", "reply")
    assert [d.user_id for d in emulator.delivered] == ["U3"]


async def test_a_bigger_quota_read_again_releases_held_pushes(dispatcher, emulator):
    emulator.quota = 10
    assert await dispatcher.refresh_quota() == 10
    emulator.usage = 10  # spent elsewhere: LINE answers 429
    [first] = await dispatcher.send([push(1, "U1")])
    assert (first.outcome, first.status) == ("held", 429) and dispatcher.quota_exhausted
    emulator.quota = 5000  # the shop moved to the Light plan
    assert await dispatcher.refresh_quota() == 4990
    assert not dispatcher.quota_exhausted
    [again] = await dispatcher.send([push(1, "U1")])
    assert again.outcome == "sent"
    assert [d.user_id for d in emulator.delivered] == ["U1"]


async def test_quota_exhaustion_ends_with_the_month(emulator):
    now = [time.mktime((2026, 11, 30, 12, 0, 0, 0, 0, -1))]
    async with Dispatcher(emulator.access_token, emulator.base_url, clock=lambda: now[0], backoff_base=0.01) as d:
        # the guard sees no limit (quota type "none"); LINE still says no
        emulator.inject("push", status=429, body={"message": "You have reached your monthly limit."})
        assert (await d.send([push(1)]))[0].outcome == "held"
        assert d.quota_exhausted
        now[0] += 3 * 86400  # December in Japan
        assert not d.quota_exhausted
        assert (await d.send([push(2)]))[0].outcome == "sent"


async def test_fresh_reply_goes_as_a_free_reply(dispatcher, emulator):
    emulator.quota = 5
    token = emulator.issue_reply_token("U2")
    item = OutboxItem(1, "reply", ["U2"], [TEXT], str(uuid.uuid4()), reply_token=token, reply_deadline=time.time() + 50)
    [result] = await dispatcher.send([item])
    assert (result.outcome, result.via, result.status) == ("sent", "reply", 200)
    assert emulator.inbox("U2") == [TEXT]
    assert emulator.usage == 0
    assert emulator.requests_to("reply")[0].retry_key is None
    assert emulator.requests_to("push") == []


async def test_reply_past_its_deadline_is_pushed_with_the_item_key(dispatcher, emulator):
    token = emulator.issue_reply_token("U2")
    item = OutboxItem(1, "reply", ["U2"], [TEXT], str(uuid.uuid4()), reply_token=token, reply_deadline=time.time() - 1)
    [result] = await dispatcher.send([item])
    assert (result.outcome, result.via) == ("sent", "push")
    assert emulator.requests_to("reply") == []
    assert emulator.requests_to("push")[0].retry_key == item.retry_key
    assert emulator.usage == 1


async def test_reply_with_an_expired_token_falls_back_to_push(dispatcher, emulator):
    token = emulator.issue_reply_token("U2", ttl=-1)  # LINE already expired it
    item = OutboxItem(1, "reply", ["U2"], [TEXT], str(uuid.uuid4()), reply_token=token, reply_deadline=time.time() + 50)
    [result] = await dispatcher.send([item])
    assert (result.outcome, result.via) == ("sent", "push")
    assert [r.status for r in emulator.requests_to("reply")] == [400]
    assert emulator.requests_to("push")[0].retry_key == item.retry_key
    assert emulator.inbox("U2") == [TEXT]


async def test_reply_whose_answer_was_lost_is_not_sent_again(dispatcher, emulator):
    emulator.inject_lost_response("reply")
    token = emulator.issue_reply_token("U2")
    [result] = await dispatcher.send([OutboxItem(1, "reply", ["U2"], [TEXT], str(uuid.uuid4()), reply_token=token)])
    assert (result.outcome, result.via) == ("duplicate", "reply")
    assert emulator.requests_to("push") == []
    assert emulator.inbox("U2") == [TEXT]


async def test_reply_left_in_flight_by_a_stopped_runner_is_never_pushed(dispatcher, emulator):
    """The earlier process used the token (LINE delivered); the resend must not push again."""
    token = emulator.issue_reply_token("U2")
    first = OutboxItem(
        1, "reply", ["U2"], [TEXT], str(uuid.uuid4()), reply_token=token, reply_deadline=time.time() + 50
    )
    await dispatcher.send([first])
    again = OutboxItem(
        1, "reply", ["U2"], [TEXT], first.retry_key, reply_token=token, reply_deadline=time.time() + 50, ambiguous=True
    )
    [result] = await dispatcher.send([again])
    assert (result.outcome, result.via) == ("duplicate", "reply")
    assert emulator.requests_to("push") == []
    assert emulator.inbox("U2") == [TEXT]


async def test_stale_reply_left_in_flight_is_recorded_not_pushed(dispatcher, emulator):
    token = emulator.issue_reply_token("U2")
    item = OutboxItem(
        1, "reply", ["U2"], [TEXT], str(uuid.uuid4()), reply_token=token, reply_deadline=time.time() - 1, ambiguous=True
    )
    [result] = await dispatcher.send([item])
    assert result.outcome == "unconfirmed" and result.ambiguous
    assert "never sent twice" in result.detail
    assert emulator.requests_to("push") == [] and emulator.requests_to("reply") == []


async def test_token_buckets_keep_a_burst_under_the_rate(emulator):
    emulator.set_rate_limit("push", 100, capacity=10)
    items = [push(i, f"U{1 + i % 5}") for i in range(60)]
    async with Dispatcher(
        emulator.access_token, emulator.base_url, rates={"push": 90}, burst_seconds=0.01, backoff_base=0.01
    ) as d:
        started = time.monotonic()
        results = await d.send(items)
        elapsed = time.monotonic() - started
    assert {r.outcome for r in results} == {"sent"}
    assert emulator.requests_to("push", 429) == []
    assert len(emulator.delivered) == 60
    assert elapsed >= 0.6  # 60 requests at 90/s, bursts of 1


@pytest.mark.timing  # arrival times within 0.1 s: a loaded machine bunches them
async def test_a_full_bucket_never_lets_a_second_hold_more_than_the_limit(emulator):
    """The emulator's arrival times: no second (a sliding window) holds more requests than the
    client's limit, from the first second on, and the limit is still reached."""
    items = [OutboxItem(i, "multicast", ["U1", "U2", "U3"], [TEXT], str(uuid.uuid4())) for i in range(35)]
    async with Dispatcher(
        emulator.access_token, emulator.base_url, rates={"multicast": 10}, burst_seconds=0.5
    ) as d:  # bursts of 5 after a stall
        started = time.monotonic()
        results = await d.send(items)
        elapsed = time.monotonic() - started
    assert {r.outcome for r in results} == {"sent"}
    assert emulator.busiest_second("multicast") == 10
    assert emulator.stats()["busiest_second"]["multicast"] == 10
    assert 35 / elapsed >= 0.9 * 10  # and the limit is reached


def test_a_window_bounds_a_full_bucket_and_keeps_the_rate():
    """Without the window, a bucket that starts full hands out capacity + rate in its first
    second; with it, never more than the window's limit in any window."""
    from engine.line.ratelimit import TokenBucket, client_bucket

    def granted_in_first_second(bucket: TokenBucket, clock: list[float]) -> int:
        grants = 0
        for ms in range(1001):  # 0 ms to 1,000 ms, both ends included
            clock[0] = ms / 1000
            while bucket.try_take():
                grants += 1
        return grants

    clock = [0.0]
    plain = TokenBucket(200, 10, clock=lambda: clock[0])
    assert granted_in_first_second(plain, clock) == 210  # 10 at once, then 200/s
    clock = [0.0]
    windowed = TokenBucket(200, 10, window=1.02, window_limit=200, clock=lambda: clock[0])
    assert granted_in_first_second(windowed, clock) == 200
    clock = [0.0]
    assert granted_in_first_second(client_bucket(200, clock=lambda: clock[0]), clock) <= 200
    grants = []
    for ms in range(1001, 10_000):  # and any 1.02 s after that holds at most 200
        clock[0] = ms / 1000
        while windowed.try_take():
            grants.append(clock[0])
    assert max(sum(1 for t in grants if s <= t < s + 1.02) for s in grants) <= 200
    assert len(grants) >= 0.97 * 200 * 9


async def test_without_client_pacing_the_same_burst_is_throttled(emulator):
    """The control for the test above: LINE's bucket does bite when the client does not pace."""
    emulator.set_rate_limit("push", 100, capacity=10)
    async with Dispatcher(emulator.access_token, emulator.base_url, rates={"push": 100_000}, backoff_base=0.01) as d:
        results = await d.send([push(i, f"U{1 + i % 5}") for i in range(60)])
    assert emulator.requests_to("push", 429)
    assert d.metrics["rate_limited"] > 0
    assert len(emulator.delivered) == sum(r.outcome == "sent" for r in results)


async def test_menu_link_and_unlink(dispatcher, emulator):
    results = await dispatcher.send(
        [
            OutboxItem(1, "menu_link", ["U1"], [], str(uuid.uuid4()), rich_menu_id=MENU),
            OutboxItem(2, "menu_link", ["U2"], [], str(uuid.uuid4()), rich_menu_id=MENU),
        ]
    )
    assert [(r.outcome, r.via) for r in results] == [("sent", "menu_link")] * 2
    assert emulator.rich_menu_links == {"U1": MENU, "U2": MENU}
    [result] = await dispatcher.send([OutboxItem(3, "menu_link", ["U1"], [], str(uuid.uuid4()))])
    assert result.outcome == "sent"
    assert emulator.rich_menu_links == {"U2": MENU}
    assert emulator.requests_to("quota") == []  # no quota reading for menus


async def test_profiles_for_templates(dispatcher, emulator):
    emulator.add_user("U9", "花子", language="ja")
    assert await dispatcher.get_profile("U9") == {"display_name": "花子", "language": "ja"}
    assert await dispatcher.get_profile("Unobody") is None
    assert await dispatcher.get_profile("UB") is None


async def test_refresh_quota(dispatcher, emulator):
    assert await dispatcher.refresh_quota() is None  # no limit
    emulator.quota, emulator.usage = 200, 150
    assert await dispatcher.refresh_quota() == 50
    assert dispatcher.remaining == 50


async def test_results_are_reported_as_they_land(dispatcher, emulator):
    seen: list[DispatchResult] = []

    async def record(result: DispatchResult) -> None:
        seen.append(result)

    results = await dispatcher.send([push(i, "U1") for i in range(1, 4)], on_result=record)
    assert sorted(r.item_id for r in seen) == [1, 2, 3]
    assert [r.item_id for r in results] == [1, 2, 3]
    assert dispatcher.metrics["outcomes"] == {"sent": 3}


async def test_dry_run_logs_one_line_per_item(caplog):
    transport = DryRunTransport()
    items = [
        push(
            1,
            messages=[
                {"type": "text", "text": "Hello   Hanako, here is your coupon"},
                {
                    "type": "image",
                    "originalContentUrl": "https://i.example/a.png",
                    "previewImageUrl": "https://i.example/p.png",
                },
            ],
        ),
        OutboxItem(2, "multicast", ["U1", "U2"], [TEXT], str(uuid.uuid4())),
        OutboxItem(3, "multicast", [f"U{i}" for i in range(1, 501)], [TEXT], str(uuid.uuid4())),
    ]
    with caplog.at_level(logging.INFO, logger="linerules.dispatch"):
        results = await transport.send(items)
    assert [(r.outcome, r.recipients) for r in results] == [("dry_run", 1), ("dry_run", 2), ("dry_run", 500)]
    lines = [r.getMessage() for r in caplog.records]
    # who each one is for (the outbox row says the rest): the log checks a forecast by hand
    assert lines == [
        "dry-run push #1 to U1 [text, image]: Hello Hanako, here is your coupon",
        "dry-run multicast #2 to 2 recipients (U1, U2) [text]: こんにちは",
        "dry-run multicast #3 to 500 recipients (U1, U2, U3, …) [text]: こんにちは",
    ]


async def test_make_transport_picks_by_the_environment():
    dry = make_transport({})
    assert dry.dry_run and isinstance(dry, DryRunTransport)
    assert "LINE_CHANNEL_ACCESS_TOKEN" in dry.banner
    real = make_transport({"LINE_CHANNEL_ACCESS_TOKEN": "tok"})
    assert isinstance(real, Dispatcher) and not real.dry_run
    assert real.endpoint == "https://api.line.me"
    local = make_transport({"LINE_CHANNEL_ACCESS_TOKEN": "tok", "LINE_API_ENDPOINT": "http://127.0.0.1:8089/"})
    assert local.endpoint == "http://127.0.0.1:8089"
    assert "http://127.0.0.1:8089" in local.banner


def test_proxy_from_the_environment_is_resolved_once(monkeypatch):
    from engine.line.dispatch import _env_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert _env_proxy("https://api.line.me") == "http://proxy.internal:3128"
    assert _env_proxy("http://127.0.0.1:8089") is None


def test_unknown_rate_names_are_refused():
    with pytest.raises(ValueError, match="unknown endpoint 'pushh'"):
        Dispatcher("t", rates={"pushh": 5})
    with pytest.raises(ValueError, match="unknown endpoint 'pushh'"):
        Emulator(rate_limits={"pushh": 5})


@pytest.mark.timing  # arrival times within 0.1 s: a loaded machine bunches them
async def test_multicasts_keep_to_lines_200_per_second_without_bursts(emulator):
    """LINE's own limits on both sides: the dispatcher paces 300 multicasts so that no second
    (and no tenth of a second) holds more than LINE allows, and nothing is answered 429."""
    import aiohttp

    items = [OutboxItem(i, "multicast", [f"U{1 + i % 5}", "UB"], [TEXT], str(uuid.uuid4())) for i in range(300)]
    times: list[float] = []
    trace = aiohttp.TraceConfig()

    async def on_start(session, context, params):
        if params.url.path.endswith("/multicast"):
            times.append(time.monotonic())  # the moment the request goes out

    trace.on_request_start.append(on_start)
    async with Dispatcher(emulator.access_token, emulator.base_url, trace_configs=[trace]) as d:
        results = await d.send(items)
    assert {r.outcome for r in results} == {"sent"}
    assert emulator.requests_to("multicast", 429) == []  # LINE's own bucket agrees
    assert len(times) == 300 == len(emulator.requests_to("multicast"))

    def most_within(window: float) -> int:
        j, best = 0, 0
        for i, t in enumerate(times):
            while times[j] <= t - window:
                j += 1
            best = max(best, i - j + 1)
        return best

    assert most_within(1.0) <= 200 + 10  # 200/s, plus the 50 ms burst
    assert most_within(0.1) <= 20 + 10
    assert times[-1] - times[0] >= 1.4


async def test_a_long_retry_after_is_handed_back_at_once(dispatcher, emulator):
    emulator.inject("push", 429, headers={"Retry-After": "3600"})
    started = time.monotonic()
    [result] = await dispatcher.send([push(1)])
    assert time.monotonic() - started < 1
    assert (result.outcome, result.retry_after, result.ambiguous) == ("retry", 3600, False)
    assert len(emulator.requests_to("push")) == 1


async def test_401_is_auth_not_rejected_and_the_message_is_kept(dispatcher, emulator):
    emulator.revoke_token()
    [result] = await dispatcher.send([push(1)])
    assert (result.outcome, result.status) == ("auth", 401)
    assert await dispatcher.check_auth() is not None
    emulator.restore_token()
    assert await dispatcher.check_auth() is None
    assert (await dispatcher.send([push(2)]))[0].outcome == "sent"


async def test_emulator_issues_stateless_tokens_as_line_does(emulator):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        form = {
            "grant_type": "client_credentials",
            "client_id": emulator.channel_id,
            "client_secret": emulator.channel_secret,
        }
        async with session.post(emulator.base_url + "/oauth2/v3/token", data=form) as resp:
            body = await resp.json()
            assert resp.status == 200
        assert body["token_type"] == "Bearer" and body["expires_in"] == 900
        assert emulator.token_valid(body["access_token"])
        async with session.post(
            emulator.base_url + "/oauth2/v3/token", data={**form, "client_secret": "wrong"}
        ) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_client"
    emulator.expire_stateless_tokens()
    assert not emulator.token_valid(body["access_token"])


@given(st.lists(st.floats(1.6e9, 1.9e9) | st.sampled_from([1793458800.0, 1793458799.999, 1796137200.0]), max_size=40))
def test_the_quota_month_kept_between_sends_is_the_month_of_each_moment(moments):
    # the month's bounds are kept from one send to the next; any order of moments, month
    # boundaries in Tokyo included, names the month the clock says
    from engine.line.dispatch import QUOTA_ZONE, _month

    for moment in moments:
        assert _month(moment) == datetime.datetime.fromtimestamp(moment, QUOTA_ZONE).strftime("%Y-%m")
