"""YAML that remembers where every value came from.

The files beside the rules (``settings.yaml``, ``sale_calendar.yaml``, ``messages.yaml``) are
read with :func:`yaml.compose` and the YAML 1.2 core schema (``yamlcore``'s resolver and
constructors: ``yes``, ``no``, ``on``, ``20:13`` and dates are text, only ``true``/``false`` are
booleans), so every key and value keeps its line and column. :class:`YamlFile` turns that tree
into plain Python values while recording the node behind each path, and reports problems as
:class:`Diagnostic` values instead of raising: syntax errors (in plain words, with a ``help:``),
duplicate keys, non-text keys, unsupported tags, runaway aliases, lone surrogates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml
import yamlcore
from yaml.constructor import ConstructorError, SafeConstructor
from yamlcore.loader import CommonConstructor

from engine.i18n import E, _

from .diagnostics import Diagnostic, Span, normalize_newlines  # noqa: F401  (normalize_newlines: also used from here)

#: A path from the document root: mapping keys (str) and sequence indexes (int).
Path = tuple[str | int, ...]

MAX_DEPTH = 64
MAX_NODES = 200_000

#: The tags of plain YAML values; anything else (``!!binary``, ``!!python/...``) is refused.
_ANY_TAG = re.compile(r"^tag:yaml\.org,2002:(null|bool|int|float|timestamp|str|map|seq)$")


class _Loader(yamlcore.CoreLoader):
    """The YAML 1.2 core schema, plus the merge key ``<<`` (not part of YAML 1.2, but widely
    used to share fields between messages)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class _Constructor(CommonConstructor):
    """The YAML 1.2 core constructors, used one scalar at a time (and for merges)."""

    flatten_mapping = SafeConstructor.flatten_mapping


_Constructor.init_constructors("core")

#: Words YAML 1.1 read as booleans; YAML 1.2 (which linerules reads) keeps them as text.
YAML_1_1_BOOLEANS = {"yes": True, "y": True, "on": True, "no": False, "n": False, "off": False}

#: Two surrogates written as escapes (``"\ud83d\ude00"``) stand for one character, as in JSON.
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _join_pairs(value: str) -> str:
    return _SURROGATE_PAIR.sub(lambda m: m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le"), value)


class _FastLoader(getattr(yamlcore, "CCoreLoader", _Loader)):
    """:class:`_Loader` on libyaml (when PyYAML has it): the same nodes, marks and values,
    several times faster than the pure-Python scanner."""


_FastLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
#: Documents nested deeper than this are read by the pure-Python loader, whose limits the
#: diagnostics describe.
_FAST_DEPTH = 50


def _compose_fast(text: str) -> yaml.Node | None:
    """The document's root node read by libyaml, or None when that is not possible: no libyaml,
    an empty document, a tab anywhere, any error (the pure-Python loader then reads it again and explains the
    error in its words), nesting deeper than :data:`_FAST_DEPTH` or more than
    :data:`MAX_NODES` nodes. libyaml says ``""`` for
    the plain style, which is ``None`` here as from the pure-Python loader."""
    if _FastLoader is _Loader or not getattr(yaml, "__with_libyaml__", False):
        return None
    if "\t" in text:  # libyaml accepts tabs where the pure-Python reader (and its messages) refuse them
        return None
    try:
        root = yaml.compose(text, Loader=_FastLoader)
    except Exception:  # noqa: BLE001 - anything libyaml refuses is read again, slowly
        return None
    if root is None:
        return None
    stack = [(root, 0)]
    seen: set[int] = set()  # an alias repeats a node: each is visited once
    while stack:
        node, depth = stack.pop()
        if depth > _FAST_DEPTH or len(seen) > MAX_NODES:
            return None
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if node.style == "":
                node.style = None
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
    return root


class YamlFile:
    """One YAML file: its root node, the diagnostics found so far, and where values came from.

    ``nodes[path]`` is the node of the value at ``path`` and ``keys[path]`` the node of the key
    that introduced it; both are filled by :meth:`plain`.
    """

    def __init__(self, path: str, text: str):
        self.path = path
        self.text = normalize_newlines(text)
        self.diagnostics: list[Diagnostic] = []
        self.nodes: dict[Path, yaml.Node] = {}
        self.keys: dict[Path, yaml.Node] = {}
        self._constructor = _Constructor()
        self._budget = MAX_NODES
        self.root: yaml.Node | None = self._compose()

    # ------------------------------------------------------------------ reading

    def _compose(self) -> yaml.Node | None:
        fast = _compose_fast(self.text)
        if fast is not None:
            return fast
        try:
            return yaml.compose(self.text, Loader=_Loader)
        except yaml.MarkedYAMLError as e:
            line, col, message, help_ = explain_yaml_error(e, self.text)
            self.diagnostics.append(Diagnostic(self.path, line, col, "error", message, help_))
        except yaml.reader.ReaderError as e:
            line, col = self._position(e.position)
            char = e.character if isinstance(e.character, int) else ord(e.character)
            self.diagnostics.append(
                Diagnostic(
                    self.path,
                    line,
                    col,
                    "error",
                    E(
                        "LR003",
                        "invalid YAML: the control character U+{char} is not allowed in a YAML file",
                        char=f"{char:04X}",
                    ),
                    _("remove it (it is often pasted in with text copied from elsewhere)"),
                )
            )
        except yaml.YAMLError as e:
            self.diagnostics.append(Diagnostic(self.path, 1, 1, "error", E("LR003", "invalid YAML: {e}", e=e)))
        except RecursionError:
            self.diagnostics.append(
                Diagnostic(self.path, 1, 1, "error", E("LR003", "invalid YAML: the document is nested too deeply"))
            )
        return None

    def _position(self, index: int) -> tuple[int, int]:
        """1-based line and column of a character index into the text."""
        before = self.text[:index]
        line = before.count("\n") + 1
        return line, index - (before.rfind("\n") + 1) + 1

    @property
    def empty(self) -> bool:
        """No document (an empty file, only comments, ``null``, or unreadable YAML)."""
        return self.root is None or (
            isinstance(self.root, yaml.ScalarNode) and self.root.tag == "tag:yaml.org,2002:null"
        )

    # ------------------------------------------------------------------ places

    def span(self, node: yaml.Node) -> Span:
        """The node's place; ``end_column`` is set when the node ends on the line it starts."""
        s, e = node.start_mark, node.end_mark
        if e.line == s.line and e.column > s.column:
            return Span(self.path, s.line + 1, s.column + 1, s.line + 1, e.column + 1)
        return Span(self.path, s.line + 1, s.column + 1)

    def span_at(self, path: Path, *, key: bool = False) -> Span:
        """The place of the value (or with ``key``, the key) at ``path``; the nearest recorded
        ancestor when that exact path has no node (e.g. a field that is missing)."""
        if key and path in self.keys:
            return self.span(self.keys[path])
        for n in range(len(path), -1, -1):
            node = self.nodes.get(path[:n])
            if node is not None:
                return self.span(node)
        return Span(self.path, 1, 1)

    def string_line_span(self, node: yaml.Node, line: int, column: int) -> Span:
        """The place of ``line``:``column`` (1-based, 0-based) inside a string value.

        Exact for literal block scalars (``|``); other strings are pointed at as a whole.
        """
        if isinstance(node, yaml.ScalarNode) and node.style == "|":
            src_line = node.start_mark.line + 1 + line  # 0-based line in the file
            lines = self.text.splitlines()
            if src_line < len(lines):
                indent = len(lines[src_line]) - len(lines[src_line].lstrip(" "))
                return Span(self.path, src_line + 1, indent + column + 1)
        return self.span(node)

    def empty_value_help(self, path: Path, key: str) -> str:
        """How to fix a key left without a value: quoting, when its line has a `#` after the
        key (an unquoted `#` starts a comment, so `color: #e86a8d` has no value)."""
        span = self.span_at(path, key=True)
        lines = self.text.split("\n")
        line = lines[span.line - 1] if 1 <= span.line <= len(lines) else ""
        after = line[span.column - 1 :].partition(":")[2]
        hash_at = after.find("#")
        if hash_at >= 0:
            meant = after[hash_at:].strip()
            return _('an unquoted `#` starts a comment: quote it, e.g. {key}: "{meant}"', key=key, meant=meant)
        return _("give it a value, or remove the line")

    # ------------------------------------------------------------------ diagnostics

    def error(self, where: Span, message: str, help: str | None = None) -> None:
        self.diagnostics.append(Diagnostic.at(where, message, help=help))

    def warning(self, where: Span, message: str, help: str | None = None) -> None:
        self.diagnostics.append(Diagnostic.at(where, message, help=help, severity="warning"))

    # ------------------------------------------------------------------ values

    def items(self, node: yaml.MappingNode, path: Path = ()) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """``(key, key node, value node)`` of a mapping, merges (``<<``) applied, reporting
        non-text and duplicate keys (the first occurrence wins)."""
        try:
            self._constructor.flatten_mapping(node)
        except ConstructorError as e:
            mark = e.problem_mark or node.start_mark
            self.error(
                Span(self.path, mark.line + 1, mark.column + 1),
                E("LR003", "invalid YAML merge: {problem}", problem=e.problem),
            )
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                # `greeting: {{ friend.display_name }}`: the template read as a mapping in a mapping
                row = self.text.split("\n")[key_node.start_mark.line]
                found = (
                    _value_mistake(row)
                    if row[key_node.start_mark.column - 1 : key_node.start_mark.column + 1] == "{{"
                    else None
                )
                self.error(
                    self.span(key_node),
                    E("LR005", "a key must be a plain name, not a list or mapping"),
                    help=found[2] if found else None,
                )
                continue
            key = key_node.value
            if _SURROGATE.search(key):
                key = _join_pairs(key)
                if _SURROGATE.search(key):
                    self.error(self.span(key_node), LONE_SURROGATE, LONE_SURROGATE_HELP)
                    continue
            if key[:1] == "\u3000":
                self.error(
                    self.span(key_node),
                    E("LR003", "a full-width space (U+3000) stands before this key"),
                    help=_("indent with half-width spaces"),
                )
                continue
            if key in seen:
                # a second `type:` is most often a second message object whose `- ` was left out
                # (removing one of the keys would silently lose that object)
                kind = value_node.value if isinstance(value_node, yaml.ScalarNode) else "image"
                again = _(
                    "a second `type:` starts another object: begin it with `- `, as in `- type: {kind}`", kind=kind
                )
                self.error(
                    self.span(key_node),
                    E("LR004", "duplicate key `{key}`", key=key),
                    help=again if key == "type" else _("each key may appear once in a mapping; remove one of them"),
                )
                continue
            seen.add(key)
            self.keys[path + (key,)] = key_node
            yield key, key_node, value_node

    def plain(self, node: yaml.Node, path: Path = (), depth: int = 0) -> Any:
        """The Python value of ``node`` (dicts, lists, str, int, float, bool, None, date,
        datetime), recording the node behind every path. Problems become diagnostics and the
        offending value becomes None."""
        self.nodes[path] = node
        self._budget -= 1
        if self._budget < 0:
            if self._budget == -1:
                self.error(self.span(node), E("LR005", "the document is too large (aliases expand to too many values)"))
            return None
        if depth > MAX_DEPTH:
            self.error(self.span(node), E("LR005", "values are nested more than {limit} levels deep", limit=MAX_DEPTH))
            return None
        if not _ANY_TAG.match(node.tag):
            self.error(
                self.span(node),
                E("LR005", "unsupported YAML tag `{tag}`", tag=node.tag),
                help=_("write plain text, numbers, lists and mappings"),
            )
            return None
        if isinstance(node, yaml.MappingNode):
            return {k: self.plain(v, path + (k,), depth + 1) for k, _, v in self.items(node, path)}
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(v, path + (i,), depth + 1) for i, v in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.ScalarNode) -> Any:
        """A scalar's value; one that matches a type's pattern but not its rules (e.g. the
        date ``2026-02-30``) is kept as its text, for the caller to judge."""
        try:
            value = self._constructor.construct_object(node)
        except Exception:  # e.g. `!!int x`, `!!bool yes`: the tag's constructor refuses the text
            value = node.value
        if isinstance(value, str) and _SURROGATE.search(value):
            value = _join_pairs(value)
            if _SURROGATE.search(value):
                self.error(self.span(node), LONE_SURROGATE, LONE_SURROGATE_HELP)
                return None
        return value


LONE_SURROGATE = E("LR006", "this text holds a lone surrogate escape (such as `\\ud800`), which is not a character")
LONE_SURROGATE_HELP = _(
    "write the character itself (an emoji can be pasted as it is), or escape it whole, e.g. `\\U0001F600`"
)


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'')
_FLOW_HASH = re.compile(r"(?:([^\s{},\[\]:]+):)?\s+(#[^\s,}\]]*)")


def _comment_in_flow(lines: list[str], first: int, last: int) -> tuple[int, int, str, str] | None:
    """A `#` after a space on a line (``first``..``last``, 1-based) inside a `{...}` or `[...]`
    opened on that line: YAML reads it as a comment, and the rest of the line is lost
    (`{type: text, color: #cccccc}`). Returns (line, column, key, value as meant)."""
    for n in range(max(1, min(first, last) - 1), last + 1):
        line = lines[n - 1] if n <= len(lines) else ""
        bare = _QUOTED.sub(lambda m: " " * len(m.group()), line)
        for m in _FLOW_HASH.finditer(bare):
            before = bare[: m.start(2)]
            if before.count("{") + before.count("[") > before.count("}") + before.count("]"):
                return n, m.start(2) + 1, m.group(1) or "", m.group(2)
    return None


def explain_yaml_error(e: yaml.MarkedYAMLError, text: str) -> tuple[int, int, str, str | None]:
    """A YAML syntax error in plain words: ``(line, column, message, help)``."""
    problem = e.problem or e.context or "invalid YAML"
    context = e.context or ""
    mark = e.problem_mark or e.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    ctx_line, ctx_col = (e.context_mark.line + 1, e.context_mark.column + 1) if e.context_mark else (line, col)
    lines = text.split("\n")

    def src(n: int) -> str:
        return lines[n - 1] if 1 <= n <= len(lines) else ""

    def full_width_colon() -> int | None:
        for n in (line, line - 1, ctx_line):
            if "\uff1a" in src(n).split("#")[0]:
                return n
        return None

    if "flow" in context and (found := _comment_in_flow(lines, ctx_line, line)) is not None:
        n, column, key, meant = found
        return (
            n,
            column,
            E("LR003", "invalid YAML: an unquoted `#` starts a comment, so the `{` or `[` before it is never closed"),
            _('quote the value: {key}: "{meant}"', key=key, meant=meant)
            if key
            else _('quote the value: "{meant}"', meant=meant),
        )
    if "'\\t'" in problem and src(line)[: col - 1].strip():
        # a tab after `key:` or `-`, not in front of the line
        at = src(line).find("\t", col - 1)
        return (
            line,
            at + 1 if at >= 0 else col,
            E("LR003", "invalid YAML: a tab separates the value here"),
            _("YAML separates with spaces only: replace the tab with a space"),
        )
    if "'\\t'" in problem:
        return (
            line,
            col,
            E("LR003", "invalid YAML: a tab is used for indentation here"),
            _("YAML indents with spaces only: replace the tab with spaces"),
        )
    if (n := full_width_colon()) is not None and (
        "could not find expected ':'" in problem or "mapping values" in problem or "<block" in problem
    ):
        column = src(n).index("\uff1a") + 1
        return (
            n,
            column,
            E("LR003", "invalid YAML: `：` is a full-width colon"),
            _("write a half-width `:` followed by a space after the key, e.g. `greeting: ...`"),
        )
    for n in dict.fromkeys((line, ctx_line)):  # a value written wrong on the line of the error
        found = _value_mistake(src(n))
        if found is not None:
            column, message, help_ = found
            return n, column, message, help_
    if "<block" in problem or (
        "mapping values are not allowed" in problem and _indented_deeper(src(line), src(line - 1))
    ):
        return (
            line,
            col,
            E("LR003", "invalid YAML: this line is not indented like the lines above it"),
            _(
                "the keys of one mapping (and the `-` of one list) start in the same column; indent with spaces so that this line lines up with the others"
            ),
        )
    if "mapping values are not allowed" in problem:
        return (
            line,
            col,
            E("LR003", "invalid YAML: a `: ` inside a value that is not quoted"),
            _('quote the whole value, e.g. text: "注意: こちら"'),
        )
    if "could not find expected ':'" in problem:
        return (
            ctx_line,
            ctx_col,
            E("LR003", "invalid YAML: this line has no `:` after its key"),
            _("write `key: value`; a text over several lines is written after `key: |` on lines indented further"),
        )
    if "end of stream" in problem and "quoted scalar" in context:
        return (
            ctx_line,
            ctx_col,
            E("LR003", "invalid YAML: the quoted text that starts here is never closed"),
            _("close it with the same quote, or write a text over several lines after `|`"),
        )
    if "alias" in context:
        return (
            ctx_line,
            ctx_col,
            E("LR003", "invalid YAML: a value that is not quoted cannot start with `*`"),
            _('quote the whole value, e.g. text: "*sale* today"'),
        )
    if "cannot start any token" in problem:
        char = src(line)[col - 1 : col] or "?"
        return (
            line,
            col,
            E("LR003", "invalid YAML: a value that is not quoted cannot start with `{char}`", char=char),
            _('quote the whole value, e.g. text: "{char}..."', char=char),
        )
    if "flow mapping" in context or "flow sequence" in context:
        return (
            ctx_line,
            ctx_col,
            E("LR003", "invalid YAML: the `{` or `[` that starts here is not closed properly"),
            _(
                "close it on the same line, quote values that hold `,` or `:`, or write the entries as indented lines instead"
            ),
        )
    return (
        line,
        col,
        E("LR003", "invalid YAML: {problem}", problem=problem),
        _("compare this line with the lines around it (indentation, `:` after each key, quotes)"),
    )


#: ``key: value`` on one line (a list item's ``- `` in front allowed), the value as written.
_KEY_VALUE = re.compile(r"(\s*(?:-\s+)*)([^\s\"'#{\[][^:#]*?):[ \t]+(\S.*?)\s*$")


def _without_comment(text: str) -> str:
    """``text`` without a YAML comment at its end (a `#` after a space, outside quotes)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i]
    return text


def _quoted(value: str) -> str:
    """``value`` in the quotes YAML takes it in as written: double, or single when it holds ``"``."""
    return f"'{value}'" if '"' in value else f'"{value}"'


def _value_mistake(line: str) -> tuple[int, Any, Any] | None:
    """``(column, message, help)`` for the commonest ways to write a value YAML cannot read:
    a template at the start of an unquoted value (`text: {{ ... }}様`), a `"` inside a
    double-quoted one, text after the closing quote, a `: ` inside an unquoted value."""
    m = _KEY_VALUE.fullmatch(line)
    if m is None:
        return None
    key, value = m.group(2), m.group(3)
    start = m.start(3) + 1
    if value.startswith("{{") or value.startswith("{%"):
        return (
            start,
            E("LR003", "invalid YAML: a value that starts with `{{` must be quoted"),
            _("quote the whole value: {key}: {fixed}", key=key, fixed=_quoted(value)),
        )
    if value[0] in "\"'":
        mark, other = value[0], "'" if value[0] == '"' else '"'
        end = 1
        while end < len(value) and (value[end] != mark or (mark == '"' and value[end - 1] == "\\")):
            end += 1
        after = _without_comment(value[end + 1 :])
        if end >= len(value) or not after.strip():
            return None
        if mark in after:  # `text: "{{ name | default: "お客" }}様"`: the quote inside ends the text
            inner = _without_comment(value).rstrip()[1:]
            inner = inner[:-1] if inner.endswith(mark) else inner
            return (
                start + end,
                E("LR003", "invalid YAML: a `{mark}` inside this quoted text ends it early", mark=mark),
                _(
                    "write the inner quotes as the other kind: {key}: {fixed}",
                    key=key,
                    fixed=mark + inner.replace(mark, other) + mark,
                ),
            )
        return (  # `a1: "{{ friend.display_name }}様"、こんにちは`, `m1: "Hello" there`
            start + end + 1,
            E("LR003", "invalid YAML: text after the closing quote"),
            _(
                "put all of the text inside the quotes: {key}: {fixed}",
                key=key,
                fixed=_quoted(value[1:end] + after.rstrip()),
            ),
        )
    if value[0] not in "'|>[&*!" and ": " in value:  # `text: 本日: 20時から`
        return (
            start + value.index(": "),
            E("LR003", "invalid YAML: a `: ` inside a value that is not quoted"),
            _("quote the whole value: {key}: {fixed}", key=key, fixed=_quoted(value)),
        )
    return None


def _indented_deeper(this: str, above: str) -> bool:
    """Whether ``this`` line starts further right than the line above it."""

    def indent(s: str) -> int:
        return len(s) - len(s.lstrip(" "))

    return bool(above.strip()) and indent(this) > indent(above)
