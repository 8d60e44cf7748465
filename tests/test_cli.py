"""The command line's contract (docs/cli.md): exit 0 / 1 (data error) / 2 (usage error) for
every command, one option vocabulary, an example in every --help, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from engine.cli import Duration, cli
from engine.runtime.store import Store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = str(ROOT / "rules")


def commands(group: click.Group = cli, prefix: tuple[str, ...] = ()):
    """Every command as (path, command), subcommands of groups included."""
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))


LEAVES = [(" ".join(path), command) for path, command in commands() if not isinstance(command, click.Group)]


def invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(cli, list(args), prog_name="linerules", env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "settings.yaml").write_text("timezone: Asia/Tokyo\n", encoding="utf-8")
    (rules / "messages.yaml").write_text("greeting: こんにちは\n", encoding="utf-8")
    (rules / "shop.rule").write_text("rule welcome\n  when followed\n  then send greeting\n", encoding="utf-8")
    return rules


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    rules = tmp_path / "broken"
    rules.mkdir()
    (rules / "shop.rule").write_text("rule welcome when followed then send nope\n", encoding="utf-8")
    return rules


# ----------------------------------------------------------------------------- help and vocabulary


@pytest.mark.parametrize("path", [p for p, _ in commands()] + [()], ids=lambda p: " ".join(p) or "linerules")
def test_every_help_has_a_runnable_example(path):
    code, out, _ = invoke(*path, "--help")
    assert code == 0
    example = out[out.index("Example:") :]
    assert f"linerules {' '.join(path)}".rstrip() in example


def _option(command: click.Command, name: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and name in p.opts), None)


def test_the_shared_options_are_spelled_and_meant_the_same_everywhere():
    with_rules = {name for name, c in LEAVES if _option(c, "--rules")}
    assert with_rules == {
        "validate",
        "explain",
        "graph",
        "simulate",
        "test",
        "report",
        "run",
        "import orders",
        "import customers",
    }
    vocabulary = (
        ("--rules", "DIR", "The rule folder: its .rule files, messages.yaml and settings.yaml"),
        ("--db", "FILE|URL", "The SQLite database file"),
        ("--tick", "DURATION", "The engine's tick: how often condition triggers are checked"),
        ("--lang", None, "Language of messages and reports"),
    )
    for option, metavar, opening in vocabulary:
        found = [(name, _option(c, option)) for name, c in LEAVES if _option(c, option)]
        assert found, option
        for name, opt in found:
            assert opt.help.startswith(opening), (name, option, opt.help)
            assert metavar is None or opt.metavar == metavar, (name, option)
            assert opt.name == {"--rules": "rules_dir"}.get(option, option.strip("-")), (name, option)
    ticks = [_option(c, "--tick") for name, c in LEAVES if _option(c, "--tick")]
    assert len(ticks) == 2 and all(isinstance(t.type, Duration) for t in ticks)


@pytest.mark.parametrize("command", ["simulate", "run"])
@pytest.mark.parametrize(
    "given, seconds", [("60", 60), ("0.5", 0.5), ("90s", 90), ("1m", 60), ("1h", 3600), ("1d12h", 129600)]
)
def test_tick_takes_seconds_or_a_duration_in_every_command(command, given, seconds):
    ctx = cli.commands[command].make_context(command, ["x.jsonl", "--tick", given][command == "run" :])
    assert ctx.params["tick"] == seconds


def test_report_reads_the_database_from_linerules_db(tmp_path, folder):
    db = tmp_path / "live.db"
    Store(str(db)).close()
    code, out, err = invoke("report", "--rules", str(folder), "--format", "json", env={"LINERULES_DB": str(db)})
    assert code == 0, err
    assert '"rules"' in out


def test_test_takes_the_folder_as_dir_or_as_rules(folder):
    code, _, err = invoke("test", "--rules", SAMPLE, "--lang", "en")
    assert code == 0, err
    code, out, err = invoke("test", SAMPLE, "--rules", str(folder))
    assert (code, out) == (2, "")
    assert "Error: give the rule folder once" in err


def test_validate_takes_the_folder_as_path_or_as_rules(folder, broken):
    assert invoke("validate", "--rules", str(folder), "--lang", "en")[0] == 0
    code, out, _ = invoke("validate", str(folder), "--rules", str(broken), "--lang", "en")
    assert code == 1 and "nope" in out


# ----------------------------------------------------------------------------- exit status


@pytest.mark.parametrize("name", [name for name, _ in LEAVES])
def test_an_unknown_option_is_a_usage_error_in_every_command(name):
    code, out, err = invoke(*name.split(), "--no-such-option")
    assert (code, out) == (2, "")
    assert err.startswith(f"Usage: linerules {name} ") and "No such option" in err


def test_exit_status_per_command(tmp_path, folder, broken):
    """0 done, 1 what the command read says no, 2 the command line is wrong."""
    events = tmp_path / "t.jsonl"
    events.write_text('{"type": "follow", "friend": "U1", "at": "2026-11-05T10:00:00+09:00"}\n', encoding="utf-8")
    bad_events = tmp_path / "bad.jsonl"
    bad_events.write_text('{"type": "follow"}\n', encoding="utf-8")
    csv = tmp_path / "orders.csv"
    csv.write_text("order_id,at,amount,customer\nA-1,2026-11-01T10:00:00+09:00,1000,c1\n", encoding="utf-8")
    db = str(tmp_path / "x.db")
    cases = [
        (0, ["validate", str(folder)]),
        (1, ["validate", str(broken)]),
        (1, ["validate", str(tmp_path / "nowhere")]),
        (2, ["validate", "--format", "xml"]),
        (0, ["explain", "LR102"]),
        (2, ["explain", "LR999"]),
        (0, ["graph", "--rules", str(folder)]),
        (1, ["graph", "--rules", str(broken)]),
        (2, ["graph", "nope", "--rules", str(folder)]),
        (0, ["simulate", str(events), "--rules", str(folder)]),
        (1, ["simulate", str(bad_events), "--rules", str(folder)]),
        (1, ["simulate", str(tmp_path / "missing.jsonl"), "--rules", str(folder)]),
        (1, ["simulate", str(events), "--rules", str(broken)]),
        (2, ["simulate", str(events), "--rules", str(folder), "--tick", "soon"]),
        (2, ["simulate", str(events), "--rules", str(folder), "--until", "tomorrow"]),
        (2, ["simulate"]),
        (1, ["test", "--rules", str(folder)]),  # no tests in it
        (1, ["test", str(tmp_path / "nowhere")]),
        (1, ["report", "--db", str(tmp_path / "missing.db"), "--rules", str(folder)]),
        (2, ["report", "--rules", str(folder)]),  # --db missing
        (0, ["import", "orders", str(csv), "--format", "csv", "--db", db, "--rules", str(folder)]),
        (1, ["import", "orders", str(tmp_path / "missing.csv"), "--format", "csv", "--db", db]),
        (2, ["import", "orders", str(csv), "--format", "csv", "--columns", "nonsense", "--db", db]),
        (2, ["import", "orders", str(csv), "--db", db]),  # --format missing
        (1, ["import", "customers", str(csv), "--db", db]),  # no friend column
        (2, ["import", "customers", str(csv), "--columns", "x=y", "--db", db]),
        (2, ["run", "--listen", "localhost"]),
        (2, ["run", "--tick", "often"]),
        (2, ["run", "--condition-interval", "1.5"]),
    ]
    for status, args in cases:
        code, out, err = invoke(*args, env={"LINERULES_LANG": "en"})
        assert code == status, (args, out, err)
        assert "Traceback" not in out + err
        if status == 2:
            assert err.startswith("Usage: linerules "), (args, err)
        if status == 1 and args[0] not in ("validate", "graph", "test") and "broken" not in " ".join(args):
            assert err.startswith("error: ") and err.count("\n") == 1, (args, err)


def test_run_with_invalid_rules_exits_1(tmp_path, broken):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            "--rules",
            str(broken),
            "--db",
            str(tmp_path / "x.db"),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "LINERULES_LANG": "en"},
    )
    assert proc.returncode == 1
    assert "cannot start: the rules in" in proc.stderr and "Traceback" not in proc.stderr


def test_run_with_a_settings_file_saved_as_shift_jis_exits_1_with_its_error(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "settings.yaml").write_bytes("# 設定\ntimezone: Asia/Tokyo\nlanguage: ja\n".encode("cp932"))
    (folder / "messages.yaml").write_text("greeting: こんにちは\n", encoding="utf-8")
    (folder / "a.rule").write_text("rule a when followed then send greeting\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--rules", str(folder), "--db", str(tmp_path / "x.db")]
        + ["--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "エラー[LR002]" in proc.stderr and "起動できません" in proc.stderr


# ----------------------------------------------------------------------------- shell completion


def test_bash_completion_script_and_answers():
    env = {**os.environ, "_LINERULES_COMPLETE": "bash_source"}
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )
    assert proc.returncode == 0
    assert "_linerules_completion()" in proc.stdout
    assert "complete -o nosort -F _linerules_completion linerules" in proc.stdout

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        result = CliRunner().invoke(
            cli,
            [],
            prog_name="linerules",
            env={"_LINERULES_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)},
        )
        return [entry.split(",", 1)[1] for entry in result.stdout.split()]

    assert complete("linerules si") == ["simulate"]
    assert complete("linerules simulate x.jsonl --ti") == ["--tick"]
    assert "LR102" in complete("linerules explain LR1")
    assert complete("linerules validate --format g") == ["github"]
