"""Events that the role objects give back from ``receive`` and ``on_timeout``."""

from __future__ import annotations

from dataclasses import dataclass

from ._messages import Coords

__all__ = [
    "AlertConfirmed",
    "AlertReceived",
    "AlertTimedOut",
    "BroadcastConfirmed",
    "ClockCorrected",
    "ContactOpened",
    "ContactRefused",
    "ContactTimedOut",
    "Event",
    "IncidentReported",
    "MessageDropped",
    "PoleAddressConfirmed",
    "PoleAddressReceived",
    "ReportDelivered",
    "ReportRefused",
    "WindowAnnounced",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events."""


@dataclass(frozen=True, slots=True)
class MessageDropped(Event):
    """A received message was rejected and dropped (nothing was answered)."""

    reason: str
    """Short machine-readable reason, a metrics label ("auth", "replay", "stale_epoch" ...)."""
    detail: str
    """What was wrong, in words."""
    kid: bytes | None = None
    """kid from the envelope, when it could be read."""
    type: int | None = None
    """Message type from the envelope, when it could be read."""


# -- device --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowAnnounced(Event):
    """A valid B1: run detection from now until ``tx`` (``tx == ts`` ends the window)."""

    ts: int
    """T_S of the B1."""
    tx: int
    """End of the monitoring window, ms."""
    ep: int
    """The new broadcast epoch; persist it."""


@dataclass(frozen=True, slots=True)
class ReportDelivered(Event):
    """A matching C4 arrived: the stored incident may now be deleted."""

    cid: bytes
    """Capture id of the report."""
    incident_id: str
    """The server's incident id."""


@dataclass(frozen=True, slots=True)
class ReportRefused(Event):
    """The server answered an error; the report is kept and retried at ``retry_at``."""

    cid: bytes
    """Capture id of the report."""
    code: int
    """Error code (protocol.md section 3)."""
    retry_at: int
    """When the device starts over with a new T_D (local clock, ms)."""


@dataclass(frozen=True, slots=True)
class ContactTimedOut(Event):
    """No C2 or C4 in time; the report is kept and retried at ``retry_at``."""

    cid: bytes
    """Capture id of the report."""
    step: str
    """The step that timed out: "C2" or "C4"."""
    retry_at: int
    """When the device starts over with a new T_D (local clock, ms)."""


@dataclass(frozen=True, slots=True)
class ClockCorrected(Event):
    """An error 5 told the device the server's time; its clock offset changed."""

    offset_ms: int
    """New offset added to the local clock for protocol timestamps."""


# -- server --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactOpened(Event):
    """A valid C1 was answered with C2."""

    kid: bytes
    """The device's kid."""
    uid: str
    """The device's UID."""
    td: int
    """T_D of the C1."""


@dataclass(frozen=True, slots=True)
class IncidentReported(Event):
    """A valid C3: store it durably, then call ``ServerEndpoint.receipt`` for the C4."""

    kid: bytes
    """The device's kid."""
    uid: str
    """The device's UID."""
    td: int
    """T_D of the contact."""
    cid: bytes
    """Capture id (idempotency key together with kid)."""
    incident_id: str
    """Deterministic from kid and cid: the same report always gives the same id."""
    coords: Coords
    """Where the device is."""
    photo: bytes
    """The JPEG."""
    score: float
    """The device's pre-screen score."""
    label: str
    """The device's label."""
    captured_at: int
    """Capture time, ms (device clock)."""
    c3_hash: bytes
    """H(C3), for the C4."""


@dataclass(frozen=True, slots=True)
class ContactRefused(Event):
    """An error message was queued for the device."""

    kid: bytes
    """The device's kid."""
    type: int
    """Type of the message refused."""
    code: int
    """Error code sent."""


@dataclass(frozen=True, slots=True)
class BroadcastConfirmed(Event):
    """A valid B2 for the last B1 sent to the device."""

    kid: bytes
    """The device's kid."""
    ep: int
    """Epoch confirmed."""
    ts: int
    """T_S confirmed."""


@dataclass(frozen=True, slots=True)
class AlertConfirmed(Event):
    """The ENC's N2 matches an N1 we sent: the alert is delivered."""

    incident_id: str
    """Incident id."""
    tenc: int
    """T_ENC from the N2."""


@dataclass(frozen=True, slots=True)
class PoleAddressConfirmed(Event):
    """The ENC's N2 matches an N4 we sent: it holds the device's address."""

    device_uid: str
    """The device whose address it holds."""
    tenc: int
    """T_ENC from the N2."""


@dataclass(frozen=True, slots=True)
class AlertTimedOut(Event):
    """No N2 within the timeout: send the alert again (a fresh N1) at ``retry_at``."""

    incident_id: str
    """Incident id."""
    attempts: int
    """N1 attempts made so far."""
    retry_at: int
    """When to try again, ms."""


# -- ENC -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkedReportReceived(Event):
    """A valid N3: store the report with its alert (idempotently by ``report_id``),
    then call ``EncEndpoint.report_receipt`` for the N2."""

    server_kid: bytes
    """kid of the sending server."""
    incident_id: str
    """The alert it joins."""
    report_id: str
    """The report's own incident id."""
    ts: int
    """T_S of the N3."""
    coords: Coords
    """Where it happened."""
    photo: bytes
    """The JPEG."""
    score: float
    """The server's score."""
    label: str
    """Label."""
    captured_at: int
    """Capture time, ms."""
    device_uid: str
    """UID of the reporting device."""
    n3_hash: bytes
    """H(N3), for the N2."""


@dataclass(frozen=True, slots=True)
class PoleAddressReceived(Event):
    """A valid N4: keep the address unless one of a higher ``version`` is kept already,
    then call ``EncEndpoint.pole_receipt`` for the N2."""

    server_kid: bytes
    """kid of the sending server."""
    device_uid: str
    """The device (pole)."""
    address: str
    """Its street address ("": none registered)."""
    version: int
    """When the server's registry set it, ms (higher wins)."""
    ts: int
    """T_S of the N4."""
    n4_hash: bytes
    """H(N4), for the N2."""


@dataclass(frozen=True, slots=True)
class AlertReceived(Event):
    """A valid N1: store it (idempotently by incident id), then call
    ``EncEndpoint.receipt`` for the N2."""

    server_kid: bytes
    """kid of the sending server."""
    incident_id: str
    """Incident id."""
    ts: int
    """T_S of the N1."""
    coords: Coords
    """Where it happened."""
    photo: bytes
    """The JPEG."""
    score: float
    """The server's score."""
    label: str
    """Label."""
    captured_at: int
    """Capture time, ms."""
    device_uid: str
    """UID of the reporting device."""
    n1_hash: bytes
    """H(N1), for the N2."""
