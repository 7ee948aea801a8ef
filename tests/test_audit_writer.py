"""The group commit of stand-alone audit events (reads, refusals): every event committed before its request
answers, events that arrive while a batch is written share the next commit, reads get what they found, a
failure reaches every request of its batch and no other, and the turn to write passes on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import hold_sqlite_writer_lock

from secrets_hub import audit, service
from secrets_hub.auth import operator
from secrets_hub.errors import DatabaseUnavailableError, IntegrityCheckError, NotFoundError
from secrets_hub.runtime import activated
from secrets_hub.store import AUDIT_COLUMNS, MAX_PREPARED_PARAMETERS


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def runtime(app):
    return app.extensions["secrets_hub"]


def keys_in_log(runtime) -> list[str]:
    with activated(runtime):
        return sorted(event["key"] for event in audit.list_events(limit=1000) if event["action"] == "probe")


def keys_in_log_after_one_more_event(runtime, errors: dict[str, BaseException]) -> list[str]:
    """Record one more event, AFTER, which must be written with no error so far; then the log's probe keys."""
    record(runtime, "AFTER", errors)
    assert errors == {}
    return keys_in_log(runtime)


def record(runtime, key: str, errors: dict[str, BaseException]) -> None:
    with activated(runtime):
        try:
            audit.record_now(operator("tester"), "probe", key, "ok")
        except Exception as error:  # noqa: BLE001 - collected for the test's assertions
            errors[key] = error


def hold_first_batch(store: Any, monkeypatch: Any) -> tuple[threading.Event, threading.Event, list[list[str]]]:
    """Every audit batch's keys go to the list returned; the first batch, once taken, waits for `release` before
    it is written, and `taken` tells it was taken."""
    append_audit = store.append_audit
    taken, release, batches = threading.Event(), threading.Event(), []

    def first_held_once_taken(take: Callable[[], list[dict[str, Any]]]) -> None:
        def taken_then_held() -> list[dict[str, Any]]:
            events = take()
            batches.append([event["key"] for event in events])
            if not taken.is_set():
                taken.set()
                release.wait(10)
            return events

        append_audit(taken_then_held)

    monkeypatch.setattr(store, "append_audit", first_held_once_taken)
    return taken, release, batches


def test_events_arriving_during_a_commit_share_the_next_one(runtime, monkeypatch):
    writer = runtime.audit_writer
    taken, first_batch_may_commit, batches = hold_first_batch(runtime.store, monkeypatch)
    errors: dict[str, BaseException] = {}
    first = threading.Thread(target=record, args=(runtime, "K00", errors))
    first.start()
    assert taken.wait(10)  # K00 is being written
    others = [threading.Thread(target=record, args=(runtime, f"K{n:02d}", errors)) for n in range(1, 9)]
    for thread in others:
        thread.start()
    wait_for(lambda: len(writer._waiting) == 8)
    assert not any(key in keys_in_log(runtime) for key in ("K00", "K01"))  # nobody answered yet
    first_batch_may_commit.set()
    for thread in (first, *others):
        thread.join(10)
    assert errors == {}
    assert batches[0] == ["K00"]
    assert sorted(batches[1]) == [f"K{n:02d}" for n in range(1, 9)] and len(batches) == 2
    assert keys_in_log(runtime) == [f"K{n:02d}" for n in range(9)]


def test_a_failed_commit_fails_its_own_batch_only_and_the_next_request_writes(runtime, monkeypatch):
    store = runtime.store
    append_audit = store.append_audit
    calls: list[int] = []

    def failing_once(take: Callable[[], list[dict[str, Any]]]) -> None:
        if not calls:  # the batch is taken, then its commit fails
            calls.append(len(take()))
            raise DatabaseUnavailableError()

        def counted() -> list[dict[str, Any]]:
            events = take()
            calls.append(len(events))
            return events

        append_audit(counted)

    monkeypatch.setattr(store, "append_audit", failing_once)
    errors: dict[str, BaseException] = {}
    record(runtime, "LOST", errors)
    assert isinstance(errors.pop("LOST"), DatabaseUnavailableError)
    threads = [threading.Thread(target=record, args=(runtime, f"K{n:02d}", errors)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == {}
    assert keys_in_log(runtime) == [f"K{n:02d}" for n in range(20)]
    assert sum(calls[1:]) == 20  # every event written exactly once


def test_a_request_whose_writer_hangs_gives_up_and_its_event_is_not_written_later(runtime, monkeypatch):
    store = runtime.store
    append_audit = store.append_audit
    release = threading.Event()

    def hanging_first(take: Callable[[], list[dict[str, Any]]]) -> None:
        if not release.is_set():
            release.wait(10)
        append_audit(take)

    monkeypatch.setattr(store, "append_audit", hanging_first)
    monkeypatch.setattr(audit, "WAIT_SECONDS", 0.2)
    errors: dict[str, BaseException] = {}
    stuck = threading.Thread(target=record, args=(runtime, "STUCK", errors))
    stuck.start()
    wait_for(lambda: runtime.audit_writer._writing)
    record(runtime, "GAVE_UP", errors)  # waits 0.2 s for the stuck writer, then fails
    assert isinstance(errors.pop("GAVE_UP"), DatabaseUnavailableError)
    release.set()
    stuck.join(10)
    assert keys_in_log_after_one_more_event(runtime, errors) == ["AFTER", "STUCK"]


def test_a_request_interrupted_while_it_waits_leaves_the_queue(runtime, monkeypatch):
    """A KeyboardInterrupt in the main thread while its event waits for the next batch: that request fails, and
    the requests after it are still written, instead of waiting for a turn handed to the interrupted one."""
    import signal

    def interrupt(_signal: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    taken, release, _ = hold_first_batch(runtime.store, monkeypatch)
    monkeypatch.setattr(audit, "WAIT_SECONDS", 5)
    errors: dict[str, BaseException] = {}
    first = threading.Thread(target=record, args=(runtime, "FIRST", errors))
    first.start()
    assert taken.wait(10)
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)  # while the next request waits for FIRST's batch to commit
    try:
        with pytest.raises(KeyboardInterrupt):
            record(runtime, "INTERRUPTED", errors)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    release.set()
    first.join(10)
    assert keys_in_log_after_one_more_event(runtime, errors) == ["AFTER", "FIRST"]


def test_a_request_interrupted_as_it_is_handed_the_turn_passes_it_on(runtime, monkeypatch):
    """Interrupted just as the writer before it hands it the turn: it passes the turn on, so that the next
    request writes instead of waiting for a writer that will never come."""
    sleep = audit._Pending.sleep

    def interrupted_once_woken(pending: Any, seconds: float) -> bool:
        woken = sleep(pending, seconds)
        if pending.row["key"] == "INTERRUPTED":
            raise KeyboardInterrupt
        return woken

    taken, release, _ = hold_first_batch(runtime.store, monkeypatch)
    monkeypatch.setattr(audit._Pending, "sleep", interrupted_once_woken)
    monkeypatch.setattr(audit, "WAIT_SECONDS", 5)
    errors: dict[str, BaseException] = {}
    first = threading.Thread(target=record, args=(runtime, "FIRST", errors))
    first.start()
    assert taken.wait(10)
    interrupted: list[BaseException] = []

    def record_interrupted() -> None:
        try:
            record(runtime, "INTERRUPTED", errors)
        except KeyboardInterrupt as interruption:
            interrupted.append(interruption)

    waiter = threading.Thread(target=record_interrupted)
    waiter.start()
    wait_for(lambda: runtime.audit_writer._waiting)  # queued behind FIRST's batch, so handed the turn next
    release.set()
    first.join(10)
    waiter.join(10)
    assert len(interrupted) == 1
    assert keys_in_log_after_one_more_event(runtime, errors) == ["AFTER", "FIRST"]


def read(runtime, key: str, results: dict[str, Any]) -> None:
    """Read `key`'s value as the operator; its value, or the error, goes to `results`."""
    with activated(runtime):
        try:
            results[key] = service.read_secret(operator("tester"), key)["value"]
        except Exception as error:  # noqa: BLE001 - collected for the test's assertions
            results[key] = error


def recorded_reads(runtime, monkeypatch) -> list[list[str]]:
    """The keys of each statement reading current values from now on, sorted, go to the list returned."""
    reads: list[list[str]] = []
    current_values = runtime.store.current_values
    monkeypatch.setattr(runtime.store, "current_values", lambda keys: reads.append(sorted(keys)) or current_values(keys))
    return reads


def first_batch_held(runtime, monkeypatch, errors: dict[str, BaseException]) -> tuple[threading.Thread, threading.Event,
                                                                                   list[list[str]]]:
    """A thread recording FIRST, whose batch is taken and held until the event returned is set: requests that
    come meanwhile queue for the next batch. Every batch's keys go to the list returned."""
    taken, release, batches = hold_first_batch(runtime.store, monkeypatch)
    first = threading.Thread(target=record, args=(runtime, "FIRST", errors))
    first.start()
    assert taken.wait(10)
    return first, release, batches


def test_reads_waiting_for_one_batch_each_get_what_they_found_and_its_outcome(backend, runtime, monkeypatch):
    """Reads queued behind a batch share the next one. On PostgreSQL the writer reads all their values in one
    statement first; on SQLite each read its own before it queued. Either way each answer, and each event's
    outcome, is what its key holds: a value (ok), no secret (not_found), or a value that fails its check
    (integrity_failed)."""
    with activated(runtime):
        for key in ("GOOD", "ALSO_GOOD", "BAD"):
            service.create_secret(operator("tester"), key, f"value of {key}")
    # BAD gets GOOD's ciphertext, which is bound to the key GOOD: it no longer decrypts as BAD.
    runtime.store.write(lambda tx: tx.execute(
        "UPDATE secrets SET encrypted_value = (SELECT encrypted_value FROM secrets WHERE key = 'GOOD'), "
        "iv = (SELECT iv FROM secrets WHERE key = 'GOOD') WHERE key = 'BAD'"))
    reads = recorded_reads(runtime, monkeypatch)
    errors: dict[str, BaseException] = {}
    first, first_batch_may_commit, batches = first_batch_held(runtime, monkeypatch, errors)
    results: dict[str, Any] = {}
    keys = ("GOOD", "ALSO_GOOD", "MISSING", "BAD")
    readers = [threading.Thread(target=read, args=(runtime, key, results)) for key in keys]
    for thread in readers:
        thread.start()
    wait_for(lambda: len(runtime.audit_writer._waiting) == len(keys))
    assert results == {}  # nobody answered before their events are committed
    first_batch_may_commit.set()
    for thread in (first, *readers):
        thread.join(10)
    assert errors == {}
    assert sorted(batches[1]) == sorted(keys) and len(batches) == 2
    if backend == "postgresql":
        assert reads == [sorted(keys)]
    else:
        assert sorted(reads) == sorted([key] for key in keys)
    assert results.pop("GOOD") == "value of GOOD" and results.pop("ALSO_GOOD") == "value of ALSO_GOOD"
    assert isinstance(results["MISSING"], NotFoundError)
    assert str(results.pop("MISSING")) == 'Secret with key "MISSING" not found'
    assert isinstance(results["BAD"], IntegrityCheckError)
    assert str(results.pop("BAD")) == 'Secret "BAD" failed its integrity check'
    with activated(runtime):
        outcomes = {event["key"]: event["outcome"] for event in audit.list_events(limit=1000)
                    if event["action"] == "read"}
    assert outcomes == {"GOOD": "ok", "ALSO_GOOD": "ok", "MISSING": "not_found", "BAD": "integrity_failed"}


def test_a_read_is_answered_only_once_its_event_is_committed(runtime, monkeypatch):
    """A read queued behind another batch, in a batch led by another request: its value is read once that
    batch is taken (on SQLite before it queued), and its answer still waits for the commit."""
    with activated(runtime):
        service.create_secret(operator("tester"), "KEY", "the value")
    reads = recorded_reads(runtime, monkeypatch)
    errors: dict[str, BaseException] = {}
    first, first_batch_may_commit, _ = first_batch_held(runtime, monkeypatch, errors)
    second_taken, second_batch_may_commit, _ = hold_first_batch(runtime.store, monkeypatch)  # the next batch
    results: dict[str, Any] = {}
    reader = threading.Thread(target=read, args=(runtime, "KEY", results))
    reader.start()
    wait_for(lambda: len(runtime.audit_writer._waiting) == 1)
    prober = threading.Thread(target=record, args=(runtime, "PROBE", errors))  # queued after the reader
    prober.start()
    wait_for(lambda: len(runtime.audit_writer._waiting) == 2)
    first_batch_may_commit.set()
    assert second_taken.wait(10)  # the reader's batch, led by the reader, with PROBE in it
    assert reads == [["KEY"]]
    assert [event["action"] for event in runtime.store.audit_events("KEY", None, 10, None)] == ["create"]
    assert results == {}
    second_batch_may_commit.set()
    for thread in (first, reader, prober):
        thread.join(10)
    assert errors == {} and results == {"KEY": "the value"}
    assert [event["action"] for event in runtime.store.audit_events("KEY", None, 10, None)] == ["read", "create"]


def test_reads_whose_values_cannot_be_read_all_fail_unanswered_and_unaudited(backend, runtime, monkeypatch):
    """On PostgreSQL the batch's one read fails every read queued in it; on SQLite each read's own does."""
    with activated(runtime):
        for key in ("A", "B", "C"):
            service.create_secret(operator("tester"), key, f"value of {key}")

    def unavailable(keys: Any) -> Any:
        raise DatabaseUnavailableError()

    monkeypatch.setattr(runtime.store, "current_values", unavailable)
    errors: dict[str, BaseException] = {}
    first, first_batch_may_commit, _ = first_batch_held(runtime, monkeypatch, errors)
    results: dict[str, Any] = {}
    readers = [threading.Thread(target=read, args=(runtime, key, results)) for key in ("A", "B", "C")]
    for thread in readers:
        thread.start()
    if backend == "postgresql":
        wait_for(lambda: len(runtime.audit_writer._waiting) == 3)
    first_batch_may_commit.set()
    for thread in (first, *readers):
        thread.join(10)
    assert errors == {}
    assert sorted(results) == ["A", "B", "C"]
    assert all(isinstance(error, DatabaseUnavailableError) for error in results.values())
    with activated(runtime):
        assert [event["action"] for event in audit.list_events(limit=1000) if event["action"] == "read"] == []
    assert keys_in_log_after_one_more_event(runtime, errors) == ["AFTER", "FIRST"]


def test_a_read_whose_event_fails_to_commit_gets_no_value(runtime, monkeypatch):
    with activated(runtime):
        service.create_secret(operator("tester"), "KEY", "the value")
    store = runtime.store
    append_audit = store.append_audit
    failures: list[int] = []

    def failing_once(take: Callable[[], list[dict[str, Any]]]) -> None:
        if failures:
            return append_audit(take)
        failures.append(len(take()))  # the batch, read, is taken; then its commit fails
        raise DatabaseUnavailableError()

    monkeypatch.setattr(store, "append_audit", failing_once)
    results: dict[str, Any] = {}
    read(runtime, "KEY", results)
    assert failures == [1] and isinstance(results.pop("KEY"), DatabaseUnavailableError)
    with activated(runtime):
        assert [event["action"] for event in audit.list_events(key="KEY")] == ["create"]
    read(runtime, "KEY", results)
    assert results == {"KEY": "the value"}


def test_batches_of_every_size_are_written_and_only_small_ones_stay_prepared(backend, runtime):
    """Each batch size is a statement of its own. A PostgreSQL connection keeps those of at most
    MAX_PREPARED_PARAMETERS parameters prepared (9 events), and sends bigger ones unprepared, so that rare big
    batches keep no memory in the server: batches of 1 to 15 events on one connection are all written."""
    sizes = range(1, 16)
    for size in sizes:
        events = [audit.event(operator("tester"), "probe", f"B{size:03d}-{n:03d}", "ok") for n in range(size)]
        runtime.store.append_audit(lambda events=events: events)
    with activated(runtime):
        logged = [event["key"] for event in audit.list_events(limit=1000) if event["action"] == "probe"]
    assert sorted(logged) == sorted(f"B{size:03d}-{n:03d}" for size in sizes for n in range(size))
    if backend == "postgresql":  # the same connection (one thread, the most recently used first)
        prepared = runtime.store._fetch(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO audit_events %'")
        events_per_batch = sorted(statement.count("(") - 1 for (statement,) in prepared)
        assert events_per_batch == list(range(1, MAX_PREPARED_PARAMETERS // len(AUDIT_COLUMNS) + 1))


def test_a_writer_started_afresh_before_its_batch_is_taken_still_writes_its_own_event_once():
    """What a process forked between taking the turn to write and taking the batch finds: no queue (see
    `secrets_hub.forks`). The request holding the turn still gets its event written, and returns."""
    written: list[list[str]] = []

    class Store:
        def append_audit(self, take: Callable[[], list[dict[str, Any]]]) -> None:
            writer._start_afresh()
            written.append([row["key"] for row in take()])

    writer = audit.GroupCommitWriter(Store())
    done = threading.Thread(target=writer.write, args=({"key": "OWN"},), daemon=True)
    done.start()
    done.join(5)
    assert not done.is_alive()
    assert written == [["OWN"]]


def test_a_forked_child_writes_its_own_events_even_if_forked_mid_batch(runtime, monkeypatch, tmp_path):
    import os

    store = runtime.store
    append_audit = store.append_audit
    forked = threading.Event()
    report = tmp_path / "child"

    def fork_while_writing(take: Callable[[], list[dict[str, Any]]]) -> None:
        if not forked.is_set():
            forked.set()
            child = os.fork()
            if child == 0:  # the child: nobody writes there, yet its own event must not wait for anyone
                def child_work() -> None:
                    errors: dict[str, BaseException] = {}
                    record(runtime, "CHILD", errors)
                    assert errors == {}

                in_child(report, child_work)
            assert os.waitpid(child, 0)[1] == 0, report.read_text()
        append_audit(take)

    monkeypatch.setattr(store, "append_audit", fork_while_writing)
    errors: dict[str, BaseException] = {}
    record(runtime, "PARENT", errors)
    assert errors == {}
    assert keys_in_log(runtime) == ["CHILD", "PARENT"]


def in_child(report: Any, work: Callable[[], Any]) -> None:
    """The end of a forked child: run `work`, and exit 0, or 1 with the traceback in `report` (a Path)."""
    import os
    import traceback

    status = 1
    try:
        work()
        status = 0
    except BaseException:  # noqa: BLE001 - the child's failure goes to the parent through `report`
        report.write_text(traceback.format_exc())
    finally:
        os._exit(status)


def test_sqlite_a_child_forked_while_the_checkpointer_is_being_started_writes(backend, runtime, tmp_path):
    """Forked while another thread holds the lock under which the checkpointer thread is started: the child
    starts its own checkpointer after its first write instead of waiting for that lock forever."""
    if backend != "sqlite":
        pytest.skip("only SQLite has a checkpointer")
    import os
    import signal

    starting = runtime.store._checkpointer._starting
    report = tmp_path / "child"
    with starting:  # as a thread starting the checkpointer would
        child = os.fork()
        if child == 0:
            signal.alarm(10)  # a child that waits for the lock forever is killed, and the test fails
            in_child(report, lambda: record(runtime, "CHILD", {}))
    _, status = os.waitpid(child, 0)
    assert status == 0, report.read_text() if report.exists() else f"status {status}"
    assert keys_in_log(runtime) == ["CHILD"]


def test_postgres_a_child_forked_in_the_middle_of_a_write_uses_connections_of_its_own(backend, runtime, tmp_path):
    """Forked while the parent writes, with idle connections in the pool: the child opens its own instead of
    sending its statements down the parent's sockets."""
    if backend != "postgresql":
        pytest.skip("SQLite's own locks cannot be carried across a fork at all (sqlite.org/howtocorrupt.html)")
    import os

    store = runtime.store
    backend_pid = "SELECT pg_backend_pid()"
    # Two connections at once, so that one is still idle while the write below holds the other.
    parents = store._run(lambda connection: {connection.info.backend_pid, store._fetch(backend_pid, one=True)[0]})
    report = tmp_path / "child"

    def fork_in_the_middle(tx: Any) -> int:
        tx.execute("SELECT 1")
        child = os.fork()
        if child == 0:
            def child_work() -> None:
                errors: dict[str, BaseException] = {}
                record(runtime, "CHILD", errors)
                report.write_text(f"{errors} {store._fetch(backend_pid, one=True)[0]}")

            in_child(report, child_work)
        return child

    child = store.write(fork_in_the_middle)
    assert os.waitpid(child, 0)[1] == 0, report.read_text()
    errors, used = report.read_text().rsplit(" ", 1)
    assert (errors, int(used) in parents, len(parents)) == ("{}", False, 2)
    record(runtime, "PARENT", {})
    assert keys_in_log(runtime) == ["CHILD", "PARENT"]


def test_sqlite_events_arriving_while_another_process_writes_join_the_batch_waiting_for_it(
        backend, database_url, runtime, monkeypatch):
    """The batch is taken once the writer locks are held: one commit for all who waited for them."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL has no writer lock to wait for")
    import os

    store = runtime.store
    append_audit = store.append_audit
    batches: list[list[str]] = []

    def recorded(take: Callable[[], list[dict[str, Any]]]) -> None:
        def taken() -> list[dict[str, Any]]:
            events = take()
            batches.append(sorted(event["key"] for event in events))
            return events

        append_audit(taken)

    monkeypatch.setattr(store, "append_audit", recorded)
    other_process = hold_sqlite_writer_lock(database_url)
    errors: dict[str, BaseException] = {}
    threads = [threading.Thread(target=record, args=(runtime, f"K{n:02d}", errors)) for n in range(9)]
    threads[0].start()
    wait_for(lambda: runtime.audit_writer._writing)  # K00 leads, and waits for the lock
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(runtime.audit_writer._waiting) == 9)
    os.close(other_process)
    for thread in threads:
        thread.join(10)
    assert errors == {}
    assert batches == [[f"K{n:02d}" for n in range(9)]]
    assert keys_in_log(runtime) == [f"K{n:02d}" for n in range(9)]


def test_sqlite_when_the_writer_lock_never_comes_those_waiting_fail_and_the_next_event_is_written(
        backend, database_url, runtime, monkeypatch):
    if backend != "sqlite":
        pytest.skip("PostgreSQL has no writer lock to wait for")
    import os

    from secrets_hub import store

    monkeypatch.setattr(store, "SQLITE_BUSY_SECONDS", 0.5)
    other_process = hold_sqlite_writer_lock(database_url)
    errors: dict[str, BaseException] = {}
    try:
        threads = [threading.Thread(target=record, args=(runtime, f"K{n:02d}", errors)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        os.close(other_process)
    assert sorted(errors) == ["K00", "K01", "K02"]
    assert all(isinstance(error, DatabaseUnavailableError) for error in errors.values())
    errors.clear()
    assert keys_in_log_after_one_more_event(runtime, errors) == ["AFTER"]
