"""Server-rendered pages through the Flask test client: setup, sign-in limits, cookies, password change.

The browser tests (test_browser.py) drive the same pages in Chromium; these pin down the HTTP-level
details a browser hides: status codes, cookie flags, the Redis-backed limiter, audit rows.
"""

from __future__ import annotations

import re
import uuid

import pytest

from conftest import bearer
from secrets_hub import users
from secrets_hub.app import create_app
from secrets_hub.db import db

REDIS_URL = "redis://127.0.0.1:6379"
PASSWORD = "correct horse battery"


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def form_post(client, path: str, **fields: str):
    token = csrf_from(client.get(path if path != "/settings/password" else "/settings?tab=account").get_data(as_text=True))
    return client.post(path, data={"csrf_token": token, **fields})


@pytest.fixture
def admin(app) -> str:
    with app.app_context():
        users.create_user(None, "admin@example.com", PASSWORD, is_admin=True)
    return "admin@example.com"


def test_first_run_leads_to_setup_which_then_disappears(client):
    assert client.get("/").headers["Location"] == "/setup"
    response = form_post(client, "/setup", email="first@example.com", password=PASSWORD, confirm=PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/settings"
    assert client.get("/settings").status_code == 200
    assert client.get("/setup").status_code == 404
    assert client.get("/").headers["Location"] == "/settings"


def test_setup_refuses_mismatched_passwords(client):
    response = form_post(client, "/setup", email="first@example.com", password=PASSWORD, confirm="something else")
    assert response.status_code == 400
    assert 'role="alert"' in response.get_data(as_text=True)
    assert client.get("/setup").status_code == 200  # still no user


def test_settings_requires_sign_in(client, admin):
    response = client.get("/settings")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert client.get("/").headers["Location"] == "/login"


def test_every_page_carries_the_csrf_meta_tag_and_forms_their_token(client, admin):
    for path in ("/login",):
        html = client.get(path).get_data(as_text=True)
        assert re.search(r'<meta name="csrf-token" content="[^"]+">', html)
        assert html.count('name="csrf_token"') == html.count("<form")


def test_a_form_without_its_csrf_token_is_refused(client, admin):
    response = client.post("/login", data={"email": admin, "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/settings").status_code == 302  # not signed in


def test_session_cookie_is_httponly_and_lax_and_secure_over_https(client, admin):
    response = form_post(client, "/login", email=admin, password=PASSWORD)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie

    https = client.application.test_client()
    page = https.get("/login", base_url="https://localhost")
    response = https.post("/login", base_url="https://localhost",
                          data={"csrf_token": csrf_from(page.get_data(as_text=True)), "email": admin,
                                "password": PASSWORD}, headers={"Referer": "https://localhost/login"})
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


def _fail_logins(client, email: str, count: int) -> list[int]:
    return [form_post(client, "/login", email=email, password="wrong password").status_code for _ in range(count)]


def test_failed_sign_ins_are_limited_per_address_and_email(client, admin, make_token):
    assert _fail_logins(client, admin, 6) == [401] * 5 + [429]
    refused = form_post(client, "/login", email=admin, password=PASSWORD)
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.get_data(as_text=True)
    # Another account from the same address is not locked out by the first one's failures.
    assert _fail_logins(client, "other@example.com", 1) == [401]

    events = client.get("/api/audit?limit=20", headers=bearer(make_token("admin"))).get_json()["data"]
    logins = [e for e in events if e["action"] == "login"]
    assert {e["outcome"] for e in logins} == {"denied"}
    assert all(e["channel"] == "ui" and e["key"] is None for e in logins)


def test_a_successful_sign_in_does_not_count_against_the_limit(client, admin):
    for _ in range(6):
        assert form_post(client, "/login", email=admin, password=PASSWORD).status_code == 302
        client.post("/logout", data={"csrf_token": csrf_from(client.get("/settings").get_data(as_text=True))})


def test_the_limit_is_shared_through_redis_across_app_instances(app, config, admin):
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis at {REDIS_URL} does not answer: {type(error).__name__}")
    email = f"{uuid.uuid4().hex[:8]}@example.com"  # a fresh key in the shared store
    shared = {**config, "SECRETS_HUB_RATELIMIT_STORAGE": REDIS_URL, "TESTING": True}
    apps = [create_app(shared), create_app(shared)]
    try:
        assert _fail_logins(apps[0].test_client(), email, 3) == [401] * 3
        assert _fail_logins(apps[1].test_client(), email, 3) == [401, 401, 429]
    finally:
        for instance in apps:
            with instance.app_context():
                db.engine.dispose()


def test_password_change_ends_other_sessions_and_is_audited(app, admin, make_token):
    mine, other = app.test_client(), app.test_client()
    for client in (mine, other):
        assert form_post(client, "/login", email=admin, password=PASSWORD).status_code == 302

    wrong = form_post(mine, "/settings/password", current_password="nope", new_password="new password 1",
                      confirm="new password 1")
    assert wrong.status_code == 302
    assert "Current password is incorrect" in mine.get("/settings?tab=account").get_data(as_text=True)

    changed = form_post(mine, "/settings/password", current_password=PASSWORD, new_password="new password 1",
                        confirm="new password 1")
    assert changed.status_code == 302
    assert "Password changed" in mine.get("/settings?tab=account").get_data(as_text=True)
    assert mine.get("/settings").status_code == 200
    assert other.get("/settings").status_code == 302  # the old session no longer matches the password

    fresh = app.test_client()
    assert form_post(fresh, "/login", email=admin, password=PASSWORD).status_code == 401
    assert form_post(fresh, "/login", email=admin, password="new password 1").status_code == 302

    events = mine.get("/api/audit?key=admin@example.com", headers=bearer(make_token("admin"))).get_json()["data"]
    assert [(e["action"], e["outcome"]) for e in events if e["action"] == "user.password"] == [
        ("user.password", "ok"), ("user.password", "denied")]


def test_app_tab_shows_facts_but_never_the_master_key(client, admin, config):
    form_post(client, "/login", email=admin, password=PASSWORD)
    html = client.get("/settings?tab=app").get_data(as_text=True)
    assert "Master key id" in html and "passes" in html
    assert config["SECRETS_HUB_MASTER_KEY"] not in html
