"""Shared fixtures. The LINE emulator (``line_emulator``, ``line_env``, ``line_webhook`` ...)
comes from linerules' own pytest plugin, engine/testing/pytest_plugin.py."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


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
