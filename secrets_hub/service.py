"""Secret use cases, shared by every channel: scopes, key globs, validation, versions and audit live here.

Writes are single statements where they can be (an UPDATE ... RETURNING bumps the version), so two
writers never read-then-write the same row: PostgreSQL's row lock and SQLite's write lock order them.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from secrets_hub import audit
from secrets_hub.auth import ADMIN, READ, WRITE, Caller, authorize
from secrets_hub.crypto import Sealed
from secrets_hub.db import db, utcnow
from secrets_hub.errors import ConflictError, DecryptionError, IntegrityCheckError, NotFoundError
from secrets_hub.models import Secret, SecretVersion, new_uuid
from secrets_hub.runtime import runtime
from secrets_hub.validation import check_value_size, is_key, validate_description, validate_key, validate_value

secrets_table = Secret.__table__
versions_table = SecretVersion.__table__
META_COLUMNS = (secrets_table.c.id, secrets_table.c.key, secrets_table.c.description,
                secrets_table.c.created_at, secrets_table.c.updated_at)
UNSET: Any = object()


def _not_found(key: str) -> NotFoundError:
    return NotFoundError(f'Secret with key "{key}" not found')


def _authorize_lookup(caller: Caller, scope: str, action: str, key: str) -> None:
    """Check scope and globs, then answer "not found" for a key no secret could have, without a query."""
    authorize(caller, scope, action, key)
    if not is_key(key):
        audit.record_now(caller, action, key, "not_found")
        raise _not_found(key)


def _seal(key: str, value: str) -> Sealed:
    validate_value(value)
    check_value_size(value, runtime().settings.max_value_bytes)
    return runtime().keyring.encrypt(value, key)


def open_value(caller: Caller, action: str, key: str, row: Any) -> str:
    """Decrypt a stored row of `key`; a failed check is audited and reported as the SPEC words it."""
    try:
        return runtime().keyring.decrypt(row.encrypted_value, row.iv, row.key_id, key)
    except DecryptionError:
        audit.record_now(caller, action, key, "integrity_failed")
        raise IntegrityCheckError(f'Secret "{key}" failed its integrity check') from None


def list_secrets(caller: Caller) -> list[dict[str, Any]]:
    """Metadata of every secret the caller may read, sorted by key; never a value."""
    authorize(caller, READ, "list")
    with db.engine.connect() as connection:
        result = connection.execute(select(*META_COLUMNS).order_by(secrets_table.c.key))
        names = tuple(result.keys())
        rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    return [row for row in rows if caller.may_access(row["key"])]


def read_secret(caller: Caller, key: str, version: int | None = None) -> dict[str, Any]:
    """Decrypt the current value, or version `version`; every read is audited."""
    _authorize_lookup(caller, READ, "read", key)
    if version is None:
        row = _read_one(
            select(secrets_table.c.encrypted_value, secrets_table.c.iv, secrets_table.c.key_id,
                   secrets_table.c.current_version.label("version")).where(secrets_table.c.key == key))
    else:
        row = _read_one(
            select(versions_table.c.encrypted_value, versions_table.c.iv, versions_table.c.key_id,
                   versions_table.c.version)
            .join(secrets_table, secrets_table.c.id == versions_table.c.secret_id)
            .where(secrets_table.c.key == key, versions_table.c.version == version))
    if row is None:
        audit.record_now(caller, "read", key, "not_found")
        if version is not None and _exists(key):
            raise NotFoundError(f'Secret "{key}" has no version {version}')
        raise _not_found(key)
    value = open_value(caller, "read", key, row)
    audit.record_now(caller, "read", key, "ok")
    return {"key": key, "value": value, "version": row.version}


def _read_one(statement: Any) -> Any:
    """One row, read on a pooled connection outside the session: the hot read path opens no ORM
    transaction, so there is none to end before its audit event is written."""
    with db.engine.connect() as connection:
        return connection.execute(statement).first()


def _exists(key: str) -> bool:
    return db.session.execute(select(secrets_table.c.id).where(secrets_table.c.key == key)).first() is not None


def create_secret(caller: Caller, key: str, value: str, description: str | None = None, action: str = "create",
                  created_at: datetime | None = None, updated_at: datetime | None = None) -> dict[str, Any]:
    """Store a new secret as its version 1; imports pass the timestamps the secret had where it came from."""
    validate_key(key)
    authorize(caller, WRITE, action, key)
    validate_description(description)
    sealed = _seal(key, value)
    created_at = created_at or utcnow()
    row = {"id": new_uuid(), "key": key, "encrypted_value": sealed.encrypted_value, "iv": sealed.iv,
           "description": description, "created_at": created_at, "updated_at": updated_at or created_at,
           "created_by": caller.user_id, "current_version": 1, "key_id": sealed.key_id}
    try:
        db.session.execute(insert(secrets_table), row)
        _add_version(caller, row["id"], 1, sealed, created_at)
        audit.record(caller, action, key, "ok")
        db.session.commit()
    except IntegrityError:
        audit.record_now(caller, action, key, "conflict")
        raise ConflictError(f'Secret with key "{key}" already exists') from None
    runtime().plugins.secret_changed(key, "create")
    return {name: row[name] for name in ("id", "key", "description", "created_at", "updated_at")}


def _add_version(caller: Caller, secret_id: str, version: int, sealed: Sealed, now) -> None:
    db.session.execute(insert(versions_table), {
        "secret_id": secret_id, "version": version, "encrypted_value": sealed.encrypted_value,
        "iv": sealed.iv, "key_id": sealed.key_id, "created_at": now, "created_by": caller.actor,
    })
    keep = runtime().settings.keep_versions
    if version > keep:
        db.session.execute(delete(versions_table).where(
            versions_table.c.secret_id == secret_id, versions_table.c.version <= version - keep))


def update_secret(caller: Caller, key: str, value: str = UNSET, description: str | None = UNSET,
                  expected_version: int | None = None, action: str = "update") -> dict[str, Any]:
    """Change the value (a new version) and/or the description; `expected_version` makes it check-and-set."""
    _authorize_lookup(caller, WRITE, action, key)
    now = utcnow()
    changes: dict[str, Any] = {"updated_at": now}
    if description is not UNSET:
        changes["description"] = validate_description(description)
    sealed = None
    if value is not UNSET:
        sealed = _seal(key, value)
        changes.update(encrypted_value=sealed.encrypted_value, iv=sealed.iv, key_id=sealed.key_id,
                       current_version=secrets_table.c.current_version + 1)
    statement = update(secrets_table).where(secrets_table.c.key == key)
    if expected_version is not None:
        statement = statement.where(secrets_table.c.current_version == expected_version)
    row = db.session.execute(
        statement.values(**changes).returning(*META_COLUMNS, secrets_table.c.current_version)
    ).mappings().first()
    if row is None:
        current = db.session.execute(
            select(secrets_table.c.current_version).where(secrets_table.c.key == key)).scalar()
        if current is None:
            audit.record_now(caller, action, key, "not_found")
            raise _not_found(key)
        audit.record_now(caller, action, key, "conflict")
        raise ConflictError(f'Secret "{key}" changed: current version is {current}')
    if sealed is not None:
        _add_version(caller, row["id"], row["current_version"], sealed, now)
    audit.record(caller, action, key, "ok")
    db.session.commit()
    # Plugins hear what happened to the secret; how it happened (an import, say) is the audit log's to tell.
    runtime().plugins.secret_changed(key, "restore" if action == "restore" else "update")
    return {**row, "version": row["current_version"]}


def put_secret(caller: Caller, key: str, value: str, description: str | None = None) -> int:
    """Create KEY, or give it a new version if it exists (`description` None keeps the old one); the version."""
    validate_key(key)
    extra = {} if description is None else {"description": description}
    if _exists(key):
        return update_secret(caller, key, value=value, **extra)["version"]
    try:
        create_secret(caller, key, value, description)
        return 1
    except ConflictError:  # created by someone else between the check and the insert
        return update_secret(caller, key, value=value, **extra)["version"]


def import_secret(caller: Caller, key: str, value: str, description: str | None = UNSET, overwrite: bool = True,
                  created_at: datetime | None = None, updated_at: datetime | None = None) -> str:
    """Bring one secret in from outside (a .env file, the seed's database); safe to repeat.

    Returns "created", "updated", "unchanged" (same value and description: no new version) or
    "skipped" (it exists and `overwrite` is off).
    """
    validate_key(key)
    authorize(caller, WRITE, "import", key)
    row = db.session.execute(
        select(secrets_table.c.encrypted_value, secrets_table.c.iv, secrets_table.c.key_id,
               secrets_table.c.description).where(secrets_table.c.key == key)).first()
    if row is None:
        try:
            create_secret(caller, key, value, None if description is UNSET else description, "import",
                          created_at, updated_at)
            return "created"
        except ConflictError:  # created by someone else since the lookup: it exists now
            return import_secret(caller, key, value, description, overwrite)
    if not overwrite:
        audit.record_now(caller, "import", key, "skipped")
        return "skipped"
    if _same_value(row, key, value) and description in (UNSET, row.description):
        audit.record_now(caller, "import", key, "unchanged")
        return "unchanged"
    update_secret(caller, key, value=value, description=description, action="import")
    return "updated"


def _same_value(row: Any, key: str, value: str) -> bool:
    try:
        current = runtime().keyring.decrypt(row.encrypted_value, row.iv, row.key_id, key)
    except DecryptionError:  # a damaged value is replaced, not compared
        return False
    return hmac.compare_digest(current.encode(), value.encode())


def read_values(caller: Caller, patterns: tuple[str, ...] = ()) -> dict[str, str]:
    """The values of every secret the caller may read whose key matches one of `patterns` (all when empty).

    Each value read is audited like any other read.
    """
    keys = [row["key"] for row in list_secrets(caller)
            if not patterns or any(fnmatchcase(row["key"], pattern) for pattern in patterns)]
    return {key: read_secret(caller, key)["value"] for key in keys}


def delete_secret(caller: Caller, key: str) -> None:
    """Delete a secret and every version of it."""
    _authorize_lookup(caller, WRITE, "delete", key)
    deleted = db.session.execute(
        delete(secrets_table).where(secrets_table.c.key == key).returning(secrets_table.c.id)).first()
    if deleted is None:
        audit.record_now(caller, "delete", key, "not_found")
        raise _not_found(key)
    audit.record(caller, "delete", key, "ok")
    db.session.commit()
    runtime().plugins.secret_changed(key, "delete")


def list_versions(caller: Caller, key: str) -> list[dict[str, Any]]:
    """The kept versions of one secret, newest first."""
    _authorize_lookup(caller, READ, "versions", key)
    current = db.session.execute(
        select(secrets_table.c.id, secrets_table.c.current_version).where(secrets_table.c.key == key)).first()
    if current is None:
        raise _not_found(key)
    rows = db.session.execute(
        select(versions_table.c.version, versions_table.c.created_at, versions_table.c.created_by)
        .where(versions_table.c.secret_id == current.id).order_by(versions_table.c.version.desc())
    ).mappings()
    return [{**row, "current": row["version"] == current.current_version} for row in rows]


def restore_version(caller: Caller, key: str, version: int) -> dict[str, Any]:
    """Make an older version's value the newest version."""
    _authorize_lookup(caller, WRITE, "restore", key)
    row = db.session.execute(
        select(versions_table.c.encrypted_value, versions_table.c.iv, versions_table.c.key_id)
        .join(secrets_table, secrets_table.c.id == versions_table.c.secret_id)
        .where(secrets_table.c.key == key, versions_table.c.version == version)
    ).first()
    if row is None:
        audit.record_now(caller, "restore", key, "not_found")
        if _exists(key):
            raise NotFoundError(f'Secret "{key}" has no version {version}')
        raise _not_found(key)
    return update_secret(caller, key, value=open_value(caller, "restore", key, row), action="restore")


def read_audit_log(caller: Caller, key: str | None = None, actor: str | None = None,
                   limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    """The newest audit events, optionally for one key or actor, older than event `before` (admin only)."""
    authorize(caller, ADMIN, "audit.read")
    return audit.list_events(key=key, actor=actor, limit=limit, before=before)


def skills_report(caller: Caller) -> list[dict[str, Any]]:
    """Every skill plugin, the keys it requires and whether each is set, and broken plugins with the reason."""
    authorize(caller, READ, "skills")
    existing = set(db.session.execute(select(secrets_table.c.key)).scalars())
    return [
        {"name": skill.name, "error": skill.error, "requires": [
            {"key": r.key, "description": r.description, "required": r.required, "obtain_url": r.obtain_url,
             # A key outside the caller's globs reads as missing: its existence is not theirs to learn.
             "set": r.key in existing and caller.may_access(r.key)} for r in skill.requires]}
        for skill in runtime().plugins.skills
    ]
