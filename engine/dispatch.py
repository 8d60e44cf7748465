"""Sending outbox items to LINE with line-bot-sdk (async), exactly once per retry key.

The runner records every send as an :class:`OutboxItem` (with its ``X-Line-Retry-Key``)
before the first attempt, then hands batches to a transport's ``send``:

* :class:`Dispatcher` talks to the Messaging API at ``LINE_API_ENDPOINT`` through
  ``AsyncApiClient``/``AsyncMessagingApi``. It paces itself with token buckets at LINE's
  per-endpoint limits, retries 5xx, timeouts, dropped connections and rate-limit 429s with
  backoff and jitter, always with the same retry key and the same bytes, and never retries a
  2xx, a 409 (already accepted) or another 4xx. A monthly-limit 429, or a push that the quota
  guard sees would not fit, is "held" for later. Replies use the reply token while it is
  fresh and fall back to a push with the item's retry key.
* :class:`DryRunTransport` logs what would be sent (no LINE token configured).

:func:`make_transport` picks one from the environment.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import inspect
import json
import logging
import os
import random
import re
import ssl
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import aiohttp
from linebot.v3.messaging import (
    ApiException,
    AsyncApiClient,
    AsyncMessagingApi,
    Configuration,
    MulticastRequest,
    PushMessageRequest,
    ReplyMessageRequest,
)

from .ratelimit import LINE_RATE_LIMITS, TokenBucket

logger = logging.getLogger("linerules.dispatch")

DEFAULT_ENDPOINT = "https://api.line.me"
MONTHLY_LIMIT_MESSAGE = "You have reached your monthly limit."
INVALID_REPLY_TOKEN_MESSAGE = "Invalid reply token"
#: LINE's monthly quota follows the calendar month in Japan.
QUOTA_ZONE = ZoneInfo("Asia/Tokyo")
MAX_MULTICAST = 500
MAX_MESSAGES = 5

#: Client-side buckets, one per endpoint the dispatcher calls (LINE's limits per second).
DISPATCH_ENDPOINTS = ("push", "multicast", "reply", "profile", "quota", "quota_consumption",
                      "richmenu_link", "richmenu_unlink", "link_token")

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")

Kind = Literal["push", "multicast", "reply", "menu_link"]
Outcome = Literal["sent", "duplicate", "rejected", "held", "retry", "dry_run"]


@dataclass
class OutboxItem:
    """One send, recorded before its first attempt.

    ``retry_key`` is a UUID created with the item and reused on every attempt (also by the push
    a stale reply falls back to). ``to`` holds one user for push, reply and menu_link and up to
    500 for multicast. ``messages`` are rendered LINE message objects (at most 5).
    ``reply_deadline`` (epoch seconds): after it the reply token is not tried.
    ``rich_menu_id`` is the menu a menu_link item links (None unlinks).
    ``reply_attempted``: an earlier process may already have sent this reply (it was in flight
    when that process stopped); replies carry no retry key, so such an item is never turned
    into a push: that could deliver it twice.
    """

    id: int
    kind: Kind
    to: list[str]
    messages: list[dict[str, Any]]
    retry_key: str
    reply_token: str | None = None
    reply_deadline: float | None = None
    rich_menu_id: str | None = None
    reply_attempted: bool = False


@dataclass
class DispatchResult:
    """What became of one item.

    ``outcome``: "sent"; "duplicate" (LINE had already accepted this retry key: done);
    "rejected" (a 4xx other than 409/429, or an invalid item: never retried; ``detail`` keeps
    the body); "held" (monthly quota reached: keep for later); "retry" (5xx, timeouts or
    connection errors outlasted this attempt's retry budget: keep pending); "dry_run".
    """

    item_id: int
    outcome: Outcome
    status: int | None
    request_id: str | None
    detail: str | None
    via: str
    recipients: int


ResultCallback = Callable[[DispatchResult], Awaitable[None] | None]


class Transport(Protocol):
    """What the runner needs from a sender (real or dry run)."""

    dry_run: bool

    @property
    def banner(self) -> str: ...

    @property
    def quota_exhausted(self) -> bool: ...

    @property
    def metrics(self) -> dict[str, Any]: ...

    async def send(self, items: Sequence[OutboxItem],
                   on_result: ResultCallback | None = None) -> list[DispatchResult]: ...

    async def refresh_quota(self) -> int | None: ...

    async def get_profile(self, user_id: str) -> dict[str, Any] | None: ...

    async def issue_link_token(self, user_id: str) -> str | None: ...

    async def close(self) -> None: ...


@dataclass
class _Answer:
    """The last answer of a request after retries; ``status`` None means no HTTP answer."""

    status: int | None
    headers: Mapping[str, str]
    body: str
    ambiguous: bool          # some failed attempt may have been processed by LINE
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def monthly_limit(self) -> bool:
        return self.status == 429 and MONTHLY_LIMIT_MESSAGE in self.body

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no answer"
        return f"{self.status} {self.body}".strip()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def _env_proxy(endpoint: str) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``NO_PROXY`` ...) names for ``endpoint``."""
    parts = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy
    return None


def _month(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, QUOTA_ZONE).strftime("%Y-%m")


async def _report(on_result: ResultCallback | None, result: DispatchResult) -> None:
    if on_result is not None:
        pending = on_result(result)
        if inspect.isawaitable(pending):
            await pending


class Dispatcher:
    """Sends outbox items to the LINE Messaging API with line-bot-sdk.

    ``rates`` overrides the client-side limits per endpoint (requests per second; defaults to
    LINE's); buckets hold ``burst_seconds`` worth of requests so a burst never outruns LINE's
    own bucket. ``max_attempts`` bounds the attempts of one item per ``send`` call;
    ``timeout`` is the per-request total timeout in seconds; ``backoff_base``/``backoff_cap``
    shape the exponential backoff (with jitter). ``quota_refresh_interval``: how old the quota
    reading may get before ``send`` reads it again. Use as ``async with Dispatcher(...)``
    or call :meth:`close`. One ``send`` at a time per dispatcher.
    """

    dry_run = False

    def __init__(self, access_token: str, endpoint: str = DEFAULT_ENDPOINT, *,
                 rates: Mapping[str, float] | None = None, burst_seconds: float = 0.05,
                 concurrency: int = 64, max_attempts: int = 5, timeout: float = 10.0,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 quota_refresh_interval: float = 60.0,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        self.endpoint = endpoint.rstrip("/")
        self._token = access_token
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.quota_refresh_interval = quota_refresh_interval
        self.clock = clock
        self._rng = rng or random.Random()
        chosen = {name: LINE_RATE_LIMITS[name].rate for name in DISPATCH_ENDPOINTS}
        for name, rate in (rates or {}).items():
            if name not in chosen:
                raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(chosen)}")
            chosen[name] = rate
        self._buckets = {name: TokenBucket(rate, max(1.0, rate * burst_seconds))
                         for name, rate in chosen.items()}
        self._client: AsyncApiClient | None = None
        self._api: AsyncMessagingApi | None = None
        self.remaining: int | None = None       # messages left this month; None: no limit known
        self._quota_read_at: float | None = None
        self._quota_month: str | None = None
        self._exhausted_month: str | None = None
        self._requests: dict[str, Counter[str]] = defaultdict(Counter)
        self._counters: Counter[str] = Counter()

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Dispatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _messaging(self) -> AsyncMessagingApi:
        """The SDK client, created on first use (its aiohttp session needs a running loop)."""
        if self._api is None:
            config = Configuration(access_token=self._token, host=self.endpoint)
            config.proxy = _env_proxy(self.endpoint)
            client = AsyncApiClient(config)
            # The SDK's session trusts the environment, which costs two thread hops per
            # request (netrc and proxy lookups) and caps sending near 1,100 requests/s; the
            # proxy is resolved once above instead, and the session replaced by a plain one.
            sdk_session = client.rest_client.pool_manager
            client.rest_client.pool_manager = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency,
                                               ssl=ssl.create_default_context()))
            self._client, self._api = client, AsyncMessagingApi(client)
            await sdk_session.close()       # after publishing: concurrent callers reuse ours
        return self._api

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._client is not None:
            await self._client.close()
            self._client = self._api = None

    @property
    def banner(self) -> str:
        """One line for the runner's start banner."""
        return f"sending to the LINE Messaging API at {self.endpoint}"

    # ----------------------------------------------------------------- state

    @property
    def quota_exhausted(self) -> bool:
        """True from a monthly-limit 429 until the month (in Japan) changes."""
        return self._exhausted_month == _month(self.clock())

    @property
    def metrics(self) -> dict[str, Any]:
        """Counters for export: requests by endpoint and status, retries, 429s, outcomes."""
        return {
            "requests": {ep: dict(c) for ep, c in self._requests.items()},
            "retries": self._counters["retries"],
            "rate_limited": self._counters["rate_limited"],
            "monthly_limited": self._counters["monthly_limited"],
            "outcomes": {k[len("outcome:"):]: n for k, n in self._counters.items()
                         if k.startswith("outcome:")},
        }

    # ----------------------------------------------------------------- HTTP with retries

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _request(self, endpoint: str,
                       call: Callable[[], Awaitable[Any]]) -> _Answer:
        """Call LINE until an answer that must not be retried, or the attempts run out.

        ``call`` must send the same bytes each time (one prepared request model)."""
        ambiguous = False
        answer = _Answer(None, {}, "", False, "not attempted")
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self._counters["retries"] += 1
            await self._buckets[endpoint].acquire()
            retry_after = None
            try:
                response = await call()
            except ApiException as exc:
                status = int(exc.status or 0)
                headers = exc.headers or {}
                answer = _Answer(status, headers, exc.body or "", ambiguous)
                self._requests[endpoint][str(status)] += 1
                if answer.monthly_limit:
                    self._counters["monthly_limited"] += 1
                    return answer
                if status == 429:
                    self._counters["rate_limited"] += 1
                    retry_after = _retry_after(headers.get("Retry-After"))
                elif status >= 500:
                    ambiguous = answer.ambiguous = True
                else:
                    return answer
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "error"
                self._requests[endpoint][kind] += 1
                # A refused connection never reached LINE; anything later might have.
                if not isinstance(exc, aiohttp.ClientConnectorError):
                    ambiguous = True
                answer = _Answer(None, {}, "", ambiguous,
                                 f"{kind}: {type(exc).__name__} {exc}".strip())
            else:
                self._requests[endpoint][str(response.status_code)] += 1
                return _Answer(response.status_code, response.headers,
                               response.raw_data or "", ambiguous)
            if attempt < self.max_attempts:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        return answer

    # ----------------------------------------------------------------- quota

    async def refresh_quota(self) -> int | None:
        """Read the monthly quota and its consumption; ``remaining`` = value - totalUsage
        (None when the plan has no limit). On failure the previous reading is kept."""
        api = await self._messaging()
        quota = await self._request("quota", lambda: api.get_message_quota_with_http_info(
            _request_timeout=self.timeout))
        used = await self._request("quota_consumption",
                                   lambda: api.get_message_quota_consumption_with_http_info(
                                       _request_timeout=self.timeout))
        if not (quota.ok and used.ok):
            logger.warning("could not read the LINE message quota: %s",
                           (used if quota.ok else quota).describe())
            return self.remaining
        q, u = json.loads(quota.body), json.loads(used.body)
        self.remaining = None if q.get("type") == "none" else max(
            0, int(q.get("value", 0)) - int(u.get("totalUsage", 0)))
        self._quota_read_at = time.monotonic()
        self._quota_month = _month(self.clock())
        if self.remaining is None or self.remaining > 0:
            self._exhausted_month = None     # more messages were bought, or the plan changed
        return self.remaining

    # ----------------------------------------------------------------- sending

    async def send(self, items: Sequence[OutboxItem],
                   on_result: ResultCallback | None = None) -> list[DispatchResult]:
        """Send ``items`` concurrently (at most ``concurrency`` in flight) and return one
        result per item, in order. ``on_result`` (sync or async) is called as each lands."""
        if any(item.kind != "menu_link" for item in items) and (
                self._quota_read_at is None or self._quota_month != _month(self.clock())
                or time.monotonic() - self._quota_read_at >= self.quota_refresh_interval):
            await self.refresh_quota()
        results: list[DispatchResult | None] = [None] * len(items)
        queue = iter(enumerate(items))

        async def worker() -> None:
            for index, item in queue:
                result = await self._send_item(item)
                self._counters[f"outcome:{result.outcome}"] += 1
                results[index] = result
                await _report(on_result, result)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(items)))))
        return [r for r in results if r is not None]

    async def _send_item(self, item: OutboxItem) -> DispatchResult:
        via = "push" if item.kind == "reply" else item.kind
        try:
            if len(item.messages) > MAX_MESSAGES and item.kind != "menu_link":
                raise ValueError(f"{len(item.messages)} message objects; LINE takes at most "
                                 f"{MAX_MESSAGES} per request")
            if item.kind == "push":
                return await self._push(item)
            if item.kind == "multicast":
                return await self._push(item, multicast=True)
            if item.kind == "reply":
                return await self._reply(item)
            if item.kind == "menu_link":
                return await self._menu_link(item)
            raise ValueError(f"unknown kind {item.kind!r}")
        except (ValueError, TypeError) as exc:   # includes the SDK's model validation errors
            return DispatchResult(item.id, "rejected", None, None, f"invalid item: {exc}",
                                  via, len(item.to))

    def _result(self, item: OutboxItem, answer: _Answer, via: str,
                recipients: int) -> DispatchResult:
        """Map a final answer to an outcome (the quota bookkeeping is the caller's)."""
        request_id = answer.headers.get("x-line-request-id")
        if answer.ok:
            return DispatchResult(item.id, "sent", answer.status, request_id, None, via, recipients)
        if answer.status == 409:
            return DispatchResult(item.id, "duplicate", 409,
                                  answer.headers.get("x-line-accepted-request-id", request_id),
                                  answer.body, via, recipients)
        if answer.monthly_limit:
            return DispatchResult(item.id, "held", 429, request_id, MONTHLY_LIMIT_MESSAGE, via,
                                  recipients)
        if answer.status is not None and 400 <= answer.status < 500 and answer.status != 429:
            return DispatchResult(item.id, "rejected", answer.status, request_id, answer.body,
                                  via, recipients)
        return DispatchResult(item.id, "retry", answer.status, request_id, answer.describe(),
                              via, recipients)

    def _held(self, item: OutboxItem, via: str, recipients: int, detail: str) -> DispatchResult:
        return DispatchResult(item.id, "held", None, None, detail, via, recipients)

    async def _push(self, item: OutboxItem, *, multicast: bool = False) -> DispatchResult:
        to = item.to
        via = "multicast" if multicast else "push"
        if not _UUID_RE.match(item.retry_key or ""):
            raise ValueError(f"retry key {item.retry_key!r} is not a UUID")
        if multicast and not 1 <= len(to) <= MAX_MULTICAST:
            raise ValueError(f"a multicast goes to 1 to {MAX_MULTICAST} users, not {len(to)}")
        if not multicast and len(to) != 1:
            raise ValueError(f"a push goes to exactly one user, not {len(to)}")
        # One request model for every attempt: each retry sends the same bytes.
        if multicast:
            mreq = MulticastRequest.from_dict({"to": to, "messages": item.messages})
        else:
            preq = PushMessageRequest.from_dict({"to": to[0], "messages": item.messages})
        recipients = len(to)
        if self.quota_exhausted:
            return self._held(item, via, recipients, MONTHLY_LIMIT_MESSAGE)
        if self.remaining is not None:
            if recipients > self.remaining:
                return self._held(item, via, recipients,
                                  f"would exceed the monthly quota: {recipients} recipient(s), "
                                  f"{self.remaining} message(s) left")
            self.remaining -= recipients
        api = await self._messaging()
        if multicast:
            answer = await self._request("multicast", lambda: api.multicast_with_http_info(
                mreq, x_line_retry_key=item.retry_key, _request_timeout=self.timeout))
        else:
            answer = await self._request("push", lambda: api.push_message_with_http_info(
                preq, x_line_retry_key=item.retry_key, _request_timeout=self.timeout))
        result = self._result(item, answer, via, recipients)
        if result.outcome == "held":
            self._exhausted_month = _month(self.clock())
            self.remaining = 0
        elif result.outcome not in ("sent", "duplicate") and self.remaining is not None:
            self.remaining += recipients
        return result

    async def _reply(self, item: OutboxItem) -> DispatchResult:
        """Reply while the token is fresh; otherwise (or when LINE calls it invalid) push.

        After an attempt whose answer was lost, "Invalid reply token" most likely means our
        own attempt used it, so the item counts as a duplicate rather than being pushed again.
        """
        if len(item.to) != 1:
            raise ValueError(f"a reply goes to exactly one user, not {len(item.to)}")
        fresh = item.reply_token and (item.reply_deadline is None
                                      or self.clock() < item.reply_deadline)
        if fresh:
            api = await self._messaging()
            req = ReplyMessageRequest.from_dict({"replyToken": item.reply_token,
                                                 "messages": item.messages})
            answer = await self._request("reply", lambda: api.reply_message_with_http_info(
                req, _request_timeout=self.timeout))
            invalid_token = answer.status == 400 and INVALID_REPLY_TOKEN_MESSAGE in answer.body
            if not invalid_token:
                return self._result(item, answer, "reply", 1)
            if answer.ambiguous or item.reply_attempted:
                return DispatchResult(item.id, "duplicate", 400,
                                      answer.headers.get("x-line-request-id"),
                                      "reply token used up after an attempt whose answer was "
                                      "lost; treated as delivered", "reply", 1)
        elif item.reply_attempted:
            return DispatchResult(item.id, "duplicate", None, None,
                                  "reply was in flight when the runner stopped and its token has "
                                  "expired; not pushed again, so it is never sent twice",
                                  "reply", 1)
        return await self._push(item)

    async def _menu_link(self, item: OutboxItem) -> DispatchResult:
        if len(item.to) != 1:
            raise ValueError(f"a menu link is for exactly one user, not {len(item.to)}")
        api = await self._messaging()
        user = item.to[0]
        if item.rich_menu_id is None:
            answer = await self._request("richmenu_unlink",
                                         lambda: api.unlink_rich_menu_id_from_user_with_http_info(
                                             user, _request_timeout=self.timeout))
        else:
            menu = item.rich_menu_id
            answer = await self._request("richmenu_link",
                                         lambda: api.link_rich_menu_id_to_user_with_http_info(
                                             user, menu, _request_timeout=self.timeout))
        return self._result(item, answer, "menu_link", 1)

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """The user's ``display_name`` and ``language`` (None when LINE has no profile for
        them: unknown, blocked, or LINE unreachable)."""
        api = await self._messaging()
        answer = await self._request("profile", lambda: api.get_profile_with_http_info(
            user_id, _request_timeout=self.timeout))
        if not answer.ok:
            if answer.status != 404:
                logger.warning("could not read the LINE profile of %s: %s", user_id,
                               answer.describe())
            return None
        data = json.loads(answer.body)
        return {"display_name": data.get("displayName"), "language": data.get("language")}

    async def issue_link_token(self, user_id: str) -> str | None:
        """A new account-link token for the user (``POST /v2/bot/user/{userId}/linkToken``;
        valid 10 minutes, single use), or None when LINE did not give one."""
        api = await self._messaging()
        answer = await self._request("link_token", lambda: api.issue_link_token_with_http_info(
            user_id, _request_timeout=self.timeout))
        if not answer.ok:
            logger.warning("no account-link token for %s: %s", user_id, answer.describe())
            return None
        return json.loads(answer.body).get("linkToken")


def _snippet(messages: Sequence[Mapping[str, Any]], width: int = 40) -> str:
    for msg in messages:
        text = msg.get("text") or msg.get("altText")
        if isinstance(text, str) and text:
            text = " ".join(text.split())
            return text if len(text) <= width else text[: width - 1] + "…"
    return ""


class DryRunTransport:
    """Sends nothing: logs one line per item it would send and reports outcome "dry_run"."""

    dry_run = True
    quota_exhausted = False
    remaining: int | None = None

    def __init__(self, log: logging.Logger | None = None):
        self._log = log or logger
        self._counts: Counter[str] = Counter()

    @property
    def banner(self) -> str:
        """One line for the runner's start banner."""
        return ("dry run: LINE_CHANNEL_ACCESS_TOKEN is not set, so nothing is sent to LINE; "
                "each push is logged instead")

    @property
    def metrics(self) -> dict[str, Any]:
        """Items logged, by kind."""
        return {"requests": {}, "dry_run": dict(self._counts)}

    async def send(self, items: Sequence[OutboxItem],
                   on_result: ResultCallback | None = None) -> list[DispatchResult]:
        """Log each item (kind, recipients, message types, first text) and return "dry_run"."""
        results = []
        for item in items:
            types = ", ".join(str(m.get("type", "?")) for m in item.messages) or "-"
            if item.kind == "menu_link":
                self._log.info("dry-run menu_link %s -> %s", item.to[0] if item.to else "?",
                               item.rich_menu_id or "(unlink)")
            else:
                self._log.info("dry-run %s to %d recipient(s) [%s]: %s", item.kind, len(item.to),
                               types, _snippet(item.messages))
            self._counts[item.kind] += 1
            result = DispatchResult(item.id, "dry_run", None, None, None, "dry-run", len(item.to))
            results.append(result)
            await _report(on_result, result)
        return results

    async def refresh_quota(self) -> int | None:
        """No quota without LINE."""
        return None

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """No profiles without LINE."""
        return None

    async def issue_link_token(self, user_id: str) -> str | None:
        """No account-link tokens without LINE."""
        return None

    async def close(self) -> None:
        """Nothing to close."""


def make_transport(env: Mapping[str, str] = os.environ, **options: Any) -> Transport:
    """A :class:`Dispatcher` when ``LINE_CHANNEL_ACCESS_TOKEN`` is set (to
    ``LINE_API_ENDPOINT``, default https://api.line.me), else a :class:`DryRunTransport`.
    The transport's ``dry_run`` flag and ``banner`` say which, for the start banner."""
    token = env.get("LINE_CHANNEL_ACCESS_TOKEN", "").strip()
    if not token:
        return DryRunTransport()
    endpoint = env.get("LINE_API_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    return Dispatcher(token, endpoint, **options)
