"""The REST API of SPEC.md section 4, and the audit trail of section 10, through the Flask test client.

Every test that takes `client` runs once on SQLite and once on PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from openapi_spec_validator import validate
from sqlalchemy import text, update

from conftest import bearer
from secrets_hub import users
from secrets_hub.db import db
from secrets_hub.models import ApiToken

ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
MAX = 65536
KEY_FORMAT = "Key must be SCREAMING_SNAKE_CASE (e.g., MY_API_KEY)"
META_FIELDS = {"id", "key", "description", "createdAt", "updatedAt"}
AUDIT_FIELDS = {"id", "at", "actor", "channel", "action", "key", "outcome", "remoteAddr"}
TOKEN_FIELDS = {"name", "scopes", "allow", "createdAt", "lastUsedAt", "expiresAt"}


# ---- helpers ----------------------------------------------------------------------------------------------------

def error(status: int, message: str) -> dict:
    return {"statusCode": status, "message": message}


def assert_error(response, status: int, message: str | None = None) -> None:
    """An error response: the status, and a body of exactly statusCode and message."""
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == {"statusCode", "message"} and body["statusCode"] == status
    assert isinstance(body["message"], str) and body["message"]
    if message is not None:
        assert body["message"] == message


def parse_time(text: str, recent: bool = True) -> datetime:
    """An ISO 8601 UTC time ending in Z, as the API writes it; `recent`: within minutes of now."""
    assert ISO_UTC.fullmatch(text), text
    parsed = datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)
    assert not recent or abs(datetime.now(timezone.utc) - parsed) < timedelta(minutes=10)
    return parsed


def raw_json(client, method: str, path: str, data: str | bytes, headers: dict):
    return client.open(path, method=method, data=data, headers={**headers, "Content-Type": "application/json"})


def create(client, headers: dict, key: str, value: str = "v", **extra) -> dict:
    response = client.post("/api/secrets", json={"key": key, "value": value, **extra}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def put(client, headers: dict, key: str, /, **body):
    return client.put(f"/api/secrets/{key}", json=body, headers=headers)


def value_of(client, headers: dict, key: str, query: str = "") -> tuple[str, str]:
    """The value and ETag of KEY."""
    response = client.get(f"/api/secrets/{key}{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]["value"], response.headers["ETag"]


def audit_events(client, headers: dict, query: str = "") -> list[dict]:
    response = client.get(f"/api/audit{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


@pytest.fixture
def auth(admin_token) -> dict:
    """Headers of the all-scopes token named "admin"."""
    return bearer(admin_token)


@pytest.fixture
def seeded(client, auth) -> dict:
    """K with two versions (v1, v2); the admin headers."""
    create(client, auth, "K", "v1", description="d")
    assert put(client, auth, "K", value="v2").status_code == 200
    return auth


# ---- seed endpoints ---------------------------------------------------------------------------------------------

def test_create_returns_metadata_never_the_value(client, auth):
    response = client.post("/api/secrets", json={"key": "GITHUB_TOKEN", "value": "ghp_xyz", "description": "CI"},
                           headers=auth)
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert set(response.get_json()) == {"data"}
    assert set(data) == {"id", "key", "description", "createdAt"}
    assert data["key"] == "GITHUB_TOKEN" and data["description"] == "CI"
    uuid.UUID(data["id"])
    parse_time(data["createdAt"])
    assert "ghp_xyz" not in response.get_data(as_text=True)


@pytest.mark.parametrize("extra", ({}, {"description": None}))
def test_omitted_or_null_description_is_stored_as_null(client, auth, extra):
    assert create(client, auth, "NO_DESC", **extra)["description"] is None
    listed = client.get("/api/secrets", headers=auth).get_json()["data"]
    assert [(s["key"], s["description"]) for s in listed] == [("NO_DESC", None)]


def test_list_is_empty_at_first(client, auth):
    response = client.get("/api/secrets", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"data": []}


def test_list_sorted_by_code_point_metadata_only(client, auth):
    keys = ["Z", "A_B", "B", "AB", "A1", "A", "A_"]
    for key in keys:
        create(client, auth, key, f"value-of-{key}-canary", description=f"about {key}")
    response = client.get("/api/secrets", headers=auth)
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert [s["key"] for s in data] == ["A", "A1", "AB", "A_", "A_B", "B", "Z"]
    for item in data:
        assert set(item) == META_FIELDS
        assert item["description"] == f"about {item['key']}"
        uuid.UUID(item["id"])
        assert parse_time(item["updatedAt"]) >= parse_time(item["createdAt"])
    assert "canary" not in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"


def test_postgresql_sorts_keys_with_collate_c(app, backend):
    """The test cluster's default collation may already be C, so check the column itself (SPEC section 4)."""
    if backend != "postgresql":
        pytest.skip("COLLATE \"C\" is PostgreSQL's; SQLite's BINARY default is code-point order already")
    with app.app_context():
        collation = db.session.execute(text(
            "SELECT collation_name FROM information_schema.columns WHERE table_name = 'secrets' AND column_name = 'key'"
        )).scalar()
    assert collation == "C"


def test_get_returns_key_and_value_with_etag_and_no_store(client, auth):
    create(client, auth, "MY_API_KEY", "s3cr3t ünïcode €")
    response = client.get("/api/secrets/MY_API_KEY", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"data": {"key": "MY_API_KEY", "value": "s3cr3t ünïcode €"}}
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(("method", "path", "body"), (
    ("GET", "/api/secrets/UNKNOWN_KEY", None),
    ("PUT", "/api/secrets/UNKNOWN_KEY", {"value": "x"}),
    ("PUT", "/api/secrets/UNKNOWN_KEY", {"description": "x"}),
    ("DELETE", "/api/secrets/UNKNOWN_KEY", None),
    ("GET", "/api/secrets/UNKNOWN_KEY/versions", None),
    ("GET", "/api/secrets/UNKNOWN_KEY?version=1", None),
    ("POST", "/api/secrets/UNKNOWN_KEY/restore", {"version": 1}),
))
def test_unknown_key_is_404(client, auth, method, path, body):
    response = client.open(path, method=method, json=body, headers=auth)
    assert response.get_json() == error(404, 'Secret with key "UNKNOWN_KEY" not found')
    assert response.status_code == 404


def test_reads_after_a_refused_write_answer(client, auth):
    """On PostgreSQL a refused write ends in a ROLLBACK, after which psycopg drops every prepared statement of the
    connection (DEALLOCATE ALL) once it has prepared some of its own: the reads and audit batches that run as
    prepared statements there still answer."""
    for n in range(6):  # enough transactions for psycopg to prepare their BEGIN, INSERTs and COMMIT
        assert client.post("/api/secrets", json={"key": f"K{n}", "value": f"v{n}"}, headers=auth).status_code == 200
        assert client.get(f"/api/secrets/K{n}", headers=auth).status_code == 200
    assert client.post("/api/secrets", json={"key": "K0", "value": "again"}, headers=auth).status_code == 409
    response = client.get("/api/secrets/K0", headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"data": {"key": "K0", "value": "v0"}})
    assert [(e["action"], e["outcome"]) for e in audit_events(client, auth, "?key=K0")] == [
        ("read", "ok"), ("create", "conflict"), ("read", "ok"), ("create", "ok")]


def test_duplicate_key_is_409_and_keeps_the_first(client, auth):
    create(client, auth, "GITHUB_TOKEN", "first")
    response = client.post("/api/secrets", json={"key": "GITHUB_TOKEN", "value": "second"}, headers=auth)
    assert response.status_code == 409
    assert response.get_json() == error(409, 'Secret with key "GITHUB_TOKEN" already exists')
    assert value_of(client, auth, "GITHUB_TOKEN") == ("first", '"1"')


def test_update_value_and_description(client, auth):
    created = create(client, auth, "K", "old", description="old description")
    response = put(client, auth, "K", value="new", description="new description")
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert set(data) == {"id", "key", "description", "updatedAt"}
    assert (data["id"], data["key"], data["description"]) == (created["id"], "K", "new description")
    assert parse_time(data["updatedAt"]) >= parse_time(created["createdAt"])
    assert "new" not in json.dumps(data).replace("new description", "")
    assert value_of(client, auth, "K") == ("new", '"2"')
    listed = client.get("/api/secrets", headers=auth).get_json()["data"][0]
    assert listed["description"] == "new description" and listed["updatedAt"] == data["updatedAt"]
    assert listed["createdAt"] == created["createdAt"]


def test_update_description_only_keeps_value_and_version(client, auth):
    create(client, auth, "K", "kept", description="before")
    response = put(client, auth, "K", description="after")
    assert response.status_code == 200 and response.get_json()["data"]["description"] == "after"
    assert value_of(client, auth, "K") == ("kept", '"1"')
    versions = client.get("/api/secrets/K/versions", headers=auth).get_json()["data"]
    assert [v["version"] for v in versions] == [1]


def test_update_description_to_null_clears_it(client, auth):
    create(client, auth, "K", description="something")
    response = put(client, auth, "K", description=None)
    assert response.status_code == 200 and response.get_json()["data"]["description"] is None
    assert client.get("/api/secrets", headers=auth).get_json()["data"][0]["description"] is None


def test_update_with_empty_body_changes_nothing_but_succeeds(client, auth):
    create(client, auth, "K", "same", description="same")
    response = put(client, auth, "K")
    assert response.status_code == 200 and response.get_json()["data"]["description"] == "same"
    assert value_of(client, auth, "K") == ("same", '"1"')


def test_delete_removes_secret_and_every_version(client, seeded):
    response = client.delete("/api/secrets/K", headers=seeded)
    assert response.status_code == 200
    assert response.get_json() == {"data": {"deleted": True}}
    assert client.get("/api/secrets/K", headers=seeded).status_code == 404
    assert client.get("/api/secrets", headers=seeded).get_json() == {"data": []}
    assert client.delete("/api/secrets/K", headers=seeded).get_json() == error(404, 'Secret with key "K" not found')
    create(client, seeded, "K", "reborn")
    assert value_of(client, seeded, "K") == ("reborn", '"1"')
    assert client.get("/api/secrets/K?version=2", headers=seeded).get_json() == error(404, 'Secret "K" has no version 2')


# ---- validation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "message"), (
    ({"value": "v"}, 400, "Key is required"),
    ({"key": None, "value": "v"}, 400, "Key is required"),
    ({"key": "", "value": "v"}, 400, "Key is required"),
    ({"key": 123, "value": "v"}, 400, KEY_FORMAT),
    ({"key": ["MY_KEY"], "value": "v"}, 400, KEY_FORMAT),
    ({"key": True, "value": "v"}, 400, KEY_FORMAT),
    ({"key": "my_key", "value": "v"}, 400, KEY_FORMAT),
    ({"key": "My_Key", "value": "v"}, 400, KEY_FORMAT),
    ({"key": "1KEY", "value": "v"}, 400, KEY_FORMAT),
    ({"key": "_KEY", "value": "v"}, 400, KEY_FORMAT),
    ({"key": "MY-KEY", "value": "v"}, 400, KEY_FORMAT),
    ({"key": "MY KEY", "value": "v"}, 400, KEY_FORMAT),
    ({"key": "MY_KEY\n", "value": "v"}, 400, KEY_FORMAT),
    ({"key": "ÄPFEL", "value": "v"}, 400, KEY_FORMAT),
    ({"key": "A" * 256, "value": "v"}, 400, "Key must be 255 characters or less"),
    ({"key": "MY_KEY"}, 400, "Value is required"),
    ({"key": "MY_KEY", "value": None}, 400, "Value is required"),
    ({"key": "MY_KEY", "value": 123}, 400, "Value is required"),
    ({"key": "MY_KEY", "value": ""}, 400, "Value is required"),
    ({"key": "MY_KEY", "value": True}, 400, "Value is required"),
    ({"key": "MY_KEY", "value": ["v"]}, 400, "Value is required"),
    ({"key": "MY_KEY", "value": {"v": 1}}, 400, "Value is required"),
    ({"key": "MY_KEY", "value": "x" * (MAX + 1)}, 413, f"Value exceeds {MAX} bytes"),
    ({"key": "MY_KEY", "value": "€" * 21846}, 413, f"Value exceeds {MAX} bytes"),
    ({"key": "MY_KEY", "value": "v", "description": 5}, 400, "Description must be a string"),
    ({"key": "MY_KEY", "value": "v", "description": True}, 400, "Description must be a string"),
    ({"key": "MY_KEY", "value": "v", "description": ["d"]}, 400, "Description must be a string"),
    ({"key": "MY_KEY", "value": "v", "description": {}}, 400, "Description must be a string"),
    ({"key": "MY_KEY", "value": "v", "description": "d" * 1001}, 400, "Description must be 1000 characters or less"),
    ({"key": "MY_KEY", "value": "v", "extra": 1}, 400, 'Unknown field "extra"'),
    ({"key": "MY_KEY", "value": "v", "id": "x"}, 400, 'Unknown field "id"'),
    ({"key": "MY_KEY", "Value": "v"}, 400, 'Unknown field "Value"'),
))
def test_create_validation(client, auth, body, status, message):
    response = client.post("/api/secrets", json=body, headers=auth)
    assert response.get_json() == error(status, message)
    assert response.status_code == status
    assert client.get("/api/secrets", headers=auth).get_json() == {"data": []}


NOT_AN_OBJECT = ("[]", '[{"key": "K", "value": "v"}]', '"MY_KEY"', "42", "null", "true", "not json", "{", "")


@pytest.mark.parametrize("data", NOT_AN_OBJECT)
def test_create_body_must_be_a_json_object(client, auth, data):
    response = raw_json(client, "POST", "/api/secrets", data, auth)
    assert response.status_code == 400
    assert response.get_json() == error(400, "Request body must be JSON")


@pytest.mark.parametrize(("key", "value", "description"), (
    ("A" * 255, "v", None),
    ("A", "v", None),
    ("A_1_B__", "v", None),
    ("MY_KEY", "x" * MAX, None),
    ("MY_KEY", "€" * 21845, None),  # 65535 bytes
    ("MY_KEY", " ", "d" * 1000),
    ("MY_KEY", "line1\nline2\x00\"quoted\"\\", ""),
))
def test_create_accepts_the_limits(client, auth, key, value, description):
    create(client, auth, key, value, description=description)
    assert value_of(client, auth, key) == (value, '"1"')
    assert client.get("/api/secrets", headers=auth).get_json()["data"][0]["description"] == description


@pytest.mark.parametrize(("body", "status", "message"), (
    ({"value": None}, 400, "Value is required"),
    ({"value": 123}, 400, "Value is required"),
    ({"value": ""}, 400, "Value is required"),
    ({"value": False}, 400, "Value is required"),
    ({"value": ["v"]}, 400, "Value is required"),
    ({"value": "x" * (MAX + 1)}, 413, f"Value exceeds {MAX} bytes"),
    ({"value": "€" * 21846}, 413, f"Value exceeds {MAX} bytes"),
    ({"description": 5}, 400, "Description must be a string"),
    ({"description": ["d"]}, 400, "Description must be a string"),
    ({"description": "d" * 1001}, 400, "Description must be 1000 characters or less"),
    ({"value": "v", "key": "OTHER"}, 400, 'Unknown field "key"'),
    ({"value": "v", "extra": 1}, 400, 'Unknown field "extra"'),
))
def test_update_validation_changes_nothing(client, auth, body, status, message):
    create(client, auth, "K", "original", description="original")
    response = put(client, auth, "K", **body)
    assert response.get_json() == error(status, message)
    assert response.status_code == status
    assert value_of(client, auth, "K") == ("original", '"1"')
    assert client.get("/api/secrets", headers=auth).get_json()["data"][0]["description"] == "original"


@pytest.mark.parametrize("data", NOT_AN_OBJECT)
def test_update_body_must_be_a_json_object(client, auth, data):
    create(client, auth, "K")
    response = raw_json(client, "PUT", "/api/secrets/K", data, auth)
    assert response.status_code == 400
    assert response.get_json() == error(400, "Request body must be JSON")


@pytest.mark.parametrize("value", ("x" * MAX, "€" * 21845))
def test_update_accepts_the_largest_value(client, auth, value):
    create(client, auth, "K")
    assert put(client, auth, "K", value=value).status_code == 200
    assert value_of(client, auth, "K") == (value, '"2"')


# ---- authentication ---------------------------------------------------------------------------------------------

EVERY_ENDPOINT = (
    ("GET", "/api/secrets", None),
    ("GET", "/api/secrets/K", None),
    ("GET", "/api/secrets/K?version=1", None),
    ("POST", "/api/secrets", {"key": "NEW", "value": "v"}),
    ("PUT", "/api/secrets/K", {"value": "x"}),
    ("DELETE", "/api/secrets/K", None),
    ("GET", "/api/secrets/K/versions", None),
    ("POST", "/api/secrets/K/restore", {"version": 1}),
    ("GET", "/api/audit", None),
    ("GET", "/api/tokens", None),
    ("POST", "/api/tokens", {"name": "new", "scopes": ["mcp"]}),
    ("DELETE", "/api/tokens/admin", None),
)


def assert_unauthenticated(response) -> None:
    assert response.status_code == 401
    assert response.get_json() == error(401, "Authentication required")
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), EVERY_ENDPOINT)
def test_no_credentials_is_401(client, seeded, method, path, body):
    assert_unauthenticated(client.open(path, method=method, json=body))
    assert value_of(client, seeded, "K") == ("v2", '"2"')
    assert [t["name"] for t in client.get("/api/tokens", headers=seeded).get_json()["data"]] == ["admin"]


def test_no_credentials_is_401_before_body_validation(client):
    assert_unauthenticated(raw_json(client, "POST", "/api/secrets", "not json", {}))


@pytest.mark.parametrize("header", (
    "Basic dXNlcjpwYXNzd29yZA==",
    "Bearer",
    "Bearer ",
    "Token shub_abc",
    "shub_abc",
    "Bearer not-a-token",
    "Bearer shub_" + "x" * 43,
    "Bearer shub_" + "x" * 5000,
))
def test_bad_credentials_are_401(client, auth, header):
    assert_unauthenticated(client.get("/api/secrets", headers={"Authorization": header}))


def test_bearer_scheme_is_case_insensitive(client, admin_token):
    assert client.get("/api/secrets", headers={"Authorization": f"bearer {admin_token}"}).status_code == 200


def test_expired_token_is_401(app, client, make_token):
    fresh = make_token("secrets:read", expires_in=timedelta(days=1))
    expired = make_token("secrets:read", name="expired", expires_in=timedelta(days=1))
    with app.app_context():
        db.session.execute(update(ApiToken).where(ApiToken.name == "expired")
                           .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        db.session.commit()
    assert client.get("/api/secrets", headers=bearer(fresh)).status_code == 200
    assert_unauthenticated(client.get("/api/secrets", headers=bearer(expired)))


def test_revoked_token_is_401_at_once(client, auth, make_token):
    token = make_token("secrets:read", name="soon-gone")
    assert client.get("/api/secrets", headers=bearer(token)).status_code == 200
    response = client.delete("/api/tokens/soon-gone", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"data": {"revoked": True}}
    assert_unauthenticated(client.get("/api/secrets", headers=bearer(token)))
    assert [t["name"] for t in client.get("/api/tokens", headers=auth).get_json()["data"]] == ["admin"]


SCOPE_CASES = (
    ("GET", "/api/secrets", None, ["secrets:write"], "secrets:read"),
    ("GET", "/api/secrets/K", None, ["secrets:write"], "secrets:read"),
    ("GET", "/api/secrets/K?version=1", None, ["secrets:write"], "secrets:read"),
    ("GET", "/api/secrets/K/versions", None, ["secrets:write"], "secrets:read"),
    ("POST", "/api/secrets", {"key": "NEW", "value": "v"}, ["secrets:read"], "secrets:write"),
    ("PUT", "/api/secrets/K", {"value": "x"}, ["secrets:read"], "secrets:write"),
    ("PUT", "/api/secrets/K", {"description": "x"}, ["secrets:read"], "secrets:write"),
    ("DELETE", "/api/secrets/K", None, ["secrets:read"], "secrets:write"),
    ("POST", "/api/secrets/K/restore", {"version": 1}, ["secrets:read"], "secrets:write"),
    ("GET", "/api/audit", None, ["secrets:read", "secrets:write"], "admin"),
    ("GET", "/api/tokens", None, ["secrets:read", "secrets:write"], "admin"),
    ("POST", "/api/tokens", {"name": "new", "scopes": ["mcp"]}, ["secrets:read", "secrets:write"], "admin"),
    ("DELETE", "/api/tokens/admin", None, ["secrets:read", "secrets:write"], "admin"),
    ("GET", "/api/secrets", None, ["mcp"], "secrets:read"),
    ("GET", "/api/secrets/K", None, ["mcp"], "secrets:read"),
    ("GET", "/api/secrets/K/versions", None, ["mcp"], "secrets:read"),
    ("POST", "/api/secrets", {"key": "NEW", "value": "v"}, ["mcp"], "secrets:write"),
    ("DELETE", "/api/secrets/K", None, ["mcp"], "secrets:write"),
)


@pytest.mark.parametrize(("method", "path", "body", "scopes", "missing"), SCOPE_CASES)
def test_missing_scope_is_403_and_changes_nothing(client, seeded, make_token, method, path, body, scopes, missing):
    token = make_token(*scopes, name="limited")
    response = client.open(path, method=method, json=body, headers=bearer(token))
    assert response.status_code == 403
    assert response.get_json() == error(403, f"Token lacks scope {missing}")
    assert value_of(client, seeded, "K") == ("v2", '"2"')
    assert [s["key"] for s in client.get("/api/secrets", headers=seeded).get_json()["data"]] == ["K"]
    assert [t["name"] for t in client.get("/api/tokens", headers=seeded).get_json()["data"]] == ["admin", "limited"]


ALLOW_CASES = (
    ("GET", "/api/secrets/{key}", None),
    ("GET", "/api/secrets/{key}?version=1", None),
    ("PUT", "/api/secrets/{key}", {"value": "x"}),
    ("PUT", "/api/secrets/{key}", {"description": "x"}),
    ("DELETE", "/api/secrets/{key}", None),
    ("GET", "/api/secrets/{key}/versions", None),
    ("POST", "/api/secrets/{key}/restore", {"version": 1}),
)


@pytest.mark.parametrize(("method", "path", "body"), ALLOW_CASES)
def test_key_outside_allow_globs_is_403(client, auth, make_token, method, path, body):
    create(client, auth, "OTHER", "other-value")
    token = make_token("secrets:read", "secrets:write", allow=["APP_*", "DB_?"])
    for key in ("OTHER", "MISSING"):  # refused alike, whether or not the secret exists
        response = client.open(path.format(key=key), method=method, json=body, headers=bearer(token))
        assert response.status_code == 403
        assert response.get_json() == error(403, f'Token may not access "{key}"')
    assert value_of(client, auth, "OTHER") == ("other-value", '"1"')


def test_create_outside_allow_globs_is_403(client, auth, make_token):
    token = make_token("secrets:write", allow=["APP_*"])
    response = client.post("/api/secrets", json={"key": "OTHER", "value": "v"}, headers=bearer(token))
    assert response.status_code == 403
    assert response.get_json() == error(403, 'Token may not access "OTHER"')
    assert client.get("/api/secrets", headers=auth).get_json() == {"data": []}
    assert client.post("/api/secrets", json={"key": "APP_NEW", "value": "v"}, headers=bearer(token)).status_code == 200


def test_allow_globs_filter_the_list_and_permit_matching_keys(client, auth, make_token):
    for key in ("APP_ONE", "APP_TWO", "APPX", "DB_1", "DB_12", "OTHER"):
        create(client, auth, key, f"{key}-value")
    token = bearer(make_token("secrets:read", "secrets:write", allow=["APP_*", "DB_?"]))
    listed = client.get("/api/secrets", headers=token).get_json()["data"]
    assert [s["key"] for s in listed] == ["APP_ONE", "APP_TWO", "DB_1"]
    assert value_of(client, token, "APP_TWO") == ("APP_TWO-value", '"1"')
    assert put(client, token, "DB_1", value="new").status_code == 200
    assert client.delete("/api/secrets/APP_ONE", headers=token).status_code == 200


# ---- browser session --------------------------------------------------------------------------------------------

def csrf_from(html: str, pattern: str) -> str:
    match = re.search(pattern, html)
    assert match, html
    return match.group(1)


def log_in(app, client, email: str = "a@example.com", is_admin: bool = True) -> str:
    """Create a user, sign in through the /login form; return the page's CSRF token for API writes."""
    with app.app_context():
        users.create_user(None, email, "password123", is_admin=is_admin)
    form_token = csrf_from(client.get("/login").get_data(as_text=True), r'name="csrf_token" value="([^"]+)"')
    response = client.post("/login", data={"email": email, "password": "password123", "csrf_token": form_token})
    assert response.status_code == 302, response.get_data(as_text=True)
    return csrf_from(client.get("/settings").get_data(as_text=True), r'<meta name="csrf-token" content="([^"]+)"')


SESSION_WRITES = (
    ("POST", "/api/secrets", {"key": "NEW", "value": "v"}),
    ("PUT", "/api/secrets/K", {"value": "changed"}),
    ("DELETE", "/api/secrets/K", None),
    ("POST", "/api/secrets/K/restore", {"version": 1}),
    ("POST", "/api/tokens", {"name": "new", "scopes": ["mcp"]}),
    ("DELETE", "/api/tokens/admin", None),
)


def test_session_cookie_reads_without_csrf(app, client, seeded):
    log_in(app, client)
    response = client.get("/api/secrets")
    assert response.status_code == 200
    assert [s["key"] for s in response.get_json()["data"]] == ["K"]
    assert client.get("/api/secrets/K").get_json() == {"data": {"key": "K", "value": "v2"}}


@pytest.mark.parametrize(("method", "path", "body"), SESSION_WRITES)
def test_session_write_without_valid_csrf_is_403(app, client, seeded, method, path, body):
    log_in(app, client)
    for csrf_header in ({}, {"X-CSRFToken": "forged"}):
        assert_error(client.open(path, method=method, json=body, headers=csrf_header), 403)
    assert value_of(client, seeded, "K") == ("v2", '"2"')
    assert [s["key"] for s in client.get("/api/secrets", headers=seeded).get_json()["data"]] == ["K"]
    assert [t["name"] for t in client.get("/api/tokens", headers=seeded).get_json()["data"]] == ["admin"]


@pytest.mark.parametrize(("method", "path", "body"), SESSION_WRITES)
def test_session_write_with_csrf_header_succeeds(app, client, seeded, method, path, body):
    csrf = log_in(app, client)
    response = client.open(path, method=method, json=body, headers={"X-CSRFToken": csrf})
    assert response.status_code == 200, response.get_json()
    assert set(response.get_json()) == {"data"}


def test_session_calls_are_audited_with_channel_ui(app, client, auth):
    csrf = log_in(app, client)
    assert client.post("/api/secrets", json={"key": "UI_KEY", "value": "v"}, headers={"X-CSRFToken": csrf}).status_code == 200
    assert client.get("/api/secrets/UI_KEY").status_code == 200
    events = [e for e in audit_events(client, auth, "?key=UI_KEY")]
    assert [(e["actor"], e["channel"], e["action"], e["outcome"]) for e in events] == [
        ("a@example.com", "ui", "read", "ok"),
        ("a@example.com", "ui", "create", "ok"),
    ]
    versions = client.get("/api/secrets/UI_KEY/versions").get_json()["data"]
    assert versions[0]["createdBy"] == "a@example.com"


def test_session_of_non_admin_user_cannot_read_audit(app, client):
    log_in(app, client, "b@example.com", is_admin=False)
    assert client.get("/api/secrets").status_code == 200
    response = client.get("/api/audit")
    assert response.status_code == 403
    assert response.get_json() == error(403, "Token lacks scope admin")


def test_logout_ends_api_access(app, client):
    log_in(app, client)
    assert client.get("/api/secrets").status_code == 200
    client.get("/logout")
    assert_unauthenticated(client.get("/api/secrets"))


# ---- versions ---------------------------------------------------------------------------------------------------

def test_versions_newest_first_with_current_and_author(client, auth, make_token):
    create(client, auth, "K", "one")
    assert put(client, auth, "K", value="two").status_code == 200
    assert put(client, auth, "K", description="description only").status_code == 200
    assert put(client, bearer(make_token("secrets:write", name="deployer")), "K", value="three").status_code == 200
    response = client.get("/api/secrets/K/versions", headers=auth)
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert all(set(v) == {"version", "createdAt", "createdBy", "current"} for v in data)
    assert [(v["version"], v["createdBy"], v["current"]) for v in data] == [
        (3, "deployer", True), (2, "admin", False), (1, "admin", False)]
    times = [parse_time(v["createdAt"]) for v in data]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(("query", "value", "etag"), (
    ("", "three", '"3"'),
    ("?version=3", "three", '"3"'),
    ("?version=2", "two", '"2"'),
    ("?version=1", "one", '"1"'),
))
def test_read_an_older_version(client, auth, query, value, etag):
    create(client, auth, "K", "one")
    put(client, auth, "K", value="two")
    put(client, auth, "K", value="three")
    response = client.get(f"/api/secrets/K{query}", headers=auth)
    assert response.get_json() == {"data": {"key": "K", "value": value}}
    assert (response.headers["ETag"], response.headers["Cache-Control"]) == (etag, "no-store")


def test_absent_version_is_404(client, seeded):
    response = client.get("/api/secrets/K?version=3", headers=seeded)
    assert response.status_code == 404
    assert response.get_json() == error(404, 'Secret "K" has no version 3')


# "²" and "٣" are digits to str.isdigit; int() refuses the first and would take the second, and refuses 4,301 digits.
@pytest.mark.parametrize("version", ("abc", "0", "-1", "1.5", "", "1e3", "%201", "%C2%B2", "%D9%A3", "1" * 4301))
def test_bad_version_query_is_400(client, seeded, version):
    assert_error(client.get(f"/api/secrets/K?version={version}", headers=seeded), 400)


def test_restore_makes_an_old_value_the_newest_version(client, seeded, make_token):
    put(client, seeded, "K", value="v3")
    restorer = bearer(make_token("secrets:write", name="restorer"))
    response = client.post("/api/secrets/K/restore", json={"version": 1}, headers=restorer)
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert set(data) == {"id", "key", "version", "updatedAt"}
    assert (data["key"], data["version"]) == ("K", 4)
    uuid.UUID(data["id"])
    parse_time(data["updatedAt"])
    assert value_of(client, seeded, "K") == ("v1", '"4"')
    versions = client.get("/api/secrets/K/versions", headers=seeded).get_json()["data"]
    assert [(v["version"], v["createdBy"], v["current"]) for v in versions] == [
        (4, "restorer", True), (3, "admin", False), (2, "admin", False), (1, "admin", False)]
    assert value_of(client, seeded, "K", "?version=3") == ("v3", '"3"')
    listed = client.get("/api/secrets", headers=seeded).get_json()["data"][0]
    assert (listed["id"], listed["description"]) == (data["id"], "d")


def test_restore_absent_version_is_404(client, seeded):
    response = client.post("/api/secrets/K/restore", json={"version": 7}, headers=seeded)
    assert response.status_code == 404
    assert response.get_json() == error(404, 'Secret "K" has no version 7')
    assert value_of(client, seeded, "K") == ("v2", '"2"')


@pytest.mark.parametrize(("data", "message"), (
    ("{}", None),
    ('{"version": "abc"}', None),
    ('{"version": "\u00b2"}', None),
    ('{"version": "\u0663"}', None),
    ('{"version": "%s"}' % ("1" * 4301), None),
    ('{"version": 0}', None),
    ('{"version": -2}', None),
    ('{"version": 1.5}', None),
    ('{"version": true}', None),
    ('{"version": null}', None),
    ('{"version": 1, "value": "x"}', 'Unknown field "value"'),
    ("[1]", "Request body must be JSON"),
    ("not json", "Request body must be JSON"),
    ("", "Request body must be JSON"),
))
def test_restore_validation(client, seeded, data, message):
    assert_error(raw_json(client, "POST", "/api/secrets/K/restore", data, seeded), 400, message)
    assert value_of(client, seeded, "K") == ("v2", '"2"')


@pytest.fixture
def keep_three(config, request):
    """The app built with SECRETS_HUB_KEEP_VERSIONS=3 (request it before `client`)."""
    config["SECRETS_HUB_KEEP_VERSIONS"] = "3"
    return request.getfixturevalue("app")


def test_old_versions_are_pruned(keep_three, client, auth):
    create(client, auth, "K", "v1")
    for n in (2, 3):
        put(client, auth, "K", value=f"v{n}")
    versions = client.get("/api/secrets/K/versions", headers=auth).get_json()["data"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    for n in (4, 5):
        put(client, auth, "K", value=f"v{n}")
    versions = client.get("/api/secrets/K/versions", headers=auth).get_json()["data"]
    assert [(v["version"], v["current"]) for v in versions] == [(5, True), (4, False), (3, False)]
    assert value_of(client, auth, "K", "?version=3") == ("v3", '"3"')
    for pruned in (1, 2):
        response = client.get(f"/api/secrets/K?version={pruned}", headers=auth)
        assert response.get_json() == error(404, f'Secret "K" has no version {pruned}')
        response = client.post("/api/secrets/K/restore", json={"version": pruned}, headers=auth)
        assert response.get_json() == error(404, f'Secret "K" has no version {pruned}')
    assert client.post("/api/secrets/K/restore", json={"version": 3}, headers=auth).get_json()["data"]["version"] == 6
    versions = client.get("/api/secrets/K/versions", headers=auth).get_json()["data"]
    assert [v["version"] for v in versions] == [6, 5, 4]
    assert value_of(client, auth, "K") == ("v3", '"6"')


# ---- If-Match ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("if_match", ("2", '"2"', " 2 "))
def test_if_match_current_version_succeeds(client, seeded, if_match):
    response = client.put("/api/secrets/K", json={"value": "v3"}, headers={**seeded, "If-Match": if_match})
    assert response.status_code == 200
    assert value_of(client, seeded, "K") == ("v3", '"3"')


def test_etag_round_trips_as_if_match(client, seeded):
    _, etag = value_of(client, seeded, "K")
    assert client.put("/api/secrets/K", json={"value": "v3"}, headers={**seeded, "If-Match": etag}).status_code == 200
    response = client.put("/api/secrets/K", json={"value": "v4"}, headers={**seeded, "If-Match": etag})
    assert response.status_code == 409
    assert response.get_json() == error(409, 'Secret "K" changed: current version is 3')


@pytest.mark.parametrize("body", ({"value": "lost"}, {"description": "lost"}))
@pytest.mark.parametrize("if_match", ("1", '"1"', "5"))
def test_stale_if_match_is_409_and_changes_nothing(client, seeded, body, if_match):
    response = client.put("/api/secrets/K", json=body, headers={**seeded, "If-Match": if_match})
    assert response.status_code == 409
    assert response.get_json() == error(409, 'Secret "K" changed: current version is 2')
    assert value_of(client, seeded, "K") == ("v2", '"2"')
    assert client.get("/api/secrets", headers=seeded).get_json()["data"][0]["description"] == "d"


def test_if_match_on_description_only_keeps_version(client, seeded):
    response = client.put("/api/secrets/K", json={"description": "new"}, headers={**seeded, "If-Match": '"2"'})
    assert response.status_code == 200 and response.get_json()["data"]["description"] == "new"
    assert value_of(client, seeded, "K") == ("v2", '"2"')


@pytest.mark.parametrize("if_match", ("abc", 'W/"2"', "0", "-2", "2.0", "*", "", "2, 3", "99999999999999999999",
                                      "\u00b2", '"\u00b2"', "\u0663", "1" * 4301))
def test_garbage_if_match_is_400(client, seeded, if_match):
    response = client.put("/api/secrets/K", json={"value": "x"}, headers={**seeded, "If-Match": if_match})
    assert_error(response, 400)
    assert value_of(client, seeded, "K") == ("v2", '"2"')


def test_if_match_on_unknown_key_is_404(client, auth):
    response = client.put("/api/secrets/NOPE", json={"value": "x"}, headers={**auth, "If-Match": "1"})
    assert response.get_json() == error(404, 'Secret with key "NOPE" not found')


# ---- unknown routes and methods; no 500 -------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "status"), (
    ("GET", "/api/nope", 404),
    ("GET", "/api", 404),
    ("GET", "/api/", 404),
    ("GET", "/api/secrets/A/B", 404),
    ("GET", "/api/secrets/K/versions/1", 404),
    ("PATCH", "/api/secrets/K", 405),
    ("DELETE", "/api/secrets", 405),
    ("PUT", "/api/secrets", 405),
    ("POST", "/api/secrets/K", 405),
    ("GET", "/api/secrets/K/restore", 405),
    ("POST", "/api/secrets/K/versions", 405),
    ("POST", "/api/audit", 405),
    ("PUT", "/api/tokens", 405),
    ("GET", "/api/tokens/admin", 405),
    ("POST", "/api/openapi.json", 405),
))
def test_unknown_routes_and_methods_are_json(client, auth, method, path, status):
    assert_error(client.open(path, method=method, headers=auth), status)


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(("method", "path", "data", "headers"), (
    ("GET", "/api/secrets/%00", None, {}),
    ("GET", "/api/secrets/A%00B", None, {}),
    ("GET", "/api/secrets/%F0%9F%94%91", None, {}),
    ("GET", "/api/secrets/%ff%fe", None, {}),
    ("GET", "/api/secrets/" + "A" * 5000, None, {}),
    ("GET", "/api/secrets/K?version=99999999999999999999", None, {}),
    ("GET", "/api/secrets/K?version=2147483648", None, {}),
    ("GET", "/api/secrets/%00/versions", None, {}),
    ("PUT", "/api/secrets/%00", '{"value": "x"}', {}),
    ("DELETE", "/api/secrets/%00", None, {}),
    ("POST", "/api/secrets/%00/restore", '{"version": 1}', {}),
    ("POST", "/api/secrets/K/restore", '{"version": 99999999999999999999}', {}),
    ("POST", "/api/secrets/K/restore", '{"version": 1e400}', {}),
    ("POST", "/api/secrets/K/restore", '{"version": NaN}', {}),
    ("PUT", "/api/secrets/K", '{"value": "x"}', {"If-Match": "2147483648"}),
    ("POST", "/api/secrets", '{"key": "D", "value": "v", "description": "a\\u0000b"}', {}),
    ("POST", "/api/secrets", '{"key": "D", "value": "\\ud800"}', {}),
    ("POST", "/api/secrets", '{"key": "D", "value": "v", "description": "\\udfff"}', {}),
    ("PUT", "/api/secrets/K", '{"value": "\\ud800"}', {}),
    ("PUT", "/api/secrets/K", '{"description": "a\\u0000b"}', {}),
    ("POST", "/api/secrets", '{"key": "\\ud800", "value": "v"}', {}),
    ("POST", "/api/secrets", '{"key": "A\\u0000", "value": "v"}', {}),
    ("POST", "/api/secrets", DEEP, {}),
    ("POST", "/api/secrets", '{"key": "BIG", "value": "' + "x" * 2_000_000 + '"}', {}),
    ("POST", "/api/secrets", b"\xff\xfe\x00garbage", {}),
    ("POST", "/api/secrets", '{"key": "K", "key": "K2", "value": "v"}', {}),
    ("GET", "/api/audit?key=%00&actor=%00", None, {}),
    ("GET", "/api/audit?limit=99999999999999999999", None, {}),
    ("GET", "/api/audit?limit=-1", None, {}),
    ("GET", "/api/audit?limit=abc", None, {}),
    ("DELETE", "/api/tokens/%00", None, {}),
    ("DELETE", "/api/tokens/" + "n" * 5000, None, {}),
    ("POST", "/api/tokens", '{"name": "big", "scopes": ["mcp"], "expiresIn": "9999999d"}', {}),
    ("POST", "/api/tokens", '{"name": "nul\\u0000", "scopes": ["mcp"]}', {}),
    ("POST", "/api/tokens", '{"name": "glob", "scopes": ["mcp"], "allow": ["A\\u0000"]}', {}),
    ("POST", "/api/tokens", '{"name": "x", "scopes": [["mcp"]]}', {}),
    ("POST", "/api/tokens", '{"name": "x", "scopes": [{}]}', {}),
    ("POST", "/api/tokens", '{"name": "x", "scopes": ["mcp"], "allow": [1]}', {}),
))
def test_no_client_input_gets_a_500(client, seeded, method, path, data, headers):
    response = client.open(path, method=method, data=data,
                           headers={**seeded, **headers, "Content-Type": "application/json"})
    assert response.status_code < 500, response.get_json()
    if response.status_code >= 400:
        assert_error(response, response.status_code)
    assert value_of(client, seeded, "K")[1] in ('"2"', '"3"')


# ---- audit ------------------------------------------------------------------------------------------------------

def test_audit_records_reads_writes_and_refusals(client, auth, make_token):
    limited = bearer(make_token("secrets:read", name="limited", allow=["APP_*"]))
    create(client, auth, "K", "v1")
    value_of(client, auth, "K")
    put(client, auth, "K", value="v2")
    assert client.get("/api/secrets/K", headers=limited).status_code == 403
    assert client.post("/api/secrets", json={"key": "K", "value": "again"}, headers=auth).status_code == 409
    client.delete("/api/secrets/K", headers=auth)
    assert client.get("/api/secrets/K", headers=auth).status_code == 404
    response = client.get("/api/audit?key=K", headers=auth)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    events = response.get_json()["data"]
    assert all(set(e) == AUDIT_FIELDS for e in events)
    assert [(e["actor"], e["action"], e["outcome"]) for e in events] == [
        ("admin", "read", "not_found"),
        ("admin", "delete", "ok"),
        ("admin", "create", "conflict"),
        ("limited", "read", "denied"),
        ("admin", "update", "ok"),
        ("admin", "read", "ok"),
        ("admin", "create", "ok"),
    ]
    assert {(e["channel"], e["key"], e["remoteAddr"]) for e in events} == {("rest", "K", "127.0.0.1")}
    ids = [e["id"] for e in events]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids, reverse=True)
    times = [parse_time(e["at"]) for e in events]
    assert times == sorted(times, reverse=True)


def test_audit_records_missing_scope_and_failed_authentication(client, auth, make_token):
    client.get("/api/secrets/K", headers=bearer(make_token("secrets:write", name="writer")))
    client.get("/api/secrets", headers=bearer("shub_" + "x" * 43))
    events = audit_events(client, auth, "?limit=2")
    assert [(e["actor"], e["channel"], e["action"], e["key"], e["outcome"]) for e in events] == [
        ("anonymous", "rest", "authenticate", None, "denied"),
        ("writer", "rest", "read", "K", "denied"),
    ]


def test_audit_filters_by_key_actor_and_limit(client, auth, make_token):
    other = bearer(make_token("secrets:read", "secrets:write", name="other"))
    create(client, auth, "A", "1")
    create(client, other, "B", "2")
    value_of(client, other, "A")
    value_of(client, auth, "B")
    assert [(e["actor"], e["action"]) for e in audit_events(client, auth, "?key=A")] == [
        ("other", "read"), ("admin", "create")]
    by_other = audit_events(client, auth, "?actor=other")
    assert [(e["key"], e["action"]) for e in by_other] == [("A", "read"), ("B", "create")]
    assert [(e["actor"], e["key"]) for e in audit_events(client, auth, "?actor=other&key=B")] == [("other", "B")]
    assert [(e["actor"], e["key"], e["action"]) for e in audit_events(client, auth, "?limit=1")] == [
        ("admin", "B", "read")]
    assert len(audit_events(client, auth, "?limit=3")) == 3
    assert audit_events(client, auth, "?key=NOPE") == []
    assert audit_events(client, auth, "?actor=nobody") == []


@pytest.mark.parametrize("limit", ("0", "-1", "abc", "1001", "1.5", "", "%C2%B2", "%D9%A3", "1" * 4301))
def test_audit_bad_limit_is_400(client, auth, limit):
    assert_error(client.get(f"/api/audit?limit={limit}", headers=auth), 400)


@pytest.mark.parametrize("before", ("0", "-1", "abc", "1.5", "", "%C2%B2", "%D9%A3", "1" * 4301))
def test_audit_bad_before_is_400(client, auth, before):
    assert_error(client.get(f"/api/audit?before={before}", headers=auth), 400, "Before must be an event id")


def test_no_value_and_no_token_in_the_audit_log_or_metadata(client, auth):
    canary = f"s3cr3t-canary-{uuid.uuid4().hex}"
    created = client.post("/api/tokens", json={"name": "canary-token", "scopes": ["secrets:read", "secrets:write"]},
                          headers=auth).get_json()["data"]["token"]
    token = bearer(created)
    forged = "shub_forged-canary-" + uuid.uuid4().hex
    responses = [
        client.post("/api/secrets", json={"key": "CANARY", "value": canary, "description": "d"}, headers=token),
        client.get("/api/secrets", headers=token),
        put(client, token, "CANARY", value=canary + "-2"),
        client.get("/api/secrets/CANARY/versions", headers=token),
        client.post("/api/secrets/CANARY/restore", json={"version": 1}, headers=token),
        client.post("/api/secrets", json={"key": "CANARY", "value": canary}, headers=token),
        put(client, token, "CANARY", value=canary, extra=canary),
        put(client, {**token, "If-Match": "1"}, "CANARY", value=canary),
        client.post("/api/secrets", json={"key": "X", "value": canary * 4000}, headers=token),
        client.get("/api/tokens", headers=auth),
    ]
    assert value_of(client, token, "CANARY")[0] == canary
    client.get("/api/secrets", headers=bearer(forged))
    client.get("/api/secrets", headers={"Authorization": f"Basic {forged}"})
    audit = client.get("/api/audit?limit=1000", headers=auth).get_data(as_text=True)
    assert "CANARY" in audit and "canary-token" in audit
    texts = [audit] + [r.get_data(as_text=True) for r in responses]
    for body in texts:
        for secret in (canary, created, created[5:], hashlib.sha256(created.encode()).hexdigest(), forged):
            assert secret not in body


# ---- tokens -----------------------------------------------------------------------------------------------------

def test_create_token_shows_it_once(client, auth):
    response = client.post("/api/tokens", json={"name": "ci", "scopes": ["secrets:read"], "allow": ["APP_*"],
                                                "expiresIn": "30d"}, headers=auth)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    data = response.get_json()["data"]
    assert set(data) == {"name", "token", "scopes", "allow", "createdAt", "expiresAt"}
    assert (data["name"], data["scopes"], data["allow"]) == ("ci", ["secrets:read"], ["APP_*"])
    assert data["token"].startswith("shub_") and len(data["token"]) >= len("shub_") + 43
    assert parse_time(data["expiresAt"], recent=False) - parse_time(data["createdAt"]) == timedelta(days=30)
    create(client, auth, "APP_ONE")
    create(client, auth, "OTHER")
    listed = client.get("/api/secrets", headers=bearer(data["token"])).get_json()["data"]
    assert [s["key"] for s in listed] == ["APP_ONE"]


def test_token_without_allow_or_expiry(client, auth):
    data = client.post("/api/tokens", json={"name": "forever", "scopes": ["mcp", "admin"]},
                       headers=auth).get_json()["data"]
    assert (data["allow"], data["expiresAt"]) == (None, None)
    assert sorted(data["scopes"]) == ["admin", "mcp"]
    parse_time(data["createdAt"])
    assert client.get("/api/tokens", headers=bearer(data["token"])).status_code == 200


def test_list_tokens_never_shows_token_or_hash(client, auth):
    created = client.post("/api/tokens", json={"name": "ci", "scopes": ["secrets:read"], "expiresIn": "90m"},
                          headers=auth).get_json()["data"]
    response = client.get("/api/tokens", headers=auth)
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert all(set(t) == TOKEN_FIELDS for t in data)
    ci = next(t for t in data if t["name"] == "ci")
    assert (ci["scopes"], ci["allow"], ci["lastUsedAt"]) == (["secrets:read"], None, None)
    assert (ci["createdAt"], ci["expiresAt"]) == (created["createdAt"], created["expiresAt"])
    assert sorted(t["name"] for t in data) == ["admin", "ci"]
    client.get("/api/secrets", headers=bearer(created["token"]))
    text = client.get("/api/tokens", headers=auth).get_data(as_text=True)
    ci = next(t for t in json.loads(text)["data"] if t["name"] == "ci")
    parse_time(ci["lastUsedAt"])
    for secret in (created["token"], created["token"][5:], hashlib.sha256(created["token"].encode()).hexdigest()):
        assert secret not in text


def test_duplicate_token_name_is_409(client, auth):
    body = {"name": "ci", "scopes": ["secrets:read"]}
    first = client.post("/api/tokens", json=body, headers=auth).get_json()["data"]["token"]
    assert_error(client.post("/api/tokens", json={**body, "scopes": ["admin"]}, headers=auth), 409)
    assert client.get("/api/secrets", headers=bearer(first)).status_code == 200
    assert client.get("/api/tokens", headers=bearer(first)).status_code == 403


@pytest.mark.parametrize(("body", "message"), (
    ({"name": "x", "scopes": ["root"]}, None),
    ({"name": "x", "scopes": ["secrets:read", "secrets:delete"]}, None),
    ({"name": "x", "scopes": []}, None),
    ({"name": "x", "scopes": "secrets:read"}, None),
    ({"name": "x"}, None),
    ({"scopes": ["mcp"]}, None),
    ({"name": "", "scopes": ["mcp"]}, None),
    ({"name": "bad name", "scopes": ["mcp"]}, None),
    ({"name": "x" * 65, "scopes": ["mcp"]}, None),
    ({"name": 5, "scopes": ["mcp"]}, None),
    ({"name": "x", "scopes": ["mcp"], "expiresIn": "30"}, None),
    ({"name": "x", "scopes": ["mcp"], "expiresIn": "30y"}, None),
    ({"name": "x", "scopes": ["mcp"], "expiresIn": "-1d"}, None),
    ({"name": "x", "scopes": ["mcp"], "expiresIn": "0d"}, None),
    ({"name": "x", "scopes": ["mcp"], "expiresIn": 30}, None),
    ({"name": "x", "scopes": ["mcp"], "allow": "APP_*"}, None),
    ({"name": "x", "scopes": ["mcp"], "allow": [""]}, None),
    ({"name": "x", "scopes": ["mcp"], "token": "shub_mine"}, 'Unknown field "token"'),
    (["x"], "Request body must be JSON"),
))
def test_create_token_validation(client, auth, body, message):
    assert_error(client.post("/api/tokens", json=body, headers=auth), 400, message)
    assert [t["name"] for t in client.get("/api/tokens", headers=auth).get_json()["data"]] == ["admin"]


def test_revoke_unknown_token_is_404(client, auth):
    assert_error(client.delete("/api/tokens/nope", headers=auth), 404)
    assert [t["name"] for t in client.get("/api/tokens", headers=auth).get_json()["data"]] == ["admin"]


# ---- OpenAPI and health -----------------------------------------------------------------------------------------

def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_document_covers_every_api_route(app, client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    expected: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.rule == "/healthz":
            expected.setdefault(openapi_path(rule.rule), set()).update(
                m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    assert "/api/secrets/{key}/restore" in expected and "/healthz" in expected
    assert {path: set(ops) for path, ops in document["paths"].items()} == expected


def test_openapi_request_schemas_come_from_the_validators(client):
    document = client.get("/api/openapi.json").get_json()
    body = document["paths"]["/api/secrets"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(body["properties"]) == {"key", "value", "description"}
    assert body["properties"]["key"]["pattern"] == "^[A-Z][A-Z0-9_]*$"
    assert set(body.get("required", [])) == {"key", "value"}


def test_healthz_without_auth(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
