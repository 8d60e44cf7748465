"""SPEC §2.5: exit when, reenter, window, priority, split and holdout."""

from __future__ import annotations

import datetime as dt

from engine.language import ir
from engine.runtime.store import Store, bucket
from enginekit import compile_rules, ev, project, rule, run, send, wait

D = 86400


def test_exit_when_on_a_state_change_and_before_each_step(fresh_db_path):
    p = project(
        rule("r", ir.Followed(), send("a"), wait(D), send("b"), exit_when=ir.AnyOf((ir.Tagged("stop"), ir.Blocked()))),
        rule("t", ir.Followed(), wait(D), send("c"), wait(D), send("d"), exit_when=ir.FriendFor(2 * D, "for")),
    )
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("follow", "U2", "2026-11-01 10:00"),
        ev("tag", "U1", "2026-11-01 12:00", add=["stop"], remove=[]),
    ]
    assert run(p, events, db_path=str(fresh_db_path)) == [
        ("2026-11-01 10:00:00", "U1", "r", ["a"]),
        ("2026-11-01 10:00:00", "U2", "r", ["a"]),
        ("2026-11-02 10:00:00", "U1", "t", ["c"]),
        ("2026-11-02 10:00:00", "U2", "r", ["b"]),
        ("2026-11-02 10:00:00", "U2", "t", ["c"]),
    ]
    store = Store(str(fresh_db_path))
    rows = store.conn.execute(
        "SELECT friend, rule, state, exit_reason, finished_at FROM enrollments ORDER BY rule, friend"
    ).fetchall()
    tick = lambda text: int(dt.datetime.fromisoformat(text + "+09:00").timestamp())  # noqa: E731
    assert [tuple(r) for r in rows] == [
        ("U1", "r", "exited", "exit_when", tick("2026-11-01T12:00")),
        ("U2", "r", "done", None, tick("2026-11-02T10:00")),
        ("U1", "t", "exited", "exit_when", tick("2026-11-03T10:00")),
        ("U2", "t", "exited", "exit_when", tick("2026-11-03T10:00")),
    ]
    store.close()


def test_exit_when_sees_a_tag_written_earlier_in_the_same_walk(fresh_db_path):
    # the walk asks ``exit when`` again only after a step wrote to the store: here the rule's
    # own ``tag`` step, and the ``tag`` step of another rule walked with it, each at once
    p = compile_rules(
        """
        rule own when followed exit when tagged stop then send a tag stop send b wait 1d send c
        rule mine when followed exit when tagged done then send d send e wait 1d send f
        rule other when followed then tag done
        """
    )
    # (the sends before the exits are dropped when they are decided: the exit holds then)
    assert run(p, [ev("follow", "U1", "2026-11-01 10:00")], db_path=str(fresh_db_path)) == []
    store = Store(str(fresh_db_path))
    rows = store.conn.execute("SELECT rule, state, exit_reason, step_id FROM enrollments ORDER BY rule").fetchall()
    assert [tuple(r) for r in rows] == [
        ("mine", "exited", "exit_when", "send e"),
        ("other", "done", None, None),
        ("own", "exited", "exit_when", "send b"),
    ]
    store.close()


def test_exit_when_is_asked_once_per_walk_while_nothing_is_written(fresh_db_path):
    # three sends in a row: the condition cannot change between them, one query decides
    p = compile_rules("rule r when followed exit when tagged stop then send a send b send c wait 1d send d")
    asked: list[str] = []
    original = Store.select_enrollments

    def counting(store, sql, params, ids):
        asked.append(sql)
        return original(store, sql, params, ids)

    Store.select_enrollments = counting
    try:
        pushes = run(p, [ev("follow", "U1", "2026-11-01 10:00")], db_path=str(fresh_db_path))
    finally:
        Store.select_enrollments = original
    assert pushes == [
        ("2026-11-01 10:00:00", "U1", "r", ["a", "b", "c"]),
        ("2026-11-02 10:00:00", "U1", "r", ["d"]),
    ]
    # the follow's own check, then once in each walk (the first tick's and the next day's)
    assert len(asked) == 3


def refollows(friend: str, *days: str):
    out = []
    for day in days:
        out += [ev("follow", friend, f"{day} 10:00"), ev("unfollow", friend, f"{day} 20:00")]
    return out


def test_reenter_never_after_and_always():
    days = ("2026-11-01", "2026-11-05", "2026-11-20")
    p = project(
        rule("never", ir.Followed(), send("a")),
        rule("after", ir.Followed(), send("b"), reenter=ir.Reenter("after", 10 * D)),
        rule("always", ir.Followed(), send("c"), reenter=ir.Reenter("always")),
        rule("busy", ir.Followed(), wait(10 * D), send("d"), reenter=ir.Reenter("always")),
    )
    pushes = run(p, refollows("U1", *days) + [ev("follow", "U1", "2026-11-25 10:00")])
    assert [(t, r) for t, _, r, _ in pushes] == [
        ("2026-11-01 10:00:00", "after"),
        ("2026-11-01 10:00:00", "always"),
        ("2026-11-01 10:00:00", "never"),
        ("2026-11-05 10:00:00", "always"),
        ("2026-11-20 10:00:00", "after"),
        ("2026-11-20 10:00:00", "always"),
        ("2026-11-25 10:00:00", "always"),
        # busy: its 11-11 send was skipped (U1 had blocked the account); the 11-05 and 11-25
        # follows came while U1 was still in the rule, the 11-20 one entered it again
        ("2026-11-30 10:00:00", "busy"),
    ]


def test_condition_trigger_reenter_after():
    p = project(
        rule(
            "dormant",
            ir.ConditionTrigger(ir.LastPurchaseOlder(90 * D)),
            send("winback"),
            reenter=ir.Reenter("after", 180 * D),
        )
    )
    events = [
        ev("follow", "U1", "2026-01-01 09:00"),
        ev("purchase", "U1", "2026-01-01 09:30", order_id="A-1", amount=100),
    ]
    pushes = run(p, events, tick=D, until="2026-12-01 00:00")
    assert pushes == [
        ("2026-04-02 00:00:00", "U1", "dormant", ["winback"]),
        ("2026-09-29 00:00:00", "U1", "dormant", ["winback"]),
    ]


def test_window_from_settings_and_rule_override():
    settings = ir.Settings(window=ir.Window(dt.time(9, 0), dt.time(21, 0)))
    p = project(
        rule("r", ir.Followed(), send("a")),
        rule("w", ir.Followed(), send("b"), window=ir.Window(dt.time(10, 0), dt.time(20, 0))),
        rule("night", ir.Followed(), send("c"), window=ir.Window(dt.time(22, 0), dt.time(2, 0))),
        settings=settings,
    )
    pushes = run(p, [ev("follow", "U1", "2026-11-01 21:30"), ev("follow", "U2", "2026-11-02 09:30")])
    assert pushes == [
        ("2026-11-01 22:00:00", "U1", "night", ["c"]),
        ("2026-11-02 09:00:00", "U1", "r", ["a"]),
        ("2026-11-02 09:30:00", "U2", "r", ["a"]),
        ("2026-11-02 10:00:00", "U1", "w", ["b"]),
        ("2026-11-02 10:00:00", "U2", "w", ["b"]),
        ("2026-11-02 22:00:00", "U2", "night", ["c"]),
    ]


def test_priority_decides_what_the_cap_keeps(fresh_db_path):
    settings = ir.Settings(max_per_day=1)
    p = project(
        rule("low", ir.Followed(), send("a")), rule("high", ir.Followed(), send("b"), priority=5), settings=settings
    )
    assert run(p, [ev("follow", "U1", "2026-11-01 10:00")], db_path=str(fresh_db_path)) == [
        ("2026-11-01 10:00:00", "U1", "high", ["b"])
    ]
    store = Store(str(fresh_db_path))
    rows = store.conn.execute("SELECT rule, status, reason FROM deliveries ORDER BY rule").fetchall()
    assert [tuple(r) for r in rows] == [("high", "sent", None), ("low", "capped", "max_per_day 1")]
    store.close()


def test_split_is_deterministic_per_friend_and_rule():
    p = project(
        rule(
            "ab",
            ir.Followed(),
            send("a", cond=ir.Variant("x")),
            send("b", cond=ir.Variant("y")),
            split=(("x", 30.0), ("y", 70.0)),
        )
    )
    friends = [f"U{i}" for i in range(200)]
    pushes = run(p, [ev("follow", f, "2026-11-01 10:00") for f in friends])
    got = {friend: msgs for _, friend, _, msgs in pushes}
    expected = {f: ["a"] if bucket(f, "ab", "split") < 3000 else ["b"] for f in friends}
    assert got == expected
    assert 40 <= sum(1 for m in got.values() if m == ["a"]) <= 80


def test_split_assigned_in_sql_matches_python(fresh_db_path):
    p = project(
        rule(
            "ab",
            ir.ScheduleTrigger("0 20 * * *"),
            send("a", cond=ir.Variant("x")),
            send("b", cond=ir.Variant("y")),
            split=(("x", 50.0), ("y", 50.0)),
        )
    )
    friends = [f"U{i}" for i in range(100)]
    pushes = run(p, [ev("follow", f, "2026-11-01 10:00") for f in friends], until="2026-11-01 21:00")
    got = {friend: msgs for _, friend, _, msgs in pushes}
    assert got == {f: ["a"] if bucket(f, "ab", "split") < 5000 else ["b"] for f in friends}


def test_holdout_friends_walk_but_get_nothing(fresh_db_path):
    p = project(rule("h", ir.Followed(), send("a"), wait(D), ir.TagStep("tag seen", "seen"), send("b"), holdout=20.0))
    friends = [f"U{i}" for i in range(100)]
    pushes = run(p, [ev("follow", f, "2026-11-01 10:00") for f in friends], db_path=str(fresh_db_path))
    held = {f for f in friends if bucket(f, "h", "holdout") < 2000}
    assert 5 <= len(held) <= 40
    assert {f for _, f, _, _ in pushes} == set(friends) - held
    store = Store(str(fresh_db_path))
    skipped = store.conn.execute("SELECT DISTINCT friend FROM deliveries WHERE reason = 'holdout'").fetchall()
    assert {r[0] for r in skipped} == held
    tagged = store.conn.execute("SELECT COUNT(*) FROM tags WHERE tag = 'seen'").fetchone()[0]
    assert tagged == 100
    store.close()


def test_a_holdout_is_recorded_only_for_the_sends_it_would_have_had(fresh_db_path):
    # a held-out friend's send whose condition fails would not have gone: no `skipped` row, as
    # for everyone else (the report's skipped and holdout figures compare like with like)
    p = project(rule("h", ir.Followed(), send("a", cond=ir.Tagged("vip")), send("b"), holdout=50.0))
    friends = [f"U{i}" for i in range(60)]
    vip = set(friends[:30])
    events = [ev("tag", f, "2026-11-01 09:00", add=["vip"], remove=[]) for f in sorted(vip)]
    events += [ev("follow", f, "2026-11-01 10:00") for f in friends]
    pushes = run(p, events, db_path=str(fresh_db_path))
    held = {f for f in friends if bucket(f, "h", "holdout") < 5000}
    assert held & vip and held - vip
    assert {(f, tuple(m)) for _, f, _, m in pushes} == {
        (f, ("a", "b") if f in vip else ("b",)) for f in set(friends) - held
    }
    store = Store(str(fresh_db_path))
    rows = store.conn.execute("SELECT friend, messages FROM deliveries WHERE reason = 'holdout'").fetchall()
    assert {(r[0], r[1]) for r in rows} == {(f, '["a","b"]' if f in vip else '["b"]') for f in held}
    store.close()


def test_a_friend_held_out_of_a_rule_is_held_out_of_the_rule_it_starts(fresh_db_path):
    # the control group of `h` gets nothing of what `h` leads to; the others get the started
    # rule's message, and the held-out friends walk it as its holdout (enrolled, measured)
    p = project(
        rule("h", ir.Followed(), send("a"), ir.StartStep("start more", "more"), holdout=20.0),
        rule("more", ir.CustomEventTrigger("never"), send("b")),
    )
    friends = [f"U{i}" for i in range(100)]
    pushes = run(p, [ev("follow", f, "2026-11-01 10:00") for f in friends], db_path=str(fresh_db_path))
    held = {f for f in friends if bucket(f, "h", "holdout") < 2000}
    assert 5 <= len(held) <= 40
    assert {f for _, f, r, _ in pushes if r == "more"} == set(friends) - held
    store = Store(str(fresh_db_path))
    rows = store.conn.execute("SELECT friend FROM enrollments WHERE rule = 'more' AND holdout = 1").fetchall()
    assert {r[0] for r in rows} == held
    store.close()


def test_entry_filter_is_checked_when_the_trigger_fires_for_events_and_audiences():
    p = compile_rules("""
        rule hello when followed unless followed via qr=shipping then send a
        rule weekly when schedule "0 20 * * 5" if tagged vip then send b
        """)
    events = [
        ev("follow", "U1", "2026-11-01 10:00", source="qr=shipping"),
        ev("follow", "U2", "2026-11-01 10:00"),
        ev("tag", "U2", "2026-11-02 10:00", add=["vip"], remove=[]),
    ]
    assert run(p, events, until="2026-11-07 00:00") == [
        ("2026-11-01 10:00:00", "U2", "hello", ["a"]),
        ("2026-11-06 20:00:00", "U2", "weekly", ["b"]),
    ]


def test_condition_interval_checks_once_per_slot_from_local_midnight(fresh_db_path):
    from engine.interpreter import Engine
    from enginekit import at

    p = compile_rules("rule big when total_spent >= 100 then send a")
    store = Store(str(fresh_db_path))
    engine = Engine(p, store, clock=lambda: at("2026-11-01 10:00"), condition_interval=3600)
    assert engine.tick(at("2026-11-01 10:05")).conditions  # first slot seen
    engine.apply_events(
        [ev("follow", "U1", "2026-11-01 10:10"), ev("purchase", "U1", "2026-11-01 10:10", order_id="A-1", amount=100)],
        received_at=0,
    )
    second = engine.tick(at("2026-11-01 10:20"))
    assert (second.events, second.conditions, second.entered) == (2, False, 0)
    third = engine.tick(at("2026-11-01 11:00"))
    assert (third.conditions, third.entered) == (True, 1)
    assert [r["messages"] for r in store.outbox()] == [["a"]]
    store.close()


def test_priority_holds_across_walk_chunks(fresh_db_path, monkeypatch):
    """A tick walks due enrollments in chunks (short write transactions); the cap must still
    keep the higher-priority send when the two land in different chunks."""
    from engine.stages import walk

    monkeypatch.setattr(walk, "CHUNK", 1)
    settings = ir.Settings(max_per_day=1)
    noon = dt.time(12)
    p = project(
        rule("low", ir.Followed(), wait(86400, noon), send("a")),  # enrolled first
        rule("high", ir.TaggedTrigger("vip"), wait(86400, noon), send("b"), priority=5),
        settings=settings,
    )
    events = [ev("follow", "U1", "2026-11-01 10:00"), ev("tag", "U1", "2026-11-01 10:30", add=["vip"])]
    assert run(p, events, db_path=str(fresh_db_path)) == [("2026-11-02 12:00:00", "U1", "high", ["b"])]
    store = Store(str(fresh_db_path))
    rows = store.conn.execute("SELECT rule, status FROM deliveries ORDER BY rule").fetchall()
    assert [tuple(r) for r in rows] == [("high", "sent"), ("low", "capped")]
    store.close()
