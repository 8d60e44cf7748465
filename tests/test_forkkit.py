"""The fork server the process tests start ``python`` through (tests/forkkit.py): each child is
a process of its own, as ``python ARGS`` would be, with the server's imports done and nothing
else carried over from the server or from the children before it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import forkkit

#: a server of its own for these tests (nothing the other tests' servers imported)
PRELOAD = ("json",)
CODE = (
    "import json, os, sys\n"
    "print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'env': os.environ.get('FORKKIT_T'),\n"
    "                  'pid': os.getpid(), 'ppid': os.getppid(), 'yaml': 'yaml' in sys.modules}))\n"
    "print('to stderr', file=sys.stderr)\n"
    "sys.exit(int(sys.argv[1]))\n"
)


def test_a_child_is_python_dash_c_in_its_own_folder_environment_and_process(tmp_path):
    import json

    run = forkkit.run(["-c", CODE, "3"], preload=PRELOAD, cwd=tmp_path, env={"FORKKIT_T": "ね"}, timeout=30)
    assert run.returncode == 3
    assert run.stderr == "to stderr\n"
    seen = json.loads(run.stdout)
    assert seen["argv"] == ["-c", "3"] and seen["cwd"] == str(tmp_path) and seen["env"] == "ね"
    assert seen["pid"] not in (os.getpid(), seen["ppid"]) and seen["ppid"] != os.getpid()
    assert seen["yaml"] is False  # only what the server was asked to import
    again = json.loads(forkkit.run(["-c", CODE, "0"], preload=PRELOAD, cwd=tmp_path, env={}).stdout)
    assert again["pid"] != seen["pid"] and again["env"] is None


def test_modules_and_scripts_run_as_main_with_their_exit_status(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text("import sys\nprint(__name__, sys.argv[1:])\nraise SystemExit('bad input')\n")
    run = forkkit.run([str(script), "a", "b"], preload=PRELOAD, cwd=tmp_path, env={})
    assert (run.returncode, run.stdout, run.stderr) == (1, "__main__ ['a', 'b']\n", "bad input\n")
    run = forkkit.run(["-m", "json.tool", "--compact"], preload=PRELOAD, cwd=tmp_path, env={})
    # stdin is empty (/dev/null), as with subprocess.DEVNULL
    assert (run.returncode, run.stdout, run.stderr) == (1, "", "Expecting value: line 1 column 1 (char 0)\n")
    run = forkkit.run(["-c", "raise ValueError('boom')"], preload=PRELOAD, cwd=tmp_path, env={})
    assert run.returncode == 1 and run.stderr.rstrip().endswith("ValueError: boom")


def test_nothing_a_child_did_is_seen_by_the_next(tmp_path):
    mark = "import json; print(getattr(json, 'marked', 'clean')); json.marked = 'dirty'"
    first = forkkit.run(["-c", mark], preload=PRELOAD, cwd=tmp_path, env={})
    second = forkkit.run(["-c", mark], preload=PRELOAD, cwd=tmp_path, env={})
    assert first.stdout == second.stdout == "clean\n"


def test_real_signals_and_exit_statuses(tmp_path):
    child = forkkit.popen(
        ["-c", "import sys, time\nprint('up', file=sys.stderr, flush=True)\ntime.sleep(60)"],
        preload=PRELOAD,
        cwd=tmp_path,
        env={},
    )
    assert next(iter(child.stderr)) == "up\n"  # read line by line while it runs
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.1)
    child.send_signal(signal.SIGSTOP)
    child.send_signal(signal.SIGCONT)
    child.kill()
    assert child.wait(timeout=10) == -signal.SIGKILL
    child.kill()  # gone: nothing happens

    child = forkkit.popen(["-c", "import time; time.sleep(60)"], preload=PRELOAD, cwd=tmp_path, env={})
    time.sleep(0.2)
    child.terminate()
    assert child.wait(timeout=10) == -signal.SIGTERM


def test_a_child_that_takes_too_long_is_killed(tmp_path):
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        forkkit.run(["-c", "import time; time.sleep(60)"], preload=PRELOAD, cwd=tmp_path, env={}, timeout=0.5)
    assert time.monotonic() - started < 30


def test_each_list_of_modules_has_a_server_of_its_own(tmp_path):
    probe = ["-c", "import sys; print(sorted(m for m in ('csv', 'wave') if m in sys.modules))"]
    assert forkkit.run(probe, preload=("csv",), cwd=tmp_path, env={}).stdout == "['csv']\n"
    assert forkkit.run(probe, preload=("wave",), cwd=tmp_path, env={}).stdout == "['wave']\n"
    assert forkkit.run(probe, preload=PRELOAD, cwd=tmp_path, env={}).stdout == "[]\n"
