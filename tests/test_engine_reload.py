"""Rule changes while friends are in flight (docs/engine.md, "Changing rules")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.interpreter import Engine
from engine.language import ir
from engine.runtime.store import Store
from enginekit import at, compile_rules, ev

V1 = "rule r when followed then send a wait 1d send b wait 1d send c"


@pytest.fixture
def started(fresh_db_path):
    """U1 followed at 10:00 under V1, got `a`, and now waits on `wait 1d` until tomorrow 10:00."""
    store = Store(str(fresh_db_path))
    clock = {"now": at("2026-11-01 10:00")}
    engine = Engine(compile_rules(V1), store, clock=lambda: clock["now"])
    store.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    clock["now"] = at("2026-11-01 12:00")
    yield engine, store
    store.close()


def sent_after_first(store: Store) -> list[tuple[str, list[str]]]:
    rows = store.outbox()[1:]
    return [(r["rule"], r["messages"]) for r in rows]


def test_same_step_id_is_kept_and_new_steps_apply_to_friends_who_reach_them(started):
    engine, store = started
    engine.reload(compile_rules("rule r when followed then send a wait 1d send d send b wait 1d send c"))
    assert engine.next_wakeup(at("2026-11-01 12:00")) == at("2026-11-02 10:00")
    engine.tick(at("2026-11-02 10:00"))
    assert sent_after_first(store) == [("r", ["d", "b"])]


def test_removed_wait_continues_at_the_first_surviving_step_with_the_old_due_time(started):
    engine, store = started
    engine.reload(compile_rules("rule r when followed then send a wait 3d send b wait 2d send c"))
    engine.tick(at("2026-11-02 09:59"))
    assert sent_after_first(store) == []
    engine.tick(at("2026-11-02 10:00"))  # the old `wait 1d` due time, not 3 days
    assert sent_after_first(store) == [("r", ["b"])]
    engine.tick(at("2026-11-04 09:59"))
    assert sent_after_first(store) == [("r", ["b"])]
    engine.tick(at("2026-11-04 10:00"))  # the new `wait 2d`
    assert sent_after_first(store) == [("r", ["b"]), ("r", ["c"])]


def test_removed_steps_after_the_wait_are_skipped(started):
    engine, store = started
    engine.reload(compile_rules("rule r when followed then send a wait 1d send c"))
    engine.tick(at("2026-11-02 10:00"))
    assert sent_after_first(store) == [("r", ["c"])]
    row = store.conn.execute("SELECT state, rule_version FROM enrollments").fetchone()
    assert row["state"] == "done" and row["rule_version"] == engine.versions["r"]


def test_nothing_surviving_after_a_removed_step_finishes_the_enrollment(started):
    engine, store = started
    engine.reload(compile_rules("rule r when followed then send a"))
    engine.tick(at("2026-11-02 10:00"))
    assert sent_after_first(store) == []
    assert store.conn.execute("SELECT state FROM enrollments").fetchone()[0] == "done"


def test_removed_rule_suspends_its_enrollments_and_they_end_after_the_grace(started):
    engine, store = started
    counts = engine.reload(compile_rules("rule other when followed then send a"))
    assert counts == {"carried_over": 0, "suspended": 1, "resumed": 0}
    row = store.conn.execute("SELECT state, exit_reason, suspended_state FROM enrollments").fetchone()
    assert tuple(row) == ("suspended", None, "waiting")
    engine.tick(at("2026-11-05 10:00"))
    assert sent_after_first(store) == []
    assert (
        store.end_suspended(int(at("2026-11-05 10:00").timestamp()) - 3600, int(at("2026-11-05 10:00").timestamp()))
        == 1
    )
    row = store.conn.execute("SELECT state, exit_reason, finished_at FROM enrollments").fetchone()
    assert tuple(row) == ("exited", "rule_removed", int(at("2026-11-05 10:00").timestamp()))


def test_a_rule_that_comes_back_resumes_its_suspended_friends_where_they_were(started):
    engine, store = started
    engine.reload(compile_rules("rule other when followed then send a"))  # step 1 of a deploy
    counts = engine.reload(compile_rules(V1 + "\nrule other when followed then send a"))
    assert counts == {"carried_over": 0, "suspended": 0, "resumed": 1}
    engine.tick(at("2026-11-02 10:00"))  # the wait's due time is kept
    assert sent_after_first(store) == [("r", ["b"])]


def test_unchanged_rule_is_untouched_and_versions_are_recorded(started):
    engine, store = started
    before = store.conn.execute("SELECT * FROM enrollments").fetchone()
    engine.reload(compile_rules(V1 + "\nrule extra when followed then send b"))
    assert dict(store.conn.execute("SELECT * FROM enrollments").fetchone()) == dict(before)
    assert store.rule_version_steps("r", before["rule_version"]) == [
        "send a",
        "wait 1d",
        "send b",
        "wait 1d #2",
        "send c",
    ]


def test_a_reload_that_changes_priorities_changes_what_the_cap_keeps(fresh_db_path):
    # the deliver stage keeps the rules' priorities in a table of its connection, written again
    # when a reload changes them
    def both(low: str, high: str) -> str:
        return f"rule low when followed {low}then send a\nrule high when followed {high}then send b"

    settings = ir.Settings(max_per_day=1)
    store = Store(str(fresh_db_path))
    engine = Engine(
        compile_rules(both("", "priority 5 "), settings=settings), store, clock=lambda: at("2026-11-01 09:00")
    )
    store.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    engine.reload(compile_rules(both("priority 5 ", ""), settings=settings))
    store.apply_events([ev("follow", "U2", "2026-11-01 11:00")], received_at=0)
    engine.tick(at("2026-11-01 11:00"))
    assert [(r["recipients"], r["rule"]) for r in store.outbox()] == [(["U1"], "high"), (["U2"], "low")]
    capped = store.conn.execute("SELECT friend, rule FROM deliveries WHERE status = 'capped' ORDER BY friend")
    assert [tuple(r) for r in capped] == [("U1", "low"), ("U2", "high")]
    store.close()


REPEATED = "rule r when followed then send a wait 1d send b wait 1d send c wait 1d send d"


@pytest.fixture
def second_wait(fresh_db_path):
    """U1 followed at 10:00 under REPEATED, got `a` and `b`, and waits on `wait 1d #2` (before
    `c`) until 11-03 10:00."""
    store = Store(str(fresh_db_path))
    clock = {"now": at("2026-11-01 10:00")}
    engine = Engine(compile_rules(REPEATED), store, clock=lambda: clock["now"])
    store.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    engine.tick(at("2026-11-02 10:00"))
    clock["now"] = at("2026-11-02 12:00")
    yield engine, store
    store.close()


def test_a_repeated_step_is_followed_by_its_place_not_by_its_number(second_wait):
    # the first `wait 1d` becomes `wait 2d`: the others are renumbered (`wait 1d #2` is now the
    # wait after `c`), but the friend waiting before `c` still gets `c`, then `d`
    engine, store = second_wait
    assert sent_after_first(store) == [("r", ["b"])]
    engine.reload(compile_rules(REPEATED.replace("send a wait 1d", "send a wait 2d", 1)))
    engine.tick(at("2026-11-03 10:00"))
    assert sent_after_first(store) == [("r", ["b"]), ("r", ["c"])]
    engine.tick(at("2026-11-04 10:00"))
    assert sent_after_first(store) == [("r", ["b"]), ("r", ["c"]), ("r", ["d"])]


def test_a_wait_rewritten_in_place_goes_on_at_the_steps_written_after_it(second_wait):
    # the wait the friend is on becomes `wait 3d` with a new send after it: at the old due time
    # the friend gets the new send, then `c`
    engine, store = second_wait
    engine.reload(compile_rules(REPEATED.replace("send b wait 1d send c", "send b wait 3d send e send c")))
    engine.tick(at("2026-11-03 10:00"))
    assert sent_after_first(store) == [("r", ["b"]), ("r", ["e", "c"])]


@given(st.lists(st.sampled_from(["send a", "send b", "wait 1d", "wait 2d", "tag x"]), min_size=1, max_size=8))
def test_carried_step_keeps_every_step_of_an_unchanged_rule_and_unique_steps_by_id(keys):
    from engine.language.compiler import carried_step

    seen: dict[str, int] = {}
    ids = []
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
        ids.append(k if seen[k] == 1 else f"{k} #{seen[k]}")
    for sid in ids:
        assert carried_step(ids, ids, sid) == (sid, True)
    # a step written once, with a new step put in front: found by its id
    moved = ["send z", *ids]
    for sid in ids:
        if keys.count(sid) == 1:
            assert carried_step(ids, moved, sid) == (sid, True)


def test_a_wider_window_brings_the_sends_waiting_for_the_opening_forward(fresh_db_path):
    # at 21:30 and 22:00 the 09:00-21:00 window is closed: U1's welcome (a walk's send) and the
    # schedule's pick (an audience's) wait for 09:00; a reload at 23:00 opens the window at
    # 06:00, and both go then; the rule with a window of its own still waits for 10:00
    import datetime as dt

    rules = """
        rule welcome when followed then send greeting
        rule pick when schedule "0 22 * * *" then send weekly_pick
        rule own when followed window 10:00-20:00 then send thanks
        """
    narrow = ir.Settings(window=ir.Window(dt.time(9, 0), dt.time(21, 0)))
    wide = ir.Settings(window=ir.Window(dt.time(6, 0), dt.time(21, 0)))
    store = Store(str(fresh_db_path))
    clock = {"now": at("2026-11-01 10:00")}
    engine = Engine(compile_rules(rules, settings=narrow), store, clock=lambda: clock["now"])
    store.apply_events([ev("follow", "U0", "2026-11-01 10:00")], received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    store.apply_events([ev("follow", "U1", "2026-11-01 21:30")], received_at=0)
    engine.tick(at("2026-11-01 21:30"))
    engine.tick(at("2026-11-01 22:00"))
    assert engine.next_wakeup(at("2026-11-01 22:00")) == at("2026-11-02 09:00")
    clock["now"] = at("2026-11-01 23:00")
    engine.reload(compile_rules(rules, settings=wide))
    assert engine.next_wakeup(at("2026-11-01 23:00")) == at("2026-11-02 06:00")
    engine.tick(at("2026-11-02 06:00"))
    assert engine.next_wakeup(at("2026-11-02 06:00")) == at("2026-11-02 10:00")
    engine.tick(at("2026-11-02 10:00"))
    sent = [(r["rule"], sorted(r["recipients"]), r["created_at"]) for r in store.outbox()]
    day1, six, ten = (int(at(t).timestamp()) for t in ("2026-11-01 10:00", "2026-11-02 06:00", "2026-11-02 10:00"))
    assert sorted(sent, key=lambda r: (r[2], r[0])) == [
        ("own", ["U0"], day1),
        ("welcome", ["U0"], day1),
        ("pick", ["U0"], six),  # U1's pick goes after U1's welcome, queued before it
        ("pick", ["U1"], six),
        ("welcome", ["U1"], six),
        ("own", ["U1"], ten),
    ]
    store.close()
