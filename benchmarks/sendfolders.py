"""The three personalised sends of ``benchmarks/render.py`` and ``benchmarks/send_tick.py``: their
messages, their settings, the rule folder that sends one of them and the friends they go to.
Imports no engine, so that ``send_tick.py`` can measure another checkout's engine with it."""

from __future__ import annotations

import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MESSAGES = textwrap.dedent("""\
    flex:
      - type: flex
        altText: "{{ friend.display_name }}様へ 今週のおすすめ"
        contents:
          type: bubble
          hero:
            type: image
            url: https://shop.example.jp/images/line/pick.jpg
            size: full
            aspectRatio: "20:13"
            aspectMode: cover
            action: {type: uri, uri: "https://shop.example.jp/item/1"}
          body:
            type: box
            layout: vertical
            spacing: sm
            contents:
              - {type: text, text: "{{ friend.display_name }}様", weight: bold, size: lg, wrap: true}
              - {type: text, text: "保有ポイント {{ friend.points }} pt", size: sm, color: "#666666"}
              - {type: text, text: 今週だけのおすすめアイテムをお届けします。, wrap: true, size: sm}
          footer:
            type: box
            layout: vertical
            contents:
              - type: button
                style: primary
                color: "#bf0000"
                action: {type: uri, label: 詳しく見る, uri: "https://shop.example.jp/item/1?ref=line"}
    text: |-
      {{ friend.display_name }}様、いつもありがとうございます！
      いま {{ friend.points }} ポイントお持ちです。今週のおすすめはこちら
      https://shop.example.jp/pick
""")

SENDS = {
    "flex": "base_url: https://r.example.jp\n",  # tracked links
    "text": "",  # utm only
    "winback_90d": "",  # the sample rules' win-back: a text with `default` and a link, and an image
}
SAMPLE = ROOT / "rules" / "messages.yaml"
#: The minute before the sends' schedule fires (10:00).
START = "2026-11-02T09:59:00+09:00"


def write_folder(root: Path, send: str) -> None:
    root.mkdir(parents=True)
    (root / "settings.yaml").write_text("timezone: Asia/Tokyo\nutm: true\n" + SENDS[send], encoding="utf-8")
    (root / "messages.yaml").write_text(MESSAGES + SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    (root / "main.rule").write_text(f'rule pick when schedule "0 10 * * *" then send {send}\n', encoding="utf-8")


def populate(conn, n: int, start: int) -> None:
    """``n`` current friends written with the database connection ``conn`` (inside the
    caller's transaction); every seventh name holds an emoji, every eleventh is long."""
    conn.execute(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :n - 1) "
        "INSERT INTO friends(id, followed_at, seen_at, display_name, attributes, created_at) "
        "SELECT printf('U%08d', i), :start - 86400, :start - 86400, "
        "CASE WHEN i % 7 = 0 THEN printf('さくら🌸%d', i) WHEN i % 11 = 0 THEN printf('山田花子%d"
        " (やまだ はなこ) Hanako Yamada', i) ELSE printf('友だち%d', i) END, "
        "json_object('points', i % 5000, 'rank', CASE WHEN i % 3 = 0 THEN 'gold' ELSE 'silver' END), "
        ":start - 86400 FROM seq",
        {"n": n, "start": start},
    )


def project_of(tmp: Path, send: str, k: int, load_project):
    """The compiled project of ``send``'s folder for round ``k``, loaded by ``load_project`` (the
    measured checkout's)."""
    folder = tmp / f"{send}-{k}"
    write_folder(folder, send)
    loaded = load_project(str(folder))
    assert loaded.project is not None, [d.message for d in loaded.diagnostics]
    return loaded.project
