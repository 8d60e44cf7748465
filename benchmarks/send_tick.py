"""Benchmark: the whole tick of a personalised send, per friend, in this checkout or another.

    .venv/bin/python benchmarks/send_tick.py                           # this checkout
    git worktree add --detach /tmp/issue14 1c41fc9                     # the code issue 14 measured
    .venv/bin/python benchmarks/send_tick.py --tree /tmp/issue14       # the same sends there

(The code of 1c41fc9 still imports sqlite-utils, which the project no longer needs: install it
beside, ``pip install --target /tmp/su sqlite-utils``, and run that tree with
``PYTHONPATH=/tmp/su``.)

The three sends of ``benchmarks/render.py`` (``flex``, ``text``, ``winback_90d``: the same
templates, settings and SQL-written population of 20,000 friends), each sent by a rule
``when schedule "0 10 * * *"``. One tick at 09:59 finds nothing to do; the CPU time of the tick
at 10:00 is measured: the schedule's audience entered, the walk and every send decided,
rendered and written, through the engine of the checkout named by ``--tree``. That is what the
issue measured ("~0.7 ms per friend in the walk": the code of then rendered in the walk), so
the figure compares across the engine's layouts; ``benchmarks/render.py`` measures only this
code's deliver stage, in more detail.

Prints, per send, the median CPU time per friend of ``--rounds`` rounds (each on a fresh
SQLite file) and the outbox rows written. For a before/after, run both trees alternately in one
sitting (the machine's speed moves between sittings).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sendfolders import SENDS, START, populate, project_of  # noqa: E402  (no engine imported)


def engine_of(tree: Path):
    """(Engine, timeutil, load_project, Store) of the checkout ``tree`` (either layout)."""
    sys.path.insert(0, str(tree))
    from engine.interpreter import Engine

    if (tree / "engine" / "language").is_dir():
        from engine.language import timeutil
        from engine.language.project import load_project
        from engine.runtime.store import Store
    else:  # the flat layout of the code before the stages and subpackages (1c41fc9)
        from engine import timeutil
        from engine.project import load_project
        from engine.store import Store
    return Engine, timeutil, load_project, Store


def one_round(parts, send: str, n: int, tmp: Path, k: int) -> tuple[float, int]:
    engine_cls, timeutil, load_project, store_cls = parts
    project = project_of(tmp, send, k, load_project)
    tz = project.settings.tz
    start = int(dt.datetime.fromisoformat(START).timestamp())
    store = store_cls(str(tmp / f"{send}-{k}.db"))
    c = store.conn
    c.execute("BEGIN")
    populate(c, n, start)  # the population of benchmarks/render.py, with the connection alone
    c.execute("COMMIT")
    engine = engine_cls(project, store, clock=lambda: timeutil.local(start, tz))
    engine.tick(timeutil.local(start, tz))  # nothing due yet: the schedule fires at 10:00
    gc.collect()
    cpu = time.process_time()
    engine.tick(timeutil.local(start + 60, tz))
    cpu = time.process_time() - cpu
    rows = c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    store.close()
    return cpu / n, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="the checkout to measure (default: this one)")
    parser.add_argument("--friends", type=int, default=20_000, help="friends sent to per round (default 20,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per send; medians are printed (default 3)")
    parser.add_argument("--send", action="append", choices=list(SENDS), help="only this send (repeatable)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    parts = engine_of(tree)
    with tempfile.TemporaryDirectory() as tmp:
        for send in args.send or SENDS:
            rounds = [one_round(parts, send, args.friends, Path(tmp), k) for k in range(args.rounds)]
            cpu = statistics.median(r[0] for r in rounds)
            print(
                f"{send}: the tick that sends it {cpu * 1e6:.1f} us CPU per friend "
                f"(rounds {', '.join(f'{r[0] * 1e6:.1f}' for r in rounds)}); {rounds[0][1]:,} outbox rows  "
                f"[{args.friends:,} friends, {tree.name}]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
