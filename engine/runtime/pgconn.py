"""The store's connection on PostgreSQL: the subset of :class:`sqlite3.Connection` the store
uses, over psycopg 3, with the store's SQL translated from SQLite's dialect.

:class:`engine.runtime.store.Store` owns the SQL, written once in SQLite's dialect. On
PostgreSQL each statement goes through :func:`translate` (once per distinct text, cached),
a small explicit translation in the manner of :mod:`engine.runtime.pgschema`:

=========================================  ==================================================
SQLite                                     PostgreSQL
=========================================  ==================================================
``?`` / ``:name`` parameters               ``%s`` / ``%(name)s`` (a literal ``%`` is ``%%``)
``INSERT OR IGNORE INTO ...``              ``INSERT INTO ... ON CONFLICT DO NOTHING``
``MAX(a, b)`` / ``MIN(a, b)`` (scalar)     ``GREATEST(a, b)`` / ``LEAST(a, b)``
``json_extract(x, '$.k')``, ``'$[0][0]'``  ``(x::jsonb ->> 'k')``, ``(x::jsonb #>> '{0,0}')``
``json_each(x) t`` (an array)              ``jsonb_array_elements_text(x::jsonb) AS t(value)``
``json_group_array(x)``                    ``json_agg(x)``
``json_array(...)``, ``json(x)``           ``json_build_array(...)``, ``(x)::json``
``json_patch(a, b)``                       ``lr_json_patch(a, b)`` (a function of the schema)
``instr(a, b)``                            ``strpos(a, b)``
``TOTAL(condition)``                       ``COALESCE(SUM((condition)::int), 0)``
``a IS b`` / ``a IS NOT b``                ``IS [NOT] DISTINCT FROM``
``IFNULL(``                                ``COALESCE(``
``temp.t``                                 ``pg_temp.t``
``CREATE INDEX temp.i ON t(...)``          ``CREATE INDEX i ON pg_temp.t(...)``
``DELETE FROM temp.t`` (every row)         ``TRUNCATE pg_temp.t RESTART IDENTITY`` (numbering
                                           starts again at 1, as SQLite's rowid does)
``INTEGER PRIMARY KEY`` in DDL             an identity column; ``INTEGER``/``REAL`` → ``BIGINT``/``DOUBLE PRECISION``
``(SELECT ...)`` in FROM without a name    ``(SELECT ...) AS _s1``
=========================================  ==================================================

Transactions keep SQLite's meaning: ``BEGIN IMMEDIATE`` takes the schema's write lock
(``pg_advisory_xact_lock``), so write transactions of every connection to the schema — every
runner's — follow one another as they do on one SQLite file, and a transaction's reads see
everything committed before it began writing. ``BEGIN DEFERRED`` is a transaction without that
lock, for writes that row locks alone keep apart (a runner storing the outcomes of the rows it
claimed, which no other writer touches). Errors come out as the :mod:`sqlite3` classes
the store handles (a psycopg error is their ``__cause__``), and ``numeric`` results (``SUM``)
as ``int`` or ``float``, as on SQLite.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.numeric import NumericLoader

from .pgschema import _segments

# ---------------------------------------------------------------------- translation


class Untranslatable(ValueError):
    """A statement uses SQLite that :func:`translate` does not know."""


def _close_paren(sql: str, open_at: int) -> int:
    """Index of the parenthesis closing the one at ``open_at`` (literals already masked)."""
    depth = 0
    for i in range(open_at, len(sql)):
        ch = sql[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    raise Untranslatable(f"unbalanced parentheses in: {sql[:120]}")


def _top_level_commas(sql: str, start: int, end: int) -> int:
    depth = count = 0
    for i in range(start, end):
        ch = sql[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            count += 1
    return count


def _mask(sql: str) -> tuple[str, list[str]]:
    """``sql`` with each string literal replaced by ``\\x00N\\x00`` (so that rewrites never
    touch a literal), and the literals."""
    literals: list[str] = []
    out = []
    for literal, text in _segments(sql):
        if literal:
            out.append(f"\x00{len(literals)}\x00")
            literals.append(text)
        else:
            out.append(text)
    return "".join(out), literals


def _unmask(sql: str, literals: list[str]) -> str:
    return re.sub("\x00(\\d+)\x00", lambda m: literals[int(m.group(1))].replace("%", "%%"), sql)


def _json_path(literal: str) -> tuple[str, str] | None:
    """A json_extract path literal as (operator, PostgreSQL path literal), or None."""
    path = literal[1:-1]
    m = re.fullmatch(r"\$\.([A-Za-z_][A-Za-z0-9_]*)", path) or re.fullmatch(r'\$\."([^"\\]+)"', path)
    if m:
        return "->>", "'" + m.group(1).replace("'", "''") + "'"
    m = re.fullmatch(r"\$((?:\[\d+\])+)", path)
    if m:
        return "#>>", "'{" + ",".join(re.findall(r"\d+", m.group(1))) + "}'"
    return None


def _functions(sql: str, literals: list[str]) -> str:
    """Rewrite the SQLite functions with no PostgreSQL twin (see the module's table)."""
    out = []
    i = 0
    pattern = re.compile(
        r"\b(json_extract|json_each|json_group_array|json_array|json_patch|json|MAX|MIN|instr|TOTAL)\s*\(", re.I
    )
    while True:
        m = pattern.search(sql, i)
        if not m:
            out.append(sql[i:])
            return "".join(out)
        name = m.group(1).lower()
        open_at = m.end() - 1
        close = _close_paren(sql, open_at)
        inner = _functions(sql[open_at + 1 : close], literals)
        out.append(sql[i : m.start()])
        i = close + 1
        if name in ("max", "min"):
            if _top_level_commas(inner, 0, len(inner)):
                out.append(("GREATEST(" if name == "max" else "LEAST(") + inner + ")")
            else:
                out.append(m.group(1) + "(" + inner + ")")
        elif name == "json_extract":
            arg, _, path = inner.rpartition(",")
            lit = re.fullmatch(r"\s*\x00(\d+)\x00\s*", path)
            translated = _json_path(literals[int(lit.group(1))]) if lit else None
            if translated is None:
                raise Untranslatable(f"json_extract with a path other than '$.key' or '$[n]': {sql[:120]}")
            op, pg_path = translated
            literals.append(pg_path)
            out.append(f"(({arg.strip()})::jsonb {op} \x00{len(literals) - 1}\x00)")
        elif name == "json_each":
            alias = re.match(
                r"\s+(?:AS\s+)?(?!(?:ON|WHERE|JOIN|CROSS|LEFT|INNER|GROUP|ORDER|LIMIT|UNION)\b)(\w+)", sql[i:], re.I
            )
            if alias:
                i += alias.end()
                name_ = alias.group(1)
            else:
                name_ = "json_each"
            out.append(f"jsonb_array_elements_text(({inner})::jsonb) AS {name_}(value)")
        elif name == "json_group_array":
            out.append(f"json_agg({inner})")
        elif name == "json_array":
            out.append(f"json_build_array({inner})")
        elif name == "json":
            out.append(f"({inner})::json")
        elif name == "json_patch":
            out.append(f"lr_json_patch({inner})")
        elif name == "instr":
            out.append(f"strpos({inner})")
        elif name == "total":  # the store totals conditions only
            out.append(f"COALESCE(SUM(({inner})::int), 0)")


def _name_subqueries(sql: str) -> str:
    """Give each unnamed subquery in FROM / JOIN a name (PostgreSQL before 16 needs one)."""
    n = 0
    i = 0
    while True:
        m = re.compile(r"(?<!DISTINCT )\b(FROM|JOIN)\s*\(\s*SELECT\b", re.I).search(sql, i)
        if not m:
            return sql
        open_at = sql.index("(", m.start())
        close = _close_paren(sql, open_at)
        after = sql[close + 1 :]
        if not re.match(
            r"\s*(AS\s+)?(?!(?:ON|WHERE|JOIN|CROSS|LEFT|INNER|GROUP|ORDER|LIMIT|UNION|HAVING)\b)\w", after, re.I
        ):
            n += 1
            sql = sql[: close + 1] + f" AS _s{n}" + after
        i = open_at + 1


def _cross_joins(sql: str) -> str:
    """``CROSS JOIN t ON ...`` (SQLite reads it as an inner join) as ``JOIN t ON ...``."""
    out = []
    i = 0
    for m in re.finditer(r"\bCROSS\s+JOIN\b", sql, re.I):
        depth = 0
        j = m.end()
        joined = False
        while j < len(sql):
            ch = sql[j]
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and ch.isalpha() and not sql[j - 1].isalnum() and sql[j - 1] != "_":
                word = re.match(r"[A-Za-z_]+", sql[j:]).group(0).upper()
                if word == "ON":
                    joined = True
                    break
                if word in ("WHERE", "JOIN", "CROSS", "LEFT", "INNER", "GROUP", "ORDER", "LIMIT", "UNION"):
                    break
                j += len(word) - 1
            j += 1
        if joined:
            out.append(sql[i : m.start()] + "JOIN")
            i = m.end()
    out.append(sql[i:])
    return "".join(out)


_DDL = re.compile(r"^\s*CREATE\s+(TEMP\s+|TEMPORARY\s+)?(TABLE|INDEX)\b", re.I)


@lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """One statement of the store in PostgreSQL's dialect (see the module's table)."""
    masked, literals = _mask(sql)
    masked = masked.replace("%", "%%")
    masked = re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", masked)
    masked = masked.replace("?", "%s")
    ignore = re.match(r"\s*INSERT\s+OR\s+IGNORE\s+INTO\b", masked, re.I)
    if ignore:
        masked = re.sub(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", "INSERT INTO", masked, count=1, flags=re.I)
    if re.match(r"\s*(INSERT\s+OR|REPLACE\b|PRAGMA\b)", masked, re.I):
        raise Untranslatable(f"no PostgreSQL form for: {sql.strip()[:120]}")
    masked = _functions(masked, literals)
    masked = re.sub(r"\bIFNULL\s*\(", "COALESCE(", masked, flags=re.I)
    masked = re.sub(r"\bIS\s+NOT\s+(?!NULL\b|DISTINCT\b|TRUE\b|FALSE\b)", "IS DISTINCT FROM ", masked, flags=re.I)
    masked = re.sub(r"\bIS\s+(?!NOT\b|NULL\b|DISTINCT\b|TRUE\b|FALSE\b)", "IS NOT DISTINCT FROM ", masked, flags=re.I)
    delete_all = re.fullmatch(r"\s*DELETE\s+FROM\s+temp\.(\w+)\s*", masked, re.I)
    if delete_all:
        return f"TRUNCATE pg_temp.{delete_all.group(1)} RESTART IDENTITY"
    index = re.match(r"\s*CREATE\s+INDEX\s+(IF\s+NOT\s+EXISTS\s+)?temp\.(\w+)\s+ON\s+(\w+)", masked, re.I)
    if index:
        masked = (
            f"CREATE INDEX {index.group(1) or ''}{index.group(2)} ON pg_temp.{index.group(3)}" + masked[index.end() :]
        )
    masked = re.sub(r"\btemp\.", "pg_temp.", masked, flags=re.I)
    if _DDL.match(masked):
        masked = re.sub(
            r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            masked,
            flags=re.I,
        )
        masked = re.sub(r"\)\s*WITHOUT\s+ROWID\b", ")", masked, flags=re.I)
    masked = re.sub(r"\bINTEGER\b", "BIGINT", masked, flags=re.I)
    masked = re.sub(r"\bREAL\b", "DOUBLE PRECISION", masked, flags=re.I)
    masked = _name_subqueries(masked)
    masked = _cross_joins(masked)
    if ignore:
        returning = re.search(r"\bRETURNING\b", masked, re.I)
        if returning:
            masked = masked[: returning.start()] + "ON CONFLICT DO NOTHING " + masked[returning.start() :]
        else:
            masked = masked.rstrip() + " ON CONFLICT DO NOTHING"
    if re.search(r"\b(rowid|strftime|julianday|datetime|unixepoch|GLOB)\b", masked, re.I):
        raise Untranslatable(f"no PostgreSQL form for: {sql.strip()[:120]}")
    return _unmask(masked, literals)


# ---------------------------------------------------------------------- rows and errors


class Row(tuple):
    """A result row read by position or by column name, as :class:`sqlite3.Row`."""

    __slots__ = ()
    _names: dict[str, int]

    def __getitem__(self, key):  # type: ignore[override]
        if type(key) is str:
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=1024)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"__slots__": (), "_names": {n: i for i, n in enumerate(names)}})


def _row_factory(cursor):
    description = cursor.description
    if description is None:
        return tuple
    cls = _row_class(tuple(d.name for d in description))
    return lambda values: cls(values)


class PgIntegrityError(sqlite3.IntegrityError):
    pass


class PgOperationalError(sqlite3.OperationalError):
    pass


class PgProgrammingError(sqlite3.ProgrammingError):
    pass


def _as_sqlite_error(exc: Exception, statement: str | None = None) -> sqlite3.Error:
    if isinstance(exc, psycopg.errors.IntegrityError):
        cls = PgIntegrityError
    elif isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown | psycopg.errors.QueryCanceled):
        cls = PgOperationalError
    else:
        cls = PgProgrammingError
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if cls is PgProgrammingError and statement:  # a statement the translation got wrong: say which
        text += f" (in: {statement[:300]})"
    err = cls(text)
    err.pg_sqlstate = getattr(exc, "sqlstate", None)  # type: ignore[attr-defined]
    return err


# ---------------------------------------------------------------------- the connection


def name_session(conn) -> None:
    """``application_name`` = ``linerules SCHEMA`` (what ``pg_stat_activity`` shows for the
    runners of a channel), unless the URL named the session itself."""
    if not conn.info.parameter_status("application_name"):
        conn.execute("SELECT set_config('application_name', 'linerules ' || COALESCE(current_schema(), ''), false)")


#: The server's TCP keepalives for the store's sessions: idle seconds, interval, probes.
KEEPALIVES = (("tcp_keepalives_idle", 5), ("tcp_keepalives_interval", 2), ("tcp_keepalives_count", 3))


class Cursor:
    """What :meth:`PgConnection.execute` returns: the rows and ``rowcount``."""

    __slots__ = ("_cur", "rowcount")

    def __init__(self, cur, rowcount: int):
        self._cur = cur
        self.rowcount = rowcount

    def fetchone(self):
        return self._cur.fetchone() if self._rows() else None

    def fetchall(self) -> list:
        return self._cur.fetchall() if self._rows() else []

    def fetchmany(self, size: int) -> list:
        return self._cur.fetchmany(size) if self._rows() else []

    def _rows(self) -> bool:
        return self._cur is not None and self._cur.description is not None

    def __iter__(self) -> Iterator:
        return iter(self.fetchall())


class _Plain:
    __slots__ = ("execute", "executemany", "row_factory")

    def __init__(self, conn: PgConnection):
        self.execute = conn.execute
        self.executemany = conn.executemany
        self.row_factory = None


#: Statements that change nothing: read again in a new session when the last one had ended.
_READS = re.compile(r"^\s*SELECT\b", re.I)
_WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE|WITH\b.*\b(INSERT|UPDATE|DELETE))\b", re.I | re.S)


class PgConnection:
    """A psycopg connection in autocommit mode (transactions are begun and ended by the
    statements the store sends, as with SQLite's ``isolation_level=None``)."""

    def __init__(self, url: str, *, lock_key: str):
        self._url = url
        #: The key of the schema's write lock (``BEGIN IMMEDIATE``).
        self.lock_key = lock_key
        #: How many sessions this connection has had: a new one after the server closed the
        #: last (a restart, a failover, an operator's ``pg_terminate_backend``). Session state
        #: (advisory locks, scratch tables) went with the old one.
        self.generation = 0
        #: Called with this connection once a new session is open (the store takes its locks again).
        self.on_reconnect: Callable[[PgConnection], None] | None = None
        self._conn = self._connect()
        self._lock = threading.RLock()
        #: Rows changed by this connection's INSERT, UPDATE and DELETE since it was opened.
        self.total_changes = 0
        self._wrote = False  # the transaction in progress has written
        self._bumps = 0  # this connection's steps of the schema's change counter

    def _connect(self):
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10, cursor_factory=psycopg.ClientCursor)
            conn.adapters.register_loader("numeric", _NumericLoader)
            # the server notices a runner's machine gone within ~11 s and drops its locks (its
            # claims and its lead go to the others); a killed process's connection closes at once
            for setting, value in KEEPALIVES:
                conn.execute(f"SET {setting} = {value}")
            name_session(conn)
        except psycopg.Error as exc:
            raise _as_sqlite_error(exc) from exc
        conn.row_factory = _row_factory
        return conn

    def _session(self) -> None:
        """A new session when the server closed the last one, between transactions only (a
        transaction in progress died with its session: the store rolls it back and retries)."""
        if not self._conn.closed:
            return
        self._conn = self._connect()
        self.generation += 1
        self._wrote = False
        if self.on_reconnect is not None:
            self.on_reconnect(self)

    @property
    def in_transaction(self) -> bool:
        if self._conn.closed:  # the transaction, if any, ended with the session
            return False
        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Cursor:
        statement = sql.strip().upper()
        if statement == "ROLLBACK" and self._conn.closed:
            self._wrote = False
            return Cursor(None, -1)
        with self._lock:
            self._session()
        if statement == "BEGIN IMMEDIATE":
            return self._begin()
        if statement == "BEGIN DEFERRED":
            return self._begin(lock=False)
        if statement == "COMMIT" and self._wrote:
            self._bump()
        elif statement == "ROLLBACK":
            self._wrote = False
        text = translate(sql)
        args = () if params is None else params
        if type(args) is not dict:
            args = tuple(args)
        with self._lock:
            alone = not self.in_transaction
            try:
                cur = self._conn.execute(text, args)
            except psycopg.Error as exc:
                if not (alone and self._conn.closed and _READS.match(text)):
                    raise _as_sqlite_error(exc, text) from exc
                # the session had ended before this read: read again in a new one
                self._session()
                try:
                    cur = self._conn.execute(text, args)
                except psycopg.Error as exc:
                    raise _as_sqlite_error(exc, text) from exc
        return self._done(cur, text)

    def _done(self, cur, text: str) -> Cursor:
        """The cursor of a statement that ran, its writes counted."""
        if _WRITES.match(text):
            self._written(cur.rowcount)
        return Cursor(cur, cur.rowcount)

    def _written(self, count: int) -> None:
        if count > 0:
            self.total_changes += count
        if self.in_transaction:
            self._wrote = True
        else:  # a write on its own commits at once
            self._bump()

    def _bump(self) -> None:
        """One step of the schema's change counter (``lr_changes``), made before a COMMIT that
        wrote: what :meth:`data_version` reads."""
        with self._lock:
            self._conn.execute("SELECT nextval('lr_changes')")
        self._bumps += 1
        self._wrote = False

    def _begin(self, lock: bool = True) -> Cursor:
        """``BEGIN`` and (``lock``) the schema's write lock; when the session had ended before,
        once more in a new session (nothing of the transaction has been done yet)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._conn.execute("BEGIN")
                    if lock:
                        self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.lock_key,))
                    break
                except psycopg.Error as exc:
                    if self._conn.closed and attempt == 1:
                        self._session()
                        continue
                    if self.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise _as_sqlite_error(exc) from exc
        return Cursor(self._conn.cursor(), -1)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any] | dict[str, Any]]) -> Cursor:
        text = translate(sql)
        rows = [r if type(r) is dict else tuple(r) for r in rows]
        with self._lock:
            self._session()
            cur = self._conn.cursor()
            try:
                cur.executemany(text, rows)
            except psycopg.Error as exc:
                raise _as_sqlite_error(exc, text) from exc
        return self._done(cur, text)

    def cursor(self) -> _Plain:
        """A cursor whose ``row_factory`` may be set to None (rows are tuples here anyway)."""
        return _Plain(self)

    def data_version(self) -> int:
        """A number that stays the same while no other connection writes to the schema, as
        SQLite's ``PRAGMA data_version``: the schema's change counter, which every write
        transaction steps once before its COMMIT, less this connection's own steps."""
        with self._lock:
            row = self._conn.execute("SELECT last_value FROM lr_changes").fetchone()
        return row[0] - self._bumps

    def raw(self):
        """The psycopg connection (schema set-up and checks only)."""
        return self._conn

    def close(self) -> None:
        self._conn.close()


class _NumericLoader(NumericLoader):
    """``numeric`` (``SUM`` of integers, ``AVG``) as int when whole, else float, as SQLite gives."""

    def load(self, data):
        value = super().load(data)
        if value == value.to_integral_value():
            return int(value)
        return float(value)
