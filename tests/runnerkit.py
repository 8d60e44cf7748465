"""The runner as its own process (``python runner.py``), for the tests that send it real
signals: start it on a rule folder and a database file, read its log, talk to its HTTP
server, and look into its SQLite file. Every runner listens on a free port and keeps its files
in the test's tmp_path, so tests run side by side (pytest-xdist). The ``processes`` fixture,
which stops every runner a test started, is in conftest.py."""

from __future__ import annotations

import json
import os
import queue
import re
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import forkkit
from engine.testing.webhooks import line_event, post_events
from enginekit import write_folder

REPO = Path(__file__).resolve().parent.parent
API_TOKEN = "shop-token"

SETTINGS = "timezone: Asia/Tokyo\n"
MESSAGES = 'greeting: "ようこそ"\nthanks: "ありがとうございます"\n'
#: A text per friend, so that every welcome is its own push (not one shared multicast).
PER_FRIEND_MESSAGES = 'greeting: "ようこそ {{ friend.id }}さん"\nthanks: "ありがとうございます"\n'
RULES = """\
rule welcome
  when followed
  then send greeting
"""


def write_rules(root: Path, rules: str = RULES, messages: str = MESSAGES) -> Path:
    return write_folder(root, settings=SETTINGS, messages=messages, rules=rules)


class RunnerProcess:
    """A runner started as its own process, with its log read line by line.

    The waits are upper bounds, generous because a runner process's start-up (Python, the
    engine's imports, the rules) is slow on a busy machine; a passing test never waits them.

    ``python runner.py`` is forked from a server that has imported the runner's modules
    (:mod:`forkkit`: the imports, line-bot-sdk's above all, would be most of each test's time);
    ``command`` (``linerules run``, ``make run``) starts that command as it is."""

    def __init__(
        self,
        rules: Path,
        db: Path,
        *,
        env: dict[str, str] | None = None,
        tick: float = 0.2,
        command: list[str] | None = None,
    ):
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LINE_", "LINERULES_"))}
        if cache := os.environ.get("LINERULES_CACHE_DIR"):  # this test run's (conftest.py)
            base["LINERULES_CACHE_DIR"] = cache
        base.update({"LINERULES_API_TOKEN": API_TOKEN, **(env or {})})
        args = ["--rules", str(rules), "--db", str(db), "--listen", "127.0.0.1:0", "--tick", str(tick)]
        if command is None:
            self.proc = forkkit.popen(["runner.py", *args], preload=forkkit.RUNNER, cwd=REPO, env=base)
        else:
            self.proc = subprocess.Popen(
                [*command, *args],
                cwd=REPO,
                env=base,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """The first log line (from now on, or already read) matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.lines:
            if m := regex.search(line):
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if m := regex.search(line):
                return m
        raise AssertionError(f"no log line matching {pattern!r}; log:\n" + "\n".join(self.lines))

    def started(self) -> RunnerProcess:
        self.url = self.wait_for(r"listening on (http://[\d.]+:\d+)", timeout=60).group(1)
        return self

    def exit_code(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        while (line := self._drain()) is not None:
            self.lines.append(line)
        return code

    def _drain(self) -> str | None:
        try:
            return self._queue.get(timeout=1)
        except queue.Empty:
            return None

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def post_events(self, events: list[dict]) -> dict:
        return post_events(self.url, events, API_TOKEN)

    def post_webhook(self, signed: tuple[bytes, dict[str, str]]) -> int:
        """POST a signed webhook (``line_webhook(*events)``) to ``/callback``; the status."""
        body, headers = signed
        req = urllib.request.Request(self.url + "/callback", data=body, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics``, parsed by prometheus_client (0 when absent)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def follow(friend: str) -> dict:
    """A shop event for ``POST /events``: ``friend`` followed."""
    return {"type": "follow", "friend": friend, "at": "2026-11-01T10:00:00+09:00"}


def text_message(user: str, reply_token: str, n: int = 0, text: str = "クーポン") -> dict:
    """A LINE webhook event: ``user`` wrote ``text`` (the ``n``-th message of the test)."""
    return line_event(
        "message",
        user,
        event_id=f"01EV{user}{n:04d}",
        reply_token=reply_token,
        message={"type": "text", "id": f"m{user}{n}", "text": text},
    )


def wait_until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def rows(db: Path, sql: str = "SELECT * FROM outbox ORDER BY id", args: tuple = ()) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def execute(db: Path, sql: str, args: tuple = ()) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def backlog(db: Path) -> int:
    """Outbox rows not sent yet (pending or held)."""
    return rows(db, "SELECT COUNT(*) AS n FROM outbox WHERE status IN ('pending', 'held')")[0]["n"]


def add_friends(emulator, friends) -> list[str]:
    """Make each of ``friends`` a friend of the emulated channel (named after its id)."""
    for friend in friends:
        emulator.add_user(friend, friend)
    return list(friends)


def per_friend(emulator, endpoint: str | None = None) -> Counter:
    """How many deliveries the LINE emulator made to each friend (through ``endpoint``)."""
    return Counter(d.user_id for d in emulator.delivered if endpoint is None or d.endpoint == endpoint)
