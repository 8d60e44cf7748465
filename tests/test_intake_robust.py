"""Intake that never lets one bad item stop everyone (issue 9 points 1, 2, 8, 9; issue 8
point 15): bounds at intake, rule-word event types refused everywhere, hostile headers and
text, big bodies off the event loop. Through the real aiohttp server on loopback, the real CLI,
and the real engine on SQLite files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.cli import cli
from serverkit import API_TOKEN, line_event, shop_event, sign, webhook_body

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


# ----------------------------------------------------------------------------- rule words (8.15)

RULE_WORDS = {
    "carted": "cart",
    "purchased": "purchase",
    "viewed": "view",
    "followed": "follow",
    "unfollowed": "unfollow",
    "blocked": "unfollow",
    "clicked": "click",
    "tagged": "tag",
    "order": "purchase",
}


@pytest.mark.parametrize("word, right", sorted(RULE_WORDS.items()))
async def test_post_events_refuses_a_rule_word_type_with_the_right_name(make_client, word, right):
    client, runner = await make_client(loops=False)
    resp = await client.post("/events", json=[shop_event("follow", "U1"), shop_event(word, "U1")], headers=AUTH)
    assert resp.status == 400
    answer = await resp.json()
    assert (answer["line"], answer["field"]) == (2, "type")
    assert answer["error"].endswith(f"(did you mean `{right}`?)")
    assert runner.store.friend("U1") is None  # nothing of the batch is stored


def test_simulate_refuses_a_rule_word_type(tmp_path, rules_dir):
    timeline = tmp_path / "t.jsonl"
    timeline.write_text(
        json.dumps(shop_event("follow", "U1")) + "\n" + json.dumps(shop_event("carted", "U1", product="SKU1")) + "\n",
        encoding="utf-8",
    )
    run = subprocess.run(
        [sys.executable, "-m", "engine.cli", "simulate", str(timeline), "--rules", str(rules_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and run.stdout == ""
    assert f'{timeline}: line 2: field "type": unknown type `carted`' in run.stderr
    assert "(did you mean `cart`?)" in run.stderr and "Traceback" not in run.stderr


def test_linerules_test_refuses_a_rule_word_type(tmp_path, rules_dir):
    from click.testing import CliRunner

    tests = rules_dir / "tests"
    tests.mkdir()
    (tests / "welcome.yaml").write_text(
        'name: welcome\nevents:\n  - {type: followed, friend: U1, at: "2026-11-01T10:00:00+09:00"}\nexpect: []\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["test", str(rules_dir)])
    assert result.exit_code == 1
    assert "welcome.yaml:3:" in result.output
    assert "unknown type `followed`" in result.output and "(did you mean `follow`?)" in result.output


# ----------------------------------------------------------------------------- hostile HTTP (9.8)


async def raw_request(client, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (no client library would send a non-UTF-8 header); return the
    status and the body of the answer."""
    import asyncio

    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("value", [b"\xff\xfe", b"Bearer \xe3\x81", b"Bearer shop-token\xff", "Bearer シ".encode()])
async def test_a_non_utf8_authorization_header_is_401(make_client, value, caplog):
    client, runner = await make_client(loops=False)
    body = json.dumps(shop_event("follow", "U1")).encode()
    status, answer = await raw_request(
        client,
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: " + value + b"\r\n",
        body,
    )
    assert status == 401 and json.loads(answer) == {"error": "missing or wrong bearer token"}
    assert runner.store.friend("U1") is None
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("value", [b"\xff\xfe", b"abc\xe3\x81=", "署名".encode()])
async def test_a_non_utf8_signature_header_is_401(make_client, value, caplog):
    client, runner = await make_client(loops=False)
    body = webhook_body(line_event("follow", "U1", event_id="01SIG"))
    status, answer = await raw_request(
        client,
        b"POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-line-signature: " + value + b"\r\n",
        body,
    )
    assert status == 401 and json.loads(answer) == {"error": "invalid signature"}
    assert runner.store.friend("U1") is None
    assert "Traceback" not in caplog.text


async def test_a_signed_webhook_with_a_lone_surrogate_keeps_every_event(make_client):
    client, runner = await make_client(loops=False)
    events = [
        line_event(
            "message",
            "U1",
            event_id="01A",
            reply_token="r1",
            message={"id": "1", "type": "text", "text": "PLACEHOLDER"},
        ),
        line_event("follow", "U2", event_id="01B", reply_token="r2"),
        line_event("postback", "U3", event_id="01C", reply_token="r3", postback={"data": "a=1"}),
    ]
    # the JSON escape LINE's JSON could carry: a high surrogate without its partner, then a pair
    body = webhook_body(*events).replace(b"PLACEHOLDER", b"\\ud800 ok \\ud83d\\ude00")
    resp = await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})
    assert resp.status == 200
    rows = runner.store.conn.execute("SELECT friend, type, data FROM events ORDER BY friend").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("U1", "message"), ("U2", "follow"), ("U3", "postback")]
    assert json.loads(rows[0][2])["text"] == "\ufffd ok \U0001f600"


# ----------------------------------------------------------------------------- big bodies (9.9)

#: Slowest answer to /healthz or a small webhook allowed while big bodies are parsed and stored,
#: as a share of the time the big bodies take in the same run (so that a slow or loaded machine
#: slows both alike). Before, the event loop was held for the whole parse: a share near 1. Now
#: a small webhook waits at most for one part of a big body (:data:`STORE_CHUNK` events);
#: the figures in milliseconds are printed (p99 about 200 ms of some 3 s on a quiet machine).
LATENCY_SHARE = 0.5


def big_webhook(n: int) -> bytes:
    events = [
        {
            "type": "follow",
            "mode": "active",
            "timestamp": 1762000000000 + i,
            "source": {"type": "user", "userId": f"U{i:07d}"},
            "webhookEventId": f"01BIG{i:07d}",
            "replyToken": f"r{i}",
        }
        for i in range(n)
    ]
    return json.dumps({"destination": "Ubot", "events": events}, separators=(",", ":")).encode()


def big_batch(n: int, *, ids: bool = True) -> bytes:
    return "\n".join(
        json.dumps(
            {
                "type": "view",
                "friend": f"S{i % 97}",
                "at": "2026-11-01T10:00Z",
                "product": f"P{i % 100}",
                **({"id": f"v{i}"} if ids else {}),
            },
            separators=(",", ":"),
        )
        for i in range(n)
    ).encode()


@pytest.mark.timing
async def test_big_bodies_do_not_hold_up_healthz_or_other_webhooks(make_client):
    import asyncio
    import time

    client, runner = await make_client(loops=False)
    webhook, batch = big_webhook(20000), big_batch(48260)
    assert len(webhook) < 4 * 1024 * 1024 and len(batch) < 4 * 1024 * 1024
    latencies: list[tuple[str, float, float]] = []  # kind, seconds, when answered
    done = asyncio.Event()

    async def probe() -> None:
        n = 0
        while not done.is_set():
            started = time.perf_counter()
            await (await client.get("/healthz")).read()
            latencies.append(("healthz", time.perf_counter() - started, time.perf_counter()))
            n += 1
            small = webhook_body(
                line_event(
                    "message", "U-small", event_id=f"01SMALL{n}", message={"id": str(n), "type": "text", "text": "hi"}
                )
            )
            started = time.perf_counter()
            resp = await client.post("/callback", data=small, headers={"x-line-signature": sign(small)})
            assert resp.status == 200
            latencies.append(("webhook", time.perf_counter() - started, time.perf_counter()))
            await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    big = await asyncio.gather(
        client.post("/callback", data=webhook, headers={"x-line-signature": sign(webhook)}),
        client.post("/events", data=batch, headers={**AUTH, "Content-Type": "application/x-ndjson"}),
    )
    ended = time.perf_counter()
    took = ended - started
    done.set()
    await prober
    assert [r.status for r in big] == [200, 200]
    assert (await big[1].json()) == {"applied": 48260, "duplicates": 0}
    count = runner.store.conn.execute("SELECT COUNT(*) FROM events WHERE type = 'follow'").fetchone()[0]
    assert count == 20000
    slowest = max(latencies, key=lambda x: x[1])
    for kind in ("healthz", "webhook"):
        values = sorted(v for k, v, _ in latencies if k == kind)
        print(
            f"{kind}: p50 {values[len(values) // 2] * 1000:.0f} ms, "
            f"p99 {values[int(len(values) * 0.99)] * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms"
        )
    print(f"big bodies took {took:.2f} s; {len(latencies)} probes, slowest {slowest[0]} {slowest[1] * 1000:.0f} ms")
    # the probes were answered while the big bodies were handled, not after them
    during = [k for k, _, at in latencies if started < at < ended]
    assert during.count("healthz") >= 5 and during.count("webhook") >= 5, during
    assert slowest[1] < took * LATENCY_SHARE, (slowest, took)
