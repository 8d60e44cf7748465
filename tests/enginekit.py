"""Small builders for the engine's timeline tests: projects, events, simulated runs, rule
folders and timeline files."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.language import ir
from engine.runtime.events import Event
from engine.runtime.simulate import run_timeline

TZ = ZoneInfo("Asia/Tokyo")
MESSAGES = (
    "greeting",
    "coupon15",
    "review_request",
    "coupon_reply",
    "thanks",
    "weekly_pick",
    "sale_countdown",
    "sale_start",
    "sale_last_call",
    "winback",
    "vip_thanks",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
)


def at(text: str) -> dt.datetime:
    """``2026-11-01 10:00`` (or with seconds) in Asia/Tokyo."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=TZ)


def ev(kind: str, friend: str, when: str, **data) -> Event:
    event_id = data.pop("id", None)
    reply_token = data.pop("reply_token", None)
    return Event(type=kind, friend=friend, at=at(when), data=data, id=event_id, reply_token=reply_token)


def as_friends(events: list[Event]) -> list[Event]:
    """``events`` with a follow of each friend just before their first event (only current
    friends are ever sent anything, SPEC §2.2)."""
    out: list[Event] = []
    seen: set[str] = set()
    for e in sorted(events, key=lambda e: e.at):
        if e.friend not in seen and e.type != "follow":
            out.append(Event(type="follow", friend=e.friend, at=e.at, data={}))
        seen.add(e.friend)
        out.append(e)
    return out


def message(name: str, count: int = 1) -> ir.MessageDef:
    return ir.MessageDef(name, tuple({"type": "text", "text": f"{name} {i}"} for i in range(count)))


def project(
    *rules: ir.Rule,
    messages: dict | None = None,
    settings: ir.Settings | None = None,
    sales: tuple = (),
    segments: dict | None = None,
) -> ir.Project:
    msgs = {n: message(n) for n in MESSAGES}
    msgs.update(messages or {})
    return ir.Project(
        rules={r.name: r for r in rules},
        segments=segments or {},
        messages=msgs,
        sales=sales,
        settings=settings or ir.Settings(),
    )


def rule(name: str, trigger, *steps, **options) -> ir.Rule:
    """A rule; repeated step ids get `` #2``, `` #3`` like the compiler gives them."""
    seen: dict[str, int] = {}
    unique = []
    for step in steps:
        seen[step.id] = seen.get(step.id, 0) + 1
        unique.append(step if seen[step.id] == 1 else replace(step, id=f"{step.id} #{seen[step.id]}"))
    return ir.Rule(name=name, trigger=trigger, steps=tuple(unique), **options)


def send(*names: str, cond=None, sid: str | None = None) -> ir.Send:
    return ir.Send(sid or "send " + ", ".join(names), tuple(names), cond)


def wait(seconds: int, at_: dt.time | None = None) -> ir.Wait:
    return ir.Wait(f"wait {seconds}" + (f" at {at_}" if at_ else ""), seconds, at_)


#: Makes the database of a :func:`run` that names none: None, SQLite in memory; the ``backend``
#: fixture (tests/conftest.py) sets it to make a fresh PostgreSQL schema for each run.
NEW_DB: Callable[[], str] | None = None


def run(
    proj: ir.Project, events: list[Event], until: str | None = None, tick: int = 3600, db_path: str | None = None
) -> list[tuple[str, str, str, list[str]]]:
    """Pushes as (local time ``YYYY-MM-DD HH:MM:SS``, friend, rule, messages)."""
    if db_path is None and NEW_DB is not None:
        db_path = NEW_DB()
    pushes = run_timeline(proj, events, until=at(until) if until else None, tick_seconds=tick, db_path=db_path)
    return [(p["at"][:19].replace("T", " "), p["friend"], p["rule"], p["messages"]) for p in pushes]


def compile_rules(
    text: str, *, messages: dict | None = None, settings: ir.Settings | None = None, sales: tuple = ()
) -> ir.Project:
    """A project from rule text (the real compiler), with the default test messages."""
    from engine.language.diagnostics import render_text
    from engine.language.project import compile_source

    msgs = {n: message(n) for n in MESSAGES}
    msgs.update(messages or {})
    loaded = compile_source(text, messages=msgs, settings=settings, sales=sales)
    errors = [d for d in loaded.diagnostics if d.is_error]
    assert not errors, render_text(errors, loaded.sources)
    return loaded.project


def write_folder(root: Path, *, settings: str, messages: str, rules: str, rule_file: str = "main.rule") -> Path:
    """A rule folder at ``root`` (created): settings.yaml, messages.yaml and one rule file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.yaml").write_text(settings, encoding="utf-8")
    (root / "messages.yaml").write_text(messages, encoding="utf-8")
    (root / rule_file).write_text(rules, encoding="utf-8")
    return root


def write_timeline(path: Path, events) -> Path:
    """``events`` (dicts) as a JSON Lines timeline file for ``simulate`` / ``import``."""
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events), encoding="utf-8")
    return path
