"""Alembic environment: runs on the connection the server hands over (no alembic.ini).
Its own version table, so the ENC's migrations may share a database without a clash."""

from __future__ import annotations

from alembic import context

from server._schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table="server_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
