"""Stable diagnostic codes (``LR102``) and what each one means, in the product's languages.

Every diagnostic headline is written ``E("LR102", "unknown message `{name}`", name=...)`` where
it is raised; this module holds, per code, a title, an explanation, a wrong and a fixed example
(:data:`CODES`). All of them are gettext texts of the one catalog, so ``linerules explain LR102``
and the generated pages docs/errors.md and docs/ja/errors.md speak the chosen language.

:func:`messages_by_code` reads the engine's source to list the headlines of each code (the
tests use it to prove that every code used has an explanation, and the pages list them).
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from engine.i18n import Text, _, gettext_, render

CODE_RE = re.compile(r"LR\d{3}")
ENGINE = Path(__file__).resolve().parent.parent
#: Source files outside engine/ that raise diagnostics too.
EXTRA_SOURCES = (ENGINE.parent / "runner.py",)


@dataclass(frozen=True)
class Code:
    code: str
    title: Text
    meaning: Text
    wrong: Text
    fixed: Text
    file: str = "welcome.rule"  # the file the examples are taken from


def _c(code: str, file: str, title: Text, meaning: Text, wrong: Text, fixed: Text) -> Code:
    return Code(code, title, meaning, wrong, fixed, file)


#: Every code, in order. Add a new one at the end of its group; never reuse a number.
CODES: dict[str, Code] = {
    c.code: c
    for c in (
        # ------------------------------------------------------------------ files and YAML (LR0xx)
        _c(
            "LR001",
            "rules/",
            _("the rule folder or file cannot be read"),
            _(
                "The path given to the command does not exist, is not a `.rule` file or a folder, or "
                "cannot be opened. Give the rule folder (usually `rules/`) or one `.rule` file in it."
            ),
            _("linerules validate rule/"),
            _("linerules validate rules/"),
        ),
        _c(
            "LR002",
            "welcome.rule",
            _("the file is not UTF-8 text"),
            _(
                "Every file of the rule folder and every rule test must be saved as UTF-8. A file "
                "saved as Shift_JIS (CP932, what Excel and older Windows tools write) or UTF-16 cannot "
                "be read; the help says which one the file looks like. Save it again as UTF-8. While "
                "messages.yaml or settings.yaml cannot be read, the rules' message and rich menu names "
                "are not checked against it."
            ),
            _("(welcome.rule saved as Shift_JIS)"),
            _("(welcome.rule saved as UTF-8)"),
        ),
        _c(
            "LR003",
            "messages.yaml",
            _("the YAML file cannot be read"),
            _(
                "settings.yaml, messages.yaml, sale_calendar.yaml and the rule tests are YAML. The "
                "message says what broke the file: a tab used for indentation, a line not indented "
                "like the lines above it, a tab after `key:` (often pasted from a spreadsheet), a "
                "full-width colon `：`, a `: ` inside a text that is not quoted. Nothing else of the "
                "file is checked until it can be read."
            ),
            _("greeting：友だち追加ありがとうございます\ncoupon15: 初回15%OFFクーポンです"),
            _("greeting: 友だち追加ありがとうございます\ncoupon15: 初回15%OFFクーポンです"),
        ),
        _c(
            "LR004",
            "settings.yaml",
            _("a key appears twice"),
            _(
                "Each key may appear once in a mapping. YAML would silently keep the last one, so a "
                "second `window:` or a message defined twice is an error; remove one of them."
            ),
            _('window: "09:00-21:00"\nmax_per_day: 2\nwindow: "10:00-20:00"'),
            _('window: "10:00-20:00"\nmax_per_day: 2'),
        ),
        _c(
            "LR005",
            "messages.yaml",
            _("a YAML value is not plain data"),
            _(
                "The files hold plain texts, numbers, lists and mappings. YAML tags such as "
                "`!!python/object`, keys that are lists, values nested too deeply and aliases that "
                "expand to too many values are refused."
            ),
            _("greeting: !!binary 44GC44KK44GM44Go44GG"),
            _("greeting: ありがとうございます"),
        ),
        _c(
            "LR006",
            "messages.yaml",
            _("a text holds a lone surrogate"),
            _(
                "An escape such as `\\ud800` is half of a character and cannot be sent. Write the "
                "character itself (an emoji can be pasted as it is) or escape it whole (`\\U0001F600`)."
            ),
            _('greeting: "ようこそ \\ud83d"'),
            _('greeting: "ようこそ 😀"'),
        ),
        _c(
            "LR007",
            "rules/",
            _("nothing to run (warning)"),
            _(
                "The folder has no `.rule` files, or a `.rule` file holds no rule and no segment (only "
                "comments, say), so nothing will be sent. Usually the wrong folder was given."
            ),
            _("linerules validate rules/tests/"),
            _("linerules validate rules/"),
        ),
        _c(
            "LR008",
            "rules/",
            _("a YAML file is named .yml"),
            _(
                "linerules reads `messages.yaml`, `settings.yaml` and `sale_calendar.yaml`, spelt with "
                "`.yaml`. A `.yml` file would be ignored (a `settings.yml` would leave the folder "
                "without its window and caps), so it is an error: rename it, or merge it into the "
                "`.yaml` file when both exist."
            ),
            _("rules/settings.yml"),
            _("rules/settings.yaml"),
        ),
        # ------------------------------------------------------------------ rule syntax (LR01x)
        _c(
            "LR010",
            "welcome.rule",
            _("the rule cannot be read here"),
            _(
                "The rule language allows only what the message lists at this place (a step, an "
                "option, a condition, a duration like `1d`, ...). Common causes: a missing comma "
                "(`send a b`), a number without a unit (`wait 3`), a time without minutes (`at 12`), "
                "`==` instead of `=`. Compare the line with docs/language.md."
            ),
            _("when followed then send greeting coupon15"),
            _("when followed then send greeting, coupon15"),
        ),
        _c(
            "LR011",
            "welcome.rule",
            _("`then` is missing"),
            _("The steps of a rule follow the word `then`, after the trigger, the entry filter and the options."),
            _("when followed send greeting"),
            _("when followed then send greeting"),
        ),
        _c(
            "LR012",
            "welcome.rule",
            _("a quoted text is not closed"),
            _('A text in double quotes ends on the same line with another `"`.'),
            _('when message "クーポン then send coupon_reply'),
            _('when message "クーポン" then send coupon_reply'),
        ),
        _c(
            "LR013",
            "welcome.rule",
            _("the file ends too early"),
            _("The last rule or segment is unfinished, or a `(` is never closed."),
            _("segment vip: (orders >= 10 or tagged vip"),
            _("segment vip: (orders >= 10 or tagged vip)"),
        ),
        _c(
            "LR014",
            "welcome.rule",
            _("a keyword stands where a name belongs"),
            _(
                "Words of the language (`stop`, `send`, `sale`, ...) cannot be names where they could "
                "be read as the word itself; the message says which word was read. Rename it, e.g. "
                "`stop_sale`. Misspelt keywords (`folowed`) get the right word as help."
            ),
            _("when purchsed then send thanks"),
            _("when purchased then send thanks"),
        ),
        _c(
            "LR015",
            "welcome.rule",
            _("a full-width character in the rule"),
            _(
                "Rules are written with half-width symbols: `=` not `＝`, `:` not `：`, `%` not `％`, "
                '`,` not `、`, `-` not the wave dash `～` between two times, straight quotes `"` not '
                "curly ones `“` `”` (which an editor or word processor may put in). Full-width "
                "characters belong inside quoted texts only."
            ),
            _("when followed via qr＝shipping then send greeting"),
            _("when followed via qr=shipping then send greeting"),
        ),
        _c(
            "LR016",
            "welcome.rule",
            _("not a duration"),
            _(
                "A duration is a number with a unit: `30m`, `2h`, `1d`, `2w`, combinable as `1d12h`. "
                "There is no month or second unit: write `30d`, or at least `1m`. Japanese units get "
                "the same help: `3日` is `3d`, `2週間` is `2w`, `1ヶ月` is `30d`. The longest duration "
                "is 100 years, `36500d`."
            ),
            _("when followed then wait 14days send coupon15"),
            _("when followed then wait 14d send coupon15"),
        ),
        _c(
            "LR017",
            "welcome.rule",
            _("a condition nests too deeply"),
            _(
                "`not`, `and` and `or` may nest up to 50 levels inside each other. Deeper conditions "
                "are refused as unreadable; move part of the condition into a segment."
            ),
            _("segment s: not not not ... (more than 50 times) ... blocked"),
            _("segment s: not blocked"),
        ),
        _c(
            "LR018",
            "dormant.rule",
            _("not a comparison"),
            _(
                "The comparisons are `=` `!=` `<` `<=` `>` `>=`: `=>` is `>=`, `=<` is `<=`, `==` is "
                "`=`, `<>` is `!=`. Numbers are written in digits without separators or units: "
                "`10000`, not `10,000`, `1万` or `10000円`; they go up to 1000000000000000."
            ),
            _("segment loyal: orders => 3 and total_spent >= 10,000"),
            _("segment loyal: orders >= 3 and total_spent >= 10000"),
        ),
        # ------------------------------------------------------------------ names (LR1xx)
        _c(
            "LR101",
            "welcome.rule",
            _("unknown rule"),
            _("`start NAME` names no rule of the folder. The help suggests the closest rule name."),
            _("when purchased then start winbak"),
            _("when purchased then start winback"),
        ),
        _c(
            "LR102",
            "welcome.rule",
            _("unknown message"),
            _(
                "`send NAME` names no message of messages.yaml (or there is no messages.yaml). Fix the "
                "spelling (the help suggests a close name) or add the message."
            ),
            _("when followed then send coupon51"),
            _("when followed then send coupon15"),
        ),
        _c(
            "LR103",
            "dormant.rule",
            _("unknown segment"),
            _("`in segment NAME` names no `segment NAME: ...` of the folder."),
            _("rule vip_care when in segment vipp then send vip_thanks"),
            _("rule vip_care when in segment vip then send vip_thanks"),
        ),
        _c(
            "LR104",
            "dormant.rule",
            _("unknown rich menu"),
            _("`menu NAME` names no entry of `rich_menus:` in settings.yaml."),
            _("when tagged vip then menu vipp"),
            _("when tagged vip then menu vip"),
        ),
        _c(
            "LR105",
            "welcome.rule",
            _("a variant that the rule does not have"),
            _(
                "`variant NAME` names one of the rule's own `split` variants, and only means something "
                "inside that rule (entry filter, steps, `exit when`), not in segments or triggers."
            ),
            _("when followed split a 50%, b 50% then send coupon15 if variant c"),
            _("when followed split a 50%, b 50% then send coupon15 if variant b"),
        ),
        _c(
            "LR106",
            "welcome.rule",
            _("a name is defined twice"),
            _(
                "Rule names are unique across all files of the folder, and so are segment names. An "
                "unnamed rule is named after its file, so `when ...` in welcome.rule clashes with a "
                "`rule welcome`. The help says where the first one is."
            ),
            _(
                "rule welcome when followed then send greeting\nrule welcome when followed via qr=shipping then send greeting_shipping"
            ),
            _(
                "rule welcome when followed then send greeting\nrule welcome_qr when followed via qr=shipping then send greeting_shipping"
            ),
        ),
        _c(
            "LR107",
            "summer_ad.rule",
            _("a second rule without a name"),
            _("One rule per file may leave out `rule NAME` (it is named after the file); name the others."),
            _("when followed via ad=summer then send coupon15\nwhen purchased then stop"),
            _("when followed via ad=summer then send coupon15\nrule summer_bought when purchased then stop"),
        ),
        _c(
            "LR108",
            "dormant.rule",
            _("segments refer to each other in a circle"),
            _(
                "A segment that uses itself, directly or through other segments, can never be "
                "evaluated; break the circle."
            ),
            _("segment a: in segment b\nsegment b: in segment a"),
            _("segment a: orders >= 3\nsegment b: in segment a and tagged vip"),
        ),
        _c(
            "LR109",
            "messages.yaml",
            _("a message no rule sends (warning)"),
            _(
                "The message is defined in messages.yaml but no rule sends it: remove it, or send it "
                "from a rule. Often the rule misspells its name."
            ),
            _("spare_coupon: 使われないクーポン"),
            _("(remove spare_coupon, or `send spare_coupon` from a rule)"),
        ),
        # ------------------------------------------------------------------ numbers and times (LR2xx)
        _c(
            "LR201",
            "welcome.rule",
            _("not a time of day"),
            _(
                "Times of day are 24-hour `HH:MM`: hours 00 to 23, minutes 00 to 59; midnight is "
                "`00:00`. `10時` is written `10:00`."
            ),
            _("when followed then wait 1d at 24:00 send coupon15"),
            _("when followed then wait 1d at 00:00 send coupon15"),
        ),
        _c(
            "LR202",
            "welcome.rule",
            _("a duration of zero"),
            _(
                "`wait 0d`, `within 0d`, `up to 0d`, `reenter after 0d` mean nothing (or the same as "
                "something shorter); give a real duration. `wait 0d at 12:00` (the next 12:00) is fine."
            ),
            _("when followed then wait 0d send coupon15"),
            _("when followed then wait 0d at 12:00 send coupon15"),
        ),
        _c(
            "LR203",
            "welcome.rule",
            _("a percentage that does not add up"),
            _(
                "The variants of `split` add up to exactly 100%, each above 0% and with its own name; "
                "`holdout` and `top` are between 0% and 100%."
            ),
            _("when followed split a 50%, b 40% then send coupon15"),
            _("when followed split a 50%, b 50% then send coupon15"),
        ),
        _c(
            "LR204",
            "welcome.rule",
            _("an empty delivery window"),
            _("A rule's `window` needs different start and end times; `22:00-06:00` runs over midnight."),
            _("when followed window 10:00-10:00 then send greeting"),
            _("when followed window 10:00-20:00 then send greeting"),
        ),
        _c(
            "LR205",
            "welcome.rule",
            _("an option given twice"),
            _(
                "Each option (`priority`, `window`, `reenter`, `exit when`, `split`, `holdout`) may "
                "appear once per rule; keep one."
            ),
            _("when followed priority 1 priority 5 then send greeting"),
            _("when followed priority 5 then send greeting"),
        ),
        _c(
            "LR206",
            "sale.rule",
            _("a sale offset with `at` that is not whole days"),
            _(
                "`sale ... in D at HH:MM` counts calendar days before the sale's date; use whole days, "
                "or drop `at` to count from the sale's exact moment."
            ),
            _("when sale starts in 1d12h at 10:00 then send sale_countdown"),
            _("when sale starts in 2d at 10:00 then send sale_countdown"),
        ),
        # ------------------------------------------------------------------ triggers, conditions, steps (LR3xx)
        _c(
            "LR301",
            "welcome.rule",
            _("an activity without `within` in a condition trigger"),
            _(
                "`when purchased` alone is the purchase event; combined with other conditions it would "
                "be a condition without a time frame. Write `when purchased if tagged vip` (the event, "
                "filtered), `when purchased within 30d and tagged vip` (a condition), or `orders >= 1` "
                'for "has ever purchased". The same holds for `clicked`, `viewed` and `carted`.'
            ),
            _("rule vip_buy when purchased and tagged vip then send vip_thanks"),
            _("rule vip_buy when purchased if tagged vip then send vip_thanks"),
        ),
        _c(
            "LR302",
            "welcome.rule",
            _("a filter the word does not take"),
            _("`purchased` takes `product=` or `category=`; `viewed` and `carted` take `product=`."),
            _("when purchased color=red then send thanks"),
            _("when purchased category=cosmetics then send thanks"),
        ),
        _c(
            "LR303",
            "sale.rule",
            _("a schedule that is not a cron expression"),
            _(
                "`schedule` takes five fields, minute hour day month weekday, in quotes: "
                '`"0 20 * * 5"` is Fridays at 20:00. A schedule that can never fire (31 February) is '
                "a warning."
            ),
            _('rule weekly_pick when schedule "20 * * 5" then send weekly_pick'),
            _('rule weekly_pick when schedule "0 20 * * 5" then send weekly_pick'),
        ),
        _c(
            "LR304",
            "welcome.rule",
            _("an empty keyword"),
            _('`message ""` would answer every text a friend sends; give a word to look for.'),
            _('when message "" then send coupon_reply'),
            _('when message "クーポン" then send coupon_reply'),
        ),
        _c(
            "LR305",
            "delivery.rule",
            _("`wait for` without an event of the friend"),
            _(
                "`wait for` resumes on an event of this friend, such as `purchased`, `postback "
                'answer=yes`, `message "yes"` or `event shipped`, not on a schedule, a sale or a '
                "condition."
            ),
            _('then send delivery_check wait for schedule "0 10 * * *" up to 1d'),
            _("then send delivery_check wait for postback answer=yes up to 1d"),
        ),
        _c(
            "LR306",
            "dormant.rule",
            _("a measure used with the wrong period"),
            _(
                "`spent` needs a period (`spent within 365d`); for all time use `total_spent`. Only "
                "`spent` takes `within`."
            ),
            _("segment big: spent > 50000"),
            _("segment big: spent within 365d > 50000"),
        ),
        _c(
            "LR307",
            "dormant.rule",
            _("a comparison of the wrong kind"),
            _(
                "`orders`, `total_spent` and `spent` are numbers, compared with numbers; "
                "`display_name` and `language` are texts, compared with quoted texts. `top N% by` "
                "needs a number."
            ),
            _('segment loyal: orders >= "10"'),
            _("segment loyal: orders >= 10"),
        ),
        _c(
            "LR308",
            "welcome.rule",
            _("a computed attribute cannot be set"),
            _("`orders`, `total_spent` and `spent` are computed from purchases; `set` a custom attribute instead."),
            _("when tagged vip then set total_spent = 0"),
            _('when tagged vip then set rank = "gold"'),
        ),
        _c(
            "LR309",
            "sale.rule",
            _("not a day of the week"),
            _(
                "`wait until` takes `monday` ... `sunday`, or a time of day. `月曜` or `金曜日` is "
                "written `monday` or `friday`."
            ),
            _("when followed then wait until friyday send weekly_pick"),
            _("when followed then wait until friday at 20:00 send weekly_pick"),
        ),
        _c(
            "LR310",
            "welcome.rule",
            _("one push would hold more than five messages"),
            _(
                "Sends with no `wait` between them go out together as one push, and LINE allows five "
                "message objects per push. Put a `wait` between them or send fewer messages."
            ),
            _("then send greeting, coupon15, review_request, weekly_pick, sale_start"),
            _("then send greeting wait 1d send coupon15"),
        ),
        _c(
            "LR311",
            "delivery.rule",
            _("`event NAME` of an event that has its own word"),
            _(
                "`event NAME` is for the shop's own events. Built-in events are matched by their rule "
                "words: `purchased` for `purchase`, `carted` for `cart`, `viewed` for `view`, "
                "`followed` for `follow`."
            ),
            _("when event purchase then send thanks"),
            _("when purchased then send thanks"),
        ),
        # ------------------------------------------------------------------ warnings on rules (LR4xx)
        _c(
            "LR401",
            "sale.rule",
            _("a rule that never fires (warning)"),
            _(
                "The rule can never start: a sale kind no sale of sale_calendar.yaml has, a calendar "
                "without sales, a schedule that never comes (31 February), an entry filter that leaves "
                "out everyone the trigger reaches (`when unfollowed` with `unless blocked`)."
            ),
            _("when sale kind=super_sael starts then send sale_start"),
            _("when sale kind=super_sale starts then send sale_start"),
        ),
        _c(
            "LR402",
            "welcome.rule",
            _("a step that is never reached (warning)"),
            _("A step after an unconditional `stop` never runs; remove it, or give the `stop` a condition."),
            _("then send greeting stop send coupon15"),
            _("then send greeting stop if purchased send coupon15"),
        ),
        _c(
            "LR403",
            "sale.rule",
            _("a sale moment that cannot be meant (warning)"),
            _(
                "The trigger fires outside the sale it belongs to, e.g. `sale ends in 0d at 10:00` for a "
                "sale that ends at 01:59 fires after the end; or it fires in the sale but outside the "
                "delivery window, and its sends wait for the opening, after the end (`sale ends in 2h` "
                "of that sale fires at 23:59). The help gives the trigger that was probably meant."
            ),
            _("when sale ends in 0d at 10:00 then send sale_last_call"),
            _("when sale ends in 1d at 10:00 then send sale_last_call"),
        ),
        _c(
            "LR404",
            "welcome.rule",
            _("a send decided after the step that changes it (warning)"),
            _(
                "A send is decided when it goes out, at the end of the tick or at the window's "
                "opening, after the steps that follow it up to the next `wait` have run. A `tag`, "
                "`untag` or `set` there that changes what the send's `if`/`unless` reads changes "
                "the decision (`send coupon unless tagged coupon_sent` followed by `tag "
                "coupon_sent` never sends), and one that makes `exit when` hold drops the send. "
                "Check the condition when the friend enters the rule, or mark with a name the "
                "conditions do not read."
            ),
            _('when message "クーポン" reenter always then send coupon15 unless tagged coupon_sent tag coupon_sent'),
            _('when message "クーポン" unless tagged coupon_sent reenter always then send coupon15 tag coupon_sent'),
        ),
        _c(
            "LR405",
            "dormant.rule",
            _("`clicked` before the rule sent anything (warning)"),
            _(
                "`clicked` asks about tracked links this rule sent. In the trigger condition or the "
                "entry filter of a rule a friend enters once, the rule has sent them nothing yet, "
                "so the term never holds there (nor through a segment). With `reenter after D` it "
                "asks about the friend's last time in the rule; in a step's condition, about the "
                "links sent since entry."
            ),
            _("rule hot when clicked within 2d then send coupon15"),
            _("rule hot when clicked within 2d reenter after 30d then send coupon15"),
        ),
        _c(
            "LR406",
            "sale.rule",
            _("`reenter` in a schedule or sale rule (warning)"),
            _(
                "A `schedule` or `sale` rule enters every current friend once per occurrence (a friend "
                "still inside it from an earlier occurrence is left out); `reenter` changes nothing "
                "there, unless a `start` step enters the rule too. Remove it."
            ),
            _('rule weekly when schedule "0 20 * * 5" reenter after 7d then send weekly_pick'),
            _('rule weekly when schedule "0 20 * * 5" then send weekly_pick'),
        ),
        # ------------------------------------------------------------------ messages.yaml (LR5xx)
        _c(
            "LR500",
            "messages.yaml",
            _("a message is not a message"),
            _(
                "messages.yaml maps message names to a text, one LINE message object or a list of up to "
                "five. Names follow the rule language's name rule."
            ),
            _("coupon 15: クーポンです"),
            _("coupon15: クーポンです"),
        ),
        _c(
            "LR501",
            "messages.yaml",
            _("a template cannot be read"),
            _(
                "Texts with `{{` or `{%` are Liquid templates. The message says what is wrong: an "
                "unclosed `{{`, an unknown filter (with a suggestion)."
            ),
            _('greeting: "{{ friend.display_name | upcse }}様"'),
            _('greeting: "{{ friend.display_name | upcase }}様"'),
        ),
        _c(
            "LR502",
            "messages.yaml",
            _("an unknown template variable (warning)"),
            _(
                "Templates know `friend`, `rule`, `sale` and `event`; any other variable renders as "
                "nothing, which is usually a misspelling."
            ),
            _('greeting: "{{ freind.display_name }}様"'),
            _('greeting: "{{ friend.display_name | default: \\"お客\\" }}様"'),
        ),
        _c(
            "LR503",
            "messages.yaml",
            _("a LINE message object breaks LINE's rules"),
            _(
                "Each object is checked against LINE's limits before anything is sent: required fields, "
                "lengths counted as LINE counts them (UTF-16: an emoji counts 2), the number of actions, "
                "`https://` URLs. A field LINE wants as text (`size: 12`) must be quoted. See "
                "docs/messages.md for every limit."
            ),
            _(
                "- type: template\n  altText: クーポン\n  template: {type: buttons, title: 初回限定, text: クーポンコード WELCOME15 をご注文時に入力してください。有効期限は発行から7日間です。お早めにぜひご利用ください, actions: [...]}"
            ),
            _(
                "- type: template\n  altText: クーポン\n  template: {type: buttons, title: 初回限定, text: コード WELCOME15 をご注文時に入力, actions: [...]}"
            ),
        ),
        _c(
            "LR504",
            "messages.yaml",
            _("a colour, ratio or size LINE would refuse"),
            _(
                "YAML reads these values fine, but LINE refuses the whole push (for every friend) "
                "when they have another shape: colours are `#` and six hexadecimal digits (eight with "
                "transparency), in quotes; `aspectRatio` is `width:height`; `size` is a word (`xxs` ... "
                "`5xl`, `full`, bubble sizes `nano` ... `giga`) or pixels or percent (`12px`, `50%`). "
                "The help gives the value meant."
            ),
            _('      color: e86a8d\n      size: "12"'),
            _('      color: "#e86a8d"\n      size: "12px"'),
        ),
        # ------------------------------------------------------------------ settings.yaml (LR6xx)
        _c(
            "LR600",
            "settings.yaml",
            _("settings.yaml is not a list of settings"),
            _(
                "settings.yaml holds one `name: value` setting per line. A file that is a single text or "
                "a list cannot be read as settings."
            ),
            _("- timezone: Asia/Tokyo"),
            _("timezone: Asia/Tokyo"),
        ),
        _c(
            "LR601",
            "settings.yaml",
            _("unknown setting"),
            _(
                "The key is not one of the settings listed in docs/settings.md, usually a misspelling. "
                "The help suggests the closest setting."
            ),
            _("timzone: Asia/Tokyo"),
            _("timezone: Asia/Tokyo"),
        ),
        _c(
            "LR602",
            "settings.yaml",
            _("unknown time zone"),
            _(
                "`timezone` must be an IANA time zone name such as `Asia/Tokyo`. Every time of day in the "
                "rules (`at 12:00`, `window`, schedules, sale times) is read in this zone."
            ),
            _("timezone: JST"),
            _("timezone: Asia/Tokyo"),
        ),
        _c(
            "LR603",
            "settings.yaml",
            _("the delivery window is not valid"),
            _(
                "`window` is the daily delivery window, two times of day `HH:MM-HH:MM` in quotes. Sends "
                "due outside it wait for the next opening. An end before the start runs over midnight; "
                "start and end may not be the same."
            ),
            _("window: 9:00-21:00pm"),
            _('window: "09:00-21:00"'),
        ),
        _c(
            "LR604",
            "settings.yaml",
            _("a setting has a value of the wrong kind"),
            _(
                "Each setting takes one kind of value: `max_per_day`, `monthly_quota` and "
                "`attribution_days` a whole number of at least 1 written in digits alone (`5000`, not "
                "`5,000` or `5000通`), `utm` true or false, `base_url` an https:// address, the LINE "
                "Login settings a text."
            ),
            _("max_per_day: two"),
            _("max_per_day: 2"),
        ),
        _c(
            "LR605",
            "settings.yaml",
            _("a rich menu entry is not valid"),
            _(
                "`rich_menus` maps the names the rules use (`menu vip`) to the rich menu ids LINE shows "
                "when a menu is created: `richmenu-` followed by 32 hexadecimal characters. A name "
                "without an id is an error too."
            ),
            _("rich_menus:\n  vip: VIP menu"),
            _("rich_menus:\n  vip: richmenu-2b7e9f41c6d84a35b0e1f2a3c4d5e6f7"),
        ),
        _c(
            "LR606",
            "settings.yaml",
            _("a secret is kept in git (warning)"),
            _(
                "The files of the rule folder are kept in git, where everyone with access can read "
                "them. The LINE Login channel secret belongs in the environment variable "
                "LINE_LOGIN_CHANNEL_SECRET of the runner."
            ),
            _("login_channel_secret: 0123456789abcdef"),
            _("# settings.yaml: no secret\n# where the runner runs: LINE_LOGIN_CHANNEL_SECRET=0123456789abcdef"),
        ),
        _c(
            "LR607",
            "settings.yaml",
            _("unknown language"),
            _(
                "`language` chooses the language of the messages of `linerules validate`, `test`, "
                "`explain` and `report`: `ja` for Japanese, `en` for English."
            ),
            _("language: japanese"),
            _("language: ja"),
        ),
        # ------------------------------------------------------------------ sale_calendar.yaml (LR7xx)
        _c(
            "LR700",
            "sale_calendar.yaml",
            _("the sale calendar is not a list of sales"),
            _(
                "sale_calendar.yaml starts with `sales:` followed by one item per sale, each a mapping "
                "with `name`, `title`, `starts` and `ends`."
            ),
            _("super_sale_dec:\n  starts: 2026-12-04 20:00"),
            _(
                "sales:\n  - name: super_sale_dec\n    title: 12月スーパーSALE\n"
                "    starts: 2026-12-04 20:00\n    ends: 2026-12-11 01:59"
            ),
        ),
        _c(
            "LR701",
            "sale_calendar.yaml",
            _("two sales have the same name"),
            _("Each sale needs its own `name`: rules and reports tell the sales apart by it."),
            _("sales:\n  - name: super_sale\n    ...\n  - name: super_sale\n    ..."),
            _("sales:\n  - name: super_sale_sep\n    ...\n  - name: super_sale_dec\n    ..."),
        ),
        _c(
            "LR702",
            "sale_calendar.yaml",
            _("a sale field is unknown or missing"),
            _(
                "A sale has the fields `name`, `title`, `starts` and `ends` (required) and `kind` and "
                "`url` (optional). Any other field is an error, usually a misspelling."
            ),
            _("  - name: super_sale_dec\n    title: 12月スーパーSALE\n    start: 2026-12-04 20:00"),
            _(
                "  - name: super_sale_dec\n    title: 12月スーパーSALE\n    starts: 2026-12-04 20:00\n"
                "    ends: 2026-12-11 01:59"
            ),
        ),
        _c(
            "LR703",
            "sale_calendar.yaml",
            _("a sale field has a wrong value"),
            _(
                "A sale's `name` and `kind` are names (a letter, then letters, digits, `_` or `-`), its "
                "`title` is a text and its `url` an https:// link."
            ),
            _("    name: 12月 super sale"),
            _("    name: super_sale_dec\n    title: 12月スーパーSALE"),
        ),
        _c(
            "LR704",
            "sale_calendar.yaml",
            _("a sale time is not a date and time"),
            _(
                "`starts` and `ends` are local times like `2026-12-04 20:00`, times with an offset like "
                "`2026-12-04T20:00:00+09:00`, or dates (midnight)."
            ),
            _("    starts: 12/4 20時"),
            _("    starts: 2026-12-04 20:00"),
        ),
        _c(
            "LR705",
            "sale_calendar.yaml",
            _("a sale ends before it starts"),
            _(
                "`ends` must be later than `starts`. A sale that runs past midnight ends on the next day. "
                "A one-day sale written `starts: 2027-02-01` and `ends: 2027-02-01` lasts no time at all "
                "(a date alone is 00:00): write `ends: 2027-02-01 23:59`."
            ),
            _("    starts: 2026-12-04 20:00\n    ends: 2026-12-04 01:59"),
            _("    starts: 2026-12-04 20:00\n    ends: 2026-12-11 01:59"),
        ),
        _c(
            "LR706",
            "sale_calendar.yaml",
            _("a sale's end is a date alone (warning)"),
            _(
                "An `ends:` written as a date alone is 00:00 at the start of that day, so that day is "
                "not part of the sale. For a sale through the 11th write `ends: 2026-12-11 23:59`; "
                "write `ends: 2026-12-11 00:00` to keep midnight and silence the warning."
            ),
            _("    starts: 2026-12-04\n    ends: 2026-12-11"),
            _("    starts: 2026-12-04 20:00\n    ends: 2026-12-11 23:59"),
        ),
        # ------------------------------------------------------------------ rule tests (LR8xx)
        _c(
            "LR800",
            "rules/tests/welcome.yaml",
            _("a rule test file is not a list of tests"),
            _(
                "A file in rules/tests/ holds one test (`name`, `events`, `expect`) or a list of them "
                "under `tests:`; nothing else may stand beside `tests:`."
            ),
            _("tests:\n  name: greeting\nevents: []"),
            _("tests:\n  - name: greeting\n    events: []\n    expect: []"),
        ),
        _c(
            "LR801",
            "rules/tests/welcome.yaml",
            _("a test field is unknown or missing"),
            _(
                "A test has `events` and `expect` (required) and `name`, `until`, `tick`, `tolerance` "
                "(optional). `expect: []` says that nothing is sent."
            ),
            _("  - name: greeting\n    events: [...]\n    expects: [...]"),
            _("  - name: greeting\n    events: [...]\n    expect: [...]"),
        ),
        _c(
            "LR802",
            "rules/tests/welcome.yaml",
            _("a test's time or duration is not valid"),
            _(
                "`until` and the `at` of expected pushes are times with a UTC offset "
                "(`2026-11-03T10:00:00+09:00`); `tick` and `tolerance` are durations (`1h`, `5m`)."
            ),
            _("    until: 2026-11-05 00:00"),
            _("    until: 2026-11-05T00:00:00+09:00"),
        ),
        _c(
            "LR803",
            "rules/tests/welcome.yaml",
            _("an event of a test is not valid"),
            _(
                "The events of a test are written exactly as in docs/events.md, in YAML. The message "
                "says which field is wrong; words YAML reads as true/false or numbers need quotes."
            ),
            _("      - {type: follow, friend: U1, at: 2026-11-02T10:00:00, sorce: qr=shipping}"),
            _("      - {type: follow, friend: U1, at: 2026-11-02T10:00:00+09:00, source: qr=shipping}"),
        ),
        _c(
            "LR804",
            "rules/tests/welcome.yaml",
            _("an expected push is not valid"),
            _(
                "An expected push is `{at: ..., friend: ..., rule: ..., messages: [...]}` with all four "
                "fields; `friend` is a text and `messages` a list of message names."
            ),
            _("      - {at: 2026-11-03T10:00:00+09:00, friend: U1, messages: [coupon15]}"),
            _("      - {at: 2026-11-03T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}"),
        ),
        _c(
            "LR805",
            "rules/tests/welcome.yaml",
            _("an expected push names an unknown rule or message"),
            _(
                "The `rule` and `messages` of an expected push must exist in the rule folder; the help "
                "suggests the closest name."
            ),
            _("      - {at: 2026-11-03T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon51]}"),
            _("      - {at: 2026-11-03T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}"),
        ),
    )
}


# ----------------------------------------------------------------------------- the source


@functools.cache
def messages_by_code() -> dict[str, tuple[str, ...]]:
    """Code -> the English headlines raised with it (``E(code, msgid)`` calls in the source)."""
    found: dict[str, list[str]] = {}
    files = sorted(ENGINE.rglob("*.py")) + [p for p in EXTRA_SOURCES if p.exists()]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "E"
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[1], ast.Constant)
            ):
                msgs = found.setdefault(node.args[0].value, [])
                if node.args[1].value not in msgs:
                    msgs.append(node.args[1].value)
    return {code: tuple(found[code]) for code in sorted(found)}


def lookup(code: str) -> Code | None:
    return CODES.get(code.strip().upper())


# ----------------------------------------------------------------------------- explain


def explain(code: Code, lang: str | None = None) -> str:
    """The ``linerules explain`` text of one code."""
    t = lambda text: render(text, lang)  # noqa: E731
    out = [f"{code.code}: {t(code.title)}", "", t(code.meaning), "", t(_("Wrong ({file}):", file=code.file))]
    out += ["    " + line for line in t(code.wrong).splitlines()]
    out += ["", t(_("Fixed:"))]
    out += ["    " + line for line in t(code.fixed).splitlines()]
    return "\n".join(out) + "\n"


def markdown(lang: str) -> str:
    """docs/errors.md (``en``) or docs/ja/errors.md (``ja``): every code, generated."""
    t = lambda text: render(text, lang)  # noqa: E731
    used = messages_by_code()
    out = [
        t(_("# Errors and warnings of `linerules validate`")),
        "",
        t(_("<!-- Generated from the message catalog by `make docs`; do not edit by hand. -->")),
        "",
        t(_("`linerules validate rules/` prints each problem as")),
        "",
        "    " + t(_("rules/welcome.rule:9:10: error[LR102]: unknown message `coupon51`")),
        "            send coupon51 if not purchased",
        "                 ^^^^^^^^",
        "        " + t(_("help: did you mean `coupon15`?")),
        "",
        t(
            _(
                "the file, line and column, the code of the problem, then the line itself with a "
                "caret under the exact place, then a `help:` line with a fix where there is one. "
                "**Errors** make the command exit with 1 (the runner refuses to load such a folder "
                "and keeps the one it has). **Warnings** point at something that is allowed but "
                "almost certainly not meant; the exit code stays 0. All problems are reported in "
                "one run."
            )
        ),
        "",
        t(
            _(
                "`linerules explain LR102` prints the explanation of a code in the terminal. "
                "`--lang ja` (or `language: ja` in settings.yaml) shows everything in Japanese."
            )
        ),
        "",
    ]
    for code in CODES.values():
        out += [f"## {code.code}: {t(code.title)}", "", t(code.meaning), ""]
        msgs = used.get(code.code, ())
        if msgs:
            out.append(t(_("Messages:")))
            out.append("")
            out += [f"- {_md_code(gettext_(m, lang))}" for m in msgs]
            out.append("")
        out += [t(_("Wrong ({file}):", file=code.file)), "", "```"]
        out += t(code.wrong).splitlines()
        out += ["```", "", t(_("Fixed:")), "", "```"]
        out += t(code.fixed).splitlines()
        out += ["```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _md_code(template: str) -> str:
    """A message template as Markdown: the placeholders shown as ``X``-like names."""
    shown = re.sub(r"\{(\w+)\}", r"<\1>", template.replace("{{", "{").replace("}}", "}"))
    return shown.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.language.codes``: write docs/errors.md and docs/ja/errors.md."""
    root = ENGINE.parent
    (root / "docs" / "errors.md").write_text(markdown("en"), encoding="utf-8")
    (root / "docs" / "ja").mkdir(exist_ok=True)
    (root / "docs" / "ja" / "errors.md").write_text(markdown("ja"), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
