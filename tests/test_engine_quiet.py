"""Condition checks that entered nobody are skipped while nothing can have changed: time alone
still brings friends in at the right hour, and a write by another connection (the runner's
HTTP side) is seen at the next check."""

from __future__ import annotations

from engine.interpreter import Engine
from engine.runtime.store import Store
from enginekit import at, compile_rules, ev, run


def test_time_alone_brings_friends_in_at_the_hour_each_term_crosses():
    proj = compile_rules(
        'rule winback "w"\n  when last purchase older than 3d\n  then send winback\n\n'
        'rule anniversary "a"\n  when friend for 2d\n  then send thanks\n\n'
        'rule lapsed "l"\n  when orders >= 1 and not purchased within 1d\n  reenter after 2d\n'
        "  then send coupon15\n"
    )
    pushes = run(
        proj,
        [ev("follow", "U1", "2026-11-01 10:20"), ev("purchase", "U1", "2026-11-01 12:30", order_id="o1", amount=100)],
        until="2026-11-09 00:00",
    )
    assert pushes == [
        ("2026-11-02 13:00:00", "U1", "lapsed", ["coupon15"]),
        ("2026-11-03 11:00:00", "U1", "anniversary", ["thanks"]),
        ("2026-11-04 13:00:00", "U1", "lapsed", ["coupon15"]),
        ("2026-11-04 13:00:00", "U1", "winback", ["winback"]),
        ("2026-11-06 13:00:00", "U1", "lapsed", ["coupon15"]),
        ("2026-11-08 13:00:00", "U1", "lapsed", ["coupon15"]),
    ]


def test_a_write_by_another_connection_is_seen_at_the_next_check(tmp_path):
    proj = compile_rules('rule ja "j"\n  when language = "ja"\n  then send greeting\n')
    path = str(tmp_path / "l.db")
    store = Store(path)
    engine = Engine(proj, store, clock=lambda: at("2026-11-01 10:00"))
    store.apply_events([ev("follow", "U1", "2026-11-01 10:00")])
    for hour in range(10, 13):
        engine.tick(at(f"2026-11-01 {hour}:00"), conditions=True)
    assert store.conn.execute("SELECT COUNT(*) FROM enrollments").fetchone()[0] == 0
    other = Store(path)  # the HTTP side: its own connection
    other.set_profile("U1", language="ja")
    other.close()
    engine.tick(at("2026-11-01 13:00"), conditions=True)
    rows = store.conn.execute("SELECT friend, rule FROM enrollments").fetchall()
    assert [tuple(r) for r in rows] == [("U1", "ja")]
    store.close()
