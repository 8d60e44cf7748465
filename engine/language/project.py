"""Load a rule folder (or one ``.rule`` file in its folder) into an :class:`ir.Project`.

    result = load_project("rules")
    if result.project is None:
        print(render_text(result.diagnostics, result.sources))

The pipeline: read the files -> ``settings.yaml``, ``sale_calendar.yaml``, ``messages.yaml``
(their own loaders) -> parse every ``*.rule`` file -> :func:`engine.language.checks.check_files` ->
compile. Diagnostics of every stage are collected, deduplicated and sorted; the project is
built only when there is no error. Paths in diagnostics are as the folder was given
(``rules/welcome.rule`` for ``rules``).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from engine.i18n import E, _

from . import GRAMMAR_FILE, ir
from . import astnodes as A
from .astnodes import rule_name_of
from .cache import read_bytes
from .checks import Context, check_files
from .compiler import compile_rule, compile_segment
from .diagnostics import WARNING, Diagnostic, dedupe, has_errors, normalize_newlines

SETTINGS_FILE = "settings.yaml"
SALES_FILE = "sale_calendar.yaml"
MESSAGES_FILE = "messages.yaml"
RULE_SUFFIX = ".rule"


@dataclass
class LoadResult:
    """``project`` is None when there is any error; ``diagnostics`` holds errors and warnings;
    ``sources`` maps each path read to its text (for the caret renderer)."""

    project: ir.Project | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    #: ``language:`` of settings.yaml, when it has a valid one (even if other files have errors).
    language: str | None = None

    @property
    def ok(self) -> bool:
        return self.project is not None


def load_project(root: str | os.PathLike) -> LoadResult:
    """Load a rule folder, or a single ``.rule`` file checked against its folder's YAML files
    and rule names (only that file's rules are compiled). Never raises on bad input."""
    with collector_paused():
        return _load(os.fspath(root))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the duration (when it was on). A load keeps tens
    of thousands of new nodes alive until it ends; the collector would trace them again and
    again, once over the whole heap, and find nothing to free: syntax trees and the compiled
    project hold no reference cycles, so what a load drops is freed by reference counting (the
    few small cycles a message template's analysis leaves wait for the next collection). That
    saves about a tenth of a large folder's load. The deliver stage pauses it while it decides
    a chunk (engine/stages/deliver.py) for the same reason: a chunk's thousands of rows hold no
    cycles, and each collection of the older generations would walk them all again."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load(root: str) -> LoadResult:
    if not os.path.exists(root):
        return _fail(root, E("LR001", "`{path}` does not exist (give a rule folder or a .rule file)", path=root))
    if os.path.isfile(root):
        if not root.endswith(RULE_SUFFIX):
            return _fail(root, E("LR001", "`{path}` is not a .rule file or a rule folder", path=root))
        folder, only = os.path.dirname(root), os.path.basename(root)
    else:
        folder, only = root, None
    try:
        with os.scandir(folder or ".") as listing:
            entries = {e.name: e for e in listing}
    except OSError as exc:
        return _fail(root, E("LR001", "cannot read `{path}`: {reason}", path=root, reason=exc.strerror or exc))
    names = sorted(n for n, e in entries.items() if n.endswith(RULE_SUFFIX) and e.is_file())

    loader = _Loader()
    settings, sales, messages = loader.yaml_files(folder, entries)
    known = loader.names
    rule_files: list[A.RuleFile] = []
    other_rules: set[str] = set()
    other_segments: set[str] = set()
    for name in names:
        path = os.path.join(folder, name)
        text = loader.read(path, quiet=only is not None and name != only)
        if text is None:
            continue
        parsed, diags = loader.parsed(path, text)
        if only is not None and name != only:
            # A sibling of the file being validated: only its names matter.
            other_rules.update(rule_name_of(i, path) for i in parsed.items if isinstance(i, A.RuleDef))
            other_rules.update(parsed.broken_rules)
            other_segments.update(i.name.value for i in parsed.items if isinstance(i, A.SegmentDef))
            other_segments.update(parsed.broken_segments)
            del loader.sources[path]
            continue
        loader.diagnostics += diags
        rule_files.append(parsed)
    messages_path = os.path.join(folder, MESSAGES_FILE)
    ctx = Context(
        messages=messages if known.messages_readable else None,
        broken_messages=known.broken_messages,
        menus=known.menus,
        sales=sales if known.sales_whole else None,
        other_rules=frozenset(other_rules),
        other_segments=frozenset(other_segments),
        report_unused=only is None,
        messages_path=messages_path,
        messages_text=loader.sources.get(messages_path, ""),
        window=settings.window,
        tz=settings.tz,
        utm=settings.utm and not settings.base_url,
    )
    loader.diagnostics += _empty_rule_files(folder, rule_files, whole_folder=only is None)
    result = _finish(
        rule_files,
        ctx,
        loader.diagnostics,
        loader.sources,
        settings=settings,
        messages=messages,
        sales=sales,
        root=root,
        version=loader.version(),
    )
    result.language = settings.language or loader.written_language
    return result


def compile_source(
    text: str,
    *,
    path: str = "test.rule",
    messages: Mapping[str, ir.MessageDef] | None = None,
    settings: ir.Settings | None = None,
    sales: tuple[ir.Sale, ...] | None = None,
) -> LoadResult:
    """Build a project from rule text alone (for tests). ``messages=None`` skips the message
    name checks, ``settings=None`` the rich menu checks (defaults apply), ``sales=None`` the
    sale kind checks."""
    from .parser import parse_file

    parsed, diags = parse_file(path, text)
    ctx = Context(
        messages=messages,
        menus=frozenset(dict(settings.rich_menus)) if settings is not None else None,
        sales=sales,
        window=settings.window if settings is not None else None,
        tz=settings.tz if settings is not None else None,
        utm=settings is not None and settings.utm and not settings.base_url,
    )
    version = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return _finish(
        [parsed],
        ctx,
        diags,
        {path: text},
        settings=settings or ir.Settings(),
        messages=dict(messages or {}),
        sales=tuple(sales or ()),
        root=os.path.dirname(path),
        version=version,
    )


def _finish(
    files: list[A.RuleFile],
    ctx: Context,
    diags: list[Diagnostic],
    sources: dict[str, str],
    *,
    settings: ir.Settings,
    messages: Mapping[str, ir.MessageDef],
    sales: tuple[ir.Sale, ...],
    root: str,
    version: str,
) -> LoadResult:
    """Check, then compile when there is no error."""
    diags = dedupe([*diags, *check_files(files, ctx)])
    if has_errors(diags):
        return LoadResult(None, diags, sources)
    rules: dict[str, ir.Rule] = {}
    segments: dict[str, ir.Segment] = {}
    for f in files:
        for item in f.items:
            if isinstance(item, A.RuleDef):
                rule = compile_rule(item, f.path)
                rules[rule.name] = rule
            else:
                segments[item.name.value] = compile_segment(item)
    project = ir.Project(
        rules=rules,
        segments=segments,
        messages=dict(messages),
        sales=sales,
        settings=settings,
        root=root,
        version=version,
    )
    return LoadResult(project, diags, sources)


def _fail(path: str, message: str, help: str | None = None) -> LoadResult:
    return LoadResult(None, [Diagnostic(path, 1, 1, "error", message, help)], {})


def _empty_rule_files(folder: str, files: list[A.RuleFile], *, whole_folder: bool) -> list[Diagnostic]:
    """A warning for each rule file that holds no rule or segment, and for a folder without
    rule files: "ok: 0 rules" is never silent."""
    if not files and whole_folder:
        shown = folder or "."
        return [
            Diagnostic(
                shown,
                1,
                1,
                WARNING,
                E("LR007", "`{path}` holds no .rule files, so nothing will be sent", path=shown),
                _("give the folder that holds the rules (by default `rules`)"),
            )
        ]
    return [
        Diagnostic(
            f.path,
            1,
            1,
            WARNING,
            E("LR007", "this file holds no rule or segment"),
            _("a rule starts with `rule NAME` or `when`; see docs/language.md"),
        )
        for f in files
        if not f.items and not f.has_syntax_errors
    ]


#: What a YAML file's checked result depends on besides its path and text: the code that reads
#: and checks it (this package's modules; PyYAML, whose folder holds libyaml's binding;
#: yamlcore; Liquid; the line limits; the zone database) and the Python that pickled it. Found
#: without importing any of them (:func:`engine.language.cache.module_stamp`).
_CHECKED_BY = (
    "engine.language.project",
    "engine.language.yamlpos",
    "engine.language.settings",
    "engine.language.sales",
    "engine.language.messages",
    "engine.language.liquidenv",
    "engine.language.ir",
    "engine.language.records",
    "engine.language.diagnostics",
    "engine.language.cache",
    "engine.line.limits",
    "engine.i18n",
    "yaml",
    "yamlcore",
    "liquid",
    "tzdata",
)
_checked_stamp: str | None = None
#: What a rule file's parse depends on besides its path and text: the parser and the modules
#: whose values its syntax tree and diagnostics hold, Lark (its version and tables), the
#: grammar file and the Python that pickled it.
_PARSED_BY = (
    "engine.language.parser",
    "engine.language.astnodes",
    "engine.language.records",
    "engine.language.diagnostics",
    "engine.language.ir",
    "engine.runtime.events",
    "engine.i18n",
    "lark",
)
_parsed_stamp: str | None = None
#: Rule files' parses kept at most (the oldest go): a few big folders' worth.
PARSES_KEPT = 2000


class _Checked:
    """The checked results of a folder's YAML files (each its reader's answer), kept in the
    user's cache folder in one entry per folder: a file checked before, unchanged, by the same
    code, is a digest of its text and a look-up. Anything else (another text, path or zone,
    other code, a damaged or missing entry) is checked again, and the entry written again."""

    def __init__(self, folder: str):
        global _checked_stamp
        from .cache import read_pickled

        if _checked_stamp is None:
            import sys
            import zoneinfo

            from .cache import module_stamp

            _checked_stamp = "|".join((sys.version, os.pathsep.join(zoneinfo.TZPATH), module_stamp(*_CHECKED_BY)))
        where = os.path.abspath(folder or ".").encode("utf-8", "surrogatepass")
        self.entry = "checked-" + hashlib.sha256(where).hexdigest()[:32]
        kept = read_pickled(self.entry)
        self.kept: dict = kept if isinstance(kept, dict) else {}
        self.changed = False

    def result(self, name: str, path: str, text: str, tz: ZoneInfo | None = None):
        """What the reader of ``name`` says of ``text`` read from ``path`` (``tz``: the zone
        the sale calendar's times are in)."""
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        key = "\0".join((path, tz.key if tz is not None else "", digest, _checked_stamp))
        found = self.kept.get(name)
        if isinstance(found, tuple) and len(found) == 2 and found[0] == key:
            return found[1]
        # Kept as tuples of IR values, diagnostics and names: reading them back needs none of
        # the YAML modules (a warm `validate` imports neither PyYAML nor Liquid).
        if name == SETTINGS_FILE:
            from .settings import read_settings_file

            s = read_settings_file(path, text)
            value = (s.settings, s.menu_names, s.readable, s.diagnostics)
        elif name == SALES_FILE:
            from .sales import read_sales

            value = read_sales(path, text, tz)
        else:
            from .messages import read_messages

            m = read_messages(path, text)
            value = (m.definitions, m.broken, m.readable, m.diagnostics)
        self.kept[name] = (key, value)
        self.changed = True
        return value

    def save(self) -> None:
        if self.changed:
            from .cache import write_pickled

            write_pickled(self.entry, self.kept, prefix="checked-")
            self.changed = False


@dataclass
class _YamlNames:
    """What the YAML files tell the rule checks about names (see :class:`Context`)."""

    messages_readable: bool = True
    broken_messages: frozenset[str] = frozenset()
    menus: frozenset[str] | None = frozenset()
    sales_whole: bool = True


def _encoding_help(data: bytes) -> str:
    """How to fix a file that is not UTF-8, naming the encoding it seems to be in."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _("it is saved as UTF-16: save it as UTF-8 (in Notepad: Save As, Encoding: UTF-8)")
    try:
        data.decode("cp932")
    except UnicodeDecodeError:
        return _("save it as UTF-8")
    return _("it looks like Shift_JIS (CP932): save it as UTF-8 (in Notepad: Save As, Encoding: UTF-8)")


class _Loader:
    """Reads files, keeping their text (for carets and the project version) and diagnostics."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}
        self.diagnostics: list[Diagnostic] = []
        self.names = _YamlNames()
        #: the ``language:`` line of a settings.yaml that could not be read as a whole
        self.written_language: str | None = None

    def read(self, path: str, *, quiet: bool = False) -> str | None:
        """The file's text, or None (with an error unless ``quiet``) when it cannot be read."""
        try:
            data = read_bytes(path)
        except OSError as exc:
            if not quiet:
                self.diagnostics.append(
                    Diagnostic(
                        path, 1, 1, "error", E("LR001", "cannot read the file: {reason}", reason=exc.strerror or exc)
                    )
                )
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not quiet:
                before = data[: exc.start]
                line = before.count(b"\n") + 1
                column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
                self.diagnostics.append(
                    Diagnostic(
                        path, line, column, "error", E("LR002", "the file is not UTF-8 text"), help=_encoding_help(data)
                    )
                )
            return None
        text = normalize_newlines(text.removeprefix("\ufeff"))
        self.sources[path] = text
        return text

    def yaml_files(
        self, folder: str, entries: Mapping[str, os.DirEntry]
    ) -> tuple[ir.Settings, tuple[ir.Sale, ...], dict[str, ir.MessageDef]]:
        """Settings (defaults when absent), sales (none when absent), messages (none when
        absent), each loaded by its own module. ``entries``: what the folder holds."""
        from .settings import with_environment

        def exists(name: str) -> bool:  # as os.path.exists, without asking the system again
            entry = entries.get(name)
            return entry is not None and (not entry.is_symlink() or os.path.exists(entry.path))

        # A YAML file that exists but cannot be read (not UTF-8, no permission) is like one
        # that is not valid YAML: the rules' names are not checked against it (no cascade).
        # The same for `messages.yml` & co.: never read, so they must not be silently ignored.
        misnamed = self._misnamed_yaml(folder, exists)
        if MESSAGES_FILE in misnamed:
            self.names.messages_readable = False
        if SETTINGS_FILE in misnamed:
            self.names.menus = None
        if SALES_FILE in misnamed:
            self.names.sales_whole = False
        checked = _Checked(folder)
        settings = ir.Settings()
        path = os.path.join(folder, SETTINGS_FILE)
        if exists(SETTINGS_FILE):
            readable = False
            if (text := self.read(path)) is None:
                self.names.menus = None
            else:
                settings, menus, readable, diags = checked.result(SETTINGS_FILE, path, text)
                settings = with_environment(settings)
                self.names.menus = menus if readable else None
                self.diagnostics += diags
            if not readable:  # its diagnostics still speak the language it names
                from .settings import written_language

                self.written_language = written_language(path)
        try:
            tz = ZoneInfo(settings.timezone)
        except (ValueError, KeyError, OSError):  # reported by load_settings
            tz = ZoneInfo(ir.Settings().timezone)
        sales: tuple[ir.Sale, ...] = ()
        path = os.path.join(folder, SALES_FILE)
        if exists(SALES_FILE):
            if (text := self.read(path)) is None:
                self.names.sales_whole = False
            else:
                sales, self.names.sales_whole, diags = checked.result(SALES_FILE, path, text, tz)
                self.diagnostics += diags
        messages: dict[str, ir.MessageDef] = {}
        path = os.path.join(folder, MESSAGES_FILE)
        if exists(MESSAGES_FILE) and (text := self.read(path)) is None:
            self.names.messages_readable = False
        elif exists(MESSAGES_FILE):
            messages, broken, readable, diags = checked.result(MESSAGES_FILE, path, text)
            self.names.messages_readable = readable
            self.names.broken_messages = broken
            self.diagnostics += diags
        checked.save()
        return settings, sales, messages

    def parsed(self, path: str, text: str) -> tuple[A.RuleFile, list[Diagnostic]]:
        """:func:`engine.language.parser.parse_file` of a rule file, kept in the cache folder:
        a file parsed before, unchanged, at the same path, by the same code, is one read of
        its entry, so a folder whose rule files are all unchanged loads without Lark (its
        import, its tables and its lexers' regular expressions are most of a warm start-up)."""
        from .cache import read_pickled, write_pickled

        global _parsed_stamp
        if _parsed_stamp is None:
            import sys

            from .cache import module_stamp

            try:
                st = os.stat(GRAMMAR_FILE)
                grammar = f"{GRAMMAR_FILE}:{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                grammar = GRAMMAR_FILE
            _parsed_stamp = "|".join((sys.version, grammar, module_stamp(*_PARSED_BY)))
        key = "\0".join((path, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), _parsed_stamp))
        entry = "parsed-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        found = read_pickled(entry)
        if isinstance(found, tuple) and len(found) == 2 and found[0] == key:
            return found[1]
        from .parser import parse_file

        value = parse_file(path, text)
        write_pickled(entry, (key, value), prefix="parsed-", limit=PARSES_KEPT)
        return value

    def _misnamed_yaml(self, folder: str, exists: Callable[[str], bool]) -> set[str]:
        """The YAML files written as ``.yml``: an error each (they are not read)."""
        found = set()
        for name in (SETTINGS_FILE, SALES_FILE, MESSAGES_FILE):
            other = name.removesuffix(".yaml") + ".yml"
            path = os.path.join(folder, other)
            if not exists(other):
                continue
            both = exists(name)
            self.diagnostics.append(
                Diagnostic(
                    path,
                    1,
                    1,
                    "error",
                    E("LR008", "`{other}` is not read: linerules reads `{name}`", other=other, name=name),
                    help=_("merge it into {name} and remove it", name=name)
                    if both
                    else _("rename it to {name}", name=name),
                )
            )
            if not both:
                found.add(name)
        return found

    def version(self) -> str:
        """A hash over every file read."""
        h = hashlib.sha256()
        for path in sorted(self.sources):
            h.update(os.path.basename(path).encode("utf-8") + b"\0")
            h.update(self.sources[path].encode("utf-8") + b"\0")
        return h.hexdigest()[:16]
