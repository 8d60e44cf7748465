"""``messages.yaml``: what the rules send, as LINE message objects, checked against LINE's limits.

::

    greeting: "友だち追加ありがとうございます！"          # shorthand: one text message
    coupon15:                                          # a list of LINE message objects
      - type: text
        text: "{{ friend.display_name }}さん、初回15%OFFクーポンです"
      - type: template
        altText: 初回15%OFFクーポン
        template: {type: buttons, text: ..., actions: [...]}

:func:`load_messages` never raises: problems are :class:`Diagnostic` values at the key or value
at fault. :func:`check_objects` is the one set of LINE limit checks; the loader runs it on the
objects as written and ``render.render_message`` runs it again on what is actually sent.
Every string holding ``{{`` or ``{%`` is a Liquid template, parsed here once and cached.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import yaml

if TYPE_CHECKING:
    from liquid import BoundTemplate

from engine.i18n import E, _, join
from engine.line.limits import (  # noqa: F401
    ACTION_TYPES,
    ALT_TEXT_LIMIT,
    BUTTONS_ACTIONS,
    BUTTONS_TEXT_LIMIT,
    CAROUSEL_ACTIONS,
    CAROUSEL_COLUMNS,
    CAROUSEL_TEXT_LIMIT,
    CONFIRM_TEXT_LIMIT,
    DATA_LIMIT,
    DELIVERY_TAG_LIMIT,
    FLEX_BUBBLE_BYTES,
    FLEX_CAROUSEL_BUBBLES,
    FLEX_CAROUSEL_BYTES,
    FLEX_LABEL_LIMIT,
    FRAMED_TEXT_LIMIT,
    IMAGE_CAROUSEL_LABEL_LIMIT,
    IMAGEMAP_ACTIONS,
    LABEL_LIMIT,
    LOCATION_TEXT_LIMIT,
    MAX_OBJECTS,
    MEDIA_URL_LIMIT,
    MESSAGE_TYPES,
    QUICK_REPLY_ITEMS,
    TEMPLATE_TITLE_LIMIT,
    TEMPLATE_TYPES,
    TEXT_LIMIT,
    URI_LIMIT,
    URI_SCHEMES,
    utf16_len,
)

from . import ir
from .diagnostics import Diagnostic, Span, dedupe, did_you_mean
from .ir import NAME_RE
from .yamlpos import YAML_1_1_BOOLEANS, Path, YamlFile

TEMPLATE_VARIABLES = ("friend", "rule", "sale", "event")


# ----------------------------------------------------------------------------- Liquid


def __getattr__(name: str) -> Any:
    """``LIQUID`` and ``MessageEnvironment`` live in :mod:`engine.language.liquidenv`, imported on first
    use: a ``validate`` whose templates were all checked before never imports Liquid."""
    if name in ("LIQUID", "MessageEnvironment"):
        from . import liquidenv

        return getattr(liquidenv, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_template(value: str) -> bool:
    """Whether a string holds Liquid markup (and is rendered per friend)."""
    return "{{" in value or "{%" in value


@functools.lru_cache(maxsize=8192)
def compile_template(source: str) -> BoundTemplate:
    """The parsed template for ``source``, compiled once. Raises LiquidError."""
    from .liquidenv import LIQUID

    return LIQUID.from_string(source)


#: What :func:`template_facts` found, kept between processes in the user's cache folder:
#: a template's facts depend only on its text and on the installed Liquid.
_FACTS_FILE = "templates.json"
_FACTS_LIMIT = 20_000
_facts: dict[str, list] | None = None
_facts_new = False


def _liquid_stamp() -> str:
    """Which Liquid is installed and how this package sets it up, found without importing it."""
    from .cache import module_stamp

    return module_stamp("liquid", "engine.language.liquidenv")


def template_facts(source: str) -> tuple[tuple[str, int, int] | None, list[tuple[str, int]], list[tuple[str, int]]]:
    """(error as (message, line, column) or None, unknown filters, global variables, each with
    the index of its first use) of one template (:func:`engine.language.liquidenv.analyse`), from the
    cache when this text was checked before, else from Liquid."""
    global _facts, _facts_new
    import hashlib

    if _facts is None:
        from .cache import read_json

        kept = read_json(_FACTS_FILE)
        _facts = {}
        if isinstance(kept, dict) and kept.get("liquid") == _liquid_stamp() and isinstance(kept.get("templates"), dict):
            _facts = kept["templates"]
    key = hashlib.sha256(source.encode("utf-8")).hexdigest()
    found = _facts.get(key)
    if not (isinstance(found, list) and len(found) == 3):
        from .liquidenv import analyse

        error, filters, variables = analyse(source)
        found = _facts[key] = [list(error) if error else None, [list(x) for x in filters], [list(x) for x in variables]]
        _facts_new = True
    error = tuple(found[0]) if found[0] else None
    return error, [tuple(x) for x in found[1]], [tuple(x) for x in found[2]]


def _keep_facts() -> None:
    """Write what :func:`template_facts` learnt (the newest entries, up to the limit)."""
    global _facts_new
    if not _facts_new or _facts is None:
        return
    from .cache import write_json

    items = list(_facts.items())[-_FACTS_LIMIT:]
    write_json(_FACTS_FILE, {"liquid": _liquid_stamp(), "templates": dict(items)})
    _facts_new = False


# ----------------------------------------------------------------------------- field types

#: Fields of LINE message objects whose value is always a text (so a number or true/false
#: there is a value YAML read differently from what was meant).
TEXT_FIELDS = frozenset(
    (
        "text",
        "couponId",
        "deliveryTag",
        "altText",
        "label",
        "data",
        "displayText",
        "uri",
        "url",
        "linkUri",
        "previewUrl",
        "originalContentUrl",
        "previewImageUrl",
        "thumbnailImageUrl",
        "imageUrl",
        "baseUrl",
        "desktop",
        "title",
        "address",
        "color",
        "backgroundColor",
        "separatorColor",
        "borderColor",
        "imageBackgroundColor",
        "size",
        "aspectRatio",
        "aspectMode",
        "imageAspectRatio",
        "imageSize",
        "layout",
        "align",
        "gravity",
        "weight",
        "style",
        "decoration",
        "position",
        "margin",
        "spacing",
        "paddingAll",
        "paddingTop",
        "paddingBottom",
        "paddingStart",
        "paddingEnd",
        "offsetTop",
        "offsetBottom",
        "offsetStart",
        "offsetEnd",
        "cornerRadius",
        "borderWidth",
        "maxWidth",
        "maxHeight",
        "lineSpacing",
        "adjustMode",
        "direction",
        "mode",
        "initial",
        "max",
        "min",
        "richMenuAliasId",
        "clipboardText",
        "productId",
        "emojiId",
        "inputOption",
        "fillInText",
        "justifyContent",
        "alignItems",
    )
)
#: Fields that hold a colour, ``#RRGGBB`` or ``#RRGGBBAA``.
COLOR_FIELDS = frozenset(("color", "backgroundColor", "separatorColor", "borderColor"))
COLOR_RE = re.compile(r"#[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{2})?")
#: A Flex ``aspectRatio``: ``20:13``, ``1.91:1``.
RATIO_RE = re.compile(r"\d+(?:\.\d+)?:\d+(?:\.\d+)?")
#: Flex ``size`` keywords (text, icon, span, image, bubble) and pixel / percent sizes.
SIZE_WORD_LIST = (
    "xxs",
    "xs",
    "sm",
    "md",
    "lg",
    "xl",
    "xxl",
    "3xl",
    "4xl",
    "5xl",
    "full",
    "nano",
    "micro",
    "deca",
    "hecto",
    "kilo",
    "mega",
    "giga",
)
SIZE_WORDS = frozenset(SIZE_WORD_LIST)
SIZE_RE = re.compile(r"\d+(?:\.\d+)?(?:px|%)")
#: Fields whose value is true or false.
BOOL_FIELDS = frozenset(("wrap", "scaling", "animated", "separator"))
#: Fields whose value is a number.
NUMBER_FIELDS = frozenset(("flex", "maxLines", "latitude", "longitude", "duration", "index", "x", "y"))


# ----------------------------------------------------------------------------- limit checks


@dataclass(frozen=True)
class Problem:
    """One broken limit or rule, at ``path`` inside a message's list of objects.

    ``path`` starts with the object's index; ``empty`` marks a field with no value (the loader
    words its help after the line as written); ``quote``: the suffix of a value to quote (the
    loader quotes it as written, `007` as "007", not as the number YAML read).
    """

    path: Path
    message: str
    help: str | None = None
    empty: bool = False
    quote: str | None = None


class _Checker:
    """Walks LINE message objects and collects :class:`Problem` values.

    With ``as_written``, strings holding Liquid markup skip the URL scheme checks (their real
    value is only known after rendering); length limits are always checked on the text given.
    """

    def __init__(self, as_written: bool):
        self.as_written = as_written
        self.problems: list[Problem] = []

    def add(
        self, path: Path, message: str, help: str | None = None, *, empty: bool = False, quote: str | None = None
    ) -> None:
        self.problems.append(Problem(path, message, help, empty, quote))

    # -------------------------------------------------------------- field helpers

    def mapping(self, value: Any, path: Path, what: str) -> bool:
        if isinstance(value, dict):
            return True
        self.add(path, E("LR503", "{what} must be a mapping of fields", what=what))
        return False

    def required(self, obj: dict, path: Path, what: str, *keys: str) -> bool:
        missing = [k for k in keys if k not in obj]  # a key with no value is reported as such
        if missing:
            self.add(
                path, E("LR503", "{what} needs {fields}", what=what, fields=join((f"`{k}`" for k in missing), " and "))
            )
        return not missing

    def text(
        self, obj: dict, path: Path, key: str, limit: int | None = None, limit_why: str = "", nonempty: bool = False
    ) -> str | None:
        """A text field's value, checked for type and length when present (``nonempty``: LINE
        refuses the whole request when it is empty)."""
        value = obj.get(key)
        if value is None or isinstance(value, (dt.date, dt.time)):  # dates: see json_values
            return None
        if not isinstance(value, str):
            if key not in TEXT_FIELDS:  # those are reported by json_values
                self.add(path + (key,), E("LR503", "`{key}` must be text", key=key), help=_("quote the value"))
            return None
        if nonempty and value == "":
            self.add(
                path + (key,),
                E("LR503", "`{key}` is empty; LINE refuses a message with an empty text", key=key),
                help=_("write the text, or leave the message out")
                if self.as_written
                else _("the template rendered nothing for this friend: give it a default, e.g. `| default: '...'`"),
            )
            return value
        if limit is not None and utf16_len(value) > limit:
            self.add(
                path + (key,),
                E(
                    "LR503",
                    "`{key}` is {length} characters long; LINE allows at most {limit}{limit_why}",
                    key=key,
                    length=f"{utf16_len(value):,}",
                    limit=f"{limit:,}",
                    limit_why=limit_why,
                ),
                help=_("LINE counts in UTF-16 units: emoji and some rare kanji count as 2"),
            )
        return value

    def url(self, obj: dict, path: Path, key: str, *, media: bool) -> None:
        """A URL field: media URLs must be https (≤ 2,000); URI actions allow http(s), line,
        tel (≤ 1,000)."""
        limit = MEDIA_URL_LIMIT if media else URI_LIMIT
        value = self.text(obj, path, key, limit)
        if value is None or (self.as_written and is_template(value)):
            return
        scheme = urlsplit(value).scheme.lower() if "://" in value or value.startswith("tel:") else ""
        if media and scheme != "https":
            self.add(
                path + (key,),
                E("LR503", "`{key}` must be an https:// URL", key=key),
                help=_("LINE only loads images and videos over HTTPS"),
            )
        elif not media and scheme not in URI_SCHEMES:
            self.add(path + (key,), E("LR503", "`{key}` must start with https://, http://, line:// or tel:", key=key))

    def count(self, value: Any, path: Path, what: str, low: int, high: int) -> list | None:
        if not isinstance(value, list):
            self.add(path, E("LR503", "{what} must be a list", what=what))
            return None
        if not low <= len(value) <= high:
            span = _("exactly {low}", low=low) if low == high else _("{low} to {high}", low=low, high=high)
            self.add(
                path,
                E("LR503", "{what} has {count} entries; LINE allows {span}", what=what, count=len(value), span=span),
            )
        return value

    # -------------------------------------------------------------- objects

    def objects(self, objects: Sequence[Any]) -> None:
        if not 1 <= len(objects) <= MAX_OBJECTS:
            where = (MAX_OBJECTS,) if len(objects) > MAX_OBJECTS else ()
            self.add(
                where,
                E(
                    "LR503",
                    "a message may hold 1 to {limit} objects, this one has {count}",
                    limit=MAX_OBJECTS,
                    count=len(objects),
                ),
                help=_("LINE sends at most 5 objects at once; split it into two messages"),
            )
        for i, obj in enumerate(objects):
            self.json_values(obj, (i,))
            if self.mapping(obj, (i,), _("a message object")):
                self.message(obj, (i,))

    def json_values(self, value: Any, path: Path) -> None:
        """Everything sent must be JSON of the type LINE expects for each field: no empty
        values (an unquoted `#` starts a comment), texts where LINE wants texts, true/false
        and numbers where it wants those."""
        if isinstance(value, dict):
            for k, v in value.items():
                if v is None:
                    self.add(path + (k,), E("LR503", "`{k}` has no value", k=k), empty=True)
                    continue
                self.field_type(k, v, path + (k,))
                self.json_values(v, path + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.json_values(v, path + (i,))
        elif isinstance(value, (dt.date, dt.time)):
            self.add(path, E("LR503", "this value is read as a date; quote it to send it as text"))

    def field_type(self, key: Any, value: Any, path: Path) -> None:
        """A value of the wrong type for a LINE field, in the words of the fix. (A text is
        checked here only for the fields of :data:`_SHAPED_FIELDS`: keep the two in step.)"""
        if key in TEXT_FIELDS and isinstance(value, (bool, int, float)):
            shown = json.dumps(value)
            unit = "px" if key == "size" and not isinstance(value, bool) else ""
            self.add(
                path,
                E("LR503", "`{key}` must be text, not {shown}", key=key, shown=shown),
                help=_('quote it: {key}: "{shown}"', key=key, shown=shown + unit),
                quote=unit,
            )
        elif key in BOOL_FIELDS and not isinstance(value, bool):
            old = YAML_1_1_BOOLEANS.get(str(value).lower())
            meant = None if old is None else ("true" if old else "false")
            self.add(
                path,
                E("LR503", "`{key}` must be true or false, not `{value}`", key=key, value=value),
                help=_("YAML 1.2 reads `{value}` as a text: write `{meant}`", value=value, meant=meant)
                if meant
                else _("write `true` or `false`"),
            )
        elif key in NUMBER_FIELDS and (isinstance(value, bool) or not isinstance(value, (int, float))):
            self.add(
                path,
                E("LR503", "`{key}` must be a number, not `{value}`", key=key, value=value),
                help=_("write the number without quotes"),
            )
        elif isinstance(value, str) and "{" not in value:
            self.field_shape(key, value, path)

    def field_shape(self, key: Any, value: str, path: Path) -> None:
        """Texts LINE reads in a fixed shape (colours, ratios, sizes): a value of another shape
        passes YAML and the templates but makes LINE refuse the whole push."""
        if key in COLOR_FIELDS and not COLOR_RE.fullmatch(value):
            bare = re.fullmatch(r"[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{2})?", value)
            self.add(
                path,
                E("LR504", '`{key}` must be a colour like "#e86a8d", not `{value}`', key=key, value=value),
                help=_('write it with `#` and in quotes: {key}: "#{value}"', key=key, value=value)
                if bare
                else _("LINE takes `#` and six hexadecimal digits (eight with transparency)"),
            )
        elif key == "aspectRatio" and not RATIO_RE.fullmatch(value):
            pair = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[/x×*：:]\s*(\d+(?:\.\d+)?)\s*", value)
            meant = f"{pair[1]}:{pair[2]}" if pair else "20:13"
            self.add(
                path,
                E("LR504", '`aspectRatio` must be width:height like "20:13", not `{value}`', value=value),
                help=_('write the two numbers with a `:` between them, in quotes: aspectRatio: "{meant}"', meant=meant),
            )
        elif key == "size" and not (value in SIZE_WORDS or SIZE_RE.fullmatch(value)):
            number = re.fullmatch(r"\d+(?:\.\d+)?", value)
            self.add(
                path,
                E("LR504", "`size` must be a size word such as `md` or pixels like `12px`, not `{value}`", value=value),
                help=_('write size: "{value}px"', value=value)
                if number
                else _("one of {words}, or `12px`", words=join(f"`{w}`" for w in SIZE_WORD_LIST)),
            )

    def message(self, obj: dict, path: Path) -> None:
        kind = obj.get("type")
        if kind not in MESSAGE_TYPES:
            if kind is None:
                self.add(
                    path,
                    E("LR503", "a message object needs a `type`"),
                    help=_("one of {names}", names=", ".join(MESSAGE_TYPES)),
                )
            else:
                self.add(
                    path + ("type",),
                    E("LR503", "unknown message type `{kind}`", kind=kind),
                    help=did_you_mean(str(kind), MESSAGE_TYPES),
                )
            return
        getattr(self, f"msg_{kind}")(obj, path)
        if "quickReply" in obj:
            self.quick_reply(obj["quickReply"], path + ("quickReply",))

    def msg_text(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("a text message"), "text")
        written = obj.get("text")
        template = self.as_written and isinstance(written, str) and is_template(written)
        text = self.text(obj, path, "text", TEXT_LIMIT, nonempty=not template)
        emojis = obj.get("emojis")
        if self.as_written and text and is_template(text) and isinstance(emojis, list):
            first = min(i for i in (text.find("{{"), text.find("{%")) if i >= 0)
            if any(isinstance(e, dict) and isinstance(e.get("index"), int) and e["index"] > first for e in emojis):
                self.add(
                    path + ("text",),
                    E("LR503", "a template placeholder comes before an emoji `$`"),
                    help=_(
                        "LINE places emojis by position, which a rendered name would move; put the emojis before any {{ ... }}"
                    ),
                )

    def msg_sticker(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("a sticker message"), "packageId", "stickerId")

    def msg_coupon(self, obj: dict, path: Path) -> None:
        """A coupon made in LINE (``POST /v2/bot/coupon`` or LINE Official Account Manager),
        sent by its id."""
        self.required(obj, path, _("a coupon message"), "couponId")
        self.text(obj, path, "couponId", nonempty=True)
        self.text(obj, path, "deliveryTag", DELIVERY_TAG_LIMIT)

    def msg_image(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("an image message"), "originalContentUrl", "previewImageUrl")
        self.url(obj, path, "originalContentUrl", media=True)
        self.url(obj, path, "previewImageUrl", media=True)

    def msg_video(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("a video message"), "originalContentUrl", "previewImageUrl")
        self.url(obj, path, "originalContentUrl", media=True)
        self.url(obj, path, "previewImageUrl", media=True)

    def msg_audio(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("an audio message"), "originalContentUrl", "duration")
        self.url(obj, path, "originalContentUrl", media=True)

    def msg_location(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("a location message"), "title", "address", "latitude", "longitude")
        self.text(obj, path, "title", LOCATION_TEXT_LIMIT)
        self.text(obj, path, "address", LOCATION_TEXT_LIMIT)

    def msg_imagemap(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("an imagemap message"), "baseUrl", "altText", "baseSize", "actions")
        self.url(obj, path, "baseUrl", media=True)
        self.text(obj, path, "altText", ALT_TEXT_LIMIT)
        actions = obj.get("actions")
        if actions is not None and self.count(actions, path + ("actions",), _("`actions`"), 1, IMAGEMAP_ACTIONS):
            for i, action in enumerate(actions):
                ap = path + ("actions", i)
                if not self.mapping(action, ap, _("an imagemap action")):
                    continue
                kind = action.get("type")
                if kind == "uri":
                    self.required(action, ap, _("a uri action"), "linkUri")
                    self.url(action, ap, "linkUri", media=False)
                elif kind == "message":
                    self.required(action, ap, _("a message action"), "text")
                    self.text(action, ap, "text", 400)
                elif kind == "clipboard":
                    self.required(action, ap, _("a clipboard action"), "clipboardText")
                    self.text(action, ap, "clipboardText", 1000)
                else:
                    self.add(
                        ap + ("type",),
                        E("LR503", "unknown imagemap action type `{kind}`", kind=kind),
                        help=_("one of `uri`, `message`, `clipboard`"),
                    )
                self.text(action, ap, "label", 100)

    def msg_template(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("a template message"), "altText", "template")
        self.text(obj, path, "altText", ALT_TEXT_LIMIT)
        tpl = obj.get("template")
        tp = path + ("template",)
        if tpl is None or not self.mapping(tpl, tp, _("`template`")):
            return
        kind = tpl.get("type")
        if kind == "buttons":
            self.buttons(tpl, tp)
        elif kind == "confirm":
            self.required(tpl, tp, _("a confirm template"), "text", "actions")
            self.text(tpl, tp, "text", CONFIRM_TEXT_LIMIT)
            self.actions(tpl, tp, 2, 2, _("a confirm template"))
        elif kind == "carousel":
            self.carousel(tpl, tp)
        elif kind == "image_carousel":
            self.required(tpl, tp, _("an image carousel template"), "columns")
            columns = self.count(tpl.get("columns"), tp + ("columns",), _("`columns`"), 1, CAROUSEL_COLUMNS)
            for i, col in enumerate(columns or ()):
                cp = tp + ("columns", i)
                if self.mapping(col, cp, _("a column")):
                    self.required(col, cp, _("an image carousel column"), "imageUrl", "action")
                    self.url(col, cp, "imageUrl", media=True)
                    if col.get("action") is not None:
                        self.action(col["action"], cp + ("action",), IMAGE_CAROUSEL_LABEL_LIMIT, False)
        else:
            self.add(
                tp + ("type",) if kind is not None else tp,
                E("LR503", "unknown template type `{kind}`", kind=kind)
                if kind is not None
                else E("LR503", "`template` needs a `type`"),
                help=did_you_mean(str(kind), TEMPLATE_TYPES)
                if kind
                else _("one of {names}", names=", ".join(TEMPLATE_TYPES)),
            )

    def buttons(self, tpl: dict, tp: Path) -> None:
        self.required(tpl, tp, _("a buttons template"), "text", "actions")
        framed = tpl.get("thumbnailImageUrl") is not None or tpl.get("title") is not None
        self.text(
            tpl,
            tp,
            "text",
            FRAMED_TEXT_LIMIT if framed else BUTTONS_TEXT_LIMIT,
            _(" with an image or title") if framed else "",
        )
        self.text(tpl, tp, "title", TEMPLATE_TITLE_LIMIT)
        self.url(tpl, tp, "thumbnailImageUrl", media=True)
        self.actions(tpl, tp, 1, BUTTONS_ACTIONS, _("a buttons template"))
        if tpl.get("defaultAction") is not None:
            self.action(tpl["defaultAction"], tp + ("defaultAction",), LABEL_LIMIT, False)

    def carousel(self, tpl: dict, tp: Path) -> None:
        self.required(tpl, tp, _("a carousel template"), "columns")
        columns = self.count(tpl.get("columns"), tp + ("columns",), _("`columns`"), 1, CAROUSEL_COLUMNS)
        counts: list[tuple[int, int]] = []
        for i, col in enumerate(columns or ()):
            cp = tp + ("columns", i)
            if not self.mapping(col, cp, _("a column")):
                continue
            self.required(col, cp, _("a carousel column"), "text", "actions")
            framed = col.get("thumbnailImageUrl") is not None or col.get("title") is not None
            self.text(
                col,
                cp,
                "text",
                FRAMED_TEXT_LIMIT if framed else CAROUSEL_TEXT_LIMIT,
                _(" with an image or title") if framed else "",
            )
            self.text(col, cp, "title", TEMPLATE_TITLE_LIMIT)
            self.url(col, cp, "thumbnailImageUrl", media=True)
            acts = self.actions(col, cp, 1, CAROUSEL_ACTIONS, _("a carousel column"))
            if acts is not None:
                counts.append((i, len(acts)))
        if counts and any(n != counts[0][1] for _, n in counts):
            i, n = next((i, n) for i, n in counts if n != counts[0][1])
            self.add(
                tp + ("columns", i, "actions"),
                E("LR503", "this column has {n} actions but the first has {counts}", n=n, counts=counts[0][1]),
                help=_("LINE needs the same number of actions in every carousel column"),
            )

    def actions(self, obj: dict, path: Path, low: int, high: int, what: str) -> list | None:
        if obj.get("actions") is None:
            return None
        actions = self.count(obj["actions"], path + ("actions",), _("`actions` of {what}", what=what), low, high)
        for i, action in enumerate(actions or ()):
            self.action(action, path + ("actions", i), LABEL_LIMIT, True)
        return actions

    def action(self, action: Any, path: Path, label_limit: int, label_required: bool) -> None:
        if not self.mapping(action, path, _("an action")):
            return
        kind = action.get("type")
        if kind not in ACTION_TYPES:
            self.add(
                path + ("type",) if kind is not None else path,
                E("LR503", "unknown action type `{kind}`", kind=kind)
                if kind is not None
                else E("LR503", "an action needs a `type`"),
                help=did_you_mean(str(kind), ACTION_TYPES)
                if kind
                else _("one of {names}", names=", ".join(ACTION_TYPES)),
            )
            return
        if label_required:
            self.required(action, path, _("a {kind} action", kind=kind), "label")
        self.text(action, path, "label", label_limit)
        if kind == "uri":
            self.required(action, path, _("a uri action"), "uri")
            self.url(action, path, "uri", media=False)
            alt = action.get("altUri")
            if alt is not None and self.mapping(alt, path + ("altUri",), _("`altUri`")):
                self.url(alt, path + ("altUri",), "desktop", media=False)
        elif kind == "postback":
            self.required(action, path, _("a postback action"), "data")
            for key in ("data", "displayText", "text"):
                self.text(action, path, key, DATA_LIMIT)
        elif kind == "message":
            self.required(action, path, _("a message action"), "text")
            self.text(action, path, "text", DATA_LIMIT)
        elif kind == "datetimepicker":
            self.required(action, path, _("a datetimepicker action"), "data", "mode")
            self.text(action, path, "data", DATA_LIMIT)
        elif kind == "richmenuswitch":
            self.required(action, path, _("a richmenuswitch action"), "richMenuAliasId", "data")
            self.text(action, path, "data", DATA_LIMIT)
        elif kind == "clipboard":
            self.required(action, path, _("a clipboard action"), "clipboardText")
            self.text(action, path, "clipboardText", 1000)

    def msg_flex(self, obj: dict, path: Path) -> None:
        self.required(obj, path, _("a flex message"), "altText", "contents")
        self.text(obj, path, "altText", ALT_TEXT_LIMIT)
        contents = obj.get("contents")
        cp = path + ("contents",)
        if contents is None or not self.mapping(contents, cp, _("`contents`")):
            return
        kind = contents.get("type")
        if kind == "bubble":
            self.flex_bytes(contents, cp, "bubble")
        elif kind == "carousel":
            bubbles = self.count(
                contents.get("contents"), cp + ("contents",), _("the carousel's `contents`"), 1, FLEX_CAROUSEL_BUBBLES
            )
            self.flex_bytes(contents, cp, "carousel")
            for i, bubble in enumerate(bubbles or ()):
                if isinstance(bubble, dict) and bubble.get("type") != "bubble":
                    self.add(cp + ("contents", i), E("LR503", "a flex carousel holds only bubbles (`type: bubble`)"))
        else:
            self.add(
                cp + ("type",) if kind is not None else cp,
                E("LR503", "flex `contents` must be a `bubble` or a `carousel`"),
            )
            return
        self.flex_parts(contents, cp)

    def flex_bytes(self, contents: dict, path: Path, kind: str) -> None:
        """A bubble in at most :data:`FLEX_BUBBLE_BYTES` of compact UTF-8 JSON, a carousel in
        :data:`FLEX_CAROUSEL_BYTES`."""
        limit = FLEX_BUBBLE_BYTES if kind == "bubble" else FLEX_CAROUSEL_BYTES
        size = json_bytes(contents)
        if size <= limit:
            return
        if kind == "bubble":
            self.add(
                path,
                E(
                    "LR503",
                    "this bubble is {size} bytes of JSON; LINE allows at most {limit}",
                    size=f"{size:,}",
                    limit=f"{limit:,}",
                ),
            )
        else:
            self.add(
                path,
                E(
                    "LR503",
                    "this carousel is {size} bytes of JSON; LINE allows at most {limit}",
                    size=f"{size:,}",
                    limit=f"{limit:,}",
                ),
            )

    def flex_parts(self, value: Any, path: Path) -> None:
        """Actions (labels ≤ 40) and media URLs anywhere inside flex contents."""
        if isinstance(value, list):
            for i, v in enumerate(value):
                self.flex_parts(v, path + (i,))
            return
        if not isinstance(value, dict):
            return
        written = value.get("text")
        if value.get("type") == "text" and isinstance(written, str) and not (self.as_written and is_template(written)):
            self.text(value, path, "text", nonempty=True)
        if value.get("type") in ("image", "video") and "url" in value:
            self.url(value, path, "url", media=True)
        if value.get("type") == "video" and "previewUrl" in value:
            self.url(value, path, "previewUrl", media=True)
        for key, v in value.items():
            if key == "action" and v is not None:
                self.action(v, path + (key,), FLEX_LABEL_LIMIT, False)
            elif isinstance(v, (dict, list)):
                self.flex_parts(v, path + (key,))

    def quick_reply(self, qr: Any, path: Path) -> None:
        if not self.mapping(qr, path, _("`quickReply`")) or not self.required(qr, path, _("`quickReply`"), "items"):
            return
        items = self.count(qr["items"], path + ("items",), _("quick reply `items`"), 1, QUICK_REPLY_ITEMS)
        for i, item in enumerate(items or ()):
            ip = path + ("items", i)
            if not self.mapping(item, ip, _("a quick reply item")):
                continue
            self.required(item, ip, _("a quick reply item"), "action")
            if item.get("imageUrl") is not None:
                self.url(item, ip, "imageUrl", media=True)
            if item.get("action") is not None:
                self.action(item["action"], ip + ("action",), LABEL_LIMIT, True)


def check_objects(objects: Sequence[Any], *, as_written: bool = False) -> list[Problem]:
    """Every broken LINE limit in one message's list of objects (empty: all good)."""
    checker = _Checker(as_written)
    checker.objects(objects)
    return checker.problems


def json_bytes(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (how LINE sizes flex contents)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode())


class FieldChecks(NamedTuple):
    """The checks of one message whose fields substitution changes, found once
    (:func:`plan_checks`) and run per friend on those fields alone (:func:`fields_pass`).

    ``problems``: what the fixed parts break (whatever the friend); ``fields``: (index of the
    changing field, a call of the one check it needs) in the order the checker makes them;
    ``sizes``: per flex bubble or carousel holding changing fields, (its limit, its size in
    bytes as planned, (index, that field's JSON bytes as planned) of each)."""

    problems: list[Problem]
    fields: list[tuple[int, int | None, str, Callable[[_Checker, Any], None]]]
    sizes: list[tuple[int, int, list[tuple[int, int]]]]


#: Fields whose value :meth:`_Checker.field_type` checks when it is a text: for any other
#: field a text (or a list) always passes, whatever it says.
_SHAPED_FIELDS = BOOL_FIELDS | NUMBER_FIELDS | COLOR_FIELDS | {"aspectRatio", "size"}


class _Planner(_Checker):
    """Checks the fixed parts of a message like :class:`_Checker` does after rendering, and
    writes down the checks of the fields at ``changing`` paths instead of making them."""

    def __init__(self, objects: Sequence[Any], changing: dict[Path, int]):
        super().__init__(as_written=False)
        self.tree = objects
        self.changing = changing
        #: (index, a length that surely passes, a prefix a URL must have for that, the check)
        self.fields: list[tuple[int, int | None, str, Callable[[_Checker, Any], None]]] = []
        self.sizes: list[tuple[int, int, list[tuple[int, int]]]] = []

    def text(
        self, obj: dict, path: Path, key: str, limit: int | None = None, limit_why: str = "", nonempty: bool = False
    ) -> str | None:
        i = self.changing.get(path + (key,))
        if i is None:
            return super().text(obj, path, key, limit, limit_why, nonempty)
        self.fields.append((i, limit, "", lambda c, v: c.text({key: v}, path, key, limit, limit_why, nonempty)))
        return None

    def url(self, obj: dict, path: Path, key: str, *, media: bool) -> None:
        i = self.changing.get(path + (key,))
        if i is None:
            return super().url(obj, path, key, media=media)
        limit = MEDIA_URL_LIMIT if media else URI_LIMIT
        self.fields.append((i, limit, "https://", lambda c, v: c.url({key: v}, path, key, media=media)))
        return None

    def field_type(self, key: Any, value: Any, path: Path) -> None:
        i = self.changing.get(path)
        if i is None:
            return super().field_type(key, value, path)
        if key in _SHAPED_FIELDS:
            self.fields.append((i, None, "", lambda c, v: c.field_type(key, v, path)))
        return None

    def flex_bytes(self, contents: dict, path: Path, kind: str) -> None:
        inside = [(p, i) for p, i in self.changing.items() if p[: len(path)] == path]
        if not inside:
            return super().flex_bytes(contents, path, kind)
        limit = FLEX_BUBBLE_BYTES if kind == "bubble" else FLEX_CAROUSEL_BYTES
        parts = []
        for p, i in inside:
            value: Any = self.tree
            for step in p:
                value = value[step]
            parts.append((i, json_bytes(value)))
        self.sizes.append((limit, json_bytes(contents), parts))
        return None


def plan_checks(objects: Sequence[Any], changing: dict[Path, int]) -> FieldChecks:
    """The checks of ``objects`` (as they are sent, apart from the fields at the paths of
    ``changing``, each numbered) split into what the fixed parts break and the checks to make
    per friend on the changing fields. Sound as long as no changing field is a ``type`` (which
    decides which checks apply) and every changing value is present."""
    planner = _Planner(objects, changing)
    planner.objects(objects)
    return FieldChecks(planner.problems, planner.fields, planner.sizes)


def fields_pass(checks: FieldChecks, values: Sequence[Any], encoded: Sequence[str]) -> bool:
    """Whether the changing fields' ``values`` (``encoded``: each as JSON) pass their checks:
    then :func:`check_objects` finds nothing in the objects holding them, when
    ``checks.problems`` is empty."""
    checker = None
    for i, surely, prefix, check in checks.fields:
        value = values[i]
        # LINE counts UTF-16 units: at most two per character
        if (
            surely is not None
            and type(value) is str
            and value
            and len(value) * 2 <= surely
            and value.startswith(prefix)
        ):
            continue
        if checker is None:
            checker = _Checker(as_written=False)
        check(checker, value)
        if checker.problems:
            return False
    for limit, size, parts in checks.sizes:
        for i, planned in parts:
            size += len(encoded[i].encode()) - planned
        if size > limit:
            return False
    return True


# ----------------------------------------------------------------------------- loading


@dataclass
class MessagesFile:
    """What ``messages.yaml`` holds: the valid ``definitions``, the names defined with an error
    (``broken``: they exist for the rules, so a rule sending one is not told it is unknown),
    and whether the file could be read as YAML at all (``readable``: when not, no message
    name can be checked)."""

    definitions: dict[str, ir.MessageDef]
    broken: frozenset[str]
    readable: bool
    diagnostics: list[Diagnostic]


def load_messages(path: str, text: str) -> tuple[dict[str, ir.MessageDef], list[Diagnostic]]:
    """Read ``messages.yaml`` into message definitions; an empty file defines none.
    Diagnostics come sorted."""
    m = read_messages(path, text)
    return m.definitions, m.diagnostics


def read_messages(path: str, text: str) -> MessagesFile:
    """Read ``messages.yaml``, keeping the names of broken definitions too."""
    f = YamlFile(path, text)
    broken: set[str] = set()
    defs = _definitions(f, broken)
    _keep_facts()
    readable = isinstance(f.root, yaml.MappingNode) or (f.empty and not any(d.is_error for d in f.diagnostics))
    return MessagesFile(defs, frozenset(broken), readable, dedupe(f.diagnostics))


def _definitions(f: YamlFile, broken: set[str]) -> dict[str, ir.MessageDef]:
    """The valid definitions of the file, reporting the rest (their names go to ``broken``)."""
    root = f.root
    defs: dict[str, ir.MessageDef] = {}
    if f.empty:
        return defs
    if not isinstance(root, yaml.MappingNode):
        f.error(
            f.span(root),
            E("LR500", "messages.yaml must map message names to messages"),
            help=_('e.g. greeting: "友だち追加ありがとうございます！"'),
        )
        return defs
    for name, key_node, value_node in f.items(root):
        if not NAME_RE.fullmatch(name):
            f.error(
                f.span(key_node),
                E("LR500", "`{name}` is not a valid message name", name=name),
                help=_("a name starts with a letter and continues with letters, digits, _ or -"),
            )
            continue
        defn = _definition(f, name, value_node)
        if defn is not None:
            defs[name] = defn
        else:
            broken.add(name)
    return defs


def _definition(f: YamlFile, name: str, node: yaml.Node) -> ir.MessageDef | None:
    """One name's message, or None after reporting what is wrong with it."""
    errors = sum(d.is_error for d in f.diagnostics)
    value = f.plain(node, (name,))
    if isinstance(value, str):
        objects: list = [{"type": "text", "text": value}]
    elif isinstance(value, dict):
        objects = [value]
    elif isinstance(value, list):
        objects = value
    else:
        if sum(d.is_error for d in f.diagnostics) == errors:
            if value is None:
                f.error(
                    f.span_at((name,), key=True),
                    E("LR500", "message `{name}` has no value", name=name),
                    help=f.empty_value_help((name,), name),
                )
            else:
                f.error(
                    f.span(node),
                    E("LR500", "message `{name}` must be text or a list of LINE message objects", name=name),
                    help=_('e.g. greeting: "こんにちは" or a list of `- type: text` objects'),
                )
        return None
    if sum(d.is_error for d in f.diagnostics) > errors:
        return None  # the YAML itself is broken here: LINE checks would only echo it
    for problem in check_objects(objects, as_written=True):
        where = _yaml_path(name, value, problem.path)
        if problem.empty:
            f.error(f.span_at(where, key=True), problem.message, f.empty_value_help(where, str(where[-1])))
            continue
        written = f.nodes.get(where) if problem.quote is not None else None
        if isinstance(written, yaml.ScalarNode):  # quoted as written: `0012` stays "0012"
            help_ = _('quote it: {key}: "{shown}"', key=where[-1], shown=written.value + problem.quote)
            f.error(f.span_at(where), problem.message, help_)
        else:
            f.error(f.span_at(where), problem.message, problem.help)
    _check_liquid(f, value, (name,))
    if sum(d.is_error for d in f.diagnostics) > errors:
        return None
    return ir.MessageDef(name, tuple(_normalise(o) for o in objects), span=f.span(node))


def _yaml_path(name: str, value: Any, path: Path) -> Path:
    """Where a path inside the object list was written: the shorthand is one text node, and a
    single mapping stands for the list's only object."""
    if isinstance(value, str):
        return (name,)
    if isinstance(value, dict):
        return (name,) + path[1:]
    return (name,) + path


def _normalise(obj: dict) -> dict:
    """Sticker ids written as numbers become the strings LINE expects."""
    if obj.get("type") == "sticker":
        return {k: str(v) if k in ("packageId", "stickerId") else v for k, v in obj.items()}
    return obj


#: The tags of the templates (python-liquid's standard ones), for "did you mean".
_LIQUID_TAGS = (
    "if", "elsif", "else", "endif", "unless", "endunless", "case", "when", "endcase", "for", "endfor",
    "break", "continue", "cycle", "assign", "capture", "endcapture", "increment", "decrement",
    "comment", "endcomment", "raw", "endraw", "liquid", "echo",
)  # fmt: skip


def _liquid_said(message: str, source: str) -> tuple[Any, Any, int | None] | None:
    """The commonest template mistakes in the user's words: ``(message, help, index in the
    text to point at, or None)``; None for the others (python-liquid's own words are shown)."""
    if message.startswith("expected '}}'"):  # `{{ friend.display_name }様`
        index = source.rfind("{{")
        return (
            E("LR501", "template error: a `{{` is not closed by `}}`"),
            _("close it with `}}`, e.g. {{ friend.display_name }}"),
            index if index >= 0 else None,
        )
    m = re.fullmatch(r"unexpected tag '([^']*)'", message)
    if m is not None:  # `{% endiff %}`, `{% endif %}` after a `for`
        tag = m.group(1)
        index = source.find(tag, source.find("{%"))
        if tag in ("include", "render"):
            help_ = _("a message's templates cannot include other files: write the text in the message")
        elif tag in _LIQUID_TAGS:
            help_ = _(
                "`{tag}` does not close the tag that is open here: close each `{{% if %}}` with `{{% endif %}}`, each `{{% for %}}` with `{{% endfor %}}`",
                tag=tag,
            )
        else:
            help_ = did_you_mean(tag, _LIQUID_TAGS)
        return (
            E("LR501", "template error: unknown or misplaced tag `{tag}`", tag=tag),
            help_,
            index if index >= 0 else None,
        )
    m = re.fullmatch(r"expected tag (\w+), found end of expression", message)
    if m is not None:  # `{% if x %}a` and no `{% endif %}`
        return (
            E("LR501", "template error: `{{% {tag} %}}` is missing", tag=m.group(1)),
            _("close the tag that starts here with `{{% {tag} %}}`", tag=m.group(1)),
            source.find("{%") if "{%" in source else None,
        )
    return None


def _check_liquid(f: YamlFile, value: Any, path: Path) -> None:
    """Parse every template string once (warming the cache), reporting errors at its line."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_liquid(f, v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_liquid(f, v, path + (i,))
    elif isinstance(value, str) and is_template(value):
        node = f.nodes[path]
        error, unknown_filters, variables = template_facts(value)
        if error is not None:
            message, line, column = error
            where = f.string_line_span(node, line - 1, column) if line else f.span(node)
            said = _liquid_said(message, value)
            if said is not None:
                text, help_, index = said
                f.error(_template_span(f, node, value, index) if index is not None else where, text, help=help_)
                return
            f.error(
                where,
                E("LR501", "template error: {message}", message=message),
                help=_("see docs/messages.md for the template syntax"),
            )
            return
        if unknown_filters:
            from .liquidenv import LIQUID

            for flt, index in unknown_filters:
                f.error(
                    _template_span(f, node, value, index),
                    E("LR501", "unknown template filter `{flt}`", flt=flt),
                    help=did_you_mean(flt, LIQUID.filters),
                )
        for var, index in variables:
            if var not in TEMPLATE_VARIABLES:
                f.warning(
                    _template_span(f, node, value, index),
                    E("LR502", "unknown template variable `{var}` renders as nothing", var=var),
                    help=did_you_mean(var, TEMPLATE_VARIABLES),
                )


def _template_span(f: YamlFile, node: yaml.Node, value: str, index: int) -> Span:
    """Where ``index`` (python-liquid's place: an index into the template; -1 when unknown)
    was written: its own line inside a ``|`` block, its column in a one-line value."""
    if index < 0:
        return f.span(node)
    if isinstance(node, yaml.ScalarNode) and node.style == "|":
        line = value.count("\n", 0, index)
        column = index - (value.rfind("\n", 0, index) + 1)
        return f.string_line_span(node, line, column)
    s, e = node.start_mark, node.end_mark
    if s.line == e.line:
        quote = 1 if node.style in ("'", '"') else 0
        raw = f.text.split("\n")[s.line][s.column + quote : e.column - quote]
        if raw == value:  # no escapes: the columns of the value are those of the file
            return Span(f.path, s.line + 1, s.column + quote + index + 1)
    return f.span(node)
