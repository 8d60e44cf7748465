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
import operator
import sqlite3
import zoneinfo
from collections.abc import Callable
from json.encoder import encode_basestring as _encode_text
from typing import Any
from urllib.parse import urlsplit

from liquid.builtin.expressions.primitive import RangeLiteral
from liquid.exceptions import LiquidError

from engine.i18n import _
from engine.line.limits import payload_json

from . import ir
from .links import (
    _SCHEMES,
    _fixed_links,
    _rewrite_text,
    _shift_emoji,
    _uri_fields,
    add_utm,
)
from .links import (
    rewrite_links as _rewrite_links,
)
from .liquidenv import plain_parts, render_plain
from .messages import MessageEnvironment, check_objects, compile_template, fields_pass, is_template, plan_checks
from .variables import friend_vars
from .yamlpos import Path

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

    ``message`` and ``rule`` name what was being sent; ``detail`` says what went wrong (a
    translatable text: ``str()`` of the error is its English, as logs and the database keep it).
    """

    def __init__(self, message: str, rule: str, detail: Any):
        self.message, self.rule, self.detail = message, rule, detail
        super().__init__(f"message `{message}` (rule `{rule}`): {detail}")


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
    return _guarded(defn.name, rule, _render_message, defn, friend, rule, sale, utm, link, event)


def _guarded(message: str, rule: str, render: Callable, *args: Any) -> Any:
    """``render(*args)``, any failure but a database fault turned into a RenderError."""
    try:
        return render(*args)
    except (RenderError, sqlite3.Error):
        raise  # a database fault (tracked links are stored while rendering) is not the message's
    except RecursionError:
        raise RenderError(message, rule, _("rendering failed: nested too deeply")) from None
    except MemoryError:
        raise RenderError(message, rule, _("rendering failed: out of memory")) from None
    except Exception as exc:  # a filter or a link rewrite that broke on this friend's values
        raise RenderError(
            message, rule, _("rendering failed: {reason}", reason=f"{type(exc).__name__}: {exc}")
        ) from None


def _render_message(
    defn: ir.MessageDef,
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
        _raise_first(defn.name, rule, objects)
    return objects


def _raise_first(message: str, rule: str, objects: list[dict]) -> None:
    """The first LINE limit ``objects`` break, as a RenderError."""
    problems = check_objects(objects)
    if problems:
        p = problems[0]
        raise RenderError(
            message, rule, _("after rendering, {where}: {problem}", where=_where(p.path), problem=p.message)
        )


def render_hash(objects: list[dict], text: str | None = None) -> str:
    """A stable hash of rendered objects: equal objects (whatever their key order) hash alike.
    ``text``: their JSON as this writes it, when known already (:meth:`MessagePlan.render`)."""
    if text is None:
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
            return _render_template(value, self.variables, self.message, self.rule, path)
        return value


def _render_template(source: str, variables: dict[str, Any], message: str, rule: str, path: Path) -> str:
    """One template string rendered by Liquid, its errors as RenderError at ``path``."""
    try:
        return compile_template(source).render(**variables)
    except LiquidError as e:
        raise RenderError(
            message, rule, _("template error in {where}: {reason}", where=_where(path), reason=e.message)
        ) from None
    except (ArithmeticError, ValueError, TypeError, OSError, KeyError, IndexError, AttributeError) as e:
        # a filter that breaks on this friend's value: `round` of "nan", `date` of 1e30
        raise RenderError(
            message,
            rule,
            _(
                "template error in {where}: a filter cannot handle this friend's value ({reason})",
                where=_where(path),
                reason=e,
            ),
        ) from None


def _where(path: Path) -> str:
    """``(1, "template", "text")`` -> ``object 2, template.text``."""
    if not path:
        return _("the message")
    head, rest = path[0], path[1:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest).lstrip(".")
    if field:
        return _("object {n}, {field}", n=int(head) + 1, field=field)
    return _("object {n}", n=int(head) + 1)


# ----------------------------------------------------------------------------- plans


class _Slow(Exception):
    """A message the plan does not take on: :func:`render_message` renders it every time."""


#: What stands for a changing value while a plan encodes the fixed parts (never in a message).
_MARK = "\x00lr-slot-{}\x00"


class MessagePlan:
    """How one message sent by one rule renders per friend, worked out once.

    :func:`render_message` renders every string, rewrites every link, checks every object
    against LINE's limits and leaves the encoding to the caller, for each friend. A plan does
    the part that is the same for every friend once: which strings are templates (and which of
    those are plain text with ``{{ variable }}``, rendered without Liquid's machinery), the
    utm parameters of each fixed link, the limit checks of the fixed parts (the fields a friend
    changes keep theirs, made per friend: length in UTF-16 units, URL scheme, the bubble's
    bytes), and the JSON text of everything between the changing fields. Per friend
    :meth:`render` renders the templates, passes the links through ``link`` in the order
    :func:`render_message` does, checks the changing fields and splices their JSON in.

    The result is the same as :func:`render_message`'s for every friend, byte for byte, errors
    included: a changing field that breaks a limit has the whole message checked as
    :func:`render_message` checks it, for the same first problem. A message the plan cannot
    take on (a ``type`` that is a template, a fixed part that breaks a limit, ...) is rendered
    by :func:`render_message` each time (``slow``).
    """

    def __init__(self, defn: ir.MessageDef, rule: str, *, utm: bool, tracked: bool):
        self.defn, self.rule, self.utm, self.tracked = defn, rule, utm, tracked
        self._utm_cache: dict[str, str] = {}
        self.slow = False
        try:
            self._plan()
        except _Slow:
            self.slow = True

    # -------------------------------------------------------------- once

    def _plan(self) -> None:
        objects = list(self.defn.objects)
        if not all(isinstance(o, dict) for o in objects):
            raise _Slow
        self.slots: dict[Path, int] = {}  # changing field -> its index
        self.initial: list[Any] = []  # each changing field's value before this friend
        self.templates: list[tuple[int, Path, str, tuple | None]] = []  # (slot, path, source, plain parts)
        prepared = [self._copy(o, (i,)) for i, o in enumerate(objects)]
        self.ops: list[tuple] = []  # the links to pass through ``link`` per friend, in order
        self.fixed_changed = False  # a fixed link got its utm parameters
        if self.utm or self.tracked:
            for i, obj in enumerate(prepared):
                self._plan_links(obj, i)
        self._plan_fixed_text_links()
        paths = sorted(self.slots)
        for a, b in zip(paths, paths[1:], strict=False):
            if b[: len(a)] == a:
                raise _Slow  # a changing value inside another (a template inside a rewritten emoji list)
        if any(p[-1] == "type" for p in paths):
            raise _Slow  # which checks apply depends on it
        self.checks = plan_checks(prepared, self.slots)
        if self.checks.problems:
            raise _Slow  # broken whatever the friend: render_message words it
        self.spines = [self._spine(obj, (i,)) for i, obj in enumerate(prepared)]
        self.encoding = [self._encoding(obj, i) for i, obj in enumerate(prepared)]

    def _slot(self, path: Path, value: Any) -> int:
        slot = self.slots.get(path)
        if slot is None:
            slot = self.slots[path] = len(self.initial)
            self.initial.append(value)
        return slot

    def _copy(self, value: Any, path: Path) -> Any:
        """A copy of a part of the definition, its template strings noted as changing."""
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise _Slow
            return {k: self._copy(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._copy(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str) and is_template(value):
            try:
                template = compile_template(value)
            except LiquidError:
                raise _Slow from None
            self.templates.append((self._slot(path, value), path, value, plain_parts(template)))
            return value
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        raise _Slow

    def _utm(self, url: str) -> str:
        """``add_utm`` of (rule, message), once per link."""
        new = self._utm_cache.get(url)
        if new is None:
            if len(self._utm_cache) > 4096:
                self._utm_cache.clear()
            new = self._utm_cache[url] = add_utm(url, self.rule, self.defn.name) if self.utm else url
        return new

    def _plan_links(self, obj: dict, i: int) -> None:
        """The link rewrites of one object as :func:`_rewrite_links` makes them: fixed ones
        (utm only) done now, the others noted as per-friend steps in the same order."""
        if obj.get("type") == "text" and isinstance(obj.get("text"), str):
            path = (i, "text")
            emojis = obj.get("emojis")
            if path in self.slots or self.tracked:
                slot = self._slot(path, obj["text"])
                moved = self._slot((i, "emojis"), emojis) if isinstance(emojis, list) else None
                self.ops.append(("text", slot, moved))
            else:
                text, shifts = _rewrite_text(obj["text"], self._utm)
                if text != obj["text"]:
                    obj["text"] = text
                    self.fixed_changed = True
                    if isinstance(emojis, list):
                        obj["emojis"] = [_shift_emoji(e, shifts) for e in emojis]
        for container, path, key in _uri_fields(obj, (i,)):
            self._plan_field(container, path, key)

    def _plan_fixed_text_links(self) -> None:
        """A text message's template that is plain text and outputs, whose links all lie in its
        text (not next to an output): their utm parameters are added to the text once, here.
        Per friend the rewritten template is rendered instead, and taken when the friend's
        values bring no other link (the text holds no other ``http://`` or ``https://``: then
        :func:`_rewrite_text` finds the same links; else the text is rewritten as before)."""
        self.fixed_text: dict[int, tuple[tuple, int]] = {}  # slot -> (rewritten parts, links' count)
        if self.tracked or not self.utm:
            return
        parts_of = {slot: parts for slot, _path, _source, parts in self.templates if parts is not None}
        done = set()
        for kind, slot, moved in self.ops:
            if kind != "text" or moved is not None or slot not in parts_of:
                continue
            parts, out, count = parts_of[slot], [], 0
            for k, part in enumerate(parts):
                if type(part) is not str:
                    out.append(part)
                    continue
                if not _fixed_links(part, k == 0, k == len(parts) - 1):
                    break
                text = _rewrite_text(part, self._utm, False)[0]
                out.append(text)
                count += text.count("http://") + text.count("https://")
            else:
                self.fixed_text[slot] = (tuple(out), count)
                done.add(slot)
        self.fixed_ops = [op for op in self.ops if not (op[0] == "text" and op[1] in done)]

    def _plan_field(self, obj: dict, path: Path, key: str) -> None:
        """:func:`_rewrite_field`, planned."""
        url = obj.get(key)
        if path + (key,) in self.slots:  # a template: its value is known per friend
            self.ops.append(("field", self.slots[path + (key,)], None))
            return
        if not isinstance(url, str) or urlsplit(url).scheme.lower() not in _SCHEMES:
            return
        if self.tracked:
            self.ops.append(("tracked", self._slot(path + (key,), url), self._utm(url)))
        else:
            obj[key] = self._utm(url)
            self.fixed_changed |= obj[key] != url

    def _spine(self, value: Any, path: Path) -> tuple:
        """How to build one friend's copy of an object: (the planned container, its
        changing children: (key, slot) or (key, spine of a container holding some))."""
        children: list[tuple[Any, Any]] = []
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            p = path + (k,)
            if p in self.slots:
                children.append((k, self.slots[p]))
            elif isinstance(v, (dict, list)) and any(s[: len(p)] == p for s in self.slots):
                children.append((k, self._spine(v, p)))
        return value, tuple(children)

    def _encoding(self, obj: dict, i: int) -> tuple[str, Callable[[list[str]], tuple[str, ...]]]:
        """The JSON of a planned object (as the store writes it) as a ``%`` format with a
        ``%s`` for each changing field, and what picks their JSON texts in that order."""
        marks = {s: _MARK.format(s) for p, s in self.slots.items() if p[0] == i}

        def marked(value: Any, path: Path) -> Any:
            if path in self.slots:
                return marks[self.slots[path]]
            if isinstance(value, dict):
                return {k: marked(v, path + (k,)) for k, v in value.items()}
            if isinstance(value, list):
                return [marked(v, path + (k,)) for k, v in enumerate(value)]
            return value

        text = payload_json(marked(obj, (i,)))
        found = []
        for slot, mark in marks.items():
            coded = payload_json(mark)
            if text.count(coded) != 1:
                raise _Slow
            found.append((text.index(coded), slot, len(coded)))
        found.sort()
        pieces, order, last = [], [], 0
        for at, slot, length in found:
            pieces.append(text[last:at].replace("%", "%%"))
            order.append(slot)
            last = at + length
        pieces.append(text[last:].replace("%", "%%"))
        if len(order) == 1:
            only = order[0]
            return "%s".join(pieces), lambda encoded: (encoded[only],)
        return "%s".join(pieces), operator.itemgetter(*order) if order else lambda encoded: ()

    # -------------------------------------------------------------- per friend

    def render(
        self,
        friend: dict,
        *,
        sale: dict | None = None,
        link: Callable[[str], str] | None = None,
        event: dict | None = None,
    ) -> tuple[list[dict], list[str] | None]:
        """The objects this message renders to for ``friend`` (as :func:`render_message`), and
        each one's JSON text as the store writes it (None when rendered the slow way). Raises
        RenderError, and nothing else."""
        if not self.takes(link):
            objects = render_message(
                self.defn, friend=friend, rule=self.rule, sale=sale, utm=self.utm, link=link, event=event
            )
            return objects, None
        encoded, values = self.encode(friend, sale=sale, link=link, event=event)
        return self.build(values), encoded

    def takes(self, link: Callable[[str], str] | None) -> bool:
        """Whether :meth:`encode` renders this message (else :meth:`render` renders it the slow way)."""
        return not self.slow and (link is None or self.tracked)

    def encode(
        self,
        friend: dict,
        *,
        sale: dict | None = None,
        link: Callable[[str], str] | None = None,
        event: dict | None = None,
    ) -> tuple[list[str], list[Any]]:
        """Each object's JSON text for ``friend``, as :meth:`render` gives it, without making
        the objects (:meth:`build` makes them from the changing values, the second item), for a
        plan that :meth:`takes` ``link``. Raises RenderError, and nothing else."""
        return _guarded(self.defn.name, self.rule, self._encode, friend, sale, link, event)

    def build(self, values: list[Any]) -> list[dict]:
        """One friend's objects from the changing values :meth:`encode` gave."""
        return [_build(spine, values) for spine in self.spines]

    def _encode(
        self, friend: dict, sale: dict | None, link: Callable[[str], str] | None, event: dict | None
    ) -> tuple[list[str], list[Any]]:
        values = list(self.initial)
        changed = self.fixed_changed
        ops = self.ops
        if self.templates:
            changed = True
            variables = {"friend": friend_vars(friend), "rule": self.rule, "sale": sale or {}, "event": event or {}}
            if self.fixed_text and self._render_fixed(values, variables):
                ops = self.fixed_ops
            else:
                for slot, path, source, parts in self.templates:
                    text = None if parts is None else render_plain(parts, variables)
                    values[slot] = (
                        _render_template(source, variables, self.defn.name, self.rule, path) if text is None else text
                    )
        odd = False
        if ops:
            changed, odd = self._links(values, link, changed, ops)
        encoded = [_encode_text(v) if type(v) is str else payload_json(v) for v in values]  # (_encode)
        if changed and (odd or not fields_pass(self.checks, values, encoded)):
            _raise_first(self.defn.name, self.rule, self.build(values))
        return [form % pick(encoded) for form, pick in self.encoding], values

    def _render_fixed(self, values: list[Any], variables: dict) -> bool:
        """The templates rendered, those of :attr:`fixed_text` with their links rewritten
        already; False (``values`` to be made again) when a friend's values bring a link."""
        fixed = self.fixed_text
        for slot, path, source, parts in self.templates:
            known = fixed.get(slot)
            if known is not None:
                text = render_plain(known[0], variables)
                if text is None or text.count("http://") + text.count("https://") != known[1]:
                    return False
            else:
                text = None if parts is None else render_plain(parts, variables)
                if text is None:
                    text = _render_template(source, variables, self.defn.name, self.rule, path)
            values[slot] = text
        return True

    def _links(
        self, values: list[Any], link: Callable[[str], str] | None, changed: bool, ops: list[tuple]
    ) -> tuple[bool, bool]:
        """The per-friend link rewrites, as :func:`_rewrite_links` makes them: whether any
        value changed, and whether ``link`` gave something other than a text (then the whole
        message is checked)."""
        odd = False

        def rewrite(url: str) -> str:
            nonlocal odd
            new = self._utm(url)
            new = link(new) if link is not None else new
            odd |= type(new) is not str
            return new

        for kind, slot, extra in ops:
            if kind == "tracked":  # a fixed link, its utm parameters known
                new = link(extra) if link is not None else extra
                odd |= type(new) is not str
                changed |= new != values[slot]
                values[slot] = new
            elif kind == "field":  # a template: a link only once rendered
                url = values[slot]
                if isinstance(url, str) and urlsplit(url).scheme.lower() in _SCHEMES:
                    new = rewrite(url)
                    changed |= new != url
                    values[slot] = new
            else:  # the text of a text message
                text, shifts = _rewrite_text(values[slot], rewrite, extra is not None)
                if text != values[slot]:
                    values[slot] = text
                    changed = True
                    if extra is not None:
                        values[extra] = [_shift_emoji(e, shifts) for e in values[extra]]
        return changed, odd


def _encode(value: Any) -> str:
    return _encode_text(value) if type(value) is str else payload_json(value)


def _build(spine: tuple, values: list[Any]) -> Any:
    """One friend's copy of a planned object: the containers down to each changing value
    copied, the rest shared with the plan (read only)."""
    container, children = spine
    new = container.copy()
    for key, child in children:
        new[key] = values[child] if type(child) is int else _build(child, values)
    return new
