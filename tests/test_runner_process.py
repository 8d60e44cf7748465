"""``python runner.py`` / ``linerules run`` as a real process: start-up in dry-run on the
sample rules, the one-runner lease, graceful SIGTERM, and SIGHUP reloads."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.testing.line_emulator import run_in_thread
from engine.runner.runloop import DRY_RUN_MESSAGE
from engine.runtime.store import Store

REPO = Path(__file__).resolve().parent.parent
API_TOKEN = "shop-token"

SETTINGS = "timezone: Asia/Tokyo\n"
MESSAGES = 'greeting: "ようこそ"\nthanks: "ありがとうございます"\n'
RULES = """\
rule welcome
  when followed
  then send greeting
"""


def write_rules(root: Path, rules: str = RULES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.yaml").write_text(SETTINGS, encoding="utf-8")
    (root / "messages.yaml").write_text(MESSAGES, encoding="utf-8")
    (root / "main.rule").write_text(rules, encoding="utf-8")
    return root


class RunnerProcess:
    """A runner started as its own process, with its log read line by line."""

    def __init__(self, rules: Path, db: Path, *, env: dict[str, str] | None = None,
                 tick: float = 0.2, command: list[str] | None = None):
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("LINE_", "LINERULES_"))}
        base.update({"LINERULES_API_TOKEN": API_TOKEN, **(env or {})})
        command = command or [sys.executable, "runner.py"]
        self.proc = subprocess.Popen(
            [*command, "--rules", str(rules), "--db", str(db), "--listen", "127.0.0.1:0",
             "--tick", str(tick)],
            cwd=REPO, env=base, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            encoding="utf-8")
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match:
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

    def started(self) -> "RunnerProcess":
        self.url = self.wait_for(r"listening on (http://[\d.]+:\d+)", timeout=60).group(1)
        return self

    def exit_code(self, timeout: float = 15.0) -> int:
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
        req = urllib.request.Request(
            self.url + "/events", data=json.dumps(events).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def processes():
    started: list[RunnerProcess] = []

    def start(*args, **kwargs) -> RunnerProcess:
        proc = RunnerProcess(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def follow(friend: str) -> dict:
    return {"type": "follow", "friend": friend, "at": "2026-11-01T10:00:00+09:00"}


def wait_until(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_make_run_serves_the_sample_rules_in_dry_run(tmp_path, processes):
    """`make run` is `linerules run --rules rules` without a LINE token."""
    linerules = Path(sys.executable).parent / "linerules"
    runner = processes(REPO / "rules", tmp_path / "sample.db", command=[str(linerules), "run"]).started()
    # the sample folder says `language: ja`: the runner's warnings are Japanese
    runner.wait_for(re.escape(DRY_RUN_MESSAGE.render("ja")))
    status, body = runner.get("/healthz")
    assert status == 200 and body["dry_run"] is True and body["status"] == "ok"
    assert runner.post_events([follow("U1")]) == {"applied": 1, "duplicates": 0}
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0
    assert not [line for line in runner.lines if "Traceback" in line]


def test_a_second_runner_on_the_same_database_is_refused(tmp_path, processes):
    rules = write_rules(tmp_path / "rules")
    first = processes(rules, tmp_path / "one.db").started()
    second = processes(rules, tmp_path / "one.db")
    assert second.exit_code() == 1
    holder = f"{socket.gethostname()}:{first.proc.pid}"
    second.wait_for(re.escape(f"another runner ({holder}) is using {tmp_path / 'one.db'}"))
    assert first.proc.poll() is None
    first.proc.send_signal(signal.SIGINT)
    assert first.exit_code() == 0


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(tmp_path, processes):
    rules = write_rules(tmp_path / "rules")
    with run_in_thread() as emulator:
        emulator.add_user("U1", "Hanako")
        emulator.inject_timeout("push", delay=1.0)   # the first push hangs for a second
        runner = processes(rules, tmp_path / "graceful.db",
                           env={"LINE_CHANNEL_ACCESS_TOKEN": emulator.access_token,
                                "LINE_API_ENDPOINT": emulator.base_url}).started()
        runner.post_events([follow("U1")])
        wait_until(lambda: emulator.requests_to("push"))
        runner.proc.send_signal(signal.SIGTERM)
        assert runner.exit_code() == 0
        assert [m["text"] for m in emulator.inbox("U1")] == ["ようこそ"]
    store = Store(str(tmp_path / "graceful.db"))
    try:
        assert [row["status"] for row in store.outbox()] == ["sent"]
        assert store.lease_holder() is None
    finally:
        store.close()


def test_a_second_sigterm_exits_at_once(tmp_path, processes):
    rules = write_rules(tmp_path / "rules")
    with run_in_thread() as emulator:
        emulator.add_user("U1", "Hanako")
        emulator.inject_timeout("push", delay=30.0)
        runner = processes(rules, tmp_path / "hard.db",
                           env={"LINE_CHANNEL_ACCESS_TOKEN": emulator.access_token,
                                "LINE_API_ENDPOINT": emulator.base_url}).started()
        runner.post_events([follow("U1")])
        wait_until(lambda: emulator.requests_to("push"))
        runner.proc.send_signal(signal.SIGTERM)
        runner.wait_for("stop requested")
        runner.proc.send_signal(signal.SIGTERM)
        assert runner.exit_code(timeout=5) == 1
        runner.wait_for("second signal: exiting now")
    store = Store(str(tmp_path / "hard.db"))
    try:
        assert [row["status"] for row in store.outbox()] == ["pending"]
    finally:
        store.close()


def test_sighup_reloads_a_valid_folder_and_keeps_the_rules_on_an_invalid_one(tmp_path, processes):
    rules = write_rules(tmp_path / "rules")
    runner = processes(rules, tmp_path / "reload.db", tick=30).started()
    _, before = runner.get("/healthz")
    (rules / "main.rule").write_text(RULES + "\nrule broken\n  when followed\n  then send nothing_here\n",
                                     encoding="utf-8")
    runner.proc.send_signal(signal.SIGHUP)
    runner.wait_for(r"reload \(SIGHUP\) refused: the rules are invalid")
    runner.wait_for(r"main\.rule:7:\d+: error\[LR102\]: .*nothing_here")
    assert runner.get("/healthz")[1]["rules_version"] == before["rules_version"]
    (rules / "main.rule").write_text(RULES + "\nrule thanks\n  when purchased\n  then send thanks\n",
                                     encoding="utf-8")
    runner.proc.send_signal(signal.SIGHUP)
    version = runner.wait_for(r"rules reloaded \(version (\S+), 2 rules, SIGHUP\)").group(1)
    assert version != before["rules_version"]
    assert runner.get("/healthz")[1]["rules_version"] == version
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0


def test_invalid_rules_at_start_exit_1_with_the_diagnostics(tmp_path, processes):
    rules = write_rules(tmp_path / "rules", "rule x\n  when followed\n  then send nothing_here\n")
    runner = processes(rules, tmp_path / "bad.db")
    assert runner.exit_code() == 1
    runner.wait_for(r"main\.rule:3:\d+: error\[LR102\]: .*nothing_here")
    runner.wait_for(r"cannot start: the rules in .* are invalid")
    assert not [line for line in runner.lines if "Traceback" in line]


def test_a_port_in_use_exits_1_with_a_clear_message(tmp_path):
    rules = write_rules(tmp_path / "rules")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        linerules = Path(sys.executable).parent / "linerules"
        runner = subprocess.run([str(linerules), "run", "--rules", str(rules), "--db",
                                 str(tmp_path / "port.db"), "--listen", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=30, cwd=REPO)
    assert runner.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in runner.stderr
    assert "Traceback" not in runner.stderr
    store = Store(str(tmp_path / "port.db"))
    try:
        assert store.lease_holder() is None
    finally:
        store.close()
