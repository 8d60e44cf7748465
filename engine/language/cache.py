"""The user's cache folder, where work that only depends on installed code and on text is kept
between processes (the parser's tables, what each message template uses, the checked result
of each YAML file beside the rules).

``$LINERULES_CACHE_DIR`` when set (empty turns every cache off), else
``$XDG_CACHE_HOME/linerules``, else ``~/.cache/linerules``. Everything kept there is checked
against what it was made from when read, and a missing, stale or unreadable file is simply
made again: deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from typing import Any


def cache_dir() -> str | None:
    """The folder (made when missing, private to the user), or None when there is none."""
    folder = _named_folder()
    if folder is None:
        return None
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None


def _named_folder() -> str | None:
    """Where the folder is (None: every cache off), without making or checking it: enough to
    read from it, as a read from a missing folder simply finds nothing (a few system calls
    less on every load)."""
    folder = os.environ.get("LINERULES_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "linerules")
    return folder or None


def read_bytes(path: str) -> bytes:
    """The whole file, in four system calls (open, read, read to the end, close): a buffered
    ``open(path, "rb").read()`` makes nine, which a load of a folder pays for every file.
    OSError as from ``open``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_json(name: str) -> Any:
    """The JSON value kept under ``name``, or None (no cache, no file, not JSON)."""
    folder = _named_folder()
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


def read_pickled(name: str) -> Any:
    """The value :func:`write_pickled` kept under ``name``, or None: no cache, no file, or one
    whose bytes do not match the digest written with them (damaged: it is then made again).
    The caller checks that the value is what it asks for."""
    folder = _named_folder()
    if folder is None:
        return None
    try:
        data = read_bytes(os.path.join(folder, name))
    except OSError:
        return None
    digest, payload = data[:32], data[32:]
    if len(digest) != 32 or hashlib.sha256(payload).digest() != digest:
        return None
    try:
        return pickle.loads(payload)
    except Exception:  # noqa: BLE001 - e.g. a file from another version of the code: made again
        return None


def write_pickled(name: str, value: Any, *, prefix: str, limit: int = 256) -> None:
    """Keep ``value`` under ``name`` (pickled, after the SHA-256 digest of the pickle),
    replacing the file whole; when more than ``limit`` files start with ``prefix``, the oldest
    go. A cache that cannot be written is silently skipped."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - a value that cannot be pickled is simply not kept
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, os.path.join(folder, name))
        tmp = None
        _prune(folder, prefix, limit)
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _prune(folder: str, prefix: str, limit: int) -> None:
    """Remove the oldest files starting with ``prefix`` beyond the newest ``limit``."""
    with os.scandir(folder) as it:
        kept = [e for e in it if e.name.startswith(prefix) and e.is_file()]
    if len(kept) <= limit:
        return
    kept.sort(key=lambda e: e.stat().st_mtime_ns)
    for e in kept[: len(kept) - limit]:
        try:
            os.unlink(e.path)
        except OSError:
            pass


def module_stamp(*modules: str) -> str:
    """Which versions of installed modules these are (their files' paths, sizes and times),
    found without importing them: what a kept answer that depends on them is checked against."""
    import importlib.util

    stamp = []
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None and spec.origin else ""
        try:
            st = os.stat(origin)
            stamp.append(f"{origin}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            stamp.append(f"{name}:{origin}")
    return "|".join(stamp)


class Kept:
    """Answers kept under ``name`` in the cache folder, each depending only on its key (a
    text) and on the installed code ``stamp`` names (:func:`module_stamp`): read on first use,
    written again whenever a new answer is added. At most ``limit`` answers are kept, the
    newest."""

    def __init__(self, name: str, stamp: str, limit: int = 2000):
        self.name, self.stamp, self.limit = name, stamp, limit
        self._answers: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._answers is None:
            kept = read_json(self.name)
            ok = isinstance(kept, dict) and kept.get("stamp") == self.stamp and isinstance(kept.get("answers"), dict)
            self._answers = kept["answers"] if ok else {}
        return self._answers

    def get(self, key: str) -> Any:
        return self._load().get(key)

    def put(self, key: str, value: Any) -> None:
        answers = self._load()
        answers[key] = value
        items = list(answers.items())[-self.limit :]
        write_json(self.name, {"stamp": self.stamp, "answers": dict(items)})
