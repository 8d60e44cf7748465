"""Builders for the tests of the runner's HTTP server in-process (aiohttp's test client): the
rule folder, signed LINE webhooks, shop events and polling. The fixtures on top of these
(``rules_dir``, ``make_client``, ``fake_line_login``) are in conftest.py."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from engine.testing.webhooks import line_event, signature, webhook_body
from enginekit import write_folder

__all__ = ["API_TOKEN", "SECRET", "line_event", "shop_event", "sign", "wait_for",
           "webhook_body", "write_rules"]

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


def write_rules(root: Path, rules: str = RULES, messages: str = MESSAGES,
                settings: str = SETTINGS) -> Path:
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
