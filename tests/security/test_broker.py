"""The production broker (ansible/roles/broker templates, client certificates from a
test CA) with the real server behind it, attacked by a second pole the attacker owns:
it holds a valid certificate and key of its own, and nothing of the honest pole's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import protocol as p
from citywatch._services import ServiceUnavailable
from tests.integration.server_harness import (
    EncStub,
    ServerProcess,
    ServerSetup,
    make_server,
    wait_until,
)
from tests.support.services import free_port

from .poles import PREFIX, Pole, now_ms, pole_for
from .production_broker import DeviceCa, ProductionBroker, start_production_broker

FOREVER = {"until": "2099-01-01T00:00:00Z"}


@dataclass
class District:
    ca: DeviceCa
    broker: ProductionBroker
    setup: ServerSetup
    server: ServerProcess
    enc: EncStub
    bundles: dict[str, object]

    def pole(self, uid: str, **kw: object) -> Pole:
        """A client with ``uid``'s certificate (CN = its kid) and key."""
        b = self.bundles[uid]
        kid_hex = b.kid.hex()  # type: ignore[attr-defined]
        tls = self.ca.client(f"{uid}-{now_ms()}", kid_hex)
        return pole_for(b, self.broker.host, self.broker.port, tls=tls, **kw)


@pytest.fixture
def district(tmp_path: Path) -> Iterator[District]:
    ca = DeviceCa(tmp_path / "ca")
    port, enc_port = free_port(), free_port()
    srv_cert, srv_key = ca.issue("server-client", "citywatch-server")
    setup = make_server(
        tmp_path,
        SimpleNamespace(port=port),  # type: ignore[arg-type]
        enc_url=f"http://127.0.0.1:{enc_port}",
        timing={"rate_limit_burst": 50},
        broker_extra={
            "tls": True,
            "ca_file": str(ca.pem),
            "cert_file": str(srv_cert),
            "key_file": str(srv_key),
        },
    )
    bundles: dict[str, object] = {
        uid: setup.add_device(uid, "z") for uid in ("pole-honest", "pole-owned", "pole-blocked")
    }
    devices = [
        {
            "kid_hex": b.kid.hex(),
            "uid": uid,
            "zone": "z",  # type: ignore[attr-defined]
            "blocked": uid == "pole-blocked",
        }
        for uid, b in bundles.items()
    ]
    try:
        broker = start_production_broker(tmp_path / "broker", ca, devices, broker_port=port)
    except ServiceUnavailable as exc:
        pytest.skip(f"Mosquitto unavailable: {exc}")
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=enc_port).start()
    server = ServerProcess(setup)
    try:
        server.start(timeout=90)
        yield District(ca, broker, setup, server, enc, bundles)
    finally:
        server.stop()
        enc.stop()
        broker.stop()


def test_owned_pole_cannot_join_the_servers_shared_subscription(district: District) -> None:
    """Before: the pole's SUBACK granted $share/<group>/.../+/up, the broker gave it turns
    of every uplink and dropped them; the honest pole got answers to 2 of 10 C1s."""
    d = district
    d.server.api("POST", "/v1/windows/z/open", json=FOREVER)
    honest = d.pole("pole-honest").start()
    owned = d.pole("pole-owned").start()
    try:
        g = "citywatch-server"
        for topic in (
            f"$share/{g}/{PREFIX}/+/up",
            f"$share/{g}/{PREFIX}/+/status",
            f"$share/{g}/{PREFIX}/{honest.kid.hex()}/up",
            f"{PREFIX}/+/up",
            f"{PREFIX}/{honest.kid.hex()}/down",
            "#",
            "$SYS/#",
        ):
            assert owned.subscribe(topic) == [0x80], topic
        assert honest.contacts(10, timeout=3) == 10
    finally:
        honest.stop()
        owned.stop()


def test_owned_pole_cannot_take_over_another_poles_session(district: District) -> None:
    """Before: a client id equal to the honest pole's kid kicked it off again and again."""
    d = district
    d.server.api("POST", "/v1/windows/z/open", json=FOREVER)
    honest = d.pole("pole-honest").start()
    intruders: list[Pole] = []
    try:
        for _ in range(5):
            intruders.append(
                d.pole("pole-owned", client_id=honest.kid.hex()).start(subscribe_down=False)
            )
        assert honest.contacts(5, timeout=3) == 5
        assert honest.disconnects == 0 and honest.connected.is_set()
    finally:
        for i in intruders:
            i.stop()
        honest.stop()


def test_a_pole_that_comes_online_gets_the_window_it_missed(district: District) -> None:
    """The status topic reaches the server: a pole that was offline when its window
    opened says "online" and gets a fresh B1 (before: the ACL dropped it, and the pole
    stayed unmonitored)."""
    d = district
    d.server.api("POST", "/v1/windows/z/open", json=FOREVER)
    honest = d.pole("pole-honest")
    honest.will = None
    status = f"{PREFIX}/{honest.kid.hex()}/status"
    honest.client.will_set(status, b"offline", qos=1, retain=True)
    honest.start()
    try:
        honest.publish(b"online", status, retain=True)
        b1 = honest.expect(p.B1Announce, timeout=10)
        assert isinstance(b1, p.B1Announce) and abs(b1.ts - now_ms()) < 10_000
    finally:
        honest.stop()


def test_oversized_publish_is_refused_by_the_broker(district: District) -> None:
    """Before: 64 MiB publishes were accepted and passed on to the server. Now the broker
    disconnects the sender of anything larger than the largest C3; nothing reaches the
    server, and honest poles carry on."""
    d = district
    d.server.api("POST", "/v1/windows/z/open", json=FOREVER)
    owned = d.pole("pole-owned").start()
    honest = d.pole("pole-honest").start()
    try:
        owned.client.reconnect_delay_set(5, 10)
        owned.publish(b"\xd0" + bytes(8 * 1024 * 1024))
        wait_until(lambda: owned.disconnects >= 1, timeout=15, what="oversized sender cut off")
        assert honest.contacts(3, timeout=3) == 3
        assert d.server.metric("citywatch_server_rejected_messages_total", reason="too_large") == 0
    finally:
        owned.stop()
        honest.stop()


def test_a_blocked_poles_certificate_gets_no_topic(district: District) -> None:
    """A blocked device's certificate is still valid, but its client has no role: every
    subscription is refused and its publishes never reach the server."""
    d = district
    d.server.api("POST", "/v1/windows/z/open", json=FOREVER)
    blocked = d.pole("pole-blocked")
    blocked.start(subscribe_down=False)
    try:
        assert blocked.subscribe(blocked.down) == [0x80]
        before = d.server.metric("citywatch_server_messages_total")
        blocked.publish(blocked.hello())
        honest = d.pole("pole-honest").start()
        try:
            assert honest.contacts(1, timeout=3) == 1
        finally:
            honest.stop()
        assert d.server.metric("citywatch_server_messages_total") == before + 1
    finally:
        blocked.stop()
