"""The linerules pytest plugin: LINE on loopback for a shop's own tests (docs/testing.md).

Installed with linerules (entry point ``pytest11``), so these fixtures are there in any test
of a project that has linerules installed, without a conftest.py:

``line_channel``
    The channel the tests talk as: ``access_token``, ``channel_secret``, ``channel_id``.
``line_emulator``
    A running LINE Messaging API emulator (:class:`engine.testing.line_emulator.Emulator`) on
    127.0.0.1, a free port, fresh for each test: ``base_url``, ``add_user``, what each friend
    received (``inbox(friend)``, ``inboxes[friend]``), every request (``requests``,
    ``requests_to``), faults (``inject``, ``inject_timeout``, ``inject_lost_response``,
    ``revoke_token``, ``set_rate_limit``), reply tokens (``issue_reply_token``).
``line_env``
    The environment that points a runner (``linerules run``) at that emulator.
``sign_webhook``
    ``sign_webhook(body) -> str``: the ``x-line-signature`` of a body, with the channel secret.
``line_webhook``
    ``line_webhook(*events) -> (body, headers)``: a signed webhook request, ready to POST.

Options of the emulator (``quota``, ``rate_scale``, ``reply_token_ttl``, ``access_token``,
``channel_secret`` ...) come from a marker: ``@pytest.mark.line_emulator(quota=200)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from engine.testing.line_emulator import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CHANNEL_ID,
    DEFAULT_CHANNEL_SECRET,
    Emulator,
    run_in_thread,
)
from engine.testing.webhooks import signature, signed_webhook

_CHANNEL_FIELDS = ("access_token", "channel_secret", "channel_id")


@dataclass(frozen=True)
class LineChannel:
    """The LINE channel of a test: what the runner is configured with and the emulator accepts."""

    access_token: str = DEFAULT_ACCESS_TOKEN
    channel_secret: str = DEFAULT_CHANNEL_SECRET
    channel_id: str = DEFAULT_CHANNEL_ID


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "line_emulator(**options): options of the test's LINE emulator "
        "(quota=, rate_scale=, rate_limits=, reply_token_ttl=, access_token=, "
        "channel_secret=, channel_id=, stateless_token_ttl=)",
    )


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("line_emulator"))):
        if marker.args:
            raise pytest.UsageError(
                "@pytest.mark.line_emulator takes keyword options only, e.g. @pytest.mark.line_emulator(quota=200)"
            )
        options.update(marker.kwargs)  # the closest marker (the test's own) wins
    return options


@pytest.fixture
def line_channel(request: pytest.FixtureRequest) -> LineChannel:
    """The test's channel: access token, channel secret and channel id (the marker's or
    the emulator's defaults)."""
    options = _options(request)
    return LineChannel(**{k: options[k] for k in _CHANNEL_FIELDS if k in options})


@pytest.fixture
def line_emulator(request: pytest.FixtureRequest, line_channel: LineChannel) -> Iterator[Emulator]:
    """A LINE emulator on 127.0.0.1 (a free port) for this test, on its own thread.

    Usable from synchronous and asynchronous tests alike; stopped when the test ends."""
    options = {k: v for k, v in _options(request).items() if k not in _CHANNEL_FIELDS}
    with run_in_thread(
        access_token=line_channel.access_token,
        channel_secret=line_channel.channel_secret,
        channel_id=line_channel.channel_id,
        **options,
    ) as emulator:
        yield emulator


@pytest.fixture
def line_env(line_emulator: Emulator, line_channel: LineChannel) -> dict[str, str]:
    """Environment variables for ``linerules run`` (or ``runner.py``) so that it sends
    through the emulator and accepts webhooks signed with the channel secret."""
    return {
        "LINE_API_ENDPOINT": line_emulator.base_url,
        "LINE_CHANNEL_ACCESS_TOKEN": line_channel.access_token,
        "LINE_CHANNEL_SECRET": line_channel.channel_secret,
    }


@pytest.fixture
def sign_webhook(line_channel: LineChannel) -> Callable[[bytes], str]:
    """``sign_webhook(body)``: the ``x-line-signature`` LINE would send with ``body``."""
    return lambda body: signature(body, line_channel.channel_secret)


@pytest.fixture
def line_webhook(line_channel: LineChannel) -> Callable[..., tuple[bytes, dict[str, str]]]:
    """``line_webhook(*events)``: (body, headers) of a webhook request signed as LINE does.

    Build the events with :func:`engine.testing.webhooks.line_event`."""
    return lambda *events: signed_webhook(*events, secret=line_channel.channel_secret)
