"""`secrets-hub serve`'s app on SQLite: the WSGI app run on an event loop, a greenlet per request (web/asgi.py,
event_loop.py). Driven here as an ASGI server drives it; the live-server tests drive it through granian.

It must answer as the WSGI app answers, let the requests that arrive together share one audit commit, answer
a read only once its event is committed, and never block the loop: a request waiting to write lets the others
run."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import os
import sqlite3
import threading
from typing import Any

import pytest

from conftest import bearer, hold_sqlite_writer_lock
from secrets_hub import event_loop
from secrets_hub.web.asgi import ASGIApp, folded_headers, wsgi_environ


@pytest.fixture
def asgi(app) -> ASGIApp:
    return ASGIApp(app)


@pytest.fixture
def store(app):
    return app.extensions["secrets_hub"].store


def scope_of(method: str, path: str, headers: dict[str, str] | list[tuple[str, str]] = (), query: str = "") -> dict[str, Any]:
    items = headers.items() if isinstance(headers, dict) else headers
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in items],
            "client": ("192.0.2.7", 40000), "server": ("127.0.0.1", 8000)}


async def call(asgi: ASGIApp, method: str, path: str, headers: Any = (), body: bytes | list[bytes] = b"",
               query: str = "", on_start: Any = None, as_list: bool = False) -> tuple[int, Any, bytes]:
    """One request as a server makes it: the body in one message or in chunks; (status, headers, body), the
    headers as a dict, or `as_list` as the list of (name, value) sent."""
    chunks = body if isinstance(body, list) else [body]
    if isinstance(body, bytes) and body:  # a client declares the length of a body it sends whole
        headers = [*(headers.items() if isinstance(headers, dict) else headers), ("Content-Length", str(len(body)))]
    messages = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and on_start is not None:
            on_start()
        sent.append(message)

    await asgi(scope_of(method, path, headers, query), receive, send)
    start, content = sent
    assert not content.get("more_body", False)
    answer_headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]]
    return start["status"], answer_headers if as_list else dict(answer_headers), content["body"]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def flask_answer(response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, [(name.lower(), value) for name, value in response.headers.items()], response.data


def test_answers_are_the_wsgi_apps_byte_for_byte(app, client, asgi, admin_token, make_token, monkeypatch):
    headers = bearer(admin_token)
    assert client.post("/api/secrets", json={"key": "HOT", "value": "v1"}, headers=headers).status_code == 200
    narrow = bearer(make_token("secrets:read", allow=["OTHER_*"], name="narrow"))
    json_body = {**headers, "Content-Type": "application/json"}
    cases = [  # the hot path's reads, updates and refusals, and Flask's routes, pages and errors
        ("GET", "/api/secrets/HOT", headers, b"", ""),
        ("GET", "/api/secrets/HOT", headers, b"", "version=1"),
        ("GET", "/api/secrets/MISSING", headers, b"", ""),
        ("GET", "/api/secrets/HOT", narrow, b"", ""),
        ("GET", "/api/secrets/HOT", bearer("shub_not-a-token"), b"", ""),
        ("GET", "/api/secrets", headers, b"", ""),
        ("PUT", "/api/secrets/HOT", json_body, b"{not json", ""),
        ("PUT", "/api/secrets/HOT", {**json_body, "If-Match": "7"}, b'{"value": "x"}', ""),
        ("PUT", "/api/secrets/HOT", {**json_body, "If-Match": "7"}, b'{"value": "x"}', "via=flask"),
        ("GET", "/healthz", {}, b"", ""),
        ("GET", "/login", {}, b"", ""),
        ("GET", "/nowhere", {}, b"", ""),
    ]
    through_wsgi: list[str] = []
    wsgi_app = asgi.wsgi_app
    monkeypatch.setattr(asgi, "wsgi_app", lambda environ, start: through_wsgi.append(environ["PATH_INFO"])
                        or wsgi_app(environ, start))
    for method, path, request_headers, body, query in cases:
        status, answer_headers, content = run(call(asgi, method, path, request_headers, body, query, as_list=True))
        expected = flask_answer(client.open(path, method=method, headers=request_headers, data=body, query_string=query))
        if path == "/login":  # a page's CSRF token and session cookie are new on every request
            assert (status, content.count(b"csrf_token")) == (expected[0], expected[2].count(b"csrf_token")), path
            assert [name for name, _ in answer_headers] == [name for name, _ in expected[1]]
            continue
        without_date = [header for header in answer_headers if header[0] != "date"]
        assert (status, without_date, content) == (expected[0], [h for h in expected[1] if h[0] != "date"], expected[2]), (
            method, path, query)
    # The hot path's requests were answered without a WSGI environ; the others went through the WSGI app.
    assert through_wsgi == ["/api/secrets/HOT", "/api/secrets", "/api/secrets/HOT", "/healthz", "/login", "/nowhere"]


def test_the_request_reaches_the_app_as_a_wsgi_server_would_pass_it():
    scope = scope_of("POST", "/api/sécrets", [("Content-Type", "application/json"), ("Content-Length", "2"),
                                             ("Cookie", "a=1"), ("Cookie", "b=2"), ("Accept", "text/html"),
                                             ("Accept", "application/json"), ("X_Forwarded_For", "203.0.113.9")],
                      query="x=%2F")
    environ = wsgi_environ(scope, folded_headers(scope["headers"]), b"{}")
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["PATH_INFO"] == "/api/sécrets".encode().decode("latin-1")  # WSGI's bytes-as-latin-1
    assert environ["QUERY_STRING"] == "x=%2F"
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("application/json", "2")
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_ACCEPT"] == "text/html,application/json"
    # An underscore spelling of a header must not pass for the dashed one the proxy sets.
    assert "HTTP_X_FORWARDED_FOR" not in environ
    assert (environ["REMOTE_ADDR"], environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("192.0.2.7", "127.0.0.1", "8000")
    assert environ["wsgi.input"].read() == b"{}"


def test_a_body_in_chunks_is_read_whole_and_one_past_the_limit_is_refused(app, asgi, admin_token):
    headers = {**bearer(admin_token), "Content-Type": "application/json"}
    status, _, content = run(call(asgi, "POST", "/api/secrets", headers, [b'{"key": "CHUNKED", ', b'"value": "v1"}']))
    assert status == 200, content
    status, _, content = run(call(asgi, "GET", "/api/secrets/CHUNKED", bearer(admin_token)))
    assert (status, content) == (200, b'{"data":{"key":"CHUNKED","value":"v1"}}\n')
    too_big = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    for declared in ({"Content-Length": str(len(too_big))}, {}):  # declared, or found out while reading
        status, _, content = run(call(asgi, "POST", "/api/secrets", {**headers, **declared}, [too_big[:10], too_big[10:]]))
        assert status == 413, content


def read_events(store, key: str) -> int:
    return sum(1 for event in store.audit_events(key=key, actor=None, limit=1000, before=None) if event["action"] == "read")


def test_reads_arriving_together_share_one_commit_and_each_answers_once_its_event_is_in(
        client, asgi, store, admin_token, monkeypatch):
    headers = bearer(admin_token)
    assert client.post("/api/secrets", json={"key": "SHARED", "value": "v1"}, headers=headers).status_code == 200
    batches: list[int] = []
    audit_insert = store.audit_insert
    monkeypatch.setattr(store, "audit_insert", lambda events: batches.append(len(events)) or audit_insert(events))
    answered: list[int] = []

    def on_start() -> None:  # as the answer starts out, every answer so far must have its event committed
        answered.append(1)
        assert read_events(store, "SHARED") >= len(answered)

    async def eight_reads() -> list[Any]:
        return await asyncio.gather(*(call(asgi, "GET", "/api/secrets/SHARED", headers, on_start=on_start)
                                      for _ in range(8)))

    answers = run(eight_reads())
    assert [(status, content) for status, _, content in answers] == [(200, b'{"data":{"key":"SHARED","value":"v1"}}\n')] * 8
    assert batches == [8]
    assert read_events(store, "SHARED") == 8


def test_updates_on_one_loop_each_get_their_own_version(client, asgi, admin_token):
    headers = {**bearer(admin_token), "Content-Type": "application/json"}
    assert client.post("/api/secrets", json={"key": "MANY", "value": "v1"}, headers=headers).status_code == 200

    async def updates() -> list[Any]:
        return await asyncio.gather(*(call(asgi, "PUT", "/api/secrets/MANY", headers, f'{{"value": "v{n}"}}'.encode())
                                      for n in range(2, 12)))

    assert [status for status, _, _ in run(updates())] == [200] * 10
    versions = client.get("/api/secrets/MANY/versions", headers=headers).get_json()["data"]
    assert sorted(version["version"] for version in versions) == list(range(1, 12))


@pytest.mark.parametrize("holder", ["another process", "a thread of this process", "another program"])
@pytest.mark.parametrize("waiting", ["read", "token create"])
def test_a_request_waiting_to_write_lets_the_loop_serve_others(backend, database_url, client, asgi, store, admin_token,
                                                               holder, waiting):
    if backend != "sqlite":
        pytest.skip("PostgreSQL has no writer locks: its rows' locks order writers")
    if (holder, waiting) == ("another program", "token create"):
        pytest.skip("known limit (README): the ORM's writes wait out SQLite's own busy wait, for another program, on the loop")
    headers = bearer(admin_token)
    assert client.post("/api/secrets", json={"key": "WAITS", "value": "v1"}, headers=headers).status_code == 200
    if holder == "another process":  # one of our writers in another worker: it holds the lock file
        other_process = hold_sqlite_writer_lock(database_url)
        release = functools.partial(os.close, other_process)
    elif holder == "a thread of this process":  # the checkpointer's, say
        store._sqlite_writer.acquire()
        release = store._sqlite_writer.release
    else:  # a program that knows nothing of our locks holds SQLite's own
        other_program = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        other_program.execute("BEGIN IMMEDIATE")
        release = functools.partial(other_program.execute, "ROLLBACK")
    if waiting == "read":
        request = call(asgi, "GET", "/api/secrets/WAITS", headers)
        expected = (200, b'{"data":{"key":"WAITS","value":"v1"}}\n')
    else:
        request = call(asgi, "POST", "/api/tokens", {**headers, "Content-Type": "application/json"},
                       b'{"name": "made-while-locked", "scopes": ["secrets:read"]}')
        expected = (200, None)

    async def scenario() -> tuple[Any, Any]:
        waits = asyncio.ensure_future(request)
        for _ in range(50):  # the request runs until it waits to write...
            await asyncio.sleep(0)
        assert not waits.done()
        health = await call(asgi, "GET", "/healthz")  # ...and the loop serves another request meanwhile
        assert not waits.done()
        release()
        return health, await waits

    (health_status, _, _), (status, _, content) = run(scenario())
    assert (health_status, status) == (200, expected[0]), content
    if waiting == "read":
        assert content == expected[1]
        assert read_events(store, "WAITS") == 1
    else:
        assert json.loads(content)["data"]["name"] == "made-while-locked"
        names = [token["name"] for token in client.get("/api/tokens", headers=headers).get_json()["data"]]
        assert "made-while-locked" in names


def test_a_read_cancelled_while_it_waits_for_the_writer_locks_fails_alone(database_url, backend, client, asgi, store,
                                                                           admin_token):
    if backend != "sqlite":
        pytest.skip("PostgreSQL has no writer locks to wait for")
    headers = bearer(admin_token)
    assert client.post("/api/secrets", json={"key": "QUEUED", "value": "v1"}, headers=headers).status_code == 200
    other_process = hold_sqlite_writer_lock(database_url)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(call(asgi, "GET", "/api/secrets/QUEUED", headers))
        for _ in range(20):  # it leads, and polls the lock file another process holds
            await asyncio.sleep(0)
        others = [asyncio.ensure_future(call(asgi, "GET", "/api/secrets/QUEUED", headers)) for _ in range(3)]
        for _ in range(20):  # they queue behind it
            await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        os.close(other_process)
        return await asyncio.wait_for(asyncio.gather(*others), 10)

    answers = run(scenario())
    assert [(status, content) for status, _, content in answers] == [(200, b'{"data":{"key":"QUEUED","value":"v1"}}\n')] * 3
    assert read_events(store, "QUEUED") == 3


def test_code_run_on_the_loop_gets_a_fresh_context_and_its_errors(monkeypatch):
    seen = contextvars.ContextVar("seen", default="unset")

    def first() -> str:
        seen.set("first")
        assert event_loop.on_loop()
        event_loop.sleep(0)
        return seen.get()

    def second() -> str:
        return seen.get()

    def fails() -> None:
        event_loop.wait_for(asyncio.sleep(0))
        raise KeyError("raised on the loop")

    async def scenario() -> list[Any]:
        together = await asyncio.gather(event_loop.run(first), event_loop.run(second))
        after = await event_loop.run(second)  # on a greenlet used before
        with pytest.raises(KeyError, match="raised on the loop"):
            await event_loop.run(fails)
        return [*together, after, await event_loop.run(second)]

    assert run(scenario()) == ["first", "unset", "unset", "unset"]
    assert not event_loop.on_loop()


def test_requests_on_the_loop_never_wait_for_a_pooled_orm_connection(backend, app):
    if backend != "sqlite":
        pytest.skip("`serve` runs PostgreSQL on threads, which may wait for its pool")
    from sqlalchemy import text

    from secrets_hub.db import db

    with app.app_context():
        engine = db.engine

    def holds_a_connection_while_it_waits() -> int:  # as a page does, loading its user, then auditing a read
        with engine.connect() as connection:
            event_loop.sleep(0)
            return connection.execute(text("SELECT 1")).scalar()

    async def scenario() -> list[int]:
        return await asyncio.gather(*(event_loop.run(holds_a_connection_while_it_waits) for _ in range(40)))

    results: list[list[int]] = []
    loop_thread = threading.Thread(target=lambda: results.append(run(scenario())), daemon=True)
    loop_thread.start()
    loop_thread.join(20)  # a wait for a pooled connection would block this loop for its pool timeout (30 s)
    assert results == [[1] * 40]


def test_a_read_cancelled_as_it_takes_its_turn_to_write_leaves_the_writer_to_the_next(client, asgi, store, admin_token):
    headers = bearer(admin_token)
    assert client.post("/api/secrets", json={"key": "GONE", "value": "v1"}, headers=headers).status_code == 200
    before = read_events(store, "GONE")

    async def scenario() -> Any:
        first = asyncio.ensure_future(call(asgi, "GET", "/api/secrets/GONE", headers))
        await asyncio.sleep(0)  # it runs until it lets the loop run once before writing its batch
        assert not first.done()
        first.cancel()  # as a server cancels a request whose worker stops
        with pytest.raises(asyncio.CancelledError):
            await first
        # The next read is written and answered (with the writer still handed to the cancelled one, never).
        return await asyncio.wait_for(call(asgi, "GET", "/api/secrets/GONE", headers), 10)

    status, _, content = run(scenario())
    assert (status, content) == (200, b'{"data":{"key":"GONE","value":"v1"}}\n')
    assert read_events(store, "GONE") == before + 1  # the cancelled read was neither answered nor audited


def test_a_batch_written_by_a_thread_beside_the_loop_wakes_the_reads_of_the_loop_it_took(
        app, client, asgi, store, admin_token, monkeypatch):
    headers = bearer(admin_token)
    assert client.post("/api/secrets", json={"key": "BESIDE", "value": "v1"}, headers=headers).status_code == 200
    runtime = app.extensions["secrets_hub"]
    writing, release = threading.Event(), threading.Event()
    append_audit = store.append_audit

    def held_until_released(take: Any) -> None:  # the thread's batch waits before it takes the events queued
        writing.set()
        assert release.wait(10)
        append_audit(take)

    monkeypatch.setattr(store, "append_audit", held_until_released)
    thread = threading.Thread(target=lambda: record_in(runtime, "THREAD"))  # a plugin's thread, say
    thread.start()
    assert writing.wait(10)
    monkeypatch.setattr(store, "append_audit", append_audit)

    async def scenario() -> Any:
        read = asyncio.ensure_future(call(asgi, "GET", "/api/secrets/BESIDE", headers))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not read.done()  # queued behind the thread's batch
        release.set()
        return await asyncio.wait_for(read, 10)

    status, _, content = run(scenario())
    thread.join(10)
    assert (status, content) == (200, b'{"data":{"key":"BESIDE","value":"v1"}}\n')
    assert read_events(store, "BESIDE") == 1


def record_in(runtime: Any, key: str) -> None:
    from secrets_hub import audit
    from secrets_hub.auth import operator
    from secrets_hub.runtime import activated

    with activated(runtime):
        audit.record_now(operator("plugin"), "probe", key, "ok")


@pytest.mark.parametrize(("hops", "address"), [("1", "203.0.113.7"), ("0", "192.0.2.7")])
def test_behind_a_proxy_the_audited_address_is_the_forwarded_one(backend, config, hops, address):
    if backend != "sqlite":
        pytest.skip("`serve` runs PostgreSQL on WSGI threads")
    from secrets_hub import bootstrap, tokens
    from secrets_hub.app import create_app
    from secrets_hub.auth import operator
    from secrets_hub.db import db

    bootstrap.initialize(config)
    app = create_app({**config, "TESTING": True, "SECRETS_HUB_PROXY_HOPS": hops})
    with app.app_context():
        token = tokens.create_token(operator("test"), "proxy-admin", ["admin", "secrets:read"], None, None)["token"]
    forwarded = {**bearer(token), "X-Forwarded-For": "203.0.113.7"}
    assert run(call(ASGIApp(app), "GET", "/api/secrets/MISSING_KEY", forwarded))[0] == 404
    events = app.extensions["secrets_hub"].store.audit_events(key="MISSING_KEY", actor=None, limit=10, before=None)
    assert [event["remote_addr"] for event in events] == [address]
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_client_gone_before_its_body_is_in_gets_nothing_done(client, asgi, admin_token):
    headers = [*bearer(admin_token).items(), ("Content-Type", "application/json"), ("Content-Length", "40")]
    sent: list[Any] = []
    messages = [{"type": "http.request", "body": b'{"key": "HALF", ', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run(asgi(scope_of("POST", "/api/secrets", headers), receive, send))
    assert sent == []
    assert client.get("/api/secrets/HALF", headers=bearer(admin_token)).status_code == 404


def test_serve_runs_the_loop_only_where_no_request_waits_on_the_network():
    from secrets_hub.server import serving

    assert serving("sqlite", "memory://") == ("secrets_hub.web.asgi:create_asgi_app", "asgi", None)
    # Redis counters are asked on every API request, and PostgreSQL on every one: WSGI threads overlap those waits.
    assert serving("sqlite", "redis://127.0.0.1:6379/0") == ("secrets_hub.app:create_app", "wsgi", 4)
    assert serving("postgresql", "memory://") == ("secrets_hub.app:create_app", "wsgi", 8)
