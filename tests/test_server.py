"""The runner's HTTP server on a real loopback port: webhooks (real signatures, replies through
the LINE emulator with the real line-bot-sdk), shop events, health, metrics, friend-add
sources through a tiny fake of LINE Login, tracked links, and rule reloads."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.line.login import LoginError, LoginFlow
from engine.runner.clock import ManualClock
from engine.runner.metrics import Metrics
from engine.runner.runloop import Runner, RunnerConfig, StartupError
from engine.runner.server import build_app, health
from engine.runtime.store import Store
from serverkit import (
    API_TOKEN,
    RULES,
    SECRET,
    SETTINGS,
    line_event,
    sample,
    scrape,
    shop_event,
    sign,
    wait_for,
    webhook_body,
    write_rules,
)

JST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture
async def emulated(line_emulator, make_client):
    """A runner that sends to the LINE emulator, with friend U1 (Hanako) known there."""
    line_emulator.add_user("U1", "Hanako")
    client, runner = await make_client(
        {"LINE_CHANNEL_ACCESS_TOKEN": line_emulator.access_token, "LINE_API_ENDPOINT": line_emulator.base_url}
    )
    return client, runner, line_emulator


# ----------------------------------------------------------------------------- webhooks


async def test_webhook_message_is_answered_with_a_reply_through_line(emulated):
    client, runner, emulator = emulated
    token = emulator.issue_reply_token("U1")
    body = webhook_body(
        line_event(
            "message",
            "U1",
            event_id="01WEBHOOK0001",
            reply_token=token,
            message={"type": "text", "id": "1", "text": "クーポンください"},
        )
    )
    started = time.monotonic()
    resp = await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})
    assert resp.status == 200
    assert time.monotonic() - started < 2
    deliveries = await wait_for(lambda: emulator.inboxes.get("U1"))
    assert [d.endpoint for d in deliveries] == ["reply"]
    assert deliveries[0].messages == [{"type": "text", "text": "クーポンはこちら"}]
    assert emulator.requests_to("push") == []


async def test_follow_is_greeted_with_the_profile_name(line_emulator, make_client):
    line_emulator.add_user("U1", "Hanako")
    # A slow timer: only the tick that follows the profile fetch can greet the new friend.
    client, runner = await make_client(
        {"LINE_CHANNEL_ACCESS_TOKEN": line_emulator.access_token, "LINE_API_ENDPOINT": line_emulator.base_url}, tick=30
    )
    body = webhook_body(
        line_event("follow", "U1", event_id="01WEBHOOK0002", reply_token="rt-1", follow={"isUnblocked": False})
    )
    resp = await client.post("/callback", data=body, headers={"X-Line-Signature": sign(body)})
    assert resp.status == 200
    [delivery] = await wait_for(lambda: line_emulator.inboxes.get("U1"))
    assert delivery.messages[0]["text"].startswith("ようこそ Hanakoさん")
    assert delivery.endpoint == "push"
    assert runner.store.friend("U1")["language"] == "ja"


async def test_webhook_redelivery_is_stored_once(make_client):
    client, runner = await make_client(loops=False)
    body = webhook_body(line_event("unfollow", "U9", event_id="01WEBHOOK0003"))
    for _ in range(2):
        resp = await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})
        assert resp.status == 200
    assert runner.store.health()["pending_events"] == 1


@pytest.mark.parametrize("signature", [None, "", sign(b"something else"), sign(b"x", "other")])
async def test_bad_signature_is_refused_and_nothing_is_stored(make_client, signature):
    client, runner = await make_client(loops=False)
    body = webhook_body(line_event("follow", "U2", event_id="01WEBHOOK0004"))
    headers = {} if signature is None else {"x-line-signature": signature}
    resp = await client.post("/callback", data=body, headers=headers)
    assert resp.status == 401
    assert runner.store.friend("U2") is None
    assert sample(await scrape(client), "linerules_webhook_requests_total", status="401") == 1


async def test_webhook_without_a_channel_secret_is_refused(make_client, caplog):
    client, runner = await make_client({"LINE_CHANNEL_SECRET": ""}, loops=False)
    body = webhook_body(line_event("follow", "U2", event_id="01WEBHOOK0005"))
    resp = await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})
    assert resp.status == 503
    assert "LINE_CHANNEL_SECRET is not set" in caplog.text
    assert runner.store.friend("U2") is None


async def test_connectivity_check_and_standby_events(make_client):
    client, runner = await make_client(loops=False)
    empty = webhook_body()
    resp = await client.post("/callback", data=empty, headers={"x-line-signature": sign(empty)})
    assert resp.status == 200
    standby = webhook_body({**line_event("follow", "U3", event_id="01WEBHOOK0006"), "mode": "standby"})
    resp = await client.post("/callback", data=standby, headers={"x-line-signature": sign(standby)})
    assert resp.status == 200
    assert runner.store.friend("U3") is None


async def test_several_events_for_several_friends_in_one_request(make_client):
    client, runner = await make_client(loops=False)
    body = webhook_body(
        line_event("follow", "U4", event_id="01WEBHOOK0007"),
        line_event("follow", "U5", event_id="01WEBHOOK0008"),
        line_event("postback", "U4", event_id="01WEBHOOK0009", postback={"data": "action=survey_done"}),
    )
    resp = await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})
    assert resp.status == 200
    assert runner.store.friend("U4") is not None and runner.store.friend("U5") is not None
    samples = await scrape(client)
    assert sample(samples, "linerules_events_total", type="follow", origin="webhook") == 2
    assert sample(samples, "linerules_events_total", type="postback", origin="webhook") == 1


# ----------------------------------------------------------------------------- shop events


async def test_events_endpoint_is_disabled_without_a_token(make_client):
    client, _ = await make_client({"LINERULES_API_TOKEN": ""}, loops=False)
    resp = await client.post("/events", json=shop_event("follow", "U1"))
    assert resp.status == 503
    assert (await resp.json())["error"] == "events endpoint disabled: set LINERULES_API_TOKEN"


@pytest.mark.parametrize("auth", [None, "Bearer wrong", API_TOKEN, f"Basic {API_TOKEN}"])
async def test_events_endpoint_needs_the_bearer_token(make_client, auth):
    client, runner = await make_client(loops=False)
    headers = {} if auth is None else {"Authorization": auth}
    resp = await client.post("/events", json=shop_event("follow", "U1"), headers=headers)
    assert resp.status == 401
    assert runner.store.friend("U1") is None


async def test_events_json_and_json_lines(make_client):
    client, runner = await make_client(loops=False)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    resp = await client.post("/events", json=[shop_event("follow", "U1"), shop_event("follow", "U2")], headers=auth)
    assert resp.status == 200
    assert await resp.json() == {"applied": 2, "duplicates": 0}
    purchase = shop_event("purchase", "U1", order_id="A-1", amount=5400)
    lines = "\n".join(json.dumps(e) for e in [purchase, purchase, shop_event("view", "U2", product="SKU1")])
    resp = await client.post("/events", data=lines.encode(), headers={**auth, "Content-Type": "application/x-ndjson"})
    assert resp.status == 200
    assert await resp.json() == {"applied": 2, "duplicates": 1}
    resp = await client.post("/events", data=lines.encode(), headers={**auth, "Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await client.post(
        "/events", data=b'{"type": "follow", "friend": "U\xff"}', headers={**auth, "Content-Type": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["error"] == "the body is not UTF-8 text"


async def test_an_order_imported_before_is_answered_as_a_duplicate(make_client):
    # the shop imported its order history, then its connector sends one of those orders live:
    # the answer says it was seen before, and the order counts once
    from engine.runtime.identity import Order, record_orders

    client, runner = await make_client(loops=False)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    assert (await (await client.post("/events", json=shop_event("follow", "U1"), headers=auth)).json())["applied"] == 1
    at = int(dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC).timestamp())
    with runner.store.transaction():
        record_orders(runner.store, [Order("A-9", at, 5400, friend="U1", source="import")], at)
    events = [
        shop_event("purchase", "U1", order_id="A-9", amount=5400),
        shop_event("purchase", "U1", order_id="A-10", amount=100),
    ]
    resp = await client.post("/events", json=events, headers=auth)
    assert resp.status == 200
    assert await resp.json() == {"applied": 1, "duplicates": 1}
    runner.engine.tick(runner.engine.clock())
    assert runner.store.friend("U1")["orders"] == 2


async def test_an_order_whose_refund_came_first_is_applied_not_a_duplicate(make_client):
    # the refund of A-1 arrives before the order (it is kept for it): the order is new to
    # linerules, and the answer says so; it counts, less the refund
    client, runner = await make_client(loops=False)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    await client.post("/events", json=shop_event("follow", "U1"), headers=auth)
    refund = {**shop_event("refund", "U1", order_id="A-1", amount=300), "id": "r-1"}
    assert await (await client.post("/events", json=refund, headers=auth)).json() == {"applied": 1, "duplicates": 0}
    runner.engine.tick(runner.engine.clock())
    order = shop_event("purchase", "U1", order_id="A-1", amount=1000)
    assert await (await client.post("/events", json=order, headers=auth)).json() == {"applied": 1, "duplicates": 0}
    runner.engine.tick(runner.engine.clock())
    friend = runner.store.friend("U1")
    assert (friend["orders"], friend["total_spent"]) == (1, 700)


async def test_a_bad_event_rejects_the_whole_batch(make_client):
    client, runner = await make_client(loops=False)
    lines = "\n".join(
        [
            json.dumps(shop_event("follow", "U7")),
            json.dumps(shop_event("follow", "U8")),
            json.dumps({**shop_event("purchase", "U7", order_id="B-1", amount=10), "at": "2026-11-01T10:00:00"}),
        ]
    )
    resp = await client.post(
        "/events",
        data=lines.encode(),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/jsonl"},
    )
    assert resp.status == 400
    answer = await resp.json()
    assert answer["line"] == 3 and answer["field"] == "at"
    assert "offset" in answer["error"]
    assert runner.store.friend("U7") is None and runner.store.friend("U8") is None


async def test_a_batch_over_the_size_limit_gets_a_json_413_that_says_to_split_it(make_client):
    client, runner = await make_client(loops=False)
    follows = [shop_event("follow", f"U{i:06d}") for i in range(60_000)]
    lines = "\n".join(json.dumps(e) for e in follows).encode()
    assert len(lines) > 4 * 1024 * 1024
    resp = await client.post(
        "/events", data=lines, headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/x-ndjson"}
    )
    assert resp.status == 413
    assert await resp.json() == {
        "error": "the body is larger than 4 MiB: send the events in smaller batches (nothing of this one was stored)",
        "line": None,
        "field": None,
    }
    assert runner.store.friend("U000000") is None


# ----------------------------------------------------------------------------- health, metrics


async def test_healthz_reports_and_turns_unhealthy_without_ticks(make_client):
    client, runner = await make_client(loops=False, tick=1.0)
    runner.tick_once()
    resp = await client.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["dry_run"] is True
    assert body["outbox_backlog"] == 0 and body["timezone"] == "Asia/Tokyo"
    assert body["pending_events"] == 0 and body["friends"] == 0
    assert body["last_tick"].endswith("+09:00")
    runner.last_tick = runner.now() - dt.timedelta(seconds=3.5)
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["problems"] == ["no tick for 3s"]
    ok, _ = health(runner)
    assert not ok


async def test_metrics_in_prometheus_text(emulated):
    client, runner, emulator = emulated
    emulator.inject("push", 500)
    body = webhook_body(line_event("follow", "U1", event_id="01WEBHOOK0010"))
    await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})
    await wait_for(lambda: runner.metrics.value("linerules_pushes_total", outcome="sent"), timeout=10)
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    samples = await scrape(client)
    assert sample(samples, "linerules_events_total", origin="webhook", type="follow") == 1
    assert sample(samples, "linerules_pushes_total", outcome="sent") == 1
    assert sample(samples, "linerules_line_errors_total", status="500") == 1
    assert sample(samples, "linerules_line_retries_total", reason="500") == 1
    assert sample(samples, "linerules_webhook_requests_total", status="200") == 1
    assert sample(samples, "linerules_outbox_backlog") == 0
    assert sample(samples, "linerules_dry_run") == 0
    assert sample(samples, "linerules_sends_in_flight") == 0
    # real histograms: buckets, sum and count
    for name in (
        "linerules_tick_duration_seconds",
        "linerules_send_duration_seconds",
        "linerules_http_request_duration_seconds",
    ):
        assert samples[("TYPE", name)] == "histogram", name
    ticks = sample(samples, "linerules_tick_duration_seconds_count")
    assert ticks >= 1
    assert sample(samples, "linerules_tick_duration_seconds_bucket", le="+Inf") == ticks
    assert sample(samples, "linerules_send_duration_seconds_count", kind="push") == 1
    assert sample(samples, "linerules_send_duration_seconds_sum", kind="push") > 0
    assert sample(samples, "linerules_http_request_duration_seconds_count", route="/callback") == 1
    assert sample(samples, "linerules_http_request_duration_seconds_count", route="/metrics") >= 1
    # prometheus_client's process and Python collectors
    assert sample(samples, "process_resident_memory_bytes") > 0
    assert samples[("TYPE", "python_info")] == "gauge"


async def test_metrics_in_openmetrics_when_the_scraper_asks(make_client):
    client, runner = await make_client(loops=False)
    runner.tick_once()
    resp = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    )
    assert resp.status == 200 and resp.content_type == "application/openmetrics-text"
    text = await resp.text()
    assert text.endswith("# EOF\n")
    assert "# TYPE linerules_tick_duration_seconds histogram" in text


async def test_two_runners_in_one_process_keep_their_own_metrics(tmp_path, make_client, aiohttp_client):
    client, runner = await make_client(loops=False)
    body = webhook_body(line_event("follow", "U7", event_id="01WEBHOOK0011"))
    await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})
    other_rules = write_rules(tmp_path / "other-rules")
    config = RunnerConfig.from_env(
        {"LINE_CHANNEL_SECRET": SECRET},
        rules_dir=other_rules,
        db=tmp_path / "other.db",
        listen="127.0.0.1:0",
        tick_seconds=1,
    )
    other = Runner.open(config)
    try:
        other_client = await aiohttp_client(build_app(other, loops=False))
        assert sample(await scrape(client), "linerules_events_total", type="follow", origin="webhook") == 1
        assert sample(await scrape(other_client), "linerules_events_total", type="follow", origin="webhook") is None
        await other_client.close()
    finally:
        other.close()


def test_gauges_read_at_scrape_time_and_unknown_values_are_left_out():
    metrics = Metrics()
    value = {"now": None}
    metrics.gauge("linerules_x", "A value known later.", lambda: value["now"])
    metrics.events.labels(type='we"ird\\', origin="api").inc()
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["linerules_x"].samples == []
    assert families["linerules_events"].samples[0].labels == {"type": 'we"ird\\', "origin": "api"}
    value["now"] = 3
    assert metrics.value("linerules_x") == 3


# ----------------------------------------------------------------------------- friend-add sources


async def test_join_link_records_the_source_through_line_login(make_client, fake_line_login):
    client, runner = await make_client({"LINE_LOGIN_API_ENDPOINT": str(fake_line_login.make_url("/"))}, loops=False)
    resp = await client.get("/join/qr=shipping", allow_redirects=False)
    assert resp.status == 302
    url = urlsplit(resp.headers["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://access.line.me/oauth2/v2.1/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["response_type"] == "code" and query["client_id"] == "1650000000"
    assert query["redirect_uri"] == "https://shop.example.com/line/login/callback"
    assert query["scope"] == "profile openid" and query["bot_prompt"] == "aggressive"
    resp = await client.get(
        "/login/callback",
        params={"code": "good-code", "state": query["state"], "friendship_status_changed": "true"},
        allow_redirects=False,
    )
    assert resp.status == 302 and resp.headers["Location"] == "/login/thanks"
    assert fake_line_login.seen[0]["redirect_uri"] == "https://shop.example.com/line/login/callback"
    assert runner.store.friend("U77")["source"] == "qr=shipping"
    resp = await client.get("/login/thanks")
    assert resp.status == 200 and "ありがとうございます" in await resp.text()


async def test_login_callback_refuses_forged_state_and_bad_codes(make_client, fake_line_login):
    client, runner = await make_client(
        {
            "LINE_LOGIN_API_ENDPOINT": str(fake_line_login.make_url("/")),
            "LINERULES_JOIN_REDIRECT": "https://shop.example.com/",
        },
        loops=False,
    )
    forged = LoginFlow("1650000000", "not-the-secret", "https://x").sign_state("qr=evil", int(time.time()))
    resp = await client.get("/login/callback", params={"code": "good-code", "state": forged}, allow_redirects=False)
    assert resp.status == 400 and "invalid" in await resp.text()
    location = (await client.get("/join/ad=summer", allow_redirects=False)).headers["Location"]
    state = parse_qs(urlsplit(location).query)["state"][0]
    resp = await client.get("/login/callback", params={"code": "bad-code", "state": state}, allow_redirects=False)
    assert resp.status == 400 and "refused the code" in await resp.text()
    resp = await client.get("/login/callback", params={"error": "access_denied", "state": state}, allow_redirects=False)
    assert resp.status == 400
    assert runner.store.friend("U77") is None
    resp = await client.get("/login/callback", params={"code": "good-code", "state": state}, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "https://shop.example.com/"
    assert runner.store.friend("U77")["source"] == "ad=summer"
    resp = await client.get("/join/not-a-source", allow_redirects=False)
    assert resp.status == 404


def test_login_state_expires():
    flow = LoginFlow("1", "secret", "https://shop.example.com/")
    state = flow.sign_state("qr=shipping", 1_000_000)
    assert flow.verify_state(state, 1_000_000 + 600) == "qr=shipping"
    with pytest.raises(LoginError, match="expired"):
        flow.verify_state(state, 1_000_000 + 601)
    with pytest.raises(LoginError, match="invalid"):
        flow.verify_state(state.replace(".", ".0"), 1_000_000)
    assert flow.redirect_uri == "https://shop.example.com/login/callback"


async def test_join_without_login_settings_is_refused(tmp_path, aiohttp_client, caplog):
    root = write_rules(tmp_path / "plain")
    (root / "settings.yaml").write_text("timezone: Asia/Tokyo\n", encoding="utf-8")
    config = RunnerConfig.from_env({}, rules_dir=root, db=tmp_path / "x.db", tick_seconds=1)
    runner = Runner.open(config)
    try:
        client = await aiohttp_client(build_app(runner, loops=False))
        resp = await client.get("/join/qr=shipping", allow_redirects=False)
        assert resp.status == 503
        assert "login_channel_id" in caplog.text
    finally:
        runner.close()


# ----------------------------------------------------------------------------- clicks, reloads


async def test_tracked_link_records_the_click_and_redirects(make_client):
    client, runner = await make_client(loops=False)
    resp = await client.post(
        "/events", json=shop_event("follow", "U1"), headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    assert resp.status == 200
    runner.tick_once()
    [row] = runner.store.outbox()
    text = row["payload"][0]["text"]
    path = urlsplit(text.split()[-1]).path
    assert path.startswith("/line/c/")
    resp = await client.get(path.removeprefix("/line"), allow_redirects=False)
    assert resp.status == 302
    target = urlsplit(resp.headers["Location"])
    assert (target.netloc, target.path) == ("shop.example.com", "/new")
    assert parse_qs(target.query)["utm_campaign"] == ["welcome"]
    assert sample(await scrape(client), "linerules_clicks_total") == 1
    resp = await client.get("/c/no-such-token", allow_redirects=False)
    assert resp.status == 404


async def test_rule_file_changes_reload_valid_rules_and_refuse_invalid_ones(make_client, rules_dir, caplog):
    caplog.set_level(logging.INFO, logger="linerules")
    client, runner = await make_client(loops=False)
    runner.reload_quiet = 0  # the quiet period before a reload is tested with the process
    runner.tick_once()
    before = runner.project.version
    (rules_dir / "main.rule").write_text(RULES + "rule x\n  when followed\n  then send nope\n", encoding="utf-8")
    runner.tick_once()
    assert runner.project.version == before
    assert "reload (rule files changed) refused" in caplog.text
    assert "main.rule:11:" in caplog.text and "nope" in caplog.text
    (rules_dir / "main.rule").write_text(RULES.replace("reenter always", "reenter never"), encoding="utf-8")
    runner.tick_once()
    assert runner.project.version != before
    assert runner.engine.project is runner.project
    assert f"rules reloaded (version {runner.project.version}" in caplog.text
    samples = await scrape(client)
    assert sample(samples, "linerules_rule_reloads_total", result="invalid") == 1
    assert sample(samples, "linerules_rule_reloads_total", result="ok") == 1


# ----------------------------------------------------------------------------- the lease


@pytest.mark.sqlite_only  # on PostgreSQL the ticks' lease goes with the leader's connection (test_cluster.py)
async def test_a_runner_that_loses_its_lease_stops_with_status_1(make_client):
    client, runner = await make_client(loops=False)
    runner.store.release_lease(runner.owner)
    assert runner.store.acquire_lease("elsewhere:1", int(time.time()), 60)
    assert runner.tick_once() is None
    assert runner.stopping and runner.exit_code == 1
    assert runner.last_tick is None


def test_a_lease_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path, rules_dir):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = f"{socket.gethostname()}:{gone.stdout.strip()}"
    store = Store(str(tmp_path / "taken.db"))
    assert store.acquire_lease(dead, int(time.time()), 600)
    store.close()
    config = RunnerConfig.from_env({}, rules_dir=rules_dir, db=tmp_path / "taken.db", tick_seconds=1)
    runner = Runner.open(config)
    try:
        assert runner.store.lease_holder() == runner.owner
    finally:
        runner.close()
    store = Store(str(tmp_path / "taken.db"))
    assert store.acquire_lease("elsewhere:1", int(time.time()), 600)
    store.close()
    with pytest.raises(StartupError, match=r"another runner \(elsewhere:1\) is using"):
        Runner.open(config)


# ----------------------------------------------------------------------------- retries, docs


async def test_a_failed_push_retries_inside_its_window(make_client, rules_dir):
    (rules_dir / "settings.yaml").write_text(SETTINGS + "window: 09:00-21:00\n", encoding="utf-8")
    client, runner = await make_client(loops=False)
    push = {"id": 1, "kind": "push", "attempts": 3, "rule": "welcome", "reply_token": None}
    evening = dt.datetime(2026, 11, 2, 20, 0, tzinfo=JST)
    assert runner.retry_at(push, evening) == evening + dt.timedelta(seconds=8)
    late = dt.datetime(2026, 11, 2, 20, 59, 58, tzinfo=JST)
    assert runner.retry_at(push, late) == dt.datetime(2026, 11, 3, 9, 0, tzinfo=JST)
    answer = {**push, "kind": "reply", "reply_token": "r1"}
    assert runner.retry_at(answer, late) == late + dt.timedelta(seconds=8)


def test_every_environment_variable_is_documented():
    root = Path(__file__).resolve().parent.parent
    docs = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    names = {
        m
        for path in (root / "engine").rglob("*.py")
        for m in re.findall(r"[\"'](LINE(?:RULES)?_[A-Z_]+)[\"']", path.read_text(encoding="utf-8"))
    }
    assert "LINE_CHANNEL_SECRET" in names and "LINERULES_API_TOKEN" in names
    assert sorted(n for n in names if f"`{n}`" not in docs) == []


# ----------------------------------------------------------------------------- helpers


async def test_sends_the_monthly_quota_stops_wait_for_the_next_days_opening(line_emulator, make_client):
    """SPEC §4: what the quota stops is held, not lost, and tried again at the next day's
    opening (the quota is read again then: a bigger plan releases it)."""
    for user in ("U1", "U2"):
        line_emulator.add_user(user, user)
    line_emulator.quota = 1
    # the runner's clock, not the wall clock: at 23:30 in Tokyo the next opening is too close
    # for the send to be handed back, and the test would depend on the hour it runs at
    clock = ManualClock(dt.datetime(2026, 11, 5, 10, 0, tzinfo=JST), flowing=True)
    client, runner = await make_client(
        {"LINE_CHANNEL_ACCESS_TOKEN": line_emulator.access_token, "LINE_API_ENDPOINT": line_emulator.base_url},
        clock=clock,
    )
    resp = await client.post(
        "/events",
        json=[shop_event("follow", "U1"), shop_event("follow", "U2")],
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert resp.status == 200
    # the row never reached LINE: it is handed back, and its send is decided anew then
    rows = await wait_for(
        lambda: (r := runner.store.outbox()) and len(r) == 2 and {x["status"] for x in r} == {"sent", "returned"} and r
    )
    held = next(r for r in rows if r["status"] == "returned")
    tomorrow = dt.datetime(2026, 11, 6, 0, 0, tzinfo=JST)
    due = runner.store.conn.execute("SELECT due_at FROM intents").fetchall()
    assert [tuple(d) for d in due] == [(int(tomorrow.timestamp()),)]  # no window: 00:00 the next day
    assert "monthly quota" in held["last_error"]
    assert len(line_emulator.delivered) == 1


def test_the_next_days_opening_follows_the_window():
    from engine.language import ir

    runner = Runner.__new__(Runner)
    runner.project = ir.Project(
        rules={}, segments={}, messages={}, sales=(), settings=ir.Settings(window=ir.Window(dt.time(9), dt.time(21)))
    )
    at = runner.next_day_opening({"rule": None}, dt.datetime(2026, 11, 30, 23, 30, tzinfo=JST))
    assert at == dt.datetime(2026, 12, 1, 9, tzinfo=JST)
    at = runner.next_day_opening({"rule": None}, dt.datetime(2026, 11, 30, 0, 30, tzinfo=JST))
    assert at == dt.datetime(2026, 12, 1, 9, tzinfo=JST)


async def test_healthz_counts_sends_waiting_for_the_window(rules_dir, make_client):
    """A send deferred by the delivery window is not an outbox row yet: /healthz still shows it."""
    (rules_dir / "settings.yaml").write_text(SETTINGS + 'window: "09:00-21:00"\n', encoding="utf-8")
    client, runner = await make_client(loops=False, clock=ManualClock(dt.datetime(2026, 11, 5, 22, 40, tzinfo=JST)))
    lines = json.dumps(shop_event("follow", "U1", at="2026-11-05T22:40:00+09:00")).encode()
    resp = await client.post(
        "/events", data=lines, headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/jsonl"}
    )
    assert resp.status == 200
    runner.tick_once()
    body = await (await client.get("/healthz")).json()
    assert body["outbox_backlog"] == 0
    assert body["waiting_sends"] == 1
    assert body["next_waiting_send"] == "2026-11-06T09:00:00+09:00"
    assert sample(await scrape(client), "linerules_waiting_sends") == 1


async def test_one_clock_stamps_events_ticks_lease_claims_and_outcomes(line_emulator, make_client):
    """Everything the runner writes is stamped by the runner's clock, none by the wall clock."""
    line_emulator.add_user("U1", "Hanako")
    clock = ManualClock(dt.datetime(2026, 11, 5, 10, 0, tzinfo=JST))
    client, runner = await make_client(
        {"LINE_CHANNEL_ACCESS_TOKEN": line_emulator.access_token, "LINE_API_ENDPOINT": line_emulator.base_url},
        loops=False,
        clock=clock,
    )
    start = int(clock.time())
    ours = runner.store.dispatch_lease(runner.owner)  # the lease its claims are fenced by
    lease = runner.store.conn.execute("SELECT expires_at FROM lease WHERE name = ?", (ours,)).fetchone()[0]
    assert lease == start + runner.config.lease_ttl  # taken at the clock's time
    body = webhook_body({**line_event("follow", "U1", event_id="01CLOCK0001"), "timestamp": start * 1000})
    assert (await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})).status == 200
    assert runner.store.conn.execute("SELECT received_at FROM events").fetchone()[0] == start
    clock.advance(5)
    runner.tick_once()
    assert runner.last_tick == clock.now()
    lease = runner.store.conn.execute("SELECT expires_at FROM lease WHERE name = 'runner'").fetchone()[0]
    assert lease == start + 5 + runner.config.lease_ttl  # the ticks' lease: renewed (PostgreSQL: taken) by the tick
    [row] = runner.store.outbox()
    assert row["created_at"] == start + 5
    clock.advance(1)
    assert await runner.dispatch_once() == 1
    [row] = runner.store.outbox()
    assert (row["status"], row["claimed_at"], row["sent_at"]) == ("sent", start + 6, start + 6)
    assert len(line_emulator.inbox("U1")) == 1
    assert runner.dispatcher.clock == clock.time  # the quota month, reply deadlines
    clock.advance(30)  # no tick for 31 s by that clock
    resp = await client.get("/healthz")
    assert resp.status == 503 and (await resp.json())["problems"] == ["no tick for 31s"]


FLAGSHIP_SETTINGS = 'timezone: Asia/Tokyo\nwindow: "09:00-21:00"\n'
FLAGSHIP_MESSAGES = 'coupon15: "15%OFFクーポン"\n'
FLAGSHIP_RULES = """\
rule welcome
  when followed
  exit when tagged stop
  then
    wait 1d
    send coupon15 if not purchased
"""


async def test_flagship_coupon_is_decided_at_the_window_opening(rules_dir, line_emulator, make_client):
    """Follows at 22:40 (signed webhooks), `wait 1d` ends at 22:40 outside the window; by the
    09:00 opening one friend bought, one blocked and one left by `exit when`: only the fourth
    friend gets the coupon, once, at 09:00 Tokyo."""
    (rules_dir / "settings.yaml").write_text(FLAGSHIP_SETTINGS, encoding="utf-8")
    (rules_dir / "messages.yaml").write_text(FLAGSHIP_MESSAGES, encoding="utf-8")
    (rules_dir / "main.rule").write_text(FLAGSHIP_RULES, encoding="utf-8")
    for user in ("U1", "U2", "U3", "U4"):
        line_emulator.add_user(user, user)
    clock = ManualClock(dt.datetime(2026, 11, 5, 22, 40, tzinfo=JST))
    client, runner = await make_client(
        {"LINE_CHANNEL_ACCESS_TOKEN": line_emulator.access_token, "LINE_API_ENDPOINT": line_emulator.base_url},
        loops=False,
        clock=clock,
    )

    def stamp(event: dict) -> dict:
        return {**event, "timestamp": int(clock.time() * 1000)}

    async def webhook(*events: dict) -> None:
        body = webhook_body(*(stamp(e) for e in events))
        assert (await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})).status == 200

    async def shop(*events: dict) -> None:
        data = "\n".join(json.dumps(e) for e in events).encode()
        resp = await client.post(
            "/events", data=data, headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/jsonl"}
        )
        assert resp.status == 200

    await webhook(*(line_event("follow", u, event_id=f"01FOLLOW{u}") for u in ("U1", "U2", "U3", "U4")))
    runner.tick_once()
    for hour in ("2026-11-06T22:40", "2026-11-07T08:00"):
        clock.set(dt.datetime.fromisoformat(hour + "+09:00"))
        runner.tick_once()
    await shop(
        {"type": "purchase", "friend": "U1", "at": "2026-11-07T08:00:00+09:00", "order_id": "A-1", "amount": 3000},
        {"type": "tag", "friend": "U3", "at": "2026-11-07T08:00:00+09:00", "add": ["stop"]},
    )
    await webhook(line_event("unfollow", "U2", event_id="01UNFOLLOWU2"))
    runner.tick_once()
    await runner.dispatch_once()
    assert all(line_emulator.inbox(u) == [] for u in ("U1", "U2", "U3", "U4"))
    clock.set(dt.datetime(2026, 11, 7, 9, 0, tzinfo=JST))
    runner.tick_once()
    await runner.dispatch_once()
    await wait_for(lambda: line_emulator.inbox("U4"), timeout=10)
    clock.set(dt.datetime(2026, 11, 7, 10, 0, tzinfo=JST))
    runner.tick_once()
    assert await runner.dispatch_once() == 0  # nothing more to send an hour later
    assert [m["text"] for m in line_emulator.inbox("U4")] == ["15%OFFクーポン"]
    assert all(line_emulator.inbox(u) == [] for u in ("U1", "U2", "U3"))


ORDER_RULES = """\
rule welcome when followed then send greeting
rule notice when tagged autumn then send notice
"""


async def test_a_friends_pushes_go_one_after_the_other_in_their_order(rules_dir, line_emulator, make_client):
    """Two pushes for U1 wait for the 09:00 opening (the welcome from 22:40, a notice from 08:00).
    LINE fails U1's first request once (500): the notice waits for the welcome's retry instead of
    overtaking it, and U1's inbox reads welcome, then notice."""
    (rules_dir / "settings.yaml").write_text(FLAGSHIP_SETTINGS, encoding="utf-8")
    (rules_dir / "messages.yaml").write_text('greeting: "ようこそ"\nnotice: "お知らせ"\n', encoding="utf-8")
    (rules_dir / "main.rule").write_text(ORDER_RULES, encoding="utf-8")
    for user in ("U1", "U2"):
        line_emulator.add_user(user, user)
    clock = ManualClock(dt.datetime(2026, 11, 5, 12, 0, tzinfo=JST))
    client, runner = await make_client(
        {"LINE_CHANNEL_ACCESS_TOKEN": line_emulator.access_token, "LINE_API_ENDPOINT": line_emulator.base_url},
        loops=False,
        clock=clock,
    )

    async def follow(friend: str) -> None:
        event = {**line_event("follow", friend, event_id=f"01ORDER{friend}"), "timestamp": int(clock.time() * 1000)}
        body = webhook_body(event)
        assert (await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})).status == 200
        runner.tick_once()
        await runner.dispatch_once()

    await follow("U2")  # welcomed at once, at noon
    clock.set(dt.datetime(2026, 11, 5, 22, 40, tzinfo=JST))
    await follow("U1")  # the window is closed: the welcome waits for 09:00
    clock.set(dt.datetime(2026, 11, 6, 8, 0, tzinfo=JST))
    data = "\n".join(
        json.dumps({"type": "tag", "friend": f, "at": "2026-11-06T08:00:00+09:00", "add": ["autumn"]})
        for f in ("U1", "U2")
    ).encode()
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/jsonl"}
    assert (await client.post("/events", data=data, headers=headers)).status == 200
    runner.tick_once()
    clock.set(dt.datetime(2026, 11, 6, 9, 0, tzinfo=JST))
    runner.tick_once()
    due = [(r["recipients"], r["messages"]) for r in runner.store.outbox() if r["status"] == "pending"]
    assert [names for to, names in due if to == ["U1"]] == [["greeting"], ["notice"]]
    assert (["U2"], ["notice"]) in due and len(due) == 3
    before = len(line_emulator.requests_to("push"))
    line_emulator.inject("push", 500, count=2)  # the first request of U2 and of U1 (its welcome)
    assert await runner.dispatch_once() == 3
    assert [m["text"] for m in line_emulator.inbox("U1")] == ["ようこそ", "お知らせ"]
    assert [m["text"] for m in line_emulator.inbox("U2")] == ["ようこそ", "お知らせ"]
    sent = [
        (r.status, json.loads(r.body)["to"], json.loads(r.body)["messages"][0]["text"])
        for r in line_emulator.requests_to("push")[before:]
    ]
    assert sorted(sent[:2]) == [(500, "U1", "ようこそ"), (500, "U2", "お知らせ")]
    # U1's notice was not sent while its welcome waited for the retry: only after it went
    assert [text for _status, to, text in sent if to == "U1"] == ["ようこそ", "ようこそ", "お知らせ"]


async def test_monthly_quota_sends_five_of_eight_and_the_rest_wait(rules_dir, line_emulator, make_client):
    """`monthly_quota: 5`, eight friends, the Friday broadcast: five pushes at 20:00 Tokyo, the
    other three wait (shown by /healthz) and go at the first opening of the next month."""
    (rules_dir / "settings.yaml").write_text(FLAGSHIP_SETTINGS + "monthly_quota: 5\n", encoding="utf-8")
    (rules_dir / "messages.yaml").write_text('weekly: "今週のおすすめ"\n', encoding="utf-8")
    (rules_dir / "main.rule").write_text('rule weekly when schedule "0 20 * * 5" then send weekly\n', encoding="utf-8")
    users = [f"U{i}" for i in range(1, 9)]
    for user in users:
        line_emulator.add_user(user, user)
    clock = ManualClock(dt.datetime(2026, 11, 1, 10, 0, tzinfo=JST))
    client, runner = await make_client(
        {"LINE_CHANNEL_ACCESS_TOKEN": line_emulator.access_token, "LINE_API_ENDPOINT": line_emulator.base_url},
        loops=False,
        clock=clock,
    )
    body = webhook_body(
        *({**line_event("follow", u, event_id=f"01FOLLOW{u}"), "timestamp": int(clock.time() * 1000)} for u in users)
    )
    assert (await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})).status == 200

    async def at(when: str) -> list[str]:
        clock.set(dt.datetime.fromisoformat(when))
        runner.tick_once()
        await runner.dispatch_once()
        return [u for u in users for _ in line_emulator.inbox(u)]

    assert await at("2026-11-01T10:00:00+09:00") == []
    assert await at("2026-11-06T20:00:00+09:00") == users[:5]
    assert await at("2026-11-07T09:00:00+09:00") == users[:5]
    health_body = await (await client.get("/healthz")).json()
    assert health_body["waiting_sends"] == 3
    # December's quota: first the three held since 6 November, then two of the later Fridays'
    december = await at("2026-12-01T09:00:00+09:00")
    assert sorted(set(december) - set(users[:5])) == users[5:] and len(december) == 10


@pytest.mark.sqlite_only  # the same database opened again by a second runner (test_cluster.py: a leader's term)
async def test_a_runner_started_on_edited_rules_carries_the_friends_in_flight_over(tmp_path, make_client):
    """Stop the runner, change `wait 1d` to `wait 2d`, start it again: the friend waiting on the old
    wait goes on at the step after it, at its old due time, as a live reload would have it."""
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "settings.yaml").write_text("timezone: Asia/Tokyo\n", encoding="utf-8")
    (folder / "messages.yaml").write_text('a: "first"\nb: "second"\n', encoding="utf-8")
    (folder / "main.rule").write_text("rule r when followed then send a wait 1d send b\n", encoding="utf-8")
    clock = ManualClock(dt.datetime(2026, 11, 5, 10, 0, tzinfo=JST))
    client, runner = await make_client(loops=False, rules=folder, clock=clock)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    resp = await client.post("/events", json=shop_event("follow", "U1", at="2026-11-05T10:00:00+09:00"), headers=auth)
    assert resp.status == 200
    runner.tick_once()
    assert [r["messages"] for r in runner.store.outbox()] == [["a"]]
    await client.close()
    runner.close()
    (folder / "main.rule").write_text("rule r when followed then send a wait 2d send b\n", encoding="utf-8")
    clock.set(dt.datetime(2026, 11, 6, 10, 0, tzinfo=JST))
    _client, again = await make_client(loops=False, rules=folder, clock=clock)
    again.tick_once()
    assert [r["messages"] for r in again.store.outbox()] == [["a"], ["b"]]
