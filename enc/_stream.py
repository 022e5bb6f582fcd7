"""The dashboard's live stream: ``GET /events``, server-sent events made from the audit
trail (``alert`` with the alert as JSON and what changed, ``logout`` when the session
ends). The audit id is the cursor, so a reconnect with ``Last-Event-ID`` misses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ._api import alert_out
from ._errors import NotFound
from ._handling import label_words
from ._live import sse_event
from ._web import SESSION_COOKIE, WebContext

__all__ = ["stream_routes"]

_NOT_SENT = ("photo_viewed", "cap_exported", "eido_exported")
"""Audit entries that change nothing on an operator's screen."""


def stream_routes(ctx: WebContext) -> APIRouter:
    r = APIRouter()

    @r.get("/events", include_in_schema=False)
    async def events(
        request: Request,
        after: int = Query(0, ge=0, le=2**62),
        last_event_id: str | None = Header(None, max_length=30),
    ) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        s = await anyio.to_thread.run_sync(lambda: ctx.operators.session(token, now=ctx.clock()))
        if s is None:
            return JSONResponse({"error": "log in first"}, status_code=401)
        cursor = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
        return StreamingResponse(
            _stream(ctx, request, token or "", cursor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return r


async def _stream(
    ctx: WebContext, request: Request, token: str, cursor: int
) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    last_check = 0.0
    loop = asyncio.get_running_loop()
    while not await request.is_disconnected():
        if loop.time() - last_check > 5:
            last_check = loop.time()
            s = await anyio.to_thread.run_sync(
                lambda: ctx.operators.session(token, now=ctx.clock())
            )
            if s is None:
                yield sse_event("logout", {})
                return
        entries = await anyio.to_thread.run_sync(lambda c=cursor: ctx.store.audit_since(c))  # type: ignore[misc]
        for e in entries:
            cursor = e.id
            if e.action == "pole_address":
                # A pole's address changed: its latest alerts, as they read now, so that
                # open pages show it without a reload.
                device = str(e.detail.get("device", ""))
                alerts = await anyio.to_thread.run_sync(
                    lambda d=device: ctx.store.alerts(device_uid=d, limit=50)  # type: ignore[misc]
                )
                for a in alerts:
                    data = alert_out(a, ctx.ui).model_dump(mode="json")
                    data["change"] = e.action
                    data["actor"] = e.actor
                    yield sse_event("alert", data, id=e.id)
                continue
            if e.incident_id is None or e.action in _NOT_SENT:
                continue
            try:
                a = await anyio.to_thread.run_sync(lambda inc=e.incident_id: ctx.store.alert(inc))  # type: ignore[misc]
            except NotFound:
                continue
            data = alert_out(a, ctx.ui).model_dump(mode="json")
            data["change"] = e.action
            data["actor"] = e.actor
            if e.action == "report_linked":
                # What the report itself is, for the page's "New report on alert" notice
                # (the alert's own label stays the alert's).
                lb = str(e.detail.get("label", ""))
                data["report"] = {
                    "id": e.detail.get("report"),
                    "label": lb,
                    "label_text": label_words(lb),
                    "score": e.detail.get("score"),
                    "device_uid": e.detail.get("device"),
                    "own_alert": bool(e.detail.get("own_alert")),
                }
            yield sse_event("alert", data, id=e.id)
        if not entries:
            yield b": keep-alive\n\n"
        await ctx.feed.wait()
