"""The delivery policy: which stored incident goes out next, and when. No I/O, no clock.

``DeliveryPolicy`` wraps the protocol core (``protocol.DeviceConnection``, which does one
contact: C1, C2, C3, C4, its timeouts and back-off) with what a pole adds on top: the
outbox order, what each refusal means, and the broker coming and going. Like h11, it is
driven by inputs that carry the current time and answers with actions for its adapter
(``edge._client.ProtocolClient``) to carry out:

    inputs                                      actions (``next_action()``)
    connected(now), disconnected(now)           LoadNext(exclude)  -> incident_loaded(...)
    receive(data, now)  (B1, C2, C4, error)     Publish(data)      the next uplink message
    on_timeout(now)     at next_timeout()       SaveState(state)   before any Publish after it
    incident_loaded(report | None, now)         DeleteIncident(cid) -> incident_deleted(cid)
    incident_deleted(cid)                                      or deletion_failed(...)
    deletion_failed(cid, why, now)              NoteAttempt(cid, why)
    incident_stored(now), load_failed(now)

``now`` is the local clock in ms; the core adds the offset learnt from error 5 for
protocol timestamps. What the server's answers mean (docs/edge.md):

- C4: the incident is deleted (``DeleteIncident``); the next one starts.
- error 5: the clock offset is corrected (persisted) and the contact retried at once.
- errors 2, 3, 4: reports stop until the next B1 or ``backoff_max``.
- error 8: that incident waits ``backoff_max`` while the next ones go out.
- no C2 / C4 in time, errors 1, 6, 7, 9: retry, same capture id, backing off.
- broker gone: the contact in flight is abandoned, started over after reconnecting.

Nothing is ever dropped: an incident leaves the outbox only after its C4.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from protocol import (
    Cipher,
    ClockCorrected,
    ContactState,
    ContactTimedOut,
    DeviceConnection,
    ErrorCode,
    Event,
    Limits,
    MessageDropped,
    MessageType,
    PendingReport,
    RemoteProtocolError,
    ReportDelivered,
    ReportRefused,
    Timing,
    WindowAnnounced,
    decode_envelope,
)

from ._state import ProtocolState

__all__ = [
    "DELETE_RETRY_MS",
    "Action",
    "DeleteIncident",
    "Delivered",
    "DeliveryPolicy",
    "DeliveryView",
    "LoadNext",
    "NoteAttempt",
    "Publish",
    "SaveState",
    "refusal_reason",
]

log = logging.getLogger("citywatch.edge.delivery")

#: A deletion that failed (full disk) is tried again this often, in ms.
DELETE_RETRY_MS = 5_000

_STOPPING_CODES = (
    ErrorCode.DEVICE_INACTIVE,
    ErrorCode.DEVICE_BLOCKED,
    ErrorCode.FRAMEWORK_INACTIVE,
)


def refusal_reason(code: int) -> str:
    """What a refusal means for the pilot engineer, and what to do."""
    reasons: dict[int, str] = {
        ErrorCode.UID_MISMATCH: "the server says this device's UID does not match its key "
        "(error 1): check uid in the device config against the "
        "registry",
        ErrorCode.DEVICE_INACTIVE: "reports stopped: the server has this device deactivated "
        "(error 2); an operator must activate it",
        ErrorCode.DEVICE_BLOCKED: "reports stopped: the server has blocked this device "
        "(error 3), e.g. after too many false alarms; an operator "
        "must unblock it",
        ErrorCode.FRAMEWORK_INACTIVE: "reports held: no monitoring window is open for this "
        "device (error 4); they go out when the next one opens",
        ErrorCode.TIMESTAMP_OUT_OF_WINDOW: "the device clock was off (error 5); corrected",
        ErrorCode.REPLAY: "the server saw this T_D before (error 6); retrying",
        ErrorCode.TICKET_INVALID: "the contact ticket expired (error 7); retrying",
        ErrorCode.PAYLOAD_REJECTED: "the server refused an incident's content (error 8)",
        ErrorCode.RATE_LIMITED: "the server rate-limits this device (error 9); backing off",
    }
    return reasons.get(code, f"the server refused a report with error {code}")


# -- actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Send one message to the server (``<prefix>/<kid>/up``), in order."""

    data: bytes
    """The sealed message."""
    type: int
    """Its message type (``protocol.MessageType``), read from the envelope."""


@dataclass(frozen=True, slots=True)
class SaveState:
    """Persist the protocol state (``state.json``) before anything after it is sent."""

    state: ProtocolState
    """What to write."""


@dataclass(frozen=True, slots=True)
class LoadNext:
    """Read the oldest stored incident not in ``exclude``; answer ``incident_loaded``."""

    exclude: frozenset[bytes]
    """Capture ids to pass over (waiting after error 8, delivered but not yet deleted)."""


@dataclass(frozen=True, slots=True)
class DeleteIncident:
    """Delete a delivered incident from the outbox; answer ``incident_deleted``, or
    ``deletion_failed`` if it could not be done."""

    cid: bytes
    """Its capture id."""


@dataclass(frozen=True, slots=True)
class NoteAttempt:
    """Count a failed delivery attempt in the outbox, with why (best effort)."""

    cid: bytes
    """Capture id of the incident."""
    why: str
    """What went wrong, in words."""


Action = Publish | SaveState | LoadNext | DeleteIncident | NoteAttempt


# -- what the status shows -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """The last incident the server confirmed."""

    cid: bytes
    """Its capture id."""
    incident_id: str
    """The server's incident id (from the C4)."""
    at: int
    """When the C4 arrived (local clock, ms)."""
    c1_at: int | None
    """When the C1 of the attempt that succeeded went out (ms)."""


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """How delivery stands, for the status board."""

    state: Literal["idle", "sending", "waiting", "stopped", "offline"]
    """idle, sending (a contact in flight), waiting (backing off), stopped (errors 2, 3,
    4), offline (no broker)."""
    cid: bytes | None
    """The incident being delivered."""
    attempts: int
    """Attempts made for it."""
    next_attempt_at: int | None
    """When the next attempt starts (ms), while waiting or stopped."""
    stopped_reason: str | None
    """Why reports are stopped, in words."""
    monitoring: bool
    """Whether a monitoring window is open now."""
    monitoring_until: int | None
    """End of the last window announced (protocol time, ms)."""
    epoch: int
    """The last broadcast epoch accepted."""
    clock_offset_ms: int
    """Added to the local clock for protocol timestamps."""
    last_delivered: Delivered | None
    """The last C4."""
    problems: tuple[tuple[str, str], ...]
    """(kind, words) of what a person must act on: "refused", "payload", "delete"."""


@dataclass(frozen=True, slots=True)
class _Stop:
    code: int
    reason: str
    resume_at: int


class DeliveryPolicy:
    """The pole's delivery of stored incidents, one at a time, oldest first."""

    def __init__(
        self,
        *,
        kid: bytes,
        uid: str,
        cipher: Cipher,
        random: Callable[[int], bytes],
        timing: Timing | None = None,
        limits: Limits | None = None,
        state: ProtocolState | None = None,
    ) -> None:
        self.kid = kid
        self.uid = uid
        self.timing = timing or Timing()
        self.limits = limits or Limits()
        self._cipher = cipher
        self._random = random
        self._saved = state or ProtocolState()
        self._conn = self._new_connection(self._saved)
        self._actions: deque[Action] = deque()
        self._connected = False
        self._loading = False
        self._current: PendingReport | None = None
        self._attempts = 0
        self._c1_at: int | None = None
        self._stop: _Stop | None = None
        self._deferred: dict[bytes, int] = {}  # cid -> not before (ms), after error 8
        self._undeleted: set[bytes] = set()  # delivered, not yet known deleted
        self._delete_retry_at: int | None = None
        self._next_attempt_at: int | None = None
        self._last_delivered: Delivered | None = None
        self._problems: dict[str, str] = {}

    # -- inputs ---------------------------------------------------------------------------

    def connected(self, now: int) -> None:
        """The broker connection is up (subscribed, "online" said)."""
        self._connected = True
        self._step(now)

    def disconnected(self, now: int) -> None:
        """The broker connection is down: what was in flight is probably lost."""
        self._connected = False
        if self._conn.state is not ContactState.IDLE:
            self._abandon_contact()
        self._step(now)

    def receive(self, data: bytes, now: int) -> list[Event]:
        """One message from the server (B1, C2, C4, error); the core's events."""
        events = self._conn.receive(data, now)
        self._handle(events, now)
        return events + self._step(now)

    def on_timeout(self, now: int) -> list[Event]:
        """Fire whatever is due by ``now`` (call at ``next_timeout()``; early is harmless)."""
        return self._step(now)

    def incident_stored(self, now: int) -> None:
        """An incident was added to the outbox: look again."""
        self._step(now)

    def incident_loaded(self, report: PendingReport | None, now: int) -> None:
        """The answer to ``LoadNext``: the oldest incident, or None when there is none."""
        self._loading = False
        if report is None or not self._may_start():
            return
        if report.cid in self._undeleted or report.cid in self._deferred:
            return
        if self._current is None or self._current.cid != report.cid:
            self._attempts = 0
        self._current = report
        self._attempts += 1
        self._conn.start_report(report, now)
        log.info(
            "delivering incident %s (%s, captured at %d), attempt %d",
            report.cid.hex(),
            report.label,
            report.captured_at,
            self._attempts,
        )
        self._flush(now)

    def load_failed(self, now: int) -> None:
        """``LoadNext`` could not be carried out (the outbox is unusable); try later."""
        self._loading = False

    def incident_deleted(self, cid: bytes) -> None:
        """``DeleteIncident`` was carried out (or the incident was not stored)."""
        self._undeleted.discard(cid)
        if not self._undeleted:
            self._problems.pop("delete", None)
            self._delete_retry_at = None

    def deletion_failed(self, cid: bytes, why: str, now: int) -> None:
        """``DeleteIncident`` failed (a full disk): the incident stays aside (never sent
        again) and its deletion is tried again in ``DELETE_RETRY_MS``."""
        self._undeleted.add(cid)
        self._problems["delete"] = why
        if self._delete_retry_at is None:
            self._delete_retry_at = now + DELETE_RETRY_MS

    # -- outputs --------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        """The next thing to do, oldest first; None when there is nothing."""
        return self._actions.popleft() if self._actions else None

    def next_timeout(self) -> int | None:
        """When ``on_timeout`` must be called next (local clock, ms), or None."""
        moments = [
            t
            for t in (
                self._conn.next_timeout() if self._connected else None,
                self._stop.resume_at if self._stop else None,
                min(self._deferred.values(), default=None),
                self._delete_retry_at,
            )
            if t is not None
        ]
        return min(moments, default=None)

    def monitoring(self, now: int) -> bool:
        """True while a monitoring window announced by the server is open."""
        return self._conn.monitoring(now)

    @property
    def monitoring_until(self) -> int | None:
        """End of the last window announced (protocol time, ms)."""
        return self._conn.monitoring_until

    @property
    def state(self) -> ProtocolState:
        """The part that outlives the process (``state.json``)."""
        c = self._conn
        return ProtocolState(
            last_epoch=c.last_epoch,
            clock_offset_ms=c.clock_offset_ms,
            monitoring_until=c.monitoring_until,
        )

    @property
    def contact_state(self) -> ContactState:
        """The core's contact state."""
        return self._conn.state

    def view(self, now: int) -> DeliveryView:
        conn = self._conn
        state: Literal["idle", "sending", "waiting", "stopped", "offline"]
        if self._stop is not None:
            state = "stopped"
        elif not self._connected:
            state = "offline"
        elif conn.state in (ContactState.AWAIT_C2, ContactState.AWAIT_C4):
            state = "sending"
        elif conn.state is ContactState.BACKOFF:
            state = "waiting"
        else:
            state = "idle"
        current = self._current
        return DeliveryView(
            state=state,
            cid=current.cid if current else None,
            attempts=self._attempts if current else 0,
            next_attempt_at=self._next_attempt_at if state in ("waiting", "stopped") else None,
            stopped_reason=self._stop.reason if self._stop else None,
            monitoring=conn.monitoring(now),
            monitoring_until=conn.monitoring_until,
            epoch=conn.last_epoch,
            clock_offset_ms=conn.clock_offset_ms,
            last_delivered=self._last_delivered,
            problems=tuple(self._problems.items()),
        )

    # -- the policy -----------------------------------------------------------------------

    def _step(self, now: int) -> list[Event]:
        """Fire due timers; ask for the next incident when nothing is in flight."""
        events: list[Event] = []
        if self._delete_retry_at is not None and now >= self._delete_retry_at:
            self._delete_retry_at = None  # set again by deletion_failed
            self._actions.extend(DeleteIncident(cid) for cid in sorted(self._undeleted))
        if self._stop is not None and now >= self._stop.resume_at:
            log.info("trying reports again after: %s", self._stop.reason)
            self._resume()
        self._deferred = {c: t for c, t in self._deferred.items() if t > now}
        deadline = self._conn.next_timeout()
        if deadline is not None and now >= deadline and self._connected:
            if self._conn.state is ContactState.BACKOFF:
                self._attempts += 1  # the core starts over with a new C1
            events = self._conn.on_timeout(now)
            self._handle(events, now)
        if self._may_start() and not self._loading:
            self._loading = True
            self._actions.append(LoadNext(frozenset(self._undeleted | self._deferred.keys())))
        return events

    def _may_start(self) -> bool:
        return self._conn.state is ContactState.IDLE and self._connected and self._stop is None

    def _handle(self, events: list[Event], now: int) -> None:
        for ev in events:
            if isinstance(ev, WindowAnnounced):
                log.info("monitoring window: epoch %d, until %d", ev.ep, ev.tx)
                if self._stop is not None:
                    self._resume()  # the server only announces to devices it accepts
            elif isinstance(ev, ReportDelivered):
                self._on_delivered(ev, now)
            elif isinstance(ev, ReportRefused):
                self._on_refused(ev, now)
            elif isinstance(ev, ContactTimedOut):
                self._next_attempt_at = ev.retry_at
                why = f"no {ev.step} within its timeout"
                self._actions.append(NoteAttempt(ev.cid, why))
                log.info("incident %s: %s; retrying", ev.cid.hex(), why)
            elif isinstance(ev, ClockCorrected):
                log.warning("clock offset corrected to %d ms (error 5)", ev.offset_ms)
            elif isinstance(ev, MessageDropped):
                log.info("dropped a message from the broker: %s (%s)", ev.reason, ev.detail)
        self._flush(now)

    def _on_delivered(self, ev: ReportDelivered, now: int) -> None:
        log.info("incident %s delivered: server incident %s", ev.cid.hex(), ev.incident_id)
        self._current = None
        self._next_attempt_at = None
        self._last_delivered = Delivered(
            cid=ev.cid, incident_id=ev.incident_id, at=now, c1_at=self._c1_at
        )
        self._undeleted.add(ev.cid)  # never sent again, whatever happens to the deletion
        self._actions.append(DeleteIncident(ev.cid))

    def _on_refused(self, ev: ReportRefused, now: int) -> None:
        reason = refusal_reason(ev.code)
        self._next_attempt_at = ev.retry_at
        self._actions.append(NoteAttempt(ev.cid, reason))
        if ev.code in _STOPPING_CODES:
            resume = now + self.timing.backoff_max_ms
            self._stop = _Stop(ev.code, reason, resume)
            self._abandon_contact()
            self._next_attempt_at = resume
            if ev.code != ErrorCode.FRAMEWORK_INACTIVE:
                self._problems["refused"] = reason
            log.warning("%s", reason)
        elif ev.code == ErrorCode.PAYLOAD_REJECTED:
            self._deferred[ev.cid] = now + self.timing.backoff_max_ms
            self._abandon_contact()
            why = (
                f"the server refused incident {ev.cid.hex()} as invalid (error 8); it is "
                f"kept and retried every {self.timing.backoff_max_ms // 1000} s while the "
                "next ones go out"
            )
            self._problems["payload"] = why
            log.warning("%s", why)
        elif ev.code == ErrorCode.UID_MISMATCH:
            self._problems["refused"] = reason
            log.error("%s", reason)
        elif ev.code != ErrorCode.TIMESTAMP_OUT_OF_WINDOW:
            log.info("incident %s: %s", ev.cid.hex(), reason)

    def _resume(self) -> None:
        self._stop = None
        self._problems.pop("refused", None)
        self._next_attempt_at = None

    def _flush(self, now: int) -> None:
        """Queue what the core has to send, the state first if it changed (the epoch is
        on disk before the B2 leaves)."""
        state = self.state
        if state != self._saved:
            self._actions.append(SaveState(state))
            self._saved = state
        for data in self._conn.data_to_send():
            kind = _message_type(data)
            if kind == MessageType.C1:
                self._c1_at = now  # for the phase timings in the status
            self._actions.append(Publish(data, kind))

    def _new_connection(self, state: ProtocolState) -> DeviceConnection:
        conn = DeviceConnection(
            kid=self.kid,
            uid=self.uid,
            cipher=self._cipher,
            random=self._random,
            timing=self.timing,
            limits=self.limits,
            last_epoch=state.last_epoch,
            clock_offset_ms=state.clock_offset_ms,
        )
        conn.monitoring_until = state.monitoring_until
        return conn

    def _abandon_contact(self) -> None:
        """Drop the contact in flight (the incident stays stored) by starting from a fresh
        core that keeps the persistent state."""
        self._conn = self._new_connection(self.state)
        self._current = None
        self._next_attempt_at = None


def _message_type(data: bytes) -> int:
    try:
        return decode_envelope(data, max_size=len(data)).type
    except RemoteProtocolError:  # the core only queues what it sealed itself
        return -1
