"""Finding and running skill plugins: entry points and the plugins folder, each failure recorded, never fatal."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pluggy

from secrets_hub import hookspecs
from secrets_hub.errors import ValidationError
from secrets_hub.hookspecs import PROJECT, SecretRequirement
from secrets_hub.validation import validate_key

log = logging.getLogger(__name__)
CHANGE_ACTIONS = {"create": "created", "update": "updated", "delete": "deleted", "restore": "restored"}


@dataclass(frozen=True)
class Skill:
    """One plugin as the hub sees it: what it declared, or why it was skipped."""

    name: str
    requires: tuple[SecretRequirement, ...] = ()
    error: str | None = None

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(requirement.key for requirement in self.requires)


def _failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _check_requirements(result: Any) -> tuple[SecretRequirement, ...]:
    if not isinstance(result, (list, tuple)):
        raise TypeError("secrets_hub_required_secrets must return a list of SecretRequirement")
    for item in result:
        if not isinstance(item, SecretRequirement):
            raise TypeError(f"secrets_hub_required_secrets returned {type(item).__name__}, not SecretRequirement")
        try:
            validate_key(item.key)
        except ValidationError as error:
            raise ValueError(f'invalid key "{item.key}": {error.message}') from None
        if not isinstance(item.description, str) or not isinstance(item.required, bool) or not (
            item.obtain_url is None or isinstance(item.obtain_url, str)
        ):
            raise TypeError(f'requirement "{item.key}" has a field of the wrong type')
        # The Skills tab links to it: only web addresses, never a `javascript:` or `data:` URL.
        if item.obtain_url is not None and not item.obtain_url.startswith(("https://", "http://")):
            raise ValueError(f'requirement "{item.key}": obtain_url must be an http(s) address')
    return tuple(result)


class Plugins:
    """The plugin manager of one app: the working skills by name, and the skipped ones with their reasons."""

    def __init__(self, manager: pluggy.PluginManager, skills: dict[str, Skill], broken: list[Skill]):
        self.manager = manager
        self._working = skills
        self._broken = broken

    @property
    def skills(self) -> list[Skill]:
        """Every plugin, working or skipped, sorted by name (a skipped twin after the working one)."""
        return sorted([*self._working.values(), *self._broken], key=lambda skill: (skill.name, skill.error is not None))

    def skill(self, name: str) -> Skill | None:
        """A working skill by name, or None."""
        return self._working.get(name)

    def _skip(self, name: str, reason: str) -> None:
        log.error("skill plugin %s skipped: %s", name, reason)
        if self.manager.has_plugin(name):
            self.manager.unregister(name=name)
        self._working.pop(name, None)
        self._broken.append(Skill(name, error=reason))

    def add(self, name: str, load: Callable[[], Any]) -> None:
        """Load and register one plugin under `name`, or record why not."""
        if self.manager.has_plugin(name) or name in self._working:
            self._broken.append(Skill(name, error=f'another plugin is already named "{name}"'))
            return
        try:
            self.manager.register(load(), name=name)
            self.manager.check_pending()  # a misspelt hook name is an error, not a silent no-op
        except Exception as error:  # noqa: BLE001 - report the plugin, keep the app
            self._skip(name, f"failed to load: {_failure(error)}")
            return
        self._working[name] = Skill(name)

    def collect_requirements(self) -> None:
        """Ask every plugin what it needs; a plugin that raises or answers wrongly is skipped."""
        for impl in self.manager.hook.secrets_hub_required_secrets.get_hookimpls():
            try:
                self._working[impl.plugin_name] = Skill(impl.plugin_name, requires=_check_requirements(impl.function()))
            except Exception as error:  # noqa: BLE001
                self._skip(impl.plugin_name, f"secrets_hub_required_secrets: {_failure(error)}")

    def _call_each(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation on its own: a plugin that raises is skipped from then on, the caller goes on."""
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            try:
                impl.function(*(kwargs[name] for name in impl.argnames))
            except Exception as error:  # noqa: BLE001 - a plugin's bug must never break the caller
                self._skip(impl.plugin_name, f"{hook_name}: {_failure(error)}")

    def secret_changed(self, key: str, action: str) -> None:
        self._call_each("secrets_hub_secret_changed", key=key, action=CHANGE_ACTIONS[action])

    def startup(self, hub: Any) -> None:
        self._call_each("secrets_hub_startup", hub=hub)


def _load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"secrets_hub_plugins.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _candidates(plugins_dir: Path, load_entrypoints: bool) -> list[tuple[str, Callable[[], Any]]]:
    found: list[tuple[str, Callable[[], Any]]] = []
    if load_entrypoints:
        import importlib.metadata  # 20 ms: not for `secrets-hub get` with entry points off

        found += [(ep.name, ep.load) for ep in importlib.metadata.entry_points(group=PROJECT)]
    if plugins_dir.is_dir():
        found += [(path.stem, lambda path=path: _load_module(path))
                  for path in sorted(plugins_dir.glob("*.py")) if not path.name.startswith("_")]
    return found


def load_plugins(plugins_dir: Path, load_entrypoints: bool = True) -> Plugins:
    """Register every plugin that loads and declares valid requirements; record the others with the reason."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager, {}, [])
    for name, load in _candidates(plugins_dir, load_entrypoints):
        plugins.add(name, load)
    plugins.collect_requirements()
    return plugins
