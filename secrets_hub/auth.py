"""Who is calling, and what they may do: API tokens, callers, scope and key checks."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from secrets_hub import audit
from secrets_hub.crypto import TOKEN_PREFIX, hash_token
from secrets_hub.errors import AuthenticationError, ForbiddenError
from secrets_hub.runtime import runtime
from secrets_hub.store import utcnow
from secrets_hub.validation import SCOPES

READ, WRITE, MCP, ADMIN = SCOPES
ALL_SCOPES = frozenset(SCOPES)
USER_SCOPES = frozenset({READ, WRITE})
# A revoked token stops working in this process at once, and in other processes within this many seconds.
TOKEN_CACHE_SECONDS = 2.0
# last_used_at is kept to the minute, so a busy token does not turn every read into a write.
LAST_USED_PRECISION = timedelta(seconds=60)
MAX_TOKEN_LENGTH = 200


@dataclass(frozen=True)
class Caller:
    """The authenticated party behind one call, whatever the channel."""

    actor: str
    channel: str
    scopes: frozenset[str]
    allow: tuple[str, ...] | None = None
    remote_addr: str | None = None
    user_id: str | None = None

    def may_access(self, key: str) -> bool:
        return self.allow is None or any(fnmatchcase(key, pattern) for pattern in self.allow)


@dataclass(frozen=True)
class TokenRecord:
    id: int
    name: str
    token_hash: str
    scopes: frozenset[str]
    allow: tuple[str, ...] | None
    expires_at: datetime | None
    last_used_at: datetime | None


def anonymous(channel: str, remote_addr: str | None) -> Caller:
    return Caller(actor="anonymous", channel=channel, scopes=frozenset(), remote_addr=remote_addr)


def authorize(caller: Caller, scope: str, action: str, key: str | None = None) -> None:
    """Refuse, with an audit event, a caller that lacks `scope` or may not touch `key`."""
    if scope not in caller.scopes:
        audit.record_now(caller, action, key, "denied")
        raise ForbiddenError(f"Token lacks scope {scope}")
    if key is not None and not caller.may_access(key):
        audit.record_now(caller, action, key, "denied")
        raise ForbiddenError(f'Token may not access "{key}"')


def _token_cache() -> dict[str, tuple[float, TokenRecord | None]]:
    return runtime().token_cache


def _cached(token_hash: str) -> tuple[float, TokenRecord | None] | None:
    cached = _token_cache().get(token_hash)
    return cached if cached and cached[0] > time.monotonic() else None


def _load_token(token_hash: str) -> TokenRecord | None:
    cached = _cached(token_hash)
    if cached:
        return cached[1]
    # Look up by hash, so the raw token never reaches SQL; one probe of a unique index.
    row = runtime().store.token(token_hash)
    record = None
    if row is not None:
        record = TokenRecord(
            id=row["id"], name=row["name"], token_hash=row["token_hash"], scopes=frozenset(row["scopes"].split()),
            allow=tuple(row["allow"].split()) if row["allow"] else None,
            expires_at=row["expires_at"], last_used_at=row["last_used_at"],
        )
    _token_cache()[token_hash] = (time.monotonic() + TOKEN_CACHE_SECONDS, record)
    return record


def forget_token(token_hash: str) -> None:
    _token_cache().pop(token_hash, None)


def _touch_due(record: TokenRecord, now: datetime) -> bool:
    return record.last_used_at is None or now - record.last_used_at >= LAST_USED_PRECISION


def _touch(record: TokenRecord, now: datetime) -> None:
    if not _touch_due(record, now):
        return
    runtime().store.touch_token(record.id, now)
    # The entry keeps the expiry of its lookup: renewing it here would serve a revoked token for longer.
    cached = _cached(record.token_hash)
    _token_cache()[record.token_hash] = (
        cached[0] if cached else time.monotonic() + TOKEN_CACHE_SECONDS,
        TokenRecord(**{**record.__dict__, "last_used_at": now}),
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case), else None."""
    scheme, _, raw = (authorization or "").partition(" ")
    return (raw.strip() or None) if scheme.lower() == "bearer" else None


def _token_hash(raw_token: str) -> str | None:
    """The hash to look a token up by; None for what cannot be one of ours."""
    return hash_token(raw_token) if raw_token.startswith(TOKEN_PREFIX) and len(raw_token) <= MAX_TOKEN_LENGTH else None


def _matching(record: TokenRecord | None, token_hash: str) -> TokenRecord | None:
    # The lookup matched on the hash already; comparing again in constant time costs nothing.
    return record if record is not None and hmac.compare_digest(record.token_hash, token_hash) else None


def _expired(record: TokenRecord, now: datetime) -> bool:
    return record.expires_at is not None and record.expires_at <= now


def _token_caller(record: TokenRecord, channel: str, remote_addr: str | None) -> Caller:
    return Caller(actor=record.name, channel=channel, scopes=record.scopes, allow=record.allow, remote_addr=remote_addr)


def authenticate_token(raw_token: str, channel: str, remote_addr: str | None) -> Caller:
    """Turn a Bearer token into a Caller; unknown, malformed and expired tokens are refused alike."""
    token_hash = _token_hash(raw_token)
    record = None if token_hash is None else _matching(_load_token(token_hash), token_hash)
    now = utcnow()
    if record is None or _expired(record, now):
        caller = anonymous(channel, remote_addr) if record is None else Caller(record.name, channel, frozenset(), remote_addr=remote_addr)
        audit.record_now(caller, "authenticate", None, "denied")
        raise AuthenticationError()
    _touch(record, now)
    return _token_caller(record, channel, remote_addr)


def cached_caller(raw_token: str, channel: str, remote_addr: str | None) -> Caller | None:
    """What authenticate_token would answer, when answering takes no database work: a valid token this process
    looked up within TOKEN_CACHE_SECONDS and whose last use is recorded to the minute. Otherwise None (a
    lookup, a refusal's audit event or a last_used_at update is due): call authenticate_token. Lets an
    event loop check a busy token without handing the check to a thread."""
    token_hash = _token_hash(raw_token)
    cached = None if token_hash is None else _cached(token_hash)
    record = _matching(cached[1], token_hash) if cached else None
    now = utcnow()
    if record is None or _expired(record, now) or _touch_due(record, now):
        return None
    return _token_caller(record, channel, remote_addr)


def caller_for_user(user: Any, channel: str, remote_addr: str | None) -> Caller:
    """A signed-in person: admins hold every scope, other users read and write secrets."""
    return Caller(
        actor=user.email,
        channel=channel,
        scopes=ALL_SCOPES if user.is_admin else USER_SCOPES,
        remote_addr=remote_addr,
        user_id=user.id,
    )


def operator(actor: str) -> Caller:
    """Whoever runs the CLI on the server: holding the master key already, they hold every scope."""
    return Caller(actor=actor, channel="cli", scopes=ALL_SCOPES)
