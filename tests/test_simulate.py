"""``linerules simulate`` (SPEC §5): output format, clock, errors, --db."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.runtime.simulate import main
from engine.runtime.store import Store
from enginekit import write_folder, write_timeline

SETTINGS = 'timezone: Asia/Tokyo\nwindow: "09:00-21:00"\nmax_per_day: 2\n'
MESSAGES = "greeting: こんにちは\ncoupon15: 15%OFFクーポン\nweekly: 今週のおすすめ\nthanks: ありがとう\n"
RULES = """
rule welcome
  when followed via qr=shipping
  then
    send greeting
    wait 1d
    send coupon15 if not purchased

rule weekly when schedule "0 20 * * 5" then send weekly

rule thanks when message "ありがとう" reenter always then send thanks
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "rules", settings=SETTINGS, messages=MESSAGES, rules=RULES, rule_file="shop.rule")


def simulate(events: str, folder: Path, *options: str) -> tuple[int, str, str]:
    """``linerules simulate EVENTS --rules FOLDER ...``: (exit status, stdout, stderr)."""
    result = CliRunner().invoke(cli, ["simulate", events, "--rules", str(folder), *options], prog_name="linerules")
    return result.exit_code, result.stdout, result.stderr


def timeline(tmp_path: Path, *events: dict) -> str:
    return str(write_timeline(tmp_path / "timeline.jsonl", events))


EVENTS = (
    {"type": "follow", "friend": "U1", "at": "2026-11-05T20:30:00+09:00", "source": "qr=shipping"},
    {"type": "follow", "friend": "U2", "at": "2026-11-05T13:00:00Z", "source": "qr=shipping"},
    {"type": "purchase", "friend": "U2", "at": "2026-11-06T09:00:00+09:00", "order_id": "A-1", "amount": 5400},
    {"type": "message", "friend": "U2", "at": "2026-11-06T23:00:00+09:00", "text": "ありがとう！"},
)


def test_prints_one_json_line_per_push_in_time_order(folder, tmp_path, capsys):
    code = main(timeline(tmp_path, *EVENTS), str(folder), "2026-11-14T00:00:00+09:00", "1h", None)
    out = capsys.readouterr().out
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"at": "2026-11-05T20:30:00+09:00", "friend": "U1", "rule": "welcome", "messages": ["greeting"]},
        {"at": "2026-11-06T09:00:00+09:00", "friend": "U2", "rule": "welcome", "messages": ["greeting"]},
        {"at": "2026-11-06T20:00:00+09:00", "friend": "U1", "rule": "weekly", "messages": ["weekly"]},
        {"at": "2026-11-06T20:00:00+09:00", "friend": "U2", "rule": "weekly", "messages": ["weekly"]},
        {"at": "2026-11-06T20:30:00+09:00", "friend": "U1", "rule": "welcome", "messages": ["coupon15"]},
        {"at": "2026-11-06T23:00:00+09:00", "friend": "U2", "rule": "thanks", "messages": ["thanks"]},
        {"at": "2026-11-13T20:00:00+09:00", "friend": "U1", "rule": "weekly", "messages": ["weekly"]},
        {"at": "2026-11-13T20:00:00+09:00", "friend": "U2", "rule": "weekly", "messages": ["weekly"]},
    ]
    assert "ありがとう" not in out  # message names, not their texts


def test_default_until_is_thirty_days_after_the_last_event(folder, tmp_path, capsys):
    events = ({"type": "follow", "friend": "U1", "at": "2026-11-01T10:00:00+09:00"},)
    assert main(timeline(tmp_path, *events), str(folder), None, "1d", None) == 0
    fridays = [json.loads(line)["at"] for line in capsys.readouterr().out.splitlines()]
    assert fridays == [
        "2026-11-06T20:00:00+09:00",
        "2026-11-13T20:00:00+09:00",
        "2026-11-20T20:00:00+09:00",
        "2026-11-27T20:00:00+09:00",
    ]  # 12-01 10:00 is the end


def test_db_keeps_the_simulated_database_and_replaces_an_earlier_one(folder, tmp_path, capsys, fresh_db_path):
    db = fresh_db_path  # a file, or a PostgreSQL schema
    path = timeline(tmp_path, *EVENTS)
    assert main(path, str(folder), "2026-11-07T00:00:00+09:00", "1h", str(db)) == 0
    assert main(path, str(folder), "2026-11-07T00:00:00+09:00", "1h", str(db)) == 0
    store = Store(str(db))
    rows = [(r["kind"], r["status"]) for r in store.outbox()]
    sent = store.conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'").fetchone()[0]
    store.close()
    # U1's greeting (sent at once after the follow) and the answer to U2 go as free replies
    assert sorted(rows) == ([("multicast", "sent")] + [("push", "sent")] * 2 + [("reply", "sent")] * 2) and sent == 6
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    code, _, err = simulate(path, folder, "--db", str(other))
    assert code == 1
    assert "not a linerules database" in err and other.read_text() == "keep me"


def test_db_never_replaces_a_runners_database(folder, tmp_path, fresh_db_path):
    live = fresh_db_path
    store = Store(str(live))
    store.set_meta("login.last_join", "1")
    store.close()
    code, out, err = simulate(timeline(tmp_path, *EVENTS), folder, "--db", str(live))
    assert (code, out) == (1, "")
    assert err == (
        f"error: --db: {live} is a linerules database that no simulation made (a "
        "runner's?); it is never replaced: choose another file\n"
    )
    store = Store(str(live))
    assert store.get_meta("login.last_join") == "1"
    store.close()


def test_malformed_event_names_line_and_field(folder, tmp_path, capsys):
    path = timeline(tmp_path, EVENTS[0], {"type": "follow", "friend": "U2", "at": "2026-11-05 10:00"})
    code, _, err = simulate(path, folder)
    assert code == 1
    assert "line 2" in err and "at" in err and "offset" in err


def test_invalid_rules_print_diagnostics(folder, tmp_path, capsys):
    (folder / "broken.rule").write_text("rule broken when followed then send coupon51\n", encoding="utf-8")
    code, _, err = simulate(timeline(tmp_path, *EVENTS), folder)
    assert code == 1
    assert "broken.rule:1:" in err and "coupon51" in err and "^" in err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--until", "2026-11-14T00:00:00"], "Error: --until: `2026-11-14T00:00:00` needs a UTC offset"),
        (["--until", "next week"], "Error: --until: `next week` is not an ISO 8601 time"),
        (["--tick", "soon"], "Error: Invalid value for '--tick': `soon` is not a duration"),
        (["--tick", "0m"], "Error: Invalid value for '--tick': `0m` is shorter than"),
    ],
)
def test_bad_options_are_usage_errors(folder, tmp_path, options, message):
    code, out, err = simulate(timeline(tmp_path, *EVENTS), folder, *options)
    assert (code, out) == (2, "")
    assert err.startswith("Usage: linerules simulate [OPTIONS] EVENTS\n") and message in err


@pytest.mark.parametrize("tick", ["3600", "1h", "60m"])
def test_tick_takes_seconds_or_a_duration(folder, tmp_path, tick):
    code, out, _ = simulate(timeline(tmp_path, *EVENTS), folder, "--tick", tick, "--until", "2026-11-07T00:00:00+09:00")
    assert code == 0 and len(out.splitlines()) == 6


def test_the_cli_runs_it(folder, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "simulate",
            timeline(tmp_path, *EVENTS[:1]),
            "--rules",
            str(folder),
            "--until",
            "2026-11-06T00:00:00+09:00",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        '{"at": "2026-11-05T20:30:00+09:00", "friend": "U1", "rule": "welcome", "messages": ["greeting"]}\n'
    )


def test_an_item_quantity_written_as_2_0_counts_as_2_and_1_5_is_refused_with_its_value(folder, tmp_path, capsys):
    follow = {"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00"}

    def buy(quantity):
        return {
            "type": "purchase",
            "friend": "U1",
            "at": "2026-11-05T11:00:00+09:00",
            "order_id": "A-1",
            "amount": 5400,
            "items": [{"product": "SKU1", "price": 2700, "quantity": quantity}],
        }

    until = "2026-11-06T00:00:00+09:00"
    assert main(timeline(tmp_path, follow, buy(2.0)), str(folder), until, "1h", None) == 0
    capsys.readouterr()
    code, _, err = simulate(timeline(tmp_path, follow, buy(1.5)), folder, "--until", until)
    assert code == 1
    assert 'line 2: field "items[0].quantity": must be a whole number, got 1.5' in err


def test_a_filter_that_fails_on_one_friends_value_is_reported_in_words_and_others_still_get_theirs(
    folder, tmp_path, capsys, caplog
):
    (folder / "messages.yaml").write_text('points: "{{ friend.points | round }} pt"\n', encoding="utf-8")
    (folder / "shop.rule").write_text("rule points when event notify then send points\n", encoding="utf-8")
    at = "2026-11-05T10:00:00+09:00"
    events = [{"type": "follow", "friend": f, "at": at} for f in ("U1", "U2")] + [
        {"type": "attributes", "friend": "U1", "at": at, "set": {"points": "nan"}},
        {"type": "attributes", "friend": "U2", "at": at, "set": {"points": "12.6"}},
        {"type": "notify", "friend": "U1", "at": "2026-11-05T11:00:00+09:00"},
        {"type": "notify", "friend": "U2", "at": "2026-11-05T11:00:00+09:00"},
    ]
    assert main(timeline(tmp_path, *events), str(folder), "2026-11-06T00:00:00+09:00", "1h", None, "en") == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["friend"] for line in out.splitlines()] == ["U2"]
    assert err == (
        "warning: 2026-11-05T11:00:00+09:00: rule `points`: message `points` was not sent to U1: template error "
        "in object 1, text: a filter cannot handle this friend's value (cannot convert float NaN to integer)\n"
    )
    # in the folder's language, or --lang's
    assert main(timeline(tmp_path, *events), str(folder), "2026-11-06T00:00:00+09:00", "1h", None, "ja") == 0
    assert capsys.readouterr().err == (
        "警告: 2026-11-05T11:00:00+09:00: ルール `points`: メッセージ `points` を U1 に送れませんでした: "
        "テンプレートの誤り (1番目のオブジェクトの text): この友だちの値はフィルターで扱えません "
        "(cannot convert float NaN to integer)\n"
    )


def test_an_empty_file_as_db_becomes_the_simulated_database(folder, tmp_path, capsys):
    db = tmp_path / "empty.db"
    db.write_bytes(b"")  # made by `touch`, as the runner takes it
    events = timeline(tmp_path, {"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00"})
    assert main(events, str(folder), "2026-11-06T00:00:00+09:00", "1h", str(db)) == 0
    capsys.readouterr()
    assert db.stat().st_size > 0


def test_a_db_that_cannot_be_created_is_one_error_line_not_a_traceback(folder, tmp_path):
    events = timeline(tmp_path, {"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00"})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "simulate",
            events,
            "--rules",
            str(folder),
            "--db",
            str(tmp_path / "no" / "such" / "folder" / "f.db"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: --db: cannot open the database ") and "Traceback" not in proc.stderr


def test_events_after_until_are_said_to_be_left_out(folder, tmp_path, capsys):
    events = timeline(
        tmp_path,
        {"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00", "source": "qr=shipping"},
        {"type": "follow", "friend": "U2", "at": "2026-11-07T10:00:00+09:00"},
    )
    assert main(events, str(folder), "2026-11-06T00:00:00+09:00", "1h", None) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["friend"] for line in captured.out.splitlines()] == ["U1"]
    assert "warning: 1 of 2 events are after --until 2026-11-06T00:00:00+09:00 and are not replayed" in captured.err


def test_a_timeline_saved_as_shift_jis_is_one_clear_line(folder, tmp_path, capsys):
    path = tmp_path / "sj.jsonl"
    path.write_bytes(
        json.dumps(
            {"type": "message", "friend": "U1", "at": "2026-11-05T10:00:00+09:00", "text": "クーポン"},
            ensure_ascii=False,
        ).encode("cp932")
    )
    code, _, err = simulate(str(path), folder)
    assert code == 1
    assert err.endswith("sj.jsonl: the file is not UTF-8 text; save it as UTF-8\n")


def test_a_message_that_fails_for_everyone_says_so_instead_of_naming_no_friend(folder, tmp_path, capsys):
    (folder / "messages.yaml").write_text("""big: "{{ (1..1000000000) | join: ',' }}"\n""", encoding="utf-8")
    (folder / "shop.rule").write_text("rule big when event notify then send big\n", encoding="utf-8")
    events = [
        {"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00"},
        {"type": "notify", "friend": "U1", "at": "2026-11-05T11:00:00+09:00"},
    ]
    assert main(timeline(tmp_path, *events), str(folder), "2026-11-06T00:00:00+09:00", "1h", None, "en") == 0
    err = capsys.readouterr().err
    assert "rule `big`: message `big` was not sent to anyone it was due for: " in err
    assert "sent to None" not in err and "sent to :" not in err


def test_a_condition_that_time_alone_makes_true_fires_at_its_condition_tick(tmp_path, capsys):
    """Condition ticks that would enter nobody are skipped; the first one at or after the moment
    time alone makes the condition true still runs, and so does the last one of the run (the
    database keeps it as the last tick)."""
    import datetime as dt

    from engine.interpreter import Engine

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "settings.yaml").write_text(SETTINGS, encoding="utf-8")
    (rules / "messages.yaml").write_text("thanks: ありがとう\n", encoding="utf-8")
    (rules / "loyal.rule").write_text(
        "rule loyal\n  when friend for 30d and orders = 0\n  then\n    send thanks\n", encoding="utf-8"
    )
    events = (
        {"type": "follow", "friend": "U1", "at": "2026-11-01T10:20:00+09:00"},
        {"type": "follow", "friend": "U2", "at": "2026-11-03T07:05:00+09:00"},
        {"type": "purchase", "friend": "U2", "at": "2026-11-04T12:00:00+09:00", "order_id": "B-1", "amount": 900},
    )
    db = tmp_path / "forecast.db"
    ticks = []
    original = Engine.tick

    def counted(self, now, **kw):
        ticks.append(now)
        return original(self, now, **kw)

    Engine.tick = counted
    try:
        code = main(timeline(tmp_path, *events), str(rules), "2027-02-01T00:30:00+09:00", "1h", str(db))
    finally:
        Engine.tick = original
    out = capsys.readouterr().out
    assert code == 0
    # U1 is a friend for 30 days at 2026-12-01 10:20: the condition tick at 11:00 enters them and
    # the push goes at once (inside the window). U2 has an order: never.
    assert [json.loads(line) for line in out.splitlines()] == [
        {"at": "2026-12-01T11:00:00+09:00", "friend": "U1", "rule": "loyal", "messages": ["thanks"]}
    ]
    store = Store(str(db))
    try:
        last_tick = int(store.get_meta("engine.last_tick"))
    finally:
        store.close()
    tz = dt.timezone(dt.timedelta(hours=9))
    assert dt.datetime.fromtimestamp(last_tick, tz).isoformat() == "2027-02-01T00:00:00+09:00"
    assert len(ticks) < 100  # not one per hour of the three months (2,200)


def test_a_purchase_at_a_condition_tick_is_seen_by_that_tick(tmp_path, capsys):
    """A stop of the clock is one transaction (``Store.batch``): the condition check at the
    stop still sees what the stop's events changed, as it would after their own commit, so a
    friend who orders at 12:00 sharp, on a condition tick, is thanked at 12:00, not an hour later."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "settings.yaml").write_text(SETTINGS, encoding="utf-8")
    (rules / "messages.yaml").write_text("thanks: ありがとう\n", encoding="utf-8")
    (rules / "buyers.rule").write_text("rule buyers\n  when orders >= 1\n  then\n    send thanks\n", encoding="utf-8")
    events = (
        {"type": "follow", "friend": "U1", "at": "2026-11-01T10:20:00+09:00"},
        {"type": "purchase", "friend": "U1", "at": "2026-11-01T12:00:00+09:00", "order_id": "C-1", "amount": 900},
        {"type": "follow", "friend": "U2", "at": "2026-11-01T10:30:00+09:00"},
        {"type": "purchase", "friend": "U2", "at": "2026-11-01T12:00:01+09:00", "order_id": "C-2", "amount": 900},
    )
    code = main(timeline(tmp_path, *events), str(rules), "2026-11-02T00:00:00+09:00", "1h", None)
    assert code == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"at": "2026-11-01T12:00:00+09:00", "friend": "U1", "rule": "buyers", "messages": ["thanks"]},
        {"at": "2026-11-01T13:00:00+09:00", "friend": "U2", "rule": "buyers", "messages": ["thanks"]},
    ]
