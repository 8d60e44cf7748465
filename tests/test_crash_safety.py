"""Exactly once, whatever happens: a runner killed (SIGKILL) while its requests are in flight
and then restarted, and a runner facing LINE faults (5xx, 429, timeouts, lost answers), still
delivers every message exactly once (checked on the LINE emulator's delivery log)."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from runnerkit import (
    PER_FRIEND_MESSAGES,
    add_friends,
    backlog,
    follow,
    per_friend,
    rows,
    wait_until,
    write_rules,
)

FRIENDS = [f"U{i:03d}" for i in range(1, 13)]


@pytest.fixture
def rules(tmp_path, line_emulator):
    """Twelve friends of the channel, each welcomed with a text of their own (a push each)."""
    add_friends(line_emulator, FRIENDS)
    return write_rules(tmp_path / "rules", messages=PER_FRIEND_MESSAGES)


def test_sigkill_while_sending_then_restart_delivers_each_message_once(
    tmp_path, rules, line_emulator, line_env, processes
):
    db = tmp_path / "crash.db"
    # The first sends are delivered but their answers never come back; the next ones hang
    # before LINE processes them. The runner is killed while they are in flight.
    for endpoint in ("push", "multicast"):
        line_emulator.inject_lost_response(endpoint, count=2, delay=60)
        line_emulator.inject_timeout(endpoint, count=2, delay=60)
    first = processes(rules, db, env=line_env)
    first.started()
    first.post_events([follow(f) for f in FRIENDS])
    wait_until(lambda: sum(r.note in ("lost", "timeout") for r in line_emulator.requests) >= 4)
    first.proc.send_signal(signal.SIGKILL)
    assert first.exit_code() == -signal.SIGKILL
    lost = {r.retry_key for r in line_emulator.requests if r.note == "lost"}
    hung = {r.retry_key for r in line_emulator.requests if r.note == "timeout"}
    assert len(lost) == 2 and len(hung) == 2 and backlog(db) >= 4

    second = processes(rules, db, env=line_env)
    second.started()
    wait_until(lambda: backlog(db) == 0, timeout=30)
    assert per_friend(line_emulator) == Counter({f: 1 for f in FRIENDS})
    # The rows in flight were sent again with the same retry keys: LINE answered 409
    # for the ones it had accepted, and delivered the ones it had never processed.
    answered = [r for r in line_emulator.requests if r.status is not None]
    assert {r.status for r in answered if r.retry_key in lost} == {409}
    assert {r.status for r in answered if r.retry_key in hung} == {200}
    second.proc.send_signal(signal.SIGTERM)
    assert second.exit_code() == 0
    assert {row["status"] for row in rows(db)} <= {"sent", "duplicate"}


def test_line_faults_never_lose_or_repeat_a_message(tmp_path, rules, line_emulator, line_env, processes):
    db = tmp_path / "faults.db"
    for endpoint in ("push", "multicast"):
        line_emulator.inject(endpoint, 500, count=3)
        line_emulator.inject(endpoint, 503, count=1)
        line_emulator.inject(endpoint, 429, count=3)
        line_emulator.inject_timeout(endpoint, count=2, delay=0.2)
        line_emulator.inject_lost_response(endpoint, count=3)
    runner = processes(rules, db, env=line_env)
    runner.started()
    runner.post_events([follow(f) for f in FRIENDS])
    # ticks run beside the HTTP server: wait for the sends to exist before the backlog empties
    wait_until(
        lambda: (
            len(per_friend(line_emulator)) == len(FRIENDS)
            and backlog(db) == 0
            and runner.get("/healthz")[1]["outbox_backlog"] == 0
        ),
        timeout=60,
    )
    assert per_friend(line_emulator) == Counter({f: 1 for f in FRIENDS})
    statuses = Counter(r.status for r in line_emulator.requests if r.endpoint in ("push", "multicast"))
    assert statuses[500] and statuses[429] and statuses[409] and statuses[None]
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0


def test_sigkill_while_a_broadcast_lands_leaves_every_multicast_whole_and_a_restart_sends_the_rest(
    tmp_path, line_emulator, line_env, processes
):
    """Outcomes are stored a batch at a time: a multicast's row and its 500 delivery rows are
    finished together or not at all, so a runner killed mid-broadcast leaves no friend marked
    sent in a row still pending, nor pending in a row sent."""
    friends = add_friends(line_emulator, [f"U{i:05d}" for i in range(1500)])
    rules = write_rules(tmp_path / "rules")  # one shared welcome: multicasts of 500
    db = tmp_path / "broadcast.db"
    # the first multicast is delivered but its answer never comes back before the kill
    line_emulator.inject_lost_response("multicast", count=1, delay=60)
    first = processes(rules, db, env={**line_env, "LINERULES_LINE_TIMEOUT": "60"})  # no retry before the kill
    first.started()
    first.post_events([follow(f) for f in friends])
    wait_until(
        lambda: (
            len(per_friend(line_emulator)) == len(friends)
            and rows(db, "SELECT COUNT(*) AS n FROM outbox WHERE status = 'sent'")[0]["n"] == 2
        ),
        timeout=60,
    )
    first.proc.send_signal(signal.SIGKILL)
    assert first.exit_code() == -signal.SIGKILL

    outbox = {r["id"]: r for r in rows(db)}
    assert sorted(r["kind"] for r in outbox.values()) == ["multicast"] * 3
    deliveries = rows(db, "SELECT friend, outbox_id, status FROM deliveries")
    assert Counter(d["friend"] for d in deliveries) == Counter(friends)  # one delivery row each
    by_row: dict[int, set[str]] = {}
    for d in deliveries:
        by_row.setdefault(d["outbox_id"], set()).add(d["status"])
    expected = {"sent": {"sent"}, "pending": {"queued"}}
    assert {i: by_row[i] for i in outbox} == {i: expected[r["status"]] for i, r in outbox.items()}
    [in_doubt] = [r for r in outbox.values() if r["status"] == "pending"]

    second = processes(rules, db, env=line_env)
    second.started()
    wait_until(lambda: backlog(db) == 0, timeout=30)
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})
    again = [r for r in line_emulator.requests if r.retry_key == in_doubt["retry_key"]]
    assert [r.status for r in again] == [None, 409]  # the same key: LINE had it already
    assert {r["status"] for r in rows(db, "SELECT DISTINCT status FROM deliveries")} == {"sent"}
    second.proc.send_signal(signal.SIGTERM)
    assert second.exit_code() == 0
