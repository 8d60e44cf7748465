"""Turn a message definition into the LINE objects one friend receives.

For each friend at send time :func:`render_message`:

1. renders every string holding Liquid markup with ``friend``, ``rule``, ``sale`` and ``event``
   (templates are compiled once and cached; missing variables render as nothing);
2. adds ``utm_source=line&utm_medium=message&utm_campaign=<rule>&utm_content=<message>`` to
   every http(s) link (URI actions and URLs in text messages) that carries no ``utm_`` yet;
3. passes each such link through ``link`` (the runner swaps in its click-tracking URL);
4. checks the result against LINE's limits again, raising :class:`RenderError` when a
   rendered value (a long display name, say) breaks one.

:func:`render_message` raises nothing but :class:`RenderError`: whatever a template does with
one friend's values (``round`` of ``"nan"``, ``date`` of a huge number, a range of a billion
numbers), the engine records that one delivery ``rejected`` with the reason and goes on.
Liquid's resource limits (loop iterations, output size, names, depth) are set on the message
environment in engine/language/messages.py; ranges are bounded here by :data:`MAX_RANGE`.

Image and video URLs are rendered but never rewritten. The definition is never mutated.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from liquid.builtin.expressions.primitive import RangeLiteral
from liquid.exceptions import LiquidError

from engine.line.limits import utf16_len

from . import ir
from .messages import MessageEnvironment, check_objects, compile_template, is_template
from .yamlpos import Path

#: http(s) URLs inside message text: ASCII URL characters only, so Japanese text right after
#: a link (``…/sale。``) is not swallowed.
_URL_IN_TEXT = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_TRAILING_PUNCTUATION = ".,;:!?'\")]"
#: Most numbers a Liquid range ``(1..n)`` may hold in a message template (loops stop at 1,000
#: iterations anyway): ``(1..n) | join`` with a friend's ``n`` of a billion would otherwise build it whole.
MAX_RANGE = 10_000


class _RangeTooLong(LiquidError):
    pass


def _bounded_range(evaluate: Callable) -> Callable:
    def bounded(self: RangeLiteral, context: Any) -> range:
        numbers = evaluate(self, context)
        if isinstance(context.env, MessageEnvironment) and len(numbers) > MAX_RANGE:
            raise _RangeTooLong(f"the range {self} holds {len(numbers):,} numbers, at most {MAX_RANGE:,}", token=None)
        return numbers

    bounded.__wrapped__ = evaluate  # type: ignore[attr-defined]
    return bounded


# Ranges of message templates only (other Liquid environments in the process are left alone).
if not hasattr(RangeLiteral.evaluate, "__wrapped__"):
    RangeLiteral.evaluate = _bounded_range(RangeLiteral.evaluate)  # type: ignore[method-assign]


class RenderError(Exception):
    """A message could not be rendered for a friend, or what it rendered to breaks a LINE limit.

    ``message`` and ``rule`` name what was being sent; ``detail`` says what went wrong.
    """

    def __init__(self, message: str, rule: str, detail: str):
        self.message, self.rule, self.detail = message, rule, detail
        super().__init__(f"message `{message}` (rule `{rule}`): {detail}")


def friend_vars(friend: Mapping[str, Any]) -> dict[str, Any]:
    """The ``friend`` template variable: attributes flattened in and kept under
    ``friend.attributes``; the friend's own fields (display_name, language, tags, ...) win over
    attributes of the same name; tags as a sorted list."""
    attributes = dict(friend.get("attributes") or {})
    out: dict[str, Any] = dict(attributes)
    out.update((k, v) for k, v in friend.items() if k != "attributes")
    out["attributes"] = attributes
    out["tags"] = sorted(friend.get("tags") or ())
    return out


def sale_vars(sale: ir.Sale, tz: zoneinfo.ZoneInfo) -> dict[str, Any]:
    """The ``sale`` template variable for one sale, its times in the configured zone."""
    return {
        "name": sale.name,
        "title": sale.title,
        "kind": sale.kind,
        "url": sale.url,
        "starts": sale.starts.astimezone(tz),
        "ends": sale.ends.astimezone(tz),
    }


def add_utm(url: str, rule: str, message: str) -> str:
    """``url`` with the utm parameters of (rule, message) appended, unless it is not an http(s)
    URL or already carries any ``utm_`` parameter. Existing parameters and fragment are kept."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return url
    if any(k.lower().startswith("utm_") for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return url
    utm = urlencode({"utm_source": "line", "utm_medium": "message", "utm_campaign": rule, "utm_content": message})
    query = f"{parts.query}&{utm}" if parts.query else utm
    return urlunsplit(parts._replace(query=query))


def render_message(
    defn: ir.MessageDef,
    *,
    friend: dict,
    rule: str,
    sale: dict | None = None,
    utm: bool = True,
    link: Callable[[str], str] | None = None,
    event: dict | None = None,
) -> list[dict]:
    """The LINE objects ``defn`` renders to for ``friend`` sent by ``rule``; ``event``: the
    fields of the event that entered or resumed the enrollment. Raises RenderError, and nothing
    else: any other failure while rendering becomes one, with its reason."""
    try:
        return _render_message(defn, friend=friend, rule=rule, sale=sale, utm=utm, link=link, event=event)
    except (RenderError, sqlite3.Error):
        raise  # a database fault (tracked links are stored while rendering) is not the message's
    except RecursionError:
        raise RenderError(defn.name, rule, "rendering failed: nested too deeply") from None
    except MemoryError:
        raise RenderError(defn.name, rule, "rendering failed: out of memory") from None
    except Exception as exc:  # a filter or a link rewrite that broke on this friend's values
        raise RenderError(defn.name, rule, f"rendering failed: {type(exc).__name__}: {exc}") from None


def _render_message(
    defn: ir.MessageDef,
    *,
    friend: dict,
    rule: str,
    sale: dict | None,
    utm: bool,
    link: Callable[[str], str] | None,
    event: dict | None = None,
) -> list[dict]:
    variables = {"friend": friend_vars(friend), "rule": rule, "sale": sale or {}, "event": event or {}}
    renderer = _Renderer(defn.name, rule, variables)
    objects = [renderer.value(obj, (i,)) for i, obj in enumerate(defn.objects)]

    def rewrite(url: str) -> str:
        new = add_utm(url, rule, defn.name) if utm else url
        return link(new) if link is not None else new

    if utm or link is not None:
        for obj in objects:
            renderer.changed |= _rewrite_links(obj, rewrite)
    if renderer.changed:
        problems = check_objects(objects)
        if problems:
            p = problems[0]
            raise RenderError(defn.name, rule, f"after rendering, {_where(p.path)}: {p.message}")
    return objects


def render_hash(objects: list[dict]) -> str:
    """A stable hash of rendered objects: equal objects (whatever their key order) hash alike."""
    text = json.dumps(objects, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class _Renderer:
    """Copies message objects, rendering template strings; ``changed`` tells whether any was."""

    def __init__(self, message: str, rule: str, variables: dict[str, Any]):
        self.message, self.rule, self.variables = message, rule, variables
        self.changed = False

    def value(self, value: Any, path: Path) -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str) and is_template(value):
            self.changed = True
            try:
                return compile_template(value).render(**self.variables)
            except LiquidError as e:
                raise RenderError(self.message, self.rule, f"template error in {_where(path)}: {e.message}") from None
            except (ArithmeticError, ValueError, TypeError, OSError, KeyError, IndexError, AttributeError) as e:
                # a filter that breaks on this friend's value: `round` of "nan", `date` of 1e30
                raise RenderError(
                    self.message,
                    self.rule,
                    f"template error in {_where(path)}: a filter cannot handle this friend's value ({e})",
                ) from None
        return value


def _rewrite_links(obj: dict, rewrite: Callable[[str], str]) -> bool:
    """Rewrite the links of one message object in place; True when any changed."""
    changed = False
    if obj.get("type") == "text" and isinstance(obj.get("text"), str):
        text, shifts = _rewrite_text(obj["text"], rewrite)
        if text != obj["text"]:
            obj["text"] = text
            changed = True
            if isinstance(obj.get("emojis"), list):
                obj["emojis"] = [_shift_emoji(e, shifts) for e in obj["emojis"]]
    return _rewrite_actions(obj, rewrite) or changed


def _rewrite_actions(value: Any, rewrite: Callable[[str], str]) -> bool:
    """Rewrite ``uri``, ``linkUri`` and ``altUri.desktop`` of every URI action inside ``value``."""
    changed = False
    if isinstance(value, list):
        for v in value:
            changed |= _rewrite_actions(v, rewrite)
        return changed
    if not isinstance(value, dict):
        return False
    if value.get("type") == "uri":
        for key in ("uri", "linkUri"):
            changed |= _rewrite_field(value, key, rewrite)
        if isinstance(value.get("altUri"), dict):
            changed |= _rewrite_field(value["altUri"], "desktop", rewrite)
    for v in value.values():
        if isinstance(v, (dict, list)):
            changed |= _rewrite_actions(v, rewrite)
    return changed


def _rewrite_field(obj: dict, key: str, rewrite: Callable[[str], str]) -> bool:
    url = obj.get(key)
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in ("http", "https"):
        return False
    new = rewrite(url)
    obj[key] = new
    return new != url


def _rewrite_text(text: str, rewrite: Callable[[str], str]) -> tuple[str, list[tuple[int, int]]]:
    """Text with its URLs rewritten, and (UTF-16 offset after the old URL, growth) per URL."""
    out: list[str] = []
    shifts: list[tuple[int, int]] = []
    last = 0
    for m in _URL_IN_TEXT.finditer(text):
        url = m.group().rstrip(_TRAILING_PUNCTUATION)
        end = m.start() + len(url)
        new = rewrite(url)
        out.append(text[last : m.start()])
        out.append(new)
        last = end
        if new != url:
            shifts.append((utf16_len(text[:end]), utf16_len(new) - utf16_len(url)))
    out.append(text[last:])
    return "".join(out), shifts


def _shift_emoji(emoji: Any, shifts: list[tuple[int, int]]) -> Any:
    """LINE places emojis by position in the text: move those after a rewritten link."""
    if not isinstance(emoji, dict) or not isinstance(emoji.get("index"), int):
        return emoji
    grow = sum(delta for after, delta in shifts if emoji["index"] >= after)
    return {**emoji, "index": emoji["index"] + grow}


def _where(path: Path) -> str:
    """``(1, "template", "text")`` -> ``object 2, template.text``."""
    if not path:
        return "the message"
    head, rest = path[0], path[1:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest).lstrip(".")
    return f"object {int(head) + 1}" + (f", {field}" if field else "")
