"""The database failing under a running `secrets-hub serve`: killed connections, an unreachable server,
a locked SQLite file, and writer processes killed in the middle of a write.

A client is told 503 `Database unavailable` in the API's JSON shape, within a bounded time, never a 500
and never a hang; the server recovers by itself when the database is back; and no failure leaves a
secret half-written. Outcomes are asserted, never timings, except the bounds a client relies on.
"""

from __future__ import annotations

import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from conftest import POSTGRES_URL, ServerProcess, bearer, cli_env, free_port, server_writing_within

UNAVAILABLE = {"statusCode": 503, "message": "Database unavailable"}
TIMEOUT = 60
# A client waiting on a database that is gone hears so within this bound (5 s connect or lock timeout, plus slack).
ANSWER_WITHIN = 10


def assert_no_unhandled_errors(server: ServerProcess) -> None:
    log = server.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]


@pytest.fixture
def server(start_servers) -> ServerProcess:
    return start_servers(1)[0]


@pytest.fixture
def token(server, make_token) -> str:
    return make_token("secrets:read", "secrets:write", name="rw")


def body_of(response: requests.Response) -> Any:
    """The JSON body, or the text when it is not JSON (a server's bare 500, say), for the failure message."""
    try:
        return response.json()
    except ValueError:
        return response.text


def timed(send: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = send()
    return response, time.monotonic() - started


# --------------------------------------------------------------------------- 1. PostgreSQL connections killed


@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgres_connections_killed_while_serving(server, token, database_url):
    import psycopg

    base, auth = server.base, bearer(token)
    database = database_url.rsplit("/", 1)[1]
    assert requests.post(f"{base}/api/secrets", json={"key": "KILLED", "value": "v-0"}, headers=auth,
                         timeout=TIMEOUT).status_code == 200
    stop = threading.Event()
    outcomes: list[tuple[str, int, Any]] = []
    killed = 0

    def client() -> None:
        session, i = requests.Session(), 0
        while not stop.is_set():
            i += 1
            for method, path, body in (("PUT", "/api/secrets/KILLED", {"value": f"v-{i}"}),
                                       ("GET", "/api/secrets/KILLED", None), ("GET", "/api/secrets", None),
                                       ("GET", "/api/secrets/KILLED/versions", None)):
                try:
                    response = session.request(method, f"{base}{path}", json=body, headers=auth, timeout=30)
                except requests.RequestException as error:  # a hang or a dropped connection: reported below
                    outcomes.append((f"{method} {path}", 0, repr(error)))
                    continue
                outcomes.append((f"{method} {path}", response.status_code, body_of(response)))

    def killer() -> None:
        nonlocal killed
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                rows = connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid()", (database,)).fetchall()
                killed += sum(1 for (done,) in rows if done)
                time.sleep(0.02)

    worker = threading.Thread(target=client)
    worker.start()
    try:
        killer()
    finally:
        stop.set()
        worker.join(timeout=TIMEOUT)
    assert not worker.is_alive()

    assert killed > 0
    assert len(outcomes) > 20
    # Checked at the end, so that recovery and consistency are checked whatever happened here.
    unexpected = Counter((what, status, str(body)[:100]) for what, status, body in outcomes
                         if not (200 <= status < 300 or (status == 503 and body == UNAVAILABLE)))

    # The kills have stopped: every request succeeds again, with no restart.
    session = requests.Session()
    for i in range(10):
        put = session.put(f"{base}/api/secrets/KILLED", json={"value": f"after-{i}"}, headers=auth, timeout=TIMEOUT)
        assert put.status_code == 200, put.text
        read = session.get(f"{base}/api/secrets/KILLED", headers=auth, timeout=TIMEOUT)
        assert read.json() == {"data": {"key": "KILLED", "value": f"after-{i}"}}
    assert session.get(f"{base}/healthz", timeout=TIMEOUT).status_code == 200

    # Whatever was cut off, the secret is whole: its current version is its newest row, numbered without gaps.
    with psycopg.connect(database_url, autocommit=True) as connection:
        current, newest, count = connection.execute(
            "SELECT s.current_version, max(v.version), count(v.version) FROM secrets s "
            "JOIN secret_versions v ON v.secret_id = s.id WHERE s.key = 'KILLED' GROUP BY s.current_version").fetchone()
    assert current == newest
    assert count == min(current, 20)  # SECRETS_HUB_KEEP_VERSIONS=20
    versions = session.get(f"{base}/api/secrets/KILLED/versions", headers=auth, timeout=TIMEOUT).json()["data"]
    assert [v["version"] for v in versions] == list(range(current, current - count, -1))

    # While the kills went on, every answer was a success or the JSON 503, never a 500 or a hang.
    assert not unexpected, f"{sum(unexpected.values())} of {len(outcomes)} answers: {dict(unexpected)}"
    assert_no_unhandled_errors(server)


# --------------------------------------------------------------------------- 2. the database server goes away


class TcpProxy:
    """A TCP relay in front of PostgreSQL that can be stopped and started again on the same port.

    forward: relay every connection. stop(): close the listener and every connection (the database
    server is down: connections refused). blackhole: accept connections and never answer (a server
    that hangs, or packets dropped on the way).
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self.mode = "stopped"
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._sockets: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []

    def start(self, mode: str = "forward") -> None:
        assert self.mode == "stopped" and mode in ("forward", "blackhole")
        self.mode = mode
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        self._listener.settimeout(0.05)
        self._accepting.set()
        self._acceptor = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        self._acceptor.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._accepting.is_set():
            try:
                client, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            client.settimeout(None)
            with self._lock:
                self._sockets.append(client)
            if self.mode == "blackhole":
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.shutdown(socket.SHUT_RDWR)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.append(upstream)
                for source, sink in ((client, upstream), (upstream, client)):
                    pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                    self._pumps.append(pump)
                    pump.start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):  # one side ended: end the other too, as a real server would
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        """Close the listener and every connection; the port then refuses connections."""
        self._accepting.clear()
        if self._acceptor is not None:
            self._acceptor.join(timeout=10)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets, pumps = self._sockets, self._pumps
            self._sockets, self._pumps = [], []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for pump in pumps:
            pump.join(timeout=10)
        for sock in sockets:
            sock.close()
        self.mode = "stopped"


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    match = re.match(r"postgresql://[^@]*@([^:/]+):(\d+)/", database_url)
    assert match, database_url
    relay = TcpProxy((match[1], int(match[2])))
    relay.start()
    yield relay
    if relay.mode != "stopped":
        relay.stop()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_database_server_gone_then_back(start_servers, proxy, make_token, database_url):
    # The server reaches PostgreSQL only through the proxy; the test's own token is made directly.
    through_proxy = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", database_url)
    server = start_servers(1, env={"DATABASE_URL": through_proxy})[0]
    base, auth = server.base, bearer(make_token("secrets:read", "secrets:write", name="rw"))
    session = requests.Session()
    assert session.post(f"{base}/api/secrets", json={"key": "STEADY", "value": "before"}, headers=auth,
                        timeout=TIMEOUT).status_code == 200
    assert session.get(f"{base}/api/secrets/STEADY", headers=auth, timeout=TIMEOUT).status_code == 200

    requests_during_outage = [
        ("GET", "/api/secrets/STEADY", None), ("GET", "/api/secrets", None),
        ("GET", "/api/secrets/STEADY/versions", None), ("PUT", "/api/secrets/STEADY", {"value": "during"}),
        ("POST", "/api/secrets", {"key": "NEW_DURING", "value": "x"}), ("DELETE", "/api/secrets/STEADY", None),
        ("POST", "/api/secrets/STEADY/restore", {"version": 1}),
    ]

    def outage_answers() -> list[tuple[str, int, Any, float]]:
        """Every request above plus /healthz, sent together; each with its status, body and time taken."""
        def send(method: str, path: str, body: Any) -> tuple[str, int, Any, float]:
            response, took = timed(lambda: requests.request(method, f"{base}{path}", json=body, headers=auth,
                                                            timeout=TIMEOUT))
            return f"{method} {path}", response.status_code, body_of(response), took

        results: list[Any] = [None] * (len(requests_during_outage) + 1)
        threads = [threading.Thread(target=lambda i=i, r=r: results.__setitem__(i, send(*r)))
                   for i, r in enumerate([*requests_during_outage, ("GET", "/healthz", None)])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=TIMEOUT + 5)
        assert None not in results, "a request never came back"
        return results

    slow: list[tuple[str, str, float]] = []
    for mode in ("stopped", "blackhole"):
        # The database server goes away: connections refused (stopped), or accepted and never answered.
        proxy.stop()
        if mode == "blackhole":
            proxy.start("blackhole")
        answers = outage_answers()
        api, health = answers[:-1], answers[-1]
        assert [(what, status, body) for what, status, body, _ in api] == [
            (f"{method} {path}", 503, UNAVAILABLE) for method, path, _ in requests_during_outage], mode
        assert health[1] == 503 and health[2] != {"status": "ok"}, (mode, health)
        # Checked at the end, so that recovery is checked too.
        slow += [(mode, what, round(took, 1)) for what, _, _, took in answers if took >= ANSWER_WITHIN]

    # The database server is back on the same address: the app recovers by itself, no restart.
    proxy.stop()
    proxy.start("forward")
    deadline = time.monotonic() + 30
    while session.get(f"{base}/healthz", timeout=TIMEOUT).status_code != 200:
        assert time.monotonic() < deadline, "the server did not recover"
        time.sleep(0.2)
    assert session.get(f"{base}/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    # Nothing sent during the outage took effect; everything works again.
    read = session.get(f"{base}/api/secrets/STEADY", headers=auth, timeout=TIMEOUT)
    assert (read.status_code, read.json(), read.headers["ETag"]) == (200, {"data": {"key": "STEADY", "value": "before"}}, '"1"')
    listing = session.get(f"{base}/api/secrets", headers=auth, timeout=TIMEOUT).json()["data"]
    assert [item["key"] for item in listing] == ["STEADY"]
    assert session.put(f"{base}/api/secrets/STEADY", json={"value": "after"}, headers=auth,
                       timeout=TIMEOUT).status_code == 200
    assert session.get(f"{base}/api/secrets/STEADY", headers=auth, timeout=TIMEOUT).json()["data"]["value"] == "after"
    assert session.post(f"{base}/api/secrets", json={"key": "NEW_AFTER", "value": "y"}, headers=auth,
                        timeout=TIMEOUT).status_code == 200
    assert_no_unhandled_errors(server)

    # During the outage each request, of several sent at once, was answered within the bound.
    assert slow == [], f"answered only after {ANSWER_WITHIN} s or more: {slow}"


# --------------------------------------------------------------------------- 3. a locked SQLite database


@pytest.mark.parametrize("backend", ["sqlite"])
def test_locked_sqlite_database(server, token, database_url):
    base, auth = server.base, bearer(token)
    session = requests.Session()
    assert session.post(f"{base}/api/secrets", json={"key": "LOCKED", "value": "v1"}, headers=auth,
                        timeout=TIMEOUT).status_code == 200
    assert session.get(f"{base}/api/secrets/LOCKED", headers=auth, timeout=TIMEOUT).status_code == 200

    # Another process's connection holds the write lock (WAL: readers still read the last commit).
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    slow: list[tuple[str, float]] = []
    try:
        holder.execute("BEGIN IMMEDIATE")

        def waited_then_refused(requests_: list[tuple[str, str, Any]],
                                meanwhile: Callable[[list[tuple[str, float]]], None] = lambda reads: None):
            """Send the requests together, run `meanwhile` (it notes how long each of its reads took); each request
            waits out the busy timeout (5 s), then 503."""
            results: list[Any] = [None] * len(requests_)
            failed: dict[int, tuple[str, float]] = {}

            def send(index: int, method: str, path: str, body: Any) -> None:
                started = time.monotonic()
                try:
                    results[index] = timed(lambda: requests.request(method, f"{base}{path}", json=body, headers=auth,
                                                                    timeout=TIMEOUT))
                except requests.RequestException as error:  # for the failure message: it fails `None not in results`
                    failed[index] = (repr(error), round(time.monotonic() - started, 3))

            threads = [threading.Thread(target=send, args=(i, *r)) for i, r in enumerate(requests_)]
            for thread in threads:
                thread.start()
            server_writing_within(database_url, seconds=4)
            reads: list[tuple[str, float]] = []
            meanwhile(reads)
            # With what happened if not: each read's time, and what each request that ended was told.
            assert all(thread.is_alive() for thread in threads), (
                "a write did not wait for the lock", reads, failed,
                [(r[0].status_code, body_of(r[0]), round(r[1], 3)) for r in results if r is not None],
                server.log()[-3000:])
            for thread in threads:
                thread.join(timeout=TIMEOUT + 5)
            assert None not in results, failed
            for (method, path, _), (response, took) in zip(requests_, results, strict=True):
                assert (method, path, response.status_code, body_of(response)) == (method, path, 503, UNAVAILABLE)
                assert took >= 4, (method, path, took)  # it waited for the lock before giving up
                if took >= ANSWER_WITHIN:
                    slow.append((f"{method} {path}", round(took, 1)))  # checked at the end, after recovery

        def reads_that_write_nothing(took: list[tuple[str, float]]) -> None:
            # Answered from the last commit while the write above is still waiting for the lock.
            def read(path: str, **headers: str) -> Any:
                response, seconds = timed(lambda: session.get(f"{base}{path}", headers=headers, timeout=TIMEOUT))
                took.append((path, round(seconds, 3)))
                return response.json()

            assert [item["key"] for item in read("/api/secrets", **auth)["data"]] == ["LOCKED"]
            assert [v["version"] for v in read("/api/secrets/LOCKED/versions", **auth)["data"]] == [1]
            assert read("/healthz") == {"status": "ok"}

        waited_then_refused([("PUT", "/api/secrets/LOCKED", {"value": "v2"})], meanwhile=reads_that_write_nothing)
        waited_then_refused([("POST", "/api/secrets", {"key": "OTHER", "value": "o"}),
                             ("DELETE", "/api/secrets/LOCKED", None),
                             ("POST", "/api/secrets/LOCKED/restore", {"version": 1}),
                             # Reading a value writes its audit event, so it waits for the lock like any write.
                             ("GET", "/api/secrets/LOCKED", None)])

        # A write that arrives while the lock is held and finds it released within the wait goes through.
        late: list[requests.Response] = []
        writer = threading.Thread(target=lambda: late.append(requests.put(
            f"{base}/api/secrets/LOCKED", json={"value": "v2"}, headers=auth, timeout=TIMEOUT)))
        writer.start()
        time.sleep(1)  # not an assertion: gives the request time to be waiting on the lock
        holder.execute("ROLLBACK")
        writer.join(timeout=TIMEOUT)
        assert late and late[0].status_code == 200, late and late[0].text
    finally:
        holder.close()

    # Nothing refused took effect; writes work again.
    assert session.get(f"{base}/api/secrets/LOCKED", headers=auth, timeout=TIMEOUT).json() == {
        "data": {"key": "LOCKED", "value": "v2"}}
    assert [v["version"] for v in session.get(f"{base}/api/secrets/LOCKED/versions", headers=auth,
                                              timeout=TIMEOUT).json()["data"]] == [2, 1]
    assert session.get(f"{base}/api/secrets/OTHER", headers=auth, timeout=TIMEOUT).status_code == 404
    assert session.post(f"{base}/api/secrets", json={"key": "OTHER", "value": "o"}, headers=auth,
                        timeout=TIMEOUT).status_code == 200
    assert_no_unhandled_errors(server)

    # Each refused request was answered once the lock wait (5 s) was over, not after several of them.
    assert slow == [], f"answered only after {ANSWER_WITHIN} s or more: {slow}"


# --------------------------------------------------------------------------- 4. a writer killed mid-write

# The `secrets-hub set` code path (service.put_secret under the operator), looped: creates and updates, with
# large values and a small version limit so that every update also prunes. Each write is announced before
# it starts ("begin") and after it committed ("done"), so the test knows what may be in flight.
WRITER = r'''
import sys
from secrets_hub import service
from secrets_hub.app import create_app
from secrets_hub.auth import operator

round_, keys = sys.argv[1], sys.argv[2:]
app = create_app()
padding = "x" * 30000
with app.app_context():
    caller = operator("writer")
    print("ready", flush=True)
    i = 0
    while True:
        key = keys[i % len(keys)] if i % (len(keys) + 1) != len(keys) else f"NEW_{round_}_{i}"
        value = f"{key}|{round_}|{i}|" + padding
        print(f"begin {key} {round_}|{i}", flush=True)
        version = service.put_secret(caller, key, value)
        print(f"done {key} {round_}|{i} {version}", flush=True)
        i += 1
'''
KEYS = ["ALPHA", "BETA", "GAMMA"]
KEEP = 3
ROUNDS = 4


def run_writer_and_kill(config: dict[str, Any], tmp_path: Path, round_: int, delay: float) -> list[str]:
    """Start the writer, let it write for `delay` seconds after it is ready, SIGKILL it; its output lines."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    lines: list[str] = []
    ready = threading.Event()
    with open(tmp_path / f"writer-{round_}.err", "w") as errors:
        process = subprocess.Popen([sys.executable, str(script), str(round_), *KEYS], stdout=subprocess.PIPE,
                                   stderr=errors, text=True, env=cli_env(config), cwd=tmp_path)

        def read() -> None:
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                if line == "ready\n":
                    ready.set()

        reader = threading.Thread(target=read)
        reader.start()
        try:
            deadline = time.monotonic() + TIMEOUT
            while not ready.wait(timeout=0.1) and process.poll() is None and time.monotonic() < deadline:
                pass
            assert ready.is_set(), (tmp_path / f"writer-{round_}.err").read_text()
            # Some writes done, then killed wherever it happens to be, a commit included.
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.005)
            assert process.poll() is None, (tmp_path / f"writer-{round_}.err").read_text()
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=TIMEOUT)
            reader.join(timeout=TIMEOUT)
            process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    return lines


def wait_for_backends_to_end(database_url: str, application_name: str) -> None:
    import psycopg

    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(database_url, autocommit=True) as connection:
        while connection.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                 (application_name,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the killed writer's database session never ended"
            time.sleep(0.05)


def test_a_writer_killed_mid_write_leaves_the_old_or_the_new_secret(backend, database_url, config, tmp_path, app, client,
                                                                     make_token):
    from sqlalchemy import text

    from secrets_hub.db import db

    config["SECRETS_HUB_KEEP_VERSIONS"] = str(KEEP)
    writer_name = "secrets-hub-killed-writer"
    if backend == "postgresql":
        # Named, so that the test can wait for PostgreSQL to finish what a killed writer's backend was doing:
        # a COMMIT sent just before the kill still completes after it.
        config["DATABASE_URL"] += f"?application_name={writer_name}"
    auth = bearer(make_token("secrets:read", name="reader"))
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    committed: dict[str, tuple[str, int]] = {}  # key -> (value tag, version) of its last write known committed
    done_writes = 0

    for round_ in range(ROUNDS):
        lines = run_writer_and_kill(config, tmp_path, round_, chance.uniform(0.05, 0.5))
        in_flight = None
        for line in lines[1:]:
            parts = line.split(" ")
            if parts[0] == "begin" and len(parts) == 3:
                in_flight = (parts[1], parts[2])
            elif parts[0] == "done" and len(parts) == 4 and in_flight == (parts[1], parts[2]):
                committed[parts[1]] = (parts[2], int(parts[3]))
                in_flight, done_writes = None, done_writes + 1
        context = f"seed {seed}, round {round_}, in flight {in_flight}, last lines {lines[-2:]}"
        if backend == "postgresql":
            wait_for_backends_to_end(database_url, writer_name)

        with app.app_context():
            rows = db.session.execute(text(
                "SELECT s.key, s.current_version, (SELECT max(v.version) FROM secret_versions v WHERE v.secret_id = s.id),"
                " (SELECT count(*) FROM secret_versions v WHERE v.secret_id = s.id) FROM secrets s")).all()
            orphans = db.session.execute(text(
                "SELECT count(*) FROM secret_versions v WHERE NOT EXISTS "
                "(SELECT 1 FROM secrets s WHERE s.id = v.secret_id)")).scalar()
            db.session.remove()
        assert orphans == 0, context
        stored = {key: (current, newest, count) for key, current, newest, count in rows}
        expected_keys = set(committed) | ({in_flight[0]} if in_flight else set())
        assert set(committed) <= set(stored) <= expected_keys, context

        for key, (current, newest, count) in stored.items():
            # current_version is the newest row; the versions kept are the last KEEP, without a gap.
            assert current == newest and count == min(current, KEEP), (key, stored[key], context)
            response = client.get(f"/api/secrets/{key}", headers=auth)
            assert response.status_code == 200, (key, response.get_data(as_text=True), context)
            assert response.headers["ETag"] == f'"{current}"'
            tag = response.get_json()["data"]["value"].split("|", 1)[1].rsplit("|", 1)[0]
            value_ok = response.get_json()["data"]["value"] == f"{key}|{tag}|" + "x" * 30000
            assert value_ok, (key, context)
            versions = client.get(f"/api/secrets/{key}/versions", headers=auth).get_json()["data"]
            assert [v["version"] for v in versions] == list(range(current, current - count, -1)), context
            old = committed.get(key)
            if in_flight and key == in_flight[0] and tag == in_flight[1]:
                # The write in flight when the writer died had committed: exactly one version newer.
                assert current == (old[1] + 1 if old else 1), (key, current, old, context)
                committed[key] = (tag, current)
            else:
                # Otherwise the last write known to have committed is what is there, whole.
                assert old is not None and (tag, current) == old, (key, tag, current, old, context)

    assert done_writes >= ROUNDS, f"seed {seed}: the writer barely wrote ({done_writes} writes)"
