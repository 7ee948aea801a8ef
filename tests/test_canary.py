"""Canary values (hardening issue): a value stays where it was put, and is shown only when explicitly asked for.

Distinctive canary values are set through every channel (REST, the settings UI in Chromium, `secrets-hub set`,
`import-env`, `backup`/`restore`) and read through the read-only ones (MCP over stdio, a skill plugin through
the hub). Errors are provoked with canaries in the request. Then everything a person, a log collector or an
attacker with the database could see is swept for them: the live server's output, every CLI's stderr, the
MCP server's stderr, Python logging (caplog), every audit row (all columns), every error message, every list
response, every settings tab with the API data it loaded, the OpenAPI document, and the database at rest.
Tokens (the raw `shub_...`) and the master secret are held to the same rule, the backup file included.

Each sweep is checked to see what it claims: an explicit read (REST, Reveal in the UI, MCP `get_secret`, the
skill's mapping, `get` after restore, the decrypted backup) does return the canary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import MetaData, create_engine, select

from conftest import CHROMIUM, MASTER_KEY, bearer, cli_env
from secrets_hub.backup import read_backup
from secrets_hub.errors import UnresolvedReferencesError

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
expect = sync_api.expect
if not os.path.exists(CHROMIUM):
    pytest.skip(f"the canary test drives Debian's Chromium at {CHROMIUM}", allow_module_level=True)

MARK = uuid.uuid4().hex  # in every canary value, and nowhere else in the world
VALUES = {
    "CANARY_REST": f"rest-{MARK}-1",
    "CANARY_UI": f"ui-{MARK}",
    "CANARY_CLI": f"cli-{MARK}",
    "CANARY_ENV": f'env-{MARK} with "quotes" and \\ backslash',
}
BEFORE_UI = ("CANARY_REST", "CANARY_CLI", "CANARY_ENV")  # what MCP reads, while the browser adds CANARY_UI
REST_SECOND = f"rest-{MARK}-2"  # CANARY_REST's second version: the first stays in its history
EMAIL, PASSWORD = "canary-admin@example.com", "correct horse battery staple"
SKILL = "canary_skill"
PLUGIN = f"""
from secrets_hub import SecretRequirement, hookimpl

@hookimpl
def secrets_hub_required_secrets():
    return [{", ".join(f'SecretRequirement("{key}", "canary via {key.lower()}")' for key in VALUES)},
            SecretRequirement("CANARY_MISSING", required=False, obtain_url="https://example.com/get")]
"""
TABS = ("account", "secrets", "tokens", "skills", "audit", "app")
TAB_SHOWS = {  # what each tab shows once its API data has arrived and been drawn
    "secrets": 'tr[data-key="CANARY_UI"]',
    "tokens": 'tr[data-name="canary-ui-token"]',
    "skills": f'article[data-skill="{SKILL}"] tr[data-key="CANARY_UI"]',
    "audit": ':is(tr, li):visible:has-text("canary-ui-token")',
}
TIMEOUT_MS = 15_000


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    """The canary skill is in the plugins folder before any app or server starts."""
    folder = Path(config["SECRETS_HUB_PLUGINS_DIR"])
    folder.mkdir(exist_ok=True)
    (folder / f"{SKILL}.py").write_text(PLUGIN)
    return config


class Sweep:
    """Everything that must hold no canary, no raw token and no master secret, with where it came from."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {"master secret": MASTER_KEY}
        self.places: list[tuple[str, str]] = []

    def token(self, name: str, raw: str) -> str:
        assert re.fullmatch(r"shub_\S{32,}", raw), raw
        self.secrets[f"token {name}"] = raw
        return raw

    def add(self, where: str, text: Any) -> None:
        self.places.append((where, text if isinstance(text, str) else json.dumps(text, default=str)))

    def leaks(self, *, allow_canary_in: tuple[str, ...] = ()) -> list[str]:
        found = []
        for where, text in self.places:
            if MARK in text and where not in allow_canary_in:
                found.append(f"a canary value in {where}: ...{excerpt(text, MARK)}...")
            for name, secret in self.secrets.items():
                if secret in text:
                    found.append(f"the {name} in {where}: ...{excerpt(text, secret)}...")
        return found


def excerpt(text: str, needle: str) -> str:
    at = text.index(needle)
    return text[max(0, at - 80):at + len(needle) + 40]


def every_row(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of a database, read directly."""
    engine = create_engine(url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            return {name: [dict(row) for row in connection.execute(select(table)).mappings()]
                    for name, table in metadata.tables.items()}
    finally:
        engine.dispose()


def gzip_members(data: bytes) -> list[bytes]:
    """Whatever gzip streams a file holds anywhere in it, decompressed: 'not in clear' must survive gunzip."""
    found = []
    for at in [m.start() for m in re.finditer(b"\x1f\x8b", data)]:
        try:
            found.append(zlib.decompressobj(wbits=31).decompress(data[at:], 50_000_000))
        except zlib.error:
            pass
    return found


class Background:
    """asyncio.run in a thread of its own, started now: Playwright's sync API keeps an event loop running in the
    test's thread, and the MCP session may as well run while the browser works."""

    def __init__(self, coroutine_factory: Callable[[], Any]) -> None:
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(coroutine_factory,), daemon=True)
        self._thread.start()

    def _run(self, coroutine_factory: Callable[[], Any]) -> None:
        try:
            self._outcome["result"] = asyncio.run(coroutine_factory())
        except BaseException as error:  # noqa: BLE001 - re-raised by result(), in the test's thread
            self._outcome["error"] = error

    def join(self) -> None:
        self._thread.join(120)

    def result(self) -> Any:
        self.join()
        assert not self._thread.is_alive(), "the MCP session did not finish within two minutes"
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]


async def mcp_session_calls(config: dict[str, Any], cwd: Path, token: str, errlog_path: Path,
                            ready: threading.Event) -> dict[str, Any]:
    """An agent's session over stdio: started at once (the server takes seconds to start), calls once `ready`."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "secrets_hub", "mcp"],
                                   env={**cli_env(config), "SECRETS_HUB_TOKEN": token}, cwd=str(cwd))
    with open(errlog_path, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                assert await asyncio.to_thread(ready.wait, 120), "the canaries were not set within two minutes"
                listing = await session.call_tool("list_secrets", {})
                values = {key: await session.call_tool("get_secret", {"key": key}) for key in BEFORE_UI}
                unknown = await session.call_tool("get_secret", {"key": "CANARY_NOPE"})
                bad = await session.call_tool("get_secret", {"key": "lower_case"})
    return {"list": listing, "values": values, "errors": [unknown, bad]}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the browser and the channels, not the storage
def test_canaries_tokens_and_the_master_secret_never_leak(request, config, tmp_path, browser, caplog, run_cli,
                                                           cli_in_process):
    caplog.set_level(logging.DEBUG, logger="secrets_hub")
    sweep = Sweep()
    app = request.getfixturevalue("app")
    base = request.getfixturevalue("live_server")
    make_token = request.getfixturevalue("make_token")
    admin = bearer(sweep.token("admin", make_token("secrets:read", "secrets:write", "admin", name="canary-admin")))
    mcp_token = sweep.token("mcp", make_token("mcp", name="canary-agent"))

    def api(method: str, path: str, **kwargs: Any) -> requests.Response:
        response = requests.request(method, base + path, headers={**admin, **kwargs.pop("headers", {})}, timeout=60,
                                    **kwargs)
        sweep.add(f"{method} {path} -> {response.status_code}" if response.status_code >= 400 else
                  f"{method} {path}", response.text)
        return response

    # ---- MCP (read-only), in the background: list, read, two refusals, once the canaries are set; stderr kept.
    errlog, mcp_ready = tmp_path / "mcp-stderr.log", threading.Event()
    mcp = Background(lambda: mcp_session_calls(config, tmp_path, mcp_token, errlog, mcp_ready))
    request.addfinalizer(lambda: (mcp_ready.set(), mcp.join()))  # should the test stop early: end the session

    # ---- REST: two versions of one secret, a token, and refusals with canaries in the request.
    assert api("POST", "/api/secrets", json={"key": "CANARY_REST", "value": VALUES["CANARY_REST"],
                                             "description": "set over REST"}).status_code == 200
    assert api("PUT", "/api/secrets/CANARY_REST", json={"value": REST_SECOND}).status_code == 200
    created = api("POST", "/api/tokens", json={"name": "canary-rest-token", "scopes": ["secrets:read"]})
    assert created.status_code == 200
    sweep.places.pop()  # the one response that shows a new token
    sweep.token("rest", created.json()["data"]["token"])
    refusals = [
        ("POST", "/api/secrets", {"key": "CANARY_REST", "value": VALUES["CANARY_REST"]}, {}, 409),
        ("PUT", "/api/secrets/CANARY_REST", {"value": f"stale-{MARK}"}, {"If-Match": "1"}, 409),
        ("POST", "/api/secrets", {"key": "not-a-key", "value": f"badkey-{MARK}"}, {}, 400),
        ("POST", "/api/secrets", {"key": "TOO_BIG", "value": f"big-{MARK}" * 3000}, {}, 413),
        ("POST", "/api/secrets", {"key": "ODD_DESC", "value": "v", "description": [f"desc-{MARK}"]}, {}, 400),
        ("PUT", "/api/secrets/CANARY_REST", {"value": {"nested": f"nested-{MARK}"}}, {}, 400),
        ("PUT", "/api/secrets/MISSING_KEY", {"value": f"missing-{MARK}"}, {}, 404),
        ("POST", "/api/secrets/CANARY_REST/restore", {"version": 99}, {}, 404),
    ]
    for method, path, body, headers, status in refusals:
        assert api(method, path, json=body, headers=headers).status_code == status, (method, path, body)
    assert api("POST", "/api/secrets", data=f"key=FORM&value=form-{MARK}",
               headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    read = api("GET", "/api/secrets/CANARY_REST?version=1")
    assert read.json()["data"] == {"key": "CANARY_REST", "value": VALUES["CANARY_REST"]}  # an explicit read
    sweep.places.pop()

    # ---- CLI: `set` (value on stdin), a refused `set`, a new token; then what scripts list.
    done = run_cli("set", "CANARY_CLI", "--description", "set by the CLI", input=VALUES["CANARY_CLI"] + "\n")
    assert done.returncode == 0, done.stderr
    sweep.add("`set` stdout+stderr", done.stdout + done.stderr)
    refused = cli_in_process("set", "not-a-key", input=f"refused-{MARK}\n")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    sweep.add("refused `set` stdout+stderr", refused.stdout + refused.stderr)
    minted = cli_in_process("token", "create", "--name", "canary-cli-token", "--scope", "secrets:read")
    assert minted.returncode == 0, minted.stderr
    sweep.token("cli", minted.stdout.strip())
    sweep.add("`token create` stderr", minted.stderr)

    # ---- import-env: a good line, lines it must refuse without echoing them.
    env_file = tmp_path / "canary.env"
    escaped = VALUES["CANARY_ENV"].replace("\\", "\\\\").replace('"', '\\"')
    env_file.write_text(f'CANARY_ENV="{escaped}"\nlower-case=lower-{MARK}\nTOO_BIG_ENV="{("big-" + MARK) * 3000}"\n'
                        f"BROKEN='unterminated-{MARK}\n")
    imported = cli_in_process("import-env", str(env_file))
    assert imported.returncode == 1, imported.stderr  # some lines were refused
    assert "Imported: 1 created" in imported.stderr
    sweep.add("`import-env` stdout+stderr", imported.stdout + imported.stderr)

    mcp_ready.set()

    # ---- UI: first account through /setup, a secret through the Add dialog, a token through the Tokens tab.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page_api: list[tuple[str, str]] = []

    def on_response(response) -> None:
        if "/api/" in response.url and response.request.method == "GET":
            try:
                page_api.append((response.url, response.text()))
            except Exception as error:  # noqa: BLE001 - a body dropped by a navigation; checked for below
                page_api.append((response.url, f"<unread: {error}>"))

    page.on("response", on_response)
    try:
        page.goto(base + "/setup")
        page.locator("input[name=email]").fill(EMAIL)
        page.locator("input[name=password]").fill(PASSWORD)
        page.locator("input[name=confirm]").fill(PASSWORD)
        page.get_by_role("button", name="Create account", exact=True).click()
        expect(page).to_have_url(re.compile(re.escape(base) + r"/settings(\?.*)?$"))

        page.goto(base + "/settings?tab=secrets")
        page.get_by_role("button", name="Add secret", exact=True).click()
        dialog = page.locator("dialog[open]")
        dialog.locator("input[name=key]").fill("CANARY_UI")
        dialog.locator("[name=value]").fill(VALUES["CANARY_UI"])
        dialog.locator("[name=description]").fill("set in the browser")
        dialog.get_by_role("button", name="Save", exact=True).click()
        expect(page.locator("dialog[open]")).to_have_count(0)
        expect(page.locator('tr[data-key="CANARY_UI"]')).to_be_visible()
        sweep.add("the settings page after Add (DOM)", page.content())
        sweep.add("the settings page after Add (every input's value)",
                  page.evaluate("[...document.querySelectorAll('input, textarea')].map(e => e.value).join(' ')"))

        page.goto(base + "/settings?tab=tokens")
        page.locator("input[name=name]:visible").fill("canary-ui-token")
        page.locator('input[name=scopes][value="secrets:read"]').check()
        page.get_by_role("button", name="Create token", exact=True).click()
        shown = page.locator("input[name=token]")
        expect(shown).to_have_value(re.compile(r"^shub_"))
        sweep.token("ui", shown.input_value())
        page_api.clear()  # the token was shown once, as promised; from here on nothing may show it

        # Every tab, fresh, with every API answer it loaded.
        for tab in TABS:
            page.goto(f"{base}/settings?tab={tab}")
            if tab in TAB_SHOWS:
                expect(page.locator(TAB_SHOWS[tab]).first).to_be_visible()
            sweep.add(f"/settings?tab={tab} (DOM)", page.content())
        for path in ("/login", "/setup", "/", "/nope"):
            page.goto(base + path)
            sweep.add(f"{path} (DOM)", page.content())
        for url, text in page_api:
            sweep.add(f"the settings page's GET {url}", text)
        read_paths = {urlsplit(url).path for url, text in page_api if not text.startswith("<unread")}
        assert {"/api/secrets", "/api/tokens", "/api/skills", "/api/audit"} <= read_paths, page_api

        # Reveal does show it: the sweep above could have seen a value.
        page.goto(base + "/settings?tab=secrets")
        row = page.locator('tr[data-key="CANARY_UI"]')
        row.get_by_role("button", name="Reveal", exact=True).click()
        expect(row).to_contain_text(VALUES["CANARY_UI"])
        assert VALUES["CANARY_REST"] not in page.content() and REST_SECOND not in page.content()
    finally:
        context.close()

    calls = mcp.result()
    assert not calls["list"].is_error
    sweep.add("MCP list_secrets", calls["list"].model_dump())
    for key, result in calls["values"].items():
        assert result.structured_content == {"key": key, "value": REST_SECOND if key == "CANARY_REST" else VALUES[key]}
    for result in calls["errors"]:
        assert result.is_error
        sweep.add("an MCP tool error", result.model_dump())

    # ---- The skill reads its declared keys through the hub; refusals name keys, never values.
    hub = app.extensions["secrets_hub.hub"]
    skill = hub.secrets_for(SKILL)
    assert {key: skill[key] for key in VALUES} == {**VALUES, "CANARY_REST": REST_SECOND}
    assert hub.resolve_references("v={{ secrets.CANARY_CLI }}", skill=SKILL) == "v=" + VALUES["CANARY_CLI"]
    sweep.add("repr of the skill's mapping", repr(skill))
    for attempt, error in ((lambda: skill["NOT_DECLARED"], PermissionError),
                           (lambda: hub.resolve_references("{{ secrets.CANARY_UI }} {{ secrets.CANARY_MISSING }}",
                                                           skill=SKILL), UnresolvedReferencesError),
                           (lambda: hub.resolve_references("{{ secrets.CANARY_UI }} {{ secrets.UNDECLARED }}",
                                                           skill=SKILL), UnresolvedReferencesError)):
        with pytest.raises(error) as refusal:
            attempt()
        sweep.add(f"a hub refusal ({type(refusal.value).__name__})", str(refusal.value))

    # ---- backup, then restore into a second, empty instance with the same master secret.
    backup_file = tmp_path / "canary.backup"
    backed = cli_in_process("backup", str(backup_file))
    assert backed.returncode == 0, backed.stderr
    sweep.add("`backup` stdout+stderr", backed.stdout + backed.stderr)
    data = backup_file.read_bytes()
    sweep.add("the backup file (bytes)", data.decode("latin-1"))
    for number, member in enumerate(gzip_members(data)):
        sweep.add(f"a gzip stream inside the backup file (#{number})", member.decode("latin-1"))
    with app.app_context():
        payload = json.dumps(read_backup(backup_file))
    assert all(value.replace("\\", "\\\\").replace('"', '\\"') in payload for value in VALUES.values())

    other = {"DATABASE_URL": request.getfixturevalue("other_database_url"),
             "SECRETS_HUB_INSTANCE_PATH": str(tmp_path / "other-instance")}
    assert cli_in_process("init", env=other).returncode == 0
    restored = cli_in_process("restore", str(backup_file), env=other)
    assert restored.returncode == 0, restored.stderr
    sweep.add("`restore` stdout+stderr", restored.stdout + restored.stderr)
    fetched = cli_in_process("get", "CANARY_ENV", env=other)
    assert fetched.stdout == VALUES["CANARY_ENV"] + "\n"  # restored, and readable only by asking

    # ---- What scripts, admins and the API list, from both instances.
    for args, env in [(("list", "--json"), {}), (("history", "CANARY_REST", "--json"), {}), (("audit", "--json"), {}),
                      (("token", "list", "--json"), {}), (("skills", "--json"), {}), (("audit", "--json"), other),
                      (("list", "--json"), other), (("token", "list", "--json"), other)]:
        result = cli_in_process(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        sweep.add(f"`{' '.join(args)}`{' (restored instance)' if env else ''}", result.stdout + result.stderr)
    keys = [row["key"] for row in api("GET", "/api/secrets").json()["data"]]
    assert keys == sorted(VALUES), keys  # every refused write left nothing behind
    for key in keys:
        api("GET", f"/api/secrets/{key}/versions")
    for path in ("/api/audit?limit=1000", "/api/tokens", "/api/skills", "/api/openapi.json", "/healthz"):
        assert api("GET", path).status_code == 200, path
    assert requests.get(base + "/api/openapi.json", timeout=60).json() == api("GET", "/api/openapi.json").json()

    # ---- Every audit row (all columns), and every row of every table: nothing in clear at rest.
    for label, url in (("", config["DATABASE_URL"]), (" (restored instance)", other["DATABASE_URL"])):
        for table, rows in every_row(url).items():
            sweep.add(f"the {table} table{label}", rows)

    # ---- Every log: the live server's output, the MCP server's stderr, Python logging in this process.
    sweep.add("the live server's stdout/stderr", (tmp_path / "server.log").read_text())
    sweep.add("the MCP server's stderr", errlog.read_text())
    sweep.add("Python logging (caplog)", "\n".join(
        f"{record.name} {record.levelname} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records))

    assert sweep.leaks() == []
    assert len(sweep.secrets) == 6  # the master secret and five tokens were looked for
