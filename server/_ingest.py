"""Ingest: device uplinks through the protocol core, incidents stored with a group
commit, and C4 sent only once the incident is durable (the device deletes its copy on
C4)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from protocol import (
    BroadcastConfirmed,
    ContactOpened,
    ContactRefused,
    ErrorCode,
    Event,
    IncidentReported,
    MessageDropped,
    MessageType,
    RemoteProtocolError,
    ServerEndpoint,
    decode_envelope,
)

from ._batch import GroupCommit
from ._database import DATABASE_UNAVAILABLE
from ._directory import RegistryDirectory
from ._logsafe import EscapeControlCharacters
from ._metrics import ServerMetrics, type_label
from ._store import IncidentInfo, Store

__all__ = ["Ingest", "Stored"]

_MAX_LOOKUPS = 1024
"""Uplinks waiting for the database at once (their own tasks) before the link waits."""

Stored = Callable[[IncidentInfo, bytes | None, float], Awaitable[None]]
"""Called with a stored, undecided incident, its photo (None for a repeated report,
whose photo is read back) and the C3 time (``perf_counter``)."""

log = logging.getLogger("citywatch.server")
log.addFilter(EscapeControlCharacters())


class Ingest:
    """Uplinks (B2, C1, C3) from one transport into the core and the database.

    ``send(kid, data)`` hands a reply to the transport; ``stored`` is called for every
    incident that still waits for its decision."""

    def __init__(
        self,
        *,
        endpoint: ServerEndpoint,
        directory: RegistryDirectory,
        store: Store,
        metrics: ServerMetrics,
        clock: Callable[[], int],
        send: Callable[[bytes, bytes], None],
        stored: Stored,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self.endpoint = endpoint
        self.directory = directory
        self.store = store
        self.metrics = metrics
        self._clock = clock
        self._send = send
        self._stored = stored
        self._spawn = spawn
        # Reports arriving while one is being committed share the next commit.
        self.writes: GroupCommit[tuple[IncidentReported, str], tuple[IncidentInfo, bool]] = (
            GroupCommit(store.store_incidents)
        )
        # Likewise the B2s of a zone whose window opened: their reads and their commits.
        self.broadcast_reads: GroupCommit[bytes, tuple[int, int, bytes] | None] = GroupCommit(
            store.last_broadcasts
        )
        self.confirmations: GroupCommit[tuple[bytes, int], None] = GroupCommit(
            store.confirm_broadcasts
        )
        self._lookups = 0

    async def on_uplink(self, kid_hex: str, payload: bytes) -> None:
        """Called for each uplink in turn: whatever waits for the database (a device not
        in memory yet, a B2) goes on in a task of its own, so that the messages behind it
        are not held up; C1 and C3 need nothing of the database before the core's
        answer."""
        t0 = time.perf_counter()
        m = self.metrics
        try:
            env = decode_envelope(payload, max_size=self.endpoint.limits.max_large_message)
        except RemoteProtocolError as exc:
            m.messages.labels("unknown", "dropped").inc()
            m.rejected.labels(exc.reason).inc()
            return
        type_name = type_label(env.type)
        if env.kid.hex() != kid_hex.lower():
            # The broker's ACL should stop this; count it, never answer it.
            m.messages.labels(type_name, "dropped").inc()
            m.rejected.labels("topic_mismatch").inc()
            return
        if env.type == MessageType.B2 or self.directory.needs_load(env.kid):
            # Counted here, not when the task starts: a burst is handed over without the
            # loop running any task in between.
            self._lookups += 1
            job = self._after_lookup(env.kid, env.type, type_name, payload, t0)
            if self._lookups <= _MAX_LOOKUPS:
                self._spawn(job)
            else:  # a flood (of made-up kids, say): the link waits, memory does not grow
                await job
        else:
            self._receive(type_name, payload, t0)

    async def _after_lookup(
        self, kid: bytes, type: int, type_name: str, payload: bytes, t0: float
    ) -> None:
        try:
            if self.directory.needs_load(kid):
                await asyncio.to_thread(self.directory.ensure, kid)
            if type == MessageType.B2:
                # B1 may have been sent by another replica: the database knows the last.
                last = await self.broadcast_reads.submit(kid)
                if last is not None:
                    self.endpoint.remember_broadcast(kid, ep=last[0], ts=last[1], b1_hash=last[2])
                else:  # confirmed already (here or elsewhere): a B2 now is a replay
                    self.endpoint.remember_broadcast(kid, ep=-1, ts=-1, b1_hash=b"")
        except DATABASE_UNAVAILABLE as exc:
            self.metrics.messages.labels(type_name, "unavailable").inc()
            self._unavailable(type_name, kid, exc, "not answered: the device sends it again")
            return
        finally:
            self._lookups -= 1
        for ev in self._receive(type_name, payload, t0):
            if isinstance(ev, BroadcastConfirmed):
                try:
                    await self.confirmations.submit((ev.kid, ev.ep))
                except DATABASE_UNAVAILABLE as exc:
                    self._unavailable(
                        type_name, kid, exc, "not recorded: the window is announced again"
                    )

    def _receive(self, type_name: str, payload: bytes, t0: float) -> list[Event]:
        """The core's answer, sent; incidents go on to be stored."""
        events = self.endpoint.receive(payload, self._clock())
        for out in self.endpoint.data_to_send():
            self._send(out.kid, out.data)
        self._count(type_name, events)
        for ev in events:
            if isinstance(ev, IncidentReported):
                self._spawn(self._on_incident(ev, t0))
            elif isinstance(ev, BroadcastConfirmed):
                self.metrics.confirmations.inc()
        return events

    def _unavailable(self, type_name: str, kid: bytes, exc: Exception, what: str) -> None:
        log.warning(
            "%s from device %s %s (the database is unavailable: %s)",
            type_name,
            kid.hex(),
            what,
            type(exc).__name__,
        )

    def _count(self, type_name: str, events: list[Event]) -> None:
        m = self.metrics
        outcome = "dropped"
        for ev in events:
            if isinstance(ev, ContactRefused):
                outcome = "refused"
                m.rejected.labels(ErrorCode(ev.code).name.lower()).inc()
            elif isinstance(ev, MessageDropped):
                m.rejected.labels(ev.reason).inc()
            elif isinstance(ev, ContactOpened | IncidentReported | BroadcastConfirmed):
                outcome = "accepted"
        m.messages.labels(type_name, outcome).inc()

    async def _on_incident(self, ev: IncidentReported, t0: float) -> None:
        info = self.directory.info(ev.kid)
        zone = info.zone if info else ""
        try:
            stored, new = await self.writes.submit((ev, zone))
        except DATABASE_UNAVAILABLE as exc:
            # Not acknowledged: the device keeps the incident and sends C3 again.
            self._unavailable("C3", ev.kid, exc, "not stored, no C4: the device sends it again")
            return
        # C4 only after the incident is durably stored: the device deletes its copy on C4.
        self._send(ev.kid, self.endpoint.receipt(ev, self._clock()))
        self.metrics.c3_to_c4.observe(time.perf_counter() - t0)
        if stored.decision is None:
            # A new incident's photo is at hand; a repeated one's is read back.
            await self._stored(stored, ev.photo if new else None, t0)
