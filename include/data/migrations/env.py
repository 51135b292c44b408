"""Alembic environment: runs on the connection that :func:`include.data.store.migrate` passes in."""

from __future__ import annotations

from alembic import context

from include.data.store import SCHEMA_VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=SCHEMA_VERSION_TABLE,
    transactional_ddl=connection.dialect.name == "postgresql",
)
with context.begin_transaction():
    context.run_migrations()
