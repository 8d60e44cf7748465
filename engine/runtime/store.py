"""Friend state, enrollments and the outbox in one SQLite file.

One small class, one method per operation, each with its contract. All SQL of the engine lives
here (conditions are compiled by :mod:`engine.runtime.sqlcond`). Times are integer UTC epoch seconds.

Concurrency: WAL, a busy timeout, and explicit ``BEGIN IMMEDIATE`` transactions
(:meth:`Store.transaction`, re-entrant). One runner per database is enforced by a lease.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import json.scanner
import logging
import operator
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_text  # one JSON string, as ``_json`` writes it
from pathlib import Path
from typing import Any, NamedTuple

from engine.i18n import N_, _
from engine.language.variables import friend_vars, friend_vars_of
from engine.line.limits import MAX_MULTICAST, payload_json

from .events import Event

#: Seconds a send may go out after it was decided with its deliveries keeping the decision's
#: time (:meth:`Store.finish_outbox`).
SEND_TIME_SLACK = 60

log = logging.getLogger("linerules.store")

#: Open enrollment states: ``active`` runs its next step at ``due_at``; ``waiting`` sits on a
#: wait step and continues after it at ``due_at`` (or earlier, on a ``wait for`` event).
OPEN = ("active", "waiting")

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE friends (
      id TEXT PRIMARY KEY,
      followed_at INTEGER, blocked_at INTEGER, seen_at INTEGER,
      source TEXT, display_name TEXT, language TEXT,
      attributes TEXT NOT NULL DEFAULT '{}',
      orders INTEGER NOT NULL DEFAULT 0, total_spent REAL NOT NULL DEFAULT 0,
      last_purchase_at INTEGER, created_at INTEGER NOT NULL);
    CREATE TABLE tags (friend TEXT NOT NULL, tag TEXT NOT NULL, added_at INTEGER NOT NULL,
      PRIMARY KEY (friend, tag)) WITHOUT ROWID;
    CREATE INDEX tags_tag ON tags(tag);
    CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, dedupe_key TEXT UNIQUE,
      type TEXT NOT NULL, friend TEXT NOT NULL, at INTEGER NOT NULL, data TEXT NOT NULL,
      reply_token TEXT, received_at INTEGER NOT NULL, processed_at INTEGER);
    CREATE INDEX events_pending ON events(at, seq) WHERE processed_at IS NULL;
    CREATE INDEX events_friend ON events(friend, at);
    CREATE TABLE activity (id INTEGER PRIMARY KEY, friend TEXT NOT NULL, kind TEXT NOT NULL,
      product TEXT, category TEXT, amount REAL, rule TEXT, message TEXT, url TEXT,
      at INTEGER NOT NULL);
    CREATE INDEX activity_friend ON activity(friend, kind, at);
    CREATE INDEX activity_kind ON activity(kind, at);
    CREATE TABLE enrollments (id INTEGER PRIMARY KEY, friend TEXT NOT NULL, rule TEXT NOT NULL,
      rule_version TEXT NOT NULL, step_id TEXT, due_at INTEGER, state TEXT NOT NULL,
      variant TEXT, holdout INTEGER NOT NULL DEFAULT 0, entered_at INTEGER NOT NULL,
      finished_at INTEGER, exit_reason TEXT, occurrence TEXT, cause_seq INTEGER,
      reply_token TEXT, reply_deadline INTEGER);
    CREATE INDEX enrollments_due ON enrollments(due_at) WHERE state IN ('active', 'waiting');
    CREATE INDEX enrollments_friend ON enrollments(friend, rule);
    CREATE INDEX enrollments_rule ON enrollments(rule, rule_version, step_id)
      WHERE state IN ('active', 'waiting');
    CREATE UNIQUE INDEX enrollments_occurrence ON enrollments(rule, occurrence, friend)
      WHERE occurrence IS NOT NULL;
    CREATE TABLE outbox (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, recipients TEXT NOT NULL,
      payload TEXT NOT NULL, messages TEXT NOT NULL, rule TEXT, retry_key TEXT NOT NULL UNIQUE,
      reply_token TEXT, reply_deadline INTEGER, not_before INTEGER NOT NULL,
      status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, request_id TEXT,
      last_error TEXT, created_at INTEGER NOT NULL, claimed_at INTEGER, sent_at INTEGER);
    CREATE INDEX outbox_due ON outbox(not_before, id) WHERE status IN ('pending', 'held');
    CREATE TABLE deliveries (id INTEGER PRIMARY KEY, friend TEXT NOT NULL, rule TEXT NOT NULL,
      step_id TEXT, enrollment INTEGER, outbox_id INTEGER, messages TEXT NOT NULL,
      status TEXT NOT NULL, reason TEXT, variant TEXT, at INTEGER NOT NULL,
      local_day TEXT NOT NULL, counts_for_cap INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX deliveries_cap ON deliveries(friend, local_day) WHERE counts_for_cap = 1;
    CREATE INDEX deliveries_outbox ON deliveries(outbox_id);
    CREATE INDEX deliveries_rule ON deliveries(rule, at);
    CREATE TABLE rule_versions (rule TEXT NOT NULL, version TEXT NOT NULL, steps TEXT NOT NULL,
      compiled_at INTEGER NOT NULL, PRIMARY KEY (rule, version));
    CREATE TABLE links (token TEXT PRIMARY KEY, friend TEXT, rule TEXT, message TEXT,
      url TEXT NOT NULL, created_at INTEGER NOT NULL);
    CREATE TABLE lease (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at INTEGER NOT NULL);
    """,
    # 2: replies are claimed ahead of any push backlog (their token lives about a minute)
    """
    CREATE INDEX outbox_replies ON outbox(not_before, id)
      WHERE kind = 'reply' AND status IN ('pending', 'held');
    """,
    # 3: whether a request for the row was actually sent and its outcome is unknown (timeout,
    # lost answer, 5xx): only such a row must go out again byte-identical with its retry key;
    # a row never sent (or refused for sure, e.g. 429) may still be decided anew.
    """
    ALTER TABLE outbox ADD COLUMN ambiguous INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: an event whose processing failed for its friend is set aside with the reason (its
    # processed_at is set too, so it is not retried tick after tick); the others go on
    """
    ALTER TABLE events ADD COLUMN error TEXT;
    CREATE INDEX events_failed ON events(seq) WHERE error IS NOT NULL;
    """,
    # 5: the shop side (engine/runtime/identity.py): customer <-> friend links, every order by its id
    # (kept for a customer not linked yet, counted for the linked friend), account-link nonces;
    # activity rows of an order carry its id so a refund or a link change can redo them
    """
    CREATE TABLE customer_links (customer TEXT PRIMARY KEY, friend TEXT NOT NULL UNIQUE,
      via TEXT NOT NULL, linked_at INTEGER NOT NULL);
    CREATE TABLE link_history (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, friend TEXT NOT NULL,
      action TEXT NOT NULL, via TEXT NOT NULL, at INTEGER NOT NULL);
    CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer TEXT, friend TEXT,
      direct INTEGER NOT NULL DEFAULT 0, at INTEGER, amount REAL, refunded REAL NOT NULL DEFAULT 0,
      cancelled INTEGER NOT NULL DEFAULT 0, items TEXT NOT NULL DEFAULT '[]', source TEXT NOT NULL,
      external_id TEXT, created_at INTEGER NOT NULL);
    CREATE INDEX orders_external ON orders(external_id) WHERE external_id IS NOT NULL;
    CREATE INDEX orders_customer ON orders(customer) WHERE customer IS NOT NULL;
    CREATE INDEX orders_friend ON orders(friend) WHERE friend IS NOT NULL;
    CREATE TABLE link_nonces (nonce TEXT PRIMARY KEY, customer TEXT NOT NULL,
      created_at INTEGER NOT NULL, used_at INTEGER);
    ALTER TABLE activity ADD COLUMN order_id TEXT;
    CREATE INDEX activity_order ON activity(order_id) WHERE order_id IS NOT NULL;
    CREATE INDEX events_kept ON events(json_extract(data, '$.customer')) WHERE friend = ''
    """,
    # 6: fencing and suspended enrollments. Every change of lease owner gets a new ``epoch``;
    # a claimed outbox row records the epoch it was claimed under, and only that runner may
    # store its outcome. An enrollment whose rule disappeared in a reload is ``suspended``
    # (``suspended_at``, and the state it had in ``suspended_state``) until the rule comes
    # back or the grace ends.
    """
    ALTER TABLE lease ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN claim_epoch INTEGER;
    ALTER TABLE enrollments ADD COLUMN suspended_at INTEGER;
    ALTER TABLE enrollments ADD COLUMN suspended_state TEXT;
    CREATE INDEX enrollments_suspended ON enrollments(rule, suspended_at) WHERE state = 'suspended';
    """,
    # 7: sends are decided when they go out: steps write intents, the tick's deliver stage turns
    # the due ones into outbox rows (read per friend at one due time: (due_at, friend)); the
    # event that entered (entry_seq) or last entered or resumed (event_seq) an enrollment, and
    # the event each activity row came from
    """
    CREATE TABLE intents (id INTEGER PRIMARY KEY, enrollment INTEGER NOT NULL, friend TEXT NOT NULL,
      rule TEXT NOT NULL, steps TEXT NOT NULL, messages TEXT NOT NULL, due_at INTEGER NOT NULL,
      queued_at INTEGER NOT NULL, variant TEXT, holdout INTEGER NOT NULL DEFAULT 0, occurrence TEXT,
      event_seq INTEGER, answer INTEGER NOT NULL DEFAULT 0, reply_token TEXT, reply_deadline INTEGER);
    CREATE INDEX intents_due ON intents(due_at, friend);
    ALTER TABLE enrollments ADD COLUMN entry_seq INTEGER;
    ALTER TABLE enrollments ADD COLUMN event_seq INTEGER;
    ALTER TABLE activity ADD COLUMN event_seq INTEGER;
    """,
    # 8: an audience entered set-based carries its first sends on the enrollment itself
    # (``send_due``: when they are to be decided) instead of one intent row per friend;
    # ``audience_sends`` names their steps and messages once per rule and occurrence, with the
    # earliest ``due_at`` of the sends still waiting and how many wait (``pending``). The deliver
    # stage decides them with the intents due at the same moment, by the same procedure, reading
    # them by (rule, occurrence, friend) through enrollments_occurrence
    """
    ALTER TABLE enrollments ADD COLUMN send_due INTEGER;
    CREATE TABLE audience_sends (rule TEXT NOT NULL, occurrence TEXT NOT NULL, steps TEXT NOT NULL,
      messages TEXT NOT NULL, due_at INTEGER, pending INTEGER NOT NULL DEFAULT 0,
      PRIMARY KEY (rule, occurrence)) WITHOUT ROWID;
    """,
    # 9: the LINE rate limits the runners of one channel share on PostgreSQL
    # (engine/line/sharedrate.py): per endpoint, the moment (the database's clock, epoch seconds)
    # up to which the channel's requests are handed out; not used on SQLite
    """
    CREATE TABLE rate_schedule (endpoint TEXT PRIMARY KEY, tat REAL NOT NULL DEFAULT 0);
    """,
    # 10: condition triggers checked by what changed (engine/stages/conditions.py): every write
    # that can change a condition's value for a friend (their row, activity, tags) appends the
    # friend to ``friend_changes`` in its transaction; ``condition_state`` records, per rule (and
    # per ranked measure, ``measure:…``), the change and the moment its last check covered, the
    # SQL it checked and the ranking thresholds it used; ``measure_values`` keeps each current
    # friend's non-zero value of every measure a ``top N% by`` ranks; the indexes find whom a
    # moment crossing ``friend for`` or ``reenter after`` can change (and count the current
    # friends: conditions over every friend keep reading the table in order, see
    # engine/runtime/sqlcond.py CURRENT)
    """
    CREATE TABLE friend_changes (n INTEGER PRIMARY KEY, friend TEXT NOT NULL);
    CREATE TABLE condition_state (rule TEXT PRIMARY KEY, checked TEXT NOT NULL, seen INTEGER NOT NULL,
      at INTEGER NOT NULL, tops TEXT NOT NULL DEFAULT '{}');
    CREATE TABLE measure_values (measure TEXT NOT NULL, friend TEXT NOT NULL, value REAL NOT NULL,
      PRIMARY KEY (measure, friend)) WITHOUT ROWID;
    CREATE INDEX measure_values_rank ON measure_values(measure, value);
    CREATE INDEX friends_followed ON friends(followed_at, blocked_at);
    CREATE INDEX enrollments_finished ON enrollments(rule, finished_at) WHERE finished_at IS NOT NULL;
    """,
    # 11: the daily cap's index by day first: a day's sends go in at its end, not each beside
    # its friend's earlier days (with a month of history, that wrote nearly every page of it
    # for one send to everyone); the cap's look-up (one friend, one day) is the same
    """
    DROP INDEX deliveries_cap;
    CREATE INDEX deliveries_cap ON deliveries(local_day, friend) WHERE counts_for_cap = 1;
    """,
    # 12: the tick at which the friend's last block was applied, kept when they follow again: a
    # send queued before it is not sent, even to a friend who is back by the time it is due
    # (SPEC §4: a friend who blocked meanwhile gets nothing); taken from the unfollow events
    # already processed
    """
    ALTER TABLE friends ADD COLUMN unfollow_tick INTEGER;
    UPDATE friends SET unfollow_tick = (SELECT MAX(e.processed_at) FROM events e WHERE e.friend = friends.id
      AND e.type = 'unfollow') WHERE id IN (SELECT friend FROM events WHERE type = 'unfollow');
    """,
)


class LeaseLost(Exception):
    """This runner no longer holds the lease (another runner took over): it must stop."""


#: Friends entered per write transaction by :meth:`Store.enroll_audience` (keeps the write lock
#: short at a million friends, so that webhooks are stored without waiting).
AUDIENCE_CHUNK = 5000

#: A row the dispatcher holds for at least this many seconds (the monthly quota: until the next
#: day's opening) without having reached LINE goes back to the deliver stage, to be decided again
#: when it is due; retry backoffs (at most 5 minutes) keep their row.
HANDBACK_AFTER = 3600

#: Longest a yielding connection lets other writers of the process go first, seconds.
TURN_WAIT = 1.0


class WalkRow(NamedTuple):
    """An open enrollment as a walk reads it (:meth:`Store.due_enrollments`)."""

    id: int
    friend: str
    rule: str
    step_id: str | None
    due_at: int
    state: str
    variant: str | None
    holdout: int
    entered_at: int
    occurrence: str | None
    cause_seq: int | None
    reply_token: str | None
    reply_deadline: int | None
    event_seq: int | None


#: The enrollment columns a walk reads, in :class:`WalkRow` order.
WALK_COLUMNS = WalkRow._fields


class Intent(NamedTuple):
    """A send queued by a walk, to be decided when it is due (:meth:`Store.add_intents`);
    ``steps`` and ``messages`` are JSON text."""

    enrollment: int
    friend: str
    rule: str
    steps: str
    messages: str
    due_at: int
    queued_at: int
    variant: str | None
    holdout: int
    occurrence: str | None
    event_seq: int | None
    answer: int
    reply_token: str | None
    reply_deadline: int | None


#: The intent columns, in :class:`Intent` order.
INTENT_COLUMNS = Intent._fields


class Move(NamedTuple):
    """Where a walk leaves an enrollment (:meth:`Store.update_enrollments`)."""

    state: str
    step_id: str | None
    due_at: int | None
    finished_at: int | None
    exit_reason: str | None
    id: int


class OutboxRow(NamedTuple):
    """One send before it is attempted (:meth:`Store.add_outbox_rows`)."""

    kind: str
    recipients: Sequence[str]
    payload: Any
    messages: Sequence[str]
    rule: str | None
    not_before: int
    reply_token: str | None = None
    reply_deadline: int | None = None


class Encoded:
    """Message objects known by their JSON text: ``json`` is exactly what the store would write
    for the list (compact, keys sorted, not ASCII-escaped), so a payload rendered once is not
    encoded again (:meth:`Store.add_outbox_rows`); :attr:`objects` are the objects themselves,
    made when first asked for (``objects`` may be given as what makes them)."""

    __slots__ = ("json", "_objects")

    def __init__(self, json: str, objects: Sequence[Any] | Callable[[], list]):
        self.json = json
        self._objects = objects

    @property
    def objects(self) -> list:
        if callable(self._objects):
            self._objects = self._objects()
        return self._objects


class Delivery(NamedTuple):
    """One friend's record of one decided send (:meth:`Store.add_deliveries`). ``outbox`` is
    the outbox row's id, or its place in the list given with it."""

    friend: str
    rule: str
    step_id: str | None
    enrollment: int | None
    outbox: int | None
    messages: Sequence[str]
    status: str
    reason: str | None
    variant: str | None
    at: int
    local_day: str
    counts_for_cap: int


class DueChunk(NamedTuple):
    """What :meth:`Store.load_due` loaded: the last friend (None: nothing was due), whether
    more due sends may follow after that friend, and what the chunk holds, so that the
    statements with nothing to do are not run: intent rows, an audience's carried sends,
    friends with more than one send (counted only under the cap)."""

    last: str | None
    more: bool
    intents: bool = True
    carried: bool = True
    dups: bool = True
    #: (rule, occurrence) of the audiences whose sends were due (empty: not known)
    plans: tuple[tuple[str, str], ...] = ()


#: A chunk that may hold anything (every statement of :meth:`Store.due_finish` runs).
ANY_DUE = DueChunk(None, False)


class DueSend(NamedTuple):
    """An undecided due send rendered for its friend (:meth:`Store.due_rows`), with its group's
    rule, steps, messages and occurrence, and ``friend``: the friend as templates see it
    (:func:`~engine.language.variables.friend_vars` of the friend :meth:`Store.friend` gives,
    of ``{"id": ...}`` alone for a friend without a row), made once per friend."""

    enrollment: int | None
    friend_id: str
    rule: str
    steps: str
    messages: str
    occurrence: str | None
    variant: str | None
    event_seq: int | None
    kind: str | None
    answer: int
    counts: int
    reply_token: str | None
    reply_deadline: int | None
    due: int  # its row in ``temp.lr_due``
    friend: dict  # as templates see it: engine.language.variables.friend_vars


class LinkRow(NamedTuple):
    """One click-tracking link sent to one friend (:meth:`Store.add_links`)."""

    token: str
    friend: str | None
    rule: str | None
    message: str | None
    url: str
    created_at: int


class DueChange(NamedTuple):
    """A due send whose steps' conditions failed in part (:meth:`Store.due_update`): the steps
    and messages left (JSON text), or a status and reason when none is left."""

    steps: str
    messages: str
    status: str | None
    reason: str | None
    id: int


_FRIEND_COLUMNS = (
    "id",
    "followed_at",
    "blocked_at",
    "seen_at",
    "source",
    "display_name",
    "language",
    "attributes",
    "orders",
    "total_spent",
    "last_purchase_at",
    "created_at",
)


#: Seconds a client is asked to wait (``Retry-After``) while the database cannot be written.
RETRY_AFTER = 30
#: Free bytes on the database's disk below which it counts as full: writes that failed for a
#: full disk are not reported as working again until there is at least this much room.
MIN_FREE_BYTES = 1024 * 1024
#: Prepared statements a connection keeps (the sqlite3 module's default is 128). A tick's
#: stages, condition ticks, audiences and reloads use about 240 different statements in a
#: simulation; with the default, the ones evicted were compiled again at their next use (0.5%
#: of a simulation's instructions). Only statements in use are kept, a few KB each.
STATEMENT_CACHE = 1024
#: How every connection to an SQLite file is opened: transactions begun by the store, shared
#: by the runner's threads under its lock, a 30 s wait for another writer.
_CONNECT = {"isolation_level": None, "check_same_thread": False, "timeout": 30, "cached_statements": STATEMENT_CACHE}

#: SQLite primary result codes that mean the database itself fails, not one item's data.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_NOMEM, _SQLITE_READONLY = 5, 6, 7, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
_FAULT_CODES = {
    _SQLITE_BUSY,
    _SQLITE_LOCKED,
    _SQLITE_NOMEM,
    _SQLITE_READONLY,
    _SQLITE_IOERR,
    _SQLITE_CORRUPT,
    _SQLITE_FULL,
    _SQLITE_CANTOPEN,
    _SQLITE_NOTADB,
}


class StoreError(Exception):
    """The database cannot be used. The text is one line for the operator: what failed, which
    file, what to do."""


class StoreUnavailable(StoreError):
    """Writes fail now (disk full, I/O error, read-only, locked): nothing of the failed
    transaction was stored. Clients are answered 503 with ``Retry-After``; the runner retries."""

    retry_after = RETRY_AFTER


def is_store_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the database itself (disk full, I/O error, damaged or
    read-only file, lock timeout) rather than of one item's data."""
    if isinstance(exc, StoreError):
        return True
    if getattr(exc, "pg_sqlstate", False) is not False:  # engine.runtime.pgconn: a PostgreSQL error
        return isinstance(exc, sqlite3.OperationalError)
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in _FAULT_CODES


def explain_fault(exc: BaseException, path: str) -> str:
    """One line for the operator about a database fault: what, which file, what to do."""
    if isinstance(exc, StoreError):
        return str(exc)
    if is_postgres(path):
        return _("the PostgreSQL database {url} failed: {reason}", url=redact_url(path), reason=exc)
    where = os.path.abspath(path) if path != ":memory:" else path
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    base = os.path.basename(where)
    if code == _SQLITE_FULL:
        return _(
            "cannot write to the database {where}: the disk is full. Free space on that disk; "
            "linerules retries by itself, and clients are answered 503 meanwhile",
            where=where,
        )
    if code == _SQLITE_READONLY:
        return _(
            "cannot write to the database {where}: it is read-only. Give the user running "
            "linerules write access to the file and its folder (SQLite writes {base}-wal and -shm beside it)",
            where=where,
            base=base,
        )
    if code == _SQLITE_CANTOPEN:
        return _(
            "cannot open the database {where}: check that its folder exists, is not on a read-only disk, "
            "and that the user running linerules may read and write there (SQLite creates {base}-wal and -shm beside it)",
            where=where,
            base=base,
        )
    if code == _SQLITE_NOTADB:
        return not_linerules(path, _NOT_SQLITE)
    if code == _SQLITE_CORRUPT:
        return _(
            "the database {where} is damaged ({reason}): stop linerules and restore it from a backup, "
            "or recover what is left with `sqlite3 {where} .recover`",
            where=where,
            reason=exc,
        )
    if code == _SQLITE_IOERR:
        return _(
            "cannot write to the database {where}: disk I/O error ({reason}). Check the disk and its free space; "
            "linerules retries by itself",
            where=where,
            reason=exc,
        )
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return _(
            "the database {where} stayed locked by another process for too long ({reason}); linerules retries by itself",
            where=where,
            reason=exc,
        )
    return _("the database {where} failed: {reason}", where=where, reason=exc)


# ------------------------------------------------------------------ is this a linerules database?

#: Why a file is not a linerules database (the ``{what}`` of :func:`not_linerules`).
_NOT_SQLITE = N_("not an SQLite file")
_A_FOLDER = N_("a folder")
_FOREIGN = N_("an SQLite file without linerules' tables")
_FOREIGN_SCHEMA = N_("a PostgreSQL schema holding tables that are not linerules'")


class NotLinerulesDatabase(StoreError):
    """The path names something other than a linerules database: a folder, a file that is not
    SQLite, or an SQLite database of another program (or an empty one where one is required).
    Nothing was written to it."""


def not_linerules(path: str, what: str):
    """The one message for a path that is not a linerules database (translatable)."""
    where = os.path.abspath(path) if path != ":memory:" else path
    return _(
        "{path} is not a linerules database ({what}): check --db / LINERULES_DB, or restore the file from a backup",
        path=where,
        what=_(what),
    )


def database_version(path: str) -> int | None:
    """Whether ``path`` is a linerules database, the one test every command uses: its schema
    version, or None when nothing is there yet (a new database may be created at ``path``).
    Raises :class:`NotLinerulesDatabase` for a folder, a file that is not SQLite, or an SQLite
    file without linerules' ``meta`` (an empty one included), and :class:`StoreError` when the
    file cannot be read. Opens the file read-only and writes nothing. A ``postgresql://`` URL:
    the version of the schema it names (None for an empty one)."""
    if is_postgres(path):
        return _pg_version(path)
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path):
        raise NotLinerulesDatabase(not_linerules(path, _A_FOLDER))
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            version = _linerules_version(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _open_error(exc, path) from None
    if not version:
        raise NotLinerulesDatabase(not_linerules(path, _FOREIGN))
    return version


def remove_database(path: str) -> bool:
    """Delete the linerules database at ``path`` with its write-ahead log (``simulate --db``
    replaces an earlier simulation's database). False when nothing was there; anything that is
    not a linerules database raises :class:`NotLinerulesDatabase` and is left as it was."""
    if database_version(path) is None:
        return False
    if is_postgres(path):
        _pg_drop_tables(path)
        return True
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    return True


def is_postgres(path: str) -> bool:
    """Whether ``--db`` / ``LINERULES_DB`` names a PostgreSQL database rather than an SQLite file."""
    return str(path).startswith(("postgresql:", "postgres:"))


def redact_url(url: str) -> str:
    """A ``postgresql://`` URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", str(url))


def _pg_version(url: str) -> int | None:
    from . import pgconn, pgschema

    try:
        conn = pgconn.PgConnection(url, lock_key="")
    except sqlite3.Error as exc:
        raise _open_error(exc, url) from None
    try:
        raw = conn.raw()
        version = pgschema.schema_version(raw)
        if version:
            return version
        schema = raw.execute("SELECT current_schema()").fetchone()[0]
        others = raw.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name <> 'meta'",
            (schema,),
        ).fetchone()[0]
        if others:
            raise NotLinerulesDatabase(not_linerules(url, _FOREIGN_SCHEMA))
        return None
    finally:
        conn.close()


def _pg_drop_tables(url: str) -> None:
    """Drop every table of the linerules schema ``url`` names (``simulate --db``)."""
    from psycopg import sql as pgsql

    from . import pgconn

    conn = pgconn.PgConnection(url, lock_key="")
    try:
        raw = conn.raw()
        with raw.transaction():
            schema = raw.execute("SELECT current_schema()").fetchone()[0]
            for (table,) in raw.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            ).fetchall():
                raw.execute(
                    pgsql.SQL("DROP TABLE IF EXISTS {}.{} CASCADE").format(
                        pgsql.Identifier(schema), pgsql.Identifier(table)
                    )
                )
    finally:
        conn.close()


def _linerules_version(conn: sqlite3.Connection) -> int | None:
    """The schema version recorded in ``meta``; 0 for a database without any table (a new
    one) or with only ``meta`` (the first start stopped before the first migration); None for a
    database with tables but no linerules ``meta``."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return 0
    if "meta" not in tables:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return 0 if tables == {"meta"} else None
    try:
        return int(row[0])
    except (TypeError, ValueError):
        return None


def _read_only_uri(path: str) -> str:
    """An SQLite URI opening ``path`` read-only (any character of the name quoted)."""
    return Path(os.path.abspath(path)).as_uri() + "?mode=ro"


def _open_error(exc: sqlite3.Error, path: str) -> StoreError:
    """The error to raise when opening ``path`` failed with ``exc``."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    return (NotLinerulesDatabase if code == _SQLITE_NOTADB else StoreError)(explain_fault(exc, path))


class _Health:
    """Whether writes to one database file fail now (shared by the process's connections)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.problem: str | None = None


_HEALTH: dict[str, _Health] = {}


def _health_for(path: str) -> _Health:
    key = path if path == ":memory:" else os.path.realpath(path)
    with _TURNS_LOCK:
        return _HEALTH.setdefault(key, _Health())


@dataclass(frozen=True)
class ApplyResult:
    applied: int
    duplicates: int


class ConditionState(NamedTuple):
    """What the last complete check of a condition rule (or refresh of a ranked measure,
    ``measure:…``) covered (:meth:`Store.condition_state`): the SQL it checked (a changed
    rule is checked in full again), the last change (``friend_changes``) it saw, its moment,
    and the threshold of each ranking it used."""

    checked: str
    seen: int
    at: int
    tops: dict[str, float]


class Placement(NamedTuple):
    """Where a set-based entry leaves its enrollments (:meth:`Store.enroll_audience`): state,
    step, due time and finish time, and, when its first sends are carried on the enrollment,
    when they are decided (``send_due``) and their steps and message names (JSON text)."""

    state: str
    step_id: str | None
    due_at: int | None
    finished_at: int | None
    send_due: int | None
    steps: str
    messages: str


@dataclass(frozen=True)
class EventRow:
    """An applied event as the engine processes it."""

    seq: int
    type: str
    friend: str
    at: int
    data: dict[str, Any]
    reply_token: str | None
    received_at: int


_json = payload_json
_scan_json = json.scanner.make_scanner(json.JSONDecoder())


def _loads(text: Any) -> Any:
    """``json.loads(text)``, without its scans for whitespace around the value when there is
    none (the JSON the store writes): a quarter of the time for a friend's attributes."""
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, TypeError):
        return json.loads(text)  # whitespace first, not text: as json.loads says
    return value if end == len(text) else json.loads(text)


#: ``temp.lr_due`` rows of the rule ``:rule`` (by their groups).
_OF_RULE = "grp IN (SELECT grp FROM temp.lr_groups WHERE rule = :rule)"


#: The epochs (``epoch``) of the members whose lock is held now (PostgreSQL; parameter: the
#: schema's member lock class).
_MEMBER_LOCKS = (
    "SELECT objid::bigint AS epoch FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid::bigint = (? & 4294967295)"
)


class _Claim(NamedTuple):
    """What :meth:`Store.claim_outbox` was asked for: rows due at ``now``, at most ``limit``
    (``replies`` replies, ``others`` other rows), fenced by ``lease``, not those in ``skip``."""

    now: int
    limit: int
    replies: int
    others: int
    lease: tuple[str, int, int] | None
    skip: list[int]


def bucket(friend: str, rule: str, salt: str = "") -> int:
    """A stable bucket 0..9999 for (friend, rule): the split variant and holdout draw."""
    digest = hashlib.sha256(f"{salt}\x1f{rule}\x1f{friend}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000


#: Where stored work waits, each the first moment after ``:after`` (Store.next_work_at).
_NEXT_WORK = {
    "events": "SELECT MIN(at) FROM events WHERE processed_at IS NULL AND at > :after",
    "enrollments": "SELECT MIN(due_at) FROM enrollments WHERE state IN ('active', 'waiting') AND due_at > :after",
    "outbox": "SELECT MIN(not_before) FROM outbox WHERE status IN ('pending', 'held') AND not_before > :after",
    "intents": "SELECT MIN(due_at) FROM intents WHERE due_at > :after",
    "audiences": "SELECT MIN(due_at) FROM audience_sends WHERE due_at > :after",
}

#: The migrated empty in-memory database, by the migrations it was made with (Store._migrate_memory).
_MEMORY_SCHEMAS: dict[tuple, sqlite3.Connection] = {}
_MEMORY_LOCK = threading.Lock()


class _Transaction:
    """One block of :meth:`Store.transaction`, a plain context manager: a tick opens a dozen
    blocks, most of them inner ones joining the outer, and a generator's context manager cost
    more than the inner block's work."""

    __slots__ = ("batch", "outer", "rows_only", "started", "store")

    def __init__(self, store: Store, rows_only: bool, batch: bool = False) -> None:
        self.store = store
        self.rows_only = rows_only
        self.batch = batch
        self.outer = False
        self.started = 0.0

    def __enter__(self) -> sqlite3.Connection:
        s = self.store
        s._lock.acquire()
        if s._depth:
            s._depth += 1
            return s.conn
        s._batched = self.batch
        try:
            if self.rows_only and s.pg:
                s.conn.execute("BEGIN DEFERRED")
            else:
                s._begin()
        except BaseException as exc:
            s._lock.release()
            if isinstance(exc, sqlite3.Error) and is_store_fault(exc):
                raise s._fault(exc) from None
            raise
        self.outer = True
        self.started = time.perf_counter()
        s._depth = 1
        return s.conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        s = self.store
        try:
            if not self.outer:
                s._depth -= 1
                if s._batched and s._depth == 1 and exc is None:
                    s._log_changes()  # a block of a batch logs as its own commit would have
                return False
            if exc is None:
                try:
                    s._log_changes()
                except BaseException as failure:
                    self._undo(failure)
                    raise
            else:
                self._undo(exc)
                return False
            s._depth = 0
            try:
                s._end("COMMIT")
            except sqlite3.Error as failure:
                s._rollback()
                if is_store_fault(failure):
                    raise s._fault(failure) from None
                raise
            s._wrote()
            s.longest_write = max(s.longest_write, time.perf_counter() - self.started)
            return False
        finally:
            s._lock.release()

    def _undo(self, exc: BaseException) -> None:
        """Roll the transaction back after ``exc``; a failure of the database itself is raised
        as the store's fault instead (else the caller raises ``exc`` on)."""
        s = self.store
        s._depth = 0
        s._changed.clear()
        s._rollback()
        if is_store_fault(exc):
            raise s._fault(exc) from None


class Store:
    """The engine's SQLite database. ``Store(":memory:")`` works for tests and simulations."""

    #: whether the open transaction is a :meth:`batch`
    _batched = False

    #: What :meth:`_deliver_scratch` made in this session (None: nothing yet)
    _scratch: tuple | None = None

    def __init__(
        self, path: str, *, checkpoints: bool = True, yields: bool = False, read_only: bool = False, clock: Any = None
    ):
        """``checkpoints=False``: commits never copy the write-ahead log back into the database
        (the runner calls :meth:`checkpoint` after each tick instead, so that neither a
        webhook's commit nor a tick's chunk waits for it); ``yields=True`` lets the process's
        other writers go first (the runner's tick thread, see :meth:`_begin`). ``clock`` (the
        runner's, ``engine/runner/clock.py``): the time of ``received_at`` and of every other
        time not given; the wall clock by default.

        ``read_only=True`` (the report): the database must exist and be a linerules database
        (:func:`database_version`); it is opened read-only, never migrated nor written, and may
        be read while a runner writes it. Otherwise a missing or empty file becomes a new
        database; any other file that is not a linerules database is refused
        (:class:`NotLinerulesDatabase`) and left as it was."""
        self.path = path
        #: The database is a PostgreSQL schema (``postgresql://`` URL, :mod:`engine.runtime.pgconn`).
        self.pg = is_postgres(path)
        self.yields = yields
        self.read_only = read_only
        self.clock = clock
        self._time: Callable[[], float] = time.time if clock is None else clock.time
        self._turns = None if path == ":memory:" or self.pg else _turns_for(path)
        self._turn_held = False  # this connection holds a yielding turn (see _begin)
        self._health = _Health() if path == ":memory:" else _health_for(path)
        self._opened = False
        #: The column that orders rows of a table without a key as they were inserted.
        self._rowid = "ctid" if self.pg else "rowid"
        try:
            if self.pg:
                self._open_pg(path, read_only)
            elif read_only:
                self._open_read_only(path)
            else:
                self._open(path, checkpoints)
        except sqlite3.Error as exc:
            conn = getattr(self, "conn", None)
            if conn is not None:
                conn.close()
            raise _open_error(exc, path) from None
        except StoreError:
            conn = getattr(self, "conn", None)
            if conn is not None:
                conn.close()
            raise
        self._opened = True

    def _open_pg(self, url: str, read_only: bool) -> None:
        """Connect to the schema the URL names (``options=-csearch_path=...``; docs/scale.md)
        and bring it up to date (:func:`engine.runtime.pgschema.migrate`), or, read-only, check
        that it is a linerules database and open it so that nothing can be written."""
        from . import pgconn, pgschema

        self.conn = conn = pgconn.PgConnection(url, lock_key="")
        self._lock = threading.RLock()
        self._depth = 0
        self._changed: set[str] = set()  # friends this transaction's writes changed (:meth:`changed`)
        self._inflight = {}
        self.longest_write = 0.0
        raw = conn.raw()
        try:
            if read_only:
                if not pgschema.schema_version(raw):
                    raise StoreError(_("there is no database at {path}", path=redact_url(url)))
                raw.execute("SET default_transaction_read_only = on")
            else:
                pgschema.migrate(raw)
        except RuntimeError as exc:
            raise NotLinerulesDatabase(f"{redact_url(url)}: {exc}") from None
        schema = raw.execute("SELECT current_schema()").fetchone()[0]
        conn.lock_key = f"linerules.write:{schema}"
        conn.on_reconnect = self._new_session
        self._member: tuple[str, int, int] | None = None  # (owner, epoch, ttl) once joined
        self._lock_classes: dict[str, int] = {}  # _lock_class
        self._lead_generation: int | None = None  # the session that holds the engine's lock

    def _new_session(self, conn) -> None:
        """The server closed this store's session and a new one is open (PostgreSQL): take
        the member lock of this runner's epoch again, and its lease row when someone removed
        it meanwhile. The engine's lock is not taken again here: the runner asks
        :meth:`leads` and competes for it anew (another runner may lead by now)."""
        log.warning("the connection to %s was lost and is open again", redact_url(self.path))
        self._scratch = None  # the old session's temporary tables went with it
        led, self._lead_generation = self._lead_generation is not None, None
        if self._member is not None:
            self._rejoin(conn, *self._member)
        if led:  # the engine's lock went with the old session: stop this tick here
            raise StoreUnavailable(f"the session that ran the ticks of {redact_url(self.path)} ended")

    def _rejoin(self, conn, owner: str, epoch: int, ttl: int) -> None:
        """On the new session itself, while the connection's lock is held (the store's lock is
        not taken here: another thread may hold it, waiting for this connection): one
        statement each, the lease row idempotent."""
        raw = conn.raw()
        raw.execute("SELECT pg_advisory_lock(%s, %s)", (self._lock_class("member"), epoch))
        raw.execute(
            "INSERT INTO lease(name, owner, expires_at, epoch) VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
            (self.dispatch_lease(owner), owner, int(self._time()) + ttl, epoch),
        )

    def _open_read_only(self, path: str) -> None:
        if path == ":memory:" or database_version(path) is None:
            raise StoreError(_("there is no database at {path}", path=os.path.abspath(path)))
        conn = sqlite3.connect(_read_only_uri(path), uri=True, **_CONNECT)
        conn.row_factory = sqlite3.Row
        self.conn = conn
        self._lock = threading.RLock()
        self._depth = 0
        self._changed: set[str] = set()  # friends this transaction's writes changed (:meth:`changed`)
        self._inflight = {}
        self.longest_write = 0.0
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA query_only = ON")

    def _open(self, path: str, checkpoints: bool) -> None:
        if path != ":memory:" and os.path.isdir(path):
            raise NotLinerulesDatabase(not_linerules(path, _A_FOLDER))
        conn = sqlite3.connect(path, **_CONNECT)
        conn.row_factory = sqlite3.Row
        self.conn = conn
        if _linerules_version(conn) is None:  # tables of another program: leave them alone
            raise NotLinerulesDatabase(not_linerules(path, _FOREIGN))
        self._lock = threading.RLock()
        self._depth = 0
        self._changed: set[str] = set()  # friends this transaction's writes changed (:meth:`changed`)
        self._inflight: dict[int, int] = {}  # outbox id -> claim time, claimed through this Store
        #: Seconds of the longest write transaction on this connection (benchmarks, logs).
        self.longest_write = 0.0
        conn.execute("PRAGMA busy_timeout = 30000")
        if path != ":memory:" and conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        if not checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB of pages: ticks touch big indexes
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.create_function("lr_bucket", 3, bucket, deterministic=True)
        conn.create_function("lr_retry_key", 0, retry_key)
        if path == ":memory:":
            self._migrate_memory()
        else:
            self._migrate()

    def _migrate_memory(self) -> None:
        """A new in-memory database (each rule test and simulation opens one) is a copy of one
        migrated before in this process, the same bytes as migrating it again, ten times faster."""
        with _MEMORY_LOCK:
            template = _MEMORY_SCHEMAS.get(MIGRATIONS)
            if template is not None:
                template.backup(self.conn)
                return
        self._migrate()
        template = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.backup(template)
        with _MEMORY_LOCK:
            _MEMORY_SCHEMAS.clear()
            _MEMORY_SCHEMAS[MIGRATIONS] = template

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self.conn.close()

    @property
    def write_problem(self) -> str | None:
        """Why writes to this database fail right now (any connection of this process saw it
        on its last write), or None while they work."""
        return self._health.problem

    def check_integrity(self) -> None:
        """``PRAGMA quick_check`` (every page of the file, no index cross-checks); raises
        :class:`StoreError` naming the file when it finds damage (PostgreSQL checks its own
        pages: nothing to do)."""
        if self.pg:
            return
        try:
            rows = [r[0] for r in self.conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.Error as exc:
            raise StoreError(explain_fault(exc, self.path)) from None
        if rows != ["ok"]:
            where = os.path.abspath(self.path)
            found = " ".join(rows[0].split())  # SQLite's report may span lines: one line
            raise StoreError(
                f"the database {where} is damaged (integrity check: {found}): stop "
                "linerules and restore it from a backup, or recover what is left with "
                f"`sqlite3 {where} .recover`"
            )

    def _fault(self, exc: BaseException) -> StoreError:
        """The exception to raise for a database fault; the first of a run of failing writes is
        logged once (what, which file, what to do), the others are not."""
        if isinstance(exc, StoreError):
            return exc
        message = explain_fault(exc, self.path)
        if self._opened:
            with self._health.lock:
                first, self._health.problem = self._health.problem is None, message
            if first:
                log.error("%s", message)
        return StoreUnavailable(message)

    def free_bytes(self) -> int | None:
        """Free bytes on the disk of the database file (None for ``:memory:``, PostgreSQL or unknown)."""
        if self.path == ":memory:" or self.pg:
            return None
        try:
            stat = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize

    def _wrote(self) -> None:
        """A write committed: if writes were failing, they work again (say so once). A small
        write may fit the room the write-ahead log already has on a full disk, so writes count
        as working again only once the disk has :data:`MIN_FREE_BYTES` free."""
        if self._health.problem is not None:
            free = self.free_bytes()
            if free is not None and free < MIN_FREE_BYTES:
                return
            with self._health.lock:
                was, self._health.problem = self._health.problem, None
            if was is not None:
                log.warning("database writes work again (%s)", os.path.abspath(self.path))

    def transaction(self, *, rows_only: bool = False) -> _Transaction:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception). Re-entrant: an inner
        block joins the outer transaction. ``rows_only``: on PostgreSQL, without the schema's
        write lock, for writes to rows no other transaction writes meanwhile (a runner's own
        claimed outbox rows and their deliveries), which row locks keep apart; on SQLite the
        same ``BEGIN IMMEDIATE``."""
        return _Transaction(self, rows_only)

    def batch(self) -> _Transaction:
        """One transaction around work that would otherwise commit block by block (``simulate``:
        a whole stop of its clock, where nobody else reads or writes), in which each block that
        would have been a transaction of its own still logs its friends' changes at its end, as
        its commit would have, for the condition checks that read them later in the same stop."""
        return _Transaction(self, False, batch=True)

    def changed(self, *friends: str) -> None:
        """These friends' rows, activity or tags were just written: the condition triggers
        look at them again (``friend_changes``, written once per friend and transaction, in
        the transaction; a write outside one is logged at once)."""
        self._changed.update(friends)
        if not self._depth:
            with self.transaction():
                pass
        elif self._batched and self._depth == 1:
            self._log_changes()  # outside the blocks of a batch: logged at once, as without it

    def changed_query(self, sql: str, params: Any = ()) -> None:
        """The friends ``sql`` selects (one column) were just written (:meth:`changed`)."""
        self.changed(*(r[0] for r in self.conn.execute(sql, params) if r[0]))

    def _log_changes(self) -> None:
        if self._changed:
            rows = [(f,) for f in sorted(self._changed)]
            self._changed.clear()
            self.conn.executemany("INSERT INTO friend_changes(friend) VALUES (?)", rows)

    def _rollback(self) -> None:
        """``ROLLBACK`` if a transaction is still open (SQLite may already have rolled back
        after a full disk or an I/O error), without masking the error that led here."""
        self._scratch = None  # temporary tables made in the transaction are gone with it
        try:
            self._end("ROLLBACK" if self.conn.in_transaction else None)
        except sqlite3.Error as exc:
            log.debug("rollback failed: %s", exc)

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, taking turns with the process's other connections to this file:
        a yielding connection (the engine's) starts its next transaction only once no other
        writer waits, and the others wait for its transaction in progress on a condition (woken
        at its end, not by SQLite's busy sleeps), so a webhook's INSERT goes between two chunks
        of a long tick instead of losing every race for the lock to the tick's next chunk."""
        turns = self._turns
        if turns is None:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        with turns:
            if self.yields:
                # yielding writers (the engine's tick, big bodies stored in parts) also take
                # turns among themselves: one that took SQLite's lock while another held it
                # would keep the others' waiters out after that one's end
                turns.wait_for(lambda: not turns.waiting and not turns.busy, timeout=TURN_WAIT)
                turns.busy += 1
                self._turn_held = True
            else:
                turns.waiting += 1
                turns.wait_for(lambda: not turns.busy, timeout=TURN_WAIT)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            if self.yields:
                self._end(None)
            raise
        finally:
            if not self.yields:
                with turns:
                    turns.waiting -= 1
                    turns.notify_all()

    def _end(self, statement: str | None) -> None:
        """``COMMIT`` or ``ROLLBACK`` (None: nothing began); a yielding connection then gives
        its turn back, once per transaction (a COMMIT that fails is followed by a ROLLBACK),
        and wakes the writers waiting."""
        try:
            if statement is not None:
                self.conn.execute(statement)
        finally:
            if self._turn_held:
                self._turn_held = False
                with self._turns:
                    self._turns.busy -= 1
                    self._turns.notify_all()

    def checkpoint(self) -> None:
        """Copy the write-ahead log back into the database as far as readers allow, without
        waiting for or blocking any writer (``PRAGMA wal_checkpoint(PASSIVE)``)."""
        if self.path != ":memory:" and not self.pg:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # e.g. a full disk: the log stays, nothing is lost
                if not is_store_fault(exc):
                    raise
                self._fault(exc)

    def _migrate(self) -> None:
        """Apply the migrations the database has not seen yet, each in its own transaction."""
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        version = int(self.get_meta("schema_version") or 0)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction() as c:
                for statement in script.split(";"):
                    if statement.strip():
                        c.execute(statement)
                self.set_meta("schema_version", str(number))

    @property
    def total_changes(self) -> int:
        """Rows this connection has changed since it was opened."""
        return self.conn.total_changes

    def change_counts(self) -> tuple[int, int]:
        """(rows this connection changed, ``PRAGMA data_version``): both stay the same while
        no connection changes the database (on PostgreSQL: while no transaction writes)."""
        if self.pg:
            return self.conn.total_changes, self.conn.data_version()
        return self.conn.total_changes, self.conn.execute("PRAGMA data_version").fetchone()[0]

    def first_moment(self, queries: Iterable[str], params: dict[str, Any]) -> int | None:
        """The smallest result of ``queries`` (one value each, e.g. :func:`engine.runtime.sqlcond.change_moments`),
        None when all are NULL; one statement for them all."""
        queries = list(queries)
        if not queries:
            return None
        row = self.conn.execute("SELECT " + ", ".join(f"({q})" for q in queries), params).fetchone()
        return min((m for m in row if m is not None), default=None)

    @property
    def schema_version(self) -> int:
        return int(self.get_meta("schema_version") or 0)

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        with self.transaction() as c:
            if value is None:
                c.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                c.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    # ------------------------------------------------------------------ events in

    def apply_events(self, events: Sequence[Event], received_at: int | None = None) -> ApplyResult:
        """Store a validated batch in one transaction: all of it or nothing. Events whose
        ``dedupe_key`` is already stored (or repeats in the batch) are applied once; unknown
        friends are created. ``received_at`` defaults to now by the store's clock (reply-token freshness).
        The engine's next tick processes them in (at, seq) order."""
        received = int(self._time()) if received_at is None else int(received_at)
        # the rows are encoded before the write lock is taken: the transaction only inserts
        # an event naming only the shop's customer has friend "" until the link (identity.py)
        friends = [(e.friend, int(e.at.timestamp())) for e in events if e.friend]
        rows = [
            (e.dedupe_key, e.type, e.friend, int(e.at.timestamp()), _json(e.data), e.reply_token, received)
            for e in events
        ]
        orders = [e.data["order_id"] for e in events if e.type == "purchase" and e.data.get("order_id")]
        insert = (
            "INSERT INTO events(dedupe_key, type, friend, at, data, reply_token, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(dedupe_key) DO NOTHING"
        )
        with self.transaction() as c:
            c.executemany("INSERT OR IGNORE INTO friends(id, created_at) VALUES (?, ?)", friends)
            known: set[str] = set()
            for batch in _chunks(orders, 500):
                marks = ",".join("?" * len(batch))
                # (a row without an amount is a refund kept for an order not seen yet: no order)
                known.update(
                    r[0]
                    for r in c.execute(
                        f"SELECT order_id FROM orders WHERE order_id IN ({marks}) AND amount IS NOT NULL", batch
                    )
                )
            if known:
                # an order recorded before (an import, another connector) is stored all the same
                # (it may carry a cancellation) but counted once: it is a duplicate here too
                again = [r for r, e in zip(rows, events) if e.type == "purchase" and e.data.get("order_id") in known]
                rows = [
                    r for r, e in zip(rows, events) if not (e.type == "purchase" and e.data.get("order_id") in known)
                ]
                c.executemany(insert, again)
            cur = c.executemany(insert, rows)
            applied = max(cur.rowcount, 0) if rows else 0
        return ApplyResult(applied=applied, duplicates=len(events) - applied)

    def pending_events(self, now: int, limit: int = 1000, *, held_after: int | None = None) -> list[EventRow]:
        """Unprocessed events with ``at <= now`` in (at, seq) order. With ``held_after``, a
        ``follow`` received after that moment is held back, and so is every later event of the
        same friend (the follow grace: a friend's events are processed in order)."""
        hold = ""
        if held_after is not None:
            hold = (
                "AND NOT EXISTS (SELECT 1 FROM events h WHERE h.friend = e.friend AND h.type = 'follow' "
                "AND h.processed_at IS NULL AND h.received_at > :held AND (h.at, h.seq) <= (e.at, e.seq)) "
            )
        rows = self.conn.execute(
            "SELECT seq, type, friend, at, data, reply_token, received_at FROM events e "
            f"WHERE processed_at IS NULL AND at <= :now {hold}ORDER BY at, seq LIMIT :limit",
            {"now": now, "limit": limit, "held": held_after},
        )
        return [EventRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]

    def first_held_follow(self, held_after: int) -> int | None:
        """The earliest ``received_at`` after ``held_after`` of an unprocessed ``follow``."""
        return self.conn.execute(
            "SELECT MIN(received_at) FROM events WHERE processed_at IS NULL AND type = 'follow' AND received_at > ?",
            (held_after,),
        ).fetchone()[0]

    def mark_processed(self, seqs: Iterable[int], now: int) -> None:
        """These events were applied (one statement for a chunk's events)."""
        self.conn.executemany("UPDATE events SET processed_at = ? WHERE seq = ?", ((now, seq) for seq in seqs))

    def mark_failed(self, seq: int, now: int, error: str) -> None:
        """The event could not be processed: set it aside with the reason (not retried)."""
        self.conn.execute("UPDATE events SET processed_at = ?, error = ? WHERE seq = ?", (now, error, seq))

    def failed_events(self, limit: int = 100) -> list[dict]:
        """Events set aside by :meth:`mark_failed`, newest first: seq, type, friend, at, error."""
        return [
            dict(r)
            for r in self.conn.execute(
                "SELECT seq, type, friend, at, error FROM events WHERE error IS NOT NULL ORDER BY seq DESC LIMIT ?",
                (limit,),
            )
        ]

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: undo only this block's writes when it raises (one item of a
        batch that fails is rolled back alone; the batch goes on)."""
        self.conn.execute("SAVEPOINT lr_item")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK TO lr_item")
                self.conn.execute("RELEASE lr_item")
            raise
        self.conn.execute("RELEASE lr_item")

    def next_work_at(self, after: int) -> int | None:
        """The first moment after ``after`` at which stored work is due: an event, a step of
        an enrollment, an outbox row, an intent or an audience's sends (one statement: every
        stop of the simulator's clock asks)."""
        return self.first_moment(_NEXT_WORK.values(), {"after": after})

    # ------------------------------------------------------------------ friend state

    def friend_status(self, friend_id: str) -> tuple[int | None, int | None, str | None] | None:
        """The friend's ``(followed_at, blocked_at, source)``, or None: whether the id is a
        friend now and where they came from, without reading the rest of the row."""
        return self.conn.execute(
            "SELECT followed_at, blocked_at, source FROM friends WHERE id = ?", (friend_id,)
        ).fetchone()

    def friend(self, friend_id: str) -> dict | None:
        """The friend's row as a dict (``attributes`` decoded, ``tags`` a sorted list), or None."""
        row = self.conn.execute(
            f"SELECT {', '.join(_FRIEND_COLUMNS)} FROM friends WHERE id = ?", (friend_id,)
        ).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["attributes"] = json.loads(out["attributes"])
        out["tags"] = [
            r[0] for r in self.conn.execute("SELECT tag FROM tags WHERE friend = ? ORDER BY tag", (friend_id,))
        ]
        return out

    def friends_for_render(self, ids: Iterable[str]) -> dict[str, dict]:
        """Friend dicts (as :meth:`friend`) for many ids at once."""
        out: dict[str, dict] = {}
        ids = list(dict.fromkeys(ids))
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT {', '.join(_FRIEND_COLUMNS)} FROM friends WHERE id IN ({marks})", chunk
            ):
                d = dict(row)
                d["attributes"] = json.loads(d["attributes"])
                d["tags"] = []
                out[d["id"]] = d
            for friend_id, tag in self.conn.execute(
                f"SELECT friend, tag FROM tags WHERE friend IN ({marks}) ORDER BY tag", chunk
            ):
                out[friend_id]["tags"].append(tag)
        return out

    def events_data(self, seqs: Iterable[int]) -> dict[int, dict]:
        """The fields of these applied events (``type`` included), for templates' ``event``."""
        out: dict[int, dict] = {}
        for chunk in _chunks(list(seqs), 500):
            for seq, kind, data in self.conn.execute(
                f"SELECT seq, type, data FROM events WHERE seq IN ({','.join('?' * len(chunk))})", chunk
            ):
                out[seq] = {**json.loads(data), "type": kind}
        return out

    def _load_ids(self, values: Iterable[str]) -> None:
        """Fill the connection's scratch table ``temp.lr_ids`` with ``values`` (for joins)."""
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS lr_ids (v TEXT PRIMARY KEY)")
        self.conn.execute("DELETE FROM temp.lr_ids")
        self.conn.executemany("INSERT OR IGNORE INTO temp.lr_ids(v) VALUES (?)", ((v,) for v in values))

    def blocked_among(self, ids: Iterable[str]) -> set[str]:
        """Which of these friends have blocked the account."""
        self._load_ids(ids)
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT f.id FROM temp.lr_ids t CROSS JOIN friends f ON f.id = t.v WHERE f.blocked_at IS NOT NULL"
            )
        }

    def ensure_friend(self, friend_id: str, now: int) -> None:
        self.conn.execute("INSERT OR IGNORE INTO friends(id, created_at) VALUES (?, ?)", (friend_id, now))

    def set_source(self, friend_id: str, source: str, now: int | None = None) -> None:
        """Record where a friend came from (``qr=shipping``), e.g. from the LINE Login flow."""
        now = int(self._time()) if now is None else now
        with self.transaction() as c:
            self.ensure_friend(friend_id, now)
            c.execute("UPDATE friends SET source = ? WHERE id = ?", (_norm_source(source), friend_id))
            self.changed(friend_id)

    def set_profile(self, friend_id: str, *, display_name: str | None = None, language: str | None = None) -> None:
        """Store the LINE profile fields templates use (None leaves a field as it is)."""
        with self.transaction() as c:
            c.execute(
                "UPDATE friends SET display_name = COALESCE(?, display_name), "
                "language = COALESCE(?, language) WHERE id = ?",
                (display_name, language, friend_id),
            )
            self.changed(friend_id)

    def touch(self, friend_id: str, at: int, *, line: bool = False) -> None:
        """The id has been seen through an event. ``line``: a message or postback from LINE,
        which only a friend can send: someone with no follow or block on record (a friend from
        before the runner was installed) counts as a friend from then on."""
        if line:
            self.conn.execute(
                "UPDATE friends SET seen_at = COALESCE(seen_at, ?), followed_at = COALESCE("
                "followed_at, CASE WHEN blocked_at IS NULL THEN ? END) WHERE id = ?",
                (at, at, friend_id),
            )
            self.changed(friend_id)
            return
        self.conn.execute("UPDATE friends SET seen_at = COALESCE(seen_at, ?) WHERE id = ?", (at, friend_id))

    def follow(self, friend_id: str, at: int, source: str | None) -> None:
        """A follow (new friend or unblock), which also marks the id seen (:meth:`touch`). The first
        follow time is kept; a new source replaces the old one."""
        self.conn.execute(
            "UPDATE friends SET seen_at = COALESCE(seen_at, ?), followed_at = COALESCE(followed_at, ?), "
            "blocked_at = NULL, source = COALESCE(?, source) WHERE id = ?",
            (at, at, _norm_source(source) if source else None, friend_id),
        )
        self.changed(friend_id)

    def unfollow(self, friend_id: str, at: int, now: int | None = None) -> None:
        """A block at ``at``, applied by the tick at ``now`` (default ``at``): the sends queued
        before ``now`` are not sent, even once the friend follows again."""
        now = at if now is None else now
        self.conn.execute(
            "UPDATE friends SET blocked_at = ?, unfollow_tick = CASE WHEN unfollow_tick IS NULL OR "
            "unfollow_tick < ? THEN ? ELSE unfollow_tick END WHERE id = ?",
            (at, now, now, friend_id),
        )
        self.changed(friend_id)

    def purchase(
        self,
        friend_id: str,
        at: int,
        amount: float,
        items: list[dict],
        order_id: str | None = None,
        seq: int | None = None,
    ) -> None:
        """Count an order: orders, total spent, last purchase; one ``order`` activity row plus
        one ``purchase`` row per item (for product/category matches), carrying ``order_id``
        (engine/runtime/identity.py keeps the order itself) and ``seq``, the event, when known."""
        c = self.conn
        c.execute(
            "UPDATE friends SET orders = orders + 1, total_spent = total_spent + ?, "
            "last_purchase_at = MAX(COALESCE(last_purchase_at, 0), ?) WHERE id = ?",
            (amount, at, friend_id),
        )
        rows = [(friend_id, "order", None, None, amount, at, order_id, seq)]
        for item in items:
            price = item.get("price")
            total = None if price is None else price * item.get("quantity", 1)
            rows.append((friend_id, "purchase", item.get("product"), item.get("category"), total, at, order_id, seq))
        c.executemany(
            "INSERT INTO activity(friend, kind, product, category, amount, at, order_id, event_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self.changed(friend_id)

    def track(self, friend_id: str, kind: str, product: str | None, at: int, seq: int | None = None) -> None:
        """A ``cart`` or ``view`` activity (``seq``: the event it came from)."""
        self.conn.execute(
            "INSERT INTO activity(friend, kind, product, at, event_seq) VALUES (?, ?, ?, ?, ?)",
            (friend_id, kind, product, at, seq),
        )
        self.changed(friend_id)

    def click(
        self, friend_id: str, at: int, rule: str | None, message: str | None, url: str | None, seq: int | None = None
    ) -> None:
        """A ``click`` event of a timeline (or a shop's own click tracking)."""
        self.conn.execute(
            "INSERT INTO activity(friend, kind, rule, message, url, at, event_seq) VALUES (?, 'click', ?, ?, ?, ?, ?)",
            (friend_id, rule, message, url, at, seq),
        )
        self.changed(friend_id)

    def set_attributes(self, friend_id: str, values: dict[str, Any]) -> None:
        """``display_name`` and ``language`` are columns; everything else is a custom attribute."""
        values = dict(values)
        for column in ("display_name", "language"):
            if column in values:
                self.conn.execute(f"UPDATE friends SET {column} = ? WHERE id = ?", (values.pop(column), friend_id))
        if values:
            self.conn.execute(
                "UPDATE friends SET attributes = json_patch(attributes, ?) WHERE id = ?", (_json(values), friend_id)
            )
        self.changed(friend_id)

    def add_tags(self, friend_id: str, tags: Iterable[str], at: int) -> list[str]:
        """Add tags; returns the ones that were new."""
        new = []
        for tag in tags:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO tags(friend, tag, added_at) VALUES (?, ?, ?)", (friend_id, tag, at)
            )
            if cur.rowcount:
                new.append(tag)
        if new:
            self.changed(friend_id)
        return new

    def remove_tags(self, friend_id: str, tags: Iterable[str]) -> None:
        self.conn.executemany("DELETE FROM tags WHERE friend = ? AND tag = ?", [(friend_id, t) for t in tags])
        self.changed(friend_id)

    # ------------------------------------------------------------------ clicks

    def link_token(self, friend: str | None, rule: str | None, message: str | None, url: str, now: int) -> str:
        """A new click-tracking token for one link sent to one friend."""
        [token] = link_tokens(1)
        self.add_links([LinkRow(token, friend, rule, message, url, now)])
        return token

    def add_links(self, rows: Sequence[LinkRow]) -> None:
        """Click-tracking links, their tokens made by :func:`link_tokens` (one statement)."""
        if rows:
            self.conn.executemany(
                "INSERT INTO links(token, friend, rule, message, url, created_at) VALUES (?, ?, ?, ?, ?, ?)", rows
            )

    def link_friend(self, token: str) -> str | None:
        """The friend a tracked link was sent to (None: unknown token, or sent to nobody)."""
        row = self.conn.execute("SELECT friend FROM links WHERE token = ?", (token,)).fetchone()
        return row[0] if row is not None and row[0] else None

    def record_click(
        self,
        token: str | None = None,
        at: int | None = None,
        *,
        friend: str | None = None,
        rule: str | None = None,
        message: str | None = None,
        url: str | None = None,
    ) -> str | None:
        """Record a click on a tracked link, by token or by (friend, rule, message, url).
        Returns the link's target URL (None for an unknown token)."""
        at = int(self._time()) if at is None else at
        with self.transaction() as c:
            if token is not None:
                row = c.execute("SELECT friend, rule, message, url FROM links WHERE token = ?", (token,)).fetchone()
                if row is None:
                    return None
                friend, rule, message, url = row
            if friend is None or url is None:
                return url
            self.ensure_friend(friend, at)
            c.execute(
                "INSERT INTO activity(friend, kind, rule, message, url, at) VALUES (?, 'click', ?, ?, ?, ?)",
                (friend, rule, message, url, at),
            )
            self.changed(friend)
            return url

    # ------------------------------------------------------------------ conditions

    def select_enrollments(self, cond_sql: str, params: dict[str, Any], ids: Sequence[int]) -> set[int]:
        """Which of the enrollments ``ids`` satisfy ``cond_sql`` (aliases ``e`` and ``f``)."""
        out: set[int] = set()
        for chunk in _chunks(list(ids), 900):
            marks = ",".join(f":id{i}" for i in range(len(chunk)))
            sql = (
                f"SELECT e.id FROM enrollments e JOIN friends f ON f.id = e.friend "
                f"WHERE e.id IN ({marks}) AND ({cond_sql})"
            )
            ids_named = {f"id{i}": v for i, v in enumerate(chunk)}
            out.update(r[0] for r in self.conn.execute(sql, {**params, **ids_named}))
        return out

    def open_enrollments_where(self, rule: str, cond_sql: str, params: dict[str, Any]) -> list[int]:
        """The open enrollments of ``rule`` that satisfy ``cond_sql`` (aliases ``e`` and ``f``)."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT e.id FROM enrollments e JOIN friends f ON f.id = e.friend WHERE e.rule = :rule "
                f"AND e.state IN ('active', 'waiting') AND ({cond_sql}) ORDER BY e.id",
                {**params, "rule": rule},
            )
        ]

    def friend_matches(self, friend_id: str, cond_sql: str, params: dict[str, Any]) -> bool:
        """Whether one friend satisfies ``cond_sql`` (alias ``f``; no enrollment in scope)."""
        row = self.conn.execute(
            f"SELECT 1 FROM friends f WHERE f.id = :friend AND ({cond_sql})", {**params, "friend": friend_id}
        ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ condition triggers by what changed

    def change_mark(self) -> int:
        """The latest entry of ``friend_changes`` (0: none): a condition check that reads the
        database after this covers every change up to it."""
        return self.conn.execute("SELECT COALESCE(MAX(n), 0) FROM friend_changes").fetchone()[0]

    def condition_states(self) -> dict[str, ConditionState]:
        """What the last complete check of each condition rule (and refresh of each ranked
        measure) covered, by name."""
        return {
            r[0]: ConditionState(r[1], r[2], r[3], json.loads(r[4]))
            for r in self.conn.execute("SELECT rule, checked, seen, at, tops FROM condition_state")
        }

    def save_condition_states(self, states: dict[str, ConditionState], *, keep: Sequence[str] | None = None) -> None:
        """In one transaction: the states of the checks just made, then (``keep``) forget the
        states of rules and measures not named there (a rule that comes back is checked in full
        again), and the changes every kept state has covered, but the latest: numbers keep
        counting up from it (an SQLite rowid after the largest). No state at all: every change
        is forgotten."""
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO condition_state(rule, checked, seen, at, tops) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(rule) DO UPDATE SET checked = excluded.checked, seen = excluded.seen, "
                "at = excluded.at, tops = excluded.tops",
                [(name, st.checked, st.seen, st.at, json.dumps(st.tops)) for name, st in states.items()],
            )
            if keep is not None:
                marks = ",".join("?" * len(keep))
                c.execute(f"DELETE FROM condition_state WHERE rule NOT IN ({marks or 'NULL'})", tuple(keep))
            c.execute(
                "DELETE FROM friend_changes WHERE n < (SELECT MAX(n) FROM friend_changes) "
                "AND n <= COALESCE((SELECT MIN(seen) FROM condition_state), (SELECT MAX(n) FROM friend_changes))"
            )

    def _candidates(self, table: str, seen: int, queries: Sequence[str], params: dict[str, Any]) -> int:
        """``temp.<table>`` filled with the friends changed after the change ``seen`` and those
        ``queries`` select (one column of ids each); returns how many."""
        c = self.conn
        c.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY)")
        c.execute(f"DELETE FROM temp.{table}")
        c.execute(
            f"INSERT OR IGNORE INTO temp.{table}(id) SELECT friend FROM friend_changes WHERE n > :seen",
            {**params, "seen": seen},
        )
        for q in queries:
            c.execute(f"INSERT OR IGNORE INTO temp.{table}(id) {q}", params)
        return c.execute(f"SELECT COUNT(*) FROM temp.{table}").fetchone()[0]

    def condition_candidates(self, seen: int, queries: Sequence[str], params: dict[str, Any]) -> int:
        """The friends a condition check looks at (``temp.lr_candidates``, read by
        :meth:`enroll_audience` with ``candidates``): changed after ``seen``, or selected by
        ``queries``. Returns how many."""
        return self._candidates("lr_candidates", seen, queries, params)

    def refresh_measure(
        self,
        key: str,
        fill_all: tuple[str, dict[str, Any]],
        fill_some: tuple[str, dict[str, Any]],
        since: ConditionState | None,
        queries: Sequence[str],
        now: int,
    ) -> None:
        """Bring the kept values of one ranked measure up to ``now``: all of them again
        (``since`` None, ``fill_all``), or those of the friends changed since the last refresh
        and those ``queries`` select (``fill_some``, over ``temp.lr_mcand``); each fill is an
        ``INSERT`` and its parameters (:func:`engine.runtime.sqlcond.measure_fill`). Nothing is
        written when no friend needs it; the caller then saves the measure's state
        (``measure:KEY``, :meth:`save_condition_states`): doing it again is harmless."""
        params = {"key": key, "now": now}
        if since is not None and not self._candidates("lr_mcand", since.seen, queries, {"since": since.at, "now": now}):
            return
        with self.transaction() as c:
            if since is None:
                c.execute("DELETE FROM measure_values WHERE measure = ?", (key,))
                c.execute(fill_all[0], {**fill_all[1], **params})
                return
            c.execute(
                "DELETE FROM measure_values WHERE measure = :key AND friend IN (SELECT id FROM temp.lr_mcand)",
                params,
            )
            c.execute(fill_some[0], {**fill_some[1], **params})
            c.execute("DELETE FROM temp.lr_mcand")

    def measure_threshold(self, key: str, share: float) -> float:
        """The value a friend's kept value of the measure must exceed to be in the top ``share``
        of the current friends, as ``CUME_DIST() OVER (ORDER BY value DESC) <= share`` ranks them
        (missing values count as 0; ties are in or out together): the value of the first friend
        past the top, ``-inf`` when the top is everybody."""
        from engine.runtime.sqlcond import CURRENT, top_count

        c = self.conn
        friends = c.execute(f"SELECT COUNT(*) FROM friends f WHERE {CURRENT}").fetchone()[0]
        k = top_count(share, friends)
        if k >= friends:
            return float("-inf")
        kept, above = c.execute(
            "SELECT COUNT(*), COUNT(CASE WHEN value > 0 THEN 1 END) FROM measure_values WHERE measure = ?", (key,)
        ).fetchone()
        zeros = friends - kept
        if k < above:
            offset = k
        elif k < above + zeros:
            return 0.0
        else:
            offset = k - zeros
        row = c.execute(
            "SELECT value FROM measure_values WHERE measure = ? ORDER BY value DESC LIMIT 1 OFFSET ?", (key, offset)
        ).fetchone()
        return float(row[0]) if row is not None else 0.0

    # ------------------------------------------------------------------ enrollments

    def register_rule_version(self, rule: str, version: str, step_ids: Sequence[str], now: int) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO rule_versions(rule, version, steps, compiled_at) VALUES (?, ?, ?, ?)",
            (rule, version, _json(list(step_ids)), now),
        )

    def rule_version_steps(self, rule: str, version: str) -> list[str] | None:
        row = self.conn.execute(
            "SELECT steps FROM rule_versions WHERE rule = ? AND version = ?", (rule, version)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def last_enrollment(self, friend: str, rule: str) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT * FROM enrollments WHERE friend = ? AND rule = ? ORDER BY id DESC LIMIT 1", (friend, rule)
        ).fetchone()

    def enroll(
        self,
        *,
        friend: str,
        rule: str,
        version: str,
        step_id: str | None,
        now: int,
        entered_at: int,
        variant: str | None,
        holdout: bool,
        occurrence: str | None = None,
        cause_seq: int | None = None,
        reply_token: str | None = None,
        reply_deadline: int | None = None,
        event_seq: int | None = None,
        first_only: bool = False,
    ) -> int | None:
        """Insert one active enrollment due at ``now``; None if the occurrence was taken (with
        ``first_only``, also when the friend was ever in the rule: the re-entry policy
        ``never``, checked by the insert itself).
        ``event_seq``: the event that caused the entry (not "since entering"; templates' ``event``)."""
        only = " WHERE NOT EXISTS (SELECT 1 FROM enrollments x WHERE x.friend = ? AND x.rule = ?)" if first_only else ""
        row = self.conn.execute(
            "INSERT OR IGNORE INTO enrollments(friend, rule, rule_version, step_id, due_at, state, "
            "variant, holdout, entered_at, occurrence, cause_seq, reply_token, reply_deadline, entry_seq, "
            f"event_seq) SELECT ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?{only} RETURNING id",
            (
                friend,
                rule,
                version,
                step_id,
                now,
                variant,
                int(holdout),
                entered_at,
                occurrence,
                cause_seq,
                reply_token,
                reply_deadline,
                event_seq,
                event_seq,
                *((friend, rule) if first_only else ()),
            ),
        ).fetchone()
        return row[0] if row else None

    def enroll_audience(
        self,
        *,
        rule: str,
        version: str,
        step_id: str | None,
        now: int,
        where_sql: str,
        params: dict[str, Any],
        occurrence: str | None,
        blocked_sql: str,
        variant_sql: str,
        holdout_sql: str,
        chunk: int | None = None,
        placed: Placement | None = None,
        candidates: bool = False,
    ) -> int:
        """Set-based entry: every friend ``f`` matching ``where_sql`` who is not blocked from
        entering by ``blocked_sql`` (a predicate over the rule's enrollments ``x`` of that friend)
        gets one active enrollment due now. Returns how many entered.

        With ``placed`` (a time trigger whose first steps are sends followed by a wait or the
        end), the enrollments are written where those sends leave them, carrying the sends:
        ``send_due`` is when the deliver stage decides them, like an intent (the steps and
        messages are named once, in ``audience_sends``); no walk, no intent row per friend.

        Two phases, so that a big audience never holds the write lock for long: the audience is
        read into a scratch table (a WAL read; it does not block writers), then entered ``chunk``
        friends per transaction. Each chunk is atomic and re-checks ``blocked_sql``, so running
        the entry again after a crash between chunks enrols nobody twice and misses nobody.
        ``candidates``: only the friends in ``temp.lr_candidates`` are looked at
        (:meth:`condition_candidates`). Call it outside a transaction, or the chunks join it."""
        p = placed or Placement("active", step_id, now, None, None, "", "")
        args = {
            **params,
            "rule": rule,
            "version": version,
            "step": p.step_id,
            "now": now,
            "occurrence": occurrence,
            "state": p.state,
            "due": p.due_at,
            "finished": p.finished_at,
            "send_due": p.send_due,
            "steps": p.steps,
            "messages": p.messages,
        }
        blocked = (
            f"NOT EXISTS (SELECT 1 FROM enrollments x WHERE x.friend = f.id AND x.rule = :rule AND ({blocked_sql}))"
        )
        c = self.conn
        c.execute("CREATE TEMP TABLE IF NOT EXISTS lr_audience (n INTEGER PRIMARY KEY, id TEXT NOT NULL)")
        c.execute("DELETE FROM temp.lr_audience")
        source = "temp.lr_candidates k CROSS JOIN friends f ON f.id = k.id" if candidates else "friends f"
        c.execute(f"INSERT INTO temp.lr_audience(id) SELECT f.id FROM {source} WHERE ({where_sql}) AND {blocked}", args)
        last = c.execute("SELECT COALESCE(MAX(n), 0) FROM temp.lr_audience").fetchone()[0]
        sql = (
            "INSERT OR IGNORE INTO enrollments(friend, rule, rule_version, step_id, due_at, state, "
            "variant, holdout, entered_at, occurrence, finished_at, send_due) "
            f"SELECT f.id, :rule, :version, :step, :due, :state, {variant_sql}, {holdout_sql}, "
            ":now, :occurrence, :finished, :send_due FROM temp.lr_audience a CROSS JOIN friends f ON f.id = a.id "
            f"WHERE a.n > :lo AND a.n <= :hi AND {blocked} ORDER BY a.n"
        )
        entered, chunk = 0, chunk or AUDIENCE_CHUNK
        for lo in range(0, last, chunk):
            with self.transaction():
                count = c.execute(sql, {**args, "lo": lo, "hi": lo + chunk}).rowcount
                entered += count
                if placed is not None and count:
                    c.execute(
                        "INSERT INTO audience_sends(rule, occurrence, steps, messages, due_at, pending) "
                        "VALUES (:rule, :occurrence, :steps, :messages, :send_due, :count) "
                        "ON CONFLICT(rule, occurrence) DO UPDATE SET pending = audience_sends.pending + excluded.pending, "
                        "due_at = MIN(COALESCE(audience_sends.due_at, excluded.due_at), excluded.due_at)",
                        {**args, "count": count},
                    )
        c.execute("DELETE FROM temp.lr_audience")
        return entered

    # ------------------------------------------------------------------ intents (the deliver stage)

    def add_intents(self, rows: Sequence[Intent]) -> None:
        """Sends to decide when they are due."""
        self.conn.executemany(
            f"INSERT INTO intents({', '.join(INTENT_COLUMNS)}) VALUES ({', '.join('?' * len(INTENT_COLUMNS))})", rows
        )

    def defer_intents(self, rules: Sequence[str], opening: int, now: int) -> None:
        """Due sends of ``rules`` (not answers) wait for their window's next ``opening``."""
        marks = ",".join("?" * len(rules))
        self.conn.execute(
            f"UPDATE intents SET due_at = ? WHERE due_at <= ? AND answer = 0 AND rule IN ({marks})",
            (opening, now, *rules),
        )
        for rule, occurrence in self.conn.execute(
            f"SELECT rule, occurrence FROM audience_sends WHERE rule IN ({marks}) AND due_at <= ?", (*rules, now)
        ).fetchall():
            self.conn.execute(
                "UPDATE enrollments SET send_due = ? WHERE rule = ? AND occurrence = ? AND send_due <= ?",
                (opening, rule, occurrence, now),
            )
            self._recount(rule, occurrence)

    def bring_forward(self, rule: str, due: int, earlier: int) -> None:
        """The sends of ``rule`` (not answers) due at ``due`` become due at ``earlier`` (a
        reload moved their window's next opening forward)."""
        self.conn.execute(
            "UPDATE intents SET due_at = ? WHERE rule = ? AND due_at = ? AND answer = 0", (earlier, rule, due)
        )
        for (occurrence,) in self.conn.execute(
            "SELECT occurrence FROM audience_sends WHERE rule = ? AND pending > 0", (rule,)
        ).fetchall():
            changed = self.conn.execute(
                "UPDATE enrollments SET send_due = ? WHERE rule = ? AND occurrence = ? AND send_due = ?",
                (earlier, rule, occurrence, due),
            ).rowcount
            if changed:
                self._recount(rule, occurrence)

    def _recount(self, rule: str, occurrence: str) -> None:
        """An audience's waiting sends counted again, with the earliest (none left: no due time;
        the row stays, naming what the audience was sent)."""
        due, pending = self.conn.execute(
            "SELECT MIN(send_due), COUNT(send_due) FROM enrollments WHERE rule = ? AND occurrence = ?",
            (rule, occurrence),
        ).fetchone()
        self.conn.execute(
            "UPDATE audience_sends SET due_at = ?, pending = ? WHERE rule = ? AND occurrence = ?",
            (due, pending, rule, occurrence),
        )

    def waiting_sends(self) -> int:
        """Sends not yet decided: due now, or waiting for the window, the cap's day or the quota
        (intents, and the first sends an audience's enrollments carry)."""
        return (
            self.conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0]
            + self.conn.execute("SELECT COALESCE(SUM(pending), 0) FROM audience_sends").fetchone()[0]
        )

    def next_waiting_send(self) -> int | None:
        """When the next send waiting to be decided is due (None: none waits)."""
        moments = [
            self.conn.execute("SELECT MIN(due_at) FROM intents").fetchone()[0],
            self.conn.execute("SELECT MIN(due_at) FROM audience_sends").fetchone()[0],
        ]
        return min((m for m in moments if m is not None), default=None)

    def has_due_intents(self, now: int) -> bool:
        """Whether a send is due: an intent, or an audience's carried sends (one statement)."""
        return bool(
            self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM intents WHERE due_at <= :now) "
                "OR EXISTS (SELECT 1 FROM audience_sends WHERE due_at <= :now)",
                {"now": now},
            ).fetchone()[0]
        )

    def start_deliver(self, now: int, rules: tuple[tuple[str, int, int], ...]) -> None:
        """Before the deliver stage's chunks: intents overdue (their tick was missed) become due
        exactly ``now``, so that every due intent sits at one index position, ordered by friend;
        ``rules``: (name, priority, uncapped) of the project's rules."""
        c = self.conn
        c.execute("UPDATE intents SET due_at = ? WHERE due_at < ?", (now, now))
        for rule, occurrence in c.execute(
            "SELECT rule, occurrence FROM audience_sends WHERE due_at < ?", (now,)
        ).fetchall():
            c.execute(
                "UPDATE enrollments SET send_due = ? WHERE rule = ? AND occurrence = ? AND send_due < ?",
                (now, rule, occurrence, now),
            )
            c.execute("UPDATE audience_sends SET due_at = ? WHERE rule = ? AND occurrence = ?", (now, rule, occurrence))
        self._deliver_scratch(rules)

    def _deliver_scratch(self, rules: tuple[tuple[str, int, int], ...]) -> None:
        """The deliver stage's scratch tables, made once per session, and ``temp.lr_rules``
        holding ``rules``, written again only when they changed (a reload): every tick with
        a send due used to make and fill them, some twenty statements. A rollback and a new
        PostgreSQL session forget what was made (:meth:`_rollback`, :meth:`_new_session`)."""
        if self._scratch == rules:
            return
        c = self.conn
        if self._scratch is None:
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS lr_rules (rule TEXT PRIMARY KEY, prio INTEGER, uncapped INTEGER)"
            )
            # a due send names its (rule, steps, messages, occurrence) by ``grp``, a row of
            # ``temp.lr_groups``: a chunk holds few distinct ones (an audience's sends, one)
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS lr_due (id INTEGER PRIMARY KEY, enrollment INTEGER, "
                "friend TEXT, grp INTEGER, queued_at INTEGER, variant TEXT, event_seq INTEGER, answer INTEGER, "
                "reply_token TEXT, reply_deadline INTEGER, prio INTEGER, counts INTEGER, status TEXT, "
                "reason TEXT, used INTEGER, dup INTEGER, kind TEXT, carried INTEGER, src INTEGER, rnd INTEGER)"
            )
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS lr_groups (grp INTEGER PRIMARY KEY, rule TEXT NOT NULL, "
                "steps TEXT NOT NULL, messages TEXT NOT NULL, occurrence TEXT)"
            )
            c.execute("CREATE INDEX IF NOT EXISTS temp.lr_groups_key ON lr_groups(rule, steps, messages, occurrence)")
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS lr_sent (n INTEGER PRIMARY KEY, friend TEXT, enrollment INTEGER, "
                "variant TEXT, counts INTEGER, answer INTEGER)"
            )
            # the pushes rendered per friend (:meth:`add_due_pushes`): one row per outbox row, its
            # first friend's due send ``due``; ``temp.lr_members`` the other friends of a multicast
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS lr_push (n INTEGER PRIMARY KEY, due INTEGER NOT NULL, "
                "head INTEGER NOT NULL, payload TEXT NOT NULL, messages TEXT NOT NULL, retry_key TEXT NOT NULL, "
                "recipients TEXT)"
            )
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS lr_members (n INTEGER NOT NULL, pos INTEGER NOT NULL, "
                "due INTEGER NOT NULL, head INTEGER NOT NULL)"
            )
        c.execute("DELETE FROM temp.lr_rules")
        c.executemany("INSERT INTO temp.lr_rules VALUES (?, ?, ?)", rules)
        self._scratch = rules

    def load_due(self, now: int, limit: int, after: str, today: str, cap: int | None) -> DueChunk:
        """Fill the scratch table ``temp.lr_due`` with the due intents of the next friends after
        ``after`` (about ``limit`` intents, and always all of a friend's, so that a friend's
        competing sends are decided together), with the first part of the decision made: the
        rule's priority and whether the cap applies (``uncapped`` rules and answers do not);
        ``kept`` for a rule removed by a reload while its friends are suspended (the rule may come
        back); ``dropped`` for another rule no longer in the project or an enrollment that left its rule
        after the send was queued (the sends before a ``stop`` still go);
        ``skipped`` for a friend who is not a current friend now (blocked, never followed) and
        for holdout friends; ``used``: pushes already counted against the cap today. Returns
        the last friend loaded (None when nothing was due) and whether more may follow; a chunk
        may hold nothing (no intent, and none of the audiences' next enrollments due now)."""
        c = self.conn
        c.execute("DELETE FROM temp.lr_due")  # (the tables: _deliver_scratch)
        c.execute("DELETE FROM temp.lr_groups")
        # the next friends of each source in friend order (index ranges), up to the nearer of the
        # two last ones: every due send of those friends, from both sources, is in this chunk
        first_intent, *end = c.execute(
            "SELECT MIN(friend), MAX(friend), COUNT(*) FROM (SELECT friend FROM intents "
            "WHERE due_at = ? AND friend > ? ORDER BY friend LIMIT ?)",
            (now, after, limit),
        ).fetchone()
        plans = c.execute("SELECT rule, occurrence FROM audience_sends WHERE due_at = ?", (now,)).fetchall()
        # an audience's next enrollments, by the index alone (those whose send is not due now
        # are counted too: a chunk holds at most ``limit`` of its carried sends)
        ends = [tuple(end)]
        for rule, occurrence in plans:
            nth = c.execute(
                "SELECT friend FROM enrollments WHERE rule = ? AND occurrence = ? AND friend > ? ORDER BY friend "
                "LIMIT 1 OFFSET ?",
                (rule, occurrence, after, limit - 1),
            ).fetchone()
            if nth is not None:
                ends.append((nth[0], limit))
            else:  # fewer than ``limit`` left: up to the last
                ends.append(
                    (
                        c.execute(
                            "SELECT MAX(friend) FROM enrollments WHERE rule = ? AND occurrence = ? AND friend > ?",
                            (rule, occurrence, after),
                        ).fetchone()[0],
                        0,
                    )
                )
        full = [end for end, count in ends if count >= limit]
        last = min(full) if full else max((end for end, _ in ends if end is not None), default=None)
        if last is None:
            return DueChunk(None, False)
        args = {"now": now, "after": after, "last": last, "cap": cap, "today": today}
        intents = first_intent is not None and first_intent <= last
        if intents:
            c.execute(
                "INSERT INTO temp.lr_groups(rule, steps, messages, occurrence) SELECT DISTINCT rule, steps, "
                "messages, occurrence FROM intents WHERE due_at = :now AND friend > :after AND friend <= :last",
                args,
            )
        if plans:
            c.execute(
                "INSERT INTO temp.lr_groups(rule, steps, messages, occurrence) SELECT a.rule, a.steps, a.messages, "
                "a.occurrence FROM audience_sends a WHERE a.due_at = :now AND NOT EXISTS (SELECT 1 FROM "
                "temp.lr_groups g WHERE g.rule = a.rule AND g.steps = a.steps AND g.messages = a.messages "
                "AND g.occurrence IS a.occurrence)",
                args,
            )
        # one decision for every due send, whichever way it waited: an intent row (``src`` its
        # id), or the first sends carried by an enrollment of an audience (``src`` the
        # enrollment's id); ``id`` follows the order they were queued in (an audience's before
        # the walks of the same tick)
        loaded = c.execute(
            "INSERT INTO temp.lr_due(src, enrollment, friend, grp, queued_at, variant, event_seq, answer, "
            "reply_token, reply_deadline, prio, counts, status, reason, used, dup, carried, rnd) SELECT i.id, "
            "i.enrollment, i.friend, i.grp, i.queued_at, i.variant, i.event_seq, i.answer, i.reply_token, "
            "i.reply_deadline, "
            "COALESCE(i.prio, 0), CASE WHEN i.answer = 1 OR i.uncapped = 1 THEN 0 ELSE 1 END, "
            "CASE WHEN i.gone AND i.state = 'suspended' THEN 'kept' "
            "WHEN i.gone OR (i.state = 'exited' AND i.finished_at > i.queued_at) THEN 'dropped' "
            "WHEN f.followed_at IS NULL OR f.blocked_at IS NOT NULL OR f.unfollow_tick > i.queued_at "
            "OR i.holdout = 1 THEN 'skipped' END, "
            "CASE WHEN i.gone AND i.state = 'suspended' THEN 'suspended' "
            "WHEN i.gone THEN 'rule_removed' "
            "WHEN i.state = 'exited' AND i.finished_at > i.queued_at THEN 'exited' "
            "WHEN f.blocked_at IS NOT NULL OR f.unfollow_tick > i.queued_at THEN 'blocked' "
            "WHEN f.followed_at IS NULL THEN 'not_friend' "
            "WHEN i.holdout = 1 THEN 'holdout' END, "
            "CASE WHEN :cap IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM deliveries x WHERE x.friend = i.friend "
            "AND x.local_day = :today AND x.counts_for_cap = 1) END, 0, i.carried, 1 "
            "FROM (SELECT t.id, t.enrollment, t.friend, t.rule, g.grp, t.queued_at, t.variant, t.holdout, "
            "t.event_seq, t.answer, t.reply_token, t.reply_deadline, e.state, e.finished_at, 0 AS carried, "
            "r.prio AS prio, r.uncapped AS uncapped, r.rule IS NULL AS gone "
            "FROM intents t JOIN temp.lr_groups g ON g.rule = t.rule AND g.steps = t.steps AND "
            "g.messages = t.messages AND g.occurrence IS t.occurrence LEFT JOIN enrollments e ON e.id = t.enrollment "
            "LEFT JOIN temp.lr_rules r ON r.rule = t.rule "
            "WHERE t.due_at = :now AND t.friend > :after AND t.friend <= :last UNION ALL "
            "SELECT s.id, s.id, s.friend, s.rule, g.grp, s.entered_at, s.variant, s.holdout, NULL, 0, NULL, NULL, "
            "s.state, s.finished_at, 1, r.prio, r.uncapped, r.rule IS NULL FROM audience_sends a "
            "JOIN temp.lr_groups g ON g.rule = a.rule AND g.steps = a.steps AND g.messages = a.messages AND "
            "g.occurrence IS a.occurrence LEFT JOIN temp.lr_rules r ON r.rule = a.rule "
            "CROSS JOIN enrollments s ON s.rule = a.rule AND s.occurrence = a.occurrence AND s.friend > :after "
            "AND s.friend <= :last WHERE a.due_at = :now AND s.send_due = :now) i "
            "LEFT JOIN friends f ON f.id = i.friend "
            "ORDER BY i.queued_at, i.carried DESC, i.id",
            args,
        ).rowcount
        if not loaded:  # the audiences' next enrollments have no send due now
            return DueChunk(last, bool(full), False, False, False)
        dups = False
        if cap is not None:
            # all of a friend's due sends are loaded together: competing sends are found here
            # (one audience's sends alone cannot compete: one enrollment per friend and occurrence)
            if len(plans) > 1:
                dups = (
                    c.execute(
                        "UPDATE temp.lr_due SET dup = 1 WHERE friend IN (SELECT friend FROM "
                        "temp.lr_due GROUP BY friend HAVING COUNT(*) > 1)"
                    ).rowcount
                    > 0
                )
            elif intents:  # a friend with two sends has an intent: another, or the audience's send
                rule, occurrence = plans[0] if plans else (None, None)
                dups = (
                    c.execute(
                        "UPDATE temp.lr_due SET dup = 1 WHERE friend IN (SELECT d.friend FROM temp.lr_due d "
                        "WHERE d.carried = 0 GROUP BY d.friend HAVING COUNT(*) > 1 OR EXISTS (SELECT 1 FROM "
                        "enrollments s WHERE s.rule = :rule AND s.occurrence = :occurrence AND s.friend = d.friend "
                        "AND s.send_due = :now))",
                        {"rule": rule, "occurrence": occurrence, "now": now},
                    ).rowcount
                    > 0
                )
        return DueChunk(last, bool(full), intents, bool(plans), dups, tuple(tuple(p) for p in plans))

    def due_exits(self, rule: str, cond_sql: str, params: dict[str, Any], now: int) -> int:
        """``exit when`` of ``rule`` holds now for some of its due intents: those enrollments
        leave the rule and their intents are dropped. Returns how many enrollments left."""
        c = self.conn
        c.execute(
            f"UPDATE temp.lr_due SET status = 'dropped', reason = 'exit_when' WHERE {_OF_RULE} AND "
            "status IS NULL AND enrollment IN (SELECT e.id FROM enrollments e JOIN friends f ON f.id = e.friend "
            f"WHERE e.id IN (SELECT enrollment FROM temp.lr_due WHERE {_OF_RULE} AND status IS NULL) "
            f"AND ({cond_sql}))",
            {**params, "rule": rule, "now": now},
        )
        # a finished enrollment whose last send had yet to go out left the rule too
        return c.execute(
            "UPDATE enrollments SET state = 'exited', exit_reason = 'exit_when', finished_at = :now, "
            f"due_at = NULL WHERE id IN (SELECT enrollment FROM temp.lr_due WHERE {_OF_RULE} AND "
            "reason = 'exit_when') AND state IN ('active', 'waiting', 'done')",
            {"now": now, "rule": rule},
        ).rowcount

    def due_groups(self) -> list[tuple[str, str]]:
        """The distinct (rule, steps) of the undecided due intents, and of those skipped (a
        blocked or holdout friend's: recorded as skipped only for the steps whose condition holds)."""
        return [
            tuple(r)
            for r in self.conn.execute(
                "SELECT DISTINCT g.rule, g.steps FROM (SELECT DISTINCT grp FROM temp.lr_due WHERE status IS NULL "
                "OR status = 'skipped') x JOIN temp.lr_groups g ON g.grp = x.grp"
            )
        ]

    def due_failing(self, rule: str, steps: str, cond_sql: str, params: dict[str, Any]) -> list[int]:
        """Undecided (or skipped) due intents of (rule, steps) for which ``cond_sql`` does not
        hold now."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT d.id FROM temp.lr_due d JOIN enrollments e ON e.id = d.enrollment JOIN friends f ON "
                "f.id = d.friend WHERE d.grp IN (SELECT grp FROM temp.lr_groups WHERE rule = :rule AND "
                f"steps = :steps) AND (d.status IS NULL OR d.status = 'skipped') AND NOT ({cond_sql})",
                {**params, "rule": rule, "steps": steps},
            )
        ]

    def due_update(self, rows: Sequence[DueChange]) -> None:
        """Due sends of ``temp.lr_due`` left with fewer steps, or none (in a group of their own
        steps and messages)."""
        if not rows:
            return
        args = [r._asdict() for r in rows]
        c = self.conn
        c.executemany(
            "INSERT INTO temp.lr_groups(rule, steps, messages, occurrence) SELECT g.rule, :steps, :messages, "
            "g.occurrence FROM temp.lr_due d JOIN temp.lr_groups g ON g.grp = d.grp WHERE d.id = :id AND NOT "
            "EXISTS (SELECT 1 FROM temp.lr_groups x WHERE x.rule = g.rule AND x.steps = :steps AND "
            "x.messages = :messages AND x.occurrence IS g.occurrence)",
            args,
        )
        c.executemany(
            "UPDATE temp.lr_due AS d SET grp = (SELECT x.grp FROM temp.lr_groups g JOIN temp.lr_groups x ON "
            "x.rule = g.rule AND x.steps = :steps AND x.messages = :messages AND x.occurrence IS g.occurrence "
            "WHERE g.grp = d.grp), status = COALESCE(:status, status), reason = COALESCE(:reason, reason) "
            "WHERE id = :id",
            args,
        )

    def due_cap(self, cap: int, dups: bool = True) -> int:
        """``max_per_day``: per friend, the due sends the cap applies to, highest priority first
        (then the earlier queued, then the earlier enrollment), after those already counted
        today (``used``); the ones over the cap are ``capped``. Returns how many. ``dups``:
        whether some friend has more than one due send (:attr:`DueChunk.dups`)."""
        args = {"cap": cap, "reason": f"max_per_day {cap}"}
        # a friend with one due send: capped when the day's pushes have reached the cap already
        count = self.conn.execute(
            "UPDATE temp.lr_due SET status = 'capped', reason = :reason WHERE status IS NULL "
            "AND counts = 1 AND dup = 0 AND used >= :cap",
            args,
        ).rowcount
        if not dups:
            return count
        return (
            count
            + self.conn.execute(
                "UPDATE temp.lr_due SET status = 'capped', reason = :reason WHERE id IN (SELECT id FROM ("
                "SELECT d.id AS id, ROW_NUMBER() OVER (PARTITION BY d.friend ORDER BY d.prio DESC, d.queued_at, "
                "d.enrollment, d.id) + d.used AS n FROM temp.lr_due d WHERE d.status IS NULL AND d.counts = 1 "
                "AND d.dup = 1) WHERE n > :cap)",
                args,
            ).rowcount
        )

    def due_replies(self, now: int) -> None:
        """The first due send (by priority) holding a fresh reply token goes as the free reply."""
        self.conn.execute(
            "UPDATE temp.lr_due SET kind = 'reply' WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
            "(PARTITION BY reply_token ORDER BY prio DESC, id) AS n FROM temp.lr_due WHERE status IS NULL AND "
            "reply_token IS NOT NULL AND reply_deadline >= :now) WHERE n = 1)",
            {"now": now},
        )

    def due_quota(self, remaining: int) -> int:
        """The monthly quota: beyond ``remaining`` billed sends (not replies), in priority order,
        the rest are ``held``. Returns how many were held."""
        remaining = max(0, remaining)
        undecided = "status IS NULL AND kind IS NULL"
        if not remaining:  # nothing left this month: every billed send waits, no ordering needed
            return self.conn.execute(f"UPDATE temp.lr_due SET status = 'held' WHERE {undecided}").rowcount
        if self.conn.execute(f"SELECT COUNT(*) FROM temp.lr_due WHERE {undecided}").fetchone()[0] <= remaining:
            return 0
        return self.conn.execute(
            "UPDATE temp.lr_due SET status = 'held' WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
            "(ORDER BY prio DESC, queued_at, enrollment, id) AS n FROM temp.lr_due WHERE status IS NULL AND "
            "kind IS NULL) WHERE n > :remaining)",
            {"remaining": remaining},
        ).rowcount

    def due_rounds(self) -> int:
        """Number each friend's undecided sends in the order they are decided (priority, then
        the earlier queued, then the earlier enrollment): ``rnd`` 1 for the first, 2 for the
        second... Round by round the chunk's outbox rows are written (:meth:`due_static_send`
        and :meth:`due_rows` take one round), so a friend with several sends at this moment
        gets them in that order, and the friends whose n-th send is the same still share a
        multicast. Returns the number of rounds (1 when no friend has two)."""
        rnd = 1
        while self.conn.execute(
            "UPDATE temp.lr_due SET rnd = :rnd WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
            "(PARTITION BY friend ORDER BY prio DESC, queued_at, enrollment, id) AS n FROM temp.lr_due "
            "WHERE status IS NULL) x WHERE n = :rnd)",
            {"rnd": rnd + 1},
        ).rowcount:
            rnd += 1
        return rnd

    def due_render_keys(self, rnd: int = 1) -> list[tuple[int, str, str, str, str | None]]:
        """The groups (grp, rule, steps, messages, occurrence) of the sends of round ``rnd``
        (:meth:`due_rounds`) still to render, in the order of their first send."""
        c = self.conn
        groups = {
            r[0]: tuple(r) for r in c.execute("SELECT grp, rule, steps, messages, occurrence FROM temp.lr_groups")
        }
        return [
            groups[grp]
            for (grp,) in c.execute(
                "SELECT DISTINCT grp FROM temp.lr_due WHERE status IS NULL AND kind IS NULL AND rnd = ?", (rnd,)
            )
        ]

    def due_static_send(
        self,
        grp: int,
        rule: str,
        step_id: str,
        pushes: Sequence[tuple[Sequence[str], Any]],
        now: int,
        today: str,
        rnd: int = 1,
    ) -> tuple[int, int]:
        """Every undecided, non-reply due intent of the group ``grp`` (of ``rule``) in round
        ``rnd`` (:meth:`due_rounds`) gets the same rendered ``pushes``: multicasts of :data:`~engine.line.limits.MAX_MULTICAST` (in intent order), their delivery rows (step
        ``step_id``); :meth:`due_rows` leaves them out when told the group. Returns (outbox rows,
        intents)."""
        c = self.conn
        sent = "FROM temp.lr_due WHERE status IS NULL AND kind IS NULL AND rnd = :rnd AND grp = :grp"
        count, low, high = c.execute(f"SELECT COUNT(*), MIN(id), MAX(id) {sent}", {"grp": grp, "rnd": rnd}).fetchone()
        if not count:
            return 0, 0
        if high - low + 1 == count:  # a run of ids (an audience's sends, as a rule): numbered by them
            source, number, order = "temp.lr_due WHERE id BETWEEN :low AND :high", "(id - :low)", "id"
        else:  # numbered in ``temp.lr_sent``
            c.execute("DELETE FROM temp.lr_sent")
            c.execute(
                "INSERT INTO temp.lr_sent(friend, enrollment, variant, counts, answer) SELECT friend, enrollment, "
                f"variant, counts, answer {sent} ORDER BY id",
                {"grp": grp, "rnd": rnd},
            )
            source, number, order = "temp.lr_sent", "(n - 1)", "n"
        chunks = (count + MAX_MULTICAST - 1) // MAX_MULTICAST
        base = c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM outbox").fetchone()[0]
        for j, (push_names, objects) in enumerate(pushes):
            args = {
                "first": base + j * chunks,
                "payload": _json(objects),
                "messages": _json(list(push_names)),
                "rule": rule,
                "now": now,
                "today": today,
                "first_push": int(j == 0),
                "step": step_id,
                "per": MAX_MULTICAST,
                "low": low,
                "high": high,
            }
            c.execute(
                "INSERT INTO outbox(id, kind, recipients, payload, messages, rule, retry_key, not_before, "
                "status, created_at) SELECT :first + chunk, CASE WHEN COUNT(*) > 1 THEN 'multicast' ELSE "
                "'push' END, json_group_array(friend), :payload, :messages, :rule, lr_retry_key(), :now, 'pending', "
                f":now FROM (SELECT {number} / :per AS chunk, friend FROM {source} ORDER BY {order}) GROUP BY chunk",
                args,
            )
            c.execute(
                "INSERT INTO deliveries(friend, rule, step_id, enrollment, outbox_id, messages, status, reason, "
                f"variant, at, local_day, counts_for_cap) SELECT friend, :rule, :step, enrollment, :first + {number} "
                "/ :per, :messages, 'queued', CASE WHEN answer = 1 THEN 'answer' END, variant, :now, :today, "
                f"counts * :first_push FROM {source} ORDER BY {order}",
                args,
            )
        return chunks * len(pushes), count

    def due_rows(self, sent: Sequence[int] = (), rnd: int = 1) -> list[DueSend]:
        """The undecided due intents of round ``rnd`` (:meth:`due_rounds`) not sent set-based
        (each rendered for its friend), with their rule, steps, messages and occurrence and the
        friend, in the order they are decided: ``sent``, the groups :meth:`due_static_send` sent
        in the round. One statement reads the sends and their friends, one more the friends'
        tags."""
        cur = self.conn.cursor()
        cur.row_factory = None
        rows = cur.execute(
            "SELECT d.enrollment, d.friend, g.rule, g.steps, g.messages, g.occurrence, d.variant, d.event_seq, "
            "d.kind, d.answer, d.counts, d.reply_token, d.reply_deadline, d.id, "
            + ", ".join(f"f.{c}" for c in _FRIEND_COLUMNS)
            + " FROM temp.lr_due d JOIN temp.lr_groups g ON g.grp = d.grp LEFT JOIN friends f ON f.id = d.friend "
            "WHERE d.status IS NULL AND d.rnd = ? "
            + (f"AND NOT (d.kind IS NULL AND d.grp IN ({', '.join('?' * len(sent))})) " if sent else "")
            + "ORDER BY d.prio DESC, d.queued_at, d.enrollment, d.id",
            [rnd, *sent],
        ).fetchall()
        tags: dict[str, list[str]] = {}
        for friend_id, tag in cur.execute(
            # the chunk's friends first, each looked up in the tags' key (as an inner join,
            # SQLite read every friend's tags in tag order, to find the chunk's)
            "SELECT DISTINCT t.friend, t.tag FROM temp.lr_due d CROSS JOIN tags t ON t.friend = d.friend "
            "WHERE d.status IS NULL AND d.rnd = ? ORDER BY t.tag",
            (rnd,),
        ).fetchall():
            tags.setdefault(friend_id, []).append(tag)
        friends: dict[str, dict] = {}  # a friend with two sends is one dict, as in friends_for_render
        out: list[DueSend] = []
        width = len(DueSend._fields) - 1
        loads, columns, at = _loads, _FRIEND_COLUMNS, width + _FRIEND_COLUMNS.index("attributes")
        for row in rows:
            friend_id = row[1]
            friend = friends.get(friend_id)
            if friend is None:
                if row[width] is None:  # no friend row
                    friend = friend_vars({"id": friend_id})
                else:  # as templates see it (made once)
                    friend = friend_vars_of(zip(columns, row[width:]), loads(row[at]), tags.get(friend_id, []))
                friends[friend_id] = friend
            out.append(DueSend(*row[:width], friend))
        return out

    def add_due_pushes(
        self,
        pushes: Sequence[tuple[int, int, str, str]],
        multicasts: Sequence[tuple[int, int, int, str, str, str]],
        members: Sequence[tuple[int, int, int, int]],
        now: int,
        today: str,
    ) -> int:
        """The outbox rows of the due sends of ``temp.lr_due`` rendered per friend, and their
        delivery rows, written set-based from what rendering made: Python hands over only each
        push's payload (encoded once) and whose it is; the friend, rule, step, enrollment,
        variant and cap are the due send's, read in SQL.

        ``pushes`` are pushes to one friend: (due, head, payload, messages), where ``due`` is the
        send's ``temp.lr_due`` id, ``head`` 1 for the first push of the send (which counts for
        the cap) and ``messages`` the JSON list of the message names; ``multicasts`` are rows to
        several friends, (n, due, head, payload, messages, recipients), ``n`` the row's place
        among all (1-based; the pushes take the places left, in order) and ``due`` its first
        friend's; ``members`` (n, pos, due, head) each other friend of the multicast ``n``.
        Outbox ids follow the places, each with a new retry key; delivery rows follow their
        outbox rows, a multicast's in its friends' order. Returns the outbox rows written."""
        count = len(pushes) + len(multicasts)
        if not count:
            return 0
        c = self.conn
        c.execute("DELETE FROM temp.lr_push")
        keys = retry_keys(count)
        if multicasts:
            c.execute("DELETE FROM temp.lr_members")
            taken = {m[0] for m in multicasts}
            free = (n for n in range(1, count + 1) if n not in taken)
            c.executemany(
                "INSERT INTO temp.lr_push(n, due, head, payload, messages, recipients, retry_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*m, keys[m[0] - 1]) for m in multicasts],
            )
            c.executemany("INSERT INTO temp.lr_members(n, pos, due, head) VALUES (?, ?, ?, ?)", members)
            c.executemany(
                "INSERT INTO temp.lr_push(n, due, head, payload, messages, retry_key) VALUES (?, ?, ?, ?, ?, ?)",
                [(n, *p, keys[n - 1]) for n, p in zip(free, pushes, strict=True)],
            )
        else:
            c.executemany(
                "INSERT INTO temp.lr_push(n, due, head, payload, messages, retry_key) VALUES (?, ?, ?, ?, ?, ?)",
                [(n, *p, key) for n, p, key in zip(range(1, count + 1), pushes, keys)],
            )
        base = c.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]
        args = {"base": base, "now": now, "today": today}
        c.execute(
            "INSERT INTO outbox(id, kind, recipients, payload, messages, rule, retry_key, not_before, status, "
            "created_at) SELECT :base + p.n, CASE WHEN p.recipients IS NULL THEN 'push' ELSE 'multicast' END, "
            "COALESCE(p.recipients, CAST(json_array(d.friend) AS TEXT)), p.payload, p.messages, g.rule, p.retry_key, :now, "
            "'pending', :now FROM temp.lr_push p JOIN temp.lr_due d ON d.id = p.due "
            "JOIN temp.lr_groups g ON g.grp = d.grp ORDER BY p.n",
            args,
        )
        sends = "SELECT n, 0 AS pos, due, head, messages FROM temp.lr_push"
        if multicasts:
            sends += (
                " UNION ALL SELECT m.n, m.pos, m.due, m.head, p.messages FROM temp.lr_members m "
                "JOIN temp.lr_push p ON p.n = m.n"
            )
        c.execute(
            "INSERT INTO deliveries(friend, rule, step_id, enrollment, outbox_id, messages, status, reason, "
            "variant, at, local_day, counts_for_cap) SELECT d.friend, g.rule, json_extract(g.steps, '$[0][0]'), "
            "d.enrollment, :base + x.n, x.messages, 'queued', NULL, d.variant, :now, :today, d.counts * x.head "
            f"FROM ({sends}) x JOIN temp.lr_due d ON d.id = x.due JOIN temp.lr_groups g ON g.grp = d.grp "
            "ORDER BY x.n, x.pos",
            args,
        )
        return count

    def finish_deliver(self, now: int) -> None:
        """After the deliver stage's last chunk: the audiences whose sends were due now and of
        which some still wait (held by the quota, kept for a suspended rule, waiting for the
        window) are counted again; those with none left have no due time."""
        for rule, occurrence, pending in self.conn.execute(
            "SELECT rule, occurrence, pending FROM audience_sends WHERE due_at <= ?", (now,)
        ).fetchall():
            if pending:
                self._recount(rule, occurrence)
            else:
                self.conn.execute(
                    "UPDATE audience_sends SET due_at = NULL, pending = 0 WHERE rule = ? AND occurrence = ?",
                    (rule, occurrence),
                )

    def due_rules(self) -> set[str]:
        """The rules of the due sends loaded."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT rule FROM temp.lr_groups")}

    def due_finish(self, now: int, today: str, held_until: int | None, chunk: DueChunk = ANY_DUE) -> dict[str, int]:
        """Record the decisions of ``temp.lr_due``: delivery rows for skipped and capped sends;
        the decided intents are gone (a send handed back by the dispatcher is rebuilt from its
        delivery rows, see :meth:`hold_outbox`), held ones are due again at ``held_until``.
        ``chunk`` (as :meth:`load_due` returned it) says which sources the chunk holds."""
        c = self.conn
        capped, skipped = c.execute(
            "SELECT TOTAL(status = 'capped'), TOTAL(status = 'skipped') FROM temp.lr_due"
        ).fetchone()
        counts = {"capped": int(capped), "skipped": int(skipped)}
        if capped or skipped:
            c.execute(
                "INSERT INTO deliveries(friend, rule, step_id, enrollment, outbox_id, messages, status, "
                "reason, variant, at, local_day, counts_for_cap) SELECT d.friend, g.rule, "
                "json_extract(g.steps, '$[0][0]'), d.enrollment, NULL, g.messages, d.status, d.reason, d.variant, "
                ":now, :today, 0 FROM temp.lr_due d JOIN temp.lr_groups g ON g.grp = d.grp "
                "WHERE d.status IN ('skipped', 'capped') ORDER BY d.id",
                {"now": now, "today": today},
            )
        if chunk.intents:
            c.execute(
                "DELETE FROM intents WHERE id IN (SELECT src FROM temp.lr_due WHERE carried = 0 "
                "AND status IS NOT 'held' AND status IS NOT 'kept')"
            )
        if chunk.carried:
            decided = "d.carried = 1 AND d.status IS NOT 'held' AND d.status IS NOT 'kept'"
            cleared = c.execute(
                "UPDATE enrollments SET send_due = NULL WHERE id IN (SELECT d.enrollment FROM temp.lr_due d "
                f"WHERE {decided})"
            ).rowcount
            # each audience's waiting sends, fewer by those decided (finish_deliver counts again
            # only the audiences with some left)
            for rule, occurrence in chunk.plans:
                n = cleared  # one audience: every carried send decided was its own
                if len(chunk.plans) > 1:
                    n = c.execute(
                        "SELECT COUNT(*) FROM temp.lr_due d JOIN temp.lr_groups g ON g.grp = d.grp WHERE "
                        f"g.rule = ? AND g.occurrence = ? AND {decided}",
                        (rule, occurrence),
                    ).fetchone()[0]
                c.execute(
                    "UPDATE audience_sends SET pending = pending - ? WHERE rule = ? AND occurrence = ?",
                    (n, rule, occurrence),
                )
        if held_until is not None:
            if chunk.intents:
                # an answer held by the quota is no longer one of the friend's own moment: it
                # waits for the window and counts for the cap like any send (SPEC §4), and its
                # reply token will have long run out
                c.execute(
                    "UPDATE intents SET due_at = ?, answer = 0, reply_token = NULL, reply_deadline = NULL "
                    "WHERE id IN (SELECT src FROM temp.lr_due WHERE status = 'held' AND carried = 0)",
                    (held_until,),
                )
            if chunk.carried:
                c.execute(
                    "UPDATE enrollments SET send_due = ? WHERE id IN (SELECT enrollment FROM temp.lr_due "
                    "WHERE status = 'held' AND carried = 1)",
                    (held_until,),
                )
        c.execute("DELETE FROM temp.lr_due")
        return counts

    def quota_used(self, month: str) -> int:
        """Billed messages (one per recipient of a push or multicast) the engine sent in ``month``."""
        return int(self.get_meta(f"quota.{month}") or 0)

    def add_quota_used(self, month: str, count: int) -> None:
        """``count`` more billed messages in ``month`` (one statement)."""
        if count:
            with self.transaction() as c:
                c.execute(
                    "INSERT INTO meta(key, value) VALUES (:key, :count) ON CONFLICT(key) DO UPDATE SET "
                    "value = CAST(CAST(meta.value AS BIGINT) + :number AS TEXT)",
                    {"key": f"quota.{month}", "count": str(count), "number": count},
                )

    def open_enrollments(self, friend: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM enrollments WHERE friend = ? AND state IN ('active', 'waiting') ORDER BY id", (friend,)
        ).fetchall()

    def due_enrollments(
        self, now: int, limit: int, rules: Sequence[str] | None = None, exclude: bool = False
    ) -> list[WalkRow]:
        """Open enrollments with ``due_at <= now``, earliest first (the partial due index); only
        those of ``rules`` when given (or, with ``exclude``, of every other rule)."""
        cur = self.conn.cursor()
        cur.row_factory = None
        only = ""
        if rules is not None:
            only = f"AND rule {'NOT IN' if exclude else 'IN'} ({','.join('?' * len(rules))}) "
        return list(
            map(
                WalkRow._make,
                cur.execute(
                    f"SELECT {', '.join(WALK_COLUMNS)} FROM enrollments WHERE state IN ('active', 'waiting') "
                    f"AND due_at <= ? {only}ORDER BY due_at, id LIMIT ?",
                    (now, *(rules or ()), limit),
                ).fetchall(),
            )
        )

    def update_enrollments(self, rows: Sequence[Move]) -> None:
        """Batch write of walked enrollments. A walk answers its causing event at most once, so
        its reply token is cleared."""
        self.conn.executemany(
            "UPDATE enrollments SET state = ?, step_id = ?, due_at = ?, finished_at = ?, "
            "exit_reason = ?, cause_seq = NULL, reply_token = NULL WHERE id = ?",
            rows,
        )

    def resume(
        self,
        enrollment_id: int,
        step_id: str | None,
        now: int,
        cause_seq: int | None,
        reply_token: str | None,
        reply_deadline: int | None,
        event_seq: int | None = None,
    ) -> None:
        """A ``wait for`` event (``event_seq``) arrived: continue at ``step_id`` now."""
        self.conn.execute(
            "UPDATE enrollments SET state = 'active', step_id = ?, due_at = ?, cause_seq = ?, "
            "reply_token = ?, reply_deadline = ?, event_seq = COALESCE(?, event_seq) WHERE id = ?",
            (step_id, now, cause_seq, reply_token, reply_deadline, event_seq, enrollment_id),
        )

    def enrollment_rows(self, ids: Sequence[int], now: int) -> list[WalkRow]:
        """Open enrollments among ``ids`` due at or before ``now``."""
        cur = self.conn.cursor()
        cur.row_factory = None
        out: list[WalkRow] = []
        for chunk in _chunks(sorted(ids), 900):
            out += map(
                WalkRow._make,
                cur.execute(
                    f"SELECT {', '.join(WALK_COLUMNS)} FROM enrollments WHERE id IN ({','.join('?' * len(chunk))}) "
                    "AND state IN ('active', 'waiting') AND due_at <= ? ORDER BY id",
                    (*chunk, now),
                ).fetchall(),
            )
        return out

    def exit_enrollments(self, ids: Iterable[int], reason: str, now: int) -> None:
        ids = list(ids)
        if not ids:  # (after most events: nobody's ``exit when`` holds)
            return
        self.conn.executemany(
            "UPDATE enrollments SET state = 'exited', exit_reason = ?, finished_at = ?, due_at = NULL "
            "WHERE id = ? AND state IN ('active', 'waiting')",
            [(reason, now, i) for i in ids],
        )

    def open_positions(self) -> list[tuple[str, str, str | None, str, int]]:
        """(rule, version, step_id, state, count) of all open enrollments, for a rule reload."""
        return [
            tuple(r)
            for r in self.conn.execute(
                "SELECT rule, rule_version, step_id, state, COUNT(*) FROM enrollments "
                "WHERE state IN ('active', 'waiting') GROUP BY rule, rule_version, step_id, state"
            )
        ]

    def move_enrollments(
        self,
        rule: str,
        version: str,
        step_id: str | None,
        state: str,
        new_version: str,
        new_step: str | None,
        new_state: str,
    ) -> int:
        """Carry open enrollments at one (rule, version, step, state) over to a new version."""
        cur = self.conn.execute(
            "UPDATE enrollments SET rule_version = ?, step_id = ?, state = ? "
            "WHERE rule = ? AND rule_version = ? AND step_id IS ? AND state = ?",
            (new_version, new_step, new_state, rule, version, step_id, state),
        )
        return cur.rowcount

    # ------------------------------------------------------------------ sends

    def add_outbox(
        self,
        *,
        kind: str,
        recipients: Sequence[str],
        payload: Any,
        messages: Sequence[str],
        rule: str | None,
        not_before: int,
        now: int,
        reply_token: str | None = None,
        reply_deadline: int | None = None,
    ) -> int:
        """Record one send before it is attempted; the retry key is created here, once."""
        return self.add_outbox_rows(
            [OutboxRow(kind, recipients, payload, messages, rule, not_before, reply_token, reply_deadline)], now
        )[0]

    def add_outbox_rows(self, rows: Sequence[OutboxRow | tuple], now: int) -> list[int]:
        """Record many sends at once, each with a new retry key. Returns their ids, in order.
        Call inside a transaction (the ids are allocated under its write lock). A row may be
        a plain tuple of all the fields of :class:`OutboxRow`, in order."""
        with self.transaction() as c:
            first = c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM outbox").fetchone()[0]
            # a payload shared by many rows (one render, many pushes) and the few distinct
            # message lists are encoded once each (``rows`` keeps the payloads alive: ids stay unique)
            payloads: dict[int, str] = {}
            names: dict[tuple[str, ...], str] = {}
            keys = retry_keys(len(rows))
            values = []
            for i, row in enumerate(rows):
                kind, recipients, value, messages, rule, not_before, reply_token, reply_deadline = row
                if type(value) is Encoded:
                    payload = value.json
                else:
                    payload = payloads.get(id(value))
                    if payload is None:
                        payload = payloads[id(value)] = _json(value)
                key = tuple(messages)
                encoded = names.get(key)
                if encoded is None:
                    encoded = names[key] = _json(list(key))
                values.append(
                    (
                        first + i,
                        kind,
                        f"[{_json_text(recipients[0])}]"
                        if len(recipients) == 1 and type(recipients[0]) is str
                        else _json(list(recipients)),
                        payload,
                        encoded,
                        rule,
                        keys[i],
                        reply_token,
                        reply_deadline,
                        not_before,
                        "pending",
                        now,
                    )
                )
            _insert_many(c, "outbox", _OUTBOX_COLUMNS, values, (7, 8))
        return list(range(first, first + len(rows)))

    def add_deliveries(self, rows: Sequence[Delivery | tuple], outbox_ids: Sequence[int] | None = None) -> None:
        """Delivery rows (a row may be a plain tuple of :class:`Delivery`'s fields, in order).
        With ``outbox_ids``, a row's ``outbox`` is a place in that list (as
        :meth:`add_outbox_rows` returned it) rather than an id."""
        names: dict[tuple, str] = {}
        values = []
        for friend, rule, step_id, enrollment, outbox, messages, status, reason, variant, at, day, counts in rows:
            key = tuple(messages)
            encoded = names.get(key)
            if encoded is None:
                encoded = names[key] = _json(list(key))
            if outbox_ids is not None and outbox is not None:
                outbox = outbox_ids[outbox]
            values.append(
                (friend, rule, step_id, enrollment, outbox, encoded, status, reason, variant, at, day, counts)
            )
        _insert_many(self.conn, "deliveries", _DELIVERY_COLUMNS, values, (4, 7, 8))

    # ------------------------------------------------------------------ outbox (dispatcher side)

    def outbox_due(self, now: int) -> bool:
        """Whether any row is pending (or held) with ``not_before <= now``: a read, no lock."""
        return (
            self.conn.execute(
                "SELECT 1 FROM outbox WHERE status IN ('pending', 'held') AND not_before <= ? LIMIT 1", (now,)
            ).fetchone()
            is not None
        )

    def claim_outbox(
        self,
        now: int,
        limit: int,
        *,
        reply_limit: int | None = None,
        other_limit: int | None = None,
        lease: tuple[str, int, int] | None = None,
    ) -> list[dict]:
        """Pending (or held) rows with ``not_before <= now``, replies first (their token is
        short-lived), as dicts with decoded ``recipients``/``payload``/``messages`` and
        ``friend`` (the first recipient): up to ``reply_limit`` replies and ``other_limit``
        other rows (each defaults to ``limit``), at most ``limit`` rows in all.

        With ``lease`` (owner, epoch, ttl) the claim is fenced: it raises :class:`LeaseLost`
        unless that owner and epoch still hold the lease (one that expired while nobody took
        it over is extended by ``ttl``), and the rows record the epoch so that only this
        runner may store their outcome (:meth:`finish_outbox`, :meth:`hold_outbox`); a claimed
        row stays out of this Store's later claims until it is finished, held or
        :meth:`release_claims`. Without ``lease`` a claimed row is handed out again after 60 s.
        A new process (after a crash) claims rows left in flight at once, with the same retry
        key, so LINE answers 409 for what it had already accepted."""
        with self._lock:
            if lease is None:
                self._inflight = {k: t for k, t in self._inflight.items() if t > now - 60}
            skip = list(self._inflight)
            reply_limit = limit if reply_limit is None else min(reply_limit, limit)
            other_limit = limit if other_limit is None else min(other_limit, limit)
            ask = _Claim(now, limit, reply_limit, other_limit, lease, skip)
            rows = self._claim_outbox_pg(ask) if self.pg else self._claim_outbox_rows(ask)
            self._inflight.update((r["id"], now) for r in rows)
        out = []
        for r in rows:
            d = dict(r)
            # the JSON as stored, for a request body made without encoding the messages again
            d["encoded"] = (d["recipients"], d["payload"])
            for key in ("recipients", "payload", "messages"):
                d[key] = json.loads(d[key])
            d["friend"] = d["recipients"][0] if d["recipients"] else None
            if d["kind"] == "menu_link":
                d["rich_menu_id"] = d["payload"].get("richMenuId")
            out.append(d)
        return out

    def _claim_outbox_rows(self, ask: _Claim) -> list[dict]:
        """SQLite's claim (one runner): the rows as claimed."""
        now, limit, reply_limit, other_limit, lease, skip = ask
        with self.transaction() as c:
            epoch = None
            if lease is not None:
                epoch = self._check_lease(c, lease, now)
            rows = []
            for kind, cap in (("AND kind = 'reply' ", reply_limit), ("AND kind != 'reply' ", other_limit)):
                cap = min(cap, limit - len(rows))
                if cap <= 0:
                    continue
                marks = ",".join("?" * len(skip))
                rows += c.execute(
                    "SELECT * FROM outbox WHERE status IN ('pending', 'held') AND not_before <= ? "
                    + kind
                    + (f"AND id NOT IN ({marks}) " if skip else "")
                    + "ORDER BY not_before, id LIMIT ?",
                    (now, *skip, cap),
                ).fetchall()
            for batch in _chunks([r["id"] for r in rows], 500):
                c.execute(
                    "UPDATE outbox SET claimed_at = ?, claim_epoch = ?, attempts = attempts + 1 "
                    f"WHERE id IN ({','.join('?' * len(batch))})",
                    (now, epoch, *batch),
                )
        claimed = []
        for r in rows:
            d = dict(r)
            d["attempts"] += 1
            d["claimed_at"], d["claim_epoch"] = now, epoch
            claimed.append(d)
        return claimed

    def _claim_outbox_pg(self, ask: _Claim) -> list:
        """PostgreSQL's claim: one statement per kind of row (one for both when both limits
        fit in ``limit``), without the schema's write lock. ``FOR UPDATE SKIP LOCKED`` keeps two
        runners claiming at once from taking the same row; a row another live member claimed
        (its member lock held, read from ``pg_locks`` in the statement) stays its own; the lease
        is checked in the same statement. Returns the rows as claimed, in claiming order (replies
        first, then by ``not_before`` and id)."""
        now, limit, reply_limit, other_limit, lease, skip = ask
        if reply_limit + other_limit <= limit:
            rows = self._claim_pg(now, reply_limit, other_limit, lease, skip)
        else:
            rows = self._claim_pg(now, reply_limit, 0, lease, skip)
            rows += self._claim_pg(now, 0, min(other_limit, limit - len(rows)), lease, skip)
        if not rows and lease is not None:
            # nothing came back: was it the lease? (this runner's own member row: no schema lock)
            with self.transaction(rows_only=True) as c:
                self._check_lease(c, lease, now)
        return sorted(rows, key=lambda r: (r["kind"] != "reply", r["not_before"], r["id"]))

    def _claim_pg(
        self, now: int, replies: int, others: int, lease: tuple[str, int, int] | None, skip: list[int]
    ) -> list:
        if replies <= 0 and others <= 0:
            return []
        due = (
            "SELECT id FROM outbox WHERE status IN ('pending', 'held') AND not_before <= ? AND {kind} "
            "AND id <> ALL(?) AND (claim_epoch IS NULL OR claim_epoch NOT IN (SELECT epoch FROM theirs)) "
            "ORDER BY not_before, id LIMIT ? FOR UPDATE SKIP LOCKED"
        )
        held = "SELECT 1 FROM lease WHERE name = ? AND owner = ? AND epoch = ?" if lease is not None else "SELECT 1"
        sql = (
            f"WITH held AS ({held}), theirs AS ({_MEMBER_LOCKS} AND pid <> pg_backend_pid()), "
            f"replies AS ({due.format(kind='kind = ' + repr('reply'))}), "
            f"others AS ({due.format(kind='kind <> ' + repr('reply'))}) "
            "UPDATE outbox SET claimed_at = ?, claim_epoch = ?, attempts = attempts + 1 "
            "WHERE EXISTS (SELECT 1 FROM held) AND id = ANY(ARRAY(SELECT id FROM replies) || ARRAY(SELECT id FROM others)) "
            "RETURNING *"
        )
        epoch = None if lease is None else lease[1]
        args = (
            *(() if lease is None else (self.dispatch_lease(lease[0]), lease[0], lease[1])),
            self._lock_class("member"),
            now,
            skip,
            max(replies, 0),
            now,
            skip,
            max(others, 0),
            now,
            epoch,
        )
        return self.conn.execute(sql, args).fetchall()

    def _check_lease(self, c: sqlite3.Connection, lease: tuple[str, int, int], now: int) -> int:
        owner, epoch, ttl = lease
        name = self.dispatch_lease(owner)
        row = c.execute("SELECT owner, epoch, expires_at FROM lease WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] != owner or row[1] != epoch:
            holder = f"{row[0]} (epoch {row[1]})" if row is not None else "nobody"
            raise LeaseLost(f"lost the lease (epoch {epoch}); holder now: {holder}")
        if row[2] <= now:
            c.execute("UPDATE lease SET expires_at = ? WHERE name = ?", (now + ttl, name))
        return epoch

    def release_claims(self, ids: Iterable[int]) -> None:
        """Forget this Store's in-flight marks of ``ids`` (their outcome could not be stored)."""
        with self._lock:
            for i in ids:
                self._inflight.pop(i, None)

    def mark_sending(self, outbox_id: int, epoch: int | None, now: int) -> bool:
        """Just before a request that cannot be repeated safely (a reply: no retry key) goes
        out: record durably that the row may have reached LINE (``ambiguous``), so that a
        process that crashes mid-request leaves the truth behind. False (send nothing) when the
        row is no longer this runner's (fenced) or no longer due."""
        with self.transaction() as c:
            fence = ""
            args: tuple = (outbox_id,)
            if epoch is not None:
                if c.execute("SELECT 1 FROM lease WHERE epoch = ?", (epoch,)).fetchone() is None:
                    return False
                fence, args = " AND claim_epoch = ?", (outbox_id, epoch)
            cur = c.execute(
                "UPDATE outbox SET ambiguous = 1 WHERE id = ? AND status IN ('pending', 'held')" + fence, args
            )
            return cur.rowcount == 1

    def finish_outbox(
        self,
        outbox_id: int,
        status: str,
        request_id: str | None = None,
        error: str | None = None,
        at: int | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        """Final outcome of a row (sent, duplicate, rejected, unconfirmed, dry_run) with its
        reason; its deliveries follow. With ``epoch`` only a row still claimed under that epoch
        is written (fencing); returns whether it was."""
        return bool(self.finish_outbox_rows([(outbox_id, status, request_id, error)], at, epoch=epoch))

    def finish_outbox_rows(
        self,
        outcomes: Sequence[tuple[int, str, str | None, str | None]],
        at: int | None = None,
        *,
        epoch: int | None = None,
    ) -> set[int]:
        """Final outcomes of many rows in one transaction, each ``(id, status, request_id,
        error)`` as :meth:`finish_outbox` takes them; returns the ids written (with ``epoch``,
        only rows still claimed under it). A row and its deliveries are written together or
        not at all. Row by row, with statements SQLite runs in one pass over each row's
        delivery rows: a set-based form (``IN (SELECT value FROM json_each(?))``) was measured
        a third slower for a broadcast's multicasts of 500."""
        at = int(self._time()) if at is None else at
        written: set[int] = set()
        if not outcomes:
            return written
        fence, args = ("", ()) if epoch is None else (" AND claim_epoch = ?", (epoch,))
        if self.pg:
            return self._finish_outbox_set(outcomes, at, fence, args)
        with self.transaction() as c:
            for outbox_id, status, request_id, error in outcomes:
                self._inflight.pop(outbox_id, None)
                cur = c.execute(
                    "UPDATE outbox SET status = ?, request_id = COALESCE(?, request_id), "
                    "last_error = ?, sent_at = ? WHERE id = ?" + fence,
                    (status, request_id, error, at, outbox_id, *args),
                )
                if cur.rowcount != 1:
                    continue
                written.add(outbox_id)
                delivered = "sent" if status in ("sent", "duplicate", "dry_run") else status
                c.execute(
                    "UPDATE deliveries SET status = ?, reason = COALESCE(?, reason) WHERE outbox_id = ?",
                    (delivered, error, outbox_id),
                )
                # A delivery's time stays the moment it was decided unless it went out later than
                # SEND_TIME_SLACK (held, retried): moving ``at`` rewrites the (rule, at) index entry
                # of every row, most of the cost of finishing a multicast's 500 rows.
                c.execute(
                    "UPDATE deliveries SET at = ? WHERE outbox_id = ? AND at < ?",
                    (at, outbox_id, at - SEND_TIME_SLACK),
                )
        return written

    def _finish_outbox_set(
        self, outcomes: Sequence[tuple[int, str, str | None, str | None]], at: int, fence: str, args: tuple
    ) -> set[int]:
        """:meth:`finish_outbox_rows` in two statements per batch (PostgreSQL, where each
        statement is a round trip to the server): the same rows written, the same values."""
        written: set[int] = set()
        # only this runner writes the rows it claimed (fenced by its epoch) and their deliveries
        with self.transaction(rows_only=True) as c:
            for batch in _chunks(list(outcomes), 500):
                for outbox_id, *_ in batch:
                    self._inflight.pop(outbox_id, None)
                values = ",".join("(?, ?, ?, ?)" for _ in batch)
                done = c.execute(
                    "UPDATE outbox SET status = v.status, request_id = COALESCE(v.request_id, outbox.request_id), "
                    f"last_error = v.error, sent_at = ? FROM (VALUES {values}) AS v(id, status, request_id, error) "
                    "WHERE outbox.id = v.id"
                    + fence.replace("claim_epoch", "outbox.claim_epoch")
                    + " RETURNING outbox.id",
                    (at, *(x for o in batch for x in o), *args),
                ).fetchall()
                ids = {r[0] for r in done}
                written |= ids
                rows = [
                    (i, "sent" if status in ("sent", "duplicate", "dry_run") else status, error)
                    for i, status, _, error in batch
                    if i in ids
                ]
                if not rows:
                    continue
                values = ",".join("(?, ?, ?)" for _ in rows)
                c.execute(
                    "UPDATE deliveries SET status = v.status, reason = COALESCE(v.error, deliveries.reason), "
                    "at = CASE WHEN deliveries.at < ? THEN ? ELSE deliveries.at END "
                    f"FROM (VALUES {values}) AS v(outbox_id, status, error) WHERE deliveries.outbox_id = v.outbox_id",
                    (at - SEND_TIME_SLACK, at, *(x for r in rows for x in r)),
                )
        return written

    def hold_outbox(
        self, outbox_id: int, until: int, error: str | None = None, *, ambiguous: bool = False, epoch: int | None = None
    ) -> bool:
        """Not sent now (rate limit, quota, a transient error, the token): try again at
        ``until``. ``ambiguous``: a request of this attempt may have been processed; once set
        it stays set (a later 429 or 500 says nothing about the earlier request). With
        ``epoch`` only a row still claimed under that epoch is written; returns whether it was.

        A row whose request may have reached LINE (``ambiguous``), that no delivery row refers
        to, or that is held for less than :data:`HANDBACK_AFTER` seconds, is kept and goes out
        again byte-identical with its retry key. Any other row made by the deliver stage is
        handed back to it: the row is ``returned`` (never claimed again), its deliveries are
        removed, and its sends are decided anew at ``until`` (a friend who blocked meanwhile
        gets nothing, the cap and the rendering apply then)."""
        with self.transaction() as c:
            self._inflight.pop(outbox_id, None)
            fence, args = ("", ()) if epoch is None else (" AND claim_epoch = ?", (epoch,))
            row = c.execute(
                "SELECT ambiguous, kind, COALESCE(claimed_at, created_at) FROM outbox WHERE id = ? "
                "AND status IN ('pending', 'held')" + fence,
                (outbox_id, *args),
            ).fetchone()
            if row is None:
                return False
            back = (
                not row[0]
                and not ambiguous
                and row[1] in ("push", "multicast", "reply")
                and until - (row[2] or 0) >= HANDBACK_AFTER
                and c.execute("SELECT 1 FROM deliveries WHERE outbox_id = ? LIMIT 1", (outbox_id,)).fetchone()
                is not None
            )
            if back:
                # the sends again as intents, rebuilt from their delivery rows (the deliver stage
                # splits a coalesced group into its steps again)
                c.execute(
                    "INSERT INTO intents(enrollment, friend, rule, steps, messages, due_at, queued_at, variant, "
                    "holdout, occurrence, event_seq, answer) SELECT d.enrollment, d.friend, d.rule, "
                    "json_array(json_array(d.step_id, json(d.messages))), d.messages, :until, d.at, d.variant, 0, "
                    "e.occurrence, e.event_seq, CASE WHEN d.reason = 'answer' THEN 1 ELSE 0 END FROM deliveries d "
                    "LEFT JOIN enrollments e ON e.id = d.enrollment WHERE d.outbox_id = :id ORDER BY d.id",
                    {"until": until, "id": outbox_id},
                )
                c.execute("DELETE FROM deliveries WHERE outbox_id = ?", (outbox_id,))
                c.execute(
                    "UPDATE outbox SET status = 'returned', claimed_at = NULL, "
                    "last_error = COALESCE(?, last_error) WHERE id = ?",
                    (error, outbox_id),
                )
                return True
            cur = c.execute(
                "UPDATE outbox SET status = 'held', not_before = ?, claimed_at = NULL, "
                "ambiguous = MAX(ambiguous, ?), last_error = COALESCE(?, last_error) "
                "WHERE id = ? AND status IN ('pending', 'held')" + fence,
                (until, int(ambiguous), error, outbox_id, *args),
            )
            return cur.rowcount == 1

    def outbox_backlog(self) -> int:
        """Rows not yet finished (pending or held)."""
        return self.conn.execute("SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'held')").fetchone()[0]

    def next_outbox_at(self, after: int) -> int | None:
        return self.conn.execute(_NEXT_WORK["outbox"], {"after": after}).fetchone()[0]

    def outbox(self, status: str | None = None) -> list[dict]:
        """All outbox rows (decoded), in id order; for reports, tests and the simulator."""
        sql, args = "SELECT * FROM outbox", ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        out = []
        for r in self.conn.execute(sql + " ORDER BY id", args):
            d = dict(r)
            for key in ("recipients", "payload", "messages"):
                d[key] = json.loads(d[key])
            out.append(d)
        return out

    def health(self) -> dict:
        """Numbers for ``/healthz`` and logs."""
        one = lambda sql: self.conn.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "schema_version": self.schema_version,
            # current friends only (SPEC §2.2): ids known from shop events alone are not friends
            "friends": one("SELECT COUNT(*) FROM friends WHERE followed_at IS NOT NULL AND blocked_at IS NULL"),
            "open_enrollments": one("SELECT COUNT(*) FROM enrollments WHERE state IN ('active', 'waiting')"),
            "suspended_enrollments": one("SELECT COUNT(*) FROM enrollments WHERE state = 'suspended'"),
            "pending_events": one("SELECT COUNT(*) FROM events WHERE processed_at IS NULL"),
            "failed_events": one("SELECT COUNT(*) FROM events WHERE error IS NOT NULL"),
            "outbox_backlog": self.outbox_backlog(),
            "oldest_pending_send": one("SELECT MIN(not_before) FROM outbox WHERE status IN ('pending', 'held')"),
            "waiting_sends": self.waiting_sends(),
            "next_waiting_send": self.next_waiting_send(),
            "last_tick": int(self.get_meta("engine.last_tick") or 0) or None,
        }

    # ------------------------------------------------------------------ lease

    def acquire_lease(self, owner: str, now: int, ttl: int) -> bool:
        """Take (or extend) the one-runner lease; False while another owner holds it. A new
        owner gets a new epoch (:meth:`lease_epoch`), never one used before on this file."""
        with self.transaction() as c:
            row = c.execute("SELECT owner, expires_at, epoch FROM lease WHERE name = 'runner'").fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            self._take_runner_lease(c, row, owner, now, ttl)
            return True

    def _take_runner_lease(self, c, row, owner: str, now: int, ttl: int) -> None:
        """Extend ``owner``'s ``runner`` lease (``row``: the lease as it is, or None), or give
        it to ``owner`` with a new epoch."""
        if row is not None and row[0] == owner:
            c.execute("UPDATE lease SET expires_at = ? WHERE name = 'runner'", (now + ttl,))
            return
        c.execute(
            "INSERT INTO lease(name, owner, expires_at, epoch) VALUES ('runner', ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at, epoch = excluded.epoch",
            (owner, now + ttl, self._new_epoch()),
        )

    def lease_epoch(self, owner: str) -> int | None:
        """The epoch ``owner`` claims outbox rows under (:meth:`dispatch_lease`; None when
        ``owner`` does not hold it)."""
        row = self.conn.execute(
            "SELECT epoch FROM lease WHERE name = ? AND owner = ?", (self.dispatch_lease(owner), owner)
        ).fetchone()
        return None if row is None else row[0]

    def dispatch_lease(self, owner: str) -> str:
        """The lease that fences ``owner``'s outbox claims: on SQLite the one runner's lease;
        on PostgreSQL each runner's own membership (:meth:`join_cluster`)."""
        return f"member:{owner}" if self.pg else "runner"

    def _new_epoch(self) -> int:
        """An epoch never used before in this database (inside a transaction)."""
        row = self.conn.execute("SELECT MAX(epoch) FROM lease").fetchone()
        epoch = max(int(self.get_meta("lease.epoch") or 0), row[0] or 0) + 1
        self.set_meta("lease.epoch", str(epoch))
        return epoch

    # ------------------------------------------------------------------ several runners (PostgreSQL)
    #
    # Every runner is a member: a ``member:OWNER`` lease row with its own epoch, and a session
    # advisory lock (class: the schema, object: the epoch) held by its connection for as long as
    # it lives. A runner killed by SIGKILL loses its connection and PostgreSQL drops the lock at
    # once: its claimed outbox rows are free for the others within a second (claim_outbox skips
    # only rows claimed under an epoch whose lock is held). One member at a time leads (the
    # engine's session lock, :meth:`try_lead`): it alone runs the ticks.

    def _lock_class(self, what: str) -> int:
        """The 32-bit class of this schema's advisory locks for ``what`` (asked of the server
        once: every claim reads the member class)."""
        found = self._lock_classes.get(what)
        if found is None:
            query = "SELECT hashtext(? || current_schema())"
            found = self._lock_classes[what] = self.conn.execute(query, (f"linerules.{what}:",)).fetchone()[0]
        return found

    def join_cluster(self, owner: str, now: int, ttl: int) -> int:
        """Become a member (PostgreSQL): a new epoch under ``member:OWNER``, locked by this
        connection while it lives; returns the epoch. Rows of members that are gone are removed."""
        with self.transaction() as c:
            self._drop_gone_members(c)
            epoch = self._new_epoch()
            c.execute(
                "INSERT INTO lease(name, owner, expires_at, epoch) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at, epoch = excluded.epoch",
                (self.dispatch_lease(owner), owner, now + ttl, epoch),
            )
            c.execute("SELECT pg_advisory_lock(?, ?)", (self._lock_class("member"), epoch))
        self._member = (owner, epoch, ttl)
        return epoch

    def _live_epochs(self) -> list[int]:
        """Epochs whose member lock is held now."""
        rows = self.conn.execute(_MEMBER_LOCKS, (self._lock_class("member"),)).fetchall()
        return [int(r[0]) for r in rows]

    def _drop_gone_members(self, c) -> None:
        live = self._live_epochs()
        marks = ",".join("?" * len(live))
        c.execute(
            "DELETE FROM lease WHERE name LIKE 'member:%'" + (f" AND epoch NOT IN ({marks})" if live else ""), live
        )

    def try_lead(self, owner: str, now: int, ttl: int) -> bool:
        """Lead the ticks (PostgreSQL): take the engine's session lock if nobody holds it, and
        with it the ``runner`` lease (a new epoch). True while this connection leads."""
        got = self.conn.execute("SELECT pg_try_advisory_lock(?, 0)", (self._lock_class("engine"),)).fetchone()[0]
        if not got:
            return False
        self._lead_generation = self.conn.generation
        with self.transaction() as c:
            row = c.execute("SELECT owner FROM lease WHERE name = 'runner'").fetchone()
            self._take_runner_lease(c, row, owner, now, ttl)
        if row is not None and row[0] != owner:
            log.warning("leading the ticks of %s (the last leader, %s, is gone)", redact_url(self.path), row[0])
        return True

    def leads(self) -> bool:
        """Whether this store's session still holds the engine's lock (:meth:`try_lead`): False
        once the server closed the session that took it (asked of the server: a session that
        ended is noticed here, not in the middle of the next tick)."""
        if not self.pg:
            return True
        if self._lead_generation is None:
            return False
        try:
            self.conn.execute("SELECT 1")
        except (StoreError, sqlite3.Error):
            return False
        return self._lead_generation == self.conn.generation

    def cluster(self) -> dict:
        """The runners of this database now (``/healthz``, ``/metrics``): who leads, and how
        many are members (PostgreSQL; on SQLite one runner at most)."""
        leader = self.lease_holder()
        if not self.pg:
            return {"leader": leader, "runners": 1 if leader else 0}
        return {"leader": leader, "runners": len(self._live_epochs())}

    def notify(self, channel: str) -> None:
        """Wake the other runners listening on ``channel`` (PostgreSQL ``NOTIFY``; nothing on
        SQLite, where one runner wakes its own loops)."""
        if self.pg:
            self.conn.execute("SELECT pg_notify(? || current_schema(), '')", (f"linerules_{channel}_",))

    def renew_lease(self, owner: str, now: int, ttl: int) -> bool:
        """Extend the lease; False if it is no longer ours (another runner took it)."""
        with self.transaction() as c:
            cur = c.execute("UPDATE lease SET expires_at = ? WHERE name = 'runner' AND owner = ?", (now + ttl, owner))
            return cur.rowcount == 1

    def release_lease(self, owner: str) -> None:
        """Give up ``owner``'s leases (the runner's, and on PostgreSQL its membership)."""
        with self.transaction() as c:
            c.execute(
                "DELETE FROM lease WHERE name IN ('runner', ?) AND owner = ?", (self.dispatch_lease(owner), owner)
            )

    def lease_holder(self) -> str | None:
        row = self.conn.execute("SELECT owner FROM lease WHERE name = 'runner'").fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ suspended enrollments

    def suspend_rule(self, rule: str, now: int) -> int:
        """A reload dropped ``rule``: its open enrollments keep their place but stop."""
        cur = self.conn.execute(
            "UPDATE enrollments SET suspended_state = state, state = 'suspended', suspended_at = ? "
            "WHERE rule = ? AND state IN ('active', 'waiting')",
            (now, rule),
        )
        return cur.rowcount

    def unsuspend_rule(self, rule: str) -> int:
        """``rule`` is back: its suspended enrollments continue where they were."""
        cur = self.conn.execute(
            "UPDATE enrollments SET state = suspended_state, suspended_state = NULL, suspended_at = NULL "
            "WHERE rule = ? AND state = 'suspended'",
            (rule,),
        )
        return cur.rowcount

    def end_suspended(self, before: int, now: int, reason: str = "rule_removed") -> int:
        """End the enrollments suspended before ``before`` (their rule did not come back)."""
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE enrollments SET state = 'exited', exit_reason = ?, finished_at = ?, due_at = NULL, "
                "suspended_state = NULL WHERE state = 'suspended' AND suspended_at <= ?",
                (reason, now, before),
            )
            return cur.rowcount

    def suspended_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM enrollments WHERE state = 'suspended'").fetchone()[0]

    # ================================================================== the shop side
    # Customer <-> friend links, orders by id, account-link nonces (migration 5). What to do
    # with them is engine/runtime/identity.py's business; these are its reads and writes, called inside
    # the caller's :meth:`transaction` (unless a method says otherwise). Customer ids are given
    # already normalised (:func:`engine.runtime.events.customer_key`).

    def linked_friend(self, customer: str) -> str | None:
        """The friend ``customer`` is linked to."""
        row = self.conn.execute("SELECT friend FROM customer_links WHERE customer = ?", (customer,)).fetchone()
        return row[0] if row else None

    def linked_friends(self, customers: Iterable[str]) -> dict[str, str]:
        """customer -> friend for those of ``customers`` that are linked."""
        out: dict[str, str] = {}
        for chunk in _chunks(sorted(set(customers)), 500):
            out.update(
                self.conn.execute(
                    f"SELECT customer, friend FROM customer_links WHERE customer IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            )
        return out

    def linked_customer(self, friend: str) -> str | None:
        """The customer linked to ``friend``."""
        row = self.conn.execute("SELECT customer FROM customer_links WHERE friend = ?", (friend,)).fetchone()
        return row[0] if row else None

    def put_link(self, customer: str, friend: str, via: str, at: int) -> None:
        """Link ``customer`` and ``friend``, dropping any other link either of them had."""
        self.conn.execute("DELETE FROM customer_links WHERE customer = ? OR friend = ?", (customer, friend))
        self.conn.execute(
            "INSERT INTO customer_links(customer, friend, via, linked_at) VALUES (?, ?, ?, ?)",
            (customer, friend, via, at),
        )

    def delete_link(self, customer: str) -> None:
        self.conn.execute("DELETE FROM customer_links WHERE customer = ?", (customer,))

    def add_link_history(self, customer: str, friend: str, action: str, via: str, at: int) -> None:
        """One line of the link history (linked, moved, replaced, unlinked)."""
        self.conn.execute(
            "INSERT INTO link_history(customer, friend, action, via, at) VALUES (?, ?, ?, ?, ?)",
            (customer, friend, action, via, at),
        )

    def adopt_kept_orders(self, customer: str, friend: str) -> list[str]:
        """The customer's kept orders (counting for nobody) now count for ``friend``; their ids."""
        ids = [
            r[0]
            for r in self.conn.execute("SELECT order_id FROM orders WHERE customer = ? AND friend IS NULL", (customer,))
        ]
        self.conn.executemany("UPDATE orders SET friend = ? WHERE order_id = ?", [(friend, i) for i in ids])
        return ids

    def release_orders(self, customer: str, friend: str) -> list[str]:
        """The customer's orders counting for ``friend`` through the link (not those naming the
        friend itself) are kept for the customer again; their ids."""
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT order_id FROM orders WHERE customer = ? AND friend = ? AND direct = 0", (customer, friend)
            )
        ]
        self.conn.executemany("UPDATE orders SET friend = NULL WHERE order_id = ?", [(i,) for i in ids])
        return ids

    def kept_events(self, customer: str) -> list[KeptEvent]:
        """The processed events kept for ``customer`` (stored without a friend), in (at, seq) order."""
        return [
            KeptEvent(seq, kind, at, json.loads(data))
            for seq, kind, at, data in self.conn.execute(
                "SELECT seq, type, at, data FROM events WHERE friend = '' AND json_extract(data, '$.customer') = ? "
                "AND processed_at IS NOT NULL ORDER BY at, seq",
                (customer,),
            )
        ]

    def set_events_friend(self, seqs: Iterable[int], friend: str) -> None:
        """Record these events (stored without a friend) under ``friend``."""
        self.conn.executemany("UPDATE events SET friend = ? WHERE seq = ?", [(friend, seq) for seq in seqs])

    def put_nonce(self, nonce: str, customer: str, now: int) -> None:
        """Remember (in its own transaction) that ``nonce`` stands for ``customer``, unused."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO link_nonces(nonce, customer, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(nonce) DO UPDATE SET customer = excluded.customer, "
                "created_at = excluded.created_at, used_at = NULL",
                (nonce, customer, now),
            )

    def take_nonce(self, nonce: str, now: int) -> str | None:
        """The customer of an unused ``nonce``, marking it used; None when unknown or used."""
        row = self.conn.execute(
            "SELECT customer FROM link_nonces WHERE nonce = ? AND used_at IS NULL", (nonce,)
        ).fetchone()
        if row is None:
            return None
        self.conn.execute("UPDATE link_nonces SET used_at = ? WHERE nonce = ?", (now, nonce))
        return row[0]

    def _order_field(self, column: str, ref: str) -> str | None:
        """``column`` of the order known by the id ``ref`` or by the shop system's own id."""
        row = self.conn.execute(
            f"SELECT {column} FROM orders WHERE order_id = ? UNION ALL "
            f"SELECT {column} FROM orders WHERE external_id = ? LIMIT 1",
            (ref, ref),
        ).fetchone()
        return row[0] if row else None

    def find_order(self, ref: str) -> str | None:
        """The id of the order known by the id ``ref`` or by the shop system's own id ``ref``."""
        return self._order_field("order_id", ref)

    def order_owner(self, ref: str) -> str | None:
        """The friend the order ``ref`` (its id or the shop system's id) counts for."""
        return self._order_field("friend", ref)

    def order_customer(self, order_id: str) -> str | None:
        """The customer of an order, when the order names one."""
        row = self.conn.execute(
            "SELECT customer FROM orders WHERE order_id = ? AND customer IS NOT NULL", (order_id,)
        ).fetchone()
        return row[0] if row else None

    def order(self, order_id: str) -> dict | None:
        """The stored order as a dict (``items`` decoded), or None."""
        row = self.conn.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["items"] = json.loads(out["items"])
        return out

    def order_states(self, order_ids: Iterable[str]) -> dict[str, OrderState]:
        """The stored state of those of ``order_ids`` that are stored (a refund that came before
        its order is stored with ``amount`` None)."""
        return {
            r[0]: OrderState(r[0], r[1], r[2], bool(r[3]), r[4], r[5])
            for r in self.conn.execute(
                "SELECT o.order_id, o.amount, o.refunded, o.cancelled, o.friend, o.external_id FROM json_each(?) t "
                "CROSS JOIN orders o ON o.order_id = t.value",
                (_ids_json(order_ids),),
            )
        }

    def order_exists(self, order_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM orders WHERE order_id = ?", (order_id,)).fetchone() is not None

    def insert_orders(self, orders: Sequence[OrderRecord], now: int) -> None:
        """Store new orders (none of their ids is stored yet)."""
        self.conn.executemany(
            "INSERT INTO orders(order_id, customer, friend, direct, at, amount, items, source, external_id, "
            "refunded, cancelled, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    o.order_id,
                    o.customer,
                    o.friend,
                    int(o.direct),
                    o.at,
                    o.amount,
                    _items_json(o.items),
                    o.source,
                    o.external_id,
                    o.refunded,
                    int(o.cancelled),
                    now,
                )
                for o in orders
            ],
        )

    def complete_orders(self, orders: Sequence[OrderRecord]) -> None:
        """Orders whose refund came first (stored without an amount) get their data; refunds
        and cancellations already stored are kept when larger."""
        self.conn.executemany(
            "UPDATE orders SET customer = COALESCE(?, customer), friend = ?, direct = ?, at = ?, amount = ?, "
            "items = ?, source = ?, external_id = ?, refunded = MAX(refunded, ?), cancelled = MAX(cancelled, ?) "
            "WHERE order_id = ?",
            [
                (
                    o.customer,
                    o.friend,
                    int(o.direct),
                    o.at,
                    o.amount,
                    _items_json(o.items),
                    o.source,
                    o.external_id,
                    o.refunded,
                    int(o.cancelled),
                    o.order_id,
                )
                for o in orders
            ],
        )

    def set_refunds(self, refunds: Sequence[OrderRefund]) -> None:
        """Set how much of these orders is refunded and whether they are cancelled."""
        self.conn.executemany(
            "UPDATE orders SET refunded = ?, cancelled = ? WHERE order_id = ?",
            [(r.refunded, int(r.cancelled), r.order_id) for r in refunds],
        )

    def set_external_ids(self, pairs: Sequence[tuple[str, str]]) -> None:
        """(order_id, external_id): the shop system's own id of orders stored without one."""
        self.conn.executemany(
            "UPDATE orders SET external_id = ? WHERE order_id = ? AND external_id IS NULL",
            [(external, order_id) for order_id, external in pairs],
        )

    def cancel_refunded_in_full(self, order_ids: Iterable[str]) -> None:
        """Those of these orders refunded in full no longer count as orders."""
        self.conn.execute(
            "UPDATE orders SET cancelled = 1 WHERE order_id IN (SELECT value FROM json_each(?)) "
            "AND amount > 0 AND refunded >= amount AND cancelled = 0",
            (_ids_json(order_ids),),
        )

    def take_early_refunds(self, order_ids: Iterable[str]) -> dict[str, OrderRefund]:
        """Refunds stored before their order under these ids (no amount yet): returned and
        removed, for the arriving order to take in."""
        early = {
            r[0]: OrderRefund(r[0], r[1], bool(r[2]))
            for r in self.conn.execute(
                "SELECT o.order_id, o.refunded, o.cancelled FROM json_each(?) t CROSS JOIN orders o "
                "ON o.order_id = t.value WHERE o.amount IS NULL",
                (_ids_json(order_ids),),
            )
        }
        if early:
            self.conn.execute(
                "DELETE FROM orders WHERE order_id IN (SELECT value FROM json_each(?)) AND amount IS NULL",
                (_ids_json(early),),
            )
        return early

    def add_early_refund(
        self, order_id: str, *, customer: str | None, friend: str | None, at: int, refunded: float, cancelled: bool
    ) -> None:
        """Keep a refund (or cancellation) of an order not stored yet, under the order's id."""
        self.conn.execute(
            "INSERT INTO orders(order_id, customer, friend, direct, at, amount, refunded, cancelled, "
            "source, created_at) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, 'refund', ?)",
            (order_id, customer, friend, int(bool(friend)), at, refunded, int(cancelled), at),
        )

    def project_orders(self, order_ids: Iterable[str], *, fresh: bool = False) -> None:
        """Redo the activity rows of these orders from ``orders``: one ``order`` row (its amount
        less refunds) and one ``purchase`` row per item, or ``order_cancelled`` /
        ``purchase_cancelled`` rows for an order that no longer counts (no condition reads those).
        ``fresh``: the orders are new, so there are no rows to remove."""
        ids = list(dict.fromkeys(order_ids))
        if not ids:
            return
        c = self.conn
        batch = _ids_json(ids)
        if not fresh:
            self.changed_query(
                "SELECT DISTINCT friend FROM activity WHERE order_id IN (SELECT value FROM json_each(?))", (batch,)
            )
            c.execute("DELETE FROM activity WHERE order_id IN (SELECT value FROM json_each(?))", (batch,))
        self.changed_query(
            "SELECT DISTINCT o.friend FROM json_each(?) t CROSS JOIN orders o ON o.order_id = t.value "
            "WHERE o.friend IS NOT NULL",
            (batch,),
        )
        c.execute(
            "INSERT INTO activity(friend, kind, amount, at, order_id) "
            "SELECT o.friend, CASE WHEN o.cancelled <> 0 THEN 'order_cancelled' ELSE 'order' END, "
            "MAX(o.amount - o.refunded, 0), o.at, o.order_id FROM json_each(?) t "
            "CROSS JOIN orders o ON o.order_id = t.value WHERE o.friend IS NOT NULL AND o.amount IS NOT NULL "
            "ORDER BY o.at",
            (batch,),
        )
        c.execute(
            "INSERT INTO activity(friend, kind, product, category, amount, at, order_id) "
            "SELECT o.friend, CASE WHEN o.cancelled <> 0 THEN 'purchase_cancelled' ELSE 'purchase' END, "
            "json_extract(j.value, '$.product'), json_extract(j.value, '$.category'), "
            "CAST(json_extract(j.value, '$.price') AS NUMERIC) * "
            "COALESCE(CAST(json_extract(j.value, '$.quantity') AS NUMERIC), 1), o.at, o.order_id "
            "FROM json_each(?) t CROSS JOIN orders o ON o.order_id = t.value, json_each(o.items) j "
            "WHERE o.friend IS NOT NULL AND o.amount IS NOT NULL ORDER BY o.at",
            (batch,),
        )

    def recount_purchases(self, friends: Iterable[str]) -> None:
        """Recompute ``orders``, ``total_spent`` and ``last_purchase_at`` of these friends from
        their ``order`` activity rows."""
        ids = list(dict.fromkeys(f for f in friends if f))
        if not ids:
            return
        self.conn.execute(
            "UPDATE friends SET orders = s.n, total_spent = s.total, last_purchase_at = s.last FROM "
            "(SELECT t.value AS id, COUNT(a.id) AS n, COALESCE(SUM(a.amount), 0) AS total, MAX(a.at) AS last "
            "FROM json_each(?) t LEFT JOIN activity a ON a.friend = t.value AND a.kind = 'order' GROUP BY t.value) s "
            "WHERE friends.id = s.id",
            (_ids_json(ids),),
        )
        self.changed(*ids)

    # ================================================================== reading for reports
    # Read-only queries of ``linerules report`` (engine/reports/report.py), each result a named record;
    # they work on a database opened with ``read_only=True`` while a runner writes it, and on
    # databases of every schema version (a table a later migration added reads as empty).

    def report_deliveries(self, since: int | None, until: int | None) -> list[DeliveryRow]:
        """The deliveries recorded in [since, until) (None: open), rich menu links left out,
        with their outbox row's kind; in (at, id) order."""
        where, args = [f"d.messages NOT LIKE '{_MENU_LIKE}'"], []
        if since is not None:
            where.append("d.at >= ?")
            args.append(since)
        if until is not None:
            where.append("d.at < ?")
            args.append(until)
        rows = self.conn.execute(
            "SELECT d.id, d.friend, d.rule, d.step_id, d.messages, d.status, d.variant, d.at, o.kind "
            "FROM deliveries d LEFT JOIN outbox o ON o.id = d.outbox_id "
            f"WHERE {' AND '.join(where)} ORDER BY d.at, d.id",
            args,
        )
        return [
            DeliveryRow(r[0], r[1], r[2], r[3] or "", tuple(json.loads(r[4])), r[5], r[6], r[7], r[8]) for r in rows
        ]

    def report_sent_before(self, friend: str, rule: str, at: int) -> bool:
        """Whether ``rule`` sent ``friend`` anything at or before ``at`` (a click's source)."""
        return (
            self.conn.execute(
                "SELECT 1 FROM deliveries WHERE friend = ? AND rule = ? AND status = 'sent' AND at <= ? LIMIT 1",
                (friend, rule, at),
            ).fetchone()
            is not None
        )

    def report_intents(self, since: int | None, until: int | None) -> list[IntentRow]:
        """The sends not decided yet (waiting for the window, the cap's day, the quota) due in
        [since, until), at their due time; in (due_at, id) order."""
        if not self._has_table("intents"):
            return []
        where, args = ["TRUE"], []
        if since is not None:
            where.append("due_at >= ?")
            args.append(since)
        if until is not None:
            where.append("due_at < ?")
            args.append(until)
        rows = self.conn.execute(
            "SELECT id, friend, rule, json_extract(steps, '$[0][0]'), messages, variant, due_at "
            f"FROM intents WHERE {' AND '.join(where)} ORDER BY due_at, id",
            args,
        )
        out = [IntentRow(r[0], r[1], r[2], r[3] or "", tuple(json.loads(r[4])), r[5], r[6]) for r in rows]
        if self._has_table("audience_sends"):
            # an audience's first sends, carried by its enrollments until they are decided (their
            # ids are kept apart from the intents' by an offset)
            carried = [w.replace("due_at", "e.send_due") for w in where]
            rows = self.conn.execute(
                "SELECT e.id, e.friend, e.rule, json_extract(a.steps, '$[0][0]'), a.messages, e.variant, e.send_due "
                "FROM audience_sends a CROSS JOIN enrollments e ON e.rule = a.rule AND e.occurrence = a.occurrence "
                f"WHERE a.due_at IS NOT NULL AND e.send_due IS NOT NULL AND {' AND '.join(carried)} "
                "ORDER BY e.send_due, e.id",
                args,
            )
            out += [
                IntentRow((1 << 40) + r[0], r[1], r[2], r[3] or "", tuple(json.loads(r[4])), r[5], r[6]) for r in rows
            ]
            out.sort(key=lambda i: (i.due_at, i.id))
        return out

    def report_clicks(self) -> list[ClickRow]:
        """Every tracked-link click, in (at, id) order."""
        return [
            ClickRow(*r)
            for r in self.conn.execute(
                "SELECT friend, rule, message, at FROM activity WHERE kind = 'click' ORDER BY at, id"
            )
        ]

    def report_orders(self) -> list[OrderRow]:
        """Every order that counts for a friend (its amount less refunds), in (at, id) order."""
        return [
            OrderRow(*r)
            for r in self.conn.execute("SELECT friend, amount, at FROM activity WHERE kind = 'order' ORDER BY at, id")
        ]

    def report_follows(self) -> list[FollowRow]:
        """Processed follow and unfollow events, in (at, seq) order."""
        return [
            FollowRow(*r)
            for r in self.conn.execute(
                "SELECT type, friend, at FROM events WHERE type IN ('follow', 'unfollow') "
                "AND processed_at IS NOT NULL ORDER BY at, seq"
            )
        ]

    def report_enrollments(self) -> list[EnrollmentRow]:
        """Every enrollment, in id order."""
        return [
            EnrollmentRow(r[0], r[1], r[2], bool(r[3]), *r[4:])
            for r in self.conn.execute(
                "SELECT rule, friend, variant, holdout, entered_at, state, exit_reason, finished_at "
                "FROM enrollments ORDER BY id"
            )
        ]

    def report_step_orders(self) -> dict[str, list[str]]:
        """Each rule's step ids as its latest stored version lists them."""
        return {
            rule: json.loads(steps)
            for rule, steps in self.conn.execute(
                f"SELECT rule, steps FROM rule_versions ORDER BY compiled_at, {self._rowid}"
            )
        }

    def report_rule_names(self) -> set[str]:
        """Every rule name the database has seen (versions, enrollments, deliveries)."""
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT rule FROM rule_versions UNION SELECT rule FROM enrollments UNION SELECT rule FROM deliveries"
            )
        }

    def report_latest_at(self) -> int | None:
        """The time of the latest recorded fact (event, decided delivery, activity), or None."""
        row = self.conn.execute(
            "SELECT MAX(m) FROM (SELECT MAX(at) AS m FROM events UNION ALL "
            "SELECT MAX(at) FROM deliveries WHERE status != 'queued' UNION ALL "
            "SELECT MAX(at) FROM activity)"
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def report_seen_friends(self, until: int) -> set[str]:
        """Friends with a processed event at or before ``until``."""
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT friend FROM events WHERE at <= ? AND processed_at IS NOT NULL", (until,)
            )
        }

    def report_active_friends(self, after: int, until: int) -> set[str]:
        """Friends who clicked, ordered, messaged or tapped a postback in (after, until]."""
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT friend FROM activity WHERE kind IN ('click', 'order') AND at > ? AND at <= ? "
                "UNION SELECT friend FROM events WHERE type IN ('message', 'postback') "
                "AND processed_at IS NOT NULL AND at > ? AND at <= ?",
                (after, until, after, until),
            )
        }

    def report_has_events(self, since: int, until: int) -> bool:
        """Whether any event happened in [since, until)."""
        return (
            self.conn.execute("SELECT 1 FROM events WHERE at >= ? AND at < ? LIMIT 1", (since, until)).fetchone()
            is not None
        )

    def _has_table(self, name: str) -> bool:
        if self.pg:
            return self.conn.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]
        return (
            self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
            is not None
        )


class KeptEvent(NamedTuple):
    """A processed event kept for a customer not linked yet."""

    seq: int
    type: str
    at: int
    data: dict[str, Any]


class OrderState(NamedTuple):
    """What is stored of an order (``amount`` None: only a refund that came first)."""

    order_id: str
    amount: float | None
    refunded: float
    cancelled: bool
    friend: str | None
    external_id: str | None


class OrderRefund(NamedTuple):
    order_id: str
    refunded: float
    cancelled: bool


class OrderRecord(NamedTuple):
    """An order to store: ``friend`` the one it counts for (None: kept for its customer),
    ``direct`` whether the order named that friend itself."""

    order_id: str
    customer: str | None
    friend: str | None
    direct: bool
    at: int
    amount: float
    items: Sequence[dict]
    source: str
    external_id: str | None
    refunded: float = 0.0
    cancelled: bool = False


def _ids_json(values: Iterable[str]) -> str:
    """A JSON list of ids, for ``json_each(?)`` joins (one statement, no scratch table)."""
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


#: One encoder for every order's items (``json.dumps`` with options builds one per call).
_ITEMS_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _items_json(items: Sequence[dict]) -> str:
    """An order's items as stored (keys without a value left out)."""
    return _ITEMS_JSON.encode(
        [i if None not in i.values() else {k: v for k, v in i.items() if v is not None} for i in items]
    )


#: Rich menu link deliveries are recorded with the message label ``menu:NAME``
#: (:func:`menu_label`); they are not sends.
MENU_PREFIX = "menu:"
_MENU_LIKE = '["' + MENU_PREFIX + "%"


def menu_label(menu: str) -> list[str]:
    """The ``messages`` of a rich menu link's delivery row."""
    return [MENU_PREFIX + menu]


class DeliveryRow(NamedTuple):
    """A recorded delivery as the report reads it (``step`` "" when the step has no id)."""

    id: int
    friend: str
    rule: str
    step: str
    messages: tuple[str, ...]
    status: str
    variant: str | None
    at: int
    kind: str | None  # the outbox row's kind (push, multicast, reply), None if none


class IntentRow(NamedTuple):
    """A send waiting to be decided, as the report reads it."""

    id: int
    friend: str
    rule: str
    step: str
    messages: tuple[str, ...]
    variant: str | None
    due_at: int


class ClickRow(NamedTuple):
    friend: str
    rule: str | None
    message: str | None
    at: int


class OrderRow(NamedTuple):
    friend: str
    amount: float | None
    at: int


class FollowRow(NamedTuple):
    type: str  # follow or unfollow
    friend: str
    at: int


class EnrollmentRow(NamedTuple):
    rule: str
    friend: str
    variant: str | None
    holdout: bool
    entered_at: int
    state: str
    exit_reason: str | None
    finished_at: int | None


class _Turns(threading.Condition):
    """Writers of one database file in this process: how many wait for ``BEGIN IMMEDIATE``,
    and how many yielding connections are inside a write transaction (more than one only when
    one waited :data:`TURN_WAIT` in vain)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.busy = 0


_TURNS: dict[str, _Turns] = {}
_TURNS_LOCK = threading.Lock()


def _turns_for(path: str) -> _Turns:
    key = os.path.realpath(path)
    with _TURNS_LOCK:
        return _TURNS.setdefault(key, _Turns())


def _norm_source(source: str) -> str:
    """``qr = shipping, ad=summer`` -> ``qr=shipping,ad=summer``."""
    return ",".join("=".join(p.strip() for p in part.split("=", 1)) for part in source.split(","))


_OUTBOX_COLUMNS = (
    "id",
    "kind",
    "recipients",
    "payload",
    "messages",
    "rule",
    "retry_key",
    "reply_token",
    "reply_deadline",
    "not_before",
    "status",
    "created_at",
)
_DELIVERY_COLUMNS = (
    "friend",
    "rule",
    "step_id",
    "enrollment",
    "outbox_id",
    "messages",
    "status",
    "reason",
    "variant",
    "at",
    "local_day",
    "counts_for_cap",
)


def _insert_many(c: Any, table: str, columns: Sequence[str], rows: Sequence[tuple], nullable: Sequence[int]) -> None:
    """``rows`` inserted into ``table`` (``columns``, in order), one statement per run of rows;
    a None in a ``nullable`` column is written as NULL in the statement rather than bound
    (the sqlite3 module binds a None by a failed adapter lookup: dearer than the rest of a row's
    values together), so consecutive rows with None in the same of those columns share one."""

    # the nullable values (and the first again: a tuple even for one column)
    pick, none = operator.itemgetter(*nullable, *nullable[:1]), functools.partial(operator.is_, None)

    def nulls(row: tuple) -> tuple[bool, ...]:
        return tuple(map(none, pick(row)))

    for key, run in itertools.groupby(rows, nulls):
        null = {i for i, empty in zip(nullable, key, strict=False) if empty}
        kept = [i for i in range(len(columns)) if i not in null]
        marks = ", ".join("NULL" if i in null else "?" for i in range(len(columns)))
        values = map(operator.itemgetter(*kept), run) if null else run  # noqa: B031 (used once)
        c.executemany(f"INSERT INTO {table}({', '.join(columns)}) VALUES ({marks})", values)


def retry_keys(n: int) -> list[str]:
    """``n`` new retry keys: UUIDs of version 7 (RFC 9562: the Unix time in milliseconds,
    then 74 random bits), in ascending order, from one read of the system's random source.

    LINE takes any UUID. Time-ordered keys go in at the end of the outbox's unique index on
    ``retry_key``, where random (version 4) keys each went to a random page of it, which the
    outbox, keeping every row, makes ever larger (docs/decisions.md)."""
    if n <= 0:
        return []
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    head = f"{stamp[:8]}-{stamp[8:]}-7"
    raw = os.urandom(10 * n).hex()
    keys = []
    for i in range(0, 20 * n, 20):
        h = raw[i : i + 19]
        keys.append(f"{head}{h[:3]}-{_VARIANT[h[3]]}{h[4:7]}-{h[7:]}")
    keys.sort()
    return keys


#: The first hex digit of a UUID's fourth group with the RFC 9562 variant bits set (10xx).
_VARIANT = {f"{d:x}": f"{(d & 0x3) | 0x8:x}" for d in range(16)}


def retry_key() -> str:
    """One new retry key, as :func:`retry_keys` makes them (the store's SQL function
    ``lr_retry_key()``)."""
    return retry_keys(1)[0]


def link_tokens(n: int) -> list[str]:
    """``n`` new click-tracking tokens, in ascending order, from one read of the system's random
    source: the second they are made in six characters that sort as it does, then 16 URL-safe
    characters as ``secrets.token_urlsafe(12)`` makes them (96 random bits). Like the retry
    keys, they go in at the end of the links' index (docs/decisions.md)."""
    seconds, stamp = int(time.time()), []
    for _digit in range(6):
        seconds, digit = divmod(seconds, 62)
        stamp.append(_BASE62[digit])
    head = "".join(reversed(stamp))
    text = base64.urlsafe_b64encode(os.urandom(12 * n)).decode()
    return sorted(head + text[i : i + 16] for i in range(0, 16 * n, 16))


#: Digits of base 62 in the order of their character codes, so that numbers written with them
#: at one width sort as the numbers do.
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
