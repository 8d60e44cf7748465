"""Intake that never lets one bad item stop everyone (issue 9 points 1, 2, 8, 9; issue 8
point 15): bounds at intake, rule-word event types refused everywhere, hostile headers and
text, big bodies off the event loop. Through the real aiohttp server on loopback, the real CLI,
and the real engine on SQLite files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import cli
from test_server import (API_TOKEN, SECRET, line_event, make_client, rules_dir, shop_event,  # noqa: F401
                         sign, webhook_body)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


# ----------------------------------------------------------------------------- rule words (8.15)

RULE_WORDS = {"carted": "cart", "purchased": "purchase", "viewed": "view", "followed": "follow",
              "unfollowed": "unfollow", "blocked": "unfollow", "clicked": "click", "tagged": "tag",
              "order": "purchase"}


@pytest.mark.parametrize("word, right", sorted(RULE_WORDS.items()))
async def test_post_events_refuses_a_rule_word_type_with_the_right_name(make_client, word, right):
    client, runner = await make_client(loops=False)
    resp = await client.post("/events", json=[shop_event("follow", "U1"), shop_event(word, "U1")],
                             headers=AUTH)
    assert resp.status == 400
    answer = await resp.json()
    assert (answer["line"], answer["field"]) == (2, "type")
    assert answer["error"].endswith(f"(did you mean `{right}`?)")
    assert runner.store.friend("U1") is None   # nothing of the batch is stored


def test_simulate_refuses_a_rule_word_type(tmp_path, rules_dir):  # noqa: F811
    timeline = tmp_path / "t.jsonl"
    timeline.write_text(json.dumps(shop_event("follow", "U1")) + "\n"
                        + json.dumps(shop_event("carted", "U1", product="SKU1")) + "\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "engine.cli", "simulate", str(timeline), "--rules",
                          str(rules_dir)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    assert f"{timeline}: line 2: field \"type\": unknown type `carted`" in run.stderr
    assert "(did you mean `cart`?)" in run.stderr and "Traceback" not in run.stderr


def test_linerules_test_refuses_a_rule_word_type(tmp_path, rules_dir):  # noqa: F811
    from click.testing import CliRunner

    tests = rules_dir / "tests"
    tests.mkdir()
    (tests / "welcome.yaml").write_text(
        "name: welcome\n"
        "events:\n"
        "  - {type: followed, friend: U1, at: \"2026-11-01T10:00:00+09:00\"}\n"
        "expect: []\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["test", str(rules_dir)])
    assert result.exit_code == 1
    assert "welcome.yaml:3:" in result.output
    assert "unknown type `followed`" in result.output and "(did you mean `follow`?)" in result.output
