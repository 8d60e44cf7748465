"""``linerules test [DIR]``: rule tests kept beside the rules, in ``DIR/tests/*.yaml``.

A test is a timeline of events and the pushes it must cause::

    name: shipping QR friends get the coupon unless they bought
    until: 2026-11-10T00:00:00+09:00      # optional; default as in simulate
    tick: 1h                              # optional; how often conditions are checked
    tolerance: 0m                         # optional; how far an expected `at` may be off
    events:
      - {type: follow, friend: U1, at: 2026-11-01T10:00:00+09:00, source: qr=shipping}
    expect:
      - {at: 2026-11-01T10:00:00+09:00, friend: U1, rule: welcome, messages: [greeting_shipping]}

A file holds one such test, or several as a list under ``tests:``. Each test runs the same
engine as ``linerules simulate`` (a fresh temporary database, a virtual clock) and passes when
the pushes are exactly the expected ones. The format is described in docs/testing-rules.md.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from engine import i18n
from engine.i18n import E, Text, _, n_, render
from engine.language import ir
from engine.language.diagnostics import Diagnostic, Span, did_you_mean, has_errors, render_text
from engine.language.timeutil import parse_duration
from engine.language.yamlpos import Path, YamlFile

from .events import Event, EventError
from .intake import AT_EXAMPLE, parse_event_obj

TEST_FIELDS = ("name", "until", "tick", "tolerance", "events", "expect")
EXPECT_FIELDS = ("at", "friend", "rule", "messages")
DEFAULT_TICK = 3600


@dataclass(frozen=True)
class Push:
    """One push: expected (``line`` = its line in the test file) or made by the engine."""

    at: dt.datetime
    friend: str
    rule: str
    messages: tuple[str, ...]
    line: int | None = None


@dataclass(frozen=True)
class RuleTest:
    name: str
    path: str
    line: int
    events: tuple[Event, ...]
    expect: tuple[Push, ...]
    until: dt.datetime | None = None
    tick: int = DEFAULT_TICK
    tolerance: int = 0


@dataclass(frozen=True)
class DiffLine:
    """``sign`` is ``" "`` (as expected), ``"-"`` (expected, missing) or ``"+"`` (unexpected)."""

    sign: str
    push: Push


# ----------------------------------------------------------------------------- reading test files


class _TestFile:
    """Turns one parsed YAML test file into :class:`RuleTest` values, collecting diagnostics."""

    def __init__(self, path: str, text: str, project: ir.Project):
        self.f = YamlFile(path, text)
        self.project = project

    def error(self, path: Path, message: str, help: str | None = None, *, key: bool = False) -> None:
        self.f.error(self.f.span_at(path, key=key), message, help)

    def tests(self) -> list[RuleTest]:
        if self.f.root is None:
            if not self.f.diagnostics:  # empty, or comments only: a test file that tests nothing
                self.f.error(
                    Span(self.f.path, 1, 1),
                    E("LR800", "this test file holds no tests"),
                    help=_("write a test with `events` and `expect` (docs/testing-rules.md), or delete the file"),
                )
            return []
        doc = self.f.plain(self.f.root)
        if self.f.diagnostics:
            return []
        if isinstance(doc, dict) and "tests" in doc:
            for key in doc:
                if key != "tests":
                    self.error(
                        (key,),
                        E("LR800", "`{key}` cannot sit beside `tests:`", key=key),
                        key=True,
                        help=_("put it inside each test of the `tests:` list"),
                    )
            items = doc["tests"]
            if not isinstance(items, list) or not items:
                self.error(
                    ("tests",),
                    E("LR800", "`tests:` must be a list of tests")
                    if not isinstance(items, list)
                    else E("LR800", "`tests:` holds no tests"),
                    help=_("each item has `name`, `events` and `expect`"),
                )
                return []
            return [t for i, item in enumerate(items) if (t := self.test(item, ("tests", i))) is not None]
        test = self.test(doc, ())
        return [test] if test is not None else []

    def test(self, value: Any, path: Path) -> RuleTest | None:
        """One test mapping, or None (with diagnostics) when it is not usable."""
        before = len(self.f.diagnostics)
        if not isinstance(value, dict):
            self.error(
                path,
                E("LR800", "a test must be a mapping with `events` and `expect`"),
                help=_("see docs/testing-rules.md for the format"),
            )
            return None
        for key in value:
            if key not in TEST_FIELDS:
                self.error(
                    path + (key,),
                    E("LR801", "unknown test field `{key}`", key=key),
                    did_you_mean(key, TEST_FIELDS),
                    key=True,
                )
        for key in ("events", "expect"):
            if key not in value:
                self.error(
                    path,
                    E("LR801", "this test has no `{key}:` list", key=key),
                    help=_("`expect: []` says that no push is expected") if key == "expect" else None,
                )
        name = value.get("name")
        if name is not None and not isinstance(name, str):
            self.error(path + ("name",), E("LR802", "`name` must be text"))
        until = self.time(value["until"], path + ("until",)) if "until" in value else None
        tick = self.duration(value, path, "tick", DEFAULT_TICK)
        tolerance = self.duration(value, path, "tolerance", 0)
        events = self.items(value.get("events", []), path + ("events",), self.event)
        expect = self.items(value.get("expect", []), path + ("expect",), self.expected)
        if until is not None and len(self.f.diagnostics) == before:
            for i, event in enumerate(events):
                if event.at > until:
                    self.error(
                        path + ("events", i),
                        E(
                            "LR802",
                            "this event is after `until` ({until}), so the test would not replay it",
                            until=until.isoformat(timespec="seconds"),
                        ),
                        help=_("move `until` later, or leave the event out"),
                    )
        if len(self.f.diagnostics) > before:
            return None
        line = self.f.span_at(path).line
        if not isinstance(name, str):
            stem = os.path.splitext(os.path.basename(self.f.path))[0]
            name = stem if not path else f"{stem} #{path[-1] + 1}"
        return RuleTest(
            name, self.f.path, line, tuple(events), tuple(sorted(expect, key=_order)), until, tick, tolerance
        )

    def items(self, value: Any, path: Path, read) -> list:
        if not isinstance(value, list):
            self.error(path, E("LR800", "`{key}` must be a list", key=path[-1]))
            return []
        return [x for i, item in enumerate(value) if (x := read(item, path + (i,))) is not None]

    def duration(self, value: dict, path: Path, key: str, default: int) -> int:
        if key not in value:
            return default
        try:
            seconds = parse_duration(str(value[key]))
        except ValueError as e:
            self.error(
                path + (key,),
                e.args[0]
                if isinstance(e.args[0], Text)
                else E("LR802", "`{value}` is not a duration like `1h`", value=value[key]),
            )
            return default
        if key == "tick" and seconds <= 0:
            self.error(path + (key,), E("LR802", "`tick` must be longer than 0"), help=_("e.g. tick: 1h"))
            return default
        return seconds

    def time(self, value: Any, path: Path) -> dt.datetime | None:
        when = None
        if isinstance(value, (str, dt.date)):  # YAML makes dates and times of unquoted ones
            try:
                when = dt.datetime.fromisoformat(_jsonish(value))
            except ValueError:
                pass
        if when is None:
            self.error(
                path,
                E("LR802", "`{value}` is not a date and time, like {example}", value=_text(value), example=AT_EXAMPLE),
            )
        elif when.tzinfo is None:
            self.error(
                path, E("LR802", "`{value}` needs a UTC offset, like {example}", value=_text(value), example=AT_EXAMPLE)
            )
            return None
        return when

    def event(self, value: Any, path: Path) -> Event | None:
        line = self.f.span_at(path).line
        try:
            event = parse_event_obj(_jsonish(value), line, every=True)
        except EventError as e:
            for problem in (e, *e.others):
                self.event_error(problem, path)
            return None
        rule = event.data.get("rule") if event.type == "click" else None
        if rule is not None and rule not in self.project.rules:
            # a click on a rule's link: a misspelt rule would make `clicked` quietly never hold
            self.error(
                path + ("rule",),
                E("LR805", "unknown rule `{name}`", name=_text(rule)),
                did_you_mean(str(rule), self.project.rules),
            )
            return None
        return event

    def event_error(self, e: EventError, path: Path) -> None:
        """Put an intake error on the YAML node of the field it names."""
        field_path = path + tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", e.field or ""))
        unknown = "is not a field" in e.message
        help = None
        node = self.f.nodes.get(field_path)
        if "must be a string" in e.message and isinstance(node, yaml.ScalarNode) and node.style is None:
            parsed = self.f.scalar(node)
            what = (
                ("true" if parsed else "false")
                if isinstance(parsed, bool)
                else _("a number")
                if isinstance(parsed, (int, float))
                else _("a date")
            )
            help = _('YAML reads `{value}` as {what}; write it in quotes: "{value}"', value=node.value, what=what)
        # "event `at` needs ...", "event `type`: unknown type `viewed` ..."
        verb = str(e.message).split(" ", 1)[0] in {"must", "is", "needs", "has", "holds"}
        if e.field and verb:
            message = E("LR803", "event `{field}` {reason}", field=e.field, reason=e.message)
        elif e.field:
            message = E("LR803", "event `{field}`: {reason}", field=e.field, reason=e.message)
        else:
            message = E("LR803", "event {reason}", reason=e.message)
        self.error(field_path, message, help, key=unknown)

    def expected(self, value: Any, path: Path) -> Push | None:
        if not isinstance(value, dict):
            self.error(
                path,
                E(
                    "LR804",
                    "an expected push is a mapping like {at: ..., friend: U1, rule: welcome, messages: [greeting]}",
                ),
            )
            return None
        before = len(self.f.diagnostics)
        for key in value:
            if key not in EXPECT_FIELDS:
                self.error(
                    path + (key,),
                    E("LR804", "unknown field `{key}` of an expected push", key=key),
                    did_you_mean(key, EXPECT_FIELDS),
                    key=True,
                )
        for key in EXPECT_FIELDS:
            if key not in value:
                self.error(path, E("LR804", "this expected push has no `{key}`", key=key))
        if len(self.f.diagnostics) > before:
            return None
        at = self.time(value["at"], path + ("at",))
        friend, rule, messages = value["friend"], value["rule"], value["messages"]
        if not isinstance(friend, str) or not friend:
            self.error(
                path + ("friend",),
                E("LR804", "`friend` must be a friend id (text)"),
                _('write it in quotes: "{value}"', value=_text(friend)) if friend is not None else None,
            )
        if rule not in self.project.rules:
            self.error(
                path + ("rule",),
                E("LR805", "unknown rule `{name}`", name=_text(rule)),
                did_you_mean(str(rule), self.project.rules),
            )
        if isinstance(messages, str):
            messages = [messages]
        if not isinstance(messages, list) or not messages:
            self.error(path + ("messages",), E("LR804", "`messages` must be a list of message names"))
        else:
            for i, name in enumerate(messages):
                if name not in self.project.messages:
                    self.error(
                        path + ("messages", i),
                        E("LR805", "unknown message `{name}`", name=_text(name)),
                        did_you_mean(str(name), self.project.messages),
                    )
        if len(self.f.diagnostics) > before or at is None:
            return None
        return Push(at, friend, rule, tuple(messages), self.f.span_at(path).line)


def _text(value: Any) -> str:
    """A value as the marketer wrote it, for messages."""
    value = _jsonish(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _jsonish(value: Any) -> Any:
    """YAML values as JSON would give them: dates and times become ISO 8601 text."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonish(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonish(v) for v in value]
    return value


def load_tests(path: str, text: str, project: ir.Project) -> tuple[list[RuleTest], list[Diagnostic]]:
    """The tests of one file, or diagnostics (``path:line:col``) when any part is malformed;
    rule and message names are checked against ``project``."""
    reader = _TestFile(path, text, project)
    tests = reader.tests()
    diagnostics = sorted(reader.f.diagnostics, key=lambda d: (d.line, d.column))  # in the file's order
    if has_errors(diagnostics):
        return [], diagnostics
    return tests, diagnostics


# ----------------------------------------------------------------------------- comparing


def _order(push: Push) -> tuple:
    return (push.at.timestamp(), push.friend, push.rule, push.messages)


def to_push(item: dict[str, Any]) -> Push:
    """A push as ``run_timeline`` reports it (``at`` as ISO text or a datetime)."""
    at = item["at"]
    if not isinstance(at, dt.datetime):
        at = dt.datetime.fromisoformat(at)
    return Push(at, item["friend"], item["rule"], tuple(item["messages"]))


def compare(expected: Sequence[Push], actual: Sequence[Push], tolerance: int = 0) -> list[DiffLine]:
    """Match every expected push to an actual one with the same friend, rule and messages whose
    time is within ``tolerance`` seconds (the closest one wins); the rest are missing (``-``)
    or unexpected (``+``). Lines come in time order; a matched push shows its actual time."""
    unmatched = sorted(actual, key=_order)
    lines = []
    for want in sorted(expected, key=_order):
        candidates = [
            p
            for p in unmatched
            if (p.friend, p.rule, p.messages) == (want.friend, want.rule, want.messages)
            and abs((p.at - want.at).total_seconds()) <= tolerance
        ]
        if candidates:
            got = min(candidates, key=lambda p: abs((p.at - want.at).total_seconds()))
            unmatched.remove(got)
            lines.append(DiffLine(" ", got))
        else:
            lines.append(DiffLine("-", want))
    lines.extend(DiffLine("+", p) for p in unmatched)
    return sorted(lines, key=lambda d: (*_order(d.push), d.sign != "-"))


def _scalar(text: str) -> str:
    """A YAML flow scalar: plain when YAML reads it back as the same text, else quoted."""
    try:
        plain = ir.NAME_RE.fullmatch(text) is not None and yaml.safe_load(text) == text
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text, ensure_ascii=False)


def format_push(push: Push, tz: dt.tzinfo) -> str:
    """A push as a YAML flow mapping, ready to paste into ``expect:``."""
    at = push.at.astimezone(tz).isoformat(timespec="seconds")
    messages = ", ".join(_scalar(m) for m in push.messages)
    return f"{{at: {at}, friend: {_scalar(push.friend)}, rule: {_scalar(push.rule)}, messages: [{messages}]}}"


def format_diff(lines: Iterable[DiffLine], tz: dt.tzinfo) -> str:
    """Unified-style: ``--- expected`` / ``+++ actual``, then one line per push."""
    out = [render(_("--- expected")), render(_("+++ actual"))]
    out.extend(f"{d.sign} {format_push(d.push, tz)}" for d in lines)
    return "\n".join(out)


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Outcome:
    test: RuleTest
    diff: tuple[DiffLine, ...] = ()
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(d.sign == " " for d in self.diff)


def run_test(project: ir.Project, test: RuleTest) -> Outcome:
    """Replay the test's timeline with the simulator and compare the pushes."""
    from .simulate import run_timeline

    try:
        pushes = run_timeline(project, list(test.events), until=test.until, tick_seconds=test.tick, db_path=None)
    except Exception as exc:  # an engine failure is reported per test, never as a traceback
        return Outcome(test, error=_("the engine stopped: {kind}: {reason}", kind=type(exc).__name__, reason=exc))
    actual = [to_push(p) for p in pushes]
    return Outcome(test, tuple(compare(test.expect, actual, test.tolerance)))


def find_test_files(directory: str) -> list[str]:
    """``DIR/tests/*.yaml`` and ``*.yml``, sorted."""
    folder = os.path.join(directory, "tests")
    return sorted(glob.glob(os.path.join(folder, "*.yaml")) + glob.glob(os.path.join(folder, "*.yml")))


def main(directory: str, out=None, err=None, lang: str | None = None) -> int:
    """Run every rule test of ``directory``; print a diff per failure and a summary line.
    Exit status: 0 when all pass, 1 on any failure, malformed test file or invalid rules."""
    from engine.language.project import load_project

    out = out or sys.stdout
    err = err or sys.stderr
    i18n.use(i18n.choose(lang))
    if not os.path.isdir(directory):
        print(render(_("error: {folder} is not a folder", folder=directory)), file=err)
        return 1
    loaded = load_project(directory)
    i18n.use(i18n.choose(lang, loaded.language))
    if has_errors(loaded.diagnostics) or loaded.project is None:
        err.write(render_text([d for d in loaded.diagnostics if d.is_error], loaded.sources))
        print(
            render(_("error: the rules in {folder} are invalid; fix them before testing", folder=directory)), file=err
        )
        return 1
    project = loaded.project
    files = find_test_files(directory)
    if not files:
        print(render(_("error: no rule tests in {folder} (*.yaml)", folder=os.path.join(directory, "tests"))), file=err)
        return 1
    passed = failed = broken = 0
    tz = project.settings.tz
    for path in files:
        text, problem = _read_test_file(path)
        if problem is not None:
            out.flush()
            err.write(render_text([problem], {}))
            err.flush()
            broken += 1
            continue
        tests, diags = load_tests(path, text, project)
        if has_errors(diags):
            out.flush()  # keep the report in order when both streams go to one log
            err.write(render_text(diags, {path: text}))
            err.flush()
            broken += 1
            continue
        for test in tests:
            outcome = run_test(project, test)
            where = f"{test.path}:{test.line}"
            if outcome.passed:
                passed += 1
                print(f"PASS {where} {test.name}", file=out)
                continue
            failed += 1
            print(f"FAIL {where} {test.name}", file=out)
            body = render(outcome.error) if outcome.error else format_diff(outcome.diff, tz)
            print("\n".join(f"    {line}" for line in body.splitlines()), file=out)
    summary = _("{passed} passed, {failed} failed", passed=passed, failed=failed)
    if broken:
        summary = _(
            "{summary}, {broken}",
            summary=summary,
            broken=n_("{n} test file with errors", "{n} test files with errors", broken),
        )
    print(render(summary), file=out)
    return 1 if failed or broken else 0


def _read_test_file(path: str) -> tuple[str, Diagnostic | None]:
    """A test file's text (newlines as LF, no BOM), or a diagnostic when it cannot be read."""
    from engine.language.project import _encoding_help
    from engine.language.yamlpos import normalize_newlines

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return "", Diagnostic(
            path, 1, 1, "error", E("LR001", "cannot read the file: {reason}", reason=exc.strerror or exc)
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        return "", Diagnostic(
            path, line, column, "error", E("LR002", "the file is not UTF-8 text"), help=_encoding_help(data)
        )
    return normalize_newlines(text.removeprefix("\ufeff")), None
