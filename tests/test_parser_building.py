"""The syntax tree is built while the text is parsed (one pass): it must be the very tree the
walk over Lark's own tree builds, every node with the same place, for any rule text, valid or
not; and the places a user sees in diagnostics are those of the text as written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.language import parser as P
from engine.language.parser import parse_file
from engine.language.project import compile_source

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted(
    p for p in [*(ROOT / "rules").glob("*.rule"), *(ROOT / "tests" / "golden").glob("*/*.rule")] if p.is_file()
)
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def same_tree(a, b, where: str = "file") -> None:
    """Field by field, through every node, with the spans and the leaves' places (a record's
    ``==`` leaves some fields out)."""
    assert type(a) is type(b), (where, a, b)
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same_tree(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def both_ways(text: str, path: str = "r.rule"):
    """(the one-pass result, the long way's result) of ``text``."""
    return P._parse_building(path, text), P._parse_then_build(path, text)


def test_the_building_parse_is_what_parse_file_takes():
    text = (ROOT / "rules" / "welcome.rule").read_text(encoding="utf-8")
    assert P._building_parser() is not None
    built = P._parse_building("welcome.rule", text)
    assert built is not None and built[0].items
    same_tree(parse_file("welcome.rule", text), built)


def test_every_rule_file_in_the_repository_gives_the_same_tree():
    assert len(RULE_FILES) > 10
    for path in RULE_FILES:
        text = path.read_text(encoding="utf-8", errors="replace")
        built, walked = both_ways(text, str(path))
        if built is None:  # a syntax error, or nested too deeply: parse_file takes the long way itself
            assert walked[0].has_syntax_errors or any("nests more than" in d.message for d in walked[1]), path
            same_tree(parse_file(str(path), text), walked, path.name)
            continue
        same_tree(built, walked, path.name)


CONDS = [
    "purchased",
    "purchased within 30d",
    "purchased product=SKU-1 within 7d",
    "clicked",
    'viewed product="A B"',
    "carted category=x",
    "tagged vip",
    "blocked",
    "followed via qr=shop, ad=summer",
    "friend for 30d",
    "friend within 1d",
    "last purchase older than 90d",
    "never purchased",
    "orders >= 3",
    "total_spent within 365d > 50000",
    'language = "ja"',
    "top 20% by spent within 365d",
    "in segment vips",
    "variant a",
]


@st.composite
def conditions(draw, depth: int = 0):
    """A condition: an atom, or `not`, `and`, `or` and parentheses around smaller ones."""
    kind = draw(st.sampled_from(["atom", "atom", "not", "and", "or", "paren"] if depth < 4 else ["atom"]))
    if kind == "atom":
        return draw(st.sampled_from(CONDS))
    if kind == "not":
        return "not " + draw(conditions(depth + 1))
    if kind == "paren":
        return "(" + draw(conditions(depth + 1)) + ")"
    items = draw(st.lists(conditions(depth + 1), min_size=2, max_size=3))
    return f" {kind} ".join(items)


TRIGGERS = [
    "followed",
    "unfollowed",
    "linked",
    'message "coupon", "クーポン"',
    'message exactly "はい"',
    "postback action=a, b=c",
    "postback action=a b=c",
    "event shipped carrier=yamato",
    "event shipped",
    'schedule "0 20 * * 5"',
    "sale starts",
    "sale kind=summer ends in 1d at 10:00",
    "sale starts in 14d",
]
STEPS = [
    "send a",
    "send a, b",
    "wait 1d",
    "wait 2h30m at 12:00",
    "wait until monday at 10:00",
    "wait until 09:00",
    "wait until friday",
    "wait for purchased up to 3d",
    'wait for message "x" up to 1d',
    "tag t1",
    "tag purchased",  # keywords where only a name can stand are names
    "untag sale",
    "send segment, when",
    "untag t1",
    'set rank = "gold"',
    "set points = 10",
    "set ratio = 1.5",
    "menu main",
    "start other",
    "stop",
]
OPTIONS = [
    "exit when blocked",
    "reenter never",
    "reenter always",
    "reenter after 30d",
    "window 10:00-20:00",
    "priority 5",
    "uncapped",
    "split a 50%, b 50%",
    "holdout 10%",
]


@st.composite
def rule_files(draw) -> str:
    """A rule file the grammar accepts: rules with and without a name and description,
    segments, every trigger, step and option form, guards, comments, odd spacing."""
    items = []
    for i in range(draw(st.integers(0, 4))):
        shape = draw(st.sampled_from(["rule", "described", "bare", "segment"]))
        if shape == "segment":
            items.append(f"segment s{i}: {draw(conditions())}")
            continue
        trigger = draw(st.one_of(st.sampled_from(TRIGGERS), conditions()))
        head = {"rule": f"rule r{i}", "described": f'rule r{i} "Rule {i}"', "bare": ""}[shape]
        joiner = draw(st.sampled_from(["\n", " ", "\n\n  "]))
        lines = [f"{head} when {trigger}".strip()]
        if draw(st.booleans()):
            lines.append(f"  {draw(st.sampled_from(['if', 'unless']))} {draw(conditions())}")
        lines += ["  " + o for o in draw(st.lists(st.sampled_from(OPTIONS), max_size=2))]
        lines.append("  then  # the steps" if "\n" in joiner else "then")
        for _ in range(draw(st.integers(1, 4))):
            step = draw(st.sampled_from(STEPS))
            if draw(st.booleans()) and not step.startswith("wait"):
                step += f" {draw(st.sampled_from(['if', 'unless']))} {draw(conditions())}"
            lines.append("    " + step)
        lines += ["  " + o for o in draw(st.lists(st.sampled_from(OPTIONS), max_size=2))]
        items.append(joiner.join(lines))
    return "\n\n".join(items) + draw(st.sampled_from(["", "\n", "\n# end\n"]))


@FAST
@given(rule_files())
def test_generated_rule_files_give_the_same_tree(text):
    built, walked = both_ways(text)
    assert walked[0].has_syntax_errors is False, walked[1]
    assert built is not None
    same_tree(built, walked)


@FAST
@given(rule_files(), st.integers(0, 10_000), st.sampled_from(["", "(", ")", "then", "not", "1d", '"', "＝", "and"]))
def test_broken_rule_files_give_the_same_result(text, at, piece):
    """Edited anywhere (a syntax error or not): the same tree and the same diagnostics."""
    i = at % (len(text) + 1)
    text = text[:i] + piece + text[i + 1 :]
    built, walked = both_ways(text)
    if built is None:  # refused by the grammar: Lark's parse reports it, as before
        assert walked[0].has_syntax_errors or any("nests more than" in d.message for d in walked[1])
    else:
        same_tree(built, walked)
    same_tree(parse_file("r.rule", text), walked)


def test_parentheses_widen_the_place_of_what_holds_them_not_their_own():
    (rule,), _ = parse_file("r.rule", "segment s: (tagged a or tagged b) and not blocked")[0].items, None
    cond = rule.cond
    assert (cond.span.line, cond.span.column, cond.span.end_column) == (1, 12, 50)  # from the `(`
    inner = cond.items[0]
    assert (inner.span.column, inner.span.end_column) == (13, 33)  # inside the parentheses


def test_a_condition_nested_too_deeply_is_refused_where_it_passes_the_limit():
    deep = "not " * 60 + "blocked"
    text = f"rule a when followed then\n  send x if {deep}\n"
    f, diags = parse_file("r.rule", text)
    # at the 51st `not` from the inside
    assert [(d.line, d.column, "nests more than" in d.message) for d in diags] == [(2, 49, True)]
    assert P._parse_building("r.rule", text) is None  # taken the long way
    result = compile_source(text, messages={})
    assert result.project is None


def test_a_file_nested_beyond_the_stack_still_gets_one_error():
    deep = "(" * 3000 + "blocked" + ")" * 3000
    text = f"rule a when followed then stop\nrule b when {'not ' * 3000}blocked then stop\nsegment s: {deep}\n"
    f, diags = parse_file("r.rule", text)
    assert [d.line for d in diags if d.is_error] == [2]
    assert [r.name.value for r in f.items] == ["a", "s"]
