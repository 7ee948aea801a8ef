"""The audit log: who did what to which key, through which channel, with what outcome. Never a value.

Two ways in. An event about a change is added to the change's own transaction (`record`), so the
two commit or vanish together. An event that stands alone, above all a read of a value, goes through
the process's `GroupCommitWriter` (`record_now`): concurrent requests hand their events to one
thread, which writes everything waiting in a single transaction, and each request waits until its
own event is committed before it answers. Nothing is acknowledged unaudited, so nothing is lost; and
readers share one commit instead of queueing for the write lock (SQLite) or an fsync (PostgreSQL)
one by one.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from secrets_hub.db import db, utcnow
from secrets_hub.errors import DatabaseUnavailableError
from secrets_hub.models import AuditEvent

if TYPE_CHECKING:
    from secrets_hub.auth import Caller

audit_table = AuditEvent.__table__
MAX_LIMIT = 1000
MAX_BATCH = 500
# A writer that has not answered by then is stuck (the database hangs): the request fails, unanswered.
WAIT_SECONDS = 30


def _event(caller: "Caller", action: str, key: str | None, outcome: str) -> dict[str, Any]:
    """`key` names the subject: the secret's key, or for token and user actions the token name or email."""
    return {"at": utcnow(), "actor": _printable(caller.actor), "channel": caller.channel, "action": action,
            "key": _printable(key), "outcome": outcome, "remote_addr": caller.remote_addr}


def record(caller: "Caller", action: str, key: str | None, outcome: str) -> None:
    """Add an event to the current transaction; the caller commits it with the change it describes."""
    db.session.execute(audit_table.insert(), _event(caller, action, key, outcome))


def _printable(text: str | None) -> str | None:
    """What a client sent as a key, made storable: no NUL (PostgreSQL refuses it), bounded length."""
    return None if text is None else text.replace("\x00", "\\0")[:300]


def record_now(caller: "Caller", action: str, key: str | None, outcome: str) -> None:
    """Commit an event that stands alone (a read, a refusal); returns once it is in the database."""
    # Let go of any open transaction first: on SQLite it may hold the write lock the writer needs.
    db.session.rollback()
    from secrets_hub.runtime import runtime

    runtime().audit_writer.write(_event(caller, action, key, outcome))


@dataclass
class _Pending:
    row: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommitWriter:
    """One thread per process that commits the events waiting for it together (see the module docstring)."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def write(self, row: dict[str, Any]) -> None:
        pending = _Pending(row)
        self._queue.put(pending)
        self._ensure_running()
        if not pending.done.wait(WAIT_SECONDS):
            raise DatabaseUnavailableError()
        if pending.error is not None:
            raise pending.error

    def _ensure_running(self) -> None:
        # Started on first use, so a server that forks workers after loading the app gets one per worker.
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        connection = None  # kept while events keep coming; back to the pool when idle, so it can be disposed
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            error = None
            # A kept connection may have died since the last batch (a database restart): retry once on a new
            # one. Any other failure (a locked SQLite file has already waited out busy_timeout) is final.
            for _attempt in range(2):
                try:
                    connection = connection or self._engine.connect()
                    connection.execute(audit_table.insert(), [pending.row for pending in batch])
                    connection.commit()
                    error = None
                    break
                except Exception as failure:  # noqa: BLE001 - handed to every waiting request, which fails with it
                    error = failure
                    if connection is not None:
                        connection.invalidate()
                        connection.close()
                    connection = None
                    if not getattr(failure, "connection_invalidated", False):
                        break
            for pending in batch:
                pending.error = error
                pending.done.set()
            if connection is not None and self._queue.empty():
                connection.close()
                connection = None


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
