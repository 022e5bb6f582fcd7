"""The broadcast scheduler: B1s when a zone's monitoring starts, changes or ends (one
replica per change, by compare-and-set in the database), and a fresh B1 to a device
that comes back online while its zone is monitored (protocol.md section 4)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable

from protocol import ServerEndpoint

from ._config import ServerConfig
from ._directory import RegistryDirectory
from ._metrics import ServerMetrics
from ._store import DeviceInfo, Store
from ._windows import MonitoringPlan

__all__ = ["BroadcastScheduler"]

log = logging.getLogger("citywatch.server")

_CHANGES_OVERLAP_MS = 60_000
"""A poll re-reads only the devices changed since the last poll, less this overlap."""
_FULL_READ_MS = 300_000
"""And the whole registry this often, whatever the clocks of its writers did."""


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
        self._changes_since: int | None = None
        self._last_full_ms = 0

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
        started = self._clock()
        if self._changes_since is None or started - self._last_full_ms >= _FULL_READ_MS:
            devices = await asyncio.to_thread(self.store.list_devices)
            self.directory.refresh(devices)
            self._last_full_ms = started
        else:
            changed, kids = await asyncio.to_thread(
                self.store.registry_changes, self._changes_since
            )
            self.directory.apply_changes(changed, kids)
        # Writers stamp changes with their own clocks (the CLI, other replicas): rows of
        # the last minute are read again, so a writer up to that far behind is not missed.
        self._changes_since = started - _CHANGES_OVERLAP_MS
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
        if payload.strip() != b"online":
            return
        try:
            kid = bytes.fromhex(kid_hex)
        except ValueError:
            return
        if len(kid) != 8:
            return
        if self.directory.needs_load(kid):
            await asyncio.to_thread(self.directory.ensure, kid)
        info = self.directory.info(kid)
        if info is None or not info.active or info.blocked:
            return
        now = self._clock()
        until = self.directory.plan.until(info.zone, now)
        if until is None:
            # The plan may be up to poll_s old (a window opened through another replica
            # or the CLI): look at the store before telling a device there is none.
            windows = await asyncio.to_thread(self.store.open_windows, now)
            self.directory.plan = MonitoringPlan.of(windows, self.config.schedules)
            until = self.directory.plan.until(info.zone, now)
        if until is not None:
            # A device that (re)connects gets a fresh B1 for the window it missed.
            await self.announce([info], until)

    async def announce(self, devices: list[DeviceInfo], tx: int) -> None:
        """B1 to each device, its epoch persisted before anything is sent."""
        if not devices:
            return
        kids = [d.kid for d in devices]

        def load() -> dict[bytes, int]:
            for kid in kids:
                self.directory.ensure(kid)
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
