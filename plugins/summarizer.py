"""Skill plugin: summarise a text with an OpenAI-compatible chat API.

A template for a skill with an optional key and a change hook: OPENAI_API_KEY is required,
OPENAI_BASE_URL is optional (any OpenAI-compatible server), and the plugin is told, without the
value, when one of its keys changes.
"""

from __future__ import annotations

import json
import logging
import urllib.request

from secrets_hub import SecretRequirement, hookimpl

SKILL = "summarizer"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEYS = ("OPENAI_API_KEY", "OPENAI_BASE_URL")
log = logging.getLogger(__name__)
_hub = None


@hookimpl
def secrets_hub_required_secrets():
    return [
        SecretRequirement("OPENAI_API_KEY", "API key for the chat completions API",
                          obtain_url="https://platform.openai.com/api-keys"),
        SecretRequirement("OPENAI_BASE_URL", "Base URL of an OpenAI-compatible API (default: OpenAI)",
                          required=False),
    ]


@hookimpl
def secrets_hub_startup(hub):
    global _hub
    _hub = hub


@hookimpl
def secrets_hub_secret_changed(key, action):
    if key in KEYS:
        log.info("summarizer: %s was %s; the next call uses the current value", key, action)


def summarize(text: str, hub=None, model: str = "gpt-4o-mini") -> str:
    """A three-sentence summary of `text`."""
    secrets = (hub or _hub).secrets_for(SKILL)
    base_url = secrets.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if not base_url.startswith(("https://", "http://")):
        raise ValueError("OPENAI_BASE_URL must be an http(s) address")
    body = {"model": model, "messages": [
        {"role": "system", "content": "Summarise the user's text in at most three sentences."},
        {"role": "user", "content": text},
    ]}
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        f"{base_url.rstrip('/')}/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {secrets['OPENAI_API_KEY']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - scheme checked above
        return json.load(response)["choices"][0]["message"]["content"]
