"""Shared fixtures. Storage tests run once on SQLite and once on PostgreSQL.

PostgreSQL is selected by SECRETS_HUB_TEST_POSTGRES_URL (`.ci/run` sets it); without it, or when the
server does not answer, the PostgreSQL cases skip with the reason.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from secrets_hub import bootstrap
from secrets_hub.app import create_app
from secrets_hub.auth import operator
from secrets_hub.db import db
from secrets_hub.store import sqlite_writer_lock_path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MASTER_KEY = "test-master-secret-not-for-production-0123456789"
POSTGRES_URL = os.environ.get("SECRETS_HUB_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgresql"]


def _postgres_unavailable() -> str | None:
    if not POSTGRES_URL:
        return "SECRETS_HUB_TEST_POSTGRES_URL is not set (see .ci/run)"
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as error:  # noqa: BLE001 - any failure means "skip", with its reason
        return f"PostgreSQL at SECRETS_HUB_TEST_POSTGRES_URL does not answer: {type(error).__name__}"
    return None


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of our own for the whole run, dropped at the end."""
    reason = _postgres_unavailable()
    if reason:
        pytest.skip(reason)
    import psycopg

    name = f"secrets_hub_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


APP_TABLES = ("secret_versions", "secrets", "api_tokens", "audit_events", "users", "secrets_hub_meta")


def _reset_postgres(url: str) -> None:
    """Empty every table (the key check included) but keep the migrated schema: far faster than rebuilding it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        present = {row[0] for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        if set(APP_TABLES) <= present:
            connection.execute(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY CASCADE")
        else:
            connection.execute("DROP SCHEMA public CASCADE")
            connection.execute("CREATE SCHEMA public")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(request, backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'secrets_hub.db'}"
    url = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    return url


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> dict[str, Any]:
    """Settings as overrides; the same keys also work as environment variables for subprocesses."""
    return {
        "SECRETS_HUB_INSTANCE_PATH": str(tmp_path / "instance"),
        "DATABASE_URL": database_url,
        "SECRETS_HUB_MASTER_KEY": MASTER_KEY,
        "SECRETS_HUB_PLUGINS_DIR": str(tmp_path / "plugins"),
        "SECRETS_HUB_LOAD_ENTRYPOINTS": "0",
        "SECRETS_HUB_KEEP_VERSIONS": "20",
        "SECRETS_HUB_MAX_VALUE_BYTES": "65536",
    }


@pytest.fixture
def app(config: dict[str, Any]):
    bootstrap.initialize(config)
    app = create_app({**config, "TESTING": True})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_token(app) -> Callable[..., str]:
    """Mint a real token through the service: make_token("secrets:read", allow=["A_*"], expires_in=...)."""
    from secrets_hub import tokens

    def make(*scopes: str, allow: list[str] | None = None, expires_in=None, name: str | None = None) -> str:
        with app.app_context():
            created = tokens.create_token(operator("tests"), name or f"t-{uuid.uuid4().hex[:8]}",
                                          list(scopes), allow, expires_in)
        return created["token"]

    return make


@pytest.fixture
def admin_token(make_token) -> str:
    return make_token("secrets:read", "secrets:write", "admin", name="admin")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """A command that must succeed."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """A refusal: non-zero exit, nothing on stdout, exactly one `Error: ...` line on stderr; that line."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"expected one Error: line, got:\n{result.stderr}"
    return lines[0]


def _sqlite_writer_lock_file(database_url: str) -> int:
    return os.open(sqlite_writer_lock_path(database_url.removeprefix("sqlite:///")), os.O_RDWR | os.O_CREAT, 0o600)


def hold_sqlite_writer_lock(database_url: str) -> int:
    """Take the lock file beside a SQLite database as another process's writer would; close the descriptor to
    let go."""
    other_process = _sqlite_writer_lock_file(database_url)
    fcntl.flock(other_process, fcntl.LOCK_EX)
    return other_process


def server_writing_within(database_url: str, seconds: float) -> None:
    """Return once a writer of the server has held the lock file beside the SQLite database for 0.2 s (it waits
    for SQLite's own lock then; a checkpoint holds it for milliseconds), so that what the test does next
    happens while that write waits."""
    deadline, held_since = time.monotonic() + seconds, None
    descriptor = _sqlite_writer_lock_file(database_url)
    try:
        while held_since is None or time.monotonic() - held_since < 0.2:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held_since = held_since or time.monotonic()
            else:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
                held_since = None
                assert time.monotonic() < deadline, "no write of the server took the writer lock"
            time.sleep(0.001)
    finally:
        os.close(descriptor)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(config: dict[str, Any]) -> dict[str, str]:
    """The environment a subprocess of the CLI or server runs with: ours, plus the test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_HUB_") and k not in ("DATABASE_URL", "BETTER_AUTH_SECRET")}
    return {**env, **{k: str(v) for k, v in config.items()}}


SECRETS_HUB = [sys.executable, "-m", "secrets_hub"]


@pytest.fixture
def run_cli(config: dict[str, Any], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `secrets-hub ARGS` as a real subprocess: run_cli("get", "KEY", input="...")."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*SECRETS_HUB, *args], input=input, capture_output=True, text=True, timeout=60,
            env={**cli_env(config), **(env or {})}, cwd=tmp_path,
        )

    return run


@pytest.fixture
def live_server(config: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """`secrets-hub serve` as a user starts it, on a free port; yields the base URL."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    # One worker, so that the in-memory rate-limit counters the tests count against are exact.
    process = subprocess.Popen([*SECRETS_HUB, "serve", "--port", str(port), "--workers", "1"],
                               env=cli_env(config), cwd=tmp_path,
                               stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(base, process, time.monotonic() + 30, lambda: (tmp_path / "server.log").read_text())
    yield base
    stop_process(process)
    log.close()


def wait_until_healthy(base: str, process: subprocess.Popen, deadline: float, log: Callable[[], str]) -> None:
    """Poll /healthz until it answers 200; fail with the server's log if it exits or the deadline passes."""
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"server {base} did not start: {log()}")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen) -> None:
    """Ask a server process to stop, and make sure it has."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


CHROMIUM = "/usr/bin/chromium"
# Flags for a closed network: without the background-networking ones Chromium keeps dialling out.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (its own download is not used), one per test module.

    Per module, not per session: Playwright's sync API keeps an event loop running in this thread,
    and tests that call asyncio.run (the MCP client tests) need it stopped again.
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Exception as error:  # noqa: BLE001 - a browser that does not start is a skip, with its reason
        playwright.stop()
        pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {error}")
    yield browser
    browser.close()
    playwright.stop()


# --------------------------------------------------------------------------- operator commands (shared by the
# rotation, backup, legacy import and .env test modules)


@pytest.fixture
def cli_in_process(config: dict[str, Any], tmp_path: Path, monkeypatch) -> Callable[..., subprocess.CompletedProcess]:
    """`secrets-hub ARGS` run inside this process by click's CliRunner: milliseconds instead of a second.

    Same environment as `run_cli` (the test settings, no stray SECRETS_HUB_* variables, cwd tmp_path) and the
    same result type (a CompletedProcess with text stdout and stderr). Each app the command builds has its
    pool closed afterwards, so no connection is left for the garbage collector.
    """
    from click.testing import CliRunner

    from secrets_hub import app as app_module
    from secrets_hub.cli import cli

    built = []
    real_create_app = app_module.create_app

    def recording_create_app(*args, **kwargs):
        built.append(real_create_app(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(app_module, "create_app", recording_create_app)
    monkeypatch.chdir(tmp_path)
    ours = [name for name in os.environ if name.startswith("SECRETS_HUB_") or name in ("DATABASE_URL", "BETTER_AUTH_SECRET")]

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        environment = {**dict.fromkeys(ours), **{k: str(v) for k, v in config.items()}, **(env or {})}
        try:
            result = CliRunner().invoke(cli, list(args), input=input, env=environment, prog_name="secrets-hub")
        finally:
            for app in built:
                with app.app_context():
                    db.session.remove()
                    db.engine.dispose()
            built.clear()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(["secrets-hub", *args], result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture(scope="session")
def other_postgres_database(postgres_database: str) -> Iterator[str]:
    """A second database of our own, for a second instance or a seed-format database."""
    import psycopg

    name = f"{postgres_database.rsplit('/', 1)[1]}_other"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def other_database_url(request, backend: str, tmp_path: Path) -> str:
    """A second, empty database on the same backend (nothing in it, not even the schema)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'other.db'}"
    url = request.getfixturevalue("other_postgres_database")
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    return url


# --------------------------------------------------------------------------- several server processes (shared by
# the multi-process and database-fault test modules)


@dataclass
class ServerProcess:
    """One `secrets-hub serve` subprocess: its base URL, the process, and the file its output goes to."""

    base: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_servers(config: dict[str, Any], tmp_path: Path) -> Iterator[Callable[..., list[ServerProcess]]]:
    """Start `secrets-hub serve` processes like `live_server`, but several and with extra settings.

    start_servers(2, env={"SECRETS_HUB_RATELIMIT_STORAGE": "redis://..."}) launches two servers on free
    ports at the same moment (so they also initialise one database together), waits until each answers
    /healthz with 200, and returns them; every server started is stopped at teardown.
    """
    started: list[tuple[ServerProcess, Any]] = []

    def start(count: int = 1, env: dict[str, str] | None = None, timeout: float = 60) -> list[ServerProcess]:
        launched = []
        for _ in range(count):
            port = free_port()
            log_path = tmp_path / f"server-{len(started) + 1}-{port}.log"
            log = open(log_path, "w")
            process = subprocess.Popen([*SECRETS_HUB, "serve", "--port", str(port)],
                                       env=cli_env({**config, **(env or {})}), cwd=tmp_path,
                                       stdout=log, stderr=subprocess.STDOUT)
            server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
            started.append((server, log))
            launched.append(server)
        deadline = time.monotonic() + timeout
        for server in launched:
            wait_until_healthy(server.base, server.process, deadline, server.log)
        return launched

    yield start
    for server, _ in started:  # ask every one to stop first, so that they wind down together
        if server.process.poll() is None:
            server.process.terminate()
    for server, log in started:
        stop_process(server.process)
        log.close()


REDIS = "redis://127.0.0.1:6379"
# Redis databases the tests may borrow; each claims an empty one with a marker key and flushes it afterwards.
REDIS_DATABASES = range(7, 16)
REDIS_OWNER_KEY = "secrets-hub-tests:owner"


@pytest.fixture
def redis_storage() -> Iterator[Any]:
    """A Redis database of our own for the rate-limit counters: (url, client); emptied before and after."""
    redis = pytest.importorskip("redis", reason="the redis package is not installed")
    marker = uuid.uuid4().hex
    for number in REDIS_DATABASES:
        client = redis.Redis.from_url(f"{REDIS}/{number}", socket_connect_timeout=2)
        try:
            # Claim the database only if nobody else is using it: our marker must be its only key.
            if client.set(REDIS_OWNER_KEY, marker, nx=True, ex=900) and client.dbsize() == 1:
                break
            if client.get(REDIS_OWNER_KEY) == marker.encode():
                client.delete(REDIS_OWNER_KEY)
        except redis.RedisError as error:
            client.close()
            pytest.skip(f"Redis at {REDIS} does not answer: {type(error).__name__}")
        client.close()
    else:
        pytest.skip(f"no empty Redis database among {REDIS_DATABASES.start}..{REDIS_DATABASES.stop - 1}")
    try:
        yield f"{REDIS}/{number}", client
    finally:
        client.flushdb()
        client.close()
