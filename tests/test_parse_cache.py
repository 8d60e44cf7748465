"""The parses of unchanged rule files kept in the cache folder: a warm ``validate`` says byte for
byte what a cold one says (syntax errors, every other finding, both languages) without loading
Lark; an edited file is parsed again, and only that one; other parsing code parses everything
again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import forkkit
from engine.language import project
from engine.language.project import load_project

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"

#: Golden folders whose rule files hold syntax errors and other findings of every kind.
FOLDERS = ["syntax_errors", "keyword_slips", "names", "numbers", "conditions", "japanese_units", "typing_habits"]


def validate(cache: Path, *args: str, cwd: Path = ROOT, lang: str = "en") -> tuple[int, str, bool]:
    """``linerules validate ARGS`` in a process of its own: exit code, output, whether it
    imported Lark."""
    code, out, imported = forkkit.validate_probe(args, cache=cache, cwd=cwd, modules=("lark",), lang=lang)
    return code, out, imported["lark"]


@pytest.mark.parametrize("case", FOLDERS)
def test_warm_validate_says_byte_for_byte_what_a_cold_one_says(tmp_path, case):
    cache = tmp_path / "cache"
    code, out, lark = validate(cache, case, cwd=GOLDEN)
    assert lark  # the first run parses every rule file
    again = validate(cache, case, cwd=GOLDEN)
    assert again == (code, out, False)
    # the kept findings are texts to translate, not texts: the Japanese run says them in Japanese
    ja = validate(cache, case, cwd=GOLDEN, lang="ja")
    assert ja[:2] == validate(tmp_path / "other", case, cwd=GOLDEN, lang="ja")[:2]
    assert ja[2] is False


def test_warm_validate_of_the_sample_loads_no_lark_and_json_matches(tmp_path):
    cache = tmp_path / "cache"
    cold = validate(cache, "rules", "--format", "json")
    warm = validate(cache, "rules", "--format", "json")
    assert cold[:2] == warm[:2] and cold[0] == 0
    assert (cold[2], warm[2]) == (True, False)


def test_an_edited_rule_file_is_parsed_again_and_the_others_are_kept(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder)
    cache = tmp_path / "cache"
    assert validate(cache, str(folder))[0] == 0
    welcome = folder / "welcome.rule"
    welcome.write_text(welcome.read_text(encoding="utf-8").replace("wait 1d", "wait 1 day", 1), encoding="utf-8")
    code, out, lark = validate(cache, str(folder))
    assert code == 1 and lark
    assert "welcome.rule:8:" in out
    # one kept parse per file and text: the six of the first run and the edited file's
    assert len(parses(cache)) == 7
    # the fix: parsed again, and the answer is the first one's
    welcome.write_text((ROOT / "rules" / "welcome.rule").read_text(encoding="utf-8"), encoding="utf-8")
    assert validate(cache, str(folder))[:2] == (0, validate(tmp_path / "fresh", str(folder))[1])


def test_other_parsing_code_parses_again(tmp_path, monkeypatch):
    monkeypatch.setenv("LINERULES_CACHE_DIR", str(tmp_path / "cache"))
    parsed: list[str] = []
    import engine.language.parser as parser

    real = parser.parse_file

    def counting(path, text):
        parsed.append(os.path.basename(path))
        return real(path, text)

    monkeypatch.setattr(parser, "parse_file", counting)
    first = load_project(str(ROOT / "rules"))
    assert len(parsed) == 6
    second = load_project(str(ROOT / "rules"))
    assert len(parsed) == 6  # all kept
    assert second.project.rules.keys() == first.project.rules.keys()
    assert [str(d) for d in second.diagnostics] == [str(d) for d in first.diagnostics]
    monkeypatch.setattr(project, "_parsed_stamp", "another parser")
    load_project(str(ROOT / "rules"))
    assert len(parsed) == 12


def parses(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.startswith("parsed-"))
