"""The per-process state every service needs, and how code finds the one it runs under.

Inside the web app, the MCP server and most commands that is the Flask app's (`app.extensions`). A
command that only reads (`secrets-hub get`) builds no app at all, which keeps Flask and SQLAlchemy
out of its start-up time; it activates its runtime with `activated`.
"""

from __future__ import annotations

import concurrent.futures
from contextvars import ContextVar
from dataclasses import dataclass, field

from secrets_hub import bootstrap
from secrets_hub.audit import GroupCommitWriter
from secrets_hub.config import Settings
from secrets_hub.crypto import Keyring
from secrets_hub.errors import ConfigError
from secrets_hub.plugins import Plugins, load_plugins
from secrets_hub.store import Store
from secrets_hub.throttle import FailedAuthentications


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    keyring: Keyring
    plugins: Plugins
    store: Store
    audit_writer: GroupCommitWriter
    failed_authentications: FailedAuthentications
    # token hash -> (monotonic expiry, record or None); see auth.TOKEN_CACHE_SECONDS
    token_cache: dict = field(default_factory=dict)

    def close(self) -> None:
        self.store.close()


def build_runtime(settings: Settings) -> Runtime:
    """Keys, store and plugins for `settings`; refuses a master secret that does not open the database."""
    if not settings.master_key:
        raise ConfigError("No master key is configured: run `secrets-hub init`, or set SECRETS_HUB_MASTER_KEY")
    # scrypt (about 70 ms) lets go of the GIL: the keys are derived while the store loads its driver (psycopg
    # alone takes about 120 ms to import), which `secrets-hub get` on PostgreSQL spends once per run.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="derive-keys") as pool:
        deriving = pool.submit(Keyring.from_master, settings.master_key, settings.old_master_keys)
        store = Store(settings.database_url)
        keyring = deriving.result()
    try:
        bootstrap.check_master_key(store, keyring)
    finally:
        store.close()  # a refused start leaves no connection open; a running one reopens on demand
    plugins = load_plugins(settings.plugins_dir, settings.load_entrypoints)
    return Runtime(settings=settings, keyring=keyring, plugins=plugins, store=store,
                   audit_writer=GroupCommitWriter(store),
                   failed_authentications=FailedAuthentications(settings.ratelimit_storage))


def started_runtime() -> Runtime:
    """The runtime of the environment's settings, started as a process without a Flask app starts it (the
    CLI, each MCP worker): the plugins' startup hook gets its hub, with the runtime active."""
    from secrets_hub.config import load_settings
    from secrets_hub.hub import Hub  # which imports this module

    state = build_runtime(load_settings())
    try:
        with activated(state):
            state.plugins.startup(Hub(state))
    except BaseException:
        state.close()
        raise
    return state


_active: ContextVar[Runtime | None] = ContextVar("secrets_hub_runtime", default=None)


class activated:  # noqa: N801 - used as a function: `with activated(runtime):`
    """Make `active` the runtime of the code inside, where no Flask app is built.

    A class rather than a @contextmanager generator: the hot path enters one on every request."""

    __slots__ = ("_runtime", "_token")

    def __init__(self, active: Runtime):
        self._runtime = active

    def __enter__(self) -> Runtime:
        self._token = _active.set(self._runtime)
        return self._runtime

    def __exit__(self, *exc_info: object) -> None:
        _active.reset(self._token)


def runtime() -> Runtime:
    active = _active.get()
    if active is not None:
        return active
    from flask import current_app

    return current_app.extensions["secrets_hub"]
