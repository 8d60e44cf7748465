"""``linerules validate [PATH ...]``: check rule folders (or single ``.rule`` files).

Exit 0 when there is no error (warnings allowed), 1 otherwise. Output formats:

- ``text``: ``path:line:col: error: message``, the source line, a caret, ``help:``; then a
  one-line summary.
- ``json``: a JSON list of ``{path, line, column, severity, code, message[, help]}``.
- ``github``: GitHub Actions annotations (``::error file=...,line=...,col=...,title=LR102::message``).

The texts are in the language chosen by :func:`engine.i18n.choose` (``--lang``,
``LINERULES_LANG``, ``language:`` in settings.yaml, the locale).
"""

from __future__ import annotations

import sys

from engine import i18n
from engine.i18n import _, join, n_

from .diagnostics import dedupe, has_errors, render_github, render_json, render_text
from .project import load_project


def main(paths: list[str], fmt: str, lang: str | None = None) -> int:
    """Validate every path; print the diagnostics in ``fmt``; return the exit code."""
    diagnostics = []
    folder_language = None
    sources: dict[str, str] = {}
    rules = segments = 0
    opened = False  # whether any path could be read at all
    for path in paths:
        result = load_project(path)
        diagnostics += result.diagnostics
        sources.update(result.sources)
        opened = opened or bool(result.sources) or result.project is not None
        folder_language = folder_language or result.language
        if result.project is not None:
            rules += len(result.project.rules)
            segments += len(result.project.segments)
    i18n.use(i18n.choose(lang, folder_language))
    diagnostics = dedupe(diagnostics)
    failed = has_errors(diagnostics)
    if fmt == "json":
        sys.stdout.write(render_json(diagnostics))
    elif fmt == "github":
        sys.stdout.write(render_github(diagnostics))
    else:
        sys.stdout.write(render_text(diagnostics, sources))
        if opened:  # a path that cannot be read is just its one error line
            sys.stdout.write(i18n.render(_summary(diagnostics, failed, rules, segments)) + "\n")
    return 1 if failed else 0


def _summary(diagnostics, failed: bool, rules: int, segments: int):
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    if failed:
        return join([n_("{n} error", "{n} errors", errors), n_("{n} warning", "{n} warnings", warnings)])
    parts = [n_("{n} rule", "{n} rules", rules), n_("{n} segment", "{n} segments", segments)]
    if warnings:
        parts.append(n_("{n} warning", "{n} warnings", warnings))
    return _("ok: {counts}", counts=join(parts))
