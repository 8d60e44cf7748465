"""A real PostgreSQL server for tests: a fresh cluster in a temp folder, or an existing server.

:func:`start_cluster` runs Debian's (or any) PostgreSQL binaries — ``initdb`` then ``pg_ctl`` —
on a free loopback port with the data in a new temp folder, as an unprivileged user when the
process is root (PostgreSQL refuses to run as root: CI runs as root), and :meth:`Cluster.stop`
stops it and removes the folder. ``LINERULES_TEST_PG=postgresql://...`` names an existing server
to use instead (nothing is started then).

The pytest fixtures (wired in ``tests/conftest.py``):

* ``pg_server`` (session): the server's conninfo URL. Without a server the tests that use it
  FAIL, saying what to install or set; they are never skipped.
* ``pg_url`` (per test): a conninfo URL whose ``search_path`` is a new, empty schema of its own,
  dropped after the test (the way docs/scale.md puts one LINE channel in one schema).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

#: Names an existing server to test against instead of starting one.
ENV_URL = "LINERULES_TEST_PG"

#: Tried in this order for the unprivileged user when the process is root: Debian's package
#: creates ``postgres``; ``nobody`` exists everywhere.
SERVICE_USERS = ("postgres", "nobody")

NO_SERVER = (
    "PostgreSQL tests need a PostgreSQL server, and none is available: {why}. "
    "Install Debian's `postgresql` package (`make setup` does it when run as root) so "
    "that the tests can start their own, or set LINERULES_TEST_PG=postgresql://USER@HOST:PORT/DB "
    "to an existing server."
)


class NoServer(RuntimeError):
    """No PostgreSQL server can be had: the text says why and what to do."""


def find_bindir() -> str | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(on_path))
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A PostgreSQL server this process started; :meth:`stop` ends it and removes its folder."""

    bindir: str
    folder: str
    port: int
    user: str | None  # the OS user it runs as (None: this process's own)
    url: str
    log_path: str
    _stopped: bool = field(default=False, repr=False)

    def _run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, user=self.user, check=False, capture_output=True, text=True, **kw)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._run(
                [os.path.join(self.bindir, "pg_ctl"), "stop", "-D", self.data, "-m", "immediate", "-w", "-t", "30"],
                timeout=60,
            )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def data(self) -> str:
        return os.path.join(self.folder, "data")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def _service_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise NoServer(
        NO_SERVER.format(
            why="this process is root and there is no unprivileged user "
            f"({', '.join(SERVICE_USERS)}) to run PostgreSQL as"
        )
    )


def start_cluster(bindir: str | None = None, *, attempts: int = 3) -> Cluster:
    """initdb a new cluster in a temp folder and start it on a free 127.0.0.1 port (trust
    authentication, loopback only, durability off: test data). Raises :class:`NoServer`."""
    bindir = bindir or find_bindir()
    if bindir is None:
        raise NoServer(NO_SERVER.format(why="initdb was not found (not on PATH, not in /usr/lib/postgresql/*/bin)"))
    user = _service_user()
    folder = tempfile.mkdtemp(prefix="linerules-pg-")  # under /tmp: reachable by the service user
    os.chmod(folder, 0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data = os.path.join(folder, "data")
    log_path = os.path.join(folder, "server.log")
    init = subprocess.run(
        [
            os.path.join(bindir, "initdb"),
            "-D",
            data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        user=user,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
    )
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise NoServer(NO_SERVER.format(why=f"initdb failed: {(init.stderr or init.stdout).strip()[-500:]}"))
    last = ""
    for _ in range(attempts):
        port = free_port()
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100 "
            "-c shared_buffers=64MB"
        )
        start = subprocess.run(
            [os.path.join(bindir, "pg_ctl"), "start", "-D", data, "-l", log_path, "-w", "-t", "60", "-o", options],
            user=user,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=folder,
        )
        if start.returncode == 0:
            url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            return Cluster(bindir=bindir, folder=folder, port=port, user=user, url=url, log_path=log_path)
        last = (start.stderr or start.stdout).strip()
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                last += "\n" + f.read()[-800:]
        except OSError:
            pass
    shutil.rmtree(folder, ignore_errors=True)
    raise NoServer(NO_SERVER.format(why=f"the server did not start: {last[-800:]}"))


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``options=-csearch_path=SCHEMA`` added (the libpq way to pick a schema)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


def _connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


@dataclass
class Server:
    """The server the tests use: its URL, and the cluster when this process started it."""

    url: str
    cluster: Cluster | None = None

    def new_schema(self) -> tuple[str, str]:
        """Create a new empty schema; returns (schema, conninfo URL with it as search_path)."""
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with _connect(self.url) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return schema, with_search_path(self.url, schema)

    def drop_schema(self, schema: str) -> None:
        with _connect(self.url) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def open_server() -> Server:
    """The server named by LINERULES_TEST_PG (checked with a connection), else a new cluster."""
    try:
        import psycopg
    except ImportError:
        raise NoServer(NO_SERVER.format(why="psycopg is not installed (pip install 'linerules[postgres]')")) from None
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        try:
            with _connect(url) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise NoServer(NO_SERVER.format(why=f"{ENV_URL}={url} cannot be reached ({exc})")) from None
        return Server(url=url)
    cluster = start_cluster()
    deadline = time.monotonic() + 30
    while True:
        try:
            with _connect(cluster.url) as conn:
                conn.execute("SELECT 1")
            break
        except psycopg.Error:
            if time.monotonic() > deadline:
                tail = cluster.log_tail()
                cluster.stop()
                raise NoServer(NO_SERVER.format(why=f"the server started but takes no connection: {tail}")) from None
            time.sleep(0.2)
    return Server(url=cluster.url, cluster=cluster)


# ---------------------------------------------------------------------- pytest fixtures
try:
    import pytest
except ImportError:  # the module is usable without pytest (benchmarks)
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def pg_server() -> Iterator[Server]:
        """The PostgreSQL server of this test session (see the module's text)."""
        try:
            server = open_server()
        except NoServer as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            yield server
        finally:
            if server.cluster is not None:
                server.cluster.stop()

    @pytest.fixture
    def pg_url(pg_server: Server) -> Iterator[str]:
        """A conninfo URL whose search_path is a fresh, empty schema of this test alone."""
        schema, url = pg_server.new_schema()
        try:
            yield url
        finally:
            pg_server.drop_schema(schema)
