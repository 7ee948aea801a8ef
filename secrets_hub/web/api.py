"""The REST API under /api: authenticate, parse with the schemas, call the service, dump with the schemas."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask_login import current_user
from marshmallow import Schema

from secrets_hub import audit, auth, bootstrap, schemas, service, tokens
from secrets_hub.errors import AuthenticationError, TooManyRequestsError, UnsupportedMediaTypeError, ValidationError
from secrets_hub.runtime import runtime
from secrets_hub.throttle import TOO_MANY_FAILURES
from secrets_hub.validation import is_decimal, parse_duration, validate_version
from secrets_hub.web import csrf
from secrets_hub.web.openapi import build_spec, operation

bp = Blueprint("api", __name__, url_prefix="/api")
health_bp = Blueprint("health", __name__)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
VERSION_QUERY = {"name": "version", "required": False, "schema": {"type": "integer", "minimum": 1}}
IF_MATCH = {"name": "If-Match", "required": False, "schema": {"type": "string"},
            "description": "Check-and-set: the version the change is based on (3 or \"3\")"}
ETAG = {"ETag": {"description": "The version of the value, quoted", "schema": {"type": "string"}}}


def _body(schema: Schema) -> dict[str, Any]:
    return parse_body(schema, _raw_body())


def _raw_body() -> bytes:
    # A body declared as something else (a form, plain text, multipart) is refused, never guessed at;
    # one with no Content-Type at all is read as JSON, as the seed did.
    if request.mimetype and not request.is_json:
        raise UnsupportedMediaTypeError("Content-Type must be application/json")
    raw = request.stream.read()
    # A chunked body (no Content-Length) stops at the limit without complaint; asking for one byte more
    # makes werkzeug refuse it (413), so an oversized body is never taken for a shorter one.
    if len(raw) >= current_app.config["MAX_CONTENT_LENGTH"]:
        request.stream.read(1)
    return raw


def parse_body(schema: Schema, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or absurdly nested: refused like any other bad body
        data = None
    return schemas.load(schema, data)


def data_body(json_provider: Any, schema: Schema, payload: Any) -> bytes:
    """The body of an API answer: `{"data": ...}` dumped with `schema`; needs no app context (the hot path)."""
    return json_provider.body({"data": schemas.dump(schema, payload)})


def _data(schema: Schema, payload: Any, headers: dict[str, str] | None = None):
    return current_app.response_class(data_body(current_app.json, schema, payload), headers=headers,
                                      mimetype=current_app.json.mimetype)


def _caller() -> auth.Caller:
    return g.caller


@bp.before_request
def authenticate() -> None:
    """Bearer token first; else the browser session, whose writes must carry the CSRF token."""
    if getattr(current_app.view_functions.get(request.endpoint), "public", False):
        return
    header = request.headers.get("Authorization")
    if header is None and current_user.is_authenticated:
        if request.method not in SAFE_METHODS:
            csrf.protect()
        g.caller = auth.caller_for_user(current_user, "ui", request.remote_addr)
        return
    g.caller = bearer_caller(header, request.remote_addr)


def bearer_caller(header: str | None, remote_addr: str | None) -> auth.Caller:
    """The caller behind an `Authorization: Bearer` header; a failure is audited and counted per address."""
    failures = runtime().failed_authentications
    if failures.blocked(remote_addr):  # before the token: see throttle
        raise TooManyRequestsError(TOO_MANY_FAILURES)
    try:
        token = auth.bearer_token(header)
        if token is None:
            audit.record_now(auth.anonymous("rest", remote_addr), "authenticate", None, "denied")
            raise AuthenticationError()
        return auth.authenticate_token(token, "rest", remote_addr)
    except AuthenticationError:
        failures.count(remote_addr)
        raise


# Values and tokens pass through this API: no cache, shared or private, may keep a copy.
NO_STORE = {"Cache-Control": "no-store"}


@bp.after_request
def no_store(response):
    response.headers.update(NO_STORE)
    return response


def public(view):
    """Serve `view` without authentication."""
    view.public = True
    return view


@bp.get("/secrets")
@operation("List secrets (metadata only, sorted by key)", response=schemas.secrets_meta_schema)
def list_secrets():
    return _data(schemas.secrets_meta_schema, service.list_secrets(_caller()))


@bp.get("/secrets/<key>")
@operation("Read a secret's value, or an older version's", response=schemas.secret_value_schema,
           query=(VERSION_QUERY,), errors=(400, 403, 404, 500), response_headers=ETAG)
def get_secret(key: str):
    version = request.args.get("version")
    result = service.read_secret(_caller(), key, None if version is None else validate_version(version))
    return _data(schemas.secret_value_schema, result, value_headers(result))


def value_headers(result: dict[str, Any]) -> dict[str, str]:
    """A value read's headers, for this route and the hot path: its version as the ETag."""
    return {"ETag": f'"{result["version"]}"'}


@bp.post("/secrets")
@operation("Create a secret", body=schemas.secret_create_schema, response=schemas.secret_created_schema,
           errors=(400, 403, 409, 413))
def create_secret():
    data = _body(schemas.secret_create_schema)
    return _data(schemas.secret_created_schema, service.create_secret(_caller(), **data))


def _if_match(header: str | None) -> int | None:
    if header is None:
        return None
    try:
        return validate_version(header.strip())
    except ValidationError:
        raise ValidationError("If-Match must be a version number") from None


@bp.put("/secrets/<key>")
@operation("Update a secret's value and/or description", body=schemas.secret_update_schema,
           response=schemas.secret_updated_schema, headers=(IF_MATCH,), errors=(400, 403, 404, 409, 413))
def update_secret(key: str):
    result = update(_caller(), key, _raw_body(), request.headers.get("If-Match"))
    return _data(schemas.secret_updated_schema, result)


def update(caller: auth.Caller, key: str, raw_body: bytes, if_match: str | None) -> dict[str, Any]:
    """An update from the request's body and If-Match header, for this route and the hot path."""
    data = parse_body(schemas.secret_update_schema, raw_body)
    return service.update_secret(caller, key, expected_version=_if_match(if_match), **data)


@bp.delete("/secrets/<key>")
@operation("Delete a secret and all its versions", response=schemas.deleted_schema, errors=(403, 404))
def delete_secret(key: str):
    service.delete_secret(_caller(), key)
    return _data(schemas.deleted_schema, {"deleted": True})


@bp.get("/secrets/<key>/versions")
@operation("List a secret's kept versions, newest first", response=schemas.versions_schema, errors=(403, 404))
def list_versions(key: str):
    return _data(schemas.versions_schema, service.list_versions(_caller(), key))


@bp.post("/secrets/<key>/restore")
@operation("Make an older version's value the newest version", body=schemas.restore_schema,
           response=schemas.restored_schema, errors=(400, 403, 404, 500))
def restore_secret(key: str):
    data = _body(schemas.restore_schema)
    return _data(schemas.restored_schema, service.restore_version(_caller(), key, validate_version(data["version"])))


@bp.get("/audit")
@operation("The audit log, newest first (admin)", response=schemas.audit_events_schema, errors=(400, 403),
           query=({"name": "key", "required": False, "schema": {"type": "string"}},
                  {"name": "actor", "required": False, "schema": {"type": "string"}},
                  {"name": "limit", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                  {"name": "before", "required": False, "schema": {"type": "integer", "minimum": 1},
                   "description": "Only events older than this event id (paging)"}))
def list_audit():
    limit = request.args.get("limit", "100")
    if not is_decimal(limit) or not 1 <= int(limit) <= audit.MAX_LIMIT:
        raise ValidationError(f"Limit must be a whole number from 1 to {audit.MAX_LIMIT}")
    before = request.args.get("before")
    if before is not None and not (is_decimal(before) and 1 <= int(before) <= 2**62):
        raise ValidationError("Before must be an event id")
    events = service.read_audit_log(_caller(), key=request.args.get("key"), actor=request.args.get("actor"),
                                    limit=int(limit), before=None if before is None else int(before))
    return _data(schemas.audit_events_schema, events)


@bp.get("/tokens")
@operation("List API tokens (admin); never the tokens themselves", response=schemas.tokens_schema, errors=(403,))
def list_tokens():
    return _data(schemas.tokens_schema, tokens.list_tokens(_caller()))


@bp.post("/tokens")
@operation("Create an API token (admin); the token is shown only in this response",
           body=schemas.token_create_schema, response=schemas.token_created_schema, errors=(400, 403, 409))
def create_token():
    data = _body(schemas.token_create_schema)
    created = tokens.create_token(_caller(), data["name"], data["scopes"], data["allow"],
                                  parse_duration(data["expiresIn"]))
    return _data(schemas.token_created_schema, created)


@bp.delete("/tokens/<name>")
@operation("Revoke an API token (admin)", response=schemas.revoked_schema, errors=(403, 404))
def revoke_token(name: str):
    tokens.revoke_token(_caller(), name)
    return _data(schemas.revoked_schema, {"revoked": True})


@bp.get("/skills")
@operation("Skill plugins, the keys each requires, which are set, and broken plugins with the reason",
           response=schemas.skills_schema, errors=(403,))
def list_skills():
    return _data(schemas.skills_schema, service.skills_report(_caller()))


@bp.get("/openapi.json")
@public
@operation("This document", public=True)
def openapi_document():
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = build_spec(current_app)
    return jsonify(current_app.extensions["openapi"])


@health_bp.get("/healthz")
@public
@operation("Health: the database answers and the master key opens it", response=schemas.HealthSchema(),
           envelope=False, errors=(503,), public=True)
def healthz():
    if not bootstrap.key_check_passes(runtime().store, runtime().keyring):
        return jsonify({"status": "unavailable"}), 503
    return jsonify({"status": "ok"})
