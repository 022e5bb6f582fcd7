"""The broadcast scheduler: B1s when a zone's monitoring starts, changes or ends (one
replica per change, by compare-and-set in the database), and a fresh B1 to a device
that comes back online while its zone is monitored (protocol.md section 4)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections.abc import Callable

from protocol import ServerEndpoint

from ._config import ServerConfig
from ._database import DATABASE_UNAVAILABLE, RETRY_FIRST_S, RETRY_MAX_S
from ._directory import RegistryDirectory
from ._metrics import ServerMetrics
from ._store import DeviceInfo, Store
from ._windows import MonitoringPlan

__all__ = ["BroadcastScheduler"]

log = logging.getLogger("citywatch.server")

ONLINE_BATCH = 500
"""Devices back online answered together (one epoch read, one B1 transaction)."""


class BroadcastScheduler:
    """``run`` re-reads the registry and windows every ``[timing] poll_s`` (or at once on
    ``wake``) while the transport is up, and announces what changed; ``on_status``
    handles the devices' presence messages. ``send(kid, data)`` hands a B1 to the
    transport."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        store: Store,
        directory: RegistryDirectory,
        endpoint: ServerEndpoint,
        metrics: ServerMetrics,
        clock: Callable[[], int],
        send: Callable[[bytes, bytes], None],
    ) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.endpoint = endpoint
        self.metrics = metrics
        self._clock = clock
        self._send = send
        self._online: dict[bytes, None] = {}  # devices back online, in order, no twice
        self._online_worker: asyncio.Task[None] | None = None

    async def run(self, connected: asyncio.Event, wake: asyncio.Event) -> None:
        while True:
            await connected.wait()
            try:
                await self.refresh()
                await self.reconcile_zones()
            except Exception:
                log.exception("broadcast scheduler step failed; retrying")
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.config.timing.poll_s)

    async def refresh(self) -> None:
        # Only the rows whose updated_at moved are read whole (all of them the first
        # time): a poll of a city whose registry did not change is a scan of two columns.
        changed, kids = await asyncio.to_thread(
            self.store.registry_changes, self.directory.versions()
        )
        self.directory.apply_changes(changed, kids)
        windows = await asyncio.to_thread(self.store.open_windows, self._clock())
        self.directory.plan = MonitoringPlan.of(windows, self.config.schedules)

    async def reconcile_zones(self) -> None:
        plan = self.directory.plan
        announced = await asyncio.to_thread(self.store.zone_announcements)
        now = self._clock()
        for zone in sorted(plan.zones() | set(announced)):
            want, had = plan.until(zone, now), announced.get(zone)
            if want == had:
                continue
            natural_end = want is None and had is not None and had <= now
            won = await asyncio.to_thread(
                self.store.claim_zone_announcement, zone, old=had, new=want
            )
            if not won or natural_end:
                continue  # another replica announces it, or the window simply ran out
            devices = [
                d for d in self.directory.devices() if d.zone == zone and d.active and not d.blocked
            ]
            tx = want if want is not None else now  # T_X == T_S ends a window early
            log.info(
                "zone %s: monitoring %s; B1 to %d device(s)",
                zone,
                f"until {tx}" if want is not None else "ended",
                len(devices),
            )
            await self.announce(devices, tx)

    async def on_status(self, kid_hex: str, payload: bytes) -> None:
        """A device's ``online`` is queued for the next group of B1s and returns at once:
        the link's message loop never waits for the database here. A broker restart
        brings every pole back within seconds; their B1s go out in groups of up to
        ``ONLINE_BATCH`` (two transactions per group), not two transactions each."""
        if payload.strip() != b"online":
            return
        try:
            kid = bytes.fromhex(kid_hex)
        except ValueError:
            return
        if len(kid) != 8:
            return
        self._online[kid] = None
        if self._online_worker is None or self._online_worker.done():
            self._online_worker = asyncio.create_task(self._drain_online())

    async def _drain_online(self) -> None:
        pause = RETRY_FIRST_S
        while self._online:
            kids = list(itertools.islice(self._online, ONLINE_BATCH))
            for kid in kids:
                del self._online[kid]
            try:
                await self._welcome_back(kids)
                pause = RETRY_FIRST_S
            except DATABASE_UNAVAILABLE as exc:
                # Not dropped: a pole with no B1 does not watch. Kept, tried again.
                for kid in kids:
                    self._online.setdefault(kid, None)
                log.warning(
                    "%d device(s) back online wait for their B1: the database is "
                    "unavailable (%s); tried again in %.1f s",
                    len(kids),
                    type(exc).__name__,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_S)
            except Exception:
                log.exception("B1 to %d device(s) back online could not be sent", len(kids))

    async def _welcome_back(self, kids: list[bytes]) -> None:
        """A fresh B1 for the window they missed to each of ``kids`` (devices that
        (re)connected) whose zone is monitored."""
        if any(self.directory.needs_load(kid) for kid in kids):
            await asyncio.to_thread(self.directory.ensure_all, kids)
        infos = [
            info
            for kid in kids
            if (info := self.directory.info(kid)) is not None and info.active and not info.blocked
        ]
        now = self._clock()
        if any(self.directory.plan.until(info.zone, now) is None for info in infos):
            # The plan may be up to poll_s old (a window opened through another replica
            # or the CLI): look at the store before telling a device there is none.
            windows = await asyncio.to_thread(self.store.open_windows, now)
            self.directory.plan = MonitoringPlan.of(windows, self.config.schedules)
        by_until: dict[int, list[DeviceInfo]] = {}
        for info in infos:
            until = self.directory.plan.until(info.zone, now)
            if until is not None:
                by_until.setdefault(until, []).append(info)
        for until, devices in by_until.items():
            await self.announce(devices, until)

    async def announce(self, devices: list[DeviceInfo], tx: int) -> None:
        """B1 to each device, its epoch persisted before anything is sent."""
        if not devices:
            return
        kids = [d.kid for d in devices]

        def load() -> dict[bytes, int]:
            self.directory.ensure_all(kids)
            return self.store.epochs(kids)

        for _attempt in range(3):
            epochs = await asyncio.to_thread(load)
            now = self._clock()
            sealed: list[tuple[bytes, int, bytes]] = []
            for kid in kids:
                if kid not in epochs or self.directory.lookup(kid) is None:
                    continue
                ep = epochs[kid] + 1
                sealed.append((kid, ep, self.endpoint.announce(kid, tx=tx, ep=ep, now=now)))
            ok = await asyncio.to_thread(
                self.store.record_broadcasts,
                [(kid, ep, now, hashlib.sha256(data).digest()) for kid, ep, data in sealed],
            )
            kids = []
            for (kid, _ep, data), stored in zip(sealed, ok, strict=True):
                if stored:
                    self._send(kid, data)
                    self.metrics.broadcasts.inc()
                else:
                    kids.append(kid)
            if not kids:
                return
        log.warning("B1 not sent to %d device(s): their epochs keep moving", len(kids))
