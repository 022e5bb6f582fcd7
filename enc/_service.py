"""The ENC as one application object: config in, an HTTP(S) service out.

``EncService(config)`` opens the store (running the migrations); ``await
service.run(stop)`` serves the alert endpoint and the dashboard with uvicorn until
``stop`` is set, tells systemd when it is ready (``Type=notify``) and feeds its watchdog
from the event loop. ``GET /healthz`` answers 503 while the store does not answer;
``GET /metrics`` (Prometheus) answers the networks in ``[metrics] allow_from``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import protocol as p
from hardware._service import ServiceNotifier, WatchdogKeeper
from httpserve import request_deadline

from ._config import EncConfig
from ._dashboard import Dashboard, HttpHardening, dashboard_lifespan
from ._delivery import CapOutbox, CapSender
from ._errors import EncError
from ._keys import open_alert_store
from ._live import LiveFeed
from ._metrics import EncMetrics, RequestCounter
from ._outward import outward_routes, read_secret
from ._receiver import AlertReceiver
from ._store import AlertStore

__all__ = ["EncService", "build_app"]

log = logging.getLogger("citywatch.enc")


_now_ms = p.wall_clock_ms


def build_endpoint(config: EncConfig) -> p.EncEndpoint:
    return p.EncEndpoint(
        servers={s.kid: p.AesGcmCipher(s.key) for s in config.servers},
        random=secrets.token_bytes,
        timing=p.Timing(window_ms=config.limits.timestamp_window_seconds * 1000),
        limits=p.Limits(
            max_photo=config.limits.max_photo_bytes,
            envelope_overhead=max(
                4096, config.limits.max_body_bytes - config.limits.max_photo_bytes
            ),
        ),
    )


def _install_error_pages(app: FastAPI) -> None:
    """Errors answer with a status phrase only: no stack trace, no framework detail."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        body = {"error": _phrase(exc.status_code)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "bad request"}, status_code=400)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return PlainTextResponse("service unavailable, try again\n", status_code=503)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def build_app(
    config: EncConfig, store: AlertStore, *, clock: Callable[[], int] = _now_ms
) -> FastAPI:
    """The ASGI app: alert endpoint, health check, and the operators' dashboard."""
    feed = LiveFeed()
    metrics = EncMetrics(store.status_counts)
    dashboard = Dashboard(config=config, store=store, feed=feed, clock=clock)
    outbox = CapOutbox(store, config.cap)
    sender = CapSender(
        outbox,
        dict(config.cap.recipients),
        clock=clock,
        headers={
            name: {
                "Authorization": read_secret(
                    r.authorization_file, f"cap.recipients.{name}.authorization_file"
                )
            }
            for name, r in config.cap.recipients.items()
            if r.authorization_file
        },
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        sending = asyncio.create_task(sender.run(stop), name="cap-delivery")
        try:
            async with dashboard_lifespan(dashboard):
                yield
        finally:
            stop.set()
            sender.poke()
            await asyncio.gather(sending, return_exceptions=True)

    app = FastAPI(
        title="CityWatch ENC",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        description="The dashboard's JSON API. The alert endpoint POST /v1/alerts "
        "speaks COSE (protocol.md section 5) and is not listed here.",
    )
    _install_error_pages(app)

    async def on_stored(incident_id: str) -> None:
        metrics.stored.inc()
        feed.notify()
        sender.poke()

    receiver = AlertReceiver(
        endpoint=build_endpoint(config),
        store=store,
        max_body=config.limits.max_body_bytes,
        clock=clock,
        on_stored=on_stored,
    )
    app.include_router(receiver.router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        try:
            store.last_audit_id()
        except Exception:  # any store failure means "not healthy", nothing more
            return PlainTextResponse("store unavailable\n", status_code=503)
        return PlainTextResponse("ok\n")

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page(request: Request) -> Response:
        if not config.metrics.allows(request.client.host if request.client else None):
            return JSONResponse({"error": "not found"}, status_code=404)
        body = await asyncio.to_thread(metrics.exposition)  # the store is read for it
        return Response(body, media_type="text/plain; version=0.0.4")

    app.include_router(outward_routes(dashboard, outbox))
    dashboard.install(app)
    img_src = "'self' data:"
    if config.dashboard.map_tile_url:
        u = urlsplit(config.dashboard.map_tile_url)
        img_src += f" {u.scheme}://{u.netloc}"
    app.add_middleware(
        HttpHardening,
        max_body=config.dashboard.max_form_bytes,
        exempt=frozenset({"/v1/alerts"}),
        img_src=img_src,
    )
    app.state.config = config
    app.state.store = store
    app.state.dashboard = dashboard
    app.state.cap_outbox = outbox
    dashboard.cap_deliveries = outbox.deliveries
    app.state.metrics = metrics
    app.add_middleware(RequestCounter, metrics=metrics)
    return app


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, notifier: ServiceNotifier) -> None:
        super().__init__(config)
        self.notifier = notifier

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals are the caller's: they set the stop event given to EncService.run.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.notifier.ready("accepting alerts")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.notifier.stopping()
        await super().shutdown(sockets)


class EncService:
    """The ENC process: store + app + listener + retention."""

    async def _purge_loop(self, stop: asyncio.Event) -> None:
        """``[retention]`` applied every ``purge_every_minutes``; a failed purge (a full
        disk) changes nothing and is tried again next time."""
        r = self.config.retention
        metrics = self.app.state.metrics
        while not stop.is_set():
            try:
                report = await asyncio.to_thread(
                    self.store.purge, r.periods_ms(), now=time.time_ns() // 1_000_000
                )
            except EncError as exc:
                log.error("retention purge failed, nothing was removed: %s", exc)
            else:
                if report.total:
                    metrics.purged.labels("photo").inc(len(report.photos))
                    metrics.purged.labels("alert").inc(len(report.alerts))
                    log.info(
                        "retention: %d dismissed alert photo(s) and %d closed alert(s) deleted",
                        len(report.photos),
                        len(report.alerts),
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=r.purge_every_minutes * 60)

    def __init__(self, config: EncConfig) -> None:
        self.config = config
        self.store = open_alert_store(config)
        self.app = build_app(config, self.store)
        #: READY/STATUS/STOPPING to systemd; WATCHDOG=1 from the loop (``run``).
        self.notifier = ServiceNotifier()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; closes the store on the way out."""
        c = self.config
        if not c.servers:
            log.warning("no trusted server is configured: every alert will be refused")
        uc = uvicorn.Config(
            self.app,
            host=c.http.host,
            port=c.http.port,
            ssl_certfile=c.http.tls_cert or None,
            ssl_keyfile=c.http.tls_key or None,
            server_header=False,
            proxy_headers=False,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            http=request_deadline(),
        )
        log.info(
            "ENC listening on %s (%d trusted server(s), store %s)",
            c.base_url,
            len(c.servers),
            self.store.engine.url.render_as_string(hide_password=True),
        )
        server = _Server(uc, self.notifier)
        serving = asyncio.create_task(server.serve(), name="http")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        # WATCHDOG=1 from this loop: a stuck loop (not only a dead process) is restarted.
        keeper = asyncio.create_task(WatchdogKeeper(self.notifier).run(stop), name="watchdog")
        purging = asyncio.create_task(self._purge_loop(stop), name="retention")
        try:
            await asyncio.wait([serving, stopper], return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            await serving  # uvicorn's graceful shutdown: open requests finish
        finally:
            stop.set()
            stopper.cancel()
            await asyncio.gather(keeper, stopper, purging, return_exceptions=True)
            self.store.close()
