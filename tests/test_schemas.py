"""`schemas.dump` answers exactly what marshmallow's own dump of the same schema answers, and the schemas of
the busiest answers take its generated path (see schemas._flat_dumper)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from marshmallow import Schema, fields

from secrets_hub import schemas

SCHEMAS = {name: value for name, value in vars(schemas).items() if name.endswith("_schema") and isinstance(value, Schema)}
FLAT = {"secret_meta_schema", "secrets_meta_schema", "secret_created_schema", "secret_updated_schema",
        "secret_value_schema", "versions_schema", "restored_schema", "deleted_schema", "audit_events_schema",
        "revoked_schema"}
# Not UTC, with microseconds: the answer must be UTC with milliseconds and a Z.
AT = datetime(2026, 12, 7, 19, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))


def sample(schema: Schema, number: int, none: bool = False) -> dict[str, Any]:
    """An object with a value of its type for each of `schema`'s fields, by attribute; None where allowed if `none`."""
    row: dict[str, Any] = {"not_a_field": "never in the answer"}
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
        else:  # nested, list and raw fields: marshmallow dumps those
            continue
        row[name if field.attribute is None else field.attribute] = value
    return row


def test_the_flat_schemas_take_the_generated_path() -> None:
    assert {name for name, schema in SCHEMAS.items() if schemas._flat_dumper(schema) is not None} == FLAT


@pytest.mark.parametrize("name", sorted(FLAT))
@pytest.mark.parametrize("none", [False, True], ids=["values", "nones"])
def test_the_generated_dump_is_marshmallows(name: str, none: bool) -> None:
    schema = SCHEMAS[name]
    dump_one = schemas._flat_dumper(schema)
    for number in range(3):
        row = sample(schema, number, none)
        assert dump_one(row) == schema.dump(row, many=False)


@pytest.mark.parametrize("name", sorted(FLAT))  # the others are marshmallow's own dump (see the test above)
def test_dump_is_marshmallows_dump(name: str) -> None:
    schema = SCHEMAS[name]
    data = [sample(schema, number) for number in range(3)] if schema.many else sample(schema, 1)
    assert schemas.dump(schema, data) == schema.dump(data)


def test_names_attributes_and_times_as_the_schema_declares_them() -> None:
    schema = Schema.from_dict({
        "plain": fields.String(),
        "renamed": fields.String(data_key="shown-as"),
        "not an identifier": schemas.UTCDateTime(attribute="stored_at", allow_none=True),
        "count": fields.Integer(attribute="n"),
    })()
    row = {"plain": "p", "renamed": "r", "stored_at": AT, "n": 3}
    assert schemas._flat_dumper(schema) is not None
    assert schemas.dump(schema, row) == schema.dump(row) == {
        "plain": "p", "shown-as": "r", "not an identifier": "2026-12-07T17:04:05.123Z", "count": 3}


def test_a_number_dumped_as_text_goes_through_marshmallow() -> None:
    schema = Schema.from_dict({"count": fields.Integer(as_string=True)})()
    assert schemas._flat_dumper(schema) is None
    assert schemas.dump(schema, {"count": 3}) == {"count": "3"}


def test_a_field_left_out_is_left_out_as_marshmallow_leaves_it_out() -> None:
    row = {"key": "API_KEY"}
    assert schemas.dump(schemas.secret_value_schema, row) == schemas.secret_value_schema.dump(row) == {"key": "API_KEY"}
