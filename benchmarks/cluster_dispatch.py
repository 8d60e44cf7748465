"""Several runners' dispatchers sharing one LINE channel's push limit through PostgreSQL.

Starts a PostgreSQL server (``LINERULES_TEST_PG`` names an existing one instead; see
engine/testing/pgserver.py) and the LINE emulator (in this process, on its own thread, at LINE's
real limits), then, for 1 and for ``--runners`` (default 3) processes, each with the real
:class:`~engine.line.dispatch.Dispatcher` given the channel's shared limits
(:mod:`engine.line.sharedrate`), pushes ``--seconds`` worth of LINE's 2,000 pushes/s split over
the processes, and prints, as the emulator counted the pushes arriving: the most in one second
of the clock, the busiest sliding 1-second window, the sustained rate as a ratio of 2,000 (goal
>= 0.90), the 429s (goal 0), and the database statements per second the limiters issued.

    python benchmarks/cluster_dispatch.py [--seconds 10] [--runners 3] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.line.limits import RATE_LIMITS  # noqa: E402
from engine.line.ratelimit import client_bucket  # noqa: E402

LIMIT = RATE_LIMITS["push"].rate
WORKER_NICE = 5
TEXT = [{"type": "text", "text": "週末セール開催中！ 15% OFF クーポンをどうぞ"}]


# ----------------------------------------------------------------------------- one runner


class Recorded:
    """A limiter that notes when it lets a request go (CLOCK_MONOTONIC: one clock for every
    process of the machine)."""

    def __init__(self, inner):
        self.inner = inner
        self.times: list[float] = []

    async def acquire(self, n: float = 1.0) -> None:
        await self.inner.acquire(n)
        self.times.append(time.monotonic())


async def worker(db_url: str, line_url: str, first: int, count: int, folder: Path, name: str) -> None:
    """One runner's dispatcher: ``db_url`` "-" paces with the dispatcher's own buckets at 100
    times LINE's limits (the ceiling: what this machine sends with no pacing to speak of)."""
    from engine.line.dispatch import Dispatcher, OutboxItem
    from engine.line.sharedrate import SharedRateLimits
    from engine.testing.line_emulator import DEFAULT_ACCESS_TOKEN, synthetic_user_id

    items = [
        OutboxItem(i, "push", [synthetic_user_id(i)], TEXT, str(uuid.uuid4())) for i in range(first, first + count)
    ]
    options = json.loads(os.environ.get("CLUSTER_DISPATCH_OPTIONS", "{}"))
    if db_url == "-":
        limits = contextlib.nullcontext(SimpleNamespace(statements=0, failures=0, metrics={"endpoints": {}}))
    else:
        limits = SharedRateLimits(db_url, **options)
    async with limits as limits:
        inner = {"push": client_bucket(LIMIT * 100)} if db_url == "-" else limits.limiters()
        push = Recorded(inner["push"])
        limiters = {**inner, "push": push}
        async with Dispatcher(DEFAULT_ACCESS_TOKEN, line_url, limiters=limiters) as dispatcher:
            await dispatcher.refresh_quota()
            (folder / f"{name}.ready").touch()
            while not (folder / "go").exists():
                await asyncio.sleep(0.002)
            statements = limits.statements
            started, cpu = time.monotonic(), time.process_time()
            results = await dispatcher.send(items)
            elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
        out = {
            "outcomes": dict(Counter(r.outcome for r in results)),
            "elapsed": elapsed,
            "cpu": cpu,
            "statements": limits.statements - statements,
            "failures": limits.failures,
            "lost": limits.metrics["endpoints"].get("push", {}).get("lost", 0),
            "granted": push.times,
            "rate_limited": dispatcher.metrics["rate_limited"],
        }
    (folder / f"{name}.json").write_text(json.dumps(out))


# ----------------------------------------------------------------------------- the run


def phase(db_url: str, runners: int, pushes: int, **emulator_options) -> dict:
    """``runners`` processes push ``pushes`` in all through the shared limits of ``db_url`` (or
    "-": no pacing to speak of) to a fresh emulator."""
    from engine.testing.line_emulator import busiest, run_in_thread

    with run_in_thread(**emulator_options) as emulator, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        per = -(-pushes // runners)
        procs = []
        for i in range(runners):
            count = min(per, pushes - i * per)
            args = [sys.executable, __file__, "--worker", db_url, emulator.base_url, str(i * per), str(count), tmp]
            # below the emulator's priority: LINE's servers do not wait for the runners' CPU (an
            # emulator starved of it handles a backlog at once, bunching what it counts)
            procs.append(
                subprocess.Popen(
                    [*args, f"r{i}"],
                    cwd=Path(__file__).resolve().parent.parent,
                    preexec_fn=lambda: os.nice(WORKER_NICE),
                )
            )
        deadline = time.monotonic() + 120
        while not all((folder / f"r{i}.ready").exists() for i in range(runners)):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise SystemExit("a worker did not start")
            time.sleep(0.01)
        (folder / "go").touch()
        cpu = time.process_time()  # this process: the emulator's thread, which is all it runs meanwhile
        for p in procs:
            if p.wait(timeout=600) != 0:
                raise SystemExit(f"a worker failed ({p.returncode})")
        emulator_cpu = time.process_time() - cpu
        done = [json.loads((folder / f"r{i}.json").read_text()) for i in range(runners)]
        arrivals = sorted(r.time for r in emulator.requests_to("push"))
        statuses = Counter(r.status for r in emulator.requests_to("push"))
    if os.environ.get("CLUSTER_DISPATCH_TRACE"):
        base = int(arrivals[0])
        print("      per second:", sorted(Counter(int(t) - base for t in arrivals).items()))
        print("      runners' seconds:", [round(d["elapsed"], 2) for d in done], "lost:", [d["lost"] for d in done])
    sent = sum(d["outcomes"].get("sent", 0) for d in done)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    elapsed = max(d["elapsed"] for d in done)
    granted = [t for d in done for t in d["granted"]]
    return {
        "runners": runners,
        "pushes": pushes,
        "sent": sent,
        "outcomes": sum((Counter(d["outcomes"]) for d in done), Counter()),
        "http_429": statuses.get(429, 0),
        "clock_second_max": max(Counter(int(t) for t in arrivals).values()),
        "busiest_window": busiest(arrivals),
        "busiest_window_sent": busiest(granted),
        "sustained": (len(arrivals) - 1) / span,
        "elapsed": elapsed,
        "statements_per_s": sum(d["statements"] for d in done) / elapsed,
        "failures": sum(d["failures"] for d in done),
        "lost": sum(d["lost"] for d in done),
        "cpu_per_push_ms": 1000 * sum(d["cpu"] for d in done) / max(1, sent),
        "emulator_cpu_per_push_ms": 1000 * emulator_cpu / max(1, len(arrivals)),
    }


def show(r: dict) -> None:
    print(
        f"  {r['runners']} runner(s): {r['sent']:,} of {r['pushes']:,} pushes sent in {r['elapsed']:.2f} s; "
        f"as the emulator counted them: most in one second of the clock {r['clock_second_max']:,}, "
        f"busiest 1-s window {r['busiest_window']:,} (limit {LIMIT:,.0f}); "
        f"sustained {r['sustained']:,.0f}/s = {r['sustained'] / LIMIT:.3f} of the limit (goal 0.90); "
        f"429s {r['http_429']} (goal 0)"
    )
    print(
        f"      as the runners let them go: busiest 1-s window {r['busiest_window_sent']:,}; "
        f"database statements {r['statements_per_s']:.1f}/s; slots lost unused {r['lost']:,}; "
        f"statement failures {r['failures']}"
    )
    need = (r["cpu_per_push_ms"] + r["emulator_cpu_per_push_ms"]) * LIMIT / 1000
    print(
        f"      CPU per push: dispatchers {r['cpu_per_push_ms']:.2f} ms, emulator {r['emulator_cpu_per_push_ms']:.2f} ms"
        f" = {need:.1f} cores at {LIMIT:,.0f}/s (this machine: {os.cpu_count()}, shared)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="pushes: this many seconds at 2,000/s")
    parser.add_argument("--runners", type=int, default=3)
    parser.add_argument("--only", action="store_true", help="only --runners runners (not 1 first)")
    parser.add_argument("--rounds", type=int, default=1, help="ceiling and shared runs, alternately")
    parser.add_argument("--worker", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        db, line, first, count, folder, name = args.worker
        run = worker(db, line, int(first), int(count), Path(folder), name)
        profile = os.environ.get("CLUSTER_DISPATCH_PROFILE")  # a folder: one cProfile file per worker
        if profile and db != "-":
            import cProfile

            cProfile.runctx("asyncio.run(run)", globals(), {"run": run}, f"{profile}/{name}.prof")
        else:
            asyncio.run(run)
        return

    from engine.testing.pgserver import open_server

    pushes = int(LIMIT * args.seconds)
    server = open_server()
    try:
        schema, url = server.new_schema()
        where = "LINERULES_TEST_PG" if server.cluster is None else "a fresh local cluster"
        print(
            f"cluster dispatch benchmark: PostgreSQL ({where}), LINE emulator on loopback at LINE's limits, "
            f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        summary = []
        for runners in dict.fromkeys((1, args.runners) if not args.only else (args.runners,)):
            ratios, ceilings = [], []
            for _ in range(args.rounds):
                ceiling = phase("-", runners, pushes, rate_scale=100)
                ceilings.append(ceiling["sustained"])
                print(
                    f"  ceiling, {runners} runner(s) with no limits on either side: {ceiling['sustained']:,.0f} "
                    f"pushes/s = {ceiling['sustained'] / LIMIT:.3f} of LINE's limit"
                )
                result = phase(url, runners, pushes)
                show(result)
                ratios.append(result["sustained"] / LIMIT)
                print(f"      = {result['sustained'] / ceiling['sustained']:.3f} of the ceiling measured just before")
            summary.append((runners, statistics.median(ratios), statistics.median(ceilings) / LIMIT))
        for runners, ratio, ceiling in summary:
            print(
                f"  median of {args.rounds}: {runners} runner(s) sustained {ratio:.3f} of LINE's limit "
                f"(goal 0.90); this machine's ceiling for them {ceiling:.3f}"
            )
        server.drop_schema(schema)
    finally:
        if server.cluster is not None:
            server.cluster.stop()


if __name__ == "__main__":
    main()
