"""Hostile input (hardening issue): what a careless or malicious client may send, and the exact refusal it gets.

Mostly through the Flask test client (fast, and exact about what the app saw); the streamed body runs
against a live `secrets-hub serve`, since only a real server speaks chunked transfer encoding. Cases
where storage matters (keys with NUL bytes or Unicode look-alikes, path tricks that might reach
another row) run on SQLite and PostgreSQL; the rest on SQLite alone.

Every refusal is a 4xx in the API's one error shape, `{"statusCode", "message"}`, and changes nothing:
each test compares the whole store (every key, value and version) before and after.
"""

from __future__ import annotations

import html.parser
import http.client
import io
import json
import re
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any, Iterable
from urllib.parse import quote, urlsplit

import pytest
import requests
from sqlalchemy import update
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Response

from conftest import bearer
from secrets_hub import throttle, users
from secrets_hub.db import db
from secrets_hub.models import Secret

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

KEY_FORMAT = "Key must be SCREAMING_SNAKE_CASE (e.g., MY_API_KEY)"
NOT_JSON = "Request body must be JSON"
TOO_LARGE = "Request body too large"
MEDIA_TYPE = "Content-Type must be application/json"
PASSWORD = "correct horse battery staple"


# --------------------------------------------------------------------------- helpers


def assert_error(response, status: int, message: str | None = None) -> dict[str, Any]:
    """A refusal in the API's error shape: exactly `{"statusCode": status, "message": "..."}`."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, (response.status_code, text[:500])
    assert response.mimetype == "application/json", (response.mimetype, text[:500])
    body = json.loads(text)
    assert set(body) == {"statusCode", "message"}, body
    assert body["statusCode"] == status and isinstance(body["message"], str) and body["message"], body
    if message is not None:
        assert body["message"] == message, body
    return body


def create(client, auth: dict[str, str], key: str, value: str) -> None:
    response = client.post("/api/secrets", json={"key": key, "value": value}, headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)


def snapshot(client, auth: dict[str, str]) -> dict[str, Any]:
    """Every key with its description, current value and version list: the whole observable store."""
    listing = client.get("/api/secrets", headers=auth)
    assert listing.status_code == 200, listing.get_data(as_text=True)
    state = {}
    for row in listing.get_json()["data"]:
        key = row["key"]
        value = client.get(f"/api/secrets/{key}", headers=auth)
        versions = client.get(f"/api/secrets/{key}/versions", headers=auth)
        assert value.status_code == 200 and versions.status_code == 200, key
        state[key] = (row["description"], row["updatedAt"], value.get_json()["data"]["value"],
                      [(v["version"], v["current"]) for v in versions.get_json()["data"]])
    return state


def audit_trail(client, auth: dict[str, str]) -> list[tuple[str, str | None, str]]:
    """(action, key, outcome) of every audit event, oldest first."""
    response = client.get("/api/audit?limit=1000", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return [(e["action"], e["key"], e["outcome"]) for e in reversed(response.get_json()["data"])]


def post_raw(client, path: str, body: bytes | str, auth: dict[str, str], content_type: str | None = "application/json",
             method: str = "POST", **kwargs: Any):
    headers = dict(auth)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.open(path, method=method, data=body, headers=headers, **kwargs)


@pytest.fixture
def auth(admin_token: str) -> dict[str, str]:
    return bearer(admin_token)


@pytest.fixture
def body_limit(app) -> int:
    """The largest request body the app reads, as configured."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert isinstance(limit, int) and limit >= 8 * 65536  # room for the largest value, JSON-escaped
    return limit


class CountingStream(io.BytesIO):
    """A request body that remembers how many bytes the app took from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data

    def readinto(self, buffer) -> int:
        count = super().readinto(buffer)
        self.taken += count
        return count

    def readline(self, size: int | None = -1) -> bytes:
        data = super().readline(size)
        self.taken += len(data)
        return data


def call_with_stream(app, path: str, auth: dict[str, str], stream: CountingStream, content_length: int | None,
                     method: str = "POST") -> Any:
    """Run one request whose body is `stream`: with a declared Content-Length, or streamed (chunked: none,
    and the server marks the input as terminated, as WSGI servers do for chunked bodies)."""
    environ = EnvironBuilder(path=path, method=method, headers={**auth, "Content-Type": "application/json"}).get_environ()
    environ["wsgi.input"] = stream
    environ.pop("CONTENT_LENGTH", None)
    if content_length is None:
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    body, status, headers = run_wsgi_app(app, environ, buffered=True)
    return Response(b"".join(body), status=status, headers=headers)


# --------------------------------------------------------------------------- bodies over the maximum


WRITES = [("POST", "/api/secrets"), ("PUT", "/api/secrets/EXISTING"), ("POST", "/api/secrets/EXISTING/restore"),
          ("POST", "/api/tokens")]


@sqlite_only
@pytest.mark.parametrize(("method", "path"), WRITES)
def test_a_declared_length_over_the_maximum_is_refused_unread(app, client, auth, body_limit, method, path):
    create(client, auth, "EXISTING", "existing-value")
    before = snapshot(client, auth)
    tiny = CountingStream(b'{"key": "SNEAKED_IN", "value": "v", "version": 1, "name": "n", "scopes": ["mcp"]}')

    response = call_with_stream(app, path, auth, tiny, content_length=50 * body_limit, method=method)

    assert_error(response, 413, TOO_LARGE)
    assert tiny.taken == 0  # refused on the header alone: not one byte of the body was read
    assert snapshot(client, auth) == before
    assert [t["name"] for t in client.get("/api/tokens", headers=auth).get_json()["data"]] == ["admin"]


@sqlite_only
def test_the_maximum_is_exact_one_byte_more_is_refused_unread(app, client, auth, body_limit):
    value_field = '{"key": "AT_LIMIT", "value": "'
    at_limit = (value_field + "x" * (body_limit - len(value_field) - 2) + '"}').encode()
    assert len(at_limit) == body_limit

    read = CountingStream(at_limit)
    # Read whole and parsed: the refusal is about the value, which is over its own (smaller) limit.
    assert_error(call_with_stream(app, "/api/secrets", auth, read, len(at_limit)), 413, "Value exceeds 65536 bytes")
    assert read.taken == body_limit

    over = CountingStream(at_limit + b" ")
    assert_error(call_with_stream(app, "/api/secrets", auth, over, len(at_limit) + 1), 413, TOO_LARGE)
    assert over.taken == 0
    assert snapshot(client, auth) == {}


@sqlite_only
@pytest.mark.parametrize("tail", [b"x", b" "], ids=["garbage", "valid-json-then-padding"])
def test_a_streamed_body_over_the_maximum_is_refused_without_reading_it_all(app, client, auth, body_limit, tail):
    # Valid JSON followed by whitespace: cut at the maximum it would still parse, and be accepted.
    body = b'{"key": "STREAMED_BIG", "value": "v"}' + tail * (4 * body_limit)
    stream = CountingStream(body)

    response = call_with_stream(app, "/api/secrets", auth, stream, content_length=None)

    assert_error(response, 413, TOO_LARGE)
    assert stream.taken <= body_limit + 64 * 1024, f"read {stream.taken} of {len(body)} bytes"
    assert snapshot(client, auth) == {}


class _Received:
    """A socket-like wrapper so http.client can parse bytes already received."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return self._file


def exchange(base: str, head: str, parts: Iterable[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request (head, then body parts) and parse the answer. Reading runs beside the writing, and
    writing stops as soon as an answer arrives: a server may answer and close before taking the whole body."""
    address = urlsplit(base)
    sock = socket.create_connection((address.hostname, address.port), timeout=60)
    received = bytearray()
    done = threading.Event()

    def read() -> None:
        try:
            while chunk := sock.recv(65536):
                received.extend(chunk)
        except OSError:
            pass
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        sock.sendall(head.encode("latin-1"))
        for part in parts:
            if received or done.is_set():
                break
            sock.sendall(part)
    except OSError:
        pass  # the server stopped reading: expected once it has refused the body
    assert done.wait(60), "no answer within a minute"
    sock.close()
    response = http.client.HTTPResponse(_Received(bytes(received)))  # type: ignore[arg-type]
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def chunked(payload: bytes, size: int = 64 * 1024) -> Iterable[bytes]:
    for start in range(0, len(payload), size):
        piece = payload[start:start + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def head(method: str, path: str, token: str, *extra: str) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", f"Authorization: Bearer {token}",
             "Content-Type: application/json", *extra]
    return "\r\n".join(lines) + "\r\n\r\n"


def error_of(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:300])
    parsed = json.loads(body)
    assert set(parsed) == {"statusCode", "message"} and parsed["statusCode"] == status, parsed
    return parsed


@sqlite_only
def test_bodies_over_the_maximum_are_refused_by_the_live_server(live_server, admin_token, body_limit):
    auth = bearer(admin_token)

    # A streamed body within the limit is read like any other (requests sends a generator chunked).
    small = requests.post(f"{live_server}/api/secrets", headers={**auth, "Content-Type": "application/json"},
                          data=iter([b'{"key": "STREAMED_SMALL", ', b'"value": "streamed-value"}']), timeout=60)
    assert small.status_code == 200, small.text
    assert small.request.headers.get("Transfer-Encoding") == "chunked"

    # A declared length far over the maximum, with a tiny body: 413 at once.
    status, headers, body = exchange(live_server, head("POST", "/api/secrets", admin_token,
                                                       f"Content-Length: {100 * body_limit}"),
                                     [b'{"key": "DECLARED_BIG", "value": "v"}'])
    assert status == 413 and error_of(status, headers, body)["message"] == TOO_LARGE

    # Streamed bodies over the maximum: garbage, and valid JSON padded with whitespace (cut at the maximum it
    # would parse).
    outcomes = {}
    for key, tail in (("STREAMED_GARBAGE", b"x"), ("STREAMED_PADDED", b" ")):
        payload = f'{{"key": "{key}", "value": "v"}}'.encode() + tail * (4 * body_limit)
        status, headers, body = exchange(live_server, head("POST", "/api/secrets", admin_token,
                                                           "Transfer-Encoding: chunked"), chunked(payload))
        outcomes[key] = (status, body.decode(errors="replace").strip())
    refused = json.dumps({"message": TOO_LARGE, "statusCode": 413}, separators=(",", ":"))
    assert outcomes == {"STREAMED_GARBAGE": (413, refused), "STREAMED_PADDED": (413, refused)}

    listed = requests.get(f"{live_server}/api/secrets", headers=auth, timeout=60).json()["data"]
    assert [row["key"] for row in listed] == ["STREAMED_SMALL"]
    value = requests.get(f"{live_server}/api/secrets/STREAMED_SMALL", headers=auth, timeout=60).json()["data"]
    assert value == {"key": "STREAMED_SMALL", "value": "streamed-value"}


# --------------------------------------------------------------------------- deep and huge JSON


DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a": ' * 100_000 + "1" + "}" * 100_000
HOSTILE_CREATES = {  # name: (body, status, message), each sent to POST /api/secrets
    "deep-array": (DEEP_ARRAY, 400, NOT_JSON),
    "deep-object": (DEEP_OBJECT, 400, NOT_JSON),
    "deep-field": ('{"key": "DEEP", "value": "v", "description": ' + DEEP_ARRAY + "}", 400, NOT_JSON),
    "unclosed": ("[" * 900_000, 400, NOT_JSON),  # just under the body limit
    "long-array": (json.dumps([1] * 200_000), 400, NOT_JSON),
    "value-over-limit": (json.dumps({"key": "HUGE", "value": "v" * 70_000}), 413, "Value exceeds 65536 bytes"),
    "value-multibyte": (json.dumps({"key": "HUGE", "value": "\u00e9" * 40_000}), 413,  # 80000 UTF-8 bytes
                        "Value exceeds 65536 bytes"),
    "value-huge": (json.dumps({"key": "HUGE", "value": "v" * 2_000_000}), 413, TOO_LARGE),
    "description-huge": (json.dumps({"key": "HUGE", "value": "v", "description": "d" * 2_000_000}), 413, TOO_LARGE),
    "wide-object": ('{"key": "HUGE", "value": "v", "extra": ' + json.dumps({f"k{i}": i for i in range(50_000)}) + "}",
                    400, 'Unknown field "extra"'),
    "huge-number": ('{"key": "NUMBER", "value": ' + "9" * 100_000 + "}", 400, NOT_JSON),
    "infinite-number": ('{"key": "NUMBER", "value": "v", "description": 1e999999}', 400,
                        "Description must be a string"),
}
HOSTILE_WRITES = {  # name: (body, status, message), each sent to every write
    "deep": (DEEP_ARRAY, 400, NOT_JSON),
    "deep-field": ('{"a": ' + DEEP_ARRAY + "}", 400, NOT_JSON),
    "huge": ('{"value": "' + "v" * 2_000_000 + '"}', 413, TOO_LARGE),
}


def outcome_of(response) -> tuple[int, Any]:
    """(status, body) as comparable data; a body outside the error shape stays visible as text."""
    text = response.get_data(as_text=True)
    try:
        body = json.loads(text)
    except ValueError:
        return response.status_code, text[:200]
    if response.status_code >= 400 and isinstance(body, dict) and set(body) == {"statusCode", "message"}:
        return response.status_code, body["message"] if body["statusCode"] == response.status_code else body
    return response.status_code, body


@sqlite_only
def test_deep_and_huge_json_is_refused_in_the_error_shape(client, auth):
    answers = {name: outcome_of(post_raw(client, "/api/secrets", body, auth))
               for name, (body, _, _) in HOSTILE_CREATES.items()}
    assert answers == {name: (status, message) for name, (_, status, message) in HOSTILE_CREATES.items()}
    assert snapshot(client, auth) == {}


@sqlite_only
def test_deep_and_huge_json_is_refused_by_every_write(client, auth):
    create(client, auth, "EXISTING", "existing-value")
    before = snapshot(client, auth)
    answers = {(name, method, path): outcome_of(post_raw(client, path, body, auth, method=method))
               for name, (body, _, _) in HOSTILE_WRITES.items() for method, path in WRITES}
    assert answers == {(name, method, path): (status, message)
                       for name, (_, status, message) in HOSTILE_WRITES.items() for method, path in WRITES}
    assert snapshot(client, auth) == before


# --------------------------------------------------------------------------- NUL bytes and look-alikes


LOOK_ALIKES = {
    "cyrillic-a": "\u0410PI_KEY",  # А
    "fullwidth": "\uff21\uff30\uff29_KEY",  # ＡＰＩ
    "zero-width-joiner": "API\u200d_KEY",
    "zero-width-space": "API_KEY\u200b",
    "nul-inside": "API\x00_KEY",
    "nul-after": "API_KEY\x00",
    "nul-alone": "\x00",
    "bom": "\ufeffAPI_KEY",
    "combining": "API_KE\u0059\u0301",
    "lowercase": "api_key",
    "dotted-capital-i": "AP\u0130_KEY",
}


def test_look_alike_and_nul_keys_in_a_body_are_refused(client, auth):
    create(client, auth, "API_KEY", "the-real-value")
    before = snapshot(client, auth)

    answers = {name: outcome_of(client.post("/api/secrets", json={"key": key, "value": "impostor"}, headers=auth))
               for name, key in LOOK_ALIKES.items()}
    assert answers == {name: (400, KEY_FORMAT) for name in LOOK_ALIKES}
    answers = {name: outcome_of(client.put("/api/secrets/API_KEY", json={"key": key, "value": "impostor"},
                                           headers=auth)) for name, key in LOOK_ALIKES.items()}
    assert answers == {name: (400, 'Unknown field "key"') for name in LOOK_ALIKES}
    assert snapshot(client, auth) == before


def test_look_alike_and_nul_keys_in_a_path_never_reach_the_real_one(client, auth):
    create(client, auth, "API_KEY", "the-real-value")
    before = snapshot(client, auth)
    mark = len(audit_trail(client, auth))

    answers, expected = {}, {}
    for name, key in LOOK_ALIKES.items():
        path = "/api/secrets/" + quote(key, safe="")
        for label, method, url, body, headers in [
            ("read", "GET", path, None, {}), ("read v1", "GET", path + "?version=1", None, {}),
            ("versions", "GET", path + "/versions", None, {}), ("update", "PUT", path, {"value": "impostor"}, {}),
            ("update if-match", "PUT", path, {"value": "impostor"}, {"If-Match": "1"}),
            ("restore", "POST", path + "/restore", {"version": 1}, {}), ("delete", "DELETE", path, None, {}),
        ]:
            response = client.open(url, method=method, json=body, headers={**auth, **headers})
            answers[(name, label)] = outcome_of(response)
            expected[(name, label)] = (404, f'Secret with key "{key}" not found')
    assert answers == expected

    during = audit_trail(client, auth)[mark:]
    assert [event for event in during if event[1] == "API_KEY"] == []
    assert snapshot(client, auth) == before


def test_values_with_nul_and_look_alikes_round_trip_exactly(client, auth):
    value = "a\x00b \u0410\uff21\u200d\u200b\ufeff \U0001f511 \\u0000 \r\n\t end"
    create(client, auth, "ODD_VALUE", value)
    assert client.get("/api/secrets/ODD_VALUE", headers=auth).get_json()["data"]["value"] == value
    assert client.put("/api/secrets/ODD_VALUE", json={"value": value + "2"}, headers=auth).status_code == 200
    assert client.get("/api/secrets/ODD_VALUE?version=1", headers=auth).get_json()["data"]["value"] == value
    assert client.get("/api/secrets/ODD_VALUE", headers=auth).get_json()["data"]["value"] == value + "2"


def test_look_alike_token_names_never_revoke_the_real_one(client, auth):
    names = ["adm\u0456n", "admin\x00", "\uff41dmin", "admin\u200d", "ADMIN", "admin%00", "admin/"]
    answers = {name: client.delete("/api/tokens/" + quote(name, safe=""), headers=auth).status_code for name in names}
    assert answers == dict.fromkeys(names, 404)
    assert [t["name"] for t in client.get("/api/tokens", headers=auth).get_json()["data"]] == ["admin"]


# --------------------------------------------------------------------------- path tricks in the key segment


PATH_TRICKS = [
    "..%2FOTHER",
    "..%2fOTHER",
    "%2e%2e%2fOTHER",
    "%2E%2E%2FOTHER",
    "%2e%2e",
    "..",
    "TARGET%2F..%2FOTHER",
    "%2FOTHER",
    "/OTHER",  # a literal double slash
    "OTHER%2F",
    "OTHER%2Frestore",
    "OTHER%2fversions%2f1",
    "%252e%252e%252fOTHER",
    "..%252FOTHER",
    "OTHER%252Fversions",
    "OTHER%5Cversions",
    "..%5COTHER",
    "OTHER%3Bversion=1",
    "OTHER%3Fversion=1",
    "OTHER%23",
    "%C0%AE%C0%AE%C0%AFOTHER",  # overlong UTF-8 for "../"
]


def reset_store(client, auth: dict[str, str]) -> dict[str, Any]:
    """Exactly TARGET and OTHER, each with one version; the snapshot of that."""
    for row in client.get("/api/secrets", headers=auth).get_json()["data"]:
        assert client.delete(f"/api/secrets/{row['key']}", headers=auth).status_code == 200
    create(client, auth, "TARGET", "target-value")
    create(client, auth, "OTHER", "other-value")
    return snapshot(client, auth)


def test_path_tricks_in_the_key_segment_are_a_clear_4xx_and_touch_nothing(client, auth):
    """Each request is sent twice: as is, and by a client that follows redirects (as `requests` does)."""
    problems = []
    for trick in PATH_TRICKS:
        before = reset_store(client, auth)
        mark = len(audit_trail(client, auth))
        base = f"/api/secrets/{trick}"
        for follow in (False, True):
            for method, path, body in [("GET", base, None), ("GET", base + "?version=1", None),
                                       ("PUT", base, {"value": "overwritten"}), ("GET", base + "/versions", None),
                                       ("POST", base + "/restore", {"version": 1}), ("DELETE", base, None)]:
                response = client.open(path, method=method, json=body, headers=auth, follow_redirects=follow)
                text = response.get_data(as_text=True)
                outcome = (f"{method} {path}{' (following redirects)' if follow else ''} -> {response.status_code} "
                           f"{response.headers.get('Location', '')} {text[:100]!r}")
                if not 400 <= response.status_code < 500 or response.mimetype != "application/json":
                    problems.append(outcome)
                else:
                    assert_error(response, response.status_code)
                if "other-value" in text or "target-value" in text:
                    problems.append(f"a value in the answer: {outcome}")
        during = audit_trail(client, auth)[mark:]
        problems += [f"{trick}: audited on another secret: {event}" for event in during if event[1] in ("OTHER", "TARGET")]
        after = snapshot(client, auth)
        if after != before:
            problems.append(f"{trick}: the store changed: {before} -> {after}")
    assert problems == [], f"{len(problems)} problems:\n" + "\n".join(problems)


@sqlite_only
@pytest.mark.xfail(strict=True, reason="known limit: granian hands the app a decoded path and no raw URI, so %2F "
                                       "cannot be told from /; the caller is still authorized for the key it reaches")
def test_an_encoded_slash_in_a_key_is_not_a_path_separator(client, auth):
    """`OTHER%2Fversions` names a key (an invalid one), not the versions route of OTHER.

    Note for a fix: the WSGI environ's PATH_INFO is already decoded, and granian (unlike the test client)
    passes no RAW_URI or REQUEST_URI, so under `secrets-hub serve` the app sees exactly `/OTHER/versions`."""
    reset_store(client, auth)
    answers = {path: outcome_of(client.get(path, headers=auth))
               for path in ("/api/secrets/OTHER%2Fversions", "/api/secrets/OTHER%2fversions")}
    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(answers, 404), answers


# --------------------------------------------------------------------------- content types


NOT_JSON_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
                  "application/xml", "text/json", "text/plain; charset=utf-8", "application/octet-stream"]
WRITE_BODIES = {("POST", "/api/secrets"): {"key": "FORM_KEY", "value": "v"},
                ("PUT", "/api/secrets/EXISTING"): {"value": "changed"},
                ("POST", "/api/secrets/EXISTING/restore"): {"version": 1},
                ("POST", "/api/tokens"): {"name": "form-token", "scopes": ["mcp"]}}


@sqlite_only
def test_a_body_declared_as_anything_but_json_is_415(client, auth):
    create(client, auth, "EXISTING", "existing-value")
    before = snapshot(client, auth)
    answers = {(content_type, method, path): outcome_of(post_raw(client, path, json.dumps(body), auth,
                                                                 content_type=content_type, method=method))
               for content_type in NOT_JSON_TYPES for (method, path), body in WRITE_BODIES.items()}
    assert answers == dict.fromkeys(answers, (415, MEDIA_TYPE))
    assert len(answers) == len(NOT_JSON_TYPES) * len(WRITE_BODIES)
    assert snapshot(client, auth) == before
    assert [t["name"] for t in client.get("/api/tokens", headers=auth).get_json()["data"]] == ["admin"]


@sqlite_only
def test_a_real_form_and_a_real_multipart_upload_are_415(client, auth):
    assert_error(client.post("/api/secrets", data={"key": "FORM_KEY", "value": "v"}, headers=auth), 415, MEDIA_TYPE)
    upload = {"key": "FORM_KEY", "value": (io.BytesIO(b"v"), "value.txt")}
    assert_error(client.post("/api/secrets", data=upload, headers=auth, content_type="multipart/form-data"), 415,
                 MEDIA_TYPE)
    assert snapshot(client, auth) == {}


@sqlite_only
def test_a_json_body_without_any_content_type_is_accepted(app, client, auth):
    environ = EnvironBuilder(path="/api/secrets", method="POST", headers=auth,
                             data=b'{"key": "NO_TYPE", "value": "untyped"}').get_environ()
    assert "CONTENT_TYPE" not in environ or environ["CONTENT_TYPE"] == ""
    body, status, _ = run_wsgi_app(app, environ, buffered=True)
    assert status.startswith("200"), b"".join(body)
    assert snapshot(client, auth)["NO_TYPE"][2] == "untyped"


# --------------------------------------------------------------------------- repeated headers


@sqlite_only
@pytest.mark.parametrize("order", ["same-twice", "valid-then-bad", "bad-then-valid"])
def test_two_authorization_headers_are_refused(client, auth, order):
    valid, bad = auth["Authorization"], "Bearer shub_not-a-real-token"
    pair = {"same-twice": (valid, valid), "valid-then-bad": (valid, bad), "bad-then-valid": (bad, valid)}[order]
    headers = Headers([("Authorization", pair[0]), ("Authorization", pair[1])])

    read = client.get("/api/secrets", headers=headers)
    assert read.status_code in (400, 401), read.get_data(as_text=True)
    assert_error(read, read.status_code)
    write = client.post("/api/secrets", json={"key": "TWICE", "value": "v"}, headers=headers)
    assert write.status_code in (400, 401), write.get_data(as_text=True)
    assert_error(write, write.status_code)
    assert snapshot(client, auth) == {}


@pytest.mark.parametrize("pair", [("1", "1"), ("1", "2"), ("2", "1"), ('"1"', '"1"')])
@sqlite_only
def test_two_if_match_headers_are_refused_and_change_nothing(client, auth, pair):
    create(client, auth, "GUARDED", "guarded-value")
    before = snapshot(client, auth)
    headers = Headers([("Authorization", auth["Authorization"]), ("If-Match", pair[0]), ("If-Match", pair[1])])
    response = client.put("/api/secrets/GUARDED", json={"value": "changed"}, headers=headers)
    body = assert_error(response, 400)
    assert "If-Match" in body["message"]
    assert snapshot(client, auth) == before


# --------------------------------------------------------------------------- failed authentications, per address


@sqlite_only
def test_failed_bearer_authentications_are_limited_per_address(client, auth):
    """A fresh app (the `app` fixture) so that no other test's failures count here."""
    bad = bearer("shub_guessed-token-000000000000000000000")
    for _ in range(29):
        assert_error(client.get("/api/secrets", headers=bad), 401, "Authentication required")
    assert client.get("/api/secrets", headers=auth).status_code == 200  # 29 failures: still answered
    assert_error(client.get("/api/secrets", headers=bad), 401, "Authentication required")  # the 30th

    for headers in (auth, bad, {}):  # now every request from this address, even with a valid token
        refused = client.get("/api/secrets", headers=headers)
        assert_error(refused, 429)
    refused_write = client.post("/api/secrets", json={"key": "LOCKED_OUT", "value": "v"}, headers=auth)
    assert_error(refused_write, 429)
    assert_error(client.get("/api/secrets/ANY_KEY", headers=auth), 429)  # the hot path's read too

    # Another address is untouched.
    elsewhere = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/api/secrets", headers=auth, environ_overrides=elsewhere).status_code == 200
    assert snapshot(client_from(client, elsewhere), auth) == {}


@sqlite_only
def test_a_wall_clock_set_back_does_not_end_a_block_early(client, auth, monkeypatch):
    """The failure counters expire by the wall clock; the check that skips them must count time the same way."""
    bad = bearer("shub_guessed-token-000000000000000000000")
    for _ in range(30):
        assert_error(client.get("/api/secrets", headers=bad), 401, "Authentication required")
    # 61 s later by a steady clock, but the wall clock was set back 30 s meanwhile: the window (60 s by the wall
    # clock) still runs for 29 s.
    monkeypatch.setattr(throttle, "time", SimpleNamespace(time=lambda: time.time() + 31,
                                                          monotonic=lambda: time.monotonic() + 61))
    assert_error(client.get("/api/secrets/ANY_KEY", headers=auth), 429)
    assert_error(client.get("/api/secrets", headers=auth), 429)


def client_from(client, environ: dict[str, str]):
    """The same app's test client, every request from another address."""
    other = client.application.test_client()
    other.environ_base.update(environ)
    return other


# --------------------------------------------------------------------------- security headers, no inline script


class _PageScan(html.parser.HTMLParser):
    """Inline scripts and inline event handlers in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._script: str | None = None  # inside a <script>: "src" or "inline"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name.lower(): value for name, value in attrs}
        for name, value in names.items():
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>: an inline event handler")
            if name in ("href", "src", "action", "formaction") and (value or "").strip().lower().startswith(
                    "javascript:"):
                self.problems.append(f"<{tag} {name}={value!r}>: a javascript: URL")
        if tag == "script":
            self._script = "src" if names.get("src") else "inline"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            if self._script == "inline":
                self.problems.append("<script> without src: an inline script")
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script == "src" and data.strip():
            self.problems.append(f"<script src> with a body: {data.strip()[:80]!r}")


def csp_directives(policy: str) -> dict[str, list[str]]:
    directives = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def assert_secure(label: str, response) -> None:
    headers = response.headers
    policy = headers.get("Content-Security-Policy")
    assert policy, f"{label}: no Content-Security-Policy"
    directives = csp_directives(policy)
    scripts = directives.get("script-src", directives.get("default-src"))
    assert scripts is not None, f"{label}: the policy does not limit scripts: {policy}"
    assert "'unsafe-inline'" not in scripts and "*" not in scripts, f"{label}: {policy}"
    assert directives.get("frame-ancestors") == ["'none'"], f"{label}: {policy}"
    assert headers.get("X-Content-Type-Options") == "nosniff", label
    assert headers.get("Referrer-Policy") == "no-referrer", label
    if response.mimetype == "text/html":
        scan = _PageScan()
        scan.feed(response.get_data(as_text=True))
        assert scan.problems == [], f"{label}: {scan.problems}"


def csrf_of(html_text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html_text).group(1)


@sqlite_only
def test_every_response_carries_the_security_headers_and_pages_have_no_inline_script(app, client, make_token):
    seen: list[tuple[str, Any]] = []

    def visit(label: str, response) -> Any:
        response.get_data()  # buffered, so the file behind a static response can be closed now
        response.close()
        seen.append((label, response))
        return response

    # Before anyone exists: the first-run pages.
    visit("/ (first run)", client.get("/"))
    visit("/setup", client.get("/setup"))
    visit("/setup refused", client.post("/setup", data={"csrf_token": csrf_of(client.get("/setup").get_data(
        as_text=True)), "email": "a@example.com", "password": PASSWORD, "confirm": "different"}))
    with app.app_context():
        users.create_user(None, "admin@example.com", PASSWORD, is_admin=True)
    token = make_token("secrets:read", "secrets:write", "admin", name="headers-admin")
    auth = bearer(token)
    create(client, auth, "SOME_KEY", "some-value")

    # Signed out.
    visit("/ (signed out)", client.get("/"))
    visit("/login", client.get("/login"))
    visit("/login refused", client.post("/login", data={"csrf_token": csrf_of(client.get("/login").get_data(
        as_text=True)), "email": "admin@example.com", "password": "wrong"}))
    visit("/login without csrf", client.post("/login", data={"email": "admin@example.com", "password": "wrong"}))
    visit("/settings (signed out)", client.get("/settings"))
    visit("/setup (gone)", client.get("/setup"))
    visit("/nope", client.get("/nope"))
    visit("/static/app.js", client.get("/static/app.js"))
    visit("/static/app.css", client.get("/static/app.css"))
    visit("/static/nope.js", client.get("/static/nope.js"))
    visit("/healthz", client.get("/healthz"))
    visit("/api/openapi.json", client.get("/api/openapi.json"))
    visit("/api/secrets (401)", client.get("/api/secrets"))
    visit("/api/secrets", client.get("/api/secrets", headers=auth))
    visit("/api/secrets/SOME_KEY", client.get("/api/secrets/SOME_KEY", headers=auth))
    visit("/api/nope (404)", client.get("/api/nope", headers=auth))
    visit("PATCH (405)", client.patch("/api/secrets/SOME_KEY", headers=auth))
    visit("/api 400", post_raw(client, "/api/secrets", "[", auth))
    visit("/api 413", client.post("/api/secrets", headers={**auth, "Content-Type": "application/json"},
                                  environ_overrides={"CONTENT_LENGTH": str(10**9)}))
    visit("/api 415", post_raw(client, "/api/secrets", "{}", auth, content_type="text/plain"))
    visit("/page 413", client.post("/login", data="x", content_type="application/x-www-form-urlencoded",
                                   environ_overrides={"CONTENT_LENGTH": str(10**9)}))

    # Signed in: every tab, and the password form's redirect.
    form = {"csrf_token": csrf_of(client.get("/login").get_data(as_text=True)), "email": "admin@example.com",
            "password": PASSWORD}
    visit("/login (signing in)", client.post("/login", data=form))
    visit("/ (signed in)", client.get("/"))
    for tab in ("account", "secrets", "tokens", "skills", "audit", "app", "nonsense"):
        settings_page = visit(f"/settings?tab={tab}", client.get(f"/settings?tab={tab}"))
        assert settings_page.status_code == 200
    visit("/settings/password", client.post("/settings/password", data={
        "csrf_token": csrf_of(client.get("/settings?tab=account").get_data(as_text=True)),
        "current_password": "wrong", "new_password": "x", "confirm": "y"}))
    visit("/api/secrets (session)", client.get("/api/secrets"))
    visit("/api/secrets (session, no csrf)", client.post("/api/secrets", json={"key": "X", "value": "v"}))

    # A server-side error: a row whose key id no master key has (500 for that one read).
    with app.app_context():
        db.session.execute(update(Secret).where(Secret.key == "SOME_KEY").values(key_id="0000000000000000"))
        db.session.commit()
    visit("/api 500", client.get("/api/secrets/SOME_KEY", headers=auth))
    visit("/logout", client.post("/logout", data={"csrf_token": csrf_of(client.get("/settings").get_data(
        as_text=True))}))

    statuses = {label: response.status_code for label, response in seen}
    # The list covers what it says it does.
    assert {statuses["/setup"], statuses["/login"], statuses["/settings?tab=secrets"], statuses["/static/app.js"],
            statuses["/healthz"]} == {200}
    assert statuses["/nope"] == 404 and statuses["/setup (gone)"] == 404 and statuses["/api 500"] == 500
    assert statuses["/api 413"] == 413 and statuses["/page 413"] == 413 and statuses["/api 415"] == 415
    assert statuses["PATCH (405)"] == 405 and statuses["/login without csrf"] == 400
    for label, response in seen:
        assert_secure(label, response)
