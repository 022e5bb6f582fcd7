"""Linked reports (N3, docs/protocol.md "Server <-> ENC"): reports the server fused into
an alert it had sent. None is hidden:

- a report of the same kind as its alert (another fall by a person down) is kept with
  the alert and shown on its page;
- a report of another kind (a fight into a person down) on an alert still open is kept
  with it too, and it raises the alert's priority to the more urgent of the two; the
  alert shows both labels ("Person down + Fight");
- a report of another kind on an alert already handled (dispatched, dismissed, closed),
  and a report whose alert this ENC does not hold, stand as an alert of their own (so
  that a new danger is never filed under a finished alert), with the link in the trail.

Each is one transaction with its audit entry (``report_linked`` on the alert, or
``received`` of the new alert), idempotent by the report's id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import protocol as p

from ._handling import LABEL_KIND, alert_severity
from ._schema import AlertRow, LinkedReportRow
from ._store import AlertStatus, AlertStore

__all__ = [
    "LinkedReport",
    "alert_severity",
    "linked_photo",
    "linked_reports",
    "record_linked_report",
]


@dataclass(frozen=True, slots=True)
class LinkedReport:
    """A report fused into an alert, as stored (without its photo)."""

    report_id: str
    incident_id: str
    device_uid: str
    label: str
    score: float
    coords: p.Coords
    captured_at: int
    received_at: int
    photo_size: int
    photo_sha256: str


def _aad(report_id: str, column: str) -> bytes:
    return f"citywatch enc linked report {report_id} {column}".encode()


def record_linked_report(
    store: AlertStore, ev: p.LinkedReportReceived, *, received_at: int
) -> tuple[str, bool]:
    """Store a valid N3's report; (how: ``"linked"`` or ``"own"`` alert, new?). Durable
    when it returns; a second N3 for the same report changes nothing."""
    with store.transaction(write=False) as s:
        if s.get(LinkedReportRow, ev.report_id) is not None:
            return "linked", False
        if s.get(AlertRow, ev.report_id) is not None:
            return "own", False
        alert = s.get(AlertRow, ev.incident_id)
        status = AlertStatus(alert.status) if alert is not None else None
        alert_label = alert.label if alert is not None else ""
    other_kind = LABEL_KIND.get(ev.label) is not None and LABEL_KIND.get(
        ev.label
    ) != LABEL_KIND.get(alert_label)
    if status is None or (other_kind and status.handled):
        own = p.AlertReceived(
            server_kid=ev.server_kid,
            incident_id=ev.report_id,
            ts=ev.ts,
            coords=ev.coords,
            photo=ev.photo,
            score=ev.score,
            label=ev.label,
            captured_at=ev.captured_at,
            device_uid=ev.device_uid,
            n1_hash=ev.n3_hash,
        )
        why = "unknown" if status is None else "handled"
        new = store.record_alert(
            own, received_at=received_at, joins={"joins": ev.incident_id, "why": why}
        )
        if new and status is not None:
            store.append_audit(
                at=received_at,
                actor=f"server:{ev.server_kid.hex()}",
                action="report_linked",
                incident_id=ev.incident_id,
                detail={
                    "report": ev.report_id,
                    "label": ev.label,
                    "score": ev.score,
                    "device": ev.device_uid,
                    "own_alert": True,
                },
            )
        return "own", new
    c = ev.coords
    with store.transaction(write=True) as s:
        if s.get(LinkedReportRow, ev.report_id) is not None:
            return "linked", False
        row = s.get(AlertRow, ev.incident_id)
        assert row is not None  # alerts are deleted only with their reports
        s.add(
            LinkedReportRow(
                report_id=ev.report_id,
                incident_id=ev.incident_id,
                server_kid=ev.server_kid.hex(),
                device_uid=ev.device_uid,
                label=ev.label,
                score=ev.score,
                coords_sealed=store.seal_record(
                    json.dumps([c.lat, c.lon, c.alt, c.acc]).encode(), _aad(ev.report_id, "coords")
                ),
                coord_src=c.src,
                captured_at=ev.captured_at,
                sent_at=ev.ts,
                received_at=received_at,
                photo_sealed=store.seal_record(ev.photo, _aad(ev.report_id, "photo")),
                photo_size=len(ev.photo),
                photo_sha256=hashlib.sha256(ev.photo).hexdigest(),
            )
        )
        detail = {
            "report": ev.report_id,
            "label": ev.label,
            "score": ev.score,
            "device": ev.device_uid,
        }
        if other_kind:
            labels = json.loads(row.linked_labels or "[]")
            row.linked_labels = json.dumps([*labels, [ev.label, ev.score]])
            detail["other_kind"] = True
        store.audit(
            s,
            at=received_at,
            incident_id=ev.incident_id,
            actor=f"server:{ev.server_kid.hex()}",
            action="report_linked",
            detail=detail,
        )
    return "linked", True


def linked_reports(store: AlertStore, incident_id: str) -> list[LinkedReport]:
    """The reports fused into an alert, oldest first."""
    from sqlalchemy import select

    q = (
        select(LinkedReportRow)
        .where(LinkedReportRow.incident_id == incident_id)
        .order_by(LinkedReportRow.received_at, LinkedReportRow.report_id)
    )
    with store.transaction(write=False) as s:
        out = []
        for r in s.scalars(q):
            lat, lon, alt, acc = json.loads(
                store.open_record(bytes(r.coords_sealed), _aad(r.report_id, "coords"))
            )
            out.append(
                LinkedReport(
                    report_id=r.report_id,
                    incident_id=r.incident_id,
                    device_uid=r.device_uid,
                    label=r.label,
                    score=r.score,
                    coords=p.Coords(lat=lat, lon=lon, alt=alt, acc=acc, src=r.coord_src),
                    captured_at=r.captured_at,
                    received_at=r.received_at,
                    photo_size=r.photo_size,
                    photo_sha256=r.photo_sha256,
                )
            )
        return out


def linked_photo(store: AlertStore, incident_id: str, report_id: str) -> bytes:
    """A linked report's photo (``NotFound`` unless it is one of this alert's)."""
    from ._errors import NotFound

    with store.transaction(write=False) as s:
        r = s.get(LinkedReportRow, report_id)
        if r is None or r.incident_id != incident_id:
            raise NotFound(f"no report {report_id!r} of alert {incident_id!r}")
        return store.open_record(bytes(r.photo_sealed), _aad(report_id, "photo"))
