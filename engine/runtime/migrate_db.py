"""``linerules migrate-db SQLITE_FILE postgresql://...``: copy a linerules SQLite database into
PostgreSQL, so a shop can move without losing friends in flight.

What it does, in order:

1. checks the SQLite file is a linerules database no runner is using (its lease has expired),
   brings it to this version's schema (as any linerules command does when it opens it) and
   reads it inside one read transaction (one consistent snapshot);
2. creates (or brings up to date) the same schema in PostgreSQL (:mod:`engine.runtime.pgschema`),
   in the schema the URL's search_path names;
3. copies every table in primary-key order, in batches: each batch goes by ``COPY`` into a
   temporary table, then into the real one with ``ON CONFLICT (key) DO NOTHING``, and commits.
   So it is resumable: run it again after an interruption and it copies what is missing,
   nothing twice. Rows already there are compared with SQLite's, and rows whose key SQLite no
   longer has are counted: both fail the run (the SQLite file changed since an earlier copy),
   and ``--refresh`` updates or deletes them instead;
4. moves each identity (``events.seq``, ``enrollments.id``, ``outbox.id``, ...) past the copied
   ids (and past SQLite's AUTOINCREMENT high-water mark), so new rows never reuse an id;
5. counts the rows of every table on both sides and prints them; exit 1 unless PostgreSQL holds
   exactly SQLite's rows.

A target that already holds rows of another database is refused: the copy goes into an empty
schema (or one that an earlier run of the same copy filled).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from . import pgschema
from .store import MIGRATIONS, Store, StoreError, database_version

#: Rows per COPY batch (one PostgreSQL transaction each).
BATCH = 5000

#: The key in the target's ``meta`` that records which SQLite file it was copied from.
SOURCE_KEY = "migrate_db.source"

#: ``meta`` keys that belong to one database and are not copied.
_OWN_META = ("schema_version", SOURCE_KEY)


class MigrateError(Exception):
    """The copy cannot be done; the text says why and what to do (one line, no traceback)."""


@dataclass
class TableResult:
    table: str
    sqlite: int
    postgres: int
    new: int
    differing: int = 0  # rows that differ from SQLite's (refreshing: that were updated)
    extra: int = 0  # rows SQLite does not have (refreshing: that were deleted)
    refreshed: bool = False

    @property
    def ok(self) -> bool:
        """PostgreSQL now holds exactly SQLite's rows."""
        return self.sqlite == self.postgres and (self.refreshed or not (self.differing or self.extra))


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the PostgreSQL URL"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def is_postgres_url(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://"))


# ---------------------------------------------------------------------- the SQLite side


def open_source(path: str, *, now: int | None = None, say: Callable[[str], None] = print) -> sqlite3.Connection:
    """A read-only connection to the linerules SQLite database at ``path`` (migrated to this
    version's schema first); raises :class:`MigrateError` for anything that is not one, or
    that a runner still uses."""
    try:
        version = database_version(path)  # the one test every command uses
    except StoreError as exc:
        raise MigrateError(str(exc)) from None
    if version is None:
        raise MigrateError(f"{path}: no such file (give the runner's SQLite database, e.g. linerules.db)")
    conn = _read_only(path)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version > len(MIGRATIONS):
            raise MigrateError(
                f"{path} was written by a newer linerules (schema {version}, this one knows "
                f"{len(MIGRATIONS)}): upgrade linerules first"
            )
        lease = (
            conn.execute("SELECT owner, expires_at FROM lease WHERE name = 'runner'").fetchone()
            if "lease" in names
            else None
        )
        wall = int(time.time()) if now is None else now
        if lease is not None and lease[1] > wall:
            raise MigrateError(
                f"a runner is using {path} (its lease runs for another {lease[1] - wall} s): "
                "stop the runner, then run migrate-db again"
            )
    except BaseException:
        conn.close()
        raise
    if version < len(MIGRATIONS):
        conn.close()
        try:
            Store(path).close()
        except StoreError as exc:
            raise MigrateError(str(exc)) from None
        say(f"{path}: brought up to date first (schema {version} -> {len(MIGRATIONS)})")
        conn = _read_only(path)
    return conn


def _read_only(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def source_tables(conn: sqlite3.Connection) -> list[str]:
    """The linerules tables of the SQLite database, in creation order."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
        )
    ]


def _columns_and_key(conn: sqlite3.Connection, table: str) -> tuple[list[str], list[str]]:
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    columns = [r[1] for r in info]
    key = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    if not key:
        raise MigrateError(
            f"table {table} has no primary key: it cannot be copied without doubling rows on a second run"
        )
    return columns, key


def _meta_filter(table: str) -> str:
    return " AND key NOT IN ('schema_version', 'migrate_db.source')" if table == "meta" else ""


def _sqlite_count(conn: sqlite3.Connection, table: str) -> int:
    where = "WHERE 1 = 1" + _meta_filter(table)
    return conn.execute(f'SELECT COUNT(*) FROM "{table}" {where}').fetchone()[0]


def _autoincrement_marks(conn: sqlite3.Connection) -> dict[str, int]:
    """SQLite's AUTOINCREMENT high-water marks (ids never to be used again), by table."""
    try:
        return {name: int(seq) for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence")}
    except sqlite3.OperationalError:
        return {}


# ---------------------------------------------------------------------- the PostgreSQL side


def connect(url: str):
    """A psycopg connection to ``url``, or a :class:`MigrateError` saying what is wrong."""
    try:
        import psycopg
    except ImportError:
        raise MigrateError("PostgreSQL support is not installed: pip install 'linerules[postgres]'") from None
    try:
        return psycopg.connect(url, connect_timeout=15, autocommit=True)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        raise MigrateError(f"cannot connect to {redact(url)}: {reason}") from None


def _pg_count(pg, table: str) -> int:
    from psycopg import sql

    query = sql.SQL("SELECT COUNT(*) FROM {} WHERE 1 = 1" + _meta_filter(table)).format(sql.Identifier(table))
    return pg.execute(query).fetchone()[0]


def _check_target(pg, tables: list[str], source: str) -> None:
    """Refuse a target holding rows that did not come from this SQLite file."""
    marker = pg.execute("SELECT value FROM meta WHERE key = %s", (SOURCE_KEY,)).fetchone()
    if marker is not None:
        if marker[0] != source:
            raise MigrateError(
                f"the PostgreSQL schema was filled from another database ({marker[0]}): "
                "copy into an empty schema (e.g. ?options=-csearch_path%3Dnew_schema)"
            )
        return
    busy = [t for t in tables if _pg_count(pg, t)]
    if busy:
        raise MigrateError(
            f"the PostgreSQL schema already holds data (tables {', '.join(busy)}): copy into "
            "an empty schema (e.g. ?options=-csearch_path%3Dnew_schema)"
        )


def _psycopg_error(exc: BaseException) -> str | None:
    import psycopg

    return " ".join(str(exc).split()) if isinstance(exc, psycopg.Error) else None


def _copy_table(src: sqlite3.Connection, pg, table: str, batch: int, refresh: bool) -> tuple[int, int, int]:
    """Copy one table in primary-key order and batches: a key PostgreSQL does not have yet is
    inserted; an existing row is compared, and one that differs from SQLite's is counted (with
    ``refresh``: updated); rows whose key SQLite no longer has are counted (with ``refresh``:
    deleted). Returns (new, differing, extra) — with ``refresh`` the last two were put right."""
    from psycopg import sql

    columns, key = _columns_and_key(src, table)
    target_columns = [
        r[0]
        for r in pg.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s ORDER BY ordinal_position",
            (table,),
        )
    ]
    if target_columns != columns:
        raise MigrateError(
            f"table {table} differs in PostgreSQL (columns {target_columns}, in SQLite "
            f"{columns}): copy into an empty schema"
        )
    t, stage, keys = sql.Identifier(table), sql.Identifier(f"lr_copy_{table}"), sql.Identifier(f"lr_keys_{table}")
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    key_sql = sql.SQL(", ").join(map(sql.Identifier, key))
    rest = [c for c in columns if c not in key]
    select_cols = ", ".join(f'"{c}"' for c in columns)
    key_cols = ", ".join(f'"{c}"' for c in key)
    meta_only = (
        sql.SQL(" AND t.key NOT IN ('schema_version', {})").format(sql.Literal(SOURCE_KEY))
        if table == "meta"
        else sql.SQL("")
    )
    # 1. the keys of SQLite, and away with the rows of keys it no longer has
    try:
        with pg.transaction():
            pg.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(stage, t))
            pg.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA").format(keys, key_sql, t)
            )
            pg.execute(sql.SQL("TRUNCATE {}").format(keys))
            with pg.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(keys, key_sql)) as cp:
                for row in src.execute(f'SELECT {key_cols} FROM "{table}" WHERE 1 = 1{_meta_filter(table)}'):
                    cp.write_row(row)
            match = sql.SQL(" AND ").join(sql.SQL("k.{0} = t.{0}").format(sql.Identifier(c)) for c in key)
            verb = sql.SQL("DELETE FROM {} t" if refresh else "SELECT COUNT(*) FROM {} t").format(t)
            cur = pg.execute(
                sql.SQL("{} WHERE NOT EXISTS (SELECT 1 FROM {} k WHERE {}){}").format(verb, keys, match, meta_only)
            )
            extra = cur.rowcount if refresh else cur.fetchone()[0]
    except Exception as exc:
        reason = _psycopg_error(exc)
        if reason is None:
            raise
        raise MigrateError(f"table {table}: its keys could not be compared ({reason})") from None
    # 2. every row, by COPY into a scratch table, then inserted (or, refreshing, updated where it
    # differs); without refresh the rows that differ are counted
    differs = None
    if rest:
        mine = sql.SQL(", ").join(sql.SQL("{}.{}").format(t, sql.Identifier(c)) for c in rest)
        theirs = sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c)) for c in rest)
        assign = sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in rest)
        action = sql.SQL("DO UPDATE SET {} WHERE ROW({}) IS DISTINCT FROM ROW({})").format(assign, mine, theirs)
        on_key = sql.SQL(" AND ").join(sql.SQL("s.{0} = t.{0}").format(sql.Identifier(c)) for c in key)
        differs = sql.SQL("SELECT COUNT(*) FROM {} s JOIN {} t ON {} WHERE ROW({}) IS DISTINCT FROM ROW({})").format(
            stage,
            t,
            on_key,
            sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in rest),
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in rest),
        )
    if not refresh or not rest:
        action = sql.SQL("DO NOTHING")
    upsert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {} RETURNING (xmax = 0)").format(
        t, cols, cols, stage, key_sql, action
    )
    placeholders = ", ".join("?" for _ in key)
    key_at = [columns.index(c) for c in key]
    new = differing = 0
    last = None
    while True:
        after = f"AND ({key_cols}) > ({placeholders})" if last is not None else ""
        rows = src.execute(
            f'SELECT {select_cols} FROM "{table}" WHERE 1 = 1{_meta_filter(table)} {after} '
            f"ORDER BY {key_cols} LIMIT {int(batch)}",
            last or (),
        ).fetchall()
        if not rows:
            return new, differing, extra
        try:
            with pg.transaction():
                with pg.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, cols)) as cp:
                    for row in rows:
                        cp.write_row(row)
                if differs is not None and not refresh:
                    differing += pg.execute(differs).fetchone()[0]
                inserted = [r[0] for r in pg.execute(upsert).fetchall()]
        except Exception as exc:
            reason = _psycopg_error(exc)
            if reason is None:
                raise
            raise MigrateError(
                f"table {table}: rows after {key} = {last} could not be copied ({reason}); "
                "what was copied before stays, run migrate-db again once fixed"
            ) from None
        new += sum(inserted)
        if refresh:
            differing += len(inserted) - sum(inserted)
        last = tuple(rows[-1][i] for i in key_at)


def _move_identities(src: sqlite3.Connection, pg, tables: list[str]) -> None:
    """Every identity column's sequence past the largest copied id (and SQLite's AUTOINCREMENT
    high-water mark), never backwards."""
    from psycopg import sql

    marks = _autoincrement_marks(src)
    rows = pg.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    with pg.transaction():
        for table, column in rows:
            if table not in tables:
                continue
            sequence = pg.execute("SELECT pg_get_serial_sequence(%s, %s)", (table, column)).fetchone()[0]
            top = pg.execute(
                sql.SQL("SELECT COALESCE(MAX({}), 0) FROM {}").format(sql.Identifier(column), sql.Identifier(table))
            ).fetchone()[0]
            last, called = pg.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(sequence))
            ).fetchone()
            target = max(top, marks.get(table, 0), last if called else 0)
            if target > 0:
                pg.execute("SELECT setval(%s, %s, true)", (sequence, target))


# ---------------------------------------------------------------------- the whole copy


def migrate_db(
    sqlite_path: str, url: str, *, batch: int = BATCH, refresh: bool = False, say: Callable[[str], None] = print
) -> list[TableResult]:
    """Copy ``sqlite_path`` into the PostgreSQL database (and schema) of ``url``; returns the
    per-table counts. ``refresh``: also update rows that differ and delete rows SQLite does not
    have (an earlier copy of a file that changed since). Raises :class:`MigrateError` when the
    copy cannot be done."""
    if not is_postgres_url(url):
        raise MigrateError(f"{url!r} is not a PostgreSQL URL: give postgresql://USER@HOST:PORT/DATABASE")
    src = open_source(sqlite_path, say=say)
    pg = connect(url)
    import psycopg

    try:
        try:
            version = pgschema.migrate(pg)
        except (psycopg.Error, RuntimeError) as exc:
            raise MigrateError(f"cannot create the schema in {redact(url)}: {' '.join(str(exc).split())}") from None
        schema = pg.execute("SELECT current_schema()").fetchone()[0]
        say(f"PostgreSQL {redact(url)}, schema {schema} (linerules schema {version})")
        src.execute("BEGIN")  # one snapshot for the copy and the counts
        tables = source_tables(src)
        source = os.path.realpath(sqlite_path)
        _check_target(pg, tables, source)
        with pg.transaction():
            pg.execute(
                "INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (SOURCE_KEY, source)
            )
        done = {}
        for table in tables:
            started = time.monotonic()
            done[table] = new, differing, extra = _copy_table(src, pg, table, batch, refresh)
            what = (
                f"{differing:,} updated, {extra:,} deleted"
                if refresh
                else f"{differing:,} differ, {extra:,} only in PostgreSQL"
            )
            say(f"  {table}: {new:,} new rows, {what} ({time.monotonic() - started:.1f} s)")
        _move_identities(src, pg, tables)
        pg.execute("ANALYZE")  # the planner's statistics of the copied tables, before a runner's first tick
        results = [TableResult(t, _sqlite_count(src, t), _pg_count(pg, t), *done[t], refreshed=refresh) for t in tables]
        src.execute("COMMIT")
        return results
    finally:
        pg.close()
        src.close()


def report(results: list[TableResult]) -> str:
    """The verification table: rows per table on both sides, and what this run did."""
    refreshed = any(r.refreshed for r in results)
    width = max([len(r.table) for r in results] + [5])
    second, third = ("updated", "deleted") if refreshed else ("differ", "extra")
    lines = [f"{'table':<{width}}  {'SQLite':>10}  {'PostgreSQL':>10}  {'new':>9}  {second:>9}  {third:>9}"]
    for r in results:
        mark = "" if r.ok else "  <- differs"
        lines.append(
            f"{r.table:<{width}}  {r.sqlite:>10,}  {r.postgres:>10,}  {r.new:>9,}  {r.differing:>9,}  "
            f"{r.extra:>9,}{mark}"
        )
    bad = [r for r in results if not r.ok]
    total = sum(r.sqlite for r in results)
    if not bad:
        lines.append(f"verified: all {len(results)} tables hold the same rows ({total:,} rows)")
        return "\n".join(lines)
    counts = [r for r in bad if r.sqlite != r.postgres]
    if counts:
        lines.append(
            f"{len(counts)} of {len(results)} tables differ: "
            + ", ".join(f"{r.table} ({r.sqlite:,} in SQLite, {r.postgres:,} in PostgreSQL)" for r in counts)
        )
    if not refreshed and any(r.differing or r.extra for r in bad):
        differing, extra = sum(r.differing for r in bad), sum(r.extra for r in bad)
        lines.append(
            f"{differing:,} rows differ from SQLite's and {extra:,} rows are only in PostgreSQL "
            f"(tables {', '.join(r.table for r in bad if r.differing or r.extra)}): the SQLite file "
            "changed since the last copy, or PostgreSQL was written to. Copy into a new, empty "
            "schema, or run again with --refresh to make PostgreSQL equal to SQLite (it updates "
            "those rows and deletes the extra ones)"
        )
    return "\n".join(lines)


def main(sqlite_path: str, url: str, batch: int = BATCH, refresh: bool = False) -> int:
    """The command: copy, print the verification; 0 when PostgreSQL holds SQLite's rows, else 1."""
    try:
        results = migrate_db(sqlite_path, url, batch=batch, refresh=refresh)
    except MigrateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(results))
    return 0 if all(r.ok for r in results) else 1
