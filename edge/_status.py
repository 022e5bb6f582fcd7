"""The pole's status board, owned by the daemon.

Each part of the daemon reports its own part of ``status.json``: the protocol client the
delivery policy's view and the broker link, the outbox its fill and refusals, the capture
pipeline its frames and detections. Problems (what a person must act on) are kept by
kind, oldest first, so the most lasting one leads the summary line. ``StatusBoard``
(``_state``) writes the file; any thread may report.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._delivery import DeliveryView
from ._outbox import Outbox, OutboxError, OutboxFull
from ._state import (
    STATUS_FILE,
    BrokerStatus,
    DeliveredIncident,
    DeliveryStatus,
    ErrorNote,
    MonitoringStatus,
    OutboxStatus,
    StatusBoard,
    StatusSnapshot,
    summarize,
    wall_ms,
)

if TYPE_CHECKING:
    from protocol import Coords

__all__ = ["PoleStatus", "store_incident"]

log = logging.getLogger("citywatch.edge")

_DELIVERY_PROBLEMS = ("refused", "payload", "delete")


class PoleStatus:
    """What ``status.json`` says, put together from the parts that report into it."""

    def __init__(self, board: StatusBoard, *, clock: Callable[[], int] = wall_ms) -> None:
        self.board = board
        self._clock = clock
        self._lock = threading.Lock()  # the capture thread reports too
        self._problems: dict[str, str] = {}  # kind -> what to do, in words
        self._outbox_refusal: str | None = None

    @classmethod
    def in_state_dir(
        cls,
        state_dir: Path,
        *,
        uid: str,
        kid_hex: str,
        zone: str = "",
        clock: Callable[[], int] = wall_ms,
    ) -> PoleStatus:
        """A fresh status for a daemon starting now, written to ``<state_dir>/status.json``."""
        initial = StatusSnapshot(
            started_at=clock(), pid=os.getpid(), uid=uid, kid_hex=kid_hex, zone=zone
        )
        return cls(StatusBoard(Path(state_dir) / STATUS_FILE, initial, clock=clock), clock=clock)

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> StatusSnapshot:
        return self.board.snapshot()

    @property
    def line(self) -> str:
        """One line for systemd's STATUS=."""
        return summarize(self.board.snapshot())

    # -- reporting -------------------------------------------------------------------------

    def update(self, **changes: Any) -> None:
        """Replace top-level fields (``pipeline=PipelineStatus(...)``)."""
        self.board.update(**changes)

    def set_problem(self, kind: str, words: str | None) -> None:
        with self._lock:
            self._set_problem(kind, words)
            self.board.update(problems=tuple(self._problems.values()))

    def note_error(self, message: str) -> None:
        self.board.update(last_error=ErrorNote(at=self._clock(), message=message))

    def capture_refused(self, message: str) -> None:
        """A capture was refused (``OutboxFull``): say what to do while it lasts."""
        with self._lock:
            self._outbox_refusal = message
        self.note_error(message)

    def show_outbox(self, outbox: Outbox) -> None:
        with self._lock:
            try:
                u = outbox.usage()
            except OutboxError as exc:
                self._set_problem("outbox", str(exc))  # the last figures stay shown
            else:
                self.board.update(
                    outbox=OutboxStatus(
                        depth=u.depth,
                        bytes=u.bytes,
                        max_incidents=u.max_incidents,
                        max_bytes=u.max_bytes,
                        oldest_captured_at=u.oldest_captured_at,
                        full=u.refusing,
                        refused=u.refused,
                    )
                )
                self._set_problem("outbox", self._outbox_refusal if u.refusing else None)
                if u.damaged:
                    self._set_problem(
                        "damaged",
                        (
                            f"{u.damaged} stored incident(s) cannot be opened with the device key "
                            f"and will not be delivered; see {outbox.path}"
                        ),
                    )
            self.board.update(problems=tuple(self._problems.values()))

    def show_delivery(self, view: DeliveryView) -> None:
        told = dict(view.problems)
        with self._lock:
            for kind in _DELIVERY_PROBLEMS:
                self._set_problem(kind, told.get(kind))
            last = view.last_delivered
            self.board.update(
                monitoring=MonitoringStatus(
                    active=view.monitoring, until=view.monitoring_until, epoch=view.epoch
                ),
                delivery=DeliveryStatus(
                    state=view.state,
                    cid=view.cid.hex() if view.cid else None,
                    attempts=view.attempts,
                    next_attempt_at=view.next_attempt_at,
                    stopped_reason=view.stopped_reason,
                ),
                last_delivered=None
                if last is None
                else DeliveredIncident(
                    cid=last.cid.hex(), incident_id=last.incident_id, at=last.at, c1_at=last.c1_at
                ),
                clock_offset_ms=view.clock_offset_ms,
                problems=tuple(self._problems.values()),
            )

    def show_broker(self, broker: BrokerStatus) -> None:
        self.board.update(broker=broker)

    async def keep_written(self, stop: asyncio.Event, *, interval_s: float) -> None:
        """Write ``status.json`` on change and every ``interval_s`` until ``stop``."""
        await self.board.keep_written(stop, interval_s=interval_s)

    def _set_problem(self, kind: str, words: str | None) -> None:
        if words is None:
            self._problems.pop(kind, None)
        else:
            self._problems[kind] = words


def store_incident(
    outbox: Outbox,
    status: PoleStatus,
    *,
    photo: bytes,
    coords: Coords,
    score: float,
    label: str,
    captured_at: int,
) -> bytes:
    """Store a capture durably and show it on the status; return its capture id.

    ``OutboxFull`` / ``OutboxDiskFull`` (nothing stored) and ``IncidentRejected``
    propagate after the status says so. Callable from any thread.
    """
    try:
        return outbox.add(
            photo=photo, coords=coords, score=score, label=label, captured_at=captured_at
        )
    except OutboxFull as exc:
        status.capture_refused(str(exc))
        log.error("%s", exc)
        raise
    finally:
        status.show_outbox(outbox)
