"""The hub: the in-process face of the service layer for skills, cron agents and scripts."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from secrets_hub import service
from secrets_hub.auth import READ, Caller
from secrets_hub.errors import NotFoundError, UnresolvedReferencesError
from secrets_hub.runtime import Runtime, activated

if TYPE_CHECKING:
    from flask import Flask

REFERENCE = re.compile(r"\{\{\s*secrets\.([A-Za-z0-9_]+)\s*\}\}")


class SkillSecrets(Mapping[str, str]):
    """The secrets one skill declared, read-only; every read is audited with channel `skill`."""

    def __init__(self, hub: "Hub", skill: str, keys: frozenset[str]):
        self._hub, self._skill, self._keys = hub, skill, keys
        # The allow list enforces, in the service layer too, that this skill reads only its own keys.
        self._caller = Caller(actor=skill, channel="skill", scopes=frozenset({READ}), allow=tuple(sorted(keys)))

    def __getitem__(self, key: str) -> str:
        if key not in self._keys:
            raise PermissionError(f'Skill "{self._skill}" did not declare the secret "{key}"')
        with self._hub.context():
            try:
                return service.read_secret(self._caller, key)["value"]
            except NotFoundError:
                raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        # A membership test needs no value: answer it from the metadata, without a decrypted, audited read.
        return key in self._keys and key in list(self)

    def __iter__(self) -> Iterator[str]:
        with self._hub.context():
            return iter([row["key"] for row in service.list_secrets(self._caller)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:  # never the values
        return f"<secrets of skill {self._skill!r}: {sorted(self._keys)}>"


class Hub:
    """What plugins, cron agents and scripts hold: reads through the same rules as every other channel."""

    def __init__(self, runtime: Runtime, app: "Flask | None" = None):
        """`app` is None where no Flask app is built (`secrets-hub get`): the runtime alone serves reads."""
        self.runtime, self.app = runtime, app

    def context(self) -> AbstractContextManager:
        """Where the service layer runs: the app's context, or the bare runtime's."""
        return self.app.app_context() if self.app is not None else activated(self.runtime)

    @property
    def _plugins(self):
        return self.runtime.plugins

    def secrets_for(self, skill: str) -> SkillSecrets:
        """A read-only mapping of exactly the keys `skill` declared; other keys raise PermissionError."""
        found = self._plugins.skill(skill)
        if found is None:
            raise PermissionError(f'No skill named "{skill}" is loaded')
        return SkillSecrets(self, skill, found.keys)

    def resolve_references(self, text: str, skill: str | None = None) -> str:
        """Replace every `{{ secrets.KEY }}` in `text`; one error names every key that cannot be resolved."""
        keys = sorted(set(REFERENCE.findall(text)))
        if skill is not None:
            source: Mapping[str, str] = self.secrets_for(skill)
            declared = self._plugins.skill(skill).keys
        else:
            source = SkillSecrets(self, "hub", frozenset(keys))
            declared = frozenset(keys)
        values, problems = {}, []
        for key in keys:
            if key not in declared:
                problems.append(f'{key} (not declared by skill "{skill}")')
                continue
            try:
                values[key] = source[key]
            except KeyError:
                problems.append(f"{key} (not set)")
        if problems:
            raise UnresolvedReferencesError(problems)
        return REFERENCE.sub(lambda match: values[match.group(1)], text)


def open_hub(config: Mapping[str, Any] | None = None) -> Hub:
    """A hub built from the same configuration as the CLI (environment, `.env`, then `config`)."""
    from secrets_hub.app import create_app

    return create_app(config).extensions["secrets_hub.hub"]
