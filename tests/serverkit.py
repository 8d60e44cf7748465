"""Builders for the tests of the runner's HTTP server in-process (aiohttp's test client): the
rule folder, signed LINE webhooks, shop events and polling. The fixtures on top of these
(``rules_dir``, ``make_client``, ``fake_line_login``) are in conftest.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from engine.testing.webhooks import line_event, signature, webhook_body
from enginekit import write_folder

__all__ = [
    "API_TOKEN",
    "SECRET",
    "line_event",
    "sample",
    "scrape",
    "shop_event",
    "sign",
    "tick_later",
    "wait_for",
    "webhook_body",
    "write_rules",
]

SECRET = "channel-secret"
API_TOKEN = "shop-token"

SETTINGS = """\
timezone: Asia/Tokyo
login_channel_id: "1650000000"
base_url: https://shop.example.com/line
"""
MESSAGES = """\
greeting: "ようこそ {{ friend.display_name }}さん 新着はこちら https://shop.example.com/new"
coupon_reply: "クーポンはこちら"
"""
RULES = """\
rule welcome
  when followed
  then send greeting

rule keyword
  when message "クーポン", "coupon"
  reenter always
  then send coupon_reply
"""


def write_rules(root: Path, rules: str = RULES, messages: str = MESSAGES, settings: str = SETTINGS) -> Path:
    """A rule folder at ``root``: settings.yaml, messages.yaml and main.rule."""
    return write_folder(root, settings=settings, messages=messages, rules=rules)


def sign(body: bytes, secret: str = SECRET) -> str:
    """``x-line-signature`` of ``body`` with the test channel's secret."""
    return signature(body, secret)


def shop_event(kind: str, friend: str, **fields) -> dict:
    return {"type": kind, "friend": friend, "at": "2026-11-01T10:00:00+09:00", **fields}


async def wait_for(predicate, timeout: float = 5.0):
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def tick_later(runner, seconds: float = 1.0) -> None:
    """Move the runner's :class:`ManualClock` on by ``seconds`` and wait (its loops running)
    for a tick at that time: whatever that tick does is done when this returns."""
    moment = runner.clock.advance(seconds)
    runner.wake_tick()
    await wait_for(lambda: runner.last_tick is not None and runner.last_tick >= moment)


async def scrape(client) -> dict:
    """GET /metrics over HTTP, parsed by prometheus_client: {(sample name, labels): value},
    plus the metric types under ("TYPE", family name)."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    samples: dict = {}
    for family in text_string_to_metric_families(await resp.text()):
        samples[("TYPE", family.name)] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
