"""Rule text -> typed syntax tree (:mod:`engine.language.astnodes`), with syntax errors in plain words.

The grammar (``grammar.lark`` beside this file) is loaded once per process into one LALR(1)
parser with Lark's contextual lexer. A valid file is parsed in one pass. When a file has a
syntax error, it is cut at the start of each rule and segment (``rule``, ``segment``, a bare
``when``) and every piece is parsed alone, so one bad rule yields one error and the other rules
of the file are still checked.

Known mistakes get their own message (a missing ``then``, an unterminated text, a keyword
where it cannot stand, a misspelt keyword or duration unit, full-width punctuation, a number
without a unit, an unclosed parenthesis); everything else says what was found and what was
expected, with Lark's terminal names translated to words. Lines may end with LF, CR LF or CR.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path

import lark
from lark import Lark, TextSlice, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from engine.i18n import E, _, join
from engine.runtime.events import RULE_WORDS

from . import GRAMMAR_FILE
from . import astnodes as A
from .diagnostics import Diagnostic, Span, did_you_mean, normalize_newlines
from .ir import NAME_RE, parse_duration  # noqa: F401  (parse_duration: also used from here)

GRAMMAR_PATH = Path(GRAMMAR_FILE)
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t"}

#: The words a step, an option, a new rule or a condition starts with (for grouping the
#: "expected ..." list of a syntax error).
STEP_WORDS = ("send", "wait", "tag", "untag", "set", "menu", "start", "stop")
OPTION_WORDS = ("exit", "reenter", "window", "priority", "uncapped", "split", "holdout")
#: The largest ``priority`` (either way): any two rules' order fits in it.
MAX_PRIORITY = 1_000_000
ITEM_WORDS = ("rule", "segment", "when")
COND_WORDS = (
    "not",
    "(",
    "purchased",
    "clicked",
    "viewed",
    "carted",
    "tagged",
    "blocked",
    "followed",
    "friend",
    "last",
    "never",
    "top",
    "in",
    "variant",
)
TRIGGER_WORDS = ("unfollowed", "linked", "message", "postback", "event", "schedule", "sale")

#: Named terminals in words.
TERMINAL_WORDS = {
    "NAME": _("a name"),
    "STRING": _('a quoted text like "coupon"'),
    "DURATION": _("a duration like `1d`"),
    "TIME": _("a time like `12:00`"),
    "PERCENT": _("a percentage like `50%`"),
    "NUMBER": _("a number"),
    "INT": _("a whole number"),
    "PAIR_VALUE": _("a value"),
    "CMP_OP": _("a comparison (`=`, `!=`, `<`, `<=`, `>`, `>=`)"),
    "$END": _("the end of the file"),
}


@functools.cache
def lark_parser() -> Lark:
    """The one Lark instance of the process (LALR, contextual lexer, positions kept).

    Building the LALR tables takes a few hundred milliseconds, most of a ``validate``; they are
    kept in the user's cache folder (:func:`parser_cache_path`) and loaded from there by the
    next process. Lark checks the file against the grammar and options it was built from and
    builds afresh (rewriting it) when they differ or the file is unreadable; without a writable
    cache folder every process builds its own tables."""
    return Lark(
        GRAMMAR_PATH.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        cache=parser_cache_path() or False,
    )


def parser_cache_path() -> str | None:
    """``grammar-<lark version>-<python version>.lark`` in the user's cache folder
    (:func:`engine.language.cache.cache_dir`), or None without one."""
    from .cache import cache_dir

    folder = cache_dir()
    if folder is None:
        return None
    return os.path.join(folder, f"grammar-{lark.__version__}-py{sys.version_info[0]}{sys.version_info[1]}.lark")


@functools.cache
def keywords() -> frozenset[str]:
    """Every word of the language; none of them may be used as a name."""
    return frozenset(
        t.pattern.value
        for t in lark_parser().terminals
        if isinstance(t.pattern, PatternStr) and NAME_RE.fullmatch(t.pattern.value)
    )


@functools.cache
def _terminal_texts() -> dict[str, str]:
    """Terminal name -> the literal text it stands for (keywords and punctuation)."""
    return {t.name: t.pattern.value for t in lark_parser().terminals if isinstance(t.pattern, PatternStr)}


# ----------------------------------------------------------------------------- public API


def parse_file(path: str, text: str) -> tuple[A.RuleFile, list[Diagnostic]]:
    """Parse one rule file. Never raises on bad input: syntax errors become diagnostics.

    CR LF and CR alone (old Mac files) are line ends like LF."""
    text = normalize_newlines(text)
    built = _parse_building(path, text)
    if built is not None:
        return built
    return _parse_then_build(path, text)


def _parse_then_build(path: str, text: str) -> tuple[A.RuleFile, list[Diagnostic]]:
    """:func:`parse_file` the long way: Lark's tree first, then the syntax tree built from it
    by a walk. Taken for a file with a syntax error (Lark's parse says where; the file is then
    read piece by piece), for one whose conditions nest deeper than :data:`MAX_NESTING` (whose
    walk may run out of stack, and whose error names the outermost condition) and when the
    building parse (:func:`_parse_building`) cannot be made with the installed Lark."""
    builder = _AstBuilder(path)
    try:
        tree = lark_parser().parse(text)
    except UnexpectedInput as exc:
        return _syntax_errors(path, text, exc)
    items: list[A.Item] = []
    deep: list[Diagnostic] = []
    broken_rules: list[str] = []
    broken_segments: list[str] = []
    for item in tree.children:
        try:
            items.append(builder._build(item))
        except RecursionError:  # nested far beyond MAX_NESTING: refuse this item alone
            deep.append(_too_deep(_deep_span(path, item)))
            first = item.children[0] if item.children else None
            name = first.value if isinstance(first, Token) and first.type == "NAME" else Path(path).stem
            (broken_segments if item.data == "segment_def" else broken_rules).append(name)
    if deep:
        return (
            A.RuleFile(path, tuple(items), tuple(broken_rules), tuple(broken_segments), has_syntax_errors=True),
            builder.diagnostics + deep,
        )
    return A.RuleFile(path, tuple(items)), builder.diagnostics


def _syntax_errors(path: str, text: str, exc: UnexpectedInput) -> tuple[A.RuleFile, list[Diagnostic]]:
    """A file the parser refused (``exc``): its rules and segments parsed one by one."""
    parsed, diags = _parse_in_pieces(path, text)
    if not any(d.is_error for d in diags):
        # Every piece parsed alone although the whole did not: report the whole's error.
        line, column = max(1, exc.line or 1), max(1, exc.column or 1)
        diags.append(
            Diagnostic.at(
                Span(path, line, column),
                E("LR010", "the rules cannot be read from here on"),
                help=_("compare with docs/language.md"),
            )
        )
    return parsed, diags


#: How deeply ``not``, ``and``, ``or`` may nest; deeper conditions are refused (they are
#: never meant, and every later stage walks conditions recursively).
MAX_NESTING = 50


_NESTING_RULES = ("not_", "and_", "or_")


def _deep_span(path: str, tree: Tree) -> Span:
    """Where a condition first nests more than :data:`MAX_NESTING` levels deep (found without
    recursion, however deep the tree)."""
    stack: list[tuple[Tree, int, Tree | None]] = [(tree, 0, None)]
    while stack:
        node, depth, outer = stack.pop()
        if node.data in _NESTING_RULES:
            depth += 1
            outer = outer or node
            if depth > MAX_NESTING:  # point at the whole condition, as for shallower ones
                m = outer.meta
                return Span(path, m.line, m.column, m.end_line, m.end_column)
        stack.extend((c, depth, outer) for c in node.children if c.__class__ is Tree)
    m = tree.meta
    return Span(path, m.line, m.column)


#: The longest duration a rule may name (100 years), and the largest number: both far beyond
#: any meant one, and within what the database stores (64-bit integers, exact doubles).
MAX_DURATION = 36500 * 86400
MAX_NUMBER = 10**15


def _shortened(text: str) -> str:
    """A token as a message shows it: at most 40 characters."""
    return text if len(text) <= 40 else f"{text[:20]}…{text[-10:]}"


def _too_deep(span: Span) -> Diagnostic:
    return Diagnostic.at(
        span,
        E("LR017", "this condition nests more than {limit} levels deep", limit=MAX_NESTING),
        help=_("write it with fewer `not`, `and`, `or` inside each other (or use a segment)"),
    )


def unquote(text: str) -> str:
    """The value of a quoted text token: quotes removed, ``\\n``, ``\\t``, ``\\"``, ``\\\\``
    unescaped (any other escaped character stands for itself)."""
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


# ----------------------------------------------------------------------------- tree -> AST


class _AstBuilder:
    """Lark tree -> :mod:`engine.language.astnodes`, bottom up: one method ``rule(span, children)`` per
    grammar rule or alias, called with the node's span and its children already built (tokens
    stay tokens); a rule without one is a programming error and raises.

    It walks the tree itself rather than through :class:`lark.Transformer`: Lark's per-call
    wrappers (``v_args(meta=True)``) would cost about half as much as the parse itself.
    """

    def __init__(self, path: str):
        self.path = path
        self.diagnostics: list[Diagnostic] = []
        self._depth: dict[int, int] = {}  # id(condition) -> nesting of not/and/or
        self._handlers = _handlers()

    def transform(self, tree: Tree) -> list[A.Item]:
        """The items of a parsed file (``tree`` is its ``start`` node)."""
        return [self._build(item) for item in tree.children]

    def _build(self, t: Tree):
        # A method, not a closure: a recursive closure is a reference cycle, which only the
        # garbage collector frees.
        children = [self._build(c) if c.__class__ is Tree else c for c in t.children]
        handler = self._handlers.get(id(t.data))
        if handler is None:
            raise NotImplementedError(f"no AST node for grammar rule {t.data!r}")
        m = t.meta
        return handler(self, Span(self.path, m.line, m.column, m.end_line, m.end_column), children)

    def _nested(self, node, items) -> None:
        """Record how deeply ``node`` nests; refuse it past :data:`MAX_NESTING`."""
        depth = self._depth
        level = 1 + max(depth.get(id(i), 0) for i in items)
        depth[id(node)] = level
        if level == MAX_NESTING + 1:
            self.diagnostics.append(_too_deep(node.span))

    # -- leaves ------------------------------------------------------------------
    def _at(self, tok: Token) -> A.At:
        return (self.path, tok.line, tok.column, tok.end_line, tok.end_column)

    def _name(self, tok: Token) -> A.Name:
        # A keyword the parser read as a name is a name: it stands where no keyword can.
        return A.Name(tok.value, (self.path, tok.line, tok.column, tok.end_line, tok.end_column))

    def _str(self, tok: Token) -> A.Str:
        return A.Str(unquote(tok.value), self._at(tok))

    def _duration(self, tok: Token) -> A.Duration:
        seconds = None
        if len(tok.value) <= 20:  # (longer: more digits than anything but an error)
            seconds = parse_duration(tok.value, seconds=False)
        if seconds is None or seconds > MAX_DURATION:
            self.diagnostics.append(
                Diagnostic.at(
                    Span(self.path, tok.line, tok.column, tok.end_line, tok.end_column),
                    E("LR016", "`{shown}` is longer than 100 years", shown=_shortened(tok.value)),
                    help=_("the longest duration is `{longest}`", longest=f"{MAX_DURATION // 86400}d"),
                )
            )
            seconds = MAX_DURATION
        return A.Duration(seconds, tok.value, self._at(tok))

    def _time(self, tok: Token) -> A.TimeOfDay:
        hour, minute = tok.value.split(":")
        return A.TimeOfDay(int(hour), int(minute), tok.value, self._at(tok))

    def _percent(self, tok: Token) -> A.Percent:
        return A.Percent(float(tok.value[:-1]), tok.value, self._at(tok))

    def _value(self, tok: Token) -> A.Number | A.Str:
        if tok.type == "STRING":
            return self._str(tok)
        whole = tok.value.split(".")[0].lstrip("-+0")
        if len(whole) > len(str(MAX_NUMBER)) or (len(whole) == len(str(MAX_NUMBER)) and int(whole) > MAX_NUMBER):
            self.diagnostics.append(
                Diagnostic.at(
                    Span(self.path, tok.line, tok.column, tok.end_line, tok.end_column),
                    E("LR018", "`{value}` is too large a number", value=_shortened(tok.value)),
                    help=_("numbers go up to {largest}", largest=MAX_NUMBER),
                )
            )
            return A.Number(MAX_NUMBER, self._at(tok))
        return A.Number(float(tok.value) if "." in tok.value else int(tok.value), self._at(tok))

    @staticmethod
    def _guard(children) -> A.Guard | None:
        """A step's ``if``/``unless``: its last child, when it has one."""
        last = children[-1] if children else None
        return last if last.__class__ is A.Guard else None

    @staticmethod
    def _token(children, ttype: str) -> Token | None:
        """The first token of a type, or None."""
        for c in children:
            if c.__class__ is Token and c.type == ttype:
                return c
        return None

    def _within(self, children) -> A.Duration | None:
        last = children[-1] if children else None
        return self._duration(last) if last.__class__ is Token else None

    # -- file --------------------------------------------------------------------
    def _rule(self, span, children, name: A.Name | None, description: A.Str | None):
        trigger = entry = None
        options: list[A.Option] = []
        steps: list[A.Step] = []
        for c in children:
            cls = c.__class__
            if cls in _STEP_TYPES:
                steps.append(c)
            elif cls in _OPTION_TYPES:
                options.append(c)
            elif cls is A.Guard:
                entry = c
            elif cls in _TRIGGER_TYPES:
                trigger = c
        return A.RuleDef(name, description, trigger, entry, tuple(options), tuple(steps), span)

    def rule_def(self, span, children):
        second = children[1]
        description = self._str(second) if second.__class__ is Token else None
        return self._rule(span, children, self._name(children[0]), description)

    def bare_rule(self, span, children):
        return self._rule(span, children, None, None)

    def segment_def(self, span, children):
        return A.SegmentDef(self._name(children[0]), children[1], span)

    # -- triggers ----------------------------------------------------------------
    def cond_trigger(self, span, children):
        return A.CondTrigger(children[0], span)

    def unfollowed(self, span, children):
        return A.UnfollowedTrigger(span)

    def linked(self, span, children):
        return A.LinkedTrigger(span)

    def message_trigger(self, span, children):
        keywords_ = tuple([self._str(t) for t in children if t.type == "STRING"])
        return A.MessageTrigger(keywords_, children[0].type == "EXACTLY", span)

    def postback_trigger(self, span, children):
        return A.PostbackTrigger(tuple(children), span)

    def event_trigger(self, span, children):
        return A.EventTrigger(self._name(children[0]), tuple(children[1:]), span)

    def schedule_trigger(self, span, children):
        return A.ScheduleTrigger(self._str(children[0]), span)

    def sale_trigger(self, span, children):
        edge = next(c for c in children if c.type in ("STARTS", "ENDS"))
        kind = self._token(children, "NAME")
        before = self._token(children, "DURATION")
        at = self._token(children, "TIME")
        return A.SaleTrigger(
            edge.value,
            self._name(kind) if kind else None,
            self._duration(before) if before else None,
            self._time(at) if at else None,
            span,
        )

    def entry_if(self, span, children):
        return A.Guard(children[0], False, span)

    def entry_unless(self, span, children):
        return A.Guard(children[0], True, span)

    guard_if = entry_if
    guard_unless = entry_unless

    # -- conditions --------------------------------------------------------------
    def or_(self, span, children):
        node = A.Or(tuple(children), span)
        self._nested(node, children)
        return node

    def and_(self, span, children):
        node = A.And(tuple(children), span)
        self._nested(node, children)
        return node

    def not_(self, span, children):
        node = A.Not(children[0], span)
        self._nested(node, children)
        return node

    def _activity(self, span, children, kind: str, word: str):
        first = children[0] if children else None
        return A.Activity(kind, word, first if first.__class__ is A.Pair else None, self._within(children), span)

    def purchased(self, span, children):
        return self._activity(span, children, "purchase", "purchased")

    def clicked(self, span, children):
        return self._activity(span, children, "click", "clicked")

    def viewed(self, span, children):
        return self._activity(span, children, "view", "viewed")

    def carted(self, span, children):
        return self._activity(span, children, "cart", "carted")

    def tagged(self, span, children):
        return A.Tagged(self._name(children[0]), span)

    def blocked(self, span, children):
        return A.Blocked(span)

    def followed(self, span, children):
        return A.Followed(tuple(children), span)

    def friend_for(self, span, children):
        return A.FriendFor("for", self._duration(children[0]), span)

    def friend_within(self, span, children):
        return A.FriendFor("within", self._duration(children[0]), span)

    def last_purchase(self, span, children):
        return A.LastPurchaseOlder(self._duration(children[0]), span)

    def never_purchased(self, span, children):
        return A.NeverPurchased(span)

    def measure(self, span, children):
        return A.Measure(self._name(children[0]), self._duration(children[1]) if len(children) > 1 else None, span)

    def compare(self, span, children):
        measure, op, value = children
        return A.Compare(measure, op.value, self._value(value), span)

    def top(self, span, children):
        return A.Top(self._percent(children[0]), children[1], span)

    def in_segment(self, span, children):
        return A.InSegment(self._name(children[0]), span)

    def variant(self, span, children):
        return A.Variant(self._name(children[0]), span)

    def pair(self, span, children):
        key, value = children
        text = unquote(value.value) if value.type == "STRING" else value.value
        if value.type != "STRING":
            # `via qr=shipping、 ad=summer`: a full-width comma (or bracket) ends no unquoted value
            # by itself, so it was read into it, and the value matches nothing
            wide = next((i for i, ch in enumerate(text) if ch in _PAIR_STOPS), None)
            if wide is not None:
                self.diagnostics.append(
                    _full_width_error(self.path, text[wide], value.line, value.column + wide, *_beside(text, wide))
                )
        return A.Pair(A.Name(key.value, self._at(key)), text, span)

    # -- steps -------------------------------------------------------------------
    def send(self, span, children):
        names = tuple([self._name(c) for c in children if c.__class__ is Token])
        return A.SendStep(names, self._guard(children), span)

    def wait(self, span, children):
        return A.WaitStep(self._duration(children[0]), self._time(children[1]) if len(children) > 1 else None, span)

    def wait_until(self, span, children):
        at = self._token(children, "TIME")
        day = children[0] if children[0].type == "NAME" else None
        return A.WaitUntilStep(self._time(at) if at else None, A.Name(day.value, self._at(day)) if day else None, span)

    def wait_for(self, span, children):
        return A.WaitForStep(children[0], self._duration(children[1]), span)

    def tag(self, span, children):
        return A.TagStep(self._name(children[0]), self._guard(children), span)

    def untag(self, span, children):
        return A.UntagStep(self._name(children[0]), self._guard(children), span)

    def set(self, span, children):
        return A.SetStep(self._name(children[0]), self._value(children[1]), self._guard(children), span)

    def menu(self, span, children):
        return A.MenuStep(self._name(children[0]), self._guard(children), span)

    def start_rule(self, span, children):
        return A.StartStep(self._name(children[0]), self._guard(children), span)

    def stop(self, span, children):
        return A.StopStep(self._guard(children), span)

    # -- options -----------------------------------------------------------------
    def exit_when(self, span, children):
        return A.ExitWhen(children[0], span)

    def reenter_never(self, span, children):
        return A.Reenter("never", None, span)

    def reenter_always(self, span, children):
        return A.Reenter("always", None, span)

    def reenter_after(self, span, children):
        return A.Reenter("after", self._duration(children[0]), span)

    def window(self, span, children):
        return A.Window(self._time(children[0]), self._time(children[1]), span)

    def priority(self, span, children):
        tok = children[0]
        digits = tok.value.lstrip("-+0")
        # (compared by length first: Python reads at most 4,300 digits as a number)
        value = int(tok.value) if len(digits) <= len(str(MAX_PRIORITY)) else MAX_PRIORITY + 1
        if abs(value) > MAX_PRIORITY:  # (the store keeps it in a 64-bit integer)
            self.diagnostics.append(
                Diagnostic.at(
                    Span(self.path, tok.line, tok.column, tok.end_line, tok.end_column),
                    E("LR018", "`{value}` is too large a number", value=_shortened(tok.value)),
                    help=_("a priority goes from -{largest} to {largest}", largest=MAX_PRIORITY),
                )
            )
            value = -MAX_PRIORITY if tok.value.startswith("-") else MAX_PRIORITY
        return A.Priority(value, span)

    def uncapped(self, span, children):
        return A.Uncapped(span)

    def split_item(self, span, children):
        return A.SplitItem(self._name(children[0]), self._percent(children[1]), span)

    def split(self, span, children):
        return A.Split(tuple(children), span)

    def holdout(self, span, children):
        return A.Holdout(self._percent(children[0]), span)


@functools.cache
def _handlers() -> dict[int, Callable]:
    """``id`` of the name a tree node carries (the parser's own object for each grammar rule
    or alias) -> its :class:`_AstBuilder` method. Keyed by identity: Lark's names are tokens,
    whose ``==`` is Python code, and a lookup by name would run it for every node."""
    methods = {
        name: fn
        for name, fn in vars(_AstBuilder).items()
        if not name.startswith("_") and name != "transform" and callable(fn)
    }
    table: dict[int, Callable] = {}
    for rule in lark_parser().rules:
        name = rule.alias or rule.origin.name
        if name in methods:
            table[id(name)] = methods[name]
    return table


_TRIGGER_TYPES = frozenset(
    (
        A.CondTrigger,
        A.UnfollowedTrigger,
        A.LinkedTrigger,
        A.MessageTrigger,
        A.PostbackTrigger,
        A.EventTrigger,
        A.ScheduleTrigger,
        A.SaleTrigger,
    )
)
_OPTION_TYPES = frozenset((A.ExitWhen, A.Reenter, A.Window, A.Priority, A.Uncapped, A.Split, A.Holdout))
_STEP_TYPES = frozenset(
    (
        A.SendStep,
        A.WaitStep,
        A.WaitUntilStep,
        A.WaitForStep,
        A.TagStep,
        A.UntagStep,
        A.SetStep,
        A.MenuStep,
        A.StartStep,
        A.StopStep,
    )
)


# ----------------------------------------------------------------------------- building parse
#
# The LALR parser calls a function for every grammar rule it reduces; Lark's own functions
# build its tree (:class:`lark.Tree`, with each node's place), which :class:`_AstBuilder` then
# walks again. The building parse runs Lark's lexer and LALR loop over Lark's own tables with
# other functions (:func:`_building_parser`), which build the syntax tree's nodes straight
# away, with the very places Lark's ``propagate_positions`` gives its nodes: a node covers the
# text from its first child's to its last child's, counting the keywords Lark drops from the
# tree; an inlined rule (``_step``, ``_within``, Lark's ``__x_star_N``) hands its children to
# its parent with the place they cover; and ``( cond )`` hands over the condition itself, whose
# place stays without the parentheses while its parent's includes them (Lark's "container"
# place). The result is the same syntax tree the walk builds (``tests/test_parser_building.py``
# compares the two).


class _Spliced:
    """The children of an inlined rule on their way into the parent's, and the place they
    cover (the same attribute names as a token's)."""

    __slots__ = ("children", "line", "column", "end_line", "end_column")

    def __init__(self, children: list, line: int, column: int, end_line: int, end_column: int):
        self.children = children
        self.line = line
        self.column = column
        self.end_line = end_line
        self.end_column = end_column


class _Building:
    """The file being parsed, for the rule functions (one parse at a time: :data:`_BUILDING_LOCK`)."""

    __slots__ = ("builder", "path", "wider")

    def __init__(self) -> None:
        self.builder: _AstBuilder | None = None
        self.path = ""
        #: ``id`` of a condition written in parentheses -> the place with them.
        self.wider: dict[int, tuple[int, int, int, int]] = {}


_BUILDING = _Building()
_BUILDING_LOCK = threading.Lock()
_TOKEN, _SPLICED, _NODE = 0, 1, 2


def _rule_function(rule, kinds: dict[str, int], methods: dict[str, Callable], now: _Building) -> Callable:
    """What the parser calls when it reduces ``rule``: its values (tokens, nodes, spliced
    children) in, the node (or spliced children, or the items of the file) out. ``kinds``:
    what each rule that hands over its one child (``_step: send | wait ...``) gives."""
    syms = rule.expansion
    name = rule.alias or rule.options.template_source or rule.origin.name
    if name in kinds:  # `_step`, `_value`: the child itself, which is all its parent takes of it
        return _only_child

    def kind(sym) -> int:
        if sym.is_term:
            return _TOKEN
        return kinds.get(sym.name, _SPLICED if sym.name.startswith("_") else _NODE)

    kept = [
        (i, kind(sym) == _SPLICED)
        for i, sym in enumerate(syms)
        if rule.options.keep_all_tokens or not (sym.is_term and sym.filter_out)
    ]
    indices = [i for i, _spliced in kept]

    def children_of(values: list) -> list:
        out: list = []
        for i, spliced in kept:
            if spliced and not out:  # a left-recursive list (`__x_star_N`) grows in place, as in Lark
                out = values[i].children
            elif spliced:
                out += values[i].children
            else:
                out.append(values[i])
        return out

    if not any(spliced for _i, spliced in kept):
        if len(indices) == 1:
            only = indices[0]

            def children_of(values: list) -> list:
                return [values[only]]

        else:

            def children_of(values: list) -> list:
                return [values[i] for i in indices]

    if name == "start":
        return children_of if syms else lambda values: []
    first_kind, last_kind = kind(syms[0]), kind(syms[-1])

    def place(values: list) -> tuple[int, int, int, int]:
        first, last = values[0], values[-1]
        wider = now.wider
        if first_kind != _NODE:
            line, column = first.line, first.column
        elif wider and id(first) in wider:
            line, column = wider[id(first)][:2]
        else:
            span = first.span
            line, column = span.line, span.column
        if last_kind != _NODE:
            end_line, end_column = last.end_line, last.end_column
        elif wider and id(last) in wider:
            end_line, end_column = wider[id(last)][2:]
        else:
            span = last.span
            end_line, end_column = span.end_line, span.end_column
        return line, column, end_line, end_column

    if name.startswith("_") and kept and kept[0] == (0, True) and syms[0].name == rule.origin.name:

        def grow(values: list) -> _Spliced:  # `__x_star_N: __x_star_N item`: the list so far, one longer
            spliced = values[0]
            spliced.children = children_of(values)
            _line, _column, spliced.end_line, spliced.end_column = place(values)
            return spliced

        return grow
    if name.startswith("_"):
        return lambda values: _Spliced(children_of(values), *place(values))
    handler = methods.get(name)

    if handler is None:

        def build(values: list):
            raise NotImplementedError(f"no AST node for grammar rule {name!r}")

    elif first_kind != _NODE and last_kind != _NODE:  # `tag vip`, `wait 1d`, `send a, b`

        def build(values: list):
            first, last = values[0], values[-1]
            span = _span(now.path, first.line, first.column, last.end_line, last.end_column)
            return handler(now.builder, span, children_of(values))

    else:

        def build(values: list):
            return handler(now.builder, _span(now.path, *place(values)), children_of(values))

    if not (rule.options.expand1 and not rule.alias):
        return build
    if len(syms) == 1 and first_kind == _NODE:
        return _only_child  # `cond: and_cond`: the same node, the same places

    def one_or_build(values: list):
        children = children_of(values)
        if len(children) != 1:
            return build(values)
        node = children[0]
        if node.__class__ is not Token and node.__class__ is not _Spliced:
            now.wider[id(node)] = place(values)  # `( cond )`
        return node

    return one_or_build


_new = object.__new__


def _span(path: str, line: int, column: int, end_line: int, end_column: int) -> Span:
    """``Span(path, line, column, end_line, end_column)``, made in half the time: a frozen
    dataclass sets each field through ``object.__setattr__``, and the parse makes one per node."""
    span = _new(Span)
    fields = span.__dict__
    fields["path"] = path
    fields["line"] = line
    fields["column"] = column
    fields["end_line"] = end_line
    fields["end_column"] = end_column
    return span


def _only_child(values: list):
    return values[0]


def _handing_over(rules) -> dict[str, int]:
    """The inlined rules each of whose alternatives is one child its parent takes as it is
    (``_step: send | wait ...``, ``_value: NUMBER | STRING``), and what that child is."""
    alternatives: dict[str, set] = {}
    for rule in rules:
        name = rule.origin.name
        if not name.startswith("_") or rule.alias:
            continue
        syms = rule.expansion
        one = len(syms) == 1 and not (syms[0].is_term and syms[0].filter_out) and not syms[0].name.startswith("_")
        alternatives.setdefault(name, set()).add((_TOKEN if syms[0].is_term else _NODE) if one else None)
    return {name: next(iter(k)) for name, k in alternatives.items() if len(k) == 1 and None not in k}


class _NotBuilt(Exception):
    """The building parse met a text the grammar refuses: Lark's own parse reports it."""


@functools.cache
def _building_parser() -> Callable[[str], list] | None:
    """The building parse: a text in, the file's items out (:class:`_NotBuilt` when the text
    has a syntax error). None when this Lark's insides are not as expected (the long way is
    then always taken).

    It is Lark's contextual lexer and LALR loop over Lark's own tables and each parser state's
    own scanner (``lexer.py`` ``BasicLexer.next_token``, ``lalr_parser_state.py``
    ``ParserState.feed_token``), written out in one function: the same tokens with the same
    places, the same reductions, with a Python call less per token and per reduction, and each
    rule's function found by the rule's identity rather than through its Python-level hash."""
    try:
        from lark.parsers.lalr_analysis import Shift

        frontend = lark_parser().parser
        tables = frontend.parser.parser.parse_table
        states, start, end = tables.states, tables.start_states["start"], tables.end_states["start"]
        lexers = frontend.lexer.lexers
        if frontend.lexer_conf.callbacks or frontend.lexer_conf.use_bytes:
            return None
    except (ImportError, AttributeError, KeyError):
        return None
    methods = {
        name: fn
        for name, fn in vars(_AstBuilder).items()
        if not name.startswith("_") and name != "transform" and callable(fn)
    }
    rules = lark_parser().rules
    kinds = _handing_over(rules)
    functions = {rule: _rule_function(rule, kinds, methods, _BUILDING) for rule in rules}
    #: id of a rule in the tables -> (how many values it takes, its function, its name).
    reductions: dict[int, tuple[int, Callable, str]] = {}
    #: parser state -> its lexer's (regexes, ignored types, types that may hold a line end,
    #: callbacks: a keyword read as a name gets its own type).
    scanners: dict[int, tuple] = {}

    def reduction(rule) -> tuple[int, Callable, str]:
        found = reductions[id(rule)] = (len(rule.expansion), functions[rule], rule.origin.name)
        return found

    def scanner(state: int) -> tuple:
        lexer = lexers[state]
        found = scanners[state] = (
            [mre.match for mre in lexer.scanner._mres],
            lexer.ignore_types,
            lexer.newline_types,
            lexer.callback,
        )
        return found

    new_token = str.__new__

    def feed(stack: list, values: list, token: Token, last: bool):
        """Reduce as the tables say, then shift ``token``; the ``last`` (``$END``): reduce
        until the start rule is complete, and return what it made."""
        while True:
            action, arg = states[stack[-1]].get(token.type, _NO_ACTION)
            if action is Shift and not last:
                stack.append(arg)
                values.append(token)
                return None
            if action is None or action is Shift:
                raise _NotBuilt
            size, function, origin = reductions.get(id(arg)) or reduction(arg)
            if size:
                taken = values[-size:]
                del stack[-size:]
                del values[-size:]
            else:
                taken = []
            value = function(taken)
            stack.append(states[stack[-1]][origin][1])
            values.append(value)
            if last and stack[-1] == end:
                return value

    def run(text: str) -> list:
        stack = [start]
        values: list = []
        pos, line, line_start, size_ = 0, 1, 0, len(text)
        token = None
        while pos < size_:
            state = stack[-1]
            matchers, ignored, multiline, callbacks = scanners.get(state) or scanner(state)
            for match in matchers:
                m = match(text, pos)
                if m:
                    break
            else:
                raise _NotBuilt
            value, type_ = m.group(0), m.lastgroup
            column = pos - line_start + 1
            begin, first_line = pos, line
            if type_ in multiline and (newlines := value.count("\n")):
                line += newlines
                line_start = pos + value.rindex("\n") + 1
            pos += len(value)
            skip = type_ in ignored
            if skip and type_ not in callbacks:
                continue
            t = new_token(Token, value)
            t.type, t.start_pos, t.value, t.line, t.column = type_, begin, value, first_line, column
            t.end_line, t.end_column, t.end_pos = line, pos - line_start + 1, pos
            if type_ in callbacks:
                t = callbacks[type_](t)
            if skip:
                continue
            token = t
            feed(stack, values, token, False)
        token = Token.new_borrow_pos("$END", "", token) if token else Token("$END", "", 0, 1, 1)
        return feed(stack, values, token, True)  # the end: reduce until the start rule is complete

    return run


_NO_ACTION = (None, None)


def _parse_building(path: str, text: str) -> tuple[A.RuleFile, list[Diagnostic]] | None:
    """:func:`parse_file` in one pass: the syntax tree built while the text is parsed. None
    when the long way must be taken (:func:`_parse_then_build`)."""
    run = _building_parser()
    if run is None:
        return None
    builder = _AstBuilder(path)
    now = _BUILDING
    with _BUILDING_LOCK:
        now.builder, now.path = builder, path
        try:
            items = run(text)
        except _NotBuilt:  # a syntax error: Lark's parse says where, and the file is read piece by piece
            return None
        finally:
            now.builder = None
            now.wider.clear()
    if builder.diagnostics:  # a condition nested too deeply
        return None
    return A.RuleFile(path, tuple(items)), builder.diagnostics


# ----------------------------------------------------------------------------- error recovery

_SCAN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|' + NAME_RE.pattern + r"|\S")


def _item_starts(text: str) -> list[int]:
    """Offsets where a rule or segment starts: ``rule``, ``segment`` (not after ``in``) and a
    ``when`` that is neither ``exit when`` nor the ``when`` of a ``rule`` header."""
    starts: list[int] = []
    prev = ""
    in_header = False
    for m in _SCAN.finditer(text):
        word = m.group()
        if word.startswith("#"):
            continue
        if prev in _NAME_TAKERS:  # a name spelled like a keyword: `tag rule`, `rule when`
            prev = "name"
            continue
        if word == "rule":
            starts.append(m.start())
            in_header = True
        elif word == "segment" and prev != "in":
            starts.append(m.start())
            in_header = False
        elif word == "when":
            if not in_header and prev != "exit":
                starts.append(m.start())
            in_header = False
        prev = word
    return starts


#: Words after which the next word is a name, whatever it is spelled like.
_NAME_TAKERS = frozenset(
    ("rule", "segment", "send", ",", "tag", "untag", "tagged", "start", "menu", "set", "event", "variant")
)


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of an offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _parse_in_pieces(path: str, text: str) -> tuple[A.RuleFile, list[Diagnostic]]:
    """Parse each rule and segment of a file with a syntax error on its own."""
    starts = _item_starts(text)
    bounds = [0, *starts, len(text)]
    items: list[A.Item] = []
    diags: list[Diagnostic] = []
    broken_rules: list[str] = []
    broken_segments: list[str] = []
    stem = Path(path).stem
    for begin, end in zip(bounds, bounds[1:]):
        if begin == end:
            continue
        line, column = _position(text, begin)
        # A slice of the whole text: Lark reports positions in the file's coordinates.
        piece = TextSlice(text, begin, end)
        builder = _AstBuilder(path)
        following = _word_at(text, end) if end < len(text) else None
        tree, error = _parse_piece(path, piece, following)
        if error is not None:
            diags.append(error)
            words = [m.group() for m in _SCAN.finditer(text, begin, end) if not m.group().startswith("#")]
            first = words[0] if words else ""
            name = words[1] if len(words) > 1 else ""
            if first == "rule":
                broken_rules.append(name)
            elif first == "when":
                broken_rules.append(stem)
            elif first == "segment":
                broken_segments.append(name)
            continue
        try:
            items.extend(builder.transform(tree))
        except RecursionError:
            diags.append(_too_deep(_deep_span(path, tree)))
            continue
        diags.extend(builder.diagnostics)
    return A.RuleFile(path, tuple(items), tuple(broken_rules), tuple(broken_segments), has_syntax_errors=True), diags


def _word_at(text: str, offset: int) -> tuple[str, Span]:
    """The word starting at ``offset`` and its place (for "unexpected `rule`")."""
    word = _SCAN.match(text, offset).group()
    line, column = _position(text, offset)
    return word, Span("", line, column, line, column + len(word))


def _parse_piece(
    path: str, piece: TextSlice, following: tuple[str, Span] | None
) -> tuple[Tree | None, Diagnostic | None]:
    """Parse one piece token by token. On an error, the parser states needed to say exactly
    what was expected (before the last token, and before the one before it, to blame a keyword
    read as a name) are rebuilt by feeding the tokens again: linear in the piece's length,
    however deeply it nests (copying the parser's stack at every token would be quadratic)."""
    ip = lark_parser().parse_interactive(piece)
    tokens: list[Token] = []
    at_end = False  # whether the input ended too early
    try:
        for tok in ip.iter_parse():
            tokens.append(tok)
        at_end = True
        return ip.feed_eof(tokens[-1] if tokens else None), None
    except UnexpectedToken as e:
        if at_end:  # the input ended too early
            fed = len(tokens)
        elif tokens and tokens[-1] is e.token:  # the parser refused the last token
            fed = len(tokens) - 1
        else:  # the lexer found no token fitting here
            fed = len(tokens)
        return None, _token_error(path, piece, e.token, tokens, fed, following)
    except UnexpectedCharacters as e:
        return None, _char_error(path, piece, e, ip.accepts(), tokens)


def _state_after(piece: TextSlice, tokens: list[Token], count: int):
    """The parser as it was after the first ``count`` tokens of the piece."""
    ip = lark_parser().parse_interactive(piece)
    for tok in tokens[:count]:
        ip.feed_token(tok)
    return ip


def _token_error(
    path: str, piece: TextSlice, tok: Token, tokens: list[Token], fed: int, following: tuple[str, Span] | None
) -> Diagnostic:
    """The error for ``tok``, refused after the first ``fed`` tokens were accepted."""
    expected = _state_after(piece, tokens, fed).accepts()
    prev = tokens[fed - 1] if fed else None
    if prev is not None and prev.type == "PAIR_VALUE":
        # `via qr=shipping、ad=summer`: the full-width comma was read into the value before it
        wide = next((i for i, ch in enumerate(prev.value) if ch in _PAIR_STOPS), None)
        if wide is not None:
            return _full_width_error(path, prev.value[wide], prev.line, prev.column + wide, *_beside(prev.value, wide))
    if prev is not None and prev.type == "NAME":
        blamed = _blame_name(path, piece, prev, tokens, fed - 1)
        if blamed is not None:
            return blamed
    if "CMP_OP" in expected:
        # Inside a measure (`purchsed within 3d` read as an attribute): blame its name when
        # it is a misspelt keyword.
        last = next((i for i in range(fed - 1, -1, -1) if tokens[i].type == "NAME"), None)
        if last is not None:
            blamed = _blame_name(path, piece, tokens[last], tokens, last, misspelt_only=True)
            if blamed is not None:
                return blamed
    wide = _full_width_at(piece.text, tok)
    if wide is not None:
        return _full_width_error(path, *wide)
    written = _full_width_word(piece.text, tok)
    if written is not None:
        # `ｗａｉｔ １ｄ` typed with the input method in full-width mode: a word of the language
        # in full-width letters or digits, read as a name or not at all
        meant = unicodedata.normalize("NFKC", written)
        return Diagnostic.at(
            Span(path, tok.line, tok.column, tok.line, tok.column + len(written)),
            E("LR015", "`{word}` is written in full-width characters", word=written),
            help=_("write it in half-width characters: `{meant}`", meant=meant),
        )
    if prev is not None and prev.type == "DURATION" and tok.type == "NAME" and prev.end_pos == tok.start_pos:
        # `14days`, `1mo`: a duration read up to the first letter of a unit word.
        return _unit_error(path, prev, prev.value + tok.value)
    if tok.type == "$END" and following is not None:
        # The piece ended where the next rule or segment starts: blame that word.
        word, at = following
        span = Span(path, at.line, at.column, at.end_line, at.end_column)
        expected.discard("$END")
        return Diagnostic.at(
            span, E("LR010", "unexpected `{word}`; expected {expected}", word=word, expected=describe(expected))
        )
    if tok.type == "$END":
        span = Span(path, tok.end_line or tok.line or 1, tok.end_column or tok.column or 1)
        unclosed = _unclosed_paren(tokens) if "RPAR" in expected else None
        if unclosed is not None:
            return Diagnostic.at(
                span,
                E(
                    "LR013",
                    "the file ends inside parentheses: the `(` at line {line}, column {column} is never closed",
                    line=unclosed.line,
                    column=unclosed.column,
                ),
                help=_("close every `(` with a `)`"),
            )
        return Diagnostic.at(
            span, E("LR013", "the file ends too early; expected {expected}", expected=describe(expected))
        )
    if "UP" in expected and (tok.type in ("DURATION", "$END") or tok.value in STEP_WORDS):
        # `wait for purchased 1d`, `wait for purchased` at the end: the timeout is missing
        duration = tok.value if tok.type == "DURATION" else "3d"
        return Diagnostic.at(
            _tok_span(path, tok) if tok.type != "$END" else Span(path, tok.end_line or 1, tok.end_column or 1),
            E("LR010", "`wait for` needs how long it waits: `up to` and a duration"),
            help=_("write `up to {duration}`: the friend goes on at the event, or after that long", duration=duration),
        )
    if "THEN" in expected and tok.value in STEP_WORDS:
        return Diagnostic.at(
            _tok_span(path, tok),
            E("LR011", "missing `then` before `{value}`", value=tok.value),
            help=_("steps come after `then`, as in `when followed then send greeting`"),
        )
    slip = _operator_or_comma_slip(piece.text, prev, tok)
    if slip is not None and prev is not None and prev.value + tok.value in _OPERATOR_SLIPS:
        return Diagnostic.at(
            Span(path, prev.line, prev.column, tok.end_line, tok.end_column),
            E("LR018", "`{written}` is not a comparison", written=prev.value + tok.value),
            help=slip,
        )
    if slip is not None:
        return Diagnostic.at(
            _tok_span(path, tok),
            E("LR010", "unexpected {found}; expected {expected}", found=_found(tok), expected=describe(expected)),
            help=slip,
        )
    if tok.type in ("INT", "NUMBER") and "DURATION" in expected:
        unit = _WORD_AFTER.match(piece.text, tok.end_pos)
        if unit is not None and unit.group(1).lower() in _ALL_UNIT_WORDS:
            return _unit_error(path, tok, tok.value + unit.group(1), unit.group())
        unit = _JA_UNIT_AFTER.match(piece.text, tok.end_pos)
        if unit is not None:  # `wait 1日`, `3日間`, `2週間`, `1ヶ月`
            return _unit_error(path, tok, tok.value + unit.group(1), unit.group())
    if (
        tok.type in ("INT", "NUMBER")
        and "TIME" in expected
        and piece.text.startswith("時", tok.end_pos)
        and tok.value.isdigit()
        and int(tok.value) < 24
    ):  # `at 10時`
        return Diagnostic.at(
            Span(path, tok.line, tok.column, tok.line, tok.column + len(tok.value) + 1),
            E("LR201", "`{text}` is not a time of day", text=f"{tok.value}時"),
            help=_("write `{time}` (24 hours, `HH:MM`)", time=f"{int(tok.value):02d}:00"),
        )
    return Diagnostic.at(
        _tok_span(path, tok),
        E("LR010", "unexpected {found}; expected {expected}", found=_found(tok), expected=describe(expected)),
        help=_help(tok, expected, piece.text),
    )


def _blame_name(
    path: str, piece: TextSlice, name: Token, tokens: list[Token], fed: int, *, misspelt_only: bool = False
) -> Diagnostic | None:
    """When the token after a name is refused, the name itself may be the mistake: a keyword
    where it cannot stand (read as a name), or a misspelt keyword (`wiat`, `purchsed`)."""
    accepted = _state_after(piece, tokens, fed).accepts()
    texts = _terminal_texts()
    words = {texts[t] for t in accepted if t in texts and NAME_RE.fullmatch(texts[t])}
    rule_word = RULE_WORDS.get(name.value, "").split(" ")[0]
    if rule_word in words:  # an event type where its rule word goes: `when purchase`
        return Diagnostic.at(
            _tok_span(path, name),
            E("LR014", "unexpected `{value}`; expected {expected}", value=name.value, expected=describe(accepted)),
            help=_("did you mean `{word}`?", word=rule_word),
        )
    if name.value in keywords() and not misspelt_only:
        return Diagnostic.at(
            _tok_span(path, name),
            E("LR014", "unexpected `{value}`; expected {expected}", value=name.value, expected=describe(accepted)),
            # (`if then`, `wait for up to 3d`, `send wait 1d`: the keyword came too early)
            help=_("`{value}` is a keyword: what goes before it is missing", value=name.value),
        )
    close = did_you_mean(name.value, words) if words else None
    if close is not None and close.startswith("did you mean"):
        return Diagnostic.at(
            _tok_span(path, name),
            E("LR014", "unexpected `{value}`; expected {expected}", value=name.value, expected=describe(accepted)),
            help=close,
        )
    return None


#: Unit words -> the duration unit meant, or the duration to write instead (no such unit).
_UNIT_WORDS = {
    "m": "m",
    "min": "m",
    "mins": "m",
    "minute": "m",
    "minutes": "m",
    "h": "h",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "d": "d",
    "day": "d",
    "days": "d",
    "w": "w",
    "wk": "w",
    "wks": "w",
    "week": "w",
    "weeks": "w",
}
_NO_UNIT = {
    "mo": ("month", 30),
    "mon": ("month", 30),
    "month": ("month", 30),
    "months": ("month", 30),
    "y": ("year", 365),
    "yr": ("year", 365),
    "year": ("year", 365),
    "years": ("year", 365),
}
_UNIT_WORDS.update({"分": "m", "時間": "h", "日": "d", "日間": "d", "週": "w", "週間": "w"})
_NO_UNIT.update({w: ("month", 30) for w in ("ヶ月", "か月", "カ月", "ヵ月", "ケ月", "ヶ月間", "か月間")})
_NO_UNIT["年"] = ("year", 365)
_JA_UNIT_AFTER = re.compile(r"\s*(時間|日間|週間|ヶ月間|か月間|ヶ月|か月|カ月|ヵ月|ケ月|分|日|週|年|秒)")
_SECOND_WORDS = ("s", "sec", "secs", "second", "seconds", "秒")
_ALL_UNIT_WORDS = frozenset((*_UNIT_WORDS, *_NO_UNIT, *_SECOND_WORDS))
_WORD_AFTER = re.compile(r"\s*([A-Za-z]+)")
_DURATION_TEXT = re.compile(r"(\d+)\s*([A-Za-z]+|時間|日間|週間|ヶ月間|か月間|ヶ月|か月|カ月|ヵ月|ケ月|分|日|週|年|秒)")


def _unit_error(path: str, tok: Token, written: str, tail: str = "") -> Diagnostic:
    """`14days` -> "write `14d`"; `1mo` -> "there is no month unit: 30d"; `10s` -> minutes."""
    span = Span(
        path,
        tok.line,
        tok.column,
        tok.line,
        tok.column + len(tok.value) + len(tail) if tail else tok.column + len(written),
    )
    m = _DURATION_TEXT.fullmatch(written) or _DURATION_TEXT.match(written)
    number, word = (int(m.group(1)), m.group(2).lower()) if m else (0, "")
    shown = tok.value + tail if tail else written
    if word in _UNIT_WORDS:
        help_ = _("write `{number}{unit}`", number=number, unit=_UNIT_WORDS[word])
    elif word in _NO_UNIT and _NO_UNIT[word][0] == "month":
        help_ = _("there is no month unit: write `{number}d`", number=number * 30)
    elif word in _NO_UNIT:
        help_ = _("there is no year unit: write `{number}d`", number=number * 365)
    elif word in _SECOND_WORDS:
        help_ = _("there is no seconds unit: the shortest duration is a minute, `1m`")
    else:
        help_ = _("a duration is a number with a unit: `30m`, `2h`, `1d`, `2w` (combinable: `1d12h`)")
    return Diagnostic.at(span, E("LR016", "`{shown}` is not a duration", shown=shown), help=help_)


#: `=>` -> `>=`, ... : comparisons written as other languages or habits write them.
_OPERATOR_SLIPS = {"=>": ">=", "=<": "<=", "==": "=", "<>": "!=", "=!": "!="}


def _operator_or_comma_slip(text: str, prev: Token | None, tok: Token) -> str | None:
    """`orders => 2`, `orders == 2`, `total_spent >= 10,000`: the help names what to write."""
    if prev is None or prev.end_pos != tok.start_pos:
        return None
    if prev.value and tok.value and set(prev.value + tok.value) <= set("=<>!"):
        written = prev.value + tok.value
        if written in _OPERATOR_SLIPS:
            return _("write `{meant}`", meant=_OPERATOR_SLIPS[written])
    if prev.value.isdigit() and tok.value in ("万", "千", "万円", "千円", "円"):  # `total_spent > 1万`
        factor = {"万": 10_000, "千": 1_000}.get(tok.value[0], 1)
        return _("write the number in digits, without units: `{number}`", number=int(prev.value) * factor)
    if prev.type in ("INT", "NUMBER") and tok.type == "COMMA":
        m = re.match(r",\d{3}(?:,\d{3})*(?![\d,])", text[tok.start_pos :])
        if m is not None:
            return _("write numbers without commas: `{number}`", number=prev.value + m.group().replace(",", ""))
    return None


def _full_width_error(path: str, char: str, line: int, column: int, before: str = "", after: str = "") -> Diagnostic:
    """LR015 for ``char``; ``before``/``after``: the characters next to it, which tell a
    `key：value` pair (its half-width form is `=`, not `:`) from a time `10：00`."""
    if char in _CURLY_QUOTES:
        return Diagnostic.at(
            Span(path, line, column, line, column + 1),
            E("LR015", "`{char}` is a curly quote", char=char),
            help=_('write the straight `"` (the editor turned it into a curly one)'),
        )
    if char in "～〜":
        help_ = _("write the half-width `-` between the two times, e.g. `10:00-20:00`")
    elif char == "＃":
        help_ = _("write the half-width `#` to start a comment")
    elif char == "：" and before and after and not before.isdigit():
        help_ = _("a key and its value are joined by `=`: `{key}={value}`", key=before, value=after)
    else:
        help_ = _("write the half-width `{meant}`", meant=_FULL_WIDTH[char])
    return Diagnostic.at(
        Span(path, line, column, line, column + 1),
        E("LR015", "`{char}` is a full-width character", char=char),
        help=help_,
    )


def _full_width_at(text: str, tok: Token) -> tuple[str, int, int] | None:
    """A full-width character in the token or right after it: ``(char, line, column)``."""
    if tok.type == "$END" or tok.start_pos is None:
        return None
    for i in range(tok.start_pos, min(len(text), tok.end_pos + 1)):
        if text[i] in _FULL_WIDTH:
            return text[i], tok.line, tok.column + (i - tok.start_pos), *_beside(text, i)
    return None


def _beside(text: str, i: int) -> tuple[str, str]:
    """The words right before and after position ``i`` (up to a space or punctuation)."""
    start = i
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_-"):
        start -= 1
    end = i + 1
    while end < len(text) and (text[end].isalnum() or text[end] in "_-"):
        end += 1
    return text[start:i], text[i + 1 : end]


def _full_width_word(text: str, tok: Token) -> str | None:
    """The text from the token to the next space when it holds full-width Latin letters or
    digits (U+FF10..U+FF5A), which NFKC makes the half-width ones; else None."""
    if tok.type == "$END" or tok.start_pos is None:
        return None
    end = tok.start_pos
    while end < len(text) and not text[end].isspace():
        end += 1
    word = text[tok.start_pos : end]
    return word if any("\uff10" <= ch <= "\uff5a" for ch in word) else None


def _unclosed_paren(tokens: list[Token]) -> Token | None:
    """The innermost `(` left open at the end of the tokens."""
    open_: list[Token] = []
    for tok in tokens:
        if tok.type == "LPAR":
            open_.append(tok)
        elif tok.type == "RPAR" and open_:
            open_.pop()
    return open_[-1] if open_ else None


def _char_error(
    path: str, piece: TextSlice, e: UnexpectedCharacters, allowed: set[str], tokens: list[Token]
) -> Diagnostic:
    text = piece.text
    char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
    span = Span(path, e.line, e.column, e.line, e.column + 1)
    if char == '"':
        return Diagnostic.at(
            span,
            E("LR012", 'unterminated text: the closing `"` is missing'),
            help=_('a quoted text ends on the same line: "like this"'),
        )
    if char in _FULL_WIDTH:
        return _full_width_error(path, char, e.line, e.column, *_beside(text, e.pos_in_stream))
    if char.isdigit():
        m = _DURATION_TEXT.match(text, e.pos_in_stream)
        if m is not None and "DURATION" in allowed:
            tok = Token("INT", m.group(1), start_pos=e.pos_in_stream, line=e.line, column=e.column)
            return _unit_error(path, tok, m.group(), m.group()[len(m.group(1)) :])
    shown = _("a space") if char.isspace() else _("`{char}`", char=char)
    help_ = _unit_help(allowed) if char.isdigit() else None
    return Diagnostic.at(
        span, E("LR010", "unexpected {shown}; expected {expected}", shown=shown, expected=describe(allowed)), help=help_
    )


#: Full-width characters that cannot be meant inside an unquoted ``key=value`` value.
_PAIR_STOPS = frozenset("、，（）＝＂＃　“”‘’")

#: Quotation marks a text may be written in by mistake -> their closing mark.
_OTHER_QUOTES = {"「": "」", "『": "』", "'": "'", "\u2018": "\u2019"}

#: Full-width punctuation typed with a Japanese input method -> the character meant.
_FULL_WIDTH = {
    "＝": "=",
    "＜": "<",
    "＞": ">",
    "％": "%",
    "：": ":",
    "，": ",",
    "、": ",",
    "（": "(",
    "）": ")",
    "＂": '"',
    "＃": "#",
    "！": "!",
    "　": " ",
    "～": "-",
    "〜": "-",
    "“": '"',
    "”": '"',
}
_CURLY_QUOTES = "“”"


def _width_help(text: str) -> str | None:
    for ch in text:
        if ch in _FULL_WIDTH:
            return _("`{ch}` is a full-width character: write the half-width `{meant}`", ch=ch, meant=_FULL_WIDTH[ch])
    return None


def _tok_span(path: str, tok: Token) -> Span:
    return Span(path, tok.line or 1, tok.column or 1, tok.end_line, tok.end_column)


def _found(tok: Token) -> str:
    if tok.type == "STRING":
        return _("text {value}", value=tok.value)
    return _("`{value}`", value=tok.value)


def _unit_help(expected: set[str]) -> str | None:
    if "DURATION" in expected:
        return _("a duration is a number with a unit: `30m`, `2h`, `1d`, `2w` (combinable: `1d12h`)")
    if "TIME" in expected:
        return _("a time of day is written `HH:MM`, e.g. `09:00` or `20:30`")
    if "PERCENT" in expected:
        return _("a percentage ends with `%`, e.g. `50%`")
    return None


def _help(tok: Token, expected: set[str], text: str = "") -> str | None:
    """A hint for a few known mistakes (``text``: the piece the token is in)."""
    if tok.type in ("NUMBER", "INT", "DURATION", "TIME", "PERCENT"):
        return _unit_help(expected)
    if tok.type == "STRING" and "NAME" in expected:  # `tag "VIP"`, `send "coupon15"`
        inner = tok.value[1:-1]
        if NAME_RE.fullmatch(inner):
            return _("a name is written without quotes: `{name}`", name=inner)
    if "STRING" in expected and tok.value[:1] in _OTHER_QUOTES and len(tok.value) > 1:
        # `message 「送料 無料」`, `message 'free shipping'`: texts are in straight double quotes;
        # the text runs to the closing mark on the line, spaces and all
        start = tok.start_pos + 1 if tok.start_pos is not None else 0
        end_of_line = text.find("\n", start)
        line = text[start : end_of_line if end_of_line >= 0 else len(text)] if text else tok.value[1:]
        close = line.find(_OTHER_QUOTES[tok.value[0]])
        inner = line[:close] if close >= 0 else tok.value[1:].rstrip(_OTHER_QUOTES[tok.value[0]])
        return _('write the text in straight double quotes: "{text}"', text=inner)
    if tok.type == "NAME":
        texts = _terminal_texts()
        words = {texts[t] for t in expected if t in texts and NAME_RE.fullmatch(texts[t])}
        close = did_you_mean(tok.value, words) if words else None
        if close is not None and close.startswith("did you mean"):
            return close
    if tok.type == "NAME" and "COMMA" in expected and expected & {"SEND", "WAIT"}:
        return _("separate names with a comma: `send a, b`")
    return _width_help(tok.value)


def describe(expected: set[str]) -> str:
    """Lark's expected terminals as words, with steps, options and conditions grouped."""
    texts = _terminal_texts()
    words = {texts.get(t, t) for t in expected}
    groups: list[str] = []

    def group(members: tuple[str, ...], label: str, extra: tuple[str, ...] = ()) -> None:
        if sum(w in words for w in members) >= 3:
            groups.append(label)
            words.difference_update(members + extra)

    group(TRIGGER_WORDS, _("a trigger (`followed`, `message`, `schedule`, ... or a condition)"), COND_WORDS + ("NAME",))
    group(COND_WORDS, _("a condition (`purchased`, `tagged vip`, `orders >= 3`, ...)"), ("NAME",))
    group(STEP_WORDS, _("a step (`send`, `wait`, `tag`, ...)"))
    group(OPTION_WORDS, _("an option (`exit when`, `reenter`, `window`, ...)"))
    group(ITEM_WORDS, _("another rule"))
    end = [_("the end of the file")] if "$END" in words else []
    words.discard("$END")
    parts = [TERMINAL_WORDS.get(w, f"`{w}`") for w in sorted(words)] + groups + end
    if not parts:
        return _("something else")
    if len(parts) == 1:
        return parts[0]
    return _("{items} or {last}", items=join(parts[:-1]), last=parts[-1])
