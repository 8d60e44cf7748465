"""Hostile or careless input to the front end (rule files and the YAML beside them), as a user
meets it: through `linerules validate`, project loading and the runner's start-up.

- 100,000 unbalanced `(` are read in linear time (quadratic before: minutes) and reported at
  the `(` left open;
- a lone surrogate in messages.yaml is a clear error at its line, never a traceback, for
  validate and for `linerules run`;
- no cascades: a message with an error still exists for the rules, and a YAML file that cannot
  be read does not make every name in the rules "unknown".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from engine.cli import cli
from engine.language.parser import parse_file
from engine.language.project import load_project
from engine.runtime.events import meant_type

ROOT = Path(__file__).resolve().parent.parent


def validate(folder: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["validate", str(folder), "--lang", "en"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_a_hundred_thousand_open_parentheses_are_read_in_linear_time(tmp_path):
    depth = 100_000
    head = "when followed then stop if "
    (tmp_path / "deep.rule").write_text(head + "(" * depth + " blocked\n", encoding="utf-8")
    start = time.process_time()
    code, out = validate(tmp_path)
    elapsed = time.process_time() - start
    assert code == 1
    first = out.splitlines()[0]
    assert first == (
        f"{tmp_path}/deep.rule:1:{len(head) + depth + 9}: error[LR013]: the file ends inside "
        f"parentheses: the `(` at line 1, column {len(head) + depth} is never closed"
    )
    # The shown line is a window around the place, not 100,000 characters.
    assert max(len(line) for line in out.splitlines()[1:3]) < 120
    # Before, the error path copied the parser's stack at every token: 10k took 4 s, 30k 33 s,
    # 100k minutes. Linear, 100k takes about a second on a 2-core machine.
    assert elapsed < 15, f"{elapsed:.1f} s"


def test_deep_nesting_of_every_kind_is_linear():
    """Twice the input takes about twice the time (not four times), for open parentheses and
    for a chain of `not`."""

    def cost(text: str) -> float:
        start = time.process_time()
        _, diags = parse_file("t.rule", text)
        assert diags
        return time.process_time() - start

    for unit in ("(", "not "):
        small = cost("when followed then stop if " + unit * 10_000 + " blocked and")
        large = cost("when followed then stop if " + unit * 40_000 + " blocked and")
        assert large < small * 4 * 1.8 + 0.5, (unit, small, large)  # quadratic would be 16x


def test_lone_surrogate_in_messages_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "messages.yaml").write_text('hello: "\\ud800"\nok: "\\ud83d\\ude00"\n', encoding="utf-8")
    (tmp_path / "a.rule").write_text("when followed then send hello, ok\n", encoding="utf-8")
    code, out = validate(tmp_path)
    assert code == 1
    assert out.startswith(f"{tmp_path}/messages.yaml:1:8: error[LR006]: this text holds a lone surrogate escape")
    assert "unknown message" not in out and "Traceback" not in out
    result = load_project(tmp_path)
    assert result.project is None and len(result.diagnostics) == 1


def test_runner_start_up_refuses_a_lone_surrogate_with_one_clear_error(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "messages.yaml").write_text('hello: "\\ud800"\n', encoding="utf-8")
    (rules / "a.rule").write_text("when followed then send hello\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINE_", "LINERULES_"))}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "runner.py"),
            "--rules",
            str(rules),
            "--db",
            str(tmp_path / "x.db"),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "messages.yaml:1:8: error[LR006]: this text holds a lone surrogate escape" in output
    assert "Traceback" not in output


def test_a_message_with_an_error_still_exists_for_the_rules(tmp_path):
    (tmp_path / "messages.yaml").write_text(
        "cart_reminder:\n  - type: text\n    text: hi\n    wrap: yes\n", encoding="utf-8"
    )
    (tmp_path / "a.rule").write_text("when carted then wait 1h send cart_reminder\n", encoding="utf-8")
    result = load_project(tmp_path)
    assert [(Path(d.path).name, d.line, d.message) for d in result.diagnostics] == [
        ("messages.yaml", 4, "`wrap` must be true or false, not `yes`")
    ]


def test_one_misindented_line_is_one_error_and_comes_first(tmp_path):
    """Seen: one mis-indented line in messages.yaml gave 31 errors, the real one 7th, after
    "unknown message ... define it" for messages that are defined."""
    for name in ("settings.yaml", "sale_calendar.yaml", "messages.yaml"):
        (tmp_path / name).write_text((ROOT / "rules" / name).read_text(encoding="utf-8"), encoding="utf-8")
    for rule in (ROOT / "rules").glob("*.rule"):
        (tmp_path / rule.name).write_text(rule.read_text(encoding="utf-8"), encoding="utf-8")
    text = (tmp_path / "messages.yaml").read_text(encoding="utf-8")
    (tmp_path / "messages.yaml").write_text(text.replace("\n    altText:", "\n   altText:", 1), encoding="utf-8")
    code, out = validate(tmp_path)
    assert code == 1
    headlines = [line for line in out.splitlines() if re.search(r": (error|warning)\[LR\d+\]: ", line)]
    assert headlines == [
        f"{tmp_path}/messages.yaml:22:4: error[LR003]: invalid YAML: this line is not indented like the lines above it"
    ]
    assert "help: the keys of one mapping" in out


def test_settings_that_cannot_be_read_do_not_make_rich_menus_unknown(tmp_path):
    (tmp_path / "settings.yaml").write_text("rich_menus:\n\tvip: x\n", encoding="utf-8")
    (tmp_path / "a.rule").write_text("when followed then menu vip\n", encoding="utf-8")
    result = load_project(tmp_path)
    assert [d.message for d in result.diagnostics] == ["invalid YAML: a tab is used for indentation here"]


def test_a_broken_rich_menu_entry_is_reported_once(tmp_path):
    (tmp_path / "settings.yaml").write_text("rich_menus:\n  vip: not-an-id\n", encoding="utf-8")
    (tmp_path / "a.rule").write_text("when followed then menu vip\n", encoding="utf-8")
    result = load_project(tmp_path)
    assert [d.message for d in result.diagnostics] == ["`not-an-id` is not a rich menu id"]


def test_event_types_spelled_like_rule_words_have_the_type_meant():
    assert [
        meant_type(t)
        for t in (
            "carted",
            "purchased",
            "viewed",
            "followed",
            "unfollowed",
            "blocked",
            "clicked",
            "tagged",
            "order",
            "shipped",
            "cart",
        )
    ] == ["cart", "purchase", "view", "follow", "unfollow", "unfollow", "click", "tag", "purchase", None, None]


def test_a_messages_file_that_is_not_a_mapping_does_not_make_every_message_unknown(tmp_path):
    (tmp_path / "messages.yaml").write_text("- greeting: hi\n", encoding="utf-8")
    (tmp_path / "a.rule").write_text("when followed then send greeting\n", encoding="utf-8")
    result = load_project(tmp_path)
    assert [d.message for d in result.diagnostics] == ["messages.yaml must map message names to messages"]
