"""The user's cache folder, where work that only depends on installed code and on text is kept
between processes (the parser's tables, what each message template uses).

``$LINERULES_CACHE_DIR`` when set (empty turns every cache off), else
``$XDG_CACHE_HOME/linerules``, else ``~/.cache/linerules``. Everything kept there is checked
against what it was made from when read, and a missing, stale or unreadable file is simply
made again: deleting the folder is always safe.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def cache_dir() -> str | None:
    """The folder (made when missing, private to the user), or None when there is none."""
    folder = os.environ.get("LINERULES_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "linerules")
    if not folder:
        return None
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None


def read_json(name: str) -> Any:
    """The JSON value kept under ``name``, or None (no cache, no file, not JSON)."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write_json(name: str, value: Any) -> None:
    """Keep ``value`` under ``name``, replacing the file whole (a reader never sees half of
    it); a cache that cannot be written is silently skipped."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, ensure_ascii=False)
        os.replace(tmp, os.path.join(folder, name))
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
