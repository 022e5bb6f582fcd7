"""The city tier end to end: two real server processes on one PostgreSQL consume a real
three-node NATS cluster (JetStream), poles speak MQTT to the cluster's MQTT gateway, and
one node is SIGKILLed while reports are in flight: every report a pole got its C4 for
reaches the ENC exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

import protocol as p
from citywatch._footage import fall_photo
from citywatch._simdevice import SimulatedDevice
from tests.integration.server_harness import EncStub, ServerProcess, make_server, wait_until
from tests.support.nats import NatsCluster
from tests.support.services import Postgres, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")
FOREVER = {"until": "2099-01-01T00:00:00Z"}


def _on_node(bundle: p.ProvisioningBundle, port: int) -> p.ProvisioningBundle:
    assert bundle.server is not None
    return dataclasses.replace(bundle, server=dataclasses.replace(bundle.server, port=port))


def test_replicas_on_a_nats_cluster_alert_once_with_a_node_killed_under_load(
    tmp_path: Path, nats_cluster: NatsCluster, postgres: Postgres
) -> None:
    db = postgres.create_database(f"server_{uuid.uuid4().hex[:12]}")
    enc_port = free_port()
    gateway = SimpleNamespace(port=nats_cluster.nodes[0].mqtt_port)
    first = make_server(
        tmp_path,
        gateway,
        enc_url=f"http://127.0.0.1:{enc_port}",  # type: ignore[arg-type]
        db_url=db,
        verification={"fuse_within_m": 0},
        broker_extra={"transport": "nats", "nats_servers": nats_cluster.urls, "nats_replicas": 3},
    )
    second = first.variant("second")
    enc = EncStub(server_kid=first.server_kid, key=first.enc_key, port=enc_port).start()
    # Poles on the two nodes that stay up; the servers use the whole cluster.
    ports = [nats_cluster.nodes[0].mqtt_port, nats_cluster.nodes[2].mqtt_port]
    bundles = [_on_node(first.add_device(f"pole-{i}", "z"), ports[i % 2]) for i in range(6)]
    a = ServerProcess(first, "a").start()
    b = ServerProcess(second, "b").start()
    try:
        a.api("POST", "/v1/windows/z/open", json=FOREVER)

        async def run_devices() -> list[str]:
            # Around the kill a surviving node's gateway may drop its clients too: they
            # connect again, as a pole's link does.
            devices = [SimulatedDevice(x, reconnect=True) for x in bundles]
            for d in devices:
                await d.start()
            try:
                for d in devices:
                    await d.wait_for_window(timeout=30)

                async def reports(d: SimulatedDevice, n: int) -> list[str]:
                    # Generous: around the kill the gateway may drop what it acknowledged
                    # (docs/city.md) and the pole then retries with back-off; on a loaded
                    # machine the leaders' election takes its time too.
                    return [
                        (await d.report(fall_photo(), HERE, 0.9, "fall", timeout=240)).incident_id
                        for _ in range(n)
                    ]

                before = await asyncio.gather(*(reports(d, 1) for d in devices))
                during = asyncio.gather(*(reports(d, 4) for d in devices))
                await asyncio.sleep(1.0)
                nats_cluster.nodes[1].kill()
                got = [*before, *await during]
                return [i for ids in got for i in ids]
            finally:
                for d in devices:
                    await d.stop()

        ids = asyncio.run(run_devices())
        assert len(ids) == 30 and len(set(ids)) == 30, ids
        wait_until(
            lambda: set(enc.stored) >= set(ids),
            timeout=90,
            what="every acknowledged report at the ENC",
        )
        assert set(enc.stored) == set(ids)
        assert all(n == 1 for n in enc.stored.values()), enc.stored
        handled = [s.metric("citywatch_server_messages_total", outcome="accepted") for s in (a, b)]
        assert all(h > 0 for h in handled), handled  # the replicas shared the work queue
    finally:
        a.stop()
        b.stop()
        enc.stop()
