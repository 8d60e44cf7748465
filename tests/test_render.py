"""Rendering messages per friend: Liquid, utm parameters, click links, limits after rendering."""

import copy
import datetime as dt
import textwrap
from zoneinfo import ZoneInfo

import pytest

from engine.language import ir
from engine.language.messages import load_messages
from engine.language.render import RenderError, add_utm, friend_vars, render_hash, render_message, sale_vars

TOKYO = ZoneInfo("Asia/Tokyo")
HANAKO = {
    "display_name": "山田花子",
    "language": "ja",
    "tags": {"vip", "購入済み"},
    "attributes": {"rank": "gold", "points": 1200},
}


def messages(text: str) -> dict[str, ir.MessageDef]:
    defs, diags = load_messages("rules/messages.yaml", textwrap.dedent(text))
    assert [d for d in diags if d.is_error] == []
    return defs


def render(text: str, **kwargs) -> list[dict]:
    (defn,) = messages(text).values()
    kwargs.setdefault("friend", HANAKO)
    kwargs.setdefault("rule", "welcome")
    return render_message(defn, **kwargs)


# ----------------------------------------------------------------------------- Liquid


def test_friend_variables():
    (obj,) = render(
        'm: "{{ friend.display_name }}様 {{ friend.rank }}/{{ friend.attributes.points }}'
        ' {{ friend.tags | join: \\",\\" }} {{ friend.language }} {{ rule }}"\n'
    )
    assert obj == {"type": "text", "text": "山田花子様 gold/1200 vip,購入済み ja welcome"}


def test_conditions_on_tags():
    src = 'm: "{% if friend.tags contains \\"vip\\" %}VIP様限定{% else %}通常{% endif %}"\n'
    assert render(src)[0]["text"] == "VIP様限定"
    assert render(src, friend={"display_name": "a", "tags": []})[0]["text"] == "通常"


def test_missing_variables_render_empty():
    (obj,) = render('m: "[{{ friend.nickname }}][{{ sale.title }}][{{ friend.attributes.x.y }}]"\n', friend={})
    assert obj["text"] == "[][][]"


def test_default_filter_for_missing_name():
    (obj,) = render('m: "{{ friend.display_name | default: \\"お客\\" }}様"\n', friend={})
    assert obj["text"] == "お客様"


def test_sale_variables_in_the_configured_zone():
    sale = ir.Sale(
        "s1",
        "楽天スーパーSALE",
        dt.datetime(2026, 12, 4, 11, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 10, 16, 59, tzinfo=dt.UTC),
        kind="super_sale",
        url="https://shop.example.jp/sale",
    )
    (obj,) = render(
        'm: "{{ sale.title }} {{ sale.starts | date: \\"%-m月%-d日 %H:%M\\" }}〜{{ sale.ends }} {{ sale.kind }}"\n',
        sale=sale_vars(sale, TOKYO),
        utm=False,
    )
    assert obj["text"] == "楽天スーパーSALE 12月4日 20:00〜2026-12-11 01:59:00+09:00 super_sale"


def test_friend_vars_shape():
    v = friend_vars({"display_name": "a", "attributes": {"display_name": "x", "size": "M"}})
    assert v == {"display_name": "a", "size": "M", "tags": [], "attributes": {"display_name": "x", "size": "M"}}


def test_every_string_is_rendered_and_the_definition_is_untouched():
    defs = messages("""\
        m:
          type: template
          altText: "{{ friend.display_name }}様へ"
          template:
            type: buttons
            text: "{{ friend.rank }}会員様"
            actions:
              - {type: postback, label: "{{ friend.rank }}", data: "rank={{ friend.rank }}"}
    """)
    before = copy.deepcopy(defs["m"].objects)
    (obj,) = render_message(defs["m"], friend=HANAKO, rule="r")
    assert obj["altText"] == "山田花子様へ"
    assert obj["template"]["text"] == "gold会員様"
    assert obj["template"]["actions"][0] == {"type": "postback", "label": "gold", "data": "rank=gold"}
    assert defs["m"].objects == before


def test_runtime_template_error_is_a_render_error():
    with pytest.raises(RenderError) as e:
        render('m: "{% for i in (1..5000) %}x{% endfor %}"\n')
    assert str(e.value) == (
        "message `m` (rule `welcome`): template error in object 1, text: loop iteration limit reached"
    )


# ----------------------------------------------------------------------------- utm


UTM = "utm_source=line&utm_medium=message&utm_campaign=welcome&utm_content=m"


def test_utm_added_to_text_links_keeping_params_and_fragment():
    (obj,) = render('m: "詳しくは https://shop.example.jp/guide?x=1#care。またね"\n')
    assert obj["text"] == f"詳しくは https://shop.example.jp/guide?x=1&{UTM}#care。またね"


def test_utm_added_to_uri_actions():
    (obj,) = render("""\
        m:
          type: template
          altText: a
          template:
            type: buttons
            text: b
            actions:
              - type: uri
                label: 見る
                uri: https://shop.example.jp/item/1
                altUri: {desktop: "https://shop.example.jp/pc/item/1"}
              - {type: uri, label: 電話, uri: "tel:0312345678"}
    """)
    a, b = obj["template"]["actions"]
    assert a["uri"] == f"https://shop.example.jp/item/1?{UTM}"
    assert a["altUri"]["desktop"] == f"https://shop.example.jp/pc/item/1?{UTM}"
    assert b["uri"] == "tel:0312345678"


def test_utm_added_to_imagemap_and_flex_links_but_never_images():
    objs = render("""\
        m:
          - type: imagemap
            baseUrl: https://shop.example.jp/imagemap/1
            altText: a
            baseSize: {width: 1040, height: 1040}
            actions:
              - {type: uri, linkUri: "https://shop.example.jp/a", area: {x: 0, y: 0, width: 520, height: 1040}}
          - type: flex
            altText: b
            contents:
              type: bubble
              hero: {type: image, url: "https://shop.example.jp/hero.jpg", action: {type: uri, uri: "https://shop.example.jp/b"}}
          - {type: image, originalContentUrl: "https://shop.example.jp/c.jpg", previewImageUrl: "https://shop.example.jp/c_s.jpg"}
    """)
    assert objs[0]["actions"][0]["linkUri"] == f"https://shop.example.jp/a?{UTM}"
    assert objs[0]["baseUrl"] == "https://shop.example.jp/imagemap/1"
    hero = objs[1]["contents"]["hero"]
    assert hero["action"]["uri"] == f"https://shop.example.jp/b?{UTM}"
    assert hero["url"] == "https://shop.example.jp/hero.jpg"
    assert objs[2]["originalContentUrl"] == "https://shop.example.jp/c.jpg"


def test_utm_kept_when_present():
    (obj,) = render('m: "https://shop.example.jp/?UTM_source=mail&a=1 と https://shop.example.jp/x"\n')
    assert obj["text"] == f"https://shop.example.jp/?UTM_source=mail&a=1 と https://shop.example.jp/x?{UTM}"


def test_utm_off():
    (obj,) = render('m: "https://shop.example.jp/x"\n', utm=False)
    assert obj["text"] == "https://shop.example.jp/x"


def test_utm_values_are_encoded():
    assert add_utm("https://a.jp/p", "冬のセール", "m 1") == (
        "https://a.jp/p?utm_source=line&utm_medium=message"
        "&utm_campaign=%E5%86%AC%E3%81%AE%E3%82%BB%E3%83%BC%E3%83%AB&utm_content=m+1"
    )
    assert add_utm("line://ti/p/@shop", "r", "m") == "line://ti/p/@shop"


def test_templated_link_gets_utm_after_rendering():
    sale = {"title": "セール", "url": "https://shop.example.jp/sale"}
    (obj,) = render('m: "{{ sale.title }}開催中 {{ sale.url }}"\n', sale=sale)
    assert obj["text"] == f"セール開催中 https://shop.example.jp/sale?{UTM}"


# ----------------------------------------------------------------------------- click links


def test_link_wraps_every_link_after_utm():
    seen = []

    def link(url: str) -> str:
        seen.append(url)
        return f"https://r.example.jp/c/{len(seen)}"

    objs = render(
        """\
        m:
          - type: text
            text: "A https://shop.example.jp/a B https://shop.example.jp/b?utm_source=x"
          - type: template
            altText: a
            template:
              type: buttons
              thumbnailImageUrl: https://shop.example.jp/t.jpg
              text: b
              actions: [{type: uri, label: 見る, uri: "https://shop.example.jp/c"}]
    """,
        link=link,
    )
    assert seen == [
        f"https://shop.example.jp/a?{UTM}",
        "https://shop.example.jp/b?utm_source=x",
        f"https://shop.example.jp/c?{UTM}",
    ]
    assert objs[0]["text"] == "A https://r.example.jp/c/1 B https://r.example.jp/c/2"
    assert objs[1]["template"]["actions"][0]["uri"] == "https://r.example.jp/c/3"
    assert objs[1]["template"]["thumbnailImageUrl"] == "https://shop.example.jp/t.jpg"


def test_link_without_utm():
    (obj,) = render('m: "https://shop.example.jp/a"\n', utm=False, link=lambda u: u + "#t")
    assert obj["text"] == "https://shop.example.jp/a#t"


def test_emoji_positions_follow_a_longer_link():
    (obj,) = render(
        """\
        m:
          type: text
          text: "$ https://a.jp/ $"
          emojis:
            - {index: 0, productId: 5ac1bfd5040ab15980c9b435, emojiId: "001"}
            - {index: 16, productId: 5ac1bfd5040ab15980c9b435, emojiId: "002"}
    """,
        utm=False,
        link=lambda u: "https://r.jp/123",
    )
    assert obj["text"] == "$ https://r.jp/123 $"
    assert [e["index"] for e in obj["emojis"]] == [0, 19]
    assert obj["text"][19] == "$"


# ----------------------------------------------------------------------------- limits after rendering


def test_rendered_text_over_the_limit():
    defn = messages('m: "{{ friend.display_name }}' + "あ" * 4970 + '"\n')["m"]
    (obj,) = render_message(defn, friend={"display_name": "🎁" * 15}, rule="r", utm=False)
    assert len(obj["text"]) == 4985  # 15 emoji are 30 UTF-16 units: 5,000 exactly
    with pytest.raises(RenderError) as e:
        render_message(defn, friend={"display_name": "🎁" * 16}, rule="r", utm=False)
    assert str(e.value) == (
        "message `m` (rule `r`): after rendering, object 1, text: "
        "`text` is 5,002 characters long; LINE allows at most 5,000"
    )


def test_rendered_buttons_text_over_the_limit():
    defn = messages("""\
        m:
          type: template
          altText: a
          template: {type: buttons, title: 特典, text: "{{ friend.display_name }}様へ", actions: [{type: message, label: a, text: a}]}
    """)["m"]
    with pytest.raises(RenderError) as e:
        render_message(defn, friend={"display_name": "あ" * 60}, rule="r")
    assert e.value.detail == (
        "after rendering, object 1, template.text: `text` is 62 characters "
        "long; LINE allows at most 60 with an image or title"
    )


def test_utm_can_push_a_uri_over_the_limit():
    defn = messages(
        f"m: {{type: template, altText: a, template: {{type: buttons, text: b, actions: "
        f'[{{type: uri, label: a, uri: "https://a.jp/{"x" * 930}"}}]}}}}\n'
    )["m"]
    assert render_message(defn, friend={}, rule="r", utm=False)
    with pytest.raises(RenderError, match=r"template.actions\[0\].uri: `uri` is 1,0\d\d characters"):
        render_message(defn, friend={}, rule="r")


def test_rendered_image_url_must_be_https():
    defn = messages(
        'm: {type: image, originalContentUrl: "{{ friend.img }}", previewImageUrl: "https://a.jp/p.jpg"}\n'
    )["m"]
    with pytest.raises(RenderError, match="object 1, originalContentUrl: `originalContentUrl` must be an https:// URL"):
        render_message(defn, friend={"attributes": {"img": "http://a.jp/x.jpg"}}, rule="r")


# ----------------------------------------------------------------------------- hash


def test_render_hash_is_stable_and_order_free():
    a = [{"type": "text", "text": "こんにちは"}]
    b = [{"text": "こんにちは", "type": "text"}]
    assert render_hash(a) == render_hash(b)
    assert render_hash(a) != render_hash([{"type": "text", "text": "こんばんは"}])
    assert len(render_hash(a)) == 64


def test_same_friend_data_same_hash():
    defn = messages('m: "{{ friend.display_name }}様 https://a.jp/"\n')["m"]
    one = render_message(defn, friend={"display_name": "花子"}, rule="r")
    two = render_message(defn, friend={"display_name": "花子", "language": "en"}, rule="r")
    other = render_message(defn, friend={"display_name": "太郎"}, rule="r")
    assert render_hash(one) == render_hash(two) != render_hash(other)


def test_templates_are_compiled_once():
    from engine.language.messages import compile_template

    defn = messages('m: "{{ friend.display_name }}様、{{ rule }}"\n')["m"]
    misses = compile_template.cache_info().misses
    for i in range(200):
        render_message(defn, friend={"display_name": f"客{i}"}, rule="r")
    assert compile_template.cache_info().misses == misses
