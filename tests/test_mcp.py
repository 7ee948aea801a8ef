"""The MCP server of SPEC.md section 8 (issue 5), against real `secrets-hub mcp` processes.

Every test talks to the server with the official SDK's own client (`mcp.client.session.ClientSession`),
over stdio (the server as a child of the client) or streamable HTTP (`--transport http`, one server per
test), or with raw `requests` where the HTTP status itself is the contract (401, 403).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import httpx2
import pytest
import requests
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from sqlalchemy import update

from conftest import SECRETS_HUB, bearer, cli_env, free_port, stop_process
from secrets_hub.db import db
from secrets_hub.models import ApiToken

SECRETS = {  # key: (value, description)
    "GITHUB_APP_KEY": ("gh-app-value-7f3a", None),
    "GITHUB_TOKEN": ("ghp_value_91b2c3", "CI token"),
    "OPENAI_API_KEY": ("sk-openai-value-4d5e", "OpenAI"),
}
TOOL_NAMES = ["get_secret", "list_secrets"]
TOOL_ERROR_PREFIX = "Error executing tool get_secret: "
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "raw-test", "version": "0"}},
}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


# ---- helpers ----------------------------------------------------------------------------------------------------

@pytest.fixture
def admin(admin_token) -> dict[str, str]:
    return bearer(admin_token)


@pytest.fixture
def seeded(client, admin) -> dict[str, str]:
    """The three SECRETS, created through the REST API; the admin headers."""
    for key, (value, description) in SECRETS.items():
        body = {"key": key, "value": value, **({"description": description} if description else {})}
        response = client.post("/api/secrets", json=body, headers=admin)
        assert response.status_code == 200, response.get_json()
    return admin


@pytest.fixture
def mcp_http(app, config: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """`secrets-hub mcp --transport http` on a free loopback port, with its default workers; the /mcp URL."""
    with serving_mcp_http(config, tmp_path) as url:
        yield url


@contextmanager
def serving_mcp_http(config: dict[str, Any], tmp_path: Path, *options: str,
                     env: dict[str, str] | None = None) -> Iterator[str]:
    """`secrets-hub mcp --transport http [options]` on a free loopback port; yields the /mcp URL, stops it after."""
    port = free_port()
    log_path = tmp_path / "mcp-http.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*SECRETS_HUB, "mcp", "--transport", "http", "--host", "127.0.0.1", "--port", str(port), *options],
            env={**cli_env(config), **(env or {})}, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MCP HTTP server did not start: {log_path.read_text()}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            stop_process(process)


@asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    async with httpx2.AsyncClient(headers=bearer(token), timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                yield session


@asynccontextmanager
async def stdio_session(config: dict[str, Any], cwd: Path, token: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "secrets_hub", "mcp"],
                                   env={**cli_env(config), "SECRETS_HUB_TOKEN": token}, cwd=str(cwd))
    async with stdio_client(params) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            yield session


def session_for(transport: str, request) -> Any:
    """A factory token -> async context manager of a session, over `transport`."""
    if transport == "http":
        url = request.getfixturevalue("mcp_http")
        return lambda token: http_session(url, token)
    config, tmp_path = request.getfixturevalue("config"), request.getfixturevalue("tmp_path")
    return lambda token: stdio_session(config, tmp_path, token)


async def get_secret(session: ClientSession, key: str) -> dict[str, Any]:
    result = await session.call_tool("get_secret", {"key": key})
    assert not result.is_error, result.content
    return result.structured_content


async def tool_error(session: ClientSession, key: str) -> str:
    """The message of the tool error get_secret(key) answers with (it must be one).

    The SDK frames every deliberate tool error as `Error executing tool <name>: <message>`; the
    message after that frame is ours."""
    result = await session.call_tool("get_secret", {"key": key})
    assert result.is_error, result
    assert result.structured_content is None
    assert len(result.content) == 1
    text = result.content[0].text
    assert text.startswith(TOOL_ERROR_PREFIX), text
    return text.removeprefix(TOOL_ERROR_PREFIX)


def mcp_audit(client, admin: dict[str, str], actor: str) -> list[tuple]:
    """(channel, action, key, outcome) of the actor's audit events, oldest first."""
    response = client.get(f"/api/audit?actor={actor}&limit=1000", headers=admin)
    assert response.status_code == 200, response.get_json()
    return [(e["channel"], e["action"], e["key"], e["outcome"]) for e in reversed(response.get_json()["data"])]


def raw_post(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **(headers or {})}, timeout=10)


def revoke(client, admin: dict[str, str], name: str) -> None:
    response = client.delete(f"/api/tokens/{name}", headers=admin)
    assert response.status_code == 200, response.get_json()


def expire(app, name: str) -> None:
    with app.app_context():
        db.session.execute(update(ApiToken).where(ApiToken.name == name)
                           .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        db.session.commit()


def snapshot(client, admin: dict[str, str]) -> tuple:
    """Every secret's metadata and every version record: what any write would change."""
    listing = client.get("/api/secrets", headers=admin).get_json()["data"]
    versions = {key: client.get(f"/api/secrets/{key}/versions", headers=admin).get_json()["data"] for key in SECRETS}
    return listing, versions


# ---- tool listing -----------------------------------------------------------------------------------------------

def test_tools_are_listed_with_descriptions_schemas_and_read_only_annotations_over_both_transports(
        config, tmp_path, mcp_http, make_token):
    token = make_token("mcp", name="agent")

    async def listing(session_cm) -> list:
        async with session_cm as session:
            return (await session.list_tools()).tools

    over_stdio = asyncio.run(listing(stdio_session(config, tmp_path, token)))
    over_http = asyncio.run(listing(http_session(mcp_http, token)))

    for tools in (over_stdio, over_http):
        assert sorted(tool.name for tool in tools) == TOOL_NAMES
        by_name = {tool.name: tool for tool in tools}
        for tool in tools:
            assert tool.description and len(tool.description) > 20
            assert tool.annotations is not None
            assert tool.annotations.read_only_hint is True
            assert tool.annotations.destructive_hint is False
            assert tool.input_schema["type"] == "object"
        get_schema = by_name["get_secret"].input_schema
        assert set(get_schema["properties"]) == {"key"}
        assert get_schema["properties"]["key"]["type"] == "string"
        assert get_schema["properties"]["key"]["description"]
        assert get_schema["required"] == ["key"]
        assert "value" in by_name["get_secret"].description.lower()
        assert by_name["list_secrets"].input_schema.get("properties", {}) == {}
        assert not by_name["list_secrets"].input_schema.get("required")
        assert "never" in by_name["list_secrets"].description.lower()
    assert [t.model_dump() for t in sorted(over_stdio, key=lambda t: t.name)] == \
        [t.model_dump() for t in sorted(over_http, key=lambda t: t.name)]


# ---- tool calls -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_narrow_token_reads_allowed_values_lists_only_allowed_keys_and_is_refused_others(
        transport, request, client, seeded, make_token):
    open_session = session_for(transport, request)
    token = make_token("mcp", allow=["GITHUB_*"], name="agent")

    async def scenario() -> None:
        async with open_session(token) as session:
            assert await get_secret(session, "GITHUB_TOKEN") == {"key": "GITHUB_TOKEN", "value": "ghp_value_91b2c3"}
            listed = await session.call_tool("list_secrets", {})
            assert not listed.is_error
            assert listed.structured_content == {"result": [
                {"key": "GITHUB_APP_KEY", "description": None},
                {"key": "GITHUB_TOKEN", "description": "CI token"},
            ]}
            text = " ".join(block.text for block in listed.content)
            assert all(value not in text for value, _ in SECRETS.values())
            assert "OPENAI_API_KEY" not in text
            refusal = await tool_error(session, "OPENAI_API_KEY")
            assert refusal == 'Token may not access "OPENAI_API_KEY"'
            # the session outlives a refusal
            assert await get_secret(session, "GITHUB_APP_KEY") == {"key": "GITHUB_APP_KEY",
                                                                  "value": "gh-app-value-7f3a"}

    asyncio.run(scenario())
    assert mcp_audit(client, seeded, "agent") == [
        ("mcp", "read", "GITHUB_TOKEN", "ok"),
        ("mcp", "list", None, "ok"),
        ("mcp", "read", "OPENAI_API_KEY", "denied"),
        ("mcp", "read", "GITHUB_APP_KEY", "ok"),
    ]
    # Over HTTP the audit names the client's address; over stdio the agent is a local process.
    events = client.get("/api/audit?actor=agent&limit=1000", headers=seeded).get_json()["data"]
    assert {event["remoteAddr"] for event in events} == {"127.0.0.1" if transport == "http" else None}


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_unknown_and_invalid_keys_are_tool_errors_worded_like_rest_and_the_session_goes_on(
        transport, request, client, seeded, make_token):
    open_session = session_for(transport, request)
    token = make_token("mcp", name="agent-all")
    rest_invalid = client.get("/api/secrets/bad-key", headers=seeded).get_json()["message"]

    async def scenario() -> None:
        async with open_session(token) as session:
            assert await tool_error(session, "NOPE") == 'Secret with key "NOPE" not found'
            assert await tool_error(session, "bad-key") == rest_invalid
            too_long = await session.call_tool("get_secret", {"key": "K" * 300})
            assert too_long.is_error
            missing_argument = await session.call_tool("get_secret", {})
            assert missing_argument.is_error
            assert await get_secret(session, "OPENAI_API_KEY") == {"key": "OPENAI_API_KEY",
                                                                  "value": "sk-openai-value-4d5e"}
            listed = await session.call_tool("list_secrets", {})
            assert [row["key"] for row in listed.structured_content["result"]] == sorted(SECRETS)

    asyncio.run(scenario())
    assert rest_invalid == 'Secret with key "bad-key" not found'
    assert mcp_audit(client, seeded, "agent-all") == [
        ("mcp", "read", "NOPE", "not_found"),
        ("mcp", "read", "bad-key", "not_found"),
        ("mcp", "read", "OPENAI_API_KEY", "ok"),
        ("mcp", "list", None, "ok"),
    ]


def test_no_tool_writes_anything(config, tmp_path, client, seeded, make_token):
    token = make_token("mcp", name="agent")
    before = snapshot(client, seeded)

    async def scenario() -> None:
        async with stdio_session(config, tmp_path, token) as session:
            assert sorted(tool.name for tool in (await session.list_tools()).tools) == TOOL_NAMES
            for key in [*SECRETS, "NOPE", "bad-key"]:
                await session.call_tool("get_secret", {"key": key})
            await session.call_tool("list_secrets", {})
            for name, arguments in [("set_secret", {"key": "GITHUB_TOKEN", "value": "x"}),
                                    ("delete_secret", {"key": "GITHUB_TOKEN"})]:
                result = await session.call_tool(name, arguments)
                assert result.is_error

    asyncio.run(scenario())
    assert snapshot(client, seeded) == before
    values = {key: client.get(f"/api/secrets/{key}", headers=seeded).get_json()["data"]["value"] for key in SECRETS}
    assert values == {key: value for key, (value, _) in SECRETS.items()}


# ---- HTTP authentication ----------------------------------------------------------------------------------------

def test_http_without_a_valid_bearer_token_is_401_with_www_authenticate(app, client, mcp_http, admin, make_token):
    revoked = make_token("mcp", name="revoked-early")
    revoke(client, admin, "revoked-early")
    expired = make_token("mcp", name="expired", expires_in=timedelta(days=1))
    expire(app, "expired")
    for headers in [{}, bearer("shub_" + "x" * 43), bearer("not-a-token"), {"Authorization": "Bearer "},
                    {"Authorization": f"Basic {revoked}"}, bearer(revoked), bearer(expired)]:
        response = raw_post(mcp_http, headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert "mcp-session-id" not in {name.lower() for name in response.headers}
    events = client.get("/api/audit?limit=1", headers=admin).get_json()["data"]
    assert [(e["actor"], e["channel"], e["action"], e["outcome"]) for e in events] == [
        ("expired", "mcp", "authenticate", "denied")]


@pytest.mark.parametrize("counters", ["in one process", "in Redis, across two"])
def test_http_failed_authentications_are_limited_per_address_as_on_rest(counters, request, client, config, tmp_path,
                                                                        admin, make_token):
    """As `serve`'s workers: counted per process in memory://, across the worker processes in Redis."""
    if counters == "in one process":
        server = serving_mcp_http(config, tmp_path, "--workers", "1")
    else:
        url, _ = request.getfixturevalue("redis_storage")
        server = serving_mcp_http(config, tmp_path, "--workers", "2", env={"SECRETS_HUB_RATELIMIT_STORAGE": url})
    with server as mcp_http:
        _refused_after_30_failures(client, mcp_http, admin, make_token)


def _refused_after_30_failures(client, mcp_http: str, admin: dict[str, str], make_token) -> None:
    guessed = bearer("shub_guessed-token-000000000000000000000")
    agent = bearer(make_token("mcp", name="agent"))
    # X-Forwarded-For is not believed without a proxy configured (SECRETS_HUB_PROXY_HOPS): a guesser
    # cannot name a new address for each guess.
    # The SDK checks a Bearer token on every path, and answers 401 only on /mcp: guesses elsewhere count too.
    elsewhere = mcp_http.removesuffix("/mcp") + "/elsewhere"
    for number in range(29):
        url, status = (mcp_http, 401) if number % 2 else (elsewhere, 404)
        assert raw_post(url, {**guessed, "X-Forwarded-For": f"198.51.100.{number}"}).status_code == status
    assert raw_post(mcp_http, agent).status_code == 200  # 29 failures: still answered
    assert raw_post(mcp_http, {"X-Forwarded-For": "198.51.100.99"}).status_code == 401  # the 30th: no token at all

    for headers in (agent, guessed, {}):  # now every request from this address, even with a valid token
        refused = raw_post(mcp_http, headers)
        assert (refused.status_code, refused.json()) == (429, {
            "error": "too_many_requests",
            "error_description": "Too many failed authentications; try again in a minute"})
    events = client.get("/api/audit?actor=anonymous&limit=1000", headers=admin).get_json()["data"]
    assert [(e["channel"], e["action"], e["outcome"], e["remoteAddr"]) for e in events] == [
        ("mcp", "authenticate", "denied", "127.0.0.1")] * 29  # the guesses; the blocked requests never got that far


def test_http_valid_token_without_mcp_scope_is_403_and_audited(client, mcp_http, admin, make_token):
    reader = make_token("secrets:read", name="reader")
    everything_but_mcp = make_token("secrets:read", "secrets:write", "admin", name="no-mcp")
    for token in (reader, everything_but_mcp, reader, everything_but_mcp):  # the second time from the token cache
        response = raw_post(mcp_http, bearer(token))
        assert response.status_code == 403, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
        assert "mcp-session-id" not in {name.lower() for name in response.headers}
    assert raw_post(mcp_http, bearer(make_token("mcp", name="agent"))).status_code == 200
    # a refused access by a known token is audited under its name (SPEC 8 and 10), as on stdio
    for name in ("reader", "no-mcp"):
        assert [(channel, outcome) for channel, _, _, outcome in mcp_audit(client, admin, name)] == [
            ("mcp", "denied")] * 2


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_revoked_token_is_refused_on_a_later_call(transport, request, client, seeded, make_token):
    open_session = session_for(transport, request)
    token = make_token("mcp", name="agent")

    async def scenario() -> str:
        async with open_session(token) as session:
            assert await get_secret(session, "GITHUB_TOKEN") == {"key": "GITHUB_TOKEN", "value": "ghp_value_91b2c3"}
            revoke(client, seeded, "agent")
            deadline = time.monotonic() + 10  # tokens may be cached for up to 2 s per process
            while time.monotonic() < deadline:
                try:
                    result = await session.call_tool("get_secret", {"key": "GITHUB_TOKEN"})
                except MCPError:  # over HTTP the request itself is refused (401) before any tool runs
                    return "refused"
                if result.is_error:
                    return result.content[0].text
                assert result.structured_content == {"key": "GITHUB_TOKEN", "value": "ghp_value_91b2c3"}
                await asyncio.sleep(0.2)
            return "still served"

    outcome = asyncio.run(scenario())
    if transport == "http":
        assert outcome == "refused"
        response = raw_post(request.getfixturevalue("mcp_http"), bearer(token))
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    else:
        assert outcome == TOOL_ERROR_PREFIX + "Authentication required"
    assert set(mcp_audit(client, seeded, "agent")) == {("mcp", "read", "GITHUB_TOKEN", "ok")}


# ---- stdio authentication ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "bad", "revoked", "expired", "read-only"])
def test_stdio_refuses_to_serve_without_a_valid_mcp_token(case, app, client, config, tmp_path, admin, make_token):
    if case == "missing":
        token = None
    elif case == "bad":
        token = "shub_" + "x" * 43
    elif case == "revoked":
        token = make_token("mcp", name="gone")
        revoke(client, admin, "gone")
    elif case == "expired":
        token = make_token("mcp", name="old", expires_in=timedelta(days=1))
        expire(app, "old")
    else:
        token = make_token("secrets:read", name="reader")
    env = {k: v for k, v in cli_env(config).items() if k != "SECRETS_HUB_TOKEN"}
    if token is not None:
        env["SECRETS_HUB_TOKEN"] = token
    result = subprocess.run([*SECRETS_HUB, "mcp"], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: SECRETS_HUB_TOKEN")
    assert "Traceback" not in result.stderr


# ---- concurrency ------------------------------------------------------------------------------------------------

def test_many_concurrent_http_tool_calls_are_all_answered_correctly(client, seeded, mcp_http, make_token):
    """8 agents at once, 10 calls each, also at once. Even agents may read GITHUB_* only, so an answer
    given under another request's token would show."""
    clients, calls = 8, 10
    keys = sorted(SECRETS)
    allowed = {i: [k for k in keys if i % 2 or k.startswith("GITHUB_")] for i in range(clients)}
    tokens = [make_token("mcp", name=f"agent-{i}", allow=None if i % 2 else ["GITHUB_*"]) for i in range(clients)]

    def plan(i: int, j: int) -> str | None:
        """The key that call j of agent i reads; None for a list_secrets call."""
        return None if j % 5 == 4 else keys[(i + j) % len(keys)]

    def expected(i: int, j: int) -> Any:
        key = plan(i, j)
        if key is None:
            return allowed[i]
        if key in allowed[i]:
            return {"key": key, "value": SECRETS[key][0]}
        return TOOL_ERROR_PREFIX + f'Token may not access "{key}"'

    async def one_client(i: int) -> list[Any]:
        async with http_session(mcp_http, tokens[i]) as session:
            async def call(j: int) -> Any:
                key = plan(i, j)
                if key is None:
                    result = await session.call_tool("list_secrets", {})
                    return [row["key"] for row in result.structured_content["result"]]
                result = await session.call_tool("get_secret", {"key": key})
                return result.content[0].text if result.is_error else result.structured_content

            return await asyncio.gather(*(call(j) for j in range(calls)))

    async def everyone() -> list[list[Any]]:
        return await asyncio.gather(*(one_client(i) for i in range(clients)))

    answers = asyncio.run(everyone())
    assert answers == [[expected(i, j) for j in range(calls)] for i in range(clients)]
    for i in range(clients):
        audited = [("mcp", "list", None, "ok") if plan(i, j) is None else
                   ("mcp", "read", plan(i, j), "ok" if plan(i, j) in allowed[i] else "denied") for j in range(calls)]
        assert sorted(mcp_audit(client, seeded, f"agent-{i}"), key=str) == sorted(audited, key=str)
