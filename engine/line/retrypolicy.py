"""What to do with each answer LINE gives: the one retry policy of the dispatcher and runner.

Two places act on LINE's answers: the dispatcher retries a failed request a few times inside
one call (short waits, the same retry key and bytes), and the runner holds a row between
batches when those attempts are spent. Both ask this module, so the rules stay in one table
(docs/decisions.md, "One retry policy"):

========================================  =================  ==========  ===============
LINE's answer                             action             ambiguous   then
========================================  =================  ==========  ===============
2xx                                       ``sent``           no          done
409 (retry key already accepted)          ``duplicate``      no          done
429 "You have reached your monthly limit" ``held``           no          next day's window
429, ``Retry-After`` <= max inline wait   ``retry``          no          same key, at once
429, longer ``Retry-After``               ``later``          no          hold the row for it
5xx                                       ``retry``          yes         same key
timeout, dropped connection               ``retry``          yes         same key
connection refused (never reached LINE)   ``retry``          no          same key
401 with a stateless token, first time    ``renew``          no          new token, again
401/403, or no token could be issued      ``auth``           no          keep, hold all
other 4xx (400, 404, 413 ...)             ``rejected``       no          never retried
========================================  =================  ==========  ===============

A ``retry`` whose attempts are spent, whose wait would pass the reply token's deadline, or
that a stopping dispatcher may not wait for, becomes ``later``: the runner holds that row
alone until :meth:`RetryPolicy.hold_until` (backoff by the row's attempts, or LINE's
``Retry-After``). The policy is pure: answers, attempt numbers and times in, verdicts out.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .limits import MONTHLY_LIMIT_MESSAGE

Action = Literal["sent", "duplicate", "held", "retry", "later", "renew", "auth", "rejected"]

#: Actions after which the row is finished (nothing is sent for it again).
FINISHED = frozenset({"sent", "duplicate", "rejected", "unconfirmed", "dry_run"})


@dataclass(frozen=True)
class Answer:
    """LINE's answer to one attempt: ``status`` None when no HTTP answer came (``error``
    then says why: ``timeout: ...``, ``error: ...`` (a connection refused or dropped) or
    ``token: ...`` (no access token could be issued); ``reached`` False when the request
    certainly never reached LINE, e.g. a refused connection)."""

    status: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""
    error: str | None = None
    reached: bool = True

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def monthly_limit(self) -> bool:
        return self.status == 429 and MONTHLY_LIMIT_MESSAGE in self.body

    def header(self, name: str) -> str | None:
        """A header, whatever the case of its name."""
        value = self.headers.get(name)
        if value is None:
            lower = name.lower()
            value = next((v for k, v in self.headers.items() if k.lower() == lower), None)
        return value

    @property
    def reason(self) -> str:
        """A short label for metrics and logs: the status, or the kind of failure."""
        if self.status is not None:
            return str(self.status)
        return (self.error or "error").split(":")[0]


@dataclass(frozen=True)
class Verdict:
    """What to do after an answer. ``delay``: seconds to wait before the next attempt
    (``retry``) or to hold the row for (``later``, LINE's ``Retry-After`` when it gave one).
    ``ambiguous``: LINE may have processed the request that got this answer."""

    action: Action
    delay: float = 0.0
    ambiguous: bool = False
    retry_after: float | None = None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date; ``now`` is the
    epoch time the date is measured from); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - now)


@dataclass
class RetryPolicy:
    """LINE's retry rules with this deployment's budget.

    Inside one call: at most ``max_attempts`` attempts, exponential backoff from
    ``backoff_base`` up to ``backoff_cap`` seconds with jitter (half fixed, half random), and
    no inline wait longer than ``max_inline_wait`` (a longer ``Retry-After`` is handed back at
    once). A stopping dispatcher waits at most ``closing_wait`` seconds per retry. Between
    batches: 2, 4, 8 ... seconds by the row's attempts, at most ``max_hold`` seconds.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_inline_wait: float = 5.0
    closing_wait: float = 1.0
    max_hold: int = 300
    rng: random.Random = field(default_factory=random.Random)

    def classify(self, answer: Answer, *, renewable: bool = False, now: float = 0.0) -> Verdict:
        """The action an answer calls for, before the attempt budget is looked at."""
        status = answer.status
        if status is None:
            error = answer.error or ""
            if error.startswith("token:"):
                return Verdict("auth")
            return Verdict("retry", ambiguous=answer.reached)
        if 200 <= status < 300:
            return Verdict("sent")
        if status == 409:
            return Verdict("duplicate")
        if status == 429:
            if answer.monthly_limit:
                return Verdict("held")
            after = retry_after_seconds(answer.header("Retry-After"), now)
            if after is not None and after > self.max_inline_wait:
                return Verdict("later", after, retry_after=after)
            return Verdict("retry", retry_after=after)
        if status == 401 and renewable:
            return Verdict("renew")
        if status in (401, 403):
            return Verdict("auth")
        if status >= 500:
            return Verdict("retry", ambiguous=True)
        return Verdict("rejected")

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return delay / 2 + self.rng.uniform(0, delay / 2)

    def decide(
        self,
        answer: Answer,
        attempt: int,
        now: float,
        *,
        attempts: int | None = None,
        renewable: bool = False,
        deadline: float | None = None,
        closing_left: float | None = None,
    ) -> Verdict:
        """The verdict on attempt ``attempt`` (from 1) of at most ``attempts`` (default
        ``max_attempts``): a ``retry`` comes with the wait before the next attempt, or turns
        into ``later`` when the attempts are spent, when waiting would pass ``deadline``
        (epoch seconds, a reply token's) or when the dispatcher is stopping (``closing_left``:
        seconds it may still spend; it waits at most ``closing_wait`` per retry)."""
        verdict = self.classify(answer, renewable=renewable, now=now)
        if verdict.action != "retry":
            return verdict
        later = Verdict("later", 0.0, verdict.ambiguous, verdict.retry_after)
        if attempt >= (attempts or self.max_attempts):
            return later
        delay = verdict.retry_after if verdict.retry_after is not None else self.backoff(attempt)
        if deadline is not None and now + delay >= deadline:
            return later
        if closing_left is not None and (delay > self.closing_wait or delay >= closing_left):
            return later
        return Verdict("retry", delay, verdict.ambiguous, verdict.retry_after)

    def hold_for(self, attempts: int, retry_after: float | None = None) -> int:
        """Seconds to hold a row between batches after its ``attempts``-th failed call:
        2, 4, 8 ... at most ``max_hold``; LINE's ``Retry-After`` (rounded up, at most
        ``max_hold``) when it gave one."""
        if retry_after is not None:
            return min(self.max_hold, max(1, int(retry_after + 0.999)))
        return min(2 ** max(1, attempts), self.max_hold)

    def hold_until(
        self,
        attempts: int,
        now: int,
        *,
        retry_after: float | None = None,
        reply_deadline: int | None = None,
        reply_margin: int = 3,
    ) -> int:
        """Epoch second a row waits for: ``now + hold_for(...)``; a reply whose token is still
        fresh is tried again ``reply_margin`` seconds before its deadline at the latest (so a
        request whose outcome is unknown can still be told by its token)."""
        at = now + self.hold_for(attempts, retry_after)
        if reply_deadline and now < reply_deadline:
            at = max(now + 1, min(at, int(reply_deadline) - reply_margin))
        return at


#: The policy the runner uses between batches (the dispatcher builds its own from its options).
DEFAULT_POLICY = RetryPolicy()
