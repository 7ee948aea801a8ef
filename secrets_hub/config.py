"""Settings, read once from the environment, a `.env` file and explicit overrides."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from secrets_hub.errors import ConfigError

MASTER_KEY_FILE = "master.key"
DEFAULT_MAX_VALUE_BYTES = 65536
DEFAULT_KEEP_VERSIONS = 20


@dataclass(frozen=True)
class Settings:
    """Everything the app, the CLI and the MCP server are configured with."""

    instance_path: Path
    database_url: str
    master_key: str | None
    master_key_source: str
    old_master_keys: tuple[str, ...]
    plugins_dir: Path
    max_value_bytes: int
    keep_versions: int
    ratelimit_storage: str
    load_entrypoints: bool = True
    proxy_hops: int = 0

    @property
    def master_key_file(self) -> Path:
        return self.instance_path / MASTER_KEY_FILE

    @property
    def backend(self) -> str:
        return "postgresql" if self.database_url.startswith("postgresql") else "sqlite"


def _read_env(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge, lowest priority first: `.env` in the working directory, the environment, overrides."""
    from dotenv import dotenv_values

    env: dict[str, Any] = {}
    dotenv_path = Path.cwd() / ".env"
    if dotenv_path.is_file():
        env.update({k: v for k, v in dotenv_values(dotenv_path, interpolate=False).items() if v is not None})
    env.update(os.environ)
    env.update(overrides or {})
    return env


def normalize_database_url(url: str) -> str:
    """Point `postgres://` and `postgresql://` URLs at psycopg 3, whatever the user wrote."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_in_instance(url: str, instance_path: Path) -> str:
    """A relative SQLite path lies in the instance folder (as Flask-SQLAlchemy reads it), made absolute here
    so that every part (the app, the store, `secrets-hub init`) opens the same file."""
    prefix = "sqlite:///"
    path, question, query = url[len(prefix):].partition("?")
    if not url.startswith(prefix) or not path or path.startswith("/") or path == ":memory:":
        return url
    return f"{prefix}{instance_path / path}{question}{query}"


def _whole_number(env: Mapping[str, Any], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    kind = "a positive whole number" if minimum == 1 else f"a whole number from {minimum}"
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}")
    return value


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read the settings; the master key file is read here but never created (see `ensure_master_key`)."""
    env = _read_env(overrides)
    instance_path = Path(env.get("SECRETS_HUB_INSTANCE_PATH") or "instance").resolve()
    database_url = env.get("DATABASE_URL") or f"sqlite:///{instance_path / 'secrets_hub.db'}"

    master_key, source = env.get("SECRETS_HUB_MASTER_KEY"), "SECRETS_HUB_MASTER_KEY"
    if not master_key:
        master_key, source = env.get("BETTER_AUTH_SECRET"), "BETTER_AUTH_SECRET"
    if not master_key:
        key_file = instance_path / MASTER_KEY_FILE
        master_key, source = (key_file.read_text().strip() or None, str(key_file)) if key_file.is_file() else (None, "")
    old_keys = tuple(k.strip() for k in (env.get("SECRETS_HUB_OLD_MASTER_KEYS") or "").split(",") if k.strip())

    return Settings(
        instance_path=instance_path,
        database_url=_sqlite_in_instance(normalize_database_url(database_url), instance_path),
        master_key=master_key,
        master_key_source=source,
        old_master_keys=old_keys,
        plugins_dir=Path(env.get("SECRETS_HUB_PLUGINS_DIR") or "plugins").resolve(),
        max_value_bytes=_whole_number(env, "SECRETS_HUB_MAX_VALUE_BYTES", DEFAULT_MAX_VALUE_BYTES),
        keep_versions=_whole_number(env, "SECRETS_HUB_KEEP_VERSIONS", DEFAULT_KEEP_VERSIONS),
        ratelimit_storage=env.get("SECRETS_HUB_RATELIMIT_STORAGE") or "memory://",
        proxy_hops=_whole_number(env, "SECRETS_HUB_PROXY_HOPS", 0, minimum=0),
        # Tests turn this off so that plugins installed in the environment cannot leak into them.
        load_entrypoints=str(env.get("SECRETS_HUB_LOAD_ENTRYPOINTS", "1")).lower() not in ("0", "false", "no"),
    )


def ensure_master_key(settings: Settings) -> Settings:
    """Create the instance folder and, when no master secret is configured, generate the key file."""
    settings.instance_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.master_key:
        return settings
    key_file = settings.master_key_file
    # O_EXCL: never overwrite a key another process just wrote; 0600 from the first byte.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    print(f"Generated a new master key in {key_file}", file=sys.stderr)
    print(
        "!!! BACK UP THIS FILE NOW: without it every stored secret is lost for good. !!!",
        file=sys.stderr,
    )
    return replace(settings, master_key=key_file.read_text().strip(), master_key_source=str(key_file))
