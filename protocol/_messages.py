"""The nine message types of protocol.md section 3, and the N3 and N4 extensions of
docs/protocol.md, as frozen dataclasses.

Each validates on construction, so a message object that exists is a valid one.
``to_plaintext`` gives the deterministic CBOR plaintext; ``decode_plaintext`` parses a
received plaintext strictly (a missing, unknown or mistyped key is rejected).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import cbor2

from ._cbor import loads_exact
from ._errors import InvalidPlaintext

__all__ = [
    "DEFAULT_MAX_PHOTO",
    "MAX_ADDRESS",
    "MAX_CODE",
    "MAX_EPOCH",
    "MAX_TIME_MS",
    "MESSAGE_CLASSES",
    "B1Announce",
    "B2Confirm",
    "C1Hello",
    "C2Ready",
    "C3Report",
    "C4Receipt",
    "Coords",
    "ErrorCode",
    "ErrorMessage",
    "Message",
    "MessageType",
    "N1Alert",
    "N2Receipt",
    "N3LinkedReport",
    "N4PoleAddress",
    "decode_plaintext",
    "epoch_hash",
]

DEFAULT_MAX_PHOTO = 2 * 1024 * 1024
MAX_TIME_MS = 253_402_300_799_999
"""The latest time a message may carry: 9999-12-31T23:59:59.999Z (protocol.md section 3),
so every time converts to a calendar date and fits a signed 64-bit database column."""
MAX_EPOCH = 2**63 - 1
"""The largest broadcast epoch (a signed 64-bit database column)."""
MAX_ADDRESS = 200
"""The longest street address an N4 carries, characters."""
MAX_CODE = 255
"""The largest message type or error code an error message may name."""


class MessageType(enum.IntEnum):
    B1 = 1
    B2 = 2
    C1 = 3
    C2 = 4
    C3 = 5
    C4 = 6
    N1 = 7
    N2 = 8
    ERROR = 9
    N3 = 10
    """A report fused into an alert already sent (docs/protocol.md, Server <-> ENC)."""
    N4 = 11
    """A pole's street address from the server's registry (docs/protocol.md, Server <-> ENC)."""


class ErrorCode(enum.IntEnum):
    UID_MISMATCH = 1
    DEVICE_INACTIVE = 2
    DEVICE_BLOCKED = 3
    FRAMEWORK_INACTIVE = 4
    TIMESTAMP_OUT_OF_WINDOW = 5
    REPLAY = 6
    TICKET_INVALID = 7
    PAYLOAD_REJECTED = 8
    RATE_LIMITED = 9


def epoch_hash(ts: int) -> bytes:
    """B1's ``h``: SHA-256 of T_S as an 8-byte big-endian integer."""
    import hashlib

    return hashlib.sha256(ts.to_bytes(8, "big")).digest()


def _bad(msg: str) -> InvalidPlaintext:
    return InvalidPlaintext(msg)


def _uint(name: str, v: Any, hi: int) -> None:
    # The value itself is never shown: a peer's huge integer is no message's business.
    if type(v) is not int or not 0 <= v <= hi:
        raise _bad(f"{name} must be an unsigned integer from 0 to {hi}")


def _time(name: str, v: Any) -> None:
    _uint(name, v, MAX_TIME_MS)


def _text(name: str, v: Any, lo: int, hi: int) -> None:
    if not isinstance(v, str) or not lo <= len(v) <= hi:
        raise _bad(f"{name} must be text of {lo}..{hi} characters")
    if not v.isprintable():
        # No control characters: text fields end up in logs, CAP files and web pages.
        raise _bad(f"{name} must not hold control characters")


def _bytes(name: str, v: Any, *, exact: int | None = None, most: int | None = None) -> None:
    if not isinstance(v, bytes):
        raise _bad(f"{name} must be a byte string")
    if exact is not None and len(v) != exact:
        raise _bad(f"{name} must be {exact} bytes")
    if most is not None and len(v) > most:
        raise _bad(f"{name} must be at most {most} bytes")


def _float(name: str, v: Any, lo: float, hi: float) -> None:
    if type(v) is not float or math.isnan(v) or not lo <= v <= hi:
        raise _bad(f"{name} must be a float from {lo} to {hi}")


def _opt_float(name: str, v: Any) -> None:
    if v is not None and (type(v) is not float or not math.isfinite(v)):
        raise _bad(f"{name} must be a finite float or null")


def _photo(v: Any) -> None:
    _bytes("pf", v)
    if not v.startswith(b"\xff\xd8"):
        raise _bad("pf is not a JPEG image (must start FF D8)")


def _check_incident(gc: Any, pf: Any, sc: Any, lb: Any, at: Any) -> None:
    """The fields C3 and N1 share: where, the photo, the score, the label, when."""
    if not isinstance(gc, Coords):
        raise _bad("gc must be coordinates")
    _photo(pf)
    _float("sc", sc, 0.0, 1.0)
    _text("lb", lb, 1, 32)
    _time("at", at)


@dataclass(frozen=True, slots=True)
class Coords:
    """Where the device is (protocol.md ``coords``)."""

    lat: float
    """Latitude in degrees, -90..90."""
    lon: float
    """Longitude in degrees, -180..180."""
    alt: float | None = None
    """Altitude in metres, or None."""
    acc: float | None = None
    """Horizontal accuracy in metres, or None."""
    src: str = "gps"
    """``"gps"`` for a GNSS fix, ``"fixed"`` for the registered position."""

    def __post_init__(self) -> None:
        _float("gc.lat", self.lat, -90.0, 90.0)
        _float("gc.lon", self.lon, -180.0, 180.0)
        _opt_float("gc.alt", self.alt)
        _opt_float("gc.acc", self.acc)
        if self.acc is not None and self.acc < 0:
            raise _bad("gc.acc must not be negative")
        if self.src not in ("gps", "fixed"):
            raise _bad('gc.src must be "gps" or "fixed"')

    def to_map(self) -> dict[str, Any]:
        return {"lat": self.lat, "lon": self.lon, "alt": self.alt, "acc": self.acc, "src": self.src}

    @classmethod
    def from_map(cls, m: Any) -> Coords:
        if not isinstance(m, dict) or set(m) != {"lat", "lon", "alt", "acc", "src"}:
            raise _bad("gc must be a map of exactly lat, lon, alt, acc, src")
        return cls(lat=m["lat"], lon=m["lon"], alt=m["alt"], acc=m["acc"], src=m["src"])


@dataclass(frozen=True, slots=True)
class Message:
    """Base of the nine message types."""

    TYPE: ClassVar[MessageType]

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_map() if isinstance(v, Coords) else v
        return out

    def to_plaintext(self) -> bytes:
        """Deterministic CBOR (RFC 8949 section 4.2) of the plaintext map."""
        return cbor2.dumps(self.to_map(), canonical=True)

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Message:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in m]
        unknown = [k for k in m if k not in names]
        if missing:
            raise _bad(f"{cls.TYPE.name} plaintext lacks key(s) {', '.join(missing)}")
        if unknown:
            shown = ", ".join(repr(k[:32]) for k in unknown[:5])
            raise _bad(f"{cls.TYPE.name} plaintext has {len(unknown)} unknown key(s): {shown}")
        kwargs = dict(m)
        if "gc" in kwargs:
            kwargs["gc"] = Coords.from_map(kwargs["gc"])
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class B1Announce(Message):
    """S -> D: a monitoring window is open from ``ts`` until ``tx``."""

    TYPE: ClassVar[MessageType] = MessageType.B1
    ts: int
    """T_S, server time in ms."""
    tx: int
    """T_X, end of the monitoring window in ms (== ts ends a window early)."""
    h: bytes
    """SHA-256 of ts as 8-byte big-endian."""
    ep: int
    """Broadcast epoch, strictly increasing per device."""

    def __post_init__(self) -> None:
        _time("ts", self.ts)
        _time("tx", self.tx)
        _bytes("h", self.h, exact=32)
        _uint("ep", self.ep, MAX_EPOCH)


@dataclass(frozen=True, slots=True)
class B2Confirm(Message):
    """D -> S: the device accepted a B1."""

    TYPE: ClassVar[MessageType] = MessageType.B2
    ts: int
    """T_S of the B1 confirmed."""
    ep: int
    """Epoch of the B1 confirmed."""
    h: bytes
    """H(B1)."""

    def __post_init__(self) -> None:
        _time("ts", self.ts)
        _uint("ep", self.ep, MAX_EPOCH)
        _bytes("h", self.h, exact=32)


@dataclass(frozen=True, slots=True)
class C1Hello(Message):
    """D -> S: opens the contact phase."""

    TYPE: ClassVar[MessageType] = MessageType.C1
    td: int
    """T_D, device time in ms."""
    uid: str
    """The device's UID (only ever sent encrypted)."""

    def __post_init__(self) -> None:
        _time("td", self.td)
        _text("uid", self.uid, 1, 64)


@dataclass(frozen=True, slots=True)
class C2Ready(Message):
    """S -> D: go ahead with the report."""

    TYPE: ClassVar[MessageType] = MessageType.C2
    td: int
    """T_D of the C1 answered."""
    tk: bytes
    """Ticket: opaque, lets any replica check that C1/C2 happened."""
    h: bytes
    """H(C1)."""

    def __post_init__(self) -> None:
        _time("td", self.td)
        _bytes("tk", self.tk, most=128)
        _bytes("h", self.h, exact=32)


@dataclass(frozen=True, slots=True)
class C3Report(Message):
    """D -> S: the incident: photo, coordinates, pre-screen score."""

    TYPE: ClassVar[MessageType] = MessageType.C3
    td: int
    """T_D of this contact."""
    uid: str
    """The device's UID."""
    tk: bytes
    """The ticket from C2."""
    cid: bytes
    """16-byte random capture id, fixed across retries (idempotency key)."""
    gc: Coords
    """Where the device is."""
    pf: bytes
    """The photo, a JPEG."""
    sc: float
    """Pre-screen score, 0.0..1.0."""
    lb: str
    """Label: "fall", "fight", "person_down" ..."""
    at: int
    """When the photo was taken, ms."""

    def __post_init__(self) -> None:
        _time("td", self.td)
        _text("uid", self.uid, 1, 64)
        _bytes("tk", self.tk, most=128)
        _bytes("cid", self.cid, exact=16)
        _check_incident(self.gc, self.pf, self.sc, self.lb, self.at)


@dataclass(frozen=True, slots=True)
class C4Receipt(Message):
    """S -> D: the incident is stored; the device may delete it."""

    TYPE: ClassVar[MessageType] = MessageType.C4
    td: int
    """T_D of the C3 acknowledged."""
    inc: str
    """Incident id (the same for the same kid and cid)."""
    h: bytes
    """H(C3)."""

    def __post_init__(self) -> None:
        _time("td", self.td)
        _text("inc", self.inc, 1, 64)
        _bytes("h", self.h, exact=32)


@dataclass(frozen=True, slots=True)
class N1Alert(Message):
    """S -> ENC: a verified dangerous incident."""

    TYPE: ClassVar[MessageType] = MessageType.N1
    ts: int
    """T_S, fresh for every attempt."""
    inc: str
    """Incident id."""
    gc: Coords
    """Where it happened."""
    pf: bytes
    """The photo, a JPEG."""
    sc: float
    """The server's score, 0.0..1.0."""
    lb: str
    """Label."""
    at: int
    """Capture time, ms."""
    dev: str
    """UID of the reporting device."""

    def __post_init__(self) -> None:
        _time("ts", self.ts)
        _text("inc", self.inc, 1, 64)
        _check_incident(self.gc, self.pf, self.sc, self.lb, self.at)
        _text("dev", self.dev, 1, 64)


@dataclass(frozen=True, slots=True)
class N3LinkedReport(Message):
    """S -> ENC: a verified report that the server fused into an alert it sent before
    (``inc``); the ENC shows it with that alert. Answered with an N2 whose ``inc`` is
    ``rep`` and whose ``h`` is H(N3)."""

    TYPE: ClassVar[MessageType] = MessageType.N3
    ts: int
    """T_S, fresh for every attempt."""
    inc: str
    """Incident id of the alert (an N1 sent before) the report joins."""
    rep: str
    """The fused report's own incident id."""
    gc: Coords
    """Where it happened."""
    pf: bytes
    """The report's photo, a JPEG."""
    sc: float
    """The server's score of the report, 0.0..1.0."""
    lb: str
    """The report's label (may differ from the alert's)."""
    at: int
    """Capture time, ms."""
    dev: str
    """UID of the reporting device."""

    def __post_init__(self) -> None:
        _time("ts", self.ts)
        _text("inc", self.inc, 1, 64)
        _text("rep", self.rep, 1, 64)
        if self.rep == self.inc:
            raise _bad("rep must differ from inc (a report does not join itself)")
        _check_incident(self.gc, self.pf, self.sc, self.lb, self.at)
        _text("dev", self.dev, 1, 64)


@dataclass(frozen=True, slots=True)
class N4PoleAddress(Message):
    """S -> ENC: the street address registered for a device (a pole), so the ENC can say
    where an alert is in words. Answered with an N2 whose ``inc`` is ``dev`` and whose
    ``h`` is H(N4)."""

    TYPE: ClassVar[MessageType] = MessageType.N4
    ts: int
    """T_S, fresh for every attempt."""
    dev: str
    """UID of the device, as N1's ``dev``."""
    adr: str
    """Its street address; "" when it has none (any earlier one is withdrawn)."""
    ver: int
    """When the address was set in the server's registry, ms: the ENC keeps the entry
    with the highest ``ver`` for a device (late or repeated N4s change nothing)."""

    def __post_init__(self) -> None:
        _time("ts", self.ts)
        _text("dev", self.dev, 1, 64)
        _text("adr", self.adr, 0, MAX_ADDRESS)
        if self.adr != self.adr.strip():
            raise _bad("adr must not start or end with white space")
        _time("ver", self.ver)


@dataclass(frozen=True, slots=True)
class N2Receipt(Message):
    """ENC -> S: the alert is stored at the ENC."""

    TYPE: ClassVar[MessageType] = MessageType.N2
    tenc: int
    """T_ENC, ENC time in ms."""
    inc: str
    """Incident id of the alert acknowledged."""
    h: bytes
    """H(N1)."""

    def __post_init__(self) -> None:
        _time("tenc", self.tenc)
        _text("inc", self.inc, 1, 64)
        _bytes("h", self.h, exact=32)


@dataclass(frozen=True, slots=True)
class ErrorMessage(Message):
    """S -> D: why a message was refused."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    re: int
    """Type of the message refused."""
    td: int
    """T_D (or T_S) of the message refused."""
    code: int
    """Error code, section 3."""
    now: int
    """Server time in ms, so the device can correct its clock."""

    def __post_init__(self) -> None:
        _uint("re", self.re, MAX_CODE)
        _time("td", self.td)
        _uint("code", self.code, MAX_CODE)
        _time("now", self.now)


MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        B1Announce,
        B2Confirm,
        C1Hello,
        C2Ready,
        C3Report,
        C4Receipt,
        N1Alert,
        N2Receipt,
        ErrorMessage,
        N3LinkedReport,
        N4PoleAddress,
    )
}


def decode_plaintext(mtype: int, plaintext: bytes) -> Message:
    """Parse a decrypted plaintext of type ``mtype`` strictly."""
    cls = MESSAGE_CLASSES.get(mtype)
    if cls is None:
        raise _bad("unknown message type")
    try:
        m = loads_exact(plaintext)
    except Exception as exc:
        raise _bad(f"plaintext is not valid CBOR: {exc}") from None
    if not isinstance(m, dict) or not all(isinstance(k, str) for k in m):
        raise _bad("plaintext is not a map with text keys")
    try:
        return cls.from_map(m)
    except InvalidPlaintext as exc:
        exc.fields = m
        raise
