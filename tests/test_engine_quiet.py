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
        ("2026-11-04 13:00:00", "U1", "winback", ["winback"]),  # checked first, so sent first
        ("2026-11-04 13:00:00", "U1", "lapsed", ["coupon15"]),
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


def test_the_first_crossing_of_an_activity_term_is_found_over_every_kind_by_the_kinds_index(fresh_db_path):
    # `purchased within 1d` may change at the first moment any stored activity leaves the span;
    # that bound is looked up kind by kind in the activity's index, not by reading every activity
    import random

    from engine.runtime import sqlcond

    proj = compile_rules("rule r when not purchased within 1d then send a")
    queries = sqlcond.change_moments(proj.rules["r"].trigger.cond, proj.segments)
    assert queries and all("activity" in q for q in queries)
    store = Store(str(fresh_db_path))
    rng = random.Random(14)
    kinds = ["order", "click", "cart", "view", "refund"]
    rows = [(f"U{rng.randrange(50)}", rng.choice(kinds), 1_800_000_000 + rng.randrange(10 * 86400)) for _ in range(400)]
    store.conn.executemany("INSERT INTO activity(friend, kind, amount, at) VALUES (?, ?, 0, ?)", rows)
    for now in [1_799_000_000, *(1_800_000_000 + rng.randrange(12 * 86400) for _ in range(30))]:
        inside = [at for _, _, at in rows if at > now - 86400]
        assert store.first_moment(queries, {"now": now}) == (min(inside) + 86400 if inside else None)
    if store.pg:
        store.close()
        return
    # then on 20,000 activities: a few hundred steps of SQLite's machine, not some for each row
    more = [(f"U{i % 500}", kinds[i % 5], 1_700_000_000 + i) for i in range(20_000)]
    store.conn.executemany("INSERT INTO activity(friend, kind, amount, at) VALUES (?, ?, 0, ?)", more)
    steps = []
    store.conn.set_progress_handler(lambda: steps.append(1), 1)
    assert store.first_moment(queries, {"now": 1_700_000_000 + 10_000}) == 1_700_000_000 + 86400
    store.conn.set_progress_handler(None, 1)
    assert len(steps) < 2_000, len(steps)
    store.close()


def test_an_exit_that_others_or_time_bring_about_is_made_at_the_condition_tick(fresh_db_path):
    # B leads the ranking, then A outspends B: B is no longer in the top 20% with no event of
    # B's own, and leaves at the next condition tick (before: B waited on, inside the rule,
    # and could not enter again when A's refund put B back on top)
    proj = compile_rules(
        "segment vip: top 20% by spent within 365d\n"
        "rule vip when in segment vip reenter always exit when not in segment vip then send vip_thanks wait 1000d\n"
        "rule lapsing when purchased exit when last purchase older than 2d then send thanks wait 30d send a\n"
    )
    follows = [ev("follow", f, "2025-01-01 10:00") for f in "ABCDE"]
    events = follows + [
        ev("purchase", "B", "2025-01-10 15:30", order_id="b", amount=4000),
        ev("purchase", "A", "2025-02-10 15:30", order_id="a", amount=5000),
        ev("refund", "A", "2025-03-10 15:30", order_id="a", id="r1"),
    ]
    pushes = run(proj, events, until="2025-04-01 00:00", db_path=str(fresh_db_path))
    assert [p for p in pushes if p[2] == "vip"] == [
        ("2025-01-10 16:00:00", "B", "vip", ["vip_thanks"]),
        ("2025-02-10 16:00:00", "A", "vip", ["vip_thanks"]),
        ("2025-03-10 16:00:00", "B", "vip", ["vip_thanks"]),  # back on top: in again
    ]
    store = Store(str(fresh_db_path))
    rows = store.conn.execute(
        "SELECT friend, rule, state, exit_reason, finished_at FROM enrollments ORDER BY id"
    ).fetchall()
    store.close()

    ended = sorted((r[0], r[1], r[2], r[3], r[4]) for r in rows)
    stamp = {
        t: int(at(t).timestamp())
        for t in ("2025-01-12 16:00", "2025-02-10 16:00", "2025-02-12 16:00", "2025-03-10 15:30")
    }
    assert ended == [
        ("A", "lapsing", "exited", "exit_when", stamp["2025-02-12 16:00"]),  # two days after its order
        ("A", "vip", "exited", "exit_when", stamp["2025-03-10 15:30"]),  # at its own refund
        ("B", "lapsing", "exited", "exit_when", stamp["2025-01-12 16:00"]),
        ("B", "vip", "exited", "exit_when", stamp["2025-02-10 16:00"]),  # A's order moved B out
        ("B", "vip", "waiting", None, None),
    ]
