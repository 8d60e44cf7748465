"""Benchmark: what a personalised send costs per friend in the deliver stage.

    .venv/bin/python benchmarks/render.py                  # 20,000 friends, 3 rounds
    .venv/bin/python benchmarks/render.py --friends 50000 --rounds 5
    .venv/bin/python benchmarks/render.py --send text --sent 500000   # an outbox with history

A schedule rule sends one message to every friend (SQL-written population, display names
with kana, kanji and emoji, a ``points`` attribute); one tick enters them all and the deliver
stage decides, renders and writes every send, through the real engine on a real SQLite file.
Three sends are measured, each in its own fresh database per round:

* ``flex``: a flex bubble with ``{{ friend.display_name }}`` in its altText and a title,
  ``{{ friend.points }}`` in a line, two tracked links (``base_url`` set: each link becomes a
  click-tracking URL per friend) and utm parameters;
* ``text``: a text message with the name, the points and one link (utm only, no tracking);
* ``winback_90d``: the sample rules' win-back (rules/messages.yaml): a text with
  ``{{ friend.display_name | default: "お客" }}`` and a link, and an image.

Per send it prints, as microseconds per friend (median of the rounds): the whole deliver
stage (wall time, and the process's CPU time in it: on shared cores the steadier of the two), the part spent rendering (``Renderer.render`` and ``Renderer.own_push``, and the payload's key where pushes are
grouped by it: ``Renderer.key``, before ``Renderer.hash``), the part spent writing the outbox
rows (``Store.add_due_pushes``, which writes the pushes rendered per friend and their delivery
rows set-based, and ``Store.add_outbox_rows``, which encodes each payload not encoded already
and, before ``add_due_pushes``, wrote every push), and the floor
measured in the same run: the bare python-liquid render of the same template strings for the
same friends plus one ``json.dumps`` of what they rendered to. The ratios (median over the
rounds of each round against its own floor) say how far the engine's rendering is from that
floor and what the whole stage costs against it. For a before/after, run the same file against
both trees in one sitting, alternating (docs/engine.md).

``--instructions`` counts instead, per send, the instructions (valgrind's callgrind) of the
deliver stage per friend: a child process that populates ``--friends`` friends (default 6,000
here) and runs both ticks, less one whose second tick skips the deliver stage, divided by the
friends: a figure a busy machine does not move (about two minutes per send and tree). Run
against another tree, the file copied into it, it counts that tree's stage.

``--sent N`` first records N pushes sent on earlier days (one a day to each friend), with their
delivery rows, as an account keeps them (rows stay, each with its retry key): what a send costs once the account has a
history rather than on an empty database. ``--send NAME`` measures only that send.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sendfolders import SENDS, START, populate, project_of  # noqa: E402

from engine.interpreter import Engine  # noqa: E402
from engine.language import timeutil  # noqa: E402
from engine.language.project import load_project  # noqa: E402
from engine.runtime.store import LinkRow, Store, link_tokens  # noqa: E402
from engine.stages import deliver  # noqa: E402


def earlier_sends(store: Store, n: int, friends: int, start: int, tz) -> None:
    """``n`` pushes sent before the round, one a day to each of the ``friends`` (the latest the
    day before), with their delivery rows and a tracked link each, as an account keeps them
    (rows stay: a retry key is what makes a repeat safe, a delivery row what the report and the
    daily cap read, a link what a click, even a late one, is counted by)."""
    payload = [{"type": "text", "text": "先週のおすすめ https://shop.example.jp/pick"}]
    for first in range(0, n, 10_000):
        rows, sends = [], []
        for i in range(first, min(n, first + 10_000)):
            at = start - 86400 * (1 + i // friends)
            friend = f"U{i % friends:08d}"
            rows.append(("push", [friend], payload, ["earlier"], "earlier", at, None, None))
            day = timeutil.local(at, tz).date().isoformat()
            sends.append((friend, "earlier", "s1", None, len(rows) - 1, ["earlier"], "sent", None, None, at, day, 1))
        tokens = link_tokens(len(rows))
        links = [
            LinkRow(t, r[1][0], "earlier", "earlier", "https://shop.example.jp/pick", r[5])
            for t, r in zip(tokens, rows)
        ]
        with store.transaction() as c:
            store.add_links(links)
            store.add_deliveries(sends, store.add_outbox_rows(rows, start - 86400))
            c.execute("UPDATE outbox SET status = 'sent', sent_at = not_before WHERE status = 'pending'")


def templates_of(value, out: list[str]) -> list[str]:
    if isinstance(value, dict):
        for v in value.values():
            templates_of(v, out)
    elif isinstance(value, list):
        for v in value:
            templates_of(v, out)
    elif isinstance(value, str) and ("{{" in value or "{%" in value):
        out.append(value)
    return out


def floor(defn, friends: list[dict]) -> float:
    """The bare python-liquid render of the message's template strings for each friend plus
    one ``json.dumps`` of what they rendered to: seconds for all friends."""
    from liquid import Environment

    env = Environment()
    compiled = [env.from_string(t) for t in templates_of(list(defn.objects), [])]
    gc.collect()
    t = time.perf_counter()
    for f in friends:
        json.dumps([c.render(friend=f) for c in compiled], ensure_ascii=False, separators=(",", ":"))
    return time.perf_counter() - t


class Timed:
    """Wraps a method of a class with a timer (seconds, and with ``cpu`` the process's CPU
    seconds, added up). Only the stage's timer reads the CPU clock: a read of it is a system
    call (about 0.8 us here), which the timers of the methods called per friend would add to
    the stage's own figure; they read the wall clock only (a tenth of that)."""

    def __init__(self, cls, name: str, cpu: bool = False):
        self.cls, self.name, self.real = cls, name, getattr(cls, name)
        self.seconds = self.cpu = 0.0
        timer, clock, cpu_clock = self, time.perf_counter, time.process_time

        if cpu:

            def timed(*args, **kwargs):
                t, c = clock(), cpu_clock()
                try:
                    return timer.real(*args, **kwargs)
                finally:
                    timer.seconds += clock() - t
                    timer.cpu += cpu_clock() - c

        else:

            def timed(*args, **kwargs):
                t = clock()
                try:
                    return timer.real(*args, **kwargs)
                finally:
                    timer.seconds += clock() - t

        setattr(cls, name, timed)

    def restore(self) -> None:
        setattr(self.cls, self.name, self.real)


def one_round(send: str, n: int, tmp: Path, k: int, sent_before: int = 0) -> dict[str, float]:
    project = project_of(tmp, send, k, load_project)
    tz = project.settings.tz
    start = timeutil.epoch(dt.datetime.fromisoformat(START))
    store = Store(str(tmp / f"{send}-{k}.db"))
    with store.transaction() as c:
        populate(c, n, start)
    earlier_sends(store, sent_before, n, start, tz)
    engine = Engine(project, store, clock=lambda: timeutil.local(start, tz))
    engine.tick(timeutil.local(start, tz))  # nothing due yet: the schedule fires at 10:00
    stage = Timed(deliver.DeliverStage, "run", cpu=True)
    # a push of one friend's own message is rendered by own_push, where the engine has it
    renders = [Timed(deliver.Renderer, name) for name in ("render", "own_push") if hasattr(deliver.Renderer, name)]
    hashing = Timed(deliver.Renderer, "key" if hasattr(deliver.Renderer, "key") else "hash")
    # the outbox rows: pushes rendered per friend are written set-based (add_due_pushes, where
    # the store has it), replies and others as rows (add_outbox_rows)
    writes = [Timed(Store, name) for name in ("add_outbox_rows", "add_due_pushes") if hasattr(Store, name)]
    gc.collect()
    try:
        engine.tick(timeutil.local(start + 60, tz))
    finally:
        for t in (stage, *renders, hashing, *writes):
            t.restore()
    sent = store.conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'queued'").fetchone()[0]
    assert sent == n, f"{sent} of {n} sends queued"
    friends = [store.friend(f"U{i:08d}") for i in range(0, n)]
    store.close()
    bare = floor(project.messages[send], [_vars(f) for f in friends])
    return {
        "deliver": stage.seconds / n,
        "deliver_cpu": stage.cpu / n,
        "render": (sum(t.seconds for t in renders) + hashing.seconds) / n,
        "outbox": sum(t.seconds for t in writes) / n,
        "floor": bare / n,
    }


def child(send: str, n: int, deliver_stage: bool) -> None:
    """One round's population and ticks, for ``--instructions`` (the deliver stage skipped
    unless ``deliver_stage``)."""
    with tempfile.TemporaryDirectory() as tmp:
        project = project_of(Path(tmp), send, 0, load_project)
        tz = project.settings.tz
        start = timeutil.epoch(dt.datetime.fromisoformat(START))
        store = Store(str(Path(tmp) / "child.db"))
        with store.transaction() as c:
            populate(c, n, start)
        engine = Engine(project, store, clock=lambda: timeutil.local(start, tz))
        engine.tick(timeutil.local(start, tz))
        if not deliver_stage:
            deliver.DeliverStage.run = lambda self, now, result: None
        engine.tick(timeutil.local(start + 60, tz))
        store.close()


def instructions(sends: list[str], n: int) -> int:
    """The deliver stage's instructions per friend, per send (see the module's docstring)."""
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 1
    import callgrind

    with tempfile.TemporaryDirectory() as pycache:
        env = callgrind.bytecode_env(pycache)
        for send in sends:
            cmd = [sys.executable, __file__, "--friends", str(n), "--send", send, "--child"]
            subprocess.run([*cmd, "skip"], env=env, check=True)  # the bytecode, compiled once
            skipped, full = callgrind.count([*cmd, "skip"], env), callgrind.count([*cmd, "deliver"], env)
            print(f"{send}: the deliver stage {(full - skipped) / n:,.0f} instructions per friend  [{n:,} friends]")
    return 0


def _vars(friend: dict) -> dict:
    return {**friend.get("attributes", {}), **{k: v for k, v in friend.items() if k != "attributes"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--friends", type=int, default=20_000, help="friends sent to per round (default 20,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per send; medians are printed (default 3)")
    parser.add_argument(
        "--sent",
        type=int,
        default=0,
        help="pushes the outbox holds from earlier days before each round (default 0: a new account)",
    )
    parser.add_argument("--send", action="append", choices=list(SENDS), help="only this send (repeatable)")
    parser.add_argument(
        "--instructions", action="store_true", help="count the stage's instructions per friend (valgrind)"
    )
    parser.add_argument("--child", choices=["skip", "deliver"], help=argparse.SUPPRESS)  # (for --instructions)
    args = parser.parse_args()
    if args.child:
        child(args.send[0], args.friends, args.child == "deliver")
        return 0
    if args.instructions:
        friends = args.friends if "--friends" in sys.argv else 6_000
        return instructions(args.send or list(SENDS), friends)
    with tempfile.TemporaryDirectory() as tmp:
        for send in args.send or SENDS:
            rounds = [one_round(send, args.friends, Path(tmp), k, args.sent) for k in range(args.rounds)]
            m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            # each round against the floor measured right after it (the machine's load moves both)
            m["render_x"] = statistics.median(r["render"] / r["floor"] for r in rounds)
            m["deliver_x"] = statistics.median(r["deliver"] / r["floor"] for r in rounds)
            print(
                f"{send}: deliver {m['deliver'] * 1e6:.1f} us/friend (CPU {m['deliver_cpu'] * 1e6:.1f} us), "
                f"of it rendering {m['render'] * 1e6:.1f} us "
                f"and writing the rows of the sends {m['outbox'] * 1e6:.1f} us; "
                f"floor (bare Liquid + json.dumps) {m['floor'] * 1e6:.1f} us: "
                f"rendering {m['render_x']:.2f}x the floor, the whole stage {m['deliver_x']:.2f}x"
                f"  [{args.friends:,} friends, {args.sent:,} earlier sends, median of {args.rounds}]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
