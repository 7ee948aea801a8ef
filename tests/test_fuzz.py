"""Property-based fuzzing of the REST API (hardening issue) against a live `secrets-hub serve`.

The OpenAPI 3.1 document the server publishes must validate, and schemathesis (v4), generating
requests from that document alone, must find no 5xx and no response that breaks the document, for
every operation it lists: positive data (what the document allows) and negative data (what it
forbids), always under a valid admin Bearer token, since failed authentications are rate limited
per address. The generated path parameters are mixed with keys that exist (so updates, restores
and deletes really happen) and with Unicode look-alikes and NUL bytes. A few secrets hold a
distinctive canary value from the start: no list response (secrets, versions, audit, tokens,
skills) and no response other than an explicit read of a value may ever contain it.

Failures are collected, not raised inside Hypothesis: the server's state changes with every
request, so replaying a failing example need not fail again, and each failure is reported with the
curl command that reproduces it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from conftest import bearer

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
EXAMPLES = 30  # per operation and generation mode: about 700 requests, well under a minute per backend
CANARY = f"canary-fuzz-{uuid.uuid4().hex}"
CANARY_KEYS = ["CANARY_ALPHA", "CANARY_BETA", "CANARY_GAMMA"]
DISPOSABLE_KEYS = ["DISPOSABLE_ONE", "DISPOSABLE_TWO", "DISPOSABLE_THREE"]
# What a path segment may carry that a naive lookup would mistake for a real key, or a database refuse.
HOSTILE_SEGMENTS = ["\x00", "A\x00B", "CANARY_ALPHA\x00", "\u0410PI_KEY", "\uff21PI_KEY", "CANARY\u200d_ALPHA",
                    "CANARY_ALPH\u0410", "\U0001f511", "\ufeffCANARY_ALPHA", "canary_alpha", " CANARY_ALPHA"]
# Every list the API has: none may ever carry a value.
LIST_PATHS = {"/api/secrets", "/api/secrets/{key}/versions", "/api/audit", "/api/tokens", "/api/skills"}
EXPLICIT_READ = ("GET", "/api/secrets/{key}")


def document_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item
            if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}}


class Recorder:
    """Every request the run made, what it answered, and every broken promise, with a curl to reproduce it."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.session = requests.Session()
        self.statuses: dict[tuple[str, str], list[int]] = {}
        self.failures: list[str] = []

    def run(self, case: Any, label: str) -> None:
        operation = (case.method.upper(), case.operation.path)
        response = case.call(base_url=self.base, session=self.session, timeout=30)
        self.statuses.setdefault(operation, []).append(response.status_code)
        problems = []
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as failures:  # every check that failed, with schemathesis's own explanation
            problems.append(str(failures).strip())
        if any(value in HOSTILE_SEGMENTS for value in case.path_parameters.values()) and not (
                400 <= response.status_code < 500):
            problems.append(f"a look-alike or NUL path parameter was not refused with a 4xx: {response.text[:300]}")
        if CANARY in response.text and not (operation == EXPLICIT_READ and response.status_code == 200):
            problems.append(f"the canary value is in the response body: {response.text[:300]}")
        if self.token in response.text:
            problems.append("the admin token is in the response body")
        if problems:
            curl = case.as_curl_command(headers=dict(response.request.headers))
            self.failures.append(f"[{label}] {operation[0]} {operation[1]} -> {response.status_code}\n"
                                 + "\n".join(problems) + f"\nReproduce with: {curl}")


@pytest.fixture
def fuzz_target(live_server: str, make_token) -> dict[str, Any]:
    """The live server with canary secrets, disposable secrets and disposable tokens; an admin token named
    so that no generated name can revoke it."""
    admin_name = f"fuzz-admin-{uuid.uuid4().hex}"
    token = make_token("secrets:read", "secrets:write", "admin", name=admin_name)
    for name in ("victim-0", "victim-1"):  # tokens the run may revoke
        make_token("mcp", name=name)
    for key in CANARY_KEYS + DISPOSABLE_KEYS:
        response = requests.post(f"{live_server}/api/secrets", json={"key": key, "value": CANARY},
                                 headers=bearer(token), timeout=30)
        assert response.status_code == 200, response.text
    return {"base": live_server, "token": token, "admin_name": admin_name}


def smoke_cases(schema: Any, auth: dict[str, str]) -> list[Any]:
    """One request per operation that must succeed: the checks see every success shape at least once."""
    wanted = {
        ("GET", "/api/audit"): {"query": {"limit": 5}},
        ("GET", "/api/secrets"): {},
        ("POST", "/api/secrets"): {"body": {"key": "FUZZ_SMOKE", "value": "smoke-value", "description": None}},
        ("DELETE", "/api/secrets/{key}"): {"path_parameters": {"key": DISPOSABLE_KEYS[0]}},
        ("GET", "/api/secrets/{key}"): {"path_parameters": {"key": CANARY_KEYS[0]}, "query": {"version": 1}},
        ("PUT", "/api/secrets/{key}"): {"path_parameters": {"key": CANARY_KEYS[1]}, "body": {"description": "d"}},
        ("POST", "/api/secrets/{key}/restore"): {"path_parameters": {"key": CANARY_KEYS[0]}, "body": {"version": 1}},
        ("GET", "/api/secrets/{key}/versions"): {"path_parameters": {"key": CANARY_KEYS[0]}},
        ("GET", "/api/skills"): {},
        ("GET", "/api/tokens"): {},
        ("POST", "/api/tokens"): {"body": {"name": "fuzz-smoke", "scopes": ["mcp"]}},
        ("DELETE", "/api/tokens/{name}"): {"path_parameters": {"name": "victim-0"}},
        ("GET", "/healthz"): {},
        ("GET", "/api/openapi.json"): {},
    }
    cases = []
    for result in schema.get_all_operations():
        operation = result.ok()
        extra = wanted.get((operation.method.upper(), operation.path))
        assert extra is not None, f"no smoke case for {operation.label}: a new operation? add one"
        cases.append(operation.Case(headers=dict(auth), **extra))
    return cases


def strategies(operation: Any, mode: GenerationMode, auth: dict[str, str]) -> Any:
    """Generated cases, plus the same with path parameters that exist or look like they do."""
    params = re.findall(r"{(\w+)}", operation.path)
    branches = [operation.as_strategy(generation_mode=mode, headers=auth)]
    for name in params:
        if name == "key":
            existing = DISPOSABLE_KEYS[1:] if operation.method.upper() == "DELETE" else CANARY_KEYS
        else:
            existing = ["victim-1", "fuzz-smoke"]
        for value in existing + HOSTILE_SEGMENTS:
            branches.append(operation.as_strategy(generation_mode=mode, headers=auth, path_parameters={name: value}))
    return st.one_of(branches)


def has_negative_data(operation: Any) -> bool:
    """Path parameters are plain strings and cannot be made invalid; bodies, queries and headers can."""
    definition = operation.definition.raw
    parameters = definition.get("parameters", [])
    return "requestBody" in definition or any(p.get("in") in ("query", "header") for p in parameters)


def fuzz(operation: Any, mode: GenerationMode, auth: dict[str, str], recorder: Recorder, admin_name: str,
         fuzzed: set[tuple[str, str]]) -> None:
    """EXAMPLES generated requests to one operation in one generation mode."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategies(operation, mode, auth))
    def run(case: Any) -> None:
        # The one name that would lock the run out: every other token may be revoked.
        assume(case.path_parameters.get("name") != admin_name)
        recorder.run(case, mode.value)
        fuzzed.add((case.method.upper(), case.operation.path))

    run()


def test_fuzzing_every_operation_finds_no_server_error_and_no_broken_promise(fuzz_target, tmp_path):
    base, token = fuzz_target["base"], fuzz_target["token"]
    auth = bearer(token)

    document = requests.get(f"{base}/api/openapi.json", timeout=30).json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert CANARY not in str(document) and token not in str(document)
    documented = document_operations(document)

    # From the document itself: loaded from its URL, schemathesis would leave that one operation out.
    schema = schemathesis.openapi.from_dict(document)
    recorder = Recorder(base, token)
    for case in smoke_cases(schema, auth):
        recorder.run(case, "smoke")
    assert recorder.failures == [], "\n\n".join(recorder.failures)
    smoke_statuses = {operation: list(statuses) for operation, statuses in recorder.statuses.items()}
    assert smoke_statuses == {operation: [200] for operation in documented}, smoke_statuses

    fuzzed: set[tuple[str, str]] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_negative_data(operation) else []):
            fuzz(operation, mode, auth, recorder, fuzz_target["admin_name"], fuzzed)

    assert recorder.failures == [], f"{len(recorder.failures)} broken promises:\n\n" + "\n\n".join(
        recorder.failures[:20])
    assert fuzzed == documented
    # The admin token survived (so every answer above was an authenticated one) and nothing was rate limited.
    every_status = [status for statuses in recorder.statuses.values() for status in statuses]
    assert 401 not in every_status and 429 not in every_status
    assert requests.get(f"{base}/api/tokens", headers=auth, timeout=30).status_code == 200

    # After everything: the lists still hold no value, and the server never logged a traceback or the canary.
    for path in ["/api/secrets", "/api/audit?limit=1000", "/api/tokens", "/api/skills",
                 *(f"/api/secrets/{key}/versions" for key in CANARY_KEYS)]:
        response = requests.get(base + path, headers=auth, timeout=30)
        assert response.status_code == 200, (path, response.text)
        assert CANARY not in response.text and token not in response.text, path
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and CANARY not in log and token not in log, log[-3000:]
