"""The server's storage: device registry, audit log, monitoring windows, incidents and
the ENC outbox, in SQLite (embedded default) or PostgreSQL (several replicas).

Everything another replica might do at the same moment is written as a conditional
UPDATE (compare-and-set) so that SQLite and PostgreSQL give the same guarantees without
table locks: one replica wins a zone's broadcast, one replica holds an outbox lease.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hardware._wrapped import SEAL_OVERHEAD, RecordSealer, SealedRecordError
from protocol import (
    ALG_A128GCM,
    ALG_A256GCM,
    ALG_NAMES,
    Coords,
    IncidentReported,
    wall_clock_ms,
)
from storage import sqlite_engine

from ._errors import DeviceExists, DeviceNotFound, MasterKeyError, RegistryError
from ._fusion import FusionRule, Sighting
from ._keys import MasterKey
from ._outcome import Outcome
from ._schema import (
    AuditEntry,
    DeviceRow,
    IncidentRow,
    OutboxRow,
    WindowRow,
    ZoneBroadcastRow,
)

__all__ = [
    "AuditRecord",
    "DeviceInfo",
    "IncidentInfo",
    "OutboxItem",
    "PurgeReport",
    "Store",
    "WindowInfo",
    "migrate",
    "now_ms",
]

DEVICE_ACTIONS = ("activate", "deactivate", "block", "unblock")


now_ms = wall_clock_ms  # the one wall clock (ms since the epoch), under the server's name


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A registered device as the rest of the server sees it (no key)."""

    uid: str
    """The device's UID."""
    kid: bytes
    """Its key id (a pseudonym)."""
    zone: str
    """Monitoring zone."""
    lat: float
    """Registered latitude."""
    lon: float
    """Registered longitude."""
    alg: int
    """COSE alg of its key."""
    active: bool
    """False once deactivated."""
    blocked: bool
    """True while blocked."""
    epoch: int
    """Last broadcast epoch sent."""
    confirmed_epoch: int | None
    """Epoch of the last B2 received."""
    confirmed_at: int | None
    """When that B2 arrived, ms."""
    created_at: int
    """Registration time, ms."""
    updated_at: int
    """Last change, ms."""

    @property
    def status(self) -> str:
        return "blocked" if self.blocked else ("active" if self.active else "inactive")

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "kid_hex": self.kid.hex(), "zone": self.zone, "lat": self.lat,
                "lon": self.lon, "alg": ALG_NAMES.get(self.alg, str(self.alg)),
                "status": self.status, "active": self.active, "blocked": self.blocked,
                "epoch": self.epoch, "confirmed_epoch": self.confirmed_epoch,
                "confirmed_at": self.confirmed_at, "created_at": self.created_at,
                "updated_at": self.updated_at}


@dataclass(frozen=True, slots=True)
class WindowInfo:
    """An operator's monitoring window."""

    id: int
    """Row id."""
    zone: str
    """Zone it covers."""
    opens_at: int
    """Start, ms."""
    closes_at: int
    """End, ms (moved to the closing time when closed early)."""
    opened_by: str
    """Who opened it."""
    closed_by: str | None
    """Who closed it early, if anyone."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "zone": self.zone, "opens_at": self.opens_at,
                "closes_at": self.closes_at, "opened_by": self.opened_by,
                "closed_by": self.closed_by}


@dataclass(frozen=True, slots=True)
class IncidentInfo:
    """A stored incident, without its photo."""

    id: str
    """Incident id (``protocol.incident_id_for``)."""
    device_uid: str
    """Reporting device."""
    kid: bytes
    """Its kid."""
    zone: str
    """Its zone when the report arrived."""
    lat: float
    """Reported latitude."""
    lon: float
    """Reported longitude."""
    alt: float | None
    """Reported altitude."""
    acc: float | None
    """Reported horizontal accuracy, m."""
    coords_src: str
    """"gps" or "fixed"."""
    device_score: float
    """The device's pre-screen score."""
    label: str
    """The device's label."""
    captured_at: int
    """Capture time (device clock), ms."""
    received_at: int
    """When the server stored it, ms."""
    photo_bytes: int
    """Size of the photo."""
    server_score: float | None
    """The server's score, once verified."""
    uncertain: bool | None
    """True when the score is close to the threshold."""
    decision: str | None
    """None (not verified yet), "dangerous" or "dismissed"."""
    decision_reason: str | None
    """Why."""
    decided_at: int | None
    """When, ms."""
    enc_state: str | None = None
    """Outbox state for dangerous incidents: "pending" or "delivered"."""
    enc_attempts: int | None = None
    """N1 attempts so far."""
    enc_delivered_at: int | None = None
    """When the matching N2 arrived, ms."""
    fused_into: str | None = None
    """The alerted incident this one was fused into (no alert of its own)."""

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "kid"}
        out["kid_hex"] = self.kid.hex()
        return out


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """An alert claimed for delivery: what N1 needs."""

    incident_id: str
    """Incident id."""
    attempts: int
    """Attempts made before this one."""
    lat: float
    """Latitude."""
    lon: float
    """Longitude."""
    alt: float | None
    """Altitude."""
    acc: float | None
    """Accuracy."""
    coords_src: str
    """"gps" or "fixed"."""
    photo: bytes
    """The JPEG."""
    score: float
    """The server's score."""
    label: str
    """Label."""
    captured_at: int
    """Capture time, ms."""
    device_uid: str
    """Reporting device."""


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What one retention purge removed (or, in a dry run, would remove)."""

    photos_dismissed: tuple[str, ...]
    """Incidents dismissed by verification whose photo was erased."""
    photos_alerted: tuple[str, ...]
    """Alerted (delivered or fused) incidents whose photo was erased."""
    incidents: tuple[str, ...]
    """Incidents deleted with everything about them but the audit log."""
    dry_run: bool
    """Nothing was changed."""

    @property
    def total(self) -> int:
        return len(self.photos_dismissed) + len(self.photos_alerted) + len(self.incidents)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "photos_dismissed": list(self.photos_dismissed),
                "photos_alerted": list(self.photos_alerted),
                "incidents": list(self.incidents)}


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit log entry."""

    at: int
    """When, ms."""
    actor: str
    """Who."""
    action: str
    """What ("device.add", "window.open", ...)."""
    subject: str
    """On what (a UID, a zone)."""
    detail: dict[str, Any]
    """Parameters of the change."""

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "actor": self.actor, "action": self.action,
                "subject": self.subject, "detail": self.detail}


# -- engine and migrations -------------------------------------------------------------


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    # The migrations ship inside the package; no alembic.ini is needed or read.
    cfg.set_main_option("script_location",
                        str(resources.files("server").joinpath("migrations")))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema (idempotent)."""
    if engine.dialect.name == "sqlite":
        _sqlite_upgrade(engine)
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait and find it done.
            conn.execute(text("SELECT pg_advisory_xact_lock(7283641)"))
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _sqlite_upgrade(engine: Engine) -> None:
    """The upgrade on SQLite with foreign keys off: a column change copies the table
    and drops the old one, and with foreign keys on that drop would fail or, through
    ``ON DELETE CASCADE``, empty the ENC outbox. Checked afterwards."""
    cfg = _alembic_config()
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
                raise RegistryError(f"the migration left rows without their parent: "
                                    f"{broken[:5]}")
        finally:
            conn.rollback()
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """What the verification decided about one incident (Store.decide_many)."""

    incident_id: str
    score: float
    uncertain: bool
    dangerous: bool
    reason: str
    fuse_within_m: float = 0.0
    """Fuse a dangerous incident into an alerted one this near (0: never)."""
    fuse_within_ms: int = 0
    """... that arrived within this time of it."""


FUSION_LOCK = 7283642
"""PostgreSQL advisory lock key of fusion decisions (7283641 is the migrations')."""


def _lock_fusion(s: Session) -> None:
    """Serialise fusion decisions across replicas until this transaction ends.

    Without it, two replicas deciding two reports of one scene at the same instant each
    look for an alerted neighbour before the other has committed, find none, and both
    alert. Under the lock the second one to decide sees the first one's alert (READ
    COMMITTED: each statement sees what was committed before it) and is fused into it.
    One key for every scene: the coordinates are sealed, so the database cannot tell
    scenes apart, and only dangerous decisions (alerts, a few a minute) take it. SQLite
    is one server process, whose decisions are one transaction at a time already.
    """
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FUSION_LOCK})


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return sqlite_engine(url, busy_timeout_s=30)
    return create_engine(url, pool_pre_ping=True)


# -- the store ---------------------------------------------------------------------------


class Store:
    """All reads and writes of the server's database. Thread-safe (one session per call)."""

    def __init__(self, engine: Engine, master_key: MasterKey, *,
                 clock: Callable[[], int] = now_ms) -> None:
        self.engine = engine
        self._master = master_key
        self._clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, master_key: MasterKey, *, clock: Callable[[], int] = now_ms,
             run_migrations: bool = True) -> Store:
        engine = make_engine(url)
        if run_migrations:
            migrate(engine)
        return cls(engine, master_key, clock=clock)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def _audit(self, s: Session, actor: str, action: str, subject: str, **detail: Any) -> None:
        s.add(AuditEntry(at=self._clock(), actor=actor, action=action, subject=subject,
                         detail=json.dumps(detail, sort_keys=True, default=str)))

    # -- registry ----------------------------------------------------------------------

    def add_device(self, *, uid: str, zone: str, lat: float, lon: float, alg: int,
                   actor: str, key: bytes | None = None) -> tuple[DeviceInfo, bytes]:
        """Register a device with a fresh random kid and key (or the given key); returns
        the device and its key, which leaves the server only in the provisioning bundle."""
        if not 1 <= len(uid) <= 64:
            raise RegistryError("a UID is 1 to 64 characters")
        if not 1 <= len(zone) <= 64:
            raise RegistryError("a zone name is 1 to 64 characters")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise RegistryError("latitude must be in -90..90 and longitude in -180..180")
        if alg not in (ALG_A128GCM, ALG_A256GCM):
            raise RegistryError(f"unknown key algorithm {alg}")
        length = 16 if alg == ALG_A128GCM else 32
        if key is None:
            key = secrets.token_bytes(length)
        elif len(key) != length:
            raise RegistryError(f"a {ALG_NAMES[alg]} key is {length} bytes")
        # The kid is a random pseudonym, never derived from the UID (protocol.md 1.3).
        kid = secrets.token_bytes(8)
        now = self._clock()
        row = DeviceRow(uid=uid, kid=kid, zone=zone, lat=float(lat), lon=float(lon), alg=alg,
                        key_sealed=self._master.seal_device_key(key, kid=kid), active=True,
                        blocked=False, epoch=0, created_at=now, updated_at=now)
        try:
            with self._tx() as s:
                s.add(row)
                s.flush()
                self._audit(s, actor, "device.add", uid, kid=kid.hex(), zone=zone, lat=lat,
                            lon=lon, alg=ALG_NAMES[alg])
        except IntegrityError:
            raise DeviceExists(f"a device with UID {uid!r} is already registered") from None
        return _device_info(row), key

    def list_devices(self, *, zone: str | None = None) -> list[DeviceInfo]:
        with self._tx() as s:
            q = select(DeviceRow).order_by(DeviceRow.uid)
            if zone is not None:
                q = q.where(DeviceRow.zone == zone)
            return [_device_info(r) for r in s.scalars(q)]

    def get_device(self, uid: str) -> DeviceInfo:
        with self._tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            return _device_info(row)

    def device_by_kid(self, kid: bytes) -> tuple[DeviceInfo, bytes] | None:
        """The device and its decrypted key, or None."""
        with self._tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.kid == kid)).first()
            if row is None:
                return None
            return _device_info(row), self._master.open_device_key(row.key_sealed, kid=kid)

    def devices_changed_since(self, since: int) -> list[DeviceInfo]:
        with self._tx() as s:
            q = select(DeviceRow).where(DeviceRow.updated_at >= since)
            return [_device_info(r) for r in s.scalars(q)]

    def device_kids(self) -> set[bytes]:
        with self._tx() as s:
            return set(s.scalars(select(DeviceRow.kid)))

    def set_device_state(self, uid: str, action: str, *, actor: str, reason: str = ""
                         ) -> DeviceInfo:
        """activate, deactivate, block or unblock; audited."""
        values: dict[str, bool] = {
            "activate": {"active": True}, "deactivate": {"active": False},
            "block": {"blocked": True}, "unblock": {"blocked": False},
        }.get(action, {})
        if not values:
            raise RegistryError(f"unknown device action {action!r}")
        with self._tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = max(self._clock(), row.updated_at + 1)
            detail: dict[str, Any] = {"reason": reason} if reason else {}
            self._audit(s, actor, f"device.{action}", uid, **detail)
            s.flush()
            return _device_info(row)

    def block_unless_blocked(self, uid: str, *, actor: str, reason: str) -> DeviceInfo | None:
        """Block a device and audit it, unless it is blocked already (None then): one
        conditional UPDATE, so that two replicas or two verifications deciding at once
        block it, and audit it, once."""
        with self._tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            res = s.execute(update(DeviceRow)
                            .where(DeviceRow.uid == uid, DeviceRow.blocked.is_(False))
                            .values(blocked=True,
                                    updated_at=max(self._clock(), row.updated_at + 1))
                            .execution_options(synchronize_session=False))
            if not res.rowcount:  # type: ignore[attr-defined]
                return None
            self._audit(s, actor, "device.block", uid, reason=reason)
            s.flush()
            s.refresh(row)
            return _device_info(row)

    def delete_device(self, uid: str, *, actor: str) -> None:
        with self._tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            s.delete(row)
            self._audit(s, actor, "device.delete", uid, kid=row.kid.hex())

    # -- broadcast epochs ------------------------------------------------------------

    def epochs(self, kids: list[bytes]) -> dict[bytes, int]:
        """Last broadcast epoch of each device, as stored (any replica)."""
        out: dict[bytes, int] = {}
        with self._tx() as s:
            for i in range(0, len(kids), 500):
                out.update({bytes(k): int(e) for k, e in s.execute(
                    select(DeviceRow.kid, DeviceRow.epoch)
                    .where(DeviceRow.kid.in_(kids[i:i + 500])))})
        return out

    def record_broadcasts(self, sent: list[tuple[bytes, int, int, bytes]]) -> list[bool]:
        """Persist B1s (kid, ep, T_S, H(B1)) before they are sent: each device's epoch
        moves from ep-1 to ep. False where the epoch moved meanwhile (another replica
        announced): seal again with a fresh epoch."""
        out = []
        with self._tx() as s:
            for kid, ep, ts, b1_hash in sent:
                res = s.execute(update(DeviceRow)
                                .where(DeviceRow.kid == kid, DeviceRow.epoch == ep - 1)
                                .values(epoch=ep, last_b1_ts=ts, last_b1_hash=b1_hash))
                out.append(bool(res.rowcount))  # type: ignore[attr-defined]
        return out

    def last_broadcast(self, kid: bytes) -> tuple[int, int, bytes] | None:
        """(epoch, T_S, H(B1)) of the last B1 sent to the device by any replica, while
        it is unconfirmed (a confirmed one is not confirmed twice: a replayed B2)."""
        with self._tx() as s:
            row = s.execute(select(DeviceRow.epoch, DeviceRow.last_b1_ts,
                                   DeviceRow.last_b1_hash, DeviceRow.confirmed_epoch)
                            .where(DeviceRow.kid == kid)).first()
        if row is None or row[1] is None or row[2] is None:
            return None
        if row[3] is not None and row[3] >= row[0]:
            return None
        return int(row[0]), int(row[1]), bytes(row[2])

    def confirm_broadcast(self, kid: bytes, *, ep: int) -> None:
        with self._tx() as s:
            s.execute(update(DeviceRow).where(DeviceRow.kid == kid)
                      .values(confirmed_epoch=ep, confirmed_at=self._clock()))

    # -- monitoring windows ----------------------------------------------------------

    def open_window(self, zone: str, *, until: int, actor: str) -> WindowInfo:
        now = self._clock()
        if not 1 <= len(zone) <= 64:
            raise RegistryError("a zone name is 1 to 64 characters")
        if until <= now:
            raise RegistryError("the window's end is in the past")
        with self._tx() as s:
            row = WindowRow(zone=zone, opens_at=now, closes_at=until, opened_by=actor,
                            updated_at=now)
            s.add(row)
            s.flush()
            self._audit(s, actor, "window.open", zone, until=until, window=row.id)
            return _window_info(row)

    def close_window(self, zone: str, *, actor: str) -> int:
        """End every open operator window of the zone now; returns how many."""
        now = self._clock()
        with self._tx() as s:
            res = s.execute(update(WindowRow)
                            .where(WindowRow.zone == zone, WindowRow.closes_at > now)
                            .values(closes_at=now, closed_by=actor, updated_at=now))
            n = int(res.rowcount)  # type: ignore[attr-defined]
            self._audit(s, actor, "window.close", zone, closed=n)
            return n

    def open_windows(self, now: int | None = None) -> list[WindowInfo]:
        now = self._clock() if now is None else now
        with self._tx() as s:
            q = (select(WindowRow).where(WindowRow.opens_at <= now, WindowRow.closes_at > now)
                 .order_by(WindowRow.id))
            return [_window_info(r) for r in s.scalars(q)]

    def list_windows(self, *, limit: int = 100) -> list[WindowInfo]:
        with self._tx() as s:
            q = select(WindowRow).order_by(WindowRow.id.desc()).limit(limit)
            return [_window_info(r) for r in s.scalars(q)]

    def windows_revision(self) -> tuple[int, int]:
        """Changes to the windows table show up here (count, last change)."""
        with self._tx() as s:
            n, last = s.execute(select(func.count(WindowRow.id),
                                       func.max(WindowRow.updated_at))).one()
            return int(n), int(last or 0)

    def zone_announcements(self) -> dict[str, int | None]:
        with self._tx() as s:
            return {z: u for z, u in s.execute(
                select(ZoneBroadcastRow.zone, ZoneBroadcastRow.announced_until))}

    def claim_zone_announcement(self, zone: str, *, old: int | None, new: int | None) -> bool:
        """Compare-and-set what was announced to a zone; True for the one replica that
        moved it from ``old`` to ``new`` (and must now send the B1s)."""
        now = self._clock()
        with self._tx() as s:
            exists = s.scalar(select(func.count()).select_from(ZoneBroadcastRow)
                              .where(ZoneBroadcastRow.zone == zone))
            if not exists:
                if old is not None:
                    return False
                try:
                    with s.begin_nested():
                        s.add(ZoneBroadcastRow(zone=zone, announced_until=new, announced_at=now))
                    return True
                except IntegrityError:
                    return False
            cond = (ZoneBroadcastRow.announced_until.is_(None) if old is None
                    else ZoneBroadcastRow.announced_until == old)
            res = s.execute(update(ZoneBroadcastRow)
                            .where(ZoneBroadcastRow.zone == zone, cond)
                            .values(announced_until=new, announced_at=now))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    # -- incidents ---------------------------------------------------------------------

    def store_incident(self, inc: IncidentReported, *, zone: str) -> tuple[IncidentInfo, bool]:
        """Store a reported incident unless it is there already (same kid and cid give
        the same id); returns it and whether it was new."""
        return self.store_incidents([(inc, zone)])[0]

    def store_incidents(self, batch: Sequence[tuple[IncidentReported, str]]
                        ) -> list[tuple[IncidentInfo, bool]]:
        """``store_incident`` for many incidents in one transaction (one durable commit:
        the server groups the reports that arrive while the last commit runs)."""
        now = self._clock()
        c = [inc.coords for inc, _zone in batch]
        # Photos and coordinates reach the database only sealed.
        rows = [dict(id=inc.incident_id, kid=inc.kid, cid=inc.cid, device_uid=inc.uid,
                     zone=zone, lat=None, lon=None, alt=None, acc=None,
                     coords_sealed=self._seal_coords(inc.incident_id, co.lat, co.lon, co.alt,
                                                     co.acc),
                     coords_src=co.src, photo=self._seal_photo(inc.incident_id, inc.photo),
                     device_score=inc.score, label=inc.label, captured_at=inc.captured_at,
                     td=inc.td, received_at=now) for (inc, zone), co in zip(batch, c, strict=True)]
        insert = (sqlite_insert if self.engine.dialect.name == "sqlite" else pg_insert)
        new: set[str] = set()
        with self._tx() as s:
            for row in rows:  # one statement a row: RETURNING tells which were new
                got = s.execute(insert(IncidentRow).values(**row)
                                .on_conflict_do_nothing(index_elements=[IncidentRow.id])
                                .returning(IncidentRow.id)).scalar()
                if got is not None:
                    new.add(got)
            repeated = [r["id"] for r in rows if r["id"] not in new]
            known = {t[0]: self._incident_from_tuple(t) for t in s.execute(
                _incident_query().where(IncidentRow.id.in_(repeated)))} if repeated else {}
        out: list[tuple[IncidentInfo, bool]] = []
        for (inc, _zone), row in zip(batch, rows, strict=True):
            rid = row["id"]
            if rid in new:  # its first time in this batch: later ones are repeats
                new.discard(rid)
                known[rid] = _incident_info(IncidentRow(**row), inc.coords, len(inc.photo))
                out.append((known[rid], True))
            else:
                out.append((known[rid], False))
        return out

    def get_incident(self, incident_id: str) -> IncidentInfo:
        with self._tx() as s:
            got = s.execute(_incident_query().where(IncidentRow.id == incident_id)).first()
            if got is None:
                raise RegistryError(f"no incident {incident_id!r}")
            return self._incident_from_tuple(got)

    def incident_photo(self, incident_id: str) -> bytes:
        with self._tx() as s:
            photo = s.scalar(select(IncidentRow.photo).where(IncidentRow.id == incident_id))
            if photo is None:
                raise RegistryError(f"no incident {incident_id!r}")
            return self._open_photo(incident_id, photo)

    def list_incidents(self, *, limit: int = 100, decision: str | None = None
                       ) -> list[IncidentInfo]:
        q = _incident_query().order_by(IncidentRow.received_at.desc(), IncidentRow.id)
        if decision is not None:
            q = q.where(IncidentRow.decision == decision)
        with self._tx() as s:
            return [self._incident_from_tuple(t) for t in s.execute(q.limit(limit))]

    def undecided_incidents(self) -> list[str]:
        """Incidents stored but not verified (the server stopped in between)."""
        with self._tx() as s:
            return list(s.scalars(select(IncidentRow.id).where(IncidentRow.decision.is_(None))
                                  .order_by(IncidentRow.received_at)))

    def incident_for_verification(self, incident_id: str) -> tuple[IncidentInfo, bytes]:
        return self.get_incident(incident_id), self.incident_photo(incident_id)

    def decide(self, incident_id: str, *, score: float, uncertain: bool, dangerous: bool,
               reason: str) -> bool:
        """Record the verification's decision and, for a dangerous incident, queue the
        alert for the ENC in the same transaction. False if it was already decided."""
        record = DecisionRecord(incident_id, score, uncertain, dangerous, reason)
        return self.decide_many([record])[0] is not None

    def decide_many(self, decisions: Sequence[DecisionRecord]) -> list[Outcome | None]:
        """Decisions for many incidents in one transaction. Each gives
        ``Outcome.DANGEROUS`` (alert queued), ``Outcome.FUSED`` (dangerous, linked to an
        earlier nearby alerted incident, no alert of its own), ``Outcome.DISMISSED``, or
        None when it was decided already."""
        now = self._clock()
        out: list[Outcome | None] = []
        with self._tx() as s:
            if any(d.dangerous and d.fuse_within_m > 0 for d in decisions):
                _lock_fusion(s)
            for d in decisions:
                primary = self._fusion_primary(s, d) if d.dangerous else None
                reason = d.reason if primary is None else f"{d.reason}; fused into {primary}"
                res = s.execute(update(IncidentRow)
                                .where(IncidentRow.id == d.incident_id,
                                       IncidentRow.decision.is_(None))
                                .values(server_score=d.score, uncertain=d.uncertain,
                                        decision="dangerous" if d.dangerous else "dismissed",
                                        decision_reason=reason, decided_at=now,
                                        fused_into=primary)
                                .execution_options(synchronize_session=False))
                if not res.rowcount:  # type: ignore[attr-defined]
                    out.append(None)
                    continue
                if not d.dangerous:
                    out.append(Outcome.DISMISSED)
                elif primary is not None:
                    out.append(Outcome.FUSED)
                else:
                    s.add(OutboxRow(incident_id=d.incident_id, state="pending", attempts=0,
                                    next_attempt_at=now, lease_until=0, created_at=now))
                    s.flush()
                    out.append(Outcome.DANGEROUS)
        return out

    def _fusion_primary(self, s: Session, d: DecisionRecord) -> str | None:
        """The earliest alerted incident (not itself fused) that ``d``'s incident is the
        same scene as (``_fusion.FusionRule``), if any."""
        rule = FusionRule(within_m=d.fuse_within_m, within_ms=d.fuse_within_ms)
        if not rule.enabled:
            return None
        cols = (IncidentRow.id, IncidentRow.lat, IncidentRow.lon, IncidentRow.alt,
                IncidentRow.acc, IncidentRow.coords_sealed, IncidentRow.received_at)
        this = s.execute(select(*cols).where(IncidentRow.id == d.incident_id)).first()
        if this is None:
            return None
        # The coordinates are sealed, so the database narrows by time only (alerted
        # incidents of a few minutes); the distance is checked after unsealing.
        candidates = s.execute(
            select(*cols)
            .join(OutboxRow, OutboxRow.incident_id == IncidentRow.id)
            .where(IncidentRow.id != d.incident_id,
                   IncidentRow.fused_into.is_(None),
                   IncidentRow.received_at >= this[6] - rule.within_ms,
                   IncidentRow.received_at <= this[6] + rule.within_ms))
        return rule.primary(self._sighting(this), (self._sighting(c) for c in candidates))

    def _sighting(self, row: Any) -> Sighting:
        lat, lon, _alt, _acc = self._open_coords(*row[:6])
        return Sighting(str(row[0]), lat, lon, int(row[6]))

    def dismissed_count(self, uid: str, *, since: int) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.count()).select_from(IncidentRow).where(
                IncidentRow.device_uid == uid, IncidentRow.decision == "dismissed",
                IncidentRow.received_at >= since)) or 0)

    # -- ENC outbox --------------------------------------------------------------------

    def claim_due_alerts(self, *, owner: str, lease_ms: int, limit: int) -> list[OutboxItem]:
        """Pending alerts whose time has come and that no other replica holds; each is
        leased to ``owner`` for ``lease_ms``."""
        now = self._clock()
        with self._tx() as s:
            ids = list(s.scalars(
                select(OutboxRow.incident_id)
                .where(OutboxRow.state == "pending", OutboxRow.next_attempt_at <= now,
                       OutboxRow.lease_until <= now)
                .order_by(OutboxRow.next_attempt_at).limit(limit)))
        won: list[str] = []
        for incident_id in ids:
            with self._tx() as s:
                res = s.execute(update(OutboxRow)
                                .where(OutboxRow.incident_id == incident_id,
                                       OutboxRow.state == "pending",
                                       OutboxRow.lease_until <= now)
                                .values(lease_until=now + lease_ms, lease_owner=owner))
                if res.rowcount:  # type: ignore[attr-defined]
                    won.append(incident_id)
        if not won:
            return []
        with self._tx() as s:
            rows = s.execute(select(OutboxRow.attempts, IncidentRow)
                             .join(IncidentRow, IncidentRow.id == OutboxRow.incident_id)
                             .where(OutboxRow.incident_id.in_(won))).all()
            items = []
            for a, r in rows:
                lat, lon, alt, acc = self._open_coords(r.id, r.lat, r.lon, r.alt, r.acc,
                                                       r.coords_sealed)
                items.append(OutboxItem(
                    incident_id=r.id, attempts=a, lat=lat, lon=lon, alt=alt, acc=acc,
                    coords_src=r.coords_src, photo=self._open_photo(r.id, r.photo),
                    score=float(r.server_score if r.server_score is not None
                                else r.device_score),
                    label=r.label, captured_at=r.captured_at, device_uid=r.device_uid))
            return items

    def alert_delivered(self, incident_id: str, *, tenc: int) -> None:
        now = self._clock()
        with self._tx() as s:
            s.execute(update(OutboxRow).where(OutboxRow.incident_id == incident_id)
                      .values(state="delivered", delivered_at=now, tenc=tenc, lease_until=0,
                              lease_owner=None, last_error=None,
                              attempts=OutboxRow.attempts + 1))

    def alert_failed(self, incident_id: str, *, retry_at: int, error: str) -> None:
        with self._tx() as s:
            s.execute(update(OutboxRow).where(OutboxRow.incident_id == incident_id,
                                              OutboxRow.state == "pending")
                      .values(attempts=OutboxRow.attempts + 1, next_attempt_at=retry_at,
                              lease_until=0, lease_owner=None, last_error=error[:2000]))

    def outbox_depth(self) -> int:
        with self._tx() as s:
            return int(s.scalar(select(func.count()).select_from(OutboxRow)
                                .where(OutboxRow.state == "pending")) or 0)

    def next_alert_due(self) -> int | None:
        """Earliest next attempt of a pending alert, ms."""
        with self._tx() as s:
            v = s.scalar(select(func.min(OutboxRow.next_attempt_at))
                         .where(OutboxRow.state == "pending"))
            return int(v) if v is not None else None

    # -- retention ----------------------------------------------------------------------

    def purge(self, periods_ms: tuple[int | None, int | None, int | None], *,
              dry_run: bool = False, actor: str = "server:retention") -> PurgeReport:
        """Erase photos and delete incidents older than the retention periods
        ``(dismissed photos, alerted photos, incidents)`` in ms (None: kept for ever), in
        one transaction with one ``retention.purge`` audit entry. Never touched:
        incidents not decided yet, and alerts not delivered to the ENC."""
        try:
            return self._purge(periods_ms, dry_run=dry_run, actor=actor)
        except SQLAlchemyError as exc:
            # One transaction: whatever failed (a full disk), nothing was removed.
            raise RegistryError(f"retention purge failed, nothing was removed: "
                                f"{type(exc).__name__}: {exc.orig if hasattr(exc, 'orig') else exc}"
                                ) from None

    def _purge(self, periods_ms: tuple[int | None, int | None, int | None], *,
               dry_run: bool, actor: str) -> PurgeReport:
        dismissed_photo_ms, alerted_photo_ms, incident_ms = periods_ms
        now = self._clock()
        has_photo = func.length(IncidentRow.photo) > 0
        pending = select(OutboxRow.incident_id).where(OutboxRow.state == "pending")
        with self._tx() as s:
            dismissed: list[str] = []
            if dismissed_photo_ms is not None:
                dismissed = list(s.scalars(select(IncidentRow.id).where(
                    IncidentRow.decision == "dismissed", has_photo,
                    IncidentRow.decided_at <= now - dismissed_photo_ms)
                    .order_by(IncidentRow.id)))
            alerted: list[str] = []
            if alerted_photo_ms is not None:
                cut = now - alerted_photo_ms
                delivered = select(OutboxRow.incident_id).where(
                    OutboxRow.state == "delivered", OutboxRow.delivered_at <= cut)
                alerted = list(s.scalars(select(IncidentRow.id).where(
                    IncidentRow.decision == "dangerous", has_photo,
                    (IncidentRow.id.in_(delivered)
                     | (IncidentRow.fused_into.is_not(None) & (IncidentRow.decided_at <= cut))))
                    .order_by(IncidentRow.id)))
            gone: list[str] = []
            if incident_ms is not None:
                gone = list(s.scalars(select(IncidentRow.id).where(
                    IncidentRow.decision.is_not(None),
                    IncidentRow.decided_at <= now - incident_ms,
                    IncidentRow.id.not_in(pending)).order_by(IncidentRow.id)))
            gone_set = set(gone)
            dismissed = [i for i in dismissed if i not in gone_set]
            alerted = [i for i in alerted if i not in gone_set]
            report = PurgeReport(tuple(dismissed), tuple(alerted), tuple(gone), dry_run)
            if dry_run or not report.total:
                return report
            for chunk in _chunks([*dismissed, *alerted]):
                s.execute(update(IncidentRow).where(IncidentRow.id.in_(chunk))
                          .values(photo=b"").execution_options(synchronize_session=False))
            for chunk in _chunks(gone):
                s.execute(delete(OutboxRow).where(OutboxRow.incident_id.in_(chunk)))
                s.execute(delete(IncidentRow).where(IncidentRow.id.in_(chunk)))
            self._audit(s, actor, "retention.purge", "incidents",
                        photos_dismissed=len(dismissed), photos_alerted=len(alerted),
                        incidents=len(gone), ids=sorted([*dismissed, *alerted, *gone])[:1000])
        return report

    # -- sealed at rest -------------------------------------------------------------------

    def _incident_from_tuple(self, t: Any) -> IncidentInfo:
        (id_, uid, kid, zone, lat, lon, alt, acc, src, dscore, label, cap, rec, size, sscore,
         unc, dec, reason, dat, state, attempts, deliv, fused, sealed) = t
        lat, lon, alt, acc = self._open_coords(id_, lat, lon, alt, acc, sealed)
        size = int(size or 0) - (SEAL_OVERHEAD if sealed is not None and size else 0)
        return IncidentInfo(id=id_, device_uid=uid, kid=bytes(kid), zone=zone, lat=lat,
                            lon=lon, alt=alt, acc=acc, coords_src=src, device_score=dscore,
                            label=label, captured_at=cap, received_at=rec, photo_bytes=size,
                            server_score=sscore,
                            uncertain=None if unc is None else bool(unc), decision=dec,
                            decision_reason=reason, decided_at=dat, enc_state=state,
                            enc_attempts=attempts, enc_delivered_at=deliv, fused_into=fused)

    def _seal_photo(self, incident_id: str, photo: bytes) -> bytes:
        return self._master.records.seal(photo, aad=_aad(incident_id, "photo"))

    def _open_photo(self, incident_id: str, blob: bytes) -> bytes:
        if not RecordSealer.is_sealed(blob):
            return bytes(blob)  # a row from before sealing, until seal_clear_incidents
        try:
            return self._master.records.open(blob, aad=_aad(incident_id, "photo"))
        except SealedRecordError:
            raise MasterKeyError(f"the photo of incident {incident_id} does not open under "
                                 "this master key (another master key, or altered)") from None

    def _seal_coords(self, incident_id: str, lat: float, lon: float, alt: float | None,
                     acc: float | None) -> bytes:
        plain = json.dumps([lat, lon, alt, acc]).encode()
        return self._master.records.seal(plain, aad=_aad(incident_id, "coords"))

    def _open_coords(self, incident_id: str, lat: float | None, lon: float | None,
                     alt: float | None, acc: float | None, sealed: bytes | None
                     ) -> tuple[float, float, float | None, float | None]:
        if sealed is None:  # a row from before sealing
            assert lat is not None and lon is not None
            return lat, lon, alt, acc
        try:
            plain = self._master.records.open(sealed, aad=_aad(incident_id, "coords"))
        except SealedRecordError:
            raise MasterKeyError(f"the position of incident {incident_id} does not open "
                                 "under this master key (another master key, or altered)"
                                 ) from None
        got = json.loads(plain)
        return float(got[0]), float(got[1]), got[2], got[3]

    def sealed_counts(self) -> tuple[int, int]:
        """(incidents sealed, incidents still in clear)."""
        with self._tx() as s:
            clear = int(s.scalar(select(func.count()).select_from(IncidentRow)
                                 .where(IncidentRow.coords_sealed.is_(None))) or 0)
            total = int(s.scalar(select(func.count()).select_from(IncidentRow)) or 0)
        return total - clear, clear

    def seal_clear_incidents(self, *, batch: int = 200, actor: str = "server:migration"
                             ) -> int:
        """Seal the photos and coordinates of incidents stored before sealing existed
        (one transaction per ``batch`` rows, so a large database is sealed in steps and
        an interrupted run resumes); returns how many were sealed."""
        total = 0
        while True:
            with self._tx() as s:
                rows = s.execute(select(IncidentRow.id, IncidentRow.lat, IncidentRow.lon,
                                        IncidentRow.alt, IncidentRow.acc, IncidentRow.photo)
                                 .where(IncidentRow.coords_sealed.is_(None))
                                 .order_by(IncidentRow.id).limit(batch)).all()
                done = 0
                for rid, lat, lon, alt, acc, photo in rows:
                    assert lat is not None and lon is not None  # unsealed rows have them
                    photo_sealed = (bytes(photo) if RecordSealer.is_sealed(photo)
                                    else self._seal_photo(rid, bytes(photo)))
                    res = s.execute(update(IncidentRow)
                                    .where(IncidentRow.id == rid,
                                           IncidentRow.coords_sealed.is_(None))
                                    .values(coords_sealed=self._seal_coords(rid, lat, lon,
                                                                            alt, acc),
                                            photo=photo_sealed, lat=None, lon=None,
                                            alt=None, acc=None)
                                    .execution_options(synchronize_session=False))
                    done += res.rowcount  # type: ignore[attr-defined]
                if done:
                    self._audit(s, actor, "store.seal", "incidents", count=done)
            total += done
            if len(rows) < batch:
                return total

    # -- audit --------------------------------------------------------------------------

    def audit_log(self, *, limit: int = 100, subject: str | None = None) -> list[AuditRecord]:
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if subject is not None:
            q = q.where(AuditEntry.subject == subject)
        with self._tx() as s:
            return [AuditRecord(r.at, r.actor, r.action, r.subject, json.loads(r.detail or "{}"))
                    for r in s.scalars(q)]

    def audit(self, actor: str, action: str, subject: str, **detail: Any) -> None:
        with self._tx() as s:
            self._audit(s, actor, action, subject, **detail)


# -- row -> view -----------------------------------------------------------------------


def _device_info(r: DeviceRow) -> DeviceInfo:
    return DeviceInfo(uid=r.uid, kid=bytes(r.kid), zone=r.zone, lat=r.lat, lon=r.lon,
                      alg=r.alg, active=bool(r.active), blocked=bool(r.blocked),
                      epoch=int(r.epoch or 0), confirmed_epoch=r.confirmed_epoch,
                      confirmed_at=r.confirmed_at, created_at=r.created_at,
                      updated_at=r.updated_at)


def _window_info(r: WindowRow) -> WindowInfo:
    return WindowInfo(id=r.id, zone=r.zone, opens_at=r.opens_at, closes_at=r.closes_at,
                      opened_by=r.opened_by, closed_by=r.closed_by)


_INCIDENT_COLUMNS = (
    IncidentRow.id, IncidentRow.device_uid, IncidentRow.kid, IncidentRow.zone, IncidentRow.lat,
    IncidentRow.lon, IncidentRow.alt, IncidentRow.acc, IncidentRow.coords_src,
    IncidentRow.device_score, IncidentRow.label, IncidentRow.captured_at,
    IncidentRow.received_at, func.length(IncidentRow.photo), IncidentRow.server_score,
    IncidentRow.uncertain, IncidentRow.decision, IncidentRow.decision_reason,
    IncidentRow.decided_at, OutboxRow.state, OutboxRow.attempts, OutboxRow.delivered_at,
    IncidentRow.fused_into, IncidentRow.coords_sealed,
)


def _incident_query() -> Any:
    return select(*_INCIDENT_COLUMNS).outerjoin(
        OutboxRow, OutboxRow.incident_id == IncidentRow.id)


def _chunks(ids: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _aad(incident_id: str, column: str) -> bytes:
    # Binds a sealed field to its row and column: moved elsewhere, it does not open.
    return f"citywatch server incident {incident_id} {column}".encode()


def _incident_info(r: IncidentRow, coords: Coords, size: int) -> IncidentInfo:
    return IncidentInfo(id=r.id, device_uid=r.device_uid, kid=bytes(r.kid), zone=r.zone,
                        lat=coords.lat, lon=coords.lon, alt=coords.alt, acc=coords.acc,
                        coords_src=r.coords_src,
                        device_score=r.device_score, label=r.label, captured_at=r.captured_at,
                        received_at=r.received_at, photo_bytes=size, server_score=None,
                        uncertain=None, decision=None, decision_reason=None, decided_at=None)
