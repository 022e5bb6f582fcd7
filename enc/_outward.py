"""What the dispatch world reads from the ENC: the CAP Atom feed and its messages (an
operator's login, or the feed's bearer token), the photo of a sent CAP message (its
token alone), and an alert as an EIDO (an operator's login)."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from ._delivery import CAP_CONTENT_TYPE, CapOutbox, atom_feed
from ._eido import eido_incident
from ._errors import ConfigError, NotFound
from ._linked import linked_photo
from ._web import SESSION_COOKIE, WebContext, filename

__all__ = ["outward_routes", "read_secret"]


def read_secret(path: str, what: str) -> str:
    """The first line of a secret's file (mode 0600 or stricter)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {p}: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"{what}: {p} is readable by others; run chmod 600 {p}")
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not line:
        raise ConfigError(f"{what}: {p} is empty")
    return line


def outward_routes(ctx: WebContext, outbox: CapOutbox) -> APIRouter:
    r = APIRouter()
    feed_token = (
        read_secret(ctx.config.cap.feed_token_file, "cap.feed_token_file")
        if ctx.config.cap.feed_token_file
        else ""
    )

    def may_read(request: Request, authorization: str | None) -> bool:
        if (
            feed_token
            and authorization
            and authorization.startswith("Bearer ")
            and hmac.compare_digest(authorization[7:].strip().encode(), feed_token.encode())
        ):
            return True
        return (
            ctx.operators.session(request.cookies.get(SESSION_COOKIE), now=ctx.clock()) is not None
        )

    def base(request: Request) -> str:
        return ctx.config.cap.public_url.rstrip("/") or str(request.base_url).rstrip("/")

    @r.get("/cap/feed.atom", include_in_schema=False)
    def feed(
        request: Request,
        authorization: str | None = Header(None, max_length=500),
        limit: int = Query(50, ge=1, le=500),
    ) -> Response:
        if not may_read(request, authorization):
            return JSONResponse(
                {"error": "log in first"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="cap"'},
            )
        body = atom_feed(
            outbox.messages(limit=limit),
            base_url=base(request),
            sender=ctx.config.cap.sender,
            title=ctx.config.cap.sender_name,
            now=ctx.clock(),
        )
        return Response(
            body,
            media_type="application/atom+xml; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    @r.get("/cap/messages/{identifier}.xml", include_in_schema=False)
    def message(
        request: Request, identifier: str, authorization: str | None = Header(None, max_length=500)
    ) -> Response:
        if not may_read(request, authorization):
            return JSONResponse(
                {"error": "log in first"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="cap"'},
            )
        try:
            m = outbox.message(identifier[:128])
        except NotFound:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(
            m.xml,
            media_type=f"{CAP_CONTENT_TYPE}; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    def viewed(incident_id: str, jpeg: bytes, detail: dict[str, str]) -> Response:
        """A photo a CAP recipient fetched: audited (live on the desks' pages), not cached."""
        ctx.store.append_audit(
            at=ctx.clock(),
            actor="cap-recipient",
            action="photo_viewed",
            incident_id=incident_id,
            detail=detail,
        )
        ctx.feed.notify()
        return Response(
            jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store, private"}
        )

    @r.get("/cap/photo/{incident_id}.jpg", include_in_schema=False)
    def photo(incident_id: str, token: str = Query("", max_length=80)) -> Response:
        # The same answer for a wrong token, an expired one and an unknown alert.
        if not outbox.check_photo_token(incident_id, token, now=ctx.clock()):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        try:
            jpeg = ctx.store.photo(incident_id)
        except NotFound:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        return viewed(incident_id, jpeg, {"view": "cap"})

    @r.get("/cap/photo/{incident_id}/{report_id}.jpg", include_in_schema=False)
    def report_photo(
        incident_id: str, report_id: str, token: str = Query("", max_length=80)
    ) -> Response:
        # A linked report's photo, named in the CAP Update about it; as forbidding as above.
        if not outbox.check_photo_token(incident_id, token, now=ctx.clock(), report_id=report_id):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        try:
            jpeg = linked_photo(ctx.store, incident_id, report_id)
        except NotFound:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        return viewed(incident_id, jpeg, {"view": "cap", "report": report_id})

    @r.get("/alerts/{incident_id}/eido.json", include_in_schema=False)
    def eido(request: Request, incident_id: str) -> Response:
        s = ctx.session(request, api=False)
        try:
            a = ctx.store.alert(incident_id)
        except NotFound:
            return JSONResponse({"error": "not found"}, status_code=404)
        doc = eido_incident(a, ctx.store.audit_trail(incident_id), ctx.config.cap)
        ctx.store.append_audit(
            at=ctx.clock(),
            actor=s.operator.username,
            action="eido_exported",
            incident_id=incident_id,
        )
        return Response(
            json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
            media_type="application/json",
            headers={
                "Cache-Control": "no-store",
                "Content-Disposition": f'inline; filename="{filename(incident_id)}.eido.json"',
            },
        )

    return r
