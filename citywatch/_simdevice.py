"""A simulated street-pole device that speaks the real protocol over MQTT.

It reads a provisioning bundle (``citywatch server device add --bundle-out``), connects
to the broker with client id = kid in hex, publishes ``online`` on its retained status
topic with ``offline`` as its last will (the server's presence signal, docs/server.md),
answers B1 with B2, and delivers reports through C1..C4, retrying as the protocol core's
``next_timeout``/``on_timeout`` say. The key is any ``protocol.Cipher``: the software
``AesGcmCipher`` made from the bundle by default, or a key held in a PKCS#11 token.

``MqttLink`` is one MQTT connection; by default each device has its own, but many
devices may share one (benchmarks: thousands of devices without thousands of sockets;
a shared link has no per-device last will).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Callable

import aiomqtt

from edge._link import subscribe_checked
from protocol import (
    AesGcmCipher,
    Cipher,
    ClockCorrected,
    ContactTimedOut,
    Coords,
    DeviceConnection,
    Event,
    PendingReport,
    ProvisioningBundle,
    ReportDelivered,
    ReportRefused,
    Timing,
    WindowAnnounced,
    decode_envelope,
    wall_clock_ms,
)

__all__ = ["MqttLink", "ProvisioningBundle", "SimulatedDevice", "wall_clock_ms"]

log = logging.getLogger("citywatch.simdevice")

CONNECT_TIMEOUT_S = 30.0
"""How long one attempt to connect again (CONNECT and the subscriptions) may take."""


class MqttLink:
    """One MQTT connection that carries the traffic of one or more devices."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        topic_prefix: str,
        tls: bool = False,
        ca_pem: str | None = None,
        will: aiomqtt.Will | None = None,
        tcp_nodelay: bool = True,
        shared: bool = False,
        reconnect: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.reconnect = reconnect
        """Connect again (and subscribe again) when the broker drops the connection."""
        self._stopping = False
        self.client_id = client_id
        self.prefix = topic_prefix
        self.tls, self.ca_pem = tls, ca_pem
        self.will = will
        self.tcp_nodelay = tcp_nodelay
        self.shared = shared
        self._devices: dict[bytes, SimulatedDevice] = {}
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context()
        if self.ca_pem:
            ctx.load_verify_locations(cadata=self.ca_pem)
        return ctx

    async def start(self) -> None:
        self._stopping = False
        await self._connect()
        self._reader = asyncio.create_task(self._read())

    async def _connect(self) -> None:
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if self.tcp_nodelay else []
        self._client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            will=self.will,
            tls_context=self._tls_context(),
            socket_options=options,
            keepalive=30,
            max_inflight_messages=1000,
            clean_session=True,
        )
        await self._client.__aenter__()
        if self.shared:
            await subscribe_checked(self._client, f"{self.prefix}/+/down")
        else:
            for kid in self._devices:  # after a reconnect: a clean session forgot them
                await subscribe_checked(self._client, f"{self.prefix}/{kid.hex()}/down")

    async def stop(self) -> None:
        self._stopping = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
            self._client = None

    async def abort(self) -> None:
        """Drop the connection without a DISCONNECT, as a crash would (the broker then
        publishes the last will)."""
        self._stopping = True
        if self._client is not None:
            sock = self._client._client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        await self.stop()

    async def attach(self, device: SimulatedDevice) -> None:
        self._devices[device.kid] = device
        if not self.shared:
            assert self._client is not None
            await subscribe_checked(self._client, f"{self.prefix}/{device.kid.hex()}/down")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._client is not None, "link not started"
        await self._client.publish(topic, payload, qos=1, retain=retain, timeout=30)

    async def _read(self) -> None:
        while True:
            assert self._client is not None
            try:
                async for msg in self._client.messages:
                    parts = str(msg.topic).split("/")
                    try:
                        kid = bytes.fromhex(parts[-2])
                    except (ValueError, IndexError):
                        continue
                    device = self._devices.get(kid)
                    if device is not None and isinstance(msg.payload, bytes | bytearray):
                        device._on_downlink(bytes(msg.payload))
                return
            except aiomqtt.MqttError as exc:
                log.warning("link %s lost: %s", self.client_id, exc)
            if not self.reconnect or self._stopping:
                return
            await self._connect_again()

    async def _connect_again(self) -> None:
        # What a real pole does (edge._link): back off and connect again; the protocol
        # core's own timeouts resend what was lost meanwhile.
        delay = 0.5
        while not self._stopping:
            await asyncio.sleep(delay)
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.__aexit__(None, None, None)
            try:
                # Bounded: an attempt that hangs (a CONNACK or SUBACK that never comes
                # from a gateway whose cluster is re-electing) is given up and made again,
                # not waited for while every publish times out on a dead client.
                await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT_S)
                log.info("link %s connected again", self.client_id)
                return
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.warning(
                    "link %s: connecting again failed: %s", self.client_id, str(exc) or "timed out"
                )
                delay = min(delay * 2, 5.0)


class SimulatedDevice:
    """One device. Use as ``async with SimulatedDevice(bundle) as dev: ...``."""

    def __init__(
        self,
        bundle: ProvisioningBundle,
        *,
        cipher: Cipher | None = None,
        link: MqttLink | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        timing: Timing | None = None,
        last_epoch: int = 0,
        tcp_nodelay: bool = True,
        reconnect: bool = False,
    ) -> None:
        self.bundle = bundle
        self.uid = bundle.uid
        self.kid = bundle.kid
        self._clock = clock
        self.conn = DeviceConnection(
            kid=bundle.kid,
            uid=bundle.uid,
            cipher=cipher or AesGcmCipher(bundle.key),
            random=secrets.token_bytes,
            timing=timing,
            last_epoch=last_epoch,
        )
        if bundle.server is None:
            raise ValueError(f"the bundle of {bundle.uid} names no broker (no 'server' part)")
        broker = bundle.server
        p = broker.topic_prefix
        self.up_topic = f"{p}/{bundle.kid.hex()}/up"
        self.status_topic = f"{p}/{bundle.kid.hex()}/status"
        self._own_link = link is None
        self.link = link or MqttLink(
            host=broker.host,
            port=broker.port,
            client_id=bundle.kid.hex(),
            topic_prefix=p,
            tls=broker.tls,
            ca_pem=broker.ca_pem,
            tcp_nodelay=tcp_nodelay,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            reconnect=reconnect,
        )
        self.events: list[Event] = []
        """Everything the protocol core reported, oldest first."""
        self.downlinks: list[bytes] = []
        """Every message received from the server, as received."""
        self.uplinks: list[bytes] = []
        """Every protocol message this device sent, as sent."""
        self.uplink_log: list[tuple[int, int]] = []
        """(clock ms, message type) of every uplink, for timing the phases."""
        self.window = asyncio.Event()
        """Set while a monitoring window announced by the server is open."""
        self._changed = asyncio.Event()
        self._contact = asyncio.Lock()
        self._send_tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SimulatedDevice:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._own_link:
            await self.link.start()
        await self.link.attach(self)
        await self.link.publish(self.status_topic, b"online", retain=True)

    async def stop(self) -> None:
        for t in list(self._send_tasks):
            with contextlib.suppress(Exception):
                await t
        if self._own_link:
            with contextlib.suppress(Exception):
                await self.link.publish(self.status_topic, b"offline", retain=True)
            await self.link.stop()

    async def crash(self) -> None:
        """Vanish without a goodbye (the broker publishes the last will)."""
        await self.link.abort()

    # -- protocol plumbing --------------------------------------------------------------

    def _on_downlink(self, data: bytes) -> None:
        self.downlinks.append(data)
        events = self.conn.receive(data, self._clock())
        self._flush()
        for ev in events:
            if isinstance(ev, WindowAnnounced):
                if ev.tx > ev.ts:
                    self.window.set()
                else:
                    self.window.clear()
        self.events.extend(events)
        self._changed.set()

    def _flush(self) -> None:
        for data in self.conn.data_to_send():
            self.uplinks.append(data)
            self.uplink_log.append((self._clock(), decode_envelope(data, max_size=len(data)).type))
            task = asyncio.create_task(self.link.publish(self.up_topic, data))
            self._send_tasks.add(task)
            task.add_done_callback(self._send_tasks.discard)

    async def send_raw(self, data: bytes, *, topic: str | None = None) -> None:
        """Publish bytes as they are (attack and error tests)."""
        await self.link.publish(topic or self.up_topic, data)

    async def wait_for(
        self, predicate: Callable[[Event], bool], *, timeout: float, start: int = 0
    ) -> Event:
        """The first event from index ``start`` on that matches, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events[start:]:
                if predicate(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"device {self.uid}: no matching event in {timeout} s; "
                    f"events: {self.events[start:]}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=left)

    async def wait_for_window(self, *, timeout: float) -> WindowAnnounced:
        ev = await self.wait_for(lambda e: isinstance(e, WindowAnnounced), timeout=timeout, start=0)
        assert isinstance(ev, WindowAnnounced)
        await asyncio.wait_for(self.window.wait(), timeout=timeout)
        return ev

    async def report(
        self,
        photo: bytes,
        coords: Coords,
        score: float,
        label: str,
        *,
        captured_at: int | None = None,
        cid: bytes | None = None,
        timeout: float = 60.0,
    ) -> ReportDelivered:
        """Deliver one incident; retries (new T_D, same cid) until a matching C4 arrives
        or ``timeout`` seconds pass (then ``TimeoutError``; a real device keeps it)."""
        report = PendingReport(
            cid=cid or secrets.token_bytes(16),
            coords=coords,
            photo=photo,
            score=score,
            label=label,
            captured_at=self._clock() if captured_at is None else captured_at,
        )
        async with self._contact:
            deadline = time.monotonic() + timeout
            start = len(self.events)
            self.conn.start_report(report, self._clock())
            self._flush()
            while True:
                for ev in self.events[start:]:
                    if isinstance(ev, ReportDelivered) and ev.cid == report.cid:
                        return ev
                start = len(self.events)
                now = self._clock()
                due = self.conn.next_timeout()
                if due is not None and due <= now:
                    self.events.extend(self.conn.on_timeout(now))
                    self._flush()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"device {self.uid}: report {report.cid.hex()} not "
                        f"delivered in {timeout} s; last events: "
                        f"{self.events[-5:]}"
                    )
                wait = left if due is None else min(left, (due - now) / 1000)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=max(wait, 0.001))

    def refusals(self) -> list[ReportRefused]:
        return [e for e in self.events if isinstance(e, ReportRefused)]

    def timeouts(self) -> list[ContactTimedOut]:
        return [e for e in self.events if isinstance(e, ContactTimedOut)]

    def clock_corrections(self) -> list[ClockCorrected]:
        return [e for e in self.events if isinstance(e, ClockCorrected)]
