"""A real pole link on the city tier: the edge's protocol client connected to one node
of a real three-node NATS cluster, with the other two as its ``[broker] alternates``
(as ``edge provision`` writes them from a bundle's ``server.alternates``), and a real
server replica consuming the cluster. The node the pole is on is SIGKILLed with an
incident in flight: the pole moves to another node, and every incident it recorded
reaches the server, and the ENC, exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

import protocol as p
from citywatch._footage import fall_photo
from edge._client import ProtocolClient
from edge._config import BrokerConfig
from edge._outbox import OUTBOX_FILE, Outbox
from edge._state import STATUS_FILE, read_status, wall_ms
from tests.integration.server_harness import EncStub, ServerProcess, make_server, wait_until
from tests.support.nats import NatsCluster
from tests.support.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FOREVER = {"until": "2099-01-01T00:00:00Z"}
# C4 waits long enough for the real server's photo check; a message the dying node took
# and lost is sent again after it (the pole retries until its C4, docs/city.md).
TIMING = p.Timing(
    c2_timeout_ms=5_000, c4_timeout_ms=15_000, backoff_base_ms=200, backoff_max_ms=2_000
)
# Guards against hanging, never performance thresholds: around the kill the cluster
# re-elects its leaders, on a loaded machine that takes its time.
WAIT_S = 240.0


async def until(what: str, pred: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.05)


def test_a_pole_whose_node_is_killed_moves_to_another_and_delivers_once(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    enc_port = free_port()
    first, *others = nats_cluster.nodes
    setup = make_server(
        tmp_path,
        SimpleNamespace(port=first.mqtt_port),  # type: ignore[arg-type]
        enc_url=f"http://127.0.0.1:{enc_port}",
        verification={"fuse_within_m": 0},  # three alerts at one place, none fused
        broker_extra={"transport": "nats", "nats_servers": nats_cluster.urls, "nats_replicas": 3},
    )
    bundle = setup.add_device("pole-1", "z")
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=enc_port).start()
    server = ServerProcess(setup).start(timeout=120)
    events: list[p.Event] = []
    state = tmp_path / "pole"
    cipher = p.AesGcmCipher(bundle.key)
    client = ProtocolClient(
        uid=bundle.uid,
        kid=bundle.kid,
        cipher=cipher,
        broker=BrokerConfig(
            host="127.0.0.1",
            port=first.mqtt_port,
            alternates=[f"127.0.0.1:{n.mqtt_port}" for n in others],
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            keepalive_s=5,
        ),
        outbox=Outbox(state / OUTBOX_FILE, cipher=cipher),
        state_dir=state,
        zone="z",
        timing=TIMING,
        status_interval_s=0.5,
        listener=events.append,
    )

    def capture(n: int) -> bytes:
        return client.record_incident(
            photo=fall_photo(),
            coords=p.Coords(lat=52.23, lon=21.01, alt=110.0, acc=4.0),
            score=0.9,
            label="person_down",
            captured_at=wall_ms() - n,
        )

    def on_port() -> tuple[bool, int]:
        b = read_status(state / STATUS_FILE).broker
        return b.connected, b.port

    def delivered() -> list[p.ReportDelivered]:
        return [e for e in events if isinstance(e, p.ReportDelivered)]

    async def scenario() -> list[bytes]:
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            server.api("POST", "/v1/windows/z/open", json=FOREVER)
            await until("B1 through the first node", client.monitoring)
            await until(
                "the status names the first node", lambda: on_port() == (True, first.mqtt_port)
            )
            before = capture(0)
            await until("the first incident delivered", lambda: not client.outbox.cids())
            during = capture(1)
            first.kill()  # with the second incident in flight, or about to be
            await until("the second incident delivered", lambda: not client.outbox.cids())
            await until(
                "the status names another node",
                lambda: on_port() in {(True, n.mqtt_port) for n in others},
            )
            after = capture(2)  # and on the node it moved to
            await until("the third incident delivered", lambda: not client.outbox.cids())
            return [before, during, after]
        finally:
            stop.set()
            await task
            client.outbox.close()

    try:
        cids = asyncio.run(scenario())
        assert sorted(e.cid for e in delivered()) == sorted(cids)
        ids = {e.incident_id for e in delivered()}
        assert len(ids) == 3, delivered()
        wait_until(lambda: set(enc.stored) >= ids, timeout=120, what="every incident at the ENC")
        assert enc.stored == dict.fromkeys(ids, 1)
        # Each decided once by the server, whatever the pole sent again.
        assert server.metric("citywatch_server_incidents_total") == 3
    finally:
        server.stop()
        enc.stop()
