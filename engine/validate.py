"""``linerules validate [PATH ...]``: check rule folders (or single ``.rule`` files).

Exit 0 when there is no error (warnings allowed), 1 otherwise. Output formats:

- ``text``: ``path:line:col: error: message``, the source line, a caret, ``help:``; then a
  one-line summary.
- ``json``: a JSON list of ``{path, line, column, severity, message[, help]}``.
- ``github``: GitHub Actions annotations (``::error file=...,line=...,col=...::message``).
"""
from __future__ import annotations

import sys

from .diagnostics import dedupe, has_errors, render_github, render_json, render_text
from .project import load_project


def main(paths: list[str], fmt: str) -> int:
    """Validate every path; print the diagnostics in ``fmt``; return the exit code."""
    diagnostics = []
    sources: dict[str, str] = {}
    rules = segments = 0
    opened = False   # whether any path could be read at all
    for path in paths:
        result = load_project(path)
        diagnostics += result.diagnostics
        sources.update(result.sources)
        opened = opened or bool(result.sources) or result.project is not None
        if result.project is not None:
            rules += len(result.project.rules)
            segments += len(result.project.segments)
    diagnostics = dedupe(diagnostics)
    failed = has_errors(diagnostics)
    if fmt == "json":
        sys.stdout.write(render_json(diagnostics))
    elif fmt == "github":
        sys.stdout.write(render_github(diagnostics))
    else:
        sys.stdout.write(render_text(diagnostics, sources))
        if opened:   # a path that cannot be read is just its one error line
            sys.stdout.write(_summary(diagnostics, failed, rules, segments) + "\n")
    return 1 if failed else 0


def _summary(diagnostics, failed: bool, rules: int, segments: int) -> str:
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    if failed:
        return f"{_count(errors, 'error')}, {_count(warnings, 'warning')}"
    tail = f", {_count(warnings, 'warning')}" if warnings else ""
    return f"ok: {_count(rules, 'rule')}, {_count(segments, 'segment')}{tail}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
