"""The server's NATS transport on a real three-node NATS cluster: poles speak MQTT to any
node, the replicas share the uplink as a work queue, a replica that dies leaves what it
took to another, and a node killed under load loses no acknowledged message of the
poles on the other nodes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter

import aiomqtt
import pytest

from server._nats import NatsLink, NatsSettings
from tests.support.nats import NatsCluster


def _settings(c: NatsCluster, **kw: object) -> NatsSettings:
    return NatsSettings(servers=tuple(c.urls), **kw)  # type: ignore[arg-type]


class Replica:
    """A link and what its handler saw."""

    def __init__(self, settings: NatsSettings, *, hang_on: bytes | None = None) -> None:
        self.link = NatsLink(settings)
        self.seen: list[tuple[str, bytes]] = []
        self.hang_on = hang_on
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def handler(self, topic: str, payload: bytes) -> None:
        if payload == self.hang_on:
            await asyncio.Event().wait()  # taken, never acknowledged
        self.seen.append((topic, payload))
        if payload.startswith(b"ping:"):
            self.link.publish(topic.rsplit("/", 1)[0] + "/down", b"pong:" + payload[5:])

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.link.run(self.handler, self.stop))

    async def connected(self, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not self.link.connected:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 15)


async def _until(cond: object, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.05)


def test_poles_on_any_node_reach_the_replicas_once_and_get_their_replies(
    nats_cluster: NatsCluster,
) -> None:
    async def run() -> None:
        a, b = Replica(_settings(nats_cluster)), Replica(_settings(nats_cluster))
        for r in (a, b):
            r.start()
        await a.connected()
        await b.connected()
        sent = []
        replies: list[bytes] = []
        async with contextlib.AsyncExitStack() as stack:
            poles = []
            for i, node in enumerate(nats_cluster.nodes):
                kid = f"{i:02x}" * 8
                c = await stack.enter_async_context(
                    aiomqtt.Client("127.0.0.1", node.mqtt_port, identifier=kid)
                )
                await c.subscribe(f"citywatch/v1/{kid}/down", qos=1)
                poles.append((kid, c))
            await asyncio.sleep(0.5)  # the subscriptions reach every node
            for n in range(30):
                kid, c = poles[n % len(poles)]
                body = f"ping:{kid}:{n}".encode()
                await c.publish(f"citywatch/v1/{kid}/up", body, qos=1)
                sent.append((f"citywatch/v1/{kid}/up", body))

            async def collect(c: aiomqtt.Client) -> None:
                async for m in c.messages:
                    replies.append(bytes(m.payload))  # type: ignore[arg-type]

            readers = [asyncio.create_task(collect(c)) for _, c in poles]
            try:
                await _until(
                    lambda: len(a.seen) + len(b.seen) >= len(sent) and len(replies) >= len(sent), 30
                )
                await asyncio.sleep(1.0)  # anything extra would arrive now
            finally:
                for t in readers:
                    t.cancel()
        await a.close()
        await b.close()
        got = Counter(a.seen + b.seen)
        assert set(got) == set(sent) and max(got.values()) == 1, got
        assert sorted(replies) == sorted(b"pong:" + p[5:] for _, p in sent)

    asyncio.run(run())


def test_a_replica_that_dies_leaves_what_it_took_to_another(nats_cluster: NatsCluster) -> None:
    async def run() -> None:
        s = _settings(nats_cluster, ack_wait_s=2.0, batch=1)
        dying = Replica(s, hang_on=b"taken")
        dying.start()
        await dying.connected()
        async with aiomqtt.Client(
            "127.0.0.1", nats_cluster.nodes[1].mqtt_port, identifier="ab" * 8
        ) as pole:
            await pole.publish(f"citywatch/v1/{'ab' * 8}/up", b"taken", qos=1)
            await asyncio.sleep(1.0)  # the dying replica has it, unacknowledged
            assert dying.seen == []
            assert dying.task is not None
            dying.task.cancel()  # dies with the message in hand
            with contextlib.suppress(asyncio.CancelledError):
                await dying.task
            heir = Replica(s)
            heir.start()
            await _until(lambda: heir.seen, 20)
            await heir.close()
        assert heir.seen == [(f"citywatch/v1/{'ab' * 8}/up", b"taken")]

    asyncio.run(run())


@pytest.mark.slow
def test_a_node_killed_under_load_leaves_the_replicas_consuming(nats_cluster: NatsCluster) -> None:
    """Poles publish QoS 1 to two nodes while the third (holding its share of the stream,
    the consumer and maybe a replica's connection) is SIGKILLed. Once the cluster has
    re-elected its leaders, every message the gateway acknowledged (PUBACK) reaches a
    replica again; around the kill the gateway may acknowledge messages it never stored
    (seen here: a few seconds of one pole's messages in one run of five), which is what
    the protocol's retries cover: the end-to-end test (test_server_nats.py) counts
    incidents, not messages. The count is printed, and said in docs/city.md."""

    async def pole(
        kid: str, order: list[int], acked: list[tuple[float, bytes]], stop: asyncio.Event
    ) -> None:
        n = 0
        while not stop.is_set():
            for idx in order:
                node = nats_cluster.nodes[idx]
                if not node.alive:
                    continue
                try:
                    async with aiomqtt.Client(
                        "127.0.0.1", node.mqtt_port, identifier=kid, timeout=5
                    ) as c:
                        while not stop.is_set():
                            body = f"{kid}:{n}".encode()
                            await c.publish(f"citywatch/v1/{kid}/up", body, qos=1, timeout=5)
                            acked.append((time.monotonic(), body))
                            n += 1
                            await asyncio.sleep(0.02)
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.2)

    async def run() -> None:
        a, b = Replica(_settings(nats_cluster)), Replica(_settings(nats_cluster))
        for r in (a, b):
            r.start()
        await a.connected()
        await b.connected()
        rng = random.Random(7)
        acked: list[tuple[float, bytes]] = []
        stop = asyncio.Event()
        poles = [
            asyncio.create_task(pole(f"{i:02x}" * 8, rng.sample((0, 2), 2), acked, stop))
            for i in range(6)
        ]
        await asyncio.sleep(3)
        nats_cluster.nodes[1].kill()
        await asyncio.sleep(20)  # leaders re-elected well within this (a few seconds here)
        settled = time.monotonic()
        await asyncio.sleep(4)
        stop.set()
        await asyncio.gather(*poles)
        late = {body for t, body in acked if t >= settled}

        def delivered() -> set[bytes]:
            return {p for _, p in a.seen + b.seen}

        with contextlib.suppress(TimeoutError):
            await _until(lambda: {body for _, body in acked} <= delivered(), 45)
        await a.close()
        await b.close()
        lost = {body for _, body in acked} - delivered()
        print(
            f"acknowledged {len(acked)}, delivered {len(delivered())}, "
            f"acknowledged and never delivered {len(lost)}"
        )
        assert len(late) > 50, len(late)
        assert late <= delivered(), sorted(late - delivered())[:10]

    asyncio.run(run())
