"""``linerules explain [CODE]``: what a diagnostic code means, in the chosen language."""

from __future__ import annotations

import os
import sys

import click

from engine import i18n
from engine.i18n import _, render

from .codes import CODES, explain, lookup
from .diagnostics import did_you_mean


def folder_language(rules_dir: str) -> str | None:
    """``language:`` of the folder's settings.yaml, when it has a valid one."""
    path = os.path.join(rules_dir, "settings.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        text = None
    from .settings import load_settings, written_language

    return (load_settings(path, text)[0].language if text is not None else None) or written_language(path)


def main(code: str | None, rules_dir: str = "rules", lang: str | None = None) -> int:
    i18n.use(i18n.choose(lang, folder_language(rules_dir)))
    if code is None:
        width = max(len(c) for c in CODES)
        for c in CODES.values():
            sys.stdout.write(f"{c.code:<{width}}  {render(c.title)}\n")
        return 0
    found = lookup(code)
    if found is None:
        hint = did_you_mean(code.strip().upper(), CODES)
        raise click.UsageError(
            render(_("there is no code `{code}`", code=code)) + (f" ({render(hint)})" if hint else "")
        )
    sys.stdout.write(explain(found))
    return 0
