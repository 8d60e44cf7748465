"""The shop of the report tests: a rule folder, a timeline with purchases and clicks, and the
engine's run of it into a database file that ``linerules report`` reads."""

from __future__ import annotations

from pathlib import Path

import enginekit
from engine.language.project import load_project
from engine.runtime.simulate import run_timeline
from engine.runtime.store import Store
from enginekit import at, ev, write_folder

MESSAGES = (
    "greeting: ようこそ\ncoupon15: 15%OFF https://shop.example.jp/c\n"
    "coupon_reply: クーポンはこちら https://shop.example.jp/c\nweekly: 今週のおすすめ\n"
)
SETTINGS = 'timezone: Asia/Tokyo\nwindow: "09:00-21:00"\nmax_per_day: 1\nmonthly_quota: 100\nattribution_days: 7\n'
RULES = """
rule welcome
  when followed via qr=shipping
  exit when blocked
  then
    send greeting
    wait 1d
    send coupon15 if not purchased

rule answer when message "クーポン" reenter always then send coupon_reply

rule weekly when schedule "0 20 * * 0" then send weekly
"""
#: An A/B test with a holdout: half of the friends get variant a, half b, a fifth nothing.
SPLIT_RULES = """
rule promo
  when followed
  split a 50%, b 50%
  holdout 20%
  then
    send coupon15
"""
# 2026-11-01 and 2026-11-08 are Sundays: `weekly` sends at 20:00 to every current friend.
EVENTS = [
    ev("follow", "U1", "2026-11-01 10:00", source="qr=shipping"),
    ev("follow", "U2", "2026-11-01 11:00", source="qr=shipping"),
    ev("follow", "U3", "2026-11-01 12:00"),
    ev("purchase", "U1", "2026-11-02 09:00", order_id="A-1", amount=5400),
    ev("message", "U3", "2026-11-02 12:00", text="クーポンください", reply_token="rt-1"),
    ev("unfollow", "U2", "2026-11-03 08:00"),
    ev("purchase", "U4", "2026-11-05 10:00", order_id="A-2", amount=2000),
    ev("purchase", "U3", "2026-11-09 10:00", order_id="A-3", amount=3000),
    ev("follow", "U5", "2026-11-09 22:00", source="qr=shipping"),
]
CLICKS = [
    dict(
        friend="U2",
        rule="welcome",
        message="coupon15",
        url="https://shop.example.jp/c",
        at=int(at("2026-11-02 12:00").timestamp()),
    ),
    dict(
        friend="U3",
        rule="answer",
        message="coupon_reply",
        url="https://shop.example.jp/c",
        at=int(at("2026-11-02 12:05").timestamp()),
    ),
]


def make_folder(tmp_path: Path, rules: str = RULES, settings: str = SETTINGS) -> Path:
    """The shop's rule folder at ``tmp_path / "rules"`` (the database goes beside it)."""
    return write_folder(tmp_path / "rules", settings=settings, messages=MESSAGES, rules=rules, rule_file="shop.rule")


def simulate(folder: Path, events: list, until: str, clicks: list = ()) -> Path | str:
    """Run the timeline through the engine into a database (a file, or on PostgreSQL a new
    schema: see the ``backend`` fixture); then record the clicks."""
    loaded = load_project(folder)
    assert loaded.ok, loaded.diagnostics
    db = enginekit.NEW_DB() if enginekit.NEW_DB else folder.parent / "linerules.db"
    run_timeline(loaded.project, events, until=at(until), tick_seconds=3600, db_path=str(db))
    store = Store(str(db))
    for click in clicks:
        store.record_click(**click)
    store.close()
    return db


def split_test_events(friends: int, amount: int, *, unfollows: bool = False) -> list:
    """``friends`` follows on 2026-11-01 from 10:00, one a minute; every third friend buys for
    ``amount`` on 11-02; with ``unfollows``, every tenth (from U001) unfollows the same day and
    every tenth from U002 on 11-03."""
    events = []
    for i in range(friends):
        friend = f"U{i:03d}"
        events.append(ev("follow", friend, f"2026-11-01 {10 + i // 60:02d}:{i % 60:02d}"))
        if i % 3 == 0:
            events.append(ev("purchase", friend, "2026-11-02 09:00", order_id=f"O{i}", amount=amount))
        if unfollows and i % 10 == 1:
            events.append(ev("unfollow", friend, "2026-11-01 18:00"))
        if unfollows and i % 10 == 2:
            events.append(ev("unfollow", friend, "2026-11-03 09:00"))
    return events
