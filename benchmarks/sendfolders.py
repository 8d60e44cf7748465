"""The three personalised sends of ``benchmarks/render.py`` and ``benchmarks/send_tick.py``: their
messages, their settings and the rule folder that sends one of them. Imports no engine, so
that ``send_tick.py`` can measure another checkout's engine with it."""

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


def write_folder(root: Path, send: str) -> None:
    root.mkdir(parents=True)
    (root / "settings.yaml").write_text("timezone: Asia/Tokyo\nutm: true\n" + SENDS[send], encoding="utf-8")
    (root / "messages.yaml").write_text(MESSAGES + SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    (root / "main.rule").write_text(f'rule pick when schedule "0 10 * * *" then send {send}\n', encoding="utf-8")
