"""``linerules explain [CODE]``: what a diagnostic code means, in the chosen language."""

from __future__ import annotations

import sys

import click

from engine import i18n
from engine.i18n import _, render

from .codes import CODES, explain, lookup
from .diagnostics import did_you_mean
from .settings import folder_language


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
