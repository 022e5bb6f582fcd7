"""The server's link to an MQTT broker (Mosquitto, the embedded default): one client
subscribed to the devices' uplink and status topics through a shared subscription, so
that every server process with the same ``share_group`` gets a share of the traffic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from edge._link import subscribe_checked

from ._config import BrokerConfig
from ._link import Handler, PendingPublishes

__all__ = ["MqttLink", "broker_tls_context", "mqtt_tls_context"]

log = logging.getLogger("citywatch.server")

PUBLISH_WINDOW = 256
"""Publishes handed to the MQTT client at once (it has up to 1000 in flight)."""


def mqtt_tls_context(
    *, ca_file: str | None, cert_file: str | None, key_file: str | None, insecure: bool
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    if insecure:
        ctx.check_hostname = False
    return ctx


def broker_tls_context(b: BrokerConfig, path: Callable[[Path], Path]) -> ssl.SSLContext | None:
    """The TLS context of ``[broker]`` (None without TLS); ``path`` resolves its files."""
    if not b.tls:
        return None
    return mqtt_tls_context(
        ca_file=str(path(b.ca_file)) if b.ca_file else None,
        cert_file=str(path(b.cert_file)) if b.cert_file else None,
        key_file=str(path(b.key_file)) if b.key_file else None,
        insecure=b.tls_insecure,
    )


class MqttLink:
    """``DeviceLink`` over one MQTT connection (QoS 1, clean session, reconnecting with
    back-off). ``path`` resolves the config's file names (CA, client certificate)."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str,
        path: Callable[[Path], Path] = Path,
        on_connected: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self._path = path
        self._on_connected = on_connected or (lambda: None)
        self._on_lost = on_lost or (lambda why: None)
        self._client: aiomqtt.Client | None = None
        self._pending = PendingPublishes()
        self._window = asyncio.Semaphore(PUBLISH_WINDOW)

    @property
    def subscriptions(self) -> tuple[str, str]:
        """What every (re)connection subscribes to."""
        g, p = self.broker.share_group, self.broker.topic_prefix
        return f"$share/{g}/{p}/+/up", f"$share/{g}/{p}/+/status"

    @property
    def connected(self) -> bool:
        return self._client is not None

    def publish(self, topic: str, data: bytes) -> None:
        client = self._client
        if client is None:
            log.warning("not connected: message to %s dropped (the device retries)", topic)
            return
        self._pending.spawn(self._publish(client, topic, data))

    async def _publish(self, client: aiomqtt.Client, topic: str, data: bytes) -> None:
        # aiomqtt looks for a new message id among all its pending calls by walking them
        # (and counts them into a list) at every publish: 10,000 B1s of a zone at once
        # made that quadratic, a third of the server's time. At most PUBLISH_WINDOW are
        # handed to it at a time; the rest wait here, in order (the semaphore is FIFO).
        async with self._window:
            try:
                await client.publish(topic, data, qos=1, timeout=30)
            except aiomqtt.MqttError as exc:
                log.warning("publish to %s failed: %s", topic, exc)

    def _client_for(self) -> aiomqtt.Client:
        b = self.broker
        tls_context = broker_tls_context(b, self._path)
        # Nagle + delayed ACKs cost ~40 ms per small reply (design.md): send at once.
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if b.tcp_nodelay else []
        return aiomqtt.Client(
            b.host,
            b.port,
            identifier=self.client_id,
            username=b.username or None,
            password=b.password or None,
            keepalive=b.keepalive_s,
            tls_context=tls_context,
            tls_insecure=b.tls_insecure if b.tls else None,
            socket_options=options,
            max_inflight_messages=1000,
            clean_session=True,
        )

    async def run(self, handler: Handler, stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                async with self._client_for() as client:
                    for topic in self.subscriptions:
                        await subscribe_checked(client, topic)
                    self._client = client
                    self._on_connected()
                    log.info("connected to the broker as %s", self.client_id)
                    delay = 0.5
                    async for msg in client.messages:
                        payload = msg.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = str(payload).encode()
                        await handler(str(msg.topic), bytes(payload))
            except aiomqtt.MqttError as exc:
                self._client = None
                self._on_lost(f"broker unreachable: {exc}")
                log.warning(
                    "broker connection lost or refused (%s); retrying in %.1f s", exc, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)
            finally:
                self._client = None
