"""Benchmark: ``linerules test rules/`` as a process, the way a marketer or CI runs it.

    .venv/bin/python benchmarks/ruletest.py [--runs 7]

Prints the median wall and CPU time (user + system) of ``--runs`` runs of the sample's rule
tests (goal: wall <= 2 s, start-up included), beside a bare ``python -c pass``, and how the time
of one run divides into start-up (imports and loading the rules) and the tests themselves
(with the number of the engine's ticks they ran).
Every process finds Python's compiled bytecode, as an installed package does (pip compiles it
when it installs), and a warm cache folder of its own.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 2.0


def timed_runs(cmd: list[str], n: int, env: dict) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of ``n`` runs of ``cmd``."""
    walls, cpus = [], []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


PARTS = """
import sys, time
t0 = time.process_time()
from engine.runtime import ruletest
from engine.language.project import load_project
import engine.runtime.simulate
t1 = time.process_time()
loaded = load_project("rules")
t2 = time.process_time()
import io
from engine.interpreter import Engine
ticks, tick = [], Engine.tick
Engine.tick = lambda self, *a, **kw: ticks.append(1) or tick(self, *a, **kw)
ruletest.main("rules", out=io.StringIO(), err=io.StringIO())
t3 = time.process_time()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f} {len(ticks)}")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as pycache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(LINERULES_CACHE_DIR=cache, PYTHONPYCACHEPREFIX=pycache)
        test = [sys.executable, "-m", "engine.cli", "test", "rules"]
        subprocess.run(test, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)  # warm
        bare = timed_runs([sys.executable, "-c", "pass"], args.runs, env)
        run = timed_runs(test, args.runs, env)
        parts = [
            subprocess.run(
                [sys.executable, "-c", PARTS], cwd=ROOT, env=env, capture_output=True, text=True, check=True
            ).stdout.split()
            for _ in range(args.runs)
        ]
    imports, load, tests = (statistics.median(float(p[i]) for p in parts) for i in range(3))
    verdict = "goal met" if run[0] <= GOAL else "goal NOT met"
    print(f"`linerules test rules/` as a process, median of {args.runs} (wall / CPU):")
    print(f"  python -c pass:     {bare[0] * 1000:6.0f} ms / {bare[1] * 1000:6.0f} ms")
    print(
        f"  linerules test:     {run[0] * 1000:6.0f} ms / {run[1] * 1000:6.0f} ms "
        f"(goal <= {GOAL * 1000:.0f} ms wall: {verdict})"
    )
    print(
        f"  of which (CPU, in one process): imports {imports * 1000:.0f} ms, loading the rules "
        f"{load * 1000:.0f} ms, the tests {tests * 1000:.0f} ms ({parts[0][3]} clock stops)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
