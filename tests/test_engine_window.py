"""Delivery window deferral across days, the per-day cap, and answers that bypass both."""

from __future__ import annotations

import datetime as dt

from engine.language import ir
from engine.runtime.store import Store
from enginekit import ev, project, rule, run, send, wait

WINDOW = ir.Window(dt.time(9, 0), dt.time(21, 0))


def test_deferred_sends_keep_their_order_across_days():
    p = project(
        rule("r", ir.Followed(), send("a"), wait(3600), send("b"), wait(3600), send("c")),
        settings=ir.Settings(window=WINDOW),
    )
    assert run(p, [ev("follow", "U1", "2026-11-01 20:30")]) == [
        ("2026-11-01 20:30:00", "U1", "r", ["a"]),
        ("2026-11-02 09:00:00", "U1", "r", ["b"]),
        ("2026-11-02 09:00:00", "U1", "r", ["c"]),
    ]


def test_cap_counts_the_local_day_the_push_goes_out(fresh_db_path):
    settings = ir.Settings(window=WINDOW, max_per_day=2)
    p = project(
        rule("r1", ir.Followed(), send("a")),
        rule("r2", ir.Followed(), send("b")),
        rule("r3", ir.Followed(), send("c")),
        rule("later", ir.Followed(), wait(12 * 3600), send("d")),
        settings=settings,
    )
    pushes = run(p, [ev("follow", "U1", "2026-11-01 22:00")], db_path=str(fresh_db_path))
    assert pushes == [("2026-11-02 09:00:00", "U1", "r1", ["a"]), ("2026-11-02 09:00:00", "U1", "r2", ["b"])]
    store = Store(str(fresh_db_path))
    rows = store.conn.execute("SELECT rule, status, local_day FROM deliveries ORDER BY rule").fetchall()
    assert [tuple(r) for r in rows] == [
        ("later", "capped", "2026-11-02"),
        ("r1", "sent", "2026-11-02"),
        ("r2", "sent", "2026-11-02"),
        ("r3", "capped", "2026-11-02"),
    ]
    store.close()


def test_cap_resets_at_local_midnight():
    p = project(
        rule("r", ir.CustomEventTrigger("ping"), send("a"), reenter=ir.Reenter("always")),
        settings=ir.Settings(max_per_day=1),
    )
    events = [
        ev("follow", "U1", "2026-11-01 23:58"),
        ev("ping", "U1", "2026-11-01 23:59"),
        ev("ping", "U1", "2026-11-01 23:59:30"),
        ev("ping", "U1", "2026-11-02 00:00:10"),
    ]
    assert run(p, events) == [("2026-11-01 23:59:00", "U1", "r", ["a"]), ("2026-11-02 00:00:10", "U1", "r", ["a"])]


def test_answers_ignore_window_and_cap_and_use_the_reply_token(fresh_db_path):
    settings = ir.Settings(window=WINDOW, max_per_day=1)
    p = project(
        rule(
            "kw",
            ir.MessageTrigger(("クーポン",)),
            send("coupon_reply"),
            wait(3600),
            send("a"),
            reenter=ir.Reenter("always"),
        ),
        rule("pb", ir.PostbackTrigger((("action", "delivery"),)), send("thanks")),
        rule("hello", ir.Followed(), send("greeting")),
        settings=settings,
    )
    events = [
        ev("follow", "U1", "2026-11-01 20:00"),
        ev("message", "U1", "2026-11-01 23:00", text="クーポン", reply_token="rt-1"),
        ev("postback", "U1", "2026-11-01 23:10", data="action=delivery&answer=yes"),
        ev("message", "U1", "2026-11-02 08:00", text="クーポン?", reply_token="rt-2"),
    ]
    pushes = run(p, events, db_path=str(fresh_db_path))
    assert pushes == [
        ("2026-11-01 20:00:00", "U1", "hello", ["greeting"]),
        ("2026-11-01 23:00:00", "U1", "kw", ["coupon_reply"]),
        ("2026-11-01 23:10:00", "U1", "pb", ["thanks"]),
        ("2026-11-02 08:00:00", "U1", "kw", ["coupon_reply"]),
        ("2026-11-02 09:00:00", "U1", "kw", ["a"]),
    ]
    store = Store(str(fresh_db_path))
    rows = [(r["kind"], r["reply_token"], r["messages"]) for r in store.outbox()]
    assert rows == [
        ("push", None, ["greeting"]),
        ("reply", "rt-1", ["coupon_reply"]),
        ("push", None, ["thanks"]),  # the postback carried no reply token
        ("reply", "rt-2", ["coupon_reply"]),
        ("push", None, ["a"]),
    ]  # queued at 00:00, decided at the 09:00 opening
    capped = store.conn.execute("SELECT rule, local_day FROM deliveries WHERE status = 'capped'").fetchall()
    assert [tuple(r) for r in capped] == [("kw", "2026-11-02")]  # the second keyword's follow-up
    store.close()


def test_stale_reply_token_falls_back_to_push(fresh_db_path):
    from engine.interpreter import Engine
    from enginekit import at

    p = project(rule("kw", ir.MessageTrigger(("hi",)), send("thanks")))
    store = Store(str(fresh_db_path))
    engine = Engine(p, store, clock=lambda: at("2026-11-01 10:00"))
    store.apply_events(
        [ev("follow", "U1", "2026-11-01 09:00"), ev("message", "U1", "2026-11-01 10:00", text="hi", reply_token="rt")],
        received_at=int(at("2026-11-01 10:00").timestamp()),
    )
    engine.tick(at("2026-11-01 10:05"))  # the runner was busy for five minutes
    assert [(r["kind"], r["reply_token"]) for r in store.outbox()] == [("push", None)]
    store.close()


def test_a_welcome_sent_at_once_uses_the_follow_reply_token(fresh_db_path):
    """Replies are free: a follow's own sends use its reply token when they go out at once;
    they still obey the window (a night follow is pushed at the opening) and the daily cap."""
    settings = ir.Settings(window=WINDOW, max_per_day=1)
    p = project(
        rule("hello", ir.Followed(), send("greeting"), reenter=ir.Reenter("always")),
        rule("second", ir.Followed(), send("a")),
        settings=settings,
    )
    events = [
        ev("follow", "U1", "2026-11-01 10:00", reply_token="rt-1"),
        ev("follow", "U2", "2026-11-01 23:00", reply_token="rt-2"),
    ]
    pushes = run(p, events, db_path=str(fresh_db_path))
    assert pushes == [
        ("2026-11-01 10:00:00", "U1", "hello", ["greeting"]),
        ("2026-11-02 09:00:00", "U2", "hello", ["greeting"]),
    ]
    store = Store(str(fresh_db_path))
    rows = [(r["kind"], r["recipients"], r["reply_token"]) for r in store.outbox()]
    assert rows == [("reply", ["U1"], "rt-1"), ("push", ["U2"], None)]
    capped = store.conn.execute(
        "SELECT friend, rule FROM deliveries WHERE status = 'capped' ORDER BY friend"
    ).fetchall()
    assert [tuple(r) for r in capped] == [("U1", "second"), ("U2", "second")]
    store.close()


def test_rules_a_message_starts_or_tags_its_way_into_answer_it_too(fresh_db_path):
    # the answer rule tags the friend and starts another rule in the message's own tick: their
    # sends answer the same message (no window, no cap), in the order the steps ran, and one
    # of them takes the reply token
    settings = ir.Settings(window=WINDOW, max_per_day=1)
    p = project(
        rule(
            "kw",
            ir.MessageTrigger(("クーポン",)),
            send("coupon_reply"),
            ir.TagStep("tag asked", "asked"),
            ir.StartStep("start details", "details"),
        ),
        rule("details", ir.CustomEventTrigger("never"), send("thanks")),
        rule("asked", ir.TaggedTrigger("asked"), send("weekly_pick")),
        rule("ping", ir.CustomEventTrigger("ping"), send("greeting")),
        settings=settings,
    )
    events = [
        ev("follow", "U1", "2026-11-01 09:00"),
        ev("ping", "U1", "2026-11-01 22:00"),  # waits for 09:00, and takes the day's one push
        ev("message", "U1", "2026-11-01 23:00", text="クーポン", reply_token="rt-1"),
    ]
    assert run(p, events, db_path=str(fresh_db_path)) == [
        ("2026-11-01 23:00:00", "U1", "kw", ["coupon_reply"]),
        ("2026-11-01 23:00:00", "U1", "asked", ["weekly_pick"]),
        ("2026-11-01 23:00:00", "U1", "details", ["thanks"]),
        ("2026-11-02 09:00:00", "U1", "ping", ["greeting"]),
    ]
    store = Store(str(fresh_db_path))
    assert [(r["kind"], r["reply_token"], r["messages"]) for r in store.outbox()] == [
        ("reply", "rt-1", ["coupon_reply"]),
        ("push", None, ["weekly_pick"]),
        ("push", None, ["thanks"]),
        ("push", None, ["greeting"]),
    ]
    store.close()


def test_a_rule_started_after_the_answer_waited_is_no_answer():
    # past the first wait the walk no longer answers the message: what it starts then is
    # a push like any other (window and cap apply)
    p = project(
        rule(
            "kw",
            ir.MessageTrigger(("クーポン",)),
            send("coupon_reply"),
            wait(60),
            ir.StartStep("start details", "details"),
        ),
        rule("details", ir.CustomEventTrigger("never"), send("thanks")),
        settings=ir.Settings(window=WINDOW),
    )
    events = [ev("follow", "U1", "2026-11-01 09:00"), ev("message", "U1", "2026-11-01 23:00", text="クーポン")]
    assert run(p, events) == [
        ("2026-11-01 23:00:00", "U1", "kw", ["coupon_reply"]),
        ("2026-11-02 09:00:00", "U1", "details", ["thanks"]),
    ]
