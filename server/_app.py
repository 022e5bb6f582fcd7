"""The running trusted server: one application object, ``TrustedServer``, with a
``run(stop)`` coroutine. It puts together, in one asyncio loop (database calls go to
worker threads):

- the transport (``_link.DeviceLink``; ``_mqtt.MqttLink`` to the broker),
- ingest (``_ingest``: the protocol core, incidents stored with a group commit, C4),
- verification (``_verification``: photo check, decision, fusion, blocking, recovery),
- the broadcast scheduler (``_broadcast``: B1s for windows and devices coming online),
- the ENC outbox worker (``_notifier``), retention, and the admin API (``_admin``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hardware._service import ServiceNotifier, WatchdogKeeper
from protocol import ServerEndpoint

from ._broadcast import BroadcastScheduler
from ._config import ServerConfig
from ._directory import RegistryDirectory
from ._ingest import Ingest
from ._link import DeviceLink, down_topic
from ._logsafe import EscapeControlCharacters
from ._metrics import ServerMetrics
from ._mqtt import MqttLink, broker_tls_context
from ._notifier import EncOutbox
from ._setup import open_store
from ._store import IncidentInfo, now_ms
from ._verification import PreloadedPoseVerifier, Verification, read_models
from ._verify import PhotoVerifier, VerifierPool, VerifierSettings

__all__ = ["TrustedServer"]

log = logging.getLogger("citywatch.server")
log.addFilter(EscapeControlCharacters())


class TrustedServer:
    """One server process. Several may run against one PostgreSQL database and one
    broker; they share device traffic and coordinate through the database."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        verifier: PhotoVerifier | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.config = config
        self._clock = clock
        v = config.verification
        models_dir = config.path(v.models_dir) if v.models_dir else None
        settings = VerifierSettings(
            threshold=v.threshold,
            uncertainty_band=v.uncertainty_band,
            min_width=v.min_width,
            min_height=v.min_height,
            max_pixels=v.max_pixels,
            long_side=v.analysis_long_side,
            device_weight=v.device_weight,
        )
        self._preloaded: PreloadedPoseVerifier | None = None
        self._models_checked = verifier is None
        if verifier is None:
            # A missing or altered model stops the start before anything is created. The
            # bytes read for this check are the ones this process uses (workers = 0);
            # worker processes read their own.
            models = read_models(models_dir)
            if v.workers == 0:
                verifier = self._preloaded = PreloadedPoseVerifier(models, settings)
            del models
        self.store, master = open_store(config)
        self.metrics = ServerMetrics()
        self.metrics.track_outbox(self.store.outbox_depth)
        self.directory = RegistryDirectory(self.store)
        t = config.timing
        self.endpoint = ServerEndpoint(
            directory=self.directory,
            ticket_key=master.ticket_key,
            random=secrets.token_bytes,
            timing=t.protocol_timing(),
            limits=t.limits(),
            rate_limit=t.rate_limit(),
            replay_capacity=t.replay_capacity,
            uplink_budget=4,
        )
        #: The photo check, off the event loop; ``verifier=`` replaces it (tests, embedders).
        self.verifier = VerifierPool(
            models_dir=models_dir,
            settings=settings,
            workers=v.workers,
            verifier=verifier,
            nice=v.worker_nice,
        )
        self.client_id = f"citywatch-server-{secrets.token_hex(4)}"
        self.outbox = EncOutbox(config, self.store, self.metrics, clock=clock, owner=self.client_id)
        self.prefix = config.broker.topic_prefix
        #: The transport to the devices.
        self.link: DeviceLink = self._device_link(config)
        self.verification = Verification(
            v,
            store=self.store,
            verifier=self.verifier,
            directory=self.directory,
            metrics=self.metrics,
            clock=clock,
            alerted=self.outbox.wake,
        )
        self.ingest = Ingest(
            endpoint=self.endpoint,
            directory=self.directory,
            store=self.store,
            metrics=self.metrics,
            clock=clock,
            send=self._send,
            stored=self._verify_new,
            spawn=self._spawn,
        )
        self.broadcasts = BroadcastScheduler(
            config,
            store=self.store,
            directory=self.directory,
            endpoint=self.endpoint,
            metrics=self.metrics,
            clock=clock,
            send=self._send,
        )
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
        link_stop = asyncio.Event()
        # WATCHDOG=1 from this loop from the start (models may load for a while): a stuck
        # loop is restarted, a missing broker is not (reconnecting is the server's job;
        # /healthz says 503 meanwhile).
        self._spawn(WatchdogKeeper(self.notifier).run(stop))
        workers = [
            asyncio.create_task(self.link.run(self._on_message, link_stop), name="link"),
            asyncio.create_task(self.broadcasts.run(self.connected, self._wake), name="scheduler"),
            asyncio.create_task(self.outbox.run(), name="enc-outbox"),
            asyncio.create_task(self._purge_loop(), name="retention"),
        ]
        # The models load before anything else: a missing model stops the start-up here.
        await asyncio.to_thread(self._start_verifier)
        self._spawn(self.verification.recover())
        admin_stop = asyncio.Event()
        if self.config.admin.enabled:
            from ._admin import AdminContext, serve_admin

            admin = AdminContext.of(
                self.config,
                self.store,
                self.metrics,
                changed=self.wake,
                mqtt_connected=lambda: self.mqtt_connected,
            )
            workers.append(asyncio.create_task(serve_admin(admin, admin_stop), name="admin"))
        log.info(
            "citywatch server %s starting (broker %s:%d, database %s)",
            self.client_id,
            self.config.broker.host,
            self.config.broker.port,
            self.store.engine.url.render_as_string(hide_password=True),
        )
        stopper = asyncio.create_task(stop.wait())
        # The workers run forever: one that ends has failed, and takes the process down
        # with it (systemd restarts it) rather than limping on without, say, its outbox.
        done, _ = await asyncio.wait([stopper, *workers], return_when=asyncio.FIRST_COMPLETED)
        self.notifier.stopping()
        admin_stop.set()
        link_stop.set()
        admin_tasks = [t for t in workers if t.get_name() == "admin" and not t.done()]
        if admin_tasks:
            await asyncio.wait(admin_tasks, timeout=5)
        for task in [*workers, *self._tasks, stopper]:
            task.cancel()
        results = await asyncio.gather(*workers, *self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.verifier.close)
        self.store.close()
        for task, res in zip(workers, results, strict=False):
            if (
                task in done
                and isinstance(res, BaseException)
                and not isinstance(res, asyncio.CancelledError)
            ):
                raise res

    def _start_verifier(self) -> None:
        if self._preloaded is not None:
            self._preloaded.load()
        self.verifier.start(models_checked=self._models_checked)

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
                    log.info(
                        "retention: %d dismissed and %d alerted photo(s) erased, %d "
                        "incident(s) deleted",
                        len(report.photos_dismissed),
                        len(report.photos_alerted),
                        len(report.incidents),
                    )
            await asyncio.sleep(r.purge_every_minutes * 60)

    # -- the transport -----------------------------------------------------------------

    def _device_link(self, config: ServerConfig) -> DeviceLink:
        b = config.broker
        if b.transport == "mqtt":
            return MqttLink(
                b,
                client_id=self.client_id,
                path=config.path,
                on_connected=self._on_connected,
                on_lost=self._on_lost,
            )
        from ._nats import NatsLink, NatsSettings

        tls = broker_tls_context(b, config.path)
        return NatsLink(
            NatsSettings(
                servers=tuple(b.nats_servers),
                prefix=b.topic_prefix,
                stream=b.nats_stream,
                durable=b.share_group,
                replicas=b.nats_replicas,
                name=self.client_id,
                tls=tls,
                user=b.username,
                password=b.password,
            ),
            on_connected=self._on_connected,
            on_lost=self._on_lost,
        )

    def _on_connected(self) -> None:
        if self.connected is not None:
            self.connected.set()
        self.wake()
        self.notifier.ready("connected to the broker")

    def _on_lost(self, why: str) -> None:
        if self.connected is not None:
            self.connected.clear()
        self.notifier.status(why)

    def _send(self, kid: bytes, data: bytes) -> None:
        self.link.publish(down_topic(self.prefix, kid), data)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        log.debug("message on %s (%d bytes)", topic, len(payload))
        parts = topic.split("/")
        if len(parts) < 3:
            return
        kind, kid_hex = parts[-1], parts[-2]
        try:
            if kind == "up":
                await self.ingest.on_uplink(kid_hex, payload)
            elif kind == "status":
                await self.broadcasts.on_status(kid_hex, payload)
        except Exception:
            log.exception("message on %s could not be handled", topic)

    async def _verify_new(self, stored: IncidentInfo, photo: bytes | None, t0: float) -> None:
        await self.verification.verify(
            stored.id, t0=t0, known=(stored, photo) if photo is not None else None
        )

    # -- used by the admin API --------------------------------------------------------

    @property
    def mqtt_connected(self) -> bool:
        return self.connected is not None and self.connected.is_set()
