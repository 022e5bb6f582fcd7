"""The server's storage, split by what it keeps, over one database object
(``_database.Database``: engine, sessions, clock, master key):

- ``_registry.DeviceRegistry``: devices and their sealed keys;
- ``_zones.ZoneStore``: monitoring windows, zone announcements, broadcast epochs;
- ``_incidents.IncidentStore``: incidents, decisions with fusion, retention;
- ``_alerts.AlertQueue``: the ENC outbox and its leases;
- ``_audit.AuditLog``: the audit log.

``Store`` is all of them on one database: what the server, its admin API and its
command line use.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from ._alerts import AlertQueue, OutboxItem
from ._audit import AuditLog, AuditRecord
from ._database import Database, make_engine, migrate, now_ms
from ._incidents import FUSION_LOCK, DecisionRecord, IncidentInfo, IncidentStore, PurgeReport
from ._keys import MasterKey
from ._registry import DEVICE_ACTIONS, DeviceInfo, DeviceRegistry
from ._zones import WindowInfo, ZoneStore

__all__ = [
    "DEVICE_ACTIONS",
    "FUSION_LOCK",
    "AuditRecord",
    "Database",
    "DecisionRecord",
    "DeviceInfo",
    "IncidentInfo",
    "OutboxItem",
    "PurgeReport",
    "Store",
    "WindowInfo",
    "make_engine",
    "migrate",
    "now_ms",
]


class Store(DeviceRegistry, ZoneStore, IncidentStore, AlertQueue, AuditLog):
    """All reads and writes of the server's database. Thread-safe (one session per call)."""

    def __init__(
        self, engine: Engine, master_key: MasterKey, *, clock: Callable[[], int] = now_ms
    ) -> None:
        self.db = Database(engine, master_key, clock=clock)

    @classmethod
    def open(
        cls,
        url: str,
        master_key: MasterKey,
        *,
        clock: Callable[[], int] = now_ms,
        run_migrations: bool = True,
    ) -> Store:
        engine = make_engine(url)
        if run_migrations:
            migrate(engine)
        return cls(engine, master_key, clock=clock)

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def close(self) -> None:
        self.db.close()
