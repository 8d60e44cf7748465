"""Webhook latency while big ticks run: the real runner and HTTP server on 127.0.0.1.

    python benchmarks/webhook_latency.py                    # 200,000 friends, 20 s of webhooks
    python benchmarks/webhook_latency.py --friends 1000000 --seconds 30

A database with a large population and a rule with a condition trigger (checked on every
tick, the default), ticks back to back, and signed message webhooks fired every 50 ms
meanwhile. Prints p50/p99/max of the webhook answer times (LINE wants 200 within about 2 s),
the ticks that ran and their longest duration, and the longest write transaction of the tick
thread and of the HTTP side. Dry-run: nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runner.runloop import Runner, RunnerConfig  # noqa: E402
from engine.runner.server import build_app  # noqa: E402
from engine.runtime.store import Store  # noqa: E402

SECRET = "bench-secret"
SETTINGS = "timezone: Asia/Tokyo\n"
MESSAGES = 'vip_thanks: "いつもありがとうございます"\ncoupon_reply: "クーポンはこちら"\n'
RULES = """\
rule vip
  when total_spent >= 20000
  then send vip_thanks

rule keyword
  when message "coupon"
  reenter always
  then send coupon_reply
"""


def populate(path: str, n: int) -> None:
    """``n`` current friends; spend grows with the friend number, so the condition holds for a
    part of them and is evaluated for all of them on every tick."""
    store = Store(path)
    now = int(time.time())
    with store.transaction() as c:
        c.execute(
            "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :n - 1) "
            "INSERT INTO friends(id, followed_at, seen_at, orders, total_spent, created_at) "
            "SELECT printf('U%08d', i), :now - 86400, :now - 86400, i % 5, (i * 7919) % 30000, :now - 86400 "
            "FROM seq",
            {"n": n, "now": now},
        )
    store.close()


def signed(body: bytes) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()


def webhook(i: int) -> bytes:
    event = {
        "type": "message",
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "source": {"type": "user", "userId": f"U{i % 1000:08d}"},
        "webhookEventId": f"01BENCH{i:010d}",
        "deliveryContext": {"isRedelivery": False},
        "replyToken": f"rt-{i}",
        "message": {"type": "text", "id": str(i), "text": "coupon please"},
    }
    return json.dumps({"destination": "Ubot", "events": [event]}).encode()


async def fire(url: str, seconds: float, every: float) -> list[float]:
    """Post signed webhooks for ``seconds``; returns the answer times (each must be 200)."""
    times: list[float] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(i: int) -> None:
            body = webhook(i)
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"x-line-signature": signed(body)}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"webhook answered {resp.status}")
            times.append(time.perf_counter() - started)

        tasks = []
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            tasks.append(asyncio.ensure_future(one(i)))
            i += 1
            await asyncio.sleep(every)
        await asyncio.gather(*tasks)
    return times


async def bench(folder: Path, db: str, seconds: float, every: float) -> None:
    config = RunnerConfig.from_env(
        {"LINE_CHANNEL_SECRET": SECRET}, rules_dir=folder, db=db, listen="127.0.0.1:0", tick_seconds=0.1
    )
    runner = Runner.open(config)
    durations: list[float] = []
    started_ticks: list[float] = []
    tick = runner.engine.tick

    def timed_tick(now, **kwargs):
        started = time.perf_counter()
        started_ticks.append(started)
        try:
            return tick(now, **kwargs)
        finally:
            durations.append(time.perf_counter() - started)

    runner.engine.tick = timed_tick
    web_runner = web.AppRunner(build_app(runner, loops=False), access_log=None)
    loops = None
    try:
        await web_runner.setup()
        site = web.TCPSite(web_runner, "127.0.0.1", 0)
        await site.start()
        host, port = web_runner.addresses[0][:2]
        loops = asyncio.ensure_future(runner.run())
        while not started_ticks:  # fire from the first (heaviest) tick on
            await asyncio.sleep(0.01)
        times = await fire(f"http://{host}:{port}/callback", seconds, every)
    finally:
        runner.stop()
        if loops is not None:
            await loops
        await web_runner.cleanup()
        runner.close()
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000  # noqa: E731
    print(
        f"webhooks: {len(times)} answered 200; p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, "
        f"max {times[-1] * 1000:.1f} ms (LINE wants under 2000 ms)"
    )
    print(f"ticks: {len(durations)}, mean {statistics.mean(durations):.2f}s, longest {max(durations):.2f}s")
    print(
        f"longest write transaction: tick thread {runner.engine.store.longest_write * 1000:.0f} ms, "
        f"HTTP side {runner.store.longest_write * 1000:.0f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--friends", type=int, default=200_000, help="population size (default 200,000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of webhooks (default 20)")
    parser.add_argument("--every", type=float, default=0.05, help="seconds between webhooks (default 0.05)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rules"
        folder.mkdir()
        (folder / "settings.yaml").write_text(SETTINGS, encoding="utf-8")
        (folder / "messages.yaml").write_text(MESSAGES, encoding="utf-8")
        (folder / "main.rule").write_text(RULES, encoding="utf-8")
        db = str(Path(tmp) / "bench.db")
        started = time.perf_counter()
        populate(db, args.friends)
        print(f"population: {args.friends:,} friends written in {time.perf_counter() - started:.1f}s")
        asyncio.run(bench(folder, db, args.seconds, args.every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
