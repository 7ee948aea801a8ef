"""The input rules of SPEC.md section 4, with its exact messages; shared by schemas and services."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from secrets_hub.errors import PayloadTooLargeError, ValidationError

KEY_PATTERN = re.compile(r"[A-Z][A-Z0-9_]*")
KEY_MAX = 255
DESCRIPTION_MAX = 1000
TOKEN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SCOPES = ("secrets:read", "secrets:write", "mcp", "admin")
DURATION_PATTERN = re.compile(r"([1-9][0-9]{0,6})([smhd])")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_DURATION = timedelta(days=3650)

KEY_FORMAT_MESSAGE = "Key must be SCREAMING_SNAKE_CASE (e.g., MY_API_KEY)"
MAX_VERSION = 2**31 - 1  # the column is a 32-bit integer on PostgreSQL


def validate_key(key: Any) -> str:
    if key is None or key == "":
        raise ValidationError("Key is required")
    if not isinstance(key, str):
        raise ValidationError(KEY_FORMAT_MESSAGE)
    if len(key) > KEY_MAX:
        raise ValidationError(f"Key must be {KEY_MAX} characters or less")
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationError(KEY_FORMAT_MESSAGE)
    return key


def _is_unicode(text: str) -> bool:
    """False for strings holding lone surrogates (JSON can escape them; UTF-8 cannot encode them)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def validate_value(value: Any) -> str:
    if not isinstance(value, str) or value == "":
        raise ValidationError("Value is required")
    if not _is_unicode(value):
        raise ValidationError("Value must be valid Unicode text")
    return value


def check_value_size(value: str, max_bytes: int) -> None:
    if len(value.encode()) > max_bytes:
        raise PayloadTooLargeError(f"Value exceeds {max_bytes} bytes")


def is_key(key: Any) -> bool:
    """Whether `key` could name a secret at all; lookups of anything else are simply "not found"."""
    return isinstance(key, str) and len(key) <= KEY_MAX and KEY_PATTERN.fullmatch(key) is not None


def validate_description(description: Any) -> str | None:
    if description is not None and not isinstance(description, str):
        raise ValidationError("Description must be a string")
    if description is not None and len(description) > DESCRIPTION_MAX:
        raise ValidationError(f"Description must be {DESCRIPTION_MAX} characters or less")
    if description is not None and not _is_unicode(description):
        raise ValidationError("Description must be valid Unicode text")
    if description is not None and "\x00" in description:
        # PostgreSQL text cannot hold NUL; refuse it on every backend alike.
        raise ValidationError("Description must not contain NUL characters")
    return description


def is_decimal(text: str) -> bool:
    """Digits 0 to 9 only, and at most 19 of them (2**63 has 19). str.isdigit alone also takes "²" and other
    digits that int() refuses, and int() refuses more than 4,300 digits."""
    return text.isascii() and text.isdigit() and len(text) <= 19


def validate_version(version: Any) -> int:
    """A version number: a positive whole number, given as an int or as its decimal text."""
    if isinstance(version, str) and is_decimal(version.strip('"')):
        version = int(version.strip('"'))
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise ValidationError("Version must be a positive integer")
    return version


def is_token_name(name: Any) -> bool:
    return isinstance(name, str) and TOKEN_NAME_PATTERN.fullmatch(name) is not None


def validate_token_name(name: Any) -> str:
    if name is None or name == "":
        raise ValidationError("Name is required")
    if not is_token_name(name):
        raise ValidationError("Name must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def validate_scopes(scopes: Any) -> list[str]:
    if not isinstance(scopes, list) or not scopes:
        raise ValidationError("Scopes are required")
    for scope in scopes:
        if scope not in SCOPES:
            raise ValidationError(f'Unknown scope "{scope}"' if isinstance(scope, str) else "Scopes must be strings")
    return sorted(set(scopes), key=SCOPES.index)


def validate_allow(allow: Any) -> list[str] | None:
    """Key globs (fnmatch) a token is limited to; None or an empty list means every key."""
    if allow is None:
        return None
    if not isinstance(allow, list) or not all(
        isinstance(g, str) and 0 < len(g) <= KEY_MAX and re.fullmatch(r"[A-Z0-9_*?\[\]!]+", g) for g in allow
    ):
        raise ValidationError("Allow must be a list of key patterns such as GITHUB_*")
    return sorted(set(allow)) or None


def parse_duration(text: Any) -> timedelta | None:
    """`90m`, `30d`...: a number and a unit s, m, h or d; None or an empty string mean no expiry."""
    if text is None or text == "":
        return None
    match = DURATION_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValidationError("Expiry must be a number with a unit s, m, h or d (e.g., 30d)")
    duration = timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})
    if duration > MAX_DURATION:
        raise ValidationError("Expiry must be at most 3650 days")
    return duration
