"""The pytest plugin a shop's own tests use (docs/testing.md): run as a shop would, in a
project of its own through pytester, with nothing but the plugin's fixtures."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
WELCOME = {
    "settings.yaml": "timezone: Asia/Tokyo\n",
    "messages.yaml": 'greeting: "ようこそ"\n',
    "main.rule": "rule welcome\n  when followed\n  then send greeting\n",
}


def docs_example() -> str:
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    [code] = re.findall(r"^## An example\n.*?```python\n(.*?)```", text, re.S | re.M)
    return code


@pytest.fixture
def shop(pytester, monkeypatch):
    """A shop's project: a rules/ folder, ``linerules`` on PATH, no conftest.py."""
    for name, text in WELCOME.items():
        (pytester.path / "rules").mkdir(exist_ok=True)
        (pytester.path / "rules" / name).write_text(text, encoding="utf-8")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_a_shops_tests_use_the_fixtures_with_no_conftest(shop):
    """One pytest run of a shop's project: the example of docs/testing.md (the real runner,
    a signed follow, LINE failing twice); a push through the real line-bot-sdk lands in the
    inbox; a webhook signed by ``line_webhook`` is one the SDK's own parser accepts; the
    marker sets the emulator's quota and the channel; faults are injected."""
    shop.makepyfile(
        test_welcome=docs_example(),
        test_sdk="""
        import pytest
        from linebot.v3.exceptions import InvalidSignatureError
        from linebot.v3.messaging import (ApiClient, ApiException, Configuration, MessagingApi,
                                          PushMessageRequest, TextMessage)
        from linebot.v3.webhook import WebhookParser
        from linebot.v3.webhooks import FollowEvent
        from engine.testing.webhooks import line_event


        def api(emulator, token):
            config = Configuration(host=emulator.base_url, access_token=token)
            return MessagingApi(ApiClient(config))


        @pytest.mark.line_emulator(quota=1, access_token="shop-token", channel_secret="s3cret")
        def test_push_signature_quota(line_emulator, line_channel, line_env, line_webhook,
                                      sign_webhook):
            assert line_channel.access_token == "shop-token"
            assert line_env["LINE_CHANNEL_SECRET"] == "s3cret"
            assert line_env["LINE_API_ENDPOINT"] == line_emulator.base_url
            line_emulator.add_user("U1", "Hanako")
            push = PushMessageRequest(to="U1", messages=[TextMessage(text="hi")])
            api(line_emulator, line_channel.access_token).push_message(push)
            assert [m["text"] for m in line_emulator.inbox("U1")] == ["hi"]
            with pytest.raises(ApiException) as refused:       # quota=1 is spent
                api(line_emulator, line_channel.access_token).push_message(push)
            assert refused.value.status == 429

            token = line_emulator.issue_reply_token("U1")
            body, headers = line_webhook(line_event("follow", "U1", reply_token=token))
            [event] = WebhookParser("s3cret").parse(body.decode(), headers["x-line-signature"])
            assert isinstance(event, FollowEvent) and event.source.user_id == "U1"
            assert event.reply_token == token
            assert sign_webhook(body) == headers["x-line-signature"]
            with pytest.raises(InvalidSignatureError):
                WebhookParser("another").parse(body.decode(), headers["x-line-signature"])


        def test_each_test_has_its_own_emulator_and_faults(line_emulator):
            assert line_emulator.requests == [] and line_emulator.quota is None
            line_emulator.add_user("U1", "Hanako")
            line_emulator.inject("push", 503)
            push = PushMessageRequest(to="U1", messages=[TextMessage(text="hi")])
            with pytest.raises(ApiException) as failed:
                api(line_emulator, line_emulator.access_token).push_message(push)
            assert failed.value.status == 503 and line_emulator.inbox("U1") == []


        @pytest.mark.line_emulator("positional")
        def test_a_positional_option_is_a_usage_error(line_emulator):
            pass
    """,
    )
    result = shop.runpytest("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*line_emulator takes keyword options only*"])
