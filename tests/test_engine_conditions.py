"""SPEC §2.3: every condition, evaluated for friends in different states (exact pushes)."""

from __future__ import annotations

from engine.interpreter import Engine
from engine.language import ir
from engine.runtime.store import Store
from enginekit import at, ev, project, rule, run, send, wait

D = 86400
M = ir.Measure

#: U1: an active shipping-QR customer; U2: a new friend who never bought; U3: a lapsed buyer;
#: U4: blocked.
POPULATION = [
    ev("follow", "U1", "2026-10-01 10:00", source="qr=shipping"),
    ev(
        "attributes", "U1", "2026-10-01 10:01", set={"display_name": "花子", "language": "ja", "gender": "f", "age": 30}
    ),
    ev(
        "purchase",
        "U1",
        "2026-10-05 12:00",
        order_id="A-1",
        amount=60000,
        items=[{"product": "SKU1", "category": "cosmetics", "price": 60000, "quantity": 1}],
    ),
    ev("view", "U1", "2026-10-06 12:00", product="SKU1"),
    ev("cart", "U1", "2026-10-06 12:01", product="SKU2"),
    ev("tag", "U1", "2026-10-07 12:00", add=["vip"], remove=[]),
    ev("follow", "U2", "2026-11-01 10:00"),
    ev("attributes", "U2", "2026-11-01 10:01", set={"age": "thirty"}),  # text where U1 has a number
    ev("follow", "U3", "2026-06-01 10:00"),
    ev(
        "purchase",
        "U3",
        "2026-07-01 10:00",
        order_id="A-3",
        amount=1000,
        items=[{"product": "SKU3", "category": "food", "price": 500, "quantity": 2}],
    ),
    ev("follow", "U4", "2026-11-01 10:00"),
    ev("unfollow", "U4", "2026-11-02 10:00"),
]
CHECK = [ev("check", f, "2026-11-10 10:00") for f in ("U1", "U2", "U3", "U4")]

CASES = {
    "purchased_within": (ir.Activity("purchase", within=60 * D), {"U1"}),
    "purchased_product": (ir.Activity("purchase", product="SKU1", within=60 * D), {"U1"}),
    "purchased_category": (ir.Activity("purchase", category="food", within=365 * D), {"U3"}),
    "purchased_category_old": (ir.Activity("purchase", category="food", within=30 * D), set()),
    "viewed": (ir.Activity("view", product="SKU1", within=60 * D), {"U1"}),
    "carted": (ir.Activity("cart", within=60 * D), {"U1"}),
    "viewed_old": (ir.Activity("view", product="SKU1", within=30 * D), set()),
    "carted_product": (ir.Activity("cart", product="SKU9", within=30 * D), set()),
    "tagged": (ir.Tagged("vip"), {"U1"}),
    "not_blocked": (ir.Not(ir.Blocked()), {"U1", "U2", "U3"}),
    "via": (ir.FollowedVia((("qr", "shipping"),)), {"U1"}),
    "friend_for": (ir.FriendFor(30 * D, "for"), {"U1", "U3"}),
    "friend_within": (ir.FriendFor(30 * D, "within"), {"U2"}),
    "lapsed": (ir.LastPurchaseOlder(90 * D), {"U3"}),
    "never": (ir.NeverPurchased(), {"U2"}),
    "orders": (ir.Compare(M("orders"), ">=", 1), {"U1", "U3"}),
    "total_spent": (ir.Compare(M("total_spent"), ">", 50000), {"U1"}),
    "spent_year": (ir.Compare(M("spent", 365 * D), ">=", 1000), {"U1", "U3"}),
    "spent_60d": (ir.Compare(M("spent", 60 * D), ">=", 1000), {"U1"}),
    "display_name": (ir.Compare(M("display_name"), "=", "花子"), {"U1"}),
    "language": (ir.Compare(M("language"), "!=", "ja"), {"U2", "U3"}),
    "custom_string": (ir.Compare(M("gender"), "=", "f"), {"U1"}),
    "custom_number": (ir.Compare(M("age"), ">=", 20), {"U1"}),
    "custom_missing": (ir.Compare(M("age"), "<", 20), set()),
    # a value of the other kind (text against a number) is neither equal nor ordered: only != holds
    "custom_text_is_no_number": (ir.Compare(M("age"), "!=", 30), {"U2", "U3"}),
    "custom_text_equal": (ir.Compare(M("age"), "=", "thirty"), {"U2"}),
    "custom_text_ordered": (ir.Compare(M("age"), ">", "a"), {"U2"}),
    "name_is_no_number": (ir.Compare(M("display_name"), ">", 5), set()),
    "top": (ir.Top(50, M("spent", 365 * D)), {"U1"}),
    "segment": (ir.InSegment("vip"), {"U1"}),
    "logic": (
        ir.All((ir.AnyOf((ir.Tagged("vip"), ir.NeverPurchased())), ir.Not(ir.FriendFor(30 * D, "within")))),
        {"U1"},
    ),
}


def test_every_condition_row():
    vip = ir.Segment("vip", ir.All((ir.Compare(M("orders"), ">=", 1), ir.Tagged("vip"))))
    rules = [rule(name, ir.CustomEventTrigger("check"), send("a", cond=cond)) for name, (cond, _) in CASES.items()]
    pushes = run(project(*rules, segments={"vip": vip}), POPULATION + CHECK, until="2026-11-11 00:00")
    assert all(p[0] == "2026-11-10 10:00:00" and p[3] == ["a"] for p in pushes)
    got = {name: {p[1] for p in pushes if p[2] == name} for name in CASES}
    assert got == {name: expected for name, (_, expected) in CASES.items()}


def test_purchased_means_since_entering_the_rule():
    p = project(
        rule(
            "welcome",
            ir.Followed(),
            wait(D),
            send("coupon15", cond=ir.Not(ir.Activity("purchase"))),
            send("review_request", cond=ir.Activity("purchase")),
        )
    )
    events = [
        ev("purchase", "U1", "2026-10-01 10:00", order_id="A-0", amount=1),  # before following
        ev("follow", "U1", "2026-11-01 10:00"),
        ev("follow", "U2", "2026-11-01 10:00"),
        ev("purchase", "U2", "2026-11-01 18:00", order_id="A-1", amount=1),
    ]
    assert run(p, events) == [
        ("2026-11-02 10:00:00", "U1", "welcome", ["coupon15"]),
        ("2026-11-02 10:00:00", "U2", "welcome", ["review_request"]),
    ]


def test_clicked_counts_links_of_this_rule_since_entry_or_within(fresh_db_path):
    p = project(
        rule(
            "promo",
            ir.Followed(),
            wait(D),
            send("a", cond=ir.Activity("click")),
            send("b", cond=ir.Activity("click", within=3600)),
        )
    )
    store = Store(str(fresh_db_path))
    engine = Engine(p, store, clock=lambda: at("2026-11-01 10:00"))
    store.apply_events([ev("follow", f, "2026-11-01 10:00") for f in ("U1", "U2", "U3")], received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    store.record_click(
        friend="U1",
        rule="promo",
        message="m",
        url="https://shop.example.jp/",
        at=int(at("2026-11-02 09:30").timestamp()),
    )
    store.record_click(
        friend="U2",
        rule="promo",
        message="m",
        url="https://shop.example.jp/",
        at=int(at("2026-11-01 12:00").timestamp()),
    )
    store.record_click(
        friend="U3",
        rule="another",
        message="m",
        url="https://shop.example.jp/",
        at=int(at("2026-11-02 09:30").timestamp()),
    )
    engine.tick(at("2026-11-02 10:00"))
    assert [(r["recipients"], r["messages"]) for r in store.outbox()] == [(["U1"], ["a", "b"]), (["U2"], ["a"])]
    store.close()
