"""`rotate-master-key`: re-encrypt every secret and every kept version under the current master secret.

Rows are walked in primary-key order, in batches, each batch in its own transaction. A row is
rewritten only if it still holds the ciphertext that was read (compare-and-set on its iv), so a
write made by a server during the run is never overwritten with the older value. Every row is
readable at every moment: it is either still under a former key, which the configured keys accept,
or already under the new one. Killed at any point, the next run skips what is done and finishes.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import bindparam, func, select, update

from secrets_hub import audit, bootstrap
from secrets_hub.auth import ADMIN, Caller, authorize
from secrets_hub.db import db
from secrets_hub.errors import ConfigError, DecryptionError
from secrets_hub.models import Meta, Secret, SecretVersion
from secrets_hub.runtime import runtime

BATCH_SIZE = 1000
secrets_table = Secret.__table__
versions_table = SecretVersion.__table__


def rows_to_rotate() -> int:
    """How many secret and version rows are not yet under the current key (refusing unconfigured keys first)."""
    _check_keys_configured()
    current = runtime().keyring.key_id
    return sum(
        db.session.execute(select(func.count()).where(table.c.key_id != current)).scalar_one()
        for table in (secrets_table, versions_table)
    )


def _check_keys_configured() -> None:
    """Refuse to start when a row is under a key we cannot open: better than skipping it silently."""
    keyring = runtime().keyring
    for table in (secrets_table, versions_table):
        for key_id in db.session.execute(select(table.c.key_id).distinct()).scalars():
            if key_id not in keyring.key_ids:
                raise ConfigError(
                    f"Some secrets are encrypted under key id {key_id}, which is not configured: "
                    "add its master secret to SECRETS_HUB_OLD_MASTER_KEYS"
                )


def _rotate_table(table, query, progress: Callable[[int], None], failed: list[str]) -> int:
    """Re-encrypt the rows `query` selects (id, key, encrypted_value, iv, key_id) in keyset-paged batches."""
    keyring = runtime().keyring
    rewrite = (
        update(table)
        .where(table.c.id == bindparam("row_id"), table.c.iv == bindparam("old_iv"))
        .values(encrypted_value=bindparam("new_value"), iv=bindparam("new_iv"), key_id=bindparam("new_key_id"))
    )
    rotated, last_id = 0, None
    while True:
        page = query if last_id is None else query.where(table.c.id > last_id)
        rows = db.session.execute(page.order_by(table.c.id).limit(BATCH_SIZE)).all()
        if not rows:
            return rotated
        last_id = rows[-1].id
        params = []
        for row in rows:
            try:
                value = keyring.decrypt(row.encrypted_value, row.iv, row.key_id, row.key)
            except DecryptionError:
                failed.append(row.key)
                continue
            sealed = keyring.encrypt(value, row.key)
            params.append({"row_id": row.id, "old_iv": row.iv, "new_value": sealed.encrypted_value,
                           "new_iv": sealed.iv, "new_key_id": sealed.key_id})
        if params:
            db.session.connection().execute(rewrite, params)
        db.session.commit()
        rotated += len(params)
        progress(len(rows))


def rotate_master_key(caller: Caller, progress: Callable[[int], None] = lambda n: None) -> dict:
    """Re-encrypt everything not yet under the current key; then record the key check under it.

    Returns counts and the keys of rows that failed their integrity check (left as they were).
    """
    authorize(caller, ADMIN, "rotate_master_key")
    _check_keys_configured()
    current = runtime().keyring.key_id
    failed: list[str] = []
    rotated = _rotate_table(
        secrets_table,
        select(secrets_table.c.id, secrets_table.c.key, secrets_table.c.encrypted_value, secrets_table.c.iv,
               secrets_table.c.key_id).where(secrets_table.c.key_id != current),
        progress, failed,
    )
    rotated += _rotate_table(
        versions_table,
        select(versions_table.c.id, secrets_table.c.key, versions_table.c.encrypted_value, versions_table.c.iv,
               versions_table.c.key_id)
        .join(secrets_table, secrets_table.c.id == versions_table.c.secret_id)
        .where(versions_table.c.key_id != current),
        progress, failed,
    )
    # The key check moves too, so the former master secret can be removed from the configuration.
    db.session.execute(update(Meta).where(Meta.name == bootstrap.KEY_CHECK).values(
        value=bootstrap.seal_key_check(runtime().keyring)))
    audit.record(caller, "rotate_master_key", current, "ok" if not failed else "partial")
    db.session.commit()
    return {"rotated": rotated, "failed": sorted(set(failed)), "key_id": current}
