"""The device's protocol client: MQTT to the broker, driving ``protocol.DeviceConnection``.

One asyncio task talks to the broker (connect, subscribe, presence, reconnect with
back-off); another owns the protocol state and the outbox: it handles what arrives,
fires timeouts, delivers stored incidents one at a time, oldest first, and acts on what
the server says:

- ``WindowAnnounced`` (B1): the monitoring window is ``monitoring(now)``; the epoch is
  persisted before the B2 leaves.
- ``ReportDelivered`` (C4): the incident is deleted from the outbox.
- ``ReportRefused`` code 5: the clock offset was corrected (persisted); the core retries.
- codes 2, 3, 4 (inactive, blocked, no monitoring window): reports stop, the status says
  why; they start again at the next B1, or by themselves after ``backoff_max``.
- code 8 (payload rejected): that incident waits ``backoff_max`` while the next ones go.
- ``ContactTimedOut`` and every other refusal: the core backs off and retries.

Nothing is ever dropped from the outbox except after a C4. A broker that goes away
abandons the contact in flight; it starts over (same capture id, so the server keeps one
incident) once the broker is back.

Topics (protocol.md 5): ``<prefix>/<kid>/up`` (device -> server), ``.../down`` (server ->
device) and ``.../status``, where the device publishes a retained "online" after each
connect and leaves a retained "offline" as its last will; the server answers "online"
with a fresh B1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random as _random
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import aiomqtt

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
    ReportDelivered,
    ReportRefused,
    Timing,
    WindowAnnounced,
    decode_envelope,
)

from ._config import BrokerConfig, EdgeConfigError
from ._outbox import Outbox, OutboxDiskFull, OutboxError, OutboxFull, StoredIncident
from ._state import (
    STATUS_FILE,
    BrokerStatus,
    DeliveredIncident,
    DeliveryStatus,
    ErrorNote,
    MonitoringStatus,
    OutboxStatus,
    ProtocolState,
    StateFile,
    StatusBoard,
    StatusSnapshot,
    summarize,
    wall_ms,
)

if TYPE_CHECKING:
    from protocol import Coords

    from ._config import EdgeConfig

__all__ = ["ProtocolClient", "refusal_reason"]

log = logging.getLogger("citywatch.edge.client")

_ONLINE, _OFFLINE = b"online", b"offline"
_PUBLISH_TIMEOUT_S = 60.0  # a 2 MiB C3 over a slow uplink


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


_STOPPING_CODES = (ErrorCode.DEVICE_INACTIVE, ErrorCode.DEVICE_BLOCKED,
                   ErrorCode.FRAMEWORK_INACTIVE)


@dataclass(frozen=True, slots=True)
class _Stop:
    code: int
    reason: str
    resume_at: int


@dataclass(frozen=True, slots=True)
class _Link:
    """A broker connection came up (client) or went down (None), with why."""

    client: aiomqtt.Client | None
    error: str | None = None


class _Wake:
    """Look at the outbox again (an incident was stored)."""


class ProtocolClient:
    """The device's side of the protocol over MQTT, with the durable outbox.

    ``now`` is the local wall clock in ms (``clock``); the ``DeviceConnection`` adds the
    clock offset learnt from error 5 for protocol timestamps.
    """

    def __init__(
        self,
        *,
        uid: str,
        kid: bytes,
        cipher: Cipher,
        broker: BrokerConfig,
        outbox: Outbox,
        state_dir: Path,
        status: StatusBoard | None = None,
        zone: str = "",
        timing: Timing | None = None,
        limits: Limits | None = None,
        status_interval_s: float = 5.0,
        clock: Callable[[], int] = wall_ms,
        random: Callable[[int], bytes] = os.urandom,
        listener: Callable[[Event], None] | None = None,
    ) -> None:
        self.uid = uid
        self.kid = kid
        self.broker = broker
        self.outbox = outbox
        self.state_dir = Path(state_dir)
        self.timing = timing or Timing()
        self.limits = limits or Limits()
        self._cipher = cipher
        self._clock = clock
        self._random = random
        self._listener = listener
        self._status_interval_s = status_interval_s
        self._tls = _tls_context(broker)  # bad TLS files fail here, at start
        prefix = f"{broker.topic_prefix}/{kid.hex()}"
        self.topic_up, self.topic_down = f"{prefix}/up", f"{prefix}/down"
        self.topic_status = f"{prefix}/status"

        self._state_file = StateFile(self.state_dir)
        self._saved = self._state_file.load()
        self._conn = self._new_connection(self._saved)
        self.status = status or StatusBoard(
            self.state_dir / STATUS_FILE,
            StatusSnapshot(started_at=clock(), pid=os.getpid(), uid=uid, kid_hex=kid.hex(),
                           zone=zone),
            clock=clock)

        self._inbox: asyncio.Queue[bytes | _Link | _Wake] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mqtt: aiomqtt.Client | None = None
        self._current: StoredIncident | None = None
        self._attempts = 0
        self._c1_at: int | None = None
        self._stop_reports: _Stop | None = None
        self._deferred: dict[bytes, int] = {}  # cid -> not before (ms), after error 8
        self._undeleted: set[bytes] = set()  # delivered, deletion failed (disk full)
        self._problems: dict[str, str] = {}  # kind -> what to do, in words
        self._status_lock = threading.Lock()  # the capture thread refreshes the status too
        self._outbox_refusal: str | None = None  # set from the capture thread
        self._next_attempt_at: int | None = None
        self._broker_since: int | None = None
        self._broker_error: str | None = None
        self._refresh_status()

    @classmethod
    def from_config(cls, config: EdgeConfig, *, cipher: Cipher, outbox: Outbox,
                    status: StatusBoard | None = None, **kwargs: object) -> ProtocolClient:
        return cls(uid=config.uid, kid=config.kid, cipher=cipher, broker=config.broker,
                   outbox=outbox, state_dir=config.state_dir, status=status, zone=config.zone,
                   timing=config.protocol.timing(), limits=config.protocol.limits(),
                   status_interval_s=config.status.interval_s, **kwargs)  # type: ignore[arg-type]

    # -- what the rest of the daemon uses ---------------------------------------------------

    def monitoring(self, now: int | None = None) -> bool:
        """True while a monitoring window announced by the server is open: the pipeline
        runs detection only then."""
        return self._conn.monitoring(self._clock() if now is None else now)

    @property
    def monitoring_until(self) -> int | None:
        """End of the last window announced (protocol time, ms)."""
        return self._conn.monitoring_until

    @property
    def connected(self) -> bool:
        return self._mqtt is not None

    @property
    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        return summarize(self.status.snapshot())

    def record_incident(self, *, photo: bytes, coords: Coords, score: float, label: str,
                        captured_at: int) -> bytes:
        """Store a capture durably and have it delivered; return its capture id.

        Callable from any thread. ``OutboxFull`` / ``OutboxDiskFull`` (nothing stored) and
        ``IncidentRejected`` propagate after the status says so.
        """
        try:
            cid = self.outbox.add(photo=photo, coords=coords, score=score, label=label,
                                  captured_at=captured_at)
        except OutboxFull as exc:
            self._outbox_refusal = str(exc)
            self._note_error(str(exc))
            log.error("%s", exc)
            raise
        finally:
            self._refresh_status()
            self.wake()
        return cid

    def wake(self) -> None:
        """Something changed outside (an incident was stored): look again. Thread-safe."""
        loop, inbox = self._loop, self._inbox
        if loop is not None and inbox is not None:
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(inbox.put_nowait, _Wake())

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then say "offline" and disconnect."""
        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        tasks = [asyncio.create_task(self._broker_loop(stop), name="edge-broker"),
                 asyncio.create_task(self.status.keep_written(
                     stop, interval_s=self._status_interval_s), name="edge-status")]
        try:
            await self._protocol_loop(stop)
        finally:
            client = self._mqtt
            if client is not None:
                with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                    # A clean disconnect does not fire the will: say it ourselves.
                    await client.publish(self.topic_status, _OFFLINE, qos=1, retain=True,
                                         timeout=2)
            stop.set()
            tasks[0].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._mqtt = None
            self._loop = None

    # -- broker ---------------------------------------------------------------------------

    def _mqtt_client(self) -> aiomqtt.Client:
        b = self.broker
        # Nagle + delayed ACKs add ~40 ms to every small reply (design.md): send at once.
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if b.tcp_nodelay else []
        return aiomqtt.Client(
            b.host, b.port, identifier=self.kid.hex(), clean_session=False,
            username=b.username or None, password=b.password or None,
            keepalive=b.keepalive_s, tls_context=self._tls,
            tls_insecure=b.tls.insecure if b.tls is not None else None,
            socket_options=options, timeout=10,
            will=aiomqtt.Will(self.topic_status, _OFFLINE, qos=1, retain=True))

    async def _broker_loop(self, stop: asyncio.Event) -> None:
        assert self._inbox is not None
        delay = self.broker.reconnect_min_s
        jitter = _random.SystemRandom()
        while not stop.is_set():
            error: str | None = None
            try:
                async with self._mqtt_client() as client:
                    await client.subscribe(self.topic_down, qos=1)
                    # After subscribing, so the B1 the server sends in answer is not missed.
                    await client.publish(self.topic_status, _ONLINE, qos=1, retain=True)
                    self._mqtt = client
                    self._inbox.put_nowait(_Link(client))
                    delay = self.broker.reconnect_min_s
                    async for msg in client.messages:
                        if str(msg.topic) == self.topic_down and isinstance(msg.payload, bytes):
                            self._inbox.put_nowait(msg.payload)
            except aiomqtt.MqttError as exc:
                error = str(exc) or type(exc).__name__
            finally:
                if self._mqtt is not None:
                    self._mqtt = None
                    self._inbox.put_nowait(_Link(None, error))
            if error is not None and not stop.is_set():
                self._broker_error = error
                self._refresh_status()
                log.warning("broker %s:%s unreachable (%s); next attempt in %.1f s",
                            self.broker.host, self.broker.port, error, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * jitter.uniform(0.5, 1.0))
            delay = min(delay * 2, self.broker.reconnect_max_s)

    async def _publish(self, data: list[bytes]) -> None:
        client = self._mqtt
        for d in data:
            if client is None:
                return  # the contact times out or restarts on reconnect
            try:
                await client.publish(self.topic_up, d, qos=1, timeout=_PUBLISH_TIMEOUT_S)
            except aiomqtt.MqttError as exc:
                log.warning("publish failed (%s); the contact starts over", exc)
                return

    # -- protocol -------------------------------------------------------------------------

    def _new_connection(self, state: ProtocolState) -> DeviceConnection:
        conn = DeviceConnection(kid=self.kid, uid=self.uid, cipher=self._cipher,
                                random=self._random, timing=self.timing, limits=self.limits,
                                last_epoch=state.last_epoch,
                                clock_offset_ms=state.clock_offset_ms)
        conn.monitoring_until = state.monitoring_until
        return conn

    def _abandon_contact(self) -> None:
        """Drop the contact in flight (the incident stays stored) by starting from a fresh
        connection that keeps the persistent state."""
        self._conn = self._new_connection(self._current_state())
        self._current = None
        self._next_attempt_at = None

    def _current_state(self) -> ProtocolState:
        c = self._conn
        return ProtocolState(last_epoch=c.last_epoch, clock_offset_ms=c.clock_offset_ms,
                             monitoring_until=c.monitoring_until)

    async def _persist(self) -> None:
        state = self._current_state()
        if state != self._saved:
            await asyncio.to_thread(self._state_file.save, state)
            self._saved = state

    async def _protocol_loop(self, stop: asyncio.Event) -> None:
        assert self._inbox is not None
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                await self._step()
                timeout = self._wait_s()
                getter = asyncio.ensure_future(self._inbox.get())
                done, _ = await asyncio.wait({getter, stopper}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    continue
                item = getter.result()
                if isinstance(item, _Link):
                    await self._on_link(item)
                elif isinstance(item, bytes):
                    await self._on_message(item)
        finally:
            stopper.cancel()

    def _wait_s(self) -> float:
        now = self._clock()
        deadline = self._conn.next_timeout() if self.connected else None
        moments = [t for t in (deadline,
                               self._stop_reports.resume_at if self._stop_reports else None,
                               min(self._deferred.values(), default=None)) if t is not None]
        if self._undeleted:
            moments.append(now + 5_000)
        if not moments:
            return self._status_interval_s
        return max(0.0, min(min(moments) - now, self._status_interval_s * 1000) / 1000)

    async def _step(self) -> None:
        """Fire due timeouts; start the next delivery when nothing is in flight."""
        now = self._clock()
        if self._undeleted:
            await self._retry_deletions()
        if self._stop_reports and now >= self._stop_reports.resume_at:
            log.info("trying reports again after: %s", self._stop_reports.reason)
            self._resume()
        self._deferred = {c: t for c, t in self._deferred.items() if t > now}
        deadline = self._conn.next_timeout()
        if deadline is not None and now >= deadline and self.connected:
            if self._conn.state is ContactState.BACKOFF:
                self._attempts += 1  # the core starts over with a new C1
            await self._handle(self._conn.on_timeout(now), now)
        if (self._conn.state is ContactState.IDLE and self.connected
                and self._stop_reports is None):
            await self._start_next(now)
        self._refresh_status()

    async def _start_next(self, now: int) -> None:
        exclude = frozenset(self._undeleted | self._deferred.keys())
        try:
            incident = await asyncio.to_thread(self.outbox.oldest, exclude=exclude)
        except OutboxError as exc:
            self._note_error(str(exc))
            return
        if incident is None:
            return
        if self._current is None or self._current.cid != incident.cid:
            self._attempts = 0
        self._current = incident
        self._attempts += 1
        self._conn.start_report(incident.report(), now)
        log.info("delivering incident %s (%s, captured at %d), attempt %d",
                 incident.cid.hex(), incident.label, incident.captured_at, self._attempts)
        await self._flush()

    async def _flush(self) -> None:
        await self._persist()  # before the B2 (or anything) leaves
        out = self._conn.data_to_send()
        if any(decode_envelope(m, max_size=len(m)).type == MessageType.C1 for m in out):
            self._c1_at = self._clock()  # for the phase timings in the status
        await self._publish(out)

    async def _on_link(self, link: _Link) -> None:
        now = self._clock()
        if link.client is not None and self._broker_since is None:
            self._broker_since, self._broker_error = now, None
            log.info("connected to the broker %s:%s as %s", self.broker.host,
                     self.broker.port, self.kid.hex())
        elif link.client is None and self._broker_since is not None:
            self._broker_since = None
            self._broker_error = link.error or self._broker_error
            if self._conn.state is not ContactState.IDLE:
                # What was in flight is probably lost; start over once the broker is back.
                self._abandon_contact()
            log.warning("lost the broker connection%s", f": {link.error}" if link.error else "")

    async def _on_message(self, data: bytes) -> None:
        now = self._clock()
        events = self._conn.receive(data, now)
        await self._handle(events, now)

    async def _handle(self, events: list[Event], now: int) -> None:
        for ev in events:
            if self._listener is not None:
                self._listener(ev)
            if isinstance(ev, WindowAnnounced):
                log.info("monitoring window: epoch %d, until %d", ev.ep, ev.tx)
                if self._stop_reports is not None:
                    self._resume()  # the server only announces to devices it accepts
            elif isinstance(ev, ReportDelivered):
                await self._on_delivered(ev, now)
            elif isinstance(ev, ReportRefused):
                await self._on_refused(ev, now)
            elif isinstance(ev, ContactTimedOut):
                self._next_attempt_at = ev.retry_at
                why = f"no {ev.step} within its timeout"
                await asyncio.to_thread(self.outbox.note_attempt, ev.cid, why)
                log.info("incident %s: %s; retrying", ev.cid.hex(), why)
            elif isinstance(ev, ClockCorrected):
                log.warning("clock offset corrected to %d ms (error 5)", ev.offset_ms)
            elif isinstance(ev, MessageDropped):
                log.info("dropped a message from the broker: %s (%s)", ev.reason, ev.detail)
        await self._flush()

    async def _on_delivered(self, ev: ReportDelivered, now: int) -> None:
        log.info("incident %s delivered: server incident %s", ev.cid.hex(), ev.incident_id)
        self._current = None
        self._next_attempt_at = None
        self.status.update(last_delivered=DeliveredIncident(
            cid=ev.cid.hex(), incident_id=ev.incident_id, at=now, c1_at=self._c1_at))
        try:
            await asyncio.to_thread(self.outbox.delete, ev.cid)
        except OutboxError as exc:
            # Keep it aside; re-delivery would be harmless (same incident id) but useless.
            self._undeleted.add(ev.cid)
            self._set_problem("delete", str(exc))
            self._note_error(str(exc))

    async def _on_refused(self, ev: ReportRefused, now: int) -> None:
        reason = refusal_reason(ev.code)
        self._next_attempt_at = ev.retry_at
        await asyncio.to_thread(self.outbox.note_attempt, ev.cid, reason)
        if ev.code in _STOPPING_CODES:
            resume = now + self.timing.backoff_max_ms
            self._stop_reports = _Stop(ev.code, reason, resume)
            self._abandon_contact()
            self._next_attempt_at = resume
            if ev.code != ErrorCode.FRAMEWORK_INACTIVE:
                self._set_problem("refused", reason)
            log.warning("%s", reason)
        elif ev.code == ErrorCode.PAYLOAD_REJECTED:
            self._deferred[ev.cid] = now + self.timing.backoff_max_ms
            self._abandon_contact()
            why = (f"the server refused incident {ev.cid.hex()} as invalid (error 8); it is "
                   f"kept and retried every {self.timing.backoff_max_ms // 1000} s while the "
                   "next ones go out")
            self._set_problem("payload", why)
            log.warning("%s", why)
        elif ev.code == ErrorCode.UID_MISMATCH:
            self._set_problem("refused", reason)
            log.error("%s", reason)
        elif ev.code != ErrorCode.TIMESTAMP_OUT_OF_WINDOW:
            log.info("incident %s: %s", ev.cid.hex(), reason)

    def _resume(self) -> None:
        self._stop_reports = None
        self._set_problem("refused", None)
        self._next_attempt_at = None

    async def _retry_deletions(self) -> None:
        for cid in list(self._undeleted):
            try:
                await asyncio.to_thread(self.outbox.delete, cid)
            except OutboxDiskFull:
                return
            except OutboxError as exc:
                self._note_error(str(exc))
                return
            self._undeleted.discard(cid)
        self._set_problem("delete", None)

    # -- status ---------------------------------------------------------------------------

    def _set_problem(self, kind: str, words: str | None) -> None:
        with self._status_lock:
            if words is None:
                self._problems.pop(kind, None)
            else:
                self._problems[kind] = words

    def _note_error(self, message: str) -> None:
        self.status.update(last_error=ErrorNote(at=self._clock(), message=message))

    def _refresh_status(self) -> None:
        with self._status_lock:
            self._refresh_status_locked()

    def _refresh_status_locked(self) -> None:
        now = self._clock()
        conn = self._conn
        try:
            u = self.outbox.usage()
            outbox = OutboxStatus(depth=u.depth, bytes=u.bytes, max_incidents=u.max_incidents,
                                  max_bytes=u.max_bytes, oldest_captured_at=u.oldest_captured_at,
                                  full=u.refusing, refused=u.refused)
            if u.refusing and self._outbox_refusal:
                self._problems["outbox"] = self._outbox_refusal
            else:
                self._problems.pop("outbox", None)
            if u.damaged:
                self._problems["damaged"] = (
                    f"{u.damaged} stored incident(s) cannot be opened with the device key and "
                    f"will not be delivered; see {self.outbox.path}")
        except OutboxError as exc:
            outbox = self.status.snapshot().outbox
            self._problems["outbox"] = str(exc)
        state: Literal["idle", "sending", "waiting", "stopped", "offline"]
        if self._stop_reports is not None:
            state = "stopped"
        elif not self.connected:
            state = "offline"
        elif conn.state in (ContactState.AWAIT_C2, ContactState.AWAIT_C4):
            state = "sending"
        elif conn.state is ContactState.BACKOFF:
            state = "waiting"
        else:
            state = "idle"
        current = self._current
        self.status.update(
            monitoring=MonitoringStatus(active=conn.monitoring(now),
                                        until=conn.monitoring_until, epoch=conn.last_epoch),
            broker=BrokerStatus(connected=self.connected, host=self.broker.host,
                                port=self.broker.port, since=self._broker_since,
                                last_error=self._broker_error),
            outbox=outbox,
            delivery=DeliveryStatus(
                state=state, cid=current.cid.hex() if current else None,
                attempts=self._attempts if current else 0,
                next_attempt_at=self._next_attempt_at if state in ("waiting", "stopped")
                else None,
                stopped_reason=self._stop_reports.reason if self._stop_reports else None),
            clock_offset_ms=conn.clock_offset_ms,
            problems=tuple(self._problems.values()))


def _tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    tls = broker.tls
    if tls is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise EdgeConfigError(f"broker.tls: cannot load the TLS files ({exc}): check ca_file, "
                              "cert_file and key_file") from None
    if tls.insecure:
        ctx.check_hostname = False
    return ctx
