"""The Japanese pages (docs/ja/, README.ja.md) stay in step with the English ones: every
construct, command, option, setting and field named in an English page is named in its
Japanese twin too, and every page a marketer reads has a twin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.language.parser import keywords
from engine.language.settings import KNOWN_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: English page -> its Japanese twin(s).
TWINS = {
    "language.md": ["ja/language.md"],
    "sale-calendar.md": ["ja/sale-calendar.md"],
    "messages.md": ["ja/messages.md"],
    "settings.md": ["ja/settings.md"],
    "events.md": ["ja/events.md"],
    "testing-rules.md": ["ja/testing-rules.md"],
    "reports.md": ["ja/reports.md"],
    "errors.md": ["ja/errors.md"],
}

#: What counts as "a name" in an inline code span: a word of the language, a field, a command,
#: an option, an environment variable, a path of the HTTP API.
NAME = re.compile(r"^([a-z_][a-z0-9_]*=?|--[a-z][a-z-]*|linerules [a-z]+|[A-Z][A-Z0-9_]{3,}|/[a-z/<>]+)$")


def names(text: str) -> set[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {m for m in re.findall(r"`([^`\n]+)`", text) if NAME.match(m)}


def _read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


@pytest.mark.parametrize("english", sorted(TWINS))
def test_japanese_twin_names_everything_the_english_page_names(english):
    ja = set().union(*(names(_read(p)) for p in TWINS[english]))
    missing = sorted(names(_read(english)) - ja)
    assert not missing, f"docs/{TWINS[english][0]} does not name {missing}"


def test_every_keyword_and_setting_is_in_the_japanese_pages():
    language = _read("ja/language.md")
    assert not [k for k in sorted(keywords()) if f"`{k}`" not in language]
    settings = _read("ja/settings.md")
    assert not [k for k in KNOWN_SETTINGS if f"`{k}`" not in settings]


def test_japanese_pages_are_linked_and_written_in_japanese():
    readme = (ROOT / "README.ja.md").read_text(encoding="utf-8")
    for pages in TWINS.values():
        for page in pages:
            assert f"docs/{page}" in readme, page
            text = _read(page)
            kana = len(re.findall(r"[\u3040-\u30ff]", text))
            assert kana > 200, f"{page} is hardly Japanese"
    for word in ("ステップ配信", "配信時間帯", "流入経路", "セグメント", "休眠顧客", "ブロック率"):
        assert any(word in _read(p) for pages in TWINS.values() for p in pages), word


def test_links_between_japanese_pages_resolve():
    for page in sorted((DOCS / "ja").glob("*.md")):
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).resolve().exists(), f"{page.name} -> {target}"
