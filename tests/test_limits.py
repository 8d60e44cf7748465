"""LINE's limits and the language's names live in one place each, and every side obeys them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.language import ir
from engine.language.messages import check_objects
from engine.line import limits
from engine.testing.line_emulator import validate_messages

GRAMMAR = Path(__file__).resolve().parent.parent / "engine" / "grammar.lark"


def test_the_grammar_names_what_the_language_modules_call_a_name():
    terminal = re.search(r"^NAME: /(.*)/$", GRAMMAR.read_text(encoding="utf-8"), re.M)
    assert terminal and terminal.group(1) == ir.NAME_RE.pattern


@pytest.mark.parametrize(
    "text,seconds,rules",
    [
        ("30m", 1800, 1800),
        ("2h", 7200, 7200),
        ("1d12h", 129600, 129600),
        ("2w", 1209600, 1209600),
        ("45s", 45, None),
        ("1m30s", 90, None),
        (" 5m ", 300, 300),
    ],
)
def test_one_duration_grammar_with_seconds_outside_rules(text, seconds, rules):
    assert ir.parse_duration(text) == seconds
    if rules is None:
        with pytest.raises(ValueError, match="not a duration"):
            ir.parse_duration(text, seconds=False)
    else:
        assert ir.parse_duration(text, seconds=False) == rules


@pytest.mark.parametrize("text", ["", "m", "5", "5x", "1d 2h", "-5m", "5M"])
def test_anything_else_is_not_a_duration(text):
    with pytest.raises(ValueError):
        ir.parse_duration(text)


def _refused_by_checks(objects) -> bool:
    return bool(check_objects(objects))


@pytest.mark.parametrize(
    "objects",
    [
        [{"type": "text", "text": "x" * limits.TEXT_LIMIT}],
        [{"type": "text", "text": "😀" * (limits.TEXT_LIMIT // 2)}],
        [{"type": "text", "text": "a"}] * limits.MAX_OBJECTS,
    ],
)
def test_at_the_limit_both_the_checks_and_the_emulator_accept(objects):
    assert not _refused_by_checks(objects)
    assert validate_messages({"messages": objects}) == []


@pytest.mark.parametrize(
    "objects",
    [
        [{"type": "text", "text": "x" * (limits.TEXT_LIMIT + 1)}],
        [{"type": "text", "text": "😀" * (limits.TEXT_LIMIT // 2) + "x"}],
        [{"type": "text", "text": "a"}] * (limits.MAX_OBJECTS + 1),
        [
            {
                "type": "template",
                "altText": "a",
                "template": {
                    "type": "image_carousel",
                    "columns": [
                        {
                            "imageUrl": "https://example.com/a.png",
                            "action": {
                                "type": "message",
                                "label": "x" * (limits.IMAGE_CAROUSEL_LABEL_LIMIT + 1),
                                "text": "a",
                            },
                        }
                    ],
                },
            }
        ],
    ],
)
def test_past_the_limit_both_refuse(objects):
    assert _refused_by_checks(objects)
    assert validate_messages({"messages": objects}) != []
