"""The dashboard's live feed: server-sent events made from the audit trail.

Every change to an alert (received, taken, dispatched, escalated ...) writes an audit
entry, so the audit id is the feed's cursor: a browser that reconnects with
``Last-Event-ID`` misses nothing, and changes made by another ENC process sharing the
database show up too (the feed also looks on its own every ``poll_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

__all__ = ["LiveFeed", "sse_event"]


def sse_event(event: str, data: dict[str, Any], *, id: int | None = None) -> bytes:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


class LiveFeed:
    """Wakes every open event stream when something changed in this process."""

    def __init__(self, *, poll_s: float = 2.0) -> None:
        self.poll_s = poll_s
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the event streams run in (set when the app starts)."""
        self._loop = loop

    def notify(self) -> None:
        """Something changed; callable from the loop or from a worker thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is not None and running is not self._loop:
            self._loop.call_soon_threadsafe(self._wake)
        else:
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float | None = None) -> None:
        """Return after the next change, or after ``timeout`` (default ``poll_s``)."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout or self.poll_s)
