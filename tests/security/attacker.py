"""The attacker's tools: craft, replay, reflect and tamper with messages on a wire
they fully control. They use only what an attacker could have: captured messages,
and (for the insider cases) one device's own key."""

from __future__ import annotations

import os
from typing import Any

import cbor2

import protocol as p
from protocol._crypto import seal_message
from tests.support.world import Device, World


def craft(
    key: bytes,
    kid: bytes,
    mtype: int,
    plaintext: dict[str, Any] | bytes,
    *,
    alg_key: bytes | None = None,
) -> bytes:
    """Seal an arbitrary plaintext (not validated) under ``key`` as type ``mtype``."""
    body = plaintext if isinstance(plaintext, bytes) else cbor2.dumps(plaintext, canonical=True)
    return seal_message(
        cipher=p.AesGcmCipher(alg_key or key),
        kid=kid,
        type=mtype,
        plaintext=body,
        iv=os.urandom(12),
    )


def honest_run(w: World, d: Device) -> dict[str, bytes]:
    """Capture one message of every type from an honest run of all three phases."""
    wire: dict[str, bytes] = {}
    wire["B1"] = w.announce(d)
    w.to_device(d, wire["B1"])
    [wire["B2"]] = d.conn.data_to_send()
    w.to_server(wire["B2"])
    events, contact = w.contact(d)
    assert any(isinstance(e, p.ReportDelivered) for e in events)
    wire.update(contact)
    w.advance(1)
    # an error message: the pole restarts with its clock five minutes slow
    d.conn = p.DeviceConnection(
        kid=d.kid,
        uid=d.uid,
        cipher=p.AesGcmCipher(d.key),
        random=w.rand,
        timing=w.timing,
        last_epoch=d.conn.last_epoch,
        clock_offset_ms=-10 * w.timing.window_ms,
    )
    d.conn.start_report(w.report(), w.now)
    w.to_server(d.conn.data_to_send()[0])
    [wire["ERROR"]] = w.server_out()
    w.to_device(d, wire["ERROR"])  # device corrects its clock, retries
    w.now = d.conn.next_timeout() or w.now
    d.conn.on_timeout(w.now)
    _finish_contact(w, d)
    inc = _incident(w, d)
    _, notes = w.notify(inc)
    wire.update(notes)
    return wire


def _finish_contact(w: World, d: Device) -> None:
    [c1] = d.conn.data_to_send()
    w.to_server(c1)
    w.to_device(d, w.server_out()[0])
    [c3] = d.conn.data_to_send()
    [inc] = [e for e in w.to_server(c3) if isinstance(e, p.IncidentReported)]
    w.to_device(d, w.server.receipt(inc, w.now))
    assert d.conn.state is p.ContactState.IDLE


def _incident(w: World, d: Device) -> p.IncidentReported:
    d.conn.start_report(w.report(), w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    [inc] = [e for e in w.to_server(d.conn.data_to_send()[0]) if isinstance(e, p.IncidentReported)]
    w.to_device(d, w.server.receipt(inc, w.now))
    return inc


def still_works(w: World, d: Device) -> None:
    """After an attack, every role carries on: a fresh window, contact and alert succeed."""
    assert d.conn.state in (
        p.ContactState.IDLE,
        p.ContactState.BACKOFF,
        p.ContactState.AWAIT_C2,
        p.ContactState.AWAIT_C4,
    )
    if d.conn.state is not p.ContactState.IDLE:
        d.conn = p.DeviceConnection(
            kid=d.kid,
            uid=d.uid,
            cipher=p.AesGcmCipher(d.key),
            random=w.rand,
            timing=w.timing,
            last_epoch=d.conn.last_epoch,
            clock_offset_ms=d.conn.clock_offset_ms,
        )
    w.server.data_to_send()
    d.conn.data_to_send()
    w.advance(1)
    b1 = w.announce(d)
    assert any(isinstance(e, p.WindowAnnounced) for e in w.to_device(d, b1))
    [b2] = d.conn.data_to_send()
    assert any(isinstance(e, p.BroadcastConfirmed) for e in w.to_server(b2))
    events, _ = w.contact(d)
    assert any(isinstance(e, p.ReportDelivered) for e in events)
    inc = _incident(w, d)
    confirmed, _ = w.notify(inc)
    assert any(isinstance(e, p.AlertConfirmed) for e in confirmed)


def deliver(w: World, d: Device, role: str, data: bytes) -> list[p.Event]:
    """Hand ``data`` to a role: "device", "server", "notifier" (server's N side), "enc"."""
    if role == "device":
        return d.conn.receive(data, w.now)
    if role == "server":
        return w.server.receive(data, w.now)
    if role == "notifier":
        return w.notifier.receive(data, w.now)
    assert role == "enc"
    return w.enc.receive(data, w.now)


# Who receives each type honestly, and who sent it.
RECEIVER = {
    "B1": "device",
    "B2": "server",
    "C1": "server",
    "C2": "device",
    "C3": "server",
    "C4": "device",
    "N1": "enc",
    "N2": "notifier",
    "ERROR": "device",
}
SENDER = {
    "B1": "server",
    "B2": "device",
    "C1": "device",
    "C2": "server",
    "C3": "device",
    "C4": "server",
    "N1": "notifier",
    "N2": "enc",
    "ERROR": "server",
}
