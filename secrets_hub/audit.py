"""The audit log: who did what to which key, through which channel, with what outcome. Never a value.

Two ways in. An event about a change is added to the change's own transaction (the store's
`Transaction.audit` for secrets, `record` for users and tokens), so the two commit or vanish
together. An event that stands alone, above all a read of a value, goes through the process's
`GroupCommitWriter` (`record_now`, `read_now`): whichever request finds nobody writing writes everything
waiting in a single statement, while requests that arrive meanwhile wait for the next such batch; each
request waits until its own event is committed before it answers. Nothing is acknowledged unaudited, so
nothing is lost; and readers share one commit instead of queueing for the write lock (SQLite) or an
fsync (PostgreSQL) one by one.

A read of a current value (`read_now`) on PostgreSQL is done by the writer too, for the whole batch at
once: one statement reads every value the batch asks for, each is decrypted, and each event's outcome says
what its request found (ok, not_found, integrity_failed) before the batch is committed. Each statement is a
round trip there, so a read costs a share of two statements instead of one of its own plus a share of the
commit: audited reads served a third to a half more per second (alternating 8 s runs on an AMD EPYC VM:
4,440-7,080 req/s against 3,050-5,310). On SQLite, where a read is a local call, each request reads for
itself before it queues its event, as the writer would otherwise do it while holding the writer locks.

Requests served on an event loop (`serve` on SQLite: see event_loop) wait for their batch on a future of the
loop instead of a lock, and the request whose turn it is to write first lets the loop run once, so that the
requests that arrived with it queue their events and share its commit.
"""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from secrets_hub import event_loop, forks
from secrets_hub.errors import DatabaseUnavailableError, DecryptionError
from secrets_hub.store import Store, Stored, utcnow

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


def read_now(caller: "Caller", key: str, open_value: Callable[[Stored], str]) -> tuple[Stored, str | None] | None:
    """Read the current value of `key` (a valid key: any failure of the read fails the whole batch) and commit
    the read's event (see the module docstring); returns once the event is in the database. None when no
    secret has `key` (outcome not_found); (its row, None) when `open_value` (the decryption, run by the batch's
    writer) raised DecryptionError (integrity_failed); else (its row, the value) (ok)."""
    from secrets_hub.runtime import runtime

    return runtime().audit_writer.write(event(caller, "read", key, "ok"), (key, open_value))


class _Pending:
    """One event on its way in, and what its request sleeps on until the event is committed (or it is its turn
    to write): a bare lock, as a threading.Event costs several times more, twice per read; on the event loop
    (see event_loop), a future of the loop."""

    __slots__ = ("row", "read", "found", "state", "error", "_wake", "_loop", "_loop_thread")

    def __init__(self, row: dict[str, Any], read: tuple[str, Callable[[Stored], str]] | None):
        self.row = row
        self.read = read  # (key, open_value) of a read_now
        self.found: tuple[Stored, str | None] | None = None  # what the read found, as read_now returns it
        self.state = "waiting"  # then "writing" (taken into a batch), "leading" (its turn to write) or "done"
        self.error: BaseException | None = None
        if event_loop.on_loop():
            self._loop = event_loop.running_loop()
            self._loop_thread = threading.get_ident()
            self._wake: Any = self._loop.create_future()
        else:
            self._loop = None
            self._wake = _thread.allocate_lock()
            self._wake.acquire()

    def sleep(self, seconds: float) -> bool:
        if self._loop is None:
            return self._wake.acquire(timeout=seconds)
        timer = self._loop.call_later(seconds, self._resolve, False)
        try:
            return event_loop.wait_for(self._wake)
        finally:
            timer.cancel()

    def wake(self, state: str, error: BaseException | None = None) -> None:
        # The error first: a request whose wait has just run out may read the state at any moment, and must
        # not find "done" with the error still unset (a value read for a batch that failed to commit).
        self.error = error
        self.state = state
        if self._loop is None:
            self._wake.release()
        elif threading.get_ident() == self._loop_thread:
            self._resolve()
        else:  # written by a thread beside the loop (a plugin's, say)
            try:
                self._loop.call_soon_threadsafe(self._resolve)
            except RuntimeError:  # the loop is closed: nobody waits there any more
                pass

    def _resolve(self, woken: bool = True) -> None:
        if not self._wake.done():  # not if its wait ran out, or was cancelled
            self._wake.set_result(woken)


class GroupCommitWriter:
    """Group commit with no thread of its own (see the module docstring).

    The request that finds nobody writing writes: its own event, and every event that arrived meanwhile,
    in one INSERT (on PostgreSQL after one SELECT for the batch's reads). Requests that arrive while a batch
    is being written wait; when it is committed, the writer wakes those whose events it wrote and hands the
    turn to the first of the others. An audited read with nobody else writing therefore costs no thread
    switch; under load, events share commits.
    """

    def __init__(self, store: Store):
        self._store = store
        self._start_afresh()
        forks.start_afresh_in_forked_children(self)

    def _start_afresh(self) -> None:
        # Also in a forked child (see forks): a process forked while one of its threads wrote a batch would
        # inherit a turn to write that nobody holds, and the waiting requests of threads it does not have.
        self._lock = threading.Lock()
        self._waiting: list[_Pending] = []
        self._writing = False

    def write(self, row: dict[str, Any], read: tuple[str, Callable[[Stored], str]] | None = None
              ) -> tuple[Stored, str | None] | None:
        """Commit `row`; with `read` (key, open_value), first read the key's value for it (see read_now)."""
        pending = _Pending(row, read)
        if read is not None and not self._store.backend.reads_in_batches:
            self._read([pending])
        with self._lock:
            self._waiting.append(pending)
            leading = not self._writing
            self._writing = True
        if not leading and not self._sleep(pending):
            # "done" is set outside the lock, after the error (see _Pending.wake).
            with self._lock:
                if pending.state == "waiting":
                    self._waiting.remove(pending)
                if pending.state in ("waiting", "writing"):
                    # The writer is stuck (the database hangs). An event already taken into its batch may
                    # still be committed: recorded for a request that failed, never lost.
                    raise DatabaseUnavailableError()
        if pending.state != "done":
            self._write_until_committed(pending)
        if pending.error is not None:
            raise pending.error
        return pending.found

    def _sleep(self, pending: _Pending) -> bool:
        """Wait for `pending`'s event to be committed or for its turn; False after WAIT_SECONDS."""
        try:
            return pending.sleep(WAIT_SECONDS)
        except BaseException:
            # Interrupted (a KeyboardInterrupt in the main thread) while it waits, where such a thread spends its
            # time: its request fails, and it leaves the queue, passing on the turn if it was just handed it, or
            # nobody would write again.
            with self._lock:
                self._leave_queue(pending)
                if pending.state == "leading":
                    self._pass_turn()
            raise

    def _leave_queue(self, pending: _Pending) -> None:
        """Take an interrupted request's event out of the queue, unless a batch has it (holding self._lock)."""
        if pending.state in ("waiting", "leading"):
            self._waiting.remove(pending)

    def _pass_turn(self) -> None:
        """To the first request waiting, if any (holding self._lock)."""
        if self._waiting:
            self._waiting[0].wake("leading")
        else:
            self._writing = False

    def _write_until_committed(self, own: _Pending) -> None:
        try:
            if event_loop.on_loop():
                # Let the requests that arrived with this one queue their events first, to share its commit.
                try:
                    event_loop.sleep(0)
                except BaseException:
                    # Cancelled: its event is still waiting, and must not be handed the turn it gives up.
                    with self._lock:
                        self._leave_queue(own)
                    raise
            while own.state != "done":
                self._write_batch(own)
        finally:
            with self._lock:
                self._pass_turn()

    def _write_batch(self, own: _Pending) -> None:
        batch: list[_Pending] = []

        def collect() -> None:
            with self._lock:
                batch.extend(self._waiting[:MAX_BATCH])
                del self._waiting[:MAX_BATCH]
                if own not in batch:  # forked since it took the turn, this process starts afresh with no queue
                    batch.append(own)
                for pending in batch:
                    pending.state = "writing"

        def take() -> list[dict[str, Any]]:
            collect()
            self._read(batch)
            return [pending.row for pending in batch]

        error: BaseException | None = None
        try:
            # One statement, so one transaction, for the whole batch. The store takes the batch once it may write:
            # on SQLite, events that arrived while another process wrote join it. It replaces a connection the
            # server ended while it was idle before sending; any other failure (a connection that died without a
            # word, a locked SQLite file that waited out its busy timeout) is final: it may have been committed.
            self._store.append_audit(take)
        except BaseException as failure:  # noqa: BLE001 - every request of the batch fails with it
            error = failure
            if not batch and not isinstance(failure, Exception):
                # This request was interrupted (a cancelled task, a KeyboardInterrupt) while it waited for the
                # writer locks, not failed by the database: it alone fails, and the turn passes on.
                with self._lock:
                    self._leave_queue(own)
                own.state, own.error = "done", failure
                return
            if not batch:  # the database failed before the batch was taken: it fails those waiting now alike
                collect()
        for pending in batch:
            if pending is own:
                own.state, own.error = "done", error
            else:  # an interruption of this thread (not an Exception) is not theirs to raise
                pending.wake("done", error if error is None or isinstance(error, Exception)
                             else DatabaseUnavailableError())

    def _read(self, batch: list[_Pending]) -> None:
        """The reads of `batch` not yet done, in one statement; each event's outcome then says what its request
        found."""
        reads = [pending for pending in batch if pending.read is not None]
        if not reads:
            return
        found = self._store.current_values([pending.read[0] for pending in reads])
        for pending in reads:
            key, open_value = pending.read
            pending.read = None  # done (on SQLite before it queued: the batch's _read then skips it)
            stored = found.get(key)
            if stored is None:
                pending.row["outcome"] = "not_found"
                continue
            try:
                pending.found = (stored, open_value(stored))
            except DecryptionError:
                pending.row["outcome"] = "integrity_failed"
                pending.found = (stored, None)


def list_events(key: str | None = None, actor: str | None = None, limit: int = 100,
                before: int | None = None) -> list[dict[str, Any]]:
    """The newest events first, optionally for one key or one actor; `before` (an event id) pages back."""
    from secrets_hub.runtime import runtime

    return runtime().store.audit_events(key=_printable(key) if key else None, actor=_printable(actor) if actor else None,
                                        limit=min(limit, MAX_LIMIT), before=before)
