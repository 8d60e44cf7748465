"""The runner daemon: ``python runner.py`` is ``linerules run``.

The design card's entry point. It depends on the package (``engine.runner.server`` for
:func:`main`, ``engine.cli`` for the command line); nothing in the package imports it."""

from __future__ import annotations

import sys


def main(
    *,
    rules_dir: str = "rules",
    db: str = "linerules.db",
    listen: str = "127.0.0.1:8080",
    tick_seconds: float = 60.0,
    condition_interval: int = 0,
) -> int:
    from engine.runner.server import serve

    return serve(
        rules_dir=rules_dir, db=db, listen=listen, tick_seconds=tick_seconds, condition_interval=condition_interval
    )


if __name__ == "__main__":
    from engine.cli import cli

    sys.exit(cli(["run", *sys.argv[1:]], prog_name="runner.py"))
