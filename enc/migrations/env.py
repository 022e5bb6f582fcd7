"""Alembic environment for the ENC store; run programmatically by ``enc._store``, which
passes an open connection in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from enc._schema import Base

VERSION_TABLE = "enc_alembic_version"

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the ENC migrations run from enc._store.migrate(), with a connection")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
