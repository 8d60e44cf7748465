"""Benchmark: the tick of one personalised reply on an account of many tagged friends.

    .venv/bin/python benchmarks/one_send.py                          # 100,000 friends, this checkout
    .venv/bin/python benchmarks/one_send.py --tree /tmp/before        # another checkout (a worktree)

An account of ``--friends`` current friends (the population of ``benchmarks/render.py``), each
with three tags, and the rule ``when followed then send text`` (the personalised ``text`` send of
``benchmarks/sendfolders.py``). A new friend follows; the CPU time of the tick that enters them,
walks them and decides, renders and writes their one reply is measured, for ``--rounds`` new
friends one after the other (median printed). Beside it, in the same run, the floor: the same
tick on an account of the same friends without tags.

A tick that sends to one friend should not cost in proportion to the account: before the due
sends' tags were read by the tags' key, SQLite read the whole tags table at each such tick.
For a before/after, run both checkouts alternately in one sitting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from send_tick import engine_of  # noqa: E402  (no engine imported)
from sendfolders import MESSAGES, SAMPLE, START, populate  # noqa: E402

RULE = "rule hello when followed then send text\n"
TAGS = ("vip", "autumn", "newsletter")


def write_folder(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "settings.yaml").write_text("timezone: Asia/Tokyo\nutm: true\n", encoding="utf-8")
    (root / "messages.yaml").write_text(MESSAGES + SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    (root / "main.rule").write_text(RULE, encoding="utf-8")


def event_class(tree: Path):
    """The measured checkout's ``Event`` (either layout; :func:`engine_of` put it first)."""
    if (tree / "engine" / "runtime").is_dir():
        from engine.runtime.events import Event
    else:  # the flat layout (1c41fc9)
        from engine.events import Event
    return Event


def ticks(parts, event_cls, tmp: Path, friends: int, tagged: bool, rounds: int) -> list[float]:
    """CPU seconds of each tick that replies to one new friend."""
    engine_cls, timeutil, load_project, store_cls = parts
    folder = tmp / f"rules-{tagged}"
    write_folder(folder)
    loaded = load_project(str(folder))
    assert loaded.project is not None, [d.message for d in loaded.diagnostics]
    project = loaded.project
    tz = project.settings.tz
    start = int(dt.datetime.fromisoformat(START).timestamp())
    store = store_cls(str(tmp / f"account-{tagged}.db"))
    c = store.conn
    c.execute("BEGIN")
    populate(c, friends, start)
    if tagged:
        for tag in TAGS:
            c.execute("INSERT INTO tags(friend, tag, added_at) SELECT id, ?, ? FROM friends", (tag, start))
    c.execute("COMMIT")
    engine = engine_cls(project, store, clock=lambda: timeutil.local(start, tz))
    engine.tick(timeutil.local(start, tz))
    spent = []
    for k in range(rounds):
        at = start + 60 * (k + 1)
        event = event_cls("follow", f"N{k:07d}", timeutil.local(at, tz), {})
        store.apply_events([event], received_at=at)
        cpu = time.process_time()
        engine.tick(timeutil.local(at, tz))
        spent.append(time.process_time() - cpu)
    sent = c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert sent == rounds, f"{sent} outbox rows for {rounds} new friends"
    store.close()
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="the checkout to measure (default: this one)")
    parser.add_argument("--friends", type=int, default=100_000, help="friends of the account (default 100,000)")
    parser.add_argument("--rounds", type=int, default=21, help="new friends, one tick each (default 21)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    parts = engine_of(tree)
    event_cls = event_class(tree)
    with tempfile.TemporaryDirectory() as tmp:
        bare = ticks(parts, event_cls, Path(tmp), args.friends, False, args.rounds)
        tagged = ticks(parts, event_cls, Path(tmp), args.friends, True, args.rounds)
    print(f"one reply's tick, {args.friends:,} friends, median of {args.rounds} [{tree.name}]:")
    print(f"  friends without tags: {statistics.median(bare) * 1e3:7.2f} ms CPU")
    print(
        f"  three tags each:      {statistics.median(tagged) * 1e3:7.2f} ms CPU "
        f"({statistics.median(tagged) / statistics.median(bare):.1f}× the untagged account)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
