"""People who sign in to the settings page: creation and password checks."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from flask_login import UserMixin
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from secrets_hub import audit, event_loop
from secrets_hub.auth import ADMIN, Caller, authorize
from secrets_hub.db import db
from secrets_hub.errors import ConflictError, ValidationError
from secrets_hub.models import User
from secrets_hub.runtime import runtime
from secrets_hub.store import new_uuid, utcnow

EMAIL_PATTERN = re.compile(r"[^@\s\x00]+@[^@\s\x00]+")
MIN_PASSWORD = 8


def _password_hash(password: str) -> str:
    # scrypt takes tens of milliseconds without needing the interpreter: on the event loop, it runs beside it.
    return event_loop.blocking(generate_password_hash, password)


def _password_matches(password_hash: str, password: str) -> bool:
    return event_loop.blocking(check_password_hash, password_hash, password)


@functools.cache
def _dummy_hash() -> str:
    # Checked when the email is unknown, so a failed login takes as long whether or not the account exists.
    return _password_hash("secrets-hub-timing-equaliser")


@dataclass(frozen=True)
class SessionUser(UserMixin):
    """The signed-in person as flask-login sees them."""

    id: str
    email: str
    is_admin: bool
    password_hash: str

    def get_id(self) -> str:
        # Binding the session to the password hash ends every session when the password changes.
        return f"{self.id}:{_session_tag(self.password_hash)}"


def _session_tag(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _from_row(row: Any) -> SessionUser:
    return SessionUser(id=row.id, email=row.email, is_admin=row.is_admin, password_hash=row.password_hash)


def validate_credentials(email: Any, password: Any) -> tuple[str, str]:
    if not isinstance(email, str) or len(email) > 320 or not EMAIL_PATTERN.fullmatch(email.strip()):
        raise ValidationError("Email must be a valid email address")
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValidationError(f"Password must be at least {MIN_PASSWORD} characters")
    return email.strip().lower(), password


def count_users() -> int:
    return db.session.execute(select(func.count()).select_from(User)).scalar_one()


def create_user(caller: Caller | None, email: Any, password: Any, is_admin: bool = False,
                remote_addr: str | None = None) -> SessionUser:
    """Create an account; `caller` is None only for the first-run admin, who creates themself in the UI."""
    if caller is not None:
        authorize(caller, ADMIN, "user.create")
    email, password = validate_credentials(email, password)
    row = {"id": new_uuid(), "email": email, "password_hash": _password_hash(password),
           "is_admin": is_admin, "created_at": utcnow()}
    try:
        with runtime().store.writing():
            db.session.execute(insert(User), row)
            audit.record(caller or Caller(email, "ui", frozenset(), remote_addr=remote_addr), "user.create", email, "ok")
            db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ConflictError(f'User "{email}" already exists') from None
    return SessionUser(id=row["id"], email=email, is_admin=is_admin, password_hash=row["password_hash"])


def change_password(caller: Caller, current_password: Any, new_password: Any) -> SessionUser:
    """Change the signed-in user's password; every other session of theirs ends with it."""
    row = db.session.get(User, caller.user_id)
    if row is None or not isinstance(current_password, str) or not _password_matches(row.password_hash, current_password):
        audit.record_now(caller, "user.password", caller.actor, "denied")
        raise ValidationError("Current password is incorrect")
    _, new_password = validate_credentials(row.email, new_password)
    password_hash = _password_hash(new_password)
    with runtime().store.writing():
        row.password_hash = password_hash
        audit.record(caller, "user.password", caller.actor, "ok")
        db.session.commit()
    return _from_row(row)


def sign_in(email: str, password: str, remote_addr: str | None) -> SessionUser | None:
    """The user whose email and password these are, or None; both outcomes are audited."""
    row = None
    if EMAIL_PATTERN.fullmatch(email.strip()):
        row = db.session.execute(select(User).where(User.email == email.strip().lower())).scalar()
    if row is None:
        _password_matches(_dummy_hash(), password)
    user = _from_row(row) if row is not None and _password_matches(row.password_hash, password) else None
    attempt = Caller(email.strip().lower() or "anonymous", "ui", frozenset(), remote_addr=remote_addr)
    audit.record_now(attempt, "login", None, "ok" if user else "denied")
    return user


def load_session_user(session_id: str) -> SessionUser | None:
    """flask-login's user loader: the id must still carry the current password's tag."""
    user_id, _, tag = session_id.partition(":")
    row = db.session.get(User, user_id)
    if row is None or tag != _session_tag(row.password_hash):
        return None
    return _from_row(row)
