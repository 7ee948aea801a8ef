"""The audit log: who did what to which key, through which channel, with what outcome. Never a value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from secrets_hub.db import db, utcnow
from secrets_hub.models import AuditEvent

if TYPE_CHECKING:
    from secrets_hub.auth import Caller

MAX_LIMIT = 1000


def record(caller: "Caller", action: str, key: str | None, outcome: str) -> None:
    """Add an event to the current transaction; the caller commits it with the change it describes.

    `key` names the subject: the secret's key, or for token and user actions the token name or email.
    """
    db.session.execute(
        insert(AuditEvent),
        {
            "at": utcnow(),
            "actor": _printable(caller.actor),
            "channel": caller.channel,
            "action": action,
            "key": _printable(key),
            "outcome": outcome,
            "remote_addr": caller.remote_addr,
        },
    )


def _printable(text: str | None) -> str | None:
    """What a client sent as a key, made storable: no NUL (PostgreSQL refuses it), bounded length."""
    return None if text is None else text.replace("\x00", "\\0")[:300]


def record_now(caller: "Caller", action: str, key: str | None, outcome: str) -> None:
    """Write an event in a transaction of its own (refusals and reads, which change nothing else)."""
    db.session.rollback()
    record(caller, action, key, outcome)
    db.session.commit()


def list_events(key: str | None = None, actor: str | None = None, limit: int = 100,
                before: int | None = None) -> list[dict[str, Any]]:
    """The newest events first, optionally for one key or one actor; `before` (an event id) pages back."""
    query = select(AuditEvent.__table__).order_by(AuditEvent.id.desc()).limit(min(limit, MAX_LIMIT))
    if before is not None:
        query = query.where(AuditEvent.id < before)
    if key:
        query = query.where(AuditEvent.key == _printable(key))
    if actor:
        query = query.where(AuditEvent.actor == _printable(actor))
    return [dict(row) for row in db.session.execute(query).mappings()]
