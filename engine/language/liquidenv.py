"""The Liquid environment of message templates (imported on first use: see
:func:`engine.language.messages.template_facts`)."""

from __future__ import annotations

from liquid import Environment


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
