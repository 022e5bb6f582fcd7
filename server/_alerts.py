"""The ENC alert queue (the outbox): alerts queued with their decision, leased to one
replica at a time (``lease_until``; a crashed replica's lease lapses), delivered or
retried."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import ColumnElement, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from ._database import Database
from ._schema import IncidentRow, OutboxRow

__all__ = ["AlertQueue", "OutboxItem", "queue_alert"]


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
    linked_to: str | None = None
    """A linked report: the alert it was fused into (sent as an N3)."""


def queue_alert(s: Session, incident_id: str, *, now: int, linked_to: str | None = None) -> None:
    """Queue an incident's alert in the caller's transaction (the decision's); with
    ``linked_to``, the incident is a report fused into that alert, for the ENC to show
    with it."""
    s.add(
        OutboxRow(
            incident_id=incident_id,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            lease_until=0,
            created_at=now,
            linked_to=linked_to,
        )
    )
    s.flush()


def _ready() -> ColumnElement[bool]:
    """A pending alert that may go: one of its own, or a linked report whose alert the
    ENC has (a look-up of that row by its key; an "IN (every delivered alert)" read
    them all, a list that only grows)."""
    primary = aliased(OutboxRow)
    joined = (
        select(primary.incident_id)
        .where(primary.incident_id == OutboxRow.linked_to, primary.state == "delivered")
        .exists()
    )
    return and_(OutboxRow.state == "pending", or_(OutboxRow.linked_to.is_(None), joined))


class AlertQueue:
    """Alerts for the ENC. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def claim_due_alerts(self, *, owner: str, lease_ms: int, limit: int) -> list[OutboxItem]:
        """Pending alerts whose time has come and that no other replica holds; each is
        leased to ``owner`` for ``lease_ms``."""
        now = self.db.now()
        with self.db.tx() as s:  # a read: a poll that finds nothing due writes nothing
            ids = list(
                s.scalars(
                    select(OutboxRow.incident_id)
                    .where(
                        _ready(),
                        OutboxRow.next_attempt_at <= now,
                        OutboxRow.lease_until <= now,
                    )
                    .order_by(OutboxRow.next_attempt_at)
                    .limit(limit)
                )
            )
        if not ids:
            return []
        # One compare-and-set for all of them (another replica may win a row meanwhile:
        # RETURNING names the rows this one won), and their contents, in one transaction.
        with self.db.tx() as s:
            won = list(
                s.scalars(
                    update(OutboxRow)
                    .where(
                        OutboxRow.incident_id.in_(ids),
                        OutboxRow.state == "pending",
                        OutboxRow.lease_until <= now,
                    )
                    .values(lease_until=now + lease_ms, lease_owner=owner)
                    .returning(OutboxRow.incident_id)
                    .execution_options(synchronize_session=False)
                )
            )
            if not won:
                return []
            rows = s.execute(
                select(OutboxRow.attempts, OutboxRow.linked_to, IncidentRow)
                .join(IncidentRow, IncidentRow.id == OutboxRow.incident_id)
                .where(OutboxRow.incident_id.in_(won))
            ).all()
        # Unsealed after the transaction: the writer's turn is not held for it.
        items = []
        for a, linked_to, r in rows:
            lat, lon, alt, acc = self.db.seal.open_coords(
                r.id, r.lat, r.lon, r.alt, r.acc, r.coords_sealed
            )
            items.append(
                OutboxItem(
                    incident_id=r.id,
                    attempts=a,
                    lat=lat,
                    lon=lon,
                    alt=alt,
                    acc=acc,
                    coords_src=r.coords_src,
                    photo=self.db.seal.open_photo(r.id, r.photo),
                    score=float(r.server_score if r.server_score is not None else r.device_score),
                    label=r.label,
                    captured_at=r.captured_at,
                    device_uid=r.device_uid,
                    linked_to=linked_to,
                )
            )
        return items

    def alert_delivered(self, incident_id: str, *, tenc: int) -> None:
        self.alerts_delivered([(incident_id, tenc)])

    def alerts_delivered(self, delivered: Sequence[tuple[str, int]]) -> list[None]:
        """``alert_delivered`` for many (incident id, T_ENC) in one transaction (the
        outbox worker groups the N2s that arrive while the last commit runs)."""
        if not delivered:
            return []
        now = self.db.now()
        table = cast(Table, OutboxRow.__table__)
        # One statement, the batch's rows as its parameters (executemany).
        done = (
            update(table)
            .where(table.c.incident_id == bindparam("b_id"))
            .values(
                state="delivered",
                delivered_at=now,
                tenc=bindparam("b_tenc"),
                lease_until=0,
                lease_owner=None,
                last_error=None,
                attempts=table.c.attempts + 1,
            )
        )
        with self.db.tx() as s:
            s.execute(done, [{"b_id": i, "b_tenc": t} for i, t in delivered])
        return [None] * len(delivered)

    def alert_failed(self, incident_id: str, *, retry_at: int, error: str) -> None:
        with self.db.tx() as s:
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.incident_id == incident_id, OutboxRow.state == "pending")
                .values(
                    attempts=OutboxRow.attempts + 1,
                    next_attempt_at=retry_at,
                    lease_until=0,
                    lease_owner=None,
                    last_error=error[:2000],
                )
            )

    def outbox_depth(self) -> int:
        with self.db.tx() as s:
            return int(
                s.scalar(
                    select(func.count()).select_from(OutboxRow).where(OutboxRow.state == "pending")
                )
                or 0
            )

    def next_alert_due(self) -> int | None:
        """Earliest next attempt of a pending alert that can go, ms: a linked report
        waiting for its alert's delivery is not due before it (the delivery wakes the
        outbox; counting it made the outbox poll every 20 ms while the ENC was down)."""
        with self.db.tx() as s:
            v = s.scalar(select(func.min(OutboxRow.next_attempt_at)).where(_ready()))
            return int(v) if v is not None else None
