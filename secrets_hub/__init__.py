"""secrets-hub: a self-hosted secrets manager for apps, AI agents and skill plugins.

For plugin authors: ``from secrets_hub import hookimpl, SecretRequirement, open_hub``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["SecretRequirement", "__version__", "hookimpl", "open_hub"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so `secrets-hub get` does not pay for the plugin machinery it does not need.
    if name in ("hookimpl", "SecretRequirement"):
        from secrets_hub import hookspecs

        return getattr(hookspecs, name)
    if name == "open_hub":
        from secrets_hub.hub import open_hub

        return open_hub
    raise AttributeError(f"module 'secrets_hub' has no attribute {name!r}")
