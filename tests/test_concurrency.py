"""Concurrent writers against a real `secrets-hub serve`, on SQLite and PostgreSQL.

Threads start together at a barrier; nothing here depends on timing, only on outcomes: no 5xx, no lost
update, no duplicate or missing version number.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
import requests

from conftest import bearer

BARRIER_TIMEOUT = 60
REQUEST_TIMEOUT = 120


@pytest.fixture
def roomy_config(config: dict[str, Any]) -> dict[str, Any]:
    """Keep every version the test makes, so the whole history can be checked."""
    config["SECRETS_HUB_KEEP_VERSIONS"] = "200"
    return config


@pytest.fixture
def server(roomy_config: dict[str, Any], request) -> str:
    """The live server, started only after the settings above are in place."""
    return request.getfixturevalue("live_server")


@pytest.fixture
def token(server: str, run_cli) -> str:
    """A read/write token made by the CLI, as an operator would, on the server's database."""
    result = run_cli("token", "create", "--name", "t", "--scope", "secrets:read", "--scope", "secrets:write")
    assert result.returncode == 0, result.stderr
    raw = result.stdout.strip()
    assert raw.startswith("shub_") and "\n" not in raw
    return raw


def concurrently(base: str, count: int,
                 send: Callable[[requests.Session, int], requests.Response]) -> list[requests.Response]:
    """Run send(session, 0..count-1) on `count` threads released together by a barrier; responses in order."""
    barrier = threading.Barrier(count)

    def run(index: int) -> requests.Response:
        with requests.Session() as session:
            # Open the connection first, so that the requests themselves leave together.
            assert session.get(f"{base}/healthz", timeout=REQUEST_TIMEOUT).status_code == 200
            barrier.wait(timeout=BARRIER_TIMEOUT)
            return send(session, index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def statuses(responses: list[requests.Response]) -> list[int]:
    return [response.status_code for response in responses]


def versions_of(base: str, token: str, key: str) -> list[dict[str, Any]]:
    response = requests.get(f"{base}/api/secrets/{key}/versions", headers=bearer(token), timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def read(base: str, token: str, key: str, version: int | None = None) -> requests.Response:
    params = {} if version is None else {"version": str(version)}
    return requests.get(f"{base}/api/secrets/{key}", params=params, headers=bearer(token), timeout=REQUEST_TIMEOUT)


def test_concurrent_writers(server: str, token: str):
    key = "RACE_KEY"
    headers = bearer(token)

    # 1. Forty clients create the same key at once: exactly one wins, the rest get 409.
    created = concurrently(server, 40, lambda session, i: session.post(
        f"{server}/api/secrets", json={"key": key, "value": f"create-{i}"}, headers=headers, timeout=REQUEST_TIMEOUT))
    codes = statuses(created)
    assert all(code < 500 for code in codes), [(r.status_code, r.text) for r in created if r.status_code >= 500]
    assert codes.count(200) == 1, codes
    assert codes.count(409) == 39, codes
    for response in created:
        if response.status_code == 409:
            assert response.json() == {"statusCode": 409, "message": f'Secret with key "{key}" already exists'}
    winner = codes.index(200)
    assert created[winner].json()["data"]["key"] == key
    current = read(server, token, key)
    assert current.status_code == 200
    assert current.json() == {"data": {"key": key, "value": f"create-{winner}"}}
    assert [v["version"] for v in versions_of(server, token, key)] == [1]

    # 2. A hundred concurrent updates with distinct values: all succeed, each becomes exactly one version.
    values = [f"update-{i:03d}" for i in range(100)]
    updated = concurrently(server, 100, lambda session, i: session.put(
        f"{server}/api/secrets/{key}", json={"value": values[i]}, headers=headers, timeout=REQUEST_TIMEOUT))
    assert statuses(updated) == [200] * 100, [(r.status_code, r.text) for r in updated if r.status_code != 200]
    assert all(response.json()["data"]["key"] == key for response in updated)

    history = versions_of(server, token, key)
    assert [v["version"] for v in history] == list(range(101, 0, -1))
    assert [v["current"] for v in history] == [True] + [False] * 100

    newest = read(server, token, key, 101)
    assert newest.status_code == 200
    current = read(server, token, key)
    assert current.status_code == 200
    assert current.headers["ETag"] == '"101"'
    assert current.json()["data"]["value"] == newest.json()["data"]["value"]
    assert current.json()["data"]["value"] in values

    # No lost update: every value sent is exactly one of versions 2..101.
    stored = []
    for version in range(2, 102):
        response = read(server, token, key, version)
        assert response.status_code == 200, response.text
        stored.append(response.json()["data"]["value"])
    assert sorted(stored) == values
    assert read(server, token, key, 1).json()["data"]["value"] == f"create-{winner}"

    # 3. Twenty check-and-set updates all based on version 101: exactly one wins.
    based_on = current.headers["ETag"]
    cas = concurrently(server, 20, lambda session, i: session.put(
        f"{server}/api/secrets/{key}", json={"value": f"cas-{i}"}, headers={**headers, "If-Match": based_on},
        timeout=REQUEST_TIMEOUT))
    codes = statuses(cas)
    assert codes.count(200) == 1, codes
    assert codes.count(409) == 19, codes
    for response in cas:
        if response.status_code == 409:
            assert response.json() == {"statusCode": 409, "message": f'Secret "{key}" changed: current version is 102'}
    cas_winner = codes.index(200)
    after = read(server, token, key)
    assert after.json() == {"data": {"key": key, "value": f"cas-{cas_winner}"}}
    assert after.headers["ETag"] == '"102"'
    assert [v["version"] for v in versions_of(server, token, key)] == list(range(102, 0, -1))


def test_concurrent_creates_of_different_keys_all_succeed(server: str, token: str):
    headers = bearer(token)
    created = concurrently(server, 40, lambda session, i: session.post(
        f"{server}/api/secrets", json={"key": f"KEY_{i:02d}", "value": f"value-{i}"}, headers=headers,
        timeout=REQUEST_TIMEOUT))
    assert statuses(created) == [200] * 40, [(r.status_code, r.text) for r in created if r.status_code != 200]
    listing = requests.get(f"{server}/api/secrets", headers=headers, timeout=REQUEST_TIMEOUT)
    assert [item["key"] for item in listing.json()["data"]] == [f"KEY_{i:02d}" for i in range(40)]
    for i in (0, 17, 39):
        assert read(server, token, f"KEY_{i:02d}").json()["data"]["value"] == f"value-{i}"
