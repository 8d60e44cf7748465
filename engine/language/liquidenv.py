"""The Liquid environment of message templates (imported on first use: see
:func:`engine.language.messages.template_facts`)."""

from __future__ import annotations

from liquid import Environment

from .variables import FriendVars


class MessageEnvironment(Environment):
    """Liquid for message text: no file system, no include/render, bounded loops and output."""

    loop_iteration_limit = 1000
    output_stream_limit = 100_000
    local_namespace_limit = 100_000
    context_depth_limit = 10


LIQUID = MessageEnvironment()
for _tag in ("include", "render"):
    LIQUID.tags.pop(_tag, None)


def analyse(source: str) -> tuple[tuple[str, int, int] | None, list[tuple[str, int]], list[tuple[str, int]]]:
    """(error as (message, line, column) or None, unknown filters, global variables) of one
    template; line 0 when Liquid does not say where. Filters and variables come with the index
    of their first use in the template (-1 when Liquid does not say)."""
    from liquid.exceptions import LiquidError

    from .messages import compile_template

    try:
        analysis = compile_template(source).analyze()
    except LiquidError as e:
        ctx = e.context()
        return ((e.message, ctx[0], ctx[1]) if ctx else (e.message, 0, 0)), [], []
    return (
        None,
        [(flt, _first(spans)) for flt, spans in analysis.filters.items() if flt not in LIQUID.filters],
        [(var, _first([u.span for u in uses])) for var, uses in analysis.globals.items()],
    )


def _first(spans) -> int:
    return min((getattr(s, "index", -1) for s in spans), default=-1)


# ----------------------------------------------------------------------------- plain templates

#: A missing value on a template's path (Liquid's ``Undefined``: renders as nothing).
_MISSING = object()
#: Path segments Liquid answers for lists and strings too (``size``, ``first``, ``last``):
#: left to Liquid.
_SPECIAL = frozenset(("size", "first", "last"))


def plain_parts(template) -> tuple | None:
    """The parts of a template that holds nothing but text and outputs of a variable's path
    (``{{ friend.display_name }}``), each with at most a ``default: "text"`` filter: a text as
    ``str``, an output as ``(path segments, default text or None)``. None for any other
    template: Liquid renders it (:func:`render_plain` renders these the same way, faster)."""
    try:  # python-liquid 2's node classes; another Liquid renders everything itself
        from liquid.builtin.content import ContentNode
        from liquid.builtin.expressions.arguments import PositionalArgument
        from liquid.builtin.expressions.filtered import FilteredExpression
        from liquid.builtin.expressions.path import Path
        from liquid.builtin.expressions.primitive import StringLiteral
        from liquid.builtin.filters.misc import default
        from liquid.builtin.output import OutputNode
    except ImportError:
        return None
    if LIQUID.autoescape or LIQUID.globals or getattr(template, "globals", True) or getattr(template, "matter", True):
        return None
    if LIQUID.filters.get("default") is not default:
        return None
    parts: list = []
    for node in template.nodes:
        if type(node) is ContentNode:
            parts.append(node.text)
            continue
        if type(node) is not OutputNode or type(node.expression) is not FilteredExpression:
            return None
        left, filters = node.expression.left, node.expression.filters or []
        if type(left) is not Path or not left.path or not all(type(s) is str for s in left.path):
            return None
        if not filters:
            parts.append((tuple(left.path), None))
            continue
        if len(filters) != 1 or filters[0].name != "default" or len(filters[0].args) != 1:
            return None
        arg = filters[0].args[0]
        if type(arg) is not PositionalArgument or type(arg.value) is not StringLiteral:
            return None
        parts.append((tuple(left.path), arg.value.value))
    return tuple(parts)


#: The mappings a path goes through here (a friend as templates see it is a dict of its own kind).
_MAPPINGS = frozenset((dict, FriendVars))


def render_plain(parts: tuple, variables: dict) -> str | None:
    """What Liquid renders ``parts`` (from :func:`plain_parts`) to with ``variables``, or None
    when a value is of a kind left to Liquid (a list, a date, a path through a list, ...)."""
    out: list[str] = []
    for part in parts:
        if type(part) is str:
            out.append(part)
            continue
        path, fallback = part
        value = variables.get(path[0], _MISSING)
        if value is _MISSING:
            return None  # not one of the template variables: Liquid's other scopes
        for segment in path[1:]:
            if type(value) not in _MAPPINGS or segment in _SPECIAL:
                return None
            value = value.get(segment, _MISSING)
            if value is _MISSING:
                break
        kind = type(value)
        if kind is int or kind is float:
            out.append(str(value))  # default keeps 0 and 0.0 (Liquid's numbers are never empty)
        elif kind is str and (value or fallback is None):
            out.append(value)
        elif value is None or value is _MISSING or value is False or kind is str:
            if fallback is not None:
                out.append(fallback)
            elif value is False:
                out.append("false")
        elif value is True:
            out.append("true")
        else:
            return None
    text = "".join(out)
    if len(text) * 4 > LIQUID.output_stream_limit:
        return None  # near Liquid's output limit (counted in UTF-8 bytes): Liquid decides
    if "\r" in text:
        # Liquid writes a limited output to a StringIO that reads universal newlines: a value's
        # "\r\n" and lone "\r" come out as "\n"
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text
