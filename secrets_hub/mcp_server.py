"""The MCP server: read-only secret tools for AI agents, under our own API tokens (scope `mcp`).

Built on the official SDK (`mcp.server.mcpserver.MCPServer`). Over streamable HTTP every request
carries a Bearer token, checked by the SDK's middleware through `HubTokenVerifier`, and a tool call
acts for the caller that check found. Over stdio there is no transport auth, so the token comes from
SECRETS_HUB_TOKEN and is checked at start and again on every tool call. Either way each call is
checked once against the token table, so a revoked token stops as soon as the token cache lets go
of it (auth.TOKEN_CACHE_SECONDS).
"""

from __future__ import annotations

import ipaddress
import os
from contextvars import ContextVar
from typing import Annotated, Any

import anyio.to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from secrets_hub import __version__, audit, service
from secrets_hub.auth import MCP, READ, Caller, authenticate_token, cached_caller
from secrets_hub.errors import AuthenticationError, ForbiddenError, SecretsHubError
from secrets_hub.runtime import Runtime, activated
from secrets_hub.throttle import TOO_MANY_FAILURES, FailedAuthentications

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
INSTRUCTIONS = (
    "secrets-hub holds the API keys and credentials of this user's apps. Call list_secrets to see which "
    "keys you may read, then get_secret with one key. Never repeat a secret's value back to the user "
    "unless they asked for it."
)


class _Client:
    """The HTTP client of the request being handled: its address, for the token check's audit events and the
    failed-authentication count, and whether that check has counted its failure already."""

    __slots__ = ("address", "counted")

    def __init__(self, address: str | None):
        self.address, self.counted = address, False


_client: ContextVar[_Client | None] = ContextVar("mcp_client", default=None)


def _reader(actor: str, allow: tuple[str, ...] | None, remote_addr: str | None) -> Caller:
    """What the `mcp` scope grants: reading, within the token's key globs, through MCP alone."""
    return Caller(actor=actor, channel="mcp", scopes=frozenset({READ}), allow=allow, remote_addr=remote_addr)


def agent_caller(state: Runtime, token: str, remote_addr: str | None = None) -> Caller:
    """The agent behind `token`: it must hold the `mcp` scope."""
    with activated(state):
        caller = authenticate_token(token, "mcp", remote_addr)
        if MCP not in caller.scopes:
            audit.record_now(caller, "authenticate", None, "denied")
            raise ForbiddenError(f"Token lacks scope {MCP}")
    return _reader(caller.actor, caller.allow, remote_addr)


def _remote_addr(ctx: Context) -> str | None:
    """The HTTP client's address; None over stdio, where the agent is a local process."""
    client = getattr(ctx.request_context.request, "client", None)
    return getattr(client, "host", None)


class HubAccessToken(AccessToken):
    """The SDK's access token plus our token's key globs: all a tool call needs to act for the agent."""

    allow: tuple[str, ...] | None = None


class HubTokenVerifier(TokenVerifier):
    """The SDK's token check, answered from our token table; scopes are enforced by AuthSettings."""

    def __init__(self, state: Runtime):
        self.state = state

    async def verify_token(self, token: str) -> AccessToken | None:
        client = _client.get() or _Client(None)
        address = client.address
        with activated(self.state):
            caller = cached_caller(token, "mcp", address)
        if caller is not None and MCP in caller.scopes:
            return self._access(token, caller)  # a busy agent's token: no database work, so no thread

        def check() -> AccessToken | None:
            with activated(self.state):
                try:
                    caller = authenticate_token(token, "mcp", address)
                except AuthenticationError:
                    # Refused and audited. Counted here, whatever the path: the SDK checks a Bearer token on
                    # every request, but answers 401 only on /mcp (elsewhere 404, 307...).
                    self.state.failed_authentications.count(address)
                    client.counted = True
                    return None
                if MCP not in caller.scopes:
                    # The SDK answers 403 (insufficient scope) before any tool runs: record the refusal here.
                    audit.record_now(caller, "authenticate", None, "denied")
            return self._access(token, caller)

        return await anyio.to_thread.run_sync(check)

    @staticmethod
    def _access(token: str, caller: Caller) -> HubAccessToken:
        return HubAccessToken(token=token, client_id=caller.actor, scopes=sorted(caller.scopes), allow=caller.allow)


def create_mcp_server(state: Runtime, stdio_token: str | None = None, *, host: str = "127.0.0.1",
                      port: int = 8765) -> MCPServer:
    """Build the server; `stdio_token` is the agent's token for stdio, None for HTTP (per-request tokens)."""
    http = stdio_token is None
    server = MCPServer(
        "secrets-hub",
        version=__version__,
        instructions=INSTRUCTIONS,
        token_verifier=HubTokenVerifier(state) if http else None,
        auth=AuthSettings(
            issuer_url=f"http://{host}:{port}",
            resource_server_url=f"http://{host}:{port}/mcp",
            required_scopes=[MCP],
            validate_token_resource=False,  # our tokens are not audience-bound; the verifier is the authority
        ) if http else None,
    )

    def http_caller(ctx: Context) -> Caller:
        """The verifier checked this request's token moments ago, in this request: act for the caller it found."""
        access = get_access_token()
        # The middleware lets no request through without a token holding the mcp scope; be explicit anyway.
        if not isinstance(access, HubAccessToken):
            raise ToolError("Authentication required")
        if MCP not in access.scopes:
            raise ToolError(f"Token lacks scope {MCP}")
        return _reader(access.client_id, access.allow, _remote_addr(ctx))

    async def run(ctx: Context, use_case: Any) -> Any:
        caller = http_caller(ctx) if http else None

        def call() -> Any:
            try:
                # Over stdio no transport checked the token: check it on every call.
                acting = caller or agent_caller(state, stdio_token)
                with activated(state):
                    return use_case(acting)
            except SecretsHubError as error:
                raise ToolError(error.message) from None

        return await anyio.to_thread.run_sync(call)

    @server.tool(
        name="get_secret",
        title="Get a secret",
        description="Return the value of one secret by its key (SCREAMING_SNAKE_CASE, e.g. GITHUB_TOKEN). "
        "Only keys this token may read are returned; the read is audited.",
        annotations=READ_ONLY,
    )
    async def get_secret(
        key: Annotated[str, Field(description="The secret's key, e.g. GITHUB_TOKEN", max_length=255)],
        ctx: Context,
    ) -> dict[str, str]:
        result = await run(ctx, lambda caller: service.read_secret(caller, key))
        return {"key": key, "value": result["value"]}

    @server.tool(
        name="list_secrets",
        title="List secrets",
        description="List the keys and descriptions of the secrets this token may read. Never returns values.",
        annotations=READ_ONLY,
    )
    async def list_secrets(ctx: Context) -> list[dict[str, Any]]:
        def listing(caller: Caller) -> list[dict[str, Any]]:
            rows = service.list_secrets(caller)
            audit.record_now(caller, "list", None, "ok")
            return [{"key": row["key"], "description": row["description"]} for row in rows]

        return await run(ctx, listing)

    return server


class FailedAuthenticationLimit:
    """ASGI middleware in front of the SDK's HTTP app: every failed authentication counts against the
    client's address, as on the REST API (see throttle), and a blocked address is answered 429 before its
    token is checked. It hands the client's address to the token check, which counts refused tokens."""

    def __init__(self, app: ASGIApp, failures: FailedAuthentications):
        self.app, self.failures = app, failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = scope["client"][0] if scope.get("client") else None
        if await self._run(self.failures.blocked, address):
            refusal = {"error": "too_many_requests", "error_description": TOO_MANY_FAILURES}
            await JSONResponse(refusal, status_code=429)(scope, receive, send)
            return

        client = _Client(address)

        async def counting(message: Message) -> None:
            # A 401 the token check did not count: no token, or not a Bearer one.
            if message["type"] == "http.response.start" and message["status"] == 401 and not client.counted:
                await self._run(self.failures.count, address)
            await send(message)

        bound = _client.set(client)
        try:
            await self.app(scope, receive, counting)
        finally:
            _client.reset(bound)

    async def _run(self, operation: Any, address: str | None) -> Any:
        # Counters in Redis are a round trip away: off the event loop. In memory they take a microsecond.
        if self.failures.in_process:
            return operation(address)
        return await anyio.to_thread.run_sync(operation, address)


def http_app(state: Runtime, host: str, port: int) -> ASGIApp:
    """The ASGI app of `secrets-hub mcp --transport http`: the SDK's, behind the limit on failed authentications.

    Each call is answered with a JSON body instead of an SSE stream (our tools send nothing to the client
    before their result), and statelessly: no MCP session is kept between requests, since every request
    carries its token and our tools need nothing from earlier calls. So the server keeps no per-client
    state to exhaust, and any worker process can answer any request.
    """
    sdk_app = create_mcp_server(state, host=host, port=port).streamable_http_app(
        json_response=True, stateless_http=True, host=host)
    return FailedAuthenticationLimit(sdk_app, state.failed_authentications)


# host:port, from `serve_http` to the worker processes it starts (each imports `worker_app` by name).
_SERVING = "SECRETS_HUB_MCP_SERVING"


def serve_http(host: str, port: int, workers: int, proxy_headers: bool) -> None:
    """Serve the HTTP transport with `workers` uvicorn processes until stopped.

    One process answered about 750 calls/s on two cores with a p50 of 10 ms for 8 clients; the SDK's
    transport, session and JSON-RPC layers are most of each call's CPU, so a process per core is what
    uses the machine (two: about 1,550 calls/s, p50 4.5 ms). Like `serve`: no access log (the audit log
    records every tool call, and a line per request cost 5-10%), uvicorn's httptools parser and uvloop,
    and X-Forwarded-For believed only behind a proxy (SECRETS_HUB_PROXY_HOPS), and then only from the
    proxy's address (127.0.0.1, or FORWARDED_ALLOW_IPS): otherwise any local client could name its own
    address in the audit log and the limits.
    """
    import uvicorn

    os.environ[_SERVING] = f"{host}:{port}"
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=host, port=port, access_log=False,
                http="httptools", loop="uvloop", proxy_headers=proxy_headers)


def worker_app() -> ASGIApp:
    """One worker process's app, with its own runtime from the environment (as the command's), whose plugins'
    startup hook runs in it, as in each of `serve`'s workers.

    uvicorn calls this on its running event loop: the runtime is built on a thread of its own, so that a
    startup hook finds no running loop there, as in `serve` and over stdio (it may run one of its own).
    """
    import concurrent.futures

    from secrets_hub.runtime import started_runtime

    host, _, port = os.environ[_SERVING].rpartition(":")
    with concurrent.futures.ThreadPoolExecutor(1) as off_the_loop:
        state = off_the_loop.submit(started_runtime).result()
    return http_app(state, host, int(port))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
