"""Behind a reverse proxy (SECRETS_HUB_PROXY_HOPS): the client's address comes from X-Forwarded-For,
for the audit log and the per-address limits; with no proxy configured the header is ignored."""

from __future__ import annotations

import pytest

from conftest import bearer
from secrets_hub import bootstrap
from secrets_hub.app import create_app
from secrets_hub.db import db

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _audited_addresses(hops: str, config) -> list[str | None]:
    bootstrap.initialize(config)
    app = create_app({**config, "TESTING": True, "SECRETS_HUB_PROXY_HOPS": hops})
    try:
        client = app.test_client()
        token = _admin_token(app)
        forwarded = {**bearer(token), "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        assert client.get("/api/secrets/MISSING_KEY", headers=forwarded).status_code == 404
        events = client.get("/api/audit?key=MISSING_KEY", headers=bearer(token)).get_json()["data"]
        return [event["remoteAddr"] for event in events]
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def _admin_token(app) -> str:
    from secrets_hub import tokens
    from secrets_hub.auth import operator

    with app.app_context():
        return tokens.create_token(operator("test"), "proxy-admin", ["admin", "secrets:read"], None, None)["token"]


def test_one_proxy_hop_takes_the_client_address_from_x_forwarded_for(config):
    assert _audited_addresses("1", config) == ["203.0.113.7"]


def test_without_proxy_hops_x_forwarded_for_is_ignored(config):
    assert _audited_addresses("0", config) == ["127.0.0.1"]
