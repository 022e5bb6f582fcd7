"""The same two attacks against the paper's literal protocol and against version 1:
they succeed on the literal form and fail on version 1."""

from __future__ import annotations

import os

import pytest

import protocol as p
from tests.support.world import World

from .literal import LiteralDevice, LiteralEnc, LiteralNotifier, LiteralServer

NOW = 1_764_000_000_000


def reflect_c2_as_c4_literal() -> tuple[bool, int]:
    """Returns (device believes its photo was delivered, incidents the server has)."""
    key = os.urandom(32)
    dev, srv = LiteralDevice(key, "pole-1"), LiteralServer(key)
    c1 = dev.start(NOW)
    c2 = srv.receive(c1)
    assert c2 is not None
    c3 = dev.receive(c2)
    assert c3 is not None  # the attacker drops C3 ...
    dev.receive(c2)  # ... and plays C2 back in place of C4
    return dev.delivered, len(srv.incidents)


def reflect_c2_as_c4_v1() -> tuple[bool, int]:
    w = World()
    d = w.add_device("pole-1")
    d.conn.start_report(w.report(), w.now)
    w.to_server(d.conn.data_to_send()[0])
    [c2] = w.server_out()
    w.to_device(d, c2)
    d.conn.data_to_send()  # C3 dropped
    events = w.to_device(d, c2)
    delivered = any(isinstance(e, p.ReportDelivered) for e in events)
    return delivered, 0


def unbound_receipt_literal() -> tuple[bool, list[str]]:
    """Returns (alert B counted as delivered, what the ENC actually received)."""
    key = os.urandom(32)
    notifier, enc = LiteralNotifier(key), LiteralEnc(key)
    n2_a = enc.receive(notifier.send("A", NOW), NOW)
    assert n2_a is not None
    notifier.receive(n2_a, NOW)
    notifier.send("B", NOW + 1_000)  # the attacker drops N1 for B ...
    notifier.receive(n2_a, NOW + 2_000)  # ... and replays A's N2
    return "B" in notifier.confirmed, [a.hex()[:8] for a in enc.alerts]


def unbound_receipt_v1() -> tuple[bool, list[str]]:
    w = World()
    d = w.add_device("pole-1")
    w.contact(d)
    kw = dict(
        coords=p.Coords(lat=52.0, lon=21.0),
        photo=w.report().photo,
        score=0.9,
        label="fall",
        captured_at=w.now,
        device_uid="pole-1",
    )
    n1_a = w.notifier.alert(incident_id="A", **kw, now=w.now)
    [alert_a] = w.enc.receive(n1_a, w.now)
    n2_a = w.enc.receipt(alert_a, w.now)  # type: ignore[arg-type]
    w.notifier.receive(n2_a, w.now)
    w.advance(1_000)
    w.notifier.alert(incident_id="B", **kw, now=w.now)  # dropped
    w.advance(1_000)
    events = w.notifier.receive(n2_a, w.now)
    return any(isinstance(e, p.AlertConfirmed) and e.incident_id == "B" for e in events), ["A"]


@pytest.mark.parametrize(("impl", "succeeds"), [("literal", True), ("v1", False)])
def test_reflection_of_c2_in_place_of_c4(impl: str, succeeds: bool) -> None:
    attack = reflect_c2_as_c4_literal if impl == "literal" else reflect_c2_as_c4_v1
    device_believes_delivered, incidents_at_server = attack()
    assert device_believes_delivered is succeeds
    assert incidents_at_server == 0  # the photo never reached the server either way


@pytest.mark.parametrize(("impl", "succeeds"), [("literal", True), ("v1", False)])
def test_unbound_enc_receipt_confirms_a_dropped_alert(impl: str, succeeds: bool) -> None:
    attack = unbound_receipt_literal if impl == "literal" else unbound_receipt_v1
    b_confirmed, alerts_at_enc = attack()
    assert b_confirmed is succeeds
    assert len(alerts_at_enc) == 1  # only A ever reached the ENC
