"""migrate-db benchmark: an engine database with friends in flight copied into PostgreSQL.

    python benchmarks/migrate_db.py                         # 50,000 friends, 3 days, a fresh local server
    python benchmarks/migrate_db.py --friends 200000 --pg postgresql://USER@HOST/DB

The SQLite database is made as in benchmarks/engine.py (the population written with SQL, then
days of events through the store and the engine on the sample rules, hourly ticks, sends marked
sent). Then ``linerules migrate-db``'s copy runs into an empty schema and prints rows per
second; a second run (nothing left to copy) shows the cost of the check alone.
Without --pg the benchmark starts its own PostgreSQL (engine/testing/pgserver.py; durability
off, as for tests: a real server's fsync makes the copy slower).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.interpreter import Engine  # noqa: E402
from engine.language import timeutil  # noqa: E402
from engine.runtime import migrate_db  # noqa: E402
from engine.runtime.store import Store  # noqa: E402
from engine.testing import pgserver  # noqa: E402


def _engine_bench():
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "benchmarks" / "engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(path: str, friends: int, days: int, seed: int) -> None:
    bench = _engine_bench()
    project = bench.load_rules(str(ROOT / "rules"))
    tz = project.settings.tz
    start = int(dt.datetime.fromisoformat(bench.START).timestamp())
    store = Store(path)
    bench.populate(store, friends, start)
    engine = Engine(project, store, clock=lambda: timeutil.local(start, tz))
    events = bench.generate_events(friends, start, days, seed)
    i = 0
    for hour in range(days * 24 + 1):
        now = start + hour * 3600
        batch = []
        while i < len(events) and events[i].at.timestamp() <= now:
            batch.append(events[i])
            i += 1
        if batch:
            store.apply_events(batch, received_at=now)
        engine.tick(timeutil.local(now, tz), conditions=hour % 24 == 0)
        bench.dispatch(store, now)
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--friends", type=int, default=50_000, help="population size (default 50,000)")
    parser.add_argument("--days", type=int, default=3, help="days of events before the move (default 3)")
    parser.add_argument("--pg", default=None, help="a postgresql:// URL (default: start a local server)")
    parser.add_argument("--batch", type=int, default=migrate_db.BATCH)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="lr-migrate-bench-")
    path = os.path.join(folder, "linerules.db")
    started = time.perf_counter()
    build(path, args.friends, args.days, args.seed)
    print(
        f"SQLite database: {args.friends:,} friends, {args.days} days of events, built in "
        f"{time.perf_counter() - started:.1f}s, {os.path.getsize(path) / 1e6:.1f} MB"
    )

    server = None
    if args.pg is None:
        server = pgserver.open_server()
        base = server.url
    else:
        base = args.pg
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    url = pgserver.with_search_path(base, schema)
    try:
        quiet = lambda _text: None  # noqa: E731
        started = time.perf_counter()
        results = migrate_db.migrate_db(path, url, batch=args.batch, say=quiet)
        first = time.perf_counter() - started
        rows = sum(r.new for r in results)
        print(migrate_db.report(results))
        print(f"copy: {rows:,} rows in {first:.1f}s = {rows / first:,.0f} rows/s (batch {args.batch:,})")
        started = time.perf_counter()
        again = migrate_db.migrate_db(path, url, batch=args.batch, say=quiet)
        second = time.perf_counter() - started
        print(
            f"second run: {sum(r.new for r in again):,} rows copied, {second:.1f}s "
            f"({'every row compared and equal' if all(r.ok for r in again) else 'ROWS DIFFER'})"
        )
    finally:
        if server is not None and server.cluster is not None:
            server.cluster.stop()
        elif args.pg is not None:
            import psycopg

            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        os.remove(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
