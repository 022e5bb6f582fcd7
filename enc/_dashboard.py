"""The operators' dashboard: server-rendered pages (``enc._pages``), a JSON API
described in the OpenAPI schema (``enc._api``), a live stream of server-sent events
(``enc._stream``), and the escalation watch; ``enc._http`` hardens every answer.

Security in one place: a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS)
that expires absolutely and when idle; a CSRF token on every state-changing request
(the login form included); a strict Content-Security-Policy that allows nothing from
elsewhere (a configured tile server excepted); request bodies limited while read;
errors answered with a phrase, never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from ._api import alert_out, api_routes
from ._config import EncConfig
from ._handling import escalate_due
from ._http import HttpHardening
from ._live import LiveFeed
from ._pages import page_routes
from ._store import AlertStore
from ._stream import stream_routes
from ._web import STATIC, Forbidden, NeedLogin, WebContext, safe_next

__all__ = ["Dashboard", "HttpHardening", "alert_out", "dashboard_lifespan"]

log = logging.getLogger("citywatch.enc.dashboard")


class Dashboard(WebContext):
    """Pages, JSON API, event stream, and the escalation watch."""

    def __init__(
        self, *, config: EncConfig, store: AlertStore, feed: LiveFeed, clock: Callable[[], int]
    ) -> None:
        super().__init__(config=config, store=store, feed=feed, clock=clock)
        self.router = APIRouter()
        for routes in (page_routes, api_routes, stream_routes):
            self.router.include_router(routes(self))

    def install(self, app: FastAPI) -> None:
        app.include_router(self.router)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        async def need_login(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, NeedLogin)
            if exc.api:
                return JSONResponse({"error": "log in first"}, status_code=401)
            return RedirectResponse(
                f"/login?next={quote(safe_next(exc.next_path))}", status_code=303
            )

        async def forbidden(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, Forbidden)
            if exc.api:
                return JSONResponse({"error": exc.why}, status_code=403)
            return self.page("error.html", 403, title="Refused", message=exc.why)

        app.add_exception_handler(NeedLogin, need_login)
        app.add_exception_handler(Forbidden, forbidden)

    async def escalation_watch(self) -> None:
        """Escalate untaken alerts; runs for the life of the app."""
        period = min(5.0, min(self.escalate_ms, self.escalate_taken_ms) / 4000)
        while True:
            try:
                due = await anyio.to_thread.run_sync(
                    lambda: escalate_due(
                        self.store,
                        now=self.clock(),
                        after_ms=self.escalate_ms,
                        taken_after_ms=self.escalate_taken_ms,
                    )
                )
                if due:
                    log.warning("escalated %d alert(s): %s", len(due), ", ".join(due))
                    self.feed.notify()
            except Exception:  # the store may be down for a while; keep watching
                log.exception("escalation check failed")
            await asyncio.sleep(period)


@contextlib.asynccontextmanager
async def dashboard_lifespan(dashboard: Dashboard) -> AsyncIterator[None]:
    dashboard.feed.bind(asyncio.get_running_loop())
    task = asyncio.create_task(dashboard.escalation_watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
