"""Dispatcher throughput against the LINE emulator at LINE's real rate limits (loopback only).

Runs the emulator as a subprocess on 127.0.0.1 (its own core), then:
  1. the ceilings: the emulator answering a bare aiohttp client, and the dispatcher with no
     rate limit on either side (what bounds the figures below);
  2. pushes for a few seconds at LINE's 2,000/s push limit, as a fraction of it;
  3. a multicast to 100,000 friends (200 requests of 500) at the 200 requests/s limit;
  4. a broadcast to ``--broadcast`` friends (default 1,000,000) the way it happens in
     production: a rule sends one message to every friend, the engine's tick writes the
     outbox (multicasts of 500 with a delivery row per friend), and the runner's dispatch loop
     sends it and stores every outcome. In the same run, on fresh emulators, the same
     requests go out from a bare aiohttp client (pre-encoded bodies, the same client-side
     pacing) and from the bare dispatcher; the runner's recipients/s are printed against
     both, with the busiest second the emulator saw (LINE's limit must hold in every second).
Every phase is bounded in count and time; the whole run stops by itself.

    python benchmarks/dispatch.py [--seconds 4] [--broadcast 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.line.dispatch import Dispatcher, OutboxItem  # noqa: E402
from engine.line.limits import MAX_MULTICAST, RATE_LIMITS  # noqa: E402
from engine.line.ratelimit import client_bucket  # noqa: E402
from engine.testing.line_emulator import DEFAULT_ACCESS_TOKEN, busiest, synthetic_user_id  # noqa: E402

HOST = "127.0.0.1"
PUSH_LIMIT = RATE_LIMITS["push"].rate
MULTICAST_LIMIT = RATE_LIMITS["multicast"].rate
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
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
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
    return [OutboxItem(start + i, "push", [synthetic_user_id(i % 1000)], TEXT, str(uuid.uuid4())) for i in range(count)]


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
                async with s.post(
                    f"{base_url}/v2/bot/message/push",
                    json=body,
                    headers={**headers, "X-Line-Retry-Key": str(uuid.uuid4())},
                ) as r:
                    await r.read()
                    done += r.status == 200

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


async def dispatcher_rate(
    base_url: str, items: list[OutboxItem], sent: list[float] | None = None, **options
) -> tuple[float, list]:
    async with Dispatcher(DEFAULT_ACCESS_TOKEN, base_url, **options) as dispatcher:
        await dispatcher.refresh_quota()
        if sent is not None:
            grants = log_grants(dispatcher._buckets["multicast"])
        started = time.monotonic()
        results = await dispatcher.send(items)
        elapsed = time.monotonic() - started
        if sent is not None:
            sent.extend(grants)
    return elapsed, results


async def run(seconds: float) -> None:
    print(
        f"dispatch benchmark: emulator subprocess on {HOST}, line-bot-sdk async client, Python {sys.version.split()[0]}"
    )

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
        print(
            f"  push: {sent:,} of {n:,} sent in {elapsed:.2f} s = {rate:,.0f}/s "
            f"= {rate / PUSH_LIMIT:.3f} of LINE's {PUSH_LIMIT:,.0f}/s limit "
            f"(goal 0.95; 429s from the emulator: {throttled})"
        )
        if rate < 0.95 * PUSH_LIMIT:
            bound = "the dispatcher's CPU" if own < bare else "the emulator's CPU"
            print(
                f"    below the goal: bounded by {bound} on this machine "
                f"(dispatcher ceiling {own:,.0f}/s, emulator ceiling {bare:,.0f}/s)"
            )

        users = [synthetic_user_id(i) for i in range(FRIENDS)]
        items = [
            OutboxItem(i, "multicast", users[i * 500 : (i + 1) * 500], TEXT, str(uuid.uuid4()))
            for i in range(FRIENDS // 500)
        ]
        elapsed, results = await dispatcher_rate(url, items)
        recipients = sum(r.recipients for r in results if r.outcome == "sent")
        after = stats(url)
        delivered = after["delivered"] - after_push["delivered"]
        throttled = after["requests"].get("multicast", {}).get("429", 0)
        req_rate = sum(r.outcome == "sent" for r in results) / elapsed
        print(
            f"  multicast: {len(items)} requests of 500 to {FRIENDS:,} friends in {elapsed:.2f} s"
            f" = {recipients / elapsed:,.0f} recipients/s; {req_rate:,.0f} requests/s"
            f" = {req_rate / MULTICAST_LIMIT:.3f} of LINE's {MULTICAST_LIMIT:,.0f}/s limit"
            f" (delivered {delivered:,}; 429s: {throttled}; busiest second as the emulator "
            f"handled them: {after['busiest_second'].get('multicast', 0)})"
        )
        print("  (client buckets start empty and let at most the limit go in any 1.02 s)")


# ----------------------------------------------------------------------------- 4. broadcast

#: Friday 20:00 in Tokyo, a week before the machine's clock: the moment the rule sends.
BROADCAST_RULE = """rule broadcast "everyone, Friday 20:00"
  when schedule "0 20 * * 5"
  then send sale
"""
BROADCAST_MESSAGES = 'sale: "週末セール開催中！ 15% OFF クーポンをどうぞ https://shop.example.jp/sale"\n'


def broadcast_outbox(folder: Path, friends: int) -> tuple[object, float, float]:
    """A rule folder and database in ``folder`` with ``friends`` friends, and the engine's
    tick at the rule's moment: the outbox the runner is to send. Returns (that moment,
    seconds to write the friends, seconds of the tick)."""
    from engine.interpreter import Engine
    from engine.language import timeutil
    from engine.language.project import load_project
    from engine.runtime.store import Store

    rules = folder / "rules"
    rules.mkdir()
    (rules / "settings.yaml").write_text("timezone: Asia/Tokyo\n", encoding="utf-8")
    (rules / "messages.yaml").write_text(BROADCAST_MESSAGES, encoding="utf-8")
    (rules / "broadcast.rule").write_text(BROADCAST_RULE, encoding="utf-8")
    project = load_project(str(rules)).project
    assert project is not None, "the broadcast rule does not validate"
    tz = project.settings.tz
    today = dt.datetime.now(tz).date()
    friday = today - dt.timedelta(days=(today.weekday() - 4) % 7 + 7)
    moment = dt.datetime.combine(friday, dt.time(20, 0), tz)
    store = Store(str(folder / "linerules.db"))
    started = time.perf_counter()
    with store.transaction() as c:
        c.execute(
            "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :n - 1) "
            "INSERT INTO friends(id, followed_at, seen_at, display_name, created_at) "
            "SELECT printf('U%032x', i), :at, :at, printf('友だち%d', i), :at FROM seq",
            {"n": friends, "at": timeutil.epoch(moment) - 30 * 86400},
        )
    written = time.perf_counter() - started
    engine = Engine(project, store)
    engine.tick(moment - dt.timedelta(minutes=1))  # the tick before: nothing due
    started = time.perf_counter()
    engine.tick(moment)
    ticked = time.perf_counter() - started
    rows = store.outbox_backlog()
    store.close()
    assert rows == -(-friends // MAX_MULTICAST), f"{rows} outbox rows for {friends} friends"
    return moment, written, ticked


def log_grants(bucket) -> list[float]:
    """Record when ``bucket`` lets a request go (the second as the client sends it)."""
    sent: list[float] = []
    take = bucket._take

    def logged(now: float, n: float) -> None:
        sent.append(now)
        take(now, n)

    bucket._take = logged
    return sent


async def bare_client(base_url: str, bodies: list[bytes], sent: list[float], concurrency: int = 64) -> float:
    """The floor: pre-encoded multicast bodies posted by a bare aiohttp client with the same
    client-side pacing at LINE's limit; returns the seconds it took."""
    headers = {"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}", "Content-Type": "application/json"}
    bucket = client_bucket(MULTICAST_LIMIT)
    grants = log_grants(bucket)
    queue = list(reversed(bodies))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                await bucket.acquire()
                async with session.post(
                    f"{base_url}/v2/bot/message/multicast",
                    data=body,
                    headers={**headers, "X-Line-Retry-Key": str(uuid.uuid4())},
                ) as r:
                    await r.read()
                    assert r.status == 200, r.status

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sent.extend(grants)
        return time.monotonic() - started


async def runner_broadcast(base_url: str, folder: Path, moment: object, sent: list[float]) -> tuple[float, float]:
    """The runner's dispatch loop sends the outbox and stores every outcome; returns the
    seconds from its start to the last outcome stored, and the process's CPU seconds
    meanwhile."""
    from engine.runner.clock import ManualClock
    from engine.runner.runloop import Runner, RunnerConfig

    config = RunnerConfig.from_env(
        {"LINE_CHANNEL_ACCESS_TOKEN": DEFAULT_ACCESS_TOKEN, "LINE_API_ENDPOINT": base_url},
        rules_dir=folder / "rules",
        db=folder / "linerules.db",
    )
    runner = Runner.open(config, clock=ManualClock(moment, flowing=True))  # its clock starts at the moment
    try:
        await runner.dispatcher.refresh_quota()
        grants = log_grants(runner.dispatcher._buckets["multicast"])
        watch = sqlite3.connect(folder / "linerules.db")  # its own connection: not the runner's
        backlog = "SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'held')"
        started, cpu = time.monotonic(), time.process_time()
        loop = asyncio.ensure_future(runner._dispatch_loop())
        while watch.execute(backlog).fetchone()[0]:
            await asyncio.sleep(0.02)
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
        watch.close()
        sent.extend(grants)
        runner.stop()
        await loop
        failed = runner.store.conn.execute("SELECT COUNT(*) FROM deliveries WHERE status != 'sent'").fetchone()[0]
        assert failed == 0, f"{failed} deliveries not sent"
        return elapsed, cpu
    finally:
        await runner.dispatcher.close()
        runner.close()


async def broadcast(friends: int, rounds: int) -> None:
    users = [synthetic_user_id(i) for i in range(friends)]
    chunks = [users[i : i + MAX_MULTICAST] for i in range(0, friends, MAX_MULTICAST)]
    requests = len(chunks)
    with tempfile.TemporaryDirectory() as tmp:
        pristine = Path(tmp) / "pristine"
        pristine.mkdir()
        moment, written, ticked = broadcast_outbox(pristine, friends)
        print(
            f"  broadcast to {friends:,} friends: friends written in {written:.1f} s, the "
            f"engine's tick wrote {requests:,} multicasts in {ticked:.1f} s; "
            f"{rounds} round(s) of each sender, interleaved, medians"
        )
        runs: dict[str, list[tuple[float, int, float]]] = {}
        for round_ in range(rounds):
            for name in ("bare client", "dispatcher", "runner"):
                with emulator_process("--friends", str(friends)) as url:
                    cpu_before = time.process_time()
                    cpu_spent = None
                    sent: list[float] = []
                    if name == "bare client":
                        bodies = [json.dumps({"to": chunk, "messages": TEXT}).encode() for chunk in chunks]
                        elapsed = await bare_client(url, bodies, sent)
                    elif name == "dispatcher":
                        items = [
                            OutboxItem(i, "multicast", chunk, TEXT, str(uuid.uuid4())) for i, chunk in enumerate(chunks)
                        ]
                        elapsed, results = await dispatcher_rate(url, items, sent=sent)
                        assert {r.outcome for r in results} == {"sent"}
                    else:
                        folder = Path(tmp) / f"runner{round_}"
                        shutil.copytree(pristine, folder)  # the outbox as the tick left it
                        elapsed, cpu_spent = await runner_broadcast(url, folder, moment, sent)
                        shutil.rmtree(folder)
                    if cpu_spent is None:
                        cpu_spent = time.process_time() - cpu_before
                    after = stats(url)
                    assert after["delivered"] == friends, after["delivered"]
                    runs.setdefault(name, []).append(
                        (
                            friends / elapsed,
                            after["busiest_second"]["multicast"],
                            cpu_spent / requests * 1000,
                            busiest(sent),
                        )
                    )
        figures = {name: sorted(r[0] for r in rs)[len(rs) // 2] for name, rs in runs.items()}
        floor = figures["bare client"]
        for name, rate in figures.items():
            seen = max(r[1] for r in runs[name])
            sent_most = max(r[3] for r in runs[name])
            cpu = sorted(r[2] for r in runs[name])[len(runs[name]) // 2]
            print(
                f"    {name + ':':13s} {rate:9,.0f} recipients/s = {rate / floor:.3f} of the bare "
                f"client, {rate / MAX_MULTICAST / MULTICAST_LIMIT:.3f} of LINE's multicast limit; "
                f"busiest second {sent_most} requests as sent, {seen} as the emulator handled "
                f"them (limit {MULTICAST_LIMIT:,.0f}); {cpu:.2f} ms CPU per request"
            )
        met = figures["runner"] >= 80_000 and figures["runner"] >= 0.95 * floor
        print(f"    runner: goal >= 80,000 recipients/s and >= 0.95 of the bare client ({'met' if met else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="push phase length (max 30)")
    parser.add_argument(
        "--broadcast",
        type=int,
        default=1_000_000,
        metavar="FRIENDS",
        help="friends in the broadcast phase (default 1,000,000; 0 skips it)",
    )
    parser.add_argument("--only-broadcast", action="store_true", help="run the broadcast phase alone")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of each sender in the broadcast phase (default 3)"
    )
    args = parser.parse_args()
    seconds = max(1.0, min(args.seconds, 30.0))

    async def everything() -> None:
        if not args.only_broadcast:
            await asyncio.wait_for(run(seconds), timeout=60 + 4 * seconds)
        if args.broadcast > 0:
            await asyncio.wait_for(
                broadcast(args.broadcast, max(1, args.rounds)), timeout=120 + args.rounds * args.broadcast / 1000
            )

    asyncio.run(everything())


if __name__ == "__main__":
    main()
