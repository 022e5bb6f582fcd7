"""An alert as a NENA Emergency Incident Data Object (EIDO, NENA-STA-021) in JSON: the
incident, its location, the operators who worked it, its notes and its disposition, as
they stand now.

The component and field names follow the standard's field list (``incidentComponent``,
``locationComponent``, ``notesComponent``, ``agentComponent``,
``dispositionComponent``, ``lastUpdateTimeStamp`` ...); references between components
are ``$id`` values. NENA's published JSON schema is not carried by any package the
project installs from a registry, so the export is checked against a schema written
here from that field list (``enc/schemas/eido.schema.json``), not against NENA's own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from ._config import CapSection
from ._handling import RESOLUTIONS, label_words
from ._store import Alert, AlertStatus, AuditEntry

__all__ = ["EIDO_SCHEMA_ID", "eido_incident", "eido_schema"]

EIDO_SCHEMA_ID = "urn:citywatch:schema:eido:nena-sta-021:1"

_TYPE = {"fight": "Assault", "person_down": "Medical", "fall": "Fall"}
_STATUS = {
    AlertStatus.NEW: "Pending",
    AlertStatus.ACKNOWLEDGED: "Active",
    AlertStatus.ON_HOLD: "OnHold",
    AlertStatus.DISPATCHED: "Dispatched",
    AlertStatus.DISMISSED: "Cancelled",
    AlertStatus.CLOSED: "Closed",
}
_WORKED = (
    "acknowledged",
    "dispatched",
    "dismissed",
    "reopened",
    "put_on_hold",
    "resumed",
    "assigned",
    "released",
    "closed",
    "note",
)


def _ts(ms: int) -> str:
    """RFC 3339 with an explicit offset, as EIDO's timestamps are."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _domain(settings: CapSection) -> str:
    sender = settings.sender
    return (sender.rsplit("@", 1)[-1] if "@" in sender else sender).replace(":", "-")


def eido_incident(
    alert: Alert, trail: Sequence[AuditEntry], settings: CapSection
) -> dict[str, Any]:
    """The EIDO of an alert as it stands now."""
    domain = _domain(settings)
    inc = alert.incident_id
    safe = hashlib.sha256(inc.encode()).hexdigest()[:32]
    worked = [e for e in trail if e.action in _WORKED]
    last = max([alert.received_at, *(e.at for e in worked)])
    agents = sorted({e.actor for e in worked})
    agent_ids = {a: f"agent-{n + 1}" for n, a in enumerate(agents)}
    c = alert.coords
    location: dict[str, Any] = {
        "$id": "location-1",
        "lastUpdateTimeStamp": _ts(alert.captured_at),
        "locationByValue": {
            "type": "Point",
            "coordinates": [round(c.lon, 7), round(c.lat, 7)],
            **({"uncertaintyRadiusMeters": round(c.acc, 1)} if c.acc is not None else {}),
        },
        "locationTypeDescription": (
            "GNSS fix of the street-pole device"
            if c.src == "gps"
            else "registered position of the street-pole device"
        ),
        # The pole's street address as its registry holds it: free text, not a parsed
        # civic address (docs/enc.md, "EIDO").
        **({"civicAddressText": alert.address} if alert.address else {}),
    }
    notes = []
    for n, e in enumerate(worked):
        text = _note_text(e)
        if text:
            notes.append(
                {
                    "$id": f"note-{n + 1}",
                    "noteDateTimeStamp": _ts(e.at),
                    "noteText": text,
                    "authorReference": agent_ids[e.actor],
                }
            )
    incident: dict[str, Any] = {
        "$id": "incident-1",
        "componentIdentifier": f"urn:emergency:uid:incidentid:{safe}:{domain}",
        "incidentTrackingIdentifier": f"urn:emergency:uid:incidentid:{safe}:{domain}",
        "localIncidentIdentifier": inc,
        "lastUpdateTimeStamp": _ts(last),
        "incidentCreationTimeStamp": _ts(alert.received_at),
        "incidentTypeCommonRegistryText": [_TYPE.get(alert.label, "Other")],
        "incidentTypeDescription": label_words(alert.label),
        "incidentStatusCommonRegistryText": [_STATUS[alert.status]],
        "locationReference": "location-1",
        "notesReference": [n["$id"] for n in notes],
        "sourceDescription": f"CityWatch street-pole device {alert.device_uid}, confidence "
        f"{alert.score:.0%}, photo SHA-256 {alert.photo_sha256}",
    }
    out: dict[str, Any] = {
        "$schema": EIDO_SCHEMA_ID,
        "eidoMessageIdentifier": f"urn:emergency:uid:eido:{safe}-{last}:{domain}",
        "lastUpdateTimeStamp": _ts(last),
        "sendingSystemIdentifier": settings.sender,
        "incidentComponent": [incident],
        "locationComponent": [location],
        "agentComponent": [
            {"$id": agent_ids[a], "agentIdentifier": a, "agentRoleDescription": "ENC operator"}
            for a in agents
        ],
        "notesComponent": notes,
    }
    closing = [e for e in trail if e.action in ("closed", "dismissed", "dispatched")]
    if alert.status.handled and closing:
        e = closing[-1]
        code = (
            str(e.detail.get("resolution", ""))
            if e.action == "closed"
            else {"dismissed": "false_alarm", "dispatched": "dispatched"}[e.action]
        )
        out["dispositionComponent"] = [
            {
                "$id": "disposition-1",
                "dispositionTimeStamp": _ts(e.at),
                "dispositionCommonRegistryText": code,
                "dispositionDescription": RESOLUTIONS.get(
                    code, "Help dispatched" if code == "dispatched" else code
                ),
                "agentReference": agent_ids[e.actor],
            }
        ]
        incident["dispositionReference"] = "disposition-1"
    return out


def _note_text(e: AuditEntry) -> str:
    d = e.detail
    if e.action == "note":
        return str(d.get("note", ""))
    words = {
        "acknowledged": "Taken",
        "dispatched": f"Dispatched {d.get('unit', '')}",
        "dismissed": f"Dismissed as a false alarm: {d.get('reason', '')}",
        "reopened": f"Reopened: {d.get('reason', '')}",
        "put_on_hold": f"On hold: {d.get('reason', '')}",
        "resumed": "Resumed",
        "assigned": f"Assigned to {d.get('to', '')}",
        "released": "Released",
        "closed": "Closed: " + RESOLUTIONS.get(str(d.get("resolution", "")), ""),
    }
    text = words.get(e.action, e.action)
    if d.get("comment"):
        text += f" ({d['comment']})"
    return text.strip()


def eido_schema() -> dict[str, Any]:
    """The JSON schema the exports are checked against (see the module's note)."""
    text = resources.files("enc").joinpath("schemas/eido.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
