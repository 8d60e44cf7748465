"""Dispatcher throughput against the LINE emulator at LINE's real rate limits (loopback only).

Runs the emulator as a subprocess on 127.0.0.1 (its own core), then:
  1. the ceilings: the emulator answering a bare aiohttp client, and the dispatcher with no
     rate limit on either side (what bounds the figures below);
  2. pushes for a few seconds at LINE's 2,000/s push limit, as a fraction of it;
  3. a multicast to 100,000 friends (200 requests of 500) at the 200 requests/s limit.
Every phase is bounded in count and time; the whole run stops by itself.

    python benchmarks/dispatch.py [--seconds 4]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.line.dispatch import Dispatcher, OutboxItem  # noqa: E402
from engine.testing.line_emulator import DEFAULT_ACCESS_TOKEN, synthetic_user_id  # noqa: E402
from engine.line.ratelimit import LINE_RATE_LIMITS  # noqa: E402

HOST = "127.0.0.1"
PUSH_LIMIT = LINE_RATE_LIMITS["push"].rate
MULTICAST_LIMIT = LINE_RATE_LIMITS["multicast"].rate
FRIENDS = 100_000
TEXT = [{"type": "text", "text": "週末セール開催中！ 15% OFF クーポンをどうぞ"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """An emulator subprocess on a free loopback port; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.testing.line_emulator", "--host", HOST, "--port", str(port), *args],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening" not in line:
            raise SystemExit(f"the emulator did not start: {line!r}")
        yield f"http://{HOST}:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def stats(base_url: str) -> dict:
    with urllib.request.urlopen(f"{base_url}/_emulator/stats", timeout=10) as resp:
        return json.load(resp)


def pushes(count: int, start: int = 0) -> list[OutboxItem]:
    return [OutboxItem(start + i, "push", [synthetic_user_id(i % 1000)], TEXT, str(uuid.uuid4()))
            for i in range(count)]


async def bare_ceiling(base_url: str, seconds: float, concurrency: int = 64) -> float:
    """Requests per second the emulator answers for a minimal aiohttp client."""
    headers = {"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"}
    body = {"to": synthetic_user_id(0), "messages": TEXT}
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with s.post(f"{base_url}/v2/bot/message/push", json=body,
                                  headers={**headers, "X-Line-Retry-Key": str(uuid.uuid4())}) as r:
                    await r.read()
                    done += r.status == 200
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


async def dispatcher_rate(base_url: str, items: list[OutboxItem], **options) -> tuple[float, list]:
    async with Dispatcher(DEFAULT_ACCESS_TOKEN, base_url, **options) as dispatcher:
        await dispatcher.refresh_quota()
        started = time.monotonic()
        results = await dispatcher.send(items)
        elapsed = time.monotonic() - started
    return elapsed, results


async def run(seconds: float) -> None:
    print(f"dispatch benchmark: emulator subprocess on {HOST}, line-bot-sdk async client, "
          f"Python {sys.version.split()[0]}")

    # 1. ceilings: no rate limits anywhere
    with emulator_process("--friends", "1000", "--rate-scale", "100") as url:
        bare = await bare_ceiling(url, min(2.0, seconds))
        n = int(2 * PUSH_LIMIT)
        elapsed, _ = await dispatcher_rate(url, pushes(n), rates={"push": PUSH_LIMIT * 100})
        own = n / elapsed
    print(f"  emulator ceiling (bare aiohttp client, no limits):   {bare:8,.0f} pushes/s")
    print(f"  dispatcher ceiling (line-bot-sdk, no limits):         {own:8,.0f} pushes/s")

    # 2 and 3: LINE's real limits on both sides
    with emulator_process("--friends", str(FRIENDS)) as url:
        n = int(PUSH_LIMIT * seconds)
        elapsed, results = await dispatcher_rate(url, pushes(n))
        sent = sum(r.outcome == "sent" for r in results)
        rate = sent / elapsed
        after_push = stats(url)
        throttled = after_push["requests"].get("push", {}).get("429", 0)
        print(f"  push: {sent:,} of {n:,} sent in {elapsed:.2f} s = {rate:,.0f}/s "
              f"= {rate / PUSH_LIMIT:.3f} of LINE's {PUSH_LIMIT:,.0f}/s limit "
              f"(goal 0.95; 429s from the emulator: {throttled})")
        if rate < 0.95 * PUSH_LIMIT:
            bound = "the dispatcher's CPU" if own < bare else "the emulator's CPU"
            print(f"    below the goal: bounded by {bound} on this machine "
                  f"(dispatcher ceiling {own:,.0f}/s, emulator ceiling {bare:,.0f}/s)")

        users = [synthetic_user_id(i) for i in range(FRIENDS)]
        items = [OutboxItem(i, "multicast", users[i * 500:(i + 1) * 500], TEXT, str(uuid.uuid4()))
                 for i in range(FRIENDS // 500)]
        elapsed, results = await dispatcher_rate(url, items)
        recipients = sum(r.recipients for r in results if r.outcome == "sent")
        after = stats(url)
        delivered = after["delivered"] - after_push["delivered"]
        throttled = after["requests"].get("multicast", {}).get("429", 0)
        req_rate = sum(r.outcome == "sent" for r in results) / elapsed
        print(f"  multicast: {len(items)} requests of 500 to {FRIENDS:,} friends in {elapsed:.2f} s"
              f" = {recipients / elapsed:,.0f} recipients/s; {req_rate:,.0f} requests/s"
              f" = {req_rate / MULTICAST_LIMIT:.3f} of LINE's {MULTICAST_LIMIT:,.0f}/s limit"
              f" (delivered {delivered:,}; 429s: {throttled})")
        print("  (each run starts with a full client bucket: a burst of 1/20 s of requests "
              "before the steady rate)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="push phase length (max 30)")
    args = parser.parse_args()
    seconds = max(1.0, min(args.seconds, 30.0))
    asyncio.run(asyncio.wait_for(run(seconds), timeout=60 + 4 * seconds))


if __name__ == "__main__":
    main()
