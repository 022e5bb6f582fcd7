"""The city tier's transport: the server on a NATS cluster with JetStream.

Poles keep speaking MQTT (protocol.md section 5): NATS's MQTT gateway maps the topic
``citywatch/v1/<kid-hex>/up`` to the subject ``citywatch.v1.<kid-hex>.up``. A JetStream
stream replicated over the cluster keeps every uplink and status message until a server
replica has acknowledged it, and the replicas share one durable pull consumer (a work
queue): each message goes to one replica, and a message a replica took but never
acknowledged (it died) goes to another after ``ack_wait``. Replies go back as plain NATS
publishes to ``citywatch.v1.<kid-hex>.down``, which the gateway delivers to the pole's
MQTT session on whichever node it is connected to.

A node of the cluster may die: the client reconnects to another, the stream (with
``replicas`` copies) keeps its messages, and poles reconnect to another node's MQTT
listener (their bundle lists several).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ._errors import ServerError
from ._link import PendingPublishes

__all__ = ["NatsLink", "NatsSettings", "NatsUnavailable", "subject_of", "topic_of"]

log = logging.getLogger("citywatch.server.nats")

Handler = Callable[[str, bytes], Awaitable[None]]


class NatsUnavailable(ServerError):
    """The NATS cluster cannot be reached or refused the stream; the message says why."""


def subject_of(topic: str) -> str:
    """The NATS subject the MQTT gateway uses for an MQTT topic (``/`` becomes ``.``)."""
    return topic.replace("/", ".")


def topic_of(subject: str) -> str:
    """The MQTT topic of a subject that :func:`subject_of` made."""
    return subject.replace(".", "/")


@dataclass(frozen=True)
class NatsSettings:
    servers: tuple[str, ...]
    """The cluster's client URLs (``nats://host:4222``); the client fails over among them."""
    prefix: str = "citywatch/v1"
    """MQTT topic prefix of protocol v1."""
    stream: str = "CITYWATCH_UP"
    """The JetStream stream that holds uplink and status messages until acknowledged."""
    durable: str = "citywatch-server"
    """The replicas' shared durable consumer (every replica of one district: one name)."""
    replicas: int = 3
    """Copies of the stream in the cluster (1 for a single node)."""
    ack_wait_s: float = 30.0
    """A message taken and not acknowledged within this goes to another replica."""
    batch: int = 64
    """Messages fetched at once."""
    max_age_s: float = 24 * 3600
    """Messages older than this are dropped from the stream (a pole retries anyway)."""
    name: str = "citywatch-server"
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    user: str = ""
    password: str = ""


class NatsLink:
    """One server replica's connection to the cluster: ``run`` consumes the stream and
    calls ``handler(topic, payload)`` for each message (acknowledged once the handler
    returned, so a replica that dies while handling leaves the message to another);
    ``publish`` sends a reply. ``connected`` says whether the cluster is reachable."""

    def __init__(
        self,
        settings: NatsSettings,
        *,
        on_connected: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        if not settings.servers:
            raise NatsUnavailable("no NATS server URL is configured ([broker] nats_servers)")
        self.settings = settings
        self._on_connected = on_connected or (lambda: None)
        self._on_lost = on_lost or (lambda why: None)
        self._nc: Any = None
        self._pending = PendingPublishes()
        self._consuming = False

    @property
    def connected(self) -> bool:
        """Connected and consuming the stream (what the server needs to do its job)."""
        return self._consuming and self._nc is not None and bool(self._nc.is_connected)

    def publish(self, topic: str, data: bytes) -> None:
        """Sends ``data`` to ``topic`` (fire and forget: a pole retries what it misses)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            log.warning("not connected: message to %s dropped (the device retries)", topic)
            return
        self._pending.spawn(self._publish(nc, topic, data))

    async def _publish(self, nc: Any, topic: str, data: bytes) -> None:
        try:
            await nc.publish(subject_of(topic), data)
        except NatsError as exc:
            log.warning("publish to %s failed: %s", topic, exc)

    async def _connect(self) -> Any:
        s = self.settings

        async def disconnected() -> None:
            self._on_lost("NATS connection lost; reconnecting")

        async def reconnected() -> None:
            log.info(
                "reconnected to NATS at %s",
                self._nc.connected_url.netloc
                if self._nc is not None and self._nc.connected_url
                else "?",
            )
            self._on_connected()

        async def error(exc: Exception) -> None:
            log.debug("NATS: %s", exc)

        return await nats.connect(
            servers=list(s.servers),
            name=s.name,
            tls=s.tls,
            user=s.user or None,
            password=s.password or None,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=3,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )

    async def _ensure_stream(self, js: Any) -> None:
        s = self.settings
        p = subject_of(s.prefix)
        config = StreamConfig(
            name=s.stream,
            subjects=[f"{p}.*.up", f"{p}.*.status"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            max_age=s.max_age_s,
        )
        try:
            await js.stream_info(s.stream)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:  # another replica created it meanwhile
                if "already in use" not in str(exc):
                    # e.g. "no suitable peers for placement": fewer nodes up than replicas
                    raise NatsUnavailable(
                        f"the cluster refused stream {s.stream} ({s.replicas} replicas): {exc}"
                    ) from exc
        with contextlib.suppress(BadRequestError):  # exists with the same config
            await js.add_consumer(
                s.stream,
                ConsumerConfig(
                    durable_name=s.durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=s.ack_wait_s,
                    max_ack_pending=10_000,
                ),
            )

    async def run(self, handler: Handler, stop: asyncio.Event) -> None:
        """Consumes until ``stop`` is set. Connection failures are retried, never raised,
        except a configuration the cluster refuses."""
        delay = 0.5
        while not stop.is_set():
            try:
                self._nc = await self._connect()
            except (NatsError, OSError) as exc:
                self._on_lost(f"NATS unreachable: {exc}")
                log.warning("NATS unreachable (%s); retrying in %.1f s", exc, delay)
                await _pause(stop, delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            try:
                await self._consume(handler, stop)
            except Exception as exc:  # never blind for good: reconnect and say why
                self._on_lost(f"NATS consumer failed: {exc}")
                log.warning("NATS consumer failed (%s: %s); reconnecting", type(exc).__name__, exc)
                await _pause(stop, 1.0)
            finally:
                nc, self._nc = self._nc, None
                await self._pending.drain()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)

    async def _consume(self, handler: Handler, stop: asyncio.Event) -> None:
        s = self.settings
        js = self._nc.jetstream()
        while not stop.is_set():
            try:
                await self._ensure_stream(js)
                sub = await js.pull_subscribe_bind(durable=s.durable, stream=s.stream)
            except (NatsError, NatsTimeout, NatsUnavailable) as exc:
                # A cluster that is starting has no JetStream leader yet; one with fewer
                # nodes than replicas cannot place the stream: wait, say why.
                self._on_lost(f"JetStream not ready: {exc}")
                log.warning("JetStream not ready (%s); retrying", exc)
                await _pause(stop, 1.0)
                continue
            log.info("consuming %s as %s on NATS", s.stream, s.durable)
            self._consuming = True
            self._on_connected()
            try:
                await self._fetch_loop(sub, handler, stop)
            finally:
                self._consuming = False
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _fetch_loop(self, sub: Any, handler: Handler, stop: asyncio.Event) -> None:
        """Fetches and handles until ``stop``, or until fetching fails for another reason
        than an empty batch (the caller binds the consumer again)."""
        s = self.settings
        while not stop.is_set():
            try:
                msgs = await sub.fetch(s.batch, timeout=1.0)
            except (NatsTimeout, TimeoutError):
                if not self._nc.is_connected:
                    await _pause(stop, 0.5)
                continue
            except NatsError as exc:
                log.info("fetch failed (%s); binding the consumer again", exc)
                await _pause(stop, 0.5)
                return
            for msg in msgs:
                topic = topic_of(msg.subject)
                try:
                    await handler(topic, bytes(msg.data))
                except Exception:  # a message that cannot be handled is not retried
                    log.exception("message on %s could not be handled", topic)
                # Only now: a replica stopped or killed while handling leaves it unacknowledged.
                with contextlib.suppress(NatsError, TimeoutError):
                    await msg.ack()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
