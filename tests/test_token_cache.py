"""`auth.cached_caller`, the token check the MCP server's event loop makes without handing it to a thread.

It must answer exactly what `authenticate_token` answers, or nothing at all: whenever the answer takes a
database lookup, a refusal's audit event or a `last_used_at` update, it leaves the check to
`authenticate_token`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from conftest import bearer
from secrets_hub import audit, auth
from secrets_hub.crypto import hash_token
from secrets_hub.errors import AuthenticationError


@pytest.fixture
def agent(make_token) -> str:
    return make_token("mcp", name="agent", allow=["GITHUB_*"], expires_in=timedelta(days=1))


def later(monkeypatch, by: timedelta) -> None:
    now = auth.utcnow()
    monkeypatch.setattr(auth, "utcnow", lambda: now + by)


def test_a_token_looked_up_moments_ago_is_answered_as_authenticate_token_answers(app, agent):
    with app.app_context():
        assert auth.cached_caller(agent, "mcp", "10.0.0.7") is None  # never looked up in this process
        looked_up = auth.authenticate_token(agent, "mcp", "10.0.0.7")
        assert auth.cached_caller(agent, "mcp", "10.0.0.7") == looked_up
        assert looked_up == auth.Caller(actor="agent", channel="mcp", scopes=frozenset({"mcp"}), allow=("GITHUB_*",),
                                        remote_addr="10.0.0.7")


def test_refusals_are_left_to_authenticate_token_which_audits_them(app, agent):
    with app.app_context():
        auth.authenticate_token(agent, "mcp", None)
        before = audit.list_events(limit=1000)
        for refused in ("shub_unknown", "not-a-token", agent + "x", "shub_" + "a" * 300):
            assert auth.cached_caller(refused, "mcp", None) is None
        assert audit.list_events(limit=1000) == before


def test_a_revoked_token_is_not_answered_from_the_cache(app, client, admin_token, agent):
    with app.app_context():
        auth.authenticate_token(agent, "mcp", None)
    assert client.delete("/api/tokens/agent", headers=bearer(admin_token)).status_code == 200
    with app.app_context():
        assert auth.cached_caller(agent, "mcp", None) is None
        with pytest.raises(AuthenticationError):
            auth.authenticate_token(agent, "mcp", None)


def test_a_lapsed_cache_entry_is_not_used(app, agent, monkeypatch):
    monkeypatch.setattr(auth, "TOKEN_CACHE_SECONDS", 0)
    with app.app_context():
        auth.authenticate_token(agent, "mcp", None)
        assert auth.cached_caller(agent, "mcp", None) is None


def test_a_token_that_expired_while_cached_is_not_answered(app, agent, monkeypatch):
    with app.app_context():
        auth.authenticate_token(agent, "mcp", None)
        monkeypatch.setattr(auth, "LAST_USED_PRECISION", timedelta(days=30))  # so only the expiry is due
        later(monkeypatch, timedelta(days=1, seconds=1))
        assert auth.cached_caller(agent, "mcp", None) is None
        with pytest.raises(AuthenticationError):
            auth.authenticate_token(agent, "mcp", None)


def last_used(client, admin_token: str) -> str | None:
    tokens = client.get("/api/tokens", headers=bearer(admin_token)).get_json()["data"]
    return next(token["lastUsedAt"] for token in tokens if token["name"] == "agent")


def test_a_due_last_used_update_goes_through_authenticate_token(app, client, admin_token, agent, monkeypatch):
    with app.app_context():
        auth.authenticate_token(agent, "mcp", None)
    first_use = last_used(client, admin_token)
    assert first_use is not None
    with app.app_context():
        later(monkeypatch, auth.LAST_USED_PRECISION)
        assert auth.cached_caller(agent, "mcp", None) is None
        auth.authenticate_token(agent, "mcp", None)  # records the use, and caches the record it wrote
        assert auth.cached_caller(agent, "mcp", None) is not None
    assert last_used(client, admin_token) > first_use


def test_recording_a_use_keeps_the_cache_entry_s_expiry(app, agent, monkeypatch):
    """Otherwise each recorded use would serve a token revoked elsewhere for another TOKEN_CACHE_SECONDS."""
    with app.app_context():
        cache = app.extensions["secrets_hub"].token_cache
        auth.authenticate_token(agent, "mcp", None)  # looked up, and its first use recorded
        expiry, first = cache[hash_token(agent)]
        later(monkeypatch, auth.LAST_USED_PRECISION)
        auth.authenticate_token(agent, "mcp", None)  # a use recorded again
        assert cache[hash_token(agent)][0] == expiry
        assert cache[hash_token(agent)][1].last_used_at > first.last_used_at
