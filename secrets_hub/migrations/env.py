"""Alembic environment: always run through `secrets_hub.bootstrap.upgrade`, which hands over a connection."""

from alembic import context

from secrets_hub import models

target_metadata = models.Base.metadata
connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
