"""SPEC §2.4: waits and the other steps, as timelines with exact pushes (Asia/Tokyo)."""

from __future__ import annotations

import datetime as dt

from engine.language import ir
from engine.runtime.store import Store
from enginekit import ev, project, rule, run, send, wait

D = 86400


def follows(*pairs: tuple[str, str]):
    return [ev("follow", friend, when) for friend, when in pairs]


def test_wait_duration():
    p = project(rule("r", ir.Followed(), send("a"), wait(D + 12 * 3600), send("b")))
    assert run(p, follows(("U1", "2026-11-01 10:00:30"))) == [
        ("2026-11-01 10:00:30", "U1", "r", ["a"]),
        ("2026-11-02 22:00:30", "U1", "r", ["b"]),
    ]


def test_wait_days_at_time_counts_calendar_days():
    """`wait 3d at 12:00` is 12:00 on the third calendar day after today, whatever the hour."""
    p = project(rule("r", ir.Followed(), wait(3 * D, dt.time(12, 0)), send("a")))
    pushes = run(
        p,
        follows(
            ("U1", "2026-11-01 10:00"),
            ("U2", "2026-11-01 13:00"),
            ("U3", "2026-11-01 12:00"),
            ("U4", "2026-11-01 23:50"),
        ),
    )
    assert pushes == [
        ("2026-11-04 12:00:00", "U1", "r", ["a"]),
        ("2026-11-04 12:00:00", "U2", "r", ["a"]),
        ("2026-11-04 12:00:00", "U3", "r", ["a"]),
        ("2026-11-04 12:00:00", "U4", "r", ["a"]),
    ]


def test_the_day_after_shipping_at_10_is_wait_1d_at_10():
    p = project(
        rule("r", ir.CustomEventTrigger("shipped"), wait(D, dt.time(10, 0)), send("a")),
        rule("s", ir.CustomEventTrigger("shipped"), wait(0, dt.time(10, 0)), send("b")),
    )
    events = [
        ev("follow", "U1", "2026-11-01 09:00"),
        ev("shipped", "U1", "2026-11-02 15:00"),
        ev("follow", "U2", "2026-11-01 09:00"),
        ev("shipped", "U2", "2026-11-02 08:00"),
        ev("follow", "U3", "2026-11-01 09:00"),
        ev("shipped", "U3", "2026-11-02 10:00"),
    ]
    assert run(p, events) == [
        ("2026-11-02 10:00:00", "U2", "s", ["b"]),  # 0d: today's 10:00
        ("2026-11-02 10:00:00", "U3", "s", ["b"]),  # 0d at 10:00 itself: now
        ("2026-11-03 10:00:00", "U1", "r", ["a"]),
        ("2026-11-03 10:00:00", "U1", "s", ["b"]),  # 0d: passed, tomorrow's
        ("2026-11-03 10:00:00", "U2", "r", ["a"]),
        ("2026-11-03 10:00:00", "U3", "r", ["a"]),
    ]


def test_wait_with_hours_at_time_is_the_first_such_time_at_or_after():
    p = project(rule("r", ir.Followed(), wait(D + 6 * 3600, dt.time(12, 0)), send("a")))
    pushes = run(p, follows(("U1", "2026-11-01 05:00"), ("U2", "2026-11-01 07:00")))
    assert pushes == [("2026-11-02 12:00:00", "U1", "r", ["a"]), ("2026-11-03 12:00:00", "U2", "r", ["a"])]


def test_wait_until_time_is_strictly_after_now():
    p = project(rule("r", ir.Followed(), ir.WaitUntil("wait until 10:00", dt.time(10, 0)), send("a")))
    pushes = run(p, follows(("U1", "2026-11-01 10:00"), ("U2", "2026-11-01 09:00")))
    assert pushes == [("2026-11-01 10:00:00", "U2", "r", ["a"]), ("2026-11-02 10:00:00", "U1", "r", ["a"])]


def test_wait_until_weekday_with_and_without_time():
    p = project(
        rule("r", ir.Followed(), ir.WaitUntil("wait until monday at 09:00", dt.time(9, 0), 0), send("a")),
        rule("s", ir.Followed(), ir.WaitUntil("wait until friday", None, 4), send("b")),
    )
    # 2026-11-01 is a Sunday, 2026-11-02 a Monday
    pushes = run(p, follows(("U1", "2026-11-01 10:00"), ("U2", "2026-11-02 09:00")))
    assert pushes == [
        ("2026-11-02 09:00:00", "U1", "r", ["a"]),
        ("2026-11-06 00:00:00", "U1", "s", ["b"]),
        ("2026-11-06 00:00:00", "U2", "s", ["b"]),
        ("2026-11-09 09:00:00", "U2", "r", ["a"]),
    ]


def test_wait_for_event_or_timeout():
    p = project(
        rule("r", ir.Followed(), send("a"), ir.WaitFor("wait for purchased", ir.PurchasedTrigger(), 3 * D), send("b"))
    )
    events = follows(("U1", "2026-11-01 10:00"), ("U2", "2026-11-01 10:00")) + [
        ev("purchase", "U1", "2026-11-02 15:30", order_id="A-1", amount=100),
        ev("purchase", "U1", "2026-11-03 15:30", order_id="A-2", amount=100),
    ]
    assert run(p, events) == [
        ("2026-11-01 10:00:00", "U1", "r", ["a"]),
        ("2026-11-01 10:00:00", "U2", "r", ["a"]),
        ("2026-11-02 15:30:00", "U1", "r", ["b"]),
        ("2026-11-04 10:00:00", "U2", "r", ["b"]),
    ]


def test_wait_for_a_message_answers_it(fresh_db_path):
    p = project(
        rule(
            "r",
            ir.Followed(),
            send("a"),
            ir.WaitFor('wait for message "はい"', ir.MessageTrigger(("はい",), exact=True), D),
            send("b"),
        )
    )
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("message", "U1", "2026-11-01 23:00", text="はい", reply_token="rt-1"),
    ]
    assert run(p, events, db_path=str(fresh_db_path)) == [
        ("2026-11-01 10:00:00", "U1", "r", ["a"]),
        ("2026-11-01 23:00:00", "U1", "r", ["b"]),
    ]
    store = Store(str(fresh_db_path))
    assert [(r["kind"], r["reply_token"]) for r in store.outbox()] == [("push", None), ("reply", "rt-1")]
    store.close()


def test_tag_untag_and_set_change_state_for_later_steps(fresh_db_path):
    p = project(
        rule(
            "r",
            ir.Followed(),
            ir.TagStep("tag vip", "vip"),
            ir.SetStep("set rank", "rank", "gold"),
            send("a", cond=ir.All((ir.Tagged("vip"), ir.Compare(ir.Measure("rank"), "=", "gold")))),
            wait(D),
            ir.UntagStep("untag vip", "vip"),
            send("b", cond=ir.Tagged("vip")),
            send("c"),
        )
    )
    assert run(p, follows(("U1", "2026-11-01 10:00")), db_path=str(fresh_db_path)) == [
        ("2026-11-01 10:00:00", "U1", "r", ["a"]),
        ("2026-11-02 10:00:00", "U1", "r", ["c"]),
    ]
    store = Store(str(fresh_db_path))
    friend = store.friend("U1")
    assert friend["tags"] == [] and friend["attributes"] == {"rank": "gold"}
    store.close()


def test_menu_links_the_rich_menu_from_settings(fresh_db_path):
    settings = ir.Settings(rich_menus=(("vip", "richmenu-" + "a" * 32),))
    p = project(
        rule(
            "r",
            ir.Followed(),
            ir.MenuStep("menu vip", "vip"),
            ir.MenuStep("menu member", "member", ir.Tagged("nobody")),
        ),
        settings=settings,
    )
    assert run(p, follows(("U1", "2026-11-01 10:00")), db_path=str(fresh_db_path)) == []
    store = Store(str(fresh_db_path))
    rows = store.outbox()
    assert [(r["kind"], r["recipients"], r["payload"], r["status"]) for r in rows] == [
        ("menu_link", ["U1"], {"richMenuId": "richmenu-" + "a" * 32}, "sent")
    ]
    store.close()


def test_start_enrols_in_another_rule_now_and_stop_leaves():
    p = project(
        rule(
            "r",
            ir.Followed(),
            send("a"),
            ir.StartStep("start other", "other"),
            ir.StopStep("stop", ir.Tagged("done")),
            wait(D),
            ir.TagStep("tag done", "done"),
            ir.StopStep("stop #2", ir.Tagged("done")),
            send("b"),
        ),
        rule("other", ir.CustomEventTrigger("never"), send("c")),
    )
    # `a` is queued before the start step walks `other`: the friend gets `a`, then `c`
    assert run(p, follows(("U1", "2026-11-01 10:00"))) == [
        ("2026-11-01 10:00:00", "U1", "r", ["a"]),
        ("2026-11-01 10:00:00", "U1", "other", ["c"]),
    ]


def test_tag_step_fires_tagged_triggers_in_the_same_tick():
    p = project(
        rule("r", ir.Followed(), ir.TagStep("tag vip", "vip")), rule("v", ir.TaggedTrigger("vip"), send("vip_thanks"))
    )
    assert run(p, follows(("U1", "2026-11-01 10:00"))) == [("2026-11-01 10:00:00", "U1", "v", ["vip_thanks"])]
