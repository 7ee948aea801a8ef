"""The `secrets-hub` command line (SPEC.md section 3), driven through real subprocesses.

Every command runs as `python -m secrets_hub ...` with the test settings in its environment
(conftest's `run_cli`); results are checked through the CLI itself, the Flask test client, or the
REST API of a real `secrets-hub serve`. The command line's own behaviour is tested on SQLite (each
subprocess costs about a second); the tests marked `both_backends` also run on PostgreSQL, where
the storage underneath them differs.
"""

from __future__ import annotations

import getpass
import json
import re
import stat
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from conftest import BACKENDS, SECRETS_HUB, bearer, cli_env, free_port, ok, stop_process
from secrets_hub import bootstrap

TOKEN_PATTERN = r"shub_[A-Za-z0-9_-]{43,}"  # `shub_` and at least 32 random bytes, base64url
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
KEY_FORMAT = "Key must be SCREAMING_SNAKE_CASE (e.g., MY_API_KEY)"
EXPIRY_FORMAT = "Expiry must be a number with a unit s, m, h or d (e.g., 30d)"
SECRET_FIELDS = {"id", "key", "description", "createdAt", "updatedAt"}
TOKEN_FIELDS = {"name", "scopes", "allow", "createdAt", "lastUsedAt", "expiresAt"}
AUDIT_FIELDS = {"id", "at", "actor", "channel", "action", "key", "outcome", "remoteAddr"}
OPERATOR = getpass.getuser()  # the CLI records the OS user as the actor


both_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:
    return request.param


# --------------------------------------------------------------------------- helpers




def fails(result: subprocess.CompletedProcess, message: str | None = None) -> str:
    """A refused command: non-zero exit, nothing on stdout, exactly one line on stderr (`Error: message`)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    if message is not None:
        assert lines[0] == f"Error: {message}"
    return lines[0]


def put(run_cli, key: str, value: str, *options: str) -> subprocess.CompletedProcess:
    """`secrets-hub set KEY [options]` with VALUE on stdin."""
    return ok(run_cli("set", key, *options, input=value))


def get(run_cli, key: str, *options: str) -> str:
    """The stdout of `secrets-hub get KEY [options]`."""
    return ok(run_cli("get", key, *options, input="")).stdout


def as_json(run_cli, *args: str) -> Any:
    return json.loads(ok(run_cli(*args, "--json", input="")).stdout)


def create_token(run_cli, name: str, *options: str) -> str:
    """`secrets-hub token create --name NAME options...`; checks stdout is the token alone on one line."""
    result = ok(run_cli("token", "create", "--name", name, *options, input=""))
    assert re.fullmatch(TOKEN_PATTERN + "\n", result.stdout), result.stdout
    return result.stdout[:-1]


def parse_time(text: str) -> datetime:
    assert ISO_UTC.fullmatch(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; the final answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def rest_get(base: str, path: str, token: str) -> requests.Response:
    return requests.get(f"{base}{path}", headers=bearer(token), timeout=10)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"statusCode": status, "message": message}


def login(client, email: str, password: str):
    """Sign in through the login form (with its CSRF token); the response."""
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": csrf})


def audit_rows(run_cli, *options: str) -> list[dict[str, Any]]:
    rows = as_json(run_cli, "audit", *options)
    assert all(set(row) == AUDIT_FIELDS for row in rows), rows
    return rows


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


@pytest.fixture
def cli(run_cli, config):
    """`run_cli` on an initialised store (done in-process, as the `app` fixture does; `init` itself is tested below)."""
    bootstrap.initialize(config)
    return run_cli


# --------------------------------------------------------------------------- init


@both_backends
def test_init_generates_a_master_key_file_when_none_is_configured(run_cli, config, backend):
    instance = Path(config["SECRETS_HUB_INSTANCE_PATH"]).resolve()
    key_file = instance / "master.key"
    # No master secret at all; on SQLite also no DATABASE_URL, so the database goes into the instance folder.
    env = {"SECRETS_HUB_MASTER_KEY": "", **({"DATABASE_URL": ""} if backend == "sqlite" else {})}

    before = run_cli("list", input="", env=env)
    fails(before)
    assert not key_file.exists()

    first = ok(run_cli("init", input="", env=env))
    assert first.stdout == ""
    assert instance.is_dir()
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) >= 32
    assert str(key_file) in first.stderr
    assert any("BACK UP" in line for line in first.stderr.splitlines()), first.stderr
    if backend == "sqlite":
        assert (instance / "secrets_hub.db").is_file()
    assert ok(run_cli("list", input="", env=env)).stdout == ""  # the schema exists and the key opens it

    key = key_file.read_bytes()
    ok(run_cli("set", "KEPT_ACROSS_INIT", input="still-here", env=env))

    second = ok(run_cli("init", input="", env=env))
    assert second.stdout == ""
    assert key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert ok(run_cli("get", "KEPT_ACROSS_INIT", input="", env=env)).stdout == "still-here\n"


def test_init_with_a_configured_master_key_writes_no_key_file(run_cli, config):
    instance = Path(config["SECRETS_HUB_INSTANCE_PATH"])
    result = ok(run_cli("init", input=""))
    assert result.stdout == ""
    assert instance.is_dir()
    assert not (instance / "master.key").exists()
    assert "BACK UP" not in result.stderr
    ok(run_cli("init", input=""))
    assert ok(run_cli("list", input="")).stdout == ""


# --------------------------------------------------------------------------- user create


def test_user_create_reads_the_password_from_stdin(cli, client):
    result = ok(cli("user", "create", "--email", "ops@example.com", "--password-stdin",
                    input="correct horse battery staple\n"))
    assert result.stdout == ""
    assert "correct horse" not in result.stderr

    signed_in = login(client, "ops@example.com", "correct horse battery staple")
    assert signed_in.status_code == 302
    assert signed_in.headers["Location"].endswith("/settings")
    assert login(client, "ops@example.com", "correct horse battery staple\n").status_code == 401

    events = audit_rows(cli, "--key", "ops@example.com")
    assert [(e["action"], e["channel"], e["outcome"]) for e in events] == [("user.create", "cli", "ok")]


def test_user_create_refuses_a_duplicate_email(cli, client):
    ok(cli("user", "create", "--email", "dup@example.com", "--password-stdin", input="first-password\n"))
    fails(cli("user", "create", "--email", "dup@example.com", "--password-stdin", input="second-password\n"),
          'User "dup@example.com" already exists')
    fails(cli("user", "create", "--email", "DUP@example.com", "--password-stdin", input="third-password\n"),
          'User "dup@example.com" already exists')
    assert login(client, "dup@example.com", "first-password").status_code == 302
    assert login(client, "dup@example.com", "second-password").status_code == 401


@pytest.mark.parametrize("email, password, message", [
    ("not-an-email", "long-enough-password", "Email must be a valid email address"),
    ("a@b", "", "Password must be at least 8 characters"),
    ("short@example.com", "1234567", "Password must be at least 8 characters"),
])
def test_user_create_refuses_bad_credentials(cli, client, email, password, message):
    fails(cli("user", "create", "--email", email, "--password-stdin", input=password + "\n"), message)
    assert client.get("/").headers["Location"].endswith("/setup")  # still nobody exists


# --------------------------------------------------------------------------- tokens


def test_token_create_prints_a_new_token_alone(cli):
    first = ok(cli("token", "create", "--name", "one", "--scope", "secrets:read", input=""))
    second = ok(cli("token", "create", "--name", "two", "--scope", "secrets:read", input=""))
    for result in (first, second):
        assert re.fullmatch(TOKEN_PATTERN + "\n", result.stdout)
        assert result.stdout.strip() not in result.stderr
    assert first.stdout != second.stdout
    fails(cli("token", "create", "--name", "one", "--scope", "admin", input=""), 'Token "one" already exists')


def test_token_scopes_and_allow_globs_hold_on_the_live_server(cli, live_server, admin_token):
    for key in ("AWS_KEY", "AWS_KEYS", "GITHUB_APP_ID", "GITHUB_TOKEN", "OTHER"):
        seeded = requests.post(f"{live_server}/api/secrets", json={"key": key, "value": f"value-of-{key}"},
                               headers=bearer(admin_token), timeout=10)
        assert seeded.status_code == 200
    reader = create_token(cli, "reader", "--scope", "secrets:read", "--allow", "GITHUB_*", "--allow", "AWS_???")
    writer = create_token(cli, "writer", "--scope", "secrets:read", "--scope", "secrets:write")
    agent = create_token(cli, "agent", "--scope", "mcp")
    admin = create_token(cli, "boss", "--scope", "admin")

    listed = rest_get(live_server, "/api/secrets", reader)
    assert listed.status_code == 200
    assert [row["key"] for row in listed.json()["data"]] == ["AWS_KEY", "GITHUB_APP_ID", "GITHUB_TOKEN"]
    read = rest_get(live_server, "/api/secrets/GITHUB_TOKEN", reader)
    assert (read.status_code, read.json()) == (200, {"data": {"key": "GITHUB_TOKEN", "value": "value-of-GITHUB_TOKEN"}})
    for key in ("OTHER", "AWS_KEYS"):
        refused = rest_get(live_server, f"/api/secrets/{key}", reader)
        assert (refused.status_code, refused.json()) == (403, error_body(403, f'Token may not access "{key}"'))
    created = requests.post(f"{live_server}/api/secrets", json={"key": "GITHUB_NEW", "value": "x"},
                            headers=bearer(reader), timeout=10)
    assert (created.status_code, created.json()) == (403, error_body(403, "Token lacks scope secrets:write"))
    deleted = requests.delete(f"{live_server}/api/secrets/GITHUB_TOKEN", headers=bearer(reader), timeout=10)
    assert (deleted.status_code, deleted.json()) == (403, error_body(403, "Token lacks scope secrets:write"))
    refused = rest_get(live_server, "/api/tokens", reader)
    assert (refused.status_code, refused.json()) == (403, error_body(403, "Token lacks scope admin"))

    created = requests.post(f"{live_server}/api/secrets", json={"key": "FROM_WRITER", "value": "written"},
                            headers=bearer(writer), timeout=10)
    assert created.status_code == 200
    assert rest_get(live_server, "/api/secrets/OTHER", writer).json()["data"]["value"] == "value-of-OTHER"
    refused = rest_get(live_server, "/api/tokens", writer)
    assert (refused.status_code, refused.json()) == (403, error_body(403, "Token lacks scope admin"))

    refused = rest_get(live_server, "/api/secrets", agent)
    assert (refused.status_code, refused.json()) == (403, error_body(403, "Token lacks scope secrets:read"))

    tokens = rest_get(live_server, "/api/tokens", admin)
    assert tokens.status_code == 200
    assert [row["name"] for row in tokens.json()["data"]] == ["admin", "agent", "boss", "reader", "writer"]
    refused = rest_get(live_server, "/api/secrets", admin)
    assert (refused.status_code, refused.json()) == (403, error_body(403, "Token lacks scope secrets:read"))

    assert get(cli, "FROM_WRITER") == "written\n"
    # The refused writes changed nothing.
    assert [row["key"] for row in rest_get(live_server, "/api/secrets", admin_token).json()["data"]] == [
        "AWS_KEY", "AWS_KEYS", "FROM_WRITER", "GITHUB_APP_ID", "GITHUB_TOKEN", "OTHER"]


@pytest.mark.parametrize("options, message", [
    (("--scope", "secrets:admin"), 'Unknown scope "secrets:admin"'),
    (("--scope", "secrets:read", "--scope", "root"), 'Unknown scope "root"'),
    (("--scope", "secrets:read", "--expires-in", "30x"), EXPIRY_FORMAT),
    (("--scope", "secrets:read", "--expires-in", "d"), EXPIRY_FORMAT),
    (("--scope", "secrets:read", "--expires-in", "-5m"), EXPIRY_FORMAT),
])
def test_token_create_refuses_bad_options(cli, options, message):
    fails(cli("token", "create", "--name", "bad", *options, input=""), message)
    assert as_json(cli, "token", "list") == []


def test_token_list_shows_names_and_scopes_never_the_tokens(cli):
    reader = create_token(cli, "ci-reader", "--scope", "secrets:read", "--allow", "GITHUB_*", "--expires-in", "30d")
    agent = create_token(cli, "agent", "--scope", "mcp", "--scope", "secrets:read", "--expires-in", "90m")
    forever = create_token(cli, "forever", "--scope", "admin")

    text = ok(cli("token", "list", input=""))
    rows = [line.split("\t") for line in text.stdout.splitlines()]
    assert [row[:3] for row in rows] == [
        ["agent", "secrets:read mcp", "*"],
        ["ci-reader", "secrets:read", "GITHUB_*"],
        ["forever", "admin", "*"],
    ]
    assert rows[2][3] == "expires never"

    listed = as_json(cli, "token", "list")
    assert [set(row) for row in listed] == [TOKEN_FIELDS] * 3
    assert [(row["name"], row["scopes"], row["allow"], row["lastUsedAt"]) for row in listed] == [
        ("agent", ["secrets:read", "mcp"], None, None),
        ("ci-reader", ["secrets:read"], ["GITHUB_*"], None),
        ("forever", ["admin"], None, None),
    ]
    agent_row, reader_row, forever_row = listed
    assert parse_time(agent_row["expiresAt"]) - parse_time(agent_row["createdAt"]) == timedelta(minutes=90)
    assert parse_time(reader_row["expiresAt"]) - parse_time(reader_row["createdAt"]) == timedelta(days=30)
    assert forever_row["expiresAt"] is None

    json_text = ok(cli("token", "list", "--json", input="")).stdout
    for token in (reader, agent, forever):
        for output in (text.stdout, text.stderr, json_text):
            assert token not in output
            assert token.removeprefix("shub_") not in output


@both_backends
def test_token_revoke_makes_the_token_fail_with_401(cli, live_server, client):
    token = create_token(cli, "short-lived", "--scope", "secrets:read")
    keeper = create_token(cli, "keeper", "--scope", "secrets:read")
    assert rest_get(live_server, "/api/secrets", token).status_code == 200

    result = ok(cli("token", "revoke", "short-lived", input=""))
    assert result.stdout == ""

    refused = client.get("/api/secrets", headers=bearer(token))
    assert (refused.status_code, refused.get_json()) == (401, error_body(401, "Authentication required"))
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert wait_for(lambda: rest_get(live_server, "/api/secrets", token).status_code == 401)
    assert rest_get(live_server, "/api/secrets", keeper).status_code == 200
    assert [row["name"] for row in as_json(cli, "token", "list")] == ["keeper"]

    fails(cli("token", "revoke", "short-lived", input=""), 'Token "short-lived" not found')
    fails(cli("token", "revoke", "never-existed", input=""), 'Token "never-existed" not found')


# --------------------------------------------------------------------------- set


@pytest.mark.parametrize("stdin, stored", [
    ("abc\n\n", "abc\n"),
    ("abc", "abc"),
    ("abc\n", "abc"),
    ("line one\nline two\n", "line one\nline two"),
    ("  padded \t\n", "  padded \t"),
    ("päss wörd ✓ \"q\" \\ $HOME\n", "päss wörd ✓ \"q\" \\ $HOME"),
])
def test_set_strips_exactly_one_trailing_newline(cli, client, admin_token, stdin, stored):
    put(cli, "MY_VALUE", stdin)
    read = client.get("/api/secrets/MY_VALUE", headers=bearer(admin_token))
    assert read.get_json() == {"data": {"key": "MY_VALUE", "value": stored}}
    assert get(cli, "MY_VALUE") == stored + "\n"


@both_backends
def test_set_creates_then_updates_with_a_new_version(cli, client, admin_token):
    created = put(cli, "API_KEY", "first-value-1a2b\n", "--description", "Payment API")
    updated = put(cli, "API_KEY", "second-value-3c4d\n")
    for result in (created, updated):
        assert result.stdout == ""
        assert "first-value-1a2b" not in result.stderr
        assert "second-value-3c4d" not in result.stderr

    assert get(cli, "API_KEY") == "second-value-3c4d\n"
    assert get(cli, "API_KEY", "--version", "1") == "first-value-1a2b\n"
    versions = client.get("/api/secrets/API_KEY/versions", headers=bearer(admin_token)).get_json()["data"]
    assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
    # An update without --description keeps it; one with --description replaces it.
    assert ok(cli("list", input="")).stdout == "API_KEY\tPayment API\n"
    put(cli, "API_KEY", "third-value\n", "--description", "Payments, v2")
    assert ok(cli("list", input="")).stdout == "API_KEY\tPayments, v2\n"
    assert get(cli, "API_KEY") == "third-value\n"


@pytest.mark.parametrize("key, message", [
    ("my_key", KEY_FORMAT),
    ("1KEY", KEY_FORMAT),
    ("MY-KEY", KEY_FORMAT),
    ("_KEY", KEY_FORMAT),
    ("K" * 256, "Key must be 255 characters or less"),
])
def test_set_refuses_an_invalid_key(cli, key, message):
    result = cli("set", key, input="secret-value-9z8y\n")
    fails(result, message)
    assert "secret-value-9z8y" not in result.stderr
    assert ok(cli("list", input="")).stdout == ""


def test_set_refuses_an_empty_or_oversized_value(cli):
    fails(cli("set", "EMPTY", input=""), "Value is required")
    fails(cli("set", "EMPTY", input="\n"), "Value is required")
    small = {"SECRETS_HUB_MAX_VALUE_BYTES": "10"}
    fails(cli("set", "BIG", input="12345678901", env=small), "Value exceeds 10 bytes")
    fails(cli("set", "BIG", input="ééééé\n" + "x", env=small), "Value exceeds 10 bytes")  # 11 UTF-8 bytes
    ok(cli("set", "BIG", input="1234567890\n", env=small))
    assert ok(cli("list", input="")).stdout == "BIG\t\n"
    assert get(cli, "BIG") == "1234567890\n"


def test_set_never_takes_the_value_from_the_command_line(cli):
    result = cli("set", "FROM_ARGV", "value-on-argv", input="from-stdin\n")
    assert "Traceback" not in result.stderr
    assert result.returncode != 0
    assert ok(cli("list", input="")).stdout == ""


# --------------------------------------------------------------------------- get


@both_backends
def test_get_of_a_version_past_32_bits_is_not_found(cli):
    """PostgreSQL compares such a number as the bigint it is, as SQLite does: not a refused int4."""
    put(cli, "BIG_VERSION", "v1")
    fails(cli("get", "BIG_VERSION", "--version", "3000000000", input=""), 'Secret "BIG_VERSION" has no version 3000000000')


def test_get_prints_the_value_alone_and_older_versions(cli):
    put(cli, "DB_PASSWORD", "v1\n")
    put(cli, "DB_PASSWORD", "v2 with\nnewline\n")
    put(cli, "DB_PASSWORD", "v3\n")
    result = ok(cli("get", "DB_PASSWORD", input=""))
    assert result.stdout == "v3\n"
    assert "v3" not in result.stderr
    assert get(cli, "DB_PASSWORD", "--version", "2") == "v2 with\nnewline\n"
    assert get(cli, "DB_PASSWORD", "--version", "1") == "v1\n"
    assert get(cli, "DB_PASSWORD", "--version", "3") == "v3\n"
    fails(cli("get", "DB_PASSWORD", "--version", "4", input=""), 'Secret "DB_PASSWORD" has no version 4')


def test_get_of_a_missing_key_fails_with_one_line(cli):
    put(cli, "PRESENT", "here")
    fails(cli("get", "MISSING_KEY", input=""), 'Secret with key "MISSING_KEY" not found')
    fails(cli("get", "MISSING_KEY", "--version", "1", input=""), 'Secret with key "MISSING_KEY" not found')


# --------------------------------------------------------------------------- list


def test_list_shows_keys_and_descriptions_sorted_never_values(cli, client, admin_token):
    assert ok(cli("list", input="")).stdout == ""
    assert as_json(cli, "list") == []

    values = {"Z_LAST": "zzz-value-41", "A_B": "underscore-value-42", "AB": "plain-value-43", "A1": "digit-value-44"}
    descriptions = {"A_B": "with underscore", "AB": "plain"}
    for key, value in values.items():
        put(cli, key, value, *(("--description", descriptions[key]) if key in descriptions else ()))

    text = ok(cli("list", input=""))
    # Code-point order: "1" < "B" < "_"; a locale collation would put A_B before AB.
    assert text.stdout.splitlines() == ["A1\t", "AB\tplain", "A_B\twith underscore", "Z_LAST\t"]

    json_text = ok(cli("list", "--json", input="")).stdout
    listed = json.loads(json_text)
    assert [set(row) for row in listed] == [SECRET_FIELDS] * 4
    assert [(row["key"], row["description"]) for row in listed] == [
        ("A1", None), ("AB", "plain"), ("A_B", "with underscore"), ("Z_LAST", None)]
    for row in listed:
        parse_time(row["createdAt"])
        parse_time(row["updatedAt"])
    assert listed == client.get("/api/secrets", headers=bearer(admin_token)).get_json()["data"]

    for value in values.values():
        assert value not in text.stdout + text.stderr + json_text


# --------------------------------------------------------------------------- delete


def test_delete_removes_the_secret(cli):
    put(cli, "DOOMED", "gone soon")
    put(cli, "SURVIVOR", "stays")
    result = ok(cli("delete", "DOOMED", input=""))
    assert result.stdout == ""
    fails(cli("get", "DOOMED", input=""), 'Secret with key "DOOMED" not found')
    fails(cli("history", "DOOMED", input=""), 'Secret with key "DOOMED" not found')
    assert ok(cli("list", input="")).stdout == "SURVIVOR\t\n"
    fails(cli("delete", "DOOMED", input=""), 'Secret with key "DOOMED" not found')
    fails(cli("delete", "NEVER_THERE", input=""), 'Secret with key "NEVER_THERE" not found')

    put(cli, "DOOMED", "reborn")  # a new secret, starting again at version 1
    assert [v["version"] for v in as_json(cli, "history", "DOOMED")] == [1]
    assert get(cli, "DOOMED") == "reborn\n"


# --------------------------------------------------------------------------- history


def test_history_lists_versions_newest_first(cli, client, admin_token):
    for value in ("hist-one-a1", "hist-two-b2", "hist-three-c3"):
        put(cli, "ROTATED", value)

    text = ok(cli("history", "ROTATED", input=""))
    rows = [line.split("\t") for line in text.stdout.splitlines()]
    assert [row[0] for row in rows] == ["3", "2", "1"]
    assert [row[-1] == "current" for row in rows] == [True, False, False]
    assert all(row[2] == OPERATOR for row in rows)

    json_text = ok(cli("history", "ROTATED", "--json", input="")).stdout
    versions = json.loads(json_text)
    assert [(v["version"], v["current"], v["createdBy"]) for v in versions] == [
        (3, True, OPERATOR), (2, False, OPERATOR), (1, False, OPERATOR)]
    assert [parse_time(v["createdAt"]) for v in versions] == sorted((parse_time(v["createdAt"]) for v in versions),
                                                                    reverse=True)
    assert versions == client.get("/api/secrets/ROTATED/versions", headers=bearer(admin_token)).get_json()["data"]

    for value in ("hist-one-a1", "hist-two-b2", "hist-three-c3"):
        assert value not in text.stdout + text.stderr + json_text
    fails(cli("history", "NO_SUCH_KEY", input=""), 'Secret with key "NO_SUCH_KEY" not found')


def test_history_keeps_only_the_configured_number_of_versions(cli):
    keep_two = {"SECRETS_HUB_KEEP_VERSIONS": "2"}
    for value in ("first", "second", "third"):
        ok(cli("set", "PRUNED", input=value, env=keep_two))
    assert [(v["version"], v["current"]) for v in as_json(cli, "history", "PRUNED")] == [(3, True), (2, False)]
    assert get(cli, "PRUNED", "--version", "2") == "second\n"
    fails(cli("get", "PRUNED", "--version", "1", input=""), 'Secret "PRUNED" has no version 1')


# --------------------------------------------------------------------------- audit


@both_backends
def test_audit_shows_cli_events_filtered_by_key_and_limit(cli):
    put(cli, "AUDITED", "audit-value-v1")
    put(cli, "AUDITED", "audit-value-v2")
    put(cli, "UNRELATED", "other")
    get(cli, "AUDITED")
    get(cli, "AUDITED", "--version", "1")
    ok(cli("delete", "AUDITED", input=""))
    fails(cli("get", "AUDITED", input=""))

    events = audit_rows(cli, "--key", "AUDITED")
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("read", "not_found"), ("delete", "ok"), ("read", "ok"), ("read", "ok"), ("update", "ok"), ("create", "ok")]
    assert {(e["channel"], e["actor"], e["key"], e["remoteAddr"]) for e in events} == {
        ("cli", OPERATOR, "AUDITED", None)}
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
    for event in events:
        parse_time(event["at"])

    assert audit_rows(cli, "--key", "AUDITED", "--limit", "2") == events[:2]
    everything = audit_rows(cli)
    assert {e["key"] for e in everything} >= {"AUDITED", "UNRELATED"}
    assert audit_rows(cli, "--limit", "1") == everything[:1]

    text = ok(cli("audit", "--key", "AUDITED", "--limit", "3", input=""))
    assert [line.split("\t")[1:] for line in text.stdout.splitlines()] == [
        [OPERATOR, "cli", "read", "AUDITED", "not_found", "-"],
        [OPERATOR, "cli", "delete", "AUDITED", "ok", "-"],
        [OPERATOR, "cli", "read", "AUDITED", "ok", "-"],
    ]
    assert ok(cli("audit", "--key", "NOTHING_HAPPENED", input="")).stdout == ""


def test_audit_never_shows_a_value_or_a_token(cli, client):
    value = "hunter2-leak-check-7f3a"
    put(cli, "LEAK_CHECK", value)
    token = create_token(cli, "leaky", "--scope", "secrets:read", "--scope", "secrets:write")
    assert client.get("/api/secrets/LEAK_CHECK", headers=bearer(token)).get_json()["data"]["value"] == value
    assert client.put("/api/secrets/LEAK_CHECK", json={"value": value + "-new"},
                      headers=bearer(token)).status_code == 200
    assert client.get("/api/secrets/LEAK_CHECK", headers=bearer(token + "x")).status_code == 401
    assert client.get("/api/secrets/LEAK_CHECK", headers=bearer(value)).status_code == 401
    get(cli, "LEAK_CHECK")

    for args in (("audit",), ("audit", "--json"), ("audit", "--key", "LEAK_CHECK")):
        result = ok(cli(*args, input=""))
        for secret in (value, token, token.removeprefix("shub_")):
            assert secret not in result.stdout + result.stderr

    events = audit_rows(cli, "--key", "LEAK_CHECK")
    assert [(e["channel"], e["actor"], e["action"], e["outcome"]) for e in events] == [
        ("cli", OPERATOR, "read", "ok"),
        ("rest", "leaky", "update", "ok"),
        ("rest", "leaky", "read", "ok"),
        ("cli", OPERATOR, "create", "ok"),
    ]


# --------------------------------------------------------------------------- errors


def test_a_wrong_master_key_is_refused_with_one_line(cli):
    put(cli, "LOCKED", "locked-value")
    line = fails(cli("get", "LOCKED", input="", env={"SECRETS_HUB_MASTER_KEY": "a-different-master-secret"}))
    assert "master key" in line.lower()
    assert get(cli, "LOCKED") == "locked-value\n"


def test_an_unreachable_database_is_one_line(cli):
    unreachable = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"}
    fails(cli("list", input="", env=unreachable), "Database unavailable")
    fails(cli("set", "SOME_KEY", input="value", env=unreachable), "Database unavailable")


@pytest.mark.parametrize("args", [
    ("get", "MY_KEY", "--version", "0"),
    ("token", "create", "--name", "no-scope"),
    ("audit", "--limit", "0"),
], ids=["get-version-0", "token-without-scope", "audit-limit-0"])
def test_a_bad_argument_is_one_line(cli, args):
    """SPEC 3: a bad argument exits non-zero with one clear line, never a traceback (nor a usage page)."""
    fails(cli(*args, input=""))


# --------------------------------------------------------------------------- serve and interop


@both_backends
def test_serve_with_two_workers_answers_and_shares_the_store(run_cli, config, tmp_path):
    """`serve` initialises the store itself, then serves it from two worker processes."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve-workers.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([*SECRETS_HUB, "serve", "--port", str(port), "--workers", "2"],
                                   env=cli_env(config), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            def healthy() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    return requests.get(f"{base}/healthz", timeout=1).status_code == 200
                except requests.ConnectionError:
                    return False

            assert wait_for(healthy, timeout=30), log_path.read_text()
            assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
            assert wait_for(lambda: len(child_pids(process.pid)) == 2, timeout=30), child_pids(process.pid)

            token = create_token(run_cli, "svc", "--scope", "secrets:read", "--scope", "secrets:write")
            for _ in range(10):  # enough requests for both workers to serve some
                listed = rest_get(base, "/api/secrets", token)
                assert (listed.status_code, listed.json()) == (200, {"data": []})

            put(run_cli, "FROM_CLI", "cli-made\n")
            for _ in range(6):
                read = rest_get(base, "/api/secrets/FROM_CLI", token)
                assert read.json() == {"data": {"key": "FROM_CLI", "value": "cli-made"}}
                assert read.headers["Cache-Control"] == "no-store"

            created = requests.post(f"{base}/api/secrets", json={"key": "FROM_REST", "value": "rest-made\n"},
                                    headers=bearer(token), timeout=10)
            assert created.status_code == 200
            assert get(run_cli, "FROM_REST") == "rest-made\n\n"

            ok(run_cli("token", "revoke", "svc", input=""))
            assert wait_for(lambda: all(rest_get(base, "/api/secrets", token).status_code == 401 for _ in range(6)))
        finally:
            stop_process(process)


@both_backends
def test_secrets_made_over_rest_are_read_by_the_cli_and_both_channels_are_audited(cli, client, admin_token):
    created = client.post("/api/secrets", json={"key": "SHARED_KEY", "value": "from rest", "description": "shared"},
                          headers=bearer(admin_token))
    assert created.status_code == 200
    assert get(cli, "SHARED_KEY") == "from rest\n"
    assert ok(cli("list", input="")).stdout == "SHARED_KEY\tshared\n"

    put(cli, "SHARED_KEY", "from cli\n")
    read = client.get("/api/secrets/SHARED_KEY", headers=bearer(admin_token))
    assert read.get_json() == {"data": {"key": "SHARED_KEY", "value": "from cli"}}
    assert read.headers["ETag"] == '"2"'

    events = audit_rows(cli, "--key", "SHARED_KEY")
    assert [(e["channel"], e["actor"], e["action"]) for e in events] == [
        ("rest", "admin", "read"),
        ("cli", OPERATOR, "update"),
        ("cli", OPERATOR, "read"),
        ("rest", "admin", "create"),
    ]
    assert {e["channel"] for e in events} == {"rest", "cli"}
