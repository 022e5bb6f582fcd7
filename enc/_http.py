"""HTTP hardening for every answer of the ENC: security headers (a strict
Content-Security-Policy that allows nothing from elsewhere, a configured tile server
excepted) and request bodies limited while read. Pure ASGI, so that event streams are
not buffered."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HttpHardening"]


class _BodyTooLarge(Exception):
    pass


class HttpHardening:
    """Security headers on every answer; request bodies limited while read (the alert
    endpoint has its own, larger limit)."""

    def __init__(
        self, app: ASGIApp, *, max_body: int, exempt: frozenset[str], img_src: str = "'self' data:"
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.exempt = exempt
        csp = (
            "default-src 'none'; script-src 'self'; style-src 'self'; "
            f"img-src {img_src}; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
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
                message["headers"] = [
                    *message.get("headers", []),
                    *(h for h in self.headers if h[0] not in names),
                ]
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
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
