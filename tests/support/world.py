"""In-memory protocol world for tests: a fake clock, seeded randomness, a device
directory, and helpers that drive device, server and ENC objects against each other."""

from __future__ import annotations

import io
import os
import random as _random
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw

import protocol as p

T0 = 1_764_000_000_000  # a fixed "now" in ms


def incident_report(
    kid: bytes,
    uid: str,
    *,
    lat: float = 52.2,
    lon: float = 21.0,
    at: int = T0,
    cid: bytes | None = None,
    photo: bytes | None = None,
) -> p.IncidentReported:
    """A device's report as the server's core hands it to the store: T_D ``at``, the
    photo taken 100 ms before, a fresh cid unless given."""
    cid = cid or os.urandom(16)
    return p.IncidentReported(
        kid=kid,
        uid=uid,
        td=at,
        cid=cid,
        incident_id=p.incident_id_for(kid, cid),
        coords=p.Coords(lat=lat, lon=lon, alt=None, acc=4.0),
        photo=jpeg() if photo is None else photo,
        score=0.9,
        label="person_down",
        captured_at=at - 100,
        c3_hash=b"h" * 32,
    )


def jpeg(size: tuple[int, int] = (64, 48), quality: int = 80, *, noisy: bool = False) -> bytes:
    """A real (synthetic) JPEG: a street-ish scene with a figure lying down. ``noisy``
    fills it with seeded noise so that it compresses badly (for size limits)."""
    if noisy:
        noise = _random.Random(size[0] * 7919 + size[1]).randbytes(size[0] * size[1] * 3)
        img = Image.frombytes("RGB", size, noise)
    else:
        img = Image.new("RGB", size, (90, 110, 130))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle([0, h * 2 // 3, w, h], fill=(60, 60, 60))
    d.ellipse([w // 4, h * 3 // 4 - 4, w * 3 // 4, h * 3 // 4 + 4], fill=(200, 50, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def add_still_camera(config: Path) -> None:
    """Append a scene-player camera showing an empty street to a device config (the
    daemon refuses to run without a camera)."""
    still = config.parent / "street.jpg"
    still.write_bytes(jpeg((160, 120)))
    with config.open("a") as f:
        f.write(
            f'\n[camera]\ndriver = "scene"\nfps = 5.0\n\n[[camera.timeline]]\n'
            f'at = 0.0\nplay = "{still}"\n'
        )


class Rand:
    """Seeded randomness with the ``random(n) -> bytes`` shape the core wants."""

    def __init__(self, seed: int = 1) -> None:
        self._r = _random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self._r.randbytes(n)


@dataclass
class Directory:
    """A device directory held in memory (what the server's registry provides)."""

    records: dict[bytes, p.DeviceRecord] = field(default_factory=dict)
    windows: dict[bytes, int] = field(default_factory=dict)  # kid -> window end (ms)

    def lookup(self, kid: bytes) -> p.DeviceRecord | None:
        return self.records.get(kid)

    def monitoring_active(self, kid: bytes, now: int) -> bool:
        return now < self.windows.get(kid, 0)

    def set(self, kid: bytes, **changes: object) -> None:
        self.records[kid] = replace(self.records[kid], **changes)  # type: ignore[arg-type]


@dataclass
class Device:
    kid: bytes
    uid: str
    key: bytes
    conn: p.DeviceConnection


class World:
    """One server, one ENC, any number of devices, a fake clock, and a wire the test
    (or the attacker) controls."""

    def __init__(
        self,
        *,
        seed: int = 1,
        timing: p.Timing | None = None,
        limits: p.Limits | None = None,
        rate_limit: p.RateLimit | None = None,
    ) -> None:
        self.now = T0
        self.rand = Rand(seed)
        self.timing = timing or p.Timing()
        self.limits = limits or p.Limits()
        self.directory = Directory()
        self.server = p.ServerEndpoint(
            directory=self.directory,
            ticket_key=self.rand(32),
            random=self.rand,
            timing=self.timing,
            limits=self.limits,
            rate_limit=rate_limit,
        )
        self.server_kid = bytes.fromhex("5e5e5e5e00000001")
        self.enc_key = self.rand(32)
        self.notifier = p.EncNotifier(
            kid=self.server_kid,
            cipher=p.AesGcmCipher(self.enc_key),
            random=self.rand,
            timing=self.timing,
            limits=self.limits,
        )
        self.enc = p.EncEndpoint(
            servers={self.server_kid: p.AesGcmCipher(self.enc_key)},
            random=self.rand,
            timing=self.timing,
            limits=self.limits,
        )
        self.devices: dict[str, Device] = {}
        self.epochs: dict[bytes, int] = {}

    def add_device(self, uid: str, *, key_len: int = 32, window: bool = True) -> Device:
        kid = self.rand(8)
        key = self.rand(key_len)
        self.directory.records[kid] = p.DeviceRecord(kid=kid, uid=uid, cipher=p.AesGcmCipher(key))
        if window:
            self.directory.windows[kid] = self.now + 3_600_000
        conn = p.DeviceConnection(
            kid=kid,
            uid=uid,
            cipher=p.AesGcmCipher(key),
            random=self.rand,
            timing=self.timing,
            limits=self.limits,
        )
        d = self.devices[uid] = Device(kid, uid, key, conn)
        return d

    def advance(self, ms: int) -> None:
        self.now += ms

    def report(self, **overrides: object) -> p.PendingReport:
        fields: dict[str, object] = dict(
            cid=self.rand(16),
            coords=p.Coords(lat=52.2297, lon=21.0122, alt=110.0, acc=3.5),
            photo=jpeg(),
            score=0.91,
            label="person_down",
            captured_at=self.now - 500,
        )
        fields.update(overrides)
        return p.PendingReport(**fields)  # type: ignore[arg-type]

    # -- one hop each: return what the receiver said ----------------------------------

    def to_server(self, data: bytes) -> list[p.Event]:
        return self.server.receive(data, self.now)

    def server_out(self) -> list[bytes]:
        return [o.data for o in self.server.data_to_send()]

    def to_device(self, d: Device, data: bytes) -> list[p.Event]:
        return d.conn.receive(data, self.now)

    def announce(self, d: Device, *, until: int | None = None) -> bytes:
        ep = self.epochs.get(d.kid, 0) + 1
        self.epochs[d.kid] = ep
        tx = self.now + 3_600_000 if until is None else until
        self.directory.windows[d.kid] = tx
        return self.server.announce(d.kid, tx=tx, ep=ep, now=self.now)

    def contact(
        self, d: Device, report: p.PendingReport | None = None
    ) -> tuple[list[p.Event], dict[str, bytes]]:
        """Run C1..C4 honestly; return the device's final events and the wire messages."""
        d.conn.start_report(report or self.report(), self.now)
        [c1] = d.conn.data_to_send()
        assert self.to_server(c1) and True
        [c2] = self.server_out()
        assert self.to_device(d, c2) == []
        [c3] = d.conn.data_to_send()
        [inc] = [e for e in self.to_server(c3) if isinstance(e, p.IncidentReported)]
        c4 = self.server.receipt(inc, self.now)
        events = self.to_device(d, c4)
        return events, {"C1": c1, "C2": c2, "C3": c3, "C4": c4}

    def notify(self, inc: p.IncidentReported) -> tuple[list[p.Event], dict[str, bytes]]:
        n1 = self.notifier.alert(
            incident_id=inc.incident_id,
            coords=inc.coords,
            photo=inc.photo,
            score=0.88,
            label=inc.label,
            captured_at=inc.captured_at,
            device_uid=inc.uid,
            now=self.now,
        )
        [alert] = self.enc.receive(n1, self.now)
        assert isinstance(alert, p.AlertReceived), alert
        n2 = self.enc.receipt(alert, self.now)
        return self.notifier.receive(n2, self.now), {"N1": n1, "N2": n2}
