"""Fresh ``python`` processes without paying for Python's and the project's imports each time.

Most of what a test that starts ``linerules`` as its own process waits for is the start-up:
the interpreter, then the imports (line-bot-sdk alone builds some 850 pydantic models, two
seconds of CPU). A *fork server* pays for them once: a process of its own imports the modules it
is given, then forks a child for every command it is asked to run. The child is a real process
of its own — its own pid, file descriptors, environment and working directory, real signals, a
real exit status — that starts with those modules already imported and nothing else done: no
rule folder read, no database opened, no cache consulted. A command is given as the arguments
of ``python`` (``["-c", code, ...]``, ``["-m", module, ...]`` or ``[script, ...]``).

``run`` is :func:`subprocess.run` with ``capture_output=True, text=True``; ``popen`` is a
:class:`subprocess.Popen` with ``stdout``/``stderr`` as given (``DEVNULL`` or ``PIPE``). There
is one server per list of modules (a server that imported PyYAML cannot answer "did validate
import PyYAML?"), started on first use and stopped with the test process that started it; under
pytest-xdist the process that starts the workers starts them (:func:`share`, tests/conftest.py)
and every worker uses them.

What a forked child cannot have: the interpreter's own start-up options taken from the
environment it is given (``PYTHONPATH``, ``PYTHONHASHSEED``, ``-X`` options, ...): it has the
server's. The tests that start runners or ``linerules`` through here need none of them; the
start-up itself (``python runner.py``, ``make run``) is tested by processes of their own
(tests/test_runner_process.py).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: What ``python runner.py`` imports before it reads a rule folder (line-bot-sdk as the dispatcher does)
RUNNER = (
    "engine.cli",
    "engine.language.project",
    "engine.runner.server",
    "linebot.v3.messaging",
    "linebot.v3.messaging.async_rest",
)
#: What ``linerules migrate-db`` imports
MIGRATE_DB = ("engine.cli", "engine.language.validate", "engine.runtime.migrate_db", "psycopg")
#: What ``linerules validate`` imports before it reads a file (and nothing a warm validate must
#: not import: not PyYAML, Liquid or croniter)
CLI = ("engine.cli", "engine.language.validate")

_servers: dict[tuple[str, ...], _Server] = {}
_lock = threading.Lock()
#: CPU seconds (user + system) of the children that have ended, as the server measured them
children_cpu = 0.0


def run(
    args: list[str],
    *,
    preload: tuple[str, ...],
    cwd: Path | str,
    env: dict[str, str],
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """``python ARGS`` in a child of the fork server for ``preload``: exit status, stdout, stderr
    (text, UTF-8)."""
    child = popen(args, preload=preload, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=timeout)
    return subprocess.CompletedProcess([sys.executable, *args], child.returncode, out, err)


#: ``linerules validate ARGS``, then which of the modules named in ``LINERULES_PROBE`` the run
#: imported, one ``imported NAME: True|False`` line each on stderr (:func:`validate_probe`)
_PROBE = (
    "import os, sys; from engine.cli import cli\n"
    "try:\n"
    "    cli(['validate', *sys.argv[1:]])\n"
    "finally:\n"
    "    for m in os.environ['LINERULES_PROBE'].split():\n"
    "        print(f'imported {m}:', m in sys.modules, file=sys.stderr)\n"
)


def validate_probe(
    args: tuple[str, ...], *, cache: Path | str, cwd: Path | str, modules: tuple[str, ...], lang: str = "en"
) -> tuple[int, str, dict[str, bool]]:
    """``linerules validate ARGS`` in a child (the command line's imports done) with the cache
    folder ``cache``: its exit code, output (stdout, then the rest of stderr) and whether it
    imported each of ``modules`` (a warm run reads neither YAML nor Lark for unchanged files)."""
    env = {
        **os.environ,
        "LINERULES_CACHE_DIR": str(cache),
        "LINERULES_LANG": lang,
        "LINERULES_PROBE": " ".join(modules),
    }
    env.pop("LINE_LOGIN_CHANNEL_ID", None)
    env.pop("LINE_LOGIN_CHANNEL_SECRET", None)
    proc = run(["-c", _PROBE, *args], preload=CLI, cwd=cwd, env=env, timeout=120)
    imported, other = {}, []
    for line in proc.stderr.splitlines(keepends=True):
        name, sep, said = line.removeprefix("imported ").partition(": ")
        if line.startswith("imported ") and sep and name in modules:
            imported[name] = said.strip() == "True"
        else:
            other.append(line)
    return proc.returncode, proc.stdout + "".join(other), imported


def popen(
    args: list[str],
    *,
    preload: tuple[str, ...],
    cwd: Path | str,
    env: dict[str, str],
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.PIPE,
) -> Child:
    return _server(preload).spawn(args, cwd=str(cwd), env=env, stdout=stdout, stderr=stderr)


def share(*preloads: tuple[str, ...]) -> None:
    """Start a server for each list of modules now, for this process and the processes it starts
    later (pytest-xdist's workers): they find them in the environment (:data:`ENV`). The
    servers import in the background; a child asked for before they are ready waits for them."""
    shared = json.loads(os.environ.get(ENV, "{}"))
    for preload in preloads:
        shared[_key(preload)] = _server(preload).path
    os.environ[ENV] = json.dumps(shared)


#: The servers :func:`share` started, by list of modules: ``{"engine.cli,...": socket path}``
ENV = "LINERULES_TEST_FORK_SERVERS"


def _key(preload: tuple[str, ...]) -> str:
    return ",".join(preload)


def _server(preload: tuple[str, ...]) -> _Server:
    with _lock:
        server = _servers.get(preload)
        if server is None or not server.alive():
            shared = json.loads(os.environ.get(ENV, "{}")).get(_key(preload))
            server = _servers[preload] = _Server(preload, shared=shared)
    return server


class Child:
    """The part of :class:`subprocess.Popen` the tests use, for a child of a fork server: the
    server waits for it and sends its exit status over this child's own connection."""

    def __init__(self, args: list[str], conn: _Messages, pid: int, stdout, stderr):
        self.args = args
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._conn = conn

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read_status(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._read_status(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _read_status(self, timeout: float | None) -> bool:
        try:
            message = self._conn.next(timeout)
        except TimeoutError:
            return False
        # the server says {"exit": code, "cpu": seconds}; a server that died took its children with it
        self.returncode = message["exit"] if message else -signal.SIGKILL
        global children_cpu
        children_cpu += message["cpu"] if message else 0.0
        self._conn.close()
        return True

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """Read stdout and stderr to their end, then wait for the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks: dict[object, list[bytes]] = {}
        with selectors.DefaultSelector() as sel:
            for stream in (self.stdout, self.stderr):
                if stream is not None:
                    chunks[stream] = []
                    sel.register(stream, selectors.EVENT_READ)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.kill()
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in sel.select(left):
                    data = os.read(key.fd, 65536)
                    if data:
                        chunks[key.fileobj].append(data)
                    else:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        text = {
            s: b"".join(c).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
            for s, c in chunks.items()
        }
        return text.get(self.stdout), text.get(self.stderr)


class _Server:
    """One fork server: ``python forkkit.py SOCKET MODULE...``, listening on SOCKET once its
    imports are done; or one another process started (``shared``: its socket)."""

    def __init__(self, preload: tuple[str, ...], *, shared: str | None = None):
        self.preload = preload
        self.proc: subprocess.Popen | None = None
        if shared:
            self.path = shared
            return
        self._dir = tempfile.mkdtemp(prefix="forkkit-")
        self.path = os.path.join(self._dir, "s")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.path, *preload],
            stdin=subprocess.PIPE,  # the server ends when this test process does (end of its stdin)
        )
        atexit.register(self.stop)

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def _connect(self) -> socket.socket:
        """A connection to the server, once it listens (its imports take seconds)."""
        deadline = time.monotonic() + 120
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"the fork server for {self.preload} ended ({self.proc.returncode})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the fork server for {self.preload} did not start") from None
                time.sleep(0.01)

    def spawn(self, args: list[str], *, cwd: str, env: dict[str, str], stdout, stderr) -> Child:
        ends: dict[str, int] = {}
        ours: dict[str, object] = {}  # our ends of the pipes, read as UTF-8 text
        opened: list[int] = []
        for name, how in (("stdout", stdout), ("stderr", stderr)):
            if how == subprocess.PIPE:
                r, ends[name] = os.pipe()
                ours[name] = os.fdopen(r, "r", encoding="utf-8", errors="replace")
            elif how == subprocess.DEVNULL or how is None:
                ends[name] = os.open(os.devnull, os.O_WRONLY)
            else:
                raise ValueError(f"{name}={how!r}: only PIPE or DEVNULL")
            opened.append(ends[name])
        stdin = os.open(os.devnull, os.O_RDONLY)
        opened.append(stdin)
        try:
            sock = self._connect()
            conn = _Messages(sock)
            request = json.dumps({"args": args, "cwd": cwd, "env": env}).encode()
            socket.send_fds(sock, [request], [stdin, ends["stdout"], ends["stderr"]])
            pid = conn.next(60)["pid"]
        finally:
            for fd in opened:
                os.close(fd)
        out, err = ours.get("stdout"), ours.get("stderr")
        return Child([sys.executable, *args], conn, pid, out, err)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self._dir)


class _Messages:
    """The server's answers on one connection: a JSON object per line."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = b""

    def next(self, timeout: float | None) -> dict | None:
        """The next answer (None when the server closed the connection without one); raises
        TimeoutError when none came within ``timeout`` seconds (0: do not wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                raise TimeoutError from None
            except OSError:
                data = b""
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------------------- the server


def _serve(path: str, preload: list[str]) -> None:
    import importlib

    for name in preload:
        importlib.import_module(name)
    sys.stdout.flush()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # there once it listens
    children: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "child")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):  # the test process has ended
                    for pid in children:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                    return
            elif key.data == "child":
                with contextlib.suppress(OSError):
                    os.read(wake_r, 4096)
            else:
                conn, _ = listener.accept()
                msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                request = json.loads(msg)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    listener.close()
                    for other in children.values():
                        other.close()
                    conn.close()
                    signal.set_wakeup_fd(-1)
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(request, fds)  # never returns
                for fd in fds:
                    os.close(fd)
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                children[pid] = conn
        while children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    code, cpu = os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
                    conn.sendall(json.dumps({"exit": code, "cpu": cpu}).encode() + b"\n")
                conn.close()


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become ``python ARGS`` in the given folder and environment."""
    import runpy
    import traceback
    import types

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        args = request["args"]
        if args[0] == "-c":
            sys.argv = ["-c", *args[2:]]
            sys.path[0] = ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(args[1], "<string>", "exec"), main.__dict__)
        elif args[0] == "-m":
            import warnings

            # the module may be one the server imported: run it as __main__ all the same
            warnings.filterwarnings("ignore", "'.*' found in sys.modules after import", RuntimeWarning)
            sys.argv = [args[1], *args[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not tests/
    _serve(sys.argv[1], sys.argv[2:])
