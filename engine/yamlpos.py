"""YAML that remembers where every value came from.

The files beside the rules (``settings.yaml``, ``sale_calendar.yaml``, ``messages.yaml``) are
read with :func:`yaml.compose` (the safe loader's node tree), so every key and value keeps its
line and column. :class:`YamlFile` turns that tree into plain Python values while recording the
node behind each path, and reports problems as :class:`Diagnostic` values instead of raising:
syntax errors, duplicate keys, non-text keys, unsupported tags, runaway aliases.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from .diagnostics import Diagnostic, Span

#: A path from the document root: mapping keys (str) and sequence indexes (int).
Path = tuple[str | int, ...]

MAX_DEPTH = 64
MAX_NODES = 200_000

#: The tags of plain YAML values; anything else (``!!binary``, ``!!python/...``) is refused.
_ANY_TAG = re.compile(r"^tag:yaml\.org,2002:(null|bool|int|float|timestamp|str|map|seq)$")


class _Constructor(SafeConstructor):
    """The safe constructor, used one scalar at a time."""


class YamlFile:
    """One YAML file: its root node, the diagnostics found so far, and where values came from.

    ``nodes[path]`` is the node of the value at ``path`` and ``keys[path]`` the node of the key
    that introduced it; both are filled by :meth:`plain`.
    """

    def __init__(self, path: str, text: str):
        self.path = path
        self.text = text
        self.diagnostics: list[Diagnostic] = []
        self.nodes: dict[Path, yaml.Node] = {}
        self.keys: dict[Path, yaml.Node] = {}
        self._constructor = _Constructor()
        self._budget = MAX_NODES
        self.root: yaml.Node | None = self._compose()

    # ------------------------------------------------------------------ reading

    def _compose(self) -> yaml.Node | None:
        try:
            return yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = e.problem or e.context or "invalid YAML"
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            self.diagnostics.append(Diagnostic(self.path, line, col, "error",
                                               f"invalid YAML: {problem}"))
        except yaml.reader.ReaderError as e:
            line, col = self._position(e.position)
            char = e.character if isinstance(e.character, int) else ord(e.character)
            self.diagnostics.append(Diagnostic(
                self.path, line, col, "error",
                f"invalid YAML: the control character U+{char:04X} is not allowed in a YAML file"))
        except yaml.YAMLError as e:
            self.diagnostics.append(Diagnostic(self.path, 1, 1, "error", f"invalid YAML: {e}"))
        except RecursionError:
            self.diagnostics.append(Diagnostic(self.path, 1, 1, "error",
                                               "invalid YAML: the document is nested too deeply"))
        return None

    def _position(self, index: int) -> tuple[int, int]:
        """1-based line and column of a character index into the text."""
        before = self.text[:index]
        line = before.count("\n") + 1
        return line, index - (before.rfind("\n") + 1) + 1

    @property
    def empty(self) -> bool:
        """No document (an empty file, only comments, ``null``, or unreadable YAML)."""
        return self.root is None or (isinstance(self.root, yaml.ScalarNode)
                                     and self.root.tag == "tag:yaml.org,2002:null")

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
            self.error(Span(self.path, mark.line + 1, mark.column + 1), f"invalid YAML merge: {e.problem}")
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(self.span(key_node), "a key must be a plain name, not a list or mapping")
                continue
            key = key_node.value
            if key in seen:
                self.error(self.span(key_node), f"duplicate key `{key}`",
                           help="each key may appear once in a mapping; remove one of them")
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
                self.error(self.span(node), "the document is too large (aliases expand to too many values)")
            return None
        if depth > MAX_DEPTH:
            self.error(self.span(node), f"values are nested more than {MAX_DEPTH} levels deep")
            return None
        if not _ANY_TAG.match(node.tag):
            self.error(self.span(node), f"unsupported YAML tag `{node.tag}`",
                       help="write plain text, numbers, lists and mappings")
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
            return self._constructor.construct_object(node)
        except (ValueError, ConstructorError, OverflowError):
            return node.value
