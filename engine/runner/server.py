"""The runner's HTTP server (aiohttp) and ``serve``, the entry point of ``linerules run``.

Routes (docs/operations.md):

- ``POST /callback``   LINE webhooks: signature check on the raw body, store, answer 200.
- ``POST /events``     shop events with ``Authorization: Bearer $LINERULES_API_TOKEN``;
                       ``application/json`` (one event or a list) or ``application/x-ndjson`` /
                       ``application/jsonl`` (JSON Lines).
- ``GET /healthz``     database, last tick (configured zone), outbox backlog, dry-run flag.
- ``GET /metrics``     Prometheus text format (or OpenMetrics when asked), engine/runner/metrics.py.
- ``GET /join/<source>``, ``GET /login/callback``   friend-add source through LINE Login.
- ``GET /c/<token>``   tracked link: record the click, redirect to the tagged URL.
- ``POST /shopify/webhooks``, ``POST /account-link/nonce``   the shop side (engine/runner/shop_http.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web

from engine.i18n import _, render
from engine.line.login import API_URL, AUTHORIZE_URL, LoginError, LoginFlow
from engine.line.webhook import parse_webhook, verify_signature
from engine.runtime.events import Event, EventError
from engine.runtime.intake import parse_events
from engine.runtime.store import MIN_FREE_BYTES, RETRY_AFTER, ApplyResult, Store, StoreError

from .runloop import Runner, RunnerConfig, StartupError
from .shop_http import account_link_target, bearer_ok
from .shop_http import routes as shop_routes

log = logging.getLogger("linerules.http")

RUNNER: web.AppKey[Runner] = web.AppKey("runner", Runner)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
INTAKE: web.AppKey[Intake] = web.AppKey("intake")

JSON_TYPES = ("application/json",)
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines", "application/x-jsonlines")
#: Event types whose sends in the same tick are answers that use the reply token while fresh.
ANSWERED_TYPES = ("message", "postback")
#: Health turns bad when no tick ran for this many tick intervals.
STALE_TICKS = 3
#: Largest request body accepted (LINE webhooks are far smaller).
MAX_BODY = 4 * 1024 * 1024

#: Worker threads that check, parse and store request bodies, each with its own database
#: connection: a 4 MiB body (20,000 webhook events, 48,000 shop events) takes seconds of
#: parsing, and neither that nor SQLite's write lock may hold up the event loop (``/healthz``,
#: other webhooks, the dispatcher).
INTAKE_THREADS = 4
#: Events stored per transaction when a big body is stored in parts, so that SQLite's one
#: write lock is never held long (other webhooks wait for it). Only bodies whose every event
#: has a dedupe key (LINE's ``webhookEventId``; ``id`` or ``order_id`` of a shop event) are
#: stored in parts: a retry after a crash between parts then applies the rest once. Other shop
#: batches are stored in one transaction, all or nothing.
STORE_CHUNK = 250
#: Seconds a thread may run Python before another that waits takes its turn (CPython's switch
#: interval, 5 ms by default): while an intake thread parses a big body, the event loop gets
#: its turn within a millisecond, so ``/healthz`` answers in tens of milliseconds.
SWITCH_INTERVAL = 0.001

THANKS_PAGE = """<!doctype html><html lang="ja"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>ありがとうございます</title>
<p>友だち追加ありがとうございます。LINEに戻ってトークをご確認ください。</p>
<p>Thank you for adding us as a friend. You can close this page and go back to LINE.</p></html>
"""


def _dumps(value: Any) -> str:
    """JSON with Japanese as it is (not ``\\u`` escapes), so a shop's log reads it."""
    return json.dumps(value, ensure_ascii=False)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error answer; the reason is in the runner's language (settings.yaml)."""
    return web.json_response({"error": render(message), **extra}, status=status, dumps=_dumps)


@web.middleware
async def timed(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Time every answer (``linerules_http_request_duration_seconds`` by route)."""
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        route = request.match_info.route.resource
        request.app[RUNNER].metrics.request_seconds.labels(
            route=route.canonical if route is not None else "other"
        ).observe(time.perf_counter() - started)


@web.middleware
async def store_faults(request: web.Request, handler: Callable) -> web.StreamResponse:
    """A request that meets a database that cannot be written (disk full, read-only, I/O
    error) is answered 503 with ``Retry-After``; the store logged the cause once."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        # aiohttp's own answer is plain text; clients get the same JSON shape as any refusal
        log.warning(
            "%s %s refused: the body is larger than %d MiB", request.method, request.path, MAX_BODY // (1024 * 1024)
        )
        return _error(
            413,
            _(
                "the body is larger than {limit} MiB: send the events in smaller "
                "batches (nothing of this one was stored)",
                limit=MAX_BODY // (1024 * 1024),
            ),
            line=None,
            field=None,
        )
    except StoreError as exc:
        retry = str(getattr(exc, "retry_after", RETRY_AFTER))
        return web.json_response(
            {
                "error": render(
                    _("the database cannot be written now; try again later (what was stored is applied once)")
                ),
                "retry_after": int(retry),
            },
            status=503,
            headers={"Retry-After": retry},
        )


# ----------------------------------------------------------------------------- webhooks


async def callback(request: web.Request) -> web.Response:
    """LINE webhook: verify, store, answer at once; replies go out from the next tick."""
    runner = request.app[RUNNER]
    secret = runner.config.channel_secret
    if not secret:
        log.error("webhook refused: LINE_CHANNEL_SECRET is not set, so signatures cannot be checked")
        return _reply_webhook(runner, _error(503, _("webhook disabled: set LINE_CHANNEL_SECRET")))
    body = await request.read()
    signature = request.headers.get("x-line-signature", "")
    try:
        stored = await request.app[INTAKE].run(_store_webhook, secret, body, signature)
    except EventError as exc:
        log.error("webhook with a malformed event ignored: %s", exc)
        return _reply_webhook(runner, _error(400, exc.text, line=exc.line, field=exc.field))
    if stored is None:
        log.warning(
            "webhook refused: %s x-line-signature from %s", "invalid" if signature else "missing", request.remote
        )
        return _reply_webhook(runner, _error(401, _("invalid signature")))
    events, result, counts = stored
    if events:
        _count_events(runner, counts, "webhook")
        if any(e.type in ANSWERED_TYPES and e.reply_token for e in events):
            runner.wake_tick()
        followers = sorted({e.friend for e in events if e.type == "follow"})
        if followers and not runner.config.dry_run:
            runner.spawn(_fetch_profiles(runner, followers))
        elif followers:
            runner.wake_tick()
        log.info("webhook: %d events stored, %d duplicates", result.applied, result.duplicates)
    return _reply_webhook(runner, web.json_response({"ok": True}))


def _store_webhook(
    stores: Intake, runner: Runner, secret: str, body: bytes, signature: str
) -> tuple[list[Event], ApplyResult, Counter] | None:
    """On an intake thread: check the signature, parse and store the webhook's events (see
    :func:`_apply`); None when the signature is wrong. Raises EventError."""
    if not signature or not verify_signature(secret, body, signature):
        return None
    events = parse_webhook(body)
    result = _apply(stores, events)
    return events, result, _log_events(runner, events, "webhook", result)


def _apply(stores: Intake, events: list[Event]) -> ApplyResult:
    """Store validated events: in parts of :data:`STORE_CHUNK` when every event has a dedupe
    key (a retry applies each once), else in one transaction. Stored in parts, a body lets the
    other writers (a small webhook) go first between its parts, like the engine's ticks do."""
    if len(events) > STORE_CHUNK and all(e.dedupe_key for e in events):
        size, store = STORE_CHUNK, stores.store(yields=True)
    else:
        size, store = max(1, len(events)), stores.store()
    applied = duplicates = 0
    for start in range(0, len(events), size):
        part = store.apply_events(events[start : start + size])
        applied, duplicates = applied + part.applied, duplicates + part.duplicates
    return ApplyResult(applied, duplicates)


def _reply_webhook(runner: Runner, response: web.Response) -> web.Response:
    runner.metrics.webhooks.labels(status=str(response.status)).inc()
    return response


async def _fetch_profiles(runner: Runner, friends: list[str]) -> None:
    """Store display name and language of new friends for message templates, then run a tick
    so that welcome messages can use them."""
    for friend in friends:
        try:
            profile = await runner.dispatcher.get_profile(friend)
        except Exception as exc:  # the profile is a nicety; the friend is already stored
            log.warning("profile of %s not fetched: %s", friend, exc)
            continue
        values = {k: v for k, v in (profile or {}).items() if v is not None}
        if values:
            try:
                with runner.store.transaction():
                    runner.store.set_attributes(friend, values)
            except StoreError:
                continue  # the database cannot be written (logged once by the store)
            log.info("profile of %s stored (%s)", friend, values.get("display_name"))
    runner.wake_tick()


def _log_events(runner: Runner, events: list[Event], origin: str, result: ApplyResult) -> Counter:
    """One log line per event received (on the intake thread), and one for the duplicates among
    them; returns the count per type. Never raises: the events are stored already, and an error
    answer now would make the client send them again."""
    for event in events:
        try:
            when = runner.local(event.at)
        except (OverflowError, ValueError):
            when = event.at.isoformat()
        # an event naming only the shop's customer (or a refund, its order) has no friend yet
        who = (
            f"friend={event.friend}"
            if event.friend
            else f"customer={event.data['customer']}"
            if event.data.get("customer")
            else f"order={event.data.get('order_id')}"
        )
        log.info("event %s %s at=%s via %s", event.type, who, when, origin)
    if result.duplicates:
        log.info("%d of these %d events via %s were stored before: duplicates", result.duplicates, len(events), origin)
    return Counter(e.type for e in events)


def _count_events(runner: Runner, counts: Counter, origin: str) -> None:
    """Count stored events in the metrics (on the event loop, which owns them)."""
    for kind, number in counts.items():
        runner.metrics.events.labels(type=kind, origin=origin).inc(number)


# ----------------------------------------------------------------------------- shop events


async def events(request: web.Request) -> web.Response:
    """Shop events: bearer token, JSON or JSON Lines, all applied or none (400)."""
    runner = request.app[RUNNER]
    token = runner.config.api_token
    if not token:
        return _error(503, _("events endpoint disabled: set LINERULES_API_TOKEN"))
    if not bearer_ok(request, token):
        return _error(401, _("missing or wrong bearer token"))
    ctype = request.content_type
    if ctype in JSON_TYPES:
        fmt = "json"
    elif ctype in JSONL_TYPES:
        fmt = "jsonl"
    else:
        return _error(
            415,
            _(
                "unsupported Content-Type `{type}`: send application/json (one event "
                "or a list) or application/x-ndjson (JSON Lines)",
                type=ctype,
            ),
        )
    body = await request.read()
    try:
        batch, result, counts = await request.app[INTAKE].run(_store_events, body, fmt)
    except UnicodeDecodeError:
        return _error(400, _("the body is not UTF-8 text"), line=None, field=None)
    except EventError as exc:
        log.warning("POST /events rejected: %s", exc)
        return _error(400, exc.message, line=exc.line, field=exc.field)
    _count_events(runner, counts, "api")
    if result.applied:
        runner.wake_tick()
    return web.json_response({"applied": result.applied, "duplicates": result.duplicates})


def _store_events(stores: Intake, runner: Runner, body: bytes, fmt: str) -> tuple[list[Event], ApplyResult, Counter]:
    """On an intake thread: decode, parse and validate the whole batch, then store it (see
    :func:`_apply`). Raises UnicodeDecodeError or EventError before anything is written."""
    batch = parse_events(body.decode("utf-8"), fmt=fmt)
    result = _apply(stores, batch)
    return batch, result, _log_events(runner, batch, "api", result)


class Intake:
    """Runs request-body work on :data:`INTAKE_THREADS` worker threads, each with its own
    connection to the runner's database (a runner on ``:memory:`` shares its one store)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._executor = ThreadPoolExecutor(INTAKE_THREADS, thread_name_prefix="linerules-intake")
        self._local = threading.local()
        self._stores: list[Store] = []
        self._lock = threading.Lock()

    def store(self, *, yields: bool = False) -> Store:
        """This intake thread's connection (``yields``: one that lets other writers go first,
        for bodies stored in parts)."""
        main = self.runner.store
        if getattr(main, "path", ":memory:") == ":memory:":
            return main
        key = "yielding" if yields else "store"
        store = getattr(self._local, key, None)
        if store is None:
            store = Store(main.path, checkpoints=False, yields=yields, clock=main.clock)
            setattr(self._local, key, store)
            with self._lock:
                self._stores.append(store)
        return store

    def _call(self, fn: Callable, args: tuple) -> Any:
        return fn(self, self.runner, *args)

    async def run(self, fn: Callable, *args: Any) -> Any:
        """``fn(intake, runner, *args)`` on an intake thread (``fn`` takes its connection from
        :meth:`store`); its result or its exception."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            stores, self._stores = self._stores, []
        for store in stores:
            store.close()


# ----------------------------------------------------------------------------- health, metrics


def health(runner: Runner) -> tuple[bool, dict[str, Any]]:
    """(healthy, details) as served by ``GET /healthz``."""
    problems: list[str] = []
    now = runner.now()
    try:
        store: dict[str, Any] = runner.store.health()
        cluster: dict[str, Any] = runner.store.cluster()
        database = "ok"
    except Exception as exc:  # any failure of the database is what this check reports
        store, cluster, database = {}, {}, f"error: {exc}"
        problems.append("database unreachable")
    disk = _disk_problem(runner.store)
    if disk:
        database = f"error: {disk}"
        problems.append(disk)
    last_tick = runner.last_tick
    since = last_tick or runner.started_at
    if not runner.leading and store.get("last_tick"):  # another runner ticks: the database says when
        last_tick = dt.datetime.fromtimestamp(store["last_tick"], dt.UTC)
        since = last_tick + dt.timedelta(seconds=1)  # it keeps whole seconds
    if (now - since).total_seconds() > STALE_TICKS * runner.config.tick_seconds:
        problems.append(f"no tick for {int((now - since).total_seconds())}s")
    if runner.auth_problem is not None:
        problems.append(
            f"LINE refuses the channel access token ({runner.auth_problem}); every send is held until it is accepted"
        )
    details = {
        "status": "ok" if not problems else "unhealthy",
        "problems": problems,
        "database": database,
        "last_tick": runner.local(last_tick) if last_tick else None,
        "outbox_backlog": store.get("outbox_backlog"),
        "waiting_sends": store.get("waiting_sends"),
        "next_waiting_send": (
            runner.local(dt.datetime.fromtimestamp(store["next_waiting_send"], dt.UTC))
            if store.get("next_waiting_send") is not None
            else None
        ),
        "pending_events": store.get("pending_events"),
        "failed_events": store.get("failed_events"),
        "friends": store.get("friends"),
        "open_enrollments": store.get("open_enrollments"),
        "dry_run": runner.config.dry_run,
        "rules_version": runner.project.version,
        "timezone": runner.project.settings.timezone,
        "sending": "held: LINE refuses the token" if runner.auth_problem is not None else "ok",
        "suspended_enrollments": store.get("suspended_enrollments"),
        "last_reload": runner.last_reload,
        "refused_reload": runner.refused_reload,
        "cluster": {
            "this_runner": runner.owner,
            "leading": runner.leading,
            "leader": cluster.get("leader"),
            "runners": cluster.get("runners"),
            "sent_by_this_runner": runner.metrics.sent(),
        },
    }
    return not problems, details


def _disk_problem(store: Any) -> str | None:
    """Why the database cannot be written now: the last write failed (disk full, read-only,
    I/O error), or its disk has less than ``MIN_FREE_BYTES`` left."""
    problem = getattr(store, "write_problem", None)
    if problem:
        return f"database writes fail: {problem}"
    free = store.free_bytes() if hasattr(store, "free_bytes") else None
    if free is not None and free < MIN_FREE_BYTES:
        return f"the disk of the database {os.path.abspath(store.path)} is full ({free:,} bytes free)"
    return None


async def healthz(request: web.Request) -> web.Response:
    ok, details = health(request.app[RUNNER])
    return web.json_response(details, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[RUNNER].metrics.render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


# ----------------------------------------------------------------------------- sources and clicks


def login_flow(runner: Runner) -> LoginFlow | None:
    """The LINE Login settings, or None when the login channel or base URL is missing."""
    s = runner.project.settings
    if not (s.login_channel_id and s.login_channel_secret and s.base_url):
        return None
    return LoginFlow(
        s.login_channel_id,
        s.login_channel_secret,
        s.base_url,
        authorize_url=runner.config.login_authorize_url or AUTHORIZE_URL,
        api_url=runner.config.login_api_url or API_URL,
    )


async def join(request: web.Request) -> web.Response:
    """``/join/qr=shipping``: send the visitor through LINE Login with the add-friend prompt."""
    runner = request.app[RUNNER]
    flow = login_flow(runner)
    if flow is None:
        log.error(
            "GET /join refused: set base_url, login_channel_id and login_channel_secret "
            "in settings.yaml (or LINE_LOGIN_CHANNEL_ID / LINE_LOGIN_CHANNEL_SECRET)"
        )
        return web.Response(status=503, text="friend-add links are not configured")
    source = request.match_info["source"]
    now = int(runner.now().timestamp())
    try:
        url = flow.authorize_redirect(source, now)
    except LoginError as exc:
        return web.Response(status=404, text=str(exc))
    runner.note_join(now)  # follows wait FOLLOW_GRACE for the source a while (docs/operations.md)
    raise web.HTTPFound(url)


async def login_callback(request: web.Request) -> web.Response:
    """LINE Login's redirect: verify state, read the user id, record the friend's source."""
    runner = request.app[RUNNER]
    flow = login_flow(runner)
    if flow is None:
        return web.Response(status=503, text="friend-add links are not configured")
    query = request.query
    try:
        source = flow.verify_state(query.get("state", ""), int(runner.now().timestamp()))
        if "code" not in query:
            raise LoginError(f"LINE Login did not sign in ({query.get('error', 'no code')})")
        user_id = await flow.user_id(request.app[SESSION], query["code"])
    except LoginError as exc:
        log.warning("login callback failed: %s", exc)
        return web.Response(status=400, text=str(exc))
    except (TimeoutError, aiohttp.ClientError, KeyError, ValueError) as exc:
        log.error("login callback: LINE Login did not answer as expected: %s", exc)
        return web.Response(status=502, text="LINE Login is not available; try again later")
    runner.store.set_source(user_id, source)
    log.info(
        "source %s recorded for %s (friendship changed: %s)",
        source,
        user_id,
        query.get("friendship_status_changed", "unknown"),
    )
    runner.wake_tick()
    raise web.HTTPFound(runner.config.join_redirect or "/login/thanks")


async def thanks(request: web.Request) -> web.Response:
    return web.Response(text=THANKS_PAGE, content_type="text/html")


async def click(request: web.Request) -> web.Response:
    """A tracked link: record the click and redirect to the UTM-tagged URL; unknown -> 404."""
    runner = request.app[RUNNER]
    url = runner.store.record_click(request.match_info["token"], at=int(runner.now().timestamp()))
    if url is None:
        return web.Response(status=404, text="unknown link")
    runner.metrics.clicks.inc()
    raise web.HTTPFound(await account_link_target(runner, request.match_info["token"], url))


# ----------------------------------------------------------------------------- the app


def build_app(runner: Runner, *, loops: bool = True) -> web.Application:
    """The aiohttp application; with ``loops`` the tick and dispatch loops run with the app, and
    its startup completes once their first tick has run (``linerules run`` serves at once)."""
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
    app = web.Application(client_max_size=MAX_BODY, middlewares=[timed, store_faults])
    app[RUNNER] = runner
    app.add_routes(
        [
            web.post("/callback", callback),
            web.post("/events", events),
            web.get("/healthz", healthz),
            web.get("/metrics", metrics),
            web.get("/join/{source}", join),
            web.get("/login/callback", login_callback),
            web.get("/login/thanks", thanks),
            web.get("/c/{token}", click),
            *shop_routes(RUNNER),  # /shopify/webhooks, /account-link/nonce (engine/runner/shop_http.py)
        ]
    )

    async def session_ctx(app: web.Application):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            app[SESSION] = session
            yield

    async def loops_ctx(app: web.Application):
        task = asyncio.ensure_future(runner.run())
        # ready once the first tick ran, as the runner was before it ticked on its own thread
        ready = asyncio.ensure_future(runner.first_tick_done.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        yield
        runner.stop()
        await task

    async def intake_ctx(app: web.Application):
        app[INTAKE] = Intake(runner)
        yield
        await asyncio.get_running_loop().run_in_executor(None, app[INTAKE].close)

    app.cleanup_ctx.append(session_ctx)
    app.cleanup_ctx.append(intake_ctx)
    if loops:
        app.cleanup_ctx.append(loops_ctx)
    return app


class ZoneFormatter(logging.Formatter):
    """Log times as ISO 8601 with offset in the configured zone."""

    def __init__(self, tz: dt.tzinfo) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.tz = tz

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return dt.datetime.fromtimestamp(record.created, self.tz).isoformat(timespec="milliseconds")


def setup_logging(tz: dt.tzinfo) -> None:
    """One line per record on stderr, times in the configured zone."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ZoneFormatter(tz))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LINERULES_LOG_LEVEL", "INFO").upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _zone_of(rules_dir: str) -> dt.tzinfo:
    """The configured zone for log times before the rules are loaded (settings.yaml only)."""
    from zoneinfo import ZoneInfo

    from engine.language.settings import load_settings

    try:
        path = os.path.join(rules_dir, "settings.yaml")
        with open(path, encoding="utf-8") as f:
            return load_settings(path, f.read())[0].tz
    except (OSError, UnicodeDecodeError):  # (not UTF-8: the load of the rules says so, exit 1)
        return ZoneInfo("Asia/Tokyo")


def serve(
    *,
    rules_dir: str,
    db: str,
    listen: str,
    tick_seconds: float,
    env: Mapping[str, str] | None = None,
    condition_interval: int = 0,
) -> int:
    """Run the runner until SIGTERM/SIGINT; returns the process exit code."""
    setup_logging(_zone_of(rules_dir))
    config = RunnerConfig.from_env(
        os.environ if env is None else env,
        rules_dir=rules_dir,
        db=db,
        listen=listen,
        tick_seconds=tick_seconds,
        condition_interval=condition_interval,
    )
    try:
        return asyncio.run(_serve(config))
    except StartupError as exc:
        log.error("%s", render(exc.args[0]) if exc.args else exc)
        return 1


async def _serve(config: RunnerConfig) -> int:
    runner = Runner.open(config)
    try:
        host, port = config.host_port
        app = build_app(runner, loops=False)
        web_runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=10)
        await web_runner.setup()
        site = web.TCPSite(web_runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await web_runner.cleanup()
            raise StartupError(f"cannot listen on {config.listen}: {exc.strerror}") from exc
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, runner.on_reload_signal)
        force = asyncio.ensure_future(_exit_on_second_signal(runner))
        bound = web_runner.addresses[0] if web_runner.addresses else (host, port)
        log.info("listening on http://%s:%s (tick every %ss)", bound[0], bound[1], config.tick_seconds)
        await runner.run()
        log.info("stopping: tick and sends finished, closing the HTTP server")
        await web_runner.cleanup()
        force.cancel()
        log.info("stopped")
        return runner.exit_code
    finally:
        runner.close()


async def _exit_on_second_signal(runner: Runner) -> None:
    """The second SIGTERM/SIGINT exits at once; rows in flight are sent again on restart."""
    await runner.wait_force()
    log.warning("second signal: exiting now; rows in flight are sent again on restart")
    try:
        runner.close(wait=False)  # the tick thread may still be inside a tick
    finally:
        os._exit(1)
