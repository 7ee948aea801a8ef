"""The API's busiest route, `GET /api/secrets/<key>` with a Bearer token, without Flask's request machinery.

An audited value read is what apps and agents do most. Around it, Flask's request context, routing,
session handling and before/after hooks cost about as much CPU as the read itself (the token check,
one query, the decryption and the audit event); served from here, the same read answers about
twice as many requests per second.

It is the same read, not a second implementation of it: the API's own functions check the token
(with the failed-authentication limit) and shape the answer, the service runs the read (scopes,
key globs, audit), the answer carries the headers the API's after-request hooks add, and errors get
the API's error answers under the app's context.
Only that exact shape of request comes here; anything else (another method, a query string, no
Bearer token, a path with more segments) goes to Flask untouched.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from flask import Flask
from werkzeug.wsgi import get_path_info

from secrets_hub import service
from secrets_hub.auth import bearer_token
from secrets_hub.errors import SecretsHubError
from secrets_hub.runtime import activated
from secrets_hub.web import SECURITY_HEADERS, api, errors, security_headers

PREFIX = "/api/secrets/"
# What the API's after-request hooks add to every answer (api.no_store, security_headers).
AFTER_REQUEST_HEADERS = [*api.NO_STORE.items(), *SECURITY_HEADERS.items()]


def value_read_key(environ: dict[str, Any]) -> str | None:
    """The key of a plain Bearer value read (no query string: `?version=` goes to Flask), else None."""
    if environ.get("REQUEST_METHOD") != "GET" or environ.get("QUERY_STRING"):
        return None
    if bearer_token(environ.get("HTTP_AUTHORIZATION")) is None:
        return None
    path = get_path_info(environ)  # decoded the way Flask decodes it
    key = path[len(PREFIX):] if path.startswith(PREFIX) else ""
    return key if key and "/" not in key else None


class HotPath:
    """WSGI middleware in front of the Flask app: value reads are answered here, everything else there."""

    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]]):
        self.app, self.wsgi_app = app, wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # Every request's code finds the runtime at once, without going through Flask's context proxies.
        with activated(self.app.extensions["secrets_hub"]):
            key = value_read_key(environ)
            if key is None:
                return self.wsgi_app(environ, start_response)
            # A read needs no app context; only a refusal does (below), to be answered by the API's error handlers.
            try:
                caller = api.bearer_caller(environ["HTTP_AUTHORIZATION"], environ.get("REMOTE_ADDR"))
                body, headers = api.value_answer(self.app.json, service.read_secret(caller, key))
            except Exception as error:  # noqa: BLE001 - answered as Flask's handlers answer it
                with self.app.app_context():
                    return self._refusal(error, environ)(environ, start_response)
        start_response("200 OK", [("Content-Type", self.app.json.mimetype), ("Content-Length", str(len(body))),
                                  *headers.items(), *AFTER_REQUEST_HEADERS])
        return [body]

    @staticmethod
    def _refusal(error: Exception, environ: dict[str, Any]):
        if isinstance(error, SecretsHubError):
            response = errors.domain_error(error)
        else:  # logged with its traceback, as Flask's handler does
            response = errors.unexpected_error("GET", get_path_info(environ))
        return security_headers(api.no_store(response))
