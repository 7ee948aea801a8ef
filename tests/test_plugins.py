"""Skill plugins (SPEC.md section 7, issue 4): loading, failures, least privilege, references, hooks, the report.

Plugins are real modules: written into the plugins folder (`SECRETS_HUB_PLUGINS_DIR`, tmp_path/"plugins")
or installed as an entry point through a temporary `*.dist-info` on sys.path. Because the folder must be
filled before the app starts, tests write their plugins first and then ask for the app with
`request.getfixturevalue`. The command line is driven as a real subprocess (`run_cli`), on SQLite only
(each run costs about a second); in-process tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import ROOT, bearer
from secrets_hub import bootstrap

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

HEADER = "import os\nfrom secrets_hub import SecretRequirement, hookimpl\n"
REQUIREMENT_FIELDS = {"key", "description", "required", "obtainUrl", "set"}


# --------------------------------------------------------------------------- helpers


def write_plugin(config: dict[str, Any], name: str, body: str) -> Path:
    """Write `name.py` into the plugins folder (before the app starts)."""
    folder = Path(config["SECRETS_HUB_PLUGINS_DIR"])
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def declaring(*requirements: str, extra: str = "") -> str:
    """A plugin body whose secrets_hub_required_secrets returns the given SecretRequirement(...) expressions."""
    return textwrap.dedent(f"""
        @hookimpl
        def secrets_hub_required_secrets():
            return [{", ".join(requirements)}]
    """) + textwrap.dedent(extra)


def start(request) -> tuple[Any, Any, str]:
    """The app (started now, after the plugins were written), a test client and an admin token."""
    app = request.getfixturevalue("app")
    return app, app.test_client(), request.getfixturevalue("admin_token")


def hub_of(app) -> Any:
    return app.extensions["secrets_hub.hub"]


def plugin_module(app, name: str) -> Any:
    module = app.extensions["secrets_hub"].plugins.manager.get_plugin(name)
    assert module is not None, f"plugin {name} is not registered"
    return module


def skills(client, token: str) -> list[dict[str, Any]]:
    response = client.get("/api/skills", headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"data"}
    return body["data"]


def skill_named(report: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [skill for skill in report if skill["name"] == name]
    assert len(found) == 1, f"expected one skill named {name}: {report}"
    return found[0]


def create(client, token: str, key: str, value: str, description: str | None = None) -> None:
    body = {"key": key, "value": value, **({"description": description} if description is not None else {})}
    response = client.post("/api/secrets", json=body, headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)


def value_of(client, token: str, key: str) -> str | None:
    response = client.get(f"/api/secrets/{key}", headers=bearer(token))
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["data"]["value"]


def audit_by(client, token: str, actor: str) -> list[tuple[str, str, str, str | None, str]]:
    """(actor, channel, action, key, outcome) of every event by `actor`, oldest first."""
    response = client.get("/api/audit", query_string={"actor": actor, "limit": "1000"}, headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    return [(e["actor"], e["channel"], e["action"], e["key"], e["outcome"]) for e in reversed(response.get_json()["data"])]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def entry_points(tmp_path: Path, monkeypatch, config: dict[str, Any]) -> Iterator[Callable[..., str]]:
    """install(name, body): an installed distribution whose `secrets_hub` entry point `name` is a new module.

    Turns SECRETS_HUB_LOAD_ENTRYPOINTS on; `install.site` is the folder to put on PYTHONPATH for subprocesses.
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def install(name: str, body: str) -> str:
        module = f"skill_ep_{name}_{uuid.uuid4().hex[:8]}"
        (site / f"{module}.py").write_text(HEADER + textwrap.dedent(body))
        dist_info = site / f"{module}-0.1.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist_info / "entry_points.txt").write_text(f"[secrets_hub]\n{name} = {module}\n")
        importlib.invalidate_caches()  # importlib.metadata caches what it found on each path
        config["SECRETS_HUB_LOAD_ENTRYPOINTS"] = "1"
        modules.append(module)
        return module

    install.site = str(site)  # type: ignore[attr-defined]
    yield install
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


# --------------------------------------------------------------------------- the public names


def test_plugin_authors_import_everything_from_the_package():
    import pluggy

    from secrets_hub import SecretRequirement, hookimpl, open_hub
    from secrets_hub.hub import open_hub as hub_open_hub

    assert isinstance(hookimpl, pluggy.HookimplMarker)
    assert hookimpl.project_name == "secrets_hub"
    requirement = SecretRequirement("GITHUB_TOKEN")
    assert (requirement.key, requirement.description, requirement.required, requirement.obtain_url) == (
        "GITHUB_TOKEN", "", True, None)
    full = SecretRequirement("OPENAI_BASE_URL", "where", required=False, obtain_url="https://example.com/k")
    assert (full.key, full.description, full.required, full.obtain_url) == (
        "OPENAI_BASE_URL", "where", False, "https://example.com/k")
    assert open_hub is hub_open_hub


# --------------------------------------------------------------------------- loading


def test_a_module_in_the_plugins_folder_is_a_skill_named_after_its_file(request, config):
    write_plugin(config, "alpha_skill", declaring(
        'SecretRequirement("ALPHA_TOKEN", "Token for alpha", obtain_url="https://alpha.example/tokens")',
        'SecretRequirement("ALPHA_REGION", required=False)'))
    folder = Path(config["SECRETS_HUB_PLUGINS_DIR"])
    (folder / "notes.txt").write_text("not a plugin")

    app, client, token = start(request)

    assert skills(client, token) == [{"name": "alpha_skill", "error": None, "requires": [
        {"key": "ALPHA_TOKEN", "description": "Token for alpha", "required": True,
         "obtainUrl": "https://alpha.example/tokens", "set": False},
        {"key": "ALPHA_REGION", "description": "", "required": False, "obtainUrl": None, "set": False},
    ]}]
    create(client, token, "ALPHA_TOKEN", "alpha-value-1")
    assert hub_of(app).secrets_for("alpha_skill")["ALPHA_TOKEN"] == "alpha-value-1"


def test_an_installed_entry_point_is_a_skill_named_after_the_entry_point(request, config, entry_points):
    module = entry_points("ep_skill", declaring('SecretRequirement("EP_TOKEN", "From an entry point")', extra="""
        CALLS = []

        @hookimpl
        def secrets_hub_secret_changed(key, action):
            CALLS.append((key, action))
    """))

    app, client, token = start(request)

    assert skills(client, token) == [{"name": "ep_skill", "error": None, "requires": [
        {"key": "EP_TOKEN", "description": "From an entry point", "required": True, "obtainUrl": None,
         "set": False}]}]
    create(client, token, "EP_TOKEN", "ep-value-1")
    assert hub_of(app).secrets_for("ep_skill")["EP_TOKEN"] == "ep-value-1"
    assert sys.modules[module].CALLS == [("EP_TOKEN", "created")]


def test_entry_points_are_not_loaded_when_turned_off(request, config, entry_points):
    entry_points("ep_skill", declaring('SecretRequirement("EP_TOKEN")'))
    config["SECRETS_HUB_LOAD_ENTRYPOINTS"] = "0"
    write_plugin(config, "folder_skill", declaring('SecretRequirement("FOLDER_TOKEN")'))

    app, client, token = start(request)

    assert [skill["name"] for skill in skills(client, token)] == ["folder_skill"]


def test_the_example_plugins_load_and_declare_their_keys(request, config):
    config["SECRETS_HUB_PLUGINS_DIR"] = str(ROOT / "plugins")

    app, client, token = start(request)

    report = {skill["name"]: skill for skill in skills(client, token)}
    assert set(report) == {"github_issues", "summarizer"}
    assert [skill["error"] for skill in report.values()] == [None, None]
    assert [(r["key"], r["required"], r["set"]) for r in report["github_issues"]["requires"]] == [
        ("GITHUB_TOKEN", True, False)]
    assert [(r["key"], r["required"], r["set"]) for r in report["summarizer"]["requires"]] == [
        ("OPENAI_API_KEY", True, False), ("OPENAI_BASE_URL", False, False)]
    for skill in report.values():
        for requirement in skill["requires"]:
            assert requirement["description"], requirement
    # Each keeps the hub it was handed and reads through secrets_for: least privilege holds for them too.
    create(client, token, "GITHUB_TOKEN", "ghp-example-1")
    create(client, token, "OPENAI_API_KEY", "sk-example-1")
    secrets = hub_of(app).secrets_for("github_issues")
    assert secrets["GITHUB_TOKEN"] == "ghp-example-1"
    with pytest.raises(PermissionError):
        secrets["OPENAI_API_KEY"]


# --------------------------------------------------------------------------- failures: recorded, skipped, never fatal

STARTUP_LOG = """
    @hookimpl
    def secrets_hub_startup(hub):
        with open(os.environ["PLUGIN_LOG"], "a") as log:
            log.write(__name__.rsplit(".", 1)[-1] + " started\\n")
"""

FAILURES = {
    "raises_on_import": ('raise RuntimeError("import exploded 7f3a")\n', ["import exploded 7f3a"]),
    "hook_raises": ("""
        @hookimpl
        def secrets_hub_required_secrets():
            raise ValueError("hook exploded 91c2")
    """, ["hook exploded 91c2"]),
    "returns_a_string": ("""
        @hookimpl
        def secrets_hub_required_secrets():
            return "BROKEN_TOKEN"
    """, ["list"]),
    "returns_none": ("""
        @hookimpl
        def secrets_hub_required_secrets():
            return None
    """, ["list"]),
    "returns_a_dict_item": ("""
        @hookimpl
        def secrets_hub_required_secrets():
            return [{"key": "BROKEN_TOKEN"}]
    """, ["SecretRequirement"]),
    "invalid_key": ("""
        @hookimpl
        def secrets_hub_required_secrets():
            return [SecretRequirement("GOOD_ENOUGH"), SecretRequirement("lower_case")]
    """, ["lower_case"]),
    "field_of_wrong_type": ("""
        @hookimpl
        def secrets_hub_required_secrets():
            return [SecretRequirement("WRONG_FIELD", required="yes")]
    """, ["WRONG_FIELD"]),
    "script_obtain_url": ("""
        @hookimpl
        def secrets_hub_required_secrets():
            return [SecretRequirement("LINKED_TOKEN", obtain_url="javascript:alert(1)")]
    """, ["LINKED_TOKEN", "obtain_url"]),
    "misspelt_hook": ("""
        @hookimpl
        def secrets_hub_requierd_secrets():
            return [SecretRequirement("BROKEN_TOKEN")]
    """, ["secrets_hub_requierd_secrets"]),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_broken_plugin_is_recorded_with_its_reason_and_skipped(request, config, monkeypatch, tmp_path, failure):
    body, fragments = FAILURES[failure]
    log = tmp_path / "plugin.log"
    monkeypatch.setenv("PLUGIN_LOG", str(log))
    write_plugin(config, "broken", textwrap.dedent(body) + textwrap.dedent(STARTUP_LOG))
    write_plugin(config, "good", declaring('SecretRequirement("GOOD_TOKEN")', extra=STARTUP_LOG))

    app, client, token = start(request)  # the app starts

    report = skills(client, token)
    assert [skill["name"] for skill in report] == ["broken", "good"]
    broken = skill_named(report, "broken")
    assert broken["requires"] == []
    assert isinstance(broken["error"], str) and broken["error"], broken
    for fragment in fragments:
        assert fragment in broken["error"], broken["error"]
    assert skill_named(report, "good") == {"name": "good", "error": None, "requires": [
        {"key": "GOOD_TOKEN", "description": "", "required": True, "obtainUrl": None, "set": False}]}
    # Skipped: none of its hooks run, and it reads nothing.
    assert log.read_text().splitlines() == ["good started"]
    with pytest.raises(PermissionError, match="broken"):
        hub_of(app).secrets_for("broken")
    create(client, token, "GOOD_TOKEN", "good-value-1")
    assert hub_of(app).secrets_for("good")["GOOD_TOKEN"] == "good-value-1"


def test_a_hook_implementation_with_an_argument_not_in_the_spec_is_recorded(request, config):
    write_plugin(config, "extra_arg", """
        @hookimpl
        def secrets_hub_startup(hub, extra):
            pass
    """)

    app, client, token = start(request)

    error = skill_named(skills(client, token), "extra_arg")["error"]
    assert error and "secrets_hub_startup" in error and "extra" in error, error


def test_a_plugin_that_raises_in_startup_is_reported(request, config):
    """SPEC 7: a plugin that "raises in a hook" is reported and skipped; startup is a hook like the others."""
    write_plugin(config, "bad_start", declaring('SecretRequirement("BAD_START_TOKEN")', extra="""
        @hookimpl
        def secrets_hub_startup(hub):
            raise RuntimeError("startup exploded 3b8e")
    """))
    write_plugin(config, "good", declaring('SecretRequirement("GOOD_TOKEN")'))

    app, client, token = start(request)  # the app still starts

    report = skills(client, token)
    assert skill_named(report, "good")["error"] is None
    error = skill_named(report, "bad_start")["error"]
    assert error is not None and "startup exploded 3b8e" in error, report


def test_two_plugins_with_the_same_name_are_reported(request, config, entry_points, monkeypatch, tmp_path):
    log = tmp_path / "plugin.log"
    monkeypatch.setenv("PLUGIN_LOG", str(log))
    entry_points("twin", declaring('SecretRequirement("TWIN_FROM_ENTRY_POINT")'))
    write_plugin(config, "twin", declaring('SecretRequirement("TWIN_FROM_FOLDER")', extra=STARTUP_LOG))
    write_plugin(config, "other", declaring('SecretRequirement("OTHER_TOKEN")'))

    app, client, token = start(request)

    report = skills(client, token)
    assert skill_named(report, "other")["error"] is None
    twins = [skill for skill in report if skill["name"] == "twin"]
    assert twins, report
    errors = [skill["error"] for skill in twins if skill["error"]]
    assert errors and any("twin" in error for error in errors), f"the name clash is not reported: {report}"
    # The folder's twin, loaded second, is skipped: its keys are not granted and its hooks do not run.
    assert all(r["key"] != "TWIN_FROM_FOLDER" for skill in twins for r in skill["requires"])
    assert not log.exists()


@sqlite_only
def test_the_cli_and_the_api_report_every_broken_plugin(request, config, run_cli):
    for name in ("raises_on_import", "hook_raises", "invalid_key", "misspelt_hook"):
        write_plugin(config, name, FAILURES[name][0])
    write_plugin(config, "good", declaring('SecretRequirement("GOOD_TOKEN")'))

    app, client, token = start(request)

    report = skills(client, token)
    assert [skill["name"] for skill in report] == ["good", "hook_raises", "invalid_key", "misspelt_hook",
                                                   "raises_on_import"]
    text = ok(run_cli("skills")).stdout
    lines = text.splitlines()
    for skill in report:
        if skill["name"] == "good":
            assert skill["error"] is None
            continue
        for fragment in FAILURES[skill["name"]][1]:
            assert fragment in skill["error"]
        # One line names the plugin and carries its reason (first line of it, for a multi-line one).
        reason = skill["error"].splitlines()[0]
        assert any(line.startswith(skill["name"]) and reason in line for line in lines), text
    assert json.loads(ok(run_cli("skills", "--json")).stdout) == report


# --------------------------------------------------------------------------- least privilege

READER = declaring('SecretRequirement("READ_ME", "read by the reader")',
                   'SecretRequirement("DECLARED_UNSET", required=False)')


def test_secrets_for_is_a_read_only_mapping_of_the_declared_keys(request, config):
    write_plugin(config, "reader", READER)
    app, client, token = start(request)
    create(client, token, "READ_ME", "reader-value-1")
    create(client, token, "NOT_DECLARED", "undeclared-value-1")

    secrets = hub_of(app).secrets_for("reader")

    assert isinstance(secrets, Mapping)
    assert not hasattr(secrets, "__setitem__") and not hasattr(secrets, "__delitem__")
    with pytest.raises(TypeError):
        secrets["READ_ME"] = "overwritten"  # type: ignore[index]
    assert secrets["READ_ME"] == "reader-value-1"
    with pytest.raises(PermissionError) as refused:
        secrets["NOT_DECLARED"]
    assert "reader" in str(refused.value) and "NOT_DECLARED" in str(refused.value)
    with pytest.raises(PermissionError) as refused:
        secrets.get("NOT_DECLARED")  # not a quiet None either
    assert "NOT_DECLARED" in str(refused.value)
    with pytest.raises(KeyError) as unset:
        secrets["DECLARED_UNSET"]
    assert not isinstance(unset.value, PermissionError)
    assert secrets.get("DECLARED_UNSET") is None
    assert list(secrets) == ["READ_ME"]
    assert len(secrets) == 1
    assert "undeclared-value-1" not in repr(secrets) and "reader-value-1" not in repr(secrets)
    assert value_of(client, token, "READ_ME") == "reader-value-1"  # nothing was overwritten

    with pytest.raises(PermissionError) as unknown:
        hub_of(app).secrets_for("no_such_skill")
    assert "no_such_skill" in str(unknown.value)


def test_every_skill_read_is_audited_with_channel_skill_and_the_skills_name(request, config):
    write_plugin(config, "reader", READER)
    app, client, token = start(request)
    create(client, token, "READ_ME", "reader-value-1")
    secrets = hub_of(app).secrets_for("reader")

    assert secrets["READ_ME"] == "reader-value-1"
    assert secrets["READ_ME"] == "reader-value-1"
    with pytest.raises(KeyError):
        secrets["DECLARED_UNSET"]

    assert audit_by(client, token, "reader") == [
        ("reader", "skill", "read", "READ_ME", "ok"),
        ("reader", "skill", "read", "READ_ME", "ok"),
        ("reader", "skill", "read", "DECLARED_UNSET", "not_found"),
    ]


def test_the_mapping_follows_the_store(request, config):
    write_plugin(config, "reader", READER)
    app, client, token = start(request)
    secrets = hub_of(app).secrets_for("reader")
    assert list(secrets) == []

    create(client, token, "READ_ME", "first-1")
    create(client, token, "DECLARED_UNSET", "now-set-1")
    assert sorted(secrets) == ["DECLARED_UNSET", "READ_ME"]
    assert client.put("/api/secrets/READ_ME", json={"value": "second-2"}, headers=bearer(token)).status_code == 200
    assert secrets["READ_ME"] == "second-2"


# --------------------------------------------------------------------------- references

PROMPTER = declaring('SecretRequirement("A_KEY")', 'SecretRequirement("B_KEY")',
                     'SecretRequirement("UNSET_DECLARED", required=False)')


@pytest.fixture
def prompter(request, config) -> tuple[Any, Any, str]:
    write_plugin(config, "prompter", PROMPTER)
    app, client, token = start(request)
    create(client, token, "A_KEY", "alpha")
    create(client, token, "B_KEY", "beta")
    create(client, token, "OUTSIDE_KEY", "outside")
    create(client, token, "TRICKY", "{{ secrets.OUTSIDE_KEY }}")
    return app, client, token


def test_references_are_replaced_with_any_spacing_repeated_and_several(prompter):
    app, client, token = prompter
    hub = hub_of(app)
    text = "a={{ secrets.A_KEY }}, b={{secrets.B_KEY}}, again={{   secrets.A_KEY\t}}, nl={{\nsecrets.B_KEY\n}}."
    assert hub.resolve_references(text) == "a=alpha, b=beta, again=alpha, nl=beta."
    assert hub.resolve_references(text, skill="prompter") == "a=alpha, b=beta, again=alpha, nl=beta."
    assert hub.resolve_references("no references at all { secrets.A_KEY }") == "no references at all { secrets.A_KEY }"
    assert hub.resolve_references("") == ""
    # A value is not itself expanded: no second pass over what was substituted.
    assert hub.resolve_references("x {{ secrets.TRICKY }} y") == "x {{ secrets.OUTSIDE_KEY }} y"


def test_one_error_names_every_missing_key_and_nothing_is_returned(prompter):
    from secrets_hub.errors import UnresolvedReferencesError

    app, client, token = prompter
    with pytest.raises(UnresolvedReferencesError) as raised:
        hub_of(app).resolve_references("{{ secrets.MISSING_ONE }} {{ secrets.A_KEY }} {{secrets.MISSING_TWO}}")
    message = str(raised.value)
    assert "MISSING_ONE" in message and "MISSING_TWO" in message
    assert "alpha" not in message


def test_with_a_skill_undeclared_and_unset_keys_are_refused_together(prompter):
    from secrets_hub.errors import UnresolvedReferencesError

    app, client, token = prompter
    text = "{{ secrets.A_KEY }} {{ secrets.OUTSIDE_KEY }} {{ secrets.UNSET_DECLARED }} {{ secrets.NOWHERE }}"
    with pytest.raises(UnresolvedReferencesError) as raised:
        hub_of(app).resolve_references(text, skill="prompter")
    message = str(raised.value)
    for key in ("OUTSIDE_KEY", "UNSET_DECLARED", "NOWHERE"):
        assert key in message, message
    assert "outside" not in message and "alpha" not in message
    # Without a skill the same keys that exist resolve: the refusal came from the declaration.
    assert hub_of(app).resolve_references("{{ secrets.OUTSIDE_KEY }}") == "outside"
    with pytest.raises(PermissionError, match="no_such_skill"):
        hub_of(app).resolve_references("{{ secrets.A_KEY }}", skill="no_such_skill")


def test_references_resolved_for_a_skill_are_audited_as_that_skill(prompter):
    app, client, token = prompter
    assert hub_of(app).resolve_references("{{ secrets.B_KEY }}", skill="prompter") == "beta"
    assert audit_by(client, token, "prompter") == [("prompter", "skill", "read", "B_KEY", "ok")]


# --------------------------------------------------------------------------- the hub outside the app


def test_open_hub_builds_a_working_hub_from_settings(request, config, monkeypatch):
    from secrets_hub import open_hub
    from secrets_hub.db import db
    from secrets_hub.hub import Hub

    write_plugin(config, "reader", READER)
    app, client, token = start(request)
    create(client, token, "READ_ME", "from-open-hub-1")

    hubs = []
    try:
        hubs.append(open_hub(config))
        for key, value in config.items():  # and from the environment alone, as the CLI reads it
            monkeypatch.setenv(key, str(value))
        hubs.append(open_hub())
        for hub in hubs:
            assert isinstance(hub, Hub)
            assert hub.app is not app
            assert hub.secrets_for("reader")["READ_ME"] == "from-open-hub-1"
            assert hub.resolve_references("t={{ secrets.READ_ME }}", skill="reader") == "t=from-open-hub-1"
            with pytest.raises(PermissionError):
                hub.secrets_for("reader")["NOT_DECLARED"]
    finally:
        for hub in hubs:
            with hub.app.app_context():
                db.session.remove()
                db.engine.dispose()


_FORKED_HUB: Any = None  # what a fork-based pool's workers inherit


def _resolved_in_a_worker(text: str) -> str:
    return _FORKED_HUB.resolve_references(text)


def test_postgres_a_fork_based_pool_reads_through_the_hub_while_its_parent_does(request, config, backend):
    """Workers forked while threads of the parent read through the hub use connections of their own: sharing
    the parent's garbled both sides (a prepared statement that "already exists", a row without its header)."""
    if backend != "postgresql":
        pytest.skip("SQLite cannot be carried across a fork while another thread uses it (see the README)")
    import multiprocessing
    import threading

    global _FORKED_HUB
    app, client, token = start(request)
    create(client, token, "FORKED", "forked-value")
    _FORKED_HUB = hub_of(app)
    stop, failed = threading.Event(), []

    def reading() -> None:
        while not stop.is_set():
            if _FORKED_HUB.resolve_references("{{ secrets.FORKED }}") != "forked-value":
                failed.append("parent")

    readers = [threading.Thread(target=reading) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        with multiprocessing.get_context("fork").Pool(4) as pool:
            resolved = pool.map(_resolved_in_a_worker, ["{{ secrets.FORKED }}"] * 40)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
        _FORKED_HUB = None
    assert (resolved, failed) == (["forked-value"] * 40, [])
    assert hub_of(app).resolve_references("{{ secrets.FORKED }}") == "forked-value"


# --------------------------------------------------------------------------- hooks: startup and secret_changed


def test_startup_is_called_once_per_app_with_the_hub(request, config):
    from secrets_hub.hub import Hub

    write_plugin(config, "starter", """
        CALLS = []

        @hookimpl
        def secrets_hub_startup(hub):
            CALLS.append(hub)
    """)
    app, client, token = start(request)

    calls = plugin_module(app, "starter").CALLS
    assert len(calls) == 1
    assert isinstance(calls[0], Hub)
    assert calls[0] is hub_of(app) and calls[0].app is app


WATCHER = """
    CALLS = []
    _hub = None

    @hookimpl
    def secrets_hub_required_secrets():
        return [SecretRequirement("W_KEY")]

    @hookimpl
    def secrets_hub_startup(hub):
        global _hub
        _hub = hub

    @hookimpl
    def secrets_hub_secret_changed(key, action):
        # Called after the change is stored: the plugin already sees it (or no longer does).
        visible = key == "W_KEY" and _hub.secrets_for("watcher").get(key) is not None
        CALLS.append((key, action, visible))
"""

ACTION_ONLY = """
    CALLS = []

    @hookimpl
    def secrets_hub_secret_changed(action):  # fewer arguments than the spec
        CALLS.append(action)
"""


def test_secret_changed_fires_after_every_rest_write_never_with_the_value(request, config):
    write_plugin(config, "watcher", WATCHER)
    write_plugin(config, "action_only", ACTION_ONLY)
    app, client, token = start(request)
    headers = bearer(token)

    create(client, token, "W_KEY", "watched-value-one")
    assert client.post("/api/secrets", json={"key": "W_KEY", "value": "dup-value"}, headers=headers).status_code == 409
    assert client.put("/api/secrets/W_KEY", json={"value": "watched-value-two"}, headers=headers).status_code == 200
    assert client.put("/api/secrets/W_KEY", json={"description": "only the description"},
                      headers=headers).status_code == 200
    assert client.post("/api/secrets/W_KEY/restore", json={"version": 1}, headers=headers).status_code == 200
    assert client.delete("/api/secrets/W_KEY", headers=headers).status_code == 200
    assert client.delete("/api/secrets/W_KEY", headers=headers).status_code == 404
    assert client.put("/api/secrets/NO_SUCH", json={"value": "x"}, headers=headers).status_code == 404

    calls = plugin_module(app, "watcher").CALLS
    assert calls == [
        ("W_KEY", "created", True),
        ("W_KEY", "updated", True),
        ("W_KEY", "updated", True),
        ("W_KEY", "restored", True),
        ("W_KEY", "deleted", False),
    ]
    values = {"watched-value-one", "watched-value-two", "dup-value"}
    assert not any(arg in values for call in calls for arg in call)
    assert plugin_module(app, "action_only").CALLS == ["created", "updated", "updated", "restored", "deleted"]


def test_a_plugin_raising_in_secret_changed_does_not_break_the_write(request, config):
    write_plugin(config, "angry", """
        @hookimpl
        def secrets_hub_secret_changed(key, action):
            raise RuntimeError("listener exploded")
    """)
    write_plugin(config, "calm", """
        CALLS = []

        @hookimpl
        def secrets_hub_secret_changed(key, action):
            CALLS.append((key, action))
    """)
    app, client, token = start(request)
    headers = bearer(token)

    create(client, token, "LOUD_KEY", "loud-value-1")
    assert value_of(client, token, "LOUD_KEY") == "loud-value-1"
    response = client.put("/api/secrets/LOUD_KEY", json={"value": "loud-value-2"}, headers=headers)
    assert response.status_code == 200
    assert value_of(client, token, "LOUD_KEY") == "loud-value-2"
    assert client.post("/api/secrets/LOUD_KEY/restore", json={"version": 1}, headers=headers).status_code == 200
    assert value_of(client, token, "LOUD_KEY") == "loud-value-1"
    assert client.delete("/api/secrets/LOUD_KEY", headers=headers).status_code == 200
    assert value_of(client, token, "LOUD_KEY") is None
    # One failing plugin does not keep the others from being told.
    assert plugin_module(app, "calm").CALLS == [
        ("LOUD_KEY", "created"), ("LOUD_KEY", "updated"), ("LOUD_KEY", "restored"), ("LOUD_KEY", "deleted")]


CLI_LOGGER = """
    def _log(line):
        with open(os.environ["CHANGE_LOG"], "a") as log:
            log.write(line + "\\n")

    @hookimpl
    def secrets_hub_startup(hub):
        _log("startup")

    @hookimpl
    def secrets_hub_secret_changed(key, action):
        _log(f"{key} {action}")
"""


@sqlite_only
def test_secret_changed_fires_from_the_cli_and_startup_once_per_command(config, run_cli, tmp_path):
    bootstrap.initialize(config)
    write_plugin(config, "logger", CLI_LOGGER)
    write_plugin(config, "angry", """
        @hookimpl
        def secrets_hub_secret_changed(key, action):
            raise RuntimeError("listener exploded")
    """)
    log = tmp_path / "changes.log"
    env = {"CHANGE_LOG": str(log)}

    def succeeds(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        # The failing listener is logged (with its traceback) on stderr; the command itself succeeds.
        result = run_cli(*args, input=input, env=env)
        assert result.returncode == 0, result.stderr
        return result

    assert "Created CLI_KEY" in succeeds("set", "CLI_KEY", input="cli-value-1\n").stderr
    succeeds("set", "CLI_KEY", input="cli-value-2\n")
    assert succeeds("get", "CLI_KEY").stdout == "cli-value-2\n"  # the write went through
    succeeds("delete", "CLI_KEY")

    assert log.read_text().splitlines() == [
        "startup", "CLI_KEY created",
        "startup", "CLI_KEY updated",
        "startup",
        "startup", "CLI_KEY deleted",
    ]
    assert "cli-value" not in log.read_text()


# --------------------------------------------------------------------------- the skills report


@pytest.fixture
def report_plugins(config) -> None:
    write_plugin(config, "zeta", declaring(
        'SecretRequirement("Z_TOKEN", "Token for zeta", obtain_url="https://zeta.example/keys")',
        'SecretRequirement("Z_OPTIONAL", "Optional zeta setting", required=False)'))
    write_plugin(config, "alpha", declaring('SecretRequirement("A_TOKEN", "Token for alpha")'))
    write_plugin(config, "middle", FAILURES["raises_on_import"][0])
    write_plugin(config, "nothing_needed", """
        @hookimpl
        def secrets_hub_startup(hub):
            pass
    """)


def expected_report(a_set: bool, z_set: bool, middle_error: str) -> list[dict[str, Any]]:
    return [
        {"name": "alpha", "error": None, "requires": [
            {"key": "A_TOKEN", "description": "Token for alpha", "required": True, "obtainUrl": None,
             "set": a_set}]},
        {"name": "middle", "error": middle_error, "requires": []},
        {"name": "nothing_needed", "error": None, "requires": []},
        {"name": "zeta", "error": None, "requires": [
            {"key": "Z_TOKEN", "description": "Token for zeta", "required": True,
             "obtainUrl": "https://zeta.example/keys", "set": z_set},
            {"key": "Z_OPTIONAL", "description": "Optional zeta setting", "required": False, "obtainUrl": None,
             "set": False}]},
    ]


def test_api_skills_has_the_exact_shape_sorted_and_set_follows_the_store(request, config, report_plugins):
    app, client, token = start(request)

    report = skills(client, token)
    middle_error = skill_named(report, "middle")["error"]
    assert isinstance(middle_error, str) and "import exploded 7f3a" in middle_error
    assert report == expected_report(False, False, middle_error)
    for skill in report:
        assert set(skill) == {"name", "error", "requires"}
        for requirement in skill["requires"]:
            assert set(requirement) == REQUIREMENT_FIELDS

    create(client, token, "Z_TOKEN", "zeta-value-1")
    assert skills(client, token) == expected_report(False, True, middle_error)
    assert client.delete("/api/secrets/Z_TOKEN", headers=bearer(token)).status_code == 200
    create(client, token, "A_TOKEN", "alpha-value-1")
    assert skills(client, token) == expected_report(True, False, middle_error)

    # Any reader may look; no one without a token, nor a token without secrets:read.
    make = request.getfixturevalue("make_token")
    assert skills(client, make("secrets:read")) == expected_report(True, False, middle_error)
    assert client.get("/api/skills").status_code == 401
    refused = client.get("/api/skills", headers=bearer(make("secrets:write")))
    assert refused.status_code == 403


@sqlite_only
def test_cli_skills_lists_each_plugin_its_keys_and_broken_ones(request, config, report_plugins, run_cli):
    app, client, token = start(request)
    middle_error = skill_named(skills(client, token), "middle")["error"]

    def line_for(text: str, key: str) -> str:
        """The one line describing requirement `key` (the one that says required or optional)."""
        found = [line for line in text.splitlines()
                 if re.search(rf"\b{key}\b", line) and re.search(r"\b(required|optional)\b", line)]
        assert len(found) == 1, f"expected one line for {key}:\n{text}"
        return found[0]

    text = ok(run_cli("skills")).stdout
    lines = text.splitlines()
    for name in ("alpha", "middle", "nothing_needed", "zeta"):
        assert any(line.startswith(name) for line in lines), text
    z_token = line_for(text, "Z_TOKEN")
    assert re.search(r"\brequired\b", z_token) and re.search(r"\bmissing\b", z_token), z_token
    assert "https://zeta.example/keys" in z_token  # where to get it, beside the missing key
    z_optional = line_for(text, "Z_OPTIONAL")
    assert re.search(r"\boptional\b", z_optional) and re.search(r"\bmissing\b", z_optional), z_optional
    a_token = line_for(text, "A_TOKEN")
    assert re.search(r"\brequired\b", a_token) and re.search(r"\bmissing\b", a_token), a_token
    assert any(line.startswith("middle") and middle_error in line for line in lines), text

    ok(run_cli("set", "Z_TOKEN", input="zeta-value-1"))
    text = ok(run_cli("skills")).stdout
    z_token = line_for(text, "Z_TOKEN")
    assert re.search(r"\bset\b", z_token) and not re.search(r"\bmissing\b", z_token), z_token
    assert "zeta-value-1" not in text
    assert re.search(r"\bmissing\b", line_for(text, "A_TOKEN"))

    as_json = json.loads(ok(run_cli("skills", "--json")).stdout)
    assert as_json == expected_report(False, True, middle_error)
    assert as_json == skills(client, token)


@sqlite_only
def test_cli_skills_reports_an_entry_point_plugin_and_a_name_clash(config, run_cli, entry_points):
    bootstrap.initialize(config)
    entry_points("ep_only", declaring('SecretRequirement("EP_ONLY_TOKEN")'))
    entry_points("twin", declaring('SecretRequirement("TWIN_FROM_ENTRY_POINT")'))
    write_plugin(config, "twin", declaring('SecretRequirement("TWIN_FROM_FOLDER")'))
    env = {"PYTHONPATH": entry_points.site}

    text = ok(run_cli("skills", env=env)).stdout
    assert re.search(r"\bEP_ONLY_TOKEN\b.*\brequired\b.*\bmissing\b", text), text
    report = json.loads(ok(run_cli("skills", "--json", env=env)).stdout)
    assert skill_named(report, "ep_only")["error"] is None
    twins = [skill for skill in report if skill["name"] == "twin"]
    assert any(skill["error"] and "twin" in skill["error"] for skill in twins), report
    assert all(r["key"] != "TWIN_FROM_FOLDER" for skill in twins for r in skill["requires"])


def test_skills_report_hides_keys_outside_the_callers_globs(request, config):
    write_plugin(config, "globbed", declaring('SecretRequirement("INSIDE_TOKEN")', 'SecretRequirement("OUTSIDE_TOKEN")'))
    app, client, token = start(request)
    for key in ("INSIDE_TOKEN", "OUTSIDE_TOKEN"):
        assert client.post("/api/secrets", json={"key": key, "value": "v"}, headers=bearer(token)).status_code == 200
    narrow = request.getfixturevalue("make_token")("secrets:read", allow=["INSIDE_*"])
    requires = skill_named(skills(client, narrow), "globbed")["requires"]
    assert {r["key"]: r["set"] for r in requires} == {"INSIDE_TOKEN": True, "OUTSIDE_TOKEN": False}


def test_membership_in_a_skills_secrets_reads_no_value(request, config):
    write_plugin(config, "member", declaring('SecretRequirement("MEMBER_TOKEN")', 'SecretRequirement("UNSET_TOKEN")'))
    app, client, token = start(request)
    assert client.post("/api/secrets", json={"key": "MEMBER_TOKEN", "value": "v"}, headers=bearer(token)).status_code == 200
    secrets = hub_of(app).secrets_for("member")
    assert "MEMBER_TOKEN" in secrets and "UNSET_TOKEN" not in secrets and "OTHER_TOKEN" not in secrets
    events = client.get("/api/audit?actor=member", headers=bearer(token)).get_json()["data"]
    assert [e for e in events if e["action"] == "read"] == []
