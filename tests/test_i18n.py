"""One catalog, two languages (issue 12): the catalog is complete and consistent, every code has
its explanation in both languages, the generated error pages are current, the language is
chosen as documented, and validate / explain / report speak Japanese."""
from __future__ import annotations

import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from engine import codes, i18n

ROOT = Path(__file__).resolve().parent.parent


def _catalog():
    with open(i18n.catalog_path("ja"), "rb") as fh:
        return read_po(fh, locale="ja")


def _placeholders(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_catalog_holds_every_text_of_the_source(tmp_path):
    """`make catalog` has been run: what Babel extracts from the source now is in the .po file."""
    pot = tmp_path / "now.pot"
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "-q", "extract", "-F",
                    str(ROOT / "babel.cfg"), "-k", "E:2", "-k", "n_:1,2", "-k", "N_",
                    "--no-location", "-o", str(pot), str(ROOT)], check=True, cwd=ROOT,
                   capture_output=True)
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
    assert (ROOT / page).read_text(encoding="utf-8") == codes.markdown(lang), \
        "stale: run `make docs`"


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
