"""The runner's two loops, its lease on the database, signals and rule reloads.

One process, one asyncio event loop and one tick thread. The HTTP server (engine/runner/server.py)
and the dispatch loop run on the event loop and use :attr:`Runner.store`; every engine tick
(and a rule reload, which runs as part of one) runs on a single dedicated worker thread with
its own connection, :attr:`Runner.engine`'s store, so a tick of several seconds never holds up
a webhook. Ticks never overlap (one worker). SQLite admits one writer at a time; the engine
writes in short transactions (docs/engine.md), so a webhook's INSERT waits at most for one of
them. The dispatcher's in-flight marks (``Store.claim_outbox``) live in the loop's store; the
engine never claims outbox rows.

- The **tick loop** runs ``engine.tick(now)`` every ``tick_seconds`` (sooner when the engine
  has something due, or at once when a webhook asks for an answer), renews the lease, and
  reloads the rules on SIGHUP or when a file in the rule folder changes.
- The **dispatch loop** keeps up to :data:`SEND_SLOTS` rows in flight (and, apart from them,
  up to :data:`REPLY_SLOTS` replies, so an answer never waits behind pushes): it claims due
  rows in batches, up to :data:`CLAIM_AHEAD` beyond the free slots (fenced by the lease's
  epoch), starts one as a slot frees up, sends each on its own task and stores the outcomes
  that land together in one transaction. One slow or failing request holds only its own row. A row is
  never deleted before its outcome is recorded; rows left in flight by a crash are sent again
  on restart with the same retry key. A 401/403 from LINE holds everything until the token
  works again.
- First SIGTERM/SIGINT: finish the current tick and the requests in flight, then exit 0.
  Second: exit at once (status 1). Signal handlers only set flags.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import i18n
from engine.i18n import _, render
from engine.interpreter import FOLLOW_GRACE, WRITE_BUDGET
from engine.language import ir
from engine.language.diagnostics import has_errors, render_text
from engine.language.timeutil import next_opening
from engine.line.dispatch import LINE_TIMEOUT, DispatchResult, OutboxItem
from engine.line.login import STATE_MAX_AGE
from engine.line.retrypolicy import DEFAULT_POLICY, FINISHED
from engine.runtime.store import LeaseLost, StoreError, is_postgres, redact_url

from .clock import SYSTEM, Clock
from .metrics import Metrics

log = logging.getLogger("linerules.runner")

DRY_RUN_MESSAGE = _("dry-run: LINE_CHANNEL_ACCESS_TOKEN is not set; pushes are logged, nothing is sent to LINE")
#: Requests in flight at once for pushes, multicasts and rich menu links.
SEND_SLOTS = 64
#: Requests in flight at once for replies, apart from the others (answers never queue behind
#: a push backlog).
REPLY_SLOTS = 16
#: Rows (not replies) the dispatch loop claims ahead of its free send slots: an answer's slot
#: takes the next row at once, without waiting for a claim, and rows are claimed in batches
#: (again once fewer than half of these are left).
CLAIM_AHEAD = 32
#: Seconds between checks of the token after LINE refused it (doubling up to 60 s).
AUTH_PROBE = 5.0
#: A change in the rule folder is reloaded once no file changed for this many seconds (a
#: deploy written file by file is never loaded half-way).
RELOAD_QUIET = 2.0
#: Seconds the enrollments of a rule that disappeared in a reload stay suspended: they resume
#: when the rule comes back within it, and end with ``rule_removed`` after it.
SUSPEND_GRACE = 3600
#: A reply that must be retried is retried this many seconds before its token's deadline.
REPLY_MARGIN = 3
#: Seconds an outcome waits to be stored with the others that land meanwhile (a crash in that
#: time sends those rows again with their retry keys: LINE answers 409 for what it had).
FLUSH_DELAY = 0.02
#: On PostgreSQL a claim or a flush is a few round trips to the server (milliseconds, with the
#: event loop waiting), so a runner claims further ahead and flushes less often; rows claimed
#: ahead stay its own only while it lives (a dead runner's are claimed again at once).
PG_CLAIM_AHEAD = 256
PG_FLUSH_DELAY = 0.1
#: Seconds between outbox polls when nothing woke the dispatch loop (held rows, backoff).
DISPATCH_POLL = 1.0
#: Seconds between a runner's attempts to take over the ticks while another leads (PostgreSQL).
FOLLOWER_POLL = 1.0
#: Meta key: when a ``/join`` link last sent someone to LINE Login (epoch seconds).
JOIN_META = "login.last_join"


class StartupError(Exception):
    """The runner cannot start; the message is one clear line for the operator."""


@dataclass(frozen=True)
class RunnerConfig:
    """Everything the runner reads from its flags and environment (docs/operations.md)."""

    rules_dir: Path
    db: Path | str  # an SQLite file, or a postgresql:// URL (str)
    listen: str = "127.0.0.1:8080"
    tick_seconds: float = 60.0
    channel_secret: str | None = None  # LINE_CHANNEL_SECRET
    access_token: str | None = None  # LINE_CHANNEL_ACCESS_TOKEN
    api_token: str | None = None  # LINERULES_API_TOKEN
    login_authorize_url: str | None = None  # LINE_LOGIN_AUTHORIZE_URL
    login_api_url: str | None = None  # LINE_LOGIN_API_ENDPOINT
    join_redirect: str | None = None  # LINERULES_JOIN_REDIRECT
    shopify_secret: str | None = None  # SHOPIFY_WEBHOOK_SECRET
    condition_interval: int = 0  # --condition-interval; 0 = every tick
    channel_id: str | None = None  # LINE_CHANNEL_ID (stateless tokens with the secret)
    lease_seconds: str | None = None  # LINERULES_LEASE_SECONDS; None: lease_ttl(tick)
    line_timeout_seconds: str | None = None  # LINERULES_LINE_TIMEOUT; None: LINE_TIMEOUT
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # for make_transport

    @property
    def db_label(self) -> str:
        """The database as logs and messages name it (a URL without its password)."""
        return redact_url(str(self.db))

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        rules_dir: str | Path,
        db: str | Path,
        listen: str = "127.0.0.1:8080",
        tick_seconds: float = 60.0,
        condition_interval: int = 0,
    ) -> RunnerConfig:
        """Flags plus the environment; empty variables count as unset."""
        get = lambda name: env.get(name) or None  # noqa: E731
        return cls(
            rules_dir=Path(rules_dir),
            db=str(db) if is_postgres(str(db)) else Path(db),
            listen=listen,
            tick_seconds=float(tick_seconds),
            condition_interval=int(condition_interval),
            channel_secret=get("LINE_CHANNEL_SECRET"),
            access_token=get("LINE_CHANNEL_ACCESS_TOKEN"),
            api_token=get("LINERULES_API_TOKEN"),
            login_authorize_url=get("LINE_LOGIN_AUTHORIZE_URL"),
            login_api_url=get("LINE_LOGIN_API_ENDPOINT"),
            join_redirect=get("LINERULES_JOIN_REDIRECT"),
            channel_id=get("LINE_CHANNEL_ID"),
            lease_seconds=get("LINERULES_LEASE_SECONDS"),
            line_timeout_seconds=get("LINERULES_LINE_TIMEOUT"),
            shopify_secret=get("SHOPIFY_WEBHOOK_SECRET"),
            env=dict(env),
        )

    @property
    def dry_run(self) -> bool:
        return not (self.access_token or (self.channel_id and self.channel_secret))

    @property
    def lease_ttl(self) -> int:
        """Seconds the lease lasts without renewal (raises StartupError on a bad value)."""
        value = self.lease_seconds
        if value is None:
            return lease_ttl(self.tick_seconds)
        if not value.strip().isdigit() or int(value) < 1:
            raise StartupError(f"LINERULES_LEASE_SECONDS={value!r} is not a whole number of seconds (1 or more)")
        return int(value)

    @property
    def line_timeout(self) -> float:
        """Seconds one request to LINE may take before it counts as timed out and goes again
        with its retry key (raises StartupError on a bad value)."""
        value = self.line_timeout_seconds
        if value is None:
            return LINE_TIMEOUT
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0.0
        if not 0.1 <= seconds <= 300:
            raise StartupError(f"LINERULES_LINE_TIMEOUT={value!r} is not a number of seconds from 0.1 to 300")
        return seconds

    @property
    def host_port(self) -> tuple[str, int]:
        host, _sep, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise StartupError(_("--listen `{value}` is not HOST:PORT, e.g. 127.0.0.1:8080", value=self.listen))
        return host.strip("[]"), int(port)


def load_rules(rules_dir: Path) -> tuple[ir.Project | None, str]:
    """``load_project`` plus the verdict: (project or None, the diagnostics as text)."""
    from engine.language.project import load_project

    result = load_project(str(rules_dir))
    i18n.use(i18n.choose(None, result.language))  # the runner speaks the folder's language
    if result.project is None or has_errors(result.diagnostics):
        # the errors first: what keeps the folder out comes before its warnings
        ordered = sorted(result.diagnostics, key=lambda d: not d.is_error)
        return None, render_text(ordered, result.sources)
    return result.project, render_text(result.diagnostics, result.sources)


def rules_fingerprint(rules_dir: Path) -> tuple:
    """(path, mtime, size) of every file in the rule folder (or of the one rule file given):
    changes when any file does."""
    try:
        files = [rules_dir] if rules_dir.is_file() else sorted(p for p in rules_dir.rglob("*") if p.is_file())
        return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError:
        return ()


def owner_id() -> str:
    """This process's lease owner id: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_ttl(tick_seconds: float) -> int:
    """The lease lasts three tick intervals, at least 30 s; it is renewed every tick."""
    return int(max(30, 3 * tick_seconds))


class Runner:
    """The runner's state: project, store, engine, dispatcher, metrics, flags and loops.

    ``store`` serves the event loop (HTTP handlers, dispatcher); ``engine.runtime.store`` is used only
    by the tick thread (the same object is accepted when nothing runs the loops)."""

    def __init__(
        self,
        config: RunnerConfig,
        project: ir.Project,
        store: Any,
        engine: Any,
        dispatcher: Any,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.project = project
        self.store = store
        self.engine = engine
        self.dispatcher = dispatcher
        #: The one clock of this runner (engine/runner/clock.py): ticks, the lease, claims and outcomes
        #: read it, and so do the stores, the engine and the dispatcher it was opened with.
        self.clock: Clock = clock or getattr(store, "clock", None) or SYSTEM
        self.owner = owner_id()
        self.metrics = Metrics()
        self.started_at = self.clock.now()
        self.last_tick: dt.datetime | None = None
        self.exit_code = 0
        self.stopping = False
        self.signals = 0
        self._reload_requested = False
        self._fingerprint = rules_fingerprint(config.rules_dir)
        self._changed: tuple[tuple, float] | None = None  # (fingerprint seen, when), not loaded yet
        self.reload_quiet = RELOAD_QUIET
        #: What the last reload did (for /healthz): when, why, version and friends affected.
        self.last_reload: dict[str, Any] | None = None
        #: whether this runner's rules took over the friends in flight of other versions (:meth:`adopt`)
        self._adopted = False
        self._closed = False
        #: the rule folder on disk as the last reload found it invalid (None: valid, or unchanged
        #: since a reload took it): ``{"at", "why", "keeping", "error"}``, for ``/healthz``
        self.refused_reload: dict[str, Any] | None = None
        #: The lease epoch this runner claims outbox rows under (None: no lease held).
        self.epoch: int | None = store.lease_epoch(self.owner)
        #: Whether this runner runs the ticks: always on SQLite (one runner per file); on
        #: PostgreSQL the one runner holding the engine's lock (:meth:`Store.try_lead`).
        self.leading = not getattr(store, "pg", False)
        self._listener: threading.Thread | None = None
        pg = getattr(store, "pg", False)
        self.claim_ahead = PG_CLAIM_AHEAD if pg else CLAIM_AHEAD
        self.flush_delay = PG_FLUSH_DELAY if pg else FLUSH_DELAY
        #: The channel's rate limits shared through PostgreSQL (engine/line/sharedrate.py), or
        #: None: the dispatcher paces itself alone (one runner per SQLite file).
        self.limits: Any = None
        #: Why LINE refuses the channel access token (401/403); None while it is accepted.
        self.auth_problem: str | None = None
        self._auth_delay = AUTH_PROBE
        self._auth_wake = asyncio.Event()
        self._sending: dict[int, tuple[str, asyncio.Task]] = {}  # outbox id -> (lane, task)
        self._ready: deque[dict] = deque()  # rows claimed ahead, not started yet (CLAIM_AHEAD)
        self._replies_in_flight = 0  # of self._sending, in the reply lane
        #: a friend's pushes and replies go one after the other, in the order claimed: the
        #: friends with one in flight, and the rows waiting behind it (claimed, not started)
        self._friends_sending: Counter[str] = Counter()
        self._behind: dict[str, deque[dict]] = {}
        self._behind_count = 0
        self._landed: list[tuple[dict, DispatchResult]] = []
        self._flush_scheduled = False
        self._tick_wake = asyncio.Event()
        self._dispatch_wake = asyncio.Event()
        self._force = asyncio.Event()
        #: Set once the first tick has finished (or failed).
        self.first_tick_done = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linerules-tick")
        #: PostgreSQL: the dispatch loop's claims and outcome flushes run here, off the event
        #: loop (each is round trips to the server); SQLite's are quicker than a thread hop.
        self._db: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="linerules-db")
            if getattr(store, "pg", False)
            else None
        )
        self._flushes: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.metrics.gauge(
            "linerules_outbox_backlog", "Outbox rows not yet finished.", lambda: float(self.store.outbox_backlog())
        )
        self.metrics.gauge(
            "linerules_waiting_sends",
            "Sends not yet decided (waiting for the window, the cap's day or the quota).",
            lambda: float(self.store.waiting_sends()),
        )
        self.metrics.gauge(
            "linerules_last_tick_timestamp_seconds",
            "Unix time of the last engine tick.",
            lambda: self.last_tick.timestamp() if self.last_tick else None,
        )
        self.metrics.counter(
            "linerules_line_errors_total",
            "Error answers from the LINE Messaging API by HTTP status (timeout, error: no answer), retries included.",
            ("status",),
            self._line_errors,
        )
        self.metrics.gauge(
            "linerules_quota_remaining",
            "Messages left in this month's LINE quota (unknown in dry-run).",
            self._quota_remaining,
        )
        self.metrics.gauge("linerules_dry_run", "1 when nothing is sent to LINE.", lambda: float(config.dry_run))
        self.metrics.counter(
            "linerules_line_retries_total",
            "Requests to LINE repeated within one attempt of a row, by reason (HTTP status, timeout, error).",
            ("reason",),
            self._line_retries,
        )
        self.metrics.gauge(
            "linerules_sending_held",
            "1 while every send is held because LINE refuses the channel access token (401/403).",
            lambda: float(self.auth_problem is not None),
        )
        self.metrics.gauge(
            "linerules_sends_in_flight", "Requests to LINE in flight now.", lambda: float(len(self._sending))
        )
        self.metrics.gauge(
            "linerules_leading", "1 while this runner runs the engine's ticks.", lambda: float(self.leading)
        )
        self.metrics.gauge(
            "linerules_shared_rate_reachable",
            "1 while the channel's shared rate limits can be read (PostgreSQL; sends beyond the slots held wait).",
            lambda: None if self.limits is None else float(self.limits.reachable),
        )
        self.metrics.gauge(
            "linerules_cluster_runners",
            "Runners working on this database now (PostgreSQL: members whose connection is alive).",
            lambda: float(self.store.cluster()["runners"]),
        )
        self.metrics.gauge(
            "linerules_suspended_enrollments",
            "Friends in flight in a rule that a reload removed (resumed if it comes back within the grace).",
            lambda: float(self.store.suspended_count()),
        )

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, config: RunnerConfig, *, clock: Clock = SYSTEM) -> Runner:
        """Load the rules, open the store, take the lease and build the engine and dispatcher,
        all on ``clock`` (the wall clock; tests pass a ManualClock).

        Raises StartupError (one clear line; the rule diagnostics are logged first).
        """
        from engine.interpreter import Engine
        from engine.line.dispatch import make_transport
        from engine.runtime.store import Store

        project, text = load_rules(config.rules_dir)
        if project is None:
            log.error(
                "%s",
                render(
                    _("the rules in {folder} are invalid:\n{problems}", folder=config.rules_dir, problems=text.rstrip())
                ),
            )
            raise StartupError(
                _(
                    "cannot start: the rules in {folder} are invalid (run `linerules validate {folder}`)",
                    folder=config.rules_dir,
                )
            )
        if text:
            log.warning("rule warnings:\n%s", text.rstrip())
        config.host_port  # noqa: B018 - validates --listen before anything is opened
        config.lease_ttl  # noqa: B018 - and LINERULES_LEASE_SECONDS
        config.line_timeout  # noqa: B018 - and LINERULES_LINE_TIMEOUT
        try:
            store = Store(str(config.db), checkpoints=False, clock=clock)
        except StoreError as exc:  # corrupt, read-only, not a database: one line, exit 1
            raise StartupError(_("cannot start: {reason}", reason=exc.args[0] if exc.args else exc)) from None
        engine_store = None
        try:
            try:
                started = time.perf_counter()
                store.check_integrity()
                log.info("database %s checked (%.1f s)", config.db_label, time.perf_counter() - started)
            except StoreError as exc:
                raise StartupError(_("cannot start: {reason}", reason=exc.args[0] if exc.args else exc)) from None
            if store.pg:  # several runners may share the database (docs/engine.md "Several runners")
                store.join_cluster(owner_id(), int(clock.time()), config.lease_ttl)
            else:
                acquire_lease(store, owner_id(), config, clock)
            # the tick thread's own connection; it checkpoints after each tick (tick_once)
            engine_store = Store(str(config.db), checkpoints=False, yields=True, clock=clock)
            engine = Engine(
                project,
                engine_store,
                condition_interval=config.condition_interval,
                write_budget=WRITE_BUDGET,
                clock=clock.now,
            )
        except BaseException:
            store.close()
            if engine_store is not None:
                engine_store.close()
            raise
        if config.dry_run:
            log.warning("%s", render(DRY_RUN_MESSAGE))
        if not config.channel_secret:
            log.warning("%s", render(_("LINE_CHANNEL_SECRET is not set: POST /callback refuses webhooks (503)")))
        if not config.api_token:
            log.warning("%s", render(_("LINERULES_API_TOKEN is not set: POST /events is disabled (503)")))
        log.info(
            "rules loaded from %s (version %s, %d rules); database %s",
            config.rules_dir,
            project.version,
            len(project.rules),
            config.db_label,
        )
        limits = None
        if store.pg and not config.dry_run:
            # the channel's rate limits, shared by every runner of its schema (docs/engine.md)
            from engine.line.sharedrate import SharedRateLimits

            limits = SharedRateLimits(str(config.db))
        options = {"limiters": limits.limiters()} if limits is not None else {}
        runner = cls(
            config,
            project,
            store,
            engine,
            make_transport(config.env, clock=clock.time, timeout=config.line_timeout, **options),
            clock=clock,
        )
        runner.limits = limits
        return runner

    def close(self, *, wait: bool = True) -> None:
        """Release the lease and close the stores (once: closing again does nothing).
        ``wait=False`` (the second signal) leaves the tick thread and its connection alone: the
        process exits right after."""
        if self._closed:
            return
        self._closed = True
        try:
            self.store.release_lease(self.owner)
        except StoreError:
            pass  # the database cannot be written (logged once); the next start takes the lease over
        finally:
            self.store.close()
            if wait:
                self._executor.shutdown(wait=True)
                if self._db is not None:
                    self._db.shutdown(wait=True)
                if self.engine.store is not self.store:
                    self.engine.store.close()

    # ------------------------------------------------------------------ time and zone

    @property
    def tz(self) -> dt.tzinfo:
        return self.project.settings.tz

    def now(self) -> dt.datetime:
        return self.clock.now()

    def local(self, when: dt.datetime) -> str:
        """ISO 8601 in the configured zone, seconds precision."""
        return when.astimezone(self.tz).isoformat(timespec="seconds")

    # ------------------------------------------------------------------ requests from outside

    def _set(self, event: asyncio.Event) -> None:
        """Set a loop event from the loop or from the tick thread."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(event.set)
        else:
            event.set()

    def wake_tick(self) -> None:
        """Run a tick now (e.g. a webhook carried a reply token that should be used fresh); a
        tick that is running finishes first. A runner that does not lead wakes the leader."""
        if self.leading:
            self._set(self._tick_wake)
        else:
            try:
                self.store.notify("tick")
            except StoreError:
                pass  # logged once; the leader ticks within its interval anyway

    def wake_dispatch(self) -> None:
        self._set(self._dispatch_wake)

    def on_reload_signal(self) -> None:
        """SIGHUP: reload the rule folder before the next tick."""
        self._reload_requested = True
        self._set(self._tick_wake)
        self._set(self._auth_wake)  # and check a refused token again at once

    def stop(self) -> None:
        """Stop after the current tick and dispatch batch."""
        self.stopping = True
        self.dispatcher.closing = True  # requests in flight finish; no new attempts start
        self._set(self._tick_wake)
        self._set(self._dispatch_wake)
        self._set(self._auth_wake)

    def on_stop_signal(self) -> None:
        """SIGTERM/SIGINT: the first stops gracefully (:meth:`stop`), the second exits now."""
        self.signals += 1
        self.stop()
        if self.signals > 1:
            self._force.set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background job (e.g. a profile fetch) that must not hold up a request."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ the loops

    async def run(self) -> int:
        """Both loops until a stop is requested; returns the exit code."""
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        if getattr(self.store, "pg", False):
            self._listener = threading.Thread(target=self._listen, name="linerules-listen", daemon=True)
            self._listener.start()
        try:
            await asyncio.gather(self._tick_loop(), self._dispatch_loop())
        finally:
            for task in list(self._background):
                task.cancel()
            await self.dispatcher.close()
            if self.limits is not None:
                await self.limits.close()
        return self.exit_code

    def _listen(self) -> None:
        """PostgreSQL: wake this runner's loops when another runner asks (``NOTIFY``): the
        leader's tick for a webhook that wants an answer, every runner's dispatch when a tick
        queued sends. Runs on its own thread and connection until the runner stops."""
        import psycopg

        from engine.runtime.pgconn import name_session

        loop = self._loop
        while not self.stopping:
            try:
                with psycopg.connect(str(self.config.db), autocommit=True) as conn:
                    name_session(conn)
                    schema = conn.execute("SELECT current_schema()").fetchone()[0]
                    wakes = {
                        f"linerules_tick_{schema}": self._wake_tick_here,
                        f"linerules_dispatch_{schema}": self.wake_dispatch,
                    }
                    for channel in wakes:
                        conn.execute(f'LISTEN "{channel}"')
                    while not self.stopping:
                        for note in conn.notifies(timeout=1.0):
                            loop.call_soon_threadsafe(wakes.get(note.channel, self.wake_dispatch))
            except psycopg.Error as exc:
                log.warning("not listening for the other runners (%s); retrying in 5 s", exc)
                time.sleep(5)

    def _wake_tick_here(self) -> None:
        if self.leading:
            self._set(self._tick_wake)

    async def wait_force(self) -> None:
        """Resolves on the second stop signal."""
        await self._force.wait()

    async def _tick_loop(self) -> None:
        """Ticks on the tick thread, one at a time; the event loop stays free meanwhile."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            self._tick_wake.clear()
            try:
                await loop.run_in_executor(self._executor, self.tick_once)
            except StoreError:
                pass  # the store logged it once (what, which file, what to do); retried next tick
            except Exception:
                log.exception("tick failed; retrying at the next tick")
            self.first_tick_done.set()
            if self.stopping:
                break
            try:
                seconds = await loop.run_in_executor(self._executor, self._seconds_to_next_tick)
            except StoreError:
                seconds = self.config.tick_seconds
            except Exception:
                log.exception("next wake-up not computed; ticking after the interval")
                seconds = self.config.tick_seconds
            await self._sleep(self._tick_wake, seconds)
        log.info("stop requested: finishing the sends in flight (a second signal exits at once)")

    async def _dispatch_loop(self) -> None:
        """Keep the send slots busy; hold everything while LINE refuses the token."""
        while not self.stopping:
            self._dispatch_wake.clear()
            started = 0
            try:
                if self.auth_problem is not None:
                    await self._probe_auth()
                    continue
                started = await self._fill_slots_off_loop() if self._db else self.fill_slots(self.claim_ahead)
            except LeaseLost as exc:
                log.critical(
                    "stopping: %s; another runner took over %s, and this one writes nothing more",
                    exc,
                    self.config.db_label,
                )
                self.exit_code = 1
                self.stop()
                break
            except StoreError:
                pass  # logged once by the store; rows in flight go again with their keys
            except Exception:
                log.exception("dispatch failed; retrying shortly")
            if not started and not self.stopping:
                await self._sleep(self._dispatch_wake, DISPATCH_POLL)
        await self._drain()

    async def _drain(self) -> None:
        """Wait for the requests in flight and store their outcomes; rows claimed ahead that
        were not started are let go (they stay pending, with their retry keys)."""
        tasks = [task for _, task in self._sending.values()]
        if tasks:
            log.info("waiting for %d request(s) in flight", len(tasks))
        while tasks:  # (a row that waited behind its friend's starts as that one lands)
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks = [task for _, task in self._sending.values()]
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        self._flush()
        if self.stopping and (self._ready or self._behind):
            ids = [row["id"] for row in self._ready] + [row["id"] for rows in self._behind.values() for row in rows]
            self._ready, self._behind, self._behind_count = deque(), {}, 0
            self.store.release_claims(ids)

    async def _probe_auth(self) -> None:
        """After a 401/403: wait, then ask LINE whether the token works (a stateless token is
        issued anew first); resume sending when it does."""
        self._auth_wake.clear()
        await self._sleep(self._auth_wake, self._auth_delay)
        if self.stopping:
            return
        problem = await self.dispatcher.check_auth()
        if problem is None:
            log.warning(
                "LINE accepts the channel access token again: sending resumes (%d rows waiting)",
                self.store.outbox_backlog(),
            )
            self.auth_problem = None
            self._auth_delay = AUTH_PROBE
            self.wake_dispatch()
        else:
            self._auth_delay = min(60.0, self._auth_delay * 2)
            if problem != self.auth_problem:
                log.error(
                    "LINE still refuses the channel access token: %s; every send stays held (next check in %.0f s)",
                    problem,
                    self._auth_delay,
                )
            self.auth_problem = problem

    @staticmethod
    async def _sleep(event: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            pass

    def _seconds_to_next_tick(self) -> float:
        if not self.leading:
            return FOLLOWER_POLL
        seconds = self.config.tick_seconds
        now = self.now()
        nxt = self.engine.next_wakeup(now)
        if nxt is not None:
            seconds = min(seconds, (nxt - now).total_seconds())
        reload_in = self.reload_due_in()
        if reload_in is not None:
            seconds = min(seconds, reload_in)
        return max(0.05, seconds)

    # ------------------------------------------------------------------ one tick

    def adopt(self) -> None:
        """Before this runner's first tick, and the first of each term as the leader: friends in
        flight under other versions of the rules (the rules of this database's last runner, or
        of a leader whose folder differed) are carried over to this runner's rules, as a reload
        carries them (docs/engine.md); before, a step the other version had and these rules
        have not ended the friend's walk there."""
        counts = self.engine.reload(self.project)
        self._adopted = True
        if any(counts.values()):
            log.info(
                "friends in flight under other rule versions taken over: %d carried over, "
                "%d suspended, %d resumed (rules version %s)",
                counts.get("carried_over", 0),
                counts.get("suspended", 0),
                counts.get("resumed", 0),
                self.project.version,
            )

    def tick_once(self) -> Any:
        """Reload if asked or changed, renew the lease, run one engine tick; returns the
        engine's TickResult (None when the lease was lost). Runs on the tick thread (or on the
        caller's thread when no loop runs) and uses only the engine's store."""
        self.maybe_reload()
        now = self.now()
        store = self.engine.store
        if self.leading and not store.leads():
            log.warning("this runner no longer runs the ticks of %s: its session ended", self.config.db_label)
            self.leading = False
        if not self.leading:
            self.leading = store.try_lead(self.owner, int(now.timestamp()), self.config.lease_ttl)
            if not self.leading:
                return None
            log.info("this runner (%s) now runs the ticks of %s", self.owner, self.config.db_label)
            self._adopted = False
        if not store.renew_lease(self.owner, int(now.timestamp()), self.config.lease_ttl):
            log.critical("lost the lease on %s (holder now: %s); stopping", self.config.db_label, store.lease_holder())
            self.exit_code = 1
            self.stop()
            return None
        if not self._adopted:
            self.adopt()
        self.end_suspended(int(now.timestamp()))
        self.engine.follow_grace = self.follow_grace(int(now.timestamp()))
        started = time.perf_counter()
        result = self.engine.tick(now)
        self.metrics.tick_seconds.observe(time.perf_counter() - started)
        if result.events or result.entered or result.queued or result.capped or result.exited:
            log.info(
                "tick: %d events, %d entered, %d sends queued, %d capped, %d exited (%.0f ms)",
                result.events,
                result.entered,
                result.queued,
                result.capped,
                result.exited,
                (time.perf_counter() - started) * 1000,
            )
        self.last_tick = now
        self.wake_dispatch()
        if result.queued:
            store.notify("dispatch")  # the other runners send too
        store.checkpoint()
        return result

    def follow_grace(self, now: int) -> int:
        """:data:`~engine.interpreter.FOLLOW_GRACE` while a friend-add link may be on its way
        back from LINE Login (login configured and a ``/join`` link opened within the login's
        lifetime, see :meth:`note_join`); 0 otherwise, so that other follows go at once."""
        if not self.project.settings.login_channel_id:
            return 0
        last = self.engine.store.get_meta(JOIN_META)
        return FOLLOW_GRACE if last is not None and int(last) >= now - STATE_MAX_AGE else 0

    def note_join(self, now: int) -> None:
        """A ``/join`` link sent someone to LINE Login: hold follows for the grace a while."""
        self.store.set_meta(JOIN_META, str(now))

    def maybe_reload(self) -> bool:
        """Reload on SIGHUP at once, or once a change in the rule folder has been quiet for
        :data:`RELOAD_QUIET` seconds (a deploy that writes file after file is loaded whole);
        True when the rules were replaced."""
        fingerprint = rules_fingerprint(self.config.rules_dir)
        if not self._reload_requested and self.reload_quiet > 0:
            if fingerprint == self._fingerprint:
                self._changed = None
                return False
            if self._changed is None or self._changed[0] != fingerprint:
                if self._changed is None:
                    log.info("rule files changed; reloading once they are unchanged for %.0f s", self.reload_quiet)
                self._changed = (fingerprint, time.monotonic())
                return False
            if time.monotonic() - self._changed[1] < self.reload_quiet:
                return False
        elif not self._reload_requested and fingerprint == self._fingerprint:
            return False
        why = "SIGHUP" if self._reload_requested else _("rule files changed")
        self._reload_requested = False
        self._fingerprint = fingerprint
        self._changed = None
        try:
            project, text = load_rules(self.config.rules_dir)
        except Exception as exc:
            self.refused_reload = {
                "at": self.local(self.now()),
                "why": why,
                "keeping": self.project.version,
                "error": f"{type(exc).__name__}: {exc}",
            }
            log.exception("reload (%s) failed; keeping the rules in use (version %s)", why, self.project.version)
            self.metrics.reloads.labels(result="invalid").inc()
            return False
        if project is None:
            self.refused_reload = {
                "at": self.local(self.now()),
                "why": why,
                "keeping": self.project.version,
                "error": next((line for line in text.splitlines() if line.strip()), ""),
            }
            log.error(
                "%s",
                render(
                    _(
                        "reload ({why}) refused: the rules are invalid; keeping version {version}\n{problems}",
                        why=why,
                        version=self.project.version,
                        problems=text.rstrip(),
                    )
                ),
            )
            self.metrics.reloads.labels(result="invalid").inc()
            return False
        self.refused_reload = None
        if project.version == self.project.version:
            log.info("reload (%s): rules unchanged (version %s)", why, project.version)
            return False
        if text:
            log.warning("rule warnings:\n%s", text.rstrip())
        counts = self.engine.reload(project) or {}
        removed = sorted(set(self.project.rules) - set(project.rules))
        self.project = project
        self.metrics.reloads.labels(result="ok").inc()
        self.last_reload = {
            "at": self.local(self.now()),
            "why": why,
            "version": project.version,
            "removed_rules": removed,
            **counts,
        }
        log.info("rules reloaded (version %s, %d rules, %s)", project.version, len(project.rules), why)
        if counts:
            log.info(
                "reload: %d friends in flight carried over to changed rules, %d suspended "
                "(their rule is gone: %s; they resume if it comes back within %d min, and "
                "end with rule_removed after), %d resumed (their rule is back)",
                counts.get("carried_over", 0),
                counts.get("suspended", 0),
                ", ".join(removed) or "-",
                SUSPEND_GRACE // 60,
                counts.get("resumed", 0),
            )
        return True

    def reload_due_in(self) -> float | None:
        """Seconds until a pending change of the rule folder is quiet long enough."""
        if self._changed is None:
            return None
        return max(0.05, self.reload_quiet - (time.monotonic() - self._changed[1]))

    def end_suspended(self, now: int) -> int:
        """End the enrollments suspended longer than :data:`SUSPEND_GRACE` (``rule_removed``)."""
        store = self.engine.store
        if not store.suspended_count():
            return 0
        ended = store.end_suspended(now - SUSPEND_GRACE, now)
        if ended:
            log.warning(
                "%d friends suspended since their rule was removed %d min ago ended (rule_removed)",
                ended,
                SUSPEND_GRACE // 60,
            )
        return ended

    # ------------------------------------------------------------------ sending

    def _may_start(self) -> bool:
        return not self.stopping and self.auth_problem is None

    def _room(self, ahead: int) -> tuple[int, int] | None:
        """(replies, other rows) to claim now: for the free reply slots, and for the free send
        slots plus ``ahead`` rows beyond them once the rows claimed ahead run low; None when
        nothing may be claimed."""
        if not self._may_start():
            return None
        replies = self._replies_in_flight
        others = len(self._sending) - replies
        free_replies = max(0, REPLY_SLOTS - replies)
        free_others = 0
        waiting = len(self._ready) + self._behind_count
        if waiting <= ahead // 2:
            free_others = max(0, SEND_SLOTS - others + ahead - waiting)
        if not free_replies and not free_others:
            return None
        return free_replies, free_others

    def _claim(self, room: tuple[int, int]) -> list[dict]:
        """Claim due rows for ``room`` (fenced by the lease's epoch)."""
        lease = None if self.epoch is None else (self.owner, self.epoch, self.config.lease_ttl)
        replies, others = room
        return self.store.claim_outbox(
            int(self.now().timestamp()),
            replies + others,
            reply_limit=replies,
            other_limit=others,
            lease=lease,
        )

    def _start(self, rows: list[dict]) -> int:
        """Start the claimed replies at once (their slots were free) and queue the other rows
        for the send slots; returns the number of rows."""
        for row in rows:
            if row["kind"] == "reply":  # at once, while its token is fresh
                friend = _one_friend(row)
                if friend is not None:
                    self._friends_sending[friend] += 1
                self._sending[row["id"]] = ("reply", asyncio.ensure_future(self._send_row(row)))
                self._replies_in_flight += 1
            else:
                self._ready.append(row)
        self._start_ready()
        return len(rows)

    def _start_ready(self) -> None:
        """Start rows claimed ahead while send slots are free."""
        if not self._ready or not self._may_start():
            return
        others = len(self._sending) - self._replies_in_flight
        while self._ready and others < SEND_SLOTS:
            row = self._ready.popleft()
            friend = _one_friend(row)
            if friend is not None:
                if self._friends_sending[friend]:  # after the friend's row in flight lands
                    self._behind.setdefault(friend, deque()).append(row)
                    self._behind_count += 1
                    continue
                self._friends_sending[friend] += 1
            self._sending[row["id"]] = ("send", asyncio.ensure_future(self._send_row(row)))
            others += 1

    def fill_slots(self, ahead: int = 0) -> int:
        """Claim due rows for the free send slots (replies have slots of their own), and
        ``ahead`` rows beyond them in the same claim (only under a lease: its in-flight marks
        keep rows claimed ahead this runner's); start one task per row as slots are free.
        Returns the number of rows claimed. Raises LeaseLost when another runner holds the
        lease."""
        self._start_ready()
        room = self._room(ahead if self.epoch is not None else 0)
        return 0 if room is None else self._start(self._claim(room))

    async def _fill_slots_off_loop(self) -> int:
        """:meth:`fill_slots` with the claim on the database thread (PostgreSQL)."""
        self._start_ready()
        room = self._room(self.claim_ahead if self.epoch is not None else 0)
        if room is None:
            return 0
        rows = await asyncio.get_running_loop().run_in_executor(self._db, self._claim, room)
        return self._start(rows)

    async def dispatch_once(self) -> int:
        """Claim what is due now, send it and store every outcome; returns the number of rows
        claimed (for callers without the dispatch loop)."""
        started = self.fill_slots()
        await self._drain()
        return started

    async def _send_row(self, row: dict) -> None:
        item = outbox_item(row)
        started = time.perf_counter()
        try:
            result = await self.dispatcher.send_item(item, before_send=self._before_send(row))
        except StoreError as exc:  # logged once by the store; nothing was sent
            result = DispatchResult(
                row["id"], "retry", None, None, f"not sent: {exc}", row["kind"], len(row["recipients"]), item.ambiguous
            )
        except Exception as exc:  # an outcome is stored whatever happens: the row is retried
            log.exception("sending outbox %d failed unexpectedly", row["id"])
            result = DispatchResult(
                row["id"],
                "retry",
                None,
                None,
                f"internal error: {type(exc).__name__}: {exc}",
                row["kind"],
                len(row["recipients"]),
                item.ambiguous,
            )
        self.metrics.send_seconds.labels(kind=row["kind"]).observe(time.perf_counter() - started)
        self._land(row, result)

    def _before_send(self, row: dict) -> Callable[[OutboxItem], bool]:
        def mark(item: OutboxItem) -> bool:
            """A reply is about to go out: record that it may reach LINE (fenced)."""
            return self.store.mark_sending(row["id"], row.get("claim_epoch"), int(self.now().timestamp()))

        return mark

    def _land(self, row: dict, result: DispatchResult) -> None:
        """Queue an outcome; outcomes that land within :data:`FLUSH_DELAY` are stored in one
        transaction (SQLite's write lock is taken once for them, not once per row; a
        broadcast's multicasts land a few milliseconds apart). The request is over: its slot
        takes the next row claimed ahead at once. The row stays in flight in the store's marks
        until its outcome is stored, so it is never claimed again before its outcome is written
        (or could not be, and it goes again with its retry key)."""
        self._landed.append((row, result))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(
                self.flush_delay, self._flush if self._db is None else self._flush_soon
            )
        lane, _task = self._sending.pop(row["id"], ("", None))
        self._replies_in_flight -= lane == "reply"
        friend = _one_friend(row)
        if friend is not None and lane:
            self._friends_sending[friend] -= 1
            if not self._friends_sending[friend]:
                del self._friends_sending[friend]
                waiting = self._behind.get(friend)
                if waiting:  # the friend's next row goes next
                    self._ready.appendleft(waiting.popleft())
                    self._behind_count -= 1
                    if not waiting:
                        del self._behind[friend]
        self._start_ready()
        if len(self._ready) <= self.claim_ahead // 2:
            self.wake_dispatch()

    def _flush_soon(self) -> None:
        """PostgreSQL: :meth:`_flush` with the transaction on the database thread."""
        task = asyncio.ensure_future(self._flush_off_loop())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush_off_loop(self) -> None:
        self._flush_scheduled = False
        batch, self._landed = self._landed, []
        if batch:
            now = self.now()
            stored = await asyncio.get_running_loop().run_in_executor(self._db, self._store_outcomes, batch, now)
            self._flushed(batch, stored)

    def _flush(self) -> None:
        """Store the outcomes landed so far in one transaction. A row whose outcome cannot be
        stored is sent again later with its retry key."""
        self._flush_scheduled = False
        batch, self._landed = self._landed, []
        if batch:
            self._flushed(batch, self._store_outcomes(batch, self.now()))

    def _store_outcomes(self, batch: list[tuple[dict, DispatchResult]], now: dt.datetime) -> list | None:
        """The outcomes written in one transaction (:meth:`_record`'s reports), or None when they
        could not be: then their rows go again later with their retry keys."""
        # outcomes that only finish this runner's own rows need no schema lock (PostgreSQL)
        finishing = all(result.outcome in FINISHED for _, result in batch)
        try:
            with self.store.transaction(rows_only=finishing):
                return self._record(batch, now)
        except StoreError:  # logged once by the store
            log.warning(
                "the outcomes of %d outbox rows could not be stored; they are sent again (same retry keys)", len(batch)
            )
            self.store.release_claims(row["id"] for row, _ in batch)
        except Exception:
            log.exception(
                "the outcomes of %d outbox rows could not be stored; they are sent again (same retry keys)", len(batch)
            )
            self.store.release_claims(row["id"] for row, _ in batch)
        return None

    def _flushed(self, batch: list[tuple[dict, DispatchResult]], reports: list | None) -> None:
        """After a flush (on the event loop): count and log what was stored, and claim again
        unless every slot was freed as the answers landed."""
        if reports is not None:
            self._report(reports)
            if all(result.outcome in FINISHED for _, result in batch):
                return
        self.wake_dispatch()  # rows to claim again, or a refused token to notice

    def _record(
        self, batch: list[tuple[dict, DispatchResult]], now: dt.datetime
    ) -> list[tuple[dict, DispatchResult, bool, dt.datetime | None]]:
        """Store outcomes with their reasons: done, rejected, unconfirmed, held for the quota
        or the token, or retried later. Final outcomes are written by one call
        (:meth:`Store.finish_outbox_rows`), the others row by row. Fenced: nothing is written
        for a row that another runner claimed since. Returns (row, result, written, until) for
        :meth:`_report`."""
        at = int(now.timestamp())
        by_epoch: dict[int | None, list[tuple[int, str, str | None, str | None]]] = {}
        for row, result in batch:
            if result.outcome in FINISHED:
                by_epoch.setdefault(row.get("claim_epoch"), []).append(
                    (row["id"], result.outcome, result.request_id, result.detail)
                )
        finished: set[int] = set()
        for epoch, outcomes in by_epoch.items():
            finished |= self.store.finish_outbox_rows(outcomes, at, epoch=epoch)
        reports = []
        for row, result in batch:
            outcome, until = result.outcome, None
            if outcome in FINISHED:
                written = row["id"] in finished
            else:
                if outcome == "held":
                    until = self.next_day_opening(row, now)
                elif outcome == "auth":
                    until = now
                else:
                    until = self.retry_at(row, now, result)
                written = self.store.hold_outbox(
                    row["id"],
                    int(until.timestamp()),
                    error=result.detail,
                    ambiguous=result.ambiguous,
                    epoch=row.get("claim_epoch"),
                )
            reports.append((row, result, written, until))
        return reports

    def _report(self, reports: list[tuple[dict, DispatchResult, bool, dt.datetime | None]]) -> None:
        """Log stored outcomes (one line a row) and count them (once per outcome a batch)."""
        counts: Counter[str] = Counter()
        for row, result, written, until in reports:
            row_id, to, outcome = row["id"], _recipients(row), result.outcome
            if not written:
                log.warning("outbox %d to %s: %s not stored: the row is no longer this runner's", row_id, to, outcome)
                counts["fenced"] += 1
                continue
            counts[outcome] += 1
            if outcome == "dry_run":
                pass  # the transport logged it
            elif outcome in ("sent", "duplicate"):
                log.info(
                    "%s outbox %d to %s via %s%s",
                    outcome,
                    row_id,
                    to,
                    result.via,
                    f" (request {result.request_id})" if result.request_id else "",
                )
            elif outcome == "rejected":
                log.error("LINE rejected outbox %d to %s (%s): %s", row_id, to, result.status, result.detail)
            elif outcome == "unconfirmed":
                log.warning("outbox %d to %s unconfirmed: %s", row_id, to, result.detail)
            elif outcome == "held":
                log.warning("outbox %d to %s held until %s: %s", row_id, to, self.local(until), result.detail)
            elif outcome == "auth":
                first, self.auth_problem = self.auth_problem is None, result.detail or f"HTTP {result.status}"
                if first:
                    log.error(
                        "LINE refuses the channel access token (%s): every send is held, "
                        "nothing is dropped; checking again in %.0f s. Set a valid "
                        "LINE_CHANNEL_ACCESS_TOKEN (or LINE_CHANNEL_ID and "
                        "LINE_CHANNEL_SECRET) and restart, or fix it in the LINE "
                        "Developers Console",
                        result.detail,
                        self._auth_delay,
                    )
            else:
                log.warning(
                    "outbox %d to %s not sent (%s)%s; next attempt at %s with the same retry key",
                    row_id,
                    to,
                    result.detail,
                    " and may have arrived" if result.ambiguous else "",
                    self.local(until),
                )
        for outcome, count in counts.items():
            self.metrics.pushes.labels(outcome=outcome).inc(count)

    def _window(self, row: dict) -> Any:
        rule = self.project.rules.get(row.get("rule") or "")
        return (rule.window if rule else None) or self.project.settings.window

    def next_day_opening(self, row: dict, now: dt.datetime) -> dt.datetime:
        """Where sends stopped by the monthly quota wait (SPEC §4): the next day's opening of
        the row's delivery window. The quota is read again then; while it stays spent the row
        is held for another day, and the month's reset releases it."""
        local = now.astimezone(self.tz)
        tomorrow = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), self.tz)
        at = next_opening(int(tomorrow.timestamp()), self._window(row), self.tz)
        return dt.datetime.fromtimestamp(at, dt.UTC)

    def retry_at(self, row: dict, now: dt.datetime, result: DispatchResult | None = None) -> dt.datetime:
        """Backoff by attempts, or LINE's ``Retry-After`` (at most five minutes), for this row
        alone, by the retry policy (:meth:`engine.line.retrypolicy.RetryPolicy.hold_until`). A reply is retried before its token's deadline (so that a request
        whose outcome is unknown can still be told by its token); a push that would land
        outside its delivery window waits for the next opening (answers to a friend's own
        message ignore the window)."""
        at = DEFAULT_POLICY.hold_until(
            int(row.get("attempts") or 1),
            int(now.timestamp()),
            retry_after=result.retry_after if result is not None else None,
            reply_deadline=row.get("reply_deadline") if row["kind"] == "reply" else None,
            reply_margin=REPLY_MARGIN,
        )
        if not row.get("reply_token"):
            at = next_opening(at, self._window(row), self.tz)
        return dt.datetime.fromtimestamp(at, dt.UTC)

    def _quota_remaining(self) -> float | None:
        value = getattr(self.dispatcher, "remaining", None)
        return None if value is None else float(value)

    def _line_retries(self) -> list[tuple[dict[str, str], float]]:
        by_reason = self.dispatcher.metrics.get("retries_by_reason", {})
        return [({"reason": reason}, count) for reason, count in sorted(by_reason.items())]

    def _line_errors(self) -> list[tuple[dict[str, str], float]]:
        """Error answers from LINE by status, from the dispatcher's request counts."""
        totals: dict[str, float] = {}
        for statuses in self.dispatcher.metrics.get("requests", {}).values():
            for status, count in statuses.items():
                if not status.startswith("2"):
                    totals[status] = totals.get(status, 0) + count
        return [({"status": status}, count) for status, count in sorted(totals.items())]


def outbox_item(row: dict) -> OutboxItem:
    """The dispatcher's view of a claimed outbox row; the retry key is the row's own."""
    menu_link = row["kind"] == "menu_link"
    return OutboxItem(
        id=row["id"],
        kind=row["kind"],
        to=list(row["recipients"]),
        messages=[] if menu_link else row["payload"],
        retry_key=row["retry_key"],
        reply_token=row.get("reply_token"),
        reply_deadline=row.get("reply_deadline"),
        rich_menu_id=row["payload"].get("richMenuId") if menu_link else None,
        # a request was sent and its outcome is unknown (stored before it went out)
        ambiguous=bool(row.get("ambiguous")),
        encoded=None if menu_link else row.get("encoded"),
    )


def _one_friend(row: dict) -> str | None:
    """The friend of a push or reply row (a friend's go one after the other), else None."""
    if row["kind"] in ("push", "reply") and len(row["recipients"]) == 1:
        return row["recipients"][0]
    return None


def _recipients(row: dict) -> str:
    to = row["recipients"]
    return to[0] if len(to) == 1 else f"{len(to)} friends"


def acquire_lease(store: Any, owner: str, config: RunnerConfig, clock: Clock = SYSTEM) -> None:
    """Take the one-runner-per-database lease or raise StartupError naming the holder.

    A lease held by a process on this host that no longer exists (a crash, SIGKILL) is taken
    over at once instead of waiting for it to expire.
    """
    now, ttl = int(clock.time()), config.lease_ttl
    if store.acquire_lease(owner, now, ttl):
        return
    holder = store.lease_holder()
    host, _sep, pid = (holder or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        log.warning("taking over the lease of %s: that process is gone", holder)
        store.release_lease(holder)
        if store.acquire_lease(owner, now, ttl):
            return
        holder = store.lease_holder()
    raise StartupError(
        _(
            "another runner ({holder}) is using {db}; only one runner may use a database at a time",
            holder=holder,
            db=config.db,
        )
    )
