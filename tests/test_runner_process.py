"""``python runner.py`` / ``linerules run`` as a real process: start-up in dry-run on the
sample rules, the one-runner lease, graceful SIGTERM, and SIGHUP reloads."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from engine.runner.runloop import DRY_RUN_MESSAGE
from engine.runtime.store import Store
from runnerkit import REPO, RULES, follow, wait_until, write_rules


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


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(tmp_path, processes, line_emulator, line_env):
    rules = write_rules(tmp_path / "rules")
    line_emulator.add_user("U1", "Hanako")
    line_emulator.inject_timeout("push", delay=1.0)  # the first push hangs for a second
    runner = processes(rules, tmp_path / "graceful.db", env=line_env).started()
    runner.post_events([follow("U1")])
    wait_until(lambda: line_emulator.requests_to("push"))
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0
    assert [m["text"] for m in line_emulator.inbox("U1")] == ["ようこそ"]
    store = Store(str(tmp_path / "graceful.db"))
    try:
        assert [row["status"] for row in store.outbox()] == ["sent"]
        assert store.lease_holder() is None
    finally:
        store.close()


def test_a_second_sigterm_exits_at_once(tmp_path, processes, line_emulator, line_env):
    rules = write_rules(tmp_path / "rules")
    line_emulator.add_user("U1", "Hanako")
    line_emulator.inject_timeout("push", delay=30.0)
    runner = processes(rules, tmp_path / "hard.db", env=line_env).started()
    runner.post_events([follow("U1")])
    wait_until(lambda: line_emulator.requests_to("push"))
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
    (rules / "main.rule").write_text(
        RULES + "\nrule broken\n  when followed\n  then send nothing_here\n", encoding="utf-8"
    )
    runner.proc.send_signal(signal.SIGHUP)
    runner.wait_for(r"reload \(SIGHUP\) refused: the rules are invalid")
    runner.wait_for(r"main\.rule:7:\d+: error\[LR102\]: .*nothing_here")
    health = runner.get("/healthz")[1]
    assert health["rules_version"] == before["rules_version"] and health["status"] == "ok"
    # the operator sees it without reading the log: the folder on disk is refused
    refused = health["refused_reload"]
    assert (refused["why"], refused["keeping"]) == ("SIGHUP", before["rules_version"])
    assert re.match(r".*main\.rule:7:\d+: error\[LR102\]: .*nothing_here", refused["error"]), refused
    (rules / "main.rule").write_text(RULES + "\nrule thanks\n  when purchased\n  then send thanks\n", encoding="utf-8")
    runner.proc.send_signal(signal.SIGHUP)
    version = runner.wait_for(r"rules reloaded \(version (\S+), 2 rules, SIGHUP\)").group(1)
    assert version != before["rules_version"]
    health = runner.get("/healthz")[1]
    assert health["rules_version"] == version and health["refused_reload"] is None
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
        runner = subprocess.run(
            [
                str(linerules),
                "run",
                "--rules",
                str(rules),
                "--db",
                str(tmp_path / "port.db"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    assert runner.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in runner.stderr
    assert "Traceback" not in runner.stderr
    store = Store(str(tmp_path / "port.db"))
    try:
        assert store.lease_holder() is None
    finally:
        store.close()
