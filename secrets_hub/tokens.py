"""API token management: create (shown once), list, revoke. Admin only, always audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Mapping

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from secrets_hub import audit
from secrets_hub.auth import ADMIN, Caller, authorize, forget_token
from secrets_hub.crypto import hash_token, new_api_token
from secrets_hub.db import db
from secrets_hub.errors import ConflictError, NotFoundError
from secrets_hub.models import ApiToken
from secrets_hub.runtime import runtime
from secrets_hub.store import utcnow
from secrets_hub.validation import is_token_name

TOKEN_COLUMNS = (ApiToken.name, ApiToken.scopes, ApiToken.allow, ApiToken.created_at,
                 ApiToken.last_used_at, ApiToken.expires_at)


def _public(row: Mapping[str, Any]) -> dict[str, Any]:
    """A token record as shown to admins: never the token, never its hash."""
    return {
        "name": row["name"],
        "scopes": row["scopes"].split(),
        "allow": row["allow"].split() if row["allow"] else None,
        "created_at": row["created_at"],
        "last_used_at": row["last_used_at"],
        "expires_at": row["expires_at"],
    }


def create_token(caller: Caller, name: str, scopes: list[str], allow: list[str] | None,
                 expires_in: timedelta | None) -> dict[str, Any]:
    """Mint a token; the returned `token` is the only copy that will ever exist."""
    authorize(caller, ADMIN, "token.create")
    raw = new_api_token()
    now = utcnow()
    row = {
        "name": name,
        "token_hash": hash_token(raw),
        "scopes": " ".join(scopes),
        "allow": " ".join(allow) if allow else None,
        "created_at": now,
        "created_by": caller.actor,
        "last_used_at": None,
        "expires_at": now + expires_in if expires_in else None,
    }
    try:
        with runtime().store.writing():
            db.session.execute(insert(ApiToken), row)
            audit.record(caller, "token.create", name, "ok")
            db.session.commit()
    except IntegrityError:
        db.session.rollback()
        audit.record_now(caller, "token.create", name, "conflict")
        raise ConflictError(f'Token "{name}" already exists') from None
    return {**_public(row), "token": raw}


def list_tokens(caller: Caller) -> list[dict[str, Any]]:
    authorize(caller, ADMIN, "token.list")
    return [_public(row) for row in db.session.execute(select(*TOKEN_COLUMNS).order_by(ApiToken.name)).mappings()]


def revoke_token(caller: Caller, name: str) -> None:
    """Delete the token; this process stops accepting it at once, others within seconds."""
    authorize(caller, ADMIN, "token.revoke")
    with runtime().store.writing():
        token_hash = is_token_name(name) and db.session.execute(
            delete(ApiToken).where(ApiToken.name == name).returning(ApiToken.token_hash)
        ).scalar()
        if token_hash:
            audit.record(caller, "token.revoke", name, "ok")
            db.session.commit()
        else:
            db.session.rollback()  # the DELETE holds SQLite's write lock, which the audit writer needs
    if not token_hash:
        audit.record_now(caller, "token.revoke", name, "not_found")
        raise NotFoundError(f'Token "{name}" not found')
    forget_token(token_hash)
