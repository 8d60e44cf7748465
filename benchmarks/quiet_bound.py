"""Benchmark: when time alone can next change a condition with an activity term.

    .venv/bin/python benchmarks/quiet_bound.py                       # 1,000,000 activities
    .venv/bin/python benchmarks/quiet_bound.py --tree /tmp/before     # another checkout

After a condition check that entered nobody, the engine works out the first moment at which
time alone may change who enters (``ConditionTriggers.still_quiet``): for ``not purchased within
90d``, the first stored activity that leaves the 90 days. This measures those queries
(``sqlcond.change_moments`` through ``Store.first_moment``) on a SQLite file holding
``--activities`` rows of four kinds, in the checkout named by ``--tree``, beside the floor
measured in the same run: one index seek, the first activity of one kind in the span. Prints
the median of ``--rounds`` and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from send_tick import engine_of  # noqa: E402  (no engine imported)

RULE = "rule r when not purchased within 90d then send a"
START = 1_790_000_000


def median_ms(run, rounds: int) -> float:
    spent = []
    for _ in range(rounds):
        t = time.perf_counter()
        run()
        spent.append(time.perf_counter() - t)
    return statistics.median(spent) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="the checkout to measure (default: this one)")
    parser.add_argument("--activities", type=int, default=1_000_000, help="activity rows (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=11, help="rounds; medians are printed (default 11)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    store_cls = engine_of(tree)[3]
    from engine.language import ir
    from engine.language.project import compile_source
    from engine.runtime import sqlcond

    loaded = compile_source(RULE, messages={"a": ir.MessageDef("a", ({"type": "text", "text": "a"},))})
    assert loaded.project is not None, [d.message for d in loaded.diagnostics]
    cond = loaded.project.rules["r"].trigger.cond
    with tempfile.TemporaryDirectory() as tmp:
        store = store_cls(str(Path(tmp) / "activity.db"))
        c = store.conn
        c.execute("BEGIN")
        c.execute(
            "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :n - 1) "
            "INSERT INTO activity(friend, kind, amount, at) SELECT printf('U%08d', i % 300000), "
            "CASE i % 4 WHEN 0 THEN 'order' WHEN 1 THEN 'click' WHEN 2 THEN 'view' ELSE 'cart' END, 1000, "
            ":start + i * 10 FROM seq",
            {"n": args.activities, "start": START},
        )
        c.execute("COMMIT")
        now = START + args.activities * 10
        queries = sqlcond.change_moments(cond, loaded.project.segments)
        params = {"now": now}
        found = store.first_moment(queries, params)
        engine = median_ms(lambda: store.first_moment(queries, params), args.rounds)
        seek = "SELECT MIN(at) FROM activity WHERE kind = 'order' AND at > :now - 7776000"
        floor = median_ms(lambda: c.execute(seek, params).fetchone(), args.rounds)
        store.close()
    print(f"the quiet bound of `not purchased within 90d`, {args.activities:,} activities [{tree.name}]:")
    print(f"  change_moments through first_moment: {engine:8.3f} ms (the moment: {found})")
    print(f"  floor, one index seek:               {floor:8.3f} ms; engine / floor = {engine / floor:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
