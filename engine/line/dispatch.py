"""Sending outbox items to LINE with line-bot-sdk (async), exactly once per retry key.

The runner records every send as an :class:`OutboxItem` (with its ``X-Line-Retry-Key``)
before the first attempt, then hands batches to a transport's ``send``:

* :class:`Dispatcher` talks to the Messaging API at ``LINE_API_ENDPOINT`` through
  ``AsyncApiClient``/``AsyncMessagingApi``. It paces itself with token buckets at LINE's
  per-endpoint limits, retries 5xx, timeouts, dropped connections and rate-limit 429s a few
  times with backoff and jitter (each retry logged), always with the same retry key and the
  same bytes, and never retries a 2xx, a 409 (already accepted) or another 4xx. What outlasts
  those few attempts (or asks for a longer ``Retry-After``) goes back to the caller as "retry",
  to be held per row. Every item is sent on its own (at most ``concurrency`` at a time), so
  one slow or failing request never holds the others. A monthly-limit 429, or a push that the
  quota guard sees would not fit, is "held" for later; a 401/403 is "auth" (the token, not the
  message, is wrong). Replies use the reply token while it is fresh and fall back to a push
  with the item's retry key, unless an earlier attempt may have been delivered.
* :class:`StatelessToken` issues LINE's stateless channel access tokens (15 minutes) from the
  channel id and secret and renews them before they expire or when LINE refuses one.
* :class:`DryRunTransport` logs what would be sent (no LINE token configured).

:func:`make_transport` picks one from the environment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
import json
import logging
import os
import random
import ssl
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiohttp

if TYPE_CHECKING:
    from linebot.v3.messaging import AsyncApiClient, AsyncMessagingApi, Configuration

from .limits import (
    INVALID_REPLY_TOKEN_MESSAGE,
    MAX_MULTICAST,
    MAX_OBJECTS,
    MESSAGE_TYPES,
    MONTHLY_LIMIT_MESSAGE,
    QUOTA_ZONE,
    RATE_LIMITS,
    ROUTES,
    UUID_RE,
)
from .ratelimit import client_bucket
from .retrypolicy import Answer, RetryPolicy, Verdict

logger = logging.getLogger("linerules.dispatch")

DEFAULT_ENDPOINT = "https://api.line.me"

#: Client-side buckets, one per endpoint the dispatcher calls (LINE's limits per second).
DISPATCH_ENDPOINTS = (
    "push",
    "multicast",
    "reply",
    "profile",
    "quota",
    "quota_consumption",
    "richmenu_link",
    "richmenu_unlink",
    "link_token",
)

#: The longest wait inside one attempt's retries (a longer ``Retry-After`` is handed back to the
#: caller, which holds that row alone for it).
MAX_INLINE_WAIT = 5.0
#: Renew a stateless token this long before it expires (at most a third of its life).
TOKEN_RENEW_MARGIN = 60.0

Kind = Literal["push", "multicast", "reply", "menu_link"]
Outcome = Literal["sent", "duplicate", "rejected", "held", "retry", "auth", "unconfirmed", "dry_run"]
#: Seconds one request to LINE may take before it counts as timed out (the answer may still
#: have arrived: the retry goes with the same key); ``LINERULES_LINE_TIMEOUT`` sets it.
LINE_TIMEOUT = 10.0


@dataclass
class OutboxItem:
    """One send, recorded before its first attempt.

    ``retry_key`` is a UUID created with the item and reused on every attempt (also by the push
    a stale reply falls back to). ``to`` holds one user for push, reply and menu_link and up to
    500 for multicast. ``messages`` are rendered LINE message objects (at most 5).
    ``reply_deadline`` (epoch seconds): after it the reply token is not tried.
    ``rich_menu_id`` is the menu a menu_link item links (None unlinks).
    ``ambiguous``: an earlier request for this item was sent and its outcome is unknown (a
    timeout, a lost answer, a 5xx, or a process that stopped mid-request). A push or multicast
    simply goes again with its retry key; a reply carries no key, so such an item is never
    turned into a push (that could deliver it twice): its token tells whether it arrived.
    ``encoded``: ``to`` and ``messages`` as the JSON text the outbox stores them in (they must
    say the same); the request body is then made from that text, without encoding again.
    """

    id: int
    kind: Kind
    to: list[str]
    messages: list[dict[str, Any]]
    retry_key: str
    reply_token: str | None = None
    reply_deadline: float | None = None
    rich_menu_id: str | None = None
    ambiguous: bool = False
    encoded: tuple[str, str] | None = None

    def body(self, head: Mapping[str, Any]) -> bytes:
        """The request body: ``head`` (``to`` or ``replyToken``) and the messages, as compact
        UTF-8 JSON. With ``encoded`` (the recipients and the messages as the outbox stores
        them, JSON text) the messages are not encoded again, and a multicast's ``to`` is the
        stored list as it is."""
        if self.encoded is None:
            return _encode({**head, "messages": self.messages})
        recipients, messages = self.encoded
        if head.get("to") is self.to:
            first = f'{{"to":{recipients}'
        else:
            first = _encode(head).decode()[:-1]
        return f'{first},"messages":{messages}}}'.encode()


@dataclass
class DispatchResult:
    """What became of one item.

    ``outcome``: "sent"; "duplicate" (LINE had already accepted this retry key: done);
    "rejected" (a 4xx other than 409/429, or an invalid item: never retried; ``detail`` keeps
    the body); "held" (monthly quota reached: keep for later); "retry" (5xx, timeouts or
    connection errors outlasted this attempt's retry budget: keep pending; ``retry_after``
    is LINE's ``Retry-After`` when it asked for one); "auth" (401/403: the channel access
    token is wrong or expired; the item is untouched and must be kept); "unconfirmed" (a reply
    that may have arrived, whose token expired before that could be told: never pushed, so it
    is never sent twice); "dry_run". ``ambiguous``: some request for the item was sent and its
    outcome is unknown (the caller keeps that with the item).
    """

    item_id: int
    outcome: Outcome
    status: int | None
    request_id: str | None
    detail: str | None
    via: str
    recipients: int
    ambiguous: bool = False
    retry_after: float | None = None


class Limiter(Protocol):
    """What paces one endpoint's requests: a client bucket, or a limit shared with other runners."""

    async def acquire(self, n: float = 1.0) -> None: ...


ResultCallback = Callable[[DispatchResult], Awaitable[None] | None]
#: Called just before the first request of a reply goes out; False: do not send it.
BeforeSend = Callable[[OutboxItem], Awaitable[bool] | bool]


class TokenError(Exception):
    """No channel access token could be issued (wrong channel id/secret, LINE unreachable)."""


class StatelessToken:
    """LINE's stateless channel access tokens, issued from the channel id and secret
    (``POST /oauth2/v3/token``, ``grant_type=client_credentials``; valid 15 minutes, cannot be
    revoked). :meth:`get` returns the current token and issues a new one when none is held,
    when it expires within :data:`TOKEN_RENEW_MARGIN`, or when ``force`` is set (LINE refused
    it)."""

    def __init__(
        self,
        channel_id: str,
        channel_secret: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = LINE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.channel_id = channel_id
        self._secret = channel_secret
        self.url = endpoint.rstrip("/") + "/oauth2/v3/token"
        self.timeout = timeout
        self.clock = clock
        self.token: str | None = None
        self.expires_at = 0.0
        self.issued = 0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self.token is not None and self.clock() < self.expires_at

    async def get(self, session: aiohttp.ClientSession, *, force: bool = False, stale: str | None = None) -> str:
        """The token to use. ``force``: issue a new one unless another caller already replaced
        ``stale`` (the one LINE refused) meanwhile."""
        if not force and self._fresh():
            return self.token  # type: ignore[return-value]
        async with self._lock:
            if self._fresh() and not (force and self.token == stale):
                return self.token  # type: ignore[return-value]
            form = {"grant_type": "client_credentials", "client_id": self.channel_id, "client_secret": self._secret}
            try:
                async with session.post(self.url, data=form, timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise TokenError(
                            f"LINE refused to issue a channel access token for "
                            f"channel {self.channel_id}: {resp.status} {text}".strip()
                        )
                    data = json.loads(text)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise TokenError(
                    f"could not issue a channel access token at {self.url}: {type(exc).__name__} {exc}".strip()
                ) from exc
            lifetime = float(data.get("expires_in") or 900)
            self.token = str(data["access_token"])
            self.expires_at = self.clock() + lifetime - min(TOKEN_RENEW_MARGIN, lifetime / 3)
            self.issued += 1
            logger.info(
                "issued a stateless channel access token for channel %s (valid %d s)", self.channel_id, lifetime
            )
            return self.token


class Transport(Protocol):
    """What the runner needs from a sender (real or dry run)."""

    dry_run: bool

    @property
    def banner(self) -> str: ...

    @property
    def quota_exhausted(self) -> bool: ...

    @property
    def metrics(self) -> dict[str, Any]: ...

    closing: bool

    async def send(
        self, items: Sequence[OutboxItem], on_result: ResultCallback | None = None
    ) -> list[DispatchResult]: ...

    async def send_item(self, item: OutboxItem, before_send: BeforeSend | None = None) -> DispatchResult: ...

    async def check_auth(self) -> str | None: ...

    async def refresh_quota(self) -> int | None: ...

    async def get_profile(self, user_id: str) -> dict[str, Any] | None: ...

    async def issue_link_token(self, user_id: str) -> str | None: ...

    async def close(self) -> None: ...


@dataclass
class _Answer:
    """The last answer of a request after retries, with the retry policy's verdict on it;
    ``status`` None means no HTTP answer."""

    status: int | None
    headers: Mapping[str, str]
    body: str
    ambiguous: bool  # some failed attempt may have been processed by LINE
    error: str | None = None
    retry_after: float | None = None
    verdict: Verdict | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        return _describe(self)


def _describe(answer: Answer | _Answer) -> str:
    if answer.status is None:
        return answer.error or "no answer"
    return f"{answer.status} {answer.body}".strip()


#: What the SDK's send methods deserialise their answers as.
_SEND_RESPONSE_TYPES = {"200": "object"}
_MESSAGE_TYPE_SET = frozenset(MESSAGE_TYPES)


def _check_messages(messages: Sequence[Any]) -> None:
    """The shape the request needs (ValueError otherwise): 1 to 5 message objects, each a
    mapping with a known ``type``. Their content was checked against LINE's limits when the
    rules were loaded and when they were rendered."""
    if not 1 <= len(messages) <= MAX_OBJECTS:
        raise ValueError(f"{len(messages)} message objects; LINE takes 1 to {MAX_OBJECTS} per request")
    for message in messages:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind not in _MESSAGE_TYPE_SET:
            raise ValueError(f"not a LINE message object of a known type: {message!r:.80}")


def _encode(body: Mapping[str, Any]) -> bytes:
    """A request body as LINE reads it: compact UTF-8 JSON."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@functools.cache
def _sdk() -> SimpleNamespace:
    """The parts of line-bot-sdk the dispatcher uses, imported when the first
    :class:`Dispatcher` is made: importing its messaging package builds some 850 pydantic models
    (about 1.3 s of CPU), which a dry run, ``validate``, ``simulate`` and the rule tests never
    need."""
    from linebot.v3.messaging import ApiException, AsyncApiClient, AsyncMessagingApi, Configuration
    from linebot.v3.messaging.async_rest import RESTClientObject, RESTResponse

    class _RESTClient(RESTClientObject):
        """The SDK's aiohttp transport with two changes: a session of the dispatcher's own (see
        :meth:`Dispatcher._messaging`), and a body that is already JSON bytes is sent as it is
        (the SDK's own client would ``json.dumps`` it again). Everything else, the SDK's."""

        def __init__(self, configuration: Configuration, session: aiohttp.ClientSession):
            # not the SDK's __init__: it would open a session only to be replaced
            self.proxy = configuration.proxy
            self.proxy_headers = configuration.proxy_headers
            self.pool_manager = session

        async def request(
            self,
            method: str,
            url: str,
            query_params: Any = None,
            headers: dict[str, str] | None = None,
            body: Any = None,
            post_params: Any = None,
            _preload_content: bool = True,
            _request_timeout: Any = None,
        ) -> Any:
            if not isinstance(body, bytes):
                return await super().request(
                    method, url, query_params, headers, body, post_params, _preload_content, _request_timeout
                )
            args: dict[str, Any] = {
                "method": method.upper(),
                "url": url,
                "data": body,
                "headers": headers or {},
                "timeout": _request_timeout or 300,
            }
            if self.proxy:
                args["proxy"] = self.proxy
            if self.proxy_headers:
                args["proxy_headers"] = self.proxy_headers
            response = await self.pool_manager.request(**args)
            answer = RESTResponse(response, await response.read())
            if not 200 <= answer.status <= 299:
                raise ApiException(http_resp=answer)
            return answer

    return SimpleNamespace(
        ApiException=ApiException,
        AsyncApiClient=AsyncApiClient,
        AsyncMessagingApi=AsyncMessagingApi,
        Configuration=Configuration,
        RESTClient=_RESTClient,
    )


def _env_proxy(endpoint: str) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``NO_PROXY`` ...) names for ``endpoint``."""
    parts = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy
    return None


def _month(epoch: float) -> str:
    """The quota's month of ``epoch`` (``2026-12``), asked on every send: the last month's
    bounds are kept, so that a send inside it costs two comparisons."""
    start, end, label = _last_month
    if start <= epoch < end:
        return label
    first = dt.datetime.fromtimestamp(epoch, QUOTA_ZONE).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    label = first.strftime("%Y-%m")
    _last_month[:] = [first.timestamp(), following.timestamp(), label]
    return label


_last_month: list = [0.0, 0.0, ""]


async def _report(on_result: ResultCallback | None, result: DispatchResult) -> None:
    if on_result is not None:
        pending = on_result(result)
        if inspect.isawaitable(pending):
            await pending


class Dispatcher:
    """Sends outbox items to the LINE Messaging API with line-bot-sdk.

    ``access_token`` is a long-lived channel access token; or give ``stateless`` (a
    :class:`StatelessToken`) and the dispatcher issues and renews short-lived tokens itself.
    ``rates`` overrides the client-side limits per endpoint (requests per second; defaults to
    LINE's); buckets hold ``burst_seconds`` worth of requests so a burst never outruns LINE's
    own bucket, and every attempt (retries too) takes a token. ``max_attempts`` bounds the
    attempts of one item per call; ``timeout`` is the per-request total timeout in seconds;
    ``backoff_base``/``backoff_cap`` shape the exponential backoff (with jitter) between them;
    a ``Retry-After`` longer than ``max_inline_wait`` ends the attempts at once (the caller
    holds the row). ``quota_refresh_interval``: how old the quota reading may get before it is
    read again (in the background). Use as ``async with Dispatcher(...)`` or call
    :meth:`close`. Items may be sent concurrently (:meth:`send_item` from many tasks).
    ``limiters`` replaces the buckets of the endpoints it names with objects of the same
    ``async acquire(n=1)`` (e.g. limits shared by several runners of the channel,
    :mod:`engine.line.sharedrate`); their owner opens and closes them.
    """

    dry_run = False

    def __init__(
        self,
        access_token: str | None,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        stateless: StatelessToken | None = None,
        rates: Mapping[str, float] | None = None,
        burst_seconds: float = 0.05,
        concurrency: int = 64,
        max_attempts: int = 5,
        timeout: float = LINE_TIMEOUT,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_inline_wait: float = MAX_INLINE_WAIT,
        quota_refresh_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        limiters: Mapping[str, Limiter] | None = None,
    ):
        if not access_token and stateless is None:
            raise ValueError("a channel access token or a channel id and secret is needed")
        _sdk()  # imported now, so that the first reply after a start does not wait for it
        self.endpoint = endpoint.rstrip("/")
        self._token = access_token or ""
        self.stateless = stateless
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            max_inline_wait=max_inline_wait,
            rng=rng or random.Random(),
        )
        self.quota_refresh_interval = quota_refresh_interval
        self.clock = clock
        self._trace_configs = list(trace_configs)  # aiohttp request hooks (measurements)
        chosen = {name: RATE_LIMITS[name].rate for name in DISPATCH_ENDPOINTS}
        for name, rate in (rates or {}).items():
            if name not in chosen:
                raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(chosen)}")
            chosen[name] = rate
        # Short bursts, and never more than the limit in any second (a bucket that starts full
        # would let a burst's worth more through in the first second).
        self._buckets: dict[str, Limiter] = {name: client_bucket(rate, burst_seconds) for name, rate in chosen.items()}
        for name, limiter in (limiters or {}).items():
            if name not in chosen:
                raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(chosen)}")
            self._buckets[name] = limiter
        self._client: AsyncApiClient | None = None
        self._api: AsyncMessagingApi | None = None
        self._client_lock = asyncio.Lock()
        self._quota_lock = asyncio.Lock()
        self._quota_task: asyncio.Task | None = None
        self.remaining: int | None = None  # messages left this month; None: no limit known
        self._quota_read_at: float | None = None
        self._quota_month: str | None = None
        self._exhausted_month: str | None = None
        self._requests: dict[str, Counter[str]] = defaultdict(Counter)
        self._counters: Counter[str] = Counter()
        self._closing_at: float | None = None

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Dispatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _messaging(self) -> AsyncMessagingApi:
        """The SDK client, created on first use (its aiohttp session needs a running loop)."""
        if self._api is None:
            async with self._client_lock:
                if self._api is None:
                    sdk = _sdk()
                    config = sdk.Configuration(access_token=self._token or "-", host=self.endpoint)
                    config.proxy = _env_proxy(self.endpoint)
                    client = sdk.AsyncApiClient(config)
                    # The SDK's session trusts the environment, which costs two thread hops per
                    # request (netrc and proxy lookups) and caps sending near 1,100 requests/s;
                    # the proxy is resolved once above instead, and the session replaced by a
                    # plain one.
                    sdk_rest = client.rest_client
                    # No pool limit: callers bound the requests in flight (send's semaphore,
                    # the runner's slots), and a pool full of hanging pushes must never make
                    # a reply wait for a connection.
                    client.rest_client = sdk.RESTClient(
                        config,
                        aiohttp.ClientSession(
                            connector=aiohttp.TCPConnector(limit=0, ssl=ssl.create_default_context()),
                            trace_configs=self._trace_configs or None,
                        ),
                    )
                    await sdk_rest.close()
                    self._client, self._api = client, sdk.AsyncMessagingApi(client)
        return self._api

    @property
    def closing(self) -> bool:
        """Set by :meth:`close` and by a stopping runner: from then on a failed request is
        retried only after a short wait and within ``timeout`` seconds, so that a stop is
        never held up for long, and the quota is no longer read in the background."""
        return self._closing_at is not None

    @closing.setter
    def closing(self, value: bool) -> None:
        if not value:
            self._closing_at = None
        elif self._closing_at is None:
            self._closing_at = time.monotonic()

    async def close(self) -> None:
        """Stop starting attempts and close the HTTP connection pool."""
        self.closing = True
        if self._quota_task is not None:
            self._quota_task.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = self._api = None

    @property
    def banner(self) -> str:
        """One line for the runner's start banner."""
        how = f" with stateless tokens of channel {self.stateless.channel_id}" if self.stateless is not None else ""
        return f"sending to the LINE Messaging API at {self.endpoint}{how}"

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
            "retries_by_reason": {k[len("retry:") :]: n for k, n in self._counters.items() if k.startswith("retry:")},
            "rate_limited": self._counters["rate_limited"],
            "monthly_limited": self._counters["monthly_limited"],
            "tokens_issued": self.stateless.issued if self.stateless is not None else 0,
            "outcomes": {k[len("outcome:") :]: n for k, n in self._counters.items() if k.startswith("outcome:")},
        }

    # ----------------------------------------------------------------- tokens

    async def _authorize(self, *, refused: bool = False) -> None:
        """Put the current stateless token on the client (a new one when ``refused``)."""
        if self.stateless is None:
            return
        await self._messaging()
        assert self._client is not None
        config = self._client.configuration
        session = self._client.rest_client.pool_manager
        config.access_token = await self.stateless.get(session, force=refused, stale=config.access_token)

    async def check_auth(self) -> str | None:
        """Ask LINE whether the token works now (a new stateless token is issued first);
        None when it does, else what is wrong. Used to resume after a 401/403."""
        try:
            await self._authorize(refused=True)
        except TokenError as exc:
            return str(exc)
        api = await self._messaging()
        answer = await self._request(
            "quota",
            lambda: api.get_message_quota_with_http_info(_request_timeout=self.timeout),
            label="token check",
            attempts=1,
        )
        if answer.ok:
            return None
        return answer.describe()

    # ----------------------------------------------------------------- HTTP with retries

    async def _request(
        self,
        endpoint: str,
        call: Callable[[], Awaitable[Any]],
        *,
        label: str = "",
        attempts: int | None = None,
        deadline: float | None = None,
    ) -> _Answer:
        """Call LINE until the retry policy (:mod:`engine.line.retrypolicy`) says to stop: an
        answer that must not be retried, the attempts run out, a longer wait than
        ``max_inline_wait`` is asked for, ``deadline`` (epoch seconds) would pass or the
        dispatcher is closing. Every retry is logged and counted.

        ``call`` must send the same bytes each time (one prepared request)."""
        ambiguous = False
        renewed = False
        attempts = attempts or self.max_attempts
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._authorize()
            except TokenError as exc:
                return _Answer(None, {}, "", ambiguous, f"token: {exc}", verdict=Verdict("auth"))
            await self._buckets[endpoint].acquire()
            try:
                response = await call()
            except _sdk().ApiException as exc:
                status = int(exc.status or 0)
                answer = Answer(status, exc.headers or {}, exc.body or "")
                self._requests[endpoint][str(status)] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "error"
                self._requests[endpoint][kind] += 1
                # A refused connection never reached LINE; anything later might have.
                answer = Answer(
                    None,
                    error=f"{kind}: {type(exc).__name__} {exc}".strip(),
                    reached=not isinstance(exc, aiohttp.ClientConnectorError),
                )
            else:
                self._requests[endpoint][str(response.status_code)] += 1
                answer = Answer(response.status_code, response.headers, response.raw_data or "")
            closing_left = None if self._closing_at is None else self.timeout - (time.monotonic() - self._closing_at)
            verdict = self.policy.decide(
                answer,
                attempt,
                self.clock(),
                attempts=attempts,
                renewable=self.stateless is not None and not renewed,
                deadline=deadline,
                closing_left=closing_left,
            )
            ambiguous = ambiguous or verdict.ambiguous
            if answer.monthly_limit:
                self._counters["monthly_limited"] += 1
            elif answer.status == 429:
                self._counters["rate_limited"] += 1
            if verdict.action == "renew":
                renewed = True  # the token expired or was refused: a new one, once
                try:
                    await self._authorize(refused=True)
                except TokenError as err:
                    return _Answer(None, {}, "", ambiguous, f"token: {err}", verdict=Verdict("auth"))
                attempt -= 1
                continue
            if verdict.action != "retry":
                return _Answer(
                    answer.status, answer.headers, answer.body, ambiguous, answer.error, verdict.retry_after, verdict
                )
            self._counters["retries"] += 1
            self._counters[f"retry:{answer.reason}"] += 1
            logger.warning(
                "%s: %s; retrying in %.1f s (attempt %d of %d, the same request)",
                label or endpoint,
                _describe(answer),
                verdict.delay,
                attempt + 1,
                attempts,
            )
            await asyncio.sleep(verdict.delay)

    # ----------------------------------------------------------------- quota

    async def refresh_quota(self) -> int | None:
        """Read the monthly quota and its consumption; ``remaining`` = value - totalUsage
        (None when the plan has no limit). On failure the previous reading is kept."""
        api = await self._messaging()
        quota = await self._request(
            "quota",
            lambda: api.get_message_quota_with_http_info(_request_timeout=self.timeout),
            label="quota",
            attempts=2,
        )
        used = await self._request(
            "quota_consumption",
            lambda: api.get_message_quota_consumption_with_http_info(_request_timeout=self.timeout),
            label="quota consumption",
            attempts=2,
        )
        if not (quota.ok and used.ok):
            logger.warning("could not read the LINE message quota: %s", (used if quota.ok else quota).describe())
            return self.remaining
        q, u = json.loads(quota.body), json.loads(used.body)
        self.remaining = (
            None if q.get("type") == "none" else max(0, int(q.get("value", 0)) - int(u.get("totalUsage", 0)))
        )
        self._quota_read_at = time.monotonic()
        self._quota_month = _month(self.clock())
        if self.remaining is None or self.remaining > 0:
            self._exhausted_month = None  # more messages were bought, or the plan changed
        return self.remaining

    async def _maybe_refresh_quota(self) -> None:
        """Read the quota when it was never read or is from another month (waiting for it, once),
        or in the background when the reading is old (sending goes on meanwhile)."""
        if self._quota_read_at is None or self._quota_month != _month(self.clock()):
            async with self._quota_lock:
                if self._quota_read_at is None or self._quota_month != _month(self.clock()):
                    self._quota_read_at = None
                    await self.refresh_quota()
                    self._quota_read_at = self._quota_read_at or time.monotonic()
                    self._quota_month = _month(self.clock())
            return
        stale = time.monotonic() - self._quota_read_at >= self.quota_refresh_interval
        if stale and (self._quota_task is None or self._quota_task.done()) and not self.closing:
            self._quota_task = asyncio.ensure_future(self.refresh_quota())

    # ----------------------------------------------------------------- sending

    async def send(self, items: Sequence[OutboxItem], on_result: ResultCallback | None = None) -> list[DispatchResult]:
        """Send ``items`` concurrently (at most ``concurrency`` in flight, each on its own: one
        slow item holds nobody else) and return one result per item, in order. ``on_result``
        (sync or async) is called as each lands."""
        gate = asyncio.Semaphore(max(1, self.concurrency))

        async def one(item: OutboxItem) -> DispatchResult:
            async with gate:
                result = await self.send_item(item)
            await _report(on_result, result)
            return result

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def send_item(self, item: OutboxItem, before_send: BeforeSend | None = None) -> DispatchResult:
        """Send one item and return its result. ``before_send`` is called just before the
        first request of a reply (which has no retry key) goes out; when it returns False,
        nothing is sent and the result is "retry"."""
        result = await self._send_item(item, before_send)
        self._counters[f"outcome:{result.outcome}"] += 1
        return result

    async def _send_item(self, item: OutboxItem, before_send: BeforeSend | None = None) -> DispatchResult:
        via = "push" if item.kind == "reply" else item.kind
        try:
            if item.kind == "push":
                return await self._push(item)
            if item.kind == "multicast":
                return await self._push(item, multicast=True)
            if item.kind == "reply":
                return await self._reply(item, before_send)
            if item.kind == "menu_link":
                return await self._menu_link(item)
            raise ValueError(f"unknown kind {item.kind!r}")
        except (ValueError, TypeError) as exc:
            return DispatchResult(
                item.id, "rejected", None, None, f"invalid item: {exc}", via, len(item.to), item.ambiguous
            )

    def _result(self, item: OutboxItem, answer: _Answer, via: str, recipients: int) -> DispatchResult:
        """Map a final answer (its retry policy verdict) to an outcome (the quota bookkeeping
        is the caller's)."""
        request_id = answer.headers.get("x-line-request-id")
        ambiguous = answer.ambiguous or item.ambiguous
        action = answer.verdict.action if answer.verdict is not None else "later"
        if action == "sent":
            return DispatchResult(item.id, "sent", answer.status, request_id, None, via, recipients)
        if action == "duplicate":
            return DispatchResult(
                item.id,
                "duplicate",
                409,
                answer.headers.get("x-line-accepted-request-id", request_id),
                "LINE had already accepted this retry key: " + (answer.body or "409"),
                via,
                recipients,
            )
        if action == "held":
            return DispatchResult(item.id, "held", 429, request_id, MONTHLY_LIMIT_MESSAGE, via, recipients, ambiguous)
        if action == "auth":
            return DispatchResult(
                item.id, "auth", answer.status, request_id, answer.describe(), via, recipients, ambiguous
            )
        if action == "rejected":
            return DispatchResult(
                item.id, "rejected", answer.status, request_id, answer.body, via, recipients, ambiguous
            )
        return DispatchResult(
            item.id,
            "retry",
            answer.status,
            request_id,
            answer.describe(),
            via,
            recipients,
            ambiguous,
            answer.retry_after,
        )

    def _held(self, item: OutboxItem, via: str, recipients: int, detail: str) -> DispatchResult:
        return DispatchResult(item.id, "held", None, None, detail, via, recipients, item.ambiguous)

    def _post(self, api: AsyncMessagingApi, endpoint: str, body: bytes, retry_key: str | None = None) -> Awaitable[Any]:
        """One send request through the SDK's own client (``ApiClient.call_api``: its
        transport, bearer token, user agent and :class:`ApiException` for errors), with the
        body encoded once (:func:`_encode`), the same bytes on every attempt. The SDK's
        request models (``MulticastRequest`` ...) are not built: they would validate again,
        with pydantic, message objects the rules' checks and the renderer already validated
        against LINE's limits, and serialise them back, which was most of the CPU a broadcast
        spent. The headers are the ones the SDK's ``multicast``/``push_message``/
        ``reply_message`` set."""
        method, path = ROUTES[endpoint]
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if retry_key is not None:
            headers["X-Line-Retry-Key"] = retry_key
        return api.api_client.call_api(  # body: bytes pass the SDK's serialisation as they are
            path,
            method,
            {},
            [],
            headers,
            body=body,
            post_params=[],
            files={},
            response_types_map=_SEND_RESPONSE_TYPES,
            auth_settings=["Bearer"],
            _return_http_data_only=False,
            _preload_content=True,
            _request_timeout=self.timeout,
            _host=api.line_base_path,
            collection_formats={},
        )

    def _label(self, item: OutboxItem, via: str) -> str:
        to = item.to[0] if len(item.to) == 1 else f"{len(item.to)} friends"
        return f"outbox {item.id} {via} to {to}"

    async def _push(self, item: OutboxItem, *, multicast: bool = False) -> DispatchResult:
        to = item.to
        via = "multicast" if multicast else "push"
        if not UUID_RE.fullmatch(item.retry_key or ""):
            raise ValueError(f"retry key {item.retry_key!r} is not a UUID")
        if multicast and not 1 <= len(to) <= MAX_MULTICAST:
            raise ValueError(f"a multicast goes to 1 to {MAX_MULTICAST} users, not {len(to)}")
        if not multicast and len(to) != 1:
            raise ValueError(f"a push goes to exactly one user, not {len(to)}")
        _check_messages(item.messages)
        # One body for every attempt: each retry sends the same bytes.
        body = item.body({"to": to if multicast else to[0]})
        recipients = len(to)
        await self._maybe_refresh_quota()  # replies are free: only pushes wait for it
        if self.quota_exhausted:
            return self._held(item, via, recipients, MONTHLY_LIMIT_MESSAGE)
        if self.remaining is not None:
            if recipients > self.remaining:
                return self._held(
                    item,
                    via,
                    recipients,
                    f"would exceed the monthly quota: {recipients} recipient(s), {self.remaining} message(s) left",
                )
            self.remaining -= recipients
        api = await self._messaging()
        label = self._label(item, via)
        answer = await self._request(via, lambda: self._post(api, via, body, item.retry_key), label=label)
        result = self._result(item, answer, via, recipients)
        if result.outcome == "held":
            self._exhausted_month = _month(self.clock())
            self.remaining = 0
        elif result.outcome not in ("sent", "duplicate") and self.remaining is not None:
            self.remaining += recipients
        return result

    async def _reply(self, item: OutboxItem, before_send: BeforeSend | None = None) -> DispatchResult:
        """Reply while the token is fresh; otherwise (or when LINE calls it invalid) push.

        When an earlier request may have been delivered (``item.ambiguous``, or an attempt of
        this call whose answer was lost), the token tells: LINE answers "Invalid reply token"
        once it was used, and the item counts as delivered (duplicate) rather than being
        pushed; past the token's deadline nothing can tell, and the item is "unconfirmed"
        (never pushed, so never sent twice)."""
        if len(item.to) != 1:
            raise ValueError(f"a reply goes to exactly one user, not {len(item.to)}")
        fresh = item.reply_token and (item.reply_deadline is None or self.clock() < item.reply_deadline)
        if fresh:
            api = await self._messaging()
            _check_messages(item.messages)
            body = item.body({"replyToken": item.reply_token})
            if before_send is not None and not item.ambiguous:
                allowed = before_send(item)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
                if not allowed:
                    return DispatchResult(
                        item.id, "retry", None, None, "not sent: the row is no longer this runner's", "reply", 1
                    )
            answer = await self._request(
                "reply",
                lambda: self._post(api, "reply", body),
                label=self._label(item, "reply"),
                deadline=item.reply_deadline,
            )
            invalid_token = answer.status == 400 and INVALID_REPLY_TOKEN_MESSAGE in answer.body
            if not invalid_token:
                result = self._result(item, answer, "reply", 1)
                if result.outcome == "retry" and not result.ambiguous:
                    # nothing reached LINE: a push may follow once the token is stale
                    return result
                if result.outcome == "retry" and (
                    item.reply_deadline is not None and self.clock() >= item.reply_deadline
                ):
                    return self._unconfirmed(item, result.detail)
                return result
            if answer.ambiguous or item.ambiguous:
                return DispatchResult(
                    item.id,
                    "duplicate",
                    400,
                    answer.headers.get("x-line-request-id"),
                    "reply token already used by an earlier request whose answer was lost: delivered then",
                    "reply",
                    1,
                    True,
                )
        elif item.ambiguous:
            return self._unconfirmed(item, None)
        return await self._push(item)

    def _unconfirmed(self, item: OutboxItem, last: str | None) -> DispatchResult:
        return DispatchResult(
            item.id,
            "unconfirmed",
            None,
            None,
            "a reply request was sent but its outcome is unknown"
            + (f" ({last})" if last else "")
            + ", and its reply token has expired; not pushed, so that it is never sent twice",
            "reply",
            1,
            True,
        )

    async def _menu_link(self, item: OutboxItem) -> DispatchResult:
        if len(item.to) != 1:
            raise ValueError(f"a menu link is for exactly one user, not {len(item.to)}")
        api = await self._messaging()
        user = item.to[0]
        label = self._label(item, "menu_link")
        if item.rich_menu_id is None:
            answer = await self._request(
                "richmenu_unlink",
                lambda: api.unlink_rich_menu_id_from_user_with_http_info(user, _request_timeout=self.timeout),
                label=label,
            )
        else:
            menu = item.rich_menu_id
            answer = await self._request(
                "richmenu_link",
                lambda: api.link_rich_menu_id_to_user_with_http_info(user, menu, _request_timeout=self.timeout),
                label=label,
            )
        return self._result(item, answer, "menu_link", 1)

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """The user's ``display_name`` and ``language`` (None when LINE has no profile for
        them: unknown, blocked, or LINE unreachable)."""
        api = await self._messaging()
        answer = await self._request(
            "profile",
            lambda: api.get_profile_with_http_info(user_id, _request_timeout=self.timeout),
            label=f"profile of {user_id}",
            attempts=3,
        )
        if not answer.ok:
            if answer.status != 404:
                logger.warning("could not read the LINE profile of %s: %s", user_id, answer.describe())
            return None
        data = json.loads(answer.body)
        return {"display_name": data.get("displayName"), "language": data.get("language")}

    async def issue_link_token(self, user_id: str) -> str | None:
        """A new account-link token for the user (``POST /v2/bot/user/{userId}/linkToken``;
        valid 10 minutes, single use), or None when LINE did not give one."""
        api = await self._messaging()
        answer = await self._request(
            "link_token", lambda: api.issue_link_token_with_http_info(user_id, _request_timeout=self.timeout)
        )
        if not answer.ok:
            logger.warning("no account-link token for %s: %s", user_id, answer.describe())
            return None
        return json.loads(answer.body).get("linkToken")


def _recipients(to: Sequence[str]) -> str:
    """Who an item goes to, for a log line: the friend, or how many and the first three."""
    if len(to) == 1:
        return to[0]
    shown = ", ".join(to[:3]) + (", …" if len(to) > 3 else "")
    return f"{len(to)} recipients ({shown})"


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
    closing = False

    def __init__(self, log: logging.Logger | None = None):
        self._log = log or logger
        self._counts: Counter[str] = Counter()

    @property
    def banner(self) -> str:
        """One line for the runner's start banner."""
        return "dry run: LINE_CHANNEL_ACCESS_TOKEN is not set, so nothing is sent to LINE; each push is logged instead"

    @property
    def metrics(self) -> dict[str, Any]:
        """Items logged, by kind."""
        return {"requests": {}, "dry_run": dict(self._counts)}

    async def send(self, items: Sequence[OutboxItem], on_result: ResultCallback | None = None) -> list[DispatchResult]:
        """Log each item (kind, recipients, message types, first text) and return "dry_run"."""
        results = []
        for item in items:
            result = await self.send_item(item)
            results.append(result)
            await _report(on_result, result)
        return results

    async def send_item(self, item: OutboxItem, before_send: BeforeSend | None = None) -> DispatchResult:
        """Log one item and return "dry_run"."""
        types = ", ".join(str(m.get("type", "?")) for m in item.messages) or "-"
        if item.kind == "menu_link":
            self._log.info(
                "dry-run menu_link %s -> %s", item.to[0] if item.to else "?", item.rich_menu_id or "(unlink)"
            )
        else:
            self._log.info(
                "dry-run %s #%d to %s [%s]: %s",
                item.kind,
                item.id,
                _recipients(item.to),
                types,
                _snippet(item.messages),
            )
        self._counts[item.kind] += 1
        return DispatchResult(item.id, "dry_run", None, None, None, "dry-run", len(item.to))

    async def check_auth(self) -> str | None:
        """No token to check."""
        return None

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
    """A :class:`Dispatcher` when ``LINE_CHANNEL_ACCESS_TOKEN`` is set, or when
    ``LINE_CHANNEL_ID`` and ``LINE_CHANNEL_SECRET`` are (stateless tokens issued by the
    dispatcher), sending to ``LINE_API_ENDPOINT`` (default https://api.line.me); else a
    :class:`DryRunTransport`. The transport's ``dry_run`` flag and ``banner`` say which."""
    token = env.get("LINE_CHANNEL_ACCESS_TOKEN", "").strip()
    channel_id = env.get("LINE_CHANNEL_ID", "").strip()
    secret = env.get("LINE_CHANNEL_SECRET", "").strip()
    endpoint = env.get("LINE_API_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    if token:
        return Dispatcher(token, endpoint, **options)
    if channel_id and secret:
        return Dispatcher(None, endpoint, stateless=StatelessToken(channel_id, secret, endpoint), **options)
    return DryRunTransport()
