"""Peer benchmark: the same drip through huey (a Python task queue) and through linerules.

    .venv/bin/python -m pip install -e '.[bench]'        # huey, for this benchmark only
    .venv/bin/python benchmarks/peers.py                  # 20,000 and 100,000 friends
    .venv/bin/python benchmarks/peers.py --friends 20000 --profile

The drip: a friend follows -> wait 1 day -> a coupon unless they purchased -> wait 3 days -> a
review request. 30% of the friends buy half a day after following.

- huey, as a Python developer would build it: ``SqliteHuey`` (its defaults: WAL, no fsync
  setting) plus the shop's own SQLite file (friends, orders, sends); one delayed task per
  friend-step. The consumer is driven in this process on a virtual clock, through the same calls
  its worker and scheduler threads make (``dequeue`` -> ``execute``, ``read_schedule`` ->
  ``enqueue``), so nobody waits four real days.
- linerules, through its engine API: the follow and purchase events into ``Store.apply_events``
  (500 per call, as the runner's intake), ``Engine.tick`` at each moment with work, on a
  database file with the runner's settings. The result is outbox and delivery rows (what the
  dispatcher sends), as huey's result is the ``sends`` rows.

Both get the same events at the same virtual times and must make the same number of coupons
and reviews. The sides run in turn, each after ``os.sync()``, so that none pays for the writes
the one before it left to the disk. Prints each side's wall time (median of ``--runs``), friend-steps per second, and
the ratio huey / linerules (goal >= 20).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.interpreter import Engine  # noqa: E402
from engine.language import timeutil  # noqa: E402
from engine.language.project import load_project  # noqa: E402
from engine.runtime.events import Event  # noqa: E402
from engine.runtime.store import Store  # noqa: E402

DAY = 86400
START = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)  # 10:00 in Tokyo
GOAL = 20.0

RULE = """\
rule drip "Coupon after a day unless bought, review after four"
  when followed
  then
    wait 1d
    send coupon if not purchased
    wait 3d
    send review
"""
MESSAGES = 'coupon: "15% off your first order"\nreview: "How do you like it?"\n'


def population(n: int, seed: int = 3) -> tuple[list[str], set[str]]:
    friends = [f"U{i:07d}" for i in range(n)]
    rng = random.Random(seed)
    return friends, {f for f in friends if rng.random() < 0.3}


# ----------------------------------------------------------------------------- huey


def run_huey(friends: list[str], buyers: set[str], folder: str, normal: bool) -> tuple[float, int, int]:
    """``normal``: huey's and the shop's files with linerules' durability (WAL,
    ``synchronous=NORMAL``: no fsync per commit) instead of SQLite's default (``FULL``)."""
    from huey import SqliteHuey
    from huey.storage import SqliteStorage

    class NormalSync(SqliteStorage):
        def _create_connection(self):
            conn = super()._create_connection()
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn

    huey = SqliteHuey(
        "drip",
        filename=os.path.join(folder, "huey.db"),
        results=False,
        **({"storage_class": NormalSync} if normal else {}),
    )
    shop = sqlite3.connect(os.path.join(folder, "shop.db"), isolation_level=None)
    shop.execute("PRAGMA journal_mode=WAL")
    if normal:
        shop.execute("PRAGMA synchronous = NORMAL")
    shop.executescript(
        "CREATE TABLE friends (id TEXT PRIMARY KEY, followed_at INTEGER);"
        "CREATE TABLE orders (friend TEXT, at INTEGER);"
        "CREATE INDEX orders_friend ON orders(friend);"
        "CREATE TABLE sends (friend TEXT, message TEXT, at INTEGER)"
    )
    clock = {"now": START.replace(tzinfo=None)}  # huey keeps naive UTC times

    def stamp() -> int:
        return int(clock["now"].replace(tzinfo=dt.UTC).timestamp())

    @huey.task()
    def review(friend: str) -> None:
        shop.execute("INSERT INTO sends VALUES (?, 'review', ?)", (friend, stamp()))

    @huey.task()
    def coupon(friend: str) -> None:
        if shop.execute("SELECT 1 FROM orders WHERE friend = ? LIMIT 1", (friend,)).fetchone() is None:
            shop.execute("INSERT INTO sends VALUES (?, 'coupon', ?)", (friend, stamp()))
        review.schedule((friend,), eta=clock["now"] + dt.timedelta(days=3))

    def consume() -> None:
        """What the consumer's scheduler and worker do at ``clock['now']``."""
        for task in huey.read_schedule(clock["now"]):
            huey.enqueue(task)
        while (task := huey.dequeue()) is not None:
            huey.execute(task, clock["now"])

    started = time.perf_counter()
    for friend in friends:  # the follow webhook's handler
        shop.execute("INSERT INTO friends VALUES (?, ?)", (friend, stamp()))
        coupon.schedule((friend,), eta=clock["now"] + dt.timedelta(days=1))
    consume()
    clock["now"] += dt.timedelta(hours=12)
    for friend in friends:  # the purchase webhook's handler
        if friend in buyers:
            shop.execute("INSERT INTO orders VALUES (?, ?)", (friend, stamp()))
    consume()
    for offset in (dt.timedelta(hours=12), dt.timedelta(days=3)):
        clock["now"] += offset
        consume()
    spent = time.perf_counter() - started
    counts = dict(shop.execute("SELECT message, COUNT(*) FROM sends GROUP BY message").fetchall())
    shop.close()
    huey.storage.close() if hasattr(huey.storage, "close") else None
    return spent, counts.get("coupon", 0), counts.get("review", 0)


# ----------------------------------------------------------------------------- linerules


def run_linerules(friends: list[str], buyers: set[str], folder: str, project) -> tuple[float, int, int]:
    store = Store(os.path.join(folder, "linerules.db"))
    start = timeutil.epoch(START)
    tz = project.settings.tz
    engine = Engine(project, store, clock=lambda: timeutil.local(start, tz))

    def feed(events: list[Event], now: int) -> None:
        for i in range(0, len(events), 500):
            store.apply_events(events[i : i + 500], received_at=now)

    started = time.perf_counter()
    follows = [Event("follow", f, START, {}) for f in friends]
    feed(follows, start)
    engine.tick(START)
    bought_at = START + dt.timedelta(hours=12)
    feed(
        [Event("purchase", f, bought_at, {"order_id": f"B-{f}", "amount": 3000}) for f in friends if f in buyers],
        start + 12 * 3600,
    )
    now = engine.tick(bought_at).now
    for offset in (dt.timedelta(hours=12), dt.timedelta(days=3)):
        now += offset
        engine.tick(now)
    spent = time.perf_counter() - started
    counts = dict(
        store.conn.execute(
            "SELECT json_extract(messages, '$[0]'), COUNT(*) FROM deliveries WHERE status = 'queued' GROUP BY 1"
        ).fetchall()
    )
    store.close()
    return spent, counts.get("coupon", 0), counts.get("review", 0)


def load(folder: str):
    Path(folder, "drip.rule").write_text(RULE, encoding="utf-8")
    Path(folder, "messages.yaml").write_text(MESSAGES, encoding="utf-8")
    loaded = load_project(folder)
    if loaded.project is None:
        sys.exit(f"the drip rule does not validate: {loaded.diagnostics}")
    return loaded.project


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--friends", type=int, action="append", help="population (repeatable; default 20,000 and 100,000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile the linerules side once")
    args = ap.parse_args()
    try:
        import huey  # noqa: F401
    except ImportError:
        sys.exit("huey is not installed: .venv/bin/python -m pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory() as rules:
        project = load(rules)
        for n in args.friends or [20_000, 100_000]:
            friends, buyers = population(n)
            if args.profile:
                import cProfile
                import pstats

                with tempfile.TemporaryDirectory() as tmp:
                    cProfile.runctx(
                        "run_linerules(friends, buyers, tmp, project)", globals(), locals(), "/tmp/peers.prof"
                    )
                pstats.Stats("/tmp/peers.prof").sort_stats("cumulative").print_stats(30)
                continue
            sides: dict[str, list[float]] = {"huey": [], "huey-normal": [], "linerules": []}
            results = {}
            for _ in range(args.runs):
                for name in sides:
                    # each side starts with the disk idle: without this, the write-back of the side
                    # before (huey's files) lands in the next side's checkpoints and fsyncs
                    os.sync()
                    with tempfile.TemporaryDirectory() as tmp:
                        if name == "linerules":
                            spent, coupons, reviews = run_linerules(friends, buyers, tmp, project)
                        else:
                            spent, coupons, reviews = run_huey(friends, buyers, tmp, name == "huey-normal")
                    sides[name].append(spent)
                    results[name] = (coupons, reviews)
            if len(set(results.values())) != 1:
                print(f"the sides differ: {results}", file=sys.stderr)
                return 1
            steps = 2 * n
            t = {name: statistics.median(v) for name, v in sides.items()}
            lr = t["linerules"]
            coupons, reviews = results["linerules"]
            print(f"{n:,} friends ({coupons:,} coupons, {reviews:,} reviews), median of {args.runs}:")
            print(f"  linerules engine API        {lr:7.2f} s = {steps / lr:8,.0f} friend-steps/s")
            for name, label in (("huey", "huey, SQLite defaults"), ("huey-normal", "huey, synchronous=NORMAL")):
                verdict = "goal met" if t[name] / lr >= GOAL else "goal NOT met"
                print(
                    f"  {label:<27} {t[name]:7.2f} s = {steps / t[name]:8,.0f} friend-steps/s; "
                    f"huey / linerules = {t[name] / lr:5.1f} (goal >= {GOAL:.0f}: {verdict})"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
