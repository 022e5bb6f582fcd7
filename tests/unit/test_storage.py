"""The SQLite settings both stores rely on (durable commits, foreign keys), set once."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from storage import sqlite_engine


def test_every_connection_is_durable(tmp_path: Path) -> None:
    engine = sqlite_engine(f"sqlite:///{tmp_path / 'new' / 'db.sqlite'}", busy_timeout_s=2.5)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 2500
    finally:
        engine.dispose()
    assert (tmp_path / "new" / "db.sqlite").exists()


def test_the_server_and_the_enc_open_sqlite_through_it(tmp_path: Path) -> None:
    from enc import AlertStore
    from server import make_engine

    for engine in (
        make_engine(f"sqlite:///{tmp_path / 's.db'}"),
        AlertStore.open(f"sqlite:///{tmp_path / 'e.db'}").engine,
    ):
        try:
            with engine.connect() as conn:
                assert conn.execute(text("PRAGMA synchronous")).scalar() == 2
        finally:
            engine.dispose()
