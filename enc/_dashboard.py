"""The operators' dashboard: server-rendered pages (Jinja2), a small script, a JSON API
described in the OpenAPI schema, and a live feed of server-sent events.

Security in one place: a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS)
that expires absolutely and when idle; a CSRF token on every state-changing request
(the login form included); a strict Content-Security-Policy that allows nothing from
elsewhere (a configured tile server excepted); request bodies limited while read;
errors answered with a phrase, never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit
from zoneinfo import ZoneInfo

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Form, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._cap import cap_message
from ._config import EncConfig
from ._errors import ActionRefused, LoginRefused, LoginThrottled, NotFound
from ._handling import Role, apply_action, escalate_due, priority_key
from ._live import LiveFeed, sse_event
from ._operators import OperatorDirectory, Session
from ._store import Alert, AlertStatus, AlertStore, AuditEntry
from ._wording import Presentation

__all__ = ["Dashboard", "HttpHardening"]

log = logging.getLogger("citywatch.enc.dashboard")

SESSION_COOKIE = "cw_session"
LOGIN_COOKIE = "cw_login"
_LOGINS_WAITING = 16
FLASH_COOKIE = "cw_flash"
_STATIC = Path(__file__).resolve().parent / "static"
_LEAFLET = "vendor/node_modules/leaflet/dist"  # under _STATIC, put there by scripts/setup.sh
_INCIDENT_PATH = r"^[^/]{1,64}$"


# -- HTTP hardening (pure ASGI, so that event streams are not buffered) -----------------


class _BodyTooLarge(Exception):
    pass


class HttpHardening:
    """Security headers on every answer; request bodies limited while read (the alert
    endpoint has its own, larger limit)."""

    def __init__(self, app: ASGIApp, *, max_body: int, exempt: frozenset[str],
                 img_src: str = "'self' data:") -> None:
        self.app = app
        self.max_body = max_body
        self.exempt = exempt
        csp = ("default-src 'none'; script-src 'self'; style-src 'self'; "
               f"img-src {img_src}; connect-src 'self'; form-action 'self'; "
               "frame-ancestors 'none'; base-uri 'none'")
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"cross-origin-resource-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        overflowed = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if overflowed:
                # The app saw the body cut short and answered something (a 400 from the
                # form parser); what happened is "too large".
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _plain(send_with_headers_raw, 413)
                return
            if message["type"] == "http.response.start":
                started = True
            await send_with_headers_raw(message)

        async def send_with_headers_raw(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in self.headers if h[0] not in names)]
            await send(message)

        if scope["path"] in self.exempt:
            await self.app(scope, receive, send_with_headers)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _plain(send_with_headers, 413 if declared.isdigit() else 400)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen, overflowed
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    overflowed = True
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send_with_headers)
        except _BodyTooLarge:
            if not started:
                await _plain(send_with_headers_raw, 413)


async def _plain(send: Send, status: int) -> None:
    body = {400: b"bad request\n", 413: b"too large\n"}[status]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# -- JSON API models (these make the OpenAPI schema) ----------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertOut(_Out):
    incident_id: str
    device_uid: str
    label: str
    score: float
    lat: float
    lon: float
    acc: float | None
    src: str
    captured_at: int
    received_at: int
    status: Literal["new", "acknowledged", "dispatched", "dismissed"]
    status_at: int
    taken_by: str | None
    escalated_at: int | None
    url: str
    label_text: str = Field(description="the label in words (\"Person down\")")
    severity: Literal["fight", "person_down", "uncertain"]
    priority: int = Field(description="1 fight, 2 person down, 3 uncertain (low score)")
    escalated: bool = Field(description="escalated in its present state")
    received_text: str = Field(description="received time in the ENC's time zone")


class AuditOut(_Out):
    id: int
    at: int
    actor: str
    action: str
    detail: dict[str, Any]


class AlertListOut(_Out):
    alerts: list[AlertOut]
    cursor: int = Field(description="audit id to pass to /events?after= for what follows")
    now: int
    escalate_after_ms: int


class AlertDetailOut(_Out):
    alert: AlertOut
    audit: list[AuditOut]
    earlier: list[AlertOut]


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["acknowledge", "dispatch", "dismiss", "reopen"]
    unit: str | None = Field(default=None, max_length=80)
    comment: str | None = Field(default=None, max_length=500)
    reason: str | None = Field(default=None, max_length=500)
    seen_status_at: int | None = Field(default=None, ge=0, le=2**62, description=(
        "the alert's status_at as the operator saw it: refused (409) if it changed since"))


class ErrorOut(_Out):
    error: str


def alert_out(a: Alert, ui: Presentation) -> AlertOut:
    sev = ui.severity(a)
    return AlertOut(
        incident_id=a.incident_id, device_uid=a.device_uid, label=a.label, score=a.score,
        lat=a.coords.lat, lon=a.coords.lon, acc=a.coords.acc, src=a.coords.src,
        captured_at=a.captured_at, received_at=a.received_at, status=a.status.value,
        status_at=a.status_at, taken_by=a.taken_by, escalated_at=a.escalated_at,
        url=f"/alerts/{quote(a.incident_id, safe='')}", label_text=ui.label(a.label),
        severity=sev.name.lower(),  # type: ignore[arg-type]
        priority=int(sev), escalated=ui.escalated(a), received_text=ui.time(a.received_at),
    )


def _audit_out(e: AuditEntry) -> AuditOut:
    return AuditOut(id=e.id, at=e.at, actor=e.actor, action=e.action, detail=e.detail)


# -- refusals -------------------------------------------------------------------------


class _NeedLogin(Exception):
    def __init__(self, api: bool, next_path: str = "/") -> None:
        self.api = api
        self.next_path = next_path


class _Forbidden(Exception):
    def __init__(self, api: bool, why: str) -> None:
        self.api = api
        self.why = why


def _safe_next(path: str | None) -> str:
    """Only a path on this site (no open redirect)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    parts = urlsplit(path)
    return path if not parts.scheme and not parts.netloc else "/"


def _dms(v: float, pos: str, neg: str) -> str:
    a = abs(v)
    d = int(a)
    m = int((a - d) * 60)
    s = (a - d - m / 60) * 3600
    return f"{d}\u00b0{m:02d}\u2032{s:04.1f}\u2033{pos if v >= 0 else neg}"


def _tiles(lat: float, lon: float, zoom: int = 17) -> dict[str, Any]:
    """Which 3x3 slippy-map tiles surround a point, and where in them the point is."""
    n = 2 ** zoom
    x = (lon + 180.0) / 360.0 * n
    lat_r = math.radians(lat)
    y = (1.0 - math.asinh(math.tan(lat_r)) / math.pi) / 2.0 * n
    tx, ty = int(x), int(y)
    return {"z": zoom, "x": tx, "y": ty,
            "px": int((x - tx + 1) * 256), "py": int((y - ty + 1) * 256)}


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


class Dashboard:
    """Pages, JSON API, event stream, and the escalation watch."""

    def __init__(self, *, config: EncConfig, store: AlertStore, feed: LiveFeed,
                 clock: Callable[[], int]) -> None:
        self.config = config
        self.store = store
        self.feed = feed
        self.clock = clock
        self.operators = OperatorDirectory(store, config.dashboard)
        # Password checks get worker threads of their own, one at a time, and at most
        # _LOGINS_WAITING of them queue: a login flood neither takes the threads that
        # alert intake stores with nor stacks up without bound.
        self._logins = anyio.CapacityLimiter(1)
        self.escalate_ms = config.dashboard.escalate_after_seconds * 1000
        self.escalate_taken_ms = config.dashboard.escalate_taken_after_seconds * 1000
        self.ui = Presentation(ZoneInfo(config.dashboard.time_zone),
                               config.dashboard.uncertain_below)
        self.templates = Environment(loader=PackageLoader("enc", "templates"),
                                     autoescape=select_autoescape(default=True),
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["iso"] = _iso
        self.templates.filters["when"] = self.ui.time
        self.templates.filters["words"] = self.ui.label
        self.templates.globals["ui"] = self.ui
        self.templates.globals["leaflet"] = (
            f"/static/{_LEAFLET}" if config.dashboard.leaflet
            and (_STATIC / _LEAFLET / "leaflet.js").is_file() else "")
        if config.dashboard.leaflet and not self.templates.globals["leaflet"]:
            log.warning("Leaflet is not installed in %s (scripts/setup.sh does it): the "
                        "dashboard shows coordinates without a map", _STATIC / _LEAFLET)
        self.templates.globals["status_words"] = {
            "new": "New", "acknowledged": "Acknowledged", "dispatched": "Dispatched",
            "dismissed": "Dismissed"}
        self.templates.filters["pct"] = lambda v: f"{v:.0%}"
        self.router = self._routes()

    # -- helpers ------------------------------------------------------------------

    def _ordered(self, alerts: list[Alert]) -> list[Alert]:
        """Unhandled first; escalated, then by severity, then newest (``priority_key``)."""
        below = self.ui.uncertain_below
        return sorted(alerts, key=lambda a: priority_key(a, uncertain_below=below))

    def _session(self, request: Request, *, api: bool) -> Session:
        s = self.operators.session(request.cookies.get(SESSION_COOKIE), now=self.clock())
        if s is None:
            raise _NeedLogin(api, request.url.path)
        return s

    def _check_csrf(self, session: Session, presented: str | None, *, api: bool) -> None:
        if not OperatorDirectory.csrf_ok(session, presented):
            log.warning("CSRF token missing or wrong for %s", session.operator.username)
            raise _Forbidden(api, "the form was stale or forged; reload the page and retry")

    def _page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            escalate_after_ms=self.escalate_ms, dashboard=self.config.dashboard, **context)
        return HTMLResponse(html, status_code=status,
                            headers={"Cache-Control": "no-store"})

    def _set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                            secure=self.config.secure_cookies, path="/")

    def install(self, app: FastAPI) -> None:
        app.include_router(self.router)
        app.mount("/static", StaticFiles(directory=_STATIC), name="static")

        async def need_login(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, _NeedLogin)
            if exc.api:
                return JSONResponse({"error": "log in first"}, status_code=401)
            return RedirectResponse(f"/login?next={quote(_safe_next(exc.next_path))}",
                                    status_code=303)

        async def forbidden(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, _Forbidden)
            if exc.api:
                return JSONResponse({"error": exc.why}, status_code=403)
            return self._page("error.html", 403, title="Refused", message=exc.why)

        app.add_exception_handler(_NeedLogin, need_login)
        app.add_exception_handler(_Forbidden, forbidden)

    async def escalation_watch(self) -> None:
        """Escalate untaken alerts; runs for the life of the app."""
        period = min(5.0, min(self.escalate_ms, self.escalate_taken_ms) / 4000)
        while True:
            try:
                due = await anyio.to_thread.run_sync(
                    lambda: escalate_due(self.store, now=self.clock(),
                                         after_ms=self.escalate_ms,
                                         taken_after_ms=self.escalate_taken_ms))
                if due:
                    log.warning("escalated %d alert(s): %s", len(due), ", ".join(due))
                    self.feed.notify()
            except Exception:  # the store may be down for a while; keep watching
                log.exception("escalation check failed")
            await asyncio.sleep(period)

    # -- routes -------------------------------------------------------------------

    def _routes(self) -> APIRouter:
        r = APIRouter()
        store, ops = self.store, self.operators

        @r.get("/login", include_in_schema=False)
        def login_form(request: Request, next: str = "/") -> Response:
            if ops.session(request.cookies.get(SESSION_COOKIE), now=self.clock(),
                           touch=False):
                return RedirectResponse(_safe_next(next), status_code=303)
            token = secrets.token_urlsafe(24)
            resp = self._page("login.html", login_csrf=token, next=_safe_next(next))
            self._set_cookie(resp, LOGIN_COOKIE, token, 3600)
            return resp

        @r.post("/login", include_in_schema=False)
        async def login(request: Request, username: str = Form("", max_length=200),
                        password: str = Form("", max_length=1024),
                        csrf: str = Form("", max_length=200),
                        next: str = Form("/", max_length=500)) -> Response:
            cookie = request.cookies.get(LOGIN_COOKIE, "")
            if not cookie or not csrf or not hmac.compare_digest(cookie.encode(),
                                                                  csrf.encode()):
                token = secrets.token_urlsafe(24)
                resp = self._page("login.html", 403, login_csrf=token, next=_safe_next(next),
                                  error="The login form was stale. Please try again.")
                self._set_cookie(resp, LOGIN_COOKIE, token, 3600)
                return resp
            peer = request.client.host if request.client else "?"
            busy = self._logins.statistics().tasks_waiting >= _LOGINS_WAITING
            try:
                if busy:
                    raise LoginThrottled("the dashboard is busy: try again in a moment",
                                         retry_after_s=5)
                token, _ = await anyio.to_thread.run_sync(
                    lambda: ops.login(username, password, now=self.clock(), peer=peer),
                    limiter=self._logins)
            except LoginRefused as exc:
                t = secrets.token_urlsafe(24)
                throttled = isinstance(exc, LoginThrottled)
                resp = self._page("login.html", 429 if throttled else 401, login_csrf=t,
                                  next=_safe_next(next), error=str(exc).capitalize() + ".",
                                  username=username[:64])
                if isinstance(exc, LoginThrottled):
                    resp.headers["Retry-After"] = str(exc.retry_after_s)
                self._set_cookie(resp, LOGIN_COOKIE, t, 3600)
                return resp
            done = RedirectResponse(_safe_next(next), status_code=303)
            self._set_cookie(done, SESSION_COOKIE, token,
                             self.config.dashboard.session_lifetime_minutes * 60)
            done.delete_cookie(LOGIN_COOKIE, path="/")
            return done

        @r.post("/logout", include_in_schema=False)
        def logout(request: Request, csrf: str = Form("", max_length=200)) -> Response:
            s = self._session(request, api=False)
            self._check_csrf(s, csrf, api=False)
            ops.logout(s, now=self.clock())
            resp = RedirectResponse("/login", status_code=303)
            resp.delete_cookie(SESSION_COOKIE, path="/")
            return resp

        @r.get("/", include_in_schema=False)
        def alert_list(request: Request) -> Response:
            s = self._session(request, api=False)
            cursor = store.last_audit_id()
            alerts = self._ordered(store.alerts(limit=200))
            return self._page("list.html", session=s, alerts=alerts, cursor=cursor,
                              now=self.clock(), wall=request.query_params.get("wall") == "1")

        @r.get("/alerts/{incident_id}", include_in_schema=False)
        def alert_page(request: Request, incident_id: str) -> Response:
            s = self._session(request, api=False)
            try:
                a = store.alert(incident_id)
            except NotFound:
                return self._page("error.html", 404, title="No such alert",
                                  message="There is no alert with that id.", session=s)
            c = a.coords
            geo = f"geo:{c.lat:.6f},{c.lon:.6f}" + (f";u={c.acc:.0f}" if c.acc else "")
            tiles = None
            if self.config.dashboard.map_tile_url:
                tiles = _tiles(c.lat, c.lon)
                tiles["template"] = self.config.dashboard.map_tile_url
            flash = request.cookies.get(FLASH_COOKIE)
            page = self._page(
                "alert.html", session=s, alert=a, trail=store.audit_trail(incident_id),
                earlier=store.alerts(device_uid=a.device_uid, before=a.received_at, limit=10),
                geo=geo, dms=f"{_dms(c.lat, 'N', 'S')} {_dms(c.lon, 'E', 'W')}",
                tiles=tiles, now=self.clock(), Status=AlertStatus,
                supervisor=s.operator.role is Role.SUPERVISOR,
                cursor=store.last_audit_id(), message=unquote(flash)[:300] if flash else None)
            if flash:
                page.delete_cookie(FLASH_COOKIE, path="/")
            return page

        @r.get("/alerts/{incident_id}/photo.jpg", include_in_schema=False)
        def photo(request: Request, incident_id: str) -> Response:
            s = self._session(request, api=False)
            try:
                jpeg = store.photo(incident_id)
            except NotFound:
                return JSONResponse({"error": "not found"}, status_code=404)
            view = request.query_params.get("view", "")
            full = request.query_params.get("full") == "1" or view == "full"
            view = "full" if full else ("wall" if view == "wall" else "page")
            store.append_audit(at=self.clock(), actor=s.operator.username,
                               action="photo_viewed", incident_id=incident_id,
                               detail={"full": full, "view": view})
            self.feed.notify()
            # no-store: every view is fetched, and so audited.
            return Response(jpeg, media_type="image/jpeg",
                            headers={"Cache-Control": "no-store, private"})

        @r.get("/alerts/{incident_id}/preview.jpg", include_in_schema=False)
        def preview(request: Request, incident_id: str) -> Response:
            # Coarse blocks, nobody recognisable: shown on every page load, so not a view.
            self._session(request, api=False)
            try:
                jpeg = store.photo(incident_id)
            except NotFound:
                return JSONResponse({"error": "not found"}, status_code=404)
            return Response(_pixelated(jpeg), media_type="image/jpeg",
                            headers={"Cache-Control": "no-store, private"})

        @r.get("/alerts/{incident_id}/cap.xml", include_in_schema=False)
        def cap(request: Request, incident_id: str) -> Response:
            s = self._session(request, api=False)
            try:
                a = store.alert(incident_id)
                xml = cap_message(a, store.audit_trail(incident_id), self.config.cap,
                                  photo=store.photo(incident_id))
            except NotFound:
                return JSONResponse({"error": "not found"}, status_code=404)
            store.append_audit(at=self.clock(), actor=s.operator.username,
                               action="cap_exported", incident_id=incident_id)
            return Response(xml, media_type="application/xml; charset=utf-8", headers={
                "Cache-Control": "no-store",
                "Content-Disposition": f'inline; filename="{_filename(incident_id)}.cap.xml"'})

        @r.post("/alerts/{incident_id}/{action}", include_in_schema=False)
        def act_form(request: Request, incident_id: str, action: str,
                     csrf: str = Form("", max_length=200),
                     unit: str = Form("", max_length=200),
                     comment: str = Form("", max_length=2000),
                     reason: str = Form("", max_length=2000),
                     seen: str = Form("", max_length=30),
                     takeover: str = Form("", max_length=200)) -> Response:
            s = self._session(request, api=False)
            self._check_csrf(s, csrf, api=False)
            url = f"/alerts/{quote(incident_id, safe='')}"
            try:
                me = s.operator.username
                a = store.alert(incident_id)
                # A supervisor's takeover is confirmed on the form, naming whom it is from;
                # the alert as seen (``seen``) makes sure that is still who has it.
                if (s.operator.role is Role.SUPERVISOR and a.taken_by not in (None, me)
                        and a.status is AlertStatus.ACKNOWLEDGED
                        and takeover != a.taken_by and action != "reopen"):
                    raise ActionRefused(f"{a.taken_by} has taken this alert: tick "
                                        f"\"Take over from {a.taken_by}\" to act on it")
                apply_action(store, incident_id, action, operator=me,
                             role=s.operator.role, now=self.clock(), unit=unit,
                             comment=comment, reason=reason,
                             seen_status_at=int(seen) if seen.isdigit() else None)
            except NotFound:
                return self._page("error.html", 404, title="No such alert",
                                  message="There is no alert with that id.", session=s)
            except ActionRefused as exc:
                # Said on the next page through a short-lived cookie, not the URL, so that
                # no link can put words on an operator's screen.
                refused = RedirectResponse(url, status_code=303)
                self._set_cookie(refused, FLASH_COOKIE, quote(str(exc)[:300]), 60)
                return refused
            self.feed.notify()
            return RedirectResponse(url, status_code=303)

        @r.get("/audit", include_in_schema=False)
        def audit_page(request: Request) -> Response:
            s = self._session(request, api=False)
            if s.operator.role is not Role.SUPERVISOR:
                raise _Forbidden(False, "the whole audit trail is for supervisors")
            last = store.last_audit_id()
            entries = list(reversed(store.audit_since(max(0, last - 500), limit=500)))
            return self._page("audit.html", session=s, entries=entries)

        # -- JSON API (in the OpenAPI schema) ------------------------------------

        responses: dict[int | str, dict[str, Any]] = {
            401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut},
            409: {"model": ErrorOut}}

        @r.get("/api/alerts", response_model=AlertListOut, responses=responses,
               tags=["dashboard"], summary="Alerts, unhandled and newest first")
        def api_alerts(request: Request,
                       limit: int = Query(200, ge=1, le=500)) -> AlertListOut:
            self._session(request, api=True)
            cursor = store.last_audit_id()  # before the list: a change in between is re-sent
            return AlertListOut(alerts=[alert_out(a, self.ui) for a in self._ordered(store.alerts(
                limit=limit))], cursor=cursor, now=self.clock(),
                escalate_after_ms=self.escalate_ms)

        @r.get("/api/alerts/{incident_id}", response_model=AlertDetailOut,
               responses=responses, tags=["dashboard"], summary="One alert with its audit trail")
        def api_alert(request: Request, incident_id: str = _incident_id_param()) -> Response:
            self._session(request, api=True)
            try:
                a = store.alert(incident_id)
            except NotFound:
                return JSONResponse({"error": "not found"}, status_code=404)
            out = AlertDetailOut(
                alert=alert_out(a, self.ui),
                audit=[_audit_out(e) for e in store.audit_trail(incident_id)],
                earlier=[alert_out(x, self.ui) for x in store.alerts(device_uid=a.device_uid,
                                                            before=a.received_at, limit=10)])
            return JSONResponse(out.model_dump(mode="json"))

        @r.post("/api/alerts/{incident_id}/actions", response_model=AlertOut,
                responses=responses, tags=["dashboard"],
                summary="Acknowledge, dispatch, dismiss or reopen (needs X-CSRF-Token)")
        def api_act(request: Request, body: ActionIn, incident_id: str = _incident_id_param(),
                    x_csrf_token: str | None = Header(None, max_length=200)) -> Response:
            s = self._session(request, api=True)
            self._check_csrf(s, x_csrf_token, api=True)
            try:
                a = apply_action(store, incident_id, body.action, operator=s.operator.username,
                                 role=s.operator.role, now=self.clock(), unit=body.unit,
                                 comment=body.comment, reason=body.reason,
                                 seen_status_at=body.seen_status_at)
            except NotFound:
                return JSONResponse({"error": "not found"}, status_code=404)
            except ActionRefused as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)
            self.feed.notify()
            return JSONResponse(alert_out(a, self.ui).model_dump(mode="json"))

        @r.get("/events", include_in_schema=False)
        async def events(request: Request, after: int = Query(0, ge=0, le=2**62),
                         last_event_id: str | None = Header(None, max_length=30)) -> Response:
            token = request.cookies.get(SESSION_COOKIE)
            s = await anyio.to_thread.run_sync(
                lambda: ops.session(token, now=self.clock()))
            if s is None:
                return JSONResponse({"error": "log in first"}, status_code=401)
            cursor = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
            return StreamingResponse(self._stream(request, token or "", cursor),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store",
                                              "X-Accel-Buffering": "no"})

        return r

    async def _stream(self, request: Request, token: str, cursor: int) -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        last_check = 0.0
        loop = asyncio.get_running_loop()
        while not await request.is_disconnected():
            if loop.time() - last_check > 5:
                last_check = loop.time()
                s = await anyio.to_thread.run_sync(
                    lambda: self.operators.session(token, now=self.clock()))
                if s is None:
                    yield sse_event("logout", {})
                    return
            entries = await anyio.to_thread.run_sync(lambda c=cursor: self.store.audit_since(c))  # type: ignore[misc]
            for e in entries:
                cursor = e.id
                if e.incident_id is None or e.action in ("photo_viewed", "cap_exported"):
                    continue
                try:
                    a = await anyio.to_thread.run_sync(
                        lambda inc=e.incident_id: self.store.alert(inc))  # type: ignore[misc]
                except NotFound:
                    continue
                data = alert_out(a, self.ui).model_dump(mode="json")
                data["change"] = e.action
                data["actor"] = e.actor
                yield sse_event("alert", data, id=e.id)
            if not entries:
                yield b": keep-alive\n\n"
            await self.feed.wait()


def _incident_id_param() -> Any:
    from fastapi import Path as PathParam

    return PathParam(..., min_length=1, max_length=64, pattern=_INCIDENT_PATH)


def _filename(incident_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in incident_id)[:64]


def _iso(ms: int | None) -> str:
    from datetime import UTC, datetime

    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")




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
