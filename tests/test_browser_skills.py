"""The Skills tab in a real browser (SPEC.md sections 7 and 9, issue 4 item 5).

Reuses conftest's `browser` and test_browser's page fixtures (Debian's Chromium under Playwright, `secrets-hub serve` as a
real server, the first account made through /setup). The plugins are written into the plugins folder
before the server starts, by this module's `config` fixture.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from test_browser import (  # noqa: F401 - fixtures are found by name
    api, backend, context, expect, open_dialog, page, seen, signed_in,
)

MISSING_KEY = "BROWSER_SKILL_TOKEN"
OBTAIN_URL = "https://tokens.example/new"
PLUGINS = {
    "needs_key": f"""
        from secrets_hub import SecretRequirement, hookimpl

        @hookimpl
        def secrets_hub_required_secrets():
            return [SecretRequirement("{MISSING_KEY}", "Token for the browser skill", obtain_url="{OBTAIN_URL}")]
    """,
    "broken_skill": """
        raise RuntimeError("import exploded 5d1c")
    """,
}


def cell(row, text: str):
    """The cell of `row` whose whole text is `text` (the state reads exactly "set" or "missing")."""
    return row.get_by_role("cell", name=text, exact=True)


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    folder = Path(config["SECRETS_HUB_PLUGINS_DIR"])
    folder.mkdir(exist_ok=True)
    for name, source in PLUGINS.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return config


def test_a_missing_key_is_added_from_the_skills_tab_and_a_broken_plugin_shows_its_reason(signed_in, live_server,
                                                                                           api, seen):
    page = signed_in
    page.goto(live_server + "/settings?tab=skills")

    card = page.locator('article[data-skill="needs_key"]')
    expect(card).to_be_visible()
    requirement = card.locator(f'tr[data-key="{MISSING_KEY}"]')
    expect(requirement).to_contain_text(MISSING_KEY)
    expect(cell(requirement, "required")).to_have_count(1)
    expect(cell(requirement, "missing")).to_have_count(1)
    expect(requirement.locator(f'a[href="{OBTAIN_URL}"]')).to_have_count(1)  # where to get it

    broken = page.locator('article[data-skill="broken_skill"]')
    expect(broken).to_be_visible()
    expect(broken).to_contain_text("import exploded 5d1c")

    requirement.get_by_role("button", name="Add secret", exact=True).click()
    dialog = open_dialog(page)
    expect(dialog).to_be_visible()
    expect(dialog.locator("input[name=key]")).to_have_value(MISSING_KEY)
    expect(dialog.locator("[name=value]")).to_have_value("")
    dialog.locator("[name=value]").fill("browser-skill-value-8e2f")
    dialog.get_by_role("button", name="Save", exact=True).click()
    expect(open_dialog(page)).to_have_count(0)

    requirement = page.locator(f'article[data-skill="needs_key"] tr[data-key="{MISSING_KEY}"]')
    expect(cell(requirement, "set")).to_have_count(1)
    expect(requirement).not_to_contain_text("missing")
    expect(requirement.get_by_role("button", name="Add secret", exact=True)).to_have_count(0)
    assert api.secret(MISSING_KEY)["value"] == "browser-skill-value-8e2f"
    assert "browser-skill-value-8e2f" not in page.content()

    page.reload()
    requirement = page.locator(f'article[data-skill="needs_key"] tr[data-key="{MISSING_KEY}"]')
    expect(cell(requirement, "set")).to_have_count(1)
    expect(requirement).not_to_contain_text("missing")
    assert seen["errors"] == []
