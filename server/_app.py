"""The running trusted server: one application object, ``TrustedServer``, with a
``run(stop)`` coroutine. It owns the MQTT ingest (device traffic through a shared
subscription), the broadcast scheduler, the verification step, the ENC outbox worker
and the admin API, all in one asyncio loop; database calls go to worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiomqtt

from hardware._service import ServiceNotifier, WatchdogKeeper
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
from ._config import ServerConfig
from ._directory import RegistryDirectory
from ._logsafe import EscapeControlCharacters
from ._metrics import ServerMetrics, type_label
from ._notifier import EncOutbox
from ._setup import open_store
from ._store import DecisionRecord, DeviceInfo, IncidentInfo, now_ms
from ._verify import PhotoVerifier, VerifierPool, VerifierSettings, check_models, decide
from ._windows import MonitoringPlan

__all__ = ["TrustedServer", "mqtt_tls_context"]

log = logging.getLogger("citywatch.server")
log.addFilter(EscapeControlCharacters())

VERIFIER_ACTOR = "server:verification"


def mqtt_tls_context(*, ca_file: str | None, cert_file: str | None, key_file: str | None,
                     insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    if insecure:
        ctx.check_hostname = False
    return ctx


class TrustedServer:
    """One server process. Several may run against one PostgreSQL database and one
    broker; they share device traffic and coordinate through the database."""

    def __init__(self, config: ServerConfig, *, verifier: PhotoVerifier | None = None,
                 clock: Callable[[], int] = now_ms) -> None:
        self.config = config
        self._clock = clock
        v = config.verification
        if verifier is None:
            # A missing or altered model stops the start before anything is created.
            check_models(config.path(v.models_dir) if v.models_dir else None)
        self.store, master = open_store(config)
        self.metrics = ServerMetrics()
        self.metrics.track_outbox(self.store.outbox_depth)
        self.directory = RegistryDirectory(self.store)
        t = config.timing
        self.endpoint = ServerEndpoint(
            directory=self.directory, ticket_key=master.ticket_key, random=secrets.token_bytes,
            timing=t.protocol_timing(), limits=t.limits(), rate_limit=t.rate_limit(),
            replay_capacity=t.replay_capacity, uplink_budget=4)
        v = config.verification
        #: The photo check, off the event loop; ``verifier=`` replaces it (tests, embedders).
        self.verifier = VerifierPool(
            models_dir=config.path(v.models_dir) if v.models_dir else None,
            settings=VerifierSettings(
                threshold=v.threshold, uncertainty_band=v.uncertainty_band,
                min_width=v.min_width, min_height=v.min_height, max_pixels=v.max_pixels,
                long_side=v.analysis_long_side, device_weight=v.device_weight),
            workers=v.workers, verifier=verifier)
        self.client_id = f"citywatch-server-{secrets.token_hex(4)}"
        self.outbox = EncOutbox(config, self.store, self.metrics, clock=clock,
                                owner=self.client_id)
        self._incident_writes: GroupCommit[tuple[IncidentReported, str],
                                           tuple[IncidentInfo, bool]] = GroupCommit(
            self.store.store_incidents)
        self._decisions: GroupCommit[DecisionRecord, str | None] = GroupCommit(
            self.store.decide_many)
        self.prefix = config.broker.topic_prefix
        self._client: aiomqtt.Client | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.connected: asyncio.Event | None = None
        self.started_at = time.time()
        #: READY/STATUS/STOPPING to systemd; WATCHDOG=1 from the loop (``run``).
        self.notifier = ServiceNotifier()

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        # WATCHDOG=1 from this loop from the start (models may load for a while): a stuck
        # loop is restarted, a missing broker is not (reconnecting is the server's job;
        # /healthz says 503 meanwhile).
        self._spawn(WatchdogKeeper(self.notifier).run(stop))
        workers = [
            asyncio.create_task(self._mqtt_loop(), name="mqtt"),
            asyncio.create_task(self._scheduler_loop(), name="scheduler"),
            asyncio.create_task(self.outbox.run(), name="enc-outbox"),
            asyncio.create_task(self._purge_loop(), name="retention"),
        ]
        # The models load before anything else: a missing model stops the start-up here.
        await asyncio.to_thread(self.verifier.start)
        self._spawn(self._recover())
        admin_stop = asyncio.Event()
        if self.config.admin.enabled:
            from ._admin import AdminContext, serve_admin

            admin = AdminContext.of(self.config, self.store, self.metrics, changed=self.wake,
                                    mqtt_connected=lambda: self.mqtt_connected)
            workers.append(asyncio.create_task(serve_admin(admin, admin_stop), name="admin"))
        log.info("citywatch server %s starting (broker %s:%d, database %s)", self.client_id,
                 self.config.broker.host, self.config.broker.port,
                 self.store.engine.url.render_as_string(hide_password=True))
        stopper = asyncio.create_task(stop.wait())
        # The workers run forever: one that ends has failed, and takes the process down
        # with it (systemd restarts it) rather than limping on without, say, its outbox.
        done, _ = await asyncio.wait([stopper, *workers], return_when=asyncio.FIRST_COMPLETED)
        self.notifier.stopping()
        admin_stop.set()
        admin_tasks = [t for t in workers if t.get_name() == "admin" and not t.done()]
        if admin_tasks:
            await asyncio.wait(admin_tasks, timeout=5)
        for task in [*workers, *self._tasks, stopper]:
            task.cancel()
        results = await asyncio.gather(*workers, *self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.verifier.close)
        self.store.close()
        for task, res in zip(workers, results, strict=False):
            if task in done and isinstance(res, BaseException) and not isinstance(
                    res, asyncio.CancelledError):
                raise res

    def wake(self) -> None:
        """Re-read the registry and windows now (thread-safe: the admin API calls it)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception())

    async def _purge_loop(self) -> None:
        """Retention: erase and delete what the periods of ``[retention]`` say, for ever;
        a failed purge (a full disk) changes nothing and is tried again next time."""
        r = self.config.retention
        while True:
            try:
                report = await asyncio.to_thread(self.store.purge, r.periods_ms())
            except Exception as exc:
                log.error("retention purge failed, nothing was removed: %s", exc)
            else:
                if report.total:
                    log.info("retention: %d dismissed and %d alerted photo(s) erased, %d "
                             "incident(s) deleted", len(report.photos_dismissed),
                             len(report.photos_alerted), len(report.incidents))
            await asyncio.sleep(r.purge_every_minutes * 60)

    # -- MQTT -------------------------------------------------------------------------

    def _mqtt_client(self) -> aiomqtt.Client:
        b = self.config.broker
        tls_context = None
        if b.tls:
            path = self.config.path
            tls_context = mqtt_tls_context(
                ca_file=str(path(b.ca_file)) if b.ca_file else None,
                cert_file=str(path(b.cert_file)) if b.cert_file else None,
                key_file=str(path(b.key_file)) if b.key_file else None,
                insecure=b.tls_insecure)
        # Nagle + delayed ACKs cost ~40 ms per small reply (design.md): send at once.
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if b.tcp_nodelay else []
        return aiomqtt.Client(
            b.host, b.port, identifier=self.client_id, username=b.username or None,
            password=b.password or None, keepalive=b.keepalive_s, tls_context=tls_context,
            tls_insecure=b.tls_insecure if b.tls else None, socket_options=options,
            max_inflight_messages=1000, clean_session=True)

    async def _mqtt_loop(self) -> None:
        assert self.connected is not None
        delay = 0.5
        g, p = self.config.broker.share_group, self.prefix
        while True:
            try:
                async with self._mqtt_client() as client:
                    await client.subscribe(f"$share/{g}/{p}/+/up", qos=1)
                    await client.subscribe(f"$share/{g}/{p}/+/status", qos=1)
                    self._client = client
                    self.connected.set()
                    self.wake()
                    self.notifier.ready("connected to the broker")
                    log.info("connected to the broker as %s", self.client_id)
                    delay = 0.5
                    async for msg in client.messages:
                        payload = msg.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = str(payload).encode()
                        await self._on_message(str(msg.topic), bytes(payload))
            except aiomqtt.MqttError as exc:
                self._client = None
                self.connected.clear()
                self.notifier.status(f"broker unreachable: {exc}")
                log.warning("broker connection lost or refused (%s); retrying in %.1f s",
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _publish_down(self, kid: bytes, data: bytes) -> None:
        client = self._client
        if client is None:
            log.warning("not connected: reply to %s dropped (the device retries)", kid.hex())
            return
        self._spawn(self._publish(client, f"{self.prefix}/{kid.hex()}/down", data))

    async def _publish(self, client: aiomqtt.Client, topic: str, data: bytes) -> None:
        try:
            await client.publish(topic, data, qos=1, timeout=30)
        except aiomqtt.MqttError as exc:
            log.warning("publish to %s failed: %s", topic, exc)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        log.debug("message on %s (%d bytes)", topic, len(payload))
        parts = topic.split("/")
        if len(parts) < 3:
            return
        kind, kid_hex = parts[-1], parts[-2]
        try:
            if kind == "up":
                await self._on_uplink(kid_hex, payload)
            elif kind == "status":
                await self._on_status(kid_hex, payload)
        except Exception:
            log.exception("message on %s could not be handled", topic)

    # -- device messages ---------------------------------------------------------------

    async def _on_uplink(self, kid_hex: str, payload: bytes) -> None:
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
        kid = env.kid
        if self.directory.needs_load(kid):
            await asyncio.to_thread(self.directory.ensure, kid)
        if env.type == MessageType.B2:
            # B1 may have been sent by another replica: the database knows the last one.
            last = await asyncio.to_thread(self.store.last_broadcast, kid)
            if last is not None:
                self.endpoint.remember_broadcast(kid, ep=last[0], ts=last[1], b1_hash=last[2])
            else:  # confirmed already (here or elsewhere): a B2 now is a replay
                self.endpoint.remember_broadcast(kid, ep=-1, ts=-1, b1_hash=b"")
        events = self.endpoint.receive(payload, self._clock())
        for out in self.endpoint.data_to_send():
            self._publish_down(out.kid, out.data)
        self._count(type_name, events)
        for ev in events:
            if isinstance(ev, IncidentReported):
                self._spawn(self._on_incident(ev, t0))
            elif isinstance(ev, BroadcastConfirmed):
                self.metrics.confirmations.inc()
                await asyncio.to_thread(self.store.confirm_broadcast, ev.kid, ep=ev.ep)

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
        # Reports arriving while one is being committed share the next commit.
        stored, new = await self._incident_writes.submit((ev, zone))
        # C4 only after the incident is durably stored: the device deletes its copy on C4.
        self._publish_down(ev.kid, self.endpoint.receipt(ev, self._clock()))
        self.metrics.c3_to_c4.observe(time.perf_counter() - t0)
        if stored.decision is None:
            # A new incident's photo is at hand; a repeated one's is read back.
            await self._verify(stored.id, t0=t0, known=(stored, ev.photo) if new else None)

    async def _verify(self, incident_id: str, *, t0: float | None = None,
                      known: tuple[IncidentInfo, bytes] | None = None) -> None:
        t1 = time.perf_counter()
        if known is None:
            known = await asyncio.to_thread(self.store.incident_for_verification, incident_id)
        info, photo = known
        verdict = await self.verifier.verify(photo, device_score=info.device_score,
                                             device_label=info.label)
        v = self.config.verification
        decision = decide(verdict, threshold=v.threshold)
        outcome = await self._decisions.submit(DecisionRecord(
            incident_id, score=verdict.score, uncertain=verdict.uncertain,
            dangerous=decision.dangerous, reason=decision.reason,
            fuse_within_m=v.fuse_within_m, fuse_within_ms=v.fuse_within_s * 1000))
        self.metrics.verification.observe(time.perf_counter() - t1)
        if outcome is None:  # decided already (a repeated report, another replica)
            return
        self.metrics.incidents.labels(outcome).inc()
        log.info("incident %s from %s: %s (%s)", incident_id, info.device_uid, outcome,
                 decision.reason)
        if outcome == "dangerous":
            self.outbox.wake(incident_id, t0)
        elif outcome == "dismissed":
            await self._maybe_block(info.device_uid)

    async def _maybe_block(self, uid: str) -> None:
        v = self.config.verification
        if v.block_after_dismissed <= 0:
            return
        since = self._clock() - v.dismissed_period_s * 1000
        n = await asyncio.to_thread(self.store.dismissed_count, uid, since=since)
        if n < v.block_after_dismissed:
            return
        device = await asyncio.to_thread(self.store.get_device, uid)
        if device.blocked:
            return
        reason = (f"{n} reports dismissed by verification within {v.dismissed_period_s} s "
                  f"(limit {v.block_after_dismissed})")
        info = await asyncio.to_thread(self.store.block_unless_blocked, uid,
                                       actor=VERIFIER_ACTOR, reason=reason)
        if info is None:  # blocked meanwhile by another verification or replica
            return
        self.directory.update(info)
        log.warning("device %s blocked: %s", uid, reason)

    async def _recover(self) -> None:
        """Incidents stored (and acknowledged with C4) but not verified when the server
        last stopped are verified now; their alerts then go out as usual."""
        pending = await asyncio.to_thread(self.store.undecided_incidents)
        for incident_id in pending:
            log.info("verifying incident %s left over from the last run", incident_id)
            await self._verify(incident_id)

    # -- presence and broadcast --------------------------------------------------------

    async def _on_status(self, kid_hex: str, payload: bytes) -> None:
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
            await self._announce([info], until)

    async def _scheduler_loop(self) -> None:
        assert self._wake is not None and self.connected is not None
        while True:
            await self.connected.wait()
            try:
                await self._refresh()
                await self._reconcile_zones()
            except Exception:
                log.exception("broadcast scheduler step failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.timing.poll_s)

    async def _refresh(self) -> None:
        devices = await asyncio.to_thread(self.store.list_devices)
        self.directory.refresh(devices)
        windows = await asyncio.to_thread(self.store.open_windows, self._clock())
        self.directory.plan = MonitoringPlan.of(windows, self.config.schedules)

    async def _reconcile_zones(self) -> None:
        plan = self.directory.plan
        announced = await asyncio.to_thread(self.store.zone_announcements)
        now = self._clock()
        for zone in sorted(plan.zones() | set(announced)):
            want, had = plan.until(zone, now), announced.get(zone)
            if want == had:
                continue
            natural_end = want is None and had is not None and had <= now
            won = await asyncio.to_thread(self.store.claim_zone_announcement, zone, old=had,
                                          new=want)
            if not won or natural_end:
                continue  # another replica announces it, or the window simply ran out
            devices = [d for d in self.directory.devices()
                       if d.zone == zone and d.active and not d.blocked]
            tx = want if want is not None else now  # T_X == T_S ends a window early
            log.info("zone %s: monitoring %s; B1 to %d device(s)", zone,
                     f"until {tx}" if want is not None else "ended", len(devices))
            await self._announce(devices, tx)

    async def _announce(self, devices: list[DeviceInfo], tx: int) -> None:
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
            ok = await asyncio.to_thread(self.store.record_broadcasts, [
                (kid, ep, now, hashlib.sha256(data).digest()) for kid, ep, data in sealed])
            kids = []
            for (kid, _ep, data), stored in zip(sealed, ok, strict=True):
                if stored:
                    self._publish_down(kid, data)
                    self.metrics.broadcasts.inc()
                else:
                    kids.append(kid)
            if not kids:
                return
        log.warning("B1 not sent to %d device(s): their epochs keep moving", len(kids))

    # -- used by the admin API --------------------------------------------------------

    @property
    def mqtt_connected(self) -> bool:
        return self.connected is not None and self.connected.is_set()
