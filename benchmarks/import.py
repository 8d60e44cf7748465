"""Benchmark: ``linerules import orders`` throughput (orders per second) beside bare SQLite
inserts of the same rows, in the same run.

    .venv/bin/python benchmarks/import.py [--orders 100000] [--items 2] [--linked 0.5]

Writes a Rakuten RMS order CSV (CP932, one row per item, Japanese headers) for ``--orders``
orders of 20,000 customers, of whom the share ``--linked`` are linked to friends, then:

- ``import``: the whole command path (read and decode the file, check every row, group by
  order id, store by order id, count linked customers' orders for their friends, recount those
  friends), into a fresh database, as ``linerules import orders --format rakuten`` does;
- ``again``: the same file a second time (every order already imported: nothing doubles);
- ``bare``: plain ``executemany`` INSERTs of the same orders into a one-table SQLite file in one
  transaction (no checks, no friends, no activity rows): the floor the import is compared with.

Prints rows, seconds and orders/s for each and the ratio import / bare.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.runtime.identity import link_many  # noqa: E402
from engine.runtime.importer import import_orders, read_orders  # noqa: E402
from engine.runtime.store import Store  # noqa: E402

HEADER = "受注番号,受注ステータス,注文日時,合計金額,注文者メールアドレス,商品管理番号,商品名,単価,個数"
CUSTOMERS = 20000


def write_file(path: Path, orders: int, items: int, rng: random.Random) -> int:
    rows = [HEADER]
    for n in range(orders):
        order_id = f"123456-2026{1 + n % 12:02d}{1 + n % 28:02d}-{n:010d}"
        customer = f"c{rng.randrange(CUSTOMERS):05d}@pc.fw.rakuten.ne.jp"
        status = "キャンセル" if n % 50 == 0 else "発送完了"
        prices = [rng.choice((1100, 2200, 3300, 5500)) for _ in range(items)]
        for i, price in enumerate(prices):
            rows.append(
                f"{order_id},{status},2026-{1 + n % 12:02d}-{1 + n % 28:02d} 12:{n % 60:02d}:00,"
                f"{sum(prices)},{customer},sku-{rng.randrange(500)},化粧水 {i},{price},1"
            )
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode("cp932"))
    return len(rows) - 1


def bare(path: Path, orders: list) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer TEXT, at INTEGER, amount REAL, items TEXT)")
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
        [(o.order_id, o.customer, o.at, o.amount, repr(o.items)) for o in orders],
    )
    conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=2)
    ap.add_argument("--linked", type=float, default=0.5, help="share of customers linked to friends")
    args = ap.parse_args()
    rng = random.Random(7)
    import zoneinfo

    tz = zoneinfo.ZoneInfo("Asia/Tokyo")
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "rms_orders.csv"
        rows = write_file(csv_path, args.orders, args.items, rng)
        store = Store(str(Path(tmp) / "linerules.db"))
        linked = [(f"c{i:05d}@pc.fw.rakuten.ne.jp", f"U{i:032x}") for i in range(int(CUSTOMERS * args.linked))]
        with store.transaction():
            link_many(store, linked, "import", 0)

        started, cpu = time.perf_counter(), time.process_time()
        orders, summary = read_orders(str(csv_path), "rakuten", {}, tz)
        read_cpu = time.process_time() - cpu
        import_orders(store, orders, summary)
        took, took_cpu = time.perf_counter() - started, time.process_time() - cpu
        started, cpu = time.perf_counter(), time.process_time()
        orders2, again = read_orders(str(csv_path), "rakuten", {}, tz)
        import_orders(store, orders2, again)
        took_again, again_cpu = time.perf_counter() - started, time.process_time() - cpu
        store.close()
        took_bare = bare(Path(tmp) / "bare.db", orders)

    print(f"{args.orders:,} orders, {rows:,} rows (CP932), {len(linked):,} of {CUSTOMERS:,} customers linked")
    print(
        f"  import: {took:7.2f} s  {args.orders / took:10,.0f} orders/s   "
        f"({summary.counted:,} counted, {summary.kept:,} kept, {len(summary.refused)} refused)"
    )
    print(
        f"          {took_cpu:7.2f} s of CPU ({read_cpu:.2f} s reading the file, "
        f"{took_cpu - read_cpu:.2f} s storing): what a machine to itself takes"
    )
    print(
        f"  again:  {took_again:7.2f} s  {args.orders / took_again:10,.0f} orders/s   "
        f"({again.duplicate:,} already imported, {again.counted + again.kept} new; {again_cpu:.2f} s of CPU)"
    )
    print(f"  bare:   {took_bare:7.2f} s  {args.orders / took_bare:10,.0f} orders/s   (executemany INSERT, one table)")
    print(f"  import / bare: {took / took_bare:.1f}x")


if __name__ == "__main__":
    main()
