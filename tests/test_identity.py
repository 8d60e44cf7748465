"""The shop side through `linerules simulate` (SPEC §6, §8; docs/shop.md): customer links,
events naming the shop's customer, refunds, unlinking and a customer moving to another friend.
Timelines in, pushes out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.runtime.simulate import main
from enginekit import write_folder, write_timeline

SETTINGS = "timezone: Asia/Tokyo\n"
MESSAGES = """
thanks_order: ご注文ありがとうございます
linked_thanks: 会員連携ありがとうございます
vip_news: VIPのお知らせ
buyer_news: 購入者向けのお知らせ
refund_sorry: 返金しました
"""
RULES = """
rule thanks_order when purchased reenter always then send thanks_order
rule linked_thanks when linked then send linked_thanks
rule vip_news when schedule "0 12 * * *" then send vip_news if top 20% by spent within 365d
rule buyer_news when schedule "0 13 * * *" then send buyer_news if orders >= 1 and total_spent >= 1000
rule refund_sorry when event refund reenter always then send refund_sorry
"""
AT = "2026-11-0{day}T{hm}:00+09:00"


def at(day: int, hm: str) -> str:
    return AT.format(day=day, hm=hm)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "rules", settings=SETTINGS, messages=MESSAGES, rules=RULES, rule_file="shop.rule")


def simulate(folder: Path, tmp_path: Path, events: list[dict], until: str, capsys) -> list[tuple]:
    path = write_timeline(tmp_path / "timeline.jsonl", events)
    code = main(str(path), str(folder), until, "1h", None)
    out = capsys.readouterr()
    assert code == 0, out.err
    pushes = [json.loads(line) for line in out.out.splitlines()]
    return [(p["at"][5:16], p["friend"], p["rule"]) for p in pushes]


def follow(friend: str, when: str) -> dict:
    return {"type": "follow", "friend": friend, "at": when}


def purchase(who: dict, when: str, order_id: str, amount: int) -> dict:
    return {"type": "purchase", **who, "at": when, "order_id": order_id, "amount": amount}


def test_orders_of_an_unlinked_customer_are_kept_and_count_after_identify_without_firing(folder, tmp_path, capsys):
    events = [
        follow("U1", at(1, "10:00")),
        purchase({"customer": "Hanako@Example.jp"}, at(1, "11:00"), "A-1", 5400),  # not linked yet
        {"type": "identify", "friend": "U1", "at": at(2, "10:00"), "customer": "hanako@example.jp"},
        purchase({"customer": "hanako@example.jp"}, at(3, "10:00"), "A-2", 800),  # linked now
    ]
    pushes = simulate(folder, tmp_path, events, at(3, "14:00"), capsys)
    assert pushes == [
        # day 1: the kept order counts for nobody: no buyer news, and no thanks for A-1 ever
        ("11-02T10:00", "U1", "linked_thanks"),  # `when linked`, not `when purchased` for A-1
        ("11-02T13:00", "U1", "buyer_news"),  # A-1 counts from the link on (5400 yen)
        ("11-03T10:00", "U1", "thanks_order"),  # A-2 enters `when purchased`
        ("11-03T13:00", "U1", "buyer_news"),
    ]


def test_a_refund_drops_the_friend_out_of_top_20_percent(folder, tmp_path, capsys):
    friends = [f"U{i}" for i in range(1, 6)]
    events = [follow(f, at(1, "09:00")) for f in friends]
    events += [purchase({"friend": f}, at(1, "10:00"), f"B-{i}", 1000 * i) for i, f in enumerate(friends, 1)]
    # U5 spent most (5000); its order is refunded in part, leaving 500: U4 (4000) is the top 20% now
    events.append(
        {
            "type": "refund",
            "customer": "nobody@example.jp",
            "at": at(2, "09:00"),
            "order_id": "B-5",
            "amount": 4500,
            "id": "refund-1",
        }
    )
    pushes = [
        p for p in simulate(folder, tmp_path, events, at(2, "12:30"), capsys) if p[2] in ("vip_news", "refund_sorry")
    ]
    assert pushes == [
        ("11-01T12:00", "U5", "vip_news"),
        ("11-02T09:00", "U5", "refund_sorry"),  # `event refund` fires for the owner
        ("11-02T12:00", "U4", "vip_news"),
    ]


def test_a_cancelled_order_no_longer_counts_as_an_order(folder, tmp_path, capsys):
    events = [
        follow("U1", at(1, "09:00")),
        purchase({"friend": "U1"}, at(1, "10:00"), "C-1", 3000),
        {"type": "refund", "at": at(1, "15:00"), "order_id": "C-1"},
    ]  # no amount: cancelled
    pushes = [p for p in simulate(folder, tmp_path, events, at(2, "14:00"), capsys) if p[2] == "buyer_news"]
    assert pushes == [("11-01T13:00", "U1", "buyer_news")]  # not on day 2: no order, no spend


def test_unlink_takes_the_customers_orders_back_out_of_the_friend(folder, tmp_path, capsys):
    events = [
        follow("U1", at(1, "09:00")),
        {"type": "identify", "friend": "U1", "at": at(1, "09:30"), "customer": "C-1001"},
        purchase({"customer": "C-1001"}, at(1, "10:00"), "D-1", 3000),
        purchase({"friend": "U1"}, at(1, "10:30"), "D-2", 500),  # the friend's own order stays
        {"type": "unlink", "friend": "U1", "at": at(2, "09:00")},
    ]
    pushes = [p for p in simulate(folder, tmp_path, events, at(2, "14:00"), capsys) if p[2] == "buyer_news"]
    assert pushes == [("11-01T13:00", "U1", "buyer_news")]  # day 2: 1 order, 500 yen < 1000


def test_a_customer_linked_to_a_second_friend_moves_with_its_history(folder, tmp_path, capsys):
    events = [
        follow("U1", at(1, "09:00")),
        follow("U2", at(1, "09:00")),
        {"type": "identify", "friend": "U1", "at": at(1, "09:30"), "customer": "C-7"},
        purchase({"customer": "C-7"}, at(1, "10:00"), "E-1", 3000),
        {"type": "identify", "friend": "U2", "at": at(2, "09:00"), "customer": "C-7"},
    ]
    pushes = [
        p
        for p in simulate(folder, tmp_path, events, at(2, "14:00"), capsys)
        if p[2] in ("buyer_news", "linked_thanks", "thanks_order")
    ]
    assert pushes == [
        ("11-01T09:30", "U1", "linked_thanks"),
        ("11-01T10:00", "U1", "thanks_order"),
        ("11-01T13:00", "U1", "buyer_news"),
        ("11-02T09:00", "U2", "linked_thanks"),
        ("11-02T13:00", "U2", "buyer_news"),
    ]  # U1 no longer has the order


def test_a_friend_sending_an_order_number_in_chat_is_linked_to_its_customer(folder, tmp_path, capsys):
    number = "123456-20261101-0123456789"
    events = [
        follow("U1", at(1, "09:00")),
        follow("U2", at(1, "09:00")),
        purchase({"customer": "masked-1@pc.fw.rakuten.ne.jp"}, at(1, "10:00"), number, 2000),
        {"type": "message", "friend": "U1", "at": at(1, "20:00"), "text": f"注文番号は {number} です"},
        # another friend sending the same number does not take the link away
        {"type": "message", "friend": "U2", "at": at(1, "20:30"), "text": number},
    ]
    pushes = [
        p
        for p in simulate(folder, tmp_path, events, at(2, "14:00"), capsys)
        if p[2] in ("buyer_news", "linked_thanks", "thanks_order")
    ]
    assert pushes == [("11-01T20:00", "U1", "linked_thanks"), ("11-02T13:00", "U1", "buyer_news")]


def test_an_order_number_in_a_postback_links_too(folder, tmp_path, capsys):
    events = [
        follow("U1", at(1, "09:00")),
        purchase({"customer": "c-9"}, at(1, "10:00"), "#1009", 2000),
        {"type": "postback", "friend": "U1", "at": at(1, "20:00"), "data": "action=link&order_id=%231009"},
    ]
    pushes = [p for p in simulate(folder, tmp_path, events, at(1, "21:00"), capsys) if p[2] == "linked_thanks"]
    assert pushes == [("11-01T20:00", "U1", "linked_thanks")]


def test_a_shop_event_without_friend_or_customer_is_refused_with_the_field(folder, tmp_path):
    path = tmp_path / "timeline.jsonl"
    path.write_text(json.dumps({"type": "purchase", "at": at(1, "10:00"), "order_id": "X", "amount": 1}) + "\n")
    result = CliRunner().invoke(cli, ["simulate", str(path), "--rules", str(folder)])
    assert result.exit_code == 1
    err = result.stderr
    assert 'line 1: field "friend": is missing (name the LINE `friend` or the shop\'s `customer`)' in err


def test_a_refund_takes_its_amount_out_of_the_reports_revenue(folder, tmp_path, capsys):
    from engine.reports.report import main as report

    events = [
        follow("U1", at(1, "09:00")),
        purchase({"friend": "U1"}, at(1, "09:30"), "R-0", 2000),  # before any send: no conversion
        purchase({"friend": "U1"}, at(1, "14:00"), "R-1", 5000),  # converts for buyer_news (13:00)
        {"type": "refund", "friend": "U1", "at": at(2, "10:00"), "order_id": "R-1", "amount": 2000, "id": "refund-R-1"},
    ]

    def revenue(until: str) -> dict:
        db = tmp_path / f"{until[:10]}.db"
        path = write_timeline(tmp_path / "timeline.jsonl", [e for e in events if e["at"] <= until])
        assert main(str(path), str(folder), until, "1h", str(db)) == 0
        capsys.readouterr()
        assert report(str(db), str(folder), "json", None, None, None, []) == 0
        rules = json.loads(capsys.readouterr().out)["rules"]
        return {r["rule"]: r["revenue"] for r in rules if r["revenue"]}

    before = revenue(at(1, "23:00"))
    after = revenue(at(2, "23:00"))
    assert sum(before.values()) == 5000
    assert sum(after.values()) == 3000


def test_a_friend_linked_to_a_second_customer_lets_the_first_one_go(folder, tmp_path, capsys):
    events = [
        follow("U1", at(1, "09:00")),
        {"type": "identify", "friend": "U1", "at": at(1, "09:30"), "customer": "C-1"},
        purchase({"customer": "C-1"}, at(1, "10:00"), "F-1", 3000),
        {"type": "identify", "friend": "U1", "at": at(2, "09:00"), "customer": "C-2"},
        purchase({"customer": "C-1"}, at(2, "10:00"), "F-2", 3000),  # C-1 is nobody's now: kept
        {"type": "unlink", "customer": "C-2", "at": at(3, "09:00")},
        {"type": "identify", "friend": "U1", "at": at(3, "10:00"), "customer": "C-1"},
    ]
    pushes = [
        p
        for p in simulate(folder, tmp_path, events, at(3, "14:00"), capsys)
        if p[2] in ("buyer_news", "linked_thanks", "thanks_order")
    ]
    assert pushes == [
        ("11-01T09:30", "U1", "linked_thanks"),
        ("11-01T10:00", "U1", "thanks_order"),
        ("11-01T13:00", "U1", "buyer_news"),
        # day 2: linked to C-2, which has no orders: no buyer news, no thanks for F-2
        # day 3: back to C-1 (`linked` fires once per rule: reenter never), F-1 and F-2 count
        ("11-03T13:00", "U1", "buyer_news"),
    ]


@pytest.mark.parametrize(
    "word, right", [("linked", "identify"), ("unlinked", "unlink"), ("refunded", "refund"), ("cancelled", "refund")]
)
def test_shop_words_as_event_types_are_refused_with_the_right_name(folder, tmp_path, word, right):
    # a custom `linked` event would otherwise enter `when linked` rules without any link
    path = tmp_path / "timeline.jsonl"
    path.write_text(json.dumps({"type": word, "friend": "U1", "at": at(1, "10:00")}) + "\n")
    result = CliRunner().invoke(cli, ["simulate", str(path), "--rules", str(folder)])
    assert result.exit_code == 1
    assert f"(did you mean `{right}`?)" in result.stderr


def test_an_order_number_typed_with_japanese_dashes_links(folder, tmp_path, capsys):
    number = "123456-20261101-0123456789"
    events = [
        follow("U1", at(1, "09:00")),
        purchase({"customer": "masked-1@pc.fw.rakuten.ne.jp"}, at(1, "10:00"), number, 2000),
        # typed on a phone's kana keyboard: full-width digits and the long-vowel mark for "-"
        {
            "type": "message",
            "friend": "U1",
            "at": at(1, "20:00"),
            "text": "１２３４５６ー２０２６１１０１−０１２３４５６７８９",
        },
    ]
    pushes = [p for p in simulate(folder, tmp_path, events, at(1, "21:00"), capsys) if p[2] == "linked_thanks"]
    assert pushes == [("11-01T20:00", "U1", "linked_thanks")]
