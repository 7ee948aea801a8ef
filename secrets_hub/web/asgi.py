"""`secrets-hub serve`'s app on SQLite: the WSGI app, hot path and Flask alike, served from an event loop.

Each request runs the same WSGI app the threads of a WSGI server run, in a greenlet of its own on the
worker's one loop thread (event_loop.py says why). Its environ is built as the ASGI spec's WSGI
compatibility section describes, from the request's body read in full first: bodies are small here (the
app refuses any beyond MAX_CONTENT_LENGTH), and the app then never waits on the network.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from secrets_hub import event_loop
from secrets_hub.validation import is_decimal
from secrets_hub.web.hot_path import HotPath, hot_request

Scope = dict[str, Any]


def create_asgi_app() -> "ASGIApp":
    """The ASGI server's factory (`secrets-hub serve` on SQLite): the app of the environment's settings."""
    from secrets_hub.app import create_app

    return ASGIApp(create_app())


class ASGIApp:
    """An ASGI app serving a Flask app of ours: the hot path's requests answered from the ASGI request, the
    others through the WSGI app, each in a greenlet on the loop (event_loop.run); lifespan events answered."""

    def __init__(self, app: Flask):
        self.wsgi_app, self.max_body = app.wsgi_app, app.config["MAX_CONTENT_LENGTH"]
        # The hot path's requests skip the environ too, unless a proxy's headers must first be applied to them
        # (ProxyFix wraps the hot path then: SECRETS_HUB_PROXY_HOPS).
        self.hot_path = app.wsgi_app if isinstance(app.wsgi_app, HotPath) else None

    async def __call__(self, scope: Scope, receive: Callable[[], Any], send: Callable[[dict], Any]) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            headers = folded_headers(scope["headers"])
            body = await self._body(scope["method"], headers, receive)
            if body is None:  # the client went away before it finished sending: nothing to do, nobody to answer
                return
            hot = self.hot_path and hot_request(scope["method"], scope["query_string"], scope["path"], headers,
                                                self.max_body)
            if hot:
                client = scope.get("client")
                answer = await event_loop.run(self.hot_path.answer, *hot, headers, client and client[0], body)
            else:
                answer = await event_loop.run(self._respond, wsgi_environ(scope, headers, body))
            status, answer_headers, content = answer
            await send({"type": "http.response.start", "status": int(status[:3]),
                        "headers": [_encoded(name, value) if name != "Set-Cookie" else _cookie(value)
                                    for name, value in answer_headers]})
            await send({"type": "http.response.body", "body": content})
        # No WebSocket is served: the server refuses the handshake of an app that does not accept it.

    async def _body(self, method: str, headers: dict[str, str], receive: Callable[[], Any]) -> bytes | None:
        """The request's body; past the limit, no more than the app needs to refuse it (413); None if the client
        went away first."""
        declared = headers.get("content-length")
        if declared is None and "transfer-encoding" not in headers and method in ("GET", "HEAD"):
            return b""  # none was sent (the value reads: no need to ask the server)
        if is_decimal(declared or "") and int(declared) > self.max_body:
            return b""  # refused for its declared length, unread
        chunks, size = [], 0
        while size <= self.max_body:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _respond(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        """Run the WSGI app (in its greenlet): the status line, headers and whole body of its answer."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        chunks = self.wsgi_app(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        return started[0], started[1], content


@functools.lru_cache(maxsize=1024)  # most answers' headers are the same few (security headers, types, lengths)
def _encoded(name: str, value: str) -> tuple[bytes, bytes]:
    return name.lower().encode("latin-1"), value.encode("latin-1")


def _cookie(value: str) -> tuple[bytes, bytes]:
    # Never kept by the cache above: a session cookie is a credential.
    return b"set-cookie", value.encode("latin-1")


def folded_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """A request's headers by lower-case name, as a WSGI server passes them: one sent more than once folded into
    one value, as HTTP/1.1 allows; any whose name has an underscore dropped, since WSGI spells "-" as "_" and
    X_Forwarded_For would pass for the X-Forwarded-For a proxy sets (as gunicorn does)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if "_" in name:
            continue
        if name in headers:
            value = f"{headers[name]}{'; ' if name == 'cookie' else ','}{value}"
        headers[name] = value
    return headers


def wsgi_environ(scope: Scope, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP request with `folded_headers` (strings as WSGI has them: latin-1
    standing for bytes)."""
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        # All of it, ending there: a body sent without a Content-Length (chunked) is read to its end too.
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = scope["client"][0], str(scope["client"][1])
    for name, value in headers.items():
        if name in ("content-type", "content-length"):
            environ[name.upper().replace("-", "_")] = value
        else:
            environ[f"HTTP_{name.upper().replace('-', '_')}"] = value
    return environ


async def _lifespan(receive: Callable[[], Any], send: Callable[[dict], Any]) -> None:
    """Nothing to start or stop beyond what the factory built: each worker's runtime lives as long as it."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
