"""Helpers for tests/test_sharedrate.py: runner processes that push through one channel's shared
rate limits, and a loopback TCP proxy that can cut a process off from PostgreSQL.

Run as a script (in a fork server's child, tests/forkkit.py), this module is one runner's
dispatcher: ``python sharedratekit.py DB_URL LINE_URL RATE FIRST COUNT FOLDER NAME`` opens the
shared limits on DB_URL at RATE pushes/s, makes a :class:`~engine.line.dispatch.Dispatcher`
with them, says it is ready (the file ``FOLDER/NAME.ready``), waits for ``FOLDER/go``, pushes
to COUNT friends from the FIRST'th, and prints one JSON line: the outcomes and the limits'
metrics.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import forkkit

#: What a runner child imports before it is forked (the dispatcher's line-bot-sdk, psycopg)
PRELOAD = (*forkkit.RUNNER, "psycopg", "engine.line.sharedrate", "engine.runtime.pgschema")
TEXT = [{"type": "text", "text": "週末セール開催中！"}]


def start_runners(
    db_url: str, line_url: str, rate: float, counts: list[int], folder: Path, env: dict[str, str]
) -> list[forkkit.Child]:
    """One runner process per entry of ``counts`` (pushes each, to distinct friends), all
    ready and then started at once; returns them running."""
    children, first = [], 0
    for i, count in enumerate(counts):
        args = [__file__, db_url, line_url, str(rate), str(first), str(count), str(folder), f"r{i}"]
        children.append(forkkit.popen(args, preload=PRELOAD, cwd=folder, env=env, stdout=-1, stderr=-1))
        first += count
    deadline = time.monotonic() + 60
    while not all((folder / f"r{i}.ready").exists() for i in range(len(counts))):
        for child in children:
            if child.poll() is not None:
                raise AssertionError(f"a runner ended before it was ready: {child.communicate(10)[1]}")
        if time.monotonic() > deadline:
            raise AssertionError("the runners did not get ready within 60 s")
        time.sleep(0.02)
    (folder / "go").touch()
    return children


def results(children: list[forkkit.Child], timeout: float = 60) -> list[dict]:
    """Each runner's JSON result line, once it ended (with its stderr when it failed)."""
    out = []
    for child in children:
        stdout, stderr = child.communicate(timeout)
        assert child.returncode == 0, f"a runner failed ({child.returncode}): {stderr}"
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


async def _run(db_url: str, line_url: str, rate: float, first: int, count: int, folder: Path, name: str) -> dict:
    from engine.line.dispatch import Dispatcher, OutboxItem
    from engine.line.sharedrate import SharedRateLimits
    from engine.testing.line_emulator import DEFAULT_ACCESS_TOKEN, synthetic_user_id

    items = [
        OutboxItem(i, "push", [synthetic_user_id(i)], TEXT, str(uuid.uuid4())) for i in range(first, first + count)
    ]
    async with SharedRateLimits(db_url, {"push": rate}) as limits:
        async with Dispatcher(DEFAULT_ACCESS_TOKEN, line_url, limiters=limits.limiters()) as dispatcher:
            await dispatcher.refresh_quota()  # the client and the quota ready before the start
            (folder / f"{name}.ready").touch()
            while not (folder / "go").exists():
                await asyncio.sleep(0.005)
            outcomes = Counter(r.outcome for r in await dispatcher.send(items))
        return {"outcomes": dict(outcomes), "limits": limits.metrics}


class Proxy:
    """A TCP proxy on a free loopback port to ``upstream`` (host, port), in threads.
    :meth:`cut` drops every connection and refuses new ones (the database is gone, as the
    client sees it); :meth:`restore` accepts them again on the same port."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.restore()

    @classmethod
    def to(cls, url: str) -> tuple[Proxy, str]:
        """A proxy to the server of a postgresql:// URL, and the URL through it."""
        parts = urlsplit(url)
        proxy = cls((parts.hostname or "127.0.0.1", parts.port or 5432))
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{proxy.port}"
        netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        return proxy, urlunsplit(parts._replace(netloc=netloc))

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


if __name__ == "__main__":
    db, line, rate, first, count, folder, name = sys.argv[1:8]
    result = asyncio.run(_run(db, line, float(rate), int(first), int(count), Path(folder), name))
    print(json.dumps(result), flush=True)
