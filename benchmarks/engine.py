"""Engine benchmark: a generated population run through the sample rules for a few weeks.

    python benchmarks/engine.py                    # 1,000,000 friends, 14 days
    python benchmarks/engine.py --friends 100000 --days 14

Prints, for the whole run and for the heaviest tick (the weekly pick to every friend):
enrollments advanced per second; the time of an idle tick as a fraction of one full scan of the
enrollments table; the ratio of engine time to the same row work done by bare SQLite statements
in the same database (goal: at most 2); the time of a condition tick; and peak RSS.

The population is written with SQL (friends who followed during the past year, 30% of them
buyers); the events of the run (new follows, purchases, keyword messages, shipments, postback
answers) go through the store and the engine like the runner's. The clock ticks hourly;
condition triggers are checked at local midnight. Sends are marked sent as the simulator does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.interpreter import Engine  # noqa: E402
from engine.language import ir, timeutil  # noqa: E402
from engine.runtime.events import Event  # noqa: E402
from engine.runtime.sqlcond import CURRENT  # noqa: E402
from engine.runtime.store import Store  # noqa: E402

START = "2026-11-01T00:00:00+09:00"
YEAR = 365 * 86400


def load_rules(folder: str) -> ir.Project:
    from engine.language.diagnostics import render_text
    from engine.language.project import load_project

    loaded = load_project(folder)
    if loaded.project is None:
        sys.exit("the sample rules do not validate:\n" + render_text(loaded.diagnostics, loaded.sources))
    return loaded.project


def populate(store: Store, n: int, start: int) -> None:
    """``n`` friends who followed in the past year; 30% bought 1-5 times."""
    with store.transaction() as c:
        c.execute(
            "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :n - 1), "
            "draw AS MATERIALIZED (SELECT i, abs(random() % :year) AS age, abs(random() % 100) AS kind, "
            "abs(random() % 1000000007) AS r FROM seq) "
            "INSERT INTO friends(id, followed_at, seen_at, source, display_name, orders, total_spent, "
            "last_purchase_at, created_at) "
            "SELECT printf('U%08d', i), :start - age, :start - age, "
            "CASE WHEN kind < 10 THEN 'qr=shipping' WHEN kind < 15 THEN 'ad=summer' END, "
            "printf('友だち%d', i), CASE WHEN kind < 30 THEN 1 + r % 5 ELSE 0 END, "
            "CASE WHEN kind < 30 THEN (1 + r % 5) * (1000 + r % 9000) ELSE 0 END, "
            "CASE WHEN kind < 30 THEN :start - (r % (age + 1)) END, :start - age FROM draw",
            {"n": n, "year": YEAR - 1, "start": start},
        )
        c.execute(
            "INSERT INTO activity(friend, kind, amount, at) SELECT id, 'order', total_spent, "
            "last_purchase_at FROM friends WHERE orders > 0"
        )


def generate_events(n: int, start: int, days: int, seed: int) -> list[Event]:
    """New follows, purchases, keyword messages, shipments and delivery answers."""
    rng = random.Random(seed)
    tz = dt.timezone(dt.timedelta(hours=9))
    span = days * 86400

    def moment() -> dt.datetime:
        return dt.datetime.fromtimestamp(start + rng.randrange(span), tz)

    def someone() -> str:
        return f"U{rng.randrange(n):08d}"

    events = []
    for i in range(max(1, n // 100)):
        source = rng.choice(["qr=shipping", "qr=shipping", "ad=summer", None, None])
        data = {"source": source} if source else {}
        events.append(Event("follow", f"N{i:07d}", moment(), data))
    for i in range(max(1, n // 50)):
        amount = rng.randrange(1000, 20000)
        events.append(
            Event(
                "purchase",
                someone(),
                moment(),
                {
                    "order_id": f"B-{i}",
                    "amount": amount,
                    "items": [
                        {"product": f"SKU{rng.randrange(50)}", "category": "cosmetics", "price": amount, "quantity": 1}
                    ],
                },
            )
        )
    for _ in range(max(1, n // 100)):
        events.append(Event("shipped", someone(), moment(), {}))
    for i in range(max(1, n // 1000)):
        events.append(Event("message", someone(), moment(), {"text": "クーポンください"}, reply_token=f"rt{i}"))
    for _ in range(max(1, n // 200)):
        events.append(Event("postback", someone(), moment(), {"data": "action=delivery&answer=yes"}))
    events.sort(key=lambda e: e.at)
    return events


def dispatch(store: Store, now: int) -> int:
    """The simulated transport: every due outbox row is sent."""
    done = 0
    while rows := store.claim_outbox(now, 5000):
        with store.transaction():
            for row in rows:
                store.finish_outbox(row["id"], "sent", at=now)
        done += len(rows)
    return done


def bare_sql_equivalent(store: Store, now: int, tz) -> float:
    """The row work of a mass send, done with plain statements, then rolled back: enrol every
    current friend, read them back, move them on, read their cap counts, write one outbox row
    per 500 and one delivery row per friend."""
    day = timeutil.local_day(now, tz)
    started = time.perf_counter()
    c = store.conn
    c.execute("BEGIN IMMEDIATE")
    try:
        c.execute(
            "INSERT INTO enrollments(friend, rule, rule_version, step_id, due_at, state, entered_at, "
            f"occurrence) SELECT f.id, 'bare', 'v', 'send x', ?, 'active', ?, 'bare' FROM friends f "
            f"WHERE {CURRENT}",
            (now, now),
        )
        rows = c.execute(
            "SELECT id, friend FROM enrollments WHERE rule = 'bare' AND state = 'active' AND due_at <= ?", (now,)
        ).fetchall()
        c.executemany(
            "UPDATE enrollments SET state = 'done', step_id = NULL, due_at = NULL, finished_at = ? WHERE id = ?",
            [(now, r[0]) for r in rows],
        )
        c.execute(
            "SELECT e.friend, COUNT(d.id) FROM enrollments e LEFT JOIN deliveries d ON d.friend = e.friend "
            "AND d.local_day = ? AND d.counts_for_cap = 1 WHERE e.rule = 'bare' GROUP BY e.friend",
            (day,),
        ).fetchall()
        outbox = []
        for i in range(0, len(rows), 500):
            cur = c.execute(
                "INSERT INTO outbox(kind, recipients, payload, messages, rule, retry_key, "
                "not_before, status, created_at) VALUES ('multicast', '[]', '[]', '[]', 'bare', "
                "?, ?, 'pending', ?)",
                (f"bare-{i}", now, now),
            )
            outbox.append(cur.lastrowid)
        c.executemany(
            "INSERT INTO deliveries(friend, rule, step_id, enrollment, outbox_id, messages, status, "
            "at, local_day, counts_for_cap) VALUES (?, 'bare', 'send x', ?, ?, '[\"x\"]', 'queued', "
            "?, ?, 1)",
            [(r[1], r[0], outbox[i // 500], now, day) for i, r in enumerate(rows)],
        )
    finally:
        c.execute("ROLLBACK")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--friends", type=int, default=1_000_000, help="population size (default 1,000,000)")
    parser.add_argument("--days", type=int, default=14, help="days of events to run (default 14)")
    parser.add_argument("--rules", default=str(ROOT / "rules"), help="rule folder (default: the sample rules)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    project = load_rules(args.rules)
    tz = project.settings.tz
    start = timeutil.epoch(dt.datetime.fromisoformat(START))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(os.path.join(tmp, "bench.db"))
        t0 = time.perf_counter()
        populate(store, args.friends, start)
        events = generate_events(args.friends, start, args.days, args.seed)
        print(
            f"population: {args.friends:,} friends written in {time.perf_counter() - t0:.1f}s; "
            f"{len(events):,} events over {args.days} days"
        )

        engine = Engine(project, store, clock=lambda: timeutil.local(start, tz))
        engine_time = dispatch_time = engine_cpu = 0.0
        advanced = sent_rows = 0
        heaviest = (0.0, 0, 0, 0.0)  # (seconds, advanced, now, CPU seconds)
        condition_ticks: list[float] = []
        i = 0
        for hour in range(args.days * 24 + 1):
            now = start + hour * 3600
            batch = []
            while i < len(events) and timeutil.epoch(events[i].at) <= now:
                batch.append(events[i])
                i += 1
            if batch:
                store.apply_events(batch, received_at=now)
            conditions = hour % 24 == 0
            t, cpu = time.perf_counter(), time.process_time()
            result = engine.tick(timeutil.local(now, tz), conditions=conditions)
            spent, cpu = time.perf_counter() - t, time.process_time() - cpu
            engine_time += spent
            engine_cpu += cpu
            advanced += result.advanced
            if conditions:
                condition_ticks.append(spent)
            if result.advanced > heaviest[1]:
                heaviest = (spent, result.advanced, now, cpu)
            t = time.perf_counter()
            sent_rows += dispatch(store, now)
            dispatch_time += time.perf_counter() - t

        end = start + args.days * 24 * 3600
        scan_t = time.perf_counter()
        total = store.conn.execute("SELECT COUNT(*) FROM enrollments WHERE entered_at >= 0").fetchone()[0]
        scan = time.perf_counter() - scan_t
        idle = []
        for k in range(1, 6):
            t = time.perf_counter()
            engine.tick(timeutil.local(end + k, tz), conditions=False)
            idle.append(time.perf_counter() - t)
        idle_tick = sorted(idle)[len(idle) // 2]
        bare = bare_sql_equivalent(store, heaviest[2], tz)
        bare_rows = store.conn.execute(f"SELECT COUNT(*) FROM friends f WHERE {CURRENT}").fetchone()[0]
        store.close()

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_row_engine = heaviest[0] / max(1, heaviest[1])
    per_row_bare = bare / max(1, bare_rows)
    print(
        f"ticks: {args.days * 24 + 1} hourly, engine time {engine_time:.1f}s, "
        f"{advanced:,} enrollment advances, {sent_rows:,} outbox rows sent ({dispatch_time:.1f}s)"
    )
    print(
        f"enrollments advanced per second: {advanced / engine_time:,.0f} overall; "
        f"heaviest tick {heaviest[1]:,} in {heaviest[0]:.2f}s = {heaviest[1] / max(heaviest[0], 1e-9):,.0f}/s"
    )
    # on a shared machine the CPU seconds of this process say more than the wall time
    print(f"engine CPU: {engine_cpu:.2f}s in all ticks, {heaviest[3]:.2f}s in the heaviest")
    print(
        f"idle tick: {idle_tick * 1000:.2f} ms = {idle_tick / scan:.4f} of one full scan of "
        f"{total:,} enrollments ({scan * 1000:.0f} ms)"
    )
    print(
        f"engine vs bare SQLite for the same rows: {per_row_engine * 1e6:.1f} us vs "
        f"{per_row_bare * 1e6:.1f} us per enrollment = ratio {per_row_engine / per_row_bare:.2f} (goal <= 2)"
    )
    print(
        f"condition tick (local midnight): mean {sum(condition_ticks) / len(condition_ticks):.2f}s, "
        f"max {max(condition_ticks):.2f}s"
    )
    print(f"peak RSS: {rss_mb:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
