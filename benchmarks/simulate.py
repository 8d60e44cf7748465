"""Benchmark: ``linerules simulate`` of a generated timeline through the sample rules.

    .venv/bin/python benchmarks/simulate.py                     # 10,000 friends over 30 days
    .venv/bin/python benchmarks/simulate.py --friends 2000 --profile

The timeline: every friend follows at a random moment of the 30 days (half of them by the
parcel's QR card, some by the summer ad), a third of them buy once or twice, buyers' parcels are
shipped and some answer the delivery question, some send the coupon keyword, and a few leave.
It runs through ``simulate.run_timeline`` exactly as ``linerules simulate timeline.jsonl`` does
(in-memory database, hourly condition ticks, 30 days past the last event).

Prints the wall and CPU time (medians of ``--runs`` rounds), events per CPU second, the clock's stops
(ticks), SQL statements per tick, and the ratio of the whole simulation to the floor of storing
the same events into a fresh in-memory store (``Store.apply_events``), measured in the same run.
``--profile`` prints the top of a cProfile run instead.

``--coarsen SECONDS`` moves every event to the start of its slot of that many seconds (an hour:
3600), so that the clock stops far less often for the same events and the same work per event:
how much of the time goes to the stops themselves rather than to what happens at them.

``--stops`` sorts the clock's stops of one run by what happened at them (events stored, pushes
sent, whether it was a condition tick) and prints, for each kind, how many there were and their
mean and total wall time: where the time of a simulation goes, stop by stop.

``--windows`` records which friends had work at each stop of one run and counts the windows of
stops an exact merge could run as one (cut at each local hour and before a friend's second stop
in the window), then times a stop with nothing due on the state the run ended with.

``--instructions`` counts the instructions of one simulation with valgrind instead (a child
process that loads the rules, makes the timeline and simulates it, less one that stops before
simulating), with compiled bytecode: a figure a busy machine does not move. Slow: about four
minutes for ``--friends 2000``. With ``--tree DIR`` it counts the checkout ``DIR`` instead,
through that checkout's own ``benchmarks/simulate.py`` (its timeline generator and its engine:
the code issue 14 measured makes the same timeline), e.g.

    git worktree add --detach /tmp/issue14 1c41fc9
    PYTHONPATH=/tmp/su .venv/bin/python benchmarks/simulate.py --friends 2000 --instructions --tree /tmp/issue14

(1c41fc9 still imports sqlite-utils: ``pip install --target /tmp/su sqlite-utils``.) Without
``--tree``, one simulation of this checkout; run both for the ratio (tens of minutes for the
issue's code at 2,000 friends).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.language import timeutil  # noqa: E402
from engine.runtime import simulate
from engine.runtime.events import Event  # noqa: E402
from engine.runtime.store import Store  # noqa: E402

START = "2026-11-01T00:00:00+09:00"
DAYS = 30


def generate(friends: int, days: int = DAYS, seed: int = 14) -> list[Event]:
    """About 2.6 events per friend over ``days`` days (26,000 for 10,000 friends)."""
    rng = random.Random(seed)
    tz = dt.timezone(dt.timedelta(hours=9))
    start = timeutil.epoch(dt.datetime.fromisoformat(START))
    span = days * 86400
    events: list[Event] = []

    def at(ts: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(min(ts, start + span - 1)), tz)

    order = 0
    for i in range(friends):
        friend = f"U{i:06d}"
        followed = start + rng.randrange(span)
        source = rng.choices(["qr=shipping", "ad=summer", None], weights=[5, 2, 3])[0]
        events.append(Event("follow", friend, at(followed), {"source": source} if source else {}))
        if rng.random() < 0.35:
            events.append(Event("attributes", friend, at(followed + 5), {"set": {"display_name": f"友だち{i}"}}))
        for _ in range(rng.choice([0, 0, 1, 1, 2]) if rng.random() < 0.55 else 0):
            order += 1
            bought = followed + rng.randrange(3600, 5 * 86400)
            amount = rng.randrange(1000, 30000)
            events.append(
                Event(
                    "purchase",
                    friend,
                    at(bought),
                    {
                        "order_id": f"B-{order}",
                        "amount": amount,
                        "items": [
                            {
                                "product": f"SKU{rng.randrange(50)}",
                                "category": "cosmetics",
                                "price": amount,
                                "quantity": 1,
                            }
                        ],
                    },
                )
            )
            if rng.random() < 0.7:
                shipped = bought + rng.randrange(3600, 2 * 86400)
                events.append(Event("shipped", friend, at(shipped), {}))
                if rng.random() < 0.4:
                    events.append(
                        Event(
                            "postback",
                            friend,
                            at(shipped + 86400 + rng.randrange(36000)),
                            {"data": "action=delivery&answer=yes"},
                        )
                    )
        if rng.random() < 0.12:
            events.append(Event("message", friend, at(followed + rng.randrange(span)), {"text": "クーポンください"}))
        if rng.random() < 0.04:
            events.append(Event("unfollow", friend, at(followed + rng.randrange(86400, 10 * 86400))))
    events.sort(key=lambda e: e.at)
    return events


def coarsened(events: list[Event], seconds: int) -> list[Event]:
    """The same events, each at the start of its slot of ``seconds`` (in the order they were)."""
    from dataclasses import replace

    return [
        replace(e, at=dt.datetime.fromtimestamp(timeutil.epoch(e.at) // seconds * seconds, e.at.tzinfo)) for e in events
    ]


def load_rules(folder: str):
    from engine.language.diagnostics import render_text
    from engine.language.project import load_project

    loaded = load_project(folder)
    if loaded.project is None:
        sys.exit("the rules do not validate:\n" + render_text(loaded.diagnostics, loaded.sources))
    return loaded.project


class Patched:
    """While open, the methods :meth:`wrappers` names are replaced by wrappers of them
    (``unittest.mock.patch.object``, undone on exit, after :meth:`closing`)."""

    def wrappers(self) -> list[tuple[object, str, Callable]]:
        """(owner, attribute, a function of the original returning its replacement)."""
        raise NotImplementedError

    def closing(self) -> None:
        """Called on exit, before the originals are back."""

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        for owner, name, wrap in self.wrappers():
            self._stack.enter_context(mock.patch.object(owner, name, wrap(getattr(owner, name))))
        return self

    def __exit__(self, *exc) -> None:
        self.closing()
        self._stack.close()


def _engine():
    from engine.interpreter import Engine

    return Engine


class Counting(Patched):
    """Counts the clock's stops and the SQL statements of a run (``Store`` is patched)."""

    def __init__(self) -> None:
        self.statements = 0
        self.ticks = 0

    def wrappers(self):
        def init(original):
            def opened(store, *a, **kw):
                original(store, *a, **kw)
                store.conn.set_trace_callback(self._count)

            return opened

        def tick(original):
            def ticked(engine, *a, **kw):
                self.ticks += 1
                return original(engine, *a, **kw)

            return ticked

        return [(Store, "__init__", init), (_engine(), "tick", tick)]

    def _count(self, _sql: str) -> None:
        self.statements += 1


class Stops(Patched):
    """Times each stop of the clock (from one ``Engine.tick`` to the next) with what happened
    at it: events stored (0, 1, 2 or more), pushes sent (likewise) and whether it was a
    condition tick (``Store.apply_events``, ``Engine.tick`` and the simulated transport patched)."""

    def __init__(self) -> None:
        self.kinds: dict[tuple[int, int, bool], list[float]] = {}
        self._at: float | None = None
        self._now = [0, 0, False]

    def wrappers(self):
        def apply(original):
            def applied(store, events, **kw):
                self._now[0] += len(events)
                return original(store, events, **kw)

            return applied

        def tick(original):
            def ticked(engine, now, *, conditions=None):
                self._close()
                self._now = [0, 0, bool(conditions)]
                return original(engine, now, conditions=conditions)

            return ticked

        def send(original):
            def sent(store, now, tz, pushes, render):
                before = len(pushes)
                claimed = original(store, now, tz, pushes, render)
                self._now[1] += len(pushes) - before
                return claimed

            return sent

        return [(Store, "apply_events", apply), (_engine(), "tick", tick), (simulate, "_send_claimed", send)]

    def _close(self) -> None:
        at = time.perf_counter()
        if self._at is not None:
            events, sent, condition = self._now
            self.kinds.setdefault((min(events, 2), min(sent, 2), condition), []).append(at - self._at)
        self._at = at

    closing = _close

    def report(self) -> None:
        total = sum(sum(v) for v in self.kinds.values())
        print("stops of the clock by what happened at them (2 = two or more):")
        print("  events  pushes  condition tick     stops    mean ms   total s   share")
        for (events, sent, condition), times in sorted(self.kinds.items()):
            print(
                f"  {events:>6}  {sent:>6}  {'yes' if condition else 'no':>14}  {len(times):>8,}  "
                f"{1e3 * sum(times) / len(times):>9.3f}  {sum(times):>8.2f}  {sum(times) / total:>6.1%}"
            )


class Windows(Patched):
    """Records, stop by stop, which friends had work at each stop of the clock (an event
    applied, an enrollment walked, a send decided, a push sent; ``EventStage.apply``,
    ``Walk.run``, ``Store.load_due`` and the simulated transport patched) and whether it was a
    condition tick, to measure how many stops an exact merge could run as one: a window of stops
    ends at a local hour's boundary (the sample's condition slots, windows' openings, midnight
    and sale moments all fall on one), around a condition tick (it reads every friend as they
    are at its moment) and before a friend's second stop in it."""

    def __init__(self) -> None:
        self.stops: list[tuple[int, bool, set[str]]] = []

    def wrappers(self):
        from engine.stages.events import EventStage
        from engine.stages.walk import Walk

        stops = self.stops

        def tick(original):
            def ticked(engine, now, *, conditions=None):
                stops.append((timeutil.epoch(now), bool(conditions), set()))
                return original(engine, now, conditions=conditions)

            return ticked

        def apply(original):
            def applied(stage, ev, now, result):
                stops[-1][2].add(ev.friend)
                return original(stage, ev, now, result)

            return applied

        def walk(original):
            def walked(w, rows):
                stops[-1][2].update(r.friend for r in rows)
                return original(w, rows)

            return walked

        def load_due(original):
            def loaded(store, *a, **kw):
                chunk = original(store, *a, **kw)
                stops[-1][2].update(r[0] for r in store.conn.execute("SELECT friend FROM temp.lr_due"))
                return chunk

            return loaded

        def send(original):
            def sent(store, now, tz, pushes, render):
                before = len(pushes)
                claimed = original(store, now, tz, pushes, render)
                stops[-1][2].update(p[1] for p in pushes[before:])
                return claimed

            return sent

        return [
            (_engine(), "tick", tick),
            (EventStage, "apply", apply),
            (Walk, "run", walk),
            (Store, "load_due", load_due),
            (simulate, "_send_claimed", send),
        ]

    def report(self) -> None:
        busy = [(at, condition, friends) for at, condition, friends in self.stops if friends or condition]
        windows, by_friend, hour, inside, alone = 0, 0, None, set(), False
        for at, condition, friends in busy:
            same_hour = at // 3600 == hour
            if not same_hour or condition or alone or not inside.isdisjoint(friends):
                windows += 1
                by_friend += same_hour and not (condition or alone)
                hour, inside = at // 3600, set()
            inside |= friends
            alone = condition
        hours = len({at // 3600 for at, _, _ in busy})
        ticks = sum(condition for _, condition, _ in busy)
        print(f"stops with work: {len(busy):,} of {len(self.stops):,} ({ticks:,} condition ticks), in {hours:,} hours")
        print(
            f"exact windows (cut at each hour, around a condition tick and before a friend's second stop): "
            f"{windows:,}, {len(busy) / max(1, windows):.1f} stops each; {by_friend:,} cuts by a friend"
        )
        print(f"cut at the hours only: {hours:,} windows, {len(busy) / max(1, hours):.1f} stops each")


def empty_stop(project, db: str, stops: int = 2000) -> tuple[float, float]:
    """The mean wall time and statements of a stop of the clock at which nothing is due (the
    tick, in its transaction, and the next wake-up, as ``run_timeline`` makes them), on an
    in-memory copy of the database ``db`` a simulation left, just after its last tick."""
    from engine.interpreter import Engine

    copy = Store(":memory:")
    source = Store(db, read_only=True)
    source.conn.backup(copy.conn)
    source.close()
    tz = project.settings.tz
    last = int(copy.get_meta("engine.last_tick"))
    engine = Engine(project, copy, clock=lambda: timeutil.local(last, tz))
    counted = [0]
    copy.conn.set_trace_callback(lambda _sql: counted.__setitem__(0, counted[0] + 1))
    started = time.perf_counter()
    for n in range(1, stops + 1):
        now = timeutil.local(last + n, tz)
        with copy.batch():
            engine.tick(now, conditions=False)
        engine.next_wakeup(now)
    seconds = (time.perf_counter() - started) / stops
    copy.close()
    return seconds, counted[0] / stops


def floor(events: list[Event]) -> float:
    """Storing the events alone: a fresh in-memory store, one apply per 500."""
    started = time.perf_counter()
    store = Store(":memory:")
    for i in range(0, len(events), 500):
        store.apply_events(events[i : i + 500])
    store.close()
    return time.perf_counter() - started


def instructions(args: argparse.Namespace) -> int:
    """Instructions (valgrind's callgrind) of a child that simulates the timeline, less those of
    one that only loads the rules and makes the timeline."""
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 1
    if args.tree is not None:  # that checkout's benchmark module, in a process of its own
        tree = str(Path(args.tree).resolve())
        child = [sys.executable, "-c", _TREE_CHILD, tree, str(args.friends), str(args.days)]
    else:
        child = [sys.executable, __file__, "--friends", str(args.friends), "--days", str(args.days)]
        child += ["--rules", args.rules, "--coarsen", str(args.coarsen), "--child"]

    import callgrind

    with tempfile.TemporaryDirectory() as pycache:
        env = callgrind.bytecode_env(pycache)
        subprocess.run([*child, "load"], env=env, check=True)  # the bytecode, compiled once
        loaded, simulated = callgrind.count([*child, "load"], env), callgrind.count([*child, "run"], env)
    print(f"timeline: {args.friends:,} friends over {args.days} days" + (f" [{args.tree}]" if args.tree else ""))
    print(f"instructions (valgrind) of one simulation: {(simulated - loaded) / 1e6:,.0f} million")
    return 0


#: The child of ``--instructions --tree``: ``python -c`` this TREE FRIENDS DAYS load|run.
_TREE_CHILD = """
import sys
tree, friends, days, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.path[:0] = [tree, tree + "/benchmarks"]
import simulate as bench
project, events = bench.load_rules(tree + "/rules"), bench.generate(friends, days)
if mode == "run":
    bench.simulate.run_timeline(project, events, until=None, tick_seconds=3600, webhook_tokens=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--friends", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=DAYS)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rules", default=str(ROOT / "rules"))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--coarsen", type=int, default=0, metavar="SECONDS", help="events at the start of their slot")
    ap.add_argument("--stops", action="store_true", help="time the clock's stops by what happened at them")
    ap.add_argument("--windows", action="store_true", help="how many stops an exact merge could run as one")
    ap.add_argument("--instructions", action="store_true", help="count one simulation's instructions (valgrind)")
    ap.add_argument("--tree", help="with --instructions: count this other checkout instead")
    ap.add_argument("--child", choices=["load", "run"], help=argparse.SUPPRESS)  # (for --instructions)
    args = ap.parse_args()
    if args.instructions:
        return instructions(args)
    project = load_rules(args.rules)
    events = generate(args.friends, args.days)
    if args.coarsen > 1:
        events = coarsened(events, args.coarsen)

    def run() -> list[dict]:
        return simulate.run_timeline(project, events, until=None, tick_seconds=3600, webhook_tokens=True)

    if args.child == "load":
        return 0
    if args.child == "run":
        run()
        return 0
    if args.stops:
        with Stops() as stops:
            pushes = run()
        print(
            f"timeline: {args.friends:,} friends, {len(events):,} events over {args.days} days; {len(pushes):,} pushes"
        )
        stops.report()
        return 0
    if args.windows:
        with tempfile.TemporaryDirectory() as folder:
            db = str(Path(folder) / "simulated.db")
            with Windows() as windows:
                pushes = simulate.run_timeline(
                    project, events, until=None, tick_seconds=3600, webhook_tokens=True, db_path=db
                )
            print(
                f"timeline: {args.friends:,} friends, {len(events):,} events over {args.days} days; "
                f"{len(pushes):,} pushes"
            )
            windows.report()
            seconds, statements = empty_stop(project, db)
        print(
            f"a stop with nothing due, on the state the run ended with: {1e6 * seconds:.0f} µs, {statements:.1f} statements"
        )
        return 0
    if args.profile:
        import cProfile
        import pstats

        cProfile.runctx("run()", globals(), {"run": run}, "/tmp/simulate.prof")
        pstats.Stats("/tmp/simulate.prof").sort_stats("cumulative").print_stats(40)
        return 0
    with Counting() as counting:
        pushes = run()
    walls, cpus, floors = [], [], []
    for _ in range(args.runs):
        t, c = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        c = time.process_time()
        floor(events)
        floors.append(time.process_time() - c)
    wall, cpu, base = statistics.median(walls), statistics.median(cpus), statistics.median(floors)
    coarse = f", each at the start of its {args.coarsen} s slot" if args.coarsen > 1 else ""
    print(
        f"timeline: {args.friends:,} friends, {len(events):,} events over {args.days} days{coarse}; "
        f"{len(pushes):,} pushes"
    )
    print(
        f"simulate: {wall:.2f} s wall, {cpu:.2f} s CPU (medians of {args.runs}) = "
        f"{len(events) / cpu:,.0f} events per CPU second"
    )
    print(
        f"clock stops: {counting.ticks:,} ticks; {counting.statements / max(1, counting.ticks):.1f} "
        f"SQL statements per tick"
    )
    print(f"storing the same events alone: {base:.2f} s CPU; simulate / storing = {cpu / base:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
