"""A deadline per HTTP request, below the ASGI application (which only sees a request
once its headers are complete, and cannot see a client that never finishes them)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["REQUEST_TIMEOUT_S", "RequestDeadline", "request_deadline"]

REQUEST_TIMEOUT_S = 15.0
"""From a connection's first byte (or the end of its previous response) to the last byte
of the request: room for a 2 MiB photo over a slow link, not for a slow-loris."""

_RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


class RequestDeadline(H11Protocol):
    """uvicorn's h11 protocol; a request not wholly received in time closes the
    connection. Responses (an event stream, a big download) are not limited."""

    timeout_s: ClassVar[float] = REQUEST_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state in _RECEIVED:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline
            if self.conn.their_state in _RECEIVED:  # a pipelined one already arrived
                self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            where = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            self.logger.info(
                "request from %s not received within %.0f s: connection closed",
                where,
                self.timeout_s,
            )
            self.transport.close()


def request_deadline(timeout_s: float = REQUEST_TIMEOUT_S) -> type[RequestDeadline]:
    """The protocol class for ``uvicorn.Config(http=...)`` with a deadline of ``timeout_s``."""
    return type("RequestDeadline", (RequestDeadline,), {"timeout_s": timeout_s})
