"""A tick that dies half way leaves no half state: the next tick does the work exactly once."""

from __future__ import annotations

import pytest

from engine.interpreter import Engine
from engine.runtime.store import Store
from engine.stages import deliver
from enginekit import at, compile_rules, ev

RULES = "rule r when followed then send a wait 1d send b"


def test_crash_while_recording_sends_loses_and_doubles_nothing(fresh_db_path, monkeypatch):
    store = Store(str(fresh_db_path))
    engine = Engine(compile_rules(RULES), store, clock=lambda: at("2026-11-01 10:00"))
    engine.apply_events([ev("follow", f"U{i}", "2026-11-01 10:00") for i in range(3)], received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    assert len(store.outbox()) == 1  # one multicast of `a` to three friends

    real = deliver.render_message
    calls = []

    def dying(*args, **kwargs):
        calls.append(kwargs["friend"].get("id"))
        if len(calls) == 1:
            raise MemoryError("the process dies while rendering")
        return real(*args, **kwargs)

    monkeypatch.setattr(deliver, "render_message", dying)
    with pytest.raises(MemoryError):
        engine.tick(at("2026-11-02 10:00"))
    # the deliver stage rolled back: no new outbox or delivery rows; the walk's intents wait
    assert len(store.outbox()) == 1
    assert store.conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 3
    assert store.conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 3

    engine.tick(at("2026-11-02 10:00"))  # restarted: the work is done once
    engine.tick(at("2026-11-02 10:00"))
    rows = store.outbox()
    assert [(r["kind"], sorted(r["recipients"]), r["messages"]) for r in rows] == [
        ("multicast", ["U0", "U1", "U2"], ["a"]),
        ("multicast", ["U0", "U1", "U2"], ["b"]),
    ]
    assert store.conn.execute("SELECT DISTINCT state FROM enrollments").fetchall()[0][0] == "done"
    store.close()


def test_crash_while_processing_events_keeps_them_for_the_next_tick(fresh_db_path, monkeypatch):
    store = Store(str(fresh_db_path))
    engine = Engine(compile_rules(RULES), store, clock=lambda: at("2026-11-01 10:00"))
    engine.apply_events([ev("follow", "U1", "2026-11-01 10:00"), ev("follow", "U2", "2026-11-01 10:00")], received_at=0)
    real = store.follow

    def dying(friend, *args):
        if friend == "U2":
            raise OSError("disk full")
        return real(friend, *args)

    monkeypatch.setattr(store, "follow", dying)
    with pytest.raises(OSError):
        engine.tick(at("2026-11-01 10:00"))
    assert store.friend("U1")["followed_at"] is None  # U1's half of the batch rolled back
    assert len(store.pending_events(10**10)) == 2
    monkeypatch.setattr(store, "follow", real)
    result = engine.tick(at("2026-11-01 10:00"))
    assert (result.events, result.entered) == (2, 2)
    assert [sorted(r["recipients"]) for r in store.outbox()] == [["U1", "U2"]]
    store.close()


def test_a_first_deliver_that_dies_takes_its_scratch_tables_and_the_next_tick_makes_them(fresh_db_path, monkeypatch):
    # the deliver stage's temporary tables are made once per connection, by its first
    # transaction; when that one rolls back they are gone with it, and the next tick makes them
    store = Store(str(fresh_db_path))
    engine = Engine(compile_rules(RULES), store, clock=lambda: at("2026-11-01 10:00"))
    engine.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    real, calls = store.due_rows, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("the process dies while deciding")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "due_rows", dying)
    with pytest.raises(MemoryError):
        engine.tick(at("2026-11-01 10:00"))
    assert store.outbox() == []
    engine.tick(at("2026-11-01 10:00"))
    assert [(r["recipients"], r["messages"]) for r in store.outbox()] == [(["U1"], ["a"])]
    store.close()
