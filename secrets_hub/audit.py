"""The audit log: who did what to which key, through which channel, with what outcome. Never a value.

Two ways in. An event about a change is added to the change's own transaction (the store's
`Transaction.audit` for secrets, `record` for users and tokens), so the two commit or vanish
together. An event that stands alone, above all a read of a value, goes through the process's
`GroupCommitWriter` (`record_now`): concurrent requests hand their events to one thread, which
writes everything waiting in a single transaction, and each request waits until its own event is
committed before it answers. Nothing is acknowledged unaudited, so nothing is lost; and
readers share one commit instead of queueing for the write lock (SQLite) or an fsync (PostgreSQL)
one by one.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secrets_hub.errors import DatabaseUnavailableError
from secrets_hub.store import Store, utcnow

if TYPE_CHECKING:
    from secrets_hub.auth import Caller

MAX_LIMIT = 1000
MAX_BATCH = 500
# A writer that has not answered by then is stuck (the database hangs): the request fails, unanswered.
WAIT_SECONDS = 30


def event(caller: "Caller", action: str, key: str | None, outcome: str) -> dict[str, Any]:
    """The row of one event. `key` names the subject: the secret's key, or for token and user actions the
    token name or email."""
    return {"at": utcnow(), "actor": _printable(caller.actor), "channel": caller.channel, "action": action,
            "key": _printable(key), "outcome": outcome, "remote_addr": caller.remote_addr}


def record(caller: "Caller", action: str, key: str | None, outcome: str) -> None:
    """Add an event to the ORM session's transaction (users, tokens); the caller commits it with the change.

    Secrets are written through the store, which adds their events to its own transaction.
    """
    from secrets_hub.db import db  # the ORM is loaded only where it is used, never by `secrets-hub get`
    from secrets_hub.models import AuditEvent

    db.session.execute(AuditEvent.__table__.insert(), event(caller, action, key, outcome))


def _printable(text: str | None) -> str | None:
    """What a client sent as a key, made storable: no NUL (PostgreSQL refuses it), bounded length."""
    return None if text is None else text.replace("\x00", "\\0")[:300]


def record_now(caller: "Caller", action: str, key: str | None, outcome: str) -> None:
    """Commit an event that stands alone (a read, a refusal); returns once it is in the database.

    A caller holding an ORM transaction that wrote must end it first: on SQLite it holds the write lock.
    """
    from secrets_hub.runtime import runtime

    runtime().audit_writer.write(event(caller, action, key, outcome))


@dataclass
class _Pending:
    row: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommitWriter:
    """One thread per process that commits the events waiting for it together (see the module docstring)."""

    def __init__(self, store: Store):
        self._store = store
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
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            error = None
            try:
                # One statement, so one transaction, for the whole batch. The store replaces connections that died
                # while idle; any other failure (a locked SQLite file has waited out its busy timeout) is final.
                self._store.append_audit([pending.row for pending in batch])
            except Exception as failure:  # noqa: BLE001 - handed to every waiting request, which fails with it
                error = failure
            for pending in batch:
                pending.error = error
                pending.done.set()


def list_events(key: str | None = None, actor: str | None = None, limit: int = 100,
                before: int | None = None) -> list[dict[str, Any]]:
    """The newest events first, optionally for one key or one actor; `before` (an event id) pages back."""
    from secrets_hub.runtime import runtime

    return runtime().store.audit_events(key=_printable(key) if key else None, actor=_printable(actor) if actor else None,
                                        limit=min(limit, MAX_LIMIT), before=before)
