"""The database handle and the engine settings that make SQLite and PostgreSQL behave alike."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from secrets_hub.store import POSTGRESQL_CONNECT_ARGS, sqlite_pragmas


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both backends (SQLite keeps no zone, so store naive UTC there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def engine_options(database_url: str) -> dict:
    """Pool settings: PostgreSQL keeps a checked pool; SQLite's never makes a request wait for a connection."""
    if database_url.startswith("postgresql"):
        # The admin paths' pool (users, tokens, rotation, backup); requests for secrets use the store's.
        return {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 20, "pool_recycle": 1800,
                "connect_args": POSTGRESQL_CONNECT_ARGS}
    # No request ever waits for a pooled connection: on the event loop (`serve` on SQLite) that wait would
    # block the loop, and with it the requests holding the connections. Past the 5 kept, more are opened.
    return {"max_overflow": -1}


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    if isinstance(dbapi_connection, sqlite3.Connection):
        sqlite_pragmas(dbapi_connection)
