"""The city tier's access control, attacked on a real three-node NATS cluster: every
node runs the nats role's configuration, the authorization generated from the real
server's registry (``citywatch server device list --json``, as tasks/auth.yml reads it),
and a real server replica consumes it with its own identity. The attacker owns a pole:
a valid certificate and key of its own, nothing of the honest pole's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import paho.mqtt.client as mqtt
import pytest

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
from .production_broker import DeviceCa
from .production_nats import ProductionCluster, client_context, start_production_cluster

pytestmark = [pytest.mark.timeout(600)]

FOREVER = {"until": "2099-01-01T00:00:00Z"}


def device_command(setup: ServerSetup, *args: str) -> str:
    """``citywatch server device ARGS`` on the server's registry; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "citywatch.cli", "server", "device", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "CITYWATCH_SERVER_CONFIG": str(setup.config)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def registry(setup: ServerSetup) -> list[dict[str, Any]]:
    """The devices as the role reads them from the server's registry."""
    return list(json.loads(device_command(setup, "list", "--json")))


@dataclass
class City:
    ca: DeviceCa
    cluster: ProductionCluster
    setup: ServerSetup
    server: ServerProcess
    bundles: dict[str, Any]

    def pole(self, uid: str, node: int = 0, **kw: Any) -> Pole:
        """A client with ``uid``'s certificate (CN = its kid) and key, on ``node``."""
        b = self.bundles[uid]
        tls = self.ca.client(f"{uid}-{now_ms()}", b.kid.hex())
        return pole_for(b, "127.0.0.1", self.cluster.nodes[node].mqtt_port, tls=tls, **kw)

    def publish_as_server(self, subject: str, data: bytes) -> None:
        async def go() -> None:
            nc = await nats.connect(
                self.cluster.urls[2],
                tls=client_context(*self.cluster.server_tls),
                allow_reconnect=False,
            )
            try:
                await nc.publish(subject, data)
                await nc.flush()
            finally:
                await nc.close()

        asyncio.run(go())

    def stream_depth(self) -> int:
        """Messages the server's stream still holds (a work queue drops what a replica
        acknowledged: with the acknowledgements refused, this never gets to 0)."""

        async def go() -> int:
            nc = await nats.connect(
                self.cluster.urls[1],
                tls=client_context(*self.cluster.server_tls),
                allow_reconnect=False,
            )
            try:
                info = await nc.jetstream().stream_info("CITYWATCH_UP")
                return int(info.state.messages)
            finally:
                await nc.close()

        return asyncio.run(go())


@pytest.fixture
def city(tmp_path: Path) -> Iterator[City]:
    ca = DeviceCa(tmp_path / "ca")
    enc_port = free_port()
    srv_cert, srv_key = ca.issue("server-client", "citywatch-server")
    setup = make_server(
        tmp_path,
        SimpleNamespace(port=free_port()),  # type: ignore[arg-type]
        enc_url=f"http://127.0.0.1:{enc_port}",
        timing={"rate_limit_burst": 50},
        broker_extra={
            "transport": "nats",
            # Replaced below once the cluster has its ports (it needs the registry first).
            "nats_servers": ["tls://127.0.0.1:1"],
            "nats_replicas": 3,
            "tls": True,
            "ca_file": str(ca.pem),
            "cert_file": str(srv_cert),
            "key_file": str(srv_key),
        },
    )
    bundles = {uid: setup.add_device(uid, "z") for uid in ("pole-honest", "pole-owned", "pole-x")}
    device_command(setup, "block", "pole-x", "--actor", "test")
    devices = registry(setup)
    assert sorted((d["uid"], d["blocked"]) for d in devices) == [
        ("pole-honest", False),
        ("pole-owned", False),
        ("pole-x", True),
    ]
    try:
        cluster = start_production_cluster(tmp_path / "nats", ca, devices)
    except ServiceUnavailable as exc:
        pytest.skip(f"NATS unavailable: {exc}")
    setup.config.write_text(
        setup.config.read_text().replace(
            'nats_servers = ["tls://127.0.0.1:1"]', f"nats_servers = {json.dumps(cluster.urls)}"
        )
    )
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=enc_port).start()
    server = ServerProcess(setup)
    try:
        server.start(timeout=120)  # ready: consuming the stream with its own identity
        yield City(ca, cluster, setup, server, bundles)
    finally:
        server.stop()
        enc.stop()
        cluster.stop()


def _refused(pole: Pole) -> bool:
    try:
        pole.start(timeout=5, subscribe_down=False)
    except TimeoutError:
        return True
    pole.stop()
    return False


def test_owned_pole_can_neither_read_nor_write_another_poles_topics(city: City) -> None:
    c = city
    c.server.api("POST", "/v1/windows/z/open", json=FOREVER)
    honest = c.pole("pole-honest", node=1).start()
    owned = c.pole("pole-owned", node=0).start()
    try:
        assert owned.granted == [1]  # its own downlink, QoS 1
        h = honest.kid.hex()
        for topic in (
            f"{PREFIX}/{h}/down",
            f"{PREFIX}/{h}/up",
            f"{PREFIX}/+/up",
            f"{PREFIX}/+/down",
            f"{PREFIX}/#",
            "#",
            "$MQTT/#",
            "$MQTT/sub/#",
            "$JS/#",
            "$SYS/#",
        ):
            assert owned.subscribe(topic) == [0x80], topic
        before = c.server.metric("citywatch_server_messages_total")
        # Sealed with the owned pole's key but on the honest pole's topics: the cluster
        # drops them, the stream never holds them.
        owned.publish(owned.hello(), honest.up)
        owned.publish(b"offline", f"{PREFIX}/{h}/status")
        owned.publish(b"\x00" * 64, f"{PREFIX}/{h}/down")
        assert owned.contacts(1, timeout=5) == 1  # its own uplink goes through, after those
        assert c.server.metric("citywatch_server_messages_total") == before + 1
        assert not any(t != owned.down for t, _ in list(owned.received.queue))
        assert honest.contacts(5, timeout=5) == 5
        assert honest.disconnects == 0
        # The replica's own rights suffice: it acknowledged everything it took.
        wait_until(lambda: c.stream_depth() == 0, timeout=60, what="every message acknowledged")
    finally:
        honest.stop()
        owned.stop()


def test_unknown_blocked_and_foreign_certificates_are_refused(city: City, tmp_path: Path) -> None:
    c = city
    stranger = DeviceCa(tmp_path / "stranger")
    honest_kid = c.bundles["pole-honest"].kid.hex()
    node = c.cluster.nodes[0]
    attempts = {
        "unknown CN": Pole(
            "127.0.0.1", node.mqtt_port, client_id="ff" * 8, tls=c.ca.client("u", "ff" * 8)
        ),
        "blocked device": c.pole("pole-x"),
        "another CA, honest CN": Pole(
            "127.0.0.1",
            node.mqtt_port,
            client_id=honest_kid,
            tls=(c.ca.pem, *stranger.client("s", honest_kid)[1:]),
        ),
        "the server's identity over MQTT": Pole(
            "127.0.0.1", node.mqtt_port, client_id="srv", tls=c.cluster.server_tls
        ),
    }
    for what, pole in attempts.items():
        assert _refused(pole), what

    async def nats_protocol(cert: tuple[Path, Path, Path]) -> str:
        try:
            nc = await nats.connect(
                c.cluster.urls[0],
                tls=client_context(*cert),
                allow_reconnect=False,
                connect_timeout=3,
            )
        except Exception as exc:  # what the node answered
            return str(exc)
        await nc.close()
        return "connected"

    # A pole's certificate on the replicas' NATS port: there $MQTT.sub.> would be every
    # pole's QoS 1 deliveries, so poles may use MQTT only.
    owned = c.bundles["pole-owned"].kid.hex()
    assert "Authorization Violation" in asyncio.run(nats_protocol(c.ca.client("n", owned)))
    assert "Authorization Violation" in asyncio.run(nats_protocol(c.ca.client("m", "ff" * 8)))
    assert asyncio.run(nats_protocol(c.cluster.server_tls)) == "connected"


def test_a_pole_that_takes_another_poles_client_id_gets_none_of_its_downlink(
    city: City,
) -> None:
    """NATS cannot tie the MQTT client id to the certificate (Mosquitto can): the owned
    pole resumes the honest pole's persistent session and kicks it off. The session's
    subscription is checked again under the intruder's permissions and refused, so what
    the server sends the honest pole never reaches it."""
    c = city
    h = c.bundles["pole-honest"].kid.hex()
    port = c.cluster.nodes[0].mqtt_port

    def session(cn: str, name: str) -> tuple[mqtt.Client, list[tuple[str, bytes]], list[bool]]:
        got: list[tuple[str, bytes]] = []
        present: list[bool] = []
        cl = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=h,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        cl.tls_set_context(client_context(*c.ca.client(name, cn)))
        cl.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload)))
        cl.on_connect = lambda _c, _u, f, rc, _p: present.append(bool(f.session_present))
        cl.connect("127.0.0.1", port)
        cl.loop_start()
        wait_until(lambda: bool(present), timeout=15, what=f"{name} connected")
        return cl, got, present

    honest, _, _ = session(h, "honest")
    honest.subscribe(f"{PREFIX}/{h}/down", qos=1)
    time.sleep(1.0)  # the SUBACK; the session is stored by the cluster
    honest.disconnect()
    honest.loop_stop()
    owned = c.bundles["pole-owned"].kid.hex()
    intruder, got, present = session(owned, "intruder")
    try:
        assert present == [True]  # it did resume the honest pole's session
        c.publish_as_server(f"citywatch.v1.{h}.down", b"for the honest pole only")
        time.sleep(2.0)  # what would arrive, arrives well within this on loopback
        assert got == []
        logs = "".join(n.log.read_text() for n in c.cluster.nodes)
        assert f'User "CN={owned}", Subject "citywatch.v1.{h}.down"' in logs
    finally:
        intruder.disconnect()
        intruder.loop_stop()


def test_a_pole_added_to_the_registry_gets_its_rights_on_reload(city: City) -> None:
    """The authorization is regenerated from the registry and read again on SIGHUP, as
    tasks/auth.yml does after provisioning: no node restarts, the server carries on."""
    c = city
    c.server.api("POST", "/v1/windows/z/open", json=FOREVER)
    honest = c.pole("pole-honest", node=2).start()
    new = c.setup.add_device("pole-new", "z")
    c.bundles["pole-new"] = new
    assert _refused(c.pole("pole-new", node=2))
    c.cluster.write_auth(registry(c.setup))
    c.cluster.reload()
    wait_until(
        lambda: not _refused(c.pole("pole-new", node=2)),
        timeout=30,
        what="the new pole admitted",
    )
    pole = c.pole("pole-new", node=2).start()
    try:
        assert pole.granted == [1]
        assert pole.contacts(2, timeout=5) == 2
        assert honest.contacts(2, timeout=5) == 2
        assert honest.disconnects == 0  # the reload dropped no one
    finally:
        pole.stop()
        honest.stop()
