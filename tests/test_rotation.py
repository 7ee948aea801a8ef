"""`secrets-hub rotate-master-key` (SPEC.md sections 2, 3 and 6), on SQLite and PostgreSQL.

The new master secret is in SECRETS_HUB_MASTER_KEY and the former one in SECRETS_HUB_OLD_MASTER_KEYS.
Outcomes are checked in the database itself (every row's key id, the key check) and by decrypting
every row with the keys a user would have configured. The kill and concurrent-write cases run the
command as a real subprocess; the rest go through the CLI in-process (conftest's `cli_in_process`).
"""

from __future__ import annotations

import getpass
import os
import pty
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import create_engine, func, insert, select, text

from conftest import MASTER_KEY, SECRETS_HUB, cli_env, ok, one_error_line
from secrets_hub import bootstrap, service
from secrets_hub.app import create_app
from secrets_hub.auth import operator
from secrets_hub.config import normalize_database_url
from secrets_hub.crypto import Keyring
from secrets_hub.db import db
from secrets_hub.store import utcnow
from secrets_hub.models import Secret, SecretVersion

NEW_MASTER_KEY = "the-new-master-secret-for-rotation-tests-9876543210"
THIRD_MASTER_KEY = "a-master-secret-this-instance-was-never-told-about-42"
OLD_ID = Keyring.from_master(MASTER_KEY).key_id
NEW_ID = Keyring.from_master(NEW_MASTER_KEY).key_id
ROTATING = {"SECRETS_HUB_MASTER_KEY": NEW_MASTER_KEY, "SECRETS_HUB_OLD_MASTER_KEYS": MASTER_KEY}
FILLED_SECRETS, FILLED_VERSIONS = 3000, 3
secrets_table, versions_table = Secret.__table__, SecretVersion.__table__


# --------------------------------------------------------------------------- helpers






def engine_for(config: dict[str, Any]):
    return create_engine(normalize_database_url(config["DATABASE_URL"]))


def query(config: dict[str, Any], statement) -> list[Any]:
    engine = engine_for(config)
    try:
        with engine.connect() as connection:
            return list(connection.execute(statement))
    finally:
        engine.dispose()


def all_ciphertexts(config: dict[str, Any]) -> list[tuple[str, int | None, Any]]:
    """Every ciphertext in the store: (key, version or None for the current value, row)."""
    current = query(config, select(secrets_table.c.key, secrets_table.c.encrypted_value, secrets_table.c.iv,
                                   secrets_table.c.key_id))
    versions = query(config, select(secrets_table.c.key, versions_table.c.version, versions_table.c.encrypted_value,
                                    versions_table.c.iv, versions_table.c.key_id)
                     .join(secrets_table, secrets_table.c.id == versions_table.c.secret_id))
    return [(row.key, None, row) for row in current] + [(row.key, row.version, row) for row in versions]


def decrypt_all(config: dict[str, Any], keyring: Keyring) -> dict[tuple[str, int | None], str]:
    """Every value in the store, decrypted with `keyring` (raises if any row does not open)."""
    return {(key, version): keyring.decrypt(row.encrypted_value, row.iv, row.key_id, key)
            for key, version, row in all_ciphertexts(config)}


def key_ids(config: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in (secrets_table, versions_table):
        for key_id, count in query(config, select(table.c.key_id, func.count()).group_by(table.c.key_id)):
            counts[key_id] = counts.get(key_id, 0) + count
    return counts


def key_check(config: dict[str, Any]) -> str:
    return query(config, text("SELECT value FROM secrets_hub_meta WHERE name = 'key_check'"))[0][0]


def snapshot(config: dict[str, Any]) -> dict[str, list[tuple]]:
    """Everything rotation may touch, row by row."""
    return {name: sorted(tuple(row) for row in query(config, text(f"SELECT * FROM {name}")))  # noqa: S608 - ours
            for name in ("secrets", "secret_versions", "secrets_hub_meta")}


def metadata(config: dict[str, Any]) -> dict[str, list[tuple]]:
    """Every column of the secret and version rows but the ciphertext, its nonce and its key id."""
    sealed = {"encrypted_value", "iv", "key_id"}
    return {table.name: sorted(tuple(row) for row in query(config, select(*[c for c in table.c if c.name not in sealed])))
            for table in (secrets_table, versions_table)}


def audit_events(config: dict[str, Any], action: str) -> list[Any]:
    return query(config, text("SELECT actor, channel, action, key, outcome FROM audit_events "
                              "WHERE action = :action ORDER BY id").bindparams(action=action))


def value_of(index: int, version: int) -> str:
    return f"value-{index:05d}-v{version}-ünï \"q\" \\ $HOME"


def fill(config: dict[str, Any], master: str, count: int = FILLED_SECRETS,
         versions: int = FILLED_VERSIONS) -> dict[tuple[str, int | None], str]:
    """`count` secrets of `versions` versions each, sealed under `master` and bulk-inserted (the service would
    take minutes); returns the expected value of every ciphertext, as `decrypt_all` does."""
    keyring, now, expected = Keyring.from_master(master), utcnow(), {}
    secret_rows, version_rows = [], []
    for index in range(count):
        key, secret_id = f"FILLED_{index:05d}", str(uuid.uuid4())
        for version in range(1, versions + 1):
            sealed = keyring.encrypt(value_of(index, version), key)
            version_rows.append({"secret_id": secret_id, "version": version, "encrypted_value": sealed.encrypted_value,
                                 "iv": sealed.iv, "key_id": sealed.key_id, "created_at": now, "created_by": "filler"})
            expected[(key, version)] = value_of(index, version)
        expected[(key, None)] = value_of(index, versions)
        current = keyring.encrypt(value_of(index, versions), key)
        secret_rows.append({"id": secret_id, "key": key, "encrypted_value": current.encrypted_value, "iv": current.iv,
                            "key_id": current.key_id, "description": None, "created_at": now, "updated_at": now,
                            "current_version": versions})
    engine = engine_for(config)
    try:
        with engine.begin() as connection:
            connection.execute(insert(secrets_table), secret_rows)
            connection.execute(insert(versions_table), version_rows)
    finally:
        engine.dispose()
    return expected


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


@pytest.fixture
def initialized(config: dict[str, Any]) -> dict[str, Any]:
    """An initialised store whose key check is under the former master secret (MASTER_KEY)."""
    bootstrap.initialize(config)
    return config


def start_rotation(config: dict[str, Any], tmp_path: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """`secrets-hub rotate-master-key` as a real process; its stderr goes to a file, returned beside it."""
    log = tmp_path / f"{name}.stderr"
    with open(log, "w") as stderr:
        process = subprocess.Popen([*SECRETS_HUB, "rotate-master-key"], env={**cli_env(config), **ROTATING},
                                   cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    return process, log


# --------------------------------------------------------------------------- the whole rotation, in-process


def test_rotation_reencrypts_every_secret_and_version_and_moves_the_key_check(initialized, cli_in_process):
    history = {
        "API_KEY": ["first", "second", "third"],
        "MULTILINE": ["a\nb", "c \"quoted\" \\ $VAR"],
        "UNICODE": ["pässwörd-✓-密码"],
    }
    for key, values in history.items():
        for value in values:
            ok(cli_in_process("set", key, "--description", f"about {key}", input=value))
    assert key_ids(initialized) == {OLD_ID: 3 + 6}
    metadata_before = metadata(initialized)

    result = ok(cli_in_process("rotate-master-key", env=ROTATING))

    assert result.stdout == ""
    assert "Re-encrypting" in result.stderr  # the progress bar (on a pipe, click prints its label alone)
    assert f"Re-encrypted 9 rows; everything is under key id {NEW_ID} and the key check names it." in result.stderr
    assert key_ids(initialized) == {NEW_ID: 9}
    assert key_check(initialized).startswith(f"{NEW_ID}:")
    # Nothing but the ciphertexts changed: ids, version numbers, descriptions and times are as they were.
    assert metadata(initialized) == metadata_before
    rows = query(initialized, select(secrets_table.c.key, secrets_table.c.current_version, secrets_table.c.description))
    assert sorted(tuple(row) for row in rows) == sorted((k, len(v), f"about {k}") for k, v in history.items())

    # The former master secret can go: the new one alone reads every value and every older version.
    only_new = {"SECRETS_HUB_MASTER_KEY": NEW_MASTER_KEY}
    for key, values in history.items():
        assert ok(cli_in_process("get", key, env=only_new)).stdout == values[-1] + "\n"
        for number, value in enumerate(values, start=1):
            assert ok(cli_in_process("get", key, "--version", str(number), env=only_new)).stdout == value + "\n"
    # ... and the former one alone no longer opens the database.
    refused = one_error_line(cli_in_process("get", "API_KEY", env={"SECRETS_HUB_MASTER_KEY": MASTER_KEY}))
    assert "master key does not match" in refused

    assert audit_events(initialized, "rotate_master_key") == [(getpass.getuser(), "cli", "rotate_master_key", NEW_ID, "ok")]

    # Running it again finds nothing to do and changes nothing.
    before = snapshot(initialized)
    again = ok(cli_in_process("rotate-master-key", env=only_new))
    assert f"Re-encrypted 0 rows; everything is under key id {NEW_ID}" in again.stderr
    after = snapshot(initialized)
    assert after["secrets"] == before["secrets"] and after["secret_versions"] == before["secret_versions"]
    assert decrypt_all(initialized, Keyring.from_master(NEW_MASTER_KEY))[("API_KEY", None)] == "third"


def test_a_row_under_an_unconfigured_key_is_refused_and_nothing_changes(initialized, cli_in_process):
    ok(cli_in_process("set", "KNOWN", input="known-value"))
    # One secret sealed under a master secret the configuration does not name, as if inserted by another instance.
    stranger = Keyring.from_master(THIRD_MASTER_KEY)
    sealed = stranger.encrypt("stranger-value", "STRANGER")
    secret_id, now = str(uuid.uuid4()), utcnow()
    engine = engine_for(initialized)
    try:
        with engine.begin() as connection:
            connection.execute(insert(secrets_table), {
                "id": secret_id, "key": "STRANGER", "encrypted_value": sealed.encrypted_value, "iv": sealed.iv,
                "key_id": sealed.key_id, "description": None, "created_at": now, "updated_at": now,
                "current_version": 1})
            connection.execute(insert(versions_table), {
                "secret_id": secret_id, "version": 1, "encrypted_value": sealed.encrypted_value, "iv": sealed.iv,
                "key_id": sealed.key_id, "created_at": now, "created_by": "elsewhere"})
    finally:
        engine.dispose()
    before = snapshot(initialized)

    result = cli_in_process("rotate-master-key", env=ROTATING)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert snapshot(initialized) == before  # no row re-encrypted, the key check untouched
    assert stranger.key_id in result.stderr and "SECRETS_HUB_OLD_MASTER_KEYS" in result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: Some secrets are encrypted under key id {stranger.key_id}, which is not configured: "
        "add its master secret to SECRETS_HUB_OLD_MASTER_KEYS"
    ], "the refusal must be one line on stderr"


def test_naming_the_missing_key_lets_the_rotation_finish(initialized, cli_in_process):
    ok(cli_in_process("set", "FROM_THE_START", input="one"))
    third = {"SECRETS_HUB_MASTER_KEY": THIRD_MASTER_KEY, "SECRETS_HUB_OLD_MASTER_KEYS": MASTER_KEY}
    ok(cli_in_process("set", "WRITTEN_UNDER_THIRD", input="two", env=third))  # a write under a third key
    assert key_ids(initialized) == {OLD_ID: 2, Keyring.from_master(THIRD_MASTER_KEY).key_id: 2}

    ok(cli_in_process("rotate-master-key", env={"SECRETS_HUB_MASTER_KEY": NEW_MASTER_KEY,
                                                "SECRETS_HUB_OLD_MASTER_KEYS": f"{MASTER_KEY}, {THIRD_MASTER_KEY}"}))

    assert key_ids(initialized) == {NEW_ID: 4}
    assert decrypt_all(initialized, Keyring.from_master(NEW_MASTER_KEY)) == {
        ("FROM_THE_START", None): "one", ("FROM_THE_START", 1): "one",
        ("WRITTEN_UNDER_THIRD", None): "two", ("WRITTEN_UNDER_THIRD", 1): "two"}


# --------------------------------------------------------------------------- a real process, killed and run again


def read_pty(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the child side is closed
            return
        if not chunk:
            return
        into.append(chunk)


def test_rotation_killed_at_any_point_keeps_every_secret_readable_and_finishes_when_run_again(initialized, tmp_path):
    expected = fill(initialized, MASTER_KEY)
    total = len(expected)
    both = Keyring.from_master(NEW_MASTER_KEY, (MASTER_KEY,))
    engine = engine_for(initialized)

    def under_new_key() -> int:
        with engine.connect() as connection:
            return sum(connection.execute(select(func.count()).where(table.c.key_id == NEW_ID)).scalar_one()
                       for table in (secrets_table, versions_table))

    try:
        done = 0
        for attempt in range(2):  # killed twice, each time a little further in
            process, log = start_rotation(initialized, tmp_path, f"killed-{attempt}")
            try:
                floor = done

                def progressed(floor: int = floor, process: subprocess.Popen = process) -> bool:
                    return floor < under_new_key() < total or process.poll() is not None

                wait_for(progressed, 120, "the rotation to make progress")
                os.kill(process.pid, signal.SIGKILL)
            finally:
                process.wait(timeout=30)
            done = under_new_key()
            assert floor < done < total, (
                f"the rotation was not caught mid-way (attempt {attempt}: {done} of {total} rows done, "
                f"exit {process.returncode}): {log.read_text()}")
            assert process.returncode == -signal.SIGKILL
            # Half done: every ciphertext still opens under the configured keys, with its value intact.
            assert decrypt_all(initialized, both) == expected
            assert key_ids(initialized) == {NEW_ID: done, OLD_ID: total - done}
    finally:
        engine.dispose()

    # Run again, to the end, with stderr on a terminal so that click draws the progress bar.
    leader, follower = pty.openpty()
    output: list[bytes] = []
    try:
        reader = threading.Thread(target=read_pty, args=(leader, output), daemon=True)
        reader.start()
        finished = subprocess.run([*SECRETS_HUB, "rotate-master-key"], env={**cli_env(initialized), **ROTATING},
                                  cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower,
                                  timeout=180)
        os.close(follower)
        follower = None
        reader.join(timeout=10)
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    terminal = b"".join(output).decode()
    assert finished.returncode == 0, terminal
    assert finished.stdout == b""
    assert re.search(r"Re-encrypting\s+\[#+\]\s+100%", terminal), terminal
    assert f"Re-encrypted {total - done} rows; everything is under key id {NEW_ID}" in terminal

    assert key_ids(initialized) == {NEW_ID: total}
    assert key_check(initialized).startswith(f"{NEW_ID}:")
    assert decrypt_all(initialized, Keyring.from_master(NEW_MASTER_KEY)) == expected  # the old key can go
    # Only the finished run records the rotation: the killed ones never reached their end.
    assert [event.outcome for event in audit_events(initialized, "rotate_master_key")] == ["ok"]


def test_reads_and_writes_during_a_rotation_are_kept(initialized, tmp_path):
    expected = fill(initialized, MASTER_KEY)
    app = create_app({**initialized, **ROTATING, "TESTING": True})  # a server already configured with both keys
    written_keys = [f"FILLED_{index:05d}" for index in range(0, FILLED_SECRETS, 97)]  # 31 keys spread over the table
    last_written: dict[str, str] = {}
    writes = {key: 0 for key in written_keys}
    counts = {"overlapping": 0, "reads after": 0}
    failures: list[BaseException] = []
    process, log = start_rotation(initialized, tmp_path, "concurrent")
    stop = threading.Event()

    def current_values_rotated() -> bool:
        return db.session.execute(select(func.count()).where(secrets_table.c.key_id == NEW_ID)).scalar_one() \
            == FILLED_SECRETS

    def writer() -> None:
        # Writes go on while the rotation walks the secrets table, and stop once it has: a later write would
        # hide one the rotation lost. Reads go on until the rotation ends.
        caller, number = operator("writer"), 0
        with app.app_context():
            try:
                while not stop.is_set():
                    number += 1
                    index = number % len(written_keys)
                    untouched = f"FILLED_{index * 97 + 1:05d}"  # a row the rotation has done, or not yet
                    assert service.read_secret(caller, untouched)["value"] == expected[(untouched, None)]
                    if current_values_rotated():
                        counts["reads after"] += 1
                        time.sleep(0.01)
                        continue
                    key, value = written_keys[index], f"written-{number}-\"ü\""
                    service.update_secret(caller, key, value=value)
                    last_written[key], writes[key] = value, writes[key] + 1
                    assert service.read_secret(caller, key)["value"] == value
                    if process.poll() is None and "Re-encrypting" in log.read_text():
                        counts["overlapping"] += 1
            except BaseException as error:  # noqa: BLE001 - reported by the test below
                failures.append(error)
            finally:
                db.session.remove()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stop.set()
        thread.join(timeout=60)
        with app.app_context():
            db.engine.dispose()

    assert not failures, failures
    assert process.returncode == 0, log.read_text()
    assert counts["overlapping"] >= 3, f"only {counts} writes overlapped the rotation: the test proved nothing"

    values = decrypt_all(initialized, Keyring.from_master(NEW_MASTER_KEY))  # the new key alone opens everything
    assert set(key_ids(initialized)) == {NEW_ID}
    current_versions = dict(query(initialized, select(secrets_table.c.key, secrets_table.c.current_version)))
    for key in written_keys:
        if writes[key]:
            assert values[(key, None)] == last_written[key], key  # the last write won, not the rotation's copy
            assert values[(key, current_versions[key])] == last_written[key], key
        assert current_versions[key] == FILLED_VERSIONS + writes[key], key
    untouched = {name: value for name, value in expected.items() if name[0] not in last_written}
    assert {name: values[name] for name in untouched} == untouched


class WriteOnRead(Keyring):
    """The rotation's keyring, which lets `write(key)` run (and commit) in the instant between the rotation
    reading a row and rewriting it: the worst moment for a write to land."""

    def __init__(self, inner: Keyring, targets: set[str], write: Callable[[str], None]):
        self.__dict__.update(inner.__dict__)
        self.targets, self.write = targets, write

    def decrypt(self, encrypted_value: str, iv: str, key_id: str, associated: str) -> str:
        if associated in self.targets:
            self.targets.discard(associated)
            worker = threading.Thread(target=self.write, args=(associated,))
            worker.start()  # another connection, as another server process would use
            worker.join()
        return super().decrypt(encrypted_value, iv, key_id, associated)


def test_a_write_landing_between_the_rotations_read_and_its_rewrite_is_kept(initialized, cli_in_process):
    import dataclasses

    from secrets_hub import rotation

    for key in ("RACED_A", "RACED_B", "CALM"):
        ok(cli_in_process("set", key, input=f"{key}-before"))
    server = create_app({**initialized, **ROTATING, "TESTING": True})
    rotator = create_app({**initialized, **ROTATING, "TESTING": True})

    def write(key: str) -> None:
        with server.app_context():
            service.update_secret(operator("server"), key, value=f"{key}-written-mid-rotation")
            db.session.remove()

    try:
        with rotator.app_context():
            state = rotator.extensions["secrets_hub"]
            hooked = WriteOnRead(state.keyring, {"RACED_A", "RACED_B"}, write)
            rotator.extensions["secrets_hub"] = dataclasses.replace(state, keyring=hooked)
            result = rotation.rotate_master_key(operator("tests"))
            db.session.remove()
        assert hooked.targets == set()  # both writes happened, mid-rotation
    finally:
        for app in (server, rotator):
            with app.app_context():
                db.engine.dispose()

    assert result["failed"] == []
    values = decrypt_all(initialized, Keyring.from_master(NEW_MASTER_KEY))
    assert values == {
        ("RACED_A", None): "RACED_A-written-mid-rotation", ("RACED_A", 1): "RACED_A-before",
        ("RACED_A", 2): "RACED_A-written-mid-rotation",
        ("RACED_B", None): "RACED_B-written-mid-rotation", ("RACED_B", 1): "RACED_B-before",
        ("RACED_B", 2): "RACED_B-written-mid-rotation",
        ("CALM", None): "CALM-before", ("CALM", 1): "CALM-before",
    }
    assert set(key_ids(initialized)) == {NEW_ID}
