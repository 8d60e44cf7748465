"""The deployment files in deploy/ (docs/scale.md, "Deploying") against the real program.

- The Compose files are valid against the Compose Specification's own JSON schema
  (tests/data/compose-spec.json, from compose-spec/compose-spec, Apache-2.0), and every
  runner the load balancer names is a service of them, on the port its command listens on.
- Every LINERULES_*/LINE_*/SHOPIFY_* variable the files set is one the runner reads: recorded
  while the real runner starts (its config, logging, rules, store, LINE transport) with the
  environment replaced by one that notes every name looked up.
- Every command line (Dockerfile, Compose, systemd unit) is parsed by the real CLI's parser.
- The unit passes ``systemd-analyze verify`` and its hardening is scored by ``systemd-analyze
  security``; the HAProxy config passes ``haproxy -c`` and, in front of two real runner
  processes, passes signed LINE and Shopify webhooks through byte for byte, spreads them over
  both runners and keeps taking them when one is killed. (Those last ones need the haproxy
  binary, which `make test` installs; without it they are skipped and say so.)
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from dockerfile_parse import DockerfileParser
from psycopg.conninfo import conninfo_to_dict

from engine.cli import cli
from engine.line.dispatch import LINE_TIMEOUT
from engine.runner.runloop import Runner, RunnerConfig
from engine.runner.server import _zone_of, build_app, setup_logging
from engine.testing.webhooks import line_event, signature, signed_webhook
from runnerkit import API_TOKEN, rows, wait_until, write_rules

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SECOND = DEPLOY / "compose.second-channel.yaml"
HAPROXY_CFG = DEPLOY / "haproxy.cfg"
UNIT = DEPLOY / "systemd" / "linerules@.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "shop_a.env.example"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
#: Where the official haproxy image reads its configuration.
HAPROXY_IMAGE_CFG = "/usr/local/etc/haproxy/haproxy.cfg"
#: The variables of libpq (psycopg's) a deployment may set.
LIBPQ = {"PGPASSWORD", "PGPASSFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGCONNECT_TIMEOUT", "PGAPPNAME"}
#: Set in the Dockerfile for Python and pip themselves.
PYTHON_ENV = {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
RUNNER_PREFIXES = ("LINERULES_", "LINE_", "SHOPIFY_")


# ----------------------------------------------------------------------------- reading the files


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def merged(*paths: Path) -> dict:
    """``docker compose -f A -f B``: here every file adds services, secrets and volumes of its
    own (an override that redefined shop_a's would be a mistake, so it is refused)."""
    out: dict = {"services": {}, "secrets": {}, "volumes": {}}
    for path in paths:
        doc = load_yaml(path)
        for key in out:
            for name, value in (doc.get(key) or {}).items():
                assert name not in out[key], f"{path.name} redefines {key[:-1]} {name}"
                out[key][name] = value
    return out


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name) or None
        if op == ":-":
            return value if value is not None else arg
        if op == ":?" and value is None:
            raise LookupError(f"{name}: {arg}")
        return value or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def is_runner(service: dict) -> bool:
    return (service.get("command") or [None, None])[:2] == ["linerules", "run"]


def runners(doc: dict) -> dict[str, dict]:
    return {name: s for name, s in doc["services"].items() if is_runner(s)}


def load_balancers(doc: dict) -> dict[str, dict]:
    return {name: s for name, s in doc["services"].items() if str(s.get("image", "")).startswith("haproxy:")}


def run_context(argv: list[str], env: dict[str, str] | None = None) -> click.Context:
    """``argv`` (``linerules run ...``) parsed by the real CLI: an unknown option or a value
    not of its option's form raises click's UsageError/BadParameter, as the program would."""
    assert Path(argv[0]).name == "linerules", argv
    command = cli.get_command(click.Context(cli), argv[1])
    assert command is not None, f"`linerules {argv[1]}` is not a command"
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        return command.make_context(argv[1], list(argv[2:]))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def listen_port(argv: list[str]) -> int:
    return int(run_context(argv).params["listen"].rpartition(":")[2])


def schema_of(db_url: str) -> str:
    """The schema a ``postgresql://...?options=-csearch_path%3DNAME`` URL puts the tables in,
    read by libpq's own parser (psycopg's ``conninfo_to_dict``: a misspelt parameter fails)."""
    params = conninfo_to_dict(db_url)
    assert params.get("password") is None, "the password stays out of the URL (PGPASSWORD)"
    m = re.fullmatch(r"-c\s*search_path=(\w+)", params.get("options", ""))
    assert m, f"no schema (options=-csearch_path%3D...) in {db_url}"
    return m.group(1)


def haproxy_servers() -> dict[str, str]:
    """``server NAME "${VAR}"`` lines of the runners' backend: {NAME: VAR}."""
    text = HAPROXY_CFG.read_text(encoding="utf-8")
    found = dict(re.findall(r'^\s*server\s+(\S+)\s+"\$\{(\w+)\}"', text, re.M))
    assert found, 'no `server NAME "${VAR}"` line in haproxy.cfg'
    return found


def haproxy_public_paths() -> tuple[set[str], set[str]]:
    """(exact paths, path prefixes) the load balancer passes on."""
    text = HAPROXY_CFG.read_text(encoding="utf-8")
    exact = {p for line in re.findall(r"^\s*acl public path (.+)$", text, re.M) for p in line.split()}
    prefixes = {p for line in re.findall(r"^\s*acl public path_beg (.+)$", text, re.M) for p in line.split()}
    assert "http-request deny deny_status 404 unless public" in text
    return exact, prefixes


def unit_directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, continuation lines joined."""
    out, section = [], ""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def entrypoint_secrets() -> set[str]:
    """The names the image's entry point fills from NAME_FILE."""
    m = re.search(r"^for name in (.*?); do", ENTRYPOINT.read_text(encoding="utf-8"), re.M | re.S)
    assert m
    return set(m.group(1).replace("\\\n", " ").split())


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DEPLOY / "Dockerfile"))


def exec_form(instruction: dict) -> list[str]:
    value = instruction["value"]
    assert value.lstrip().startswith("["), f"{instruction['instruction']} is not in exec form: {value}"
    return json.loads(value)


def dockerfile_env() -> dict[str, str]:
    env = {}
    for ins in dockerfile().structure:
        if ins["instruction"] == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(ins["value"])))
    return env


def unit_exec_start(instance: str = "shop_a") -> list[str]:
    """The unit's ExecStart for ``linerules@INSTANCE``, with ``%i`` and the env file's ``${VAR}``
    filled in as systemd does."""
    (value,) = [v for s, k, v in unit_directives(UNIT.read_text(encoding="utf-8")) if k == "ExecStart"]
    env = env_file(ENV_EXAMPLE)
    value = value.replace("%i", instance)
    value = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], value)
    return shlex.split(value)


# ----------------------------------------------------------------------------- what the runner reads


class RecordingEnviron(dict):
    """An environment that notes every name looked up (a dict, so that copying it whole, as
    the runner's config does once for the LINE transport, records nothing)."""

    def __init__(self, base):
        super().__init__(base)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


@pytest.fixture
def opened_runner(tmp_path, monkeypatch):
    """The real runner opened the way ``linerules run`` opens it (logging, config, rules, store,
    lease, LINE transport) with ``os.environ`` recording what it reads: (runner, names read)."""
    rules = write_rules(tmp_path / "rules")
    env = RecordingEnviron({k: v for k, v in os.environ.items() if not k.startswith(RUNNER_PREFIXES)})
    if cache := os.environ.get("LINERULES_CACHE_DIR"):
        dict.__setitem__(env, "LINERULES_CACHE_DIR", cache)
    monkeypatch.setattr(os, "environ", env)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging(_zone_of(str(rules)))
        config = RunnerConfig.from_env(env, rules_dir=rules, db=tmp_path / "linerules.db", listen="127.0.0.1:0")
        runner = Runner.open(dataclasses.replace(config, env=env))  # the transport reads env too
    finally:
        root.handlers[:], root.level = handlers, level
    read = set(env.read)
    read |= {p.envvar for p in cli.commands["run"].params if isinstance(p.envvar, str)}
    monkeypatch.undo()
    yield runner, read
    try:
        runner.close()
    except sqlite3.ProgrammingError:
        assert runner.store_closed_by_test  # the health check test closed the database


def test_the_recording_sees_what_the_runner_reads(opened_runner):
    _runner, read = opened_runner
    # one from each reader: the config, click's --db, logging, the rule cache, the LINE transport,
    # the language, the LINE Login settings
    for name in (
        "LINE_CHANNEL_SECRET",
        "LINERULES_DB",
        "LINERULES_LOG_LEVEL",
        "LINERULES_CACHE_DIR",
        "LINE_API_ENDPOINT",
        "LINERULES_LANG",
        "LINE_LOGIN_CHANNEL_SECRET",
    ):
        assert name in read, name
    assert "LINERULES_NO_SUCH_SETTING" not in read


def deployment_environments() -> list[tuple[str, dict[str, str]]]:
    """(where, variables) of every place the deployment sets the runner's environment."""
    out = [(f"{COMPOSE.name} {name}", env_of(s)) for name, s in runners(merged(COMPOSE)).items()]
    out += [(f"{SECOND.name} {name}", env_of(s)) for name, s in runners(load_yaml(SECOND)).items()]
    out.append(("Dockerfile ENV", dockerfile_env()))
    out.append((ENV_EXAMPLE.name, env_file(ENV_EXAMPLE)))
    unit_env = [v for s, k, v in unit_directives(UNIT.read_text(encoding="utf-8")) if k == "Environment"]
    out.append((UNIT.name, dict(item.split("=", 1) for v in unit_env for item in shlex.split(v))))
    return out


def test_every_variable_the_deployment_sets_is_one_the_runner_reads(opened_runner):
    _runner, read = opened_runner
    from_files = entrypoint_secrets()
    unit_text = UNIT.read_text(encoding="utf-8")
    wrong = []
    for where, env in deployment_environments():
        assert env, where
        for name in env:
            base = name.removesuffix("_FILE") if name.endswith("_FILE") else name
            if name != base and base not in from_files:
                wrong.append(f"{where}: {name} (the entry point does not read {base} from a file)")
            elif base.startswith(RUNNER_PREFIXES):
                if base not in read:
                    wrong.append(f"{where}: {name} (the runner never reads {base})")
            elif base in LIBPQ or (where == "Dockerfile ENV" and base in PYTHON_ENV):
                pass
            elif f"${{{base}}}" not in unit_text:  # e.g. LISTEN, for the unit's ExecStart
                wrong.append(f"{where}: {name} (read by nothing)")
    assert not wrong, "\n".join(wrong)
    # and the secrets the entry point reads from files are all the runner's (or libpq's)
    assert all(n in read or n in LIBPQ for n in from_files), from_files - read


def test_a_misspelt_variable_would_be_caught(opened_runner):
    """The check above is not vacuous: LINERULES_DATABASE (for LINERULES_DB) is not read."""
    _runner, read = opened_runner
    assert "LINERULES_DATABASE" not in read and "LINE_CHANNEL_TOKEN" not in read


# ----------------------------------------------------------------------------- Compose


@pytest.mark.parametrize("path", [COMPOSE, SECOND], ids=lambda p: p.name)
def test_compose_file_is_valid_against_the_compose_specification(path):
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text(encoding="utf-8"))
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(load_yaml(path))
    ]
    assert not errors, "\n".join(errors)


def test_the_schema_check_fails_on_a_misspelt_key():
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text(encoding="utf-8"))
    doc = load_yaml(COMPOSE)
    doc["services"]["postgres"]["healthchek"] = doc["services"]["postgres"].pop("healthcheck")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(doc))


def test_compose_runs_postgres_and_two_runners_of_one_channel_behind_a_load_balancer():
    doc = merged(COMPOSE)
    pg = doc["services"]["postgres"]
    assert pg["image"].startswith("postgres:") and "healthcheck" in pg
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in pg["volumes"]), "PostgreSQL's data on a volume"
    assert len(runners(doc)) == 2
    for name, service in runners(doc).items():
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert env_of(service)["LINERULES_DB"].startswith("postgresql://")
        assert "LINE_CHANNEL_SECRET" not in env_of(service), "the secret comes from a file, not the compose file"
    assert len(load_balancers(doc)) == 1


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, SECOND]], ids=["one channel", "two channels"])
def test_every_runner_the_load_balancer_names_is_a_runner_service_on_its_port(files):
    doc = merged(*files)
    servers = haproxy_servers()
    for lb_name, lb in load_balancers(doc).items():
        mounts = [interpolate(v, {}) for v in lb["volumes"]]
        assert f"./{HAPROXY_CFG.name}:{HAPROXY_IMAGE_CFG}:ro" in mounts, lb_name
        env = env_of(lb)
        for server, var in servers.items():
            assert var in env, f"{lb_name} does not set {var} (server {server} of haproxy.cfg)"
            host, _, port = env[var].rpartition(":")
            assert host in doc["services"], f"{lb_name}: {var}={env[var]}: no service {host}"
            runner = doc["services"][host]
            assert is_runner(runner), f"{lb_name}: {host} is not a runner"
            assert int(port) == listen_port(runner["command"]), f"{lb_name}: {host} listens elsewhere"
            assert host in lb["depends_on"]


def test_each_channel_has_its_own_schema_secrets_and_runners():
    """A load balancer's runners are one channel: one schema, one channel secret; two channels
    never share a schema, a secret file or a published port."""
    doc = merged(COMPOSE, SECOND)
    channels = {}
    for lb_name, lb in load_balancers(doc).items():
        members = [doc["services"][env_of(lb)[var].rpartition(":")[0]] for var in haproxy_servers().values()]
        schemas = {schema_of(env_of(m)["LINERULES_DB"]) for m in members}
        secrets = {
            json.dumps(sorted(s["source"] for s in m["secrets"] if isinstance(s, dict)))
            for m in members  # the channel's secrets (postgres_password is shared)
        }
        assert len(schemas) == 1 and len(secrets) == 1, (lb_name, schemas, secrets)
        channels[lb_name] = (schemas.pop(), secrets.pop(), tuple(lb["ports"]))
    assert len(channels) == 2
    (schema_a, secrets_a, ports_a), (schema_b, secrets_b, ports_b) = channels.values()
    assert schema_a != schema_b and set(json.loads(secrets_a)).isdisjoint(json.loads(secrets_b))
    assert ports_a != ports_b
    # every secret a runner mounts is declared, with a file under deploy/secrets/ (not in git)
    for name, service in runners(doc).items():
        for secret in service["secrets"]:
            source = secret["source"] if isinstance(secret, dict) else secret
            assert doc["secrets"][source]["file"].startswith("./secrets/"), (name, source)
            target = secret.get("target", source) if isinstance(secret, dict) else secret
            assert f"/run/secrets/{target}" in env_of(service).values(), f"{name}: {target} mounted but not used"


def test_every_runner_mounts_its_rule_folder_read_only_where_its_command_reads_it():
    for path in (COMPOSE, SECOND):
        for name, service in runners(merged(path)).items():
            rules = run_context(service["command"]).params["rules_dir"]
            assert any(str(v).endswith(f":{rules}:ro") for v in service["volumes"]), name
    # the first channel runs the sample rules until it is pointed elsewhere; the second must be
    (volume,) = merged(COMPOSE)["services"]["shop-a-runner-1"]["volumes"]
    assert (DEPLOY / interpolate(volume, {}).split(":")[0] / "settings.yaml").is_file()
    (volume,) = merged(SECOND)["services"]["shop-b-runner-1"]["volumes"]
    with pytest.raises(LookupError, match="SHOP_B_RULES"):
        interpolate(volume, {})


def test_the_grace_before_a_kill_covers_the_runners_drain():
    """SIGTERM lets the requests in flight end (each within the LINE timeout, and tried again
    at most within as long) and the HTTP server close (10 s), after the tick in progress: the
    unit's TimeoutStopSec and compose's stop_grace_period are the same and leave that room."""
    (stop,) = [v for s, k, v in unit_directives(UNIT.read_text(encoding="utf-8")) if k == "TimeoutStopSec"]
    assert int(stop) >= 2 * LINE_TIMEOUT + 10 + 60
    for name, service in runners(merged(COMPOSE, SECOND)).items():
        assert service["stop_grace_period"] == f"{stop}s", name
    assert [v for s, k, v in unit_directives(UNIT.read_text(encoding="utf-8")) if k == "KillSignal"] == ["SIGTERM"]
    assert any(i["instruction"] == "STOPSIGNAL" and i["value"] == "SIGTERM" for i in dockerfile().structure)


# ----------------------------------------------------------------------------- the command lines


def test_linerules_run_has_help():
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--rules", "--db", "--listen", "--tick"):
        assert option in result.output


def command_lines() -> list[tuple[str, list[str], dict[str, str]]]:
    out = [(f"compose {n}", s["command"], env_of(s)) for n, s in runners(merged(COMPOSE, SECOND)).items()]
    (cmd,) = [i for i in dockerfile().structure if i["instruction"] == "CMD"]
    out.append(("Dockerfile CMD", exec_form(cmd), {}))
    out.append(("systemd ExecStart", unit_exec_start(), env_file(ENV_EXAMPLE)))
    return out


@pytest.mark.parametrize("where,argv,env", command_lines(), ids=[c[0] for c in command_lines()])
def test_command_line_is_accepted_by_the_real_cli(where, argv, env):
    ctx = run_context(argv, env)
    assert ctx.params["listen"].rpartition(":")[2].isdigit()
    if "LINERULES_DB" in env:  # --db comes from the environment, as the runner reads it
        assert ctx.params["db"] == env["LINERULES_DB"]
        assert "--db" not in argv


def test_a_wrong_option_would_be_refused():
    with pytest.raises(click.UsageError):
        run_context(["linerules", "run", "--listen", "0.0.0.0"])
    with pytest.raises(click.UsageError):
        run_context(["linerules", "run", "--rule", "/rules"])


def test_dockerfile_builds_the_runner_as_an_unprivileged_user():
    df = dockerfile()
    assert df.baseimage == "python:3.11-slim"
    structure = df.structure
    users = [i["value"] for i in structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    run_lines = " ".join(i["value"] for i in structure if i["instruction"] == "RUN")
    assert "pip install '.[postgres]'" in run_lines
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r"^postgres = \[", pyproject, re.M), "the postgres extra exists"
    for ins in structure:
        if ins["instruction"] == "COPY":
            *sources, _target = shlex.split(ins["value"])
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                assert not _ignored(source), f"COPY {source}: left out by Dockerfile.dockerignore"
    # what the build of pyproject.toml needs is in the image: the readme, the modules, the package
    project = tomllib.loads(pyproject)
    copied = {src for i in structure if i["instruction"] == "COPY" for src in shlex.split(i["value"])[:-1]}
    needed = {"pyproject.toml", project["project"]["readme"], "engine"}
    needed |= {f"{m}.py" for m in project["tool"]["setuptools"]["py-modules"]}
    assert needed <= copied, needed - copied
    (entry,) = [i for i in structure if i["instruction"] == "ENTRYPOINT"]
    assert exec_form(entry) == ["linerules-entrypoint"]
    assert "COPY deploy/docker-entrypoint.sh /usr/local/bin/linerules-entrypoint" in [
        f"COPY {i['value']}" for i in structure if i["instruction"] == "COPY"
    ]
    assert os.access(ENTRYPOINT, os.X_OK), "the entry point is executable (git keeps the bit)"
    (cmd,) = [i for i in structure if i["instruction"] == "CMD"]
    exposed = {i["value"] for i in structure if i["instruction"] == "EXPOSE"}
    assert {str(listen_port(exec_form(cmd)))} == exposed


def _ignored(source: str) -> bool:
    """Whether Dockerfile.dockerignore leaves ``source`` out of the build context ("*" then
    "!path" exceptions)."""
    lines = [x.strip() for x in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()]
    kept = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    return "*" in lines and source.rstrip("/") not in kept


def healthcheck_argv() -> list[str]:
    (hc,) = [i for i in dockerfile().structure if i["instruction"] == "HEALTHCHECK"]
    m = re.search(r"CMD\s+(\[.*\])\s*$", hc["value"], re.S)
    assert m, hc["value"]
    return json.loads(m.group(1))


def test_the_images_healthcheck_asks_the_runner_itself(processes, tmp_path):
    """The HEALTHCHECK command as Docker runs it: exit 0 while /healthz answers 200, not 0
    when nothing answers."""
    argv = healthcheck_argv()
    assert argv[0] == "python" and "/healthz" in argv[-1]
    assert ":8080/healthz" in argv[-1]  # the port of the image's CMD
    argv = [sys.executable, *argv[1:]]  # the image's python, here this one
    runner = processes(write_rules(tmp_path / "rules"), tmp_path / "linerules.db").started()
    ok = subprocess.run(argv, env={**os.environ, "HEALTHCHECK_URL": runner.url + "/healthz"}, timeout=60)
    assert ok.returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/healthz"
    assert subprocess.run(argv, env={**os.environ, "HEALTHCHECK_URL": dead}, timeout=60).returncode != 0


def test_the_entry_point_reads_secrets_from_files(tmp_path):
    secret = tmp_path / "line_channel_secret"
    secret.write_text("s3cr3t with spaces\n", encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "LINE_CHANNEL_SECRET_FILE": str(secret)}
    out = subprocess.run(["sh", str(ENTRYPOINT), "env"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "LINE_CHANNEL_SECRET=s3cr3t with spaces" in lines
    assert not any(x.startswith("LINE_CHANNEL_SECRET_FILE=") for x in lines)
    both = subprocess.run(
        ["sh", str(ENTRYPOINT), "env"], env={**env, "LINE_CHANNEL_SECRET": "x"}, capture_output=True, text=True
    )
    assert both.returncode == 1 and "both LINE_CHANNEL_SECRET and LINE_CHANNEL_SECRET_FILE" in both.stderr
    missing = subprocess.run(
        ["sh", str(ENTRYPOINT), "env"],
        env={**env, "LINE_CHANNEL_SECRET_FILE": str(tmp_path / "nope")},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "cannot be read" in missing.stderr


# ----------------------------------------------------------------------------- systemd


def test_unit_is_a_hardened_template_per_channel():
    directives = unit_directives(UNIT.read_text(encoding="utf-8"))
    service = {k: v for s, k, v in directives if s == "Service"}
    assert service["EnvironmentFile"] == "/etc/linerules/%i.env"
    assert service["Restart"] == "always"
    assert service["User"] not in ("root", "0")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads the rules
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    argv = unit_exec_start("shop_b")
    assert run_context(argv, env_file(ENV_EXAMPLE)).params["rules_dir"] == "/srv/linerules/shop_b/rules"
    # a `%` in Environment= is a specifier: the database URL belongs in the env file
    assert not any(k == "Environment" and "LINERULES_DB" in v for s, k, v in directives)
    assert schema_of(env_file(ENV_EXAMPLE)["LINERULES_DB"]) == "shop_a"


def verifiable_unit(tmp_path: Path) -> Path:
    """The unit as it is, but ExecStart pointing at this checkout's real ``linerules`` (systemd-analyze
    checks that the program exists; /opt/linerules is not installed here)."""
    program = shutil.which("linerules", path=str(Path(sys.executable).parent)) or shutil.which("linerules")
    assert program, "the linerules console script is installed"
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/opt/linerules/bin/linerules " in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("ExecStart=/opt/linerules/bin/linerules ", f"ExecStart={program} "), encoding="utf-8")
    return unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    unit = verifiable_unit(tmp_path)
    instance = unit.with_name("linerules@shop_a.service")
    out = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values ("..., ignoring"): any word on the unit fails
    about_it = [x for x in (out.stdout + out.stderr).splitlines() if "linerules@" in x]
    assert out.returncode == 0 and not about_it, out.stdout + out.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_would_catch_a_misspelt_key(tmp_path):
    unit = verifiable_unit(tmp_path)
    unit.write_text(unit.read_text(encoding="utf-8").replace("TimeoutStopSec=", "TimeoutStopSecs="), encoding="utf-8")
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit.with_name("linerules@shop_a.service"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Unknown key" in out.stderr + out.stdout


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_security_scores_the_unit_as_hardened(tmp_path):
    """`systemd-analyze security` scores exposure from 0 (locked down) to 10; an unhardened
    unit is about 9.6 ("UNSAFE"). This one must stay at 2.0 or below."""
    unit = verifiable_unit(tmp_path).with_name("linerules@shop_a.service")
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout + out.stderr)
    if m is None and "--offline" in out.stderr:
        pytest.skip(f"this systemd-analyze cannot score a unit file offline: {out.stderr.strip()}")
    assert m, out.stdout + out.stderr
    print(f"systemd-analyze security: exposure {m.group(1)}")
    assert float(m.group(1)) <= 2.0, out.stdout


# ----------------------------------------------------------------------------- the load balancer


def test_the_load_balancer_passes_every_public_route_and_keeps_the_rest_inside(opened_runner):
    """The public routes of the real runner's app, and no other, go through: a route added to
    the runner and forgotten here fails; /healthz and /metrics (friend counts) stay inside."""
    runner, _read = opened_runner
    app = build_app(runner, loops=False)
    routes = {r.resource.canonical for r in app.router.routes() if r.method != "HEAD"}
    exact, prefixes = haproxy_public_paths()
    assert {"/callback", "/events", "/shopify/webhooks"} <= exact
    assert exact <= routes, exact - routes
    for prefix in prefixes:
        assert any(r.startswith(prefix) and "{" in r for r in routes), prefix
    inside = {"/healthz", "/metrics"}
    public = routes - inside
    uncovered = {r for r in public if r not in exact and not any(r.startswith(p) for p in prefixes)}
    assert not uncovered, f"routes the load balancer turns away: {sorted(uncovered)}"
    assert not inside & exact and not any(r.startswith(p) for r in inside for p in prefixes)


def health_check_regex() -> re.Pattern:
    m = re.search(r'^\s*http-check expect rstring "(.*)"\s*$', HAPROXY_CFG.read_text(encoding="utf-8"), re.M)
    assert m
    assert re.search(r"^\s*http-check send meth GET uri /healthz\s*$", HAPROXY_CFG.read_text(encoding="utf-8"), re.M)
    return re.compile(m.group(1).replace('\\"', '"'))


async def test_the_health_check_passes_while_the_database_takes_writes(opened_runner, aiohttp_client):
    """The load balancer's check on the real /healthz: a runner whose LINE token is refused
    (every send held, 503) still takes webhooks; one whose database is gone does not."""
    runner, _read = opened_runner
    regex = health_check_regex()
    client = await aiohttp_client(build_app(runner, loops=False))
    resp = await client.get("/healthz")
    assert resp.status == 200 and regex.search(await resp.text())
    runner.auth_problem = "401 Unauthorized"
    resp = await client.get("/healthz")
    assert resp.status == 503 and regex.search(await resp.text())
    runner.auth_problem = None
    runner.store.close()  # the database connection is gone
    runner.store_closed_by_test = True
    resp = await client.get("/healthz")
    body = await resp.text()
    assert resp.status == 503 and '"database": "error' in body and not regex.search(body)


HAPROXY = shutil.which("haproxy")
needs_haproxy = pytest.mark.skipif(not HAPROXY, reason="haproxy is not installed (`make test` installs it)")


@needs_haproxy
def test_haproxy_accepts_the_config():
    env = {**os.environ, "RUNNER_1": "shop-a-runner-1:8080", "RUNNER_2": "shop-a-runner-2:8080"}
    out = subprocess.run([HAPROXY, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = subprocess.run([HAPROXY, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0, "without RUNNER_1/RUNNER_2 the config names no runner"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def event_count(db: Path) -> int:
    return rows(db, "SELECT COUNT(*) AS n FROM events")[0]["n"]


@needs_haproxy
def test_haproxy_passes_signed_webhooks_untouched_to_both_runners(processes, tmp_path):
    """deploy/haproxy.cfg as it is, in front of two real runner processes (each on an SQLite
    file of its own: two runners on one database need PostgreSQL)."""
    line_secret, shopify_secret = "line-channel-secret", "shopify-secret"
    env = {"LINE_CHANNEL_SECRET": line_secret, "SHOPIFY_WEBHOOK_SECRET": shopify_secret}
    dbs = [tmp_path / "a.db", tmp_path / "b.db"]
    started = [processes(write_rules(tmp_path / f"rules{i}"), db, env=env, tick=1.0) for i, db in enumerate(dbs)]
    runners_ = [r.started() for r in started]
    port = free_port()
    lb_env = {
        **os.environ,
        "RUNNER_1": runners_[0].url.removeprefix("http://"),
        "RUNNER_2": runners_[1].url.removeprefix("http://"),
        "LB_BIND": f"127.0.0.1:{port}",
        "LB_STATS_BIND": f"127.0.0.1:{free_port()}",
    }
    log = (tmp_path / "haproxy.log").open("w")
    lb = subprocess.Popen([HAPROXY, "-db", "-f", str(HAPROXY_CFG)], env=lb_env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        stats = f"http://{lb_env['LB_STATS_BIND']}/;csv"
        wait_until(lambda: _server_states(stats) == {"runner-1": "UP", "runner-2": "UP"}, timeout=30)

        # LINE's webhooks: a body whose exact bytes matter (non-ASCII, escapes, spacing, a
        # trailing newline), spread over both runners, every one accepted
        n = 12
        for i in range(n):
            event = line_event(
                "message", f"U{i}", message={"type": "text", "id": f"m{i}", "text": "クーポン　\\u3042 "}
            )
            body, headers = signed_webhook(event, secret=line_secret)
            body = body.replace(b'"events":', b'"events" :  ') + b"\r\n"
            headers["x-line-signature"] = signature(body, line_secret)
            status, answer = post(url + "/callback", body, headers)
            assert status == 200, answer
        counts = [event_count(db) for db in dbs]
        assert sum(counts) == n and all(counts), counts  # round robin: both took a share

        # a body changed on the way fails LINE's signature: the runner, not the LB, says 401
        body, headers = signed_webhook(line_event("follow", "Ux"), secret=line_secret)
        assert post(url + "/callback", body + b" ", headers)[0] == 401

        # Shopify's HMAC over the raw body passes too (a topic linerules ignores: 200 ignored)
        body = json.dumps({"id": 1, "name": "ショップ"}, ensure_ascii=False).encode()
        mac = base64.b64encode(hmac.new(shopify_secret.encode(), body, hashlib.sha256).digest()).decode()
        status, answer = post(
            url + "/shopify/webhooks",
            body,
            {"Content-Type": "application/json", "X-Shopify-Hmac-Sha256": mac, "X-Shopify-Topic": "shop/update"},
        )
        assert status == 200 and json.loads(answer)["ignored"] is True, answer

        # /events with its bearer token, and a 2 MiB batch (no body limit at the LB)
        batch = [
            {
                "type": "attributes",
                "friend": f"F{i}",
                "at": "2026-11-01T10:00:00+09:00",
                "id": f"bulk-{i}",
                "set": {"memo": "x" * 40},
            }
            for i in range(20_000)
        ]
        body = json.dumps(batch).encode()
        assert len(body) > 2 * 1024 * 1024
        status, answer = post(
            url + "/events", body, {"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"}
        )
        assert status == 200 and json.loads(answer)["applied"] == len(batch), answer

        # health and metrics stay on the internal network
        assert get(url + "/metrics") == 404 and get(url + "/healthz") == 404
        assert get(runners_[0].url + "/metrics") == 200

        # a runner killed: the next requests all go to the other one, none is lost
        before = event_count(dbs[0])
        runners_[1].proc.send_signal(signal.SIGKILL)
        runners_[1].proc.wait(timeout=10)
        for i in range(6):
            body, headers = signed_webhook(line_event("follow", f"V{i}"), secret=line_secret)
            assert post(url + "/callback", body, headers)[0] == 200
        assert event_count(dbs[0]) == before + 6
        # and its health check takes it out (two failed checks, 5 s apart)
        wait_until(lambda: _server_states(stats).get("runner-2", "").startswith("DOWN"), timeout=40)
        body, headers = signed_webhook(line_event("follow", "W1"), secret=line_secret)
        assert post(url + "/callback", body, headers)[0] == 200
        assert event_count(dbs[0]) == before + 7
    finally:
        lb.terminate()
        lb.wait(timeout=10)
        log.close()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return True  # the load balancer answers (404 for /healthz: it is not public)
    except OSError:
        return False
    return True


def _server_states(stats_url: str) -> dict[str, str]:
    """{server: status} of the runners' backend, from HAProxy's own stats page (CSV)."""
    try:
        with urllib.request.urlopen(stats_url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    reader = csv.DictReader(io.StringIO(text.removeprefix("# ")))
    return {r["svname"]: r["status"] for r in reader if r["pxname"] == "runners" and r["svname"] not in ("BACKEND",)}
