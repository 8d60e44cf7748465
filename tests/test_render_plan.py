"""Personalised sends rendered by a plan per message and rule (engine/language/render.py,
:class:`MessagePlan`): the same pushes, errors and click-tracking links as rendering every
message whole, byte for byte. Real engine, real SQLite files; the property tests compare the
plan with :func:`render_message` for random friends."""

from __future__ import annotations

import json
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.interpreter import Engine
from engine.language import ir
from engine.language.liquidenv import plain_parts, render_plain
from engine.language.messages import (
    _SHAPED_FIELDS,
    TEXT_FIELDS,
    _Checker,
    compile_template,
    load_messages,
)
from engine.language.render import MessagePlan, RenderError, friend_vars, render_message
from engine.runtime.store import Store
from enginekit import at, compile_rules, ev

DEFINITIONS = textwrap.dedent("""\
    greeting: "{{ friend.display_name }}様、ようこそ！ 詳しくは https://shop.example.jp/guide?x=1#care。 {{ friend.points }}pt"
    emojis:
      type: text
      text: "$ https://shop.example.jp/a $ {{ friend.display_name }} https://shop.example.jp/b"
      emojis:
        - {index: 0, productId: 5ac1bfd5040ab15980c9b435, emojiId: "001"}
        - {index: 28, productId: 5ac1bfd5040ab15980c9b435, emojiId: "002"}
    liquid: "{{ friend.display_name | default: \\"お客\\" }}{% if friend.rank == 'gold' %}★{% endif %} {{ friend.points | plus: 1 }}"
    buttons:
      type: template
      altText: "{{ friend.display_name }}様への特典"
      template:
        type: buttons
        thumbnailImageUrl: https://shop.example.jp/t.jpg
        title: 特典
        text: "{{ friend.display_name }}様へ"
        actions:
          - {type: uri, label: 見る, uri: "https://shop.example.jp/item/{{ friend.code }}"}
          - {type: postback, label: "{{ friend.rank }}", data: "rank={{ friend.rank }}"}
          - {type: uri, label: 電話, uri: "tel:0312345678"}
    flex:
      - type: flex
        altText: "{{ friend.display_name }}様へ"
        contents:
          type: bubble
          hero: {type: image, url: "{{ friend.img | default: 'https://shop.example.jp/h.jpg' }}", size: full, action: {type: uri, uri: "https://shop.example.jp/h"}}
          body:
            type: box
            layout: vertical
            contents:
              - {type: text, text: "{{ friend.display_name }}様", wrap: true, color: "{{ friend.color | default: '#333333' }}"}
              - {type: text, text: "{{ friend.bio }}", wrap: true}
          footer:
            type: box
            layout: vertical
            contents:
              - type: button
                action: {type: uri, label: 見る, uri: "https://shop.example.jp/f?a=1", altUri: {desktop: "https://shop.example.jp/pc"}}
      - {type: image, originalContentUrl: "{{ friend.img | default: 'https://shop.example.jp/o.jpg' }}", previewImageUrl: "https://shop.example.jp/p.jpg"}
    quick:
      type: text
      text: "{{ friend.display_name }}様、お選びください"
      quickReply:
        items:
          - {type: action, action: {type: uri, label: 店へ, uri: "https://shop.example.jp/q"}}
          - {type: action, action: {type: message, label: "{{ friend.rank }}", text: はい}}
    imagemap:
      type: imagemap
      baseUrl: https://shop.example.jp/imagemap/1
      altText: "{{ friend.display_name }}"
      baseSize: {width: 1040, height: 1040}
      actions:
        - {type: uri, linkUri: "https://shop.example.jp/m", area: {x: 0, y: 0, width: 520, height: 1040}}
    fixed: "いつもありがとうございます https://shop.example.jp/ と https://shop.example.jp/?utm_source=x"
    adjacent: "{{ friend.display_name }}https://shop.example.jp/a{{ friend.code }} htt{{ friend.rank }} http:// {{ friend.bio }}"
    apart: "{{ friend.display_name }}「https://shop.example.jp/a?b=https://c.jp/d」 ht{{ friend.code }}\nhttps://shop.example.jp/e"
""")
DEFS, _diags = load_messages("rules/messages.yaml", DEFINITIONS)
assert not [d for d in _diags if d.is_error], [d.message for d in _diags]
#: One whose fixed part breaks a limit once its utm parameters are added: the plan leaves it
#: to render_message.
DEFS["long_uri"] = ir.MessageDef(
    "long_uri",
    (
        {
            "type": "template",
            "altText": "{{ friend.display_name }}",
            "template": {
                "type": "buttons",
                "text": "b",
                "actions": [{"type": "uri", "label": "a", "uri": "https://a.jp/" + "x" * 930}],
            },
        },
    ),
)


class Links:
    """A ``link`` that numbers the links it is given, remembering them."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, url: str) -> str:
        self.seen.append(url)
        return f"https://r.example.jp/c/{len(self.seen)}"


def store_json(objects: list) -> str:
    """What the store writes for a payload (engine/runtime/store.py ``_json``)."""
    return json.dumps(objects, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def both(name: str, friend: dict, *, rule: str = "冬のセール", utm: bool = True, tracked: bool = False):
    """(the plan's outcome, render_message's outcome): objects, their JSON and the links given
    to ``link``, or the RenderError's text."""
    defn = DEFS[name]
    plan = MessagePlan(defn, rule, utm=utm, tracked=tracked)
    fast_links, slow_links = Links(), Links()
    try:
        objects, texts = plan.render(friend, link=fast_links if tracked else None)
        assert (texts is None) == plan.slow  # the plan's own JSON, not the store's, is compared
        fast = (objects, "[" + ",".join(texts) + "]" if texts is not None else store_json(objects), fast_links.seen)
    except RenderError as e:
        fast = str(e)
    try:
        objects = render_message(defn, friend=friend, rule=rule, utm=utm, link=slow_links if tracked else None)
        slow = (objects, store_json(objects), slow_links.seen)
    except RenderError as e:
        slow = str(e)
    return plan, fast, slow


# ----------------------------------------------------------------------------- property

pieces = st.sampled_from(
    list("\"'\\{}%<>&\n\t\x00\u2028 /:?=#aZ9あ漢🎁𠮷")
    + ["👨\u200d👩\u200d👧", "https://a.jp/x", "http://b.jp", "{{ x }}", "tp://", "tps://c.jp"]
)
odd_text = st.lists(pieces, max_size=15).map("".join)
values = st.one_of(
    st.none(),
    st.text(max_size=30),
    odd_text,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.sampled_from(["a", "size", "first"]), st.text(max_size=4), max_size=2),
    st.integers(0, 2600).map(lambda n: "🎁" * n),  # past a limit counted in UTF-16 units
    st.integers(0, 12_000).map(lambda n: "あ" * n),  # past the bubble's bytes
    st.sampled_from(["https://shop.example.jp/i.jpg", "http://shop.example.jp/i.jpg", "#e86a8d", "red", "gold"]),
)
friends = st.fixed_dictionaries(
    {"id": st.just("U1")},
    optional={
        "display_name": values,
        "language": st.sampled_from(["ja", "en"]),
        "tags": st.lists(st.sampled_from(["vip", "購入済み"]), max_size=2),
        "attributes": st.dictionaries(
            st.sampled_from(["points", "rank", "code", "img", "color", "bio", "display_name", "attributes", "tags"]),
            values,
            max_size=6,
        ),
    },
)


@pytest.mark.parametrize("name", sorted(DEFS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(friend=friends, utm=st.booleans(), tracked=st.booleans())
def test_the_plan_renders_byte_for_byte_what_render_message_renders(name, friend, utm, tracked):
    plan, fast, slow = both(name, friend, utm=utm, tracked=tracked)
    assert fast == slow
    assert plan.slow == (name == "long_uri" and utm and not tracked)  # tracked: its link is replaced


@settings(max_examples=300, deadline=None)
@given(
    friend=friends,
    source=st.sampled_from(
        [
            "{{ friend.display_name }}",
            '[{{ friend.display_name | default: "お客" }}]',
            "{{- friend.rank -}} / {{ friend.attributes.points }} {{ friend.attributes.points.x }}",
            "{{ friend.tags }} {{ friend.tags.size }} {{ friend.size }} {{ rule }} {{ sale.title }} {{ nothing.here }}",
            "{{ friend.points | default: '0' }}{{ friend.bio | default: \"\" }}",
        ]
    ),
)
def test_plain_templates_render_as_liquid_renders_them(friend, source):
    template = compile_template(source)
    parts = plain_parts(template)
    assert parts is not None
    variables = {"friend": friend_vars(friend), "rule": "r", "sale": {}, "event": {}}
    text = render_plain(parts, variables)
    if text is not None:  # None: left to Liquid (a list, a path through one, ...)
        assert text == template.render(**variables)


@pytest.mark.parametrize("name", ["a\rb", "a\r\nb", "a\r\r\nb", "\r\n\r", "a\n\rb", "\r"])
def test_carriage_returns_in_a_value_come_out_as_liquid_writes_them(name):
    template = compile_template("{{ friend.display_name }}様へ")
    variables = {"friend": friend_vars({"id": "U1", "display_name": name}), "rule": "r", "sale": {}, "event": {}}
    assert render_plain(plain_parts(template), variables) == template.render(**variables)


def test_templates_with_more_than_plain_outputs_are_left_to_liquid():
    for source in ("{% if x %}a{% endif %}", "{{ x | upcase }}", "{{ x | default: y }}", "{{ x[0] }}", "{{ 'a' }}"):
        assert plain_parts(compile_template(source)) is None, source


@pytest.mark.parametrize("key", sorted(TEXT_FIELDS - _SHAPED_FIELDS) + ["emojis", "contents", "whatever"])
@given(value=st.one_of(st.text(max_size=20), odd_text, st.lists(st.text(max_size=3), max_size=2)))
@settings(max_examples=20, deadline=None)
def test_a_text_passes_the_type_check_of_fields_the_plan_does_not_check_per_friend(key, value):
    checker = _Checker(as_written=False)
    checker.field_type(key, value, (0, key))
    assert checker.problems == []


# ----------------------------------------------------------------------------- limits per friend


def test_a_value_past_each_limit_is_caught_with_the_words_of_the_whole_check():
    cases = [
        ("greeting", {"display_name": "🎁" * 2490}, "after rendering, object 1, text: `text` is 5,150 characters long"),
        ("buttons", {"display_name": "あ" * 58}, "template.text: `text` is 60"),  # fits: 58 + 様へ
        ("buttons", {"display_name": "あ" * 59}, "template.text: `text` is 61 characters long"),
        ("buttons", {"attributes": {"rank": "r" * 21}}, "actions[1].label: `label` is 21"),
        (
            "flex",
            {"attributes": {"img": "http://a.jp/x.jpg", "color": "#e86a8d"}},
            "contents.hero.url: `url` must be an https:// URL",
        ),
        ("flex", {"attributes": {"img": "https://a.jp/x.jpg", "color": "red"}}, "must be a colour"),
        (
            "flex",
            {"attributes": {"img": "https://a.jp/x.jpg", "color": "#e86a8d", "bio": "あ" * 10_000}},
            "this bubble is 30,",
        ),
        ("imagemap", {"display_name": "x" * 1501}, "altText: `altText` is 1,501"),
        ("quick", {"attributes": {"rank": "🎁" * 11}}, "quickReply.items[1].action.label: `label` is 22"),
    ]
    for name, friend, words in cases:
        plan, fast, slow = both(name, friend)
        assert not plan.slow
        assert fast == slow
        if words.endswith("is 60"):
            assert not isinstance(fast, str)
            continue
        assert isinstance(fast, str) and words in fast, (name, fast)


def test_the_plan_checks_only_the_fields_a_friend_changes():
    plan = MessagePlan(DEFS["flex"], "r", utm=True, tracked=True)
    changing = {path for path in plan.slots}
    assert (0, "altText") in changing and (0, "contents", "hero", "url") in changing
    assert (0, "contents", "footer", "contents", 0, "action", "uri") in changing  # tracked: a new URL per friend
    assert (0, "contents", "body", "layout") not in changing
    checked = {i for i, *_ in plan.checks.fields}
    assert checked <= set(plan.slots.values())
    assert plan.checks.sizes and not plan.checks.problems


# ----------------------------------------------------------------------------- through the engine


RULES = "rule r when purchased reenter always then send m"


def deliver_to(db, messages: str, people: dict[str, dict], *, settings: ir.Settings | None = None):
    """One purchase by each of ``people`` (their profile and attributes set just before),
    decided by a real engine on a real database file: (outbox rows, deliveries, links)."""
    defs, diags = load_messages("rules/messages.yaml", textwrap.dedent(messages))
    assert not [d for d in diags if d.is_error]
    proj = compile_rules(RULES, messages=defs, settings=settings)
    store = Store(str(db))
    engine = Engine(proj, store, clock=lambda: at("2026-11-01 10:00"))
    events = []
    for i, (friend, fields) in enumerate(people.items()):
        events += [
            ev("follow", friend, "2026-11-01 10:00"),
            ev("attributes", friend, "2026-11-01 10:00", set=fields),
            ev("purchase", friend, "2026-11-01 10:00", order_id=f"o{i}", amount=1000),
        ]
    engine.apply_events(events, received_at=0)
    engine.tick(at("2026-11-01 10:00"))
    outbox = store.outbox()
    raw = [r[0] for r in store.conn.execute("SELECT payload FROM outbox ORDER BY id")]
    rows = store.conn.execute("SELECT friend, status, reason FROM deliveries ORDER BY id").fetchall()
    links = store.conn.execute("SELECT token, friend, rule, message, url FROM links ORDER BY rowid").fetchall()
    store.close()
    return outbox, raw, [tuple(r) for r in rows], [tuple(r) for r in links], defs["m"]


def test_a_friend_whose_name_breaks_the_limit_is_rejected_and_the_others_get_their_push(tmp_path):
    messages = (
        'm: "{{ friend.display_name }}' + "あ" * 4900 + ' https://shop.example.jp/"\n'
    )  # 4,989 units with its utm
    people = {"U1": {"display_name": "🎁" * 2}, "U2": {"display_name": "🎁" * 16}, "U3": {"display_name": "花子"}}
    outbox, raw, rows, _links, defn = deliver_to(tmp_path / "a.db", messages, people)
    reason = None
    try:
        render_message(defn, friend={"display_name": "🎁" * 16}, rule="r")
    except RenderError as e:
        reason = str(e)
    assert reason and "LINE allows at most 5,000" in reason
    assert ("U2", "rejected", reason) in rows
    assert sorted((r[0], r[1]) for r in rows) == [("U1", "queued"), ("U2", "rejected"), ("U3", "queued")]
    assert [(o["kind"], o["recipients"]) for o in outbox] == [("push", ["U1"]), ("push", ["U3"])]
    for text, friend in zip(raw, ("U1", "U3"), strict=True):
        expected = render_message(defn, friend={"display_name": people[friend]["display_name"]}, rule="r")
        assert text == store_json(expected)  # the bytes the slow path's objects encode to


def test_a_friend_for_whom_the_template_renders_empty_is_rejected_and_the_others_get_theirs(tmp_path):
    people = {"U1": {"display_name": "花子"}, "U2": {"display_name": ""}}
    outbox, _raw, rows, _links, _defn = deliver_to(tmp_path / "e.db", 'm: "{{ friend.display_name }}"\n', people)
    assert sorted((r[0], r[1]) for r in rows) == [("U1", "queued"), ("U2", "rejected")]
    assert "`text` is empty" in dict((r[0], r[2]) for r in rows)["U2"]
    assert [(o["recipients"], o["payload"][0]["text"]) for o in outbox] == [(["U1"], "花子")]


def test_friends_who_render_alike_still_share_a_multicast(tmp_path):
    people = {f"U{i}": {"display_name": "花子" if i < 3 else "太郎"} for i in range(5)}
    outbox, *_ = deliver_to(tmp_path / "b.db", 'm: "{{ friend.display_name }}様"\n', people)
    assert sorted((o["kind"], o["recipients"], o["payload"][0]["text"]) for o in outbox) == [
        ("multicast", ["U0", "U1", "U2"], "花子様"),
        ("multicast", ["U3", "U4"], "太郎様"),
    ]


def test_tracked_links_are_stored_in_order_and_lead_to_the_utm_link(tmp_path):
    messages = """\
        m:
          - type: text
            text: "{{ friend.display_name }}様 https://shop.example.jp/a と https://shop.example.jp/b"
          - type: template
            altText: a
            template:
              type: buttons
              text: b
              actions: [{type: uri, label: 見る, uri: "https://shop.example.jp/c"}]
    """
    people = {"U1": {"display_name": "花子"}, "U2": {"display_name": "太郎"}}
    outbox, raw, rows, links, _defn = deliver_to(
        tmp_path / "c.db", messages, people, settings=ir.Settings(base_url="https://r.example.jp")
    )
    utm = "utm_source=line&utm_medium=message&utm_campaign=r&utm_content=m"
    assert [(f, u) for _t, f, _r, _m, u in links] == [
        (friend, f"https://shop.example.jp/{x}?{utm}") for friend in ("U1", "U2") for x in "abc"
    ]
    tokens = iter(t for t, *_ in links)
    for o in outbox:
        text, buttons = o["payload"]
        a, b = next(tokens), next(tokens)
        assert text["text"].endswith(f"様 https://r.example.jp/c/{a} と https://r.example.jp/c/{b}")
        assert buttons["template"]["actions"][0]["uri"] == f"https://r.example.jp/c/{next(tokens)}"
    assert all(store_json(o["payload"]) == text for o, text in zip(outbox, raw, strict=True))
    assert [r[1] for r in rows] == ["queued", "queued"]


@pytest.mark.parametrize("collecting", [True, False])
def test_the_deliver_stage_leaves_garbage_collection_as_it_found_it(tmp_path, collecting):
    import gc

    messages = 'm: "{{ friend.display_name }}様 https://shop.example.jp/"\n'
    was = gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        outbox, _raw, rows, _links, _defn = deliver_to(tmp_path / "g.db", messages, {"U1": {"display_name": "花子"}})
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()
    assert [o["payload"][0]["text"][:4] for o in outbox] == ["花子様 "] and rows == [("U1", "queued", None)]


def _base62(number: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(digits[number // 62**k % 62] for k in range(5, -1, -1))


def test_each_push_gets_its_own_retry_key_and_each_tracked_link_its_own_token(tmp_path):
    import re
    import uuid

    messages = 'm: "{{ friend.display_name }}様 https://shop.example.jp/a https://shop.example.jp/b"\n'
    people = {f"U{i}": {"display_name": f"友だち{i}"} for i in range(40)}
    db = tmp_path / "k.db"
    _outbox, _raw, _rows, links, _defn = deliver_to(db, messages, people, settings=ir.Settings(base_url="https://r.jp"))
    keys = [r[0] for r in Store(str(db)).conn.execute("SELECT retry_key FROM outbox")]
    assert len(keys) == len(set(keys)) == 40
    assert all(str(uuid.UUID(k)) == k and uuid.UUID(k).version == 7 for k in keys)  # time first
    assert keys == sorted(keys)  # in the order of the rows: each goes in at the end of the key index
    tokens = [t for t, *_ in links]
    assert len(tokens) == len(set(tokens)) == 80 and tokens == sorted(tokens)
    # the second they were made (base 62, sorting as it does), then as secrets.token_urlsafe(12)
    assert all(re.fullmatch(r"[0-9A-Za-z]{6}[A-Za-z0-9_-]{16}", t) for t in tokens)
    assert {t[:6] for t in tokens} <= {_base62(int(time.time()) - s) for s in range(60)}


_KEYS = st.sampled_from(["id", "display_name", "attributes", "tags", "points", "language", "会員", "rank"])
_VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))


@given(
    st.dictionaries(_KEYS, _VALUES, max_size=6),
    st.dictionaries(_KEYS, _VALUES, max_size=6),
    st.lists(st.text(max_size=3), max_size=4),
)
def test_the_friend_made_from_its_row_is_friend_vars_of_the_friend(fields, attributes, tags):
    # the deliver stage makes each friend as templates see it straight from its row: the same keys
    # in the same order, the same values, as friend_vars of the friend the store would give
    from engine.language.variables import friend_vars_of

    row = {**{k: v for k, v in fields.items() if k != "tags"}, "attributes": json.dumps(attributes)}
    friend = {**row, "attributes": attributes, "tags": tags}
    made = friend_vars_of(row.items(), json.loads(row["attributes"]), list(tags))
    expected = friend_vars(friend)
    assert list(made.items()) == list(expected.items())
    assert friend_vars(made) is made  # not made again when rendering
