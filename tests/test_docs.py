"""The documentation keeps up with the code: every command, option and environment variable
the program reads is described where users look for it (in the manner of datasette's
test_docs)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from engine.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"linerules {name}" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_command_reference(name):
    assert re.search(rf"^#+ `linerules {name}", (ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), re.M)


@pytest.mark.parametrize(
    "name,option",
    [
        (name, opt)
        for name, cmd in sorted(cli.commands.items())
        for param in cmd.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if opt.startswith("--")
    ],
)
def test_every_option_is_documented(name, option):
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split(f"## `linerules {name}", 1)[1].split("\n## ", 1)[0]
    assert option in section, f"{option} of `linerules {name}` is missing from docs/cli.md"


def test_every_environment_variable_the_code_reads_is_documented():
    code = "\n".join(p.read_text(encoding="utf-8") for p in [*(ROOT / "engine").rglob("*.py"), ROOT / "runner.py"])
    names = set(re.findall(r"""(?:environ|env)(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""", code))
    names |= set(re.findall(r"""envvar=["']([A-Z][A-Z0-9_]+)["']""", code))
    assert "LINE_CHANNEL_ACCESS_TOKEN" in names  # the pattern does find them
    missing = sorted(n for n in names if n not in (ROOT / "docs" / "operations.md").read_text(encoding="utf-8"))
    assert not missing, f"undocumented environment variables: {missing}"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    assert "make run" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_docs_speak_of_the_project_only():
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        assert str(ROOT) not in text and str(Path.home()) + "/" not in text, path
