"""The OpenAPI 3.1 document, generated from the routes and the marshmallow schemas that validate them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, fields

from secrets_hub import __version__, schemas

ERROR_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Authentication required",
    403: "Missing scope, or key outside the token's allowed patterns",
    404: "Not found",
    409: "Conflict",
    413: "Value or body too large",
    415: "Body is not declared as JSON",
    429: "Too many failed authentications from this address",
    500: "Integrity check failed",
    503: "Database unavailable",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    response: Schema | None = None
    body: Schema | None = None
    errors: tuple[int, ...] = ()
    query: tuple[dict[str, Any], ...] = ()
    headers: tuple[dict[str, Any], ...] = ()
    response_headers: dict[str, Any] = field(default_factory=dict)
    envelope: bool = True
    public: bool = False


def operation(summary: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Describe a view for the OpenAPI document, next to the view itself."""

    def decorate(view: Callable) -> Callable:
        view.openapi = Operation(summary, **kwargs)
        return view

    return decorate


def _envelope(schema: Schema) -> Schema:
    """`{"data": <schema>}`, the success shape of every API response."""
    name = type(schema).__name__.removesuffix("Schema")
    nested = fields.List(fields.Nested(type(schema))) if schema.many else fields.Nested(type(schema))
    envelope = Schema.from_dict({"data": nested}, name=f"{name}{'List' if schema.many else ''}Envelope")
    return envelope()


def _path_of(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def build_spec(app: Flask) -> dict[str, Any]:
    spec = APISpec(
        title="secrets-hub",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": "Encrypted secrets for apps, scripts and AI agents."},
    )
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("sessionCookie", {"type": "apiKey", "in": "cookie", "name": "session"})
    spec.components.schema("Error", schema=schemas.ErrorSchema)

    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        doc: Operation | None = getattr(view, "openapi", None)
        if doc is None:
            continue
        path = _path_of(rule.rule)
        parameters = [
            {"name": arg, "in": "path", "required": True, "schema": {"type": "string"}} for arg in sorted(rule.arguments)
        ]
        parameters += [{"in": "query", **q} for q in doc.query] + [{"in": "header", **h} for h in doc.headers]
        success: dict[str, Any] = {"description": "OK"}
        if doc.response is not None:
            body = _envelope(doc.response) if doc.envelope else doc.response
            success["content"] = {"application/json": {"schema": body}}
        if doc.response_headers:
            success["headers"] = doc.response_headers
        responses: dict[str, Any] = {"200": success}
        # What any authenticated route, and any route with a body, may answer besides its own errors.
        implied = (() if doc.public else (401, 429, 503)) + ((400, 413, 415) if doc.body is not None else ())
        for status in sorted({*doc.errors, *implied}):
            responses[str(status)] = {
                "description": ERROR_DESCRIPTIONS[status],
                "content": {"application/json": {"schema": "Error"}},
            }
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            entry: dict[str, Any] = {"summary": doc.summary, "operationId": f"{method.lower()}_{rule.endpoint.replace('.', '_')}",
                                     "responses": responses}
            if parameters:
                entry["parameters"] = parameters
            if doc.body is not None:
                entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": doc.body}}}
            entry["security"] = [] if doc.public else [{"bearerAuth": []}, {"sessionCookie": []}]
            paths.setdefault(path, {})[method.lower()] = entry
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
