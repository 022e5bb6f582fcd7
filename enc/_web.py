"""What the dashboard's pages, JSON API and live stream share: the cookies, the
refusals (log in first, forbidden), the session and CSRF checks, the templates, and
small helpers. ``enc._dashboard.Dashboard`` is this context with the routes on it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from fastapi import Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from ._config import EncConfig
from ._filters import AlertFilter
from ._handling import RESOLUTIONS, priority_key
from ._live import LiveFeed
from ._operators import OperatorDirectory, Session
from ._store import Alert, AlertStore
from ._wording import Presentation

__all__ = [
    "FLASH_COOKIE",
    "LEAFLET",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "STATIC",
    "STATUS_WORDS",
    "Forbidden",
    "NeedLogin",
    "WebContext",
    "filename",
    "incident_id_param",
    "iso",
    "safe_next",
]

log = logging.getLogger("citywatch.enc.dashboard")

SESSION_COOKIE = "cw_session"
LOGIN_COOKIE = "cw_login"
FLASH_COOKIE = "cw_flash"
STATIC = Path(__file__).resolve().parent / "static"
LEAFLET = "vendor/node_modules/leaflet/dist"  # under STATIC, put there by scripts/setup.sh
_INCIDENT_PATH = r"^[^/]{1,64}$"
STATUS_WORDS = {
    "new": "New",
    "acknowledged": "Acknowledged",
    "on_hold": "On hold",
    "dispatched": "Dispatched",
    "dismissed": "Dismissed",
    "closed": "Closed",
}


class NeedLogin(Exception):
    """No live session: a page goes to the login form, the API answers 401."""

    def __init__(self, api: bool, next_path: str = "/") -> None:
        self.api = api
        self.next_path = next_path


class Forbidden(Exception):
    """Refused with a reason: a page says it, the API answers 403 with it."""

    def __init__(self, api: bool, why: str) -> None:
        self.api = api
        self.why = why


def safe_next(path: str | None) -> str:
    """Only a path on this site (no open redirect)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    parts = urlsplit(path)
    return path if not parts.scheme and not parts.netloc else "/"


def incident_id_param() -> Any:
    from fastapi import Path as PathParam

    return PathParam(..., min_length=1, max_length=64, pattern=_INCIDENT_PATH)


def filename(incident_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in incident_id)[:64]


def iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


class WebContext:
    """Config, store, live feed, clock, operators and templates, with the checks every
    route makes."""

    def __init__(
        self, *, config: EncConfig, store: AlertStore, feed: LiveFeed, clock: Callable[[], int]
    ) -> None:
        self.config = config
        self.store = store
        self.feed = feed
        self.clock = clock
        self.operators = OperatorDirectory(store, config.dashboard)
        self.escalate_ms = config.dashboard.escalate_after_seconds * 1000
        self.escalate_taken_ms = config.dashboard.escalate_taken_after_seconds * 1000
        self.ui = Presentation(
            ZoneInfo(config.dashboard.time_zone),
            config.dashboard.uncertain_below,
            config.dashboard.zones,
        )
        self.templates = Environment(
            loader=PackageLoader("enc", "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["iso"] = iso
        self.templates.filters["when"] = self.ui.time
        self.templates.filters["words"] = self.ui.label
        self.templates.globals["ui"] = self.ui
        self.templates.globals["leaflet"] = (
            f"/static/{LEAFLET}"
            if config.dashboard.leaflet and (STATIC / LEAFLET / "leaflet.js").is_file()
            else ""
        )
        if config.dashboard.leaflet and not self.templates.globals["leaflet"]:
            log.warning(
                "Leaflet is not installed in %s (scripts/setup.sh does it): the "
                "dashboard shows coordinates without a map",
                STATIC / LEAFLET,
            )
        self.templates.globals["status_words"] = STATUS_WORDS
        self.templates.globals["resolutions"] = RESOLUTIONS
        self.templates.filters["pct"] = lambda v: f"{v:.0%}"
        #: Each CAP message of an alert to each recipient (set by ``build_app``).
        self.cap_deliveries: Callable[[str], list[dict[str, Any]]] = lambda _inc: []

    def ordered(self, alerts: list[Alert]) -> list[Alert]:
        """Unhandled first; escalated, then by severity, then newest (``priority_key``)."""
        below = self.ui.uncertain_below
        return sorted(alerts, key=lambda a: priority_key(a, uncertain_below=below))

    def filtered(self, f: AlertFilter, *, limit: int = 200) -> list[Alert]:
        """Alerts that pass ``f``, in the list's order (status, label and time are
        asked of the database; zone and words, sealed or loose, are checked here)."""
        rows = self.store.alerts(
            limit=2000 if f.zone or f.text else limit,
            statuses=f.statuses,
            labels=f.labels,
            since=f.since,
            before=f.until,
        )
        kept = [a for a in rows if f.matches(a, self.ui.area(a), label_text=self.ui.label(a.label))]
        return self.ordered(kept[:limit])

    def alert_filter(self, request: Request) -> AlertFilter:
        return AlertFilter.from_query(
            request.query_params, self.ui.zone, self.config.dashboard.zones
        )

    def session(self, request: Request, *, api: bool) -> Session:
        s = self.operators.session(request.cookies.get(SESSION_COOKIE), now=self.clock())
        if s is None:
            raise NeedLogin(api, request.url.path)
        return s

    def check_csrf(self, session: Session, presented: str | None, *, api: bool) -> None:
        if not OperatorDirectory.csrf_ok(session, presented):
            log.warning("CSRF token missing or wrong for %s", session.operator.username)
            raise Forbidden(api, "the form was stale or forged; reload the page and retry")

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            escalate_after_ms=self.escalate_ms, dashboard=self.config.dashboard, **context
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=self.config.secure_cookies,
            path="/",
        )
