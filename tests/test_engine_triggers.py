"""SPEC §2.2: every trigger, as a small timeline with the exact pushes (Asia/Tokyo)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from engine.language import ir
from enginekit import as_friends, at, compile_rules, ev, project, rule, run, send, wait


def test_followed_via_source_and_plain_followed():
    p = project(
        rule("shipping", ir.Followed((("qr", "shipping"), ("ad", "summer"))), send("greeting")),
        rule("anyone", ir.Followed(), send("thanks")),
    )
    pushes = run(
        p,
        [
            ev("follow", "U1", "2026-11-01 10:00", source="qr=shipping"),
            ev("follow", "U2", "2026-11-01 10:30", source="ad=summer"),
            ev("follow", "U3", "2026-11-01 11:00", source="qr=flyer"),
        ],
    )
    assert pushes == [
        ("2026-11-01 10:00:00", "U1", "anyone", ["thanks"]),
        ("2026-11-01 10:00:00", "U1", "shipping", ["greeting"]),
        ("2026-11-01 10:30:00", "U2", "anyone", ["thanks"]),
        ("2026-11-01 10:30:00", "U2", "shipping", ["greeting"]),
        ("2026-11-01 11:00:00", "U3", "anyone", ["thanks"]),
    ]


def test_source_recorded_before_the_follow_counts():
    p = project(rule("shipping", ir.Followed((("qr", "shipping"),)), send("greeting")))
    events = [
        ev("attributes", "U1", "2026-11-01 09:00", set={"display_name": "花子"}),
        ev("follow", "U1", "2026-11-01 10:00"),
    ]
    assert run(p, events) == []
    events = [ev("follow", "U1", "2026-11-01 10:00", source="qr=shipping, ad=summer")]
    assert run(p, events) == [("2026-11-01 10:00:00", "U1", "shipping", ["greeting"])]


def test_unfollowed_fires_but_a_blocked_friend_gets_nothing(fresh_db_path):
    from engine.runtime.store import Store

    p = project(
        rule("bye", ir.Unfollowed(), ir.TagStep("tag left", "left"), send("thanks")),
        rule("tagged_left", ir.TaggedTrigger("left"), send("greeting")),
    )
    events = [ev("follow", "U1", "2026-11-01 10:00"), ev("unfollow", "U1", "2026-11-02 10:00")]
    assert run(p, events, db_path=str(fresh_db_path)) == []
    store = Store(str(fresh_db_path))
    rows = store.conn.execute("SELECT rule, messages, status, reason FROM deliveries ORDER BY rule").fetchall()
    # the tag step's `tagged` trigger does not enter a friend who is no longer a friend
    assert [tuple(r) for r in rows] == [("bye", '["thanks"]', "skipped", "blocked")]
    assert store.friend("U1")["tags"] == ["left"]
    store.close()


def test_message_keywords_contains_and_exactly_after_nfkc_and_casefold():
    p = project(
        rule("kw", ir.MessageTrigger(("クーポン", "coupon")), send("coupon_reply"), reenter=ir.Reenter("always")),
        rule("yes", ir.MessageTrigger(("はい",), exact=True), send("thanks"), reenter=ir.Reenter("always")),
    )
    events = [
        ev("message", "U1", "2026-11-01 10:00", text="クーポンください"),
        ev("message", "U2", "2026-11-01 10:01", text="ＣＯＵＰＯＮ please"),  # full width
        ev("message", "U3", "2026-11-01 10:02", text="ｸｰﾎﾟﾝ"),  # half-width kana
        ev("message", "U4", "2026-11-01 10:03", text="はい"),
        ev("message", "U5", "2026-11-01 10:04", text="はい、お願いします"),
        ev("message", "U6", "2026-11-01 10:05", text="hello"),
    ]
    assert run(p, as_friends(events)) == [
        ("2026-11-01 10:00:00", "U1", "kw", ["coupon_reply"]),
        ("2026-11-01 10:01:00", "U2", "kw", ["coupon_reply"]),
        ("2026-11-01 10:02:00", "U3", "kw", ["coupon_reply"]),
        ("2026-11-01 10:03:00", "U4", "yes", ["thanks"]),
    ]


def test_postback_key_value():
    p = project(rule("pb", ir.PostbackTrigger((("action", "survey_done"),)), send("thanks")))
    events = [
        ev("postback", "U1", "2026-11-01 10:00", data="action=survey_done&q1=a"),
        ev("postback", "U2", "2026-11-01 10:00", data="action=survey"),
        ev("postback", "U3", "2026-11-01 10:00", data="q1=a&action=survey_done"),
    ]
    assert run(p, as_friends(events)) == [
        ("2026-11-01 10:00:00", "U1", "pb", ["thanks"]),
        ("2026-11-01 10:00:00", "U3", "pb", ["thanks"]),
    ]


def test_purchased_any_product_and_category():
    p = project(
        rule("any", ir.PurchasedTrigger(), send("a")),
        rule("sku", ir.PurchasedTrigger(product="SKU1"), send("b")),
        rule("cos", ir.PurchasedTrigger(category="cosmetics"), send("c")),
    )
    items = [{"product": "SKU2", "category": "cosmetics", "price": 100, "quantity": 1}]
    events = [
        ev("purchase", "U1", "2026-11-01 10:00", order_id="A-1", amount=100, items=items),
        ev(
            "purchase",
            "U2",
            "2026-11-01 10:00",
            order_id="A-2",
            amount=100,
            items=[{"product": "SKU1", "category": "food"}],
        ),
    ]
    assert run(p, as_friends(events)) == [
        ("2026-11-01 10:00:00", "U1", "any", ["a"]),
        ("2026-11-01 10:00:00", "U1", "cos", ["c"]),
        ("2026-11-01 10:00:00", "U2", "any", ["a"]),
        ("2026-11-01 10:00:00", "U2", "sku", ["b"]),
    ]


def test_carted_and_viewed():
    p = project(rule("cart", ir.CartedTrigger(), send("a")), rule("view", ir.ViewedTrigger(product="SKU1"), send("b")))
    events = [
        ev("cart", "U1", "2026-11-01 10:00", product="SKU9"),
        ev("view", "U1", "2026-11-01 10:05", product="SKU2"),
        ev("view", "U2", "2026-11-01 10:06", product="SKU1"),
    ]
    assert run(p, as_friends(events)) == [
        ("2026-11-01 10:00:00", "U1", "cart", ["a"]),
        ("2026-11-01 10:06:00", "U2", "view", ["b"]),
    ]


def test_tagged_by_event_and_only_when_new():
    p = project(rule("vip", ir.TaggedTrigger("vip"), send("vip_thanks"), reenter=ir.Reenter("always")))
    events = [
        ev("tag", "U1", "2026-11-01 10:00", add=["vip"], remove=[]),
        ev("tag", "U1", "2026-11-01 11:00", add=["vip"], remove=[]),  # already had it
        ev("tag", "U2", "2026-11-01 12:00", add=["other"], remove=[]),
    ]
    assert run(p, as_friends(events)) == [("2026-11-01 10:00:00", "U1", "vip", ["vip_thanks"])]


def test_custom_event_fields_match_json_true_and_numbers_by_value():
    # the shop's JSON says "express": true and "boxes": 2.0: `express=true` and `boxes=2` match
    p = compile_rules(
        "rule express when event shipped express=true reenter always then send a\n"
        "rule two when event shipped boxes=2 reenter always then send b\n"
        "rule gift when event ordered_gift then wait for event delivered gift=true up to 3d send thanks\n"
        "rule back when unfollowed then wait for followed via qr=shipping up to 7d send greeting\n"
    )
    events = [
        ev("shipped", "U1", "2026-11-01 10:00", express=True, boxes=2.0),
        ev("shipped", "U1", "2026-11-01 11:00", express=False, boxes=3, note="true"),
        ev("shipped", "U1", "2026-11-01 12:00", express="true", boxes="2"),
        ev("ordered_gift", "U1", "2026-11-02 11:00"),
        ev("delivered", "U1", "2026-11-03 15:00", gift=True),
        ev("unfollow", "U1", "2026-11-04 10:00"),
        ev("follow", "U1", "2026-11-05 10:00", source="qr=shipping"),
    ]
    assert run(p, as_friends(events), until="2026-11-20 00:00") == [
        ("2026-11-01 10:00:00", "U1", "express", ["a"]),
        ("2026-11-01 10:00:00", "U1", "two", ["b"]),
        ("2026-11-01 12:00:00", "U1", "express", ["a"]),  # the text "true" as written
        ("2026-11-01 12:00:00", "U1", "two", ["b"]),
        ("2026-11-03 15:00:00", "U1", "gift", ["thanks"]),  # resumed by the delivery, not at 3d
        ("2026-11-05 10:00:00", "U1", "back", ["greeting"]),  # back through the QR card
    ]


def test_custom_event_with_fields():
    p = project(
        rule("shipped", ir.CustomEventTrigger("shipped"), send("a")),
        rule("express", ir.CustomEventTrigger("shipped", (("carrier", "yamato"),)), send("b")),
    )
    events = [
        ev("shipped", "U1", "2026-11-01 10:00", carrier="yamato"),
        ev("shipped", "U2", "2026-11-01 10:00", carrier="sagawa"),
        ev("delivered", "U3", "2026-11-01 10:00"),
    ]
    assert run(p, as_friends(events)) == [
        ("2026-11-01 10:00:00", "U1", "express", ["b"]),
        ("2026-11-01 10:00:00", "U1", "shipped", ["a"]),
        ("2026-11-01 10:00:00", "U2", "shipped", ["a"]),
    ]


def test_schedule_every_friday_20_for_current_friends_once_per_occurrence():
    p = project(rule("weekly", ir.ScheduleTrigger("0 20 * * 5"), send("weekly_pick")))
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),  # a Sunday
        ev("follow", "U2", "2026-11-10 10:00"),
        ev("unfollow", "U2", "2026-11-12 10:00"),
    ]
    assert run(p, events, until="2026-11-21 00:00") == [
        ("2026-11-06 20:00:00", "U1", "weekly", ["weekly_pick"]),
        ("2026-11-13 20:00:00", "U1", "weekly", ["weekly_pick"]),
        ("2026-11-20 20:00:00", "U1", "weekly", ["weekly_pick"]),
    ]


SALES = (
    ir.Sale("ss_dec", "楽天スーパーSALE", at("2026-12-04 20:00"), at("2026-12-11 01:59"), kind="super_sale"),
    ir.Sale("marathon_jan", "お買い物マラソン", at("2027-01-09 20:00"), at("2027-01-16 01:59"), kind="marathon"),
)


def test_sale_phases_and_kind_filter():
    p = project(
        rule("countdown", ir.SaleTrigger("starts", 14 * 86400, dt.time(12, 0), "super_sale"), send("sale_countdown")),
        rule("start", ir.SaleTrigger("starts"), send("sale_start")),
        rule("last_call", ir.SaleTrigger("ends", 0, dt.time(10, 0)), send("sale_last_call")),
        rule("eve", ir.SaleTrigger("starts", 86400), send("a")),
        sales=SALES,
    )
    events = [ev("follow", "U1", "2026-11-01 10:00")]
    assert run(p, events, until="2027-01-31 00:00") == [
        ("2026-11-20 12:00:00", "U1", "countdown", ["sale_countdown"]),
        ("2026-12-03 20:00:00", "U1", "eve", ["a"]),
        ("2026-12-04 20:00:00", "U1", "start", ["sale_start"]),
        ("2026-12-11 10:00:00", "U1", "last_call", ["sale_last_call"]),
        ("2027-01-08 20:00:00", "U1", "eve", ["a"]),
        ("2027-01-09 20:00:00", "U1", "start", ["sale_start"]),
        ("2027-01-16 10:00:00", "U1", "last_call", ["sale_last_call"]),
    ]


def test_two_sales_at_one_moment_each_enrol_their_audience(fresh_db_path):
    # the shop's own sale and the Super SALE end the same day: `ends in 1d at 10:00` falls on
    # the same minute for both, and the last call of each goes out, with its own title
    last_call = ir.MessageDef("sale_last_call", ({"type": "text", "text": "{{ sale.title }} まもなく終了"},))
    own = ir.Sale("own_dec", "自社サイト冬セール", at("2026-12-01 10:00"), at("2026-12-11 23:59"), kind="own")
    p = project(
        rule("last_call", ir.SaleTrigger("ends", 86400, dt.time(10, 0)), send("sale_last_call")),
        sales=(own, SALES[0]),
        messages={"sale_last_call": last_call},
    )
    from engine.runtime.simulate import run_timeline

    pushes = run_timeline(
        p,
        [ev("follow", "U1", "2026-11-01 10:00"), ev("follow", "U2", "2026-11-01 11:00")],
        until=at("2026-12-12 00:00"),
        tick_seconds=3600,
        db_path=str(fresh_db_path),
        render=True,
    )
    assert [(p["at"], p["friend"], p["rendered"][0]["text"]) for p in pushes] == [
        ("2026-12-10T10:00:00+09:00", "U1", "自社サイト冬セール まもなく終了"),
        ("2026-12-10T10:00:00+09:00", "U1", "楽天スーパーSALE まもなく終了"),
        ("2026-12-10T10:00:00+09:00", "U2", "自社サイト冬セール まもなく終了"),
        ("2026-12-10T10:00:00+09:00", "U2", "楽天スーパーSALE まもなく終了"),
    ]


def test_sale_message_sees_its_sale(fresh_db_path):
    countdown = ir.MessageDef("sale_countdown", ({"type": "text", "text": "{{ sale.title }}まであと14日"},))
    p = project(
        rule("countdown", ir.SaleTrigger("starts", 14 * 86400, dt.time(12, 0)), send("sale_countdown")),
        sales=SALES[:1],
        messages={"sale_countdown": countdown},
    )
    from engine.runtime.simulate import run_timeline
    from engine.runtime.store import Store

    pushes = run_timeline(
        p,
        [ev("follow", "U1", "2026-11-01 10:00")],
        until=at("2026-11-21 00:00"),
        tick_seconds=3600,
        db_path=str(fresh_db_path),
    )
    assert pushes == [
        {"at": "2026-11-20T12:00:00+09:00", "friend": "U1", "rule": "countdown", "messages": ["sale_countdown"]}
    ]
    store = Store(str(fresh_db_path))
    assert store.outbox()[0]["payload"] == [{"type": "text", "text": "楽天スーパーSALEまであと14日"}]
    store.close()


def test_condition_triggers_checked_on_ticks():
    vip = ir.Segment(
        "vip", ir.AnyOf((ir.Compare(ir.Measure("orders"), ">=", 3), ir.Compare(ir.Measure("total_spent"), ">=", 50000)))
    )
    p = project(
        rule("dormant", ir.ConditionTrigger(ir.LastPurchaseOlder(90 * 86400)), send("winback")),
        rule("big", ir.ConditionTrigger(ir.Compare(ir.Measure("total_spent"), ">=", 50000)), send("a")),
        rule("vip", ir.ConditionTrigger(ir.InSegment("vip")), send("vip_thanks")),
        segments={"vip": vip},
    )
    events = [
        ev("purchase", "U1", "2026-08-01 10:30", order_id="A-1", amount=60000),
        ev("purchase", "U2", "2026-08-02 10:30", order_id="A-2", amount=100),
    ]
    assert run(p, as_friends(events), until="2026-11-01 00:00") == [
        ("2026-08-01 11:00:00", "U1", "big", ["a"]),
        ("2026-08-01 11:00:00", "U1", "vip", ["vip_thanks"]),
        ("2026-10-30 11:00:00", "U1", "dormant", ["winback"]),
        ("2026-10-31 11:00:00", "U2", "dormant", ["winback"]),
    ]


def test_condition_tick_interval_follows_the_tick_option():
    p = project(rule("big", ir.ConditionTrigger(ir.Compare(ir.Measure("total_spent"), ">=", 100)), send("a")))
    events = [ev("purchase", "U1", "2026-11-01 10:10", order_id="A-1", amount=100)]
    assert run(p, as_friends(events), tick=86400, until="2026-11-03 00:00") == [
        ("2026-11-02 00:00:00", "U1", "big", ["a"])
    ]
    assert run(p, as_friends(events), tick=900, until="2026-11-03 00:00") == [
        ("2026-11-01 10:15:00", "U1", "big", ["a"])
    ]


def test_idempotent_tick_and_no_replay_of_a_long_stall(fresh_db_path):
    from engine.interpreter import Engine
    from engine.runtime.store import Store

    p = project(
        rule("weekly", ir.ScheduleTrigger("0 20 * * 5"), send("weekly_pick")),
        rule("hello", ir.Followed(), send("greeting"), wait(3600), send("thanks")),
    )
    store = Store(str(fresh_db_path))
    engine = Engine(p, store, clock=lambda: at("2026-11-01 10:00"))
    applied = engine.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    assert (applied.applied, applied.duplicates) == (1, 0)
    first = engine.tick(at("2026-11-01 10:00"))
    assert (first.events, first.entered, first.queued) == (1, 1, 1)
    again = engine.tick(at("2026-11-01 10:00"))
    assert (again.events, again.entered, again.queued, again.advanced) == (0, 0, 0, 0)
    assert len(store.outbox()) == 1
    assert engine.next_wakeup(at("2026-11-01 10:00")) == at("2026-11-01 11:00")
    # the runner was down for three Fridays: only the latest missed occurrence fires
    stalled = engine.tick(at("2026-11-21 09:00"))
    assert stalled.entered == 1
    rows = sorted((r["rule"], r["messages"]) for r in store.outbox())
    assert rows == [("hello", ["greeting"]), ("hello", ["thanks"]), ("weekly", ["weekly_pick"])]
    occurrences = store.conn.execute("SELECT occurrence FROM enrollments WHERE rule = 'weekly'").fetchall()
    assert [o[0] for o in occurrences] == [f"schedule:{int(at('2026-11-20 20:00').timestamp())}"]
    store.close()


def test_time_triggers_skip_friends_still_inside_the_rule():
    p = project(rule("daily", ir.ScheduleTrigger("0 20 * * *"), send("a"), wait(36 * 3600), send("b")))
    pushes = run(p, [ev("follow", "U1", "2026-11-01 10:00")], until="2026-11-04 21:00")
    assert pushes == [
        ("2026-11-01 20:00:00", "U1", "daily", ["a"]),
        ("2026-11-03 08:00:00", "U1", "daily", ["b"]),  # 11-02 20:00: still inside
        ("2026-11-03 20:00:00", "U1", "daily", ["a"]),
    ]  # 11-04 20:00: inside again


def test_a_daily_schedule_fires_once_on_the_day_the_clocks_go_back(fresh_db_path):
    # New York's clocks go back at 02:00 on 2026-11-01: 01:30 comes twice, the daily job at
    # 01:30 fires once; an hourly job fires in both of the repeated hours
    from engine.runtime.events import Event
    from engine.runtime.simulate import run_timeline

    p = project(
        rule("daily", ir.ScheduleTrigger("30 1 * * *"), send("a")),
        rule("hourly", ir.ScheduleTrigger("30 * * * *"), send("b")),
        settings=ir.Settings(timezone="America/New_York"),
    )
    start = dt.datetime(2026, 10, 31, 12, tzinfo=ZoneInfo("America/New_York"))
    pushes = run_timeline(
        p,
        [Event(type="follow", friend="U1", at=start, data={})],
        until=start + dt.timedelta(days=2),
        tick_seconds=3600,
        db_path=str(fresh_db_path),
    )
    assert [x["at"] for x in pushes if x["rule"] == "daily"] == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]
    hourly = [x["at"] for x in pushes if x["rule"] == "hourly"]
    assert ["2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00"] == [h for h in hourly if "T01:30" in h][:2]
