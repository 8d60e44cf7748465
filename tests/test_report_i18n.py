"""``linerules report`` in both languages (issue 12): golden texts of the same databases in
English and Japanese (headings, columns, attribution notes, yen and dates formatted for Japan),
and the HTML page in Japanese.

Regenerate after an intended change of wording with
``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report_i18n.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.reports.report import main as report_main
from reportkit import CLICKS, EVENTS, SPLIT_RULES, make_folder, simulate, split_test_events

GOLDEN = Path(__file__).resolve().parent / "golden" / "report"


def _text(capsys, folder: Path, db: Path, lang: str | None, html: Path | None = None) -> str:
    code = report_main(str(db), str(folder), "text", str(html) if html else None, None, None, [], lang=lang)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out.replace(str(db), "linerules.db")


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shop")
    folder = make_folder(tmp)
    return folder, simulate(folder, EVENTS, "2026-11-10 00:00", CLICKS)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("split")
    folder = make_folder(tmp, rules=SPLIT_RULES, settings="timezone: Asia/Tokyo\nlanguage: ja\n")
    return folder, simulate(folder, split_test_events(80, 12800), "2026-11-10 00:00")


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_shop_report(shop, capsys, lang):
    _golden(f"shop.{lang}.txt", _text(capsys, *shop, lang))


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_experiment_report(experiment, capsys, lang):
    _golden(f"experiment.{lang}.txt", _text(capsys, *experiment, lang))


def test_japanese_figures_are_formatted_for_japan(shop, capsys):
    text = _text(capsys, *shop, "ja")
    assert "期間: 記録の最初 〜 2026年11月10日 0:00 (Asia/Tokyo)" in text
    assert "¥5,400" in text and "¥0" in text
    assert "2026年11月1日" in text and "2026年11月" in text


def test_settings_language_applies_without_lang(experiment, capsys):
    """The folder says `language: ja`: the report is Japanese; --lang en still wins."""
    assert "ABテスト" in _text(capsys, *experiment, None)
    assert "EXPERIMENTS" in _text(capsys, *experiment, "en")


def test_html_page_in_japanese(experiment, capsys, tmp_path):
    page = tmp_path / "report.html"
    _text(capsys, *experiment, "ja", html=page)
    html = page.read_text(encoding="utf-8")
    assert '<html lang="ja">' in html
    for words in (
        "<h1>linerules レポート</h1>",
        "<h2>ルール別</h2>",
        "<h2>アカウント全体</h2>",
        "<h2>ABテスト</h2>",
        "<th>ルール / ステップ</th>",
        "<th>配信後のブロック</th>",
        "配信から7日以内の購入を、その直前の配信1件に1回だけ数えます。",
        "2026年11月10日 0:00",
        "日ごとの配信数",
        "¥",
    ):
        assert words in html, words
    for english in ("Rules</h2>", "Conversions:", "Pushes per day", "rule / step"):
        assert english not in html, english
