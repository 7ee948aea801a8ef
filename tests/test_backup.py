"""`secrets-hub backup FILE` and `secrets-hub restore FILE` (SPEC.md sections 3, 6 and 10), on SQLite and PostgreSQL.

A source instance is filled through the service layer (secrets with descriptions and versions, users,
tokens), backed up by the CLI, and restored by the CLI into a second, empty instance with the same
master secret; the restored instance is then checked row by row, through its REST API (an old token)
and its login page (an old user). The commands run in-process (conftest's `cli_in_process`).
"""

from __future__ import annotations

import getpass
import gzip
import json
import re
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, text

from conftest import MASTER_KEY, bearer, ok, one_error_line
from secrets_hub import bootstrap, service, users
from secrets_hub.app import create_app
from secrets_hub.auth import caller_for_user, operator
from secrets_hub.config import normalize_database_url
from secrets_hub.crypto import Keyring
from secrets_hub.db import db

MAGIC = b"secrets-hub backup v1\n"
HEADER = len(MAGIC) + 16 + 12  # magic, backup key id, nonce
OTHER_MASTER_KEY = "some-other-installation-master-secret-0123456789"
ADMIN_EMAIL, ADMIN_PASSWORD = "ops@example.com", "correct horse battery staple"
MEMBER_EMAIL, MEMBER_PASSWORD = "member@example.com", "another long passphrase"
COMPRESSIBLE = "A" * 60000  # 60 kB that gzip makes tiny; encryption alone would not


# --------------------------------------------------------------------------- helpers






def query(url: str, sql: str, **params: Any) -> list[tuple]:
    engine = create_engine(normalize_database_url(url))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def contents(url: str) -> dict[str, list[tuple]]:
    """What a backup promises to carry, as comparable rows: values decrypted, storage details left out."""
    keyring = Keyring.from_master(MASTER_KEY)
    secrets = query(url, "SELECT key, encrypted_value, iv, key_id, id, description, created_at, updated_at, "
                         "created_by, current_version FROM secrets")
    versions = query(url, "SELECT s.key, v.encrypted_value, v.iv, v.key_id, v.version, v.created_at, v.created_by "
                          "FROM secret_versions v JOIN secrets s ON s.id = v.secret_id")
    return {
        "secrets": sorted((row[0], keyring.decrypt(row[1], row[2], row[3], row[0]), *row[4:]) for row in secrets),
        "versions": sorted((row[0], keyring.decrypt(row[1], row[2], row[3], row[0]), *row[4:]) for row in versions),
        "users": sorted(query(url, "SELECT id, email, password_hash, is_admin, created_at FROM users")),
        "tokens": sorted(query(url, "SELECT name, token_hash, scopes, allow, created_at, created_by, last_used_at, "
                                    "expires_at FROM api_tokens")),
    }


def everything(url: str) -> dict[str, list[tuple]]:
    """Every row of every table a restore writes, exactly as stored."""
    return {table: sorted(query(url, f"SELECT * FROM {table}"), key=repr)  # noqa: S608 - our own table names
            for table in ("secrets", "secret_versions", "users", "api_tokens")}


def audit_events(url: str, action: str) -> list[tuple]:
    return query(url, "SELECT actor, channel, action, key, outcome FROM audit_events WHERE action = :action", action=action)


def login(client, email: str, password: str):
    """Sign in through the login form (with its CSRF token); the response."""
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": csrf})


@pytest.fixture
def source(app, make_token) -> dict[str, Any]:
    """An instance holding secrets (with versions, descriptions, one pruned history), users and tokens."""
    from datetime import timedelta

    values: dict[str, list[str]] = {
        "API_KEY": ["api-key-first", "api-key-second \"quoted\"", "api-key-third \\ back"],
        "UNICODE_PASSWORD": ["pässwörd-✓-密码-🔑"],
        "MULTILINE": ["-----BEGIN-----\nabc\n-----END-----\n"],
        "COMPRESSIBLE": [COMPRESSIBLE],
        "PRUNED": [f"pruned-{n}" for n in range(1, 24)],  # 23 versions, of which the newest 20 are kept
    }
    descriptions = {"API_KEY": "the API key", "UNICODE_PASSWORD": "Ünïcödé ✓", "MULTILINE": None,
                    "COMPRESSIBLE": "", "PRUNED": "long history"}
    with app.app_context():
        admin = users.create_user(operator("tests"), ADMIN_EMAIL, ADMIN_PASSWORD, is_admin=True)
        users.create_user(operator("tests"), MEMBER_EMAIL, MEMBER_PASSWORD, is_admin=False)
        person = caller_for_user(admin, "ui", "127.0.0.1")
        for key, history in values.items():
            caller = person if key == "API_KEY" else operator("tests")  # created_by: a user, or none
            service.create_secret(caller, key, history[0], descriptions[key])
            for value in history[1:]:
                service.update_secret(caller, key, value=value)
    tokens = {
        "reader": make_token("secrets:read", allow=["API_*", "UNICODE_*"], name="reader"),
        "admin": make_token("secrets:read", "secrets:write", "admin", name="admin"),
        "expiring": make_token("secrets:read", expires_in=timedelta(days=30), name="expiring"),
    }
    client = app.test_client()
    assert client.get("/api/secrets", headers=bearer(tokens["admin"])).status_code == 200  # sets last_used_at
    return {"values": values, "descriptions": descriptions, "tokens": tokens}


@pytest.fixture
def target(tmp_path: Path, other_database_url: str, config: dict[str, Any]) -> dict[str, str]:
    """A second instance, initialised and empty, with the same master secret: the environment that selects it."""
    settings = {"SECRETS_HUB_INSTANCE_PATH": str(tmp_path / "restored-instance"), "DATABASE_URL": other_database_url}
    bootstrap.initialize({**config, **settings})
    return settings


@pytest.fixture
def target_app(config, target) -> Iterator[Any]:
    app = create_app({**config, **target, "TESTING": True})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def backup_file(source, cli_in_process, tmp_path: Path) -> Path:
    folder = tmp_path / "backups"
    folder.mkdir()
    path = folder / "hub.backup"
    result = ok(cli_in_process("backup", str(path)))
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["Backing up", f"Wrote {path}: 5 secrets, 2 users, 3 tokens"]
    return path


@pytest.fixture
def plain_backup(config, cli_in_process, tmp_path: Path) -> Path:
    """A backup of a small instance (one secret), for the refusals."""
    bootstrap.initialize(config)
    ok(cli_in_process("set", "PLAIN_SECRET", "--description", "one of one", input="plain-value"))
    path = tmp_path / "plain.backup"
    ok(cli_in_process("backup", str(path)))
    return path


def empty(url: str) -> dict[str, list[tuple]]:
    held = everything(url)
    assert held == {"secrets": [], "secret_versions": [], "users": [], "api_tokens": []}
    return held


# --------------------------------------------------------------------------- the file


def test_backup_is_one_private_encrypted_compressed_file(source, backup_file, config):
    assert sorted(p.name for p in backup_file.parent.iterdir()) == ["hub.backup"]  # no partial file left beside it
    assert stat.S_IMODE(backup_file.stat().st_mode) == 0o600
    data = backup_file.read_bytes()
    assert data.startswith(MAGIC)

    # Nothing readable inside: no value, key, description, email, token, token or password hash, in any spelling.
    url = config["DATABASE_URL"]
    held = contents(url)
    needles = {key for key in source["values"]} | {v for history in source["values"].values() for v in history}
    needles |= {d for d in source["descriptions"].values() if d} | {ADMIN_EMAIL, MEMBER_EMAIL}
    needles |= set(source["tokens"].values()) | {row[1] for row in held["tokens"]} | {row[2] for row in held["users"]}
    needles |= set(source["tokens"])  # their names
    for needle in needles:
        for spelling in {needle, json.dumps(needle)[1:-1]}:
            assert spelling.encode() not in data, f"{spelling[:40]!r} is in the backup file in clear"
    with pytest.raises(OSError):
        gzip.decompress(data)  # not merely compressed
    # ... but compressed before it was encrypted: 60 kB of one letter take a few hundred bytes.
    assert len(data) < 8000, len(data)


# --------------------------------------------------------------------------- restoring


def test_restore_brings_back_every_secret_version_token_and_user(source, backup_file, cli_in_process, config,
                                                                  target, target_app):
    empty(target["DATABASE_URL"])

    result = ok(cli_in_process("restore", str(backup_file), env=target))

    assert result.stdout == ""
    assert result.stderr.splitlines() == ["Restoring", f"Restored 5 secrets, 2 users, 3 tokens from {backup_file}"]
    operator_name = getpass.getuser()
    assert audit_events(config["DATABASE_URL"], "backup") == [(operator_name, "cli", "backup", None, "ok")]
    assert audit_events(target["DATABASE_URL"], "restore_backup") == [(operator_name, "cli", "restore_backup", None, "ok")]
    restored, original = contents(target["DATABASE_URL"]), contents(config["DATABASE_URL"])
    # Row for row: ids, values, descriptions, timestamps, creators, version numbers, token and user records.
    assert restored == original
    assert sorted(row[2] for row in restored["versions"] if row[0] == "PRUNED") == list(range(4, 24))
    assert {row[0]: row[1] for row in restored["secrets"]} == {k: v[-1] for k, v in source["values"].items()}
    assert {row[0]: row[3] for row in restored["secrets"]} == source["descriptions"]
    assert set(query(target["DATABASE_URL"], "SELECT DISTINCT key_id FROM secrets")) == {(Keyring.from_master(MASTER_KEY).key_id,)}

    # Through the restored instance's own doors: an old token over REST, old users on the login page.
    client = target_app.test_client()
    response = client.get("/api/secrets/UNICODE_PASSWORD", headers=bearer(source["tokens"]["reader"]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"data": {"key": "UNICODE_PASSWORD", "value": "pässwörd-✓-密码-🔑"}}
    response = client.get("/api/secrets/API_KEY?version=1", headers=bearer(source["tokens"]["reader"]))
    assert response.get_json() == {"data": {"key": "API_KEY", "value": "api-key-first"}}
    response = client.get("/api/secrets/PRUNED", headers=bearer(source["tokens"]["reader"]))
    assert response.status_code == 403  # the token's --allow globs came back too
    listed = client.get("/api/secrets", headers=bearer(source["tokens"]["admin"])).get_json()["data"]
    assert [row["key"] for row in listed] == sorted(source["values"])
    assert client.get("/api/secrets", headers=bearer("shub_" + "x" * 43)).status_code == 401

    for email, password in ((ADMIN_EMAIL, ADMIN_PASSWORD), (MEMBER_EMAIL, MEMBER_PASSWORD)):
        person = target_app.test_client()
        assert login(person, email, "not the password").status_code != 302
        signed_in = login(person, email, password)
        assert signed_in.status_code == 302 and signed_in.headers["Location"].endswith("/settings")
        assert person.get("/settings").status_code == 200


def test_restore_into_a_non_empty_instance_is_refused_and_changes_nothing(plain_backup, cli_in_process, target):
    ok(cli_in_process("set", "ALREADY_HERE", input="mine", env=target))
    before = everything(target["DATABASE_URL"])

    result = cli_in_process("restore", str(plain_backup), env=target)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert everything(target["DATABASE_URL"]) == before
    assert result.stderr.splitlines() == [
        "Error: Restore needs an empty instance; this one holds 1 secrets, 0 users and 0 tokens"
    ], "the refusal must be one line on stderr"


def test_restore_into_an_instance_with_only_a_user_is_refused(plain_backup, cli_in_process, target):
    ok(cli_in_process("user", "create", "--email", "first@example.com", "--password-stdin",
                      input="a perfectly fine password\n", env=target))
    before = everything(target["DATABASE_URL"])
    result = cli_in_process("restore", str(plain_backup), env=target)
    assert result.returncode != 0
    assert everything(target["DATABASE_URL"]) == before
    assert "Restore needs an empty instance" in result.stderr


def damaged_copies(data: bytes) -> dict[str, bytes]:
    middle = len(data) // 2
    flips = {"magic": 3, "backup key id": len(MAGIC) + 5, "nonce": len(MAGIC) + 16 + 4, "first body byte": HEADER,
             "middle": middle, "last ciphertext byte": len(data) - 17, "tag": len(data) - 1}
    copies = {f"one bit flipped in the {where}": data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
              for where, at in flips.items()}
    copies.update({
        "truncated to nothing": b"",
        "truncated inside the magic": data[:10],
        "truncated after the header": data[:HEADER],
        "truncated in the middle": data[:middle],
        "one byte short": data[:-1],
        "one byte too many": data + b"\x00",
    })
    return copies


def test_a_damaged_file_is_refused_with_one_line_and_restores_nothing(plain_backup, cli_in_process, tmp_path, target):
    url = target["DATABASE_URL"]
    empty(url)
    for damage, data in damaged_copies(plain_backup.read_bytes()).items():
        path = tmp_path / "damaged.backup"
        path.write_bytes(data)
        line = one_error_line(cli_in_process("restore", str(path), env=target))
        assert str(path) in line, (damage, line)
        assert ("damaged" in line or "not a secrets-hub backup file" in line
                or (damage == "one bit flipped in the backup key id" and "another master secret" in line)), (damage, line)
        empty(url)
    ok(cli_in_process("restore", str(plain_backup), env=target))  # the intact file still restores
    assert query(url, "SELECT key, description FROM secrets") == [("PLAIN_SECRET", "one of one")]


def test_a_file_made_under_another_master_secret_is_refused(plain_backup, cli_in_process, tmp_path, target):
    # The same instance, backed up by an operator who already moved to another master secret.
    path = tmp_path / "foreign.backup"
    ok(cli_in_process("backup", str(path), env={"SECRETS_HUB_MASTER_KEY": OTHER_MASTER_KEY,
                                                 "SECRETS_HUB_OLD_MASTER_KEYS": MASTER_KEY}))
    line = one_error_line(cli_in_process("restore", str(path), env=target))
    assert line.startswith(f"Error: {path} was made under another master secret"), line
    empty(target["DATABASE_URL"])


@pytest.mark.parametrize("content", ["dotenv", "gzip json", "magic only", "missing"])
def test_a_file_that_is_not_a_backup_is_refused(content, cli_in_process, tmp_path, target):
    path = tmp_path / "not-a-backup"
    if content == "dotenv":
        path.write_text('API_KEY="value"\n')
    elif content == "gzip json":
        path.write_bytes(gzip.compress(json.dumps({"format": "secrets-hub-backup", "version": 1, "users": [],
                                                   "tokens": [], "secrets": []}).encode()))
    elif content == "magic only":
        path.write_bytes(MAGIC)
    line = one_error_line(cli_in_process("restore", str(path), env=target))
    assert str(path) in line
    expected = "Cannot read" if content == "missing" else "is not a secrets-hub backup file"
    assert expected in line, line
    empty(target["DATABASE_URL"])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_backup_into_a_missing_folder_is_one_clear_line(config, cli_in_process, tmp_path: Path):
    bootstrap.initialize(config)
    path = tmp_path / "no-such-folder" / "hub.backup"
    result = cli_in_process("backup", str(path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert not path.parent.exists()
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert str(path.parent) in lines[0], "the line should name what is missing"
