"""`secrets-hub import-env FILE`, `export-env [--only GLOB]` and `run [--only GLOB] -- CMD` (SPEC.md sections 3 and 10).

Imports and exports run in-process (conftest's `cli_in_process`), on SQLite and PostgreSQL; the
signal and no-disk-writes checks of `run` use a real `secrets-hub` process, as a user starts it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values
from sqlalchemy import create_engine, text

from conftest import SECRETS_HUB, cli_env, ok
from secrets_hub import bootstrap, service
from secrets_hub.app import create_app
from secrets_hub.auth import operator
from secrets_hub.config import normalize_database_url
from secrets_hub.crypto import Keyring
from secrets_hub.db import db

# A .env file as people write them: comments, blank lines, `export`, both quotes, escapes, no quotes at all.
DOTENV = r"""# comment line
export EXPORTED_VALUE=plain-value

DOUBLE_QUOTED="double \"quoted\" back\\slash tab\tnew\nline"
SINGLE_QUOTED='single $NOT_EXPANDED \n stays \'quote\''
UNQUOTED=value with spaces # trailing comment
  INDENTED_KEY=indented
MULTILINE="first line
second line"
DOLLARS="$HOME ${PATH} $(whoami)"
UNICODE="pässwörd ✓ 密码 🔑"
EQUALS_IN_VALUE=a=b=c
HASH_IN_QUOTES="#not a comment"
"""
DOTENV_VALUES = {
    "EXPORTED_VALUE": "plain-value",
    "DOUBLE_QUOTED": 'double "quoted" back\\slash tab\tnew\nline',
    "SINGLE_QUOTED": "single $NOT_EXPANDED \\n stays 'quote'",  # single quotes: only \\ and \' are escapes
    "UNQUOTED": "value with spaces",
    "INDENTED_KEY": "indented",
    "MULTILINE": "first line\nsecond line",
    "DOLLARS": "$HOME ${PATH} $(whoami)",  # never interpolated
    "UNICODE": "pässwörd ✓ 密码 🔑",
    "EQUALS_IN_VALUE": "a=b=c",
    "HASH_IN_QUOTES": "#not a comment",
}

# Values that are hard to carry through a .env file.
TRICKY = {
    "QUOTES": 'say "hi" and \'bye\'',
    "BACKSLASHES": "C:\\path\\to\\file and \\\\ two",
    "NEWLINES": "line one\nline two\n\nline four\n",
    "CRLF": "windows\r\nline",
    "DOLLAR_VARS": "$HOME ${PATH} $(whoami) `id` \\$ESCAPED",
    "UNICODE_VALUE": "ünïcødé ✓ 密码 🔑 \u00a0nbsp",
    "ESCAPE_LOOKALIKES": "\\n is not a newline, \\\" is not a quote, \\\\ is two",
    "SPACES": "  leading and trailing  ",
    "HASH": "# not a comment",
    "EQUALS": "a=b",
    "TAB": "a\tb",
    "JSON": '{"key": "value", "list": [1, 2]}',
}


# --------------------------------------------------------------------------- helpers




def put(config: dict[str, Any], values: dict[str, str]) -> None:
    """Store `values` through the service layer, as the operator (click's test runner would turn \\r\\n into \\n)."""
    app = create_app(config)
    try:
        with app.app_context():
            for key, value in values.items():
                service.put_secret(operator(getpass.getuser()), key, value)
            db.session.remove()
    finally:
        with app.app_context():
            db.engine.dispose()


def values_in(config: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    """Every current value of an instance, decrypted straight from its database."""
    settings = {**config, **(env or {})}
    keyring = Keyring.from_master(settings["SECRETS_HUB_MASTER_KEY"])
    engine = create_engine(normalize_database_url(settings["DATABASE_URL"]))
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT key, encrypted_value, iv, key_id FROM secrets")).all()
    finally:
        engine.dispose()
    return {row.key: keyring.decrypt(row.encrypted_value, row.iv, row.key_id, row.key) for row in rows}


def versions_of(cli_in_process, key: str) -> list[int]:
    return [row["version"] for row in json.loads(ok(cli_in_process("history", key, "--json")).stdout)]


def audit(config: dict[str, Any], action: str) -> list[tuple]:
    engine = create_engine(normalize_database_url(config["DATABASE_URL"]))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(
                "SELECT actor, channel, key, outcome FROM audit_events WHERE action = :action ORDER BY id"),
                {"action": action})]
    finally:
        engine.dispose()


def summary(created=0, updated=0, unchanged=0, skipped=0) -> str:
    return f"Imported: {created} created, {updated} updated, {unchanged} unchanged, {skipped} skipped"


@pytest.fixture
def instance(config: dict[str, Any]) -> dict[str, Any]:
    bootstrap.initialize(config)
    return config


@pytest.fixture
def second_instance(config, tmp_path: Path, other_database_url: str) -> dict[str, str]:
    """Another instance, empty, under another master secret: the environment that selects it."""
    settings = {"SECRETS_HUB_INSTANCE_PATH": str(tmp_path / "second-instance"), "DATABASE_URL": other_database_url,
                "SECRETS_HUB_MASTER_KEY": "the-second-instance-has-its-own-master-secret"}
    bootstrap.initialize({**config, **settings})
    return settings


# --------------------------------------------------------------------------- import-env


def test_import_env_reads_dotenv_syntax(instance, cli_in_process, tmp_path: Path):
    path = tmp_path / "app.env"
    path.write_text(DOTENV, encoding="utf-8")

    result = ok(cli_in_process("import-env", str(path)))

    assert result.stdout == ""
    assert result.stderr.splitlines() == [summary(created=len(DOTENV_VALUES))]
    assert values_in(instance) == DOTENV_VALUES
    assert sorted(audit(instance, "import")) == sorted((getpass.getuser(), "cli", key, "ok") for key in DOTENV_VALUES)

    # Again: every value is the same, so nothing changes and no version is added.
    again = ok(cli_in_process("import-env", str(path)))
    assert again.stderr.splitlines() == [summary(unchanged=len(DOTENV_VALUES))]
    assert versions_of(cli_in_process, "DOUBLE_QUOTED") == [1]

    # One value changed in the file: that secret alone gets a new version.
    path.write_text(DOTENV.replace("plain-value", "new-plain-value"), encoding="utf-8")
    third = ok(cli_in_process("import-env", str(path)))
    assert third.stderr.splitlines() == [summary(updated=1, unchanged=len(DOTENV_VALUES) - 1)]
    assert versions_of(cli_in_process, "EXPORTED_VALUE") == [2, 1]
    assert ok(cli_in_process("get", "EXPORTED_VALUE")).stdout == "new-plain-value\n"


def test_import_env_from_stdin(instance, cli_in_process):
    result = ok(cli_in_process("import-env", "-", input='FROM_STDIN="piped \\"in\\""\n'))
    assert result.stderr.splitlines() == [summary(created=1)]
    assert values_in(instance) == {"FROM_STDIN": 'piped "in"'}


def test_import_env_reports_bad_lines_by_number_and_key_and_imports_the_rest(instance, cli_in_process, tmp_path):
    path = tmp_path / "mixed.env"
    path.write_text("\n".join([
        "GOOD_ONE=first",                  # 1
        "lower_case=secret-lower",         # 2
        "Mixed_Case=secret-mixed",         # 3
        "1DIGIT_FIRST=secret-digit",       # 4
        "WITH-DASH=secret-dash",           # 5
        "this line is not an assignment",  # 6
        "NO_VALUE",                        # 7
        "EMPTY_VALUE=",                    # 8
        'GOOD_TWO="second"',               # 9
    ]) + "\n")

    result = cli_in_process("import-env", str(path))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        summary(created=2),
        'line 2: "lower_case" is not SCREAMING_SNAKE_CASE; skipped',
        'line 3: "Mixed_Case" is not SCREAMING_SNAKE_CASE; skipped',
        'line 4: "1DIGIT_FIRST" is not SCREAMING_SNAKE_CASE; skipped',
        'line 5: "WITH-DASH" is not SCREAMING_SNAKE_CASE; skipped',
        "line 6: not a KEY=value line; skipped",
        "line 7: NO_VALUE has no value; skipped",
        "line 8: EMPTY_VALUE: Value is required; skipped",
    ]
    # The valid ones are in; the others were not renamed into something valid.
    assert values_in(instance) == {"GOOD_ONE": "first", "GOOD_TWO": "second"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_import_env_of_a_file_that_is_not_utf8_is_one_clear_line(instance, cli_in_process, tmp_path: Path):
    path = tmp_path / "latin1.env"
    path.write_bytes("GOOD=1\nPASSWORD=s\u00e9same\n".encode("latin-1"))
    result = cli_in_process("import-env", str(path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert values_in(instance) == {}
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Unexpected error" not in lines[0] and path.name in lines[0], "the line should name the file and its problem"


# --------------------------------------------------------------------------- export-env


def test_export_env_writes_escaped_double_quoted_lines(instance, cli_in_process):
    put(instance, {"QUOTES": 'say "hi"', "BACKSLASHES": "a\\b\\", "NEWLINES": "one\ntwo\n", "PLAIN": "plain"})

    result = ok(cli_in_process("export-env"))

    assert result.stderr == ""
    assert result.stdout == (
        'BACKSLASHES="a\\\\b\\\\"\n'
        'NEWLINES="one\\ntwo\\n"\n'
        'PLAIN="plain"\n'
        'QUOTES="say \\"hi\\""\n'
    )
    assert sorted(audit(instance, "read")) == sorted(
        (getpass.getuser(), "cli", key, "ok") for key in ("QUOTES", "BACKSLASHES", "NEWLINES", "PLAIN"))


def test_export_env_only_matching_keys(instance, cli_in_process):
    put(instance, {"OPENAI_API_KEY": "o", "OPENAI_ORG": "org", "GITHUB_TOKEN": "g", "SLACK_TOKEN": "s"})

    only_openai = ok(cli_in_process("export-env", "--only", "OPENAI_*")).stdout
    assert only_openai == 'OPENAI_API_KEY="o"\nOPENAI_ORG="org"\n'
    two_globs = ok(cli_in_process("export-env", "--only", "*_TOKEN", "--only", "OPENAI_ORG")).stdout
    assert two_globs == 'GITHUB_TOKEN="g"\nOPENAI_ORG="org"\nSLACK_TOKEN="s"\n'
    assert ok(cli_in_process("export-env", "--only", "NOTHING_*")).stdout == ""
    # Only what was exported was read.
    assert sorted(key for _, _, key, _ in audit(instance, "read")) == sorted(
        ["OPENAI_API_KEY", "OPENAI_ORG", "GITHUB_TOKEN", "OPENAI_ORG", "SLACK_TOKEN"])


def test_export_then_import_into_another_instance_round_trips_every_value(instance, second_instance, cli_in_process,
                                                                          tmp_path: Path):
    put(instance, TRICKY)
    exported = ok(cli_in_process("export-env")).stdout
    path = tmp_path / "exported.env"
    path.write_text(exported, encoding="utf-8")
    assert len(exported.splitlines()) == len(TRICKY)  # one line per secret: newlines are escaped

    # python-dotenv, with interpolation off, reads the same values.
    assert dotenv_values(path, interpolate=False) == TRICKY

    result = ok(cli_in_process("import-env", str(path), env=second_instance))
    assert result.stderr.splitlines() == [summary(created=len(TRICKY))]
    assert values_in(instance, env=second_instance) == TRICKY
    # And exporting from there gives the same file.
    assert ok(cli_in_process("export-env", env=second_instance)).stdout == exported


def test_a_value_ending_in_a_backslash_round_trips(instance, second_instance, cli_in_process, tmp_path: Path):
    # A Windows folder, C:\Users\me\ : its escaped form ends in a doubled backslash before the closing quote.
    values = {"A_WINDOWS_DIR": "C:\\Users\\me\\", "B_NEXT": "next-value", "C_LAST": "last-value"}
    put(instance, values)
    exported = ok(cli_in_process("export-env")).stdout
    assert exported == 'A_WINDOWS_DIR="C:\\\\Users\\\\me\\\\"\nB_NEXT="next-value"\nC_LAST="last-value"\n'
    path = tmp_path / "exported.env"
    path.write_text(exported, encoding="utf-8")

    imported = cli_in_process("import-env", str(path), env=second_instance)

    assert values_in(instance, env=second_instance) == values
    assert imported.returncode == 0, imported.stderr
    # python-dotenv 1.2 itself misreads this one line (it takes `\\"` for an escaped quote): the others it reads.
    assert {k: v for k, v in dotenv_values(path, interpolate=False).items() if k == "C_LAST"} == {"C_LAST": "last-value"}


# --------------------------------------------------------------------------- run

SHOW_ENV = "import json, os, sys; json.dump({k: os.environ.get(k) for k in sys.argv[1:]}, sys.stdout); sys.exit(3)"


def test_run_gives_the_command_the_secrets_and_exits_with_its_status(instance, cli_in_process, capfd):
    put(instance, {"A_ONE": "first", "A_TWO": TRICKY["NEWLINES"], "B_ONE": TRICKY["UNICODE_VALUE"]})
    shown = ["A_ONE", "A_TWO", "B_ONE", "PATH"]
    capfd.readouterr()

    everything = cli_in_process("run", "--", sys.executable, "-c", SHOW_ENV, *shown)
    seen = json.loads(capfd.readouterr().out)  # the child writes to the real stdout, not click's

    assert everything.returncode == 3
    assert everything.stderr == ""
    assert seen == {"A_ONE": "first", "A_TWO": TRICKY["NEWLINES"], "B_ONE": TRICKY["UNICODE_VALUE"],
                    "PATH": os.environ["PATH"]}

    only = cli_in_process("run", "--only", "A_*", "--", sys.executable, "-c", SHOW_ENV, *shown)
    seen = json.loads(capfd.readouterr().out)
    assert only.returncode == 3
    assert seen == {"A_ONE": "first", "A_TWO": TRICKY["NEWLINES"], "B_ONE": None, "PATH": os.environ["PATH"]}

    several = cli_in_process("run", "--only", "A_ONE", "--only", "B_*", "--", sys.executable, "-c", SHOW_ENV, *shown)
    seen = json.loads(capfd.readouterr().out)
    assert several.returncode == 3
    assert seen == {"A_ONE": "first", "A_TWO": None, "B_ONE": TRICKY["UNICODE_VALUE"], "PATH": os.environ["PATH"]}

    # Each value handed over was read, and audited as such.
    reads = sorted(key for _, channel, key, outcome in audit(instance, "read") if channel == "cli" and outcome == "ok")
    assert reads == sorted(["A_ONE", "A_TWO", "B_ONE", "A_ONE", "A_TWO", "A_ONE", "B_ONE"])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_run_never_hands_the_master_secret_to_the_command(instance, cli_in_process, capfd):
    put(instance, {"A_ONE": "first"})
    shown = ["A_ONE", "SECRETS_HUB_MASTER_KEY", "SECRETS_HUB_OLD_MASTER_KEYS", "BETTER_AUTH_SECRET", "DATABASE_URL"]
    capfd.readouterr()

    result = cli_in_process("run", "--", sys.executable, "-c", SHOW_ENV, *shown,
                            env={"SECRETS_HUB_OLD_MASTER_KEYS": "a-former-master", "BETTER_AUTH_SECRET": "seed-secret"})
    seen = json.loads(capfd.readouterr().out)

    assert result.returncode == 3
    # The secrets asked for, and the app's own settings such as DATABASE_URL, but no master secret at all.
    assert seen == {"A_ONE": "first", "SECRETS_HUB_MASTER_KEY": None, "SECRETS_HUB_OLD_MASTER_KEYS": None,
                    "BETTER_AUTH_SECRET": None, "DATABASE_URL": instance["DATABASE_URL"]}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_run_status_zero_and_arguments_pass_unchanged(instance, cli_in_process, capfd):
    result = cli_in_process("run", "--", sys.executable, "-c", "import sys; print(sys.argv[1:])", "--only", "-x", "a b")
    assert result.returncode == 0
    assert capfd.readouterr().out == "['--only', '-x', 'a b']\n"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_run_a_missing_command_exits_127_with_one_line(instance, cli_in_process):
    result = cli_in_process("run", "--", "no-such-command-for-secrets-hub-tests", "arg")
    assert result.returncode == 127
    assert result.stdout == ""
    assert result.stderr == "Error: command not found: no-such-command-for-secrets-hub-tests\n"


TRAP_SIGTERM = """
import hashlib, os, signal, sys, time
folder = sys.argv[1]
def stop(signum, frame):
    digest = hashlib.sha256(os.environ.get("RUN_SECRET", "").encode()).hexdigest()
    with open(os.path.join(folder, "marker"), "w") as marker:
        marker.write(f"{signum} {digest}")
    sys.exit(7)
signal.signal(signal.SIGTERM, stop)
with open(os.path.join(folder, "ready"), "w") as ready:
    ready.write("ready")
while True:
    signal.pause()
"""


def listing(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_run_passes_signals_through_and_writes_nothing_to_disk(instance, cli_in_process, tmp_path: Path):
    value = "run-secret-Z3VhcmQ-not-on-disk-\u2713"
    put(instance, {"RUN_SECRET": value})
    instance_dir, workdir, signals = Path(instance["SECRETS_HUB_INSTANCE_PATH"]), tmp_path / "workdir", tmp_path / "signals"
    workdir.mkdir()
    signals.mkdir()
    instance_before, workdir_before = listing(instance_dir), listing(workdir)

    process = subprocess.Popen([*SECRETS_HUB, "run", "--", sys.executable, "-c", TRAP_SIGTERM, str(signals)],
                               env=cli_env(instance), cwd=workdir, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (signals / "ready").exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # to secrets-hub, not to the command
        status = process.wait(timeout=30)
        stderr = process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()

    assert status == 7, stderr  # the command's own exit status, after its own SIGTERM handler ran
    assert "Traceback" not in stderr
    assert (signals / "marker").read_text() == f"{int(signal.SIGTERM)} {hashlib.sha256(value.encode()).hexdigest()}"

    # Nothing written: the instance folder and the working directory are as they were, and the value is in no
    # file under the test's folder, the (encrypted) database included.
    assert listing(instance_dir) == instance_before
    assert listing(workdir) == workdir_before == {}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert value.encode() not in path.read_bytes(), path
