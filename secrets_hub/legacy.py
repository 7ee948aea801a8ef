"""`import-legacy`: copy the seed app's `secrets` table (PostgreSQL, or SQLite with ISO 8601 text times).

Each row is decrypted with the seed's key (scrypt of the legacy secret) and stored through the same
service call as any import, so validation, versions and audit events are the usual ones. Rows that
fail are reported by key and skipped; everything else is imported. Running it again is safe: an
existing key is skipped, or with `overwrite` replaced only when its value or description differs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import create_engine, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from secrets_hub import audit, service
from secrets_hub.auth import ADMIN, Caller, authorize
from secrets_hub.config import normalize_database_url
from secrets_hub.crypto import decrypt_legacy, legacy_key
from secrets_hub.errors import ConfigError, DecryptionError, SecretsHubError

LEGACY_QUERY = text(
    "SELECT key, encrypted_value, iv, description, created_at, updated_at FROM secrets ORDER BY key")


@dataclass
class LegacyReport:
    outcomes: Counter = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)  # "KEY: reason", never a value


def _timestamp(value: Any) -> datetime:
    """A seed timestamp: a datetime from PostgreSQL, ISO 8601 text from SQLite; naive means UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    if not isinstance(value, datetime):
        raise ValueError("not a timestamp")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def read_legacy_rows(url: str) -> list[Any]:
    """Every row of the seed's `secrets` table, or one clear ConfigError."""
    try:
        engine = create_engine(normalize_database_url(url))
    except (ArgumentError, NoSuchModuleError):
        raise ConfigError(f"--from must be a database URL (postgresql://... or sqlite:///...), got {url!r}") from None
    try:
        with engine.connect() as connection:
            return list(connection.execute(LEGACY_QUERY))
    except DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        raise ConfigError(f"Cannot read the secrets table at the legacy database: {reason}") from None
    finally:
        engine.dispose()


def import_legacy(caller: Caller, rows: list[Any], legacy_secret: str, overwrite: bool = False,
                  progress: Callable[[int], None] = lambda n: None) -> LegacyReport:
    """Import the rows `read_legacy_rows` gave, decrypting them with the seed's secret."""
    authorize(caller, ADMIN, "import_legacy")
    key = legacy_key(legacy_secret)
    report = LegacyReport()
    for row in rows:
        try:
            value = decrypt_legacy(row.encrypted_value, row.iv, key)
            created_at, updated_at = _timestamp(row.created_at), _timestamp(row.updated_at)
            outcome = service.import_secret(caller, row.key, value, row.description, overwrite, created_at, updated_at)
            report.outcomes[outcome] += 1
        except (DecryptionError, ValueError) as unreadable:
            reason = "unreadable timestamp" if isinstance(unreadable, ValueError) else "does not decrypt with the legacy secret"
            report.failed.append(f"{row.key}: {reason}")
            audit.record_now(caller, "import", row.key, "failed")
        except SecretsHubError as refused:
            report.failed.append(f"{row.key}: {refused.message}")
        progress(1)
    return report
