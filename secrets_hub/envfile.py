"""`.env` files in and out: `import-env`, `export-env`, and the environment `run` gives a command.

The syntax is python-dotenv's (quotes, escapes, `export` prefixes, comments; no interpolation), so a
file means the same here as in the tools that wrote it. The parser is our own, though: python-dotenv
(1.2) reads a double-quoted value that ends in an escaped backslash, such as `"C:\\dir\\"`, as running on
to the next quote, which silently swallows the following lines. Problems are reported by line
number and key, never with the value.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from secrets_hub import service
from secrets_hub.auth import Caller
from secrets_hub.errors import SecretsHubError
from secrets_hub.validation import is_key

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})
_ASSIGNMENT = re.compile(
    r"""[ \t]*(?:export[ \t]+)?(?P<key>[^\s=#'"]+)[ \t]*
    (?: =[ \t]*
        (?: "(?P<double>(?:\\.|[^"\\])*)"      # escapes allowed; may span lines
          | '(?P<single>(?:\\.|[^'\\])*)'      # only \' and \\ are escapes
          | (?P<bare>(?!["'])[^\r\n]*)           # up to the end of the line, less a trailing comment
        ) )?
    [ \t]*(?:\#[^\r\n]*)?(?:\r?\n|\Z)""",
    re.VERBOSE | re.DOTALL,
)
_SKIP = re.compile(r"[ \t]*(?:#[^\r\n]*)?(?:\r?\n|\Z)")
_LINE_REST = re.compile(r"[^\n]*(?:\n|\Z)")
_DOUBLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
                   '"': '"', "'": "'", "\\": "\\"}


@dataclass(frozen=True)
class Entry:
    line: int
    key: str
    value: str


@dataclass
class ImportReport:
    outcomes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def _value(match: re.Match) -> str | None:
    if match["double"] is not None:
        return re.sub(r"\\(.)", lambda m: _DOUBLE_ESCAPES.get(m[1], m[0]), match["double"], flags=re.DOTALL)
    if match["single"] is not None:
        return re.sub(r"\\([\\'])", r"\1", match["single"])
    if match["bare"] is not None:
        return re.sub(r"\s+#.*", "", match["bare"]).strip()
    return None


def _bindings(text: str):
    """(line number, key, value or None) for each assignment, (line number, None, None) for a bad line."""
    position, line = 0, 1
    while position < len(text):
        skipped = _SKIP.match(text, position)
        if skipped and skipped.end() > position:  # a blank line or a comment
            position, line = skipped.end(), line + 1
            continue
        match = _ASSIGNMENT.match(text, position)
        if match is None:
            match = _LINE_REST.match(text, position)
            yield line, None, None
        else:
            yield line, match["key"], _value(match)
        position, line = match.end(), line + match[0].count("\n")


def parse_env(text: str) -> tuple[list[Entry], list[str]]:
    """The assignments of a dotenv text, and a line for each one that cannot become a secret."""
    entries: dict[str, Entry] = {}
    problems = []
    for line, key, value in _bindings(text):
        if key is None:
            problems.append(f"line {line}: not a KEY=value line; skipped")
        elif not is_key(key):
            problems.append(f'line {line}: "{key}" is not SCREAMING_SNAKE_CASE; skipped')
        elif value is None:
            problems.append(f"line {line}: {key} has no value; skipped")
        else:
            if key in entries:
                problems.append(f"line {line}: {key} repeats line {entries[key].line}; the later value is used")
            entries[key] = Entry(line, key, value)
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
