"""The runner speaks the folder's language (issue 12): with `language: ja` in settings.yaml the
HTTP refusals, the 400 reasons of `POST /events` and the start-up refusal are Japanese; the
real aiohttp app, the real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.runner.runloop import Runner, RunnerConfig, StartupError
from engine.runner.server import build_app

API_TOKEN = "shop-token"


def folder(root: Path, language: str, rules: str = "when followed then send hi\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.yaml").write_text(f"timezone: Asia/Tokyo\nlanguage: {language}\n", encoding="utf-8")
    (root / "messages.yaml").write_text('hi: "ようこそ"\n', encoding="utf-8")
    (root / "main.rule").write_text(rules, encoding="utf-8")
    return root


@pytest.fixture
async def client_for(tmp_path, aiohttp_client):
    opened = []

    async def make(language: str, env: dict | None = None):
        config = RunnerConfig.from_env(
            {"LINERULES_API_TOKEN": API_TOKEN, **(env or {})},
            rules_dir=folder(tmp_path / language, language),
            db=tmp_path / f"{language}.db",
            listen="127.0.0.1:0",
            tick_seconds=0.2,
        )
        runner = Runner.open(config)
        client = await aiohttp_client(build_app(runner, loops=False))
        opened.append((client, runner))
        return client

    yield make
    for client, runner in opened:
        await client.close()
        runner.close()


BAD = {"type": "follow", "friend": "U1", "at": "2026-11-01T10:00:00"}


async def test_event_refusals_in_japanese(client_for):
    client = await client_for("ja")
    answer = await client.post(
        "/events",
        data=json.dumps(BAD),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    assert answer.status == 400
    body = await answer.json()
    assert body["field"] == "at"
    assert "時差" in body["error"] and "2026-11-01T10:00:00+09:00" in body["error"]
    wrong = await client.post("/events", data="{}", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await wrong.json())["error"] == "Bearer トークンがないか、違います"
    hook = await client.post("/callback", data=b"{}")
    assert hook.status == 503
    assert (await hook.json())["error"] == "Webhook は無効です: LINE_CHANNEL_SECRET を設定してください"


async def test_event_refusals_in_english(client_for):
    client = await client_for("en")
    answer = await client.post(
        "/events",
        data=json.dumps(BAD),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    assert (await answer.json())["error"].startswith("needs a UTC offset")


def test_start_up_refusal_in_japanese(tmp_path):
    rules = folder(tmp_path / "bad", "ja", rules="when followed then send hii\n")
    config = RunnerConfig.from_env({}, rules_dir=rules, db=tmp_path / "x.db", listen="127.0.0.1:0", tick_seconds=1)
    with pytest.raises(StartupError) as caught:
        Runner.open(config)
    from engine.i18n import render

    assert render(caught.value.args[0]) == (
        f"起動できません: {rules} のルールに誤りがあります (`linerules validate {rules}` で確かめてください)"
    )
