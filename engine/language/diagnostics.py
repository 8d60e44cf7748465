"""One diagnostic type and its renderers, shared by the CLI, the runner's logs and the tests.

A :class:`Diagnostic` points at ``path:line:column`` (1-based) and optionally at an end column
on the same line, so the text renderer can put a caret under the smallest span.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.i18n import _, join, language, n_, render

ERROR = "error"
WARNING = "warning"
_YAML_SUFFIXES = (".yaml", ".yml")
#: Line ends as the parsers count them: CR LF, CR alone (old Mac files) and LF; YAML also
#: takes NEL, LS and PS (PyYAML does).
_RULE_LINES = re.compile(r"\r\n|\r|\n")
_YAML_LINES = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
#: A source line longer than this is shown as a window around the column.
_SHOWN_WIDTH = 100


@dataclass(frozen=True, order=True)
class Span:
    """A place in a source file. Lines and columns are 1-based; ``end_column`` is exclusive."""

    path: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None


@dataclass(frozen=True)
class Diagnostic:
    path: str
    line: int
    column: int
    severity: str  # "error" | "warning"
    message: str
    help: str | None = None
    end_column: int | None = field(default=None, compare=False)

    @classmethod
    def at(
        cls, span: Span | None, message: str, *, severity: str = ERROR, help: str | None = None, path: str = ""
    ) -> Diagnostic:
        """Build a diagnostic at ``span`` (or at line 1 of ``path`` when there is no span)."""
        if span is None:
            return cls(path, 1, 1, severity, message, help)
        end = span.end_column if (span.end_line in (None, span.line)) else None
        return cls(span.path, span.line, span.column, severity, message, help, end)

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    @property
    def code(self) -> str | None:
        """The stable code of this kind of problem (``LR102``); see ``linerules explain``."""
        return getattr(self.message, "code", None)

    def sort_key(self):
        """YAML files (settings, sales, messages: what the rules refer to) before rule files,
        then by place, errors before warnings: the first problem shown is the root cause."""
        return (
            not self.path.endswith(_YAML_SUFFIXES),
            self.path,
            self.line,
            self.column,
            self.severity != ERROR,
            self.message,
        )


def normalize_newlines(text: str) -> str:
    """CR LF and a lone CR (old Mac files) become LF, so every stage counts lines alike."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def dedupe(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Sorted, without exact repeats (same place, severity and message)."""
    seen: set = set()
    out = []
    for d in sorted(diags, key=Diagnostic.sort_key):
        key = (d.path, d.line, d.column, d.severity, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def has_errors(diags: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diags)


def did_you_mean(name: str, choices: Iterable[str], *, listing: int = 5) -> str | None:
    """``help`` text for an unknown name: a close match, else the few valid choices, else None.

    A match is "close" when its edit distance is at most a third of the name's length
    (difflib's ratio is used as the measure of that).
    """
    choices = sorted(set(choices))
    if not choices:
        return None
    cutoff = 2 / 3 - 1e-9  # ratio >= 2/3 ~ at most a third of the characters differ
    close = difflib.get_close_matches(name, choices, n=1, cutoff=cutoff)
    if close:
        return _("did you mean `{name}`?", name=close[0])
    shown = join(f"`{c}`" for c in choices[:listing])
    if len(choices) > listing:
        return n_(
            "known names are {names} (and {n} more)",
            "known names are {names} (and {n} more)",
            len(choices) - listing,
            names=shown,
        )
    return _("known names are {names}", names=shown)


_SEVERITY = {ERROR: _("error"), WARNING: _("warning")}


def severity_word(severity: str, lang: str | None = None) -> str:
    """``error`` / ``warning`` in the language shown (``エラー`` / ``警告``)."""
    word = _SEVERITY.get(severity)
    return render(word, lang) if word is not None else severity


def format_short(d: Diagnostic, lang: str | None = None) -> str:
    """``path:line:col: error[LR102]: message`` in ``lang`` (default: the current language)."""
    code = f"[{d.code}]" if d.code else ""
    return f"{d.path}:{d.line}:{d.column}: {severity_word(d.severity, lang)}{code}: {render(d.message, lang)}"


def source_lines(path: str, text: str) -> list[str]:
    """The lines of a file, split where its parser counts a new line."""
    return (_YAML_LINES if path.endswith(_YAML_SUFFIXES) else _RULE_LINES).split(text)


def render_text(diags: Sequence[Diagnostic], sources: dict[str, str] | None = None, lang: str | None = None) -> str:
    """rustc-style text: the headline, the source line, a caret under the span, then ``help:``,
    in ``lang`` (default: the current language). The caret counts East Asian wide characters of
    the source line as two columns, so it stays under its place whatever the line holds. A very
    long line is shown as a window around the place (``…`` marks what is left out)."""
    sources = sources or {}
    lang = lang or language()
    help_word = render(_("help"), lang)
    lines_cache: dict[str, list[str]] = {}
    out: list[str] = []
    for d in diags:
        out.append(format_short(d, lang))
        text = sources.get(d.path)
        if text is not None:
            lines = lines_cache.get(d.path)
            if lines is None:
                lines = lines_cache[d.path] = source_lines(d.path, text)
            if 1 <= d.line <= len(lines):
                src = lines[d.line - 1].replace("\t", " ")
                width = 1
                if d.end_column and d.end_column > d.column:
                    width = d.end_column - d.column
                start = d.column - 1
                if len(src) > _SHOWN_WIDTH:
                    begin = max(0, start - _SHOWN_WIDTH // 2)
                    end = begin + _SHOWN_WIDTH
                    src = ("…" if begin else "") + src[begin:end] + ("…" if end < len(src) else "")
                    start = start - begin + (1 if begin else 0)
                    width = max(1, min(width, len(src) - start))
                out.append(f"    {src}")
                out.append(
                    "    "
                    + " " * _display_width(src[:start])
                    + "^" * max(1, _display_width(src[start : start + width]))
                )
        if d.help:
            out.append(f"    {help_word}: {render(d.help, lang)}")
    return "\n".join(out) + ("\n" if out else "")


def _display_width(s: str) -> int:
    """Terminal columns: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in s)


def render_json(diags: Sequence[Diagnostic], lang: str | None = None) -> str:
    """A JSON list of ``{path, line, column, severity, code, message[, help]}``; ``severity``
    stays ``error``/``warning`` in every language, the texts are in ``lang``."""
    items = []
    for d in diags:
        item = {
            "path": d.path,
            "line": d.line,
            "column": d.column,
            "severity": d.severity,
            "code": d.code,
            "message": render(d.message, lang),
        }
        if d.help:
            item["help"] = render(d.help, lang)
        items.append(item)
    return json.dumps(items, ensure_ascii=False, indent=2) + "\n"


def _gh_escape(s: str, prop: bool = False) -> str:
    s = s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        s = s.replace(":", "%3A").replace(",", "%2C")
    return s


def render_github(diags: Sequence[Diagnostic], lang: str | None = None) -> str:
    """GitHub Actions workflow commands
    (``::error file=…,line=…,col=…,title=LR102::message (help: …)``)."""
    out = []
    lang = lang or language()
    help_word = render(_("help"), lang)
    for d in diags:
        msg = render(d.message, lang) + (f" ({help_word}: {render(d.help, lang)})" if d.help else "")
        title = f",title={_gh_escape(d.code, True)}" if d.code else ""
        out.append(
            f"::{d.severity} file={_gh_escape(d.path, True)},line={d.line},col={d.column}{title}::{_gh_escape(msg)}"
        )
    return "\n".join(out) + ("\n" if out else "")
