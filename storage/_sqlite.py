"""One place for the SQLite settings of the server's and the ENC's stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

__all__ = ["SQLITE_PRAGMAS", "sqlite_engine"]

# WAL lets the CLI and the dashboard read while the service writes; FULL makes a commit
# durable before the peer is told (C4, N2): that is what "never lose an alert" costs.
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON")


def sqlite_engine(url: str, *, busy_timeout_s: float) -> Engine:
    """An engine for the SQLite database at ``url``; its folder is created if missing.
    A writer waits up to ``busy_timeout_s`` for another one to finish."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        raise ValueError(f"not a SQLite URL: {u.get_backend_name()}")
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})
    busy_ms = round(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        for pragma in (*SQLITE_PRAGMAS, f"busy_timeout={busy_ms}"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    return engine
