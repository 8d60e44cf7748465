"""``linerules test``: reading test files, comparing pushes, and whole runs on real rule folders."""

from __future__ import annotations

import datetime as dt
import io
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.language import ir
from engine.runtime.events import EventError
from engine.runtime.intake import parse_event_obj
from engine.runtime.ruletest import Push, compare, format_diff, load_tests, main

JST = dt.timezone(dt.timedelta(hours=9))
TOKYO = ir.Settings().tz

RULE = """\
rule welcome "Welcome for friends who scanned the QR card in the parcel"
  when followed via qr=shipping
  then
    send greeting
    wait 1d
    send coupon15 if not purchased
"""
MESSAGES = """\
greeting: "ようこそ!"
coupon15: "初回15%OFFクーポン: WELCOME15"
"""
PASSING = """\
name: shipping QR friends get the coupon
events:
  - {type: follow, friend: U1, at: 2026-11-01T10:00:00+09:00, source: qr=shipping}
expect:
  - {at: 2026-11-01T10:00:00+09:00, friend: U1, rule: welcome, messages: [greeting]}
  - {at: 2026-11-02T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}
"""
BUYER = """\
tests:
  - name: buyers get no coupon
    until: 2026-11-05T00:00:00+09:00
    events:
      - {type: follow, friend: U2, at: "2026-11-01T10:00:00+09:00", source: "qr=shipping"}
      - {type: purchase, friend: U2, at: "2026-11-01T12:00:00+09:00", order_id: A-1, amount: 5400}
    expect:
      - {at: "2026-11-01T10:00:00+09:00", friend: U2, rule: welcome, messages: [greeting]}
  - name: other sources get nothing
    events:
      - {type: follow, friend: U3, at: "2026-11-01T10:00:00+09:00", source: "ad=summer"}
    expect: []
"""


def project() -> ir.Project:
    """A compiled project with the names the tests refer to (enough to read test files)."""
    rule = ir.Rule(name="welcome", trigger=ir.Followed(), steps=())
    messages = {n: ir.MessageDef(n, ({"type": "text", "text": n},)) for n in ("greeting", "coupon15")}
    return ir.Project(rules={"welcome": rule}, segments={}, messages=messages, sales=(), settings=ir.Settings())


def folder(tmp_path: Path, **tests: str) -> Path:
    root = tmp_path / "rules"
    (root / "tests").mkdir(parents=True)
    (root / "welcome.rule").write_text(RULE, encoding="utf-8")
    (root / "messages.yaml").write_text(MESSAGES, encoding="utf-8")
    (root / "settings.yaml").write_text("timezone: Asia/Tokyo\n", encoding="utf-8")
    for name, text in tests.items():
        (root / "tests" / f"{name}.yaml").write_text(text, encoding="utf-8")
    return root


def run(root: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(str(root), out, err)
    return code, out.getvalue(), err.getvalue()


def push(at: str, messages: tuple[str, ...] = ("greeting",), friend: str = "U1") -> Push:
    return Push(dt.datetime.fromisoformat(at), friend, "welcome", messages)


# ----------------------------------------------------------------------------- reading test files


def test_single_test_file_is_read_with_events_and_sorted_expectations():
    [test], diags = load_tests("t.yaml", PASSING, project())
    assert diags == []
    assert test.name == "shipping QR friends get the coupon" and test.line == 1
    assert test.tick == 3600 and test.tolerance == 0 and test.until is None
    [follow] = test.events
    assert (follow.type, follow.friend, follow.data, follow.line) == ("follow", "U1", {"source": "qr=shipping"}, 3)
    assert follow.at == dt.datetime(2026, 11, 1, 10, tzinfo=JST)
    assert [(p.messages, p.line) for p in test.expect] == [(("greeting",), 5), (("coupon15",), 6)]


def test_a_list_of_tests_with_options():
    tests, diags = load_tests("t.yaml", BUYER, project())
    assert diags == []
    assert [t.name for t in tests] == ["buyers get no coupon", "other sources get nothing"]
    assert [t.line for t in tests] == [2, 9]
    assert tests[0].until == dt.datetime(2026, 11, 5, tzinfo=JST)
    assert tests[0].events[1].data == {"order_id": "A-1", "amount": 5400}
    assert tests[1].expect == ()


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            PASSING.replace("at: 2026-11-01T10:00:00+09:00, source", "at: 2026-11-01T10:00:00, source"),
            "t.yaml:3:36: error: event `at` needs a UTC offset, like 2026-11-01T10:00:00+09:00",
        ),
        (
            PASSING.replace("source: qr", "sorce: qr"),
            "t.yaml:3:63: error: event `sorce` is not a field of follow events (did you mean `source`?)",
        ),
        (
            PASSING.replace("rule: welcome, messages: [coupon15]", "rule: welcom, messages: [coupon15]"),
            "t.yaml:6:55: error: unknown rule `welcom`",
        ),
        (PASSING.replace("[coupon15]", "[coupon51]"), "t.yaml:6:75: error: unknown message `coupon51`"),
        (
            PASSING.replace(
                "source: qr=shipping}",
                "source: qr=shipping}\n  - {type: click, friend: U1, at: 2026-11-02T11:00:00+09:00, rule: welcom}",
            ),
            "t.yaml:4:68: error: unknown rule `welcom`",
        ),
        (PASSING.replace("expect:", "expects:"), "t.yaml:4:1: error: unknown test field `expects`"),
        (PASSING + "tolerance: 5 minutes\n", "t.yaml:7:12: error: `5 minutes` is not a duration"),
        (PASSING + "tick: 0m\n", "t.yaml:7:7: error: `tick` must be longer than 0"),
        (
            PASSING.replace("friend: U1, rule: welcome, messages: [greeting]", "friend: U1, rule: welcome"),
            "t.yaml:5:5: error: this expected push has no `messages`",
        ),
        (
            PASSING + "  - {at: 2026-11-03, friend: U1, rule: welcome, messages: [coupon15]}\n",
            "t.yaml:7:10: error: `2026-11-03` needs a UTC offset",
        ),
        (
            PASSING.replace("{type: follow,", "{type: followed,"),
            "t.yaml:3:12: error: event `type`: unknown type `followed`: `followed` is how rules say it; "
            "the event is `follow`",
        ),
        ("name: [unclosed\n", "t.yaml:1:7: error: invalid YAML: the `{` or `[` that starts here is not closed"),
        ("- just a list\n", "t.yaml:1:1: error: a test must be a mapping with `events` and `expect`"),
        ("", "t.yaml:1:1: error: this test file holds no tests"),
        ("# to do: the winback tests\n", "t.yaml:1:1: error: this test file holds no tests"),
        ("tests: []\n", "t.yaml:1:8: error: `tests:` holds no tests"),
        (
            "until: 2026-11-02T00:00:00+09:00\n"
            + PASSING.replace("2026-11-01T10:00:00+09:00, source", "2026-11-03T10:00:00+09:00, source"),
            "t.yaml:4:5: error: this event is after `until` (2026-11-02T00:00:00+09:00), so the test would not replay it",
        ),
    ],
)
def test_malformed_test_file_points_at_line_and_column(text, expected):
    tests, diags = load_tests("t.yaml", text, project())
    assert tests == []
    assert any(f"{d.path}:{d.line}:{d.column}: {d.severity}: {d.message}".startswith(expected) for d in diags), diags


def test_yaml_booleans_in_events_get_a_quoting_hint():
    text = PASSING.replace(
        "source: qr=shipping}",
        "source: qr=shipping}\n  - {type: message, friend: U1, at: 2026-11-01T11:00:00+09:00, text: true}",
    )
    _, [diag] = load_tests("t.yaml", text, project())
    assert (diag.line, diag.message) == (4, "event `text` must be a string, got true")
    assert diag.help == 'YAML reads `true` as true; write it in quotes: "true"'


def test_every_bad_field_of_an_event_is_reported_at_once():
    # a typo, a time without its offset and an amount that is text: three diagnostics, each at
    # its field, in one run (the runner's intake stops at the first: a 4xx names one reason)
    text = PASSING.replace(
        "source: qr=shipping}",
        "source: qr=shipping}\n  - {type: purchase, friend: U1, at: 2026-11-01T11:00:00, "
        'order_id: A-1, amount: "5400", itmes: []}',
    )
    tests, diags = load_tests("t.yaml", text, project())
    assert tests == []
    assert [(d.line, d.column, d.message) for d in diags] == [
        (4, 38, "event `at` needs a UTC offset, like 2026-11-01T10:00:00+09:00"),
        (4, 82, "event `amount` must be a number, got a string"),
        (4, 90, "event `itmes` is not a field of purchase events (did you mean `items`?)"),
    ]
    # a misspelt field is told once, with the field meant
    text = PASSING.replace(
        "friend: U1, at: 2026-11-01T10:00:00+09:00, source", "freind: U1, at: 2026-11-01T10:00:00+09:00, sorce"
    )
    _, diags = load_tests("t.yaml", text, project())
    assert [d.message for d in diags if "freind" in d.message] == [
        "event `freind` is not a field of follow events (did you mean `friend`?)"
    ]
    with pytest.raises(EventError) as first:
        parse_event_obj(
            {"type": "purchase", "friend": "U1", "at": "2026-11-01T11:00:00", "order_id": "A-1", "amount": "1"}, 1
        )
    assert (first.value.field, first.value.others) == ("at", ())


def test_test_files_are_yaml_1_2_so_yes_is_a_text():
    text = PASSING.replace(
        "source: qr=shipping}",
        "source: qr=shipping}\n  - {type: message, friend: U1, at: 2026-11-01T11:00:00+09:00, text: yes}",
    )
    tests, diags = load_tests("t.yaml", text, project())
    assert diags == []
    assert tests[0].events[1].data["text"] == "yes"


# ----------------------------------------------------------------------------- comparing


def test_compare_matches_exactly_and_reports_missing_and_unexpected():
    expected = [push("2026-11-01T10:00:00+09:00"), push("2026-11-02T10:00:00+09:00", ("coupon15",))]
    actual = [push("2026-11-02T12:00:00+09:00", ("coupon15",)), push("2026-11-01T10:00:00+09:00")]
    diff = compare(expected, actual)
    assert format_diff(diff, TOKYO) == textwrap.dedent("""\
        --- expected
        +++ actual
          {at: 2026-11-01T10:00:00+09:00, friend: U1, rule: welcome, messages: [greeting]}
        - {at: 2026-11-02T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}
        + {at: 2026-11-02T12:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}""")


def test_compare_within_tolerance_takes_the_closest_push():
    expected = [push("2026-11-01T10:00:00+09:00")]
    actual = [push("2026-11-01T10:09:00+09:00"), push("2026-11-01T10:04:00+09:00")]
    assert [(d.sign, d.push.at.minute) for d in compare(expected, actual, tolerance=600)] == [(" ", 4), ("+", 9)]
    assert [d.sign for d in compare(expected, actual, tolerance=180)] == ["-", "+", "+"]


def test_times_are_shown_in_the_configured_zone_and_odd_names_are_quoted():
    utc = Push(dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC), "123", "welcome", ("yes", "a b"))
    [line] = compare([], [utc])
    assert (
        format_diff([line], TOKYO).splitlines()[-1]
        == '+ {at: 2026-11-01T10:00:00+09:00, friend: "123", rule: welcome, messages: ["yes", "a b"]}'
    )


# ----------------------------------------------------------------------------- whole runs


def test_passing_folder_exits_0(tmp_path):
    code, out, err = run(folder(tmp_path, welcome=PASSING, buyers=BUYER))
    assert (code, err) == (0, ""), out + err
    assert out.splitlines()[-1] == "3 passed, 0 failed"
    assert "PASS " in out and "tests/welcome.yaml:1 shipping QR friends get the coupon" in out


def test_failing_folder_prints_a_diff_and_exits_1(tmp_path):
    late = PASSING.replace("2026-11-02T10:00:00+09:00", "2026-11-02T12:00:00+09:00")
    code, out, _ = run(folder(tmp_path, welcome=late, buyers=BUYER))
    assert code == 1
    assert (
        textwrap.dedent("""\
        tests/welcome.yaml:1 shipping QR friends get the coupon
            --- expected
            +++ actual
              {at: 2026-11-01T10:00:00+09:00, friend: U1, rule: welcome, messages: [greeting]}
            + {at: 2026-11-02T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}
            - {at: 2026-11-02T12:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}
        """)
        in out
    )
    assert out.splitlines()[-1] == "2 passed, 1 failed"


def test_tolerance_lets_a_close_time_pass(tmp_path):
    close = PASSING.replace("2026-11-02T10:00:00+09:00", "2026-11-02T10:05:00+09:00")
    assert run(folder(tmp_path, welcome=close + "tolerance: 10m\n"))[0] == 0
    assert run(folder(tmp_path / "strict", welcome=close + "tolerance: 1m\n"))[0] == 1


def test_bad_test_file_is_reported_with_its_position_and_others_still_run(tmp_path):
    bad = PASSING.replace("messages: [coupon15]", "messages: [coupon51]")
    code, out, err = run(folder(tmp_path, bad=bad, buyers=BUYER))
    assert code == 1
    assert "tests/bad.yaml:6:75: error[LR805]: unknown message `coupon51`" in err
    assert "help: did you mean `coupon15`?" in err
    assert out.splitlines()[-1] == "2 passed, 0 failed, 1 test file with errors"


def test_invalid_rules_print_diagnostics_and_exit_1(tmp_path):
    root = folder(tmp_path, welcome=PASSING)
    (root / "welcome.rule").write_text(RULE.replace("send greeting", "send greting"), encoding="utf-8")
    code, out, err = run(root)
    assert code == 1 and out == ""
    assert "welcome.rule:4:" in err and "greting" in err


def test_folder_without_tests_is_an_error(tmp_path):
    code, _, err = run(folder(tmp_path))
    assert code == 1 and "no rule tests in" in err


def test_cli_command_runs_the_sample_rules():
    rules = str(Path(__file__).resolve().parent.parent / "rules")
    result = CliRunner().invoke(cli, ["test", rules, "--lang", "en"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].endswith(" passed, 0 failed")
    result = CliRunner().invoke(cli, ["test", rules])  # the sample says `language: ja`
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"合格 \d+件、不合格 0件", result.output.splitlines()[-1])


def test_a_test_file_saved_as_shift_jis_is_reported_and_the_others_still_run(tmp_path):
    root = folder(tmp_path, good=PASSING)
    (root / "tests" / "sj.yaml").write_bytes("name: 購入者のテスト\nevents: []\nexpect: []\n".encode("cp932"))
    code, out, err = run(root)
    assert code == 1
    assert out.splitlines()[-1] == "1 passed, 0 failed, 1 test file with errors"
    assert "sj.yaml:1:7: error[LR002]: the file is not UTF-8 text" in err
    assert "help: it looks like Shift_JIS (CP932): save it as UTF-8" in err
    assert "Traceback" not in err


def test_a_test_file_with_cr_line_ends_reads_like_lf(tmp_path):
    root = folder(tmp_path)
    (root / "tests" / "cr.yaml").write_bytes(PASSING.replace("\n", "\r").encode("utf-8"))
    code, out, _ = run(root)
    assert (code, out.splitlines()[-1]) == (0, "1 passed, 0 failed")
