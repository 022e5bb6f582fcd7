"""The dashboard's pages, rendered on the server (Jinja2): login and logout, the list
(and the wall display), an alert with its photo (a blurred preview that is not a view,
and the photo, each fetch of which is audited), its CAP export, the action forms, and
the supervisors' audit trail. A refused action is said on the next page through a
short-lived cookie."""

from __future__ import annotations

import hmac
import math
import secrets
from typing import Any
from urllib.parse import quote, unquote

import anyio
import anyio.to_thread
from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from ._cap import cap_message, cap_report
from ._errors import ActionRefused, LoginRefused, LoginThrottled, NotFound
from ._filters import AlertFilter
from ._handling import Role, apply_action
from ._linked import linked_photo, linked_reports
from ._store import AlertStatus
from ._web import (
    FLASH_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Forbidden,
    WebContext,
    filename,
    safe_next,
)

__all__ = ["page_routes"]

_LOGINS_WAITING = 16
_LABELS = ("fight", "person_down", "fall")
"""Labels offered in the filters (any other is still shown, and found by words)."""
_AUDIT_ACTIONS = (
    "received",
    "acknowledged",
    "put_on_hold",
    "resumed",
    "assigned",
    "released",
    "dispatched",
    "dismissed",
    "closed",
    "reopened",
    "note",
    "escalated",
    "photo_viewed",
    "cap_exported",
    "login",
    "login_failed",
    "logout",
)


def _dms(v: float, pos: str, neg: str) -> str:
    a = abs(v)
    d = int(a)
    m = int((a - d) * 60)
    s = (a - d - m / 60) * 3600
    return f"{d}\u00b0{m:02d}\u2032{s:04.1f}\u2033{pos if v >= 0 else neg}"


def _tiles(lat: float, lon: float, zoom: int = 17) -> dict[str, Any]:
    """Which 3x3 slippy-map tiles surround a point, and where in them the point is."""
    n = 2**zoom
    x = (lon + 180.0) / 360.0 * n
    lat_r = math.radians(lat)
    y = (1.0 - math.asinh(math.tan(lat_r)) / math.pi) / 2.0 * n
    tx, ty = int(x), int(y)
    return {
        "z": zoom,
        "x": tx,
        "y": ty,
        "px": int((x - tx + 1) * 256),
        "py": int((y - ty + 1) * 256),
    }


def _pixelated(jpeg: bytes, blocks: int = 12) -> bytes:
    """The photo at its own size in about ``blocks`` coarse squares across; a grey
    picture if it does not decode."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            if im.width * im.height > 40_000_000:
                raise ValueError("too large")
            rgb = im.convert("RGB")
            w, h = rgb.size
            step = max(1, max(w, h) // blocks)
            small = rgb.resize((max(1, w // step), max(1, h // step)), Image.Resampling.BOX)
            out = small.resize((w, h), Image.Resampling.NEAREST)
    except (OSError, ValueError, Image.DecompressionBombError):
        out = Image.new("RGB", (160, 120), (40, 44, 52))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def page_routes(ctx: WebContext) -> APIRouter:
    r = APIRouter()
    store, ops = ctx.store, ctx.operators
    # Password checks get worker threads of their own, one at a time, and at most
    # _LOGINS_WAITING of them queue: a login flood neither takes the threads that
    # alert intake stores with nor stacks up without bound.
    logins = anyio.CapacityLimiter(1)

    @r.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        if ops.session(request.cookies.get(SESSION_COOKIE), now=ctx.clock(), touch=False):
            return RedirectResponse(safe_next(next), status_code=303)
        token = secrets.token_urlsafe(24)
        resp = ctx.page("login.html", login_csrf=token, next=safe_next(next))
        ctx.set_cookie(resp, LOGIN_COOKIE, token, 3600)
        return resp

    @r.post("/login", include_in_schema=False)
    async def login(
        request: Request,
        username: str = Form("", max_length=200),
        password: str = Form("", max_length=1024),
        csrf: str = Form("", max_length=200),
        next: str = Form("/", max_length=500),
    ) -> Response:
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not csrf or not hmac.compare_digest(cookie.encode(), csrf.encode()):
            token = secrets.token_urlsafe(24)
            resp = ctx.page(
                "login.html",
                403,
                login_csrf=token,
                next=safe_next(next),
                error="The login form was stale. Please try again.",
            )
            ctx.set_cookie(resp, LOGIN_COOKIE, token, 3600)
            return resp
        peer = request.client.host if request.client else "?"
        busy = logins.statistics().tasks_waiting >= _LOGINS_WAITING
        try:
            if busy:
                raise LoginThrottled(
                    "the dashboard is busy: try again in a moment", retry_after_s=5
                )
            token, _ = await anyio.to_thread.run_sync(
                lambda: ops.login(username, password, now=ctx.clock(), peer=peer), limiter=logins
            )
        except LoginRefused as exc:
            t = secrets.token_urlsafe(24)
            throttled = isinstance(exc, LoginThrottled)
            resp = ctx.page(
                "login.html",
                429 if throttled else 401,
                login_csrf=t,
                next=safe_next(next),
                error=str(exc).capitalize() + ".",
                username=username[:64],
            )
            if isinstance(exc, LoginThrottled):
                resp.headers["Retry-After"] = str(exc.retry_after_s)
            ctx.set_cookie(resp, LOGIN_COOKIE, t, 3600)
            return resp
        done = RedirectResponse(safe_next(next), status_code=303)
        ctx.set_cookie(
            done, SESSION_COOKIE, token, ctx.config.dashboard.session_lifetime_minutes * 60
        )
        done.delete_cookie(LOGIN_COOKIE, path="/")
        return done

    @r.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("", max_length=200)) -> Response:
        s = ctx.session(request, api=False)
        ctx.check_csrf(s, csrf, api=False)
        ops.logout(s, now=ctx.clock())
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @r.get("/", include_in_schema=False)
    def alert_list(request: Request) -> Response:
        s = ctx.session(request, api=False)
        cursor = store.last_audit_id()
        f = ctx.alert_filter(request)
        alerts = ctx.filtered(f)
        return ctx.page(
            "list.html",
            session=s,
            alerts=alerts,
            cursor=cursor,
            now=ctx.clock(),
            wall=request.query_params.get("wall") == "1",
            filter=f,
            query=request.query_params,
            labels=_LABELS,
            zones=list(ctx.config.dashboard.zones),
        )

    @r.get("/alerts/{incident_id}", include_in_schema=False)
    def alert_page(request: Request, incident_id: str) -> Response:
        s = ctx.session(request, api=False)
        try:
            a = store.alert(incident_id)
        except NotFound:
            return ctx.page(
                "error.html",
                404,
                title="No such alert",
                message="There is no alert with that id.",
                session=s,
            )
        c = a.coords
        geo = f"geo:{c.lat:.6f},{c.lon:.6f}" + (f";u={c.acc:.0f}" if c.acc else "")
        tiles = None
        if ctx.config.dashboard.map_tile_url:
            tiles = _tiles(c.lat, c.lon)
            tiles["template"] = ctx.config.dashboard.map_tile_url
        flash = request.cookies.get(FLASH_COOKIE)
        page = ctx.page(
            "alert.html",
            session=s,
            alert=a,
            trail=store.audit_trail(incident_id),
            earlier=store.alerts(device_uid=a.device_uid, before=a.received_at, limit=10),
            geo=geo,
            dms=f"{_dms(c.lat, 'N', 'S')} {_dms(c.lon, 'E', 'W')}",
            tiles=tiles,
            now=ctx.clock(),
            Status=AlertStatus,
            supervisor=s.operator.role is Role.SUPERVISOR,
            cap_deliveries=ctx.cap_deliveries(incident_id),
            reports=linked_reports(store, incident_id),
            colleagues=[
                o.username
                for o in ops.list()
                if not o.disabled and o.username != s.operator.username
            ],
            cursor=store.last_audit_id(),
            message=unquote(flash)[:300] if flash else None,
        )
        if flash:
            page.delete_cookie(FLASH_COOKIE, path="/")
        return page

    @r.get("/alerts/{incident_id}/photo.jpg", include_in_schema=False)
    def photo(request: Request, incident_id: str) -> Response:
        s = ctx.session(request, api=False)
        try:
            jpeg = store.photo(incident_id)
        except NotFound:
            return JSONResponse({"error": "not found"}, status_code=404)
        view = request.query_params.get("view", "")
        full = request.query_params.get("full") == "1" or view == "full"
        view = "full" if full else ("wall" if view == "wall" else "page")
        store.append_audit(
            at=ctx.clock(),
            actor=s.operator.username,
            action="photo_viewed",
            incident_id=incident_id,
            detail={"full": full, "view": view},
        )
        ctx.feed.notify()
        # no-store: every view is fetched, and so audited.
        return Response(
            jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store, private"}
        )

    @r.get("/alerts/{incident_id}/reports/{report_id}/photo.jpg", include_in_schema=False)
    def report_photo(request: Request, incident_id: str, report_id: str) -> Response:
        s = ctx.session(request, api=False)
        try:
            jpeg = linked_photo(store, incident_id, report_id)
        except NotFound:
            return JSONResponse({"error": "not found"}, status_code=404)
        preview = request.query_params.get("view") == "preview"
        if preview:  # coarse blocks, nobody recognisable: not a view
            return Response(
                _pixelated(jpeg),
                media_type="image/jpeg",
                headers={"Cache-Control": "no-store, private"},
            )
        store.append_audit(
            at=ctx.clock(),
            actor=s.operator.username,
            action="photo_viewed",
            incident_id=incident_id,
            detail={"view": "full", "report": report_id},
        )
        ctx.feed.notify()
        return Response(
            jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store, private"}
        )

    @r.get("/alerts/{incident_id}/preview.jpg", include_in_schema=False)
    def preview(request: Request, incident_id: str) -> Response:
        # Coarse blocks, nobody recognisable: shown on every page load, so not a view.
        ctx.session(request, api=False)
        try:
            jpeg = store.photo(incident_id)
        except NotFound:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(
            _pixelated(jpeg),
            media_type="image/jpeg",
            headers={"Cache-Control": "no-store, private"},
        )

    @r.get("/alerts/{incident_id}/cap.xml", include_in_schema=False)
    def cap(request: Request, incident_id: str) -> Response:
        s = ctx.session(request, api=False)
        try:
            a = store.alert(incident_id)
            trail = store.audit_trail(incident_id)
            rep = cap_report(trail)
            xml = cap_message(
                a,
                trail,
                ctx.config.cap,
                photo=store.photo(incident_id),
                report_photo=linked_photo(store, incident_id, rep) if rep else None,
            )
        except NotFound:
            return JSONResponse({"error": "not found"}, status_code=404)
        store.append_audit(
            at=ctx.clock(),
            actor=s.operator.username,
            action="cap_exported",
            incident_id=incident_id,
        )
        return Response(
            xml,
            media_type="application/xml; charset=utf-8",
            headers={
                "Cache-Control": "no-store",
                "Content-Disposition": f'inline; filename="{filename(incident_id)}.cap.xml"',
            },
        )

    @r.post("/alerts/{incident_id}/{action}", include_in_schema=False)
    def act_form(
        request: Request,
        incident_id: str,
        action: str,
        csrf: str = Form("", max_length=200),
        unit: str = Form("", max_length=200),
        comment: str = Form("", max_length=2000),
        reason: str = Form("", max_length=2000),
        seen: str = Form("", max_length=30),
        takeover: str = Form("", max_length=200),
        resolution: str = Form("", max_length=64),
        assignee: str = Form("", max_length=200),
    ) -> Response:
        s = ctx.session(request, api=False)
        ctx.check_csrf(s, csrf, api=False)
        url = f"/alerts/{quote(incident_id, safe='')}"
        try:
            me = s.operator.username
            a = store.alert(incident_id)
            # A supervisor's takeover is confirmed on the form, naming whom it is from;
            # the alert as seen (``seen``) makes sure that is still who has it.
            if (
                s.operator.role is Role.SUPERVISOR
                and a.taken_by not in (None, me)
                and a.status.taken
                and takeover != a.taken_by
                and action not in ("reopen", "note")
            ):
                raise ActionRefused(
                    f"{a.taken_by} has taken this alert: tick "
                    f'"Take over from {a.taken_by}" to act on it'
                )
            apply_action(
                store,
                incident_id,
                action,
                operator=me,
                role=s.operator.role,
                now=ctx.clock(),
                unit=unit,
                comment=comment,
                reason=reason,
                resolution=resolution,
                assignee=assignee,
                seen_status_at=int(seen) if seen.isdigit() else None,
            )
        except NotFound:
            return ctx.page(
                "error.html",
                404,
                title="No such alert",
                message="There is no alert with that id.",
                session=s,
            )
        except ActionRefused as exc:
            # Said on the next page through a short-lived cookie, not the URL, so that
            # no link can put words on an operator's screen.
            refused = RedirectResponse(url, status_code=303)
            ctx.set_cookie(refused, FLASH_COOKIE, quote(str(exc)[:300]), 60)
            return refused
        ctx.feed.notify()
        return RedirectResponse(url, status_code=303)

    @r.get("/audit", include_in_schema=False)
    def audit_page(request: Request) -> Response:
        s = ctx.session(request, api=False)
        if s.operator.role is not Role.SUPERVISOR:
            raise Forbidden(False, "the whole audit trail is for supervisors")
        q = request.query_params
        f = ctx.alert_filter(request)
        errors = list(f.errors)
        actions = frozenset(v for v in q.getlist("action") if v)
        actor = q.get("actor", "").strip()[:80]
        incident = q.get("incident", "").strip()[:64]
        incidents: list[str] | None = None
        if f.labels or f.zone or f.statuses or f.text:
            # The entries about the alerts that pass the alert part of the filter.
            about = AlertFilter(statuses=f.statuses, labels=f.labels, zone=f.zone, text=f.text)
            incidents = [
                a.incident_id
                for a in store.alerts(limit=5000, statuses=f.statuses, labels=f.labels)
                if about.matches(a, ctx.ui.area(a), label_text=ctx.ui.label(a.label))
            ]
        if incident:
            incidents = [incident] if incidents is None else [i for i in incidents if i == incident]
        entries = store.audit_search(
            limit=500,
            since=f.since,
            before=f.until,
            actions=actions,
            actor=actor or None,
            incidents=incidents,
        )
        return ctx.page(
            "audit.html",
            session=s,
            entries=entries,
            filter=f,
            query=q,
            errors=errors,
            labels=_LABELS,
            zones=list(ctx.config.dashboard.zones),
            actions=_AUDIT_ACTIONS,
            ui_actions=ctx.ui.action,
            filtered=bool(actions or actor or incidents is not None or f.since or f.until),
        )

    return r
