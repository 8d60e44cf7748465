"""Semantic checks and compilation to the IR, through ``compile_source``/``load_project``."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine.language import ir
from engine.language.diagnostics import Span
from engine.language.project import compile_source, load_project

ROOT = Path(__file__).resolve().parent.parent


def msgs(**counts: int) -> dict[str, ir.MessageDef]:
    """Message definitions with that many text objects each."""
    return {
        name: ir.MessageDef(name, tuple({"type": "text", "text": str(i)} for i in range(n)))
        for name, n in counts.items()
    }


def problems(text: str, **kw) -> list[str]:
    """``line:col severity: message`` for each diagnostic."""
    result = compile_source(text, **kw)
    return [f"{d.line}:{d.column} {d.severity}: {d.message}" for d in result.diagnostics]


def rule_of(text: str, name: str | None = None, **kw) -> ir.Rule:
    result = compile_source(text, **kw)
    assert result.project is not None, result.diagnostics
    rules = result.project.rules
    return rules[name] if name else next(iter(rules.values()))


# ----------------------------------------------------------------------------- compiling


def test_one_liner_compiles_to_the_ir():
    rule = rule_of("when followed via qr=shipping then wait 1d send coupon15 if not purchased", path="rules/quick.rule")
    assert rule.name == "quick" and rule.path == "rules/quick.rule"
    assert rule.trigger == ir.Followed(via=(("qr", "shipping"),))
    assert rule.steps == (
        ir.Wait("wait 1d", 86400),
        ir.Send("send coupon15", ("coupon15",), ir.Not(ir.Activity("purchase"))),
    )
    assert rule.reenter == ir.Reenter("never") and rule.priority == 0 and rule.split == ()


def test_spec_welcome_rule_and_segment():
    text = (ROOT / "rules" / "welcome.rule").read_text(encoding="utf-8")
    rule = rule_of(text, "welcome")
    assert rule.description == "同梱QRカードから友だち追加した人へのステップ配信"
    assert rule.exit_when == ir.Blocked()
    assert [s.id for s in rule.steps] == [
        "send greeting_shipping",
        "wait 1d",
        "send coupon15",
        "wait 3d at 12:00",
        "send review_request",
        "tag 購入済み",
    ]
    assert rule.steps[3] == ir.Wait("wait 3d at 12:00", 3 * 86400, dt.time(12, 0))
    seg = compile_source("segment vip: top 20% by spent within 365d or orders >= 10").project.segments["vip"]
    assert seg.cond == ir.AnyOf(
        (ir.Top(20.0, ir.Measure("spent", 365 * 86400)), ir.Compare(ir.Measure("orders"), ">=", 10))
    )


@pytest.mark.parametrize(
    "trigger, expected",
    [
        ("followed", ir.Followed()),
        ("unfollowed", ir.Unfollowed()),
        ('message "クーポン", "Coupon"', ir.MessageTrigger(("クーポン", "coupon"))),
        ('message exactly "ＡＢＣ"', ir.MessageTrigger(("abc",), exact=True)),
        ("postback action=survey_done", ir.PostbackTrigger((("action", "survey_done"),))),
        ("postback action=delivery answer=yes", ir.PostbackTrigger((("action", "delivery"), ("answer", "yes")))),
        ("postback a=1, b=2", ir.PostbackTrigger((("a", "1"), ("b", "2")))),
        ("purchased", ir.PurchasedTrigger()),
        ("purchased product=SKU1", ir.PurchasedTrigger(product="SKU1")),
        ("purchased category=cosmetics", ir.PurchasedTrigger(category="cosmetics")),
        ("carted product=SKU1", ir.CartedTrigger(product="SKU1")),
        ("viewed", ir.ViewedTrigger()),
        ("tagged vip", ir.TaggedTrigger("vip")),
        ("event shipped carrier=yamato", ir.CustomEventTrigger("shipped", (("carrier", "yamato"),))),
        ('schedule "0  20 * * 5"', ir.ScheduleTrigger("0 20 * * 5")),
        ("sale starts", ir.SaleTrigger("starts")),
        ("sale ends in 0d at 10:00", ir.SaleTrigger("ends", 0, dt.time(10, 0))),
        (
            "sale kind=super_sale starts in 14d at 12:00",
            ir.SaleTrigger("starts", 14 * 86400, dt.time(12, 0), "super_sale"),
        ),
        ("sale starts in 1d12h", ir.SaleTrigger("starts", 129600)),
        ("purchased within 30d", ir.ConditionTrigger(ir.Activity("purchase", within=30 * 86400))),
        ("last purchase older than 90d", ir.ConditionTrigger(ir.LastPurchaseOlder(90 * 86400))),
        ("total_spent >= 50000", ir.ConditionTrigger(ir.Compare(ir.Measure("total_spent"), ">=", 50000))),
        ("not tagged vip", ir.ConditionTrigger(ir.Not(ir.Tagged("vip")))),
        ("tagged a and friend for 30d", ir.ConditionTrigger(ir.All((ir.Tagged("a"), ir.FriendFor(30 * 86400, "for"))))),
    ],
)
def test_triggers_compile(trigger, expected):
    assert rule_of(f"when {trigger} then stop").trigger == expected


def test_event_trigger_types_name_the_intake_event():
    assert rule_of("when purchased then stop").trigger.event_type == "purchase"
    assert rule_of("when event shipped then stop").trigger.event_type == "shipped"


@pytest.mark.parametrize(
    "cond, expected",
    [
        ("purchased product=X within 7d", ir.Activity("purchase", product="X", within=7 * 86400)),
        ("clicked", ir.Activity("click")),
        ("viewed product=X", ir.Activity("view", product="X")),
        ("carted within 1d", ir.Activity("cart", within=86400)),
        ("followed via qr=a, ad=b", ir.FollowedVia((("qr", "a"), ("ad", "b")))),
        ("friend within 2w", ir.FriendFor(14 * 86400, "within")),
        ("never purchased", ir.NeverPurchased()),
        ('display_name = "山田"', ir.Compare(ir.Measure("display_name"), "=", "山田")),
        ("score < 2.5", ir.Compare(ir.Measure("score"), "<", 2.5)),
        ("in segment vip", ir.InSegment("vip")),
        ("blocked or tagged a and tagged b", ir.AnyOf((ir.Blocked(), ir.All((ir.Tagged("a"), ir.Tagged("b")))))),
    ],
)
def test_conditions_compile(cond, expected):
    text = f"when followed then stop if {cond}\nsegment vip: blocked"
    assert rule_of(text).steps[0].cond == expected


def test_unless_compiles_to_not():
    rule = rule_of("when followed unless tagged vip then send a unless purchased")
    assert rule.entry == ir.Not(ir.Tagged("vip"))
    assert rule.steps[0].cond == ir.Not(ir.Activity("purchase"))


def test_steps_and_their_ids():
    rule = rule_of(
        """when followed then
        send a, b
        wait 2h
        wait until 09:30
        wait until monday
        wait until friday at 20:00
        wait for postback answer=yes up to 1d
        tag vip
        untag vip if blocked
        set rank = "gold"
        menu member
        start other
        stop if tagged x
        send a
        wait 2h
        stop
    rule other when tagged vip then stop""",
        None,
    )
    assert [s.id for s in rule.steps] == [
        "send a, b",
        "wait 2h",
        "wait until 09:30",
        "wait until monday",
        "wait until friday at 20:00",
        "wait for postback answer=yes up to 1d",
        "tag vip",
        "untag vip",
        "set rank",
        "menu member",
        "start other",
        "stop",
        "send a",
        "wait 2h #2",
        "stop #2",
    ]
    assert rule.steps[3] == ir.WaitUntil("wait until monday", None, 0)
    assert rule.steps[4] == ir.WaitUntil("wait until friday at 20:00", dt.time(20), 4)
    assert rule.steps[5].trigger == ir.PostbackTrigger((("answer", "yes"),))
    assert rule.steps[5].up_to == 86400
    assert rule.steps[8] == ir.SetStep("set rank", "rank", "gold")
    assert rule.steps[7].cond == ir.Blocked()


def test_options_compile():
    rule = rule_of("""when followed then send a
        exit when purchased
        reenter after 90d
        window 22:00-06:00
        priority 5
        split a 30%, b 70%
        holdout 12.5%""")
    assert rule.exit_when == ir.Activity("purchase")
    assert rule.reenter == ir.Reenter("after", 90 * 86400)
    assert rule.window == ir.Window(dt.time(22), dt.time(6))
    assert (rule.priority, rule.split, rule.holdout) == (5, (("a", 30.0), ("b", 70.0)), 12.5)
    assert rule_of("when followed reenter always then stop").reenter == ir.Reenter("always")


def test_spans_are_kept_but_not_compared():
    rule = rule_of("when followed then\n  send a", path="rules/x.rule")
    assert rule.steps[0].span == Span("rules/x.rule", 2, 3, 2, 9)
    assert rule.span.line == 1


def test_version_ignores_layout_and_comments_but_not_content():
    a = rule_of("when followed then send a wait 1d send b")
    b = rule_of("# note\nwhen   followed\nthen\n  send a\n  wait 24h\n  send b  # x")
    c = rule_of("when followed then send a wait 2d send b")
    assert a.version == b.version != c.version
    assert len(a.version) == 16


def test_project_version_changes_with_any_file(tmp_path):
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    first = load_project(tmp_path / "rules").project.version
    assert load_project(tmp_path / "rules").project.version == first
    with open(tmp_path / "rules" / "settings.yaml", "a", encoding="utf-8") as fh:
        fh.write("\n# changed\n")
    assert load_project(tmp_path / "rules").project.version != first


def test_sample_folder_loads_with_yaml_beside_it():
    result = load_project(str(ROOT / "rules"))
    assert result.diagnostics == []
    project = result.project
    assert {"welcome", "summer_ad", "delivery_check", "winback", "vip_care", "weekly_pick", "sale_countdown"} <= set(
        project.rules
    )
    assert project.settings.timezone == "Asia/Tokyo" and project.settings.rich_menu("vip")
    assert {s.kind for s in project.sales} == {"super_sale", "marathon"}
    used = {m for r in project.rules.values() for s in r.steps if isinstance(s, ir.Send) for m in s.messages}
    assert used == set(project.messages)


def test_missing_yaml_files_mean_defaults(tmp_path):
    (tmp_path / "r.rule").write_text("when followed then stop\n", encoding="utf-8")
    project = load_project(tmp_path).project
    assert project.settings == ir.Settings() and project.sales == () and project.messages == {}


# ----------------------------------------------------------------------------- errors


def test_unknown_names_with_did_you_mean():
    settings = ir.Settings(rich_menus=(("member", "richmenu-1"),))
    out = problems(
        """rule a when followed then
        send coupon51
        menu membr
        start b2
        stop if in segment vipp
    rule b when followed then stop
    segment vip: orders > 1""",
        messages=msgs(coupon15=1),
        settings=settings,
    )
    assert out == [
        "2:14 error: unknown message `coupon51`",
        "3:14 error: unknown rich menu `membr`",
        "4:15 error: unknown rule `b2`",
        "5:28 error: unknown segment `vipp`",
    ]
    helps = [d.help for d in compile_source("when followed then send coupon51", messages=msgs(coupon15=1)).diagnostics]
    assert helps == ["did you mean `coupon15`?"]


def test_name_checks_are_skipped_without_context():
    assert problems("when followed then send anything menu any") == []


def test_duplicate_and_unnamed_rules():
    assert problems("rule a when followed then stop\nrule a when followed then stop") == [
        "2:6 error: rule `a` is defined twice"
    ]
    assert problems("when followed then stop\nwhen purchased then stop") == [
        "2:1 error: a second rule without a name in this file"
    ]
    assert problems("rule test when followed then stop\nwhen purchased then stop", path="test.rule") == [
        "2:1 error: rule `test` is defined twice"
    ]


def test_segment_cycles():
    assert problems("segment a: in segment a") == ["1:23 error: segment `a` refers to itself: `a` -> `a`"]
    out = problems("segment a: in segment b\nsegment b: in segment c or blocked\nsegment c: in segment a")
    assert out == ["3:23 error: segment `a` refers to itself: `a` -> `b` -> `c` -> `a`"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("when followed split a 50%, b 40% then stop", "1:15 error: the split adds up to 90%, not 100%"),
        ("when followed split a 50%, a 50% then stop", "1:28 error: variant `a` is listed twice"),
        ("when followed split a 100%, b 0% then stop", "1:31 error: variant `b` gets 0%"),
        ("when followed holdout 101% then stop", "1:23 error: holdout `101%` is not between 0% and 100%"),
        ("when followed then stop if variant a", "1:36 error: `variant a`: this rule has no `split`"),
        ("when followed split a 50%, b 50% then stop if variant c", "1:55 error: unknown variant `c`"),
        (
            "segment s: variant a",
            "1:12 error: `variant a` only means something inside a rule's entry filter, steps or `exit when`",
        ),
        ('when schedule "* * *" then stop', "1:15 error: a schedule has 5 fields, this one has 3"),
        ('when schedule "61 * * * *" then stop', "1:15 error: `61 * * * *` is not a valid cron expression"),
        ("when followed then wait 1d at 24:00", "1:31 error: `24:00` is not a time of day"),
        ("when followed window 09:00-21:60 then stop", "1:28 error: `21:60` is not a time of day"),
        ("when followed then wait 0d", "1:25 error: `wait 0d` waits for nothing"),
        ("when purchased within 0d then stop", "1:23 error: `0d` is no time at all here"),
        ("when followed then stop if last purchase older than 0m", "1:53 error: `0m` is no time at all here"),
        (
            "when sale starts in 36h at 10:00 then stop",
            "1:21 error: `in 36h at 10:00`: with `at`, the offset is a number of days",
        ),
        ("when clicked then stop", "1:6 error: `clicked` without `within` cannot be part of a condition trigger"),
        (
            "when purchased product=X or tagged a then stop",
            "1:6 error: `purchased` without `within` cannot be part of a condition trigger",
        ),
        ("when purchased color=red then stop", "1:16 error: `purchased` does not take `color=`"),
        (
            'when followed then wait for schedule "0 1 * * *" up to 1d',
            "1:29 error: `wait for` needs an event of this friend",
        ),
        ("when followed then stop if orders within 30d > 1", "1:42 error: `within` does not go with `orders`"),
        (
            "when followed then stop if top 20% by display_name",
            "1:39 error: `display_name` is a text and cannot be ranked",
        ),
        (
            "when followed then set total_spent = 1",
            "1:24 error: `total_spent` is computed from purchases and cannot be set",
        ),
        ("when followed then wait until someday", "1:31 error: `someday` is not a day of the week"),
        ('when message "  " then stop', "1:14 error: an empty keyword matches every message"),
        (
            "when followed priority 1 exit when blocked priority 2 then stop",
            "1:44 error: `priority` is given twice in this rule",
        ),
    ],
)
def test_errors(text, expected):
    assert problems(text) == [expected]


def test_two_errors_in_one_rule_are_both_reported():
    assert problems("when followed then wait 1d at 25:00 wait 1d at 12:61") == [
        "1:31 error: `25:00` is not a time of day",
        "1:48 error: `12:61` is not a time of day",
    ]


def test_coalesced_push_over_five_objects():
    messages = msgs(three=3, two=2, one=1, five=5)
    assert problems("when followed then send three tag x send two if blocked send one", messages=messages) == [
        "1:57 error: these sends make one push of 6 message objects; LINE allows 5"
    ]
    assert problems("when followed then send three wait 1d send three", messages=messages) == []
    assert problems("when followed then send five", messages=messages) == []
    assert problems("when followed then send three, two wait for purchased up to 1d send five", messages=messages) == []


# ----------------------------------------------------------------------------- warnings


def test_sale_kind_not_in_calendar_warns_and_still_compiles():
    sales = (
        ir.Sale(
            "s1",
            "SALE",
            dt.datetime(2026, 12, 4, 20, tzinfo=dt.UTC),
            dt.datetime(2026, 12, 11, tzinfo=dt.UTC),
            kind="super_sale",
        ),
    )
    result = compile_source("when sale kind=marathon starts then stop", sales=sales)
    assert [d.message for d in result.diagnostics] == [
        "no sale in sale_calendar.yaml has kind `marathon`, so this rule never fires"
    ]
    assert result.project is not None
    assert problems("when sale kind=super_sale starts then stop", sales=sales) == []
    assert problems("when sale starts then stop", sales=()) == [
        "1:6 warning: the sale calendar has no sales, so this rule never fires"
    ]


def test_a_last_call_that_waits_for_the_window_past_the_sale_warns():
    # a Rakuten-style sale ending at 01:59 Tokyo; the window of settings.yaml, or the rule's own
    jst = ZoneInfo("Asia/Tokyo")
    sales = (
        ir.Sale("s1", "SALE", dt.datetime(2026, 12, 4, 20, tzinfo=jst), dt.datetime(2026, 12, 11, 1, 59, tzinfo=jst)),
    )
    settings = ir.Settings(window=ir.Window(dt.time(9), dt.time(21)))
    waits = (
        "1:6 warning: `sale ends in 0d at 00:30` fires at 2026-12-11 00:30, outside the delivery window "
        "09:00-21:00: its sends wait for 2026-12-11 09:00, after sale `s1` has ended (2026-12-11 01:59)"
    )
    assert problems("when sale ends in 0d at 00:30 then stop", sales=sales, settings=settings) == [waits]
    # inside the window, or with no window at all, the send goes when it fires: no warning
    assert problems("when sale ends in 1d at 20:00 then stop", sales=sales, settings=settings) == []
    assert problems("when sale ends in 0d at 00:30 then stop", sales=sales, settings=ir.Settings()) == []
    # the rule's own window is the one that counts
    own = "when sale ends in 0d at 00:30 window 00:00-02:00 then stop"
    assert problems(own, sales=sales, settings=settings) == []
    own = "when sale ends in 0d at 00:30 window 22:00-00:20 then stop"
    [warning] = problems(own, sales=sales, settings=ir.Settings())
    assert "outside the delivery window 22:00-00:20: its sends wait for 2026-12-11 22:00" in warning
    result = compile_source("when sale ends in 0d at 00:30 then stop", sales=sales, settings=settings)
    assert (
        result.diagnostics[0].help
        == "send the last call within the window the day before, e.g. `sale ends in 1d at 20:00`"
    )


def test_followed_as_part_of_a_condition_trigger_is_an_error_with_the_event_form():
    # `when followed and tagged vip` would greet every tagged friend whenever the tag came
    [error] = problems("when followed and tagged vip then stop")
    assert error == (
        "1:6 error: `followed` is the follow event only on its own after `when`: as part of a condition "
        "it would enter friends whenever the rest comes to hold"
    )
    help_ = compile_source("when followed and orders >= 1 then stop").diagnostics[0].help
    assert help_.startswith("react to the follow and filter it: `when followed if ...`")
    assert len(problems("when not followed then stop")) == 1
    # the add source tells friends apart: a condition of its own
    assert problems("when score >= 3 or followed via qr=shop then stop") == []
    # the event, alone; and `followed via` in a filter or a step's condition
    assert problems("when followed via qr=shipping if tagged vip then stop") == []
    assert problems("when tagged vip if followed via qr=shipping then send a if followed via ad=x") == []


def test_a_send_right_after_unfollowed_warns_that_it_is_never_made():
    assert problems("when unfollowed then tag left send a") == [
        "1:31 warning: this send is never made: after `unfollowed` the friend has blocked the account"
    ]
    assert problems("when unfollowed then wait for followed up to 7d send a") == []


def test_a_tag_in_full_width_letters_warns_that_it_is_another_tag():
    assert problems("when followed then tag ＶＩＰ send a if tagged ｖｉｐ２") == [
        "1:24 warning: the tag `ＶＩＰ` is written in full-width characters: `VIP` is another tag",
        "1:45 warning: the tag `ｖｉｐ２` is written in full-width characters: `vip2` is another tag",
    ]
    assert problems("when followed then tag 会員 send a if tagged VIP") == []
    assert len(problems("when tagged ＶＩＰ then send a")) == 1  # the event trigger too


def test_reenter_in_a_schedule_or_sale_rule_warns_that_it_does_nothing():
    assert problems('when schedule "0 20 * * 5" reenter after 3d then stop') == [
        "1:28 warning: `reenter` does nothing in a rule that starts by `schedule`: it enters every friend "
        "once per occurrence"
    ]
    sales = (
        ir.Sale("s1", "SALE", dt.datetime(2026, 12, 4, 20, tzinfo=dt.UTC), dt.datetime(2026, 12, 11, tzinfo=dt.UTC)),
    )
    [warning] = problems("when sale starts reenter never then stop", sales=sales)
    assert "`reenter` does nothing in a rule that starts by `sale`" in warning
    assert problems("when followed reenter after 3d then stop") == []
    # a schedule rule that a `start` step enters too: its `reenter` counts there
    started = 'rule weekly when schedule "0 20 * * 5" reenter always then send a\nrule kick when message "x" then start weekly\n'
    assert problems(started) == []


def test_a_last_call_counted_exactly_from_the_end_warns_too():
    # `sale ends in 2h` of a sale ending 01:59 fires at 23:59, outside the window: its sends
    # would go at 09:00, after the end; an offset longer than the sale fires before it starts
    jst = ZoneInfo("Asia/Tokyo")
    sales = (
        ir.Sale("s1", "SALE", dt.datetime(2026, 12, 4, 20, tzinfo=jst), dt.datetime(2026, 12, 11, 1, 59, tzinfo=jst)),
    )
    settings = ir.Settings(window=ir.Window(dt.time(9), dt.time(21)))
    assert problems("when sale ends in 2h then stop", sales=sales, settings=settings) == [
        "1:6 warning: `sale ends in 2h` fires at 2026-12-10 23:59, outside the delivery window "
        "09:00-21:00: its sends wait for 2026-12-11 09:00, after sale `s1` has ended (2026-12-11 01:59)"
    ]
    assert problems("when sale ends in 8d then stop", sales=sales, settings=settings) == [
        "1:6 warning: `sale ends in 8d` fires at 2026-12-03 01:59, before sale `s1` has started (2026-12-04 20:00)"
    ]
    # 19:59 is in the window; without a window 23:59 goes at once; the end itself is no last call
    assert problems("when sale ends in 6h then stop", sales=sales, settings=settings) == []
    assert problems("when sale ends in 2h then stop", sales=sales, settings=ir.Settings()) == []
    assert problems("when sale ends then stop", sales=sales, settings=settings) == []
    assert problems("when sale starts in 3h then stop", sales=sales, settings=settings) == []


def test_a_send_decided_after_the_step_that_changes_what_it_reads_warns():
    text = 'when message "クーポン" reenter always then send coupon15 unless tagged coupon_sent tag coupon_sent'
    assert problems(text) == [
        "1:41 warning: `send coupon15` is decided when it goes out, after `tag coupon_sent` (line 1) has run: "
        "its condition sees what that step changed"
    ]
    help_ = compile_source(text).diagnostics[0].help
    assert (
        help_
        == "to check the condition before the change, check it when the friend enters the rule, e.g. `when ... unless tagged coupon_sent`"
    )
    # an attribute set, an untag, and a tag read through a segment
    assert len(problems('when followed then send a if rank = "gold" set rank = "silver"')) == 1
    assert len(problems("when followed then send a if tagged vip untag vip")) == 1
    assert len(problems("segment vips: tagged vip\nrule r when followed then send a if in segment vips tag vip")) == 1
    # after a wait the help moves the step instead
    [later] = compile_source("when followed then wait 1d send a unless tagged done tag done").diagnostics
    assert later.help == "move `tag done` after a `wait` that ends once the send has gone out"
    # a wait between them, a conditional tag, another tag, the entry filter: nothing to say
    assert problems("when followed then send a unless tagged done wait 1h tag done") == []
    assert problems("when followed then send a unless tagged done tag done if purchased") == []
    assert problems("when followed then send a unless tagged done tag other") == []
    assert problems("when followed unless tagged done reenter always then send a tag done") == []


def test_a_step_that_makes_exit_when_hold_before_the_send_goes_out_warns():
    assert problems("when event delivered exit when tagged reviewed then send a tag reviewed") == [
        "1:53 warning: `send a` is never sent: `tag reviewed` (line 1) runs before it goes out and makes `exit when` hold"
    ]
    # the other way round the tag keeps the friend in
    assert problems("when event delivered exit when not tagged reviewed then send a tag reviewed") == []
    assert len(problems("when event delivered exit when not tagged keep then send a untag keep")) == 1
    assert problems("when event delivered exit when tagged reviewed then send a wait 1d tag reviewed") == []


def test_clicked_in_the_trigger_of_a_rule_entered_once_warns():
    warning = (
        "never holds here: it asks about links this rule sent, and a friend enters this rule once, "
        "before it has sent them anything"
    )
    assert problems("rule hot when clicked within 2d then send a") == [f"1:15 warning: `clicked within 2d` {warning}"]
    assert problems("segment c: clicked within 7d\nrule s when orders >= 1 and in segment c then send a") == [
        f"2:29 warning: `in segment c` (`clicked within 7d`) {warning}"
    ]
    assert len(problems("rule f when followed if clicked within 2d then send a")) == 1
    # entered again, negated, or in a step: it can hold
    assert problems("rule hot when clicked within 2d reenter after 7d then send a") == []
    assert problems("rule cold when orders >= 1 and not clicked within 2d then send a") == []
    assert problems("rule f when followed then wait 1d send a if clicked") == []


def test_a_fixed_link_too_long_once_its_utm_parameters_are_added_is_an_error():
    url = "https://shop.example.jp/" + "a" * 940  # 964 characters as written: within 1,000
    buttons = {"type": "buttons", "text": "pick", "actions": [{"type": "uri", "label": "go", "uri": url}]}
    long = ir.MessageDef("long", ({"type": "template", "altText": "hi", "template": buttons},))
    text = "rule welcome_campaign when followed then send long"
    assert problems(text, messages={"long": long}, settings=ir.Settings()) == [
        "1:47 error: with its utm parameters for this rule, `uri` of message `long` is 1,046 characters "
        "long; LINE allows at most 1,000"
    ]
    # without utm parameters, behind click tracking, or with utm of its own: it goes as it is
    assert problems(text, messages={"long": long}, settings=ir.Settings(utm=False)) == []
    tracked = ir.Settings(base_url="https://line.shop.example.jp")
    assert problems(text, messages={"long": long}, settings=tracked) == []
    mine = {**buttons, "actions": [{"type": "uri", "label": "go", "uri": url + "?utm_source=x"}]}
    own = ir.MessageDef("long", ({"type": "template", "altText": "hi", "template": mine},))
    assert problems(text, messages={"long": own}, settings=ir.Settings()) == []


def test_schedule_that_never_fires_warns():
    assert problems('when schedule "0 0 30 2 *" then stop') == [
        "1:15 warning: the schedule `0 0 30 2 *` never fires, so this rule never runs"
    ]


def test_steps_after_stop_warn_once():
    assert problems("when followed then stop tag a tag b") == [
        "1:25 warning: this step is never reached: the `stop` before it always ends the rule"
    ]
    assert problems("when followed then stop if blocked tag a") == []


@pytest.mark.parametrize(
    "text, warns",
    [
        ('when message "a" if blocked then stop', True),
        ("when followed if tagged a and blocked then stop", True),
        ("when followed via qr=x unless not blocked then stop", True),
        ("when unfollowed unless blocked then stop", True),
        ("when unfollowed if not (blocked or tagged a) then stop", True),
        ("when purchased if blocked then stop", False),  # a shop event may come from anyone
        ("when unfollowed if blocked then stop", False),
        ("when followed if blocked or tagged a then stop", False),
    ],
)
def test_contradictory_entry_filters(text, warns):
    out = problems(text)
    assert bool(out) is warns, out
    assert all("never fires" in o and "warning" in o for o in out)


def test_unused_messages_warn_only_for_the_whole_folder(tmp_path):
    (tmp_path / "messages.yaml").write_text('a: "A"\nb: "B"\n', encoding="utf-8")
    (tmp_path / "r.rule").write_text("when followed then send a\n", encoding="utf-8")
    result = load_project(tmp_path)
    assert [(d.path, d.line, d.severity, d.message) for d in result.diagnostics] == [
        (str(tmp_path / "messages.yaml"), 2, "warning", "message `b` is not used by any rule")
    ]
    assert result.project is not None
    assert load_project(tmp_path / "r.rule").diagnostics == []


def test_no_unused_warnings_while_a_file_does_not_parse(tmp_path):
    (tmp_path / "messages.yaml").write_text('a: "A"\nb: "B"\n', encoding="utf-8")
    (tmp_path / "r.rule").write_text("when followed then send a\n", encoding="utf-8")
    (tmp_path / "s.rule").write_text("when followed then send b c\n", encoding="utf-8")
    result = load_project(tmp_path)
    assert [d.message.split(";")[0] for d in result.diagnostics] == ["unexpected `c`"]
    assert result.project is None


def test_an_unparseable_file_does_not_hide_errors_elsewhere(tmp_path):
    (tmp_path / "a.rule").write_text("when followed send x\n", encoding="utf-8")
    (tmp_path / "b.rule").write_text("when followed then start a start nope\n", encoding="utf-8")
    out = [(Path(d.path).name, d.line, d.column, d.message) for d in load_project(tmp_path).diagnostics]
    assert out == [("a.rule", 1, 15, "missing `then` before `send`"), ("b.rule", 1, 34, "unknown rule `nope`")]


def test_single_file_uses_its_folder(tmp_path):
    (tmp_path / "messages.yaml").write_text('a: "A"\n', encoding="utf-8")
    (tmp_path / "one.rule").write_text("when followed then send a start two\n", encoding="utf-8")
    (tmp_path / "two.rule").write_text("when followed then send zzz\n", encoding="utf-8")
    result = load_project(tmp_path / "one.rule")
    assert result.diagnostics == []
    assert set(result.project.rules) == {"one"}
    assert set(result.sources) == {str(tmp_path / "one.rule"), str(tmp_path / "messages.yaml")}
