"""`.env` files in and out: `import-env`, `export-env`, and the environment `run` gives a command.

Parsing is python-dotenv's own (quotes, escapes, `export` prefixes, comments), with interpolation
off, so a file means the same here as in the tools that wrote it. Problems are reported by line
number and key, never with the value.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from dotenv.parser import parse_stream

from secrets_hub import service
from secrets_hub.auth import Caller
from secrets_hub.errors import SecretsHubError
from secrets_hub.validation import is_key

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


@dataclass(frozen=True)
class Entry:
    line: int
    key: str
    value: str


@dataclass
class ImportReport:
    outcomes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def parse_env(text: str) -> tuple[list[Entry], list[str]]:
    """The assignments of a dotenv text, and a line for each one that cannot become a secret."""
    entries: dict[str, Entry] = {}
    problems = []
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            problems.append(f"line {line}: not a KEY=value line; skipped")
        elif binding.key is None:
            continue  # a comment or a blank line
        elif not is_key(binding.key):
            problems.append(f'line {line}: "{binding.key}" is not SCREAMING_SNAKE_CASE; skipped')
        elif binding.value is None:
            problems.append(f"line {line}: {binding.key} has no value; skipped")
        else:
            if binding.key in entries:
                problems.append(f"line {line}: {binding.key} repeats line {entries[binding.key].line}; "
                                "the later value is used")
            entries[binding.key] = Entry(line, binding.key, binding.value)
    return list(entries.values()), problems


def import_env(caller: Caller, text: str, progress: Callable[[int], None] = lambda n: None) -> ImportReport:
    """Create or update a secret for every valid assignment; an unchanged value makes no new version."""
    entries, problems = parse_env(text)
    report = ImportReport(problems=problems)
    for entry in entries:
        try:
            report.outcomes[service.import_secret(caller, entry.key, entry.value)] += 1
        except SecretsHubError as refused:
            report.problems.append(f"line {entry.line}: {entry.key}: {refused.message}; skipped")
        progress(1)
    return report


def format_env(values: dict[str, str]) -> str:
    """`KEY="value"` lines with backslash, quote and line breaks escaped, which `parse_env` reads back exactly."""
    return "".join(f'{key}="{value.translate(_ESCAPES)}"\n' for key, value in values.items())
