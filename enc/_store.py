"""The alert store: alerts keyed by incident id, their photos, and the audit trail.

Photos and positions are sealed at rest (AES-256-GCM, ``hardware._wrapped.RecordSealer``)
under the store key (``enc._keys``), each bound to its alert and column; the store
opened without its key reads and lists nothing sealed and stores no alert.

SQLite (the embedded default) or PostgreSQL, through SQLAlchemy 2; the schema is
brought up to date by the Alembic migrations in ``enc/migrations`` when the store
opens. Every method is one transaction; database failures surface as ``StoreError``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, object_session, sessionmaker

import protocol as p
from hardware._wrapped import RecordSealer, SealedRecordError
from storage import sqlite_engine
from storage.migrate import MigrationBroken, upgrade

from ._errors import NotFound, StoreError
from ._schema import (
    AlertRow,
    AuditRow,
    CapDeliveryRow,
    CapMessageRow,
    LinkedReportRow,
    PhotoRow,
    PoleAddressRow,
)

__all__ = ["Alert", "AlertStatus", "AlertStore", "AuditEntry", "PurgeReport", "migrate"]

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 7283651
"""ENC processes starting together on one PostgreSQL: one migrates, the others wait."""


class AlertStatus(enum.StrEnum):
    """Where an alert is in the operators' hands."""

    NEW = "new"
    """Nobody has taken it (also after a reopen)."""
    ACKNOWLEDGED = "acknowledged"
    """An operator has taken it and is deciding."""
    DISPATCHED = "dispatched"
    """Help was sent."""
    DISMISSED = "dismissed"
    """A false alarm."""
    ON_HOLD = "on_hold"
    """Taken, and waiting for something (a call back, a unit, a colleague): still the
    holder's, still unhandled, escalated like a taken alert when left too long."""
    CLOSED = "closed"
    """Finished, with a resolution code: nothing more is done about it."""

    @property
    def handled(self) -> bool:
        return self in (AlertStatus.DISPATCHED, AlertStatus.DISMISSED, AlertStatus.CLOSED)

    @property
    def taken(self) -> bool:
        """An operator is working on it (acknowledged or on hold)."""
        return self in (AlertStatus.ACKNOWLEDGED, AlertStatus.ON_HOLD)


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert as stored (without its photo)."""

    incident_id: str
    """The server's incident id (the key)."""
    server_kid: str
    """kid of the server that sent it, hex."""
    device_uid: str
    """The reporting device."""
    label: str
    """What the device and server saw ("person_down", ...)."""
    score: float
    """The server's confidence, 0..1."""
    coords: p.Coords
    """Where."""
    captured_at: int
    """Capture time, ms."""
    sent_at: int
    """T_S of the first N1 accepted, ms."""
    received_at: int
    """When this ENC stored it, ms."""
    photo_size: int
    """Photo size, bytes."""
    photo_sha256: str
    """SHA-256 of the photo, hex (shown so a copy can be checked)."""
    status: AlertStatus
    """Where it is in the operators' hands."""
    status_at: int
    """When the status last changed, ms."""
    taken_by: str | None
    """The operator who acknowledged, dispatched or dismissed it."""
    escalated_at: int | None = None
    """When it was escalated for lack of an operator taking it (None: not escalated)."""
    linked_labels: tuple[tuple[str, float], ...] = ()
    """(label, score) of each linked report of another kind (``enc._linked``)."""
    address: str | None = None
    """The street address of its device, as the server's registry sent it (an N4,
    ``enc._poles``), or None."""

    def to_json(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "server_kid": self.server_kid,
            "device_uid": self.device_uid,
            "label": self.label,
            "score": self.score,
            "coords": self.coords.to_map(),
            "captured_at": self.captured_at,
            "sent_at": self.sent_at,
            "received_at": self.received_at,
            "photo_size": self.photo_size,
            "photo_sha256": self.photo_sha256,
            "status": self.status.value,
            "status_at": self.status_at,
            "taken_by": self.taken_by,
            "escalated_at": self.escalated_at,
            "address": self.address,
        }


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What one retention purge removed (or, in a dry run, would remove)."""

    photos: tuple[str, ...]
    """Dismissed alerts whose photo was deleted."""
    alerts: tuple[str, ...]
    """Closed alerts deleted with their photo."""
    dry_run: bool
    """Nothing was changed."""

    @property
    def total(self) -> int:
        return len(self.photos) + len(self.alerts)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "photos": list(self.photos), "alerts": list(self.alerts)}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the append-only audit trail."""

    id: int
    """Increasing; also the cursor of the live feed."""
    at: int
    """When, ms."""
    incident_id: str | None
    """The alert concerned, if any."""
    actor: str
    """An operator's name, ``server:<kid>`` or ``system``."""
    action: str
    """What happened ("received", "acknowledged", "photo_viewed", ...)."""
    detail: dict[str, Any]
    """Particulars (unit, comment, reason ...)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "incident_id": self.incident_id,
            "actor": self.actor,
            "action": self.action,
            "detail": self.detail,
        }


def _aad(incident_id: str, column: str) -> bytes:
    # Binds a sealed field to its alert and column: moved elsewhere, it does not open.
    return f"citywatch enc alert {incident_id} {column}".encode()


def _alert(r: AlertRow, coords: p.Coords, address: str | None = None) -> Alert:
    return Alert(
        incident_id=r.incident_id,
        server_kid=r.server_kid,
        device_uid=r.device_uid,
        label=r.label,
        score=r.score,
        coords=coords,
        captured_at=r.captured_at,
        sent_at=r.sent_at,
        received_at=r.received_at,
        photo_size=r.photo_size,
        photo_sha256=r.photo_sha256,
        status=AlertStatus(r.status),
        status_at=r.status_at,
        taken_by=r.taken_by,
        escalated_at=r.escalated_at,
        linked_labels=tuple((str(lb), float(sc)) for lb, sc in json.loads(r.linked_labels or "[]")),
        address=address,
    )


def _entry(r: AuditRow) -> AuditEntry:
    return AuditEntry(
        id=r.id,
        at=r.at,
        incident_id=r.incident_id,
        actor=r.actor,
        action=r.action,
        detail=json.loads(r.detail),
    )


def migrate(engine: Engine) -> None:
    """Bring the schema up to date (idempotent)."""
    try:
        upgrade(engine, str(_MIGRATIONS), lock_key=MIGRATION_LOCK)
    except MigrationBroken as exc:
        raise StoreError(str(exc)) from None


class AlertStore:
    """Alerts, photos and the audit trail in one database."""

    def __init__(self, engine: Engine, *, key: bytes | None = None) -> None:
        self.engine = engine
        self._sealer = RecordSealer(key, purpose="enc alerts") if key is not None else None
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # SQLite has one writer at a time; serialising writes here avoids
        # "database is locked" between threads of this process.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    @classmethod
    def open(cls, url: str, *, key: bytes | None = None) -> AlertStore:
        """Connect, create the SQLite folder if needed, run the migrations. ``key``: the
        store key (32 bytes) photos and positions are sealed under."""
        try:
            u = make_url(url)
            if u.get_backend_name() == "sqlite":
                engine = sqlite_engine(url, busy_timeout_s=10)
            else:
                engine = create_engine(u, pool_pre_ping=True)
            migrate(engine)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot open the alert store: {exc}") from exc
        return cls(engine, key=key)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Session]:
        """One transaction; ``write`` serialises writers on SQLite."""
        lock = self._write_lock if write else None
        try:
            if lock:
                lock.acquire()
            with self._sessions.begin() as s:
                yield s
        except (NotFound, IntegrityError):
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"alert store: {type(exc).__name__}") from exc
        finally:
            if lock:
                lock.release()

    @staticmethod
    def audit(
        s: Session,
        *,
        at: int,
        incident_id: str | None,
        actor: str,
        action: str,
        detail: dict[str, Any] | None = None,
    ) -> AuditRow:
        row = AuditRow(
            at=at,
            incident_id=incident_id,
            actor=actor,
            action=action,
            detail=json.dumps(detail or {}, sort_keys=True),
        )
        s.add(row)
        return row

    # -- alerts -------------------------------------------------------------------

    def record_alert(
        self, alert: p.AlertReceived, *, received_at: int, joins: dict[str, Any] | None = None
    ) -> bool:
        """Store a valid N1's alert; True if new, False if that incident was already
        stored (then nothing changes). Durable when it returns. ``joins``: added to the
        ``received`` entry of a linked report stored as an alert of its own."""
        actor = f"server:{alert.server_kid.hex()}"
        c = alert.coords
        row = AlertRow(
            incident_id=alert.incident_id,
            server_kid=alert.server_kid.hex(),
            device_uid=alert.device_uid,
            label=alert.label,
            score=alert.score,
            lat=None,
            lon=None,
            alt=None,
            acc=None,
            coords_sealed=self._seal_coords(alert.incident_id, c.lat, c.lon, c.alt, c.acc),
            coord_src=alert.coords.src,
            captured_at=alert.captured_at,
            sent_at=alert.ts,
            received_at=received_at,
            photo_size=len(alert.photo),
            photo_sha256=hashlib.sha256(alert.photo).hexdigest(),
            status=AlertStatus.NEW.value,
            status_at=received_at,
            taken_by=None,
        )
        try:
            with self.transaction(write=True) as s:
                if s.get(AlertRow, alert.incident_id) is not None:
                    return False
                s.add(row)
                s.flush()  # the photo's foreign key needs the alert first
                s.add(
                    PhotoRow(
                        incident_id=alert.incident_id,
                        jpeg=self._sealer_or_fail().seal(
                            alert.photo, aad=_aad(alert.incident_id, "photo")
                        ),
                    )
                )
                self.audit(
                    s,
                    at=received_at,
                    incident_id=alert.incident_id,
                    actor=actor,
                    action="received",
                    detail={
                        "device": alert.device_uid,
                        "label": alert.label,
                        "score": alert.score,
                        **(joins or {}),
                    },
                )
        except IntegrityError:
            # Another process stored the same incident between our check and insert.
            return False
        return True

    def alert(self, incident_id: str) -> Alert:
        with self.transaction(write=False) as s:
            r = s.get(AlertRow, incident_id)
            if r is None:
                raise NotFound(f"no alert {incident_id!r}")
            return self.view(r)

    def alerts(
        self,
        *,
        limit: int = 500,
        device_uid: str | None = None,
        before: int | None = None,
        since: int | None = None,
        statuses: Collection[str] = (),
        labels: Collection[str] = (),
    ) -> list[Alert]:
        """Newest first; received in [``since``, ``before``) when given, in one of
        ``statuses`` and ``labels`` when given."""
        q = select(AlertRow).order_by(AlertRow.received_at.desc(), AlertRow.incident_id)
        if device_uid is not None:
            q = q.where(AlertRow.device_uid == device_uid)
        if before is not None:
            q = q.where(AlertRow.received_at < before)
        if since is not None:
            q = q.where(AlertRow.received_at >= since)
        if statuses:
            q = q.where(AlertRow.status.in_(list(statuses)))
        if labels:
            q = q.where(AlertRow.label.in_(list(labels)))
        with self.transaction(write=False) as s:
            rows = list(s.scalars(q.limit(limit)))
            uids = sorted({r.device_uid for r in rows})
            addresses: dict[str, str | None] = {}
            for i in range(0, len(uids), 500):  # bound the IN list
                q2 = select(PoleAddressRow.device_uid, PoleAddressRow.address).where(
                    PoleAddressRow.device_uid.in_(uids[i : i + 500])
                )
                addresses.update({str(u): a for u, a in s.execute(q2)})
            return [self.view(r, addresses=addresses) for r in rows]

    def status_counts(self) -> dict[str, int]:
        """How many alerts are in each status (every status listed, zero included)."""
        q = select(AlertRow.status, func.count()).group_by(AlertRow.status)
        with self.transaction(write=False) as s:
            counts = {status.value: 0 for status in AlertStatus}
            counts.update({str(st): int(n) for st, n in s.execute(q)})
            return counts

    def count(self) -> int:
        with self.transaction(write=False) as s:
            return int(s.scalar(select(func.count()).select_from(AlertRow)) or 0)

    def photo(self, incident_id: str) -> bytes:
        with self.transaction(write=False) as s:
            r = s.get(PhotoRow, incident_id)
            if r is None:
                raise NotFound(f"no alert {incident_id!r}")
            return self._open_photo(incident_id, bytes(r.jpeg))

    # -- retention ------------------------------------------------------------------

    def purge(
        self,
        periods_ms: tuple[int | None, int | None],
        *,
        now: int,
        dry_run: bool = False,
        actor: str = "enc:retention",
    ) -> PurgeReport:
        """Delete the photos of alerts dismissed longer ago than the first period and
        the alerts closed (dispatched or dismissed) longer ago than the second (None:
        kept for ever), in one transaction with one ``purged`` audit entry. Alerts still
        new or acknowledged are never touched; neither is the audit trail."""
        photo_ms, closed_ms = periods_ms
        closed = (
            AlertStatus.DISPATCHED.value,
            AlertStatus.DISMISSED.value,
            AlertStatus.CLOSED.value,
        )
        with self.transaction(write=not dry_run) as s:
            alerts: list[str] = []
            if closed_ms is not None:
                alerts = list(
                    s.scalars(
                        select(AlertRow.incident_id)
                        .where(AlertRow.status.in_(closed), AlertRow.status_at <= now - closed_ms)
                        .order_by(AlertRow.incident_id)
                    )
                )
            photos: list[str] = []
            if photo_ms is not None:
                photos = [
                    i
                    for i in s.scalars(
                        select(PhotoRow.incident_id)
                        .join(AlertRow, AlertRow.incident_id == PhotoRow.incident_id)
                        .where(
                            AlertRow.status == AlertStatus.DISMISSED.value,
                            AlertRow.status_at <= now - photo_ms,
                        )
                        .order_by(PhotoRow.incident_id)
                    )
                    if i not in set(alerts)
                ]
            report = PurgeReport(tuple(photos), tuple(alerts), dry_run)
            if dry_run or not report.total:
                return report
            for i in range(0, report.total, 500):
                chunk = [*photos, *alerts][i : i + 500]
                s.execute(delete(PhotoRow).where(PhotoRow.incident_id.in_(chunk)))
                # The photos of the reports fused into them go too: the reports with
                # them (their trail entries stay).
                s.execute(delete(LinkedReportRow).where(LinkedReportRow.incident_id.in_(chunk)))
            for i in range(0, len(alerts), 500):
                chunk = alerts[i : i + 500]
                # Their CAP messages carry the photo: they go too (delivered or not).
                gone = select(CapMessageRow.identifier).where(CapMessageRow.incident_id.in_(chunk))
                s.execute(delete(CapDeliveryRow).where(CapDeliveryRow.identifier.in_(gone)))
                s.execute(delete(CapMessageRow).where(CapMessageRow.incident_id.in_(chunk)))
                s.execute(delete(AlertRow).where(AlertRow.incident_id.in_(chunk)))
            self.audit(
                s,
                at=now,
                incident_id=None,
                actor=actor,
                action="purged",
                detail={
                    "photos": len(photos),
                    "alerts": len(alerts),
                    "ids": sorted([*photos, *alerts])[:1000],
                },
            )
        return report

    # -- sealed at rest -------------------------------------------------------------

    def seal_record(self, data: bytes, aad: bytes) -> bytes:
        """``data`` sealed under the store key, bound to ``aad``."""
        return self._sealer_or_fail().seal(data, aad=aad)

    def open_record(self, blob: bytes, aad: bytes) -> bytes:
        """What ``seal_record`` sealed; ``StoreError`` if it does not open."""
        try:
            return self._sealer_or_fail().open(blob, aad=aad)
        except SealedRecordError:
            raise StoreError("a sealed record does not open under this store key") from None

    def _sealer_or_fail(self) -> RecordSealer:
        if self._sealer is None:
            raise StoreError("the alert store was opened without its store key")
        return self._sealer

    def _seal_coords(
        self, incident_id: str, lat: float, lon: float, alt: float | None, acc: float | None
    ) -> bytes:
        plain = json.dumps([lat, lon, alt, acc]).encode()
        return self._sealer_or_fail().seal(plain, aad=_aad(incident_id, "coords"))

    def _open_photo(self, incident_id: str, blob: bytes) -> bytes:
        if not RecordSealer.is_sealed(blob):
            return blob  # a row from before sealing, until seal_clear_alerts
        try:
            return self._sealer_or_fail().open(blob, aad=_aad(incident_id, "photo"))
        except SealedRecordError:
            raise StoreError(
                f"the photo of alert {incident_id} does not open under this "
                "store key (another key, or altered)"
            ) from None

    def view(self, r: AlertRow, *, addresses: dict[str, str | None] | None = None) -> Alert:
        """The alert of a row, its position unsealed, with its pole's address (from
        ``addresses``, device UID -> address, when the caller read them for many)."""
        if r.coords_sealed is None:  # a row from before sealing
            assert r.lat is not None and r.lon is not None
            coords = p.Coords(lat=r.lat, lon=r.lon, alt=r.alt, acc=r.acc, src=r.coord_src)
        else:
            try:
                plain = self._sealer_or_fail().open(
                    r.coords_sealed, aad=_aad(r.incident_id, "coords")
                )
            except SealedRecordError:
                raise StoreError(
                    f"the position of alert {r.incident_id} does not open under "
                    "this store key (another key, or altered)"
                ) from None
            lat, lon, alt, acc = json.loads(plain)
            coords = p.Coords(lat=lat, lon=lon, alt=alt, acc=acc, src=r.coord_src)
        if addresses is not None:
            return _alert(r, coords, addresses.get(r.device_uid))
        # One alert: its pole's address is read in the row's own session.
        s = object_session(r)
        pole = s.get(PoleAddressRow, r.device_uid) if s is not None else None
        return _alert(r, coords, pole.address if pole is not None else None)

    def sealed_counts(self) -> tuple[int, int]:
        """(alerts sealed, alerts still in clear)."""
        with self.transaction(write=False) as s:
            clear = int(
                s.scalar(
                    select(func.count())
                    .select_from(AlertRow)
                    .where(AlertRow.coords_sealed.is_(None))
                )
                or 0
            )
            total = int(s.scalar(select(func.count()).select_from(AlertRow)) or 0)
        return total - clear, clear

    def seal_clear_alerts(self, *, at: int, batch: int = 200) -> int:
        """Seal the photos and positions of alerts stored before sealing existed (one
        transaction per ``batch`` alerts; an interrupted run resumes); how many."""
        sealer = self._sealer_or_fail()
        total = 0
        while True:
            with self.transaction(write=True) as s:
                rows = list(
                    s.scalars(
                        select(AlertRow)
                        .where(AlertRow.coords_sealed.is_(None))
                        .order_by(AlertRow.incident_id)
                        .limit(batch)
                    )
                )
                for r in rows:
                    assert r.lat is not None and r.lon is not None
                    r.coords_sealed = self._seal_coords(r.incident_id, r.lat, r.lon, r.alt, r.acc)
                    r.lat = r.lon = r.alt = r.acc = None
                    photo = s.get(PhotoRow, r.incident_id)
                    if photo is not None and not RecordSealer.is_sealed(photo.jpeg):
                        photo.jpeg = sealer.seal(
                            bytes(photo.jpeg), aad=_aad(r.incident_id, "photo")
                        )
                if rows:
                    self.audit(
                        s,
                        at=at,
                        incident_id=None,
                        actor="enc:migration",
                        action="store_sealed",
                        detail={"count": len(rows)},
                    )
            total += len(rows)
            if len(rows) < batch:
                return total

    # -- audit --------------------------------------------------------------------

    def append_audit(
        self,
        *,
        at: int,
        actor: str,
        action: str,
        incident_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        with self.transaction(write=True) as s:
            row = self.audit(
                s, at=at, incident_id=incident_id, actor=actor, action=action, detail=detail
            )
            s.flush()
            return _entry(row)

    def audit_trail(self, incident_id: str) -> list[AuditEntry]:
        """Everything that happened to one alert, oldest first."""
        q = select(AuditRow).where(AuditRow.incident_id == incident_id).order_by(AuditRow.id)
        with self.transaction(write=False) as s:
            return [_entry(r) for r in s.scalars(q)]

    def audit_search(
        self,
        *,
        limit: int = 500,
        since: int | None = None,
        before: int | None = None,
        actions: Collection[str] = (),
        actor: str | None = None,
        incidents: Collection[str] | None = None,
    ) -> list[AuditEntry]:
        """Audit entries newest first: at in [``since``, ``before``), one of ``actions``,
        by ``actor``, about one of ``incidents`` (each when given)."""
        q = select(AuditRow).order_by(AuditRow.id.desc())
        if since is not None:
            q = q.where(AuditRow.at >= since)
        if before is not None:
            q = q.where(AuditRow.at < before)
        if actions:
            q = q.where(AuditRow.action.in_(list(actions)))
        if actor:
            q = q.where(AuditRow.actor == actor)
        if incidents is not None:
            q = q.where(AuditRow.incident_id.in_(list(incidents)[:5000]))
        with self.transaction(write=False) as s:
            return [_entry(r) for r in s.scalars(q.limit(limit))]

    def audit_since(self, after_id: int, *, limit: int = 1000) -> list[AuditEntry]:
        """Audit entries with an id above ``after_id``, oldest first (the live feed)."""
        q = select(AuditRow).where(AuditRow.id > after_id).order_by(AuditRow.id).limit(limit)
        with self.transaction(write=False) as s:
            return [_entry(r) for r in s.scalars(q)]

    def last_audit_id(self) -> int:
        with self.transaction(write=False) as s:
            return int(s.scalar(select(func.max(AuditRow.id))) or 0)
