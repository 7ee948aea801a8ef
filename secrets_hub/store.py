"""The SQL of the paths requests take, on plain DB-API connections (sqlite3, psycopg 3).

Secrets and their versions, the audit log's rows, the token lookup and the key check are read and
written here, in SQL both backends understand. SQLAlchemy still owns the schema (models.py and the
Alembic migrations) and serves the admin paths (users, token management, rotation, backup), but a
request that reads or writes a secret never goes through it: its statement compilation, result
processing and pool events cost several times the query itself, and importing it alone costs
`secrets-hub get` a third of a second.

Connections: each process keeps its idle connections in a small LIFO list; an operation takes one
and gives it back. A connection that died while idle (a database restart, `pg_terminate_backend`)
is replaced, with every idle one beside it, and the operation run again once: a transaction only
when the failure came before its COMMIT was sent. A write of one statement (an audit batch; on
PostgreSQL a secret's update) is its own commit, so it is never run again: its connection is
checked before it is sent instead, by looking for the server's goodbye on the socket. What
SQLAlchemy's pool_pre_ping gives, without a round trip per request.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import logging
import operator
import os
import select
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from secrets_hub import event_loop, forks
from secrets_hub.errors import ConfigError, DatabaseUnavailableError, ValidationError

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")
log = logging.getLogger(__name__)

# Idle connections kept per process; more are opened under a burst and closed when given back.
MAX_IDLE = 16
# A forked child's inherited connections (see Store._start_afresh).
_inherited_connections: list[Any] = []
# connect_timeout bounds how long a request waits on an unreachable server before its 503: short, because
# each server thread waiting on it holds back the requests queued behind it. Keepalives and
# tcp_user_timeout (ms) end a connection whose network path died, instead of letting it hang.
POSTGRESQL_CONNECT_ARGS = {"connect_timeout": 3, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 5,
                           "keepalives_count": 3, "tcp_user_timeout": 10000}
SQLITE_BUSY_SECONDS = 5.0
# Statements a PostgreSQL connection keeps prepared (see _PostgreSQL.execute), and the most parameters of one
# (an audit batch of 9 events): any others are sent unprepared. A prepared batch of 400 events kept about
# 0.5 MB of the server's memory, per connection.
MAX_PREPARED = 100
MAX_PREPARED_PARAMETERS = 63
_statement_numbers = itertools.count()
CHECKPOINT_PAUSE = 0.1  # seconds; the WAL grows by what is written meanwhile (see _Checkpointer)
NOT_INITIALISED = "The database is not initialised: run `secrets-hub init` first"

META_COLUMNS = ("id", "key", "description", "created_at", "updated_at")
AUDIT_COLUMNS = ("at", "actor", "channel", "action", "key", "outcome", "remote_addr")
SECRET_COLUMNS = ("id", "key", "encrypted_value", "iv", "description", "created_at", "updated_at", "created_by",
                  "current_version", "key_id")
VERSION_COLUMNS = ("secret_id", "version", "encrypted_value", "iv", "key_id", "created_at", "created_by")
TOKEN_COLUMNS = ("id", "name", "token_hash", "scopes", "allow", "expires_at", "last_used_at")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_uuid() -> str:
    return str(uuid.uuid4())


def sqlite_pragmas(connection: sqlite3.Connection) -> None:
    """The settings of every SQLite connection, the store's and SQLAlchemy's alike.

    WAL lets readers run beside the one writer; the busy timeout makes a writer wait for a locked database
    for up to 5 s before the request is answered 503 "Database unavailable".
    """
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
    connection.execute("PRAGMA foreign_keys=ON")


@functools.lru_cache(maxsize=1024)  # an audit batch of each size between 1 and MAX_BATCH, and a few others
def _insert(table: str, columns: tuple[str, ...], rows: int = 1) -> str:
    # Only this module's own table and column names are ever joined in; values are always parameters.
    values = ", ".join([f"({', '.join('?' for _ in columns)})"] * rows)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}"  # noqa: S608


@functools.lru_cache(maxsize=1024)  # as _insert's
def _in_list(count: int) -> str:
    return f"IN ({', '.join('?' for _ in range(count))})"


@functools.lru_cache(maxsize=1024)
def _select_current(any_of: str) -> str:
    return f"SELECT key, encrypted_value, iv, key_id, current_version FROM secrets WHERE key {any_of}"  # noqa: S608


_AUDIT_VALUES = operator.itemgetter(*AUDIT_COLUMNS[1:])  # an event's values after its time, in column order
_PRUNE_VERSIONS = "DELETE FROM secret_versions WHERE secret_id = ? AND version <= ?"


class Conflict(Exception):
    """A unique constraint refused the row (the key, or the version, is taken)."""


class Stored(tuple):
    """One ciphertext as read back: (encrypted_value, iv, key_id, version)."""

    encrypted_value = property(lambda self: self[0])
    iv = property(lambda self: self[1])
    key_id = property(lambda self: self[2])
    version = property(lambda self: self[3])


def _pauses() -> Iterator[float]:
    """How long a writer waits between tries of a lock or a locked database: 0.1 ms, doubling up to 2 ms. On
    the event loop the pauses serve other requests (see event_loop)."""
    pause = 0.0001
    while True:
        yield pause
        pause = min(pause * 2, 0.002)


def poll(take: Callable[[], bool], seconds: float) -> bool:
    """Call `take` until it returns True, with `_pauses` between tries; False once `seconds` are up."""
    deadline, pauses = time.monotonic() + seconds, _pauses()
    while not take():
        if time.monotonic() >= deadline:
            return False
        event_loop.sleep(next(pauses))
    return True


class _Backend:
    """What differs between sqlite3 and psycopg: connecting, placeholders, times, error classes."""

    name: str
    # A write of several statements can be sent as one (data-modifying WITH), committed on its own.
    one_statement_writes = False
    # The audit writer reads the values of a batch of reads in one statement (see audit.read_now), where each
    # statement is a round trip. SQLite's reads are local calls, cheaper each on its own than under the writer locks.
    reads_in_batches = False
    unavailable: tuple[type[BaseException], ...]
    invalid: tuple[type[BaseException], ...]  # input the database refused (a NUL in text, a number out of range)

    def connect(self) -> Any:
        raise NotImplementedError

    def sql(self, statement: str) -> str:
        return statement

    def time_in(self, value: datetime | None) -> Any:
        return value

    def begin(self, connection: Any) -> None:
        connection.execute("BEGIN")

    def execute(self, connection: Any, statement: str, params: Sequence[Any]) -> list[tuple]:
        """Run one statement (with ? placeholders); its rows."""
        return connection.execute(statement, params).fetchall()

    def any_of(self, values: list[Any]) -> tuple[str, list[Any]]:
        """A condition that a column is one of `values` (not empty), and its parameters."""
        return _in_list(len(values)), values

    def in_transaction(self, connection: Any) -> bool:
        return connection.in_transaction

    def is_dead(self, connection: Any) -> bool:
        return False

    def is_busy(self, error: BaseException) -> bool:
        """The database was locked by another writer, and the statement did nothing."""
        return False

    def lost_while_idle(self, connection: Any) -> bool:
        """Whether an idle connection was ended by the server, found without a round trip."""
        return False

    def close(self) -> None:
        """Let go of what the backend holds besides connections."""

    def is_missing_table(self, error: BaseException) -> bool:
        raise NotImplementedError

    def is_conflict(self, error: BaseException) -> bool:
        """A unique constraint refused the row (other integrity errors are bugs, not conflicts)."""
        raise NotImplementedError


class _Checkpointer:
    """Copies SQLite's WAL back into the database file from a thread of its own, after writes.

    By default SQLite does this inside the commit that takes the WAL past 1,000 pages, while our writer
    locks are still held: every writer of every process waited for its copying and its two fsyncs. Under
    audited reads a quarter of the CPU then sat idle. So the store's connections leave it to this thread
    (SQLite's own only past 10,000 pages, should it fall behind), which checkpoints at most every
    CHECKPOINT_PAUSE after a write, and once more when the store closes, in two steps. First a PASSIVE
    checkpoint beside the running writers: the bulk of the copying and the fsyncs. It cannot catch up while
    they append, and SQLite starts the WAL again from its beginning only after one that did, so the WAL
    would grow without end. So then, holding the writer locks, a second one copies the little written
    meanwhile, and the next writer starts the WAL afresh (unless a reader is still in it: then at a later
    round). Another process's checkpoint running at the same time makes this one return at once; the next
    write asks again.
    """

    def __init__(self, path: str, lock_writers: Callable[[], Any], unlock_writers: Callable[[], None]):
        # Read-write, never create: a database file removed under a running process stays removed.
        # An empty authority (file:///...), so that a path beginning with // is not taken for a host.
        self._uri = f"file://{urllib.parse.quote(os.path.abspath(path))}?mode=rw"
        self._lock_writers, self._unlock_writers = lock_writers, unlock_writers
        self._start_afresh()
        self._running: tuple[int, threading.Event, threading.Event, threading.Thread] | None = None
        forks.start_afresh_in_forked_children(self)

    def _start_afresh(self) -> None:
        # Also in a forked child (see forks), where a thread starting the checkpointer may have held it.
        self._starting = threading.Lock()

    def wrote(self) -> None:
        running = self._running
        # A forked child has none of its parent's threads: it starts its own.
        if running is None or running[0] != os.getpid():
            with self._starting:
                running = self._running
                if running is None or running[0] != os.getpid():
                    wrote, stop = threading.Event(), threading.Event()
                    thread = threading.Thread(target=self._run, args=(wrote, stop), name="sqlite-checkpoint",
                                              daemon=True)
                    running = self._running = (os.getpid(), wrote, stop, thread)
                    thread.start()
        if not running[1].is_set():  # mostly it is, under load: setting it again costs a lock and a notify
            running[1].set()

    def stop(self) -> None:
        with self._starting:
            running, self._running = self._running, None
        if running is not None and running[0] == os.getpid():
            running[2].set()
            running[1].set()
            running[3].join(timeout=SQLITE_BUSY_SECONDS)

    def _run(self, wrote: threading.Event, stop: threading.Event) -> None:
        connection = None
        try:
            while not stop.is_set():
                wrote.wait()
                wrote.clear()
                connection = self._checkpoint(connection)
                stop.wait(CHECKPOINT_PAUSE)
            # Once more for the writes just before the stop: a command line that wrote and is closing
            # leaves nothing behind for a server that may not write again for a long time.
            connection = self._checkpoint(connection)
        finally:
            if connection is not None:
                connection.close()

    def _checkpoint(self, connection: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """One round (see the class docstring); returns the connection for the next."""
        try:
            connection = connection or sqlite3.connect(self._uri, uri=True, isolation_level=None,
                                                       check_same_thread=False)
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._lock_writers()
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                self._unlock_writers()
        except DatabaseUnavailableError:
            pass  # the writer locks stayed taken (a long write), or cannot be had (logged): the next write asks again
        except sqlite3.Error as error:  # SQLite's own words, never a value
            log.warning("SQLite checkpoint failed (%s): the WAL grows until one succeeds", error)
        return connection


def sqlite_writer_lock_path(database_path: str) -> str:
    """The lock file beside a SQLite database on which writers of different processes take turns."""
    return f"{database_path}-writer.lock"


class _SQLite(_Backend):
    name = "sqlite"
    unavailable = (sqlite3.OperationalError, sqlite3.InterfaceError)
    invalid = (sqlite3.DataError,)

    def __init__(self, path: str):
        self.path = path
        self._writer_lock: tuple[int, BinaryIO] | None = None  # (pid, file) of the lock file between processes
        self._unusable_logged_in: int | None = None  # the process that logged an unusable lock file

    def lock_out_other_processes(self, seconds: float) -> None:
        """Take the lock file beside the database for one write, waiting at most `seconds` for it (the caller
        holds its process's writer lock); `let_other_processes_in` gives it back.

        SQLite's busy wait sleeps 1, 2, 5, 10 ms and more between tries, so writers of different worker
        processes kept each other waiting for milliseconds per write. Here a writer that finds the lock taken
        tries again after 0.1 ms, doubling up to 2 ms, until the time is up (503, as for a busy database).
        """
        lock = self._lock_file()

        def take() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as error:  # no lock to be had at all (ENOLCK, say)
                raise self._unusable(error) from None

        if not poll(take, seconds):
            raise DatabaseUnavailableError()

    def let_other_processes_in(self) -> None:
        # The file lock_out_other_processes locked: close() waits for the writer before closing it.
        fcntl.flock(self._writer_lock[1], fcntl.LOCK_UN)

    def _lock_file(self) -> BinaryIO:
        # A forked child opens its own: sharing the parent's open file would share its lock. Closing the child's
        # copy leaves the parent's lock alone (it is never unlocked from here).
        if self._writer_lock is None or self._writer_lock[0] != os.getpid() or self._writer_lock[1].closed:
            self.close()
            try:
                database = os.stat(self.path)
                descriptor = os.open(sqlite_writer_lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)
                # Like SQLite's -wal and -shm files: the database file's mode, and its owner when made by root, so
                # that `sudo secrets-hub ...` cannot lock the service's own user out.
                if os.fstat(descriptor).st_uid == os.geteuid():
                    os.fchmod(descriptor, database.st_mode & 0o666)
                if os.geteuid() == 0:
                    os.fchown(descriptor, database.st_uid, database.st_gid)
            except OSError as error:
                raise self._unusable(error) from None
            self._writer_lock = (os.getpid(), os.fdopen(descriptor, "rb+", buffering=0))
        return self._writer_lock[1]

    def _unusable(self, error: OSError) -> DatabaseUnavailableError:
        """A lock file (or database file) that cannot be opened or locked at all: every write is 503, as for a
        database that cannot be opened; the first time in each process is logged, not every write."""
        if self._unusable_logged_in != os.getpid():
            self._unusable_logged_in = os.getpid()
            log.warning("SQLite database %s: writes are refused (%s on it or its writer lock file)",
                        self.path, errno.errorcode.get(error.errno, error.errno))
        return DatabaseUnavailableError()

    def close(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock[1].close()
            self._writer_lock = None

    def connect(self) -> sqlite3.Connection:
        # Autocommit mode: reads take no transaction; writes open theirs explicitly (`begin`).
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        sqlite_pragmas(connection)
        # The checkpointer's job (see _Checkpointer); SQLite's own, at 40 MB of WAL, only if that falls behind.
        connection.execute("PRAGMA wal_autocheckpoint=10000")
        return connection

    def wait_at_most(self, connection: sqlite3.Connection, seconds: float) -> None:
        """How long this connection waits for a busy database before giving up."""
        connection.execute(f"PRAGMA busy_timeout = {max(0, int(seconds * 1000))}")

    def begin(self, connection: Any) -> None:
        # Take the write lock up front: a transaction that read first and then wants to write could
        # otherwise fail at once instead of waiting out the busy timeout.
        connection.execute("BEGIN IMMEDIATE")

    def is_missing_table(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError) and str(error).startswith("no such table")

    def is_busy(self, error: BaseException) -> bool:
        # SQLITE_BUSY or one of its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT).
        return isinstance(error, sqlite3.OperationalError) and error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY

    def is_conflict(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError) and str(error).startswith("UNIQUE constraint failed")

    def time_in(self, value: datetime | None) -> str | None:
        # SQLAlchemy's format for SQLite (naive UTC, microseconds), so either side reads what the other wrote.
        return None if value is None else value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")


@functools.lru_cache(maxsize=16384)
def time_out(text: str | None) -> datetime | None:
    """A time as read back from either database: SQLite's naive UTC `2026-11-29 04:25:37.897982`, or
    PostgreSQL's `2026-11-29 04:25:37.8979+00` (the session's TimeZone is UTC, its DateStyle ISO); NULL is None.

    Memoised, and so the same datetime object for the same text: a list of 1,000 secrets reads the same 2,000
    times on every call, and schemas.isoformat, memoised in turn, then finds each by identity. A datetime
    fresh from a driver costs that lookup its hash and an aware comparison, three times a cached one's.
    """
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class _PostgreSQL(_Backend):
    name = "postgresql"
    one_statement_writes = True
    reads_in_batches = True

    def __init__(self, conninfo: str):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
        from psycopg.types.string import TextLoader

        # The URL's own settings win over our defaults; times come back as ISO text in UTC, as SQLite's do,
        # whatever server options the URL sets besides.
        params = {**POSTGRESQL_CONNECT_ARGS, **conninfo_to_dict(conninfo)}
        params["options"] = " ".join(filter(None, [params.get("options"), "-c TimeZone=UTC -c DateStyle=ISO"]))
        self.params = params
        # Times are read as that text, not as psycopg's datetimes: `time_out` turns each distinct one into
        # a datetime once.
        self.adapters = psycopg.adapt.AdaptersMap(psycopg.adapters)
        self.adapters.register_loader("timestamptz", TextLoader)
        self.psycopg = psycopg
        self.unavailable = (psycopg.OperationalError, psycopg.InterfaceError)
        self.invalid = (psycopg.DataError,)

    def in_transaction(self, connection: Any) -> bool:
        status = connection.info.transaction_status
        return status in (self.psycopg.pq.TransactionStatus.INTRANS, self.psycopg.pq.TransactionStatus.INERROR)

    def connect(self) -> Any:
        # Autocommit: a read is one round trip with no transaction to end; writes open theirs (`begin`).
        # Statements sent through psycopg's cursor (transactions, an update) are prepared by psycopg after a few
        # runs, and those sent through `execute` at their first (within MAX_PREPARED and MAX_PREPARED_PARAMETERS),
        # so that the server parses each once.
        connection = _reusing_cursor(self.psycopg).connect(autocommit=True, context=self.adapters, **self.params)
        connection.prepared = {}  # (statement, parameter types) -> its name, for `execute`
        connection.transformer = self.psycopg.adapt.Transformer(connection)
        return connection

    def execute(self, connection: Any, statement: str, params: Sequence[Any]) -> list[tuple]:
        """Run one statement in a blocking libpq call (after one that prepares it, at its first run on the
        connection), with psycopg's own adapters for the parameters (and their types, as its cursor sends them)
        and the rows. Past MAX_PREPARED statements on the connection, or MAX_PREPARED_PARAMETERS parameters, it
        is sent unprepared.

        psycopg's cursor waits for the server in several steps, each letting go of the GIL; with a worker's
        threads all reading, each step was a hand-off between threads (51 futex calls per read). libpq's call
        lets go of it once. Reads served about a fifth more per second this way (alternating 8 s runs on the AMD
        VM: 2,710-3,350 req/s against 2,330-2,530)."""
        pgconn, transformer = connection.pgconn, connection.transformer
        values = transformer.dump_sequence(params, [self.psycopg.adapt.PyFormat.TEXT] * len(params))
        # An int's type follows its size (int2 to numeric): one statement per set of types, as psycopg does.
        prepared = (statement, tuple(transformer.types))
        if prepared in connection.prepared or (len(connection.prepared) < MAX_PREPARED
                                               and len(params) <= MAX_PREPARED_PARAMETERS):
            result = pgconn.exec_prepared(self._prepared(connection, prepared), values)
            if result.error_field(self.psycopg.pq.DiagnosticField.SQLSTATE) == b"26000":
                # Deallocated since: psycopg sends DEALLOCATE ALL after the first ROLLBACK (Store._run's, of a
                # refused or failed write) once it has prepared statements of its own on the connection. Nothing
                # ran (the name is checked before), so prepare it again.
                connection.prepared.clear()
                result = pgconn.exec_prepared(self._prepared(connection, prepared), values)
        else:
            result = pgconn.exec_params(_numbered(statement).encode(), values, prepared[1])
        self._check(connection, result)
        transformer.set_pgresult(result)
        return transformer.load_rows(0, result.ntuples, tuple)

    def _prepared(self, connection: Any, prepared: tuple[str, tuple[int, ...]]) -> bytes:
        """The name of `prepared` (a statement and its parameters' types) on `connection`, prepared if need be."""
        name = connection.prepared.get(prepared)
        if name is None:
            name = f"secrets_hub_{next(_statement_numbers)}".encode()  # never one the connection had before
            self._check(connection, connection.pgconn.prepare(name, _numbered(prepared[0]).encode(), prepared[1]))
            connection.prepared[prepared] = name
        return name

    def _check(self, connection: Any, result: Any) -> None:
        """psycopg's exception for a statement that failed, as its cursor would raise it."""
        pq = self.psycopg.pq
        if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            return
        if connection.pgconn.status == pq.ConnStatus.BAD:  # the connection died: no SQLSTATE to go by
            raise self.psycopg.OperationalError(result.error_message.decode(errors="replace").strip())
        raise self.psycopg.errors.error_from_result(result, encoding=connection.info.encoding)

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def any_of(self, values: list[Any]) -> tuple[str, list[Any]]:
        # One array parameter: one prepared statement, however many values.
        return "= ANY(?)", [values]

    def is_dead(self, connection: Any) -> bool:
        return connection.broken or connection.closed

    def lost_while_idle(self, connection: Any) -> bool:
        # An idle connection has nothing to read, as we never LISTEN: anything there is the server's goodbye
        # (the FATAL error of a shutdown or pg_terminate_backend, then the end of the stream).
        if connection.closed:
            return True
        poll = select.poll()
        poll.register(connection.fileno(), select.POLLIN)
        return bool(poll.poll(0))

    def is_missing_table(self, error: BaseException) -> bool:
        return isinstance(error, self.psycopg.errors.UndefinedTable)

    def is_conflict(self, error: BaseException) -> bool:
        return isinstance(error, self.psycopg.errors.UniqueViolation)


@functools.cache
def _reusing_cursor(psycopg: Any) -> type:
    """psycopg's Connection, but `execute` reuses one cursor: making a cursor per statement cost about a
    third of each statement's client-side CPU. Every caller reads its result before the next statement."""

    class Connection(psycopg.Connection):
        _cursor = None

        def execute(self, query, params=None, *, prepare=None):
            if self._cursor is None:
                self._cursor = self.cursor()
            return self._cursor.execute(query, params, prepare=prepare)

    return Connection


def _numbered(statement: str) -> str:
    """`?` placeholders as PostgreSQL's own $1, $2...: our statements hold no other question marks."""
    parts = statement.split("?")
    return "".join(f"{part}${number}" for number, part in enumerate(parts[:-1], 1)) + parts[-1]


def _backend_for(database_url: str) -> _Backend:
    scheme, _, rest = database_url.partition("://")
    if scheme.startswith("postgresql"):
        return _PostgreSQL(f"postgresql://{rest}")
    if scheme == "sqlite" and rest.startswith("/") and len(rest) > 1:
        # sqlite:///relative/path or sqlite:////absolute/path, as SQLAlchemy reads them.
        return _SQLite(rest[1:].split("?", 1)[0])
    raise ConfigError(f"Unsupported DATABASE_URL {scheme}://...: use postgresql://... or sqlite:///path/to/file.db")


class Transaction:
    """The statements of one write, committed together or not at all."""

    def __init__(self, store: "Store", connection: Any):
        self._store, self._connection = store, connection

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._connection.execute(self._store.backend.sql(statement), params)

    def insert_secret(self, key: str, sealed: Any, description: str | None, created_at: datetime,
                      updated_at: datetime, created_by: str | None) -> str:
        """A new secret at version 1; Conflict if the key exists. Returns its id."""
        secret_id = new_uuid()
        time_in = self._store.backend.time_in
        self.execute(_insert("secrets", SECRET_COLUMNS), (
            secret_id, key, sealed.encrypted_value, sealed.iv, description, time_in(created_at), time_in(updated_at),
            created_by, 1, sealed.key_id))
        return secret_id

    def add_version(self, secret_id: str, version: int, sealed: Any, at: datetime, created_by: str | None,
                    keep: int) -> None:
        """Keep `version` of a secret, and only the newest `keep` versions."""
        self.execute(_insert("secret_versions", VERSION_COLUMNS), (
            secret_id, version, sealed.encrypted_value, sealed.iv, sealed.key_id, self._store.backend.time_in(at),
            created_by))
        if version > keep:
            self.execute(_PRUNE_VERSIONS, (secret_id, version - keep))

    def delete_secret(self, key: str) -> bool:
        return self.execute("DELETE FROM secrets WHERE key = ? RETURNING id", (key,)).fetchone() is not None

    def audit(self, events: Sequence[dict[str, Any]]) -> None:
        self.execute(*self._store.audit_insert(events))


class Store:
    """One database, as the service layer and the audit writer see it."""

    def __init__(self, database_url: str):
        self.backend = _backend_for(database_url)
        self._idle: list[Any] = []
        self._start_afresh()
        self._checkpointer = (_Checkpointer(self.backend.path, self._lock_sqlite_writers, self._unlock_sqlite_writers)
                              if isinstance(self.backend, _SQLite) else None)
        forks.start_afresh_in_forked_children(self)

    def _start_afresh(self) -> None:
        """New locks and no idle connection: at the start, and in a forked child (see forks). A child's inherited
        connections stay referenced, so that they are neither used nor closed while it runs: SQLite's may not be
        touched in a child at all (sqlite.org/howtocorrupt.html), and closing a PostgreSQL one would end the
        parent's session. SQLite also keeps its locks in the process's memory: a child forked in the middle of a
        SQLite transaction can still not write, and must not finish its parent's write."""
        _inherited_connections.extend(self._idle)
        self._idle = []
        self._lock = threading.Lock()
        self._sqlite_writer = threading.Lock()
        self._loop_writer: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # ---- connections --------------------------------------------------------------------------------------------

    def _take(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.backend.connect()

    def _give_back(self, connection: Any) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; one in use now is kept when it is given back."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        if self._checkpointer is not None:
            self._checkpointer.stop()
        # Not while a writer of this process holds the lock file; the next one opens it again.
        if self._sqlite_writer.acquire(timeout=SQLITE_BUSY_SECONDS):
            try:
                self.backend.close()
            finally:
                self._sqlite_writer.release()

    def _run(self, work: Callable[[Any], T], how: str = "read", busy_seconds: float | None = None) -> T:
        """Run `work` on a connection; database errors become ours.

        `how`: "read"; "transaction", a write of several statements between BEGIN and COMMIT; or "statement",
        a write of one statement, committed on its own. `busy_seconds`: how long SQLite may wait for a busy
        database, when less than its usual timeout.
        """
        backend = self.backend
        # On an event loop SQLite's busy wait would stall every request of the loop (see event_loop): there a
        # write finding the database locked (by another program: ours take turns on the writer locks) gives up
        # at once and tries again after a pause in which the loop serves others, until its busy time is up.
        yielding = busy_seconds is not None and how != "read" and event_loop.on_loop()
        deadline, pauses = time.monotonic() + (busy_seconds or 0.0), _pauses()
        shortened = yielding or busy_seconds is not None and busy_seconds < SQLITE_BUSY_SECONDS - 0.01
        may_retry = True
        while True:
            try:
                connection = self._take()
            except backend.unavailable:
                raise DatabaseUnavailableError() from None
            if how == "statement" and may_retry and backend.lost_while_idle(connection):
                # Ended by the server while idle (a restart): nothing was sent, so take a fresh connection. Those
                # idle beside it most likely died with it.
                connection.close()
                self.close()
                may_retry = False
                continue
            # A write of one statement is its own commit: once it is sent, a failure may come after the commit.
            committing = how == "statement"
            try:
                if shortened:
                    backend.wait_at_most(connection, 0 if yielding else busy_seconds)
                try:
                    if how != "transaction":
                        result = work(connection)
                    else:
                        try:
                            backend.begin(connection)
                            result = work(connection)
                            committing = True
                            connection.execute("COMMIT")
                        except BaseException:
                            # Still in the transaction (a COMMIT refused at once ends it): nothing was committed,
                            # and the connection can be used again.
                            if not backend.is_dead(connection) and backend.in_transaction(connection):
                                connection.execute("ROLLBACK")
                                committing = False
                            raise
                finally:
                    if shortened:
                        backend.wait_at_most(connection, SQLITE_BUSY_SECONDS)
            except BaseException as error:
                if yielding and backend.is_busy(error) and time.monotonic() < deadline:
                    self._give_back(connection)  # refused before it did anything: usable, and nothing to undo
                    event_loop.sleep(next(pauses))
                    continue
                refusal = self._refusal(error)
                # A refused statement committed nothing, and leaves its connection usable.
                if refusal is not None and (how == "statement" or not committing):
                    self._give_back(connection)
                    raise refusal from None
                dead = backend.is_dead(connection)
                connection.close()
                if refusal is not None:
                    raise refusal from None
                if not isinstance(error, backend.unavailable):
                    raise
                if dead:
                    # The ones idle beside it most likely died with it (a database restart).
                    self.close()
                    # Died before anything could be committed: the server threw the work away, so run it again.
                    if may_retry and not committing:
                        may_retry = False
                        continue
                raise DatabaseUnavailableError() from None
            self._give_back(connection)
            return result

    def _refusal(self, error: BaseException) -> Exception | None:
        """Our error for a statement the database refused, as opposed to a database that failed."""
        if self.backend.is_missing_table(error):
            return ConfigError(NOT_INITIALISED)
        if self.backend.is_conflict(error):
            return Conflict()
        if isinstance(error, self.backend.invalid):
            return ValidationError("Bad request")
        return None

    def _fetch(self, statement: str, params: Sequence[Any] = (), one: bool = False) -> Any:
        rows = self._run(lambda connection: self.backend.execute(connection, statement, params))
        return (rows[0] if rows else None) if one else rows

    @contextlib.contextmanager
    def writing(self) -> Iterator[float | None]:
        """SQLite has one writer at a time (see `_lock_sqlite_writers`); yields the seconds left of its busy timeout.

        The ORM's writes (users, tokens) take their turn here too, from their first write to their commit, so
        that on an event loop they never meet SQLite's busy wait for one of ours. Nothing inside may write
        through the store or record_now: the turn is not taken twice."""
        if self._checkpointer is None:
            yield None
            return
        try:
            busy_seconds, loop_writers = self._lock_sqlite_writers()
            try:
                yield busy_seconds
            finally:
                self._unlock_sqlite_writers(loop_writers)
        finally:
            self._checkpointer.wrote()

    def _lock_sqlite_writers(self) -> tuple[float, asyncio.Lock | None]:
        """SQLite has one writer at a time, and a writer that finds it busy sleeps (1, 2, 5, 10 ms...) before
        trying again, which gave writes a p99 of hundreds of ms. Threads of one process queue on a lock
        instead, woken the moment it is free, and processes on a lock file, polled at 0.1 to 2 ms; only other
        programs still meet SQLite's busy wait. Requests on an event loop (see event_loop) queue on a lock of
        the loop's first, handed on as promptly, and then only try the threads' lock, which the threads beside
        the loop (the checkpointer's, a plugin's) alone contend for: a blocking wait would stall the loop.
        Time spent on the locks counts against the busy timeout. Returns the seconds left of it, and the
        loop's lock if taken; `_unlock_sqlite_writers` lets go of them all."""
        began = time.monotonic()
        loop_writers = None
        if event_loop.on_loop():
            loop_writers = self._loop_writers()
            event_loop.wait_for(loop_writers.acquire())
        try:
            left = max(0.0, SQLITE_BUSY_SECONDS - (time.monotonic() - began))
            if loop_writers is not None:
                taken = poll(functools.partial(self._sqlite_writer.acquire, blocking=False), left)
            else:
                taken = self._sqlite_writer.acquire(timeout=left)
            if not taken:
                raise DatabaseUnavailableError()
            try:
                self.backend.lock_out_other_processes(SQLITE_BUSY_SECONDS - (time.monotonic() - began))
            except BaseException:
                self._sqlite_writer.release()
                raise
        except BaseException:
            if loop_writers is not None:
                loop_writers.release()
            raise
        return SQLITE_BUSY_SECONDS - (time.monotonic() - began), loop_writers

    def _unlock_sqlite_writers(self, loop_writers: asyncio.Lock | None = None) -> None:
        try:
            self.backend.let_other_processes_in()
        finally:
            self._sqlite_writer.release()
            if loop_writers is not None:
                loop_writers.release()

    def _loop_writers(self) -> asyncio.Lock:
        """The lock on which the running loop's requests queue to write (see _lock_sqlite_writers)."""
        loop = event_loop.running_loop()
        if self._loop_writer is None or self._loop_writer[0] is not loop:
            self._loop_writer = (loop, event_loop.new_lock())
        return self._loop_writer[1]

    def write(self, work: Callable[[Transaction], T]) -> T:
        """Run `work(tx)` in one transaction; it may run twice (see the module docstring), so it does only SQL."""
        with self.writing() as busy_seconds:
            return self._run(lambda connection: work(Transaction(self, connection)), "transaction",
                             busy_seconds=busy_seconds)

    def update_secret(self, key: str, at: datetime, sealed: Any | None, description: str | None,
                      set_description: bool, expected_version: int | None, created_by: str | None, keep: int,
                      event: dict[str, Any]) -> tuple[dict[str, Any] | None, int | None]:
        """Set a new value and/or the description of `key`, keep a new value as a version (and only the newest
        `keep` versions), and record `event`: all of it or nothing.

        The version goes up by one in the UPDATE itself, so concurrent writers are ordered by the row lock
        (PostgreSQL) or the write lock (SQLite) and never lose an update or repeat a version number.
        Returns (the metadata and current_version, None) once done; else (None, the current version): None
        when no secret has `key`, a number when `expected_version` was given and is not the current one.
        """
        time_in = self.backend.time_in
        assignments, params = ["updated_at = ?"], [time_in(at)]
        if set_description:
            assignments.append("description = ?")
            params.append(description)
        if sealed is not None:
            assignments.append("encrypted_value = ?, iv = ?, key_id = ?, current_version = current_version + 1")
            params += [sealed.encrypted_value, sealed.iv, sealed.key_id]
        condition, params = "key = ?", [*params, key]
        if expected_version is not None:
            condition += " AND current_version = ?"
            params.append(expected_version)
        update = (f"UPDATE secrets SET {', '.join(assignments)} WHERE {condition} "  # noqa: S608 - fixed column names
                  f"RETURNING {', '.join(META_COLUMNS)}, current_version")
        if self.backend.one_statement_writes:
            row = self._update_in_one_statement(key, update, params, at, sealed, created_by, keep, event)
        else:
            def work(tx: Transaction) -> Any:
                row = tx.execute(update, params).fetchone()
                if row is not None:
                    if sealed is not None:
                        tx.add_version(row[0], row[5], sealed, at, created_by, keep)
                    tx.audit([event])
                return row

            row = self.write(work)
        if row is None:
            found = self._fetch("SELECT current_version FROM secrets WHERE key = ?", (key,), one=True)
            return None, None if found is None else found[0]
        return self.meta_row(row) | {"current_version": row[5]}, None

    def _update_in_one_statement(self, key: str, update: str, params: list[Any], at: datetime, sealed: Any | None,
                                 created_by: str | None, keep: int, event: dict[str, Any]) -> Any:
        """`update_secret` on PostgreSQL: one round trip. As a transaction (BEGIN, four statements, COMMIT) a
        write cost about four times the client CPU and 1.7 times the server's. Each part runs once, on the
        row `updated` returns (none when it returns none).

        Every part sees the database as it was when the statement began: the DELETE cannot see the version
        the INSERT adds (it only removes older ones), nor one that a concurrent update of the same secret
        committed while this statement waited for the row's lock. So the statement also returns the version
        it first saw; when the new one is not the next, such an update came between, and the versions it
        kept past `keep` are removed by a second statement.
        """
        parts = [f"updated AS ({update})"]
        if sealed is not None:
            parts.append(f"kept AS (INSERT INTO secret_versions ({', '.join(VERSION_COLUMNS)}) "  # noqa: S608
                         "SELECT id, current_version, ?, ?, ?, ?, ? FROM updated)")
            parts.append("pruned AS (DELETE FROM secret_versions WHERE secret_id IN (SELECT id FROM updated) "
                         "AND version <= (SELECT current_version FROM updated) - ?)")
            params = [*params, sealed.encrypted_value, sealed.iv, sealed.key_id, self.backend.time_in(at), created_by,
                      keep]
        parts.append(f"audited AS (INSERT INTO audit_events ({', '.join(AUDIT_COLUMNS)}) "  # noqa: S608
                     f"SELECT {', '.join('?' for _ in AUDIT_COLUMNS)} FROM updated)")
        params = [*params, *self._audit_params([event]), key]
        statement = self.backend.sql(f"WITH {', '.join(parts)} SELECT updated.*, "  # noqa: S608
                                     "(SELECT current_version FROM secrets WHERE key = ?) FROM updated")
        row = self._run(lambda connection: connection.execute(statement, params).fetchone(), "statement")
        if row is not None and sealed is not None and row[6] != row[5] - 1:
            self._run(lambda connection: connection.execute(self.backend.sql(_PRUNE_VERSIONS), (row[0], row[5] - keep)),
                      "statement")
        return row

    # ---- reads --------------------------------------------------------------------------------------------------

    def meta_row(self, row: Sequence[Any]) -> dict[str, Any]:
        return {"id": row[0], "key": row[1], "description": row[2], "created_at": time_out(row[3]),
                "updated_at": time_out(row[4])}

    def current_values(self, keys: list[str]) -> dict[str, Stored]:
        """The current ciphertext of each of `keys` that has a secret, in one statement (the audit writer reads
        those of a batch of reads at once)."""
        any_of, params = self.backend.any_of(keys)
        return {row[0]: Stored(row[1:]) for row in self._fetch(_select_current(any_of), params)}

    def version(self, key: str, version: int) -> Stored | None:
        row = self._fetch(
            "SELECT v.encrypted_value, v.iv, v.key_id, v.version FROM secret_versions v "
            "JOIN secrets s ON s.id = v.secret_id WHERE s.key = ? AND v.version = ?", (key, version), True)
        return None if row is None else Stored(row)

    def exists(self, key: str) -> bool:
        return self._fetch("SELECT 1 FROM secrets WHERE key = ?", (key,), True) is not None

    def value_and_description(self, key: str) -> tuple[Stored, str | None] | None:
        row = self._fetch("SELECT encrypted_value, iv, key_id, current_version, description FROM secrets "
                          "WHERE key = ?", (key,), True)
        return None if row is None else (Stored(row[:4]), row[4])

    def metadata(self) -> list[dict[str, Any]]:
        """Every secret's metadata, sorted by key (code-point order on both backends)."""
        meta_row = self.meta_row
        return [meta_row(row) for row in self._fetch(f"SELECT {', '.join(META_COLUMNS)} FROM secrets ORDER BY key")]  # noqa: S608

    def keys(self) -> set[str]:
        return {row[0] for row in self._fetch("SELECT key FROM secrets")}

    def versions(self, key: str) -> tuple[int, list[dict[str, Any]]] | None:
        """The current version number and every kept version of `key`, newest first; None if there is no such secret."""
        def work(connection: Any) -> Any:
            current = connection.execute(self.backend.sql("SELECT id, current_version FROM secrets WHERE key = ?"),
                                         (key,)).fetchone()
            if current is None:
                return None
            rows = connection.execute(self.backend.sql(
                "SELECT version, created_at, created_by FROM secret_versions WHERE secret_id = ? ORDER BY version DESC"),
                (current[0],)).fetchall()
            return current[1], rows

        found = self._run(work)
        if found is None:
            return None
        return found[0], [{"version": v, "created_at": time_out(at), "created_by": by} for v, at, by in found[1]]

    # ---- tokens and the key check -------------------------------------------------------------------------------

    def token(self, token_hash: str) -> dict[str, Any] | None:
        row = self._fetch(f"SELECT {', '.join(TOKEN_COLUMNS)} FROM api_tokens WHERE token_hash = ?",  # noqa: S608
                          (token_hash,), True)
        if row is None:
            return None
        found = dict(zip(TOKEN_COLUMNS, row, strict=True))
        found["expires_at"] = time_out(found["expires_at"])
        found["last_used_at"] = time_out(found["last_used_at"])
        return found

    def touch_token(self, token_id: int, at: datetime) -> None:
        self.write(lambda tx: tx.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?",
                                         (self.backend.time_in(at), token_id)))

    def meta(self, name: str) -> str | None:
        row = self._fetch("SELECT value FROM secrets_hub_meta WHERE name = ?", (name,), True)
        return None if row is None else row[0]

    def add_meta(self, name: str, value: str) -> None:
        """Record a fact about the database; Conflict if it is already recorded."""
        self.write(lambda tx: tx.execute(_insert("secrets_hub_meta", ("name", "value")), (name, value)))

    # ---- the audit log ------------------------------------------------------------------------------------------

    def audit_insert(self, events: Sequence[dict[str, Any]]) -> tuple[str, list[Any]]:
        """One INSERT of all `events`: one statement, so one round trip and, on its own, one transaction."""
        return _insert("audit_events", AUDIT_COLUMNS, len(events)), self._audit_params(events)

    def _audit_params(self, events: Sequence[dict[str, Any]]) -> list[Any]:
        time_in = self.backend.time_in
        params = []
        for event in events:
            params.append(time_in(event["at"]))
            params += _AUDIT_VALUES(event)
        return params

    def append_audit(self, events: Callable[[], Sequence[dict[str, Any]]]) -> None:
        """Commit the events `events()` gives together (the audit writer's batch): a single statement needs no
        BEGIN or COMMIT. `events` is called once this process may write (on SQLite, when it holds the writer
        locks), so that a batch takes in the events that arrived while it waited for them."""
        with self.writing() as busy_seconds:
            statement, params = self.audit_insert(events())
            self._run(lambda connection: self.backend.execute(connection, statement, params), "statement",
                      busy_seconds=busy_seconds)

    def audit_events(self, key: str | None, actor: str | None, limit: int, before: int | None) -> list[dict[str, Any]]:
        conditions, params = [], []
        for condition, value in (("id < ?", before), ("key = ?", key), ("actor = ?", actor)):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        columns = ("id", *AUDIT_COLUMNS)
        rows = self._fetch(f"SELECT {', '.join(columns)} FROM audit_events {where}ORDER BY id DESC LIMIT ?",  # noqa: S608
                           (*params, limit))
        return [dict(zip(columns, row, strict=True)) | {"at": time_out(row[1])} for row in rows]
