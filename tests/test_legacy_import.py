"""`secrets-hub import-legacy --from URL --legacy-secret S [--overwrite]` (SPEC.md sections 3, 6 and 10).

The legacy data is the seed app's `secrets` table as its own Node code wrote it: the rows of
fixtures/legacy/table.json were encrypted by the seed's crypto functions, copied verbatim into
fixtures/legacy/make_table.js. The table is built with the seed's schema in a database of its own,
on PostgreSQL (TIMESTAMPTZ, reached through a `postgres://` URL) or on SQLite (ISO 8601 text), and
imported into an instance on the same backend. The command runs in-process (`cli_in_process`).
"""

from __future__ import annotations

import getpass
import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from conftest import FIXTURES, MASTER_KEY
from secrets_hub import bootstrap
from secrets_hub.config import normalize_database_url
from secrets_hub.crypto import Keyring
from secrets_hub.models import Secret, SecretVersion

TABLE = json.loads((FIXTURES / "legacy" / "table.json").read_text())
SECRET = TABLE["secret"]
ROWS = {row["key"]: row for row in TABLE["rows"]}
FOREIGN, BAD_KEY = "FROM_ANOTHER_INSTALL", "lower-case-key"
GOOD = {key: row for key, row in ROWS.items() if key not in (FOREIGN, BAD_KEY)}
CHANGED = {row["key"]: row for row in TABLE["changed"]}
LEGACY_USER_ID = "3f0c1d2e-0000-4000-8000-00000000beef"
FAILURE_LINES = {f"failed: {FOREIGN}: does not decrypt with the legacy secret",
                 f"failed: {BAD_KEY}: Key must be SCREAMING_SNAKE_CASE (e.g., MY_API_KEY)"}
secrets_table, versions_table = Secret.__table__, SecretVersion.__table__

SQLITE_SCHEMA = [
    'CREATE TABLE "user" (id TEXT PRIMARY KEY, email TEXT NOT NULL)',
    """CREATE TABLE secrets (
      id TEXT PRIMARY KEY,
      key TEXT NOT NULL UNIQUE,
      encrypted_value TEXT NOT NULL,
      iv TEXT NOT NULL,
      description TEXT,
      created_at TEXT NOT NULL,
      updated_at TEXT NOT NULL,
      created_by TEXT REFERENCES "user"(id) ON DELETE SET NULL
    )""",
]
# The seed's DDL (seed/secrets-management.md), with its `user` table quoted as PostgreSQL requires.
POSTGRES_SCHEMA = [
    'CREATE TABLE "user" (id TEXT PRIMARY KEY, email TEXT NOT NULL)',
    """CREATE TABLE secrets (
      id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
      key TEXT NOT NULL UNIQUE,
      encrypted_value TEXT NOT NULL,
      iv TEXT NOT NULL,
      description TEXT,
      created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
      updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
      created_by TEXT REFERENCES "user"(id) ON DELETE SET NULL
    )""",
]


# --------------------------------------------------------------------------- helpers


def summary(created=0, updated=0, unchanged=0, skipped=0) -> str:
    return f"Imported: {created} created, {updated} updated, {unchanged} unchanged, {skipped} skipped"


def legacy_execute(url: str, *statements: tuple[str, dict[str, Any] | list[dict[str, Any]]]) -> None:
    engine = create_engine(normalize_database_url(url))
    try:
        with engine.begin() as connection:
            for sql, params in statements:
                connection.execute(text(sql), params)
    finally:
        engine.dispose()


def legacy_database(url: str, backend: str, rows: list[dict[str, Any]]) -> str:
    """The seed's tables at `url`, holding `rows`; returns the URL to give --from."""
    schema = POSTGRES_SCHEMA if backend == "postgresql" else SQLITE_SCHEMA
    legacy_execute(url, *[(sql, {}) for sql in schema],
                   ('INSERT INTO "user" (id, email) VALUES (:id, :email)', {"id": LEGACY_USER_ID, "email": "x@seed"}))
    insert_rows(url, backend, rows)
    return url.replace("postgresql://", "postgres://", 1)  # the seed's own spelling works too


INSERT_ROW = {
    "sqlite": "INSERT INTO secrets (id, key, encrypted_value, iv, description, created_at, updated_at, created_by) "
              "VALUES (lower(hex(randomblob(16))), :key, :encrypted_value, :iv, :description, :created_at, :updated_at, "
              ":created_by)",
    "postgresql": "INSERT INTO secrets (key, encrypted_value, iv, description, created_at, updated_at, created_by) "
                  "VALUES (:key, :encrypted_value, :iv, :description, CAST(:created_at AS TIMESTAMPTZ), "
                  "CAST(:updated_at AS TIMESTAMPTZ), :created_by)",
}


def insert_rows(url: str, backend: str, rows: list[dict[str, Any]]) -> None:
    columns = ("key", "encrypted_value", "iv", "description", "created_at", "updated_at")
    legacy_execute(url, (INSERT_ROW[backend], [{**{name: row[name] for name in columns}, "created_by": LEGACY_USER_ID}
                                               for row in rows]))


@pytest.fixture
def legacy_url(backend: str, other_database_url: str) -> str:
    return legacy_database(other_database_url, backend, TABLE["rows"])


@pytest.fixture
def instance(config: dict[str, Any]) -> dict[str, Any]:
    bootstrap.initialize(config)
    return config


def stored(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every secret in the instance: its row (times as UTC datetimes) and value, and its versions' values."""
    engine = create_engine(normalize_database_url(config["DATABASE_URL"]))
    keyring = Keyring.from_master(MASTER_KEY)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(secrets_table)).mappings().all()
            versions = connection.execute(
                select(secrets_table.c.key, versions_table).join(
                    versions_table, versions_table.c.secret_id == secrets_table.c.id)).mappings().all()
    finally:
        engine.dispose()
    out = {row["key"]: {**row, "value": keyring.decrypt(row["encrypted_value"], row["iv"], row["key_id"], row["key"]),
                        "versions": {}} for row in rows}
    for version in versions:
        out[version["key"]]["versions"][version["version"]] = keyring.decrypt(
            version["encrypted_value"], version["iv"], version["key_id"], version["key"])
    return out


def import_events(config: dict[str, Any]) -> list[tuple]:
    engine = create_engine(normalize_database_url(config["DATABASE_URL"]))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(
                "SELECT actor, channel, key, outcome FROM audit_events WHERE action = 'import' ORDER BY id"))]
    finally:
        engine.dispose()


def run_import(cli_in_process, url: str, *options: str, secret: str = SECRET) -> subprocess.CompletedProcess:
    result = cli_in_process("import-legacy", "--from", url, "--legacy-secret", secret, *options)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    for row in TABLE["rows"] + TABLE["changed"]:  # never a value in a message
        assert len(row["plaintext"]) < 8 or row["plaintext"] not in result.stderr
    return result


def lines_of(result: subprocess.CompletedProcess) -> tuple[list[str], set[str]]:
    """The progress label and summary, in order; and the failure lines (their order follows the table's collation)."""
    lines = result.stderr.splitlines()
    return [line for line in lines if not line.startswith("failed: ")], {line for line in lines if line.startswith("failed: ")}


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


# --------------------------------------------------------------------------- the import


def test_every_readable_row_is_imported_with_its_times_and_the_rest_reported_by_key(instance, legacy_url,
                                                                                     cli_in_process):
    result = run_import(cli_in_process, legacy_url)

    assert result.returncode == 1  # some rows failed, after the rest were imported
    assert lines_of(result) == (["Importing", summary(created=6)], FAILURE_LINES)
    held = stored(instance)
    assert set(held) == set(GOOD)
    for key, row in GOOD.items():
        secret = held[key]
        assert secret["value"] == row["plaintext"], key
        assert secret["description"] == row["description"], key
        assert secret["created_at"] == at(row["created_at"]), key
        assert secret["updated_at"] == at(row["updated_at"]), key
        assert secret["created_by"] is None, key  # the seed's users are not ours
        assert secret["current_version"] == 1 and secret["versions"] == {1: row["plaintext"]}, key
    # PEM_KEY's times were written with a +02:00 offset: kept as the same instant.
    assert held["PEM_KEY"]["created_at"].isoformat() == "2024-05-05T10:00:00+00:00"
    # The values read back through the CLI as well, byte for byte.
    assert cli_in_process("get", "PEM_KEY").stdout == GOOD["PEM_KEY"]["plaintext"] + "\n"

    operator_name = getpass.getuser()
    events = import_events(instance)
    assert sorted(events) == sorted([(operator_name, "cli", key, "ok") for key in GOOD]
                                    + [(operator_name, "cli", FOREIGN, "failed")])


def test_a_second_run_changes_nothing_and_overwrite_replaces_only_what_differs(instance, legacy_url, backend,
                                                                               other_database_url, cli_in_process):
    local = ("local-value-kept-until-overwrite", "set here before the import")
    result = cli_in_process("set", "OPENAI_API_KEY", "--description", local[1], input=local[0])
    assert result.returncode == 0, result.stderr

    first = run_import(cli_in_process, legacy_url)
    assert first.returncode == 1
    assert lines_of(first) == (["Importing", summary(created=5, skipped=1)], FAILURE_LINES)
    held = stored(instance)
    assert (held["OPENAI_API_KEY"]["value"], held["OPENAI_API_KEY"]["description"]) == local  # not overwritten

    # Again: nothing changes at all, not one ciphertext, no new version.
    second = run_import(cli_in_process, legacy_url)
    assert second.returncode == 1
    assert lines_of(second) == (["Importing", summary(skipped=6)], FAILURE_LINES)
    assert stored(instance) == held

    # --overwrite replaces the existing secret that differs (a new version), and leaves identical ones alone.
    third = run_import(cli_in_process, legacy_url, "--overwrite")
    assert lines_of(third) == (["Importing", summary(updated=1, unchanged=5)], FAILURE_LINES)
    after = stored(instance)
    openai = after.pop("OPENAI_API_KEY")
    assert openai["value"] == GOOD["OPENAI_API_KEY"]["plaintext"]
    assert openai["description"] == GOOD["OPENAI_API_KEY"]["description"]
    assert openai["current_version"] == 2 and openai["versions"] == {1: local[0], 2: GOOD["OPENAI_API_KEY"]["plaintext"]}
    assert after == {key: value for key, value in held.items() if key != "OPENAI_API_KEY"}

    fourth = run_import(cli_in_process, legacy_url, "--overwrite")
    assert lines_of(fourth) == (["Importing", summary(unchanged=6)], FAILURE_LINES)
    assert stored(instance) == {**after, "OPENAI_API_KEY": openai}

    # The seed changed one value since: --overwrite brings that one change, as one new version.
    legacy_execute(other_database_url, ("UPDATE secrets SET encrypted_value = :encrypted_value, iv = :iv WHERE key = :key",
                                        {name: CHANGED["OPENAI_API_KEY"][name] for name in ("encrypted_value", "iv", "key")}))
    fifth = run_import(cli_in_process, legacy_url, "--overwrite")
    assert lines_of(fifth) == (["Importing", summary(updated=1, unchanged=5)], FAILURE_LINES)
    final = stored(instance)
    changed = final.pop("OPENAI_API_KEY")
    assert changed["current_version"] == 3
    assert changed["versions"] == {1: local[0], 2: GOOD["OPENAI_API_KEY"]["plaintext"],
                                   3: CHANGED["OPENAI_API_KEY"]["plaintext"]}
    assert final == after

    outcomes = [(key, outcome) for _, channel, key, outcome in import_events(instance) if key == "OPENAI_API_KEY"]
    assert outcomes == [("OPENAI_API_KEY", "skipped"), ("OPENAI_API_KEY", "skipped"), ("OPENAI_API_KEY", "ok"),
                        ("OPENAI_API_KEY", "unchanged"), ("OPENAI_API_KEY", "ok")]
    assert {channel for _, channel, _, _ in import_events(instance)} == {"cli"}


def test_exit_status_is_0_when_every_row_is_imported(instance, backend, other_database_url, cli_in_process):
    url = legacy_database(other_database_url, backend, list(GOOD.values()))
    result = run_import(cli_in_process, url)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["Importing", summary(created=6)]
    assert {key: secret["value"] for key, secret in stored(instance).items()} == {
        key: row["plaintext"] for key, row in GOOD.items()}


def test_the_wrong_legacy_secret_imports_nothing(instance, legacy_url, cli_in_process):
    result = run_import(cli_in_process, legacy_url, secret=TABLE["other_secret"])
    assert result.returncode == 1
    # Only the row sealed under that other secret opens with it.
    lines, failures = lines_of(result)
    assert lines == ["Importing", summary(created=1)]
    assert failures == {f"failed: {key}: does not decrypt with the legacy secret" for key in GOOD} | {
        f"failed: {BAD_KEY}: does not decrypt with the legacy secret"}
    assert {key: secret["value"] for key, secret in stored(instance).items()} == {FOREIGN: ROWS[FOREIGN]["plaintext"]}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_unreadable_source_is_one_line(instance, tmp_path: Path, cli_in_process):
    empty = tmp_path / "no-secrets-table.db"
    legacy_execute(f"sqlite:///{empty}", ("CREATE TABLE other (id INTEGER)", {}))
    for url, message in ((f"sqlite:///{empty}", "Cannot read the secrets table at the legacy database: "),
                         ("not a url", "--from must be a database URL")):
        result = run_import(cli_in_process, url)
        assert result.returncode != 0
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {message}"), result.stderr
    assert stored(instance) == {}


def seed_crypto(script: Path) -> str:
    """The block of a generator script that holds the seed's crypto code, from its `require` to `decryptSecret`'s end."""
    source = script.read_text()
    start = source.index("const { createCipheriv")
    return source[start:source.index("\n}\n", source.index("function decryptSecret", start)) + 3]


def test_the_fixture_was_made_by_the_seeds_own_crypto_code():
    # make_table.js carries the same verbatim copy of the seed's functions as make_vector.js (see test_crypto.py).
    legacy = FIXTURES / "legacy"
    assert seed_crypto(legacy / "make_table.js") == seed_crypto(legacy / "make_vector.js")
    assert "function encryptSecret(plaintext)" in seed_crypto(legacy / "make_table.js")
    assert TABLE["salt"] == "second-brain-secrets-salt"
