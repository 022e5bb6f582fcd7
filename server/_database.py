"""The server's database: one object (``Database``) that every part of the store shares
(the SQLAlchemy engine and its sessions, the clock, the master key and what it seals),
and the migrations.

SQLite (embedded default; its pragmas are ``storage.sqlite_engine``'s) or PostgreSQL
(several replicas). Everything another replica might do at the same moment is written as
a conditional UPDATE (compare-and-set) or decided under an advisory lock, so that SQLite
and PostgreSQL give the same guarantees without table locks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hardware._wrapped import RecordSealer, SealedRecordError
from protocol import wall_clock_ms
from storage import sqlite_engine
from storage.migrate import MigrationBroken, upgrade

from ._errors import MasterKeyError, RegistryError
from ._keys import MasterKey
from ._schema import AuditEntry

__all__ = [
    "DATABASE_UNAVAILABLE",
    "RETRY_FIRST_S",
    "RETRY_MAX_S",
    "Database",
    "IncidentSeal",
    "make_engine",
    "migrate",
    "now_ms",
]

DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
"""What the database driver raises while the database cannot be reached (down,
restarting, the connection lost): what is being done can be tried again later."""
RETRY_FIRST_S = 0.5
"""The first pause before asking a database that could not be reached again; it
doubles up to ``RETRY_MAX_S``."""
RETRY_MAX_S = 5.0

now_ms = wall_clock_ms  # the one wall clock (ms since the epoch), under the server's name

MIGRATION_LOCK = 7283641
"""PostgreSQL advisory lock key of the migrations (replicas starting together)."""


# -- engine and migrations -------------------------------------------------------------


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return sqlite_engine(url, busy_timeout_s=30)
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema (idempotent; replicas starting together
    on PostgreSQL: one migrates, the others wait)."""
    try:
        upgrade(
            engine, str(resources.files("server").joinpath("migrations")), lock_key=MIGRATION_LOCK
        )
    except MigrationBroken as exc:
        raise RegistryError(str(exc)) from None


# -- sealed at rest ------------------------------------------------------------------------


def _aad(incident_id: str, column: str) -> bytes:
    # Binds a sealed field to its row and column: moved elsewhere, it does not open.
    return f"citywatch server incident {incident_id} {column}".encode()


class IncidentSeal:
    """An incident's photo and position sealed under keys derived from the master key,
    each bound to its incident and column."""

    def __init__(self, master: MasterKey) -> None:
        self._records = master.records

    def photo(self, incident_id: str, photo: bytes) -> bytes:
        return self._records.seal(photo, aad=_aad(incident_id, "photo"))

    def open_photo(self, incident_id: str, blob: bytes) -> bytes:
        if not RecordSealer.is_sealed(blob):
            return bytes(blob)  # a row from before sealing, until seal_clear_incidents
        try:
            return self._records.open(blob, aad=_aad(incident_id, "photo"))
        except SealedRecordError:
            raise MasterKeyError(
                f"the photo of incident {incident_id} does not open under "
                "this master key (another master key, or altered)"
            ) from None

    def coords(
        self, incident_id: str, lat: float, lon: float, alt: float | None, acc: float | None
    ) -> bytes:
        plain = json.dumps([lat, lon, alt, acc]).encode()
        return self._records.seal(plain, aad=_aad(incident_id, "coords"))

    def open_coords(
        self,
        incident_id: str,
        lat: float | None,
        lon: float | None,
        alt: float | None,
        acc: float | None,
        sealed: bytes | None,
    ) -> tuple[float, float, float | None, float | None]:
        if sealed is None:  # a row from before sealing
            assert lat is not None and lon is not None
            return lat, lon, alt, acc
        try:
            plain = self._records.open(sealed, aad=_aad(incident_id, "coords"))
        except SealedRecordError:
            raise MasterKeyError(
                f"the position of incident {incident_id} does not open "
                "under this master key (another master key, or altered)"
            ) from None
        got = json.loads(plain)
        return float(got[0]), float(got[1]), got[2], got[3]


# -- the database object ---------------------------------------------------------------


class _WriterTurn:
    """SQLite has one writer at a time, and a writer that finds another one sleeps in
    SQLite's busy handler (1, 2, 5, 10, ... 100 ms between tries): under load a commit of
    a millisecond kept the next writer waiting tens of them. In this process the writing
    transactions take turns on a lock instead, so the next one starts the moment the last
    one has committed (other processes, the CLI, still meet the busy timeout).

    The turn is taken at a transaction's first statement that writes, as SQLite takes
    its own lock (the driver begins a transaction only there: reads before it hold no
    snapshot), and given back once the transaction has ended: reads never wait for it.
    PostgreSQL has row locks and needs none of this."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._mine = threading.local()
        event.listen(engine, "before_cursor_execute", self._before_statement)

    def _before_statement(
        self, _conn: Any, _cursor: Any, statement: str, *_args: Any, **_kwargs: Any
    ) -> None:
        mine = self._mine
        if not getattr(mine, "depth", 0) or getattr(mine, "held", False):
            return
        if statement.lstrip()[:6].upper() not in ("SELECT", "PRAGMA"):
            self._lock.acquire()
            mine.held = True

    @contextmanager
    def during(self) -> Iterator[None]:
        """Around one transaction of ``Database.tx`` (nested ones share the outer's)."""
        mine = self._mine
        mine.depth = getattr(mine, "depth", 0) + 1
        try:
            yield
        finally:
            mine.depth -= 1
            if mine.depth == 0 and getattr(mine, "held", False):
                mine.held = False
                self._lock.release()


class Database:
    """What every part of the store shares: the engine (one connection pool), sessions,
    the clock and the master key. Thread-safe: one session per transaction."""

    def __init__(
        self, engine: Engine, master_key: MasterKey, *, clock: Callable[[], int] = now_ms
    ) -> None:
        self.engine = engine
        self.master = master_key
        self.seal = IncidentSeal(master_key)
        #: Incidents' positions once unsealed (id -> lat, lon), for fusion: they never
        #: change once stored, and every dangerous decision looks at a minute's worth.
        self.positions: dict[str, tuple[float, float]] = {}
        self.now = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._turn = _WriterTurn(engine) if engine.dialect.name == "sqlite" else None

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction, committed when the block ends without an exception."""
        if self._turn is None:
            with self._sessions.begin() as s:
                yield s
            return
        with self._turn.during(), self._sessions.begin() as s:
            yield s

    def audit(self, s: Session, actor: str, action: str, subject: str, **detail: Any) -> None:
        """An audit entry in the transaction of the change it records."""
        s.add(
            AuditEntry(
                at=self.now(),
                actor=actor,
                action=action,
                subject=subject,
                detail=json.dumps(detail, sort_keys=True, default=str),
            )
        )

    def close(self) -> None:
        self.engine.dispose()
