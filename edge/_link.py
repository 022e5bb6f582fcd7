"""The pole's link to the MQTT broker: connect, subscribe, presence, reconnect, publish.

Topics (protocol.md 5): ``<prefix>/<kid>/up`` (device -> server), ``.../down`` (server
-> device) and ``.../status``, where the device publishes a retained "online" after each
connect and leaves a retained "offline" as its last will; the server answers "online"
with a fresh B1. Client id = ``kid_hex``, QoS 1, persistent session, TCP_NODELAY, TLS
when ``[broker.tls]`` is there. The link knows nothing of the protocol: what arrives on
``down`` and whether the connection is up are handed to its owner as they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt

from ._config import BrokerConfig, EdgeConfigError
from ._state import BrokerStatus, wall_ms

__all__ = ["BrokerLink", "LinkDown", "LinkUp", "subscribe_checked", "tls_context"]

log = logging.getLogger("citywatch.edge.client")

_ONLINE, _OFFLINE = b"online", b"offline"
_PUBLISH_TIMEOUT_S = 60.0  # a 2 MiB C3 over a slow uplink


async def subscribe_checked(client: aiomqtt.Client, topic: str, *, qos: int = 1) -> None:
    """Subscribe, and raise ``aiomqtt.MqttError`` when the broker's SUBACK refuses it.

    A refused subscription (reason code 0x80: a cluster's MQTT gateway that cannot
    create the subscription's consumer while it re-elects) left a link that looked
    connected and heard nothing on ``topic``: its contacts were retried for minutes
    without an answer. Raised, it goes through the link's reconnect like a lost
    connection."""
    granted = await client.subscribe(topic, qos=qos)
    refused = [g for g in granted if (g.is_failure if not isinstance(g, int) else g >= 0x80)]
    if refused:
        raise aiomqtt.MqttError(f"the broker refused the subscription to {topic}: {refused[0]}")


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The connection is up: subscribed to ``down``, "online" said."""


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The connection went down, or an attempt to connect failed."""

    error: str | None = None
    """Why, when known."""


class BrokerLink:
    """One pole's MQTT connection, kept up with back-off until ``run``'s stop is set."""

    def __init__(
        self, broker: BrokerConfig, *, kid: bytes, clock: Callable[[], int] = wall_ms
    ) -> None:
        self.broker = broker
        self.kid = kid
        self._clock = clock
        self._tls = tls_context(broker)  # bad TLS files fail here, at start
        prefix = f"{broker.topic_prefix}/{kid.hex()}"
        self.topic_up, self.topic_down = f"{prefix}/up", f"{prefix}/down"
        self.topic_status = f"{prefix}/status"
        self._mqtt: aiomqtt.Client | None = None
        self._since: int | None = None
        self._last_error: str | None = None
        self._endpoints = broker.endpoints
        self._at = 0  # which endpoint: the broker first, then its alternates in turn

    @property
    def endpoint(self) -> tuple[str, int]:
        """The (host, port) in use, or tried next."""
        return self._endpoints[self._at]

    @property
    def connected(self) -> bool:
        return self._mqtt is not None

    def status(self) -> BrokerStatus:
        host, port = self.endpoint
        return BrokerStatus(
            connected=self.connected,
            host=host,
            port=port,
            since=self._since,
            last_error=self._last_error,
        )

    async def run(
        self, stop: asyncio.Event, deliver: Callable[[bytes | LinkUp | LinkDown], None]
    ) -> None:
        """Connect, hand every message on ``down`` and every change of the connection to
        ``deliver`` (on the loop), reconnect with back-off; until ``stop`` is set."""
        delay = self.broker.reconnect_min_s
        jitter = _random.SystemRandom()
        while not stop.is_set():
            error: str | None = None
            try:
                async with self._client() as client:
                    await subscribe_checked(client, self.topic_down)
                    # After subscribing, so the B1 the server sends in answer is not missed.
                    await client.publish(self.topic_status, _ONLINE, qos=1, retain=True)
                    self._mqtt = client
                    self._since, self._last_error = self._clock(), None
                    log.info("connected to the broker %s:%s as %s", *self.endpoint, self.kid.hex())
                    deliver(LinkUp())
                    delay = self.broker.reconnect_min_s
                    async for msg in client.messages:
                        if str(msg.topic) == self.topic_down and isinstance(msg.payload, bytes):
                            deliver(msg.payload)
            except aiomqtt.MqttError as exc:
                error = str(exc) or type(exc).__name__
            finally:
                if self._mqtt is not None:
                    self._mqtt = None
                    self._since = None
                    self._last_error = error or self._last_error
                    log.warning("lost the broker connection%s", f": {error}" if error else "")
                    deliver(LinkDown(error))
            if error is not None and not stop.is_set():
                self._last_error = error
                deliver(LinkDown(error))
                host, port = self.endpoint
                if len(self._endpoints) > 1:
                    # Another node of the cluster may be up: try it at once, and back off
                    # only once every endpoint has failed in a row.
                    self._at = (self._at + 1) % len(self._endpoints)
                    log.warning(
                        "broker %s:%s unreachable (%s); trying %s:%s",
                        host,
                        port,
                        error,
                        *self.endpoint,
                    )
                    if self._at != 0:
                        continue
                log.warning(
                    "broker %s:%s unreachable (%s); next attempt in %.1f s",
                    *self.endpoint,
                    error,
                    delay,
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * jitter.uniform(0.5, 1.0))
            delay = min(delay * 2, self.broker.reconnect_max_s)

    async def publish(self, data: bytes) -> bool:
        """Send one message on ``up`` (QoS 1); False if there is no connection or it
        failed (the contact then times out or starts over on reconnect)."""
        client = self._mqtt
        if client is None:
            return False
        try:
            await client.publish(self.topic_up, data, qos=1, timeout=_PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            log.warning("publish failed (%s); the contact starts over", exc)
            return False
        return True

    async def say_offline(self) -> None:
        """A clean disconnect does not fire the will: say "offline" ourselves."""
        client = self._mqtt
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                await client.publish(self.topic_status, _OFFLINE, qos=1, retain=True, timeout=2)

    def _client(self) -> aiomqtt.Client:
        b = self.broker
        # Nagle + delayed ACKs add ~40 ms to every small reply (design.md): send at once.
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if b.tcp_nodelay else []
        host, port = self.endpoint
        return aiomqtt.Client(
            host,
            port,
            identifier=self.kid.hex(),
            clean_session=False,
            username=b.username or None,
            password=b.password or None,
            keepalive=b.keepalive_s,
            tls_context=self._tls,
            tls_insecure=b.tls.insecure if b.tls is not None else None,
            socket_options=options,
            timeout=10,
            will=aiomqtt.Will(self.topic_status, _OFFLINE, qos=1, retain=True),
        )


def tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The TLS context for ``[broker.tls]``, None without TLS; ``EdgeConfigError`` naming
    the keys when a file cannot be loaded."""
    tls = broker.tls
    if tls is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise EdgeConfigError(
            f"broker.tls: cannot load the TLS files ({exc}): check ca_file, cert_file and key_file"
        ) from None
    if tls.insecure:
        ctx.check_hostname = False
    return ctx
