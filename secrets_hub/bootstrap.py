"""Bringing a database to life: schema migrations and the master key check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from secrets_hub.crypto import Keyring
from secrets_hub.errors import ConfigError, DecryptionError
from secrets_hub.store import Conflict, Store

if TYPE_CHECKING:
    from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"
KEY_CHECK = "key_check"
KEY_CHECK_PLAINTEXT = "secrets-hub key check"
KEY_CHECK_CONTEXT = "secrets-hub/key-check"
# Any constant works; it only has to be the same in every process that migrates this database.
PG_MIGRATION_LOCK = 7_344_210_003


def alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: "Engine") -> None:
    """Run every pending migration; safe to call from several processes at once."""
    from alembic import command
    from sqlalchemy import text

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two servers starting together on one database must not both create the tables.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": PG_MIGRATION_LOCK})
        command.upgrade(alembic_config(connection), "head")


def seal_key_check(keyring: Keyring) -> str:
    """The key check as stored: a known text encrypted under the primary key, with its key id in front."""
    sealed = keyring.encrypt(KEY_CHECK_PLAINTEXT, KEY_CHECK_CONTEXT)
    return f"{sealed.key_id}:{sealed.iv}:{sealed.encrypted_value}"


def check_master_key(store: Store, keyring: Keyring) -> None:
    """Refuse a master secret that does not open this database; record the check on first use."""
    sealed = store.meta(KEY_CHECK)
    if sealed is None:
        try:
            store.add_meta(KEY_CHECK, seal_key_check(keyring))
            return
        except Conflict:  # another process recorded its check first: verify against that one
            return check_master_key(store, keyring)
    key_id, iv, encrypted_value = sealed.split(":", 2)
    try:
        keyring.decrypt(encrypted_value, iv, key_id, KEY_CHECK_CONTEXT)
    except DecryptionError:
        raise ConfigError(
            f"The master key does not match this database (key check failed for key id {key_id}); "
            "set SECRETS_HUB_MASTER_KEY to the secret this database was created with "
            "(while rotating, put the former secret in SECRETS_HUB_OLD_MASTER_KEYS)"
        ) from None


def key_check_passes(store: Store, keyring: Keyring) -> bool:
    """Whether the database answers and the configured master key opens it (health checks, the App tab)."""
    try:
        check_master_key(store, keyring)
    except Exception:  # noqa: BLE001 - any failure, database or key, means "no"
        return False
    return True


def initialize(overrides=None):
    """`secrets-hub init`: instance folder, master key file if none is configured, schema, key check.

    Safe to run twice; returns the settings with the master key filled in.
    """
    from sqlalchemy import create_engine

    from secrets_hub.config import ensure_master_key, load_settings
    from secrets_hub.db import engine_options

    settings = ensure_master_key(load_settings(overrides))
    engine = create_engine(settings.database_url, **engine_options(settings.database_url))
    store = Store(settings.database_url)
    try:
        upgrade(engine)
        check_master_key(store, Keyring.from_master(settings.master_key, settings.old_master_keys))
    finally:
        engine.dispose()
        store.close()
    return settings
