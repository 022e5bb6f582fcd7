"""A broker that refuses a subscription (SUBACK 0x80) is a failed connection, not a link
that looks up and never hears its topic. A real NATS MQTT gateway whose permissions deny
one pole's downlink. (A cluster's gateway refused it while re-electing after a node was
killed, and poles then retried their contacts for minutes without an answer.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from citywatch._services import ServiceUnavailable
from edge._config import BrokerConfig
from edge._link import BrokerLink, LinkDown, LinkUp, subscribe_checked
from tests.support.nats import NatsCluster, start_nats_cluster

KID = bytes.fromhex("00112233445566ff")
USER, PASSWORD = "pole", "a-password"


@pytest.fixture
def strict_broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """One NATS node whose user may not subscribe to KID's downlink."""
    denied = f"citywatch.v1.{KID.hex()}.down"
    extra = (
        f"authorization {{ users = [ {{user: {USER}, password: {PASSWORD}, permissions: "
        f'{{subscribe: {{deny: ["{denied}"]}}}}}} ] }}\n'
        f"no_auth_user: {USER}\n"
    )
    try:
        cluster: NatsCluster = start_nats_cluster(tmp_path / "nats", 1, extra=extra)
    except ServiceUnavailable as exc:
        pytest.skip(f"NATS unavailable: {exc}")
    yield "127.0.0.1", cluster.nodes[0].mqtt_port
    cluster.stop()


def test_a_refused_subscription_raises_and_names_the_topic(
    strict_broker: tuple[str, int],
) -> None:
    host, port = strict_broker

    async def go() -> None:
        async with aiomqtt.Client(host, port, username=USER, password=PASSWORD) as client:
            await subscribe_checked(client, "citywatch/v1/allowed/down")  # granted
            with pytest.raises(aiomqtt.MqttError, match=r"refused the subscription to .*/down"):
                await subscribe_checked(client, f"citywatch/v1/{KID.hex()}/down")

    asyncio.run(go())


def test_the_pole_link_reports_a_refused_downlink_and_never_says_it_is_up(
    strict_broker: tuple[str, int],
) -> None:
    host, port = strict_broker
    link = BrokerLink(
        BrokerConfig(host=host, port=port, username=USER, password=PASSWORD, reconnect_min_s=0.1),
        kid=KID,
    )
    events: list[object] = []

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(link.run(stop, events.append))
        for _ in range(100):
            if any(isinstance(e, LinkDown) and e.error for e in events):
                break
            await asyncio.sleep(0.05)
        try:
            downs = [e for e in events if isinstance(e, LinkDown) and e.error]
            assert downs, f"the link never reported the refusal: {events}"
            assert "refused the subscription" in str(downs[0].error), downs
            assert not any(isinstance(e, LinkUp) for e in events), events
            assert not link.connected
            assert "refused the subscription" in str(link.status().last_error)
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
