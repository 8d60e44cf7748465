"""Links in LINE message objects: where they are, their utm parameters, and rewriting them.

Used when messages are rendered (engine/language/render.py) and by `validate`, which checks a
fixed message's links with their utm parameters without loading the template engine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from engine.line.limits import utf16_len

#: Where a field is inside a message's objects (as :data:`engine.language.yamlpos.Path`, which
#: is not imported here: `validate` uses this module without PyYAML).
Path = tuple

_SCHEMES = ("http", "https")
#: http(s) URLs inside message text: ASCII URL characters only, so Japanese text right after
#: a link (``…/sale。``) is not swallowed.
_URL_IN_TEXT = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_TRAILING_PUNCTUATION = ".,;:!?'\")]"


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


def rewrite_links(obj: dict, rewrite: Callable[[str], str]) -> bool:
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
    for obj, _path, key in _uri_fields(value, ()):
        changed |= _rewrite_field(obj, key, rewrite)
    return changed


def _uri_fields(value: Any, path: Path) -> Iterator[tuple[dict, Path, str]]:
    """(the object, its path, the key) of every ``uri``, ``linkUri`` and ``altUri.desktop`` of
    the URI actions inside ``value`` at ``path``, in the order links are rewritten (the one
    walk of both the per-friend rewrite and the render plan)."""
    if isinstance(value, list):
        for k, v in enumerate(value):
            yield from _uri_fields(v, path + (k,))
        return
    if not isinstance(value, dict):
        return
    if value.get("type") == "uri":
        for key in ("uri", "linkUri"):
            yield value, path, key
        if isinstance(value.get("altUri"), dict):
            yield value["altUri"], path + ("altUri",), "desktop"
    for k, v in value.items():
        if isinstance(v, (dict, list)):
            yield from _uri_fields(v, path + (k,))


def _rewrite_field(obj: dict, key: str, rewrite: Callable[[str], str]) -> bool:
    url = obj.get(key)
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in _SCHEMES:
        return False
    new = rewrite(url)
    obj[key] = new
    return new != url


def _rewrite_text(text: str, rewrite: Callable[[str], str], moves: bool = True) -> tuple[str, list[tuple[int, int]]]:
    """Text with its URLs rewritten, and (UTF-16 offset after the old URL, growth) per URL
    (none without ``moves``: no emojis to move)."""
    if "http" not in text:  # what every link found starts with
        return text, []
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
        if moves and new != url:
            shifts.append((utf16_len(text[:end]), utf16_len(new) - utf16_len(url)))
    out.append(text[last:])
    return "".join(out), shifts


#: The characters of a URL in text (the class of :data:`_URL_IN_TEXT`).
_URL_CHAR = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]")


def _fixed_links(literal: str, first: bool, last: bool) -> bool:
    """Whether each ``http://`` and ``https://`` of a template's literal text lies in a link
    :data:`_URL_IN_TEXT` finds there whatever the outputs around it render to: a character
    that ends a link on both sides of it inside the literal (or the message's start or end)."""
    count = 0
    for m in _URL_IN_TEXT.finditer(literal):
        if m.start() == 0 and not first or m.start() > 0 and _URL_CHAR.match(literal, m.start() - 1):
            return False  # an output before it could run into it
        if m.end() == len(literal) and not last:
            return False  # or after it
        count += m.group().count("http://") + m.group().count("https://")
    # one that is not a link here could become one with an output after it
    return literal.count("http://") + literal.count("https://") == count


def _shift_emoji(emoji: Any, shifts: list[tuple[int, int]]) -> Any:
    """LINE places emojis by position in the text: move those after a rewritten link."""
    if not isinstance(emoji, dict) or not isinstance(emoji.get("index"), int):
        return emoji
    grow = sum(delta for after, delta in shifts if emoji["index"] >= after)
    return {**emoji, "index": emoji["index"] + grow}
