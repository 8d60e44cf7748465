"""One catalog, two languages (issue 12): the catalog is complete and consistent, every code has
its explanation in both languages, the generated error pages are current, the language is
chosen as documented, and validate / explain / report speak Japanese."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from engine import i18n
from engine.language import codes

ROOT = Path(__file__).resolve().parent.parent


def _catalog():
    with open(i18n.catalog_path("ja"), "rb") as fh:
        return read_po(fh, locale="ja")


def _placeholders(text: str) -> set[str]:
    """``{name}`` fields (not the doubled braces of a literal ``{{``, nor Liquid's ``{{ x }}``)."""
    return set(re.findall(r"(?<!\{)\{(\w+)\}(?!\})", text))


def test_catalog_holds_every_text_of_the_source(tmp_path):
    """`make catalog` has been run: what Babel extracts from the source now is in the .po file."""
    pot = tmp_path / "now.pot"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "babel.messages.frontend",
            "-q",
            "extract",
            "-F",
            str(ROOT / "babel.cfg"),
            "-k",
            "E:2",
            "-k",
            "n_:1,2",
            "-k",
            "N_",
            "--no-location",
            "-o",
            str(pot),
            str(ROOT),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    with open(pot, "rb") as fh:
        extracted = {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(fh) if m.id}
    known = {m.id if isinstance(m.id, str) else m.id[0] for m in _catalog() if m.id}
    missing = sorted(extracted - known)
    assert not missing, f"run `make catalog` and translate: {missing[:10]}"


def test_every_text_has_a_japanese_translation_with_the_same_placeholders():
    untranslated, wrong = [], []
    for m in _catalog():
        if not m.id:
            continue
        ids = [m.id] if isinstance(m.id, str) else list(m.id)
        strings = [m.string] if isinstance(m.string, str) else list(m.string)
        if m.fuzzy or not all(strings):
            untranslated.append(ids[0])
            continue
        for s in strings:
            if _placeholders(s) - {"n"} != _placeholders(ids[0]) - {"n"}:
                wrong.append((ids[0], s))
    assert not untranslated, untranslated[:10]
    assert not wrong, wrong[:5]


def test_every_code_used_has_an_explanation_in_both_languages():
    used = codes.messages_by_code()
    assert len(used) >= 5
    for code in used:
        assert codes.CODE_RE.fullmatch(code), code
        assert code in codes.CODES, f"{code} is raised but `linerules explain` does not know it"
    ja = {m.id: m.string for m in _catalog() if isinstance(m.id, str)}
    for c in codes.CODES.values():
        for part in (c.title, c.meaning, c.wrong, c.fixed):
            assert str(part).strip(), c.code
            assert ja.get(part.msgid), f"{c.code}: no Japanese for {part.msgid!r}"
        assert c.code in used, f"{c.code} is explained but never raised"


@pytest.mark.parametrize("lang,page", [("en", "docs/errors.md"), ("ja", "docs/ja/errors.md")])
def test_error_pages_are_generated_from_the_catalog(lang, page):
    assert (ROOT / page).read_text(encoding="utf-8") == codes.markdown(lang), "stale: run `make docs`"


def test_language_choice_order():
    env = {"LANG": "ja_JP.UTF-8"}
    assert i18n.choose(None, None, env) == "ja"
    assert i18n.choose(None, "en", env) == "en"
    assert i18n.choose(None, "en", {**env, "LINERULES_LANG": "ja"}) == "ja"
    assert i18n.choose("en", "ja", {**env, "LINERULES_LANG": "ja"}) == "en"
    assert i18n.choose(None, None, {"LC_ALL": "C.UTF-8", "LANG": "ja_JP.UTF-8"}) == "en"
    assert i18n.choose(None, None, {}) == "en"
    assert i18n.choose(None, None, {"LINERULES_LANG": "fr"}) == "en"


def test_texts_keep_their_arguments_in_both_languages():
    t = i18n.E("LR601", "unknown setting `{key}`", key="timzone")
    assert t == "unknown setting `timzone`" and t.code == "LR601"
    ja = t.render("ja")
    assert "`timzone`" in ja and ja != str(t)
    assert i18n.n_("{n} error", "{n} errors", 2) == "2 errors"


# ----------------------------------------------------------------------------- commands


def _cli(args, cwd=None):
    from click.testing import CliRunner

    from engine.cli import cli

    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args)
    finally:
        os.chdir(old)


def test_explain_in_both_languages():
    en = _cli(["explain", "LR602", "--lang", "en"])
    assert en.exit_code == 0
    assert en.output.startswith("LR602: unknown time zone\n\n`timezone` must be an IANA")
    assert "Wrong (settings.yaml):\n    timezone: JST\n" in en.output
    assert "Fixed:\n    timezone: Asia/Tokyo\n" in en.output
    ja = _cli(["explain", "lr602", "--lang", "ja"])
    assert ja.exit_code == 0
    assert ja.output.startswith("LR602: 不明なタイムゾーン\n")
    assert "間違った例 (settings.yaml):\n    timezone: JST\n" in ja.output
    assert "正しい例:\n    timezone: Asia/Tokyo\n" in ja.output


def test_explain_takes_the_folder_language_and_lists_every_code(tmp_path):
    (tmp_path / "settings.yaml").write_text("language: ja\n", encoding="utf-8")
    listing = _cli(["explain", "--rules", str(tmp_path)])
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert [line.split()[0] for line in lines] == list(codes.CODES)
    assert "LR601  不明な設定" in lines


def test_explain_unknown_code_suggests_the_close_one():
    result = _cli(["explain", "LR6O2", "--lang", "en"])
    assert result.exit_code == 2
    assert result.output.endswith("\nError: there is no code `LR6O2` (did you mean `LR602`?)\n")


def test_validate_in_japanese_keeps_the_caret_under_wide_characters(tmp_path):
    (tmp_path / "settings.yaml").write_text("language: ja\n# 配信の設定\ntimezone: 東京/Tokio\n", encoding="utf-8")
    (tmp_path / "r.rule").write_text("when followed then stop\n", encoding="utf-8")
    result = _cli(["validate", str(tmp_path)])
    assert result.exit_code == 1
    path = tmp_path / "settings.yaml"
    lines = result.output.splitlines()
    assert lines[0] == f"{path}:3:11: エラー[LR602]: `東京/Tokio` というタイムゾーンはありません"
    assert lines[1] == "    timezone: 東京/Tokio"
    assert lines[2] == "    " + " " * 10 + "^" * 10  # 東京 takes four columns
    assert lines[-1] == "エラー 1件、警告 0件"
    en = _cli(["validate", str(tmp_path), "--lang", "en"])
    assert en.output.splitlines()[0] == f"{path}:3:11: error[LR602]: unknown time zone `東京/Tokio`"
    assert en.output.splitlines()[2] == lines[2]


@pytest.mark.parametrize(
    "settings, expected",
    [
        # saved as Shift_JIS: its `language: ja` line still reads, the error is in Japanese
        ("language: ja   # 日本語で\ntimezone: Asia/Tokyo\n".encode("cp932"), "エラー[LR002]: ファイルが UTF-8"),
        # not valid YAML further down
        (b'language: "ja"\nwindow: "09:00-21:00\n', "エラー[LR003]: YAML の誤り"),
    ],
)
def test_a_settings_file_that_cannot_be_read_still_names_the_language(tmp_path, settings, expected):
    (tmp_path / "settings.yaml").write_bytes(settings)
    (tmp_path / "r.rule").write_text("when followed then stop\n", encoding="utf-8")
    for command in (["validate", str(tmp_path)], ["test", str(tmp_path)]):
        result = _cli(command)
        assert result.exit_code == 1 and expected in result.output, result.output
    assert "LR601  不明な設定" in _cli(["explain", "--rules", str(tmp_path)]).output.splitlines()


def test_json_and_github_output_carry_the_code_in_both_languages(tmp_path):
    (tmp_path / "settings.yaml").write_text("timzone: Asia/Tokyo\n", encoding="utf-8")
    (tmp_path / "r.rule").write_text("when followed then stop\n", encoding="utf-8")
    import json

    ja = json.loads(_cli(["validate", str(tmp_path), "--format", "json", "--lang", "ja"]).output)
    assert ja[0]["code"] == "LR601" and ja[0]["severity"] == "error"
    assert ja[0]["message"] == "`timzone` という設定はありません"
    assert ja[0]["help"] == "もしかして `timezone` ですか?"
    gh = _cli(["validate", str(tmp_path), "--format", "github", "--lang", "ja"]).output
    assert gh == (
        f"::error file={tmp_path / 'settings.yaml'},line=1,col=1,title=LR601::"
        "`timzone` という設定はありません (ヒント: もしかして `timezone` ですか?)\n"
    )


def test_environment_and_locale_choose_the_language(tmp_path, monkeypatch):
    (tmp_path / "settings.yaml").write_text("timzone: Asia/Tokyo\n", encoding="utf-8")
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    assert "エラー[LR601]" in _cli(["validate", str(tmp_path)]).output
    monkeypatch.setenv("LINERULES_LANG", "en")
    assert "error[LR601]" in _cli(["validate", str(tmp_path)]).output
    assert "エラー[LR601]" in _cli(["validate", str(tmp_path), "--lang", "ja"]).output


def test_unknown_language_in_settings_is_an_error_with_the_choices(tmp_path):
    (tmp_path / "settings.yaml").write_text("language: japanese\n", encoding="utf-8")
    out = _cli(["validate", str(tmp_path), "--lang", "en"]).output
    assert "error[LR607]: unknown language `japanese`" in out
    assert "help: write `ja` (Japanese) or `en` (English)" in out


def test_japanese_lists_space_the_joining_word_only_beside_half_width_text():
    assert i18n.join(["`a`", "`b`"], " or ").render("ja") == "`a` または `b`"
    assert i18n.join(["購入", "来店"], " or ").render("ja") == "購入または来店"
    assert i18n.join(["2件", "`x`"], " and ").render("ja") == "2件と `x`"
    assert i18n.join(["`a`", "`b`", "`c`"]).render("ja") == "`a`、`b`、`c`"
    assert i18n.join(["購入", "来店"], " or ").render("en") == "購入 or 来店"


def test_simulate_and_report_tell_a_mistaken_option_in_the_folders_language(tmp_path):
    (tmp_path / "settings.yaml").write_text("language: ja\n", encoding="utf-8")
    (tmp_path / "r.rule").write_text("when followed then stop\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text("", encoding="utf-8")
    until = _cli(["simulate", str(tmp_path / "t.jsonl"), "--rules", str(tmp_path), "--until", "2026-11-01"])
    assert until.exit_code == 2 and "`2026-11-01` には時差を付けてください" in until.output
    missing = _cli(["report", "--db", str(tmp_path / "none.db"), "--rules", str(tmp_path)])
    assert missing.exit_code == 1 and "がありません" in missing.output


def test_an_options_value_is_told_in_the_language_of_lang_or_the_folder(tmp_path):
    (tmp_path / "settings.yaml").write_text("language: ja\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text("", encoding="utf-8")
    # the folder's language, whatever the order of the options
    told = _cli(["simulate", str(tmp_path / "t.jsonl"), "--tick", "soon", "--rules", str(tmp_path)])
    assert told.exit_code == 2 and "`soon` は期間ではありません" in told.output
    listen = _cli(["run", "--listen", "localhost", "--rules", str(tmp_path)])
    assert listen.exit_code == 2 and "`localhost` は HOST:PORT の形ではありません" in listen.output
    english = _cli(["simulate", str(tmp_path / "t.jsonl"), "--rules", str(tmp_path), "--tick", "soon", "--lang", "en"])
    assert "`soon` is not a duration" in english.output
