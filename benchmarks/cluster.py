"""Several runners on one PostgreSQL schema: 1 vs 2 vs 3 runner processes, the same work.

First the dispatch: for each number of runners, on a fresh schema and a fresh LINE emulator
(its own process, at LINE's real rate limits), the runners start, then ``--dispatch`` pushes
already decided are put in the outbox at once, and the runners send them: pushes per second as a share of LINE's
2,000/s push limit (goal >= 0.90), the busiest second as the emulator counted it (never above
the limit: it holds per channel), 429 answers, each runner's share, every friend once.

Then the walk: for each number of runners, ``--friends`` follows are posted to ``/events`` in batches spread
over the runners (as a load balancer would), and a rule welcomes each friend with a text of
their own (one push each). Printed per run:

- the walk: how long until the leader's ticks had written every push into the outbox, as
  follows per second;
- the dispatch: pushes per second from the first post to the last delivery, as a share of
  LINE's 2,000/s push limit, the busiest second as the emulator counted it (LINE's limit holds
  per channel, whatever the number of runners), 429 answers, and each runner's share of the
  sends (``/healthz`` ``sent_by_this_runner``);
- that every friend got exactly one welcome.

    python benchmarks/cluster.py [--dispatch 20000] [--friends 5000] [--runners 1,2,3] [--pg postgresql://...] [--nice 10]

Without ``--pg`` it starts its own PostgreSQL (engine/testing/pgserver.py, as the tests do).

The runners run at nice ``--nice`` (default 10; ``benchmarks/cluster_dispatch.py`` uses 5): the
emulator stands in for LINE's own servers, which a runner never shares a core with. When the
runners starve it on a shared machine, it takes a backlog of requests in at once and counts more
in a second than the runners sent in any second.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dispatch import emulator_process, stats  # noqa: E402

from engine.line.limits import RATE_LIMITS  # noqa: E402
from engine.testing.line_emulator import DEFAULT_ACCESS_TOKEN, DEFAULT_CHANNEL_SECRET, synthetic_user_id  # noqa: E402
from engine.testing.pgserver import Server, open_server  # noqa: E402
from engine.testing.webhooks import post_events  # noqa: E402

PUSH_LIMIT = RATE_LIMITS["push"].rate
API_TOKEN = "bench-token"
RULES = "rule welcome\n  when followed\n  then send greeting\n"
MESSAGES = 'greeting: "ようこそ {{ friend.id }}さん"\n'


#: How much lower the runners' priority is than the emulator's (see the docstring).
RUNNER_NICE = 10


class Runner:
    def __init__(self, rules: Path, db: str, emulator: str, nice: int = RUNNER_NICE):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LINE_", "LINERULES_"))}
        env.update(
            LINE_API_ENDPOINT=emulator,
            LINE_CHANNEL_ACCESS_TOKEN=DEFAULT_ACCESS_TOKEN,
            LINE_CHANNEL_SECRET=DEFAULT_CHANNEL_SECRET,
            LINERULES_API_TOKEN=API_TOKEN,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "runner.py", "--rules", str(rules), "--db", db, "--listen", "127.0.0.1:0", "--tick", "1"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        self.url = ""
        for line in self.proc.stderr:
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].split()[0]
                break
        if not self.url:
            raise SystemExit("a runner did not start")
        # keep reading its log so that it never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            return json.load(err)

    def post(self, events: list[dict]) -> None:
        post_events(self.url, events, API_TOKEN, timeout=60)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def outbox_rows(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def settle(emulator: str, procs: list[Runner]) -> tuple[dict, list[int]]:
    """The emulator's counts once nothing more may arrive (a second copy would show), and
    each runner's sends."""
    time.sleep(1.5)
    return stats(emulator), [p.health()["cluster"]["sent_by_this_runner"] for p in procs]


def wait_for_leader(procs: list[Runner]) -> None:
    deadline = time.monotonic() + 30
    while sum(p.health()["cluster"]["leading"] for p in procs) != 1:
        if time.monotonic() > deadline:
            raise SystemExit("no runner leads")
        time.sleep(0.2)


def queue_pushes(url: str, friends: int) -> None:
    """``friends`` pushes already decided, as the store writes them (one retry key each)."""
    from engine.runtime.store import OutboxRow, Store

    store = Store(url)
    now = int(time.time())
    text = [{"type": "text", "text": "週末セール開催中！ 15% OFF クーポンをどうぞ"}]
    store.add_outbox_rows(
        [OutboxRow("push", [synthetic_user_id(i)], text, ["sale"], "sale", now) for i in range(friends)], now
    )
    store.close()


@contextlib.contextmanager
def cluster_on(
    server: Server, rules: Path, runners: int, friends: int, nice: int = RUNNER_NICE
) -> Iterator[tuple[str, str, list[Runner]]]:
    """A fresh schema, a fresh emulator knowing ``friends`` friends, and ``runners`` runners on
    them, one of them leading: (database URL, emulator URL, runners). All gone afterwards."""
    schema, url = server.new_schema()
    try:
        with emulator_process("--friends", str(friends)) as emulator:
            procs = [Runner(rules, url, emulator, nice) for _ in range(runners)]
            try:
                wait_for_leader(procs)
                yield url, emulator, procs
            finally:
                for p in procs:
                    p.stop()
    finally:
        server.drop_schema(schema)


def pushed(final: dict, shares: list[int]) -> dict:
    return {
        "delivered": final["delivered"],
        "busiest": final["busiest_second"].get("push", 0),
        "throttled": final["requests"].get("push", {}).get("429", 0),
        "shares": shares,
    }


def dispatch_run(server: Server, runners: int, friends: int, rules: Path, nice: int = RUNNER_NICE) -> dict:
    """``runners`` runners up, then a backlog of ``friends`` pushes in the outbox to send."""
    with cluster_on(server, rules, runners, friends, nice) as (url, emulator, procs):
        queue_pushes(url, friends)  # every runner is up: they find the rows within a second
        started = time.monotonic()
        while stats(emulator)["delivered"] < friends and time.monotonic() - started < 600:
            time.sleep(0.05)
        final, shares = settle(emulator, procs)
    return {"seconds": final["seconds"].get("push", 0.0), **pushed(final, shares)}  # as the emulator saw them


def one_run(server: Server, runners: int, friends: int, rules: Path, nice: int = RUNNER_NICE) -> dict:
    """``runners`` runners up, then ``friends`` follows posted, spread over them."""
    with cluster_on(server, rules, runners, friends, nice) as (url, emulator, procs):
        ids = [synthetic_user_id(i) for i in range(friends)]
        now = dt.datetime.now(dt.UTC).isoformat()
        started = time.monotonic()
        for k in range(0, friends, 1000):
            batch = [{"type": "follow", "friend": f, "at": now} for f in ids[k : k + 1000]]
            procs[(k // 1000) % runners].post(batch)
        posted = time.monotonic() - started
        walked = None
        while True:
            if walked is None and outbox_rows(url) >= friends:
                walked = time.monotonic() - started
            if stats(emulator)["delivered"] >= friends or time.monotonic() - started > 600:
                break
            time.sleep(0.1)
        done = time.monotonic() - started
        final, shares = settle(emulator, procs)
    return {"runners": runners, "posted": posted, "walked": walked or done, "done": done, **pushed(final, shares)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--friends", type=int, default=5_000, help="follows of the walk phase (default 5,000)")
    parser.add_argument("--dispatch", type=int, default=20_000, help="pushes of the dispatch phase (default 20,000)")
    parser.add_argument("--runners", default="1,2,3", help="the runs, as numbers of runners (default 1,2,3)")
    parser.add_argument("--pg", metavar="URL", help="an existing PostgreSQL server (default: start one)")
    parser.add_argument(
        "--nice",
        type=int,
        default=RUNNER_NICE,
        help=f"the runners' nice value (default {RUNNER_NICE}; 0: as the emulator)",
    )
    args = parser.parse_args()
    server = Server(url=args.pg) if args.pg else open_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rules = Path(tmp) / "rules"
            rules.mkdir()
            (rules / "settings.yaml").write_text("timezone: Asia/Tokyo\n", encoding="utf-8")
            (rules / "messages.yaml").write_text(MESSAGES, encoding="utf-8")
            (rules / "main.rule").write_text(RULES, encoding="utf-8")
            print(f"LINE's push limit: {PUSH_LIMIT:,.0f}/s per channel, whatever the number of runners")
            counts = [int(x) for x in args.runners.split(",")]
            print(f"dispatch: the runners started, then {args.dispatch:,} pushes put in the outbox at once")
            for n in counts:
                r = dispatch_run(server, n, args.dispatch, rules, args.nice)
                rate = args.dispatch / max(r["seconds"], 1e-9)
                once = "yes" if r["delivered"] == args.dispatch else f"NO ({r['delivered']:,} delivered)"
                print(
                    f"{n} runner(s): {rate:,.0f} pushes/s from the first delivery to the last = "
                    f"{rate / PUSH_LIMIT:.2f} of the limit (goal >= 0.90), busiest second {r['busiest']:,} "
                    f"(limit {PUSH_LIMIT:,.0f}), 429s {r['throttled']}, sends per runner {r['shares']}; "
                    f"each friend exactly once: {once}"
                )
            print(f"walk and dispatch: {args.friends:,} follows posted, each welcomed by a push of its own")
            for n in counts:
                r = one_run(server, n, args.friends, rules, args.nice)
                rate = args.friends / r["done"]
                once = "yes" if r["delivered"] == args.friends else f"NO ({r['delivered']:,} delivered)"
                print(
                    f"{n} runner(s): walk {args.friends / r['walked']:,.0f} follows/s "
                    f"(every push in the outbox after {r['walked']:.1f}s; posting took {r['posted']:.1f}s); "
                    f"dispatch {rate:,.0f} pushes/s = {rate / PUSH_LIMIT:.2f} of the limit, busiest second "
                    f"{r['busiest']:,} (limit {PUSH_LIMIT:,.0f}), 429s {r['throttled']}, "
                    f"sends per runner {r['shares']}; each friend exactly once: {once}"
                )
    finally:
        if server.cluster is not None:
            server.cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
