"""The production broker holds what a slow server has not read yet, a district's worth.

After a broker restart every pole reconnects and says ``online`` within seconds, faster
than the server reads them. Mosquitto's own limit (1000 QoS 1 messages queued per
client above the 20 in flight) dropped the rest: those poles never got a fresh B1 and
did not watch. The role's ``broker_max_queued_messages`` keeps them.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citywatch._services import ServiceUnavailable

from .poles import PREFIX, Pole
from .production_broker import DeviceCa, ProductionBroker, start_production_broker

KID = "0123456789abcdef"
STORM = 3000
"""Three times Mosquitto's own queue limit."""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[DeviceCa, ProductionBroker]]:
    ca = DeviceCa(tmp_path / "ca")
    devices = [{"kid_hex": KID, "uid": "pole-1", "zone": "z", "blocked": False}]
    try:
        b = start_production_broker(tmp_path / "broker", ca, devices)
    except ServiceUnavailable as exc:
        pytest.skip(f"Mosquitto unavailable: {exc}")
    yield ca, b
    b.stop()


def test_a_slow_server_loses_nothing_of_a_reconnect_storm(
    broker: tuple[DeviceCa, ProductionBroker],
) -> None:
    ca, b = broker
    server = Pole(
        b.host, b.port, client_id="citywatch-server", tls=ca.client("srv", "citywatch-server")
    ).start(subscribe_down=False)
    pole = Pole(b.host, b.port, client_id=KID, tls=ca.client("pole", KID)).start(
        subscribe_down=False
    )
    try:
        assert server.subscribe(f"$share/citywatch-server/{PREFIX}/+/status") == [1]
        server.client.loop_stop()  # busy: reads nothing and acknowledges nothing
        sent = [
            pole.client.publish(f"{PREFIX}/{KID}/status", b"%d" % i, qos=1) for i in range(STORM)
        ]
        for info in sent:
            info.wait_for_publish(timeout=30)
        assert all(info.is_published() for info in sent), "the broker did not take them"
        server.client.loop_start()
        got: set[bytes] = set()
        idle = time.monotonic()
        while len(got) < STORM and time.monotonic() - idle < 10:
            try:
                _topic, payload = server.received.get(timeout=0.5)
            except queue.Empty:
                continue
            got.add(payload)
            idle = time.monotonic()
        assert len(got) == STORM, f"{STORM - len(got)} of {STORM} dropped by the broker"
    finally:
        server.stop()
        pole.stop()
