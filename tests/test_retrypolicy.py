"""The retry policy as a table: LINE's answers -> what the dispatcher and runner do."""

from __future__ import annotations

import email.utils
import random

import pytest

from engine.line.limits import MONTHLY_LIMIT_MESSAGE
from engine.line.retrypolicy import Answer, RetryPolicy, retry_after_seconds

NOW = 1_800_000_000.0
MONTHLY = '{"message": "%s"}' % MONTHLY_LIMIT_MESSAGE
RATE = '{"message": "The API rate limit has been exceeded. Try again later."}'


def policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=5, backoff_base=0.5, backoff_cap=30.0, max_inline_wait=5.0, rng=random.Random(7))


# (LINE's answer, attempt, options) -> (action, ambiguous, delay or None = any backoff)
TABLE = [
    ("200", Answer(200, {}, "{}"), 1, {}, ("sent", False, 0.0)),
    ("202 counts as sent", Answer(202), 1, {}, ("sent", False, 0.0)),
    ("409 retry key accepted", Answer(409, {"x-line-accepted-request-id": "r1"}), 2, {}, ("duplicate", False, 0.0)),
    ("429 monthly limit: hold, never retry", Answer(429, {}, MONTHLY), 1, {}, ("held", False, 0.0)),
    ("429 rate limit: retry with backoff", Answer(429, {}, RATE), 1, {}, ("retry", False, None)),
    ("429 short Retry-After: wait it inline", Answer(429, {"Retry-After": "2"}, RATE), 1, {}, ("retry", False, 2.0)),
    ("429 Retry-After, lower-case header", Answer(429, {"retry-after": "3"}, RATE), 1, {}, ("retry", False, 3.0)),
    ("429 long Retry-After: hold the row", Answer(429, {"Retry-After": "120"}, RATE), 1, {}, ("later", False, 120.0)),
    ("429 on the last attempt", Answer(429, {}, RATE), 5, {}, ("later", False, 0.0)),
    ("500 may have been processed", Answer(500, {}, "{}"), 1, {}, ("retry", True, None)),
    ("503 on the last attempt", Answer(503), 5, {}, ("later", True, 0.0)),
    ("timeout", Answer(None, error="timeout: TimeoutError"), 1, {}, ("retry", True, None)),
    ("dropped connection", Answer(None, error="error: ServerDisconnectedError"), 1, {}, ("retry", True, None)),
    (
        "connection refused never reached LINE",
        Answer(None, error="error: ClientConnectorError", reached=False),
        1,
        {},
        ("retry", False, None),
    ),
    ("401 with a stateless token: renew once", Answer(401), 1, {"renewable": True}, ("renew", False, 0.0)),
    ("401 long-lived token: keep, hold all", Answer(401), 1, {}, ("auth", False, 0.0)),
    ("403: keep, hold all", Answer(403), 1, {"renewable": True}, ("auth", False, 0.0)),
    ("no token could be issued", Answer(None, error="token: refused"), 1, {}, ("auth", False, 0.0)),
    (
        "400 invalid: dead letter",
        Answer(400, {}, '{"message": "The request body has 1 error(s)"}'),
        1,
        {},
        ("rejected", False, 0.0),
    ),
    ("404", Answer(404), 1, {}, ("rejected", False, 0.0)),
    ("413 too large", Answer(413), 1, {}, ("rejected", False, 0.0)),
    ("a retry past the reply token's deadline", Answer(500), 1, {"deadline": NOW + 0.1}, ("later", True, 0.0)),
    (
        "closing: a short wait is still taken",
        Answer(429, {"Retry-After": "1"}),
        1,
        {"closing_left": 5.0},
        ("retry", False, 1.0),
    ),
    (
        "closing: no wait longer than a second",
        Answer(429, {"Retry-After": "3"}),
        1,
        {"closing_left": 5.0},
        ("later", False, 0.0),
    ),
    (
        "closing: no wait past the stop",
        Answer(429, {"Retry-After": "1"}),
        1,
        {"closing_left": 0.5},
        ("later", False, 0.0),
    ),
    ("attempts given per call", Answer(500), 2, {"attempts": 2}, ("later", True, 0.0)),
]


@pytest.mark.parametrize("answer,attempt,options,expected", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_each_answer_gets_its_action(answer, attempt, options, expected):
    action, ambiguous, delay = expected
    verdict = policy().decide(answer, attempt, NOW, **options)
    assert (verdict.action, verdict.ambiguous) == (action, ambiguous)
    if delay is None:  # exponential backoff with jitter
        full = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert full / 2 <= verdict.delay <= full
    else:
        assert verdict.delay == delay


def test_backoff_doubles_with_jitter_up_to_the_cap():
    p = policy()
    for attempt, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 30.0), (20, 30.0)]:
        delays = [p.backoff(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1


def test_an_http_date_retry_after_counts_from_now():
    when = email.utils.formatdate(NOW + 30, usegmt=True)
    assert retry_after_seconds(when, NOW) == 30.0
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None
    verdict = policy().decide(Answer(429, {"Retry-After": when}), 1, NOW)
    assert (verdict.action, verdict.delay) == ("later", 30.0)


@pytest.mark.parametrize(
    "attempts,retry_after,held",
    [
        (1, None, 2),
        (2, None, 4),
        (3, None, 8),
        (8, None, 256),
        (9, None, 300),
        (40, None, 300),
        (1, 0.2, 1),
        (1, 41.5, 42),
        (3, 1000.0, 300),
    ],
)
def test_between_batches_a_row_waits_by_its_attempts_or_retry_after(attempts, retry_after, held):
    assert policy().hold_for(attempts, retry_after) == held
    assert policy().hold_until(attempts, 1000, retry_after=retry_after) == 1000 + held


def test_a_reply_is_tried_again_before_its_token_expires():
    p = policy()
    assert p.hold_until(5, 1000, reply_deadline=1030, reply_margin=3) == 1027
    assert p.hold_until(1, 1000, reply_deadline=1030) == 1002  # backoff comes first
    assert p.hold_until(5, 1000, reply_deadline=1002, reply_margin=3) == 1001  # never now
    assert p.hold_until(5, 1000, reply_deadline=990) == 1032  # token gone: backoff
