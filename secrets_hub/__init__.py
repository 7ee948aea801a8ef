"""secrets-hub: a self-hosted secrets manager for apps, AI agents and skill plugins."""

__version__ = "0.1.0"
