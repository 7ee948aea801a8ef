"""Storage behaviour through public interfaces, on SQLite and PostgreSQL: tamper and row-swap detection,
the key check, the master key file, migrations, foreign keys and `postgres://` URLs."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import stat
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, func, inspect, select, text, update
from sqlalchemy.engine import Engine

from conftest import MASTER_KEY, SECRETS_HUB, bearer, cli_env, free_port, hold_sqlite_writer_lock
from secrets_hub import bootstrap, service, users
from secrets_hub.app import create_app
from secrets_hub.auth import caller_for_user
from secrets_hub.config import load_settings, normalize_database_url
from secrets_hub.crypto import Keyring
from secrets_hub.db import db, engine_options
from secrets_hub.errors import ConfigError
from secrets_hub.models import Secret, SecretVersion, User

SEED_COLUMNS = {"id", "key", "encrypted_value", "iv", "description", "created_at", "updated_at", "created_by"}
TABLES = {"secrets", "secret_versions", "users", "api_tokens", "audit_events", "secrets_hub_meta", "alembic_version"}


def flip_hex(text_value: str, index: int) -> str:
    digit = text_value[index]
    return text_value[:index] + ("1" if digit == "0" else "0") + text_value[index + 1:]


def integrity_error(key: str) -> dict[str, Any]:
    return {"statusCode": 500, "message": f'Secret "{key}" failed its integrity check'}


def create(client, token: str, key: str, value: str, description: str | None = None) -> dict[str, Any]:
    body = {"key": key, "value": value}
    if description is not None:
        body["description"] = description
    response = client.post("/api/secrets", json=body, headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def secret_row(app, key: str) -> Any:
    with app.app_context():
        return db.session.execute(select(Secret.__table__).where(Secret.key == key)).mappings().one()


def edit_secret_row(app, key: str, **values: Any) -> None:
    with app.app_context():
        result = db.session.execute(update(Secret).where(Secret.key == key).values(**values))
        assert result.rowcount == 1
        db.session.commit()


def audit_events(client, token: str, key: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/audit?key={key}", headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def _engines() -> dict[int, Engine]:
    return {id(obj): obj for obj in gc.get_objects() if isinstance(obj, Engine)}


def refused_start(overrides: dict[str, Any]) -> str:
    """create_app(overrides) must raise ConfigError; its message.

    The half-built app's engine outlives it (held by event listeners), so close its pool here: an open
    psycopg connection left for the garbage collector fails the run under `filterwarnings = error`.
    """
    before = _engines()
    message = None
    try:
        create_app(overrides)
    except ConfigError as error:
        message = str(error)
    finally:
        for engine_id, engine in _engines().items():
            if engine_id not in before:
                engine.dispose()
    assert message is not None, "create_app accepted a master key that does not open the database"
    return message


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---- tamper and row-swap detection -----------------------------------------------------------------


@pytest.mark.parametrize("part", ["ciphertext", "tag", "iv", "key_id"])
def test_tampered_row_fails_its_integrity_check_and_listing_still_works(app, client, admin_token, part):
    create(client, admin_token, "TAMPER_ME", "original-value", "to be tampered with")
    create(client, admin_token, "UNTOUCHED", "still-fine")
    row = secret_row(app, "TAMPER_ME")
    ciphertext, tag = row["encrypted_value"].split(":")
    changes = {
        "ciphertext": {"encrypted_value": f"{flip_hex(ciphertext, 0)}:{tag}"},
        "tag": {"encrypted_value": f"{ciphertext}:{flip_hex(tag, len(tag) - 1)}"},
        "iv": {"iv": flip_hex(row["iv"], 2)},
        "key_id": {"key_id": "0000000000000000"},
    }[part]
    edit_secret_row(app, "TAMPER_ME", **changes)

    read = client.get("/api/secrets/TAMPER_ME", headers=bearer(admin_token))
    assert read.status_code == 500
    assert read.get_json() == integrity_error("TAMPER_ME")
    assert "original-value" not in read.get_data(as_text=True)

    listing = client.get("/api/secrets", headers=bearer(admin_token))
    assert listing.status_code == 200
    listed = {item["key"]: item for item in listing.get_json()["data"]}
    assert sorted(listed) == ["TAMPER_ME", "UNTOUCHED"]
    assert listed["TAMPER_ME"]["description"] == "to be tampered with"

    # Only that one read fails.
    other = client.get("/api/secrets/UNTOUCHED", headers=bearer(admin_token))
    assert other.status_code == 200
    assert other.get_json() == {"data": {"key": "UNTOUCHED", "value": "still-fine"}}

    events = audit_events(client, admin_token, "TAMPER_ME")
    failed = [e for e in events if e["outcome"] == "integrity_failed"]
    assert len(failed) == 1
    assert failed[0]["action"] == "read"
    assert failed[0]["channel"] == "rest"
    assert failed[0]["actor"] == "admin"
    assert failed[0]["key"] == "TAMPER_ME"


def test_tampered_row_through_the_cli_is_one_line(app, client, admin_token, run_cli):
    create(client, admin_token, "TAMPER_CLI", "original-value")
    row = secret_row(app, "TAMPER_CLI")
    edit_secret_row(app, "TAMPER_CLI", encrypted_value=flip_hex(row["encrypted_value"], 1))
    result = run_cli("get", "TAMPER_CLI")
    assert result.returncode != 0
    assert result.stdout == ""
    assert one_line(result.stderr) == 'Error: Secret "TAMPER_CLI" failed its integrity check'
    listed = run_cli("list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["TAMPER_CLI\t"]


def test_row_swap_fails_the_integrity_check(app, client, admin_token):
    create(client, admin_token, "SECRET_A", "value-of-a")
    create(client, admin_token, "SECRET_B", "value-of-b")
    b = secret_row(app, "SECRET_B")
    edit_secret_row(app, "SECRET_A", encrypted_value=b["encrypted_value"], iv=b["iv"], key_id=b["key_id"])

    swapped = client.get("/api/secrets/SECRET_A", headers=bearer(admin_token))
    assert swapped.status_code == 500
    assert swapped.get_json() == integrity_error("SECRET_A")
    assert "value-of-b" not in swapped.get_data(as_text=True)

    intact = client.get("/api/secrets/SECRET_B", headers=bearer(admin_token))
    assert intact.status_code == 200
    assert intact.get_json() == {"data": {"key": "SECRET_B", "value": "value-of-b"}}

    assert [e["outcome"] for e in audit_events(client, admin_token, "SECRET_A") if e["action"] == "read"] == \
        ["integrity_failed"]


def test_tampered_version_row_fails_only_that_version(app, client, admin_token):
    created = create(client, admin_token, "VERSIONED", "first-value")
    updated = client.put("/api/secrets/VERSIONED", json={"value": "second-value"}, headers=bearer(admin_token))
    assert updated.status_code == 200
    with app.app_context():
        row = db.session.execute(select(SecretVersion.__table__).where(
            SecretVersion.secret_id == created["id"], SecretVersion.version == 1)).mappings().one()
        result = db.session.execute(update(SecretVersion).where(SecretVersion.id == row["id"]).values(
            encrypted_value=flip_hex(row["encrypted_value"], 0)))
        assert result.rowcount == 1
        db.session.commit()

    old = client.get("/api/secrets/VERSIONED?version=1", headers=bearer(admin_token))
    assert old.status_code == 500
    assert old.get_json() == integrity_error("VERSIONED")

    v2 = client.get("/api/secrets/VERSIONED?version=2", headers=bearer(admin_token))
    assert v2.status_code == 200
    assert v2.get_json() == {"data": {"key": "VERSIONED", "value": "second-value"}}
    current = client.get("/api/secrets/VERSIONED", headers=bearer(admin_token))
    assert current.status_code == 200
    assert current.get_json() == {"data": {"key": "VERSIONED", "value": "second-value"}}

    # Restoring the damaged version fails the same way and changes nothing.
    restore = client.post("/api/secrets/VERSIONED/restore", json={"version": 1}, headers=bearer(admin_token))
    assert restore.status_code == 500
    assert restore.get_json() == integrity_error("VERSIONED")
    versions = client.get("/api/secrets/VERSIONED/versions", headers=bearer(admin_token)).get_json()["data"]
    assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
    assert client.get("/api/secrets/VERSIONED", headers=bearer(admin_token)).get_json()["data"]["value"] == \
        "second-value"


# ---- a wrong master key refuses to start -----------------------------------------------------------


def test_create_app_with_wrong_master_key_raises_config_error(config):
    bootstrap.initialize(config)
    message = refused_start({**config, "SECRETS_HUB_MASTER_KEY": "another"})
    assert "\n" not in message
    assert "master key" in message.lower()
    assert "another" not in message
    assert MASTER_KEY not in message
    # The refusal changed nothing: the right key still opens the database.
    app = create_app(config)
    with app.app_context():
        db.engine.dispose()


def test_initialize_with_wrong_master_key_raises_config_error(config):
    bootstrap.initialize(config)
    with pytest.raises(ConfigError) as raised:
        bootstrap.initialize({**config, "SECRETS_HUB_MASTER_KEY": "another"})
    assert "\n" not in str(raised.value)
    assert "master key" in str(raised.value).lower()


@pytest.mark.parametrize("args", [("list",), ("get", "EXISTING"), ("init",), ("token", "list")])
def test_cli_with_wrong_master_key_exits_with_one_line(config, run_cli, args):
    bootstrap.initialize(config)
    stored = run_cli("set", "EXISTING", input="stored-value\n")
    assert stored.returncode == 0, stored.stderr

    result = run_cli(*args, env={"SECRETS_HUB_MASTER_KEY": "another"})
    assert result.returncode != 0
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "master key" in line.lower()
    assert "another" not in result.stderr


def test_serve_with_wrong_master_key_exits_with_one_line(config, tmp_path):
    bootstrap.initialize(config)
    env = {**cli_env(config), "SECRETS_HUB_MASTER_KEY": "another"}
    process = subprocess.Popen([*SECRETS_HUB, "serve", "--port", str(free_port())], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("secrets-hub serve kept running with a wrong master key")
    assert process.returncode != 0
    assert stdout == ""
    line = one_line(stderr)
    assert "master key" in line.lower()


# ---- the master key file and BETTER_AUTH_SECRET ----------------------------------------------------


@pytest.fixture
def keyless_config(config, monkeypatch, tmp_path) -> dict[str, Any]:
    """The test settings without any master secret, in the environment or in a stray .env file."""
    for name in ("SECRETS_HUB_MASTER_KEY", "BETTER_AUTH_SECRET", "SECRETS_HUB_OLD_MASTER_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return {k: v for k, v in config.items() if k != "SECRETS_HUB_MASTER_KEY"}


def test_master_key_file_is_generated_0600_and_reused(keyless_config, capsys):
    key_file = Path(keyless_config["SECRETS_HUB_INSTANCE_PATH"]) / "master.key"
    assert not key_file.exists()

    settings = bootstrap.initialize(keyless_config)
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    generated = key_file.read_text().strip()
    assert len(generated) >= 32
    assert settings.master_key == generated
    assert settings.master_key_source == str(key_file)
    first_run = capsys.readouterr()
    assert str(key_file) in first_run.err
    assert "back up" in first_run.err.lower()
    assert generated not in first_run.err + first_run.out

    again = bootstrap.initialize(keyless_config)
    assert again.master_key == generated
    assert key_file.read_text().strip() == generated
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "back up" not in capsys.readouterr().err.lower()

    app = create_app(keyless_config)
    try:
        with app.app_context():
            assert app.extensions["secrets_hub"].keyring.key_id == Keyring.from_master(generated).key_id
            rows = db.session.execute(text("SELECT value FROM secrets_hub_meta")).scalars().all()
            assert all(generated not in value for value in rows)
    finally:
        with app.app_context():
            db.engine.dispose()


def test_better_auth_secret_is_accepted_as_master_secret(keyless_config, monkeypatch):
    monkeypatch.setenv("BETTER_AUTH_SECRET", "seed-better-auth-secret")
    key_file = Path(keyless_config["SECRETS_HUB_INSTANCE_PATH"]) / "master.key"

    settings = bootstrap.initialize(keyless_config)
    assert settings.master_key == "seed-better-auth-secret"
    assert settings.master_key_source == "BETTER_AUTH_SECRET"
    assert not key_file.exists()

    app = create_app(keyless_config)
    try:
        assert app.extensions["secrets_hub"].keyring.key_id == Keyring.from_master("seed-better-auth-secret").key_id
    finally:
        with app.app_context():
            db.engine.dispose()

    # The same secret given as SECRETS_HUB_MASTER_KEY opens the same database...
    same = create_app({**keyless_config, "SECRETS_HUB_MASTER_KEY": "seed-better-auth-secret"})
    with same.app_context():
        db.engine.dispose()
    # ...and SECRETS_HUB_MASTER_KEY takes precedence over BETTER_AUTH_SECRET.
    assert "master key" in refused_start({**keyless_config, "SECRETS_HUB_MASTER_KEY": "something-else"}).lower()


# ---- migrations and the schema ---------------------------------------------------------------------


def _engine(config: dict[str, Any]):
    url = load_settings(config).database_url
    return create_engine(url, **engine_options(url))


@pytest.fixture
def empty_database(config: dict[str, Any]) -> dict[str, Any]:
    """The configured database with no schema at all, so migrations start from nothing on both backends."""
    if config["DATABASE_URL"].startswith("postgresql"):
        import psycopg

        with psycopg.connect(config["DATABASE_URL"], autocommit=True) as connection:
            connection.execute("DROP SCHEMA public CASCADE")
            connection.execute("CREATE SCHEMA public")
    engine = _engine(config)
    try:
        with engine.connect() as connection:
            assert inspect(connection).get_table_names() == []
    finally:
        engine.dispose()
    return config


def test_initialize_creates_every_table_at_the_head_revision(empty_database):
    config = empty_database
    from alembic.script import ScriptDirectory

    from secrets_hub.bootstrap import alembic_config

    bootstrap.initialize(config)
    engine = _engine(config)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            assert tables >= TABLES
            head = ScriptDirectory.from_config(alembic_config(connection)).get_current_head()
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
            assert connection.execute(
                text("SELECT count(*) FROM secrets_hub_meta WHERE name = 'key_check'")).scalar() == 1
    finally:
        engine.dispose()


def test_initialize_twice_is_safe_and_keeps_data(empty_database, run_cli):
    config = empty_database
    bootstrap.initialize(config)
    assert run_cli("set", "KEPT", input="kept-value\n").returncode == 0
    engine = _engine(config)
    try:
        with engine.connect() as connection:
            check_before = connection.execute(
                text("SELECT value FROM secrets_hub_meta WHERE name = 'key_check'")).scalar_one()
        bootstrap.initialize(config)
        bootstrap.initialize(config)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
            assert connection.execute(
                text("SELECT value FROM secrets_hub_meta WHERE name = 'key_check'")).scalar_one() == check_before
    finally:
        engine.dispose()
    again = run_cli("init")
    assert again.returncode == 0, again.stderr
    got = run_cli("get", "KEPT")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "kept-value\n"


def test_secrets_table_has_the_seed_columns_plus_version_and_key_id(app):
    with app.app_context():
        inspector = inspect(db.engine)
        columns = {column["name"] for column in inspector.get_columns("secrets")}
        assert columns >= SEED_COLUMNS | {"current_version", "key_id"}
        version_columns = {column["name"] for column in inspector.get_columns("secret_versions")}
        assert version_columns >= {"secret_id", "version", "encrypted_value", "iv", "key_id"}
        foreign = {fk["referred_table"]: fk for fk in inspector.get_foreign_keys("secrets")}
        assert foreign["users"]["constrained_columns"] == ["created_by"]
        assert foreign["users"]["options"].get("ondelete", "").upper() == "SET NULL"


def test_every_row_records_the_key_id_of_the_keyring(app, client, admin_token):
    create(client, admin_token, "ROW_ONE", "one")
    create(client, admin_token, "ROW_TWO", "two")
    assert client.put("/api/secrets/ROW_TWO", json={"value": "two-b"}, headers=bearer(admin_token)).status_code == 200
    expected = Keyring.from_master(MASTER_KEY).key_id
    with app.app_context():
        assert app.extensions["secrets_hub"].keyring.key_id == expected
        secret_ids = db.session.execute(select(Secret.key, Secret.key_id)).all()
        version_ids = db.session.execute(select(SecretVersion.version, SecretVersion.key_id)).all()
    assert sorted(secret_ids) == [("ROW_ONE", expected), ("ROW_TWO", expected)]
    assert len(version_ids) == 3
    assert {key_id for _, key_id in version_ids} == {expected}


def test_no_value_master_key_or_token_is_stored_in_plaintext(app, client, admin_token, config, tmp_path):
    canary = f"canary-{uuid.uuid4().hex}"
    canary_two = f"canary-{uuid.uuid4().hex}"
    create(client, admin_token, "CANARY_KEY", canary, "plain description")
    assert client.put("/api/secrets/CANARY_KEY", json={"value": canary_two},
                      headers=bearer(admin_token)).status_code == 200
    assert client.get("/api/secrets/CANARY_KEY", headers=bearer(admin_token)).get_json()["data"]["value"] == canary_two
    forbidden = [canary, canary_two, MASTER_KEY, admin_token]

    with app.app_context():
        inspector = inspect(db.engine)
        scanned = 0
        for table in inspector.get_table_names():
            query = text(f'SELECT * FROM "{table}"')  # noqa: S608 - table names come from the inspector
            for row in db.session.execute(query).all():
                for cell in row:
                    if cell is None:
                        continue
                    scanned += 1
                    cell_text = cell.hex() if isinstance(cell, (bytes, bytearray, memoryview)) else str(cell)
                    for needle in forbidden:
                        assert needle not in cell_text, f"found a plaintext secret in table {table}"
        assert scanned > 20  # the scan saw the rows: secrets, versions, tokens, audit events, meta
        assert db.session.execute(select(func.count()).select_from(SecretVersion)).scalar() == 2
        db.session.remove()
        db.engine.dispose()

    if config["DATABASE_URL"].startswith("sqlite:///"):
        db_file = Path(config["DATABASE_URL"][len("sqlite:///"):])
        for path in [db_file, Path(f"{db_file}-wal")]:
            if path.exists():
                raw = path.read_bytes()
                for needle in forbidden:
                    assert needle.encode() not in raw, f"found a plaintext secret in {path.name}"


# ---- foreign keys ----------------------------------------------------------------------------------


def test_deleting_a_user_sets_created_by_to_null(app, client, admin_token):
    with app.app_context():
        user = users.create_user(None, "owner@example.com", "correct horse battery staple")
        service.create_secret(caller_for_user(user, "ui", None), "OWNED_SECRET", "owned-value", "made by a person")
        assert db.session.execute(select(Secret.created_by).where(Secret.key == "OWNED_SECRET")).scalar_one() == \
            user.id
        assert db.session.execute(delete(User).where(User.id == user.id)).rowcount == 1
        db.session.commit()
    with app.app_context():
        row = db.session.execute(select(Secret.created_by, Secret.description)
                                 .where(Secret.key == "OWNED_SECRET")).one()
        assert row.created_by is None
        assert row.description == "made by a person"
    read = client.get("/api/secrets/OWNED_SECRET", headers=bearer(admin_token))
    assert read.get_json() == {"data": {"key": "OWNED_SECRET", "value": "owned-value"}}


def test_deleting_a_secret_removes_its_versions(app, client, admin_token):
    doomed = create(client, admin_token, "DOOMED", "v1")
    kept = create(client, admin_token, "KEPT_ALIVE", "k1")
    for value in ("v2", "v3"):
        assert client.put("/api/secrets/DOOMED", json={"value": value}, headers=bearer(admin_token)).status_code == 200
    assert client.put("/api/secrets/KEPT_ALIVE", json={"value": "k2"}, headers=bearer(admin_token)).status_code == 200

    def count_versions(secret_id: str) -> int:
        with app.app_context():
            return db.session.execute(select(func.count()).select_from(SecretVersion)
                                      .where(SecretVersion.secret_id == secret_id)).scalar()

    assert count_versions(doomed["id"]) == 3
    deleted = client.delete("/api/secrets/DOOMED", headers=bearer(admin_token))
    assert deleted.status_code == 200
    assert deleted.get_json() == {"data": {"deleted": True}}
    assert count_versions(doomed["id"]) == 0
    assert count_versions(kept["id"]) == 2

    # A new secret under the same key starts again at version 1, with no trace of the old ones.
    create(client, admin_token, "DOOMED", "reborn")
    versions = client.get("/api/secrets/DOOMED/versions", headers=bearer(admin_token)).get_json()["data"]
    assert [v["version"] for v in versions] == [1]
    old = client.get("/api/secrets/DOOMED?version=2", headers=bearer(admin_token))
    assert old.status_code == 404
    assert old.get_json() == {"statusCode": 404, "message": 'Secret "DOOMED" has no version 2'}


# ---- postgres:// URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [
    ("postgres://u:p@db.example:5432/hub", "postgresql+psycopg://u:p@db.example:5432/hub"),
    ("postgresql://u:p@db.example:5432/hub", "postgresql+psycopg://u:p@db.example:5432/hub"),
    ("postgresql+psycopg://u@h/hub", "postgresql+psycopg://u@h/hub"),
    ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
])
def test_normalize_database_url(given, expected):
    assert normalize_database_url(given) == expected


def test_settings_normalize_a_postgres_url(tmp_path):
    settings = load_settings({"DATABASE_URL": "postgres://u@h:5432/hub", "SECRETS_HUB_MASTER_KEY": "k",
                              "SECRETS_HUB_INSTANCE_PATH": str(tmp_path / "instance")})
    assert settings.database_url == "postgresql+psycopg://u@h:5432/hub"
    assert settings.backend == "postgresql"


def _unix_socket_form(url: str) -> str:
    """`url` (a local server over TCP) as the same database over the server's Unix socket, in the form the
    README gives; skips where there is no such socket, or where it refuses the login."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    socket_dir, port = "/var/run/postgresql", params.get("port", 5432)
    if params.get("host") not in ("127.0.0.1", "localhost") or not os.path.exists(f"{socket_dir}/.s.PGSQL.{port}"):
        pytest.skip(f"no local PostgreSQL socket in {socket_dir} for {params.get('host')}")
    user = urllib.parse.quote(params.get("user", ""), safe="")
    password = f":{urllib.parse.quote(params['password'], safe='')}" if params.get("password") else ""
    socket_url = f"postgresql://{user}{password}@/{params['dbname']}?host={socket_dir}&port={port}"
    try:  # the socket may take other logins than TCP (peer authentication, say)
        psycopg.connect(socket_url, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL's socket in {socket_dir} refuses this login: {type(error).__name__}")
    return socket_url


@pytest.mark.parametrize("form", ["postgres://", "unix socket"])
def test_postgres_url_forms_work_end_to_end(backend, config, run_cli, form):
    """`postgres://...`, and a local server's Unix socket (`postgresql://user@/db?host=/var/run/postgresql`),
    through the app (SQLAlchemy), the REST API's store and the command line."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL URLs only concern PostgreSQL")
    assert config["DATABASE_URL"].startswith("postgresql://")
    if form == "postgres://":
        url = "postgres://" + config["DATABASE_URL"][len("postgresql://"):]
    else:
        url = _unix_socket_form(config["DATABASE_URL"])
    settings = {**config, "DATABASE_URL": url}

    bootstrap.initialize(settings)
    app = create_app(settings)
    try:
        assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://")
        with app.app_context():
            assert db.engine.dialect.name == "postgresql"
            assert db.engine.dialect.driver == "psycopg"
            from secrets_hub import tokens
            from secrets_hub.auth import operator

            token = tokens.create_token(operator("tests"), "pg-short", ["secrets:read", "secrets:write"], None,
                                        None)["token"]
        client = app.test_client()
        created = client.post("/api/secrets", json={"key": "PG_SHORT", "value": "via-postgres-scheme"},
                              headers=bearer(token))
        assert created.status_code == 200, created.get_json()
        read = client.get("/api/secrets/PG_SHORT", headers=bearer(token))
        assert read.get_json() == {"data": {"key": "PG_SHORT", "value": "via-postgres-scheme"}}
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()

    got = run_cli("get", "PG_SHORT", env={"DATABASE_URL": url})
    assert got.returncode == 0, got.stderr
    assert got.stdout == "via-postgres-scheme\n"


# --------------------------------------------------------------------------- the store's connections


def _kill_idle_connections(request, app, client, auth) -> int:
    """Leave several idle connections behind, then end every one of them as a database restart would; how
    many were idle. PostgreSQL only: SQLite's connections cannot die under a running server."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("only PostgreSQL connections die under a running server")
    import concurrent.futures

    import psycopg

    assert client.post("/api/secrets", json={"key": "SURVIVES", "value": "v"}, headers=auth).status_code == 200
    # Reads of a version, each on a connection of its own (the audit writer reads current values, for many
    # requests on one connection).
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda _: app.test_client().get("/api/secrets/SURVIVES?version=1", headers=auth).status_code, range(32)))
    assert statuses == [200] * 32
    idle = len(app.extensions["secrets_hub"].store._idle)
    assert idle > 1
    url = request.getfixturevalue("postgres_database")
    with psycopg.connect(url, autocommit=True) as admin:
        # With a timeout, each call returns once its backend has exited, its socket closed, as in a restart.
        killed = admin.execute("SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t").fetchone()[0]
    assert killed >= idle
    return idle


def test_connections_that_died_while_idle_are_replaced_without_a_failed_request(request, app, client, admin_token):
    """A database restart kills every idle connection: the next requests still succeed (no 503)."""
    auth = bearer(admin_token)
    idle = _kill_idle_connections(request, app, client, auth)
    for _ in range(idle + 2):
        response = client.get("/api/secrets/SURVIVES", headers=auth)
        assert (response.status_code, response.get_json()) == (200, {"data": {"key": "SURVIVES", "value": "v"}})
    assert client.put("/api/secrets/SURVIVES", json={"value": "w"}, headers=auth).status_code == 200


def test_a_write_first_after_a_restart_succeeds_and_counts_once(request, app, client, admin_token, monkeypatch):
    """An update is one statement on PostgreSQL, its own commit, so it is never sent twice: a connection that
    died while idle is found out before the update goes out on it. The first requests after a restart are
    writes: each succeeds, once (one version, one audit event)."""
    auth = bearer(admin_token)
    _kill_idle_connections(request, app, client, auth)
    backend = app.extensions["secrets_hub"].store.backend
    found_lost, check = [], backend.lost_while_idle

    def recorded_check(connection) -> bool:
        found_lost.append(check(connection))
        return found_lost[-1]

    monkeypatch.setattr(backend, "lost_while_idle", recorded_check)
    for value in ("w", "x"):
        response = client.put("/api/secrets/SURVIVES", json={"value": value}, headers=auth)
        assert response.status_code == 200, response.get_json()
    # The token was still cached, so the update was the first statement to meet a dead connection.
    assert found_lost[0] is True
    versions = client.get("/api/secrets/SURVIVES/versions", headers=auth).get_json()["data"]
    assert [version["version"] for version in versions] == [3, 2, 1]
    events = client.get("/api/audit?key=SURVIVES", headers=auth).get_json()["data"]
    assert [event["action"] for event in events if event["action"] != "read"] == ["update", "update", "create"]
    assert client.get("/api/secrets/SURVIVES", headers=auth).get_json() == {"data": {"key": "SURVIVES", "value": "x"}}


def test_an_update_that_waited_for_another_still_keeps_only_the_newest_versions(request, config):
    """With SECRETS_HUB_KEEP_VERSIONS=1, an update that waits for a concurrent update of the same secret keeps
    only its own version. On PostgreSQL an update is one statement, and all of it sees the database as it was
    when it began: without a second look it would leave the version the other update committed meanwhile."""
    if not config["DATABASE_URL"].startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: its updates never overlap")
    import concurrent.futures

    import psycopg

    config["SECRETS_HUB_KEEP_VERSIONS"] = "1"  # before the app is built
    client, auth = request.getfixturevalue("app").test_client(), bearer(request.getfixturevalue("admin_token"))
    assert client.post("/api/secrets", json={"key": "RACED", "value": "v1"}, headers=auth).status_code == 200
    with psycopg.connect(config["DATABASE_URL"]) as other, \
            psycopg.connect(config["DATABASE_URL"], autocommit=True) as watcher:  # other: a transaction, held open
        # The other update, as the app makes it: version 2, kept, version 1 pruned; not committed yet.
        secret_id = other.execute("UPDATE secrets SET current_version = current_version + 1 WHERE key = 'RACED' "
                                  "RETURNING id").fetchone()[0]
        other.execute("INSERT INTO secret_versions (secret_id, version, encrypted_value, iv, key_id, created_at, "
                      "created_by) SELECT secret_id, 2, encrypted_value, iv, key_id, created_at, created_by "
                      "FROM secret_versions WHERE secret_id = %s AND version = 1", (secret_id,))
        other.execute("DELETE FROM secret_versions WHERE secret_id = %s AND version <= 1", (secret_id,))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            update = pool.submit(lambda: client.put("/api/secrets/RACED", json={"value": "v3"}, headers=auth))
            # Commit only once our update waits for the row's lock: it began before the other committed.
            deadline = time.monotonic() + 30
            while not watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND wait_event_type = 'Lock'").fetchone()[0]:
                assert time.monotonic() < deadline and not update.done()
                time.sleep(0.01)
            other.commit()
            response = update.result(timeout=30)
    assert response.status_code == 200, response.get_json()
    versions = client.get("/api/secrets/RACED/versions", headers=auth).get_json()["data"]
    assert [version["version"] for version in versions] == [3]
    assert client.get("/api/secrets/RACED", headers=auth).get_json() == {"data": {"key": "RACED", "value": "v3"}}


def test_writes_go_on_after_refused_writes_on_the_same_connection(app, client, admin_token):
    """A create refused by the unique key (409) leaves nothing behind that breaks later writes.

    psycopg prepares a statement after a few runs: were a refused statement to lose such a PREPARE (as
    it did when a write's statements went out in one pipeline), a connection kept for reuse would answer
    the next write with a 500 ("prepared statement _pg3_0 does not exist"). One client at a time, so every
    request here takes the same idle connection.
    """
    auth = bearer(admin_token)
    for number in range(12):  # past psycopg's prepare threshold (5) for every statement of a create
        created = client.post("/api/secrets", json={"key": f"KEY_{number}", "value": "v"}, headers=auth)
        assert created.status_code == 200, created.get_json()
        refused = client.post("/api/secrets", json={"key": f"KEY_{number}", "value": "w"}, headers=auth)
        assert (refused.status_code, refused.get_json()["message"]) == (409, f'Secret with key "KEY_{number}" already exists')
        updated = client.put(f"/api/secrets/KEY_{number}", json={"value": "x"}, headers={**auth, "If-Match": "1"})
        assert updated.status_code == 200, updated.get_json()
    assert client.get("/api/secrets/KEY_11", headers=auth).get_json() == {"data": {"key": "KEY_11", "value": "x"}}


def test_server_options_in_a_postgresql_url_are_kept(request, tmp_path):
    """`?options=-csearch_path=...` reaches every connection: the app's tables live in that schema alone.
    A DateStyle and TimeZone of the URL's do not change the times read back."""
    import psycopg

    url = request.getfixturevalue("postgres_database")
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP SCHEMA IF EXISTS alt CASCADE")
        admin.execute("CREATE SCHEMA alt")
    config = {"SECRETS_HUB_INSTANCE_PATH": str(tmp_path / "instance"), "SECRETS_HUB_MASTER_KEY": MASTER_KEY,
              "DATABASE_URL": f"{url}?options=-csearch_path%3Dalt%20-cDateStyle%3DSQL,DMY%20-cTimeZone%3DAsia/Tokyo",
              "SECRETS_HUB_PLUGINS_DIR": str(tmp_path / "plugins"),
              "SECRETS_HUB_LOAD_ENTRYPOINTS": "0"}
    app = None
    try:
        bootstrap.initialize(config)
        app = create_app(config)
        with app.app_context():
            from secrets_hub.auth import operator

            caller = operator("tests")
            created = service.create_secret(caller, "IN_ALT", "in-alt")
            assert service.read_secret(caller, "IN_ALT")["value"] == "in-alt"
            listed = service.list_secrets(caller)
            assert [(row["key"], row["created_at"], row["updated_at"]) for row in listed] == [
                ("IN_ALT", created["created_at"], created["created_at"])]
        with psycopg.connect(url, autocommit=True) as admin:
            assert admin.execute("SELECT key FROM alt.secrets").fetchall() == [("IN_ALT",)]
            assert admin.execute("SELECT to_regclass('alt.audit_events') IS NOT NULL").fetchone() == (True,)
    finally:
        if app is not None:
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("DROP SCHEMA alt CASCADE")


def test_a_relative_sqlite_path_lies_in_the_instance_folder(config, run_cli, tmp_path):
    relative = {"DATABASE_URL": "sqlite:///data.db"}
    assert (tmp_path / "instance").exists() is False
    for args in (("init",), ("set", "RELATIVE")):
        result = run_cli(*args, input="in-the-instance\n", env=relative)
        assert result.returncode == 0, result.stderr
    got = run_cli("get", "RELATIVE", env=relative)
    assert (got.returncode, got.stdout) == (0, "in-the-instance\n")
    assert (tmp_path / "instance" / "data.db").is_file()
    assert not (tmp_path / "data.db").exists()  # the CLI ran in tmp_path: nothing was opened there


def test_sqlite_writes_wait_for_a_writer_of_another_process_and_go_on_when_it_is_done(backend, database_url, client,
                                                                                     admin_token):
    """Worker processes take turns on a lock file beside the database instead of SQLite's sleeping busy wait."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL orders writers itself")
    import threading

    other_process = hold_sqlite_writer_lock(database_url)
    answers: list[int] = []
    writer = threading.Thread(target=lambda: answers.append(
        client.post("/api/secrets", json={"key": "WAITED", "value": "v"}, headers=bearer(admin_token)).status_code))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and answers == []  # waiting for the lock
    os.close(other_process)
    writer.join(5)
    assert answers == [200]
    assert client.get("/api/secrets/WAITED", headers=bearer(admin_token)).get_json()["data"]["value"] == "v"


def test_sqlite_a_write_gives_up_with_503_when_another_process_keeps_the_writer_lock(backend, database_url, client,
                                                                                   make_token, monkeypatch):
    if backend != "sqlite":
        pytest.skip("PostgreSQL orders writers itself")
    from secrets_hub import store

    path = database_url.removeprefix("sqlite:///")
    os.chmod(path, 0o640)
    admin_token = make_token("secrets:write", name="admin")  # the first write: it makes the lock file
    monkeypatch.setattr(store, "SQLITE_BUSY_SECONDS", 0.5)
    other_process = hold_sqlite_writer_lock(database_url)
    try:
        response = client.post("/api/secrets", json={"key": "NOT_NOW", "value": "v"}, headers=bearer(admin_token))
        assert (response.status_code, response.get_json()["message"]) == (503, "Database unavailable")
    finally:
        os.close(other_process)
    assert client.post("/api/secrets", json={"key": "NOW", "value": "v"}, headers=bearer(admin_token)).status_code == 200
    assert stat.S_IMODE(os.stat(path + "-writer.lock").st_mode) == 0o640  # the database file's own mode


def test_sqlite_a_write_reaches_the_database_file_itself_with_no_later_write(backend, database_url, client,
                                                                            admin_token, tmp_path):
    """The WAL is copied back into the database file in the background, not left for some later writer."""
    if backend != "sqlite":
        pytest.skip("a SQLite WAL checkpoint")
    path = Path(database_url.removeprefix("sqlite:///"))
    assert client.post("/api/secrets", json={"key": "CHECKPOINTED", "value": "v"},
                       headers=bearer(admin_token)).status_code == 200
    _wait_until_in_file_alone(path, tmp_path / "file-alone.db", "CHECKPOINTED", "the write never reached the database file")


def test_sqlite_a_lock_file_that_cannot_be_locked_is_503_and_the_checkpointer_lives_on(backend, database_url, client,
                                                                                      admin_token, tmp_path,
                                                                                      monkeypatch, caplog):
    """flock failing outright (ENOLCK, say), not because another writer holds it: writes are told the database is
    unavailable, and the checkpointer, which failed the same way, copies the next write into the file."""
    if backend != "sqlite":
        pytest.skip("a SQLite WAL checkpoint")
    import errno
    import fcntl
    import threading

    real_flock, checkpointer_failed = fcntl.flock, threading.Event()
    path = Path(database_url.removeprefix("sqlite:///"))

    def no_locks(descriptor: Any, operation: int) -> None:
        if operation & fcntl.LOCK_EX:
            if threading.current_thread().name == "sqlite-checkpoint":
                checkpointer_failed.set()
            raise OSError(errno.ENOLCK, "No locks available")
        real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", no_locks)
    for key in ("NO_LOCKS", "NO_LOCKS_STILL"):
        response = client.post("/api/secrets", json={"key": key, "value": "v"}, headers=bearer(admin_token))
        assert (response.status_code, response.get_json()) == (503, {"statusCode": 503, "message": "Database unavailable"})
    assert checkpointer_failed.wait(10), "the write did not wake the checkpointer"
    monkeypatch.setattr(fcntl, "flock", real_flock)
    # Said once, with the reason, not at every write.
    said = [record.getMessage() for record in caplog.records if "writer lock file" in record.getMessage()]
    assert said == [f"SQLite database {path}: writes are refused (ENOLCK on it or its writer lock file)"]

    assert client.post("/api/secrets", json={"key": "LOCKS_AGAIN", "value": "v"},
                       headers=bearer(admin_token)).status_code == 200
    _wait_until_in_file_alone(path, tmp_path / "file-alone.db", "LOCKS_AGAIN",
                              "the checkpointer is gone: the write never reached the database file")


def _wait_until_in_file_alone(path: Path, copy: Path, key: str, never: str) -> None:
    """Wait up to 10 s for the database file alone (without its -wal file, copied to `copy`) to hold `key`."""
    deadline = time.monotonic() + 10
    while not _in_file_alone(path, copy, key):
        assert time.monotonic() < deadline, never
        time.sleep(0.05)


def _in_file_alone(path: Path, copy: Path, key: str) -> bool:
    """Whether the database file, copied without its -wal file, holds the secret `key`."""
    import shutil
    import sqlite3

    shutil.copyfile(path, copy)
    try:
        with contextlib.closing(sqlite3.connect(copy)) as alone:
            return alone.execute("SELECT count(*) FROM secrets WHERE key = ?", (key,)).fetchone() == (1,)
    except sqlite3.DatabaseError:  # copied halfway through a checkpoint: look again
        return False
    finally:
        copy.unlink()


def test_sqlite_a_command_line_write_reaches_the_database_file_while_a_server_keeps_it_open(backend, app, run_cli,
                                                                                          database_url, tmp_path):
    """SQLite copies the WAL back itself when its last connection closes, but not while a server holds one:
    the command line's own checkpointer does it before the command ends (a last round as it closes)."""
    if backend != "sqlite":
        pytest.skip("a SQLite WAL checkpoint")
    import sqlite3

    path = Path(database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as server_side:  # an open connection, as a running server's
        server_side.execute("SELECT count(*) FROM secrets").fetchone()
        for index in range(5):
            key = f"FROM_CLI_{index}"
            assert run_cli("set", key, input="v\n").returncode == 0
            assert _in_file_alone(path, tmp_path / "file-alone.db", key)


def test_sqlite_the_wal_starts_afresh_under_reads_and_writes_that_never_pause(backend, database_url, client,
                                                                              admin_token):
    """Readers that never stop keep SQLite from starting its WAL again after a checkpoint made beside running
    writers; the checkpointer then catches up holding the writer locks, so the WAL stays a fraction of what
    was written through it."""
    if backend != "sqlite":
        pytest.skip("a SQLite WAL checkpoint")
    import threading

    wal = Path(database_url.removeprefix("sqlite:///") + "-wal")
    assert client.post("/api/secrets", json={"key": "BUSY", "value": "v"}, headers=bearer(admin_token)).status_code == 200
    statuses: list[int] = []

    def read(times: int) -> None:
        for _ in range(times):  # every read commits an audit event
            statuses.append(client.get("/api/secrets/BUSY", headers=bearer(admin_token)).status_code)

    threads = [threading.Thread(target=read, args=(1500,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    largest = 0
    while any(thread.is_alive() for thread in threads):
        largest = max(largest, wal.stat().st_size)
        time.sleep(0.01)
    assert statuses == [200] * 6000
    # Those reads wrote about 40 MB through the WAL; a checkpointer that never catches up leaves all of it there.
    assert largest < 16 * 2**20
