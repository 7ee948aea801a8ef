"""The API's busiest routes, a value read and an update with a Bearer token, without Flask's request machinery.

Audited value reads are what apps and agents do most, and updates next. Around them, Flask's
request context, routing, session handling, body parsing and before/after hooks cost about as much
CPU as the work itself (the token check, the queries, the encryption, the audit event); served from
here, the same requests answer about twice as many per second.

It is the same work, not a second implementation of it: the API's own functions check the token
(with the failed-authentication limit), parse the body and shape the answer, the service does the
rest (scopes, key globs, validation, versions, audit), the answer carries the headers the API's
after-request hooks add, and errors get the API's error answers under the app's context. Only the
plainest shape of those requests comes here: `GET` or `PUT /api/secrets/<key>` with a Bearer token
and no query string, a `PUT` with a `Content-Type: application/json` body of a declared length under
the size limit. Anything else goes to Flask untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask
from werkzeug.datastructures import EnvironHeaders
from werkzeug.wsgi import get_path_info

from secrets_hub import schemas, service
from secrets_hub.auth import bearer_token
from secrets_hub.errors import SecretsHubError
from secrets_hub.runtime import activated
from secrets_hub.validation import is_decimal
from secrets_hub.web import SECURITY_HEADERS, api, errors, security_headers

PREFIX = "/api/secrets/"
# What the API's after-request hooks add to every answer (api.no_store, security_headers).
AFTER_REQUEST_HEADERS = [*api.NO_STORE.items(), *SECURITY_HEADERS.items()]


def hot_request(method: str, query_string: str | bytes, path: str, headers: Mapping[str, str], max_body: int
                ) -> tuple[str, str] | None:
    """(method, key) of a request answered here, else None (see the module docstring). `path` decoded the way
    Flask decodes it; `headers` by lower-case name."""
    if method not in ("GET", "PUT") or query_string:
        return None
    if bearer_token(headers.get("authorization")) is None:
        return None
    if method == "PUT" and not (headers.get("content-type") == "application/json"
                                and _declared_length(headers.get("content-length", "")) < max_body
                                and "transfer-encoding" not in headers):
        return None
    key = path[len(PREFIX):] if path.startswith(PREFIX) else ""
    return (method, key) if key and "/" not in key else None


def _declared_length(header: str) -> float:
    """A plain Content-Length's value; infinity for anything odder ("+5", " 5", "²", 5,000 digits), left to Flask."""
    return int(header) if is_decimal(header) else float("inf")


class HotPath:
    """WSGI middleware in front of the Flask app: the requests above are answered here, everything else there.
    `secrets-hub serve`'s ASGI app (asgi.py) calls `answer` itself, without a WSGI environ."""

    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]]):
        self.app, self.wsgi_app = app, wsgi_app
        self.max_body = app.config["MAX_CONTENT_LENGTH"]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = EnvironHeaders(environ)
        hot = hot_request(environ["REQUEST_METHOD"], environ.get("QUERY_STRING"), get_path_info(environ), headers,
                          self.max_body)
        if hot is None:
            # Every request's code finds the runtime at once, without going through Flask's context proxies.
            with activated(self.app.extensions["secrets_hub"]):
                return self.wsgi_app(environ, start_response)
        method, key = hot
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])) if method == "PUT" else b""
        status, answer_headers, content = self.answer(method, key, headers, environ.get("REMOTE_ADDR"), body)
        start_response(status, answer_headers)
        return [content]

    def answer(self, method: str, key: str, headers: Mapping[str, str], remote_addr: str | None, body: bytes
               ) -> tuple[str, list[tuple[str, str]], bytes]:
        """The answer to a request hot_request chose: (status line, headers, body)."""
        with activated(self.app.extensions["secrets_hub"]):
            # No app context is needed on the way; only a refusal needs one (below), for the API's error handlers.
            try:
                caller = api.bearer_caller(headers.get("authorization"), remote_addr)
                if method == "GET":
                    result = service.read_secret(caller, key)
                    content = api.data_body(self.app.json, schemas.secret_value_schema, result)
                    extra = api.value_headers(result)
                else:
                    result = api.update(caller, key, body, headers.get("if-match"))
                    content, extra = api.data_body(self.app.json, schemas.secret_updated_schema, result), {}
            except Exception as error:  # noqa: BLE001 - answered as Flask's handlers answer it
                with self.app.app_context():
                    response = self._refusal(error, method, PREFIX + key)
                    return response.status, response.headers.to_wsgi_list(), response.get_data()
        return "200 OK", [("Content-Type", self.app.json.mimetype), ("Content-Length", str(len(content))),
                          *extra.items(), *AFTER_REQUEST_HEADERS], content

    @staticmethod
    def _refusal(error: Exception, method: str, path: str):
        if isinstance(error, SecretsHubError):
            response = errors.domain_error(error)
        else:  # logged with its traceback, as Flask's handler does
            response = errors.unexpected_error(method, path)
        return security_headers(api.no_store(response))
