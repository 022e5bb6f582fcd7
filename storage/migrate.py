"""Alembic upgrades as the server and the ENC run them (imported by them only: a pole has
no Alembic).

On SQLite the upgrade runs with foreign keys off: a column change copies the table and
drops the old one, and with foreign keys on that drop would fail or, through ``ON DELETE
CASCADE``, empty the tables that refer to it (the server's ENC outbox). The foreign keys
are checked afterwards. On PostgreSQL, processes starting together (replicas) can take a
transaction-level advisory lock: one migrates, the others wait and find it done.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

__all__ = ["MigrationBroken", "alembic_config", "upgrade"]


class MigrationBroken(Exception):
    """The upgrade left rows without their parent; the message lists the first ones."""


def alembic_config(script_location: str) -> Config:
    """Alembic's configuration for the migrations in ``script_location`` (they ship
    inside the package: no alembic.ini is read)."""
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    return cfg


def upgrade(engine: Engine, script_location: str, *, lock_key: int | None = None) -> None:
    """Bring the database to the newest schema of ``script_location`` (idempotent)."""
    cfg = alembic_config(script_location)
    if engine.dialect.name == "sqlite":
        _sqlite_upgrade(engine, cfg)
        return
    with engine.begin() as conn:
        if lock_key is not None and conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _sqlite_upgrade(engine: Engine, cfg: Config) -> None:
    with engine.connect() as conn:
        # PRAGMA foreign_keys is ignored inside a transaction: set it between them.
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise MigrationBroken(f"the migration left rows without their parent: {broken[:5]}")
        finally:
            conn.rollback()
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
