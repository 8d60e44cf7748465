"""Schedule and sale audiences whose first steps are sends queue them set-based; the deliver
stage decides them like every other send, so the rows written must be exactly those of the
per-friend walk (one decision, whichever path queued the send)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from engine.interpreter import Engine
from engine.language import ir
from engine.runtime.store import Store
from engine.stages import deliver
from engine.stages.triggers import TimeTriggers
from enginekit import ev, message, project, rule, run, send, wait

WINDOW = ir.Window(dt.time(9, 0), dt.time(21, 0))


def scenario(settings: ir.Settings | None = None) -> ir.Project:
    return project(
        rule(
            "first",
            ir.ScheduleTrigger("0 22 * * 5"),
            send("a"),
            wait(3600),
            send("b"),
            priority=5,
            holdout=10.0,
            split=(("x", 50.0), ("y", 50.0)),
        ),
        rule("second", ir.ScheduleTrigger("0 22 * * 5"), send("c", "d"), send("e", cond=ir.Tagged("vip"))),
        rule("hello", ir.ScheduleTrigger("0 23 * * 5"), send("hello"), priority=-1),
        rule("third", ir.ScheduleTrigger("0 22 * * 5"), send("f"), window=ir.Window(dt.time(8, 0), dt.time(23, 0))),
        rule("big", ir.ScheduleTrigger("0 12 * * 6"), send("g", "b"), send("d", "c")),  # 7 objects: 2 pushes
        settings=settings or ir.Settings(window=WINDOW, max_per_day=2),
        messages={
            "b": message("b", 3),
            "d": message("d", 2),
            "hello": ir.MessageDef("hello", ({"type": "text", "text": "{{ friend.display_name }}さん"},)),
        },
    )


def events() -> list:
    out = [ev("follow", f"U{i:04d}", "2026-11-01 10:00") for i in range(620)]
    out += [ev("unfollow", "U0003", "2026-11-02 10:00"), ev("postback", "U0004", "2026-11-06 21:59", data="x=1")]
    out += [ev("tag", f"U{i:04d}", "2026-11-03 10:00", add=["vip"], remove=[]) for i in range(0, 620, 7)]
    out += [ev("attributes", f"U{i:04d}", "2026-11-03 10:00", set={"display_name": f"友{i}"}) for i in range(0, 620, 3)]
    return out


def rows(path) -> tuple[Counter, Counter, Counter]:
    store = Store(str(path))
    try:
        deliveries = Counter(
            tuple(r)
            for r in store.conn.execute(
                "SELECT friend, rule, step_id, messages, status, reason, variant, at, local_day, counts_for_cap "
                "FROM deliveries"
            )
        )
        outbox = Counter(
            (
                r["kind"],
                tuple(sorted(r["recipients"])),
                str(r["payload"]),
                tuple(r["messages"]),
                r["rule"],
                r["not_before"],
                r["status"],
            )
            for r in store.outbox()
        )
        enrollments = Counter(
            tuple(r)
            for r in store.conn.execute(
                "SELECT friend, rule, state, step_id, due_at, finished_at, variant, holdout FROM enrollments"
            )
        )
        return deliveries, outbox, enrollments
    finally:
        store.close()


def test_set_based_sends_write_the_same_rows_as_the_walk(tmp_path, monkeypatch):
    fast = run(scenario(), events(), until="2026-11-08 00:00", db_path=str(tmp_path / "fast.db"))
    fast_rows = rows(tmp_path / "fast.db")
    monkeypatch.setattr(TimeTriggers, "mass_plan", lambda self, rule, now: None)
    slow = run(scenario(), events(), until="2026-11-08 00:00", db_path=str(tmp_path / "slow.db"))
    slow_rows = rows(tmp_path / "slow.db")
    assert fast == slow
    assert fast_rows[0] == slow_rows[0]
    assert fast_rows[1] == slow_rows[1]
    assert fast_rows[2] == slow_rows[2]
    statuses = Counter((r[1], r[4]) for r in fast_rows[0].elements())
    assert statuses[("first", "skipped")] > 30 and statuses[("big", "capped")] > 400
    kinds = Counter(k[0] for k in fast_rows[1].elements())
    assert kinds["multicast"] >= 6


def test_sends_held_by_the_monthly_quota_are_decided_alike_on_both_paths(tmp_path, monkeypatch):
    """With a monthly quota the set-based sends of an audience wait (carried by their
    enrollments) for the next month's opening like the walk's intents, and go the same way."""
    settings = ir.Settings(window=WINDOW, max_per_day=2, monthly_quota=900)
    fast = run(scenario(settings), events(), until="2026-12-02 00:00", db_path=str(tmp_path / "fast.db"))
    fast_rows = rows(tmp_path / "fast.db")
    monkeypatch.setattr(TimeTriggers, "mass_plan", lambda self, rule, now: None)
    slow = run(scenario(settings), events(), until="2026-12-02 00:00", db_path=str(tmp_path / "slow.db"))
    assert fast == slow
    assert fast_rows == rows(tmp_path / "slow.db")
    assert any(p[0].startswith("2026-12-01") for p in fast)  # the overflow went in December


@pytest.mark.parametrize(
    "quota, until, left",
    [(None, "2026-11-07 00:00", True), (None, "2026-11-08 00:00", False), (900, "2026-12-02 00:00", True)],
)
def test_an_audiences_waiting_sends_are_counted_down_chunk_by_chunk(tmp_path, monkeypatch, quota, until, left):
    """Decided a few friends per chunk, each audience still counts exactly the sends its
    enrollments carry (what /healthz shows as waiting) and when the next is due: waiting for the
    window (Friday night), all decided (Sunday), some held by the monthly quota (December)."""
    monkeypatch.setattr(deliver, "DELIVER_CHUNK", 40)
    settings = ir.Settings(window=WINDOW, max_per_day=2, monthly_quota=quota)
    assert run(scenario(settings), events(), until=until, db_path=str(tmp_path / "chunked.db"))
    store = Store(str(tmp_path / "chunked.db"))
    try:
        counted = store.conn.execute("SELECT rule, occurrence, due_at, pending FROM audience_sends").fetchall()
        carried = store.conn.execute(
            "SELECT a.rule, a.occurrence, MIN(e.send_due), COUNT(e.send_due) FROM audience_sends a "
            "JOIN enrollments e ON e.rule = a.rule AND e.occurrence = a.occurrence GROUP BY a.rule, a.occurrence"
        ).fetchall()
        assert sorted(map(tuple, counted)) == sorted(map(tuple, carried))
        assert len(counted) >= 3
        waiting = sum(r[3] for r in carried)
        assert store.waiting_sends() == waiting + store.conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0]
        assert (waiting > 0) == left
    finally:
        store.close()


@pytest.mark.parametrize(
    "steps, planned",
    [
        ((send("a"), wait(3600), send("b")), True),
        ((send("a"), send("b")), True),
        ((send("a", cond=ir.Tagged("vip")),), True),
        ((send("a"), ir.TagStep("tag x", "x")), False),
        ((wait(3600), send("a")), False),
    ],
)
def test_which_rules_are_sent_set_based(fresh_db_path, steps, planned):
    p = project(rule("r", ir.ScheduleTrigger("0 20 * * 5"), *steps))
    store = Store(str(fresh_db_path))
    engine = Engine(p, store)
    assert (engine.time_triggers.mass_plan(p.rules["r"], 0) is not None) == planned
    store.close()


def test_personalised_messages_are_queued_set_based_and_rendered_per_friend(fresh_db_path):
    hello = ir.MessageDef("a", ({"type": "text", "text": "{{ friend.display_name }}さん"},))
    p = project(rule("r", ir.ScheduleTrigger("0 20 * * 5"), send("a")), messages={"a": hello})
    store = Store(str(fresh_db_path))
    assert Engine(p, store).time_triggers.mass_plan(p.rules["r"], 0) is not None
    store.close()
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("follow", "U2", "2026-11-01 10:00"),
        ev("attributes", "U1", "2026-11-01 10:00", set={"display_name": "花子"}),
    ]
    run(p, events, until="2026-11-07 00:00", db_path=str(fresh_db_path))
    store = Store(str(fresh_db_path))
    assert sorted((r["recipients"][0], r["payload"][0]["text"]) for r in store.outbox()) == [
        ("U1", "花子さん"),
        ("U2", "さん"),
    ]
    store.close()
