"""``linerules simulate`` (SPEC §5): output format, clock, errors, --db."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.runtime.simulate import main
from engine.runtime.store import Store
from enginekit import write_folder, write_timeline

SETTINGS = "timezone: Asia/Tokyo\nwindow: \"09:00-21:00\"\nmax_per_day: 2\n"
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
    return write_folder(tmp_path / "rules", settings=SETTINGS, messages=MESSAGES, rules=RULES,
                        rule_file="shop.rule")


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
    assert "ありがとう" not in out   # message names, not their texts


def test_default_until_is_thirty_days_after_the_last_event(folder, tmp_path, capsys):
    events = ({"type": "follow", "friend": "U1", "at": "2026-11-01T10:00:00+09:00"},)
    assert main(timeline(tmp_path, *events), str(folder), None, "1d", None) == 0
    fridays = [json.loads(line)["at"] for line in capsys.readouterr().out.splitlines()]
    assert fridays == ["2026-11-06T20:00:00+09:00", "2026-11-13T20:00:00+09:00",
                       "2026-11-20T20:00:00+09:00", "2026-11-27T20:00:00+09:00"]  # 12-01 10:00 is the end


def test_db_keeps_the_simulated_database_and_replaces_an_earlier_one(folder, tmp_path, capsys):
    db = tmp_path / "forecast.db"
    path = timeline(tmp_path, *EVENTS)
    assert main(path, str(folder), "2026-11-07T00:00:00+09:00", "1h", str(db)) == 0
    assert main(path, str(folder), "2026-11-07T00:00:00+09:00", "1h", str(db)) == 0
    store = Store(str(db))
    rows = [(r["kind"], r["status"]) for r in store.outbox()]
    sent = store.conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'").fetchone()[0]
    store.close()
    # U1's greeting (sent at once after the follow) and the answer to U2 go as free replies
    assert sorted(rows) == ([("multicast", "sent")] + [("push", "sent")] * 2
                            + [("reply", "sent")] * 2) and sent == 6
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    assert main(path, str(folder), None, "1h", str(other)) == 1
    assert "not a linerules database" in capsys.readouterr().err and other.read_text() == "keep me"


def test_malformed_event_names_line_and_field(folder, tmp_path, capsys):
    path = timeline(tmp_path, EVENTS[0], {"type": "follow", "friend": "U2", "at": "2026-11-05 10:00"})
    assert main(path, str(folder), None, "1h", None) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "at" in err and "offset" in err


def test_invalid_rules_print_diagnostics(folder, tmp_path, capsys):
    (folder / "broken.rule").write_text("rule broken when followed then send coupon51\n", encoding="utf-8")
    assert main(timeline(tmp_path, *EVENTS), str(folder), None, "1h", None) == 1
    err = capsys.readouterr().err
    assert "broken.rule:1:" in err and "coupon51" in err and "^" in err


@pytest.mark.parametrize("until, tick, message", [
    ("2026-11-14T00:00:00", "1h", "needs a UTC offset"),
    ("next week", "1h", "not an ISO 8601 time"),
    (None, "soon", "not a duration"),
    (None, "0m", "longer than 0s"),
])
def test_bad_options_are_one_clear_line(folder, tmp_path, capsys, until, tick, message):
    assert main(timeline(tmp_path, *EVENTS), str(folder), until, tick, None) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_cli_runs_it(folder, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "simulate", timeline(tmp_path, *EVENTS[:1]),
                           "--rules", str(folder), "--until", "2026-11-06T00:00:00+09:00"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ('{"at": "2026-11-05T20:30:00+09:00", "friend": "U1", "rule": "welcome", '
                           '"messages": ["greeting"]}\n')


def test_an_item_quantity_written_as_2_0_counts_as_2_and_1_5_is_refused_with_its_value(folder, tmp_path, capsys):
    follow = {"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00"}
    def buy(quantity):
        return {"type": "purchase", "friend": "U1", "at": "2026-11-05T11:00:00+09:00", "order_id": "A-1",
                "amount": 5400, "items": [{"product": "SKU1", "price": 2700, "quantity": quantity}]}
    until = "2026-11-06T00:00:00+09:00"
    assert main(timeline(tmp_path, follow, buy(2.0)), str(folder), until, "1h", None) == 0
    capsys.readouterr()
    assert main(timeline(tmp_path, follow, buy(1.5)), str(folder), until, "1h", None) == 1
    assert 'line 2: field "items[0].quantity": must be a whole number, got 1.5' in capsys.readouterr().err


def test_a_filter_that_fails_on_one_friends_value_is_reported_in_words_and_others_still_get_theirs(
        folder, tmp_path, capsys, caplog):
    (folder / "messages.yaml").write_text('points: "{{ friend.points | round }} pt"\n', encoding="utf-8")
    (folder / "shop.rule").write_text("rule points when event notify then send points\n", encoding="utf-8")
    at = "2026-11-05T10:00:00+09:00"
    events = [{"type": "follow", "friend": f, "at": at} for f in ("U1", "U2")] + [
        {"type": "attributes", "friend": "U1", "at": at, "set": {"points": "nan"}},
        {"type": "attributes", "friend": "U2", "at": at, "set": {"points": "12.6"}},
        {"type": "notify", "friend": "U1", "at": "2026-11-05T11:00:00+09:00"},
        {"type": "notify", "friend": "U2", "at": "2026-11-05T11:00:00+09:00"}]
    assert main(timeline(tmp_path, *events), str(folder), "2026-11-06T00:00:00+09:00", "1h", None) == 0
    out = capsys.readouterr().out
    err = caplog.text      # the log lines simulate prints on stderr
    assert [json.loads(line)["friend"] for line in out.splitlines()] == ["U2"]
    assert "not sent to U1" in err
    assert "a filter cannot handle this friend's value (cannot convert float NaN to integer)" in err
    assert "ValueError" not in err


def test_a_db_that_cannot_be_created_is_one_error_line_not_a_traceback(folder, tmp_path):
    events = timeline(tmp_path, {"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00"})
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "simulate", events, "--rules", str(folder),
                           "--db", str(tmp_path / "no" / "such" / "folder" / "f.db")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: --db: cannot open the database ") and "Traceback" not in proc.stderr


def test_events_after_until_are_said_to_be_left_out(folder, tmp_path, capsys):
    events = timeline(tmp_path, {"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00",
                                 "source": "qr=shipping"},
                      {"type": "follow", "friend": "U2", "at": "2026-11-07T10:00:00+09:00"})
    assert main(events, str(folder), "2026-11-06T00:00:00+09:00", "1h", None) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["friend"] for line in captured.out.splitlines()] == ["U1"]
    assert "warning: 1 of 2 events are after --until 2026-11-06T00:00:00+09:00 and are not replayed" in captured.err


def test_a_timeline_saved_as_shift_jis_is_one_clear_line(folder, tmp_path, capsys):
    path = tmp_path / "sj.jsonl"
    path.write_bytes(json.dumps({"type": "message", "friend": "U1", "at": "2026-11-05T10:00:00+09:00",
                                 "text": "クーポン"}, ensure_ascii=False).encode("cp932"))
    assert main(str(path), str(folder), None, "1h", None) == 1
    assert capsys.readouterr().err.endswith("sj.jsonl: the file is not UTF-8 text; save it as UTF-8\n")


def test_a_message_that_fails_for_everyone_says_so_instead_of_naming_no_friend(folder, tmp_path, caplog):
    (folder / "messages.yaml").write_text('''big: "{{ (1..1000000000) | join: ',' }}"\n''', encoding="utf-8")
    (folder / "shop.rule").write_text("rule big when event notify then send big\n", encoding="utf-8")
    events = [{"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00"},
              {"type": "notify", "friend": "U1", "at": "2026-11-05T11:00:00+09:00"}]
    assert main(timeline(tmp_path, *events), str(folder), "2026-11-06T00:00:00+09:00", "1h", None) == 0
    assert "rule big: message big not sent to anyone it is due for: " in caplog.text
    assert "not sent to None" not in caplog.text and "not sent to :" not in caplog.text
