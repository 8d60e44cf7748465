"""A ``--db`` that is not a linerules database: every command says so in one line, exits 1 and
leaves the file exactly as it was (the store's one test, :func:`engine.runtime.store.database_version`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.runtime.store import NotLinerulesDatabase, Store, database_version

SETTINGS = "timezone: Asia/Tokyo\n"
MESSAGES = "greeting: こんにちは\n"
RULES = "rule welcome when followed then send greeting\n"
EVENT = {"type": "follow", "friend": "U1", "at": "2026-11-01T10:00:00+09:00"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "settings.yaml").write_text(SETTINGS, encoding="utf-8")
    (rules / "messages.yaml").write_text(MESSAGES, encoding="utf-8")
    (rules / "shop.rule").write_text(RULES, encoding="utf-8")
    (tmp_path / "timeline.jsonl").write_text(json.dumps(EVENT) + "\n", encoding="utf-8")
    return rules


def foreign_sqlite(path: Path) -> Path:
    """An SQLite database of another program."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes(text) VALUES ('keep me')")
    conn.commit()
    conn.close()
    return path


def not_sqlite(path: Path) -> Path:
    path.write_text("order_id,amount\nA-1,5400\n", encoding="utf-8")
    return path


KINDS = {
    "sqlite of another program": (foreign_sqlite, "an SQLite file without linerules' tables"),
    "not an SQLite file": (not_sqlite, "not an SQLite file"),
}


def invoke(args: list[str], **env: str):
    return CliRunner().invoke(cli, args, env={"LINERULES_LANG": "en", **env})


def assert_refused(result, path: Path, what: str, before: bytes) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and "Traceback" not in result.output
    assert f"--db: {path} is not a linerules database ({what}): check --db / LINERULES_DB" in lines[0]
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_report_refuses_it(folder, tmp_path, kind):
    make, what = KINDS[kind]
    db = make(tmp_path / "shop.db")
    before = db.read_bytes()
    result = invoke(["report", "--db", str(db), "--rules", str(folder)])
    assert_refused(result, db, what, before)
    assert result.output.startswith("error: ")


@pytest.mark.parametrize("kind", KINDS)
def test_simulate_db_refuses_to_replace_it(folder, tmp_path, kind):
    make, what = KINDS[kind]
    db = make(tmp_path / "forecast.db")
    before = db.read_bytes()
    result = invoke(["simulate", str(tmp_path / "timeline.jsonl"), "--rules", str(folder), "--db", str(db)])
    assert_refused(result, db, what, before)
    assert result.output.startswith("error: ")


@pytest.mark.parametrize("kind", KINDS)
def test_import_refuses_it(tmp_path, kind):
    make, what = KINDS[kind]
    db = make(tmp_path / "shop.db")
    before = db.read_bytes()
    links = tmp_path / "links.csv"
    links.write_text("customer,friend\nC1,U" + "0" * 32 + "\n", encoding="utf-8")
    result = invoke(["import", "customers", str(links), "--db", str(db)])
    assert_refused(result, db, what, before)


def test_the_message_is_translated(folder, tmp_path):
    db = foreign_sqlite(tmp_path / "shop.db")
    result = invoke(["report", "--db", str(db), "--rules", str(folder)], LINERULES_LANG="ja")
    assert result.exit_code == 1
    assert result.output.startswith("エラー: --db: ")
    assert f"{db} は linerules のデータベースではありません" in result.output


def test_a_linerules_database_is_recognised_and_replaced_by_simulate(folder, tmp_path):
    db = tmp_path / "forecast.db"
    assert database_version(str(db)) is None  # nothing there yet
    args = ["simulate", str(tmp_path / "timeline.jsonl"), "--rules", str(folder), "--db", str(db)]
    first = invoke(args)
    assert first.exit_code == 0, first.output
    version = database_version(str(db))
    assert version is not None and version >= 1
    again = invoke(args)
    assert again.exit_code == 0 and again.output == first.output  # replaced, not added to
    report = invoke(["report", "--db", str(db), "--rules", str(folder), "--format", "json"])
    assert report.exit_code == 0, report.output
    assert [(r["rule"], r["pushes"]) for r in json.loads(report.output)["rules"]] == [("welcome", 1)]


def test_an_empty_file_becomes_a_database_but_is_not_one_yet(tmp_path):
    empty = tmp_path / "new.db"
    empty.touch()
    with pytest.raises(NotLinerulesDatabase):
        database_version(str(empty))
    with pytest.raises(NotLinerulesDatabase):
        Store(str(empty), read_only=True)
    Store(str(empty)).close()  # the runner may start on an empty file
    assert database_version(str(empty)) >= 1


def test_a_first_start_stopped_before_the_first_migration_starts_again(tmp_path):
    db = tmp_path / "linerules.db"
    conn = sqlite3.connect(db)  # what the first start has written before migration 1
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.commit()
    conn.close()
    store = Store(str(db))
    try:
        assert store.schema_version >= 7 and store.friend("U1") is None
    finally:
        store.close()


def test_the_store_never_writes_into_another_programs_database(tmp_path):
    db = foreign_sqlite(tmp_path / "notes.db")
    before = db.read_bytes()
    with pytest.raises(NotLinerulesDatabase, match="is not a linerules database"):
        Store(str(db))
    with pytest.raises(NotLinerulesDatabase, match="a folder"):
        Store(str(tmp_path))
    assert db.read_bytes() == before
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]
    conn.close()


def test_the_report_reads_without_writing(folder, tmp_path):
    db = tmp_path / "forecast.db"
    invoke(["simulate", str(tmp_path / "timeline.jsonl"), "--rules", str(folder), "--db", str(db)])
    store = Store(str(db), read_only=True)
    try:
        with pytest.raises(sqlite3.OperationalError):
            store.conn.execute("DELETE FROM events")
        assert store.report_rule_names() == {"welcome"}
    finally:
        store.close()


def test_the_report_reads_a_database_of_an_older_schema(folder, tmp_path):
    """A database kept by an older `simulate --db` (before sends waited as intents) is read as
    it is: the report never migrates it."""
    db = tmp_path / "forecast.db"
    invoke(["simulate", str(tmp_path / "timeline.jsonl"), "--rules", str(folder), "--db", str(db)])
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE intents")
    conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    result = invoke(["report", "--db", str(db), "--rules", str(folder), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [(r["rule"], r["pushes"], r["held"]) for r in json.loads(result.output)["rules"]] == [("welcome", 1, 0)]
    assert database_version(str(db)) == 6
