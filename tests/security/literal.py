"""A model of the paper's literal protocol (protocol.md section 1), for comparison.

Terms are encrypted under the shared key exactly as the Alice-Bob table says, with no
message type, no direction and no hash of what is acknowledged. (AES-GCM is used, so
this model is even stronger than the literal form against bit flips.) It exists only
to show, with the same attacks as the version-1 suite, which attacks version 1 stops.
"""

from __future__ import annotations

import os

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

WINDOW_MS = 30_000


def enc(key: bytes, *terms: object) -> bytes:
    iv = os.urandom(12)
    return iv + AESGCM(key).encrypt(iv, cbor2.dumps(list(terms)), None)


def dec(key: bytes, data: bytes) -> list[object] | None:
    try:
        return list(cbor2.loads(AESGCM(key).decrypt(data[:12], data[12:], None)))
    except Exception:
        return None


class LiteralDevice:
    """C1 {T_D, UID}K, waits for {T_D}K (C2), sends C3, waits for {T_D}K (C4)."""

    def __init__(self, key: bytes, uid: str) -> None:
        self.key, self.uid = key, uid
        self.state = "idle"
        self.td = 0
        self.delivered = False

    def start(self, now: int) -> bytes:
        self.td, self.state = now, "await_c2"
        return enc(self.key, self.td, self.uid)

    def receive(self, data: bytes) -> bytes | None:
        terms = dec(self.key, data)
        if terms != [self.td]:
            return None
        if self.state == "await_c2":
            self.state = "await_c4"
            return enc(
                self.key,
                self.td,
                self.uid,
                enc(self.key, [52.0, 21.0]),
                enc(self.key, b"\xff\xd8photo"),
            )
        if self.state == "await_c4":
            self.state, self.delivered = "idle", True
        return None


class LiteralServer:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.incidents: list[int] = []

    def receive(self, data: bytes) -> bytes | None:
        terms = dec(self.key, data)
        if terms is None:
            return None
        if len(terms) == 2:  # C1
            return enc(self.key, terms[0])
        if len(terms) == 4:  # C3
            self.incidents.append(int(terms[0]))  # type: ignore[call-overload]
            return enc(self.key, terms[0])
        return None


class LiteralNotifier:
    """N1 {T_S . {GC}K . {PF}K}K out; any fresh {T_ENC}K confirms the alert in flight."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.in_flight: str | None = None
        self.confirmed: list[str] = []

    def send(self, alert: str, now: int) -> bytes:
        self.in_flight = alert
        photo = b"\xff\xd8" + alert.encode()
        return enc(self.key, now, enc(self.key, [52.0, 21.0]), enc(self.key, photo))

    def receive(self, data: bytes, now: int) -> None:
        terms = dec(self.key, data)
        fresh = terms and len(terms) == 1 and abs(int(terms[0]) - now) <= WINDOW_MS  # type: ignore
        if fresh and self.in_flight is not None:
            self.confirmed.append(self.in_flight)
            self.in_flight = None


class LiteralEnc:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.alerts: list[bytes] = []

    def receive(self, data: bytes, now: int) -> bytes | None:
        terms = dec(self.key, data)
        if terms is None or len(terms) != 3:
            return None
        self.alerts.append(data)
        return enc(self.key, now)
