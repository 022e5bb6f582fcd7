"""An alert as an OASIS Common Alerting Protocol 1.2 message.

A new or acknowledged alert exports as msgType "Alert"; once an operator dispatched
help it exports as an "Update", and a false alarm as a "Cancel", each referencing the
original message and every earlier update of it (``references``: sender,identifier,sent
of each, space-separated, oldest first). The photo is a resource with its size and
SHA-1 digest, its ``uri`` on this ENC with ``cap.public_url``, and the photo itself as
``derefUri`` (base64) with ``cap.embed_photo``. The Update for a linked report carries
that report's photo first (the news), then the alert's own. Exporting the same state
twice gives the same message: identifiers and times come from the store and the audit
trail, never from the clock.
"""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from ._config import CapSection
from ._handling import RESOLUTIONS
from ._store import Alert, AlertStatus, AuditEntry

__all__ = [
    "CAP_NAMESPACE",
    "cap_identifier",
    "cap_message",
    "cap_report",
    "cap_time",
    "is_cap_change",
]

CAP_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
_NS = "{" + CAP_NAMESPACE + "}"
# CAP identifiers must not contain spaces, commas or restricted characters.
_SAFE = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
_STATUS_CHANGES = ("dispatched", "dismissed", "reopened", "closed")

_LABELS = {"person_down": "Person down", "fall": "Fall", "fight": "Fight"}
# CAP categories: a person on the ground is a medical matter, a fight a police one.
_CATEGORY = {"person_down": "Health", "fall": "Health", "fight": "Security"}


def is_cap_change(e: AuditEntry) -> bool:
    """Whether an audit entry is a change that makes a CAP message of its own: a status
    change, or a linked report of another kind (it raises the alert's priority)."""
    return e.action in _STATUS_CHANGES or (
        e.action == "report_linked" and bool(e.detail.get("other_kind"))
    )


def cap_report(trail: Sequence[AuditEntry]) -> str | None:
    """The linked report whose photo the message for this trail carries: that of its
    last CAP change, if that change is a linked report (None otherwise)."""
    changes = [e for e in trail if is_cap_change(e)]
    if changes and changes[-1].action == "report_linked":
        rep = changes[-1].detail.get("report")
        return str(rep) if rep else None
    return None


def cap_time(ms: int) -> str:
    """CAP 1.2 date-time: seconds, and UTC written as -00:00 (no "Z")."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + "-00:00"


def cap_identifier(alert: Alert) -> str:
    """Identifier of an alert's original CAP message."""
    inc = alert.incident_id
    safe = inc if _SAFE.match(inc) else hashlib.sha256(inc.encode()).hexdigest()[:40]
    return f"citywatch.{safe}"


def _label(label: str) -> str:
    return _LABELS.get(label, label.replace("_", " ").capitalize())


# Characters XML 1.0 cannot carry at all (a device UID or a comment might hold one).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    e = ET.SubElement(parent, _NS + tag)
    if text is not None:
        e.text = _NOT_XML.sub("\ufffd", text)
    return e


def _hemi(v: float, pos: str, neg: str) -> str:
    return f"{abs(v):.5f} {pos if v >= 0 else neg}"


def _resource(
    info: ET.Element, settings: CapSection, photo: bytes, *, desc: str, uri: str | None
) -> None:
    res = _sub(info, "resource")
    _sub(res, "resourceDesc", desc)
    _sub(res, "mimeType", "image/jpeg")
    _sub(res, "size", str(len(photo)))
    if uri:
        _sub(res, "uri", uri)
    if settings.embed_photo:
        _sub(res, "derefUri", base64.b64encode(photo).decode("ascii"))
    # CAP 1.2 names SHA-1 for the digest.
    _sub(res, "digest", hashlib.sha1(photo, usedforsecurity=False).hexdigest())


def cap_message(
    alert: Alert,
    trail: Sequence[AuditEntry],
    settings: CapSection,
    *,
    photo: bytes | None = None,
    photo_uri: str | None = None,
    report_photo: bytes | None = None,
    report_photo_uri: str | None = None,
) -> bytes:
    """The CAP 1.2 XML (UTF-8, with declaration) for the alert's current state;
    ``photo_uri``: the photo resource's ``uri`` (default: the dashboard's, which needs
    a login); ``report_photo`` and its ``report_photo_uri``: the photo of the linked
    report ``cap_report(trail)`` names, for its Update."""
    changes = [e for e in trail if is_cap_change(e)]
    last = changes[-1] if changes else None
    original_id = cap_identifier(alert)
    original_sent = cap_time(alert.received_at)
    if alert.status is AlertStatus.DISMISSED:
        msg_type = "Cancel"
    elif alert.status is AlertStatus.DISPATCHED or last is not None:
        msg_type = "Update"
    else:
        msg_type = "Alert"

    root = ET.Element(_NS + "alert")
    if msg_type == "Alert" or last is None:
        _sub(root, "identifier", original_id)
        _sub(root, "sender", settings.sender)
        _sub(root, "sent", original_sent)
    else:
        _sub(root, "identifier", f"{original_id}.{last.id}")
        _sub(root, "sender", settings.sender)
        _sub(root, "sent", cap_time(last.at))
    _sub(root, "status", settings.status)
    _sub(root, "msgType", msg_type)
    _sub(root, "source", f"CityWatch device {alert.device_uid}")
    _sub(root, "scope", "Restricted")
    _sub(root, "restriction", settings.restriction)

    note = None
    if last is not None:
        d = last.detail
        if last.action == "dispatched":
            note = f"Dispatched {d.get('unit', '')} ({last.actor})"
            if d.get("comment"):
                note += f": {d['comment']}"
        elif last.action == "dismissed":
            note = f"False alarm ({last.actor}): {d.get('reason', '')}"
        elif last.action == "report_linked":
            note = (
                f"Another report fused in: {_label(str(d.get('label', '')))} "
                f"({float(d.get('score', 0)):.0%}) from street-pole device "
                f"{d.get('device', '')}; the priority is raised"
            )
        elif last.action == "closed":
            code = str(d.get("resolution", ""))
            note = f"Closed ({last.actor}): {RESOLUTIONS.get(code, code)}"
            if d.get("comment"):
                note += f": {d['comment']}"
        else:
            note = f"Reopened ({last.actor}): {d.get('reason', '')}"
        _sub(root, "note", note)
    if msg_type != "Alert":
        # Each status change was an update of its own (same identifiers as its export).
        cited = [f"{settings.sender},{original_id},{original_sent}"] + [
            f"{settings.sender},{original_id}.{e.id},{cap_time(e.at)}" for e in changes[:-1]
        ]
        _sub(root, "references", " ".join(cited))
    _sub(root, "incidents", original_id)

    info = _sub(root, "info")
    _sub(info, "language", "en-US")
    _sub(info, "category", _CATEGORY.get(alert.label, "Safety"))
    _sub(info, "event", _label(alert.label))
    if msg_type == "Cancel" or alert.status is AlertStatus.CLOSED:
        _sub(info, "responseType", "AllClear")
        urgency, severity, certainty = "Past", "Minor", "Unlikely"
    else:
        urgency = "Immediate"
        severity = "Severe" if alert.score >= 0.7 else "Moderate"
        if alert.status is AlertStatus.DISPATCHED:
            certainty = "Observed"  # an operator looked at the photo and sent help
        else:
            certainty = "Likely" if alert.score >= 0.8 else "Possible"
    _sub(info, "urgency", urgency)
    _sub(info, "severity", severity)
    _sub(info, "certainty", certainty)
    _sub(info, "onset", cap_time(alert.captured_at))
    _sub(info, "senderName", settings.sender_name)
    c = alert.coords
    _sub(
        info,
        "headline",
        (
            f"{_label(alert.label)} at {alert.address}"
            if alert.address
            else f"{_label(alert.label)} at {_hemi(c.lat, 'N', 'S')} {_hemi(c.lon, 'E', 'W')}"
        )[:160],
    )
    desc = (
        f"{_label(alert.label)} detected by street-pole device {alert.device_uid} "
        f"(confidence {alert.score:.0%}), captured {cap_time(alert.captured_at)}, "
        + (f"at {alert.address}, " if alert.address else "")
        + f"position {c.lat:.6f},{c.lon:.6f}"
        + (f" +/- {c.acc:.0f} m" if c.acc is not None else "")
        + f" ({'GNSS fix' if c.src == 'gps' else 'registered pole position'})."
    )
    if note:
        desc += f" {note}."
    _sub(info, "description", desc)
    if alert.status is AlertStatus.DISPATCHED and last is not None:
        _sub(info, "instruction", f"Unit dispatched: {last.detail.get('unit', '')}.")
    if settings.public_url:
        _sub(info, "web", f"{settings.public_url.rstrip('/')}/alerts/{alert.incident_id}")
    for name, value in (
        ("CITYWATCH-INCIDENT", alert.incident_id),
        ("CITYWATCH-DEVICE", alert.device_uid),
        ("CITYWATCH-CONFIDENCE", f"{alert.score:.3f}"),
        ("CITYWATCH-STATUS", alert.status.value),
    ):
        param = _sub(info, "parameter")
        _sub(param, "valueName", name)
        _sub(param, "value", value)
    public = settings.public_url.rstrip("/")
    inc_q = quote(alert.incident_id, safe="")
    rep = cap_report(trail)
    if report_photo is not None and rep is not None and last is not None:
        _resource(
            info,
            settings,
            report_photo,
            desc=(
                f"Photo of the fused report ({_label(str(last.detail.get('label', '')))}) "
                f"from street-pole device {last.detail.get('device', '')}"
            ),
            uri=report_photo_uri
            or (
                f"{public}/alerts/{inc_q}/reports/{quote(rep, safe='')}/photo.jpg"
                if public
                else None
            ),
        )
    if photo is not None:
        _resource(
            info,
            settings,
            photo,
            desc="Photo from the street-pole camera",
            uri=photo_uri or (f"{public}/alerts/{inc_q}/photo.jpg" if public else None),
        )
    area = _sub(info, "area")
    radius_m = max(c.acc or 0.0, settings.min_radius_m)
    # The street address when the server's registry sent one (an N4), else the pole alone.
    _sub(
        area,
        "areaDesc",
        f"{alert.address} (within {radius_m:.0f} m of street-pole device {alert.device_uid})"
        if alert.address
        else f"Within {radius_m:.0f} m of street-pole device {alert.device_uid}",
    )
    _sub(area, "circle", f"{c.lat:.6f},{c.lon:.6f} {radius_m / 1000:.3f}")

    ET.register_namespace("", CAP_NAMESPACE)
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"
