"""Shared fixtures: a LINE Messaging API emulator on loopback, a fresh SQLite path, and a real
PostgreSQL server with a fresh schema per test (engine/testing/pgserver.py)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.line_emulator import Emulator, run_in_thread
from engine.testing.pgserver import pg_server, pg_url  # noqa: F401  (PostgreSQL fixtures)


@pytest.fixture
def line_emulator() -> Iterator[Emulator]:
    """A LINE emulator on 127.0.0.1 (a free port) for this test, on its own thread.

    Point the code under test at ``line_emulator.base_url`` with the token
    ``line_emulator.access_token``; add friends with ``add_user``; read ``delivered``,
    ``inbox(user_id)``, ``requests``; inject faults with ``inject`` / ``inject_timeout`` /
    ``inject_lost_response``. Works from synchronous and asynchronous tests alike.
    """
    with run_in_thread() as emulator:
        yield emulator


@pytest.fixture
def fresh_db_path(tmp_path: Path) -> Path:
    """A path for a new SQLite database file (not created yet) in the test's tmp_path."""
    return tmp_path / "linerules.db"


@pytest.fixture(autouse=True)
def _english_unless_asked(monkeypatch):
    """Every test starts in English whatever the machine's locale; a test that wants Japanese
    says so (``--lang ja``, ``LINERULES_LANG``, ``language: ja`` or ``i18n.use``)."""
    from engine import i18n

    for var in ("LINERULES_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    i18n.use("en")
    yield
    i18n.use("en")


@pytest.fixture(scope="session", autouse=True)
def _own_cache_folder(tmp_path_factory) -> Iterator[None]:
    """The parser's and the templates' cache in a folder of this test run (inherited by the
    ``linerules`` processes tests start), not in the user's own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LINERULES_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
