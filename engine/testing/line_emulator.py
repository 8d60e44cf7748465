"""A LINE Messaging API emulator for tests and benchmarks.

An aiohttp application that answers like ``api.line.me`` for the endpoints linerules uses:
the same paths, JSON shapes, status codes and error bodies, LINE's message limits, retry-key
semantics (409 with ``x-line-accepted-request-id``), single-use reply tokens, per-endpoint
rate limits (token buckets, 429), a monthly quota (429 "You have reached your monthly limit."),
blocked and unknown users (200, nothing delivered), plus fault injection (5xx, 429, hangs,
and "accepted but the response was lost").

In-process::

    emulator = Emulator(quota=200)
    await emulator.start("127.0.0.1")          # port 0: a free port
    emulator.add_user("U1", "Hanako")
    ... LINE_API_ENDPOINT=emulator.base_url ...
    emulator.inbox("U1")                         # the message objects U1 received
    await emulator.stop()

From synchronous code, ``with run_in_thread(quota=200) as emulator:`` runs it on its own
event loop in a thread. Standalone: ``python -m engine.testing.line_emulator --port 8089 --user U1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import web

from engine.line import limits as L
from engine.line.limits import (
    AUTH_FAILED_MESSAGE,
    INVALID_REPLY_TOKEN_MESSAGE,
    MAX_BODY_BYTES,
    MONTHLY_LIMIT_MESSAGE,
    RATE_LIMIT_MESSAGE,
    RATE_LIMITS,
    RETRY_KEY_ACCEPTED_MESSAGE,
    RETRY_KEY_ENDPOINTS,
    RETRY_KEY_TTL,
    ROUTES,
    STATELESS_TOKEN_TTL,
    TOKEN_PATH,
    UUID_RE,
    Limit,
    utf16_len,
)
from engine.line.ratelimit import TokenBucket, buckets_for

DEFAULT_ACCESS_TOKEN = "emulator-token"

DEFAULT_CHANNEL_ID = "2000000000"
DEFAULT_CHANNEL_SECRET = "emulator-channel-secret"
_DEFAULT_FAULT_MESSAGES = {
    429: RATE_LIMIT_MESSAGE,
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


# --------------------------------------------------------------------------- message limits

#: LINE's checks answer with this order of the type names.
_MESSAGE_TYPES = ("text", "image", "video", "audio", "location", "sticker", "template", "imagemap", "flex", "coupon")
_URI_SCHEMES = tuple(s + (":" if s == "tel" else "://") for s in L.URI_SCHEMES)


class _Checker:
    """Collects ``{"message", "property"}`` details while walking a request body."""

    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []

    def error(self, prop: str, message: str) -> None:
        self.details.append({"message": message, "property": prop})

    def text(self, obj: Mapping[str, Any], key: str, prop: str, max_len: int, *, required: bool = True) -> None:
        value = obj.get(key)
        if value is None:
            if required:
                self.error(f"{prop}.{key}", "Must not be empty")
            return
        if not isinstance(value, str):
            self.error(f"{prop}.{key}", "Must be a string")
        elif required and not value:
            self.error(f"{prop}.{key}", "Must not be empty")
        elif utf16_len(value) > max_len:
            self.error(f"{prop}.{key}", f"Length must be between 0 and {max_len}")

    def url(
        self, obj: Mapping[str, Any], key: str, prop: str, *, required: bool = True, max_len: int = L.MEDIA_URL_LIMIT
    ) -> None:
        value = obj.get(key)
        if value is None:
            if required:
                self.error(f"{prop}.{key}", "Must not be empty")
            return
        if not isinstance(value, str) or not value.startswith("https://"):
            self.error(f"{prop}.{key}", "Must be an HTTPS URL")
        elif len(value) > max_len:
            self.error(f"{prop}.{key}", f"Length must be between 0 and {max_len}")

    def items(self, obj: Mapping[str, Any], key: str, prop: str, low: int, high: int) -> list[Any]:
        value = obj.get(key)
        if not isinstance(value, list):
            self.error(f"{prop}.{key}" if prop else key, "Must be an array")
            return []
        if not low <= len(value) <= high:
            self.error(f"{prop}.{key}" if prop else key, f"Size must be between {low} and {high}")
        return value

    def action(self, action: Any, prop: str, *, label_max: int) -> None:
        if not isinstance(action, dict):
            self.error(prop, "Must be an object")
            return
        kind = action.get("type")
        if kind not in L.ACTION_TYPES:
            self.error(f"{prop}.type", f"Must be one of the following values: [{', '.join(L.ACTION_TYPES)}]")
            return
        self.text(action, "label", prop, label_max, required=False)
        if kind == "uri":
            uri = action.get("uri")
            if not isinstance(uri, str) or not uri:
                self.error(f"{prop}.uri", "Must not be empty")
            elif len(uri) > L.URI_LIMIT:
                self.error(f"{prop}.uri", f"Length must be between 0 and {L.URI_LIMIT}")
            elif not uri.startswith(_URI_SCHEMES):
                self.error(f"{prop}.uri", "Invalid URI scheme")
        elif kind == "postback":
            self.text(action, "data", prop, L.DATA_LIMIT)
            self.text(action, "displayText", prop, L.DATA_LIMIT, required=False)
            self.text(action, "text", prop, L.DATA_LIMIT, required=False)
        elif kind == "message":
            self.text(action, "text", prop, L.DATA_LIMIT)
        elif kind == "datetimepicker":
            self.text(action, "data", prop, L.DATA_LIMIT)
            if action.get("mode") not in ("date", "time", "datetime"):
                self.error(f"{prop}.mode", "Must be one of the following values: [date, time, datetime]")

    def message(self, msg: Any, prop: str) -> None:
        if not isinstance(msg, dict):
            self.error(prop, "Must be an object")
            return
        kind = msg.get("type")
        if kind not in _MESSAGE_TYPES:
            self.error(f"{prop}.type", f"Must be one of the following values: [{', '.join(_MESSAGE_TYPES)}]")
            return
        getattr(self, f"_{kind}")(msg, prop)
        quick = msg.get("quickReply")
        if quick is not None:
            qprop = f"{prop}.quickReply"
            if not isinstance(quick, dict):
                self.error(qprop, "Must be an object")
            else:
                for i, item in enumerate(self.items(quick, "items", qprop, 1, L.QUICK_REPLY_ITEMS)):
                    iprop = f"{qprop}.items[{i}]"
                    if not isinstance(item, dict) or item.get("type") != "action":
                        self.error(f"{iprop}.type", "Must be one of the following values: [action]")
                        continue
                    self.url(item, "imageUrl", iprop, required=False, max_len=L.URI_LIMIT)
                    self.action(item.get("action"), f"{iprop}.action", label_max=L.LABEL_LIMIT)

    def _text(self, msg: Mapping[str, Any], prop: str) -> None:
        self.text(msg, "text", prop, L.TEXT_LIMIT)

    def _image(self, msg: Mapping[str, Any], prop: str) -> None:
        self.url(msg, "originalContentUrl", prop)
        self.url(msg, "previewImageUrl", prop)

    _video = _image

    def _audio(self, msg: Mapping[str, Any], prop: str) -> None:
        self.url(msg, "originalContentUrl", prop)
        if not isinstance(msg.get("duration"), int):
            self.error(f"{prop}.duration", "Must be a number")

    def _location(self, msg: Mapping[str, Any], prop: str) -> None:
        self.text(msg, "title", prop, L.LOCATION_TEXT_LIMIT)
        self.text(msg, "address", prop, L.LOCATION_TEXT_LIMIT)
        for key in ("latitude", "longitude"):
            if not isinstance(msg.get(key), (int, float)):
                self.error(f"{prop}.{key}", "Must be a number")

    def _coupon(self, msg: Mapping[str, Any], prop: str) -> None:
        self.text(msg, "couponId", prop, 100)
        self.text(msg, "deliveryTag", prop, L.DELIVERY_TAG_LIMIT, required=False)

    def _sticker(self, msg: Mapping[str, Any], prop: str) -> None:
        self.text(msg, "packageId", prop, 100)
        self.text(msg, "stickerId", prop, 100)

    def _imagemap(self, msg: Mapping[str, Any], prop: str) -> None:
        self.url(msg, "baseUrl", prop)
        self.text(msg, "altText", prop, L.ALT_TEXT_LIMIT)
        for i, action in enumerate(self.items(msg, "actions", prop, 1, L.IMAGEMAP_ACTIONS)):
            if not isinstance(action, dict) or action.get("type") not in ("uri", "message", "clipboard"):
                self.error(
                    f"{prop}.actions[{i}].type", "Must be one of the following values: [uri, message, clipboard]"
                )

    def _template(self, msg: Mapping[str, Any], prop: str) -> None:
        self.text(msg, "altText", prop, L.ALT_TEXT_LIMIT)
        tpl = msg.get("template")
        tprop = f"{prop}.template"
        if not isinstance(tpl, dict):
            self.error(tprop, "Must not be empty")
            return
        kind = tpl.get("type")
        if kind not in L.TEMPLATE_TYPES:
            self.error(f"{tprop}.type", f"Must be one of the following values: [{', '.join(L.TEMPLATE_TYPES)}]")
            return
        if kind == "buttons":
            with_header = "thumbnailImageUrl" in tpl or "title" in tpl
            self.text(tpl, "title", tprop, L.TEMPLATE_TITLE_LIMIT, required=False)
            self.text(tpl, "text", tprop, L.FRAMED_TEXT_LIMIT if with_header else L.BUTTONS_TEXT_LIMIT)
            self.url(tpl, "thumbnailImageUrl", tprop, required=False)
            for i, action in enumerate(self.items(tpl, "actions", tprop, 1, L.BUTTONS_ACTIONS)):
                self.action(action, f"{tprop}.actions[{i}]", label_max=L.LABEL_LIMIT)
            if "defaultAction" in tpl:
                self.action(tpl["defaultAction"], f"{tprop}.defaultAction", label_max=L.LABEL_LIMIT)
        elif kind == "confirm":
            self.text(tpl, "text", tprop, L.CONFIRM_TEXT_LIMIT)
            for i, action in enumerate(self.items(tpl, "actions", tprop, 2, 2)):
                self.action(action, f"{tprop}.actions[{i}]", label_max=L.LABEL_LIMIT)
        elif kind == "carousel":
            counts = set()
            for c, col in enumerate(self.items(tpl, "columns", tprop, 1, L.CAROUSEL_COLUMNS)):
                cprop = f"{tprop}.columns[{c}]"
                if not isinstance(col, dict):
                    self.error(cprop, "Must be an object")
                    continue
                with_header = "thumbnailImageUrl" in col or "title" in col
                self.text(col, "title", cprop, L.TEMPLATE_TITLE_LIMIT, required=False)
                self.text(col, "text", cprop, L.FRAMED_TEXT_LIMIT if with_header else L.CAROUSEL_TEXT_LIMIT)
                self.url(col, "thumbnailImageUrl", cprop, required=False)
                actions = self.items(col, "actions", cprop, 1, L.CAROUSEL_ACTIONS)
                counts.add(len(actions))
                for i, action in enumerate(actions):
                    self.action(action, f"{cprop}.actions[{i}]", label_max=L.LABEL_LIMIT)
            if len(counts) > 1:
                self.error(f"{tprop}.columns", "All columns must have the same number of actions")
        else:
            for c, col in enumerate(self.items(tpl, "columns", tprop, 1, L.CAROUSEL_COLUMNS)):
                cprop = f"{tprop}.columns[{c}]"
                if not isinstance(col, dict):
                    self.error(cprop, "Must be an object")
                    continue
                self.url(col, "imageUrl", cprop)
                self.action(col.get("action"), f"{cprop}.action", label_max=L.IMAGE_CAROUSEL_LABEL_LIMIT)

    def _flex(self, msg: Mapping[str, Any], prop: str) -> None:
        self.text(msg, "altText", prop, L.ALT_TEXT_LIMIT)
        contents = msg.get("contents")
        cprop = f"{prop}.contents"
        if not isinstance(contents, dict) or contents.get("type") not in ("bubble", "carousel"):
            self.error(f"{cprop}.type", "Must be one of the following values: [bubble, carousel]")
            return
        size = len(json.dumps(contents, ensure_ascii=False, separators=(",", ":")).encode())
        if contents["type"] == "bubble" and size > L.FLEX_BUBBLE_BYTES:
            self.error(cprop, f"Size must be at most {L.FLEX_BUBBLE_BYTES // 1000} KB")
        if contents["type"] == "carousel":
            self.items(contents, "contents", cprop, 1, L.FLEX_CAROUSEL_BUBBLES)
            if size > L.FLEX_CAROUSEL_BYTES:
                self.error(cprop, f"Size must be at most {L.FLEX_CAROUSEL_BYTES // 1000} KB")
        self._flex_walk(contents, cprop)

    def _flex_walk(self, node: Any, prop: str) -> None:
        if isinstance(node, list):
            for i, child in enumerate(node):
                self._flex_walk(child, f"{prop}[{i}]")
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("action", "defaultAction") and value is not None:
                    self.action(value, f"{prop}.{key}", label_max=L.FLEX_LABEL_LIMIT)
                elif key == "url" and node.get("type") in ("image", "video"):
                    self.url(node, "url", prop)
                elif isinstance(value, (dict, list)):
                    self._flex_walk(value, f"{prop}.{key}")


def validate_messages(body: Mapping[str, Any], *, min_messages: int = 1) -> list[dict[str, str]]:
    """The 400 details for the ``messages`` of a send request body (empty when valid)."""
    check = _Checker()
    for i, msg in enumerate(check.items(body, "messages", "", min_messages, L.MAX_OBJECTS)):
        check.message(msg, f"messages[{i}]")
    return check.details


# --------------------------------------------------------------------------- recorded state


class Delivery(NamedTuple):
    """One recipient's share of an accepted send (``delivered`` or ``undelivered``)."""

    user_id: str
    messages: list[dict[str, Any]]
    endpoint: str
    request_id: str
    retry_key: str | None
    time: float


@dataclass
class RecordedRequest:
    """One request as the emulator saw it; ``status`` is None when the connection was dropped."""

    method: str
    path: str
    endpoint: str
    request_id: str
    retry_key: str | None
    body: bytes
    time: float
    status: int | None = None
    note: str = ""  # "fault", "timeout", "lost" for injected behaviour

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class User:
    """A LINE user the emulated channel knows."""

    user_id: str
    display_name: str
    language: str | None = "ja"
    blocked: bool = False
    picture_url: str | None = None
    status_message: str | None = None


@dataclass
class _Fault:
    endpoint: str
    kind: str  # "status" | "timeout" | "lost"
    remaining: int
    status: int = 500
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float | None = None


@dataclass
class _ReplyToken:
    user_id: str
    expires_at: float
    used: bool = False


@dataclass
class _Accepted:
    request_id: str
    expires_at: float
    sent_messages: list[dict[str, str]] | None


class _Answer(Exception):
    """Raised inside a handler to answer at once with ``status`` and a JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message}
        if details:
            self.body["details"] = details
        if extra:
            self.body.update(extra)
        self.headers = dict(headers or {})


def _body_error(details: list[dict[str, str]]) -> _Answer:
    return _Answer(400, f"The request body has {len(details)} error(s)", details)


# --------------------------------------------------------------------------- the emulator


class Emulator:
    """The emulated LINE channel: its HTTP server, users, recorded deliveries and controls.

    ``quota`` is the monthly message limit (None: unlimited, quota type "none").
    ``rate_limits`` overrides LINE's per-endpoint limits (requests per second, or a
    :class:`~engine.line.ratelimit.Limit`); ``rate_scale`` multiplies all of them.
    ``clock`` (epoch seconds) decides reply-token and retry-key expiry.
    """

    def __init__(
        self,
        *,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        quota: int | None = None,
        reply_token_ttl: float = L.REPLY_TOKEN_TTL,
        rate_limits: Mapping[str, float | Limit] | None = None,
        rate_scale: float = 1.0,
        channel_id: str = DEFAULT_CHANNEL_ID,
        channel_secret: str = DEFAULT_CHANNEL_SECRET,
        stateless_token_ttl: float = STATELESS_TOKEN_TTL,
        clock: Callable[[], float] = time.time,
    ):
        self.access_token = access_token
        self.channel_id = channel_id
        self.channel_secret = channel_secret
        self.stateless_token_ttl = stateless_token_ttl
        #: Stateless tokens issued at ``/oauth2/v3/token``: token -> expiry (epoch seconds).
        self.stateless_tokens: dict[str, float] = {}
        self._revoked: set[str] = set()
        self.quota = quota
        self.usage = 0
        self.reply_token_ttl = reply_token_ttl
        self.clock = clock
        limits = dict(RATE_LIMITS)
        for name, value in (rate_limits or {}).items():
            if name not in ROUTES:
                raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(ROUTES)}")
            limits[name] = value if isinstance(value, Limit) else Limit(value)
        self._buckets: dict[str, TokenBucket] = buckets_for(limits, scale=rate_scale)
        self.users: dict[str, User] = {}
        self.delivered: list[Delivery] = []
        self.undelivered: list[Delivery] = []
        self.inboxes: dict[str, list[Delivery]] = defaultdict(list)
        self.rich_menu_links: dict[str, str] = {}
        #: account-link tokens issued: token -> (user id, expires at, used)
        self.link_tokens: dict[str, list] = {}
        self.requests: list[RecordedRequest] = []
        #: per endpoint, the arrivals so far, for the stats a benchmark polls (kept as requests
        #: are recorded: a poll costs nothing however many requests there were)
        self._traffic: dict[str, _Traffic] = defaultdict(_Traffic)
        self._faults: list[_Fault] = []
        self._reply_tokens: dict[str, _ReplyToken] = {}
        self._accepted: dict[str, _Accepted] = {}
        self._message_ids = itertools.count(480000000000000001)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url = ""

    # ----------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        """The aiohttp application (bodies up to 8 MB are read so that 413 is LINE's own)."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        for name, (method, path) in ROUTES.items():
            app.router.add_route(method, path, self._handle, name=name)
        app.router.add_post(TOKEN_PATH, self._issue_stateless_token)
        app.router.add_get("/_emulator/stats", self._admin_stats)
        app.router.add_post("/_emulator/users", self._admin_add_user)
        app.router.add_post("/_emulator/reply_tokens", self._admin_reply_token)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); return and remember the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        bound_port = sockets[0].getsockname()[1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving (requests still hanging in injected faults are cut)."""
        if self._runner is not None:
            self._stopping.set()
            await self._runner.cleanup()
            self._runner = None
            self._stopping.clear()

    async def _hang(self, delay: float | None) -> None:
        """Sleep ``delay`` seconds, or less if the emulator stops meanwhile."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay or 0)

    # ----------------------------------------------------------------- controls

    def add_user(
        self, user_id: str, display_name: str, language: str | None = "ja", blocked: bool = False, **profile: str | None
    ) -> User:
        """Make ``user_id`` a friend of the channel (or a blocker, with ``blocked=True``)."""
        user = User(user_id, display_name, language, blocked, **profile)
        self.users[user_id] = user
        return user

    def block(self, user_id: str, blocked: bool = True) -> None:
        """Mark a known user as having blocked (or unblocked) the channel."""
        self.users[user_id].blocked = blocked

    def revoke_token(self, token: str | None = None) -> None:
        """Make ``token`` (default: the long-lived ``access_token``) answer 401 from now on,
        as a token revoked in the LINE Developers Console does."""
        self._revoked.add(self.access_token if token is None else token)

    def restore_token(self, token: str | None = None) -> None:
        """Accept a revoked ``token`` again (default: the long-lived ``access_token``)."""
        self._revoked.discard(self.access_token if token is None else token)

    def expire_stateless_tokens(self) -> None:
        """Every stateless token issued so far expires now (401 from the next request)."""
        for token in self.stateless_tokens:
            self.stateless_tokens[token] = min(self.stateless_tokens[token], self.clock())

    def token_valid(self, token: str) -> bool:
        """Whether ``token`` authorizes Messaging API requests now."""
        if token in self._revoked:
            return False
        if token == self.access_token:
            return True
        expires = self.stateless_tokens.get(token)
        return expires is not None and expires > self.clock()

    def set_rate_limit(self, endpoint: str, rate: float, capacity: float | None = None) -> None:
        """Limit ``endpoint`` to ``rate`` requests per second, bursts of ``capacity``
        (default: one second's worth), starting with a full bucket."""
        self._buckets[self._endpoint_of(endpoint)] = TokenBucket(rate, capacity)

    def issue_reply_token(self, user_id: str, ttl: float | None = None) -> str:
        """A fresh single-use reply token for ``user_id``, valid ``ttl`` seconds (default 60)."""
        token = secrets.token_hex(16)
        ttl = self.reply_token_ttl if ttl is None else ttl
        self._reply_tokens[token] = _ReplyToken(user_id, self.clock() + ttl)
        return token

    def inject(
        self,
        endpoint: str,
        status: int = 500,
        count: int = 1,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests to ``endpoint`` (a name or a path) with ``status``
        without processing them. ``body`` defaults to LINE's message for that status."""
        self._faults.append(_Fault(self._endpoint_of(endpoint), "status", count, status, body, dict(headers or {})))

    def inject_timeout(self, endpoint: str, count: int = 1, delay: float = 5.0) -> None:
        """Hang the next ``count`` requests for ``delay`` seconds, then drop the connection
        without processing them (the client should time out first)."""
        self._faults.append(_Fault(self._endpoint_of(endpoint), "timeout", count, delay=delay))

    def inject_lost_response(self, endpoint: str, count: int = 1, delay: float | None = None) -> None:
        """Process the next ``count`` requests normally (deliver, bill, accept the retry key),
        then lose the answer: drop the connection at once, or after hanging ``delay`` seconds."""
        self._faults.append(_Fault(self._endpoint_of(endpoint), "lost", count, delay=delay))

    def inbox(self, user_id: str) -> list[dict[str, Any]]:
        """Every message object ``user_id`` received, in order."""
        return [m for d in self.inboxes.get(user_id, []) for m in d.messages]

    def requests_to(self, endpoint: str, status: int | None = None) -> list[RecordedRequest]:
        """Recorded requests to ``endpoint`` (name or path), optionally only with ``status``."""
        name = self._endpoint_of(endpoint)
        return [r for r in self.requests if r.endpoint == name and (status is None or r.status == status)]

    def busiest_second(self, endpoint: str, seconds: float = 1.0) -> int:
        """The most requests to ``endpoint`` that arrived within any ``seconds`` (a sliding
        window over the arrival times): what a client pacing itself at LINE's limit must keep
        at or under that limit."""
        name = self._endpoint_of(endpoint)
        traffic = self._traffic.get(name)
        if traffic is None:
            return 0
        if seconds == traffic.seconds and traffic.in_order:
            return traffic.best
        return busiest([r.time for r in self.requests if r.endpoint == name], seconds)

    def status_counts(self) -> dict[str, Counter[int | None]]:
        """Per endpoint, how many requests got each status (None: connection dropped)."""
        out: dict[str, Counter[int | None]] = defaultdict(Counter)
        for r in self.requests:
            out[r.endpoint][r.status] += 1
        return dict(out)

    def _record(self, record: RecordedRequest) -> None:
        self.requests.append(record)
        self._traffic[record.endpoint].arrive(record.time)

    def _endpoint_of(self, endpoint: str) -> str:
        if endpoint in ROUTES or endpoint == "token":
            return endpoint
        if endpoint == TOKEN_PATH:
            return "token"
        for name, (_, template) in ROUTES.items():
            pattern = re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, endpoint):
                return name
        raise ValueError(f"unknown endpoint {endpoint!r}; known: {', '.join(ROUTES)}")

    def _take_fault(self, endpoint: str) -> _Fault | None:
        for fault in self._faults:
            if fault.endpoint == endpoint and fault.remaining > 0:
                fault.remaining -= 1
                return fault
        return None

    # ----------------------------------------------------------------- request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info.route.name or ""
        body = await request.read()
        record = RecordedRequest(
            request.method,
            request.path,
            endpoint,
            str(uuid.uuid4()),
            request.headers.get("X-Line-Retry-Key"),
            body,
            self.clock(),
        )
        self._record(record)
        headers = {"x-line-request-id": record.request_id}
        lost: _Fault | None = None
        try:
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not self.token_valid(given[len("Bearer ") :]):
                raise _Answer(401, AUTH_FAILED_MESSAGE)
            fault = self._take_fault(endpoint)
            if fault is not None and fault.kind == "status":
                record.note = "fault"
                message = _DEFAULT_FAULT_MESSAGES.get(fault.status, "Injected fault")
                return self._json(
                    record, fault.status, dict(fault.body or {"message": message}), {**headers, **fault.headers}
                )
            if fault is not None and fault.kind == "timeout":
                record.note = "timeout"
                await self._hang(fault.delay)
                return self._drop(request)
            lost = fault
            if not self._buckets[endpoint].try_take():
                raise _Answer(429, RATE_LIMIT_MESSAGE)
            if len(body) > MAX_BODY_BYTES:
                raise _Answer(413, "Request Entity Too Large")
            status, payload, extra = self._process(request, endpoint, body, record)
            headers.update(extra)
        except _Answer as answer:
            status, payload = answer.status, answer.body
            headers.update(answer.headers)
        if lost is not None:
            record.note = "lost"
            if lost.delay:
                await self._hang(lost.delay)
            return self._drop(request)
        return self._json(record, status, payload, headers)

    @staticmethod
    def _json(record: RecordedRequest, status: int, payload: Any, headers: Mapping[str, str]) -> web.Response:
        record.status = status
        return web.json_response(payload, status=status, headers=headers)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the connection without an answer (the client sees a disconnect)."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response()

    def _process(
        self, request: web.Request, endpoint: str, body: bytes, record: RecordedRequest
    ) -> tuple[int, Any, dict[str, str]]:
        retry_key = record.retry_key
        if retry_key is not None:
            if endpoint not in RETRY_KEY_ENDPOINTS:
                raise _Answer(400, "The X-Line-Retry-Key header is not supported by this API")
            if not UUID_RE.fullmatch(retry_key):
                raise _Answer(400, "The value for the 'X-Line-Retry-Key' header is invalid")
            accepted = self._accepted.get(retry_key)
            if accepted is not None and accepted.expires_at > self.clock():
                extra = {"sentMessages": accepted.sent_messages} if accepted.sent_messages else None
                raise _Answer(
                    409,
                    RETRY_KEY_ACCEPTED_MESSAGE,
                    extra=extra,
                    headers={"x-line-accepted-request-id": accepted.request_id},
                )
        data: Any = None
        if request.method in ("POST", "PUT") and endpoint not in ("richmenu_link", "link_token"):
            data = self._parse_json(request, body)
        handler = getattr(self, f"_do_{endpoint}")
        status, payload = handler(request, data, record)
        if retry_key is not None:
            self._accepted[retry_key] = _Accepted(
                record.request_id,
                self.clock() + RETRY_KEY_TTL,
                payload.get("sentMessages") if isinstance(payload, dict) else None,
            )
        return status, payload, {}

    @staticmethod
    def _parse_json(request: web.Request, body: bytes) -> dict[str, Any]:
        ctype = request.content_type
        if ctype != "application/json":
            raise _Answer(415, f"The content type, {ctype}, is not supported")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            line, col = getattr(exc, "lineno", 1), getattr(exc, "colno", 1)
            raise _Answer(400, f"The request body could not be parsed as JSON (line: {line}, column: {col})") from None
        if not isinstance(data, dict):
            raise _Answer(400, "The request body could not be parsed as JSON (line: 1, column: 1)")
        return data

    # ----------------------------------------------------------------- sending

    def _deliverable(self, user_id: str) -> bool:
        user = self.users.get(user_id)
        return user is not None and not user.blocked

    def _deliver(
        self,
        recipients: list[str],
        messages: list[dict[str, Any]],
        endpoint: str,
        record: RecordedRequest,
        *,
        billed: bool,
    ) -> None:
        """Record one accepted send: bill deliverable recipients, fail on the monthly quota."""
        reachable = [u for u in recipients if self._deliverable(u)]
        if billed and self.quota is not None and self.usage + len(reachable) > self.quota:
            raise _Answer(429, MONTHLY_LIMIT_MESSAGE)
        if billed:
            self.usage += len(reachable)
        now = self.clock()
        for user_id in recipients:
            delivery = Delivery(user_id, messages, endpoint, record.request_id, record.retry_key, now)
            if self._deliverable(user_id):
                self.delivered.append(delivery)
                self.inboxes[user_id].append(delivery)
            else:
                self.undelivered.append(delivery)

    def _sent_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, str]]:
        sent = []
        for msg in messages:
            entry = {"id": str(next(self._message_ids))}
            if msg.get("type") in ("text", "sticker"):
                entry["quoteToken"] = secrets.token_urlsafe(24)
            sent.append(entry)
        return sent

    def _do_push(self, request: web.Request, data: dict[str, Any], record: RecordedRequest) -> tuple[int, Any]:
        details = []
        if not isinstance(data.get("to"), str) or not data["to"]:
            details.append({"message": "Must not be empty", "property": "to"})
        details += validate_messages(data)
        if details:
            raise _body_error(details)
        self._deliver([data["to"]], data["messages"], "push", record, billed=True)
        return 200, {"sentMessages": self._sent_messages(data["messages"])}

    def _do_multicast(self, request: web.Request, data: dict[str, Any], record: RecordedRequest) -> tuple[int, Any]:
        check = _Checker()
        to = check.items(data, "to", "", 1, L.MAX_MULTICAST)
        if any(not isinstance(u, str) or not u for u in to):
            check.error("to", "Must be an array of user IDs")
        details = check.details + validate_messages(data)
        if details:
            raise _body_error(details)
        self._deliver(list(dict.fromkeys(to)), data["messages"], "multicast", record, billed=True)
        return 200, {}

    def _do_broadcast(self, request: web.Request, data: dict[str, Any], record: RecordedRequest) -> tuple[int, Any]:
        details = validate_messages(data)
        if details:
            raise _body_error(details)
        self._deliver(list(self.users), data["messages"], "broadcast", record, billed=True)
        return 200, {}

    def _do_narrowcast(self, request: web.Request, data: dict[str, Any], record: RecordedRequest) -> tuple[int, Any]:
        """Minimal narrowcast: every friend (recipient and filter objects are not evaluated)."""
        details = validate_messages(data)
        if details:
            raise _body_error(details)
        self._deliver(list(self.users), data["messages"], "narrowcast", record, billed=True)
        return 202, {}

    def _do_reply(self, request: web.Request, data: dict[str, Any], record: RecordedRequest) -> tuple[int, Any]:
        details = []
        token = data.get("replyToken")
        if not isinstance(token, str) or not token:
            details.append({"message": "Must not be empty", "property": "replyToken"})
        details += validate_messages(data)
        if details:
            raise _body_error(details)
        entry = self._reply_tokens.get(token)
        if entry is None or entry.used or entry.expires_at <= self.clock():
            raise _Answer(400, INVALID_REPLY_TOKEN_MESSAGE)
        entry.used = True
        self._deliver([entry.user_id], data["messages"], "reply", record, billed=False)
        return 200, {"sentMessages": self._sent_messages(data["messages"])}

    def _validate_only(self, data: dict[str, Any]) -> tuple[int, Any]:
        details = validate_messages(data)
        if details:
            raise _body_error(details)
        return 200, {}

    def _do_validate_push(self, request: web.Request, data: dict[str, Any], record: RecordedRequest) -> tuple[int, Any]:
        return self._validate_only(data)

    _do_validate_multicast = _do_validate_push
    _do_validate_reply = _do_validate_push

    # ----------------------------------------------------------------- reading

    def _do_quota(self, request: web.Request, data: None, record: RecordedRequest) -> tuple[int, Any]:
        if self.quota is None:
            return 200, {"type": "none"}
        return 200, {"type": "limited", "value": self.quota}

    def _do_quota_consumption(self, request: web.Request, data: None, record: RecordedRequest) -> tuple[int, Any]:
        return 200, {"totalUsage": self.usage}

    def _do_profile(self, request: web.Request, data: None, record: RecordedRequest) -> tuple[int, Any]:
        user = self.users.get(request.match_info["userId"])
        if user is None or user.blocked:
            raise _Answer(404, "Not found")
        profile = {
            "displayName": user.display_name,
            "userId": user.user_id,
            "language": user.language,
            "pictureUrl": user.picture_url,
            "statusMessage": user.status_message,
        }
        return 200, {k: v for k, v in profile.items() if v is not None}

    # ----------------------------------------------------------------- account link

    #: Seconds a link token is valid (LINE: 10 minutes, single use).
    LINK_TOKEN_TTL = 600.0

    def _do_link_token(self, request: web.Request, data: None, record: RecordedRequest) -> tuple[int, Any]:
        user_id = request.match_info["userId"]
        if user_id not in self.users:
            raise _Answer(400, "The user ID is invalid")
        token = secrets.token_urlsafe(24)
        self.link_tokens[token] = [user_id, self.clock() + self.LINK_TOKEN_TTL, False]
        return 200, {"linkToken": token}

    def account_link_event(self, link_token: str, nonce: str, *, timestamp_ms: int | None = None) -> dict[str, Any]:
        """What LINE does at ``https://access.line.me/dialog/bot/accountLink?linkToken=&nonce=``:
        the ``accountLink`` webhook event it then sends (``link.result`` ``ok``, or ``failed``
        for a used or expired token). An unknown token raises KeyError."""
        user_id, expires, used = self.link_tokens[link_token]
        ok = not used and self.clock() <= expires
        self.link_tokens[link_token][2] = True
        return {
            "type": "accountLink",
            "mode": "active",
            "timestamp": int(self.clock() * 1000) if timestamp_ms is None else timestamp_ms,
            "source": {"type": "user", "userId": user_id},
            "webhookEventId": uuid.uuid4().hex.upper()[:26],
            "deliveryContext": {"isRedelivery": False},
            "replyToken": uuid.uuid4().hex,
            "link": {"result": "ok" if ok else "failed", "nonce": nonce},
        }

    # ----------------------------------------------------------------- rich menus

    def _do_richmenu_link(self, request: web.Request, data: None, record: RecordedRequest) -> tuple[int, Any]:
        self.rich_menu_links[request.match_info["userId"]] = request.match_info["richMenuId"]
        return 200, {}

    def _do_richmenu_unlink(self, request: web.Request, data: None, record: RecordedRequest) -> tuple[int, Any]:
        self.rich_menu_links.pop(request.match_info["userId"], None)
        return 200, {}

    def _do_richmenu_bulk_link(
        self, request: web.Request, data: dict[str, Any], record: RecordedRequest
    ) -> tuple[int, Any]:
        check = _Checker()
        menu = data.get("richMenuId")
        if not isinstance(menu, str) or not menu:
            check.error("richMenuId", "Must not be empty")
        users = check.items(data, "userIds", "", 1, L.MAX_BULK_LINK)
        if check.details:
            raise _body_error(check.details)
        for user_id in users:
            self.rich_menu_links[user_id] = menu
        return 202, {}

    # ----------------------------------------------------------------- channel access tokens

    async def _issue_stateless_token(self, request: web.Request) -> web.Response:
        """``POST /oauth2/v3/token`` with ``grant_type=client_credentials``, ``client_id`` and
        ``client_secret`` (form-encoded), as LINE answers it: ``{"token_type": "Bearer",
        "access_token": ..., "expires_in": 900}``; wrong credentials -> 400
        ``{"error": "invalid_client", ...}``."""
        record = RecordedRequest(
            request.method, request.path, "token", str(uuid.uuid4()), None, await request.read(), self.clock()
        )
        self._record(record)
        if request.content_type != "application/x-www-form-urlencoded":
            record.status = 400
            return web.json_response(
                {"error": "invalid_request", "error_description": "unsupported content type"}, status=400
            )
        form = await request.post()
        fault = self._take_fault("token")
        if fault is not None:
            record.note = "fault"
            record.status = fault.status
            return web.json_response(dict(fault.body or {"error": "server_error"}), status=fault.status)
        if form.get("grant_type") != "client_credentials":
            record.status = 400
            return web.json_response(
                {"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"},
                status=400,
            )
        if form.get("client_id") != self.channel_id or form.get("client_secret") != self.channel_secret:
            record.status = 400
            return web.json_response(
                {"error": "invalid_client", "error_description": "invalid client_id or client_secret"}, status=400
            )
        token = secrets.token_urlsafe(32)
        self.stateless_tokens[token] = self.clock() + self.stateless_token_ttl
        record.status = 200
        return web.json_response(
            {"token_type": "Bearer", "access_token": token, "expires_in": int(self.stateless_token_ttl)}
        )

    # ----------------------------------------------------------------- admin (standalone use)
    # Unauthenticated helpers under /_emulator/ for a process that runs the emulator as a
    # subprocess: counts, adding friends, issuing reply tokens.

    def stats(self) -> dict[str, Any]:
        """Counts for a process that cannot read the emulator's memory."""
        counts = self.status_counts()
        return {
            "delivered": len(self.delivered),
            "undelivered": len(self.undelivered),
            "usage": self.usage,
            "quota": self.quota,
            "requests": {ep: {str(s): n for s, n in c.items()} for ep, c in counts.items()},
            "busiest_second": {ep: self.busiest_second(ep) for ep in counts if ep != "token"},
            "seconds": {ep: self.span(ep) for ep in counts if ep != "token"},
        }

    def span(self, endpoint: str) -> float:
        """Seconds from the first request to ``endpoint`` to the last (0 with fewer than two)."""
        traffic = self._traffic.get(self._endpoint_of(endpoint))
        return traffic.last - traffic.first if traffic is not None and traffic.count > 1 else 0.0

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    @staticmethod
    async def _admin_user_id(request: web.Request) -> tuple[dict[str, Any], str]:
        try:
            data = await request.json()
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("userId"), str):
            raise web.HTTPBadRequest(text='{"message": "userId is required"}', content_type="application/json")
        return data, data["userId"]

    async def _admin_add_user(self, request: web.Request) -> web.Response:
        data, user_id = await self._admin_user_id(request)
        user = self.add_user(
            user_id, str(data.get("displayName", user_id)), data.get("language", "ja"), bool(data.get("blocked", False))
        )
        return web.json_response({"userId": user.user_id})

    async def _admin_reply_token(self, request: web.Request) -> web.Response:
        _, user_id = await self._admin_user_id(request)
        return web.json_response({"replyToken": self.issue_reply_token(user_id)})


class _Traffic:
    """One endpoint's arrivals: how many, the first and the latest, and the most within any
    ``seconds`` so far (a sliding window, exact while arrivals come in time order; a clock set
    back turns it off and :meth:`Emulator.busiest_second` counts them all again)."""

    seconds = 1.0

    def __init__(self) -> None:
        self.count, self.best, self.in_order = 0, 0, True
        self.first = self.last = 0.0
        self._window: deque[float] = deque()

    def arrive(self, at: float) -> None:
        if self.count and at < self.last:
            self.in_order = False
        self.first = at if not self.count else min(self.first, at)
        self.last = max(self.last, at) if self.count else at
        self.count += 1
        if self.in_order:
            window = self._window
            window.append(at)
            while at - window[0] >= self.seconds:
                window.popleft()
            self.best = max(self.best, len(window))


def busiest(times: list[float], seconds: float = 1.0) -> int:
    """The most of ``times`` within any ``seconds`` (a sliding window): what LINE's per-second
    limits bound."""
    times, best, start = sorted(times), 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def synthetic_user_id(index: int) -> str:
    """A LINE-shaped user id (``U`` + 32 hex digits) for generated friends."""
    return f"U{index:032x}"


@contextlib.contextmanager
def run_in_thread(host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[Emulator]:
    """Run an :class:`Emulator` on its own event loop in a thread, for synchronous code.

    The controls (``add_user``, ``inject``, ``issue_reply_token`` ...) and the recorded state
    may be used from the calling thread.
    """
    emulator = Emulator(**options)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="line-emulator", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(emulator.start(host, port), loop).result(timeout=10)
        yield emulator
    finally:
        asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.testing.line_emulator",
        description="A LINE Messaging API emulator on loopback, for tests and benchmarks.",
        epilog="Example: python -m engine.testing.line_emulator --port 8089 --user U1=Hanako --quota 200",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--token", default=DEFAULT_ACCESS_TOKEN, help="the channel access token to accept (default: %(default)s)"
    )
    parser.add_argument("--quota", type=int, default=None, help="monthly message limit (default: unlimited)")
    parser.add_argument(
        "--user", action="append", default=[], metavar="ID[=NAME]", help="a friend of the channel (repeatable)"
    )
    parser.add_argument(
        "--friends",
        type=int,
        default=0,
        metavar="N",
        help="add N generated friends (ids U + the index in 32 hex digits)",
    )
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiply LINE's rate limits (default: 1)")
    parser.add_argument("--reply-token-ttl", type=float, default=L.REPLY_TOKEN_TTL)
    args = parser.parse_args(argv)
    emulator = Emulator(
        access_token=args.token, quota=args.quota, rate_scale=args.rate_scale, reply_token_ttl=args.reply_token_ttl
    )
    for spec in args.user:
        user_id, _, name = spec.partition("=")
        emulator.add_user(user_id, name or user_id)
    for i in range(args.friends):
        emulator.add_user(synthetic_user_id(i), f"Friend {i}")

    async def serve() -> None:
        url = await emulator.start(args.host, args.port)
        print(f"LINE emulator listening on {url} (token {args.token!r})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await emulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
