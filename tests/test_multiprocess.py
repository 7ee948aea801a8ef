"""Two `secrets-hub serve` processes on one PostgreSQL database, as a deployment behind a load balancer runs.

What one process writes the other reads at once; concurrent writers sent to both lose nothing and number
versions without gaps or duplicates; sessions, CSRF tokens and rate limits (counted in Redis) hold across
processes. PostgreSQL only: SQLite is one file on one machine. Nothing here depends on timing, only on
outcomes.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
import requests

from conftest import ServerProcess, bearer

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])

TIMEOUT = 60
PASSWORD = "correct horse battery"
CONFLICT = re.compile(r'Secret "(?P<key>[A-Z_]+)" changed: current version is (?P<version>\d+)')


@pytest.fixture
def pair(start_servers, redis_storage, database_url: str) -> list[ServerProcess]:
    """Servers A and B: same database, master key, instance folder and Redis counters; different ports.

    The database starts empty, without even the schema: both processes start on it at the same moment.
    """
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    url, _ = redis_storage
    servers = start_servers(2, env={"SECRETS_HUB_RATELIMIT_STORAGE": url, "SECRETS_HUB_KEEP_VERSIONS": "200"})
    assert servers[0].base != servers[1].base
    return servers


@pytest.fixture
def token(pair, make_token) -> str:
    return make_token("secrets:read", "secrets:write", name="rw")


@pytest.fixture
def pg(database_url: str) -> Callable[..., list[tuple]]:
    """Run one query on the test database directly, outside the app: pg("SELECT ...", params) -> rows."""
    import psycopg

    def query(sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(database_url, autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()

    return query


class Recorder:
    """Every response of a test, so that one assertion can say no request at all got a 5xx."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.responses: list[tuple[str, str, int, str]] = []

    def send(self, session: requests.Session, method: str, url: str, **kwargs) -> requests.Response:
        response = session.request(method, url, timeout=TIMEOUT, **kwargs)
        with self.lock:
            self.responses.append((method, url, response.status_code, response.text[:300]))
        return response

    def server_errors(self) -> list[tuple[str, str, int, str]]:
        return [entry for entry in self.responses if entry[2] >= 500]


def run_together(tasks: list[Callable[[], Any]]) -> list[Any]:
    """Run every task on its own thread, released together by a barrier; results in order."""
    barrier = threading.Barrier(len(tasks))

    def run(task: Callable[[], Any]) -> Any:
        barrier.wait(timeout=TIMEOUT)
        return task()

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        return list(pool.map(run, tasks))


def not_found(key: str) -> dict[str, Any]:
    return {"statusCode": 404, "message": f'Secret with key "{key}" not found'}


def test_two_processes_share_one_database_without_losing_a_write(pair, token, pg, config):
    servers = [server.base for server in pair]
    auth = bearer(token)
    log = Recorder()
    session = requests.Session()

    # Both processes started together on an empty database: one schema, one key check, one migration row.
    assert pg("SELECT count(*) FROM alembic_version") == [(1,)]
    assert pg("SELECT count(*) FROM secrets_hub_meta WHERE name = 'key_check'") == [(1,)]

    # 1. Twenty clients create one key through both processes at once: exactly one wins.
    def create_shared(index: int) -> Callable[[], requests.Response]:
        return lambda: log.send(requests.Session(), "POST", f"{servers[index % 2]}/api/secrets",
                                json={"key": "SHARED", "value": f"shared-{index}"}, headers=auth)

    created = run_together([create_shared(i) for i in range(20)])
    codes = [response.status_code for response in created]
    assert codes.count(200) == 1 and codes.count(409) == 19, codes
    for response in created:
        if response.status_code == 409:
            assert response.json() == {"statusCode": 409, "message": 'Secret with key "SHARED" already exists'}
    winner = codes.index(200)
    for base in servers:
        assert log.send(session, "GET", f"{base}/api/secrets/SHARED", headers=auth).json() == {
            "data": {"key": "SHARED", "value": f"shared-{winner}"}}

    # 2. Written on one process, read on the other at once: creates, updates and deletes.
    for i in range(10):
        key, here, there = f"SEEN_{i}", servers[i % 2], servers[(i + 1) % 2]
        assert log.send(session, "POST", f"{here}/api/secrets", json={"key": key, "value": f"v1-{i}"},
                        headers=auth).status_code == 200
        read = log.send(session, "GET", f"{there}/api/secrets/{key}", headers=auth)
        assert read.status_code == 200 and read.json()["data"]["value"] == f"v1-{i}"
        assert read.headers["ETag"] == '"1"'
        assert log.send(session, "PUT", f"{there}/api/secrets/{key}", json={"value": f"v2-{i}"},
                        headers=auth).status_code == 200
        read = log.send(session, "GET", f"{here}/api/secrets/{key}", headers=auth)
        assert read.json()["data"]["value"] == f"v2-{i}" and read.headers["ETag"] == '"2"'
        if i % 2:
            assert log.send(session, "DELETE", f"{here}/api/secrets/{key}", headers=auth).json() == {
                "data": {"deleted": True}}
            gone = log.send(session, "GET", f"{there}/api/secrets/{key}", headers=auth)
            assert (gone.status_code, gone.json()) == (404, not_found(key))
    listing = log.send(session, "GET", f"{servers[1]}/api/secrets", headers=auth).json()["data"]
    assert [item["key"] for item in listing] == ["SEEN_0", "SEEN_2", "SEEN_4", "SEEN_6", "SEEN_8", "SHARED"]

    # 3. Everything at once, through both processes:
    #    - check-and-set appenders: read the list (ETag), append, PUT with If-Match, retry on 409;
    #    - blind updaters (no If-Match) and restorers of version 1 on another key;
    #    - create / read elsewhere / delete / read elsewhere cycles.
    assert log.send(session, "POST", f"{servers[0]}/api/secrets", json={"key": "COUNTER", "value": "[]"},
                    headers=auth).status_code == 200
    assert log.send(session, "POST", f"{servers[1]}/api/secrets", json={"key": "BLIND", "value": "blind-initial"},
                    headers=auth).status_code == 200
    appenders, appends_each, blind_writers, blind_each, restores, cycles = 6, 6, 2, 15, 8, 5
    conflicts: list[tuple[int, str]] = []
    cas_wins: list[int] = []

    def appender(number: int) -> Callable[[], int]:
        def run() -> int:
            client, won, attempts = requests.Session(), 0, 0
            while won < appends_each:
                attempts += 1
                assert attempts < 200, "check-and-set never got through"
                # Read on one process, write on the other.
                current = log.send(client, "GET", f"{servers[attempts % 2]}/api/secrets/COUNTER", headers=auth)
                assert current.status_code == 200, current.text
                based_on = int(current.headers["ETag"].strip('"'))
                items = json.loads(current.json()["data"]["value"]) + [f"{number}-{won}"]
                put = log.send(client, "PUT", f"{servers[(attempts + 1) % 2]}/api/secrets/COUNTER",
                               json={"value": json.dumps(items)}, headers={**auth, "If-Match": f'"{based_on}"'})
                if put.status_code == 200:
                    won += 1
                    with log.lock:
                        cas_wins.append(based_on + 1)
                else:
                    assert put.status_code == 409, put.text
                    with log.lock:
                        conflicts.append((based_on, put.json()["message"]))
            return attempts
        return run

    def blind_writer(number: int) -> Callable[[], None]:
        def run() -> None:
            client = requests.Session()
            for i in range(blind_each):
                response = log.send(client, "PUT", f"{servers[i % 2]}/api/secrets/BLIND",
                                    json={"value": f"blind-{number}-{i}"}, headers=auth)
                assert response.status_code == 200, response.text
        return run

    def restorer() -> list[int]:
        client, made = requests.Session(), []
        for i in range(restores):
            response = log.send(client, "POST", f"{servers[i % 2]}/api/secrets/BLIND/restore", json={"version": 1},
                                headers=auth)
            assert response.status_code == 200, response.text
            data = response.json()["data"]
            assert data["key"] == "BLIND"
            made.append(data["version"])
        return made

    def cycler(number: int) -> Callable[[], None]:
        def run() -> None:
            client = requests.Session()
            for i in range(cycles):
                key, here, there = f"CYCLE_{number}", servers[(number + i) % 2], servers[(number + i + 1) % 2]
                made = log.send(client, "POST", f"{here}/api/secrets", json={"key": key, "value": f"c-{number}-{i}"},
                                headers=auth)
                assert made.status_code == 200, made.text
                read = log.send(client, "GET", f"{there}/api/secrets/{key}", headers=auth)
                assert read.json() == {"data": {"key": key, "value": f"c-{number}-{i}"}}
                assert read.headers["ETag"] == '"1"'  # a deleted key starts again from version 1
                assert log.send(client, "DELETE", f"{there}/api/secrets/{key}", headers=auth).status_code == 200
                gone = log.send(client, "GET", f"{here}/api/secrets/{key}", headers=auth)
                assert (gone.status_code, gone.json()) == (404, not_found(key))
                gone = log.send(client, "GET", f"{here}/api/secrets/{key}/versions", headers=auth)
                assert (gone.status_code, gone.json()) == (404, not_found(key))
        return run

    tasks: list[Callable[[], Any]] = [appender(n) for n in range(appenders)]
    tasks += [blind_writer(n) for n in range(blind_writers)] + [restorer] + [cycler(n) for n in range(2)]
    results = run_together(tasks)

    assert log.server_errors() == []

    # No lost update: every append is in the list exactly once, each success made exactly one version.
    total = appenders * appends_each
    final = log.send(session, "GET", f"{servers[1]}/api/secrets/COUNTER", headers=auth)
    assert final.headers["ETag"] == f'"{total + 1}"'
    assert sorted(json.loads(final.json()["data"]["value"])) == sorted(
        f"{n}-{i}" for n in range(appenders) for i in range(appends_each))
    assert sorted(cas_wins) == list(range(2, total + 2))
    # Each refusal is the SPEC's 409 and names a version newer than the one the writer based its change on.
    assert len(conflicts) == sum(results[:appenders]) - total
    for based_on, message in conflicts:
        match = CONFLICT.fullmatch(message)
        assert match and match["key"] == "COUNTER", message
        assert int(match["version"]) > based_on, (based_on, message)

    # Versions numbered without gaps or duplicates, and both processes and the database agree.
    blind_total = 1 + blind_writers * blind_each + restores
    for key, newest in (("COUNTER", total + 1), ("BLIND", blind_total)):
        for base in servers:
            versions = log.send(session, "GET", f"{base}/api/secrets/{key}/versions", headers=auth).json()["data"]
            assert [v["version"] for v in versions] == list(range(newest, 0, -1))
            assert [v["current"] for v in versions] == [True] + [False] * (newest - 1)
        assert pg("SELECT s.current_version, array_agg(v.version ORDER BY v.version) FROM secrets s "
                  "JOIN secret_versions v ON v.secret_id = s.id WHERE s.key = %s GROUP BY s.current_version",
                  (key,)) == [(newest, list(range(1, newest + 1)))]

    # BLIND holds every blind value once and the restored value once per restore, nothing else.
    restored_versions = results[appenders + blind_writers]
    assert len(set(restored_versions)) == restores and all(2 <= v <= blind_total for v in restored_versions)
    values = {}
    for version in range(1, blind_total + 1):
        response = log.send(session, "GET", f"{servers[version % 2]}/api/secrets/BLIND",
                            params={"version": str(version)}, headers=auth)
        assert response.status_code == 200, response.text
        values[version] = response.json()["data"]["value"]
    assert sorted(values.values()) == sorted(
        ["blind-initial"] * (1 + restores) + [f"blind-{n}-{i}" for n in range(blind_writers) for i in range(blind_each)])
    assert all(values[v] == "blind-initial" for v in restored_versions)

    # The cycling keys are gone everywhere, with their versions.
    assert pg("SELECT count(*) FROM secrets WHERE key LIKE 'CYCLE%%'") == [(0,)]
    assert pg("SELECT count(*) FROM secret_versions v LEFT JOIN secrets s ON s.id = v.secret_id "
              "WHERE s.id IS NULL") == [(0,)]
    assert log.server_errors() == []
    assert len(log.responses) >= 300
    for server in pair:
        assert "Traceback" not in server.log()


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def csrf_meta(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', html).group(1)


def sign_in(session: requests.Session, base: str, email: str, password: str) -> requests.Response:
    """Fill in the sign-in form of `base` as a browser does: the form's own CSRF token, then POST."""
    form = session.get(f"{base}/login", timeout=TIMEOUT)
    assert form.status_code == 200
    return session.post(f"{base}/login", data={"csrf_token": csrf_from(form.text), "email": email,
                                               "password": password}, allow_redirects=False, timeout=TIMEOUT)


@pytest.fixture
def user(pair, app) -> str:
    from secrets_hub import users

    with app.app_context():
        users.create_user(None, "admin@example.com", PASSWORD, is_admin=True)
    return "admin@example.com"


def test_a_session_from_one_process_works_on_the_other_and_failed_sign_ins_count_across_both(
        pair, user, token, redis_storage):
    a, b = pair[0].base, pair[1].base
    browser = requests.Session()

    # Signed in on A ...
    signed_in = sign_in(browser, a, user, PASSWORD)
    assert signed_in.status_code == 302 and signed_in.headers["Location"] == "/settings"
    assert "session" in browser.cookies

    # ... the same cookie is a session on B: pages, API reads, and writes with a CSRF token A issued.
    page = browser.get(f"{b}/settings", allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200
    csrf_token_from_a = csrf_meta(browser.get(f"{a}/settings", timeout=TIMEOUT).text)
    assert browser.get(f"{b}/api/secrets", timeout=TIMEOUT).json() == {"data": []}
    created = browser.post(f"{b}/api/secrets", json={"key": "FROM_SESSION", "value": "cookie-made"},
                           headers={"X-CSRFToken": csrf_token_from_a}, timeout=TIMEOUT)
    assert created.status_code == 200, created.text
    assert requests.get(f"{a}/api/secrets/FROM_SESSION", headers=bearer(token), timeout=TIMEOUT).json() == {
        "data": {"key": "FROM_SESSION", "value": "cookie-made"}}
    refused = browser.post(f"{b}/api/secrets", json={"key": "NO_CSRF", "value": "x"}, timeout=TIMEOUT)
    assert (refused.status_code, refused.json()) == (403, {"statusCode": 403, "message": "CSRF token missing or invalid"})
    # A stranger without the cookie is not signed in on either.
    for base in (a, b):
        assert requests.get(f"{base}/settings", allow_redirects=False, timeout=TIMEOUT).status_code == 302

    # Failed sign-ins for one address and email are counted in Redis, whichever process answers:
    # five alternately on A and B are refused 401; the sixth, on either, is 429.
    guesser = requests.Session()
    assert [sign_in(guesser, (a, b)[i % 2], user, "wrong password").status_code for i in range(5)] == [401] * 5
    for base in (b, a):
        blocked = sign_in(guesser, base, user, "wrong password")
        assert blocked.status_code == 429
        assert "Too many failed sign-ins. Wait a minute and try again." in blocked.text
    # Even the right password waits out the minute, on both; another email from the address is not blocked.
    for base in (a, b):
        assert sign_in(requests.Session(), base, user, PASSWORD).status_code == 429
    assert sign_in(requests.Session(), b, "someone.else@example.com", "wrong password").status_code == 401
    _, redis_client = redis_storage
    assert redis_client.dbsize() > 1  # the counters are in the shared store, not in either process

    # The session signed in before the guessing still works on both.
    for base in (a, b):
        assert browser.get(f"{base}/api/secrets", timeout=TIMEOUT).status_code == 200


def test_failed_bearer_authentications_count_across_both_processes(pair, token, redis_storage):
    a, b = pair[0].base, pair[1].base
    required = {"statusCode": 401, "message": "Authentication required"}
    too_many = {"statusCode": 429, "message": "Too many failed authentications; try again in a minute"}

    def fail_on(base: str, count: int) -> Callable[[], list[requests.Response]]:
        def run() -> list[requests.Response]:
            client = requests.Session()
            return [client.get(f"{base}/api/secrets", headers=bearer(f"shub_wrong{uuid.uuid4().hex}"),
                               timeout=TIMEOUT) for _ in range(count)]
        return run

    # 29 failures, split between the processes and sent at the same time: all 401, nobody blocked yet.
    failures = [response for batch in run_together([fail_on(a, 15), fail_on(b, 14)]) for response in batch]
    assert [(r.status_code, r.json()) for r in failures] == [(401, required)] * 29
    assert all(r.headers["WWW-Authenticate"] == "Bearer" for r in failures)
    assert requests.get(f"{b}/api/secrets", headers=bearer(token), timeout=TIMEOUT).status_code == 200

    # The 30th failure, on A, is still a 401; from then on the address is blocked on both processes,
    # with the right token too. Counted per process, each would have seen only about half.
    assert fail_on(a, 1)()[0].status_code == 401
    for base in (b, a):
        blocked = fail_on(base, 1)()[0]
        assert (blocked.status_code, blocked.json()) == (429, too_many)
        with_token = requests.get(f"{base}/api/secrets", headers=bearer(token), timeout=TIMEOUT)
        assert (with_token.status_code, with_token.json()) == (429, too_many)
    # Health checks are not API authentications and still answer.
    assert requests.get(f"{a}/healthz", timeout=TIMEOUT).status_code == 200
    _, redis_client = redis_storage
    assert redis_client.dbsize() > 1
