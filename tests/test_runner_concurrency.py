"""The runner answers webhooks while a long tick runs on its own thread; ticks never overlap; a
stop during a tick lets it finish; big audiences enter in short, crash-safe transactions; and a
follow waits for its friend-add source (the follow grace) without being overtaken."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import engine.runner.runloop as runloop
import engine.runtime.store as store_module
from engine.interpreter import Engine
from engine.runner.clock import SYSTEM, Clock, ManualClock
from engine.runner.runloop import Runner, RunnerConfig
from engine.runner.server import build_app
from engine.runtime.store import Store
from enginekit import at, compile_rules, ev
from serverkit import (
    API_TOKEN,
    SECRET,
    line_event,
    sign,
    tick_later,
    wait_for,
    webhook_body,
    write_rules,
)

SOURCE_RULES = """\
rule welcome_general
  when followed
  unless followed via qr=shipping
  then send greeting

rule shipping
  when followed via qr=shipping
  then send coupon_reply
"""


class Gate:
    """Stands in for ``engine.tick``: every tick waits for :attr:`release` before it runs, and
    records how many ticks ran at once and on which threads."""

    def __init__(self, engine: Engine) -> None:
        self.original = engine.tick
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.active = self.most = self.calls = self.finished = 0
        self.threads: set[int] = set()
        engine.tick = self  # type: ignore[method-assign]

    def __call__(self, now: dt.datetime, **kwargs):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        self.threads.add(threading.get_ident())
        self.entered.set()
        try:
            assert self.release.wait(10), "the test never released the tick"
            return self.original(now, **kwargs)
        finally:
            with self.lock:
                self.active -= 1
                self.finished += 1


@pytest.fixture
def open_runner(tmp_path: Path, monkeypatch):
    """Open runners on a real database file (dry-run: nothing goes to LINE)."""
    monkeypatch.setenv("LINE_LOGIN_CHANNEL_SECRET", "login-secret")
    opened: list[Runner] = []

    def make(rules: str | None = None, env: dict | None = None, tick: float = 30, clock: Clock = SYSTEM) -> Runner:
        root = write_rules(tmp_path / "rules", rules) if rules else write_rules(tmp_path / "rules")
        config = RunnerConfig.from_env(
            {"LINE_CHANNEL_SECRET": SECRET, "LINERULES_API_TOKEN": API_TOKEN, **(env or {})},
            rules_dir=root,
            db=tmp_path / "linerules.db",
            listen="127.0.0.1:0",
            tick_seconds=tick,
        )
        runner = Runner.open(config, clock=clock)
        opened.append(runner)
        return runner

    yield make
    for runner in opened:
        runner.close()


async def entered(gate: Gate) -> None:
    await wait_for(gate.entered.is_set)


@pytest.fixture
async def serve(aiohttp_client):
    """Serve a runner's app and run its loops beside it (the app would wait for a first tick)."""
    running: list[tuple[Runner, asyncio.Future]] = []

    async def start(runner: Runner):
        client = await aiohttp_client(build_app(runner, loops=False))
        running.append((runner, asyncio.ensure_future(runner.run())))
        return client

    yield start
    for runner, task in running:
        runner.stop()
        if isinstance(runner.engine.tick, Gate):
            runner.engine.tick.release.set()
        await asyncio.wait_for(task, 10)


def message_body(user: str, event_id: str, text: str = "coupon please", token: str = "rt-1") -> bytes:
    return webhook_body(
        line_event(
            "message",
            user,
            event_id=event_id,
            reply_token=token,
            message={"type": "text", "id": event_id, "text": text},
        )
    )


# ----------------------------------------------------------------------------- ticks off the loop


async def test_a_webhook_is_answered_and_stored_while_a_tick_is_blocked(open_runner, serve):
    runner = open_runner()
    gate = Gate(runner.engine)
    client = await serve(runner)
    await entered(gate)
    body = message_body("U1", "01CONC0001")
    resp = await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})
    assert resp.status == 200
    assert gate.active == 1 and gate.finished == 0  # the tick is still blocked
    stored = runner.store.conn.execute("SELECT type, friend, processed_at FROM events").fetchall()
    assert [tuple(r) for r in stored] == [("message", "U1", None)]
    assert (await client.get("/healthz")).status == 200
    assert threading.get_ident() not in gate.threads  # ticks run on the tick thread
    gate.release.set()
    # the webhook woke another tick: its answer goes out as a reply with the fresh token
    rows = await wait_for(lambda: [r for r in runner.store.outbox() if r["kind"] == "reply"])
    assert rows[0]["reply_token"] == "rt-1" and rows[0]["recipients"] == ["U1"]
    await wait_for(lambda: runner.store.outbox(status="dry_run"))


async def test_ticks_never_overlap(open_runner, serve):
    runner = open_runner(tick=0.05)
    gate = Gate(runner.engine)
    client = await serve(runner)
    await entered(gate)
    for i in range(5):  # each asks for a tick at once
        body = message_body(f"U{i}", f"01CONC01{i:02d}", token=f"rt-{i}")
        assert (await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})).status == 200
    assert gate.calls == 1
    gate.release.set()
    await wait_for(lambda: gate.finished >= 3)
    assert gate.most == 1 and len(gate.threads) == 1
    assert runner.store.health()["pending_events"] == 0


async def test_a_stop_during_a_long_tick_finishes_it_and_exits_cleanly(open_runner):
    runner = open_runner()
    gate = Gate(runner.engine)
    task = asyncio.ensure_future(runner.run())
    await entered(gate)
    runner.on_stop_signal()
    await asyncio.sleep(0.1)
    assert not task.done()  # waits for the tick, does not cut it
    gate.release.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert gate.finished == 1 and runner.last_tick is not None


# ----------------------------------------------------------------------------- short transactions


class CrashingStore(Store):
    """A store whose ``crash_at``-th write transaction from now on fails before it starts."""

    crash_at: int | None = None

    @contextmanager
    def transaction(self):
        if self._depth == 0 and self.crash_at is not None:
            self.crash_at -= 1
            if self.crash_at == 0:
                self.crash_at = None
                raise RuntimeError("power cut")
        with super().transaction() as conn:
            yield conn


def population(store: Store, n: int) -> None:
    with store.transaction() as c:
        c.executemany(
            "INSERT INTO friends(id, followed_at, seen_at, total_spent, created_at) VALUES (?, 0, 0, 150, 0)",
            [(f"U{i}",) for i in range(n)],
        )


@pytest.mark.parametrize("trigger", ["when total_spent >= 100", 'when schedule "0 20 * * *"'])
def test_a_crash_between_entry_chunks_enrols_everybody_once(tmp_path, monkeypatch, trigger):
    monkeypatch.setattr(store_module, "AUDIENCE_CHUNK", 2)
    project = compile_rules(f"rule big {trigger} then send a")
    path = str(tmp_path / "crash.db")
    store = CrashingStore(path)
    population(store, 7)
    engine = Engine(project, store, clock=lambda: at("2026-11-01 19:00"))
    engine.tick(at("2026-11-01 19:00"), conditions=False)  # the schedule counts from here
    store.crash_at = 3  # chunks 1 and 2 commit, then the crash
    with pytest.raises(RuntimeError, match="power cut"):
        engine.tick(at("2026-11-01 20:00"))
    entered = store.conn.execute("SELECT COUNT(*) FROM enrollments").fetchone()[0]
    assert entered == 4
    store.close()
    again = Store(path)  # a restart
    Engine(project, again, clock=lambda: at("2026-11-01 20:01")).tick(at("2026-11-01 20:01"))
    per_friend = again.conn.execute("SELECT friend, COUNT(*) FROM enrollments GROUP BY friend").fetchall()
    assert sorted(tuple(r) for r in per_friend) == [(f"U{i}", 1) for i in range(7)]
    sent = again.conn.execute(
        "SELECT friend, COUNT(*) FROM deliveries WHERE status = 'queued' GROUP BY friend"
    ).fetchall()
    assert sorted(tuple(r) for r in sent) == [(f"U{i}", 1) for i in range(7)]
    again.close()


class WatchedStore(Store):
    """Before each of its write transactions, another connection writes with no busy wait:
    that fails if the write lock is still held from an earlier chunk."""

    other: Store | None = None
    writes = 0

    @contextmanager
    def transaction(self):
        if self._depth == 0 and self.other is not None:
            self.other.set_meta("written.between", str(self.writes))
            self.writes += 1
        with super().transaction() as conn:
            yield conn


def test_audience_entry_releases_the_write_lock_between_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "AUDIENCE_CHUNK", 3)
    path = str(tmp_path / "lock.db")
    store = WatchedStore(path)
    population(store, 9)
    engine = Engine(
        compile_rules("rule big when total_spent >= 100 then send a"), store, clock=lambda: at("2026-11-01 10:00")
    )
    store.other = Store(path)
    store.other.conn.execute("PRAGMA busy_timeout = 0")
    entries = []
    original = store.enroll_audience
    store.enroll_audience = lambda **kw: entries.append(original(**kw)) or entries[-1]  # type: ignore
    assert engine.tick(at("2026-11-01 10:00")).entered == 9
    assert entries == [9]
    assert store.writes >= 3 + 1  # three entry chunks, the tick's record, the walk
    store.other.close()
    store.close()


# ----------------------------------------------------------------------------- the follow grace


def test_a_follow_waits_for_its_source_and_the_friends_later_events_wait_with_it(fresh_db_path):
    project = compile_rules(
        SOURCE_RULES.replace("send greeting", "send a").replace("send coupon_reply", "send b")
        + 'rule keyword\n  when message "coupon"\n  then send c\n'
    )
    store = Store(str(fresh_db_path))
    engine = Engine(project, store, clock=lambda: at("2026-11-01 10:00"), follow_grace=10)
    t0 = int(at("2026-11-01 10:00").timestamp())
    engine.apply_events([ev("follow", "U1", "2026-11-01 10:00", reply_token="rt-f")], received_at=t0)
    first = engine.tick(at("2026-11-01 10:00:01"))
    assert first.events == 0 and store.friend("U1")["followed_at"] is None
    assert engine.next_wakeup(at("2026-11-01 10:00:01")) == at("2026-11-01 10:00:10")
    engine.apply_events(
        [
            ev("message", "U1", "2026-11-01 10:00:02", text="coupon", reply_token="rt-m"),
            ev("message", "U2", "2026-11-01 10:00:02", text="coupon", reply_token="rt-2"),
        ],
        received_at=t0 + 2,
    )
    second = engine.tick(at("2026-11-01 10:00:03"))
    assert second.events == 1  # U2's message; U1's waits behind the follow
    store.set_source("U1", "qr=shipping", now=t0 + 4)  # the login callback, a little later
    third = engine.tick(at("2026-11-01 10:00:10"))
    assert third.events == 2
    sends = sorted((r["recipients"], r["messages"], r["kind"], r["reply_token"]) for r in store.outbox())
    assert sends == [
        (["U1"], ["b"], "reply", "rt-f"),  # via qr=shipping, not the generic a
        (["U1"], ["c"], "reply", "rt-m"),  # after the follow, still fresh
        (["U2"], ["c"], "reply", "rt-2"),
    ]
    order = store.conn.execute("SELECT type FROM events WHERE friend = 'U1' ORDER BY processed_at, seq").fetchall()
    assert [r[0] for r in order] == ["follow", "message"]
    store.close()


async def test_follow_then_login_callback_two_seconds_later_fires_the_source_rule(
    open_runner, aiohttp_client, fake_line_login, monkeypatch
):
    monkeypatch.setattr(runloop, "FOLLOW_GRACE", 20)  # long beside a busy machine's pauses (the clock flows)
    runner = open_runner(
        SOURCE_RULES,
        {"LINE_LOGIN_API_ENDPOINT": str(fake_line_login.make_url("/"))},
        tick=30,
        clock=ManualClock(flowing=True),
    )
    client = await aiohttp_client(build_app(runner))
    resp = await client.get("/join/qr=shipping", allow_redirects=False)
    state = parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0]
    body = webhook_body(
        line_event("follow", "U77", event_id="01CONC0900", reply_token="rt-77", follow={"isUnblocked": False})
    )
    assert (await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})).status == 200
    await tick_later(runner, 2)  # two seconds on, within the grace
    assert runner.store.outbox() == []  # the follow is still held
    resp = await client.get("/login/callback", params={"code": "good-code", "state": state}, allow_redirects=False)
    assert resp.status == 302 and runner.store.friend("U77")["source"] == "qr=shipping"
    await tick_later(runner, 18)  # the grace is over
    rows = runner.store.outbox()
    assert [(r["rule"], r["kind"], r["reply_token"]) for r in rows] == [("shipping", "reply", "rt-77")]
    fired = runner.store.conn.execute("SELECT DISTINCT rule FROM enrollments WHERE friend = 'U77'").fetchall()
    assert [r[0] for r in fired] == ["shipping"]


async def test_without_a_join_link_in_flight_a_follow_is_processed_at_once(open_runner, aiohttp_client):
    runner = open_runner(SOURCE_RULES, tick=30)
    client = await aiohttp_client(build_app(runner))
    body = webhook_body(line_event("follow", "U5", event_id="01CONC0950", reply_token="rt-5"))
    assert (await client.post("/callback", data=body, headers={"x-line-signature": sign(body)})).status == 200
    rows = await wait_for(lambda: runner.store.outbox(), timeout=2)
    assert [r["rule"] for r in rows] == ["welcome_general"]
    assert runner.follow_grace(int(dt.datetime.now(dt.UTC).timestamp())) == 0


def test_the_condition_interval_flag_reaches_the_engine(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from engine.cli import cli
    from engine.runner import server

    seen: dict = {}
    monkeypatch.setattr(server, "serve", lambda **kwargs: seen.update(kwargs) or 0)
    result = CliRunner().invoke(cli, ["run", "--db", str(tmp_path / "x.db"), "--condition-interval", "3600"])
    assert result.exit_code == 0 and seen["condition_interval"] == 3600
    refused = CliRunner().invoke(cli, ["run", "--condition-interval", "-5"])
    assert refused.exit_code == 2 and "--condition-interval" in refused.output
    config = RunnerConfig.from_env(
        {}, rules_dir=write_rules(tmp_path / "rules"), db=tmp_path / "x.db", condition_interval=3600
    )
    opened = Runner.open(config)
    try:
        assert opened.engine.condition_interval == 3600 and opened.engine.store is not opened.store
    finally:
        opened.close()
