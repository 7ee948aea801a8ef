"""`schemas.dump` answers exactly what marshmallow's own dump of the same schema answers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from marshmallow import Schema, fields

from secrets_hub import schemas

RESPONSE_SCHEMAS = {name: value for name, value in vars(schemas).items()
                    if name.endswith("_schema") and isinstance(value, Schema)}
# Not UTC, with microseconds: the answer must be UTC with milliseconds and a Z.
AT = datetime(2026, 12, 7, 19, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))


def sample(schema: Schema, number: int, none: bool = False) -> dict[str, Any]:
    """An object with a value for each of `schema`'s fields, by attribute; None where allowed if `none`."""
    row: dict[str, Any] = {}
    for name, field in schema.dump_fields.items():
        if none and field.allow_none:
            value = None
        elif isinstance(field, fields.DateTime):
            value = AT + timedelta(seconds=number)
        elif isinstance(field, fields.Integer):
            value = number
        elif isinstance(field, fields.Boolean):
            value = number % 2 == 0
        elif isinstance(field, fields.String):
            value = f"{name}-{number}"
        else:  # nested and list fields: marshmallow dumps those
            continue
        row[field.attribute or name] = value
    return row


def payload(schema: Schema, none: bool = False) -> Any:
    return [sample(schema, number, none) for number in range(3)] if schema.many else sample(schema, 1, none)


@pytest.mark.parametrize("name", sorted(RESPONSE_SCHEMAS))
@pytest.mark.parametrize("none", [False, True], ids=["values", "nones"])
def test_dump_is_marshmallows_dump(name: str, none: bool) -> None:
    schema = RESPONSE_SCHEMAS[name]
    data = payload(schema, none)
    assert schemas.dump(schema, data) == schema.dump(data)


def test_a_secrets_list_is_dumped_with_the_exact_names_and_times() -> None:
    row = {"id": "7", "key": "API_KEY", "description": None, "created_at": AT, "updated_at": AT,
           "extra": "never in the answer"}
    assert schemas.dump(schemas.secrets_meta_schema, [row]) == [
        {"id": "7", "key": "API_KEY", "description": None, "createdAt": "2026-12-07T17:04:05.123Z",
         "updatedAt": "2026-12-07T17:04:05.123Z"}]


def test_a_field_left_out_is_left_out_as_marshmallow_leaves_it_out() -> None:
    row = {"key": "API_KEY"}
    assert schemas.dump(schemas.secret_value_schema, row) == schemas.secret_value_schema.dump(row) == {"key": "API_KEY"}
