"""messages.yaml: shapes, every LINE limit, Liquid checks, and the exact place of every error."""

import json
import textwrap

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from engine.language import ir
from engine.language.messages import check_objects, load_messages
from engine.line.limits import utf16_len

#: Short texts made of YAML's punctuation, to reach deep into the parser.
YAMLISH = st.text(alphabet="{}[]:-&*!|>'\"\n #?,%@`<=~.\\ \tabc0123年", max_size=60)
PATH = "rules/messages.yaml"
SAMPLE_NAMES = {
    "greeting_shipping",
    "greeting",
    "coupon15",
    "coupon_reply",
    "review_request",
    "delivery_check",
    "delivery_thanks",
    "winback_90d",
    "vip_thanks",
    "sale_countdown",
    "sale_start",
    "sale_last_call",
    "weekly_pick",
    "cart_reminder",
    "shipped_notice",
    "ask_order_number",
    "member_linked",
}


def load(text: str):
    return load_messages(PATH, textwrap.dedent(text))


def found(text: str) -> list[tuple[int, int, str]]:
    _, diags = load(text)
    return [(d.line, d.column, d.message) for d in diags]


def at(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based line and column of the nth occurrence of ``needle`` in the dedented text."""
    text = textwrap.dedent(text)
    index = -1
    for _ in range(nth):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def flow(name: str, *objects) -> str:
    """A one-line YAML message definition (JSON is YAML)."""
    return f"{name}: {json.dumps(list(objects), ensure_ascii=False)}\n"


BUTTON = {"type": "uri", "label": "見る", "uri": "https://shop.example.jp/"}
POSTBACK = {"type": "postback", "label": "はい", "data": "action=yes"}

# ----------------------------------------------------------------------------- shapes


def test_shorthand_is_one_text_object():
    defs, diags = load('greeting: "友だち追加ありがとうございます！"\n')
    assert diags == []
    assert defs["greeting"] == ir.MessageDef(
        "greeting", ({"type": "text", "text": "友だち追加ありがとうございます！"},)
    )
    assert defs["greeting"].span.line == 1


def test_single_object_mapping_and_list():
    defs, diags = load("""\
        one:
          type: sticker
          packageId: 446
          stickerId: "1988"
        two:
          - {type: text, text: こんにちは}
          - {type: text, text: クーポンです}
    """)
    assert diags == []
    assert defs["one"].objects == ({"type": "sticker", "packageId": "446", "stickerId": "1988"},)
    assert [o["text"] for o in defs["two"].objects] == ["こんにちは", "クーポンです"]


def test_sample_messages_file():
    with open("rules/messages.yaml", encoding="utf-8") as f:
        defs, diags = load_messages("rules/messages.yaml", f.read())
    assert diags == []
    assert set(defs) == SAMPLE_NAMES
    assert len(defs["coupon15"].objects) == 2
    assert defs["delivery_check"].objects[0]["template"]["type"] == "confirm"
    assert [a["data"] for a in defs["delivery_check"].objects[0]["template"]["actions"]] == [
        "action=delivery&answer=yes",
        "action=delivery&answer=no",
    ]
    assert [o["type"] for o in defs["winback_90d"].objects] == ["text", "image"]


def test_empty_file_defines_nothing():
    assert load("") == ({}, [])
    assert load("# only a comment\n") == ({}, [])


def test_bad_message_name():
    assert found("1st: hello\nお知らせ-2: こんにちは\n") == [(1, 1, "`1st` is not a valid message name")]


def test_duplicate_message_name():
    assert found("a: x\nb: y\na: z\n") == [(3, 1, "duplicate key `a`")]


def test_a_second_type_in_one_object_is_told_to_start_a_new_object():
    # the `- ` of the image was left out: removing a `type:` would lose the image without a word
    _, [diag] = load("""\
        two:
          - type: text
            text: こんにちは
            type: image
            originalContentUrl: https://shop.example.jp/a.jpg
            previewImageUrl: https://shop.example.jp/a.jpg
        """)
    assert (diag.line, diag.column, diag.message) == (4, 5, "duplicate key `type`")
    assert diag.help == "a second `type:` starts another object: begin it with `- `, as in `- type: image`"


@pytest.mark.parametrize(
    "text, line, column, message, help_",
    [
        (
            "a:\n  - type: text\n    text: 本日: 20時から\n",
            3,
            13,
            "invalid YAML: a `: ` inside a value that is not quoted",
            'quote the whole value: text: "本日: 20時から"',
        ),
        (
            'a:\n  - type: text\n    text: "{{ friend.display_name | default: "お客" }}様"\n',
            3,
            46,
            'invalid YAML: a `"` inside this quoted text ends it early',
            "write the inner quotes as the other kind: text: \"{{ friend.display_name | default: 'お客' }}様\"",
        ),
        (  # the comment stays out of the text
            'a: "セール "最終日" です"  # 12月\n',
            1,
            9,
            'invalid YAML: a `"` inside this quoted text ends it early',
            "write the inner quotes as the other kind: a: \"セール '最終日' です\"",
        ),
        (
            "a: 'セール 'a' です'\n",
            1,
            9,
            "invalid YAML: a `'` inside this quoted text ends it early",
            "write the inner quotes as the other kind: a: 'セール \"a\" です'",
        ),
        (  # the space between the two parts is kept
            'a: "Hello" there\n',
            1,
            11,
            "invalid YAML: text after the closing quote",
            'put all of the text inside the quotes: a: "Hello there"',
        ),
        (
            'a:\n  - type: text\n    text: {{ friend.display_name | default: "お客" }}様\n',
            3,
            11,
            "invalid YAML: a value that starts with `{{` must be quoted",
            "quote the whole value: text: '{{ friend.display_name | default: \"お客\" }}様'",
        ),
        (
            'a: "{{ friend.display_name }}様"、こんにちは\n',
            1,
            32,
            "invalid YAML: text after the closing quote",
            'put all of the text inside the quotes: a: "{{ friend.display_name }}様、こんにちは"',
        ),
        (
            "a: {{ friend.display_name }}\n",
            1,
            5,
            "a key must be a plain name, not a list or mapping",
            'quote the whole value: a: "{{ friend.display_name }}"',
        ),
    ],
)
def test_the_commonest_ways_to_write_a_value_wrong_get_the_value_to_write(text, line, column, message, help_):
    # before, the first four were told the line was not indented like the lines above it
    _, [diag] = load(text)
    assert (diag.line, diag.column, diag.message, diag.help) == (line, column, message, help_)


def test_value_must_be_text_or_objects():
    assert found("a: 5\n") == [(1, 4, "message `a` must be text or a list of LINE message objects")]


def test_root_must_be_a_mapping():
    assert found("- a\n") == [(1, 1, "messages.yaml must map message names to messages")]


def test_at_most_five_objects():
    src = "m:\n" + "".join(f"  - {{type: text, text: t{i}}}\n" for i in range(6))
    assert found(src) == [(7, 5, "a message may hold 1 to 5 objects, this one has 6")]


def test_at_least_one_object():
    assert found("m: []\n") == [(1, 4, "a message may hold 1 to 5 objects, this one has 0")]


def test_unknown_type_suggests_close_name():
    src = "m:\n  - type: imgae\n"
    defs, diags = load(src)
    assert [(d.line, d.column, d.message, d.help) for d in diags] == [
        (2, 11, "unknown message type `imgae`", "did you mean `image`?")
    ]
    assert defs == {}


def test_missing_type():
    assert found("m:\n  - text: hi\n") == [(2, 5, "a message object needs a `type`")]


def test_yaml_1_2_core_schema_keeps_dates_times_and_yes_as_text():
    defs, diags = load("""\
        m:
          - type: text
            text: 2026-12-04
          - type: text
            text: no
        r:
          - type: flex
            altText: a
            contents: {type: bubble, hero: {type: image, url: "https://a.jp/a.png", aspectRatio: 20:13}}
    """)
    assert diags == []
    assert [o["text"] for o in defs["m"].objects] == ["2026-12-04", "no"]
    assert defs["r"].objects[0]["contents"]["hero"]["aspectRatio"] == "20:13"


def test_a_value_that_comes_out_empty_says_quote_it():
    src = """\
        m:
          - type: flex
            altText: a
            contents:
              type: bubble
              body: {type: box, layout: vertical, contents: [{type: text, text: hi}]}
              styles:
                body:
                  backgroundColor: #e86a8d
    """
    defs, diags = load(src)
    assert "m" not in defs
    assert [(d.line, d.column, d.message, d.help) for d in diags] == [
        (
            *at(src, "backgroundColor"),
            "`backgroundColor` has no value",
            'an unquoted `#` starts a comment: quote it, e.g. backgroundColor: "#e86a8d"',
        )
    ]
    assert found("m:\n  - type: text\n    text:\n") == [(3, 5, "`text` has no value")]
    # in `{...}` the comment swallows the closing brace: YAML itself fails, at the `#`
    flow_src = "m:\n  - {type: text, text: hi, color: #cccccc}\n  - {type: text, text: b}\n"
    _, diags = load(flow_src)
    assert [(d.line, d.column, d.message, d.help) for d in diags] == [
        (
            2,
            35,
            "invalid YAML: an unquoted `#` starts a comment, so the `{` or `[` before it is never closed",
            'quote the value: color: "#cccccc"',
        )
    ]
    assert found('m: [{type: text, text: "no #1 here"}]\n') == []
    # a number where LINE wants text is quoted as written, not as the number YAML read
    for written, read in (("007", "7"), ("0x1F", "31"), ("1.50", "1.5")):
        _, diags = load(f"m: {{type: text, text: {written}}}\n")
        assert [(d.message, d.help) for d in diags] == [
            (f"`text` must be text, not {read}", f'quote it: text: "{written}"')
        ]
    assert found("m: # coupon\n") == [(1, 1, "message `m` has no value")]


@pytest.mark.parametrize(
    "field, value, message, help_",
    [
        ("aspectRatio", "1.5", "`aspectRatio` must be text, not 1.5", 'quote it: aspectRatio: "1.5"'),
        ("size", "12", "`size` must be text, not 12", 'quote it: size: "12px"'),
        ("wrap", "yes", "`wrap` must be true or false, not `yes`", "YAML 1.2 reads `yes` as a text: write `true`"),
        ("flex", '"2"', "`flex` must be a number, not `2`", "write the number without quotes"),
    ],
)
def test_a_value_of_the_wrong_type_for_its_line_field(field, value, message, help_):
    src = f"""\
        m:
          - type: flex
            altText: a
            contents:
              type: bubble
              body:
                type: box
                layout: vertical
                contents:
                  - type: text
                    text: hi
                    {field}: {value}
    """
    _, diags = load(src)
    assert [(d.line, d.message, d.help) for d in diags] == [(12, message, help_)]


def test_lone_surrogate_is_an_error_at_its_line_and_a_pair_is_one_character():
    defs, diags = load('ok: "\\ud83d\\ude00"\nhello: "\\ud800"\n')
    assert defs["ok"].objects[0]["text"] == "\U0001f600"
    assert [(d.line, d.column, d.message) for d in diags] == [
        (2, 8, "this text holds a lone surrogate escape (such as `\\ud800`), which is not a character")
    ]


# ----------------------------------------------------------------------------- required fields


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"type": "text"}, "a text message needs `text`"),
        ({"type": "image", "originalContentUrl": "https://a.jp/a.jpg"}, "an image message needs `previewImageUrl`"),
        ({"type": "image"}, "an image message needs `originalContentUrl` and `previewImageUrl`"),
        ({"type": "video", "previewImageUrl": "https://a.jp/a.jpg"}, "a video message needs `originalContentUrl`"),
        ({"type": "audio", "originalContentUrl": "https://a.jp/a.m4a"}, "an audio message needs `duration`"),
        ({"type": "sticker", "packageId": "1"}, "a sticker message needs `stickerId`"),
        ({"type": "coupon", "deliveryTag": "winter"}, "a coupon message needs `couponId`"),
        ({"type": "location", "title": "店舗"}, "a location message needs `address` and `latitude` and `longitude`"),
        (
            {"type": "template", "template": {"type": "confirm", "text": "?", "actions": [POSTBACK, POSTBACK]}},
            "a template message needs `altText`",
        ),
        ({"type": "flex", "contents": {"type": "bubble"}}, "a flex message needs `altText`"),
        ({"type": "flex", "altText": "a"}, "a flex message needs `contents`"),
        (
            {
                "type": "imagemap",
                "baseUrl": "https://a.jp/m",
                "altText": "a",
                "baseSize": {"width": 1040, "height": 1040},
            },
            "an imagemap message needs `actions`",
        ),
    ],
)
def test_required_fields(obj, message):
    src = flow("m", obj)
    assert found(src) == [(1, 5, message)]


# ----------------------------------------------------------------------------- text limits


def test_text_limit_counts_utf16_units():
    ok = "🎁" * 2500  # 2,500 emoji = 5,000 UTF-16 units: the limit exactly
    assert utf16_len(ok) == 5000
    assert found(flow("m", {"type": "text", "text": ok})) == []
    src = flow("m", {"type": "text", "text": ok + "あ"})
    assert found(src) == [(1, at(src, '"🎁')[1], "`text` is 5,001 characters long; LINE allows at most 5,000")]


def test_shorthand_text_limit_points_at_the_text():
    src = "m: " + "あ" * 5001 + "\n"
    assert found(src) == [(1, 4, "`text` is 5,001 characters long; LINE allows at most 5,000")]


def test_alt_text_limit():
    src = flow("m", {"type": "flex", "altText": "あ" * 1501, "contents": {"type": "bubble"}})
    assert found(src) == [(1, at(src, '"ああ')[1], "`altText` is 1,501 characters long; LINE allows at most 1,500")]


def test_an_empty_text_is_an_error_where_it_is_written():
    # LINE answers 400 for an empty text and refuses the whole push, the other messages with it
    assert found('m: ""\n') == [(1, 4, "`text` is empty; LINE refuses a message with an empty text")]
    flex = {
        "type": "flex",
        "altText": "hi",
        "contents": {
            "type": "bubble",
            "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": ""}]},
        },
    }
    src = flow("m", flex)
    assert found(src) == [(1, at(src, '""')[1], "`text` is empty; LINE refuses a message with an empty text")]
    # a template may render something: it is checked for each friend when rendered
    assert found(flow("m", {"type": "text", "text": "{{ friend.display_name }}"})) == []


# ----------------------------------------------------------------------------- templates


def buttons(**template) -> dict:
    return {
        "type": "template",
        "altText": "ボタン",
        "template": {"type": "buttons", "text": "本文", "actions": [BUTTON], **template},
    }


def test_buttons_text_limits():
    src = flow("m", buttons(text="あ" * 161))
    assert found(src) == [(1, at(src, '"あああ')[1], "`text` is 161 characters long; LINE allows at most 160")]
    assert found(flow("m", buttons(text="あ" * 160))) == []
    src = flow("m", buttons(text="あ" * 61, title="初回限定"))
    assert found(src) == [
        (1, at(src, '"あああ')[1], "`text` is 61 characters long; LINE allows at most 60 with an image or title")
    ]
    src = flow("m", buttons(text="あ" * 61, thumbnailImageUrl="https://shop.example.jp/a.jpg"))
    assert found(src)[0][2].endswith("LINE allows at most 60 with an image or title")


def test_buttons_at_most_four_actions():
    src = flow("m", buttons(actions=[BUTTON] * 5))
    assert found(src) == [
        (1, at(src, '"actions"')[1] + 11, "`actions` of a buttons template has 5 entries; LINE allows 1 to 4")
    ]


def test_confirm_limits():
    confirm = {
        "type": "template",
        "altText": "確認",
        "template": {"type": "confirm", "text": "あ" * 241, "actions": [POSTBACK] * 3},
    }
    src = flow("m", confirm)
    assert found(src) == [
        (1, at(src, '"あああ')[1], "`text` is 241 characters long; LINE allows at most 240"),
        (1, at(src, '[{"type": "postback"')[1], "`actions` of a confirm template has 3 entries; LINE allows exactly 2"),
    ]


def column(n_actions: int = 2, **extra) -> dict:
    return {"text": "説明", "actions": [POSTBACK] * n_actions, **extra}


def carousel(*columns) -> dict:
    return {"type": "template", "altText": "カルーセル", "template": {"type": "carousel", "columns": list(columns)}}


def test_carousel_limits():
    src = flow("m", carousel(*[column()] * 11))
    assert found(src) == [(1, at(src, '[{"text"')[1], "`columns` has 11 entries; LINE allows 1 to 10")]
    src = flow("m", carousel(column(2), column(3)))
    assert found(src) == [(1, at(src, '[{"type"', 3)[1], "this column has 3 actions but the first has 2")]
    src = flow("m", carousel(column(4), column(4)))
    assert found(src)[0][2] == "`actions` of a carousel column has 4 entries; LINE allows 1 to 3"


def test_unknown_template_type():
    src = flow("m", {"type": "template", "altText": "a", "template": {"type": "button"}})
    defs, diags = load(src)
    assert [(d.message, d.help) for d in diags] == [("unknown template type `button`", "did you mean `buttons`?")]


# ----------------------------------------------------------------------------- actions and URLs


def test_action_label_limit():
    src = flow("m", buttons(actions=[{**BUTTON, "label": "あ" * 21}]))
    assert found(src) == [(1, at(src, '"あああ')[1], "`label` is 21 characters long; LINE allows at most 20")]


def test_action_needs_label_in_templates():
    src = flow("m", buttons(actions=[{"type": "uri", "uri": "https://shop.example.jp/"}]))
    assert found(src) == [(1, at(src, '{"type": "uri"')[1], "a uri action needs `label`")]


def test_uri_action_limits():
    src = flow("m", buttons(actions=[{**BUTTON, "uri": "https://shop.example.jp/" + "a" * 1000}]))
    assert found(src) == [(1, at(src, '"https://shop')[1], "`uri` is 1,024 characters long; LINE allows at most 1,000")]
    src = flow("m", buttons(actions=[{**BUTTON, "uri": "shop.example.jp"}]))
    assert found(src) == [
        (1, at(src, '"shop.example.jp"')[1], "`uri` must start with https://, http://, line:// or tel:")
    ]
    ok = [{**BUTTON, "uri": "tel:0312345678"}, {**BUTTON, "uri": "http://shop.example.jp/"}]
    assert found(flow("m", buttons(actions=ok))) == []


def test_alt_uri_desktop_limit():
    src = flow("m", buttons(actions=[{**BUTTON, "altUri": {"desktop": "https://a.jp/" + "a" * 990}}]))
    assert found(src) == [
        (1, at(src, '"https://a.jp/')[1], "`desktop` is 1,003 characters long; LINE allows at most 1,000")
    ]


def test_postback_data_limit():
    src = flow("m", buttons(actions=[{**POSTBACK, "data": "x" * 301}]))
    assert found(src) == [(1, at(src, '"xxx')[1], "`data` is 301 characters long; LINE allows at most 300")]


def test_unknown_action_type():
    src = flow("m", buttons(actions=[{"type": "postbak", "label": "a", "data": "x"}]))
    defs, diags = load(src)
    assert [(d.column, d.message, d.help) for d in diags] == [
        (at(src, '"postbak"')[1], "unknown action type `postbak`", "did you mean `postback`?")
    ]


def test_image_urls_must_be_https_and_short():
    src = flow(
        "m",
        {
            "type": "image",
            "originalContentUrl": "http://shop.example.jp/a.jpg",
            "previewImageUrl": "https://shop.example.jp/" + "a" * 2000,
        },
    )
    assert found(src) == [
        (1, at(src, '"http://')[1], "`originalContentUrl` must be an https:// URL"),
        (1, at(src, '"https://shop')[1], "`previewImageUrl` is 2,024 characters long; LINE allows at most 2,000"),
    ]


def test_templated_urls_are_checked_after_rendering():
    src = flow(
        "m", {"type": "image", "originalContentUrl": "{{ friend.image }}", "previewImageUrl": "{{ friend.image }}"}
    )
    assert found(src) == []


def test_quick_reply_limits():
    item = {"type": "action", "action": {"type": "message", "label": "はい", "text": "はい"}}
    src = flow("m", {"type": "text", "text": "どれ？", "quickReply": {"items": [item] * 14}})
    assert found(src) == [
        (1, at(src, '[{"type": "action"')[1], "quick reply `items` has 14 entries; LINE allows 1 to 13")
    ]
    long_label = {"type": "action", "action": {"type": "message", "label": "あ" * 21, "text": "a"}}
    src = flow("m", {"type": "text", "text": "どれ？", "quickReply": {"items": [long_label]}})
    assert found(src) == [(1, at(src, '"あああ')[1], "`label` is 21 characters long; LINE allows at most 20")]


# ----------------------------------------------------------------------------- flex


def bubble(text: str = "本文", label: str = "見る") -> dict:
    return {
        "type": "bubble",
        "body": {
            "type": "box",
            "layout": "vertical",
            "contents": [{"type": "text", "text": text}, {"type": "button", "action": {**BUTTON, "label": label}}],
        },
    }


def test_flex_label_limit_is_40():
    assert found(flow("m", {"type": "flex", "altText": "a", "contents": bubble(label="あ" * 40)})) == []
    src = flow("m", {"type": "flex", "altText": "a", "contents": bubble(label="あ" * 41)})
    assert found(src) == [(1, at(src, '"あああ')[1], "`label` is 41 characters long; LINE allows at most 40")]


def test_flex_bubble_size():
    src = flow("m", {"type": "flex", "altText": "a", "contents": bubble(text="x" * 30_000)})
    size = len(json.dumps(bubble(text="x" * 30_000), ensure_ascii=False, separators=(",", ":")).encode())
    assert found(src) == [
        (1, at(src, '{"type": "bubble"')[1], f"this bubble is {size:,} bytes of JSON; LINE allows at most 30,000")
    ]


def test_flex_carousel_limits():
    src = flow("m", {"type": "flex", "altText": "a", "contents": {"type": "carousel", "contents": [bubble()] * 13}})
    assert found(src) == [
        (1, at(src, '[{"type": "bubble"')[1], "the carousel's `contents` has 13 entries; LINE allows 1 to 12")
    ]
    big = [bubble(text="あ" * 5000)] * 4  # 4 x ~15 KB of UTF-8
    src = flow("m", {"type": "flex", "altText": "a", "contents": {"type": "carousel", "contents": big}})
    ((line, col, message),) = found(src)
    assert message.startswith("this carousel is ") and message.endswith("bytes of JSON; LINE allows at most 50,000")


def test_flex_image_url_must_be_https():
    hero = {**bubble(), "hero": {"type": "image", "url": "http://shop.example.jp/a.jpg"}}
    src = flow("m", {"type": "flex", "altText": "a", "contents": hero})
    assert found(src) == [(1, at(src, '"http://')[1], "`url` must be an https:// URL")]


def test_flex_contents_type():
    src = flow("m", {"type": "flex", "altText": "a", "contents": {"type": "box"}})
    assert found(src) == [(1, at(src, '"box"')[1], "flex `contents` must be a `bubble` or a `carousel`")]


# ----------------------------------------------------------------------------- Liquid


def test_liquid_syntax_error_at_the_string():
    src = 'ok: "{{ friend.display_name }}さん"\nbad: "{{ friend.display_name }さん"\n'
    defs, diags = load(src)
    assert list(defs) == ["ok"]
    # the caret at the `{{` left open; the message and its help in the user's words
    assert [(d.line, d.column, d.message, d.help) for d in diags] == [
        (
            2,
            7,
            "template error: a `{{` is not closed by `}}`",
            "close it with `}}`, e.g. {{ friend.display_name }}",
        )
    ]


def test_liquid_error_inside_a_block_points_at_its_line():
    src = textwrap.dedent("""\
        m:
          - type: text
            text: |-
              こんにちは
              {% if friend.vip %}VIP{% endiff %}
    """)
    defs, diags = load_messages(PATH, src)
    assert [(d.line, d.message, d.help) for d in diags] == [
        (5, "template error: unknown or misplaced tag `endiff`", "did you mean `endif`?")
    ]
    assert diags[0].column == at(src, "endiff")[1]


def test_unknown_filter():
    src = 'm: "{{ friend.display_name | upcse }}"\n'
    defs, diags = load(src)
    assert [(d.line, d.column, d.message, d.help) for d in diags] == [
        (1, 30, "unknown template filter `upcse`", "did you mean `upcase`?")
    ]


def test_template_warnings_point_at_the_line_inside_a_block():
    src = textwrap.dedent("""\
        m:
          - type: text
            text: |-
              こんにちは
              {{ freind.display_name }}さん、{{ friend.x | upcse }}
    """)
    defs, diags = load_messages(PATH, src)
    assert [(d.line, d.column, d.severity, d.message) for d in diags] == [
        (5, at(src, "freind")[1], "warning", "unknown template variable `freind` renders as nothing"),
        (5, at(src, "upcse")[1], "error", "unknown template filter `upcse`"),
    ]


def test_include_is_not_available():
    _, [diag] = load("m: \"{% include 'header' %}\"\n")
    assert (diag.line, diag.column, diag.message) == (1, 8, "template error: unknown or misplaced tag `include`")
    assert diag.help == "a message's templates cannot include other files: write the text in the message"


def test_a_tag_left_open_or_closed_by_the_wrong_tag_is_told_so():
    _, [open_] = load('m: "{% if friend.rank %}ゴールド"\n')
    assert (open_.column, open_.message, open_.help) == (
        5,
        "template error: `{% endif %}` is missing",
        "close the tag that starts here with `{% endif %}`",
    )
    _, [wrong] = load('m: "{% for x in friend.tags %}{{ x }}{% endif %}"\n')
    assert wrong.message == "template error: unknown or misplaced tag `endif`"
    assert wrong.help.startswith("`endif` does not close the tag that is open here")


def test_unknown_variable_is_a_warning():
    defs, diags = load('m: "{{ freind.display_name }}さん"\n')
    assert "m" in defs
    assert [(d.severity, d.message, d.help) for d in diags] == [
        ("warning", "unknown template variable `freind` renders as nothing", "did you mean `friend`?")
    ]


def test_template_limits_are_checked_as_written():
    src = flow("m", buttons(text="{{ friend.display_name }}" + "あ" * 140))
    assert found(src)[0][2] == "`text` is 165 characters long; LINE allows at most 160"


def test_emoji_after_a_template_is_refused():
    obj = {
        "type": "text",
        "text": "{{ friend.display_name }}さん$",
        "emojis": [{"index": 29, "productId": "5ac1bfd5040ab15980c9b435", "emojiId": "001"}],
    }
    src = flow("m", obj)
    assert found(src) == [(1, at(src, '"{{')[1], "a template placeholder comes before an emoji `$`")]


# ----------------------------------------------------------------------------- check_objects


def test_check_objects_reports_paths():
    problems = check_objects([{"type": "text", "text": "a"}, {"type": "image"}])
    assert [(p.path, p.message) for p in problems] == [
        ((1,), "an image message needs `originalContentUrl` and `previewImageUrl`")
    ]


# ----------------------------------------------------------------------------- robustness

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "text",
            "image",
            "template",
            "flex",
            "buttons",
            "confirm",
            "carousel",
            "bubble",
            "uri",
            "postback",
            "https://a.jp/x",
            "{{ friend.x }}",
            "{% if %}",
        ]
    ),
    lambda c: (
        st.lists(c, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "text",
                    "altText",
                    "template",
                    "contents",
                    "actions",
                    "columns",
                    "label",
                    "uri",
                    "data",
                    "originalContentUrl",
                    "previewImageUrl",
                    "quickReply",
                    "items",
                    "action",
                    "altUri",
                    "desktop",
                    "emojis",
                    "index",
                ]
            ),
            c,
            max_size=6,
        )
    ),
    max_leaves=25,
)


@hsettings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(),
        YAMLISH,
        st.dictionaries(st.text(max_size=8), _json, max_size=4).map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    )
)
def test_never_raises(text):
    defs, diags = load_messages(PATH, text)
    assert all(isinstance(d, ir.MessageDef) and 1 <= len(d.objects) <= 5 for d in defs.values())
    assert all(x.path == PATH and x.line >= 1 and x.column >= 1 for x in diags)


def test_documented_examples_are_valid():
    with open("docs/messages.md", encoding="utf-8") as f:
        doc = f.read()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    defs, diags = load_messages("docs/messages.md", example)
    assert diags == [] and set(defs) == {"greeting", "coupon15", "delivery_check"}
