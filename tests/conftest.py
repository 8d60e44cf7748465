"""Shared fixtures. The LINE emulator (``line_emulator``, ``line_env``, ``line_webhook`` ...)
comes from linerules' own pytest plugin, engine/testing/pytest_plugin.py; a real PostgreSQL
server with a fresh schema per test from engine/testing/pgserver.py."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

import forkkit
from engine.runner.clock import SYSTEM, Clock
from engine.runner.runloop import Runner, RunnerConfig
from engine.runner.server import build_app
from engine.testing.pgserver import pg_server, pg_url  # noqa: F401  (PostgreSQL fixtures)
from runnerkit import RunnerProcess
from serverkit import API_TOKEN, SECRET, write_rules


def pytest_configure(config) -> None:
    """Under pytest-xdist, the process that starts the workers starts the fork servers
    (tests/forkkit.py) that all of them use: each server's imports once, not once per worker."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        forkkit.share(forkkit.RUNNER, forkkit.CLI, forkkit.MIGRATE_DB)


#: The backends the engine's tests run on (``backend``): every test of a module named here
#: runs once on each.
BACKENDS = ("sqlite", "postgresql")
BOTH_BACKENDS = (
    "test_engine_",
    "test_store",
    "test_server",
    "test_shopify",
    "test_intake_robust",
    "test_report",
    "test_simulate",
    "test_import",
)


def pytest_generate_tests(metafunc) -> None:
    """The tests of the modules in ``BOTH_BACKENDS`` run on each backend, but for those marked
    ``sqlite_only`` (they test the SQLite file itself: its journal, its pages, its path)."""
    if "backend" not in metafunc.fixturenames or not metafunc.module.__name__.startswith(BOTH_BACKENDS):
        return
    if metafunc.definition.get_closest_marker("sqlite_only") is None:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


class Backend:
    """The database backend of one test: ``name``, and :meth:`new_db`, a new empty database
    (an SQLite path in the test's tmp_path, or a fresh PostgreSQL schema's URL)."""

    def __init__(self, name: str, tmp_path: Path, server=None):
        self.name = name
        self._tmp = tmp_path
        self._server = server
        self._schemas: list[str] = []

    @property
    def pg(self) -> bool:
        return self.name == "postgresql"

    def new_db(self) -> str:
        if self._server is None:
            return str(self._tmp / f"linerules-{len(self._schemas)}.db")
        schema, url = self._server.new_schema()
        self._schemas.append(schema)
        return url

    def drop(self) -> None:
        for schema in self._schemas:
            self._server.drop_schema(schema)


@pytest.fixture(autouse=True)
def backend(request, tmp_path: Path) -> Iterator[Backend]:
    """The database backend of this test: SQLite, or (in the modules of ``BOTH_BACKENDS``,
    parametrized) PostgreSQL, where each timeline of tests/enginekit.py runs in a new schema."""
    import enginekit

    name = getattr(request, "param", "sqlite")
    if name == "sqlite":
        yield Backend(name, tmp_path)
        return
    chosen = Backend(name, tmp_path, request.getfixturevalue("pg_server"))
    enginekit.NEW_DB = chosen.new_db
    try:
        yield chosen
    finally:
        enginekit.NEW_DB = None
        chosen.drop()


@pytest.fixture
def fresh_db_path(tmp_path: Path, backend: Backend) -> Path | str:
    """A new database of the test's backend: a path for a new SQLite file (not created yet)
    in the test's tmp_path, or the URL of a new, empty PostgreSQL schema."""
    return backend.new_db() if backend.pg else tmp_path / "linerules.db"


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
    ``linerules`` processes tests start), not in the user's own. Under pytest-xdist the
    workers share one (the cache replaces its files whole, so concurrent writers are safe)."""
    mp = pytest.MonkeyPatch()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent / "cache"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("cache")
    mp.setenv("LINERULES_CACHE_DIR", str(folder))
    yield
    mp.undo()


# ----------------------------------------------------------------------------- runner processes


@pytest.fixture
def processes():
    """``processes(rules, db, env=..., tick=..., command=...)`` starts a
    :class:`runnerkit.RunnerProcess`; every one still running is killed when the test ends."""
    started: list[RunnerProcess] = []

    def start(*args, **kwargs) -> RunnerProcess:
        proc = RunnerProcess(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.proc.send_signal(signal.SIGCONT)  # a test may have stopped it
        proc.stop()


# ----------------------------------------------------------------------------- the server in-process


@pytest.fixture
def rules_dir(tmp_path: Path, monkeypatch) -> Path:
    """The rule folder of serverkit (welcome and keyword rules), with a LINE Login secret."""
    monkeypatch.setenv("LINE_LOGIN_CHANNEL_SECRET", "login-secret")
    return write_rules(tmp_path / "rules")


@pytest.fixture
async def make_client(tmp_path, rules_dir, aiohttp_client, backend):
    """``await make_client(env, loops=..., tick=..., rules=..., clock=...)`` starts a runner
    (loops included) on ``rules_dir`` (or the folder ``rules``) with the given environment and
    clock; returns (client, runner)."""
    started: list[tuple] = []

    async def make(
        env: dict | None = None,
        *,
        loops: bool = True,
        tick: float = 0.2,
        rules: Path | None = None,
        clock: Clock = SYSTEM,
    ):
        base = {"LINE_CHANNEL_SECRET": SECRET, "LINERULES_API_TOKEN": API_TOKEN}
        config = RunnerConfig.from_env(
            {**base, **(env or {})},
            rules_dir=rules or rules_dir,
            db=backend.new_db() if backend.pg else tmp_path / "linerules.db",
            listen="127.0.0.1:0",
            tick_seconds=tick,
        )
        runner = Runner.open(config, clock=clock)
        client = await aiohttp_client(build_app(runner, loops=loops))
        started.append((client, runner))
        return client, runner

    yield make
    for client, runner in started:
        await client.close()
        runner.close()


@pytest.fixture
async def fake_line_login(aiohttp_server):
    """The two LINE Login endpoints the runner calls: token exchange and profile (``seen``:
    the token requests' forms)."""
    seen: list[dict] = []

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        seen.append(form)
        if form.get("code") != "good-code" or form.get("client_secret") != "login-secret":
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response(
            {
                "access_token": "at-1",
                "id_token": "x.y.z",
                "expires_in": 2592000,
                "token_type": "Bearer",
                "scope": "profile openid",
            }
        )

    async def profile(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer at-1":
            return web.json_response({"message": "invalid token"}, status=401)
        return web.json_response({"userId": "U77", "displayName": "Taro"})

    app = web.Application()
    app.router.add_post("/oauth2/v2.1/token", token)
    app.router.add_get("/v2/profile", profile)
    server = await aiohttp_server(app)
    server.seen = seen
    return server
