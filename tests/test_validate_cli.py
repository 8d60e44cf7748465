"""``linerules validate``: exit codes, the three output formats, single files, and the golden
files in tests/golden/ (bad rule folders beside their exact expected output).

Regenerate the golden outputs after an intended change of wording with
``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_validate_cli.py``, then review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.language.validate import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"

#: golden case -> the PATH given to `validate` (relative to tests/golden/)
CASES = {
    "unknown_message": "unknown_message",
    "syntax_errors": "syntax_errors",
    "names": "names",
    "numbers": "numbers",
    "schedule_and_sales": "schedule_and_sales",
    "push_limit": "push_limit",
    "single_file": "single_file/checked.rule",
    "missing": "missing",
    "conditions": "conditions",
    # one mis-indented line in messages.yaml and a tab in settings.yaml: those two errors only,
    # first, and no "unknown message" / "unknown rich menu" in the rules
    "yaml_cascade": "yaml_cascade",
    "messages_types": "messages_types",
    "keyword_slips": "keyword_slips",
    "sale_moments": "sale_moments",
    # messages.yaml in Shift_JIS, settings.yaml in UTF-16: the encoding is named, and the rules'
    # names are not checked against files that could not be read
    "not_utf8": "not_utf8",
    # 10,000 / => / == / ～ / curly quotes: the help says what to write
    "typing_habits": "typing_habits",
    # messages.yml / settings.yml are not read: said so, instead of silently sending at any hour
    "yml_names": "yml_names",
    # colours without `#` or with three digits, `20/13`, a size of "12": LINE would refuse them
    "flex_shapes": "flex_shapes",
    # 3日, 2週間, 1ヶ月, 10時, 月曜: the help gives 3d, 2w, 30d, 10:00, monday
    "japanese_units": "japanese_units",
}


def run(args: list[str], cwd: Path) -> tuple[int, str]:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, ["validate", *args])
    finally:
        os.chdir(old)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_golden_output(case, lang):
    """The same bad folders in English (``case.out``) and Japanese (``case.ja.out``)."""
    code, out = run([CASES[case], "--lang", lang], GOLDEN)
    expected_file = GOLDEN / (f"{case}.out" if lang == "en" else f"{case}.ja.out")
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_text(out, encoding="utf-8")
    expected = expected_file.read_text(encoding="utf-8")
    assert out == expected
    assert code == (1 if re.search(r": (error|エラー)\[LR\d+\]: ", expected) else 0)


def test_sample_rules_are_valid():
    code, out = run(["rules", "--lang", "en"], ROOT)
    assert code == 0, out
    assert out.startswith("ok: ") and "rules" in out


def test_sample_rules_speak_japanese():
    """The sample settings.yaml says `language: ja`."""
    code, out = run(["rules"], ROOT)
    assert code == 0, out
    assert re.fullmatch(r"OK: ルール \d+件、セグメント \d+件\n", out), out


def test_default_path_is_rules(tmp_path):
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    code, out = run([], tmp_path)
    assert code == 0, out


def test_json_format(tmp_path):
    (tmp_path / "r.rule").write_text("when followed then send hello\nwhen purchased then stop\n", encoding="utf-8")
    code, out = run([str(tmp_path), "--format", "json"], ROOT)
    assert code == 1
    items = json.loads(out)
    assert items[0] == {
        "path": str(tmp_path / "r.rule"),
        "line": 1,
        "column": 25,
        "severity": "error",
        "code": "LR102",
        "message": "unknown message `hello`",
        "help": "define it in messages.yaml",
    }
    assert items[1]["line"] == 2 and items[1]["message"] == "a second rule without a name in this file"
    assert [set(i) >= {"path", "line", "column", "severity", "message"} for i in items] == [True, True]


def test_github_format(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "messages.yaml").write_text('coupon15: "15%"\n', encoding="utf-8")
    (rules / "w.rule").write_text("when followed then send coupon51\n", encoding="utf-8")
    code, out = run(["rules", "--format", "github"], tmp_path)
    assert code == 1
    assert out == (
        "::error file=rules/w.rule,line=1,col=25,title=LR102::unknown message `coupon51` "
        "(help: did you mean `coupon15`?)\n"
    )


def test_warnings_alone_exit_zero(tmp_path):
    (tmp_path / "messages.yaml").write_text('hi: "hi"\nspare: "x"\n', encoding="utf-8")
    (tmp_path / "r.rule").write_text("when followed then send hi\n", encoding="utf-8")
    code, out = run([str(tmp_path)], ROOT)
    assert code == 0
    assert "warning[LR109]: message `spare` is not used by any rule" in out
    assert out.endswith("ok: 1 rule, 0 segments, 1 warning\n")


def test_missing_path_is_one_clean_line(tmp_path):
    code, out = run(["no/such/folder"], tmp_path)
    assert code == 1
    assert out == (
        "no/such/folder:1:1: error[LR001]: `no/such/folder` does not exist (give a rule folder or a .rule file)\n"
    )


def test_not_a_rule_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    code, out = run(["notes.txt"], tmp_path)
    assert code == 1 and "is not a .rule file or a rule folder" in out


def test_several_paths_report_everything_once(tmp_path):
    (tmp_path / "r.rule").write_text("when followed then send x\n", encoding="utf-8")
    code, out = run([str(tmp_path), str(tmp_path / "r.rule")], ROOT)
    assert code == 1
    assert out.count("unknown message `x`") == 1


def test_file_that_is_not_utf8(tmp_path):
    (tmp_path / "r.rule").write_bytes(b"when followed then\nsend \xff\n")
    code, out = run([str(tmp_path)], ROOT)
    assert code == 1
    assert f"{tmp_path / 'r.rule'}:2:6: error[LR002]: the file is not UTF-8 text" in out


def test_main_returns_exit_code(capsys):
    assert main([str(ROOT / "rules")], "json") == 0
    assert capsys.readouterr().out == "[]\n"


def test_empty_folder_is_valid_with_a_warning(tmp_path):
    code, out = run([str(tmp_path)], ROOT)
    assert (code, out) == (
        0,
        f"{tmp_path}:1:1: warning[LR007]: `{tmp_path}` holds no .rule files, so nothing will be sent\n"
        "    help: give the folder that holds the rules (by default `rules`)\n"
        "ok: 0 rules, 0 segments, 1 warning\n",
    )


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_every_line_end_is_a_line_end(tmp_path, end):
    """A file saved with CR alone (old Mac) or CR LF is read line by line like LF: a leading
    comment does not swallow the file, and places and carets are right."""
    (tmp_path / "messages.yaml").write_text(f'# messages{end}greeting: "hi"{end}', encoding="utf-8", newline="")
    (tmp_path / "r.rule").write_text(
        f"# welcome{end}when followed{end}then send greeting{end}  send greting{end}", encoding="utf-8", newline=""
    )
    code, out = run([str(tmp_path)], ROOT)
    assert code == 1
    assert out == (
        f"{tmp_path}/r.rule:4:8: error[LR102]: unknown message `greting`\n"
        "      send greting\n"
        "           ^^^^^^^\n"
        "    help: did you mean `greeting`?\n"
        "1 error, 0 warnings\n"
    )


def test_rule_files_without_rules_warn(tmp_path):
    (tmp_path / "a.rule").write_text("# only a comment\r# and another\r", encoding="utf-8", newline="")
    code, out = run([str(tmp_path)], ROOT)
    assert code == 0
    assert out == (
        f"{tmp_path}/a.rule:1:1: warning[LR007]: this file holds no rule or segment\n"
        "    # only a comment\n"
        "    ^\n"
        "    help: a rule starts with `rule NAME` or `when`; see docs/language.md\n"
        "ok: 0 rules, 0 segments, 1 warning\n"
    )


def test_every_golden_diagnostic_has_a_code_that_is_explained():
    """Every problem printed carries its code, and `linerules explain` (and so docs/errors.md)
    knows every code."""
    from engine.language.codes import CODES

    lines = [
        line
        for out in GOLDEN.glob("*.out")
        for line in out.read_text(encoding="utf-8").splitlines()
        if re.match(r"^\S+:\d+:\d+: ", line)
    ]
    assert len(lines) > 80
    for line in lines:
        m = re.match(r"^\S+:\d+:\d+: (?:error|warning|エラー|警告)\[(LR\d{3})\]: ", line)
        assert m, f"no code: {line}"
        assert m.group(1) in CODES, line


def test_japanese_golden_files_hold_no_english_message():
    """Every headline and help of the Japanese golden files is translated (names, keywords and
    code in backquotes aside)."""
    for out in sorted(GOLDEN.glob("*.ja.out")):
        for line in out.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^(?:\S+:\d+:\d+: (?:エラー|警告)\[LR\d{3}\]: |    ヒント: )(.*)$", line)
            if m:
                prose = re.sub(r"`[^`]*`|\"[^\"]*\"|\([^()]*\)", "", m.group(1))
                assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", prose), f"{out.name}: {line}"
