"""The admin HTTP API (FastAPI; OpenAPI at /docs): the registry, monitoring windows and
incidents, as in the CLI, behind a bearer token; Prometheus metrics at /metrics and a
health check at /healthz without a token (keep the port on a management network)."""

# No `from __future__ import annotations`: FastAPI must see the dependency objects in
# the annotations of the route functions, which are local to admin_app().

import asyncio
import contextlib
import dataclasses
import datetime as dt
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model

from httpserve import request_deadline
from protocol import ALG_A128GCM, ALG_A256GCM

from ._bundle import provisioning_bundle
from ._config import ServerConfig
from ._errors import DeviceExists, DeviceNotFound, RegistryError, ServerError
from ._keys import read_token_file
from ._metrics import ServerMetrics
from ._store import DEVICE_ACTIONS, IncidentInfo, Store
from ._windows import MonitoringPlan

__all__ = ["AdminContext", "admin_app", "serve_admin"]

UidPath = Annotated[str, Path(min_length=1, max_length=64)]
ZonePath = Annotated[str, Path(min_length=1, max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceAdd(_Model):
    uid: str = Field(min_length=1, max_length=64, description="The device's UID")
    zone: str = Field(min_length=1, max_length=64, description="Monitoring zone")
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False, description="Latitude")
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False, description="Longitude")
    alg: Literal["A128GCM", "A256GCM"] = Field("A256GCM", description="Key algorithm")
    address: str | None = Field(
        None, max_length=200, description="Street address of the pole (shown at the ENC)"
    )


class DeviceAddress(_Model):
    address: str | None = Field(
        max_length=200, description='Street address of the pole; null or "" removes it'
    )


class DeviceOut(_Model):
    uid: str
    kid_hex: str
    zone: str
    lat: float
    lon: float
    alg: str
    status: Literal["active", "inactive", "blocked"]
    active: bool
    blocked: bool
    epoch: int
    confirmed_epoch: int | None
    confirmed_at: int | None
    created_at: int
    updated_at: int
    address: str | None


class BrokerSettings(_Model):
    host: str
    port: int
    tls: bool
    ca_pem: str | None
    topic_prefix: str


class Bundle(_Model):
    uid: str
    kid_hex: str
    alg: str
    key_hex: str
    zone: str
    lat: float
    lon: float
    server: BrokerSettings


class WindowOpen(_Model):
    until: dt.datetime = Field(description="End of the window (ISO 8601; no offset = UTC)")


class WindowOut(_Model):
    id: int
    zone: str
    opens_at: int
    closes_at: int
    opened_by: str
    closed_by: str | None


class ZoneState(_Model):
    zone: str
    monitored_until: int | None


class WindowsOut(_Model):
    zones: list[ZoneState]
    recent: list[WindowOut]


class Closed(_Model):
    zone: str
    closed: int
    monitored_until: int | None = Field(description="Still monitored by a schedule until")


def _incident_out() -> type[BaseModel]:
    """The API's view of ``IncidentInfo``, made from its fields (``kid`` as ``kid_hex``, as
    ``IncidentInfo.to_json`` writes it), so that the two cannot drift apart."""
    hints = get_type_hints(IncidentInfo)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(IncidentInfo):
        if f.name == "kid":
            fields["kid_hex"] = (str, ...)
        else:
            default = ... if f.default is dataclasses.MISSING else f.default
            fields[f.name] = (hints[f.name], default)
    fields["fused_into"] = (
        str | None,
        Field(
            None,
            description="the nearby alerted incident this one was fused into (its alert "
            "covers both; this one has none of its own)",
        ),
    )
    return create_model("IncidentOut", __base__=_Model, **fields)


if TYPE_CHECKING:

    class IncidentOut(_Model):
        """The API's view of ``IncidentInfo`` (made by ``_incident_out`` at import)."""

else:
    IncidentOut = _incident_out()


class AuditOut(_Model):
    at: int
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


class Health(_Model):
    status: Literal["ok", "unavailable"]
    """``unavailable`` (HTTP 503): the server cannot do its job now (no broker, or the
    database does not answer)."""
    mqtt_connected: bool
    outbox_depth: int
    """Alerts waiting for the ENC; -1 when the database did not answer."""


@dataclass(frozen=True, slots=True)
class AdminContext:
    """What the API needs from the running server: nothing more, so that the API knows
    nothing of the server's MQTT link or workers."""

    config: ServerConfig
    """The server's configuration (admin listener, schedules, broker for bundles)."""
    store: Store
    """The registry, windows, incidents and audit log."""
    metrics: ServerMetrics
    """Served at ``/metrics``."""
    changed: Callable[[], None]
    """Called after a change to the registry or the windows (the server rebroadcasts)."""
    mqtt_connected: Callable[[], bool]
    """Whether the server is connected to the broker now (for ``/healthz``)."""
    token: str = field(repr=False)
    """The bearer token every ``/v1`` call needs."""

    @classmethod
    def of(
        cls,
        config: ServerConfig,
        store: Store,
        metrics: ServerMetrics,
        *,
        changed: Callable[[], None],
        mqtt_connected: Callable[[], bool],
    ) -> "AdminContext":
        """A context that reads the token from the configured token file."""
        token = read_token_file(config.path(config.admin.token_file))
        return cls(
            config=config,
            store=store,
            metrics=metrics,
            changed=changed,
            mqtt_connected=mqtt_connected,
            token=token,
        )


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except DeviceNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except DeviceExists as exc:
        raise HTTPException(409, str(exc)) from None
    except RegistryError as exc:
        raise HTTPException(400, str(exc)) from None


def _serve_docs(app: FastAPI) -> None:
    """/docs from Swagger UI's own files, which the swagger-ui-py package installs: the
    page loads nothing from elsewhere (FastAPI's default fetches them from a CDN)."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    static = files("swagger_ui") / "static"
    app.mount("/docs/static", StaticFiles(directory=str(static)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: docs",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )
        page.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'"
        )
        return page


def admin_app(ctx: AdminContext) -> FastAPI:
    app = FastAPI(
        title="CityWatch trusted server: admin API",
        version="1",
        docs_url=None,
        description="Device registry, monitoring windows and incidents. Every "
        "/v1 call needs `Authorization: Bearer <token>` (the token "
        "file in the server's config). `X-Actor` names who acts, for "
        "the audit log.",
    )
    bearer = HTTPBearer(auto_error=False)

    def authorised(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if cred is None or not secrets.compare_digest(
            cred.credentials.encode(), ctx.token.encode()
        ):
            raise HTTPException(
                401, "a valid bearer token is needed", headers={"WWW-Authenticate": "Bearer"}
            )

    def actor(x_actor: Annotated[str | None, Header(max_length=128)] = None) -> str:
        return f"api:{x_actor}" if x_actor else "api"

    Auth = Depends(authorised)
    Actor = Annotated[str, Depends(actor)]
    _serve_docs(app)

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["ops"],
        responses={503: {"model": Health, "description": "Cannot do its job now"}},
    )
    def healthz(response: Response) -> Health:
        connected = ctx.mqtt_connected()
        try:
            depth = ctx.store.outbox_depth()
        except Exception:  # any store failure means "unavailable", nothing more
            depth = -1
        if not connected or depth < 0:
            # Load balancers and monitoring take 503 as "send nothing here".
            response.status_code = 503
            return Health(status="unavailable", mqtt_connected=connected, outbox_depth=depth)
        return Health(status="ok", mqtt_connected=connected, outbox_depth=depth)

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def metrics() -> Response:
        return Response(
            ctx.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    # -- devices -------------------------------------------------------------------------

    @app.get("/v1/devices", response_model=list[DeviceOut], dependencies=[Auth], tags=["devices"])
    def list_devices(
        zone: Annotated[str | None, Query(max_length=64)] = None,
    ) -> list[dict[str, Any]]:
        return [d.to_json() for d in ctx.store.list_devices(zone=zone)]

    @app.post(
        "/v1/devices",
        response_model=Bundle,
        status_code=201,
        dependencies=[Auth],
        tags=["devices"],
        responses={409: {"description": "UID taken"}},
    )
    def add_device(body: DeviceAdd, who: Actor) -> dict[str, Any]:
        with _errors():
            device, key = ctx.store.add_device(
                uid=body.uid,
                zone=body.zone,
                lat=body.lat,
                lon=body.lon,
                alg=ALG_A128GCM if body.alg == "A128GCM" else ALG_A256GCM,
                actor=who,
                address=body.address,
            )
            ctx.changed()
            return provisioning_bundle(ctx.config, device, key).to_json()

    @app.get(
        "/v1/devices/{uid}",
        response_model=DeviceOut,
        dependencies=[Auth],
        tags=["devices"],
        responses={404: {"description": "No such device"}},
    )
    def get_device(uid: UidPath) -> dict[str, Any]:
        with _errors():
            return ctx.store.get_device(uid).to_json()

    @app.put(
        "/v1/devices/{uid}/address",
        response_model=DeviceOut,
        dependencies=[Auth],
        tags=["devices"],
        responses={404: {"description": "No such device"}},
    )
    def set_device_address(uid: UidPath, body: DeviceAddress, who: Actor) -> dict[str, Any]:
        with _errors():
            return ctx.store.set_device_address(uid, body.address, actor=who).to_json()

    @app.post(
        "/v1/devices/{uid}/{action}",
        response_model=DeviceOut,
        dependencies=[Auth],
        tags=["devices"],
        responses={404: {"description": "No such device"}},
    )
    def device_action(
        uid: UidPath, action: Literal["activate", "deactivate", "block", "unblock"], who: Actor
    ) -> dict[str, Any]:
        assert action in DEVICE_ACTIONS
        with _errors():
            info = ctx.store.set_device_state(uid, action, actor=who)
            ctx.changed()
            return info.to_json()

    @app.delete(
        "/v1/devices/{uid}",
        status_code=204,
        dependencies=[Auth],
        tags=["devices"],
        responses={404: {"description": "No such device"}},
    )
    def delete_device(uid: UidPath, who: Actor) -> Response:
        with _errors():
            ctx.store.delete_device(uid, actor=who)
            ctx.changed()
        return Response(status_code=204)

    # -- windows ------------------------------------------------------------------------

    def zone_states(now: int) -> list[ZoneState]:
        plan = MonitoringPlan.of(ctx.store.open_windows(now), ctx.config.schedules)
        return [ZoneState(zone=z, monitored_until=plan.until(z, now)) for z in sorted(plan.zones())]

    @app.get("/v1/windows", response_model=WindowsOut, dependencies=[Auth], tags=["windows"])
    def list_windows(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> WindowsOut:
        from ._store import now_ms

        return WindowsOut(
            zones=zone_states(now_ms()),
            recent=[WindowOut(**w.to_json()) for w in ctx.store.list_windows(limit=limit)],
        )

    @app.post(
        "/v1/windows/{zone}/open",
        response_model=WindowOut,
        status_code=201,
        dependencies=[Auth],
        tags=["windows"],
        responses={400: {"description": "End in the past"}},
    )
    def open_window(zone: ZonePath, body: WindowOpen, who: Actor) -> WindowOut:
        until = body.until if body.until.tzinfo else body.until.replace(tzinfo=dt.UTC)
        with _errors():
            try:
                until_ms = int(until.timestamp() * 1000)
            except (OverflowError, ValueError):
                raise RegistryError("the window's end is out of range") from None
            w = ctx.store.open_window(zone, until=until_ms, actor=who)
            ctx.changed()
            return WindowOut(**w.to_json())

    @app.post(
        "/v1/windows/{zone}/close", response_model=Closed, dependencies=[Auth], tags=["windows"]
    )
    def close_window(zone: ZonePath, who: Actor) -> Closed:
        from ._store import now_ms

        with _errors():
            n = ctx.store.close_window(zone, actor=who)
            ctx.changed()
        now = now_ms()
        plan = MonitoringPlan.of(ctx.store.open_windows(now), ctx.config.schedules)
        return Closed(zone=zone, closed=n, monitored_until=plan.until(zone, now))

    # -- incidents and audit ------------------------------------------------------------

    @app.get(
        "/v1/incidents", response_model=list[IncidentOut], dependencies=[Auth], tags=["incidents"]
    )
    def list_incidents(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        decision: Literal["dangerous", "dismissed"] | None = None,
    ) -> list[dict[str, Any]]:
        return [i.to_json() for i in ctx.store.list_incidents(limit=limit, decision=decision)]

    @app.get(
        "/v1/incidents/{incident_id}",
        response_model=IncidentOut,
        dependencies=[Auth],
        tags=["incidents"],
        responses={404: {"description": "No such incident"}},
    )
    def get_incident(
        incident_id: Annotated[str, Path(min_length=1, max_length=64)],
    ) -> dict[str, Any]:
        try:
            return ctx.store.get_incident(incident_id).to_json()
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get(
        "/v1/incidents/{incident_id}/photo",
        dependencies=[Auth],
        tags=["incidents"],
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "No such incident"}},
    )
    def incident_photo(incident_id: Annotated[str, Path(min_length=1, max_length=64)]) -> Response:
        try:
            return Response(ctx.store.incident_photo(incident_id), media_type="image/jpeg")
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/v1/audit", response_model=list[AuditOut], dependencies=[Auth], tags=["audit"])
    def audit(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        subject: Annotated[str | None, Query(max_length=128)] = None,
    ) -> list[dict[str, Any]]:
        return [a.to_json() for a in ctx.store.audit_log(limit=limit, subject=subject)]

    @app.exception_handler(ServerError)
    async def _server_error(_request: Request, exc: ServerError) -> Response:
        return Response(str(exc), status_code=503, media_type="text/plain")

    return app


class _AdminHttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to the server process's own stop logic, not to uvicorn.
        yield


def bind_admin_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerError(
            f"admin API cannot listen on {host}:{port}: {exc.strerror}. "
            "Change [admin] port in the config, or stop what uses it"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_admin(ctx: AdminContext, stop: asyncio.Event) -> None:
    """Serve the admin API on ``[admin] host:port`` until ``stop`` is set; requests in
    flight are answered first."""
    a = ctx.config.admin
    sock = bind_admin_socket(a.host, a.port)
    config = uvicorn.Config(
        admin_app(ctx),
        log_level="warning",
        lifespan="off",
        access_log=False,
        http=request_deadline(),
    )
    http = _AdminHttpServer(config)

    async def _stop_when_asked() -> None:
        await stop.wait()
        http.should_exit = True

    stopper = asyncio.create_task(_stop_when_asked())
    try:
        await http.serve(sockets=[sock])
    finally:
        stopper.cancel()
        sock.close()
