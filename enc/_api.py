"""The dashboard's JSON API (described in the OpenAPI schema at ``/openapi.json``):
alerts in the list's order, one alert with its trail, and actions on an alert (these
need the ``X-CSRF-Token`` header)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ._errors import ActionRefused, NotFound
from ._handling import apply_action
from ._store import Alert, AuditEntry
from ._web import WebContext, incident_id_param
from ._wording import Presentation

__all__ = [
    "ActionIn",
    "AlertDetailOut",
    "AlertListOut",
    "AlertOut",
    "AuditOut",
    "ErrorOut",
    "alert_out",
    "api_routes",
    "audit_out",
]


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
    status: Literal["new", "acknowledged", "on_hold", "dispatched", "dismissed", "closed"]
    status_at: int
    taken_by: str | None
    escalated_at: int | None
    url: str
    label_text: str = Field(description='the label in words ("Person down")')
    severity: Literal["fight", "person_down", "uncertain"]
    priority: int = Field(description="1 fight, 2 person down, 3 uncertain (low score)")
    escalated: bool = Field(description="escalated in its present state")
    received_text: str = Field(description="received time in the ENC's time zone")
    zone: str = Field(description='the zone of the district it is in (dashboard.zones), or ""')
    address: str | None = Field(
        description="the street address of its pole from the server's registry, or null"
    )


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
    action: Literal[
        "acknowledge",
        "dispatch",
        "dismiss",
        "reopen",
        "hold",
        "resume",
        "close",
        "assign",
        "release",
        "note",
    ]
    unit: str | None = Field(default=None, max_length=80)
    comment: str | None = Field(
        default=None, max_length=500, description=('a comment; for "note" the note itself')
    )
    reason: str | None = Field(default=None, max_length=500)
    resolution: str | None = Field(
        default=None,
        max_length=32,
        description=(
            'for "close": help_arrived, resolved_on_site, false_alarm, duplicate, '
            "nobody_found or other (with a comment)"
        ),
    )
    assignee: str | None = Field(
        default=None, max_length=64, description=('for "assign": the operator it is given to')
    )
    seen_status_at: int | None = Field(
        default=None,
        ge=0,
        le=2**62,
        description=(
            "the alert's status_at as the operator saw it: refused (409) if it changed since"
        ),
    )


class ErrorOut(_Out):
    error: str


def alert_out(a: Alert, ui: Presentation) -> AlertOut:
    sev = ui.severity(a)
    return AlertOut(
        incident_id=a.incident_id,
        device_uid=a.device_uid,
        label=a.label,
        score=a.score,
        lat=a.coords.lat,
        lon=a.coords.lon,
        acc=a.coords.acc,
        src=a.coords.src,
        captured_at=a.captured_at,
        received_at=a.received_at,
        status=a.status.value,
        status_at=a.status_at,
        taken_by=a.taken_by,
        escalated_at=a.escalated_at,
        url=f"/alerts/{quote(a.incident_id, safe='')}",
        label_text=ui.labels(a),
        severity=sev.name.lower(),  # type: ignore[arg-type]
        priority=int(sev),
        escalated=ui.escalated(a),
        received_text=ui.time(a.received_at),
        zone=ui.area(a),
        address=a.address,
    )


def audit_out(e: AuditEntry) -> AuditOut:
    return AuditOut(id=e.id, at=e.at, actor=e.actor, action=e.action, detail=e.detail)


def api_routes(ctx: WebContext) -> APIRouter:
    r = APIRouter()
    store = ctx.store
    responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorOut},
        401: {"model": ErrorOut},
        403: {"model": ErrorOut},
        404: {"model": ErrorOut},
        409: {"model": ErrorOut},
    }

    @r.get(
        "/api/alerts",
        response_model=AlertListOut,
        responses=responses,
        tags=["dashboard"],
        summary="Alerts, unhandled and newest first",
    )
    def api_alerts(
        request: Request,
        limit: int = Query(200, ge=1, le=500),
        status: Annotated[
            list[str] | None,
            Query(
                max_length=12,
                description=(
                    "new, acknowledged, on_hold, dispatched, dismissed, closed, or open "
                    "(every unhandled one); repeated for several"
                ),
            ),
        ] = None,
        label: Annotated[list[str] | None, Query(max_length=12)] = None,
        zone: str = Query("", max_length=40),
        from_: str = Query(
            "",
            alias="from",
            max_length=40,
            description=(
                "received at or after (ISO 8601; without an offset, in the ENC's time zone)"
            ),
        ),
        to: str = Query("", max_length=40, description="received before"),
        q: str = Query(
            "", max_length=80, description=("words in the incident id, device, label or operator")
        ),
    ) -> Response:
        ctx.session(request, api=True)
        f = ctx.alert_filter(request)
        if f.errors:
            return JSONResponse({"error": "; ".join(f.errors)}, status_code=400)
        cursor = store.last_audit_id()  # before the list: a change in between is re-sent
        out = AlertListOut(
            alerts=[alert_out(a, ctx.ui) for a in ctx.filtered(f, limit=limit)],
            cursor=cursor,
            now=ctx.clock(),
            escalate_after_ms=ctx.escalate_ms,
        )
        return JSONResponse(out.model_dump(mode="json"))

    @r.get(
        "/api/alerts/{incident_id}",
        response_model=AlertDetailOut,
        responses=responses,
        tags=["dashboard"],
        summary="One alert with its audit trail",
    )
    def api_alert(request: Request, incident_id: str = incident_id_param()) -> Response:
        ctx.session(request, api=True)
        try:
            a = store.alert(incident_id)
        except NotFound:
            return JSONResponse({"error": "not found"}, status_code=404)
        out = AlertDetailOut(
            alert=alert_out(a, ctx.ui),
            audit=[audit_out(e) for e in store.audit_trail(incident_id)],
            earlier=[
                alert_out(x, ctx.ui)
                for x in store.alerts(device_uid=a.device_uid, before=a.received_at, limit=10)
            ],
        )
        return JSONResponse(out.model_dump(mode="json"))

    @r.post(
        "/api/alerts/{incident_id}/actions",
        response_model=AlertOut,
        responses=responses,
        tags=["dashboard"],
        summary="Act on an alert or add a note to it (needs X-CSRF-Token)",
    )
    def api_act(
        request: Request,
        body: ActionIn,
        incident_id: str = incident_id_param(),
        x_csrf_token: str | None = Header(None, max_length=200),
    ) -> Response:
        s = ctx.session(request, api=True)
        ctx.check_csrf(s, x_csrf_token, api=True)
        try:
            a = apply_action(
                store,
                incident_id,
                body.action,
                operator=s.operator.username,
                role=s.operator.role,
                now=ctx.clock(),
                unit=body.unit,
                comment=body.comment,
                reason=body.reason,
                resolution=body.resolution,
                assignee=body.assignee,
                seen_status_at=body.seen_status_at,
            )
        except NotFound:
            return JSONResponse({"error": "not found"}, status_code=404)
        except ActionRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        ctx.feed.notify()
        return JSONResponse(alert_out(a, ctx.ui).model_dump(mode="json"))

    return r
