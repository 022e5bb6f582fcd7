"""The device's protocol client: the broker link driving the delivery policy.

Three parts, each in its own module:

- ``_link.BrokerLink``: the MQTT connection (subscribe, presence and last will,
  reconnect with back-off, publish);
- ``_delivery.DeliveryPolicy``: sans-I/O, driven by ``now`` and by what arrives; says
  what to send, what to read from and delete in the outbox, and when to look again;
- ``_status.PoleStatus``: the status board, owned by the daemon, which the client
  reports the delivery and the broker into.

``ProtocolClient`` is the adapter between them: one asyncio task runs the link, another
feeds the policy what the link hands over and the timeouts it asks for, and carries out
its actions against the outbox (SQLite, in a worker thread), ``state.json`` and the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from protocol import Cipher, Event, Limits, Timing

from ._config import BrokerConfig
from ._delivery import (
    DeleteIncident,
    DeliveryPolicy,
    LoadNext,
    NoteAttempt,
    Publish,
    SaveState,
    refusal_reason,
)
from ._link import BrokerLink, LinkDown, LinkUp
from ._outbox import Outbox, OutboxError
from ._state import StateFile, wall_ms
from ._status import PoleStatus, store_incident

if TYPE_CHECKING:
    from protocol import Coords

    from ._config import EdgeConfig

__all__ = ["ProtocolClient", "refusal_reason"]

log = logging.getLogger("citywatch.edge.client")


class _Wake:
    """Look at the outbox again (an incident was stored)."""


class ProtocolClient:
    """The device's side of the protocol over MQTT, with the durable outbox.

    ``now`` is the local wall clock in ms (``clock``); the policy's core adds the clock
    offset learnt from error 5 for protocol timestamps. ``status`` is the daemon's board;
    without one the client keeps (and writes) its own.
    """

    def __init__(
        self,
        *,
        uid: str,
        kid: bytes,
        cipher: Cipher,
        broker: BrokerConfig,
        outbox: Outbox,
        state_dir: Path,
        status: PoleStatus | None = None,
        zone: str = "",
        timing: Timing | None = None,
        limits: Limits | None = None,
        status_interval_s: float = 5.0,
        clock: Callable[[], int] = wall_ms,
        random: Callable[[int], bytes] = os.urandom,
        listener: Callable[[Event], None] | None = None,
    ) -> None:
        self.uid = uid
        self.kid = kid
        self.outbox = outbox
        self.state_dir = Path(state_dir)
        self._clock = clock
        self._listener = listener
        self._status_interval_s = status_interval_s
        self.link = BrokerLink(broker, kid=kid, clock=clock)  # bad TLS files fail here
        self._state_file = StateFile(self.state_dir)
        self.policy = DeliveryPolicy(
            kid=kid,
            uid=uid,
            cipher=cipher,
            random=random,
            timing=timing,
            limits=limits,
            state=self._state_file.load(),
        )
        self._owns_status = status is None
        self.status = status or PoleStatus.in_state_dir(
            self.state_dir, uid=uid, kid_hex=kid.hex(), zone=zone, clock=clock
        )
        self._inbox: asyncio.Queue[bytes | LinkUp | LinkDown | _Wake] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresh_status()

    @classmethod
    def from_config(
        cls,
        config: EdgeConfig,
        *,
        cipher: Cipher,
        outbox: Outbox,
        status: PoleStatus | None = None,
        **kwargs: object,
    ) -> ProtocolClient:
        return cls(
            uid=config.uid,
            kid=config.kid,
            cipher=cipher,
            broker=config.broker,
            outbox=outbox,
            state_dir=config.state_dir,
            status=status,
            zone=config.zone,
            timing=config.protocol.timing(),
            limits=config.protocol.limits(),
            status_interval_s=config.status.interval_s,
            **kwargs,  # type: ignore[arg-type]
        )

    # -- what the rest of the daemon uses ---------------------------------------------------

    @property
    def broker(self) -> BrokerConfig:
        return self.link.broker

    @property
    def timing(self) -> Timing:
        return self.policy.timing

    @property
    def topic_up(self) -> str:
        return self.link.topic_up

    @property
    def topic_down(self) -> str:
        return self.link.topic_down

    @property
    def topic_status(self) -> str:
        return self.link.topic_status

    def monitoring(self, now: int | None = None) -> bool:
        """True while a monitoring window announced by the server is open: the pipeline
        runs detection only then."""
        return self.policy.monitoring(self._clock() if now is None else now)

    @property
    def monitoring_until(self) -> int | None:
        """End of the last window announced (protocol time, ms)."""
        return self.policy.monitoring_until

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        return self.status.line

    def record_incident(
        self, *, photo: bytes, coords: Coords, score: float, label: str, captured_at: int
    ) -> bytes:
        """Store a capture durably (``_status.store_incident``) and have it delivered;
        return its capture id. Callable from any thread."""
        try:
            return store_incident(
                self.outbox,
                self.status,
                photo=photo,
                coords=coords,
                score=score,
                label=label,
                captured_at=captured_at,
            )
        finally:
            self.wake()

    def wake(self) -> None:
        """Something changed outside (an incident was stored): look again. Thread-safe."""
        loop, inbox = self._loop, self._inbox
        if loop is not None and inbox is not None:
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(inbox.put_nowait, _Wake())

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then say "offline" and disconnect."""
        self._loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[bytes | LinkUp | LinkDown | _Wake] = asyncio.Queue()
        self._inbox = inbox
        tasks = [asyncio.create_task(self.link.run(stop, inbox.put_nowait), name="edge-broker")]
        if self._owns_status:
            tasks.append(
                asyncio.create_task(
                    self.status.keep_written(stop, interval_s=self._status_interval_s),
                    name="edge-status",
                )
            )
        try:
            await self._protocol_loop(stop, inbox)
        finally:
            await self.link.say_offline()
            stop.set()
            tasks[0].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop = None

    # -- the adapter ------------------------------------------------------------------------

    async def _protocol_loop(
        self, stop: asyncio.Event, inbox: asyncio.Queue[bytes | LinkUp | LinkDown | _Wake]
    ) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            self.policy.on_timeout(self._clock())
            while not stop.is_set():
                await self._carry_out()
                self._refresh_status()
                getter = asyncio.ensure_future(inbox.get())
                done, _ = await asyncio.wait(
                    {getter, stopper}, timeout=self._wait_s(), return_when=asyncio.FIRST_COMPLETED
                )
                now = self._clock()
                if getter not in done:
                    getter.cancel()
                    self._told(self.policy.on_timeout(now))
                    continue
                item = getter.result()
                if isinstance(item, LinkUp):
                    self.policy.connected(now)
                elif isinstance(item, LinkDown):
                    self.policy.disconnected(now)
                elif isinstance(item, bytes):
                    self._told(self.policy.receive(item, now))
                else:
                    self.policy.incident_stored(now)
        finally:
            stopper.cancel()

    def _wait_s(self) -> float:
        deadline = self.policy.next_timeout()
        if deadline is None:
            return self._status_interval_s
        # At least every status interval: the window's end shows without any input.
        wait_ms = min(deadline - self._clock(), self._status_interval_s * 1000)
        return max(0.0, wait_ms / 1000)

    def _told(self, events: list[Event]) -> None:
        if self._listener is not None:
            for ev in events:
                self._listener(ev)

    async def _carry_out(self) -> None:
        """Do what the policy asks, in order, until it asks nothing more."""
        publish_failed = False
        while (action := self.policy.next_action()) is not None:
            if isinstance(action, Publish):
                if not publish_failed:
                    publish_failed = not await self.link.publish(action.data)
            elif isinstance(action, SaveState):
                await asyncio.to_thread(self._state_file.save, action.state)
            elif isinstance(action, LoadNext):
                try:
                    incident = await asyncio.to_thread(self.outbox.oldest, exclude=action.exclude)
                except OutboxError as exc:
                    self.status.note_error(str(exc))
                    self.policy.load_failed(self._clock())
                    continue
                self.policy.incident_loaded(incident.report() if incident else None, self._clock())
            elif isinstance(action, DeleteIncident):
                try:
                    await asyncio.to_thread(self.outbox.delete, action.cid)
                except OutboxError as exc:
                    # Kept aside; re-delivery would be harmless (same incident id) but useless.
                    self.status.note_error(str(exc))
                    self.policy.deletion_failed(action.cid, str(exc), self._clock())
                else:
                    self.policy.incident_deleted(action.cid)
            elif isinstance(action, NoteAttempt):
                await asyncio.to_thread(self.outbox.note_attempt, action.cid, action.why)

    def _refresh_status(self) -> None:
        self.status.show_delivery(self.policy.view(self._clock()))
        self.status.show_broker(self.link.status())
        self.status.show_outbox(self.outbox)
