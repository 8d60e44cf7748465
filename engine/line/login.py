"""Friend-add source (流入経路) through LINE Login.

A follow webhook does not say where the friend came from. So each source gets its own tracking
URL, ``<base_url>/join/qr=shipping``, that sends the visitor through LINE Login with
``bot_prompt=aggressive`` (the add-friend prompt). LINE Login redirects back to
``<base_url>/login/callback`` with a code; the runner exchanges it at the token endpoint, reads
the user id from the profile endpoint and records the source for that friend, so the rule
condition ``followed via qr=shipping`` holds for them.

The ``state`` parameter carries the source, a nonce and the time, signed with HMAC-SHA256
(key: the login channel secret), so a callback cannot be forged or replayed after
:data:`STATE_MAX_AGE` seconds. The user id is the Messaging API's only when the login channel
and the Messaging API channel belong to the same provider (see docs/operations.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from engine.language.ir import NAME_RE

AUTHORIZE_URL = "https://access.line.me/oauth2/v2.1/authorize"
API_URL = "https://api.line.me"
STATE_MAX_AGE = 600
SOURCE_RE = re.compile(rf"^{NAME_RE.pattern}=[\w.\-]+$")


class LoginError(Exception):
    """The login flow cannot go on; the message is safe to show to the visitor."""


@dataclass(frozen=True)
class LoginFlow:
    """Settings of the LINE Login channel used for /join/<source> and /login/callback."""

    channel_id: str
    channel_secret: str
    base_url: str  # public base URL of the runner, no trailing slash
    authorize_url: str = AUTHORIZE_URL  # LINE_LOGIN_AUTHORIZE_URL
    api_url: str = API_URL  # LINE_LOGIN_API_ENDPOINT: token and profile endpoints

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url.rstrip('/')}/login/callback"

    def sign_state(self, source: str, now: int) -> str:
        """``base64url(json).hex(hmac)`` carrying the source, a nonce and the issue time."""
        payload = json.dumps(
            {"s": source, "n": secrets.token_hex(8), "t": now}, separators=(",", ":"), ensure_ascii=False
        )
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"{body}.{self._mac(body)}"

    def verify_state(self, state: str, now: int) -> str:
        """The source carried by a state made by :meth:`sign_state`; raises LoginError."""
        body, _, mac = state.partition(".")
        if not body or not hmac.compare_digest(mac, self._mac(body)):
            raise LoginError("the login link is invalid; open the original link again")
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if not 0 <= now - int(payload["t"]) <= STATE_MAX_AGE:
            raise LoginError("the login link has expired; open the original link again")
        return str(payload["s"])

    def authorize_redirect(self, source: str, now: int) -> str:
        """The LINE Login authorize URL for a visitor who came in through ``source``."""
        if not SOURCE_RE.match(source):
            raise LoginError(f"`{source}` is not a source; use key=value, e.g. qr=shipping")
        query = {
            "response_type": "code",
            "client_id": self.channel_id,
            "redirect_uri": self.redirect_uri,
            "state": self.sign_state(source, now),
            "scope": "profile openid",
            "bot_prompt": "aggressive",
        }
        return f"{self.authorize_url}?{urlencode(query)}"

    async def user_id(self, session: aiohttp.ClientSession, code: str) -> str:
        """Exchange an authorization code for an access token and read the user id."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.channel_id,
            "client_secret": self.channel_secret,
        }
        api = self.api_url.rstrip("/")
        async with session.post(f"{api}/oauth2/v2.1/token", data=form) as resp:
            if resp.status != 200:
                raise LoginError(f"LINE Login refused the code (HTTP {resp.status})")
            token = (await resp.json())["access_token"]
        async with session.get(f"{api}/v2/profile", headers={"Authorization": f"Bearer {token}"}) as resp:
            if resp.status != 200:
                raise LoginError(f"LINE Login profile request failed (HTTP {resp.status})")
            return str((await resp.json())["userId"])

    def _mac(self, body: str) -> str:
        return hmac.new(self.channel_secret.encode(), body.encode(), hashlib.sha256).hexdigest()
