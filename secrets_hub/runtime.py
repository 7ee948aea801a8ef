"""The per-app state every service needs: settings and keys, kept in `app.extensions`."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from secrets_hub.audit import GroupCommitWriter
from secrets_hub.config import Settings
from secrets_hub.crypto import Keyring
from secrets_hub.plugins import Plugins


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    keyring: Keyring
    plugins: Plugins
    audit_writer: GroupCommitWriter
    # token hash -> (monotonic expiry, record or None); see auth.TOKEN_CACHE_SECONDS
    token_cache: dict = field(default_factory=dict)


def runtime() -> Runtime:
    return current_app.extensions["secrets_hub"]
