"""The settings UI in a real browser (SPEC 9, issue 3).

Playwright drives Debian's Chromium, headless, against `secrets-hub serve` started as a real server
(the `live_server` fixture). Every test gets its own server and its own empty SQLite database; the
first user is made through `/setup`, the way a person would. Secrets are seeded, and results are
checked, over the REST API with a token minted in-process (`make_token`) on the same database.

Selectors are the names SPEC 9 promises (visible text, input names, `role="alert"`, `<dialog>`),
plus `tr[data-key]` / `tr[data-name]` for table rows.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import requests

from conftest import CHROMIUM, MASTER_KEY, bearer

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
expect = sync_api.expect

if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)

EMAIL = "admin@example.com"
PASSWORD = "correct horse battery staple"
TABS = ["Account", "Secrets", "Tokens", "Skills", "Audit", "App"]
TIMEOUT_MS = 10_000


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:
    """Browser tests exercise the UI, not the storage: SQLite only."""
    return request.param


@pytest.fixture
def max_value_bytes() -> str:
    """Override with @pytest.mark.parametrize("max_value_bytes", ["16"]) for a small value limit."""
    return "65536"


@pytest.fixture
def config(config: dict[str, Any], max_value_bytes: str) -> dict[str, Any]:
    config["SECRETS_HUB_MAX_VALUE_BYTES"] = max_value_bytes
    return config


@pytest.fixture
def seen() -> dict[str, list]:
    """What the page did: every request (method, url) and every uncaught script error."""
    return {"requests": [], "errors": []}


@pytest.fixture
def context(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context, seen) -> Any:
    page = context.new_page()
    page.on("request", lambda r: seen["requests"].append((r.method, r.url)))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    return page


def submit_setup(page, base: str, email: str = EMAIL, password: str = PASSWORD, confirm: str | None = None) -> None:
    page.locator("input[name=email]").fill(email)
    page.locator("input[name=password]").fill(password)
    page.locator("input[name=confirm]").fill(password if confirm is None else confirm)
    page.get_by_role("button", name="Create account", exact=True).click()


@pytest.fixture
def signed_in(page, live_server: str) -> Any:
    """The page, after creating the first account through /setup: signed in on /settings."""
    page.goto(live_server + "/")
    expect(page).to_have_url(live_server + "/setup")
    submit_setup(page, live_server)
    expect(page).to_have_url(re.compile(re.escape(live_server) + r"/settings(\?.*)?$"))
    return page


class Api:
    """REST calls with an admin token, to seed and to check what the UI did."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = bearer(token)

    def create(self, key: str, value: str, description: str | None = None) -> None:
        body = {"key": key, "value": value, **({"description": description} if description is not None else {})}
        response = requests.post(f"{self.base}/api/secrets", json=body, headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text

    def update(self, key: str, value: str) -> None:
        response = requests.put(f"{self.base}/api/secrets/{key}", json={"value": value}, headers=self.headers,
                                timeout=10)
        assert response.status_code == 200, response.text

    def secret(self, key: str) -> dict | None:
        """{"key", "value"} of the current version, or None when there is no such secret."""
        response = requests.get(f"{self.base}/api/secrets/{key}", headers=self.headers, timeout=10)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def description(self, key: str) -> str | None:
        response = requests.get(f"{self.base}/api/secrets", headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text
        return next(row["description"] for row in response.json()["data"] if row["key"] == key)


@pytest.fixture
def api(live_server: str, make_token: Callable[..., str]) -> Api:
    return Api(live_server, make_token("secrets:read", "secrets:write", "admin", name="test-admin"))


# --------------------------------------------------------------------------- helpers


def tab(page, name: str):
    """The tab control with exactly this visible text (a link, or a button / role=tab)."""
    return (page.get_by_role("link", name=name, exact=True)
            .or_(page.get_by_role("tab", name=name, exact=True))
            .or_(page.get_by_role("button", name=name, exact=True))).first


def open_dialog(page):
    return page.locator("dialog[open]")


def alert_in(scope, text: str):
    return scope.locator("[role=alert]").filter(has_text=text)


def row(page, key: str):
    return page.locator(f'tr[data-key="{key}"]')


def is_write(response) -> bool:
    return response.request.method in ("POST", "PUT", "PATCH", "DELETE")


def open_secrets(page, base: str) -> None:
    page.goto(base + "/settings?tab=secrets")
    expect(page.get_by_role("button", name="Add secret", exact=True)).to_be_visible()


def fill_secret_dialog(page, key: str | None, value: str, description: str | None = None):
    dialog = open_dialog(page)
    expect(dialog).to_be_visible()
    if key is not None:
        dialog.locator("input[name=key]").fill(key)
    dialog.locator("[name=value]").fill(value)
    if description is not None:
        dialog.locator("[name=description]").fill(description)
    return dialog


def login(page, base: str, email: str, password: str) -> int:
    """Submit /login and return the status of the POST."""
    page.locator("input[name=email]").fill(email)
    page.locator("input[name=password]").fill(password)
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.startswith(base + "/login")) as info:
        page.get_by_role("button", name="Sign in", exact=True).click()
    return info.value.status


def sign_out(page, base: str) -> None:
    page.goto(base + "/settings")
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(re.compile(re.escape(base) + r"/login"))


# --------------------------------------------------------------------------- first run, login, logout


def test_first_run_setup_creates_the_admin_and_then_disappears(page, live_server):
    page.goto(live_server + "/")
    expect(page).to_have_url(live_server + "/setup")
    expect(page.locator('meta[name="csrf-token"]')).to_have_attribute("content", re.compile(r".+"))

    submit_setup(page, live_server, confirm="something else entirely")  # the confirmation must match
    expect(page).to_have_url(live_server + "/setup")
    expect(page.get_by_role("alert")).to_be_visible()

    submit_setup(page, live_server)
    expect(page).to_have_url(re.compile(re.escape(live_server) + r"/settings(\?.*)?$"))
    expect(page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()

    assert page.goto(live_server + "/setup").status == 404
    page.goto(live_server + "/")
    expect(page).to_have_url(re.compile(re.escape(live_server) + r"/settings(\?.*)?$"))


def test_login_refuses_a_bad_password_then_accepts_the_right_one(signed_in, live_server):
    page = signed_in
    sign_out(page, live_server)

    assert login(page, live_server, EMAIL, "not the password") == 401
    expect(page.get_by_role("alert")).to_contain_text("Invalid email or password")
    assert login(page, live_server, "nobody@example.com", PASSWORD) == 401
    expect(page.get_by_role("alert")).to_contain_text("Invalid email or password")

    assert login(page, live_server, EMAIL, PASSWORD) in (302, 303)
    expect(page).to_have_url(re.compile(re.escape(live_server) + r"/settings(\?.*)?$"))
    expect(page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()


def test_login_is_rate_limited_per_address_and_email(signed_in, live_server):
    page = signed_in
    sign_out(page, live_server)

    for _ in range(5):
        assert login(page, live_server, EMAIL, "wrong password") == 401
    assert login(page, live_server, EMAIL, "wrong password") == 429
    expect(page.get_by_role("alert")).to_be_visible()
    # The limit is for this address *and* this email: another email is still answered normally.
    assert login(page, live_server, "someone-else@example.com", "wrong password") == 401
    expect(page.get_by_role("alert")).to_contain_text("Invalid email or password")


def test_sign_out_ends_the_session(signed_in, live_server):
    page = signed_in
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(re.compile(re.escape(live_server) + r"/login"))

    page.goto(live_server + "/settings?tab=secrets")
    expect(page).to_have_url(re.compile(re.escape(live_server) + r"/login"))
    page.goto(live_server + "/")
    expect(page).to_have_url(re.compile(re.escape(live_server) + r"/login"))
    assert page.goto(live_server + "/setup").status == 404


# --------------------------------------------------------------------------- tabs


def test_tabs_open_directly_and_only_the_active_panel_shows(signed_in, live_server):
    page = signed_in
    for name in TABS:
        expect(tab(page, name)).to_be_visible()

    add = page.get_by_role("button", name="Add secret", exact=True)
    create_token = page.get_by_role("button", name="Create token", exact=True)
    apply = page.get_by_role("button", name="Apply", exact=True)

    page.goto(live_server + "/settings")  # Secrets is the default
    expect(add).to_be_visible()
    expect(create_token).not_to_be_visible()
    expect(apply).not_to_be_visible()

    page.goto(live_server + "/settings?tab=tokens")
    expect(create_token).to_be_visible()
    expect(add).not_to_be_visible()

    tab(page, "Audit").click()
    expect(apply).to_be_visible()
    expect(create_token).not_to_be_visible()

    tab(page, "Secrets").click()
    expect(add).to_be_visible()
    expect(apply).not_to_be_visible()

    page.goto(live_server + "/settings?tab=app")
    expect(add).not_to_be_visible()
    expect(create_token).not_to_be_visible()
    expect(apply).not_to_be_visible()
    expect(page.locator("main")).to_contain_text(re.compile("sqlite", re.IGNORECASE))  # the database backend
    assert MASTER_KEY not in page.content()  # a fingerprint, never the key


# --------------------------------------------------------------------------- secrets


def test_add_edit_and_delete_through_the_dialogs(signed_in, live_server, api):
    page = signed_in
    open_secrets(page, live_server)

    page.get_by_role("button", name="Add secret", exact=True).click()
    dialog = open_dialog(page)
    expect(dialog).to_be_visible()
    expect(dialog.locator("[name=value]")).to_have_attribute("type", "password")
    expect(dialog.locator("[name=value]")).to_have_value("")
    fill_secret_dialog(page, "API_KEY", "first-value-9c1e", "Primary API key")
    dialog.get_by_role("button", name="Save", exact=True).click()
    expect(open_dialog(page)).to_have_count(0)
    expect(row(page, "API_KEY")).to_contain_text("Primary API key")
    assert api.secret("API_KEY")["value"] == "first-value-9c1e"

    # The add dialog never keeps a value from before.
    page.get_by_role("button", name="Add secret", exact=True).click()
    expect(open_dialog(page).locator("[name=value]")).to_have_value("")
    page.keyboard.press("Escape")
    expect(open_dialog(page)).to_have_count(0)

    # Edit with an empty value: description changes, value is kept.
    row(page, "API_KEY").get_by_role("button", name="Edit", exact=True).click()
    dialog = open_dialog(page)
    expect(dialog.locator("input[name=key]")).to_have_value("API_KEY")
    expect(dialog.locator("input[name=key]")).not_to_be_editable()
    expect(dialog.locator("[name=value]")).to_have_attribute("type", "password")
    expect(dialog.locator("[name=value]")).to_have_value("")
    expect(dialog.locator("[name=description]")).to_have_value("Primary API key")
    dialog.locator("[name=description]").fill("Rotated quarterly")
    with page.expect_response(is_write):
        dialog.get_by_role("button", name="Save", exact=True).click()
    expect(open_dialog(page)).to_have_count(0)
    expect(row(page, "API_KEY")).to_contain_text("Rotated quarterly")
    assert api.secret("API_KEY")["value"] == "first-value-9c1e"
    assert api.description("API_KEY") == "Rotated quarterly"

    # Edit with a value: the value changes.
    row(page, "API_KEY").get_by_role("button", name="Edit", exact=True).click()
    fill_secret_dialog(page, None, "second-value-4b7d")
    with page.expect_response(is_write):
        open_dialog(page).get_by_role("button", name="Save", exact=True).click()
    expect(open_dialog(page)).to_have_count(0)
    assert api.secret("API_KEY")["value"] == "second-value-4b7d"

    # Delete, behind a confirmation in the page.
    page.on("dialog", lambda native: pytest.fail(f"a native browser dialog was used: {native.message}"))
    row(page, "API_KEY").get_by_role("button", name="Delete", exact=True).click()
    open_dialog(page).get_by_role("button", name="Delete", exact=True).click()
    expect(row(page, "API_KEY")).to_have_count(0)
    expect(open_dialog(page)).to_have_count(0)
    assert api.secret("API_KEY") is None
    page.reload()
    expect(page.get_by_role("button", name="Add secret", exact=True)).to_be_visible()
    expect(row(page, "API_KEY")).to_have_count(0)


def test_duplicate_key_is_refused_inside_the_dialog(signed_in, live_server, api):
    api.create("DUP_KEY", "original-value-51aa")
    page = signed_in
    open_secrets(page, live_server)
    expect(row(page, "DUP_KEY")).to_be_visible()

    page.get_by_role("button", name="Add secret", exact=True).click()
    dialog = fill_secret_dialog(page, "DUP_KEY", "other-value-2f0c")
    dialog.get_by_role("button", name="Save", exact=True).click()
    expect(alert_in(dialog, 'Secret with key "DUP_KEY" already exists')).to_be_visible()
    expect(dialog).to_be_visible()
    assert api.secret("DUP_KEY")["value"] == "original-value-51aa"


def test_the_page_checks_the_key_before_sending(signed_in, live_server, api, seen):
    page = signed_in
    open_secrets(page, live_server)

    page.get_by_role("button", name="Add secret", exact=True).click()
    dialog = fill_secret_dialog(page, "bad-key", "some-value-7d2e")
    sent_before = len(seen["requests"])
    dialog.get_by_role("button", name="Save", exact=True).click()
    expect(alert_in(dialog, "Key must be SCREAMING_SNAKE_CASE (e.g., MY_API_KEY)")).to_be_visible()
    expect(dialog).to_be_visible()
    writes = [(method, url) for method, url in seen["requests"][sent_before:] if method != "GET"]
    assert writes == [], f"the page sent a bad key to the server: {writes}"

    # Corrected in the same dialog, it goes through.
    dialog.locator("input[name=key]").fill("GOOD_KEY")
    dialog.get_by_role("button", name="Save", exact=True).click()
    expect(open_dialog(page)).to_have_count(0)
    expect(row(page, "GOOD_KEY")).to_be_visible()
    assert api.secret("GOOD_KEY")["value"] == "some-value-7d2e"


@pytest.mark.parametrize("max_value_bytes", ["16"])
def test_a_value_over_the_limit_is_refused_in_the_servers_words(signed_in, live_server, api):
    page = signed_in
    open_secrets(page, live_server)

    page.get_by_role("button", name="Add secret", exact=True).click()
    dialog = fill_secret_dialog(page, "BIG_VALUE", "x" * 17)
    dialog.get_by_role("button", name="Save", exact=True).click()
    expect(alert_in(dialog, "Value exceeds 16 bytes")).to_be_visible()
    expect(dialog).to_be_visible()
    assert api.secret("BIG_VALUE") is None


def test_rows_are_sorted_by_code_point_and_the_filter_narrows_them(signed_in, live_server, api):
    for key in ["A_B", "BETA_TOKEN", "AB", "A1"]:
        api.create(key, f"value-of-{key.lower()}-e81f", f"description of {key}")
    page = signed_in
    open_secrets(page, live_server)

    for name in ["Key", "Description", "Last updated"]:
        expect(page.get_by_role("columnheader", name=name, exact=True)).to_be_visible()
    rows = page.locator("tr[data-key]")
    expect(rows).to_have_count(4)
    # Code-point order: digits < upper-case letters < "_" (a locale collation would put A_B first).
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.key)") == ["A1", "AB", "A_B", "BETA_TOKEN"]

    page.get_by_label("Filter").press_sequentially("BETA")
    expect(row(page, "BETA_TOKEN")).to_be_visible()
    for key in ["A1", "AB", "A_B"]:
        expect(row(page, key)).not_to_be_visible()

    page.get_by_label("Filter").fill("")
    for key in ["A1", "AB", "A_B", "BETA_TOKEN"]:
        expect(row(page, key)).to_be_visible()


def test_reveal_shows_one_value_until_reload_and_is_audited(signed_in, live_server, api):
    api.create("REVEAL_ME", "revealed-value-0d93", "to be revealed")
    api.create("OTHER_KEY", "hidden-value-77c4", "never revealed")
    page = signed_in
    open_secrets(page, live_server)
    expect(row(page, "REVEAL_ME")).to_be_visible()
    assert "revealed-value-0d93" not in page.content()

    row(page, "REVEAL_ME").get_by_role("button", name="Reveal", exact=True).click()
    expect(row(page, "REVEAL_ME")).to_contain_text("revealed-value-0d93")
    assert "hidden-value-77c4" not in page.content()

    page.reload()
    expect(row(page, "REVEAL_ME")).to_be_visible()
    expect(row(page, "REVEAL_ME")).not_to_contain_text("revealed-value-0d93")
    assert "revealed-value-0d93" not in page.content()

    # The Audit tab shows the read, from the UI; the key filter narrows the events.
    page.goto(live_server + "/settings?tab=audit")
    events = page.locator(":is(tr, li):visible")
    reveal_event = (events.filter(has=page.get_by_text("REVEAL_ME", exact=True))
                    .filter(has=page.get_by_text("read", exact=True))
                    .filter(has=page.get_by_text("ui", exact=True)))
    expect(reveal_event.first).to_be_visible()
    expect(events.filter(has_text="OTHER_KEY").first).to_be_visible()  # its creation, over REST

    form = page.locator("form").filter(has=page.get_by_role("button", name="Apply", exact=True))
    form.locator("[name=key]").fill("REVEAL_ME")
    with page.expect_response(lambda r: r.request.method == "GET" and "REVEAL_ME" in r.url):
        form.get_by_role("button", name="Apply", exact=True).click()
    expect(reveal_event.first).to_be_visible()
    expect(events.filter(has_text="OTHER_KEY")).to_have_count(0)

    form = page.locator("form").filter(has=page.get_by_role("button", name="Apply", exact=True))
    form.locator("[name=key]").fill("")
    form.locator("[name=actor]").fill("test-admin")  # the token that created both secrets
    with page.expect_response(lambda r: r.request.method == "GET" and "test-admin" in r.url):
        form.get_by_role("button", name="Apply", exact=True).click()
    expect(events.filter(has_text="OTHER_KEY").first).to_be_visible()
    expect(reveal_event).to_have_count(0)


def test_history_lists_versions_newest_first_and_restore_makes_one_current(signed_in, live_server, api):
    api.create("ROTATING", "history-one-a1b2")
    api.update("ROTATING", "history-two-c3d4")
    api.update("ROTATING", "history-three-e5f6")
    page = signed_in
    open_secrets(page, live_server)

    row(page, "ROTATING").get_by_role("button", name="History", exact=True).click()
    dialog = open_dialog(page)
    expect(dialog).to_contain_text("Version 3")
    expect(dialog).to_contain_text("Version 1")
    text = dialog.inner_text()
    assert text.index("Version 3") < text.index("Version 2") < text.index("Version 1"), text
    for value in ["history-one-a1b2", "history-two-c3d4", "history-three-e5f6"]:
        assert value not in page.content(), "the history shows values nobody asked to reveal"
    restore = dialog.get_by_role("button", name="Restore", exact=True)
    expect(restore).to_have_count(2)  # the current version has none

    with page.expect_response(is_write):
        restore.last.click()  # newest first: the last one is version 1
    assert api.secret("ROTATING")["value"] == "history-one-a1b2"

    page.reload()
    row(page, "ROTATING").get_by_role("button", name="Reveal", exact=True).click()
    expect(row(page, "ROTATING")).to_contain_text("history-one-a1b2")
    row(page, "ROTATING").get_by_role("button", name="History", exact=True).click()
    expect(open_dialog(page)).to_contain_text("Version 4")


# --------------------------------------------------------------------------- tokens


def test_create_a_token_shown_once_then_revoke_it(signed_in, live_server, context):
    page = signed_in
    page.goto(live_server + "/settings?tab=tokens")

    page.locator("input[name=name]:visible").fill("ci-bot")
    page.locator('input[name=scopes][value="secrets:read"]').check()
    page.locator("input[name=allow]").fill("A_*, B_*")
    page.locator("input[name=expires_in]").fill("30d")
    page.get_by_role("button", name="Create token", exact=True).click()

    shown = page.locator("input[name=token]")
    expect(shown).to_be_visible()
    expect(shown).to_have_value(re.compile(r"^shub_\S{20,}$"))
    expect(shown).not_to_be_editable()
    token = shown.input_value()
    copy = page.get_by_role("button", name="Copy", exact=True)
    expect(copy).to_be_visible()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server)
    copy.click()
    assert page.evaluate("navigator.clipboard.readText()") == token

    response = requests.get(f"{live_server}/api/secrets", headers=bearer(token), timeout=10)
    assert response.status_code == 200, response.text

    token_row = page.locator('tr[data-name="ci-bot"]')
    expect(token_row).to_be_visible()
    expect(token_row).to_contain_text("secrets:read")

    page.goto(live_server + "/settings?tab=tokens")  # shown once: never again
    expect(token_row).to_be_visible()
    assert token not in page.content()

    token_row.get_by_role("button", name="Revoke", exact=True).click()
    open_dialog(page).get_by_role("button", name="Revoke", exact=True).click()
    expect(token_row).to_have_count(0)
    response = requests.get(f"{live_server}/api/secrets", headers=bearer(token), timeout=10)
    assert response.status_code == 401


# --------------------------------------------------------------------------- safety


def test_no_value_in_any_tab_and_no_request_leaves_the_origin(signed_in, live_server, api, seen):
    values = {"DB_PASSWORD": "pg-secret-value-1a2b3c", "STRIPE_KEY": "sk_live_value_4d5e6f",
              "WEBHOOK_SECRET": "whsec-value-7a8b9c"}
    for key, value in values.items():
        api.create(key, value, f"the {key.lower()}")
    page = signed_in
    open_secrets(page, live_server)
    expect(page.locator("tr[data-key]")).to_have_count(3)
    html = page.content()
    for value in values.values():
        assert value not in html

    for name in TABS:
        page.goto(f"{live_server}/settings?tab={name.lower()}")
        expect(tab(page, name)).to_be_visible()
        html = page.content()
        for value in values.values():
            assert value not in html, f"a value is in the {name} tab"
        assert MASTER_KEY not in html

    origin = urlsplit(live_server)
    foreign = [(method, url) for method, url in seen["requests"]
               if not url.startswith(("data:", "blob:"))
               and (urlsplit(url).scheme, urlsplit(url).netloc) != (origin.scheme, origin.netloc)]
    assert foreign == [], f"requests left the server's origin: {foreign}"
    assert seen["errors"] == [], f"script errors in the page: {seen['errors']}"


def test_cookies_are_httponly_lax_and_csrf_is_everywhere(signed_in, live_server, context, api):
    page = signed_in
    cookies = context.cookies()
    assert cookies, "signed in, yet no cookie"
    for cookie in cookies:
        assert cookie["httpOnly"], f"cookie {cookie['name']} is readable by scripts"
        assert cookie["sameSite"] == "Lax", f"cookie {cookie['name']} is SameSite={cookie['sameSite']}"

    no_token = """() => Array.from(document.forms)
        .filter(f => !['dialog', 'get'].includes((f.getAttribute('method') || '').toLowerCase()))
        .filter(f => !f.querySelector('input[type=hidden][name=csrf_token]'))
        .map(f => f.outerHTML.slice(0, 120))"""
    for name in TABS:
        page.goto(f"{live_server}/settings?tab={name.lower()}")
        expect(page.locator('meta[name="csrf-token"]')).to_have_attribute("content", re.compile(r".+"))
        assert page.evaluate(no_token) == [], f"forms without csrf_token in the {name} tab"

    # A cookie-authenticated API write needs the page's CSRF token.
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    refused = page.request.post(f"{live_server}/api/secrets", data={"key": "CSRF_KEY", "value": "v"})
    assert refused.status in (400, 403), refused.text()
    assert api.secret("CSRF_KEY") is None
    accepted = page.request.post(f"{live_server}/api/secrets", data={"key": "CSRF_KEY", "value": "v"},
                                 headers={"X-CSRFToken": csrf})
    assert accepted.status == 200, accepted.text()

    page.context.clear_cookies()
    page.goto(live_server + "/login")
    expect(page.locator('meta[name="csrf-token"]')).to_have_attribute("content", re.compile(r".+"))
    assert page.evaluate(no_token) == []


# --------------------------------------------------------------------------- layout and keyboard


def test_readable_at_375px_without_horizontal_scrolling(signed_in, live_server, api):
    api.create("A_FAIRLY_LONG_SECRET_KEY_NAME_FOR_A_SERVICE", "narrow-value-3e4f",
               "A description long enough to need wrapping on a phone-sized screen, which it should do.")
    page = signed_in
    page.set_viewport_size({"width": 375, "height": 800})
    width = "document.documentElement.scrollWidth"
    for name in TABS:
        page.goto(f"{live_server}/settings?tab={name.lower()}")
        expect(tab(page, name)).to_be_visible()
        assert page.evaluate(width) <= 375, f"the {name} tab scrolls sideways at 375 px"

    open_secrets(page, live_server)
    expect(row(page, "A_FAIRLY_LONG_SECRET_KEY_NAME_FOR_A_SERVICE")).to_be_visible()
    assert page.evaluate(width) <= 375
    page.get_by_role("button", name="Add secret", exact=True).click()
    expect(open_dialog(page)).to_be_visible()
    assert page.evaluate(width) <= 375, "the Add dialog scrolls sideways at 375 px"


def test_keyboard_reaches_add_secret_and_escape_closes_dialogs(signed_in, live_server, api):
    api.create("KEEP_ME", "keyboard-value-5a6b")
    page = signed_in
    open_secrets(page, live_server)
    expect(row(page, "KEEP_ME")).to_be_visible()

    focused = "() => (document.activeElement && document.activeElement.textContent || '').trim()"
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate(focused) == "Add secret":
            break
    else:
        pytest.fail("Tab never reached the Add secret button")

    page.keyboard.press("Enter")
    expect(open_dialog(page)).to_be_visible()
    assert page.evaluate("() => !!document.activeElement.closest('dialog[open]')"), "focus is not in the dialog"
    page.keyboard.press("Escape")
    expect(open_dialog(page)).to_have_count(0)

    row(page, "KEEP_ME").get_by_role("button", name="Delete", exact=True).focus()
    page.keyboard.press("Enter")
    expect(open_dialog(page).get_by_role("button", name="Delete", exact=True)).to_be_visible()
    page.keyboard.press("Escape")
    expect(open_dialog(page)).to_have_count(0)
    expect(row(page, "KEEP_ME")).to_be_visible()
    assert api.secret("KEEP_ME")["value"] == "keyboard-value-5a6b"
