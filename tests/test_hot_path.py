"""The value read's hot path: served without dispatching a Flask request, and answered byte for byte as the
Flask route answers it (the same read with `?version=N` still goes through Flask, so the two can be compared)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import request_started

from conftest import bearer
from secrets_hub.db import db
from secrets_hub.models import AuditEvent


@pytest.fixture
def dispatched(app) -> list[str]:
    """The paths of the requests Flask dispatched (its request_started signal)."""
    paths: list[str] = []

    def started(_sender: Any, **_extra: Any) -> None:
        from flask import request

        paths.append(request.full_path.rstrip("?"))

    request_started.connect(started, app)
    yield paths
    request_started.disconnect(started, app)


@pytest.fixture
def auth(client, admin_token, dispatched) -> dict[str, str]:
    """The admin's Bearer header, once secret HOT (value v1) exists; the dispatch record starts after it."""
    headers = bearer(admin_token)
    assert client.post("/api/secrets", json={"key": "HOT", "value": "v1"}, headers=headers).status_code == 200
    del dispatched[:]
    return headers


def answer(response) -> tuple[int, bytes, dict[str, str]]:
    headers = {name: value for name, value in response.headers.items() if name != "Date"}
    return response.status_code, response.data, headers


def audit_rows(app) -> list[tuple[str, str, str | None, str, str]]:
    with app.app_context():
        rows = db.session.query(AuditEvent.actor, AuditEvent.action, AuditEvent.key, AuditEvent.outcome,
                                AuditEvent.channel).order_by(AuditEvent.id).all()
        db.session.remove()
    return [tuple(row) for row in rows]


def test_a_value_read_skips_flask_and_answers_as_the_flask_route_does(app, client, auth, make_token, dispatched):
    narrow = bearer(make_token("secrets:read", allow=["OTHER_*"], name="narrow"))
    no_read = bearer(make_token("secrets:write", name="writer"))
    cases = [
        ("HOT", auth, 200),
        ("MISSING", auth, 404),
        ("HOT", narrow, 403),  # outside the token's globs
        ("HOT", no_read, 403),  # without secrets:read
        ("HOT", bearer("shub_not-a-token"), 401),
        ("lower_case", auth, 404),  # a key no secret can have
    ]
    for key, headers, status in cases:
        hot = client.get(f"/api/secrets/{key}", headers=headers)
        through_flask = client.get(f"/api/secrets/{key}?version=1", headers=headers)
        assert hot.status_code == status, hot.get_json()
        assert answer(hot) == answer(through_flask), key
    assert hot.headers["Cache-Control"] == "no-store"
    assert hot.headers["X-Content-Type-Options"] == "nosniff"
    # Only the reads with a query string were dispatched by Flask.
    assert dispatched == [f"/api/secrets/{key}?version=1" for key, _, _ in cases]
    # Both ways are audited alike: every read twice, once per way.
    events = [row for row in audit_rows(app) if row[1] in ("read", "authenticate")]
    assert events[0::2] == events[1::2]
    assert events[0] == ("admin", "read", "HOT", "ok", "rest")


def test_other_requests_on_the_same_path_go_through_flask(app, client, auth, admin_token, dispatched):
    assert client.head("/api/secrets/HOT", headers=auth).status_code == 200
    with_charset = {**auth, "Content-Type": "application/json; charset=utf-8"}
    assert client.put("/api/secrets/HOT", data=b'{"value": "v2"}', headers=with_charset).status_code == 200
    as_text = {**auth, "Content-Type": "text/plain"}
    assert client.put("/api/secrets/HOT", data=b'{"value": "v3"}', headers=as_text).status_code == 415
    assert client.get("/api/secrets/HOT/versions", headers=auth).status_code == 200
    assert client.get("/api/secrets/HOT", headers={"Authorization": f"Basic {admin_token}"}).status_code == 401
    assert client.get("/api/secrets/HOT").status_code == 401
    assert dispatched == ["/api/secrets/HOT"] * 3 + ["/api/secrets/HOT/versions"] + ["/api/secrets/HOT"] * 2
    assert client.get("/api/secrets/HOT", headers=auth).get_json() == {"data": {"key": "HOT", "value": "v2"}}
    assert client.put("/api/secrets/HOT", json={"value": "v4"}, headers=auth).status_code == 200
    assert len(dispatched) == 6  # the Bearer read and the plain JSON update took the hot path
    for odd_length in ("²", "9" * 5000):  # digits int() refuses, or too many of them: left to Flask
        environ = {"CONTENT_TYPE": "application/json", "CONTENT_LENGTH": odd_length}
        response = client.put("/api/secrets/HOT", data=b'{"value": "v5"}', headers=auth, environ_overrides=environ)
        assert response.status_code in (400, 413) and response.get_json()["statusCode"] == response.status_code
    assert len(dispatched) == 8


def test_an_update_skips_flask_and_answers_as_the_flask_route_does(app, client, auth, make_token, dispatched):
    narrow = bearer(make_token("secrets:write", allow=["OTHER_*"], name="narrow"))
    no_write = bearer(make_token("secrets:read", name="reader"))
    refusals = [  # none of them changes anything, so both ways must answer them byte for byte alike
        ("HOT", auth, b"{not json", 400),
        ("HOT", auth, b'{"value": "x", "colour": "red"}', 400),
        ("HOT", auth, b'{"value": 5}', 400),
        ("HOT", {**auth, "If-Match": "7"}, b'{"value": "x"}', 409),
        ("HOT", {**auth, "If-Match": "seven"}, b'{"value": "x"}', 400),
        ("MISSING", auth, b'{"value": "x"}', 404),
        ("lower_case", auth, b'{"value": "x"}', 404),
        ("HOT", narrow, b'{"value": "x"}', 403),
        ("HOT", no_write, b'{"value": "x"}', 403),
        ("HOT", bearer("shub_not-a-token"), b'{"value": "x"}', 401),
    ]
    for key, headers, body, status in refusals:
        headers = {**headers, "Content-Type": "application/json"}
        hot = client.put(f"/api/secrets/{key}", data=body, headers=headers)
        through_flask = client.put(f"/api/secrets/{key}?via=flask", data=body, headers=headers)
        assert hot.status_code == status, (key, body, hot.get_json())
        assert answer(hot) == answer(through_flask), (key, body)
    hot = client.put("/api/secrets/HOT", json={"value": "v2"}, headers={**auth, "If-Match": "1"})
    through_flask = client.put("/api/secrets/HOT?via=flask", json={"value": "v3"}, headers={**auth, "If-Match": "2"})
    assert (hot.status_code, through_flask.status_code) == (200, 200)
    assert hot.get_json()["data"]["key"] == "HOT"
    assert {**hot.get_json()["data"], "updatedAt": None} == {**through_flask.get_json()["data"], "updatedAt": None}
    assert answer(hot)[2] == answer(through_flask)[2]  # the same headers
    assert dispatched == [f"/api/secrets/{key}?via=flask" for key, _, _, _ in refusals] + ["/api/secrets/HOT?via=flask"]
    assert client.get("/api/secrets/HOT?version=2", headers=auth).get_json()["data"]["value"] == "v2"
    # Both ways are audited alike.
    events = [row for row in audit_rows(app) if row[1] in ("update", "authenticate")]
    assert events[0::2] == events[1::2]
    assert events[-1] == ("admin", "update", "HOT", "ok", "rest")
