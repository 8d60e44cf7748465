"""The database failing under the runner (issue 9 point 12), through the real runner process:
a full disk (a real one: a small tmpfs, when root may mount it), a read-only file, a file that
is not a database, a damaged page. One clear log line each (what, which file, what to do), no
traceback; 503 with Retry-After to clients and /healthz unhealthy while writes fail."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.runtime.store import Store
from runnerkit import API_TOKEN, RunnerProcess, follow, write_rules


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules")


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path):
    where = tmp_path / "disk"
    mount_tmpfs(where, "4m")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def post(url: str, events: list[dict]) -> tuple[int, dict, dict]:
    req = urllib.request.Request(
        url + "/events",
        data=json.dumps(events).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def bulky(n: int, tag: str) -> list[dict]:
    """Events big enough that the write-ahead log must grow to store them."""
    return [{**follow(f"U{tag}{i}"), "type": "shipped", "note": "x" * 2000} for i in range(n)]


def no_traceback(proc: RunnerProcess) -> None:
    assert not any("Traceback" in line for line in proc.lines), "\n".join(proc.lines)


def test_a_full_disk_is_one_log_line_503_with_retry_after_and_unhealthy(processes, rules, small_disk):
    db = small_disk / "linerules.db"
    proc = processes(rules, db).started()
    assert post(proc.url, [follow("U1")])[0] == 200
    filler = fill(small_disk)
    status, headers, answer = post(proc.url, bulky(500, "a"))
    assert status == 503 and headers.get("Retry-After") == "30"
    assert "try again later" in answer["error"]
    code, health = proc.get("/healthz")
    assert code == 503 and health["status"] == "unhealthy"
    assert any("full" in p for p in health["problems"]), health
    line = proc.wait_for(r"ERROR linerules.store: .*disk is full")
    assert str(db) in line.string and "Free space on that disk" in line.string
    time.sleep(1.0)  # a few ticks run against the full disk meanwhile
    assert post(proc.url, bulky(500, "b"))[0] == 503
    filler.unlink()  # the operator frees space: everything works again
    assert post(proc.url, bulky(50, "c"))[0] == 200
    deadline = time.monotonic() + 10
    while proc.get("/healthz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.get("/healthz")[0] == 200
    proc.proc.terminate()
    assert proc.exit_code() == 0
    no_traceback(proc)
    full_lines = [line for line in proc.lines if "disk is full" in line]
    assert len(full_lines) == 1, full_lines  # once for the spell of failing writes, not per request
    assert sum("database writes work again" in line for line in proc.lines) == 1
    store = Store(str(db))
    try:  # nothing of the refused batches was stored, everything of the accepted ones was
        assert (
            store.conn.execute("SELECT COUNT(*) FROM events WHERE friend LIKE 'Ua%' OR friend LIKE 'Ub%'").fetchone()[0]
            == 0
        )
        assert store.conn.execute("SELECT COUNT(*) FROM events WHERE friend LIKE 'Uc%'").fetchone()[0] == 50
    finally:
        store.close()


def test_a_file_that_is_no_database_is_one_line_and_exit_1(processes, rules, tmp_path):
    db = tmp_path / "linerules.db"
    db.write_bytes(b"these are not the pages you are looking for\n" * 200)
    proc = processes(rules, db)
    assert proc.exit_code() == 1
    no_traceback(proc)
    [line] = [line for line in proc.lines if " ERROR " in line]
    assert f"{db} is not a linerules database (not an SQLite file)" in line


def test_another_programs_database_is_refused_and_left_as_it_was(processes, rules, tmp_path):
    db = tmp_path / "linerules.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    proc = processes(rules, db)
    assert proc.exit_code() == 1
    no_traceback(proc)
    [line] = [line for line in proc.lines if " ERROR " in line]
    assert f"{db} is not a linerules database (an SQLite file without linerules' tables)" in line
    assert db.read_bytes() == before


def test_a_damaged_page_is_found_at_start_and_the_runner_refuses_to_run(processes, rules, tmp_path):
    db = tmp_path / "linerules.db"
    store = Store(str(db))
    with store.transaction() as c:
        c.executemany(
            "INSERT INTO friends(id, attributes, created_at) VALUES (?, ?, 0)",
            [
                (
                    f"U{i:06d}",
                    json.dumps({"note": "x" * 200}),
                )
                for i in range(3000)
            ],
        )
    store.close()
    page = 4096
    size = db.stat().st_size
    assert size > 40 * page
    with open(db, "r+b") as f:  # scribble over a page in the middle of the friends
        f.seek((size // page // 2) * page)
        f.write(bytes(range(256)) * (page // 256))
    proc = processes(rules, db)
    assert proc.exit_code() == 1
    no_traceback(proc)
    [line] = [line for line in proc.lines if " ERROR " in line]
    assert f"the database {db} is damaged" in line and "restore it from a backup" in line


def test_a_read_only_database_is_one_line_and_exit_1(processes, rules, tmp_path):
    disk = tmp_path / "ro"
    mount_tmpfs(disk, "4m")
    try:
        db = disk / "linerules.db"
        Store(str(db)).close()
        done = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
        proc = processes(rules, db)
        assert proc.exit_code() == 1
        no_traceback(proc)
        [line] = [line for line in proc.lines if " ERROR " in line]
        assert str(db) in line and ("read-only" in line or "cannot open" in line), line
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
