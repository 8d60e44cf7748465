"""Event intake (SPEC §6): every type, every field check, batches, and property tests."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.runtime.events import KNOWN_TYPES, EventError, source_pairs
from engine.runtime.intake import parse_event_obj, parse_events

AT = "2026-11-01T10:00:00+09:00"
JST = dt.timezone(dt.timedelta(hours=9))


def ev(**fields) -> dict:
    return {"type": "follow", "friend": "U1", "at": AT, **fields}


def one(obj: dict):
    """Parse a single event as a one-line JSON Lines batch."""
    [event] = parse_events(json.dumps(obj, ensure_ascii=False))
    return event


def error_of(text: str, fmt: str = "jsonl") -> EventError:
    with pytest.raises(EventError) as info:
        parse_events(text, fmt)
    return info.value


def error_for(obj) -> str:
    return str(error_of(json.dumps(obj, ensure_ascii=False)))


# ----------------------------------------------------------------------------- every type


def test_spec_examples_parse_with_their_fields():
    text = "\n".join(
        json.dumps(o, ensure_ascii=False)
        for o in [
            {"type": "follow", "friend": "U1", "at": AT, "source": "qr=shipping"},
            {"type": "unfollow", "friend": "U1", "at": AT},
            {"type": "message", "friend": "U1", "at": AT, "text": "クーポンください"},
            {"type": "postback", "friend": "U1", "at": AT, "data": "action=survey_done&q1=a"},
            {
                "type": "purchase",
                "friend": "U1",
                "at": AT,
                "order_id": "A-1",
                "amount": 5400,
                "items": [{"product": "SKU1", "category": "cosmetics", "price": 5400, "quantity": 1}],
            },
            {"type": "cart", "friend": "U1", "at": AT, "product": "SKU1"},
            {"type": "view", "friend": "U1", "at": AT, "product": "SKU1"},
            {"type": "attributes", "friend": "U1", "at": AT, "set": {"gender": "f", "birthday": "1990-05-01"}},
            {"type": "tag", "friend": "U1", "at": AT, "add": ["vip"], "remove": []},
            {"type": "click", "friend": "U1", "at": AT, "rule": "welcome", "message": "coupon15"},
            {"type": "shipped", "friend": "U1", "at": AT, "carrier": "yamato", "parcel": {"id": 7}},
        ]
    )
    events = parse_events(text)
    assert [e.type for e in events] == [*KNOWN_TYPES[:9], "click", "shipped"]
    assert [e.line for e in events] == list(range(1, 12))
    assert all(e.friend == "U1" and e.at == dt.datetime(2026, 11, 1, 10, tzinfo=JST) for e in events)
    assert events[0].data == {"source": "qr=shipping"}
    assert events[1].data == {}
    assert events[2].data == {"text": "クーポンください"}
    assert events[3].data == {"data": "action=survey_done&q1=a"}
    assert events[4].data["items"][0] == {"product": "SKU1", "category": "cosmetics", "price": 5400, "quantity": 1}
    assert events[4].dedupe_key == "order:A-1"
    assert events[7].data == {"set": {"gender": "f", "birthday": "1990-05-01"}}
    assert events[8].data == {"add": ["vip"], "remove": []}
    assert events[9].data == {"rule": "welcome", "message": "coupon15"}
    assert events[10].data == {"carrier": "yamato", "parcel": {"id": 7}}


def test_z_offset_and_explicit_id():
    event = one(ev(at="2026-11-01T01:00:00Z", id="evt-1"))
    assert event.at == dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC)
    assert event.id == "evt-1" and event.dedupe_key == "id:evt-1"


def test_tag_event_fills_the_missing_list_and_accepts_unicode_names():
    assert one({"type": "tag", "friend": "U1", "at": AT, "remove": ["購入済み"]}).data == {
        "add": [],
        "remove": ["購入済み"],
    }


def test_non_text_message_has_a_type_and_no_text():
    assert one({"type": "message", "friend": "U1", "at": AT, "message_type": "sticker"}).data == {
        "message_type": "sticker"
    }


def test_source_pairs_helper():
    assert source_pairs("qr=shipping, ad=summer") == (("qr", "shipping"), ("ad", "summer"))
    assert source_pairs(None) == ()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "obj, expected",
    [
        (ev(at="2026-11-01T10:00:00"), 'line 1: field "at": needs a UTC offset, like 2026-11-01T10:00:00+09:00'),
        (ev(at="2026-11-01"), 'line 1: field "at": needs a UTC offset'),
        (ev(at="tomorrow"), 'line 1: field "at": "tomorrow" is not an ISO 8601 time'),
        (ev(at=1762000000), 'line 1: field "at": must be a string, got a number'),
        (ev(friend=""), 'line 1: field "friend": must not be empty'),
        (ev(friend=" U1"), 'line 1: field "friend": has spaces around it'),
        (ev(friend=7), 'line 1: field "friend": must be a string, got a number'),
        (ev(source="qr"), 'line 1: field "source": "qr" is not a list of key=value pairs'),
        (ev(source="qr=,ad=x"), 'line 1: field "source": "qr=,ad=x" is not a list of key=value pairs'),
        (ev(sorce="qr=x"), 'line 1: field "sorce": is not a field of follow events (did you mean `source`?)'),
        ({"friend": "U1", "at": AT}, 'line 1: field "type": is missing'),
        ({"type": "follow", "at": AT}, 'line 1: field "friend": is missing'),
        (
            {"type": "shipped", "frend": "U1", "at": AT},
            'line 1: field "friend": is missing (is `frend` a typo of `friend`?)',
        ),
        (ev(type="Follow"), 'line 1: field "type": unknown type `Follow` (did you mean `follow`?)'),
        (ev(type="shipped now"), 'line 1: field "type": "shipped now" is not a name'),
        (ev(type="message"), 'line 1: field "text": is missing'),
        (ev(type="message", text="hi", message_type="image"), 'line 1: field "text": only text messages have text'),
        (ev(type="postback"), 'line 1: field "data": is missing'),
        (ev(type="postback", data="a=1", params={"date": 5}), 'line 1: field "params.date": must be a string'),
        (ev(type="purchase", amount=1), 'line 1: field "order_id": is missing'),
        (ev(type="purchase", order_id="A", amount=-1), 'line 1: field "amount": must be 0 or more, got -1'),
        (ev(type="purchase", order_id="A", amount="5400"), 'line 1: field "amount": must be a number, got a string'),
        (ev(type="purchase", order_id="A", amount=True), 'line 1: field "amount": must be a number, got true'),
        (
            ev(type="purchase", order_id="A", amount=1, items=[{"product": "S", "categry": "c"}]),
            'line 1: field "items[0].categry": is not a field of a purchase item (did you mean `category`?)',
        ),
        (
            ev(type="purchase", order_id="A", amount=1, items=[{"price": 1}]),
            'line 1: field "items[0].product": is missing',
        ),
        (
            ev(type="purchase", order_id="A", amount=1, items=[{"product": "S", "quantity": 0}]),
            'line 1: field "items[0].quantity": must be 1 or more',
        ),
        (ev(type="purchase", order_id="A", amount=1, items="S"), 'line 1: field "items": must be a list'),
        (ev(type="cart"), 'line 1: field "product": is missing'),
        (ev(type="view", product=""), 'line 1: field "product": must not be empty'),
        (ev(type="attributes", set={"1st": "x"}), 'line 1: field "set.1st": "1st" is not a name'),
        (ev(type="attributes", set={"tier": [1]}), 'line 1: field "set.tier": must be a string, number or true/false'),
        (ev(type="attributes", set={"orders": 3}), 'line 1: field "set.orders": `orders` is computed from purchases'),
        (ev(type="tag"), 'line 1: field "add": is missing'),
        (ev(type="tag", add=["vip"], remove=["vip"]), 'line 1: field "remove": `vip` is both added and removed'),
        (ev(type="tag", add=["v i p"]), 'line 1: field "add[0]": "v i p" is not a name'),
        (ev(id=""), 'line 1: field "id": must not be empty'),
    ],
)
def test_bad_field_is_named(obj, expected):
    assert error_for(obj).startswith(expected)


@pytest.mark.parametrize(
    "obj, expected",
    [
        # numbers the store and the clock cannot hold (issue: 10**30 made every later tick fail)
        (
            ev(type="purchase", order_id="A", amount=10**30),
            'line 1: field "amount": is too large: 1e+30 (at most 1,000,000,000,000)',
        ),
        (ev(type="purchase", order_id="A", amount=1e300), 'line 1: field "amount": is too large: 1e+300'),
        (
            ev(type="purchase", order_id="A", amount=1, items=[{"product": "S", "price": 10**13}]),
            'line 1: field "items[0].price": is too large',
        ),
        (
            ev(type="purchase", order_id="A", amount=1, items=[{"product": "S", "quantity": 10**30}]),
            'line 1: field "items[0].quantity": is too large: 1e+30 (at most 1,000,000)',
        ),
        (ev(type="attributes", set={"points": 10**30}), 'line 1: field "set.points": is too large: 1e+30'),
        (ev(type="shipped", box={"weights": [1, 2**64]}), 'line 1: field "box.weights[1]": is too large'),
        (
            ev(at="9999-12-31T23:59:59+00:00"),
            'line 1: field "at": 9999-12-31T23:59:59+00:00 is out of range: times from 1970 to 2199 are accepted',
        ),
        (ev(at="2200-01-01T09:00:00+09:00"), 'line 1: field "at": 2200-01-01T09:00:00+09:00 is out of range'),
        (ev(at="1969-12-31T23:59:59Z"), 'line 1: field "at": 1969-12-31T23:59:59Z is out of range'),
        (ev(at="0001-01-01T00:00:00+09:00"), 'line 1: field "at": 0001-01-01T00:00:00+09:00 is out of range'),
        # event types spelled like rule words (SPEC §6)
        (
            ev(type="carted"),
            'line 1: field "type": unknown type `carted`: `carted` is how rules say it; '
            "the event is `cart` (did you mean `cart`?)",
        ),
        (ev(type="purchased"), "(did you mean `purchase`?)"),
        (ev(type="viewed"), "(did you mean `view`?)"),
        (ev(type="followed"), "(did you mean `follow`?)"),
        (ev(type="unfollowed"), "(did you mean `unfollow`?)"),
        (ev(type="blocked"), "(did you mean `unfollow`?)"),
        (ev(type="clicked"), "(did you mean `click`?)"),
        (ev(type="tagged"), "(did you mean `tag`?)"),
        (ev(type="order"), "(did you mean `purchase`?)"),
        (ev(type="Carted"), "(did you mean `cart`?)"),
    ],
)
def test_out_of_range_numbers_and_rule_words_are_named(obj, expected):
    message = error_for(obj)
    assert message.startswith(expected) or message.endswith(expected), message


def test_largest_accepted_values_are_kept():
    event = one(
        ev(
            type="purchase",
            order_id="A",
            amount=10**12,
            at="2199-12-31T23:59:59Z",
            items=[{"product": "S", "price": 10**12, "quantity": 10**6}],
        )
    )
    assert event.data["amount"] == 10**12 and event.at.year == 2199
    assert one(ev(type="attributes", set={"points": 2**63 - 1})).data["set"]["points"] == 2**63 - 1


def test_a_custom_type_that_is_no_rule_word_is_fine():
    assert one(ev(type="shipped")).type == "shipped"
    assert one(ev(type="ordered_gift")).type == "ordered_gift"


def test_error_names_the_line_and_field():
    text = "\n".join([json.dumps(ev()), "", json.dumps(ev(at="2026-11-01T10:00:00"))])
    err = error_of(text)
    assert (err.line, err.field) == (3, "at")
    assert str(err) == 'line 3: field "at": needs a UTC offset, like 2026-11-01T10:00:00+09:00'


def test_malformed_json_line_names_line_and_column():
    err = error_of(json.dumps(ev()) + '\n{"type": "follow" "friend": "U1"}')
    assert str(err) == "line 2: invalid JSON at column 19: Expecting ',' delimiter"


def test_duplicate_keys_and_nan_are_rejected():
    assert (
        str(error_of('{"type": "follow", "friend": "U1", "friend": "U2", "at": "%s"}' % AT))
        == 'line 1: field "friend": appears twice in one object'
    )
    assert "NaN" in str(
        error_of('{"type": "purchase", "friend": "U1", "at": "%s", "order_id": "A", "amount": NaN}' % AT)
    )


def test_lone_surrogate_is_rejected():
    err = error_of('{"type": "message", "friend": "U1", "at": "%s", "text": "\\ud800"}' % AT)
    assert err.field == "text" and "surrogate" in str(err)


def test_non_object_line_is_rejected():
    assert str(error_of("[1, 2]")).startswith("line 1: an event must be a JSON object")


def test_json_format_single_object_and_list():
    [single] = parse_events(json.dumps(ev()), "json")
    assert single.line == 1 and single.type == "follow"
    both = parse_events(json.dumps([ev(), ev(friend="U2")]), "json")
    assert [(e.friend, e.line) for e in both] == [("U1", 1), ("U2", 2)]
    err = error_of(json.dumps([ev(), ev(at="x")]), "json")
    assert str(err).startswith('item 2: field "at": "x" is not an ISO 8601 time')
    assert str(error_of('[\n  {"type": }\n]', "json")).startswith("line 2: invalid JSON at column 12")
    assert str(error_of(json.dumps(ev(friend=None)), "json")) == 'line 1: field "friend": must be a string, got null'
    # one object names the line it starts on, as JSON Lines do (docs/events.md)
    assert error_of("\n\n" + json.dumps(ev(friend=None), indent=2), "json").line == 3


def test_blank_lines_and_crlf_are_fine():
    events = parse_events("\r\n" + json.dumps(ev()) + "\r\n\r\n" + json.dumps(ev(friend="U2")) + "\r\n")
    assert [(e.friend, e.line) for e in events] == [("U1", 2), ("U2", 4)]
    assert parse_events("") == [] and parse_events("\n \n") == []


def test_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown event format"):
        parse_events("", "csv")


def test_parse_event_obj_uses_the_given_line():
    assert parse_event_obj(ev(), 12).line == 12
    with pytest.raises(EventError, match="^line 7: "):
        parse_event_obj(ev(at=None), 7)


# ----------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63) + 1, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
event_keys = st.sampled_from(
    [
        "type",
        "friend",
        "at",
        "id",
        "source",
        "text",
        "data",
        "params",
        "order_id",
        "amount",
        "items",
        "product",
        "set",
        "add",
        "remove",
        "message_type",
    ]
)
near_events = st.dictionaries(event_keys, json_values | st.sampled_from([*KNOWN_TYPES, AT, "U1", "x=y"]), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, near_events))
def test_any_json_value_gives_an_event_or_an_event_error(value):
    try:
        parse_events(json.dumps(value))
    except EventError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_line_gives_events_or_an_event_error(text):
    for fmt in ("jsonl", "json"):
        try:
            parse_events(text, fmt)
        except EventError:
            pass


names = st.from_regex(r"[a-zA-Zぁ-ん][a-z0-9_\-]{0,6}", fullmatch=True)
ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=10)
times = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),
    max_value=dt.datetime(2100, 1, 1),
    timezones=st.sampled_from([dt.UTC, JST, dt.timezone(dt.timedelta(hours=-5))]),
)
amounts = st.integers(0, 10**7) | st.floats(0, 1e7, allow_nan=False)
fields_by_type = {
    "follow": st.fixed_dictionaries({}, optional={"source": st.sampled_from(["qr=shipping", "ad=summer,qr=x"])}),
    "unfollow": st.just({}),
    "message": st.fixed_dictionaries({"text": st.text(max_size=20)}),
    "postback": st.fixed_dictionaries(
        {"data": st.text(max_size=20)}, optional={"params": st.dictionaries(names, st.text(max_size=5), max_size=2)}
    ),
    "purchase": st.fixed_dictionaries(
        {"order_id": ids, "amount": amounts},
        optional={
            "items": st.lists(
                st.fixed_dictionaries(
                    {"product": ids}, optional={"category": ids, "price": amounts, "quantity": st.integers(1, 99)}
                ),
                max_size=3,
            )
        },
    ),
    "cart": st.fixed_dictionaries({"product": ids}),
    "view": st.fixed_dictionaries({"product": ids}),
    "attributes": st.fixed_dictionaries(
        {
            "set": st.dictionaries(
                names.filter(lambda n: n not in ("orders", "spent")),
                st.text(max_size=5) | st.integers(-(2**63) + 1, 2**63 - 1) | st.booleans(),
                max_size=3,
            )
        }
    ),
    "tag": st.fixed_dictionaries({"add": st.lists(names, max_size=3, unique=True)}),
    "shipped": st.dictionaries(
        names.filter(lambda n: n not in ("type", "friend", "at", "id")), json_values, max_size=3
    ),
}


@st.composite
def valid_events(draw):
    kind = draw(st.sampled_from(sorted(fields_by_type)))
    extra = draw(fields_by_type[kind])
    base = {"type": kind, "friend": draw(ids), "at": draw(times).isoformat()}
    if draw(st.booleans()):
        base["id"] = draw(ids)
    return {**base, **extra}


@settings(max_examples=200, deadline=None)
@given(st.lists(valid_events(), min_size=1, max_size=5))
def test_valid_events_round_trip(objs):
    events = parse_events("\n".join(json.dumps(o, ensure_ascii=False) for o in objs))
    for obj, event in zip(objs, events, strict=True):
        assert (event.type, event.friend, event.id) == (obj["type"], obj["friend"], obj.get("id"))
        assert event.at == dt.datetime.fromisoformat(obj["at"]) and event.at.utcoffset() is not None
        expected = {k: v for k, v in obj.items() if k not in ("type", "friend", "at", "id")}
        if obj["type"] == "tag":
            expected.setdefault("remove", [])
        assert event.data == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(valid_events(), min_size=1, max_size=6), st.data())
def test_one_bad_event_anywhere_rejects_the_batch(objs, data):
    position = data.draw(st.integers(0, len(objs)))
    bad = dict(data.draw(valid_events()))
    bad["at"] = bad["at"][:19]  # drop the offset
    objs = objs[:position] + [bad] + objs[position:]
    result = None
    with pytest.raises(EventError) as info:
        result = parse_events("\n".join(json.dumps(o, ensure_ascii=False) for o in objs))
    assert result is None
    assert (info.value.line, info.value.field) == (position + 1, "at")


def test_a_whole_number_attribute_out_of_range_names_the_range():
    assert error_for({"type": "attributes", "friend": "U1", "at": AT, "set": {"points": 10**19}}) == (
        'line 1: field "set.points": is too large: 1e+19 (whole numbers go from '
        "-9,223,372,036,854,775,807 to 9,223,372,036,854,775,807)"
    )


def test_an_id_of_a_hundred_thousand_characters_is_refused_naming_the_field():
    assert error_for(ev(friend="U" * 100_000)) == (
        'line 1: field "friend": is 100,000 characters long; ids, products and categories have at most 1,000'
    )
    assert one(ev(friend="U" * 1000)).friend == "U" * 1000
