"""Consecutive sends become one push (at most five objects each); identical pushes to many
friends in one tick become multicasts of at most 500 recipients."""

from __future__ import annotations

from engine.language import ir
from engine.runtime.store import Store
from enginekit import compile_rules, ev, message, project, rule, run, send


def outbox(path) -> list[dict]:
    store = Store(str(path))
    try:
        return store.outbox()
    finally:
        store.close()


def test_consecutive_sends_coalesce_into_one_push(fresh_db_path):
    p = compile_rules("rule r when followed then send a, b tag x send c wait 1h send d")
    assert run(p, [ev("follow", "U1", "2026-11-01 10:00")], db_path=str(fresh_db_path)) == [
        ("2026-11-01 10:00:00", "U1", "r", ["a", "b", "c"]),
        ("2026-11-01 11:00:00", "U1", "r", ["d"]),
    ]
    rows = outbox(fresh_db_path)
    assert [len(r["payload"]) for r in rows] == [3, 1]


def test_more_than_five_objects_split_into_several_pushes_keeping_messages_whole(fresh_db_path):
    # `validate` rejects such a rule; the engine still never sends more than five objects
    p = project(
        rule("r", ir.Followed(), send("a", "b"), send("c", "d", "e"), send("f", "g")),
        messages={"b": message("b", 2), "d": message("d", 2)},
    )
    # objects: a=1, b=2, c=1, d=2, e=1, f=1, g=1 -> [a b c] (4) [d e f g] (5)
    assert run(p, [ev("follow", "U1", "2026-11-01 10:00")], db_path=str(fresh_db_path)) == [
        ("2026-11-01 10:00:00", "U1", "r", ["a", "b", "c"]),
        ("2026-11-01 10:00:00", "U1", "r", ["d", "e", "f", "g"]),
    ]
    rows = outbox(fresh_db_path)
    assert [(r["kind"], len(r["payload"])) for r in rows] == [("push", 4), ("push", 5)]
    assert all(len(r["payload"]) <= 5 for r in rows)


def test_identical_payloads_in_one_tick_go_as_one_multicast(fresh_db_path):
    p = compile_rules('rule weekly when schedule "0 20 * * 5" then send weekly_pick')
    friends = [f"U{i:03d}" for i in range(503)]
    pushes = run(
        p, [ev("follow", f, "2026-11-01 10:00") for f in friends], until="2026-11-07 00:00", db_path=str(fresh_db_path)
    )
    assert len(pushes) == 503 and {t for t, *_ in pushes} == {"2026-11-06 20:00:00"}
    rows = outbox(fresh_db_path)
    assert [(r["kind"], len(r["recipients"])) for r in rows] == [("multicast", 500), ("multicast", 3)]
    assert sorted(f for r in rows for f in r["recipients"]) == friends


def test_personalised_payloads_are_not_multicast(fresh_db_path):
    hello = ir.MessageDef("greeting", ({"type": "text", "text": "こんにちは {{ friend.display_name }}さん"},))
    p = compile_rules('rule weekly when schedule "0 20 * * 5" then send greeting', messages={"greeting": hello})
    events = [
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("follow", "U2", "2026-11-01 10:00"),
        ev("follow", "U3", "2026-11-01 10:00"),
        ev("attributes", "U1", "2026-11-01 10:01", set={"display_name": "花子"}),
        ev("attributes", "U2", "2026-11-01 10:01", set={"display_name": "花子"}),
        ev("attributes", "U3", "2026-11-01 10:01", set={"display_name": "太郎"}),
    ]
    run(p, events, until="2026-11-07 00:00", db_path=str(fresh_db_path))
    rows = outbox(fresh_db_path)
    assert sorted((r["kind"], tuple(r["recipients"]), r["payload"][0]["text"]) for r in rows) == [
        ("multicast", ("U1", "U2"), "こんにちは 花子さん"),
        ("push", ("U3",), "こんにちは 太郎さん"),
    ]


def test_each_friend_is_counted_once_in_the_delivery_log(fresh_db_path):
    p = project(rule("weekly", ir.ScheduleTrigger("0 20 * * 5"), send("a", "b", "c", "d", "e", "f")))
    run(
        p,
        [ev("follow", f, "2026-11-01 10:00") for f in ("U1", "U2")],
        until="2026-11-07 00:00",
        db_path=str(fresh_db_path),
    )
    store = Store(str(fresh_db_path))
    rows = store.conn.execute(
        "SELECT friend, outbox_id, status, counts_for_cap FROM deliveries ORDER BY friend, outbox_id"
    ).fetchall()
    store.close()
    assert [tuple(r) for r in rows] == [
        ("U1", 1, "sent", 1),
        ("U1", 2, "sent", 0),
        ("U2", 1, "sent", 1),
        ("U2", 2, "sent", 0),
    ]


def test_personalised_renders_alike_share_multicasts_each_friend_with_its_delivery_row(fresh_db_path):
    # 503 friends render the same greeting, one friend (U250) another: a multicast of 500, one of 3
    # and a push, in the order of each payload's first friend, every friend's delivery row on its row
    hello = ir.MessageDef("greeting", ({"type": "text", "text": "こんにちは {{ friend.display_name }}さん"},))
    p = compile_rules('rule weekly when schedule "0 20 * * 5" then send greeting', messages={"greeting": hello})
    friends = [f"U{i:03d}" for i in range(504)]
    events = [ev("follow", f, "2026-11-01 10:00") for f in friends] + [
        ev("attributes", f, "2026-11-01 10:01", set={"display_name": "太郎" if f == "U250" else "花子"})
        for f in friends
    ]
    run(p, events, until="2026-11-07 00:00", db_path=str(fresh_db_path))
    rows = outbox(fresh_db_path)
    assert [(r["kind"], len(r["recipients"]), r["payload"][0]["text"]) for r in rows] == [
        ("multicast", 500, "こんにちは 花子さん"),
        ("multicast", 3, "こんにちは 花子さん"),
        ("push", 1, "こんにちは 太郎さん"),
    ]
    assert rows[0]["recipients"] == [f for f in friends if f != "U250"][:500]
    assert rows[2]["recipients"] == ["U250"]
    store = Store(str(fresh_db_path))
    deliveries = store.conn.execute(
        "SELECT d.friend, d.outbox_id, d.rule, d.step_id, d.messages, d.counts_for_cap, o.recipients "
        "FROM deliveries d JOIN outbox o ON o.id = d.outbox_id ORDER BY d.id"
    ).fetchall()
    store.close()
    assert sorted(d[0] for d in deliveries) == friends
    assert [d[1] for d in deliveries] == sorted(d[1] for d in deliveries)  # in the order of their rows
    assert all(f'"{d[0]}"' in d[6] for d in deliveries)
    assert {(d[2], d[3], d[4], d[5]) for d in deliveries} == {("weekly", "send greeting", '["greeting"]', 1)}
