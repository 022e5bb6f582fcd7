"""Incidents: stored idempotently with their photo and position sealed, decided
(with fusion and the alert in the decision's transaction), purged by retention."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from hardware._wrapped import SEAL_OVERHEAD, RecordSealer
from protocol import Coords, IncidentReported

from ._alerts import queue_alert
from ._database import Database
from ._errors import RegistryError
from ._fusion import FusionRule, Sighting
from ._outcome import Outcome
from ._schema import IncidentRow, OutboxRow

__all__ = ["FUSION_LOCK", "DecisionRecord", "IncidentInfo", "IncidentStore", "PurgeReport"]


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
        return {
            "dry_run": self.dry_run,
            "photos_dismissed": list(self.photos_dismissed),
            "photos_alerted": list(self.photos_alerted),
            "incidents": list(self.incidents),
        }


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


class _Scenes:
    """Fusion's candidates for one batch of decisions, in its transaction: the alerted
    incidents (not fused themselves) received within the batch's time, read once for
    the batch rather than once per decision, and the batch's own new alerts added as
    they are decided (a later report of the batch fuses into an earlier one)."""

    def __init__(self, store: IncidentStore, s: Session, fusing: Sequence[DecisionRecord]):
        self._store, self._s = store, s
        self._received: dict[str, int] = {}
        self._where: dict[str, tuple[float, float]] = {}
        self._candidates: list[Sighting] = []
        if not fusing:
            return
        ids = [d.incident_id for d in fusing]
        for k in range(0, len(ids), 500):
            for iid, at in s.execute(
                select(IncidentRow.id, IncidentRow.received_at).where(
                    IncidentRow.id.in_(ids[k : k + 500])
                )
            ):
                self._received[str(iid)] = int(at)
        if not self._received:
            return
        # The coordinates are sealed, so the database narrows by time only (alerted
        # incidents of a few minutes); the distance is checked after unsealing. "Not
        # fused" is written so that no index serves it: as "fused_into IS NULL" SQLite
        # walked the fused_into index, i.e. every unfused incident ever stored (32 ms a
        # batch at 3,200 incidents, growing with the database), instead of the time
        # range of received_at (2 ms for the 679 of them in the window).
        within = max(d.fuse_within_ms for d in fusing)
        rows = s.execute(
            select(IncidentRow.id, IncidentRow.received_at)
            .join(OutboxRow, OutboxRow.incident_id == IncidentRow.id)
            .where(
                func.coalesce(IncidentRow.fused_into, "") == "",
                IncidentRow.received_at >= min(self._received.values()) - within,
                IncidentRow.received_at <= max(self._received.values()) + within,
            )
        ).all()
        where = self._where = store._positions(s, [*self._received, *(str(r[0]) for r in rows)])
        self._candidates = [Sighting(str(i), *where[str(i)], int(at)) for i, at in rows]

    def _sighting(self, d: DecisionRecord) -> Sighting | None:
        at = self._received.get(d.incident_id)
        if at is None:
            return None
        return Sighting(d.incident_id, *self._where[d.incident_id], at)

    def primary(self, d: DecisionRecord) -> str | None:
        """The earliest alerted incident (not itself fused) that ``d``'s incident is the
        same scene as (``_fusion.FusionRule``), if any."""
        rule = FusionRule(within_m=d.fuse_within_m, within_ms=d.fuse_within_ms)
        this = self._sighting(d) if rule.enabled else None
        if this is None:
            return None
        return rule.primary(this, self._candidates)

    def alerted(self, d: DecisionRecord) -> None:
        """``d`` was just queued as an alert of its own: a candidate for the rest."""
        this = self._sighting(d)
        if this is not None:
            self._candidates.append(this)


class IncidentStore:
    """Incidents and their decisions. Thread-safe (one session per call)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def store_incident(self, inc: IncidentReported, *, zone: str) -> tuple[IncidentInfo, bool]:
        """Store a reported incident unless it is there already (same kid and cid give
        the same id); returns it and whether it was new."""
        return self.store_incidents([(inc, zone)])[0]

    def store_incidents(
        self, batch: Sequence[tuple[IncidentReported, str]]
    ) -> list[tuple[IncidentInfo, bool]]:
        """``store_incident`` for many incidents in one transaction (one durable commit:
        the server groups the reports that arrive while the last commit runs)."""
        now = self.db.now()
        c = [inc.coords for inc, _zone in batch]
        # Photos and coordinates reach the database only sealed.
        rows = [
            dict(
                id=inc.incident_id,
                kid=inc.kid,
                cid=inc.cid,
                device_uid=inc.uid,
                zone=zone,
                lat=None,
                lon=None,
                alt=None,
                acc=None,
                coords_sealed=self.db.seal.coords(inc.incident_id, co.lat, co.lon, co.alt, co.acc),
                coords_src=co.src,
                photo=self.db.seal.photo(inc.incident_id, inc.photo),
                device_score=inc.score,
                label=inc.label,
                captured_at=inc.captured_at,
                td=inc.td,
                received_at=now,
            )
            for (inc, zone), co in zip(batch, c, strict=True)
        ]
        insert = sqlite_insert if self.db.engine.dialect.name == "sqlite" else pg_insert
        table = cast(Table, IncidentRow.__table__)
        with self.db.tx() as s:
            # One statement for the batch, its rows as parameters (Core "insertmanyvalues"):
            # RETURNING names the rows that were new. A statement built per row with the
            # values in it cost more than the commit (the sealed photo went through
            # SQLAlchemy's coercion and cache key every time).
            new: set[str] = set(
                s.execute(
                    insert(table)
                    .on_conflict_do_nothing(index_elements=[table.c.id])
                    .returning(table.c.id),
                    rows,
                ).scalars()
            )
            repeated = [r["id"] for r in rows if r["id"] not in new]
            known = (
                {
                    t[0]: self._incident_from_tuple(t)
                    for t in s.execute(_incident_query().where(IncidentRow.id.in_(repeated)))
                }
                if repeated
                else {}
            )
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
        with self.db.tx() as s:
            got = s.execute(_incident_query().where(IncidentRow.id == incident_id)).first()
            if got is None:
                raise RegistryError(f"no incident {incident_id!r}")
            return self._incident_from_tuple(got)

    def incident_photo(self, incident_id: str) -> bytes:
        with self.db.tx() as s:
            photo = s.scalar(select(IncidentRow.photo).where(IncidentRow.id == incident_id))
            if photo is None:
                raise RegistryError(f"no incident {incident_id!r}")
            return self.db.seal.open_photo(incident_id, photo)

    def list_incidents(
        self, *, limit: int = 100, decision: str | None = None
    ) -> list[IncidentInfo]:
        q = _incident_query().order_by(IncidentRow.received_at.desc(), IncidentRow.id)
        if decision is not None:
            q = q.where(IncidentRow.decision == decision)
        with self.db.tx() as s:
            return [self._incident_from_tuple(t) for t in s.execute(q.limit(limit))]

    def undecided_incidents(self, *, older_than_ms: int | None = None) -> list[str]:
        """Incidents stored but not verified (the server stopped in between, or the
        database was down when the decision was to be written), oldest first; with
        ``older_than_ms`` only those received at least that long ago (the database's
        clock, the one ``received_at`` is written with)."""
        q = select(IncidentRow.id).where(IncidentRow.decision.is_(None))
        if older_than_ms is not None:
            q = q.where(IncidentRow.received_at <= self.db.now() - older_than_ms)
        with self.db.tx() as s:
            return list(s.scalars(q.order_by(IncidentRow.received_at)))

    def incident_for_verification(self, incident_id: str) -> tuple[IncidentInfo, bytes]:
        return self.get_incident(incident_id), self.incident_photo(incident_id)

    def decide(
        self, incident_id: str, *, score: float, uncertain: bool, dangerous: bool, reason: str
    ) -> bool:
        """Record the verification's decision and, for a dangerous incident, queue the
        alert for the ENC in the same transaction. False if it was already decided."""
        record = DecisionRecord(incident_id, score, uncertain, dangerous, reason)
        return self.decide_many([record])[0] is not None

    def decide_many(self, decisions: Sequence[DecisionRecord]) -> list[Outcome | None]:
        """Decisions for many incidents in one transaction. Each gives
        ``Outcome.DANGEROUS`` (alert queued), ``Outcome.FUSED`` (dangerous, linked to an
        earlier nearby alerted incident, no alert of its own: queued as a linked report
        of that alert), ``Outcome.DISMISSED``, or
        None when it was decided already."""
        now = self.db.now()
        out: list[Outcome | None] = []
        with self.db.tx() as s:
            fusing = [d for d in decisions if d.dangerous and d.fuse_within_m > 0]
            if fusing:
                _lock_fusion(s)
            scene = _Scenes(self, s, fusing)
            for d in decisions:
                primary = scene.primary(d) if d.dangerous else None
                reason = d.reason if primary is None else f"{d.reason}; fused into {primary}"
                res = s.execute(
                    update(IncidentRow)
                    .where(IncidentRow.id == d.incident_id, IncidentRow.decision.is_(None))
                    .values(
                        server_score=d.score,
                        uncertain=d.uncertain,
                        decision="dangerous" if d.dangerous else "dismissed",
                        decision_reason=reason,
                        decided_at=now,
                        fused_into=primary,
                    )
                    .execution_options(synchronize_session=False)
                )
                if not res.rowcount:  # type: ignore[attr-defined]
                    out.append(None)
                    continue
                if not d.dangerous:
                    out.append(Outcome.DISMISSED)
                elif primary is not None:
                    # No alert of its own, but the ENC shows it with the alert (N3).
                    queue_alert(s, d.incident_id, now=now, linked_to=primary)
                    out.append(Outcome.FUSED)
                else:
                    queue_alert(s, d.incident_id, now=now)
                    scene.alerted(d)
                    out.append(Outcome.DANGEROUS)
        return out

    def _positions(self, s: Session, ids: list[str]) -> dict[str, tuple[float, float]]:
        """(lat, lon) of each incident, unsealed once per process: a busy minute has
        hundreds of alerted incidents, and every dangerous decision in it looks at all of
        them (a position never changes once stored)."""
        cache = self.db.positions
        missing = [i for i in ids if i not in cache]
        for k in range(0, len(missing), 500):
            for row in s.execute(
                select(
                    IncidentRow.id,
                    IncidentRow.lat,
                    IncidentRow.lon,
                    IncidentRow.alt,
                    IncidentRow.acc,
                    IncidentRow.coords_sealed,
                ).where(IncidentRow.id.in_(missing[k : k + 500]))
            ):
                lat, lon, _alt, _acc = self.db.seal.open_coords(*row)
                cache[str(row[0])] = (lat, lon)
        out = {i: cache[i] for i in ids}
        if len(cache) > 100_000:  # old ones are out of every fusion window by now
            cache.clear()
        return out

    def dismissed_count(self, uid: str, *, since: int) -> int:
        with self.db.tx() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(IncidentRow)
                    .where(
                        IncidentRow.device_uid == uid,
                        IncidentRow.decision == "dismissed",
                        IncidentRow.received_at >= since,
                    )
                )
                or 0
            )

    def purge(
        self,
        periods_ms: tuple[int | None, int | None, int | None],
        *,
        dry_run: bool = False,
        actor: str = "server:retention",
    ) -> PurgeReport:
        """Erase photos and delete incidents older than the retention periods
        ``(dismissed photos, alerted photos, incidents)`` in ms (None: kept for ever), in
        one transaction with one ``retention.purge`` audit entry. Never touched:
        incidents not decided yet, and alerts not delivered to the ENC."""
        try:
            return self._purge(periods_ms, dry_run=dry_run, actor=actor)
        except SQLAlchemyError as exc:
            # One transaction: whatever failed (a full disk), nothing was removed.
            raise RegistryError(
                f"retention purge failed, nothing was removed: "
                f"{type(exc).__name__}: {exc.orig if hasattr(exc, 'orig') else exc}"
            ) from None

    def _purge(
        self, periods_ms: tuple[int | None, int | None, int | None], *, dry_run: bool, actor: str
    ) -> PurgeReport:
        dismissed_photo_ms, alerted_photo_ms, incident_ms = periods_ms
        now = self.db.now()
        has_photo = func.length(IncidentRow.photo) > 0
        pending = select(OutboxRow.incident_id).where(OutboxRow.state == "pending")
        with self.db.tx() as s:
            dismissed: list[str] = []
            if dismissed_photo_ms is not None:
                dismissed = list(
                    s.scalars(
                        select(IncidentRow.id)
                        .where(
                            IncidentRow.decision == "dismissed",
                            has_photo,
                            IncidentRow.decided_at <= now - dismissed_photo_ms,
                        )
                        .order_by(IncidentRow.id)
                    )
                )
            alerted: list[str] = []
            if alerted_photo_ms is not None:
                cut = now - alerted_photo_ms
                delivered = select(OutboxRow.incident_id).where(
                    OutboxRow.state == "delivered", OutboxRow.delivered_at <= cut
                )
                alerted = list(
                    s.scalars(
                        select(IncidentRow.id)
                        .where(
                            IncidentRow.decision == "dangerous",
                            has_photo,
                            (
                                IncidentRow.id.in_(delivered)
                                | (
                                    IncidentRow.fused_into.is_not(None)
                                    & (IncidentRow.decided_at <= cut)
                                )
                            ),
                        )
                        .order_by(IncidentRow.id)
                    )
                )
            gone: list[str] = []
            if incident_ms is not None:
                gone = list(
                    s.scalars(
                        select(IncidentRow.id)
                        .where(
                            IncidentRow.decision.is_not(None),
                            IncidentRow.decided_at <= now - incident_ms,
                            IncidentRow.id.not_in(pending),
                        )
                        .order_by(IncidentRow.id)
                    )
                )
            gone_set = set(gone)
            dismissed = [i for i in dismissed if i not in gone_set]
            alerted = [i for i in alerted if i not in gone_set]
            report = PurgeReport(tuple(dismissed), tuple(alerted), tuple(gone), dry_run)
            if dry_run or not report.total:
                return report
            for chunk in _chunks([*dismissed, *alerted]):
                s.execute(
                    update(IncidentRow)
                    .where(IncidentRow.id.in_(chunk))
                    .values(photo=b"")
                    .execution_options(synchronize_session=False)
                )
            for chunk in _chunks(gone):
                s.execute(delete(OutboxRow).where(OutboxRow.incident_id.in_(chunk)))
                s.execute(delete(IncidentRow).where(IncidentRow.id.in_(chunk)))
            self.db.audit(
                s,
                actor,
                "retention.purge",
                "incidents",
                photos_dismissed=len(dismissed),
                photos_alerted=len(alerted),
                incidents=len(gone),
                ids=sorted([*dismissed, *alerted, *gone])[:1000],
            )
        return report

    def _incident_from_tuple(self, t: Any) -> IncidentInfo:
        (
            id_,
            uid,
            kid,
            zone,
            lat,
            lon,
            alt,
            acc,
            src,
            dscore,
            label,
            cap,
            rec,
            size,
            sscore,
            unc,
            dec,
            reason,
            dat,
            state,
            attempts,
            deliv,
            fused,
            sealed,
        ) = t
        lat, lon, alt, acc = self.db.seal.open_coords(id_, lat, lon, alt, acc, sealed)
        size = int(size or 0) - (SEAL_OVERHEAD if sealed is not None and size else 0)
        return IncidentInfo(
            id=id_,
            device_uid=uid,
            kid=bytes(kid),
            zone=zone,
            lat=lat,
            lon=lon,
            alt=alt,
            acc=acc,
            coords_src=src,
            device_score=dscore,
            label=label,
            captured_at=cap,
            received_at=rec,
            photo_bytes=size,
            server_score=sscore,
            uncertain=None if unc is None else bool(unc),
            decision=dec,
            decision_reason=reason,
            decided_at=dat,
            enc_state=state,
            enc_attempts=attempts,
            enc_delivered_at=deliv,
            fused_into=fused,
        )

    def sealed_counts(self) -> tuple[int, int]:
        """(incidents sealed, incidents still in clear)."""
        with self.db.tx() as s:
            clear = int(
                s.scalar(
                    select(func.count())
                    .select_from(IncidentRow)
                    .where(IncidentRow.coords_sealed.is_(None))
                )
                or 0
            )
            total = int(s.scalar(select(func.count()).select_from(IncidentRow)) or 0)
        return total - clear, clear

    def seal_clear_incidents(self, *, batch: int = 200, actor: str = "server:migration") -> int:
        """Seal the photos and coordinates of incidents stored before sealing existed
        (one transaction per ``batch`` rows, so a large database is sealed in steps and
        an interrupted run resumes); returns how many were sealed."""
        total = 0
        while True:
            with self.db.tx() as s:
                rows = s.execute(
                    select(
                        IncidentRow.id,
                        IncidentRow.lat,
                        IncidentRow.lon,
                        IncidentRow.alt,
                        IncidentRow.acc,
                        IncidentRow.photo,
                    )
                    .where(IncidentRow.coords_sealed.is_(None))
                    .order_by(IncidentRow.id)
                    .limit(batch)
                ).all()
                done = 0
                for rid, lat, lon, alt, acc, photo in rows:
                    assert lat is not None and lon is not None  # unsealed rows have them
                    photo_sealed = (
                        bytes(photo)
                        if RecordSealer.is_sealed(photo)
                        else self.db.seal.photo(rid, bytes(photo))
                    )
                    res = s.execute(
                        update(IncidentRow)
                        .where(IncidentRow.id == rid, IncidentRow.coords_sealed.is_(None))
                        .values(
                            coords_sealed=self.db.seal.coords(rid, lat, lon, alt, acc),
                            photo=photo_sealed,
                            lat=None,
                            lon=None,
                            alt=None,
                            acc=None,
                        )
                        .execution_options(synchronize_session=False)
                    )
                    done += res.rowcount  # type: ignore[attr-defined]
                if done:
                    self.db.audit(s, actor, "store.seal", "incidents", count=done)
            total += done
            if len(rows) < batch:
                return total


_INCIDENT_COLUMNS = (
    IncidentRow.id,
    IncidentRow.device_uid,
    IncidentRow.kid,
    IncidentRow.zone,
    IncidentRow.lat,
    IncidentRow.lon,
    IncidentRow.alt,
    IncidentRow.acc,
    IncidentRow.coords_src,
    IncidentRow.device_score,
    IncidentRow.label,
    IncidentRow.captured_at,
    IncidentRow.received_at,
    func.length(IncidentRow.photo),
    IncidentRow.server_score,
    IncidentRow.uncertain,
    IncidentRow.decision,
    IncidentRow.decision_reason,
    IncidentRow.decided_at,
    OutboxRow.state,
    OutboxRow.attempts,
    OutboxRow.delivered_at,
    IncidentRow.fused_into,
    IncidentRow.coords_sealed,
)


def _incident_query() -> Any:
    return select(*_INCIDENT_COLUMNS).outerjoin(OutboxRow, OutboxRow.incident_id == IncidentRow.id)


def _chunks(ids: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _incident_info(r: IncidentRow, coords: Coords, size: int) -> IncidentInfo:
    return IncidentInfo(
        id=r.id,
        device_uid=r.device_uid,
        kid=bytes(r.kid),
        zone=r.zone,
        lat=coords.lat,
        lon=coords.lon,
        alt=coords.alt,
        acc=coords.acc,
        coords_src=r.coords_src,
        device_score=r.device_score,
        label=r.label,
        captured_at=r.captured_at,
        received_at=r.received_at,
        photo_bytes=size,
        server_score=None,
        uncertain=None,
        decision=None,
        decision_reason=None,
        decided_at=None,
    )
