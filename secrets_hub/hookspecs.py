"""The plugin contract of secrets-hub: markers, the requirement type, and the hook specifications.

A skill plugin is a module (or any object) with functions marked ``@hookimpl``. It is found through
the ``secrets_hub`` entry-point group or as a ``*.py`` file in the plugins folder. Hooks are always
called with keyword arguments, so an implementation may accept fewer arguments than its spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from secrets_hub.hub import Hub

PROJECT = "secrets_hub"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class SecretRequirement:
    """A secret key a skill needs.

    :param key: the secret's key, SCREAMING_SNAKE_CASE (``GITHUB_TOKEN``).
    :param description: what the key is for, shown beside it in the Skills tab.
    :param required: False for keys the skill can do without.
    :param obtain_url: where a person gets the value, shown beside a missing key.
    """

    key: str
    description: str = ""
    required: bool = True
    obtain_url: str | None = None


# ---- declaring needs -------------------------------------------------------------------------


@hookspec
def secrets_hub_required_secrets() -> list[SecretRequirement]:
    """Declare the secret keys this skill needs.

    The skill may then read exactly these keys through ``hub.secrets_for(skill_name)``; any other
    key is refused. A plugin that raises here, or returns something other than a list of
    ``SecretRequirement`` with valid keys, is reported and skipped.

    :return: a list of ``SecretRequirement``.
    """


# ---- lifecycle and notifications -------------------------------------------------------------


@hookspec
def secrets_hub_startup(hub: "Hub") -> None:
    """Called once when the app, the CLI or the MCP server starts, with the hub the plugin may keep.

    :param hub: the in-process face of the service layer (``secrets_for``, ``resolve_references``).
    """


@hookspec
def secrets_hub_secret_changed(key: str, action: str) -> None:
    """Called after a secret changed, from every channel (REST, UI, CLI, skills).

    Never receives the value. An exception raised here is logged and does not undo the change.

    :param key: the secret's key.
    :param action: ``created``, ``updated``, ``deleted`` or ``restored``.
    """
