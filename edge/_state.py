"""What the daemon keeps in its state directory besides the outbox.

- ``state.json``: the protocol state that must survive a restart (the last broadcast
  epoch accepted, so an old B1 is never accepted again; the clock offset learnt from
  error 5; the end of the last monitoring window), written atomically and fsync'd on
  every change.
- ``status.json``: a snapshot of how the daemon is doing, rewritten every few seconds
  and on change, read by ``citywatch edge status`` (Ansible's health check).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from protocol import wall_clock_ms

from ._errors import EdgeError

__all__ = [
    "STATE_FILE",
    "STATUS_FILE",
    "BrokerStatus",
    "DeliveredIncident",
    "DeliveryStatus",
    "DetectionStatus",
    "ErrorNote",
    "MonitoringStatus",
    "OutboxStatus",
    "PipelineStatus",
    "ProtocolState",
    "StateError",
    "StateFile",
    "StatusBoard",
    "StatusSnapshot",
    "assess_health",
    "read_status",
    "summarize",
    "wall_ms",
    "write_atomic",
]

STATE_FILE = "state.json"
STATUS_FILE = "status.json"


class StateError(EdgeError):
    """The state directory or a file in it is unusable; the message says what to do."""


wall_ms = wall_clock_ms  # the one wall clock (ms since the epoch), under the edge's name


def write_atomic(path: Path, data: bytes, *, durable: bool, mode: int = 0o640) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a restart after a crash) sees
    either the old or the new content, never a mix. ``durable`` also fsyncs the file and
    its folder, so the new content survives a power cut once this returns."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        # The rename lives in the folder: without this fsync a power cut can undo it.
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# -- protocol state (state.json) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolState:
    """The part of ``protocol.DeviceConnection`` that outlives the process."""

    last_epoch: int = 0
    """Highest broadcast epoch accepted; a B1 at or below it is a replay."""
    clock_offset_ms: int = 0
    """Added to the local clock for protocol timestamps (learnt from error 5)."""
    monitoring_until: int | None = None
    """End of the last monitoring window announced (protocol time, ms), or None."""

    def __post_init__(self) -> None:
        if type(self.last_epoch) is not int or self.last_epoch < 0:
            raise ValueError("last_epoch must be a non-negative integer")
        if type(self.clock_offset_ms) is not int:
            raise ValueError("clock_offset_ms must be an integer")
        if self.monitoring_until is not None and type(self.monitoring_until) is not int:
            raise ValueError("monitoring_until must be an integer or null")


class StateFile:
    """``state.json`` in the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self) -> ProtocolState:
        """The saved state; the initial state if the device never saved one."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return ProtocolState()
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            return ProtocolState(**data)
        except (ValueError, TypeError) as exc:
            # Starting over at epoch 0 would accept replayed broadcasts: refuse instead.
            raise StateError(
                f"{self.path} is damaged ({exc}). It holds the last broadcast epoch and the "
                "clock offset; restore it from a backup, or delete it to start over at epoch "
                "0 (the server's next B1 is then accepted whatever its epoch)"
            ) from None

    def save(self, state: ProtocolState) -> None:
        data = json.dumps(asdict(state), sort_keys=True).encode() + b"\n"
        try:
            write_atomic(self.path, data, durable=True)
        except OSError as exc:
            raise StateError(
                f"cannot write {self.path}: {exc.strerror}: check that the state "
                "directory exists, is writable and its disk is not full"
            ) from None


# -- status (status.json) --------------------------------------------------------------


class _Part(BaseModel):
    # Readers ignore what they do not know: an older `citywatch edge status` can read the
    # file of a newer daemon.
    model_config = ConfigDict(extra="ignore", frozen=True)


class MonitoringStatus(_Part):
    active: bool = False
    """Whether a monitoring window is open now (detection runs only then)."""
    until: int | None = None
    """End of the window announced last (ms), or None if none was announced."""
    epoch: int = 0
    """Broadcast epoch of that announcement."""


class BrokerStatus(_Part):
    connected: bool = False
    """Whether the MQTT connection is up."""
    host: str = ""
    port: int = 0
    since: int | None = None
    """When the connection came up or went down (ms)."""
    last_error: str | None = None
    """Why the last connection attempt failed, or why it was lost."""


class OutboxStatus(_Part):
    depth: int = 0
    """Incidents stored and not yet delivered."""
    bytes: int = 0
    """Bytes of sealed photos stored."""
    max_incidents: int = 0
    max_bytes: int = 0
    oldest_captured_at: int | None = None
    """Capture time of the oldest incident waiting (ms)."""
    full: bool = False
    """True while new captures are refused (cap reached or disk full)."""
    refused: int = 0
    """Captures refused since the daemon started because the outbox was full."""


class DeliveryStatus(_Part):
    state: Literal["idle", "sending", "waiting", "stopped", "offline"] = "idle"
    """idle: nothing to send; sending: a contact is in flight; waiting: backing off before
    a retry; stopped: the server refused the device (errors 2, 3, 4); offline: no broker."""
    cid: str | None = None
    """Capture id (hex) of the incident being delivered."""
    attempts: int = 0
    """Attempts made for it since the daemon started."""
    next_attempt_at: int | None = None
    """When the next attempt starts (ms), while waiting or stopped."""
    stopped_reason: str | None = None
    """Why reports are stopped, in words."""


class DeliveredIncident(_Part):
    cid: str
    """Capture id, hex."""
    incident_id: str
    """The server's incident id."""
    at: int
    """When the C4 arrived (ms)."""
    c1_at: int | None = None
    """When the C1 of the attempt that succeeded went out (ms)."""


class DetectionStatus(_Part):
    label: str
    score: float
    at: int


class PipelineStatus(_Part):
    """Filled by the capture and pre-screen pipeline."""

    last_frame_at: int | None = None
    fps: float | None = None
    last_detection: DetectionStatus | None = None


class ErrorNote(_Part):
    at: int
    message: str


class StatusSnapshot(_Part):
    """The content of ``status.json``."""

    version: int = 1
    updated_at: int = 0
    """When the daemon wrote this (ms); a stale file means a stuck or dead daemon."""
    started_at: int = 0
    pid: int = 0
    uid: str = ""
    kid_hex: str = ""
    zone: str = ""
    monitoring: MonitoringStatus = MonitoringStatus()
    broker: BrokerStatus = BrokerStatus()
    outbox: OutboxStatus = OutboxStatus()
    delivery: DeliveryStatus = DeliveryStatus()
    last_delivered: DeliveredIncident | None = None
    clock_offset_ms: int = 0
    pipeline: PipelineStatus = PipelineStatus()
    last_error: ErrorNote | None = None
    problems: tuple[str, ...] = ()
    """Conditions a person must act on (outbox full, device blocked ...), in words."""
    summary: str = ""
    """One line for systemd's STATUS= and the journal."""


def _clock(ms: int | None) -> str:
    if ms is None:
        return "never"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def summarize(s: StatusSnapshot) -> str:
    """One line a person can read: the most urgent problem first."""
    parts: list[str] = list(s.problems[:1])
    if s.monitoring.active:
        parts.append(f"monitoring until {_clock(s.monitoring.until)}")
    else:
        parts.append("idle (no monitoring window)")
    parts.append("broker connected" if s.broker.connected else "broker unreachable")
    parts.append(f"outbox {s.outbox.depth} waiting" + (" (FULL)" if s.outbox.full else ""))
    if s.delivery.state == "stopped" and s.delivery.stopped_reason and not s.problems:
        parts.append(s.delivery.stopped_reason)
    return "; ".join(parts)


class StatusBoard:
    """The daemon's live status. Any thread updates it; ``keep_written`` writes it to
    ``status.json`` on change and every ``interval_s`` (the heartbeat the health check
    looks at)."""

    def __init__(
        self, path: Path, initial: StatusSnapshot, *, clock: Callable[[], int] = wall_ms
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = initial
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def snapshot(self) -> StatusSnapshot:
        with self._lock:
            return self._snapshot

    def update(self, **changes: Any) -> None:
        """Replace top-level fields (``outbox=OutboxStatus(...)``, ``problems=(...)``)."""
        with self._lock:
            new = self._snapshot.model_copy(update=changes)
            if new == self._snapshot:
                return
            self._snapshot = new
            loop, changed = self._loop, self._changed
        if loop is not None and changed is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(changed.set)

    def write(self) -> StatusSnapshot:
        """Stamp and write ``status.json`` now."""
        with self._lock:
            s = self._snapshot.model_copy(update={"updated_at": self._clock()})
            s = s.model_copy(update={"summary": summarize(s)})
            self._snapshot = s
        # Rewritten every few seconds: atomic (never half-written) but not fsync'd, which
        # would wear the SD card for a file that is stale after a power cut anyway.
        write_atomic(
            self.path, s.model_dump_json(indent=2).encode() + b"\n", durable=False, mode=0o644
        )
        return s

    async def keep_written(
        self, stop: asyncio.Event, *, interval_s: float, debounce_s: float = 0.2
    ) -> None:
        """Write on every change (at most every ``debounce_s``) and every ``interval_s``,
        until ``stop`` is set; write once more at the end."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    self.write()
                except OSError as exc:
                    # A full disk must not stop the daemon; the health check sees the stale
                    # file and says so.
                    with self._lock:
                        self._snapshot = self._snapshot.model_copy(
                            update={
                                "last_error": ErrorNote(
                                    at=self._clock(), message=f"cannot write {self.path}: {exc}"
                                )
                            }
                        )
                self._changed.clear()
                waits = [
                    asyncio.ensure_future(self._changed.wait()),
                    asyncio.ensure_future(stop.wait()),
                ]
                try:
                    await asyncio.wait(
                        waits, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for w in waits:
                        w.cancel()
                if not stop.is_set():
                    await asyncio.sleep(debounce_s)
        finally:
            with contextlib.suppress(OSError):
                self.write()
            self._loop = self._changed = None


def read_status(path: Path) -> StatusSnapshot:
    """Read ``status.json``; ``StateError`` saying why if it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise StateError(
            f"{path} does not exist: the daemon has not run with this state "
            "directory (is citywatch-edge started? is the path right?)"
        ) from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return StatusSnapshot.model_validate_json(raw)
    except ValidationError as exc:
        raise StateError(f"{path} is not a status file: {exc.errors()[0]['msg']}") from None


def assess_health(
    s: StatusSnapshot, *, now: int, max_age_s: float, require_broker: bool = False
) -> list[str]:
    """Why the daemon does not look healthy; empty when it does."""
    reasons = []
    age = (now - s.updated_at) / 1000
    if age > max_age_s:
        reasons.append(
            f"the status file was last written {age:.0f} s ago (limit {max_age_s:g} "
            "s): the daemon is stopped, stuck or cannot write its state directory"
        )
    if require_broker and not s.broker.connected:
        why = f" ({s.broker.last_error})" if s.broker.last_error else ""
        reasons.append(f"not connected to the broker {s.broker.host}:{s.broker.port}{why}")
    return reasons
