"""The server's seam to its transport: what the application asks of the link that
carries device traffic (``_mqtt.MqttLink``, the embedded default, or a clustered one).

A link subscribes to the devices' uplink and status topics of protocol v1 by itself
whenever it (re)connects, calls ``handler(topic, payload)`` for every message, and
sends replies with ``publish``. It reports its state through the two callbacks it is
built with: ``on_connected()`` each time it can do its job, ``on_lost(why)`` when it
cannot. Connection failures are retried inside ``run``, never raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

__all__ = ["DeviceLink", "Handler", "PendingPublishes", "down_topic"]

Handler = Callable[[str, bytes], Awaitable[None]]
"""Called with (topic, payload) for each uplink or status message, one at a time."""


def down_topic(prefix: str, kid: bytes) -> str:
    """The topic of a device's downlink (protocol.md section 5)."""
    return f"{prefix}/{kid.hex()}/down"


class DeviceLink(Protocol):
    """The transport, as ``TrustedServer`` uses it."""

    @property
    def connected(self) -> bool:
        """Subscribed and able to publish now."""
        ...

    def publish(self, topic: str, data: bytes) -> None:
        """Send ``data`` on ``topic`` without waiting (a device retries what it misses)."""
        ...

    async def run(self, handler: Handler, stop: asyncio.Event) -> None:
        """Connect, subscribe and hand every message to ``handler`` until ``stop``."""
        ...


class PendingPublishes:
    """The publishes a link has started and not finished: ``publish`` must not wait for
    the broker, yet the tasks need a reference until they end (the loop keeps only a
    weak one), and a link that closes may wait for them (``drain``)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every publish started so far (their errors are theirs to log)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
