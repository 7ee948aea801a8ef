"""Every plugin hook is documented (SPEC.md section 7, issue 4 item 1), after datasette's test_plugin_hooks_are_documented.

The README's plugin author's guide has a heading `name(arg, ...)` for each hook the app's plugin manager knows,
with the arguments exactly as the hook specification names them, and each specification has a docstring.
Adding a hook without documenting it makes these tests fail.
"""

from __future__ import annotations

import inspect
import re

import pytest

from conftest import ROOT
from secrets_hub import hookspecs

README = ROOT / "README.md"
KNOWN_HOOKS = {"secrets_hub_required_secrets", "secrets_hub_secret_changed", "secrets_hub_startup"}


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:
    return request.param


def readme_headings() -> list[str]:
    """The text of every Markdown heading outside fenced code blocks, backticks removed."""
    headings, fenced = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            headings.append(match.group(1).replace("`", ""))
    return headings


def spec_functions() -> dict[str, object]:
    """The functions in secrets_hub/hookspecs.py marked as hook specifications."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: function for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(function, marker)}


def test_every_hook_of_the_plugin_manager_has_a_readme_heading_with_its_arguments(app):
    hooks = app.extensions["secrets_hub"].plugins.manager.hook
    names = sorted(name for name in vars(hooks) if not name.startswith("_"))
    assert KNOWN_HOOKS <= set(names), names  # the manager really carries the hook specifications
    headings = readme_headings()
    missing = []
    for name in names:
        spec = getattr(hooks, name).spec
        assert spec is not None, f"hook {name} has no specification"
        expected = f"{name}({', '.join(spec.argnames)})"
        if not any(re.search(rf"(?<![\w.]){re.escape(expected)}", heading) for heading in headings):
            missing.append(expected)
    assert missing == [], f"Missing from the README's plugin hook documentation: {missing}"


def test_the_manager_knows_exactly_the_hooks_specified_in_hookspecs(app):
    hooks = app.extensions["secrets_hub"].plugins.manager.hook
    assert {name for name in vars(hooks) if not name.startswith("_")} == set(spec_functions())


def test_every_hook_specification_has_a_docstring():
    specs = spec_functions()
    assert KNOWN_HOOKS <= set(specs), sorted(specs)
    undocumented = [name for name, function in specs.items() if not (inspect.getdoc(function) or "").strip()]
    assert undocumented == [], f"hook specifications without a docstring: {undocumented}"
