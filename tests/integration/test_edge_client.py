"""The edge protocol client against a real Mosquitto and a minimal trusted server built
from ``protocol.ServerEndpoint``, itself speaking MQTT (no mocks, no in-memory wire)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

import protocol as p
from edge._client import ProtocolClient
from edge._config import BrokerConfig
from edge._outbox import OUTBOX_FILE, Outbox
from edge._state import STATE_FILE, STATUS_FILE, read_status, wall_ms
from edge._status import PoleStatus, store_incident
from hardware import Pkcs11KeyStore, SoftHsmToken
from tests.support.services import Broker, free_port, start_mosquitto
from tests.support.world import Directory, jpeg

PREFIX = "citywatch/v1"
# Short protocol timeouts so that retries happen within a test; the logic is the same.
FAST = p.Timing(c2_timeout_ms=1_500, c4_timeout_ms=1_500, backoff_base_ms=200, backoff_max_ms=2_000)
WAIT_S = 30.0  # a guard against hanging, never a performance threshold


async def until(what: str, pred: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.02)


# -- a minimal trusted server over MQTT ---------------------------------------------------


@dataclass
class MqttServer:
    """``protocol.ServerEndpoint`` on the broker: answers C1/C3, stores incidents by id,
    announces a B1 when a device says "online"."""

    host: str
    port: int
    directory: Directory
    timing: p.Timing = FAST
    reports: list[p.IncidentReported] = field(default_factory=list)
    incidents: dict[str, p.IncidentReported] = field(default_factory=dict)
    b1_sent: list[bytes] = field(default_factory=list)
    epochs: dict[bytes, int] = field(default_factory=dict)
    reflect_c2: int = 0
    """Answer this many C3s with the C2 sent before (the reflection attack) instead of C4."""
    deaf: bool = False
    """Drop every uplink message (a server that is down)."""
    announce_on_online: bool = True
    connected: bool = False

    def __post_init__(self) -> None:
        self.endpoint = p.ServerEndpoint(
            directory=self.directory,
            ticket_key=os.urandom(32),
            random=os.urandom,
            timing=self.timing,
        )
        self._client: aiomqtt.Client | None = None
        self._last_c2: dict[bytes, bytes] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    self.host, self.port, identifier="test-server", clean_session=True
                ) as client:
                    await client.subscribe(f"{PREFIX}/+/up", qos=1)
                    await client.subscribe(f"{PREFIX}/+/status", qos=1)
                    self._client, self.connected = client, True
                    async for msg in client.messages:
                        assert isinstance(msg.payload, bytes)
                        await self._on(str(msg.topic), msg.payload)
            self._client, self.connected = None, False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async def announce(self, kid: bytes, *, until: int | None = None) -> bytes:
        now = wall_ms()
        tx = now + 3_600_000 if until is None else until
        self.directory.windows[kid] = tx
        ep = self.epochs[kid] = self.epochs.get(kid, 0) + 1
        b1 = self.endpoint.announce(kid, tx=tx, ep=ep, now=now)
        self.b1_sent.append(b1)
        await self.send(kid, b1)
        return b1

    async def send(self, kid: bytes, data: bytes) -> None:
        assert self._client is not None, "test server not connected"
        await self._client.publish(f"{PREFIX}/{kid.hex()}/down", data, qos=1)

    async def _on(self, topic: str, payload: bytes) -> None:
        _, _, kid_hex, kind = topic.split("/")
        kid = bytes.fromhex(kid_hex)
        if kind == "status":
            if (
                payload == b"online"
                and self.announce_on_online
                and self.directory.lookup(kid) is not None
            ):
                await self.announce(kid)
            return
        if self.deaf:
            return
        for ev in self.endpoint.receive(payload, wall_ms()):
            if isinstance(ev, p.IncidentReported):
                self.reports.append(ev)
                self.incidents.setdefault(ev.incident_id, ev)
                if self.reflect_c2 > 0:
                    self.reflect_c2 -= 1
                    await self.send(kid, self._last_c2[kid])
                else:
                    await self.send(kid, self.endpoint.receipt(ev, wall_ms()))
        for out in self.endpoint.data_to_send():
            if p.decode_envelope(out.data, max_size=4096).type == p.MessageType.C2:
                self._last_c2[out.kid] = out.data
            await self.send(out.kid, out.data)


# -- a device -----------------------------------------------------------------------------


@dataclass
class Device:
    uid: str
    kid: bytes
    key: bytes
    state_dir: Path
    broker_port: int
    events: list[p.Event] = field(default_factory=list)

    def cipher(self) -> p.Cipher:
        return p.AesGcmCipher(self.key)

    def client(
        self,
        *,
        cipher: p.Cipher | None = None,
        clock: Callable[[], int] = wall_ms,
        **broker_settings: Any,
    ) -> ProtocolClient:
        cipher = cipher or self.cipher()
        outbox = Outbox(self.state_dir / OUTBOX_FILE, cipher=cipher)
        broker = BrokerConfig(
            **{
                "host": "127.0.0.1",
                "port": self.broker_port,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
                "keepalive_s": 5,
            }
            | broker_settings
        )
        return ProtocolClient(
            uid=self.uid,
            kid=self.kid,
            cipher=cipher,
            broker=broker,
            outbox=outbox,
            state_dir=self.state_dir,
            zone="test-zone",
            timing=FAST,
            status_interval_s=0.5,
            clock=clock,
            listener=self.events.append,
        )

    def delivered(self) -> list[p.ReportDelivered]:
        return [e for e in self.events if isinstance(e, p.ReportDelivered)]


def capture(client: ProtocolClient, n: int = 0) -> bytes:
    return client.record_incident(
        photo=jpeg(),
        coords=p.Coords(lat=52.23, lon=21.01, alt=110.0, acc=4.0),
        score=0.9,
        label="person_down",
        captured_at=wall_ms() - n,
    )


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def device(tmp_path: Path, broker: Broker, directory: Directory) -> Device:
    kid, key = os.urandom(8), os.urandom(32)
    directory.records[kid] = p.DeviceRecord(kid=kid, uid="pole-0042", cipher=p.AesGcmCipher(key))
    return Device("pole-0042", kid, key, tmp_path / "state", broker.port)


@pytest.fixture
def server(broker: Broker, directory: Directory) -> MqttServer:
    return MqttServer(broker.host, broker.port, directory)


Scenario = Callable[[asyncio.Event], Awaitable[None]]


def run(server: MqttServer, scenario: Scenario, *clients: ProtocolClient) -> None:
    """Run the server, the clients and the scenario until the scenario returns."""

    async def main() -> None:
        stop, client_stop = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(server.run(stop))]
        tasks += [asyncio.create_task(c.run(client_stop)) for c in clients]
        try:
            await until("the test server connects", lambda: server.connected)
            await scenario(client_stop)
        finally:
            client_stop.set()
            await asyncio.gather(*tasks[1:])
            stop.set()
            tasks[0].cancel()  # it sits in its message loop
            await asyncio.gather(tasks[0], return_exceptions=True)
            for c in clients:
                c.outbox.close()

    asyncio.run(main())


# -- tests --------------------------------------------------------------------------------


def test_report_is_delivered_once_and_deleted_after_c4(
    device: Device, server: MqttServer, broker: Broker
) -> None:
    client = device.client()

    async def scenario(_: asyncio.Event) -> None:
        await until("the device accepts the B1 sent on 'online'", client.monitoring)
        cid = capture(client)
        assert client.outbox.cids() == [cid]  # on disk before any traffic about it
        await until("the outbox is empty", lambda: not client.outbox.cids())
        assert [e.cid for e in device.delivered()] == [cid]
        assert [r.cid for r in server.reports] == [cid]
        assert len(server.incidents) == 1
        [incident_id] = server.incidents
        assert device.delivered()[0].incident_id == incident_id
        await until(
            "the status file shows the delivery",
            lambda: (
                (s := read_status(device.state_dir / STATUS_FILE)).last_delivered is not None
                and s.outbox.depth == 0
            ),
        )
        status = read_status(device.state_dir / STATUS_FILE)
        assert status.last_delivered is not None
        assert status.last_delivered.incident_id == incident_id
        assert status.broker.connected and status.monitoring.active
        assert status.monitoring.epoch == 1

    run(server, scenario, client)
    state = json.loads((device.state_dir / STATE_FILE).read_text())
    assert state["last_epoch"] == 1
    assert state["monitoring_until"] == server.directory.windows[device.kid]
    assert read_presence(broker, device.kid) == b"offline"  # said on a clean stop


def read_presence(broker: Broker, kid: bytes) -> bytes:
    """The retained message on the device's status topic (b"" if there is none)."""

    async def get() -> bytes:
        async with aiomqtt.Client(broker.host, broker.port) as c:
            await c.subscribe(f"{PREFIX}/{kid.hex()}/status", qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    async for msg in c.messages:
                        assert isinstance(msg.payload, bytes)
                        return msg.payload
        return b""

    return asyncio.run(get())


def test_c2_in_place_of_c4_keeps_the_incident_and_retries(
    device: Device, server: MqttServer
) -> None:
    client = device.client()
    server.reflect_c2 = 1

    async def scenario(_: asyncio.Event) -> None:
        await until("B1", client.monitoring)
        cid = capture(client)
        await until("the first C3 reaches the server", lambda: len(server.reports) >= 1)
        await until(
            "the device gives up waiting for C4",
            lambda: any(isinstance(e, p.ContactTimedOut) and e.step == "C4" for e in device.events),
        )
        # The reflected C2 was dropped, not taken for a receipt: the incident is kept.
        assert any(
            isinstance(e, p.MessageDropped) and e.reason == "unexpected" for e in device.events
        )
        assert client.outbox.cids() == [cid]
        await until("the retry is delivered", lambda: not client.outbox.cids())
        assert [r.cid for r in server.reports] == [cid, cid]  # two C3s ...
        assert len(server.incidents) == 1  # ... one incident
        assert [e.cid for e in device.delivered()] == [cid]

    run(server, scenario, client)


def test_broker_killed_and_restarted(
    device: Device, server: MqttServer, broker: Broker, tmp_path: Path
) -> None:
    client = device.client()
    restarted: list[Broker] = []

    async def scenario(_: asyncio.Event) -> None:
        await until("B1", client.monitoring)
        first = capture(client)
        await until("the first incident is delivered", lambda: not client.outbox.cids())
        broker.kill()
        await until("the device sees the broker gone", lambda: not client.connected)
        second = capture(client)  # stored while the broker is down
        assert client.outbox.cids() == [second]
        status = read_status(device.state_dir / STATUS_FILE)
        await until(
            "the status says the broker is unreachable",
            lambda: not read_status(device.state_dir / STATUS_FILE).broker.connected,
        )
        restarted.append(
            await asyncio.to_thread(start_mosquitto, tmp_path / "broker2", port=broker.port)
        )
        await until("the second incident is delivered", lambda: not client.outbox.cids())
        assert [e.cid for e in device.delivered()] == [first, second]
        assert {r.cid for r in server.reports} == {first, second}
        assert len(server.incidents) == 2
        del status

    try:
        run(server, scenario, client)
    finally:
        for b in restarted:
            b.stop()


def test_restart_keeps_epoch_and_pending_incidents(device: Device, server: MqttServer) -> None:
    server.deaf = True  # nothing gets delivered by the first process
    first = device.client()
    cids: list[bytes] = []

    async def before(_: asyncio.Event) -> None:
        await until("B1", first.monitoring)
        cids.extend([capture(first, 2), capture(first, 1)])
        await until(
            "a C1 goes unanswered",
            lambda: any(isinstance(e, p.ContactTimedOut) for e in device.events),
        )

    run(server, before, first)
    old_b1 = server.b1_sent[-1]
    assert json.loads((device.state_dir / STATE_FILE).read_text())["last_epoch"] == 1

    server.deaf = False
    device.events.clear()
    second = device.client()  # a new process: same state directory, new objects
    assert second.outbox.cids() == cids

    async def after(_: asyncio.Event) -> None:
        await until(
            "the fresh B1 (epoch 2)",
            lambda: any(isinstance(e, p.WindowAnnounced) and e.ep == 2 for e in device.events),
        )
        await server.send(device.kid, old_b1)  # a replay of the epoch-1 broadcast
        await until(
            "the replayed B1 is dropped",
            lambda: any(
                isinstance(e, p.MessageDropped) and e.reason == "stale_epoch" for e in device.events
            ),
        )
        await until("both incidents are delivered", lambda: not second.outbox.cids())
        assert [e.cid for e in device.delivered()] == cids  # oldest first

    run(server, after, second)
    assert json.loads((device.state_dir / STATE_FILE).read_text())["last_epoch"] == 2


def test_clock_offset_from_error_5_is_corrected_and_kept(
    device: Device, server: MqttServer
) -> None:
    skew = 120_000  # the device's clock is two minutes slow

    def slow() -> int:
        return wall_ms() - skew

    client = device.client(clock=slow)

    async def scenario(_: asyncio.Event) -> None:
        # Its B1 is "from the future" for the device: dropped. The server still knows the
        # window is open, so the contact goes ahead and error 5 corrects the clock.
        await until(
            "the B1 is dropped as not fresh",
            lambda: any(
                isinstance(e, p.MessageDropped) and e.reason == "timestamp" for e in device.events
            ),
        )
        capture(client)
        await until("delivered after the correction", lambda: not client.outbox.cids())
        refused = [e for e in device.events if isinstance(e, p.ReportRefused)]
        assert [e.code for e in refused] == [5]
        await server.announce(device.kid)
        await until("a new B1 is accepted with the corrected clock", client.monitoring)

    run(server, scenario, client)
    offset = json.loads((device.state_dir / STATE_FILE).read_text())["clock_offset_ms"]
    assert skew - 5_000 < offset < skew + 5_000  # the server's "now" minus the slow clock
    restarted = device.client(clock=slow)
    assert restarted.monitoring()  # offset and window restored from state.json
    restarted.outbox.close()


def test_blocked_device_stops_reports_and_says_why(
    device: Device, server: MqttServer, directory: Directory
) -> None:
    client = device.client()

    async def scenario(_: asyncio.Event) -> None:
        await until("B1", client.monitoring)
        directory.set(device.kid, blocked=True)
        cid = capture(client)
        await until("reports stop", lambda: client.status.snapshot().delivery.state == "stopped")
        status = client.status.snapshot()
        assert "blocked" in (status.delivery.stopped_reason or "")
        assert any("blocked" in problem for problem in status.problems)
        assert "blocked" in client.status_line
        refusals = sum(isinstance(e, p.ReportRefused) for e in device.events)
        await asyncio.sleep(FAST.backoff_max_ms / 1000 / 2)
        # Stopped: no new attempt before the next B1 or backoff_max.
        assert sum(isinstance(e, p.ReportRefused) for e in device.events) == refusals
        assert client.outbox.cids() == [cid]
        directory.set(device.kid, blocked=False)
        await server.announce(device.kid)  # an operator unblocked it
        await until("delivered after the unblock", lambda: not client.outbox.cids())
        assert client.status.snapshot().delivery.state != "stopped"
        assert not client.status.snapshot().problems

    run(server, scenario, client)


def test_softhsm_key_seals_the_outbox_and_the_messages(
    device: Device, server: MqttServer, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    token = softhsm_tokens["citywatch-device"]
    with Pkcs11KeyStore(*token) as store:
        cipher = store.import_key(f"citywatch-{device.kid.hex()}", device.key)
        client = device.client(cipher=cipher)
        photo = jpeg((320, 240), noisy=True)
        cids: list[bytes] = []

        async def scenario(_: asyncio.Event) -> None:
            server.deaf = True
            await until("B1", client.monitoring)
            cids.append(
                client.record_incident(
                    photo=photo,
                    coords=p.Coords(lat=50.06, lon=19.94),
                    score=0.8,
                    label="fall",
                    captured_at=wall_ms(),
                )
            )
            # At rest the photo is sealed: its bytes appear nowhere in the outbox files.
            for f in device.state_dir.glob(f"{OUTBOX_FILE}*"):
                assert photo[100:164] not in f.read_bytes(), f
            server.deaf = False
            await until("delivered", lambda: not client.outbox.cids())

        run(server, scenario, client)
        [incident] = server.incidents.values()
        assert incident.photo == photo and incident.cid == cids[0]
        assert incident.coords.src == "gps"


def test_the_daemons_own_status_board_and_outbox(device: Device, server: MqttServer) -> None:
    """As ``EdgeDaemon`` wires it: the daemon stores the capture itself and owns the
    status board; the client delivers and reports into that board, writing no file."""
    cipher = device.cipher()
    status = PoleStatus.in_state_dir(
        device.state_dir, uid=device.uid, kid_hex=device.kid.hex(), zone="test-zone"
    )
    outbox = Outbox(device.state_dir / OUTBOX_FILE, cipher=cipher)
    broker = BrokerConfig(
        host="127.0.0.1",
        port=device.broker_port,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        keepalive_s=5,
    )
    client = ProtocolClient(
        uid=device.uid,
        kid=device.kid,
        cipher=cipher,
        broker=broker,
        outbox=outbox,
        state_dir=device.state_dir,
        status=status,
        timing=FAST,
        status_interval_s=0.5,
        listener=device.events.append,
    )
    assert client.status is status

    async def scenario(stop: asyncio.Event) -> None:
        await until("B1", client.monitoring)
        await asyncio.sleep(1.0)  # the client's own writer would have written by now
        assert not (device.state_dir / STATUS_FILE).exists()
        writer = asyncio.create_task(status.keep_written(stop, interval_s=0.5))
        cid = store_incident(
            outbox,
            status,
            photo=jpeg(),
            coords=p.Coords(lat=52.2, lon=21.0),
            score=0.9,
            label="fall",
            captured_at=wall_ms(),
        )
        assert status.snapshot().outbox.depth == 1
        client.wake()
        await until("delivered", lambda: not outbox.cids())
        await until(
            "the board's file shows it",
            lambda: (
                (s := read_status(device.state_dir / STATUS_FILE)).last_delivered is not None
                and s.last_delivered.cid == cid.hex()
                and s.outbox.depth == 0
            ),
        )
        s = read_status(device.state_dir / STATUS_FILE)
        assert s.broker.connected and s.monitoring.active and s.delivery.state == "idle"
        stop.set()
        await writer

    run(server, scenario, client)


def test_a_pole_whose_broker_is_down_reaches_the_clusters_other_endpoint(
    device: Device, server: MqttServer
) -> None:
    """The bundle's first endpoint does not answer (a dead node of the cluster); the pole
    tries the next one at once, connects there and delivers."""
    client = device.client(
        port=free_port(),
        alternates=[f"127.0.0.1:{device.broker_port}"],
        reconnect_min_s=5.0,
        reconnect_max_s=5.0,
    )

    async def scenario(_: asyncio.Event) -> None:
        # Well before the 5 s back-off: the alternate was tried at once, not after a wait.
        await until("B1 through the alternate", client.monitoring, timeout=4)
        cid = capture(client)
        await until("delivered", lambda: not client.outbox.cids())
        assert [e.cid for e in device.delivered()] == [cid]
        await until(
            "the status names the alternate",
            lambda: (lambda b: (b.connected, b.port) == (True, device.broker_port))(
                read_status(device.state_dir / STATUS_FILE).broker
            ),
        )

    run(server, scenario, client)
