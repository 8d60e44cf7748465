"""Instructions counted by valgrind's callgrind, for the benchmarks' ``--instructions``: a figure
a busy machine does not move. Imports no engine."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


def bytecode_env(pycache: str, **extra: str) -> dict[str, str]:
    """This environment with compiled bytecode kept in ``pycache`` (as an installed package has
    it; ``PYTHONDONTWRITEBYTECODE`` would have every process compile the engine again)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPYCACHEPREFIX=pycache, **extra)
    return env


def count(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    """Instructions executed by the process ``cmd`` (its output is dropped)."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    return int(re.search(r"Collected : (\d+)", proc.stderr).group(1))
