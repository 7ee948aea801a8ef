"""Skill plugin: list the open issues of a GitHub repository.

A template for plugin authors: it declares the one key it needs, keeps the hub it is handed at
start-up, and reads its token through `hub.secrets_for(SKILL)`, which refuses any other key.

    from secrets_hub import open_hub
    import github_issues
    print(github_issues.open_issues("pallets/flask", hub=open_hub()))
"""

from __future__ import annotations

import json
import urllib.request

from secrets_hub import SecretRequirement, hookimpl

SKILL = "github_issues"  # a plugin's name is its file name
_hub = None


@hookimpl
def secrets_hub_required_secrets():
    return [
        SecretRequirement(
            "GITHUB_TOKEN",
            "Fine-grained personal access token with read access to issues",
            obtain_url="https://github.com/settings/personal-access-tokens/new",
        )
    ]


@hookimpl
def secrets_hub_startup(hub):
    global _hub
    _hub = hub


def open_issues(repo: str, hub=None) -> list[dict]:
    """Number and title of each open issue (pull requests left out) of `repo` ("owner/name")."""
    token = (hub or _hub).secrets_for(SKILL)["GITHUB_TOKEN"]
    request = urllib.request.Request(
        f"https://api.github.com/repos/{repo}/issues?state=open&per_page=100",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"},
    )
    with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 - a fixed https address
        issues = json.load(response)
    return [{"number": i["number"], "title": i["title"]} for i in issues if "pull_request" not in i]
