"""SPEC §4: a send is decided when it goes out, by one procedure, whichever path queued it.
Each test is a timeline in and the pushes out (Asia/Tokyo); the cases are the ones seen in use."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.interpreter import Engine
from engine.language import ir
from engine.runtime.store import Store
from enginekit import at, compile_rules, ev, message, run, write_folder, write_timeline

WINDOW = ir.Window(dt.time(9, 0), dt.time(21, 0))
FLAGSHIP = "when followed via qr=shipping then wait 1d send coupon15 if not purchased"


def night_follow(*later) -> list:
    """Follow at 22:40; `wait 1d` ends at 22:40 the next day, outside the window: the coupon
    is due at the 09:00 opening of the second morning."""
    return [ev("follow", "U1", "2026-11-01 22:40", source="qr=shipping"), *later]


def deliveries(path) -> list[tuple]:
    store = Store(str(path))
    try:
        return [
            tuple(r)
            for r in store.conn.execute("SELECT friend, rule, messages, status, reason FROM deliveries ORDER BY id")
        ]
    finally:
        store.close()


# ---------------------------------------------------------------- 1. decided when it goes out


def test_deferred_coupon_is_checked_again_at_the_opening():
    p = compile_rules(FLAGSHIP, settings=ir.Settings(window=WINDOW))
    assert run(p, night_follow()) == [("2026-11-03 09:00:00", "U1", "test", ["coupon15"])]
    bought = ev("purchase", "U1", "2026-11-03 08:00", order_id="A-1", amount=5400)
    assert run(p, night_follow(bought)) == []


def test_a_friend_who_blocked_before_the_opening_gets_nothing(fresh_db_path):
    p = compile_rules(FLAGSHIP, settings=ir.Settings(window=WINDOW))
    events = night_follow(ev("unfollow", "U1", "2026-11-03 08:00"))
    assert run(p, events, db_path=str(fresh_db_path)) == []
    assert deliveries(fresh_db_path) == [("U1", "test", '["coupon15"]', "skipped", "blocked")]


def test_a_friend_who_blocked_and_came_back_before_the_opening_gets_only_what_was_queued_since(fresh_db_path):
    # follow at 23:00, block at 23:30, follow again at 23:45: the welcome queued before the block
    # is not sent (SPEC §4), the one the second follow queued is; a rule entered once has none
    p = compile_rules(
        "rule again when followed reenter always then send greeting\nrule once when followed then send thanks",
        settings=ir.Settings(window=WINDOW),
    )
    events = [
        ev("follow", "U1", "2026-11-01 23:00"),
        ev("unfollow", "U1", "2026-11-01 23:30"),
        ev("follow", "U1", "2026-11-01 23:45"),
        ev("follow", "U2", "2026-11-01 23:00"),
    ]
    assert run(p, events, db_path=str(fresh_db_path)) == [
        ("2026-11-02 09:00:00", "U1", "again", ["greeting"]),
        ("2026-11-02 09:00:00", "U2", "again", ["greeting"]),
        ("2026-11-02 09:00:00", "U2", "once", ["thanks"]),
    ]
    assert sorted(d for d in deliveries(fresh_db_path) if d[0] == "U1") == [
        ("U1", "again", '["greeting"]', "sent", None),
        ("U1", "again", '["greeting"]', "skipped", "blocked"),
        ("U1", "once", '["thanks"]', "skipped", "blocked"),
    ]


def test_an_older_database_learns_each_friends_last_block_from_its_events(tmp_path):
    import sqlite3

    from engine.runtime.store import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for script in MIGRATIONS[:11]:
        conn.executescript(script)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '11')")
    conn.executemany(
        "INSERT INTO friends(id, followed_at, created_at) VALUES (?, 100, 100)", [("U-back",), ("U-never",)]
    )
    conn.executemany(
        "INSERT INTO events(type, friend, at, data, received_at, processed_at) VALUES (?, 'U-back', ?, '{}', ?, ?)",
        [
            ("follow", 100, 100, 100),
            ("unfollow", 200, 200, 210),
            ("unfollow", 300, 300, 330),
            ("follow", 400, 400, 400),
        ],
    )
    conn.commit()
    conn.close()
    store = Store(str(path))
    rows = store.conn.execute("SELECT id, unfollow_tick FROM friends ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [("U-back", 330), ("U-never", None)]
    store.close()


def test_exit_when_that_holds_at_the_opening_means_nothing_is_sent(fresh_db_path):
    p = compile_rules(
        "rule w when followed exit when tagged unsubscribed then wait 1d send coupon15",
        settings=ir.Settings(window=WINDOW),
    )
    events = [
        ev("follow", "U1", "2026-11-01 22:40"),
        ev("tag", "U1", "2026-11-03 08:00", add=["unsubscribed"], remove=[]),
    ]
    assert run(p, events, db_path=str(fresh_db_path)) == []
    store = Store(str(fresh_db_path))
    assert store.conn.execute("SELECT state, exit_reason FROM enrollments").fetchone()[:] == ("exited", "exit_when")
    store.close()


def test_exit_when_on_a_clock_condition_is_checked_at_the_opening(fresh_db_path):
    # nothing happens to the friend before the opening: the deliver stage itself finds the exit
    p = compile_rules(
        "rule w when followed exit when friend for 20h then wait 1h send coupon15",
        settings=ir.Settings(window=ir.Window(dt.time(9, 0), dt.time(10, 0))),
    )
    assert run(p, [ev("follow", "U1", "2026-11-01 10:30")], db_path=str(fresh_db_path)) == []
    store = Store(str(fresh_db_path))
    assert tuple(store.conn.execute("SELECT state, exit_reason FROM enrollments").fetchone()) == ("exited", "exit_when")
    store.close()


def test_the_message_is_rendered_when_it_goes_out(fresh_db_path):
    hello = ir.MessageDef("coupon15", ({"type": "text", "text": "{{ friend.display_name }}さんへ"},))
    p = compile_rules(FLAGSHIP, settings=ir.Settings(window=WINDOW), messages={"coupon15": hello})
    events = night_follow(ev("attributes", "U1", "2026-11-03 08:30", set={"display_name": "花子"}))
    run(p, events, db_path=str(fresh_db_path))
    store = Store(str(fresh_db_path))
    assert [r["payload"] for r in store.outbox()] == [[{"type": "text", "text": "花子さんへ"}]]
    store.close()


# ---------------------------------------------------------------- 2. the cap keeps the higher priority


@pytest.mark.parametrize("weekly_step", ["send weekly_pick", "send weekly_pick if not blocked"])
def test_cap_keeps_the_higher_priority_send_whichever_path_queued_it(weekly_step):
    p = compile_rules(
        f"""
        rule weekly when schedule "0 20 * * 5" priority -1 then {weekly_step}
        rule shipped when event shipped priority 10 then send a
        """,
        settings=ir.Settings(max_per_day=1),
    )
    events = [ev("follow", "U1", "2026-11-01 10:00"), ev("shipped", "U1", "2026-11-06 20:00")]
    assert run(p, events, until="2026-11-07 00:00") == [("2026-11-06 20:00:00", "U1", "shipped", ["a"])]


def test_cap_orders_a_deferred_send_against_the_sends_of_its_opening():
    # queued the night before (deferred), the welcome's coupon meets the sale start at 09:00;
    # the sale start has the higher priority and keeps the day's one push
    p = compile_rules(
        """
        rule welcome when followed then wait 1d send coupon15
        rule morning when schedule "0 9 * * *" priority 5 then send sale_start
        """,
        settings=ir.Settings(window=WINDOW, max_per_day=1),
    )
    events = [ev("follow", "U1", "2026-11-01 22:40")]
    assert run(p, events, until="2026-11-03 12:00") == [
        ("2026-11-02 09:00:00", "U1", "morning", ["sale_start"]),
        ("2026-11-03 09:00:00", "U1", "morning", ["sale_start"]),
    ]


# ---------------------------------------------------------------- 3. uncapped


def test_uncapped_sends_neither_count_nor_are_stopped(fresh_db_path):
    p = compile_rules(
        """
        rule notice when event shipped uncapped reenter always then send a
        rule promo when event promo reenter always then send b
        """,
        settings=ir.Settings(max_per_day=1),
    )
    events = [
        ev("follow", "U1", "2026-11-01 09:00"),
        ev("promo", "U1", "2026-11-01 10:00"),
        ev("shipped", "U1", "2026-11-01 11:00"),  # over the cap, but transactional
        ev("shipped", "U1", "2026-11-01 12:00"),
        ev("promo", "U1", "2026-11-01 13:00"),  # capped: the day's one push was b
        ev("follow", "U2", "2026-11-01 09:00"),
        ev("shipped", "U2", "2026-11-01 10:00"),
        ev("promo", "U2", "2026-11-01 11:00"),
    ]  # the notice did not count
    assert run(p, events, db_path=str(fresh_db_path)) == [
        ("2026-11-01 10:00:00", "U1", "promo", ["b"]),
        ("2026-11-01 10:00:00", "U2", "notice", ["a"]),
        ("2026-11-01 11:00:00", "U1", "notice", ["a"]),
        ("2026-11-01 11:00:00", "U2", "promo", ["b"]),
        ("2026-11-01 12:00:00", "U1", "notice", ["a"]),
    ]
    assert [d for d in deliveries(fresh_db_path) if d[3] == "capped"] == [
        ("U1", "promo", '["b"]', "capped", "max_per_day 1")
    ]


# ---------------------------------------------------------------- 4. only current friends


def test_people_who_never_followed_are_no_audience_until_they_follow(fresh_db_path):
    p = compile_rules("""
        rule weekly when schedule "0 20 * * 5" then send weekly_pick
        rule big when total_spent >= 10000 then send vip_thanks
        rule bought when purchased then send thanks
        """)
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("purchase", "C9", "2026-11-02 10:00", order_id="A-1", amount=12000),
        ev("view", "C8", "2026-11-02 10:00", product="SKU1"),
        ev("attributes", "C7", "2026-11-02 10:00", set={"gender": "f"}),
        ev("follow", "C9", "2026-11-10 10:00"),
    ]
    assert run(p, events, until="2026-11-14 00:00", db_path=str(fresh_db_path)) == [
        ("2026-11-06 20:00:00", "U1", "weekly", ["weekly_pick"]),
        ("2026-11-10 10:00:00", "C9", "big", ["vip_thanks"]),  # the old order counts once they follow
        ("2026-11-13 20:00:00", "C9", "weekly", ["weekly_pick"]),
        ("2026-11-13 20:00:00", "U1", "weekly", ["weekly_pick"]),
    ]
    store = Store(str(fresh_db_path))
    assert store.friend("C9")["orders"] == 1
    store.close()


# ---------------------------------------------------------------- 5. since entering


def test_since_entering_excludes_the_event_that_caused_the_entry():
    p = compile_rules("""
        rule again when purchased category=cosmetics
          then wait 30d send a unless purchased category=cosmetics
        rule carts when carted then wait 1d send b unless carted
        """)
    cosmetics = [{"product": "SKU1", "category": "cosmetics", "price": 100, "quantity": 1}]
    events = [
        ev("follow", "U1", "2026-11-01 09:00"),
        ev("follow", "U2", "2026-11-01 09:00"),
        ev("purchase", "U1", "2026-11-01 10:00", order_id="A-1", amount=100, items=cosmetics),
        ev("purchase", "U2", "2026-11-01 10:00", order_id="A-2", amount=100, items=cosmetics),
        ev("purchase", "U2", "2026-11-20 10:00", order_id="A-3", amount=100, items=cosmetics),
        ev("cart", "U1", "2026-11-01 10:00", product="SKU1"),
        ev("cart", "U2", "2026-11-01 10:00", product="SKU1"),
        ev("cart", "U2", "2026-11-01 18:00", product="SKU2"),
    ]
    assert run(p, events, until="2026-12-05 00:00") == [
        ("2026-11-02 10:00:00", "U1", "carts", ["b"]),
        ("2026-12-01 10:00:00", "U1", "again", ["a"]),
    ]


def test_since_entering_excludes_the_event_that_started_or_tagged_the_friend_in():
    # `buy` starts `follow_up` and tags `buyer` in the purchase's own tick: for both rules the
    # purchase is what entered them, not a purchase "since"; a second order is one
    p = compile_rules("""
        rule buy when purchased then
          start follow_up
          tag buyer
        rule follow_up when event never then
          send a unless purchased
          wait 1d
          send b unless purchased
        rule buyers when tagged buyer then wait 2d send c unless purchased
        """)
    events = [
        ev("follow", "U1", "2026-11-01 09:00"),
        ev("follow", "U2", "2026-11-01 09:00"),
        ev("purchase", "U1", "2026-11-01 10:00", order_id="A-1", amount=100),
        ev("purchase", "U2", "2026-11-01 10:00", order_id="A-2", amount=100),
        ev("purchase", "U2", "2026-11-01 12:00", order_id="A-3", amount=100),
    ]
    assert run(p, events, until="2026-11-05 00:00") == [
        ("2026-11-01 10:00:00", "U1", "follow_up", ["a"]),
        ("2026-11-01 10:00:00", "U2", "follow_up", ["a"]),
        ("2026-11-02 10:00:00", "U1", "follow_up", ["b"]),
        ("2026-11-03 10:00:00", "U1", "buyers", ["c"]),
    ]


# ---------------------------------------------------------------- 6. wait for sees the whole event


@pytest.mark.parametrize("order", [0, 1])
def test_steps_after_wait_for_see_the_rules_the_same_event_entered(order, fresh_db_path):
    sends = ["send reminder unless tagged answered", "send thanks if tagged answered"]
    if order:
        sends.reverse()
    p = compile_rules(
        f"""
        rule survey when followed then
          send a
          wait for postback action=survey_done up to 3d
          {sends[0]}
          {sends[1]}
          tag thanked if tagged answered
        rule answered when postback action=survey_done then tag answered
        """,
        messages={"reminder": message("reminder")},
    )
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("postback", "U1", "2026-11-01 12:00", data="action=survey_done"),
    ]
    assert run(p, events, db_path=str(fresh_db_path)) == [
        ("2026-11-01 10:00:00", "U1", "survey", ["a"]),
        ("2026-11-01 12:00:00", "U1", "survey", ["thanks"]),
    ]
    store = Store(str(fresh_db_path))
    assert store.friend("U1")["tags"] == ["answered", "thanked"]
    store.close()


# ---------------------------------------------------------------- 8. monthly quota


def simulate_cli(tmp_path, settings: str, messages: str, rules: str, events: list[dict], until: str) -> list[tuple]:
    """``linerules simulate`` of ``events`` through a folder of these files: (at, friend, rule)."""
    folder = write_folder(tmp_path / "rules", settings=settings, messages=messages, rules=rules, rule_file="shop.rule")
    timeline = write_timeline(tmp_path / "timeline.jsonl", events)
    result = CliRunner().invoke(cli, ["simulate", str(timeline), "--rules", str(folder), "--until", until])
    assert result.exit_code == 0, result.output
    return [(p["at"], p["friend"], p["rule"]) for p in map(json.loads, result.stdout.splitlines())]


def test_monthly_quota_holds_the_overflow_for_the_next_month(tmp_path):
    pushes = simulate_cli(
        tmp_path,
        'timezone: Asia/Tokyo\nwindow: "09:00-21:00"\nmonthly_quota: 5\n',
        "weekly: 今週のおすすめ\n",
        'rule weekly when schedule "0 20 27 11 *" then send weekly\n',
        [{"type": "follow", "friend": f"U{i}", "at": "2026-11-01T10:00:00+09:00"} for i in range(8)],
        "2026-12-02T00:00:00+09:00",
    )
    assert [(at_, friend) for at_, friend, _rule in pushes] == (
        [("2026-11-27T20:00:00+09:00", f"U{i}") for i in range(5)]
        + [("2026-12-01T09:00:00+09:00", f"U{i}") for i in range(5, 8)]
    )


def test_an_answer_held_by_the_quota_waits_for_the_window_like_any_send(tmp_path):
    # two rules answer "help" at 22:00; the first takes the reply token (free), the second is a
    # push, and November's one message is used: held, it is no longer an answer of that
    # moment, so it goes at December's first opening (before: at 00:00, outside the window)
    pushes = simulate_cli(
        tmp_path,
        'timezone: Asia/Tokyo\nwindow: "09:00-21:00"\nmonthly_quota: 1\n',
        "m: x\nr: reply\nr2: reply2\n",
        'rule a when schedule "0 10 29 11 *" then send m\n'
        'rule kw when message "help" reenter always then send r\n'
        'rule kw2 when message "help" reenter always then send r2\n',
        [
            {"type": "follow", "friend": "U1", "at": "2026-11-29T08:00:00+09:00"},
            {"type": "message", "friend": "U1", "at": "2026-11-29T22:00:00+09:00", "text": "help"},
        ],
        "2026-12-02T00:00:00+09:00",
    )
    assert [(at_, rule) for at_, _friend, rule in pushes] == [
        ("2026-11-29T10:00:00+09:00", "a"),
        ("2026-11-29T22:00:00+09:00", "kw"),
        ("2026-12-01T09:00:00+09:00", "kw2"),
    ]


# ---------------------------------------------------------------- 9. click events


def test_click_events_count_for_clicked():
    p = compile_rules("""
        rule welcome when followed then
          send coupon15
          wait 1d
          send a unless clicked
        """)
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("follow", "U2", "2026-11-01 10:00"),
        ev("click", "U1", "2026-11-01 12:00", rule="welcome", message="coupon15"),
        ev("click", "U2", "2026-11-01 12:00", rule="other", message="coupon15"),
    ]
    assert run(p, events) == [
        ("2026-11-01 10:00:00", "U1", "welcome", ["coupon15"]),
        ("2026-11-01 10:00:00", "U2", "welcome", ["coupon15"]),
        ("2026-11-02 10:00:00", "U2", "welcome", ["a"]),
    ]


# ---------------------------------------------------------------- 10, 11. --render, event


def test_simulate_render_shows_what_each_friend_gets_with_the_event_fields(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "settings.yaml").write_text("timezone: Asia/Tokyo\nutm: false\n", encoding="utf-8")
    (folder / "messages.yaml").write_text(
        'shipping_notice: "{{ friend.display_name }}さん、発送しました: {{ event.tracking_url }}"\n', encoding="utf-8"
    )
    (folder / "shop.rule").write_text(
        "rule notice when event shipped uncapped reenter always then send shipping_notice\n", encoding="utf-8"
    )
    check = CliRunner().invoke(cli, ["validate", str(folder)])
    assert check.exit_code == 0 and "warning" not in check.output, check.output
    timeline = tmp_path / "timeline.jsonl"
    timeline.write_text(
        "\n".join(
            json.dumps(e, ensure_ascii=False)
            for e in [
                {"type": "follow", "friend": "U1", "at": "2026-11-01T10:00:00+09:00"},
                {
                    "type": "attributes",
                    "friend": "U1",
                    "at": "2026-11-01T10:00:00+09:00",
                    "set": {"display_name": "花子"},
                },
                {
                    "type": "shipped",
                    "friend": "U1",
                    "at": "2026-11-02T10:00:00+09:00",
                    "tracking_url": "https://track.example.jp/123",
                },
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        cli, ["simulate", str(timeline), "--rules", str(folder), "--render", "--until", "2026-11-03T00:00:00+09:00"]
    )
    assert result.exit_code == 0, result.output
    [push] = [json.loads(line) for line in result.stdout.splitlines()]
    assert push == {
        "at": "2026-11-02T10:00:00+09:00",
        "friend": "U1",
        "rule": "notice",
        "messages": ["shipping_notice"],
        "rendered": [{"type": "text", "text": "花子さん、発送しました: https://track.example.jp/123"}],
    }
    plain = CliRunner().invoke(
        cli, ["simulate", str(timeline), "--rules", str(folder), "--until", "2026-11-03T00:00:00+09:00"]
    )
    assert "rendered" not in plain.stdout


# ---------------------------------------------------------------- the dispatcher's holds


def held_row(fresh_db_path, ambiguous: bool):
    p = compile_rules("rule hi when followed then send greeting")
    store = Store(str(fresh_db_path))
    engine = Engine(p, store, clock=lambda: at("2026-11-01 10:00"))
    engine.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    [row] = store.claim_outbox(int(at("2026-11-01 10:00").timestamp()), 10)
    if ambiguous:
        store.conn.execute("UPDATE outbox SET ambiguous = 1 WHERE id = ?", (row["id"],))
    store.hold_outbox(row["id"], int(at("2026-11-02 09:00").timestamp()), error="quota")
    engine.apply_events([ev("unfollow", "U1", "2026-11-01 12:00")], received_at=0)
    engine.tick(at("2026-11-01 12:00"))
    engine.tick(at("2026-11-02 09:00"))
    return store, engine, row


def test_a_row_held_for_the_quota_is_decided_anew_when_it_is_due(fresh_db_path):
    store, _engine, row = held_row(fresh_db_path, ambiguous=False)
    assert store.claim_outbox(int(at("2026-11-02 09:00").timestamp()), 10) == []  # blocked meanwhile
    assert [(r["id"], r["status"]) for r in store.outbox()] == [(row["id"], "returned")]
    assert deliveries(fresh_db_path) == [("U1", "hi", '["greeting"]', "skipped", "blocked")]
    store.close()


def test_a_row_that_may_have_reached_line_goes_again_byte_identical(fresh_db_path):
    store, _engine, row = held_row(fresh_db_path, ambiguous=True)
    [again] = store.claim_outbox(int(at("2026-11-02 09:00").timestamp()), 10)
    assert (again["id"], again["retry_key"], again["payload"]) == (row["id"], row["retry_key"], row["payload"])
    store.close()


def test_a_message_that_fails_to_render_for_one_friend_is_recorded_and_the_others_get_theirs(fresh_db_path):
    hello = ir.MessageDef("coupon15", ({"type": "text", "text": "{{ friend.display_name }}さん"},))
    p = compile_rules(FLAGSHIP, settings=ir.Settings(window=WINDOW), messages={"coupon15": hello})
    events = night_follow(
        ev("follow", "U2", "2026-11-01 22:40", source="qr=shipping"),
        ev("attributes", "U2", "2026-11-03 08:00", set={"display_name": "長" * 5001}),
    )
    assert run(p, events, db_path=str(fresh_db_path)) == [("2026-11-03 09:00:00", "U1", "test", ["coupon15"])]
    [(friend, _rule, names, status, reason)] = [d for d in deliveries(fresh_db_path) if d[3] == "rejected"]
    assert (friend, names, status) == ("U2", '["coupon15"]', "rejected")
    assert "5000" in reason or "5,000" in reason


def test_sends_before_a_stop_go_out_even_when_the_window_defers_them():
    p = compile_rules(
        "rule r when event shipped reenter always then send a stop send b", settings=ir.Settings(window=WINDOW)
    )
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("shipped", "U1", "2026-11-01 12:00"),
        ev("shipped", "U1", "2026-11-01 22:00"),
    ]
    assert run(p, events) == [("2026-11-01 12:00:00", "U1", "r", ["a"]), ("2026-11-02 09:00:00", "U1", "r", ["a"])]


def test_a_handed_back_group_is_decided_step_by_step(fresh_db_path):
    p = compile_rules("rule hi when followed then send greeting send coupon15 if not purchased")
    store = Store(str(fresh_db_path))
    engine = Engine(p, store, clock=lambda: at("2026-11-01 10:00"))
    engine.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    [row] = store.claim_outbox(int(at("2026-11-01 10:00").timestamp()), 10)
    assert row["messages"] == ["greeting", "coupon15"]
    store.hold_outbox(row["id"], int(at("2026-11-02 09:00").timestamp()), error="429")
    engine.apply_events([ev("purchase", "U1", "2026-11-01 12:00", order_id="A-1", amount=100)], received_at=0)
    engine.tick(at("2026-11-01 12:00"))
    engine.tick(at("2026-11-02 09:00"))
    [again] = store.claim_outbox(int(at("2026-11-02 09:00").timestamp()), 10)
    assert again["messages"] == ["greeting"] and again["retry_key"] != row["retry_key"]
    store.close()


# ---------------------------------------------------------------- the friend's tags, by the key
def test_a_personalised_send_reads_the_tags_of_its_friends_alone():
    # a send rendered for its friend reads that friend's tags through the tags' key: once the
    # whole table was read in tag order to find them, at every tick, whatever its size
    hello = ir.MessageDef("hello", ({"type": "text", "text": "{{ friend.tags | join: ',' }}"},))
    store = Store(":memory:")
    engine = Engine(compile_rules("rule r when followed then send hello", messages={"hello": hello}), store)
    others = [ev("tag", f"U{i:03d}", "2026-11-01 09:00", add=["vip", f"t{i}"]) for i in range(300)]
    store.apply_events([*others, ev("tag", "U1", "2026-11-01 09:00", add=["gold", "autumn"])], received_at=0)
    engine.tick(at("2026-11-01 09:00"))
    store.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    engine.tick(at("2026-11-01 10:00"))
    store.conn.set_trace_callback(None)
    assert [(r["recipients"], r["payload"]) for r in store.outbox()] == [
        (["U1"], [{"type": "text", "text": "autumn,gold"}])
    ]
    reads = [sql for sql in statements if "JOIN tags" in sql]
    assert reads
    for sql in reads:
        plan = [row[3] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql)]
        assert "SEARCH t USING PRIMARY KEY (friend=?)" in plan, plan
    store.close()


# ---------------------------------------------------------------- one friend's sends in order
PERSONAL = {"hello": ir.MessageDef("hello", ({"type": "text", "text": "{{ friend.display_name | default: 'you' }}"},))}


def outbox_order(path) -> list[tuple]:
    """(recipients, message names) of every outbox row, in the order the dispatcher claims them."""
    store = Store(str(path))
    try:
        return [(tuple(r["recipients"]), tuple(r["messages"])) for r in store.outbox()]
    finally:
        store.close()


def test_a_friends_sends_released_together_go_in_the_order_they_were_queued(fresh_db_path):
    # The welcome (rendered for the friend) waits for the 09:00 opening from 22:30; the thank-you
    # (the same text for everyone), queued at 08:00, waits for the same opening. The welcome
    # goes first, though a send the same for everyone is written set-based.
    p = compile_rules(
        "rule greet when followed then send hello wait for purchased up to 2d send thanks if purchased",
        messages={**PERSONAL, "thanks": message("thanks")},
        settings=ir.Settings(window=WINDOW),
    )
    events = [
        ev("follow", "U1", "2026-11-01 22:30"),
        ev("purchase", "U1", "2026-11-02 08:00", order_id="A-1", amount=100),
    ]
    assert run(p, events, db_path=str(fresh_db_path)) == [
        ("2026-11-02 09:00:00", "U1", "greet", ["hello"]),
        ("2026-11-02 09:00:00", "U1", "greet", ["thanks"]),
    ]
    assert outbox_order(fresh_db_path) == [(("U1",), ("hello",)), (("U1",), ("thanks",))]


def test_the_order_holds_across_rules_and_friends_who_share_a_multicast(fresh_db_path):
    # At the 09:00 opening U1 has its welcome (personal, queued at 22:30), a notice (the same for
    # everyone, 06:00) and a second personal send (06:30); U4 a notice then a personal send.
    # Each gets them in that order; U2 and U3, whose one send is the notice, share it with U4.
    p = compile_rules(
        """
        rule welcome when followed then send hello
        rule notice when tagged autumn then send thanks
        rule more when tagged more then send hello
        """,
        messages={**PERSONAL, "thanks": message("thanks")},
        settings=ir.Settings(window=WINDOW),
    )

    def tag(friend: str, when: str, name: str):
        return ev("tag", friend, when, add=[name], remove=[])

    events = [
        ev("follow", "U1", "2026-11-01 22:30"),
        *(ev("follow", f, "2026-11-01 10:00") for f in ("U2", "U3", "U4")),
        tag("U4", "2026-11-01 23:00", "autumn"),
        tag("U4", "2026-11-01 23:30", "more"),
        *(tag(f, "2026-11-02 06:00", "autumn") for f in ("U1", "U2", "U3")),
        tag("U1", "2026-11-02 06:30", "more"),
    ]
    run(p, events, db_path=str(fresh_db_path))
    rows = outbox_order(fresh_db_path)
    assert [names for to, names in rows if "U1" in to] == [("hello",), ("thanks",), ("hello",)]
    assert [names for to, names in rows if "U4" in to] == [("hello",), ("thanks",), ("hello",)]
    # the notice is each one's first send but U1's: U2, U3 and U4 share one multicast
    assert [sorted(to) for to, names in rows if names == ("thanks",) and len(to) > 1] == [["U2", "U3", "U4"]]


def test_two_broadcasts_released_at_one_opening_stay_multicasts_in_order(fresh_db_path):
    # 600 friends, two schedules at 22:00 (the window is closed): at 09:00 every friend's first
    # send is the sale, the second the pick; each is still multicast, all the sale's rows first
    p = compile_rules(
        """
        rule sale when schedule "0 22 * * *" priority 1 then send sale_start
        rule pick when schedule "0 22 * * *" then send weekly_pick
        """,
        settings=ir.Settings(window=WINDOW),
    )
    events = [ev("follow", f"U{i:04d}", "2026-11-01 10:00") for i in range(600)]
    run(p, events, until="2026-11-02 10:00", db_path=str(fresh_db_path))
    rows = outbox_order(fresh_db_path)
    assert [(len(to), names) for to, names in rows] == [
        (500, ("sale_start",)),
        (100, ("sale_start",)),
        (500, ("weekly_pick",)),
        (100, ("weekly_pick",)),
    ]


def test_simulate_prints_a_friends_pushes_of_one_moment_in_the_order_they_go_out():
    # `welcome` queued at 22:30, `a_notice` at 06:00: at 09:00 the welcome goes first, and the
    # forecast says so (not in the rules' alphabetical order)
    p = compile_rules(
        """
        rule welcome when followed then send hello
        rule a_notice when tagged autumn then send thanks
        """,
        messages={**PERSONAL, "thanks": message("thanks")},
        settings=ir.Settings(window=WINDOW),
    )
    events = [
        ev("follow", "U1", "2026-11-01 22:30"),
        ev("tag", "U1", "2026-11-02 06:00", add=["autumn"], remove=[]),
    ]
    assert run(p, events) == [
        ("2026-11-02 09:00:00", "U1", "welcome", ["hello"]),
        ("2026-11-02 09:00:00", "U1", "a_notice", ["thanks"]),
    ]
