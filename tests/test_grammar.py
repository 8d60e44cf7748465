"""The rule language's syntax: every construct of SPEC §2 parses to the expected tree, and
syntax errors read as plain words at the right place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.language import astnodes as A
from engine.language.parser import describe, keywords, parse_duration, parse_file

ONE_LINER = "when followed via qr=shipping then wait 1d send coupon15 if not purchased"

WELCOME = """# rules/welcome.rule
rule welcome "Welcome for friends who scanned the QR card in the parcel"
  when followed via qr=shipping
  exit when blocked
  then
    send greeting_shipping
    wait 1d
    send coupon15 if not purchased
    wait 3d at 12:00
    send review_request if purchased

segment vip: top 20% by spent within 365d or orders >= 10
"""


def parse_ok(text: str, path: str = "t.rule") -> A.RuleFile:
    f, diags = parse_file(path, text)
    assert diags == [], diags
    return f


def only_rule(text: str) -> A.RuleDef:
    (item,) = parse_ok(text).items
    assert isinstance(item, A.RuleDef)
    return item


def first_error(text: str) -> str:
    _, diags = parse_file("t.rule", text)
    assert diags, "expected a syntax error"
    d = diags[0]
    return f"{d.line}:{d.column}: {d.message}" + (f" | {d.help}" if d.help else "")


def test_one_line_form_is_a_complete_file():
    rule = only_rule(ONE_LINER)
    assert rule.name is None
    assert isinstance(rule.trigger, A.CondTrigger)
    assert isinstance(rule.trigger.cond, A.Followed)
    assert [(p.key.value, p.value) for p in rule.trigger.cond.pairs] == [("qr", "shipping")]
    wait, send = rule.steps
    assert isinstance(wait, A.WaitStep) and wait.duration.seconds == 86400
    assert isinstance(send, A.SendStep) and [m.value for m in send.messages] == ["coupon15"]
    assert isinstance(send.guard.cond, A.Not)
    assert isinstance(send.guard.cond.item, A.Activity)


def test_spec_example_file_with_rule_and_segment():
    f = parse_ok(WELCOME)
    rule, seg = f.items
    assert rule.name.value == "welcome"
    assert rule.description.value.startswith("Welcome for friends")
    assert [type(o) for o in rule.options] == [A.ExitWhen]
    assert [type(s).__name__ for s in rule.steps] == ["SendStep", "WaitStep", "SendStep", "WaitStep", "SendStep"]
    assert rule.steps[3].at.text == "12:00"
    assert isinstance(seg, A.SegmentDef) and seg.name.value == "vip"
    assert isinstance(seg.cond, A.Or)
    top, cmp_ = seg.cond.items
    assert top.percent.value == 20 and top.measure.within.seconds == 365 * 86400
    assert cmp_.op == ">=" and cmp_.value.value == 10


def test_spans_point_at_the_text():
    f = parse_ok(WELCOME, "rules/welcome.rule")
    send = f.items[0].steps[2]
    assert send.messages[0].span.path == "rules/welcome.rule"
    assert (send.messages[0].span.line, send.messages[0].span.column) == (8, 10)
    assert send.messages[0].span.end_column == 18


@pytest.mark.parametrize(
    "trigger, kind",
    [
        ("followed", A.CondTrigger),
        ("followed via qr=shipping, ad=summer", A.CondTrigger),
        ("unfollowed", A.UnfollowedTrigger),
        ("linked", A.LinkedTrigger),
        ('message "クーポン", "coupon"', A.MessageTrigger),
        ('message exactly "はい"', A.MessageTrigger),
        ("postback action=survey_done", A.PostbackTrigger),
        ("purchased", A.CondTrigger),
        ("purchased product=SKU-1", A.CondTrigger),
        ("purchased category=cosmetics", A.CondTrigger),
        ("carted", A.CondTrigger),
        ("carted product=SKU1", A.CondTrigger),
        ("viewed product=SKU1", A.CondTrigger),
        ("tagged vip", A.CondTrigger),
        ("event shipped", A.EventTrigger),
        ('event shipped carrier=yamato box="large box"', A.EventTrigger),
        ('schedule "0 20 * * 5"', A.ScheduleTrigger),
        ("sale starts in 14d at 12:00", A.SaleTrigger),
        ("sale ends in 0d at 10:00", A.SaleTrigger),
        ("sale starts", A.SaleTrigger),
        ("sale kind=super_sale starts in 1d", A.SaleTrigger),
        ("last purchase older than 90d", A.CondTrigger),
        ("total_spent >= 50000", A.CondTrigger),
        ("in segment vip", A.CondTrigger),
    ],
)
def test_every_trigger_parses(trigger, kind):
    rule = only_rule(f"when {trigger} then send x")
    assert isinstance(rule.trigger, kind)


def test_trigger_details():
    msg = only_rule('when message exactly "はい" then send x').trigger
    assert msg.exact and [k.value for k in msg.keywords] == ["はい"]
    sale = only_rule("when sale kind=super_sale ends in 1d12h at 10:00 then send x").trigger
    assert (sale.edge, sale.kind.value, sale.before.seconds, sale.at.text) == ("ends", "super_sale", 129600, "10:00")
    ev = only_rule('when event shipped carrier=yamato box="large box" then send x').trigger
    assert ev.name.value == "shipped"
    assert [(p.key.value, p.value) for p in ev.pairs] == [("carrier", "yamato"), ("box", "large box")]


@pytest.mark.parametrize(
    "cond, node",
    [
        ("purchased", A.Activity),
        ("purchased within 30d", A.Activity),
        ("purchased product=X within 7d", A.Activity),
        ("purchased category=Y", A.Activity),
        ("clicked", A.Activity),
        ("clicked within 2d", A.Activity),
        ("viewed product=X within 1d", A.Activity),
        ("carted within 1d", A.Activity),
        ("carted product=X", A.Activity),
        ("tagged 購入済み", A.Tagged),
        ("blocked", A.Blocked),
        ("followed via qr=shipping", A.Followed),
        ("friend for 30d", A.FriendFor),
        ("friend within 30d", A.FriendFor),
        ("last purchase older than 90d", A.LastPurchaseOlder),
        ("never purchased", A.NeverPurchased),
        ("orders = 3", A.Compare),
        ("total_spent != 0", A.Compare),
        ("spent within 365d < 10000.5", A.Compare),
        ('display_name <= "m"', A.Compare),
        ('language > "a"', A.Compare),
        ("gender >= 1", A.Compare),
        ("top 20% by spent within 365d", A.Top),
        ("in segment vip", A.InSegment),
        ("variant a", A.Variant),
        ("not blocked", A.Not),
        ("(blocked)", A.Blocked),
        ("blocked and tagged a", A.And),
        ("blocked or tagged a", A.Or),
    ],
)
def test_every_condition_parses(cond, node):
    rule = only_rule(f"when followed then send x if {cond}")
    assert isinstance(rule.steps[0].guard.cond, node)


def test_and_binds_tighter_than_or_and_parentheses_group():
    c = only_rule("when followed then send x if blocked or tagged a and tagged b").steps[0].guard.cond
    assert isinstance(c, A.Or) and isinstance(c.items[1], A.And)
    c = only_rule("when followed then send x if (blocked or tagged a) and tagged b").steps[0].guard.cond
    assert isinstance(c, A.And) and isinstance(c.items[0], A.Or)
    c = only_rule("when followed then send x if not not blocked").steps[0].guard.cond
    assert isinstance(c, A.Not) and isinstance(c.item, A.Not)


def test_every_step_parses():
    rule = only_rule("""when followed then
        send a, b unless purchased
        wait 2w
        wait 3d at 12:00
        wait until 12:00
        wait until monday
        wait until friday at 20:00
        wait for purchased up to 3d
        wait for postback action=delivery up to 1d
        tag 購入済み if purchased
        untag vip
        set rank = "gold"
        set score = 3 if tagged vip
        menu member
        start other if tagged vip
        stop if blocked
        stop""")
    kinds = [type(s).__name__ for s in rule.steps]
    assert kinds == [
        "SendStep",
        "WaitStep",
        "WaitStep",
        "WaitUntilStep",
        "WaitUntilStep",
        "WaitUntilStep",
        "WaitForStep",
        "WaitForStep",
        "TagStep",
        "UntagStep",
        "SetStep",
        "SetStep",
        "MenuStep",
        "StartStep",
        "StopStep",
        "StopStep",
    ]
    assert rule.steps[0].guard.negated
    assert rule.steps[4].weekday.value == "monday" and rule.steps[4].at is None
    assert rule.steps[5].at.text == "20:00"
    assert rule.steps[10].value.value == "gold"
    assert rule.steps[11].value.value == 3


def test_every_option_parses_before_or_after_steps():
    rule = only_rule("""when followed
        if not tagged vip
        exit when blocked
        reenter after 90d
        window 10:00-20:00
        then send x
        priority -2
        split a 50%, b 50%
        holdout 10%""")
    assert rule.entry is not None and not rule.entry.negated
    assert [type(o).__name__ for o in rule.options] == ["ExitWhen", "Reenter", "Window", "Priority", "Split", "Holdout"]
    assert rule.options[3].value == -2
    assert [(i.name.value, i.percent.value) for i in rule.options[4].items] == [("a", 50), ("b", 50)]
    for mode in ("never", "always"):
        assert only_rule(f"when followed then send x reenter {mode}").options[0].mode == mode
    assert only_rule("when followed unless tagged a then send x").entry.negated


def test_whitespace_and_comments_are_insignificant():
    spread = "when\nfollowed   # who\n via\n qr = shipping then\n\twait 1d send coupon15 if not purchased # end"
    a, b = only_rule(ONE_LINER), only_rule(spread)
    assert type(a.trigger.cond) is type(b.trigger.cond)
    assert [p.value for p in b.trigger.cond.pairs] == ["shipping"]


def test_several_rules_and_segments_in_one_file():
    f = parse_ok(
        "when followed then send a\nwhen purchased then send b exit when blocked\n"
        "rule x when tagged a then stop segment s: in segment t\nsegment t: blocked"
    )
    assert [type(i).__name__ for i in f.items] == ["RuleDef", "RuleDef", "RuleDef", "SegmentDef", "SegmentDef"]


def test_durations():
    assert parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200
    assert parse_duration("1d12h") == 129600
    assert parse_duration("2w") == 14 * 86400
    assert parse_duration("0d") == 0


def test_string_escapes():
    rule = only_rule(r'when message "say \"hi\"", "a\\b" then send x')
    assert [k.value for k in rule.trigger.keywords] == ['say "hi"', "a\\b"]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "when followed send greeting",
            "1:15: missing `then` before `send` | steps come after `then`, as in `when followed then send greeting`",
        ),
        (
            "when then send x",
            "1:6: unexpected `then`; expected a trigger (`followed`, `message`, `schedule`, ... or a condition) | `then` is a keyword: what goes before it is missing",
        ),
        (
            "when followed then wiat 1d send x",
            "1:20: unexpected `wiat`; expected a step (`send`, `wait`, `tag`, ...) | did you mean `wait`?",
        ),
        (
            'when followed then tag "VIP"',
            '1:24: unexpected text "VIP"; expected a name | a name is written without quotes: `VIP`',
        ),
        (
            "when message 「クーポン」 then send x",
            '1:14: unexpected `「クーポン」`; expected a quoted text like "coupon" or `exactly` | write the text '
            'in straight double quotes: "クーポン"',
        ),
        (  # the whole text, spaces and all
            "when message 「送料 無料」 then send x",
            '1:14: unexpected `「送料`; expected a quoted text like "coupon" or `exactly` | write the text '
            'in straight double quotes: "送料 無料"',
        ),
        (
            "when message 'coupon' then send x",
            "1:14: unexpected `'coupon'`; expected a quoted text like \"coupon\" or `exactly` | write the text "
            'in straight double quotes: "coupon"',
        ),
        (
            "when followed then wait for purchased 1d send x",
            "1:39: `wait for` needs how long it waits: `up to` and a duration | write `up to 1d`: the friend "
            "goes on at the event, or after that long",
        ),
        (
            "when followed via qr：shipping then send x",
            "1:21: `：` is a full-width character | a key and its value are joined by `=`: `qr=shipping`",
        ),
        (
            "when followed then wait 1d at 10：00 send x",
            "1:33: `：` is a full-width character | write the half-width `:`",
        ),
        (
            "when followed window 10：00-20:00 then send x",
            "1:24: `：` is a full-width character | write the half-width `:`",
        ),
        (  # a full-width comma after a pair's value is not part of the value (`shipping、`)
            "when followed via qr=shipping、ad=summer then send x",
            "1:30: `、` is a full-width character | write the half-width `,`",
        ),
        (
            "when event shipped carrier=yamato， then send x",
            "1:34: `，` is a full-width character | write the half-width `,`",
        ),
        (
            "when followed then send x\n  wiat 1d send x",
            "2:3: unexpected `wiat`; expected `,`, `if`, `unless`, a step (`send`, `wait`, `tag`, ...), an option (`exit when`, `reenter`, `window`, ...), another rule or the end of the file | did you mean `wait`?",
        ),
        (
            "when followed then send x if purchsed within 3d",
            "1:30: unexpected `purchsed`; expected a condition (`purchased`, `tagged vip`, `orders >= 3`, ...) | did you mean `purchased`?",
        ),
        (
            "when purchase then send x",
            "1:6: unexpected `purchase`; expected a trigger (`followed`, `message`, `schedule`, ... or a condition) | did you mean `purchased`?",
        ),
        (
            "when folowed then send x",
            "1:6: unexpected `folowed`; expected a trigger (`followed`, `message`, `schedule`, ... or a condition) | did you mean `followed`?",
        ),
        ("when followed then wait 14days send x", "1:25: `14days` is not a duration | write `14d`"),
        ("when followed then wait 2 weeks send x", "1:25: `2 weeks` is not a duration | write `2w`"),
        ("when followed then wait 1mo send x", "1:25: `1mo` is not a duration | there is no month unit: write `30d`"),
        ("when followed then wait 1y send x", "1:25: `1y` is not a duration | there is no year unit: write `365d`"),
        (
            "when followed then wait 30s send x",
            "1:25: `30s` is not a duration | there is no seconds unit: the shortest duration is a minute, `1m`",
        ),
        (
            "when followed then send x if top 20％ by orders",
            "1:36: `％` is a full-width character | write the half-width `%`",
        ),
        ("when followed then send x、y", "1:26: `、` is a full-width character | write the half-width `,`"),
        (
            "when followed then send x ｗａｉｔ １ｄ send y",
            "1:27: `ｗａｉｔ` is written in full-width characters | write it in half-width characters: `wait`",
        ),
        (
            "when followed then send x wait １ｄ send y",
            "1:32: `１ｄ` is written in full-width characters | write it in half-width characters: `1d`",
        ),
        (
            "when followed then send x ＃ welcome",
            "1:27: `＃` is a full-width character | write the half-width `#` to start a comment",
        ),
        (
            "when followed then send x if (tagged a or (tagged b",
            "1:52: the file ends inside parentheses: the `(` at line 1, column 43 is never closed | close every `(` with a `)`",
        ),
        (
            'when message "abc then send x',
            '1:14: unterminated text: the closing `"` is missing | a quoted text ends on the same line: "like this"',
        ),
        (
            "when followed then wait 1 send x",
            "1:25: unexpected `1`; expected a duration like `1d`, `for` or `until` | a duration is a number with a unit: `30m`, `2h`, `1d`, `2w` (combinable: `1d12h`)",
        ),
        (
            "when followed then send a split a 50, b 50",
            "1:35: unexpected `50`; expected a percentage like `50%` | a percentage ends with `%`, e.g. `50%`",
        ),
        (
            "when followed then wait 1d at 12 send a",
            "1:31: unexpected `12`; expected a time like `12:00` | a time of day is written `HH:MM`, e.g. `09:00` or `20:30`",
        ),
        (
            "rule x when",
            "1:12: the file ends too early; expected a trigger (`followed`, `message`, `schedule`, ... or a condition)",
        ),
        ("when followed then send a if orders ＝ 3", "1:37: `＝` is a full-width character | write the half-width `=`"),
        (
            "when followed then send a b",
            "1:27: unexpected `b`; expected `,`, `if`, `unless`, a step (`send`, `wait`, `tag`, ...), an option (`exit when`, `reenter`, `window`, ...), another rule or the end of the file | separate names with a comma: `send a, b`",
        ),
        (
            "when followed then send a $",
            "1:27: unexpected `$`; expected `,`, `if`, `unless`, a step (`send`, `wait`, `tag`, ...), an option (`exit when`, `reenter`, `window`, ...), another rule or the end of the file",
        ),
    ],
)
def test_syntax_error_messages(text, expected):
    assert first_error(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "when followed then wait 36501d send x",
            "1:25: `36501d` is longer than 100 years | the longest duration is `36500d`",
        ),
        (
            "when followed then wait " + "9" * 5000 + "d send x",
            "1:25: `99999999999999999999…999999999d` is longer than 100 years | the longest duration is `36500d`",
        ),
        (
            "when followed then send x if orders >= 1000000000000001",
            "1:40: `1000000000000001` is too large a number | numbers go up to 1000000000000000",
        ),
        (
            "when followed then send x if orders >= " + "9" * 5000,
            "1:40: `99999999999999999999…9999999999` is too large a number | numbers go up to 1000000000000000",
        ),
        (
            "when followed priority 99999999999999999999 then send x",
            "1:24: `99999999999999999999` is too large a number | a priority goes from -1000000 to 1000000",
        ),
        (
            "when followed priority -" + "9" * 5000 + " then send x",
            "1:24: `-9999999999999999999…9999999999` is too large a number | a priority goes from -1000000 to 1000000",
        ),
    ],
)
def test_numbers_beyond_any_meant_one_are_refused(text, expected):
    """Not a traceback (Python reads at most 4,300 digits as a number) nor a value the database
    cannot store: a diagnostic at the number."""
    assert first_error(text) == expected


def test_the_longest_duration_and_the_largest_number_are_taken():
    rule_file, diags = parse_file("t.rule", "when followed then wait 36500d send x if orders >= 1000000000000000")
    assert not [d for d in diags if d.is_error]


def test_one_error_per_bad_rule_and_the_rest_of_the_file_is_kept():
    text = (
        "when followed then send a b\n"
        "rule ok when purchased then send c\n"
        "rule y when purchased then sned d\n"
        "segment s: in segment q or\n"
        "segment fine: blocked\n"
    )
    f, diags = parse_file("two.rule", text)
    assert [(d.line, d.column) for d in diags] == [(1, 27), (3, 28), (5, 1)]
    assert diags[2].message.startswith("unexpected `segment`; expected a condition")
    assert [getattr(i.name, "value", None) for i in f.items] == ["ok", "fine"]
    assert f.broken_rules == ("two", "y") and f.broken_segments == ("s",)
    assert f.has_syntax_errors


def test_keywords_are_the_words_of_the_grammar():
    kw = keywords()
    assert {"when", "then", "send", "wait", "rule", "segment", "purchased", "within"} <= kw
    assert "coupon15" not in kw


def test_describe_groups_and_words():
    assert describe({"DURATION"}) == "a duration like `1d`"
    assert describe({"$END"}) == "the end of the file"
    assert describe({"THEN", "$END"}) == "`then` or the end of the file"


# ----------------------------------------------------------------------------- the reference

LANGUAGE_MD = Path(__file__).resolve().parent.parent / "docs" / "language.md"


def _examples(section: str) -> list[str]:
    """The code spans of the example column of the table under ``## section``."""
    text = LANGUAGE_MD.read_text(encoding="utf-8")
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    spans = []
    for line in body.splitlines():
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) >= 3 and "`" in cells[1]:
            spans += re.findall(r"`([^`]+)`", cells[1])
    assert spans, section
    return spans


@pytest.mark.parametrize(
    "template, section",
    [
        ("{} then stop", "Triggers (`when ...`)"),
        ("when followed split a 50%, b 50% then stop if {}", "Conditions"),
        ("when followed then {}", "Steps (`then`)"),
        ("when followed {} then stop", "Options"),
    ],
)
def test_every_example_of_the_reference_parses(template, section):
    for example in _examples(section):
        f, diags = parse_file("t.rule", template.format(example))
        assert diags == [] and len(f.items) == 1, (example, diags)


@pytest.mark.parametrize("depth", [51, 400, 5000])
def test_deeply_nested_conditions_are_refused_not_crashed(depth):
    text = "when followed then stop if " + "not " * depth + "blocked"
    _, diags = parse_file("t.rule", text)
    assert [d.message for d in diags] == ["this condition nests more than 50 levels deep"]
    _, diags = parse_file("t.rule", text + "\nrule b when followed then send a b")  # broken file
    assert [d.message.split(";")[0] for d in diags] == [
        "this condition nests more than 50 levels deep",
        "unexpected `b`",
    ]


def test_fifty_levels_are_fine():
    assert parse_file("t.rule", "when followed then stop if " + "not " * 50 + "blocked")[1] == []


@pytest.mark.parametrize(
    "text, names",
    [
        ("rule sale when followed then send greeting", ["sale"]),
        ("rule viewed when viewed then tag purchased", ["viewed"]),
        ("rule a when tagged purchased then untag purchased start sale", ["a"]),
        ("segment when: tagged rule or in segment segment\nsegment segment: blocked", ["when", "segment"]),
        ("rule r when followed then set stop = 1 send stop if stop >= 1 menu wait", ["r"]),
    ],
)
def test_names_may_be_keywords_where_no_keyword_can_stand(text, names):
    f, diags = parse_file("t.rule", text)
    assert diags == []
    assert [i.name.value for i in f.items] == names


def test_a_keyword_name_does_not_split_a_broken_file():
    """Error recovery cuts a broken file at `rule`, `segment` and `when`, but not where such a
    word is a name (`tag rule`)."""
    text = "rule a when followed then tag rule send x y\nrule b when followed then stop\n"
    f, diags = parse_file("t.rule", text)
    assert [(d.line, d.column) for d in diags] == [(1, 43)]
    assert [i.name.value for i in f.items] == ["b"] and f.broken_rules == ("a",)


@pytest.mark.parametrize("end", ["\r\n", "\r"])
def test_cr_and_crlf_are_line_ends(end):
    text = "# welcome\nwhen followed\nthen send greeting\n  wait 3 send x\n"
    f, diags = parse_file("t.rule", text.replace("\n", end))
    assert [(d.line, d.column) for d in diags] == [(4, 8)]
    f, diags = parse_file("t.rule", "# c\nwhen followed then send x\n".replace("\n", end))
    assert diags == [] and len(f.items) == 1


def test_a_condition_too_deep_for_recursion_is_refused_alone_at_its_place():
    text = (
        "rule ok when followed then stop\n"
        "rule deep when followed then stop if " + "not " * 5000 + "blocked\n"
        "segment s: blocked\n"
    )
    f, diags = parse_file("t.rule", text)
    assert [(d.line, d.column, d.message) for d in diags] == [(2, 38, "this condition nests more than 50 levels deep")]
    assert [i.name.value for i in f.items] == ["ok", "s"] and f.broken_rules == ("deep",)
