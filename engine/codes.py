"""Stable diagnostic codes (``LR102``) and what each one means, in the product's languages.

Every diagnostic headline is written ``E("LR102", "unknown message `{name}`", name=...)`` where
it is raised; this module holds, per code, a title, an explanation, a wrong and a fixed example
(:data:`CODES`). All of them are gettext texts of the one catalog, so ``linerules explain LR102``
and the generated pages docs/errors.md and docs/ja/errors.md speak the chosen language.

:func:`messages_by_code` reads the engine's source to list the headlines of each code (the
tests use it to prove that every code used has an explanation, and the pages list them).
"""
from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from .i18n import Text, _, gettext_, render

CODE_RE = re.compile(r"LR\d{3}")
ENGINE = Path(__file__).resolve().parent
#: Source files outside engine/ that raise diagnostics too.
EXTRA_SOURCES = (ENGINE.parent / "runner.py",)


@dataclass(frozen=True)
class Code:
    code: str
    title: Text
    meaning: Text
    wrong: Text
    fixed: Text
    file: str = "welcome.rule"   # the file the examples are taken from


def _c(code: str, file: str, title: Text, meaning: Text, wrong: Text, fixed: Text) -> Code:
    return Code(code, title, meaning, wrong, fixed, file)


#: Every code, in order. Add a new one at the end of its group; never reuse a number.
CODES: dict[str, Code] = {c.code: c for c in (
    # ------------------------------------------------------------------ files and YAML (LR0xx)
    _c("LR001", "rules/",
       _("the rule folder or file cannot be read"),
       _("The path given to the command does not exist, is not a `.rule` file or a folder, or "
         "cannot be opened. Give the rule folder (usually `rules/`) or one `.rule` file in it."),
       _("linerules validate rule/"),
       _("linerules validate rules/")),
    _c("LR002", "welcome.rule",
       _("the file is not UTF-8 text"),
       _("Every file of the rule folder must be saved as UTF-8. A file saved as Shift_JIS "
         "(common with Windows tools) cannot be read; save it again as UTF-8."),
       _("(welcome.rule saved as Shift_JIS)"),
       _("(welcome.rule saved as UTF-8)")),
    # ------------------------------------------------------------------ settings.yaml (LR6xx)
    _c("LR600", "settings.yaml",
       _("settings.yaml is not a list of settings"),
       _("settings.yaml holds one `name: value` setting per line. A file that is a single text or "
         "a list cannot be read as settings."),
       _("- timezone: Asia/Tokyo"),
       _("timezone: Asia/Tokyo")),
    _c("LR601", "settings.yaml",
       _("unknown setting"),
       _("The key is not one of the settings listed in docs/settings.md, usually a misspelling. "
         "The help suggests the closest setting."),
       _("timzone: Asia/Tokyo"),
       _("timezone: Asia/Tokyo")),
    _c("LR602", "settings.yaml",
       _("unknown time zone"),
       _("`timezone` must be an IANA time zone name such as `Asia/Tokyo`. Every time of day in the "
         "rules (`at 12:00`, `window`, schedules, sale times) is read in this zone."),
       _("timezone: JST"),
       _("timezone: Asia/Tokyo")),
    _c("LR603", "settings.yaml",
       _("the delivery window is not valid"),
       _("`window` is the daily delivery window, two times of day `HH:MM-HH:MM` in quotes. Sends "
         "due outside it wait for the next opening. An end before the start runs over midnight; "
         "start and end may not be the same."),
       _("window: 9:00-21:00pm"),
       _("window: \"09:00-21:00\"")),
    _c("LR604", "settings.yaml",
       _("a setting has a value of the wrong kind"),
       _("Each setting takes one kind of value: `max_per_day`, `monthly_quota` and "
         "`attribution_days` a whole number of at least 1, `utm` true or false, `base_url` an "
         "https:// address, the LINE Login settings a text."),
       _("max_per_day: two"),
       _("max_per_day: 2")),
    _c("LR605", "settings.yaml",
       _("a rich menu entry is not valid"),
       _("`rich_menus` maps the names the rules use (`menu vip`) to the rich menu ids LINE shows "
         "when a menu is created: `richmenu-` followed by 32 hexadecimal characters."),
       _("rich_menus:\n  vip: VIP menu"),
       _("rich_menus:\n  vip: richmenu-2b7e9f41c6d84a35b0e1f2a3c4d5e6f7")),
    _c("LR606", "settings.yaml",
       _("a secret is kept in git (warning)"),
       _("The files of the rule folder are kept in git, where everyone with access can read "
         "them. The LINE Login channel secret belongs in the environment variable "
         "LINE_LOGIN_CHANNEL_SECRET of the runner."),
       _("login_channel_secret: 0123456789abcdef"),
       _("# settings.yaml: no secret\n# where the runner runs: LINE_LOGIN_CHANNEL_SECRET=0123456789abcdef")),
    _c("LR607", "settings.yaml",
       _("unknown language"),
       _("`language` chooses the language of the messages of `linerules validate`, `test`, "
         "`explain` and `report`: `ja` for Japanese, `en` for English."),
       _("language: japanese"),
       _("language: ja")),
    # ------------------------------------------------------------------ sale_calendar.yaml (LR7xx)
    _c("LR700", "sale_calendar.yaml",
       _("the sale calendar is not a list of sales"),
       _("sale_calendar.yaml starts with `sales:` followed by one item per sale, each a mapping "
         "with `name`, `title`, `starts` and `ends`."),
       _("super_sale_dec:\n  starts: 2026-12-04 20:00"),
       _("sales:\n  - name: super_sale_dec\n    title: 12月スーパーSALE\n"
         "    starts: 2026-12-04 20:00\n    ends: 2026-12-11 01:59")),
    _c("LR701", "sale_calendar.yaml",
       _("two sales have the same name"),
       _("Each sale needs its own `name`: rules and reports tell the sales apart by it."),
       _("sales:\n  - name: super_sale\n    ...\n  - name: super_sale\n    ..."),
       _("sales:\n  - name: super_sale_sep\n    ...\n  - name: super_sale_dec\n    ...")),
    _c("LR702", "sale_calendar.yaml",
       _("a sale field is unknown or missing"),
       _("A sale has the fields `name`, `title`, `starts` and `ends` (required) and `kind` and "
         "`url` (optional). Any other field is an error, usually a misspelling."),
       _("  - name: super_sale_dec\n    title: 12月スーパーSALE\n    start: 2026-12-04 20:00"),
       _("  - name: super_sale_dec\n    title: 12月スーパーSALE\n    starts: 2026-12-04 20:00\n"
         "    ends: 2026-12-11 01:59")),
    _c("LR703", "sale_calendar.yaml",
       _("a sale field has a wrong value"),
       _("A sale's `name` and `kind` are names (a letter, then letters, digits, `_` or `-`), its "
         "`title` is a text and its `url` an https:// link."),
       _("    name: 12月 super sale"),
       _("    name: super_sale_dec\n    title: 12月スーパーSALE")),
    _c("LR704", "sale_calendar.yaml",
       _("a sale time is not a date and time"),
       _("`starts` and `ends` are local times like `2026-12-04 20:00`, times with an offset like "
         "`2026-12-04T20:00:00+09:00`, or dates (midnight)."),
       _("    starts: 12/4 20時"),
       _("    starts: 2026-12-04 20:00")),
    _c("LR705", "sale_calendar.yaml",
       _("a sale ends before it starts"),
       _("`ends` must be later than `starts`. A sale that runs past midnight ends on the next day."),
       _("    starts: 2026-12-04 20:00\n    ends: 2026-12-04 01:59"),
       _("    starts: 2026-12-04 20:00\n    ends: 2026-12-11 01:59")),
    # ------------------------------------------------------------------ rule tests (LR8xx)
    _c("LR800", "rules/tests/welcome.yaml",
       _("a rule test file is not a list of tests"),
       _("A file in rules/tests/ holds one test (`name`, `events`, `expect`) or a list of them "
         "under `tests:`; nothing else may stand beside `tests:`."),
       _("tests:\n  name: greeting\nevents: []"),
       _("tests:\n  - name: greeting\n    events: []\n    expect: []")),
    _c("LR801", "rules/tests/welcome.yaml",
       _("a test field is unknown or missing"),
       _("A test has `events` and `expect` (required) and `name`, `until`, `tick`, `tolerance` "
         "(optional). `expect: []` says that nothing is sent."),
       _("  - name: greeting\n    events: [...]\n    expects: [...]"),
       _("  - name: greeting\n    events: [...]\n    expect: [...]")),
    _c("LR802", "rules/tests/welcome.yaml",
       _("a test's time or duration is not valid"),
       _("`until` and the `at` of expected pushes are times with a UTC offset "
         "(`2026-11-03T10:00:00+09:00`); `tick` and `tolerance` are durations (`1h`, `5m`)."),
       _("    until: 2026-11-05 00:00"),
       _("    until: 2026-11-05T00:00:00+09:00")),
    _c("LR803", "rules/tests/welcome.yaml",
       _("an event of a test is not valid"),
       _("The events of a test are written exactly as in docs/events.md, in YAML. The message "
         "says which field is wrong; words YAML reads as true/false or numbers need quotes."),
       _("      - {type: follow, friend: U1, at: 2026-11-02T10:00:00, sorce: qr=shipping}"),
       _("      - {type: follow, friend: U1, at: 2026-11-02T10:00:00+09:00, source: qr=shipping}")),
    _c("LR804", "rules/tests/welcome.yaml",
       _("an expected push is not valid"),
       _("An expected push is `{at: ..., friend: ..., rule: ..., messages: [...]}` with all four "
         "fields; `friend` is a text and `messages` a list of message names."),
       _("      - {at: 2026-11-03T10:00:00+09:00, friend: U1, messages: coupon15}"),
       _("      - {at: 2026-11-03T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}")),
    _c("LR805", "rules/tests/welcome.yaml",
       _("an expected push names an unknown rule or message"),
       _("The `rule` and `messages` of an expected push must exist in the rule folder; the help "
         "suggests the closest name."),
       _("      - {at: 2026-11-03T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon51]}"),
       _("      - {at: 2026-11-03T10:00:00+09:00, friend: U1, rule: welcome, messages: [coupon15]}")),
)}


# ----------------------------------------------------------------------------- the source


@functools.cache
def messages_by_code() -> dict[str, tuple[str, ...]]:
    """Code -> the English headlines raised with it (``E(code, msgid)`` calls in the source)."""
    found: dict[str, list[str]] = {}
    files = sorted(ENGINE.glob("*.py")) + [p for p in EXTRA_SOURCES if p.exists()]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "E"
                    and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[1], ast.Constant)):
                msgs = found.setdefault(node.args[0].value, [])
                if node.args[1].value not in msgs:
                    msgs.append(node.args[1].value)
    return {code: tuple(found[code]) for code in sorted(found)}


def lookup(code: str) -> Code | None:
    return CODES.get(code.strip().upper())


# ----------------------------------------------------------------------------- explain


def explain(code: Code, lang: str | None = None) -> str:
    """The ``linerules explain`` text of one code."""
    t = lambda text: render(text, lang)  # noqa: E731
    out = [f"{code.code}: {t(code.title)}", "", t(code.meaning), "",
           t(_("Wrong ({file}):", file=code.file))]
    out += ["    " + line for line in t(code.wrong).splitlines()]
    out += ["", t(_("Fixed:"))]
    out += ["    " + line for line in t(code.fixed).splitlines()]
    return "\n".join(out) + "\n"


def markdown(lang: str) -> str:
    """docs/errors.md (``en``) or docs/ja/errors.md (``ja``): every code, generated."""
    t = lambda text: render(text, lang)  # noqa: E731
    used = messages_by_code()
    out = [t(_("# Errors and warnings of `linerules validate`")), "",
           t(_("<!-- Generated from the message catalog by `make docs`; do not edit by hand. -->")), "",
           t(_("`linerules validate rules/` prints each problem as")), "",
           "    " + t(_("rules/welcome.rule:7:14: error[LR102]: unknown message `coupon51`")),
           "        send coupon51 if not purchased",
           "             ^^^^^^^^",
           "        " + t(_("help: did you mean `coupon15`?")), "",
           t(_("the file, line and column, the code of the problem, then the line itself with a "
               "caret under the exact place, then a `help:` line with a fix where there is one. "
               "**Errors** make the command exit with 1 (the runner refuses to load such a folder "
               "and keeps the one it has). **Warnings** point at something that is allowed but "
               "almost certainly not meant; the exit code stays 0. All problems are reported in "
               "one run.")), "",
           t(_("`linerules explain LR102` prints the explanation of a code in the terminal. "
               "`--lang ja` (or `language: ja` in settings.yaml) shows everything in Japanese.")), ""]
    for code in CODES.values():
        out += [f"## {code.code}: {t(code.title)}", "", t(code.meaning), ""]
        msgs = used.get(code.code, ())
        if msgs:
            out.append(t(_("Messages:")))
            out.append("")
            out += [f"- {_md_code(gettext_(m, lang))}" for m in msgs]
            out.append("")
        out += [t(_("Wrong ({file}):", file=code.file)), "", "```"]
        out += t(code.wrong).splitlines()
        out += ["```", "", t(_("Fixed:")), "", "```"]
        out += t(code.fixed).splitlines()
        out += ["```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _md_code(template: str) -> str:
    """A message template as Markdown: the placeholders shown as ``X``-like names."""
    shown = re.sub(r"\{(\w+)\}", r"<\1>", template.replace("{{", "{").replace("}}", "}"))
    return shown.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.codes``: write docs/errors.md and docs/ja/errors.md."""
    root = ENGINE.parent
    (root / "docs" / "errors.md").write_text(markdown("en"), encoding="utf-8")
    (root / "docs" / "ja").mkdir(exist_ok=True)
    (root / "docs" / "ja" / "errors.md").write_text(markdown("ja"), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
