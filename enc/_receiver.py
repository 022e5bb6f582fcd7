"""``POST /v1/alerts``: N1 in, N2 out (protocol.md section 5); ``POST /v1/reports`` (N3)
and ``POST /v1/poles`` (N4), the extensions of docs/protocol.md, likewise.

The body is read with a limit before anything else happens; the protocol core
(``protocol.EncEndpoint``, with its replay cache) checks the message; a valid alert is
stored durably and only then answered with its N2. Every refusal is a 4xx with a bare
status phrase: what was wrong goes to the log, never to the peer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio.to_thread
from fastapi import APIRouter, Request, Response

import protocol as p

from ._errors import StoreError
from ._linked import record_linked_report
from ._poles import record_pole_address
from ._store import AlertStore

__all__ = ["COSE_CONTENT_TYPE", "AlertReceiver"]

COSE_CONTENT_TYPE = 'application/cose; cose-type="cose-encrypt0"'

log = logging.getLogger("citywatch.enc")

# MessageDropped.reason -> HTTP status. Anything not listed is a plain 400.
_Opened = TypeVar("_Opened", p.AlertReceived, p.LinkedReportReceived, p.PoleAddressReceived)

_STATUS = {
    "too_large": 413,
    "unknown_kid": 401,
    "auth": 401,
    "replay": 409,
    # The replay cache is full of live entries: refusing (and letting the server
    # retry) is safer than forgetting an entry early.
    "replay_cache_full": 429,
}
_PHRASES = {
    400: "bad request",
    401: "unauthorized",
    409: "conflict",
    413: "too large",
    415: "unsupported media type",
    429: "too many requests",
    503: "retry later",
}


class _TooLarge(Exception):
    pass


class _BadLength(Exception):
    pass


def _refuse(status: int) -> Response:
    return Response(_PHRASES[status] + "\n", status_code=status, media_type="text/plain")


def _is_cose_encrypt0(content_type: str | None) -> bool:
    if not content_type:
        return False
    media, *params = (part.strip() for part in content_type.split(";"))
    if media.lower() != "application/cose":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if (
            name.strip().lower() == "cose-type"
            and value.strip().strip('"').lower() != "cose-encrypt0"
        ):
            return False
    return True


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _BadLength
        if int(declared) > limit:
            raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


class AlertReceiver:
    """The alert endpoint: an ``EncEndpoint`` and an ``AlertStore`` behind one route.

    ``on_stored`` (if given) is awaited after a new alert is stored: the dashboard's
    live feed wakes up on it.
    """

    def __init__(
        self,
        *,
        endpoint: p.EncEndpoint,
        store: AlertStore,
        max_body: int,
        clock: Callable[[], int] | None = None,
        on_stored: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.store = store
        self.max_body = max_body
        self._clock = clock or p.wall_clock_ms
        self._on_stored = on_stored
        self.router = APIRouter()
        self.router.add_api_route(
            "/v1/alerts", self.post_alert, methods=["POST"], include_in_schema=False
        )
        self.router.add_api_route(
            "/v1/reports", self.post_report, methods=["POST"], include_in_schema=False
        )
        self.router.add_api_route(
            "/v1/poles", self.post_address, methods=["POST"], include_in_schema=False
        )

    async def _open(
        self,
        request: Request,
        kind: str,
        receive: Callable[[bytes, int], list[p.Event]],
        wanted: type[_Opened],
    ) -> tuple[_Opened, int] | Response:
        """The checks every ``/v1`` message gets (media type, size, then the core's):
        the event it gave and the time it was opened at, or the refusal to answer."""
        peer = request.client.host if request.client else "?"
        if not _is_cose_encrypt0(request.headers.get("content-type")):
            log.info(
                "%s refused from %s: content type %r",
                kind,
                peer,
                request.headers.get("content-type"),
            )
            return _refuse(415)
        try:
            body = await _read_limited(request, self.max_body)
        except _TooLarge:
            log.info("%s refused from %s: body over %d bytes", kind, peer, self.max_body)
            return _refuse(413)
        except _BadLength:
            return _refuse(400)
        now = self._clock()
        events = receive(body, now)
        opened = next((e for e in events if isinstance(e, wanted)), None)
        if opened is None:
            dropped = next((e for e in events if isinstance(e, p.MessageDropped)), None)
            reason = dropped.reason if dropped else "unknown"
            kid = dropped.kid.hex() if dropped and dropped.kid else "-"
            detail = dropped.detail if dropped else ""
            log.info("%s refused from %s kid %s: %s (%s)", kind, peer, kid, reason, detail)
            return _refuse(_STATUS.get(reason, 400))
        return opened, now

    async def post_address(self, request: Request) -> Response:
        """N4 in, N2 out (docs/protocol.md, "N4, a pole's street address")."""
        # An N4 is a small message: the envelope check refuses more than 1 KiB.
        opened = await self._open(
            request, "N4", self.endpoint.receive_address, p.PoleAddressReceived
        )
        if isinstance(opened, Response):
            return opened
        entry, now = opened
        try:
            changed = await anyio.to_thread.run_sync(
                lambda: record_pole_address(self.store, entry, received_at=now)
            )
        except StoreError as exc:
            log.error("address of device %s not stored: %s", entry.device_uid, exc)
            return _refuse(503)
        log.info(
            "address of device %s from server %s: %s",
            entry.device_uid,
            entry.server_kid.hex(),
            "stored" if changed else "not newer than the one kept",
        )
        n2 = self.endpoint.address_receipt(entry, self._clock())
        return Response(n2, status_code=200, media_type=COSE_CONTENT_TYPE)

    async def post_report(self, request: Request) -> Response:
        """N3 in, N2 out (docs/protocol.md, "N3, a linked report")."""
        opened = await self._open(
            request, "N3", self.endpoint.receive_report, p.LinkedReportReceived
        )
        if isinstance(opened, Response):
            return opened
        report, now = opened
        try:
            how, new = await anyio.to_thread.run_sync(
                lambda: record_linked_report(self.store, report, received_at=now)
            )
        except StoreError as exc:
            log.error(
                "report %s (joins %s) not stored: %s", report.report_id, report.incident_id, exc
            )
            return _refuse(503)
        log.info(
            "report %s joining alert %s from server %s: %s",
            report.report_id,
            report.incident_id,
            report.server_kid.hex(),
            ("stored as its own alert" if how == "own" else "linked") if new else "already stored",
        )
        if new and self._on_stored is not None:
            await self._on_stored(report.incident_id if how == "linked" else report.report_id)
        n2 = self.endpoint.report_receipt(report, self._clock())
        return Response(n2, status_code=200, media_type=COSE_CONTENT_TYPE)

    async def post_alert(self, request: Request) -> Response:
        """N1 in, N2 out."""
        opened = await self._open(request, "N1", self.endpoint.receive, p.AlertReceived)
        if isinstance(opened, Response):
            return opened
        alert, now = opened
        try:
            new = await anyio.to_thread.run_sync(
                lambda: self.store.record_alert(alert, received_at=now)
            )
        except StoreError as exc:
            # Not stored, so no N2: the server keeps the alert in its outbox and retries
            # with a fresh N1.
            log.error("alert %s not stored: %s", alert.incident_id, exc)
            return _refuse(503)
        log.info(
            "alert %s from server %s: %s",
            alert.incident_id,
            alert.server_kid.hex(),
            "stored" if new else "already stored",
        )
        if new and self._on_stored is not None:
            await self._on_stored(alert.incident_id)
        n2 = self.endpoint.receipt(alert, self._clock())
        return Response(n2, status_code=200, media_type=COSE_CONTENT_TYPE)
