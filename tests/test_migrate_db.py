"""``linerules migrate-db``: a database the engine wrote, with friends in flight, copied into a
real PostgreSQL — every table row by row, nothing twice on a second run, resumable, verified."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

import forkkit
from engine.runtime import pgschema
from engine.runtime.store import Store

ROOT = Path(__file__).resolve().parent.parent
OWN_META = ("schema_version", "migrate_db.source")


def linerules(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``linerules ARGS`` in a process of its own (forked with its imports done, :mod:`forkkit`)."""
    env = dict(os.environ, LINERULES_LANG="en")
    return forkkit.run(["-m", "engine.cli", *args], preload=forkkit.MIGRATE_DB, cwd=cwd, env=env, timeout=300)


def timeline(friends: int = 40) -> list[dict]:
    """A month of a small shop: follows from the shipping card, the summer ad and elsewhere,
    carts, orders, shipments, answers, links, a customer's order before the link, unfollows."""
    out = []
    for i in range(friends):
        f = f"U{i:04d}"
        day = 20 + i % 5
        source = ["qr=shipping", "ad=summer", None][i % 3]
        follow = {"type": "follow", "friend": f, "at": f"2026-11-{day}T{9 + i % 12:02d}:{i % 60:02d}:00+09:00"}
        if source:
            follow["source"] = source
        out.append(follow)
        out.append(
            {
                "type": "attributes",
                "friend": f,
                "at": f"2026-11-{day}T{9 + i % 12:02d}:{i % 60:02d}:30+09:00",
                "set": {"display_name": f"友だち{i}", "gender": "fm"[i % 2]},
            }
        )
        if i % 2 == 0:
            out.append({"type": "cart", "friend": f, "at": f"2026-11-{day}T22:00:00+09:00", "product": f"SKU{i % 7}"})
        if i % 3 == 0:
            out.append(
                {
                    "type": "purchase",
                    "friend": f,
                    "at": f"2026-11-{day + 1}T12:00:00+09:00",
                    "order_id": f"A-{i}",
                    "amount": 1000 + i * 10.5,
                    "items": [
                        {"product": f"SKU{i % 7}", "category": "cosmetics", "price": 1000 + i * 10.5, "quantity": 1}
                    ],
                }
            )
            out.append(
                {"type": "shipped", "friend": f, "at": f"2026-11-{day + 2}T15:00:00+09:00", "order_id": f"A-{i}"}
            )
        if i % 4 == 0:
            out.append({"type": "message", "friend": f, "at": f"2026-11-{day}T20:00:00+09:00", "text": "クーポン"})
            out.append(
                {
                    "type": "tag",
                    "friend": f,
                    "at": f"2026-11-{day}T20:01:00+09:00",
                    "add": ["vip", f"t{i % 3}"],
                    "remove": [],
                }
            )
        if i % 5 == 0:
            out.append({"type": "identify", "friend": f, "at": f"2026-11-{day}T20:05:00+09:00", "customer": f"C-{i}"})
        if i % 9 == 0:
            out.append({"type": "unfollow", "friend": f, "at": f"2026-11-{day + 3}T08:00:00+09:00"})
    # an order of a customer nobody is linked to yet: kept for the link
    out.append(
        {
            "type": "purchase",
            "customer": "C-unlinked",
            "at": "2026-11-24T10:00:00+09:00",
            "order_id": "B-1",
            "amount": 3000,
            "items": [],
        }
    )
    return sorted(out, key=lambda e: e["at"])


@pytest.fixture(scope="module")
def engine_db(tmp_path_factory) -> Path:
    """An SQLite database written by the real engine on the sample rules, stopped while
    friends are in the middle of their rules (waits open, sends held for the window)."""
    folder = tmp_path_factory.mktemp("source")
    events = folder / "events.jsonl"
    events.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in timeline()), encoding="utf-8")
    db = folder / "linerules.db"
    run = linerules(
        "simulate",
        str(events),
        "--rules",
        str(ROOT / "rules"),
        "--until",
        "2026-11-24T23:30:00+09:00",
        "--db",
        str(db),
        cwd=folder,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("\n") > 20  # the engine sent things
    # what only the runner writes: a tracked link, an account-link nonce, a lease (expired: the
    # runner has stopped), a friend's source from the LINE Login join link
    from engine.runtime import identity

    store = Store(str(db))
    store.link_token("U0001", "welcome", "coupon15", "https://shop.example/coupon?c=15", int(time.time()) - 900)
    identity.register_nonce(store, "C-77", int(time.time()) - 600)
    assert store.acquire_lease("runner-on-host-a", int(time.time()) - 3600, 60)
    # a source recorded since the last condition tick: a change the next check looks at
    store.set_source("U0002", "qr=shipping")
    store.close()
    return db


def _key(conn, table: str) -> list[str]:
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    return [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]


def sqlite_rows(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        ]
        out = {}
        for t in tables:
            where = f" WHERE key NOT IN {OWN_META}" if t == "meta" else ""
            order = ", ".join(_key(conn, t))
            out[t] = [tuple(r) for r in conn.execute(f'SELECT * FROM "{t}"{where} ORDER BY {order}')]
        return out
    finally:
        conn.close()


def pg_rows(url: str, tables, sqlite_path: Path) -> dict[str, list[tuple]]:
    keys = {}
    src = sqlite3.connect(sqlite_path)
    for t in tables:
        keys[t] = _key(src, t)
    src.close()
    with psycopg.connect(url) as conn:
        out = {}
        for t in tables:
            where = f" WHERE key NOT IN {OWN_META}" if t == "meta" else ""
            order = ", ".join(keys[t])
            out[t] = [tuple(r) for r in conn.execute(f'SELECT * FROM "{t}"{where} ORDER BY {order}')]
        return out


def counts_line(stdout: str, table: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.split()[:1] == [table])


def test_help_has_an_example(tmp_path):
    run = linerules("migrate-db", "--help", cwd=tmp_path)
    assert run.returncode == 0
    assert "Example:" in run.stdout and "linerules migrate-db linerules.db postgresql://" in run.stdout


def test_the_engines_database_is_copied_row_by_row_once(engine_db, pg_url, tmp_path):
    source = sqlite_rows(engine_db)
    # the database has friends in flight, links, kept events, history: a real one
    assert len(source["friends"]) == 40 and source["tags"] and source["customer_links"] and source["orders"]
    enrollments = (
        sqlite3.connect(engine_db)
        .execute("SELECT COUNT(*) FROM enrollments WHERE state IN ('active', 'waiting')")
        .fetchone()[0]
    )
    assert enrollments > 5
    assert any(r[3] == "" for r in source["events"])  # kept for a customer not linked yet
    assert source["deliveries"] and source["outbox"] and source["activity"]
    # every table has rows to copy (but rate_schedule: the shared rate limits of several runners
    # on PostgreSQL, never written on SQLite)
    assert [t for t, rows in source.items() if not rows and t != "rate_schedule"] == []

    run = linerules("migrate-db", str(engine_db), pg_url, "--batch", "7", cwd=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    assert f"verified: all {len(source)} tables hold the same rows" in run.stdout
    for table, rows in source.items():
        assert counts_line(run.stdout, table)[1:4] == [f"{len(rows):,}"] * 3, table
    copied = pg_rows(pg_url, source, engine_db)
    for table in source:
        assert copied[table] == source[table], table

    again = linerules("migrate-db", str(engine_db), pg_url, "--batch", "7", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for table, rows in source.items():
        assert counts_line(again.stdout, table)[1:6] == [f"{len(rows):,}", f"{len(rows):,}", "0", "0", "0"], table
    assert pg_rows(pg_url, source, engine_db) == source

    # new rows get ids past the copied ones (the identities were moved)
    with psycopg.connect(pg_url) as conn:
        seq = conn.execute(
            "INSERT INTO events(type, friend, at, data, received_at) VALUES "
            "('follow', 'U9999', 1, '{}', 1) RETURNING seq"
        ).fetchone()[0]
        outbox = conn.execute(
            "INSERT INTO outbox(kind, recipients, payload, messages, retry_key, not_before, "
            "status, created_at) VALUES ('push', '[]', '{}', '[]', 'k-new', 1, 'pending', 1) "
            "RETURNING id"
        ).fetchone()[0]
    assert seq == max(r[0] for r in source["events"]) + 1
    assert outbox == max(r[0] for r in source["outbox"]) + 1


def test_an_interrupted_copy_is_finished_by_running_it_again(engine_db, pg_url, tmp_path):
    source = sqlite_rows(engine_db)
    assert linerules("migrate-db", str(engine_db), pg_url, cwd=tmp_path).returncode == 0
    middle = source["events"][len(source["events"]) // 2][0]
    with psycopg.connect(pg_url) as conn:  # as if it had stopped part-way through
        lost = conn.execute("DELETE FROM events WHERE seq > %s", (middle,)).rowcount
        conn.execute("DELETE FROM enrollments")
        conn.execute("DELETE FROM tags WHERE friend > 'U0010'")
    assert lost > 0
    run = linerules("migrate-db", str(engine_db), pg_url, "--batch", "10", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert counts_line(run.stdout, "events")[3] == f"{lost:,}"
    assert counts_line(run.stdout, "enrollments")[3] == f"{len(source['enrollments']):,}"
    assert counts_line(run.stdout, "friends")[3] == "0"
    assert pg_rows(pg_url, source, engine_db) == source


def test_counts_that_differ_fail_the_command(engine_db, pg_url, tmp_path):
    assert linerules("migrate-db", str(engine_db), pg_url, cwd=tmp_path).returncode == 0
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO friends(id, created_at) VALUES ('U-only-in-postgres', 1)")
    run = linerules("migrate-db", str(engine_db), pg_url, cwd=tmp_path)
    assert run.returncode == 1
    assert "1 of" in run.stdout and "friends (40 in SQLite, 41 in PostgreSQL)" in run.stdout
    assert "<- differs" in " ".join(counts_line(run.stdout, "friends"))
    assert "1 rows are only in PostgreSQL (tables friends)" in run.stdout and "--refresh" in run.stdout
    run = linerules("migrate-db", str(engine_db), pg_url, "--refresh", cwd=tmp_path)
    assert run.returncode == 0, run.stdout
    assert counts_line(run.stdout, "friends")[1:6] == ["40", "40", "0", "0", "1"]
    assert pg_rows(pg_url, sqlite_rows(engine_db), engine_db) == sqlite_rows(engine_db)


def test_a_copy_of_a_file_that_changed_since_is_refused_then_refreshed(engine_db, pg_url, tmp_path):
    changed = tmp_path / "changed.db"
    src, dst = sqlite3.connect(engine_db), sqlite3.connect(changed)
    src.backup(dst)
    src.close()
    dst.close()
    assert linerules("migrate-db", str(changed), pg_url, cwd=tmp_path).returncode == 0
    before = pg_rows(pg_url, sqlite_rows(changed), changed)
    # the runner went on working on SQLite for a while after that first copy
    conn = sqlite3.connect(changed)
    enrollment = conn.execute("SELECT id FROM enrollments WHERE state = 'waiting' ORDER BY id LIMIT 1").fetchone()[0]
    conn.execute("UPDATE enrollments SET state = 'done', finished_at = 1 WHERE id = ?", (enrollment,))
    conn.execute('UPDATE friends SET attributes = \'{"gender":"f","vip":true}\' WHERE id = \'U0003\'')
    gone = conn.execute("SELECT id FROM intents ORDER BY id LIMIT 1").fetchone()[0]
    conn.execute("DELETE FROM intents WHERE id = ?", (gone,))
    conn.execute("INSERT INTO friends(id, created_at) VALUES ('U-new', 5)")
    conn.commit()
    conn.close()
    run = linerules("migrate-db", str(changed), pg_url, cwd=tmp_path)
    assert run.returncode == 1
    assert counts_line(run.stdout, "enrollments")[3:6] == ["0", "1", "0"]
    assert counts_line(run.stdout, "friends")[3:6] == ["1", "1", "0"]
    assert counts_line(run.stdout, "intents")[3:6] == ["0", "0", "1"]
    assert (
        "2 rows differ from SQLite's and 1 rows are only in PostgreSQL (tables friends, enrollments, intents)"
        in run.stdout
    )
    after = pg_rows(pg_url, sqlite_rows(changed), changed)
    assert [r for r in after["enrollments"] if r[0] == enrollment] == [
        r for r in before["enrollments"] if r[0] == enrollment
    ]  # nothing overwritten unasked
    run = linerules("migrate-db", str(changed), pg_url, "--refresh", cwd=tmp_path)
    assert run.returncode == 0, run.stdout
    assert "new updated deleted" in " ".join(run.stdout.split())
    assert counts_line(run.stdout, "enrollments")[3:6] == ["0", "1", "0"]
    assert counts_line(run.stdout, "intents")[3:6] == ["0", "0", "1"]
    assert pg_rows(pg_url, sqlite_rows(changed), changed) == sqlite_rows(changed)
    again = linerules("migrate-db", str(changed), pg_url, cwd=tmp_path)
    assert again.returncode == 0 and "verified: all" in again.stdout


def test_files_that_are_not_linerules_databases_are_refused(pg_url, tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("hello\n" * 100)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    for path, says in (
        (text, "is not a linerules database (not an SQLite file)"),
        (other, "is not a linerules database (an SQLite file without linerules' tables)"),
        (tmp_path / "missing.db", "no such file"),
    ):
        run = linerules("migrate-db", str(path), pg_url, cwd=tmp_path)
        assert run.returncode == 1
        assert run.stderr.startswith("error: ") and says in run.stderr and "Traceback" not in run.stderr
    run = linerules("migrate-db", str(tmp_path), pg_url, cwd=tmp_path)
    assert run.returncode == 2 and "is a directory" in run.stderr and "Traceback" not in run.stderr
    with psycopg.connect(pg_url) as conn:  # nothing was created for them
        assert conn.execute("SELECT to_regclass('friends')").fetchone()[0] is None


def test_bad_targets_are_refused_cleanly(engine_db, pg_server, pg_url, tmp_path):
    run = linerules("migrate-db", str(engine_db), "mysql://x@localhost/db", cwd=tmp_path)
    assert run.returncode == 1 and "is not a PostgreSQL URL" in run.stderr
    run = linerules(
        "migrate-db", str(engine_db), "postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=2", cwd=tmp_path
    )
    assert run.returncode == 1 and "cannot connect to postgresql://u:***@127.0.0.1:1/db" in run.stderr
    assert "s3cret" not in run.stderr and "Traceback" not in run.stderr
    # a schema with tables of something else
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE friends (id TEXT PRIMARY KEY)")
    run = linerules("migrate-db", str(engine_db), pg_url, cwd=tmp_path)
    assert run.returncode == 1
    assert "already holds tables that are not a linerules database (friends)" in run.stderr
    # a linerules schema that holds another database's rows
    with psycopg.connect(pg_url) as conn:
        conn.execute("DROP TABLE friends")
        pgschema.migrate(conn)
        conn.execute("INSERT INTO friends(id, created_at) VALUES ('U-someone-else', 1)")
    run = linerules("migrate-db", str(engine_db), pg_url, cwd=tmp_path)
    assert run.returncode == 1 and "already holds data (tables friends)" in run.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT id FROM friends").fetchall() == [("U-someone-else",)]


def test_a_database_a_runner_still_uses_is_refused(engine_db, pg_url, tmp_path):
    copy = tmp_path / "live.db"
    src = sqlite3.connect(engine_db)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.close()
    store = Store(str(copy))
    assert store.acquire_lease("runner-on-host-a", int(time.time()), 120)
    store.close()
    run = linerules("migrate-db", str(copy), pg_url, cwd=tmp_path)
    assert run.returncode == 1 and "a runner is using" in run.stderr and "stop the runner" in run.stderr


def test_an_older_database_is_brought_up_to_date_then_copied(pg_url, tmp_path):
    from engine.runtime.store import MIGRATIONS

    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for script in MIGRATIONS[:-1]:
        conn.executescript(script)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(len(MIGRATIONS) - 1),))
    conn.execute("INSERT INTO friends(id, followed_at, created_at) VALUES ('U-old', 100, 100)")
    conn.commit()
    conn.close()
    run = linerules("migrate-db", str(old), pg_url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"brought up to date first (schema {len(MIGRATIONS) - 1} -> {len(MIGRATIONS)})" in run.stdout
    assert counts_line(run.stdout, "friends")[1:4] == ["1", "1", "1"]
    assert pg_rows(pg_url, sqlite_rows(old), old) == sqlite_rows(old)


def test_a_row_postgresql_cannot_hold_stops_the_copy_cleanly_and_the_rest_follows_once_fixed(pg_url, tmp_path):
    db = tmp_path / "odd.db"
    store = Store(str(db))
    with store.transaction() as c:
        c.executemany("INSERT INTO friends(id, created_at) VALUES (?, ?)", [(f"U{i:03d}", i) for i in range(30)])
        c.execute("UPDATE friends SET followed_at = 'yesterday' WHERE id = 'U017'")  # SQLite keeps any type
    store.close()
    run = linerules("migrate-db", str(db), pg_url, "--batch", "10", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: table friends: rows after ['id'] = ('U009',) could not be copied")
    assert "run migrate-db again once fixed" in run.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM friends").fetchone()[0] == 10  # the batches before stay
    fix = sqlite3.connect(db)
    fix.execute("UPDATE friends SET followed_at = NULL WHERE id = 'U017'")
    fix.commit()
    fix.close()
    run = linerules("migrate-db", str(db), pg_url, "--batch", "10", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert counts_line(run.stdout, "friends")[1:4] == ["30", "30", "20"]
