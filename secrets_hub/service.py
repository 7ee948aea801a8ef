"""Secret use cases, shared by every channel: scopes, key globs, validation, versions and audit live here.

Their SQL is the store's (store.py). Writes are single statements where they can be (an UPDATE ...
RETURNING bumps the version), so two writers never read-then-write the same row: PostgreSQL's row
lock and SQLite's write lock order them.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from secrets_hub import audit
from secrets_hub.auth import ADMIN, READ, WRITE, Caller, authorize
from secrets_hub.crypto import Sealed
from secrets_hub.errors import ConflictError, DecryptionError, IntegrityCheckError, NotFoundError
from secrets_hub.runtime import runtime
from secrets_hub.store import Conflict, Stored, Transaction, utcnow
from secrets_hub.validation import check_value_size, is_key, validate_description, validate_key, validate_value

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


def _integrity_failed(key: str) -> IntegrityCheckError:
    return IntegrityCheckError(f'Secret "{key}" failed its integrity check')


def _decrypter(key: str) -> Callable[[Any], str]:
    """Decrypt a stored row of `key`; DecryptionError when its check fails."""
    keyring = runtime().keyring
    return lambda row: keyring.decrypt(row.encrypted_value, row.iv, row.key_id, key)


def open_value(caller: Caller, action: str, key: str, row: Any) -> str:
    """Decrypt a stored row of `key`; a failed check is audited and reported as the SPEC words it."""
    try:
        return _decrypter(key)(row)
    except DecryptionError:
        audit.record_now(caller, action, key, "integrity_failed")
        raise _integrity_failed(key) from None


def _stored_version(caller: Caller, action: str, key: str, version: int) -> Stored:
    """Version `version` of `key`; a missing one is audited and reported as the SPEC words it."""
    store = runtime().store
    row = store.version(key, version)
    if row is None:
        audit.record_now(caller, action, key, "not_found")
        if store.exists(key):
            raise NotFoundError(f'Secret "{key}" has no version {version}')
        raise _not_found(key)
    return row


def list_secrets(caller: Caller) -> list[dict[str, Any]]:
    """Metadata of every secret the caller may read, sorted by key; never a value."""
    authorize(caller, READ, "list")
    return [row for row in runtime().store.metadata() if caller.may_access(row["key"])]


def read_secret(caller: Caller, key: str, version: int | None = None) -> dict[str, Any]:
    """Decrypt the current value, or version `version`; every read is audited."""
    _authorize_lookup(caller, READ, "read", key)
    if version is None:
        # Read by the audit writer with the other reads of its batch (see audit.read_now).
        found = audit.read_now(caller, key, _decrypter(key))
        if found is None:
            raise _not_found(key)
        row, value = found
        if value is None:
            raise _integrity_failed(key)
    else:
        row = _stored_version(caller, "read", key, version)
        value = open_value(caller, "read", key, row)
        audit.record_now(caller, "read", key, "ok")
    return {"key": key, "value": value, "version": row.version}


def create_secret(caller: Caller, key: str, value: str, description: str | None = None, action: str = "create",
                  created_at: datetime | None = None, updated_at: datetime | None = None) -> dict[str, Any]:
    """Store a new secret as its version 1; imports pass the timestamps the secret had where it came from."""
    validate_key(key)
    authorize(caller, WRITE, action, key)
    validate_description(description)
    sealed = _seal(key, value)
    created_at = created_at or utcnow()
    updated_at = updated_at or created_at
    keep = runtime().settings.keep_versions

    def insert(tx: Transaction) -> str:
        secret_id = tx.insert_secret(key, sealed, description, created_at, updated_at, caller.user_id)
        tx.add_version(secret_id, 1, sealed, created_at, caller.actor, keep)
        tx.audit([audit.event(caller, action, key, "ok")])
        return secret_id

    try:
        secret_id = runtime().store.write(insert)
    except Conflict:
        audit.record_now(caller, action, key, "conflict")
        raise ConflictError(f'Secret with key "{key}" already exists') from None
    runtime().plugins.secret_changed(key, "create")
    return {"id": secret_id, "key": key, "description": description, "created_at": created_at,
            "updated_at": updated_at}


def update_secret(caller: Caller, key: str, value: str = UNSET, description: str | None = UNSET,
                  expected_version: int | None = None, action: str = "update") -> dict[str, Any]:
    """Change the value (a new version) and/or the description; `expected_version` makes it check-and-set."""
    _authorize_lookup(caller, WRITE, action, key)
    if description is not UNSET:
        validate_description(description)
    sealed = None if value is UNSET else _seal(key, value)
    now = utcnow()
    row, current = runtime().store.update_secret(
        key, now, sealed, None if description is UNSET else description, set_description=description is not UNSET,
        expected_version=expected_version, created_by=caller.actor, keep=runtime().settings.keep_versions,
        event=audit.event(caller, action, key, "ok"))
    if row is None:
        if current is None:
            audit.record_now(caller, action, key, "not_found")
            raise _not_found(key)
        audit.record_now(caller, action, key, "conflict")
        raise ConflictError(f'Secret "{key}" changed: current version is {current}')
    # Plugins hear what happened to the secret; how it happened (an import, say) is the audit log's to tell.
    runtime().plugins.secret_changed(key, "restore" if action == "restore" else "update")
    return {**row, "version": row["current_version"]}


def put_secret(caller: Caller, key: str, value: str, description: str | None = None) -> int:
    """Create KEY, or give it a new version if it exists (`description` None keeps the old one); the version."""
    validate_key(key)
    extra = {} if description is None else {"description": description}
    if runtime().store.exists(key):
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
    found = runtime().store.value_and_description(key)
    if found is None:
        try:
            create_secret(caller, key, value, None if description is UNSET else description, "import",
                          created_at, updated_at)
            return "created"
        except ConflictError:  # created by someone else since the lookup: it exists now
            return import_secret(caller, key, value, description, overwrite)
    if not overwrite:
        audit.record_now(caller, "import", key, "skipped")
        return "skipped"
    row, current_description = found
    if _same_value(row, key, value) and description in (UNSET, current_description):
        audit.record_now(caller, "import", key, "unchanged")
        return "unchanged"
    update_secret(caller, key, value=value, description=description, action="import")
    return "updated"


def _same_value(row: Stored, key: str, value: str) -> bool:
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

    def delete(tx: Transaction) -> bool:
        deleted = tx.delete_secret(key)
        if deleted:
            tx.audit([audit.event(caller, "delete", key, "ok")])
        return deleted

    if not runtime().store.write(delete):
        audit.record_now(caller, "delete", key, "not_found")
        raise _not_found(key)
    runtime().plugins.secret_changed(key, "delete")


def list_versions(caller: Caller, key: str) -> list[dict[str, Any]]:
    """The kept versions of one secret, newest first."""
    _authorize_lookup(caller, READ, "versions", key)
    found = runtime().store.versions(key)
    if found is None:
        raise _not_found(key)
    current, rows = found
    return [{**row, "current": row["version"] == current} for row in rows]


def restore_version(caller: Caller, key: str, version: int) -> dict[str, Any]:
    """Make an older version's value the newest version."""
    _authorize_lookup(caller, WRITE, "restore", key)
    row = _stored_version(caller, "restore", key, version)
    return update_secret(caller, key, value=open_value(caller, "restore", key, row), action="restore")


def read_audit_log(caller: Caller, key: str | None = None, actor: str | None = None,
                   limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    """The newest audit events, optionally for one key or actor, older than event `before` (admin only)."""
    authorize(caller, ADMIN, "audit.read")
    return audit.list_events(key=key, actor=actor, limit=limit, before=before)


def skills_report(caller: Caller) -> list[dict[str, Any]]:
    """Every skill plugin, the keys it requires and whether each is set, and broken plugins with the reason."""
    authorize(caller, READ, "skills")
    existing = runtime().store.keys()
    return [
        {"name": skill.name, "error": skill.error, "requires": [
            {"key": r.key, "description": r.description, "required": r.required, "obtain_url": r.obtain_url,
             # A key outside the caller's globs reads as missing: its existence is not theirs to learn.
             "set": r.key in existing and caller.may_access(r.key)} for r in skill.requires]}
        for skill in runtime().plugins.skills
    ]
