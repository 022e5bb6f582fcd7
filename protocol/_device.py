"""The device's side of the broadcast and contact phases (protocol.md section 4)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ._crypto import Cipher, message_hash
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    ClockCorrected,
    ContactTimedOut,
    Event,
    MessageDropped,
    ReportDelivered,
    ReportRefused,
    WindowAnnounced,
)
from ._messages import (
    B1Announce,
    B2Confirm,
    C1Hello,
    C2Ready,
    C3Report,
    C4Receipt,
    Coords,
    ErrorCode,
    ErrorMessage,
    MessageType,
    epoch_hash,
)
from ._receive import open_message, seal
from ._timing import Limits, Timing, backoff_delay

__all__ = ["ContactState", "DeviceConnection", "PendingReport"]


class ContactState(enum.Enum):
    IDLE = "idle"
    AWAIT_C2 = "await_c2"
    AWAIT_C4 = "await_c4"
    BACKOFF = "backoff"
    ERROR = "error"


class _Input(enum.Enum):
    START = "start_report"
    C2 = "C2"
    C4 = "C4"
    REFUSED = "error message"
    TIMEOUT = "timeout"
    RETRY = "retry"


# The contact phase as a table: (state, input) -> next state. Anything else is a
# LocalProtocolError for local inputs; remote messages out of turn are dropped.
_TRANSITIONS: dict[tuple[ContactState, _Input], ContactState] = {
    (ContactState.IDLE, _Input.START): ContactState.AWAIT_C2,
    (ContactState.AWAIT_C2, _Input.C2): ContactState.AWAIT_C4,
    (ContactState.AWAIT_C2, _Input.REFUSED): ContactState.BACKOFF,
    (ContactState.AWAIT_C2, _Input.TIMEOUT): ContactState.BACKOFF,
    (ContactState.AWAIT_C4, _Input.C4): ContactState.IDLE,
    (ContactState.AWAIT_C4, _Input.REFUSED): ContactState.BACKOFF,
    (ContactState.AWAIT_C4, _Input.TIMEOUT): ContactState.BACKOFF,
    (ContactState.BACKOFF, _Input.RETRY): ContactState.AWAIT_C2,
}


@dataclass(frozen=True, slots=True)
class PendingReport:
    """An incident the device has stored durably and must deliver."""

    cid: bytes
    """16-byte random capture id, the same across every retry."""
    coords: Coords
    """Where the device is."""
    photo: bytes
    """The JPEG snapshot."""
    score: float
    """Pre-screen score, 0.0..1.0."""
    label: str
    """"fall", "fight", "person_down" ..."""
    captured_at: int
    """Capture time, ms."""

    def __post_init__(self) -> None:
        # Build a throwaway C3 so a bad report fails here, locally, not at the server.
        try:
            C3Report(
                td=0,
                uid="x",
                tk=b"",
                cid=self.cid,
                gc=self.coords,
                pf=self.photo,
                sc=self.score,
                lb=self.label,
                at=self.captured_at,
            )
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"invalid report: {exc}") from None


class DeviceConnection:
    """One device's protocol state: broadcast epochs and one contact at a time.

    ``now`` everywhere is the device's local clock in ms; the connection adds the
    clock offset learnt from error 5 to make protocol timestamps.
    """

    _ACCEPTS = (MessageType.B1, MessageType.C2, MessageType.C4, MessageType.ERROR)

    def __init__(
        self,
        *,
        kid: bytes,
        uid: str,
        cipher: Cipher,
        random: Callable[[int], bytes],
        timing: Timing | None = None,
        limits: Limits | None = None,
        last_epoch: int = 0,
        clock_offset_ms: int = 0,
    ) -> None:
        self.kid = kid
        self.uid = uid
        self._cipher = cipher
        self._random = random
        self.timing = timing or Timing()
        self.limits = limits or Limits()
        self.last_epoch = last_epoch
        """Highest broadcast epoch accepted; persist it across restarts."""
        self.clock_offset_ms = clock_offset_ms
        """Added to the local clock for protocol timestamps; persist it too."""
        self.monitoring_until: int | None = None
        """End of the current monitoring window (protocol time), None if never told."""
        self.state = ContactState.IDLE
        self._report: PendingReport | None = None
        self._td = 0
        self._td_floor = 0
        """Highest T_D a server may hold in its replay cache: every C1 sent, but for one
        refused as out of its window (never cached), so a clock corrected backwards is
        used at once."""
        self._td_floor_before_send = 0
        self._last_sent_hash = b""
        self._deadline: int | None = None
        self._attempts = 0
        self._last_refusal: int | None = None
        self._outbox: list[bytes] = []

    # -- public API -------------------------------------------------------------------

    def protocol_time(self, now: int) -> int:
        return now + self.clock_offset_ms

    def monitoring(self, now: int) -> bool:
        """True while a monitoring window announced by the server is open."""
        return self.monitoring_until is not None and self.protocol_time(now) < self.monitoring_until

    @property
    def report(self) -> PendingReport | None:
        """The report being delivered, if any."""
        return self._report

    def start_report(self, report: PendingReport, now: int) -> None:
        """Start delivering a stored incident; queues C1."""
        self._transition(_Input.START)
        self._report = report
        self._attempts = 0
        self._send_c1(now)

    def receive(self, data: bytes, now: int) -> list[Event]:
        """Handle one message from the server. Bad messages become ``MessageDropped``."""
        self._check_not_errored()
        try:
            opened = open_message(
                data,
                role="device",
                accepts=self._ACCEPTS,
                limits=self.limits,
                key_for=lambda kid: self._cipher if kid == self.kid else None,
            )
        except RemoteProtocolError as exc:
            return [MessageDropped(exc.reason, str(exc))]
        m = opened.message
        if isinstance(m, B1Announce):
            return self._on_b1(m, opened.hash, now)
        if isinstance(m, C2Ready):
            return self._on_c2(m, now)
        if isinstance(m, C4Receipt):
            return self._on_c4(m)
        assert isinstance(m, ErrorMessage)
        return self._on_error(m, now)

    def data_to_send(self) -> list[bytes]:
        """Messages queued for the server, oldest first; the queue is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def next_timeout(self) -> int | None:
        """When ``on_timeout`` must be called next (local clock), or None."""
        return self._deadline

    def on_timeout(self, now: int) -> list[Event]:
        self._check_not_errored()
        if self._deadline is None or now < self._deadline:
            return []
        if self.state is ContactState.BACKOFF:
            self._transition(_Input.RETRY)
            self._send_c1(now)
            return []
        step = "C2" if self.state is ContactState.AWAIT_C2 else "C4"
        self._transition(_Input.TIMEOUT)
        retry_at = self._schedule_retry(now)
        assert self._report is not None
        return [ContactTimedOut(self._report.cid, step, retry_at)]

    # -- broadcast ----------------------------------------------------------------------

    def _on_b1(self, m: B1Announce, h: bytes, now: int) -> list[Event]:
        if m.ep <= self.last_epoch:
            return [self._drop("stale_epoch", f"B1 epoch {m.ep} is not above {self.last_epoch}")]
        if m.h != epoch_hash(m.ts):
            return [self._drop("bad_hash", "B1 h is not SHA-256 of T_S")]
        if not self._fresh(m.ts, now):
            return [self._drop("timestamp", "B1 T_S is outside the acceptance window")]
        if m.ts > m.tx:
            return [self._drop("plaintext", "B1 T_S is after T_X")]
        self.last_epoch = m.ep
        self.monitoring_until = m.tx
        self._outbox.append(self._seal(B2Confirm(ts=m.ts, ep=m.ep, h=h)))
        events: list[Event] = [WindowAnnounced(m.ts, m.tx, m.ep)]
        # A report refused because monitoring was off goes out again as soon as it is on.
        if (
            self.state is ContactState.BACKOFF
            and m.tx > m.ts
            and self._last_refusal == ErrorCode.FRAMEWORK_INACTIVE
        ):
            self._deadline = now
        return events

    # -- contact --------------------------------------------------------------------------

    def _send_c1(self, now: int) -> None:
        # A fresh T_D, strictly above any the server may have cached, even if the clock
        # stood still.
        self._td = max(self.protocol_time(now), self._td_floor + 1)
        self._td_floor_before_send, self._td_floor = self._td_floor, self._td
        self._attempts += 1
        c1 = self._seal(C1Hello(td=self._td, uid=self.uid))
        self._last_sent_hash = message_hash(c1)
        self._outbox.append(c1)
        self._deadline = now + self.timing.c2_timeout_ms

    def _on_c2(self, m: C2Ready, now: int) -> list[Event]:
        if self.state is not ContactState.AWAIT_C2:
            return [self._drop("unexpected", f"C2 while {self.state.value}")]
        if m.td != self._td or m.h != self._last_sent_hash:
            return [self._drop("mismatch", "C2 does not answer the C1 in flight")]
        r = self._report
        assert r is not None
        c3 = self._seal(
            C3Report(
                td=self._td,
                uid=self.uid,
                tk=m.tk,
                cid=r.cid,
                gc=r.coords,
                pf=r.photo,
                sc=r.score,
                lb=r.label,
                at=r.captured_at,
            )
        )
        self._transition(_Input.C2)
        self._last_sent_hash = message_hash(c3)
        self._outbox.append(c3)
        self._deadline = now + self.timing.c4_timeout_ms
        return []

    def _on_c4(self, m: C4Receipt) -> list[Event]:
        if self.state is not ContactState.AWAIT_C4:
            return [self._drop("unexpected", f"C4 while {self.state.value}")]
        if m.td != self._td or m.h != self._last_sent_hash:
            return [self._drop("mismatch", "C4 does not acknowledge the C3 in flight")]
        r = self._report
        assert r is not None
        self._transition(_Input.C4)
        self._report = None
        self._deadline = None
        self._last_refusal = None
        return [ReportDelivered(r.cid, m.inc)]

    def _on_error(self, m: ErrorMessage, now: int) -> list[Event]:
        awaited = {ContactState.AWAIT_C2: MessageType.C1, ContactState.AWAIT_C4: MessageType.C3}
        if awaited.get(self.state) != m.re or m.td != self._td:
            return [
                self._drop("unexpected", f"error {m.code} does not answer the message in flight")
            ]
        r = self._report
        assert r is not None
        self._transition(_Input.REFUSED)
        self._last_refusal = m.code
        events: list[Event] = []
        if m.code == ErrorCode.TIMESTAMP_OUT_OF_WINDOW:
            if m.re == MessageType.C1:
                self._td_floor = self._td_floor_before_send  # refused, so never cached
            self.clock_offset_ms = m.now - now
            events.append(ClockCorrected(self.clock_offset_ms))
            # One immediate retry with the corrected clock; later ones back off.
            retry_at = now if self._attempts <= 1 else self._schedule_retry(now)
            self._deadline = retry_at
        else:
            retry_at = self._schedule_retry(now)
        events.append(ReportRefused(r.cid, m.code, retry_at))
        return events

    # -- helpers -------------------------------------------------------------------------

    def _schedule_retry(self, now: int) -> int:
        jitter = int.from_bytes(self._random(2), "big") / 65536
        self._deadline = now + backoff_delay(self._attempts, timing=self.timing, jitter=jitter)
        return self._deadline

    def _fresh(self, ts: int, now: int) -> bool:
        return abs(ts - self.protocol_time(now)) <= self.timing.window_ms

    def _seal(self, m: B2Confirm | C1Hello | C3Report) -> bytes:
        return seal(m, cipher=self._cipher, kid=self.kid, random=self._random)

    def _drop(self, reason: str, detail: str) -> MessageDropped:
        return MessageDropped(reason, detail, self.kid)

    def _transition(self, event: _Input) -> None:
        self._check_not_errored()
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            old = self.state
            self.state = ContactState.ERROR
            raise LocalProtocolError(
                f"device {self.uid}: no transition for {event.value} in state {old.value}"
            ) from None

    def _check_not_errored(self) -> None:
        if self.state is ContactState.ERROR:
            raise LocalProtocolError(f"device {self.uid}: connection is in the error state")
