"""LINE's limits and wire constants, in one place.

Everything linerules knows about the LINE Messaging API as numbers and fixed strings lives
here: LINE's rate limits per endpoint, how many objects a request holds and how many users a
multicast reaches, the message object limits (text counted in UTF-16 code units, as LINE
counts), the retry key's form and life, and the messages LINE answers errors with. The rule
checks, the engine, the dispatcher and the LINE emulator all read them from this module, so a
change in LINE's documentation is one edit here (source: developers.line.biz, Messaging API
reference).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

# --------------------------------------------------------------------------- requests

#: Message objects in one push, multicast, reply, broadcast or narrowcast request.
MAX_OBJECTS = 5
#: User ids in one multicast request.
MAX_MULTICAST = 500
#: Users in one rich menu bulk link request.
MAX_BULK_LINK = 500
#: Largest request body LINE accepts (413 above it).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: ``X-Line-Retry-Key`` is a UUID (hex, 8-4-4-4-12) ...
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
#: ... kept by LINE for 24 hours from the first attempt.
RETRY_KEY_TTL = 24 * 3600.0
#: A reply token is single use and valid about a minute after its webhook arrived.
REPLY_TOKEN_TTL = 60.0
#: Stateless channel access tokens live 15 minutes.
STATELESS_TOKEN_TTL = 900.0
#: LINE's monthly message quota follows the calendar month in Japan.
QUOTA_ZONE = ZoneInfo("Asia/Tokyo")

# --------------------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class Limit:
    """``count`` requests per ``per`` seconds (LINE states limits per second or per hour)."""

    count: float
    per: float = 1.0

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.count / self.per


_PER_HOUR = 3600.0

#: LINE Messaging API rate limits per channel and endpoint (the emulator's endpoint names).
RATE_LIMITS: Mapping[str, Limit] = {
    "push": Limit(2000),
    "reply": Limit(2000),
    "multicast": Limit(200),
    "broadcast": Limit(60, _PER_HOUR),
    "narrowcast": Limit(60, _PER_HOUR),
    "validate_push": Limit(2000),
    "validate_multicast": Limit(2000),
    "validate_reply": Limit(2000),
    "profile": Limit(2000),
    "quota": Limit(2000),
    "quota_consumption": Limit(2000),
    "richmenu_link": Limit(2000),
    "richmenu_unlink": Limit(2000),
    "richmenu_bulk_link": Limit(2000),
    "link_token": Limit(2000),
}

#: Endpoint name -> (HTTP method, path template), as on api.line.me.
ROUTES: Mapping[str, tuple[str, str]] = {
    "push": ("POST", "/v2/bot/message/push"),
    "multicast": ("POST", "/v2/bot/message/multicast"),
    "reply": ("POST", "/v2/bot/message/reply"),
    "broadcast": ("POST", "/v2/bot/message/broadcast"),
    "narrowcast": ("POST", "/v2/bot/message/narrowcast"),
    "validate_push": ("POST", "/v2/bot/message/validate/push"),
    "validate_multicast": ("POST", "/v2/bot/message/validate/multicast"),
    "validate_reply": ("POST", "/v2/bot/message/validate/reply"),
    "quota": ("GET", "/v2/bot/message/quota"),
    "quota_consumption": ("GET", "/v2/bot/message/quota/consumption"),
    "profile": ("GET", "/v2/bot/profile/{userId}"),
    "richmenu_link": ("POST", "/v2/bot/user/{userId}/richmenu/{richMenuId}"),
    "richmenu_unlink": ("DELETE", "/v2/bot/user/{userId}/richmenu"),
    "richmenu_bulk_link": ("POST", "/v2/bot/richmenu/bulk/link"),
    "link_token": ("POST", "/v2/bot/user/{userId}/linkToken"),
}
#: LINE's token endpoint for stateless channel access tokens (form-encoded, no bearer token).
TOKEN_PATH = "/oauth2/v3/token"
#: Endpoints that accept ``X-Line-Retry-Key``; every other one answers 400 when it is sent.
RETRY_KEY_ENDPOINTS = frozenset({"push", "multicast", "broadcast", "narrowcast"})

# --------------------------------------------------------------------------- answers

#: LINE's 429 body when the monthly message quota is spent.
MONTHLY_LIMIT_MESSAGE = "You have reached your monthly limit."
#: LINE's 429 body when an endpoint's rate limit is exceeded.
RATE_LIMIT_MESSAGE = "The API rate limit has been exceeded. Try again later."
#: LINE's 400 body for a reply token that was used already or has expired.
INVALID_REPLY_TOKEN_MESSAGE = "Invalid reply token"
#: LINE's 409 body for a retry key it already accepted.
RETRY_KEY_ACCEPTED_MESSAGE = "The retry key is already accepted"
#: LINE's 401 body for a wrong or expired channel access token.
AUTH_FAILED_MESSAGE = "Authentication failed. Confirm that the access token in the authorization header is valid."

# --------------------------------------------------------------------------- message objects

MESSAGE_TYPES = ("text", "sticker", "image", "video", "audio", "location", "imagemap", "template", "flex", "coupon")
ACTION_TYPES = (
    "postback",
    "message",
    "uri",
    "datetimepicker",
    "camera",
    "cameraRoll",
    "location",
    "richmenuswitch",
    "clipboard",
)
TEMPLATE_TYPES = ("buttons", "confirm", "carousel", "image_carousel")
#: URI schemes an action may open.
URI_SCHEMES = ("https", "http", "line", "tel")

TEXT_LIMIT = 5000
#: A coupon message's ``deliveryTag`` (the route shown in LINE Official Account Manager).
DELIVERY_TAG_LIMIT = 30
ALT_TEXT_LIMIT = 1500
MEDIA_URL_LIMIT = 2000
URI_LIMIT = 1000
DATA_LIMIT = 300
LABEL_LIMIT = 20
FLEX_LABEL_LIMIT = 40
IMAGE_CAROUSEL_LABEL_LIMIT = 12
LOCATION_TEXT_LIMIT = 100
TEMPLATE_TITLE_LIMIT = 40
BUTTONS_TEXT_LIMIT = 160
#: A buttons template's or carousel column's text with an image or title.
FRAMED_TEXT_LIMIT = 60
CAROUSEL_TEXT_LIMIT = 120
CONFIRM_TEXT_LIMIT = 240
BUTTONS_ACTIONS = 4
CAROUSEL_ACTIONS = 3
CAROUSEL_COLUMNS = 10
IMAGEMAP_ACTIONS = 50
QUICK_REPLY_ITEMS = 13
#: Flex sizes in bytes of compact UTF-8 JSON ("30 KB", "50 KB"; counted as 1,000 bytes each,
#: the stricter reading, so nothing the checks pass can be refused by LINE).
FLEX_BUBBLE_BYTES = 30_000
FLEX_CAROUSEL_BYTES = 50_000
FLEX_CAROUSEL_BUBBLES = 12


def utf16_len(text: str) -> int:
    """Length as LINE counts it: UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def payload_json(value: object) -> str:
    """Message objects as the store writes them and the deliver stage hashes and splices them:
    compact JSON, keys sorted, not ASCII-escaped (the one definition: a payload encoded once
    while rendering is stored as it is)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
