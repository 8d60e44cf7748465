"""Exactly once, whatever happens: a runner killed (SIGKILL) while its requests are in flight
and then restarted, and a runner facing LINE faults (5xx, 429, timeouts, lost answers), still
delivers every message exactly once (checked on the LINE emulator's delivery log)."""
from __future__ import annotations

import signal
from collections import Counter

from engine.testing.line_emulator import run_in_thread
from engine.runtime.store import Store
from test_runner_process import RunnerProcess, follow, wait_until, write_rules

FRIENDS = [f"U{i:03d}" for i in range(1, 13)]

# A text per friend, so every send is its own push (not one shared multicast).
PER_FRIEND_MESSAGES = 'greeting: "ようこそ {{ friend.id }}さん"\n'


def deliveries_per_friend(emulator) -> Counter:
    return Counter(d.user_id for d in emulator.delivered)


def backlog(db) -> int:
    store = Store(str(db))
    try:
        return store.outbox_backlog()
    finally:
        store.close()


def test_sigkill_while_sending_then_restart_delivers_each_message_once(tmp_path):
    rules = write_rules(tmp_path / "rules")
    (rules / "messages.yaml").write_text(PER_FRIEND_MESSAGES, encoding="utf-8")
    db = tmp_path / "crash.db"
    with run_in_thread() as emulator:
        for friend in FRIENDS:
            emulator.add_user(friend, friend)
        env = {"LINE_CHANNEL_ACCESS_TOKEN": emulator.access_token,
               "LINE_API_ENDPOINT": emulator.base_url}
        # The first sends are delivered but their answers never come back; the next ones hang
        # before LINE processes them. The runner is killed while they are in flight.
        for endpoint in ("push", "multicast"):
            emulator.inject_lost_response(endpoint, count=2, delay=60)
            emulator.inject_timeout(endpoint, count=2, delay=60)
        first = RunnerProcess(rules, db, env=env)
        try:
            first.started()
            first.post_events([follow(f) for f in FRIENDS])
            wait_until(lambda: sum(r.note in ("lost", "timeout") for r in emulator.requests) >= 4)
            first.proc.send_signal(signal.SIGKILL)
            assert first.exit_code() == -signal.SIGKILL
        finally:
            first.stop()
        lost = {r.retry_key for r in emulator.requests if r.note == "lost"}
        hung = {r.retry_key for r in emulator.requests if r.note == "timeout"}
        assert len(lost) == 2 and len(hung) == 2 and backlog(db) >= 4

        second = RunnerProcess(rules, db, env=env)
        try:
            second.started()
            wait_until(lambda: backlog(db) == 0, timeout=30)
            assert deliveries_per_friend(emulator) == Counter({f: 1 for f in FRIENDS})
            # The rows in flight were sent again with the same retry keys: LINE answered 409
            # for the ones it had accepted, and delivered the ones it had never processed.
            answered = [r for r in emulator.requests if r.status is not None]
            assert {r.status for r in answered if r.retry_key in lost} == {409}
            assert {r.status for r in answered if r.retry_key in hung} == {200}
            second.proc.send_signal(signal.SIGTERM)
            assert second.exit_code() == 0
        finally:
            second.stop()
    store = Store(str(db))
    try:
        assert {row["status"] for row in store.outbox()} <= {"sent", "duplicate"}
    finally:
        store.close()


def test_line_faults_never_lose_or_repeat_a_message(tmp_path):
    rules = write_rules(tmp_path / "rules")
    (rules / "messages.yaml").write_text(PER_FRIEND_MESSAGES, encoding="utf-8")
    db = tmp_path / "faults.db"
    with run_in_thread() as emulator:
        for friend in FRIENDS:
            emulator.add_user(friend, friend)
        for endpoint in ("push", "multicast"):
            emulator.inject(endpoint, 500, count=3)
            emulator.inject(endpoint, 503, count=1)
            emulator.inject(endpoint, 429, count=3)
            emulator.inject_timeout(endpoint, count=2, delay=0.2)
            emulator.inject_lost_response(endpoint, count=3)
        runner = RunnerProcess(rules, db, env={"LINE_CHANNEL_ACCESS_TOKEN": emulator.access_token,
                                               "LINE_API_ENDPOINT": emulator.base_url})
        try:
            runner.started()
            runner.post_events([follow(f) for f in FRIENDS])
            # ticks run beside the HTTP server: wait for the sends to exist before the backlog empties
            wait_until(lambda: len(deliveries_per_friend(emulator)) == len(FRIENDS) and backlog(db) == 0
                       and runner.get("/healthz")[1]["outbox_backlog"] == 0, timeout=60)
            assert deliveries_per_friend(emulator) == Counter({f: 1 for f in FRIENDS})
            statuses = Counter(r.status for r in emulator.requests if r.endpoint in ("push", "multicast"))
            assert statuses[500] and statuses[429] and statuses[409] and statuses[None]
            runner.proc.send_signal(signal.SIGTERM)
            assert runner.exit_code() == 0
        finally:
            runner.stop()
