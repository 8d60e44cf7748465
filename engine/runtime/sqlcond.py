"""Compile rule conditions (:mod:`engine.language.ir` ``Cond``) to SQLite boolean expressions.

Every condition is evaluated in SQL, whether for one enrollment (a step's ``if``), for a batch
of enrollments (all friends at the same step in one tick) or over every friend (condition
triggers), so there is exactly one meaning of each condition.

The expression refers to the friend row as ``f`` (table ``friends``) and, when evaluated for an
enrollment, to the enrollment row as ``e``. Named parameters: ``:now`` (epoch seconds) and
``:rule`` (the rule being evaluated), plus the literals collected in :attr:`Compiled.params`.
Every expression yields TRUE or FALSE (SQLite: 1 or 0), never NULL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.language import ir

#: A current friend: their latest follow/unfollow is a follow (SPEC §2.2 "Who is a friend").
#: The unary ``+`` keeps SQLite from walking the index on ``followed_at`` for it: nearly every
#: friend is current, and reading a million rows in the index's order instead of the table's
#: costs a random page read each.
CURRENT = "(+f.followed_at IS NOT NULL AND f.blocked_at IS NULL)"

_OPS = {"=": "=", "!=": "IS NOT", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_NUMBERS = ("orders", "total_spent", "spent")
_TEXTS = ("display_name", "language")
_COLUMNS = {
    "orders": "f.orders",
    "total_spent": "f.total_spent",
    "display_name": "f.display_name",
    "language": "f.language",
}


@dataclass
class Compiled:
    sql: str
    params: dict[str, Any] = field(default_factory=dict)


class CondCompiler:
    """Turns conditions into SQL; ``with_enrollment`` says whether ``e`` is in scope (without
    it, "since entering the rule" means "ever" and ``variant`` is false)."""

    def __init__(
        self,
        segments: dict[str, ir.Segment],
        *,
        with_enrollment: bool,
        dialect: str = "sqlite",
        ranked: list[Ranking] | None = None,
    ):
        self.segments = segments
        #: None: a ``top`` ranks every current friend in the query itself (a window function);
        #: a list: it compares the friend's kept value (``measure_values``) with the threshold
        #: parameter of its :class:`Ranking`, appended here (condition triggers,
        #: engine/stages/conditions.py)
        self.ranked = ranked
        #: ``sqlite`` or ``postgresql``: the dialect of the few expressions that differ (typed
        #: attribute values); everything else is written once and translated for PostgreSQL by
        #: :mod:`engine.runtime.pgconn`.
        self.dialect = dialect
        self.with_enrollment = with_enrollment
        self.params: dict[str, Any] = {}
        self._stack: list[str] = []

    def compile(self, cond: ir.Cond) -> Compiled:
        self.params = {}
        sql = self._cond(cond)
        return Compiled(sql, dict(self.params))

    def _lit(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def _cond(self, c: ir.Cond) -> str:  # noqa: C901 - one branch per condition kind
        if isinstance(c, ir.All):
            return "(" + " AND ".join(self._cond(i) for i in c.items) + ")" if c.items else "TRUE"
        if isinstance(c, ir.AnyOf):
            return "(" + " OR ".join(self._cond(i) for i in c.items) + ")" if c.items else "FALSE"
        if isinstance(c, ir.Not):
            return f"(NOT {self._cond(c.item)})"
        if isinstance(c, ir.Activity):
            return self._activity(c)
        if isinstance(c, ir.Tagged):
            return f"EXISTS (SELECT 1 FROM tags t WHERE t.friend = f.id AND t.tag = {self._lit(c.name)})"
        if isinstance(c, ir.Blocked):
            return "(f.blocked_at IS NOT NULL)"
        if isinstance(c, ir.FollowedVia):
            if not c.pairs:
                return CURRENT
            ors = " OR ".join(
                f"instr(',' || f.source || ',', {self._lit(',' + k + '=' + v + ',')}) > 0" for k, v in c.pairs
            )
            return f"(f.source IS NOT NULL AND ({ors}))"
        if isinstance(c, ir.FriendFor):
            since = f"(:now - {int(c.seconds)})"  # (``+``: not by the index, as in CURRENT)
            if c.mode == "for":
                return f"(+f.followed_at IS NOT NULL AND +f.followed_at <= {since})"
            return f"(+f.followed_at IS NOT NULL AND +f.followed_at > {since})"
        if isinstance(c, ir.LastPurchaseOlder):
            return f"(f.last_purchase_at IS NOT NULL AND f.last_purchase_at <= :now - {int(c.seconds)})"
        if isinstance(c, ir.NeverPurchased):
            return "(f.orders = 0)"
        if isinstance(c, ir.Compare):
            op = _OPS[c.op]
            kind = "string" if isinstance(c.value, str) else "number"
            return f"COALESCE(({self.measure(c.measure, kind=kind)}) {op} {self._lit(c.value)}, FALSE)"
        if isinstance(c, ir.Top) and self.ranked is not None:
            rank = Ranking(f"top{len(self.ranked)}", measure_key(c.measure), c.measure, c.percent / 100.0)
            self.ranked.append(rank)
            return (
                f"(COALESCE((SELECT mv.value FROM measure_values mv WHERE mv.measure = {self._lit(rank.key)} "
                f"AND mv.friend = f.id), 0) > :{rank.param})"
            )
        if isinstance(c, ir.Top):
            join = ""
            if c.measure.within is not None and c.measure.name in ("spent", "total_spent"):
                # one grouped pass over the orders instead of a lookup per friend
                measure = "s.total"
                join = (
                    f"LEFT JOIN (SELECT a.friend AS friend, SUM(a.amount) AS total FROM activity a "
                    f"WHERE a.kind = 'order' AND a.at > :now - {int(c.measure.within)} GROUP BY a.friend) s "
                    f"ON s.friend = f2.id "
                )
            else:
                measure = self.measure(c.measure, alias="f2")
            return (
                f"f.id IN (SELECT id FROM (SELECT f2.id AS id, CUME_DIST() OVER "
                f"(ORDER BY COALESCE({measure}, 0) DESC) AS cd FROM friends f2 {join}"
                f"WHERE {CURRENT.replace('f.', 'f2.')}) "
                f"WHERE cd <= {self._lit(c.percent / 100.0)})"
            )
        if isinstance(c, ir.InSegment):
            if c.name in self._stack or c.name not in self.segments:
                return "FALSE"  # the compiler rejects cycles and unknown names; be safe anyway
            self._stack.append(c.name)
            try:
                return self._cond(self.segments[c.name].cond)
            finally:
                self._stack.pop()
        if isinstance(c, ir.Variant):
            if not self.with_enrollment:
                return "FALSE"
            return f"COALESCE(e.variant = {self._lit(c.name)}, FALSE)"
        raise TypeError(f"unknown condition {type(c).__name__}")

    def _activity(self, c: ir.Activity) -> str:
        kind = "order" if c.kind == "purchase" and not (c.product or c.category) else c.kind
        where = ["a.friend = f.id", f"a.kind = {self._lit(kind)}"]
        if c.product:
            where.append(f"a.product = {self._lit(c.product)}")
        if c.category:
            where.append(f"a.category = {self._lit(c.category)}")
        if c.kind == "click":
            where.append("a.rule = :rule")
        if c.within is not None:
            where.append(f"a.at > :now - {int(c.within)}")
        elif self.with_enrollment:
            # since entering, without the event that caused the entry (SPEC §2.3)
            where.append("a.at >= e.entered_at")
            # (an activity row knows its event, or, for an order, its order id)
            where.append(
                "(e.entry_seq IS NULL OR a.event_seq > e.entry_seq OR (a.event_seq IS NULL AND "
                "(a.order_id IS NULL OR a.order_id IS NOT (SELECT json_extract(x.data, '$.order_id') "
                "FROM events x WHERE x.seq = e.entry_seq))))"
            )
        return f"EXISTS (SELECT 1 FROM activity a WHERE {' AND '.join(where)})"

    def measure(self, m: ir.Measure, alias: str = "f", kind: str = "number") -> str:
        """The SQL value of a measure for the friend row ``alias``, as a ``kind`` (``number``
        or ``string``): NULL when the friend's value is of the other kind (an attribute holding
        text compared with a number), so that ``=`` and the orderings are false and ``!=`` is
        true, on both backends."""
        if kind == "string" and (m.name in _NUMBERS or m.within is not None):
            return "NULL"
        if kind == "number" and m.name in _TEXTS:
            return "NULL"
        if m.name == "spent" or (m.name == "total_spent" and m.within is not None):
            if m.within is None:
                return f"{alias}.total_spent"
            return (
                f"(SELECT COALESCE(SUM(a.amount), 0) FROM activity a WHERE a.friend = {alias}.id "
                f"AND a.kind = 'order' AND a.at > :now - {int(m.within)})"
            )
        if m.name in _COLUMNS:
            return _COLUMNS[m.name].replace("f.", f"{alias}.")
        name = m.name.replace('"', "")
        if self.dialect == "postgresql":
            key = self._lit(name)
            cast = "::float8" if kind == "number" else ""
            return (
                f"(CASE WHEN jsonb_typeof({alias}.attributes::jsonb -> {key}) = '{kind}' "
                f"THEN ({alias}.attributes::jsonb ->> {key}){cast} END)"
            )
        path = self._lit('$."' + name + '"')
        types = "('integer', 'real')" if kind == "number" else "('text')"
        return (
            f"(CASE WHEN json_type({alias}.attributes, {path}) IN {types} "
            f"THEN json_extract({alias}.attributes, {path}) END)"
        )


@dataclass(frozen=True)
class Ranking:
    """One ``top`` of a condition compiled with ``ranked``: the friends whose kept value of
    ``measure`` (key ``key`` in ``measure_values``) is above the threshold parameter ``param``
    are the top ``share`` of the current friends (:meth:`engine.runtime.store.Store.measure_threshold`)."""

    param: str
    key: str
    measure: ir.Measure
    share: float


def measure_key(m: ir.Measure) -> str:
    """The name under which a measure's values are kept (``spent|31536000``, ``orders|``)."""
    return f"{m.name}|{'' if m.within is None else int(m.within)}"


def top_count(share: float, friends: int) -> int:
    """How many of ``friends`` (ranked from the highest value) a top ``share`` keeps at most:
    the largest k with k / friends <= share, as ``CUME_DIST() <= share`` compares it."""
    if friends <= 0:
        return 0
    k = min(friends, max(0, int(share * friends)))
    while k < friends and (k + 1) / friends <= share:
        k += 1
    while k > 0 and k / friends > share:
        k -= 1
    return k


def measure_fill(m: ir.Measure, dialect: str, *, some: bool) -> Compiled:
    """``INSERT`` of the non-zero values of measure ``m`` (parameters ``:key``, ``:now`` and
    its own) of every current friend (``some``: of those in ``temp.lr_mcand``), the values a
    ``top`` ranks (missing counts as 0, as in the ranking)."""
    if not some and m.within is not None and m.name in ("spent", "total_spent"):
        # only friends with orders in the window have a value: one pass over those orders
        return Compiled(
            "INSERT INTO measure_values(measure, friend, value) SELECT :key, a.friend, SUM(a.amount) "
            "FROM activity a CROSS JOIN friends f ON f.id = a.friend "
            f"WHERE a.kind = 'order' AND a.at > :now - {int(m.within)} AND {CURRENT} "
            "GROUP BY a.friend HAVING COALESCE(SUM(a.amount), 0) <> 0"
        )
    compiler = CondCompiler({}, with_enrollment=False, dialect=dialect)
    value = f"COALESCE({compiler.measure(m)}, 0)"
    source = "temp.lr_mcand c CROSS JOIN friends f ON f.id = c.id" if some else "friends f"
    return Compiled(
        "INSERT INTO measure_values(measure, friend, value) SELECT :key, id, v FROM "
        f"(SELECT f.id AS id, {value} AS v FROM {source} WHERE {CURRENT}) x WHERE v <> 0",
        dict(compiler.params),
    )


def _terms(cond: ir.Cond, segments: dict[str, ir.Segment]) -> list[tuple[str, str | None, int]] | None:
    """The terms of ``cond`` counting back from now, as (what, activity kind, seconds): what is
    ``activity`` (rows of that kind; None: any), ``followed_at`` or ``last_purchase_at``.
    None when some part of the condition is not understood here."""
    out: list[tuple[str, str | None, int]] = []
    stack: list[str] = []

    def measure(m: ir.Measure) -> None:
        if m.within is not None:
            out.append(("activity", "order" if m.name in ("spent", "total_spent") else None, int(m.within)))

    def walk(c: ir.Cond) -> bool:
        if isinstance(c, (ir.All, ir.AnyOf)):
            return all(walk(i) for i in c.items)
        if isinstance(c, ir.Not):
            return walk(c.item)
        if isinstance(c, ir.Activity):
            if c.within is not None:
                kind = "order" if c.kind == "purchase" and not (c.product or c.category) else c.kind
                out.append(("activity", kind, int(c.within)))
            return True
        if isinstance(c, ir.FriendFor):
            out.append(("followed_at", None, int(c.seconds)))
            return True
        if isinstance(c, ir.LastPurchaseOlder):
            out.append(("last_purchase_at", None, int(c.seconds)))
            return True
        if isinstance(c, (ir.Compare, ir.Top)):
            measure(c.measure)
            return True
        if isinstance(c, ir.InSegment):
            if c.name in stack or c.name not in segments:
                return True
            stack.append(c.name)
            try:
                return walk(segments[c.name].cond)
            finally:
                stack.pop()
        return isinstance(c, (ir.Tagged, ir.Blocked, ir.FollowedVia, ir.NeverPurchased, ir.Variant))

    return out if walk(cond) else None


def drifts(cond: ir.Cond, segments: dict[str, ir.Segment]) -> bool:
    """Whether ``cond`` may change for a friend with no event of theirs: a term counting back
    from now (``within``, ``older than``, ``friend for``), a ranking (``top``, which the other
    friends move), or a part not understood here."""
    terms = _terms(cond, segments)
    if terms is None or terms:
        return True
    stack: list[str] = []

    def ranked(c: ir.Cond) -> bool:
        if isinstance(c, (ir.All, ir.AnyOf)):
            return any(ranked(i) for i in c.items)
        if isinstance(c, ir.Not):
            return ranked(c.item)
        if isinstance(c, ir.Top):
            return True
        if isinstance(c, ir.InSegment) and c.name in segments and c.name not in stack:
            stack.append(c.name)
            try:
                return ranked(segments[c.name].cond)
            finally:
                stack.pop()
        return False

    return ranked(cond)


def crossings(cond: ir.Cond, segments: dict[str, ir.Segment]) -> list[str] | None:
    """Queries (parameters ``:since``, ``:now``) of the friends for whom time alone may have
    changed ``cond`` between the moments ``since`` and ``now``: a stored time crossed by a term
    counting back from now (``within``, ``older than``, ``friend for``). None when some part of
    the condition is not understood here (then every friend must be checked)."""
    terms = _terms(cond, segments)
    if terms is None:
        return None
    out = []
    for what, kind, seconds in dict.fromkeys(terms):
        span = f"> :since - {seconds} AND {{c}} <= :now - {seconds}"
        if what == "activity":
            where = f"at {span.format(c='at')}" + (f" AND kind = '{kind}'" if kind else "")
            out.append(f"SELECT friend FROM activity WHERE {where}")
        elif what == "followed_at":
            out.append(f"SELECT id FROM friends WHERE followed_at {span.format(c='followed_at')}")
        else:  # the last purchase is an order row (engine/runtime/store.py recount_purchases)
            out.append(f"SELECT friend FROM activity WHERE kind = 'order' AND at {span.format(c='at')}")
    return out


def change_moments(cond: ir.Cond, segments: dict[str, ir.Segment]) -> list[str] | None:
    """Queries (parameter ``:now``) whose results bound when time alone can change ``cond``
    for some friend: while no row of the database changes, the condition has the same value for
    every friend at every moment before the smallest result (a NULL result: never). Each
    query gives the first moment after ``:now`` at which a term counting back from now (``within``,
    ``older than``, ``friend for``) crosses a stored time; over every kind of activity, which
    can only make the bound earlier. None when some part of the condition is not understood
    here (then every check must be made)."""
    terms = _terms(cond, segments)
    if terms is None:
        return None
    out = []
    for what, _kind, seconds in dict.fromkeys(terms):
        if what == "activity":  # the first of each kind in the span, by the kinds' index
            first = f"SELECT MIN(a.at) FROM activity a WHERE a.kind = kinds.kind AND a.at > :now - {seconds}"
            out.append(f"SELECT MIN(({first})) + {seconds} FROM {_ACTIVITY_KINDS}")
            continue
        out.append(f"SELECT MIN({what}) + {seconds} FROM friends WHERE {what} > :now - {seconds}")
    return out


#: The kinds of activity stored, one index seek each (``activity_kind``): ``SELECT MIN(at) FROM
#: activity WHERE at > ...`` has no index of its own and read the whole index, every activity
#: of every friend, each time the quiet time of a condition was worked out.
_ACTIVITY_KINDS = (
    "(WITH RECURSIVE k(kind) AS (SELECT MIN(kind) FROM activity UNION ALL "
    "SELECT (SELECT MIN(a.kind) FROM activity a WHERE a.kind > k.kind) FROM k WHERE k.kind IS NOT NULL) "
    "SELECT kind FROM k WHERE kind IS NOT NULL) kinds"
)


#: The rule's enrollment ``x`` of a friend is still open (the friend is inside the rule).
INSIDE = "x.state IN ('active', 'waiting')"


def audience(where: Compiled | None) -> Compiled:
    """Every current friend ``f`` for whom ``where`` (None: nothing more) holds."""
    if where is None:
        return Compiled(CURRENT)
    return Compiled(f"{CURRENT} AND ({where.sql})", dict(where.params))


def reentry_blocked(reenter: ir.Reenter | None) -> Compiled:
    """Who may not enter a rule again, as a predicate over the friend's earlier enrollments
    ``x`` of that rule: still inside (time triggers, ``reenter always``: None or mode
    ``always``), ever entered (``never``), or inside or ended less than ``after`` ago."""
    if reenter is None or reenter.mode == "always":
        return Compiled(INSIDE)
    if reenter.mode == "never":
        return Compiled("TRUE")
    return Compiled(f"{INSIDE} OR x.finished_at > :now - :reenter_after", {"reenter_after": int(reenter.after)})


def reentry_moment() -> str:
    """Query (``:rule``, ``:now``, ``:reenter_after``): the first moment after ``:now`` at which
    a friend who left the rule may enter again under ``reenter after`` (NULL: none)."""
    return (
        "SELECT MIN(finished_at) + :reenter_after FROM enrollments WHERE rule = :rule "
        "AND finished_at > :now - :reenter_after"
    )


def draw(split: tuple[tuple[str, float], ...], holdout: float) -> tuple[str, str, dict[str, Any]]:
    """SQL twins (over ``f``, parameter ``:rule``) of the split variant and holdout draw of
    :func:`engine.stages.entry.draw`: the same hash (``lr_bucket``), the same buckets.
    Returns (variant expression, holdout expression, parameters)."""
    params: dict[str, Any] = {}
    variant = "NULL"
    if split:
        cases, edge = [], 0
        for i, (name, percent) in enumerate(split[:-1]):
            edge += round(percent * 100)
            params[f"split_edge{i}"], params[f"split_name{i}"] = edge, name
            cases.append(f"WHEN lr_bucket(f.id, :rule, 'split') < :split_edge{i} THEN :split_name{i}")
        params["split_last"] = split[-1][0]
        variant = f"CASE {' '.join(cases)} ELSE :split_last END" if cases else ":split_last"
    holdout_sql = "0"
    if holdout:
        params["holdout_edge"] = round(holdout * 100)
        holdout_sql = "(CASE WHEN lr_bucket(f.id, :rule, 'holdout') < :holdout_edge THEN 1 ELSE 0 END)"
    return variant, holdout_sql, params
