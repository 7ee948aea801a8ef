"""One translation of errors into responses: JSON `{"statusCode", "message"}` for the API, pages elsewhere."""

from __future__ import annotations

from flask import Flask, current_app, jsonify, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from secrets_hub.errors import DatabaseUnavailableError, SecretsHubError

HTTP_MESSAGES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported media type",
    429: "Too many requests",
}


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in ("/api", "/healthz")


def json_error(status: int, message: str):
    response = jsonify({"statusCode": status, "message": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def domain_error(error: SecretsHubError):
    """A refusal worded as the SPEC gives it; a database that stopped answering is logged too."""
    if isinstance(error, DatabaseUnavailableError):
        current_app.logger.error("database unavailable")
    return json_error(error.status, error.message)


def unexpected_error(method: str, path: str):
    # The traceback goes to the server log only; the client learns nothing about internals.
    current_app.logger.exception("unhandled error on %s %s", method, path)
    return json_error(500, "Internal server error")


def init_app(app: Flask) -> None:
    app.register_error_handler(SecretsHubError, domain_error)

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        if wants_json():
            return json_error(403, "CSRF token missing or invalid")
        return error.description, 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if not wants_json():
            return error
        status = error.code or 500
        response = json_error(status, HTTP_MESSAGES.get(status, error.name))
        # Keep what HTTP requires alongside some errors, such as `Allow` on a 405.
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(DataError)
    def data_error(error: DataError):
        # Input the database refused (a value out of range, a character it cannot store): the client's doing.
        return json_error(400, HTTP_MESSAGES[400])

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_error(error: Exception):
        app.logger.error("database unavailable: %s", type(error).__name__)
        return json_error(503, DatabaseUnavailableError().message)

    app.register_error_handler(Exception, lambda _error: unexpected_error(request.method, request.path))
