"""`backup` and `restore`: one encrypted, self-checking file holding every secret, version, token record and user.

File layout: a magic line, the key id of the backup key, a 12-byte nonce, then the gzip'd JSON
payload sealed with AES-256-GCM under the backup key (HKDF label `secrets-hub/backup/v1` from the
master secret). The header is the associated data, so the one GCM tag checks the whole file.
Values inside are plaintext under that seal, so a restore does not depend on which key ids the
source database used, and is re-encrypted under the restoring instance's current key.
"""

from __future__ import annotations

import gzip
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, insert, select

from secrets_hub import audit, service
from secrets_hub.auth import ADMIN, Caller, authorize
from secrets_hub.crypto import BACKUP_LABEL, NONCE_BYTES, derive_key, key_id_of
from secrets_hub.db import UTCDateTime, db
from secrets_hub.errors import BackupFileError, ConflictError
from secrets_hub.models import ApiToken, Secret, SecretVersion, User
from secrets_hub.runtime import runtime
from secrets_hub.store import utcnow

MAGIC = b"secrets-hub backup v1\n"
KEY_ID_BYTES = 16
FORMAT = "secrets-hub-backup"
secrets_table, versions_table = Secret.__table__, SecretVersion.__table__
users_table, tokens_table = User.__table__, ApiToken.__table__


def _backup_key() -> bytes:
    return derive_key(runtime().settings.master_key, BACKUP_LABEL)


def _dump(table, row: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A row as JSON-ready data: every column but `skip`, times as ISO 8601."""
    out = {}
    for column in table.columns:
        if column.name in skip:
            continue
        value = row[column.name]
        out[column.name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _load(table, data: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `_dump`, for the columns this table has."""
    return {
        column.name: (datetime.fromisoformat(data[column.name])
                      if isinstance(column.type, UTCDateTime) and data[column.name] else data[column.name])
        for column in table.columns if column.name in data
    }


def _count(table) -> int:
    return db.session.execute(select(func.count()).select_from(table)).scalar_one()


def count_secrets() -> int:
    return _count(secrets_table)


def _payload(caller: Caller, progress: Callable[[int], None]) -> dict[str, Any]:
    session = db.session
    secrets = []
    for row in session.execute(select(secrets_table).order_by(secrets_table.c.key)).mappings():
        versions = session.execute(
            select(versions_table).where(versions_table.c.secret_id == row["id"]).order_by(versions_table.c.version)
        ).mappings()
        secrets.append({
            **_dump(secrets_table, row, skip=("encrypted_value", "iv", "key_id")),
            "value": service.open_value(caller, "backup", row["key"], row),
            "versions": [{**_dump(versions_table, v, skip=("id", "secret_id", "encrypted_value", "iv", "key_id")),
                          "value": service.open_value(caller, "backup", row["key"], v)} for v in versions],
        })
        progress(1)
    return {
        "format": FORMAT,
        "version": 1,
        "created_at": utcnow().isoformat(),
        "users": [_dump(users_table, u) for u in session.execute(select(users_table)).mappings()],
        "tokens": [_dump(tokens_table, t, skip=("id",)) for t in session.execute(select(tokens_table)).mappings()],
        "secrets": secrets,
    }


def write_backup(caller: Caller, path: Path, progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Write the backup file (mode 0600, replaced atomically); returns what it holds."""
    authorize(caller, ADMIN, "backup")
    payload = _payload(caller, progress)
    key = _backup_key()
    header = MAGIC + key_id_of(key).encode() + os.urandom(NONCE_BYTES)
    body = AESGCM(key).encrypt(header[-NONCE_BYTES:], gzip.compress(json.dumps(payload).encode()), header)
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(header + body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    audit.record_now(caller, "backup", None, "ok")
    return {name: len(payload[name]) for name in ("secrets", "users", "tokens")}


def read_backup(path: Path) -> dict[str, Any]:
    """Open and check a backup file; anything wrong is one clear BackupFileError."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BackupFileError(f"Cannot read {path}: {error.strerror}") from None
    header_size = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
    if not data.startswith(MAGIC) or len(data) < header_size + 16:
        raise BackupFileError(f"{path} is not a secrets-hub backup file")
    key = _backup_key()
    header, body = data[:header_size], data[header_size:]
    file_key_id = header[len(MAGIC):len(MAGIC) + KEY_ID_BYTES].decode("ascii", "replace")
    if file_key_id != key_id_of(key):
        raise BackupFileError(
            f"{path} was made under another master secret (backup key id {file_key_id}); "
            "restore it with the master secret it was made with")
    try:
        payload = json.loads(gzip.decompress(AESGCM(key).decrypt(header[-NONCE_BYTES:], body, header)))
    except (InvalidTag, OSError, ValueError):
        raise BackupFileError(f"{path} is damaged: its integrity check failed; nothing was restored") from None
    if payload.get("format") != FORMAT or payload.get("version") != 1:
        raise BackupFileError(f"{path} is a backup format this version cannot read")
    return payload


def _instance_holds() -> dict[str, int]:
    return {name: _count(table)
            for name, table in (("secrets", secrets_table), ("users", users_table), ("tokens", tokens_table))}


def open_for_restore(caller: Caller, path: Path) -> dict[str, Any]:
    """Check everything a restore needs before it starts: the caller, the file, an empty instance."""
    authorize(caller, ADMIN, "restore_backup")
    payload = read_backup(path)
    held = _instance_holds()
    if any(held.values()):
        raise ConflictError(
            "Restore needs an empty instance; this one holds "
            f"{held['secrets']} secrets, {held['users']} users and {held['tokens']} tokens")
    return payload


def restore_backup(caller: Caller, payload: dict[str, Any], progress: Callable[[int], None] = lambda n: None
                   ) -> dict[str, int]:
    """Bring back everything `open_for_restore` read, in one transaction."""
    keyring, session = runtime().keyring, db.session
    if payload["users"]:
        session.execute(insert(users_table), [_load(users_table, u) for u in payload["users"]])
    if payload["tokens"]:
        session.execute(insert(tokens_table), [_load(tokens_table, t) for t in payload["tokens"]])
    for secret in payload["secrets"]:
        key = secret["key"]
        sealed = keyring.encrypt(secret["value"], key)
        session.execute(insert(secrets_table), {**_load(secrets_table, secret), "encrypted_value": sealed.encrypted_value,
                                                "iv": sealed.iv, "key_id": sealed.key_id})
        versions = []
        for version in secret["versions"]:
            sealed = keyring.encrypt(version["value"], key)
            versions.append({**_load(versions_table, version), "secret_id": secret["id"],
                             "encrypted_value": sealed.encrypted_value, "iv": sealed.iv, "key_id": sealed.key_id})
        if versions:
            session.execute(insert(versions_table), versions)
        progress(1)
    audit.record(caller, "restore_backup", None, "ok")
    session.commit()
    return {name: len(payload[name]) for name in ("secrets", "users", "tokens")}
