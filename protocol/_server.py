"""The trusted server's side: broadcast (B1/B2) and contact (C1..C4), and the ENC
notifier (N1/N2). Stateless across replicas for contact: the ticket carries C1/C2."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ._crypto import Cipher
from ._envelope import Envelope, decode_envelope
from ._errors import InvalidPlaintext, RemoteProtocolError
from ._events import (
    AlertConfirmed,
    AlertTimedOut,
    BroadcastConfirmed,
    ContactOpened,
    ContactRefused,
    Event,
    IncidentReported,
    MessageDropped,
    PoleAddressConfirmed,
)
from ._messages import (
    MAX_TIME_MS,
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
    N1Alert,
    N2Receipt,
    N3LinkedReport,
    N4PoleAddress,
    epoch_hash,
)
from ._receive import Opened, open_message, seal
from ._replay import ReplayCache
from ._ticket import TicketError, TicketSealer
from ._timing import Limits, Timing, backoff_delay

__all__ = [
    "DeviceDirectory",
    "DeviceRecord",
    "EncNotifier",
    "Outgoing",
    "RateLimit",
    "ServerEndpoint",
    "incident_id_for",
]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """What the server knows of one device."""

    kid: bytes
    """8-byte key identifier (a pseudonym)."""
    uid: str
    """The device's UID."""
    cipher: Cipher
    """K_SD."""
    active: bool = True
    """False once deactivated by an operator."""
    blocked: bool = False
    """True when blocked (e.g. for sending fake reports)."""


class DeviceDirectory(Protocol):
    """The server's registry as the protocol core needs it (lookups only, no I/O here)."""

    def lookup(self, kid: bytes) -> DeviceRecord | None:
        """The device with this kid, or None."""
        ...

    def monitoring_active(self, kid: bytes, now: int) -> bool:
        """True while a monitoring window is open for the device."""
        ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for one device."""

    kid: bytes
    """Destination device."""
    data: bytes
    """The COSE message."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Per-device token bucket on C1."""

    burst: int = 10
    """C1s a device may send back to back."""
    per_minute: float = 30.0
    """Sustained C1s per minute."""


def incident_id_for(kid: bytes, cid: bytes) -> str:
    """The same kid and cid always give the same incident id, on any replica."""
    digest = hashlib.sha256(b"citywatch/v1 incident" + kid + cid).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class ServerEndpoint:
    """The server's half of the broadcast and contact phases."""

    _ACCEPTS = (MessageType.B2, MessageType.C1, MessageType.C3)

    def __init__(
        self,
        *,
        directory: DeviceDirectory,
        ticket_key: bytes,
        random: Callable[[int], bytes],
        timing: Timing | None = None,
        limits: Limits | None = None,
        rate_limit: RateLimit | None = None,
        replay_capacity: int = 100_000,
        uplink_budget: int | None = None,
    ) -> None:
        self._directory = directory
        #: Messages of any type a known device may send, as a multiple of its C1 rate (a
        #: C3 per C1, B2s, retries: 4 is ample), before the rest are dropped unread
        #: (None: no such budget).
        self.uplink_budget = uplink_budget
        self._random = random
        self.timing = timing or Timing()
        self.limits = limits or Limits()
        self.rate_limit = rate_limit or RateLimit()
        self._tickets = TicketSealer(ticket_key, random=random)
        self._replay = ReplayCache(ttl_ms=self.timing.replay_ttl_ms, capacity=replay_capacity)
        self._buckets: dict[bytes, tuple[float, int]] = {}  # kid -> (tokens, at)
        self._uplinks: dict[bytes, tuple[float, int]] = {}  # kid -> (tokens, at), any type
        self._broadcasts: dict[bytes, tuple[int, int, bytes]] = {}  # kid -> (ep, ts, H(B1))
        self._outbox: list[Outgoing] = []

    # -- broadcast ---------------------------------------------------------------------

    def announce(self, kid: bytes, *, tx: int, ep: int, now: int) -> bytes:
        """B1 for one device: a window from now until ``tx`` (``tx == now`` closes it).
        ``ep`` is the device's previous epoch + 1, persisted by the caller."""
        record = self._directory.lookup(kid)
        if record is None:
            raise KeyError(f"no device with kid {kid.hex()}")
        data = seal(
            B1Announce(ts=now, tx=max(tx, now), h=epoch_hash(now), ep=ep),
            cipher=record.cipher,
            kid=kid,
            random=self._random,
        )
        self._broadcasts[kid] = (ep, now, hashlib.sha256(data).digest())
        return data

    def remember_broadcast(self, kid: bytes, *, ep: int, ts: int, b1_hash: bytes) -> None:
        """Restore the last B1 sent to a device (after a restart) so its B2 is accepted."""
        self._broadcasts[kid] = (ep, ts, b1_hash)

    # -- receiving ---------------------------------------------------------------------

    def receive(self, data: bytes, now: int) -> list[Event]:
        """Handle one message from a device; replies are queued for ``data_to_send``."""
        flood = self._over_budget(data, now) if self.uplink_budget else None
        if flood is not None:
            return [flood]
        try:
            opened = open_message(
                data,
                role="server",
                accepts=self._ACCEPTS,
                limits=self.limits,
                key_for=self._key_for,
            )
        except InvalidPlaintext as exc:
            return self._on_invalid_plaintext(exc, now)
        except RemoteProtocolError as exc:
            return [_dropped(exc, data)]
        m, kid = opened.message, opened.envelope.kid
        if isinstance(m, B2Confirm):
            return self._on_b2(kid, m, opened)
        if isinstance(m, C1Hello):
            return self._on_c1(kid, m, opened, now)
        assert isinstance(m, C3Report)
        return self._on_c3(kid, m, opened, now)

    def receipt(self, incident: IncidentReported, now: int) -> bytes:
        """C4 for an incident the caller has stored durably."""
        record = self._directory.lookup(incident.kid)
        if record is None:
            raise KeyError(f"no device with kid {incident.kid.hex()}")
        return seal(
            C4Receipt(td=incident.td, inc=incident.incident_id, h=incident.c3_hash),
            cipher=record.cipher,
            kid=incident.kid,
            random=self._random,
        )

    def data_to_send(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    # -- handlers ----------------------------------------------------------------------

    def _key_for(self, kid: bytes) -> Cipher | None:
        record = self._directory.lookup(kid)
        return record.cipher if record else None

    def _on_b2(self, kid: bytes, m: B2Confirm, opened: Opened) -> list[Event]:
        sent = self._broadcasts.get(kid)
        if sent is None or sent != (m.ep, m.ts, m.h):
            return [
                MessageDropped(
                    "mismatch", "B2 does not confirm the last B1 sent", kid, MessageType.B2
                )
            ]
        del self._broadcasts[kid]  # a replayed B2 finds nothing to confirm
        return [BroadcastConfirmed(kid, m.ep, m.ts)]

    def _on_c1(self, kid: bytes, m: C1Hello, opened: Opened, now: int) -> list[Event]:
        code = self._device_refusal(kid, m.uid, now, check_window=True)
        if code is None and abs(m.td - now) > self.timing.window_ms:
            code = ErrorCode.TIMESTAMP_OUT_OF_WINDOW
        key = (kid, MessageType.C1, m.td)
        # The rate comes before the replay cache takes an entry: the cache is shared by
        # every device, and a flood that is refused must not fill it for the others.
        if code is None and self._replay.seen(key, now):
            code = ErrorCode.REPLAY
        if code is None and not self._take_token(kid, now):
            code = ErrorCode.RATE_LIMITED
        if code is None:
            fresh = self._replay.check_and_add(key, now)
            if not fresh:
                code = ErrorCode.REPLAY if fresh is False else ErrorCode.RATE_LIMITED
        if code is not None:
            return [self._refuse(kid, MessageType.C1, m.td, code, now)]
        tk = self._tickets.issue(kid=kid, td=m.td, expires=now + self.timing.ticket_lifetime_ms)
        self._reply(kid, C2Ready(td=m.td, tk=tk, h=opened.hash))
        return [ContactOpened(kid, m.uid, m.td)]

    def _on_c3(self, kid: bytes, m: C3Report, opened: Opened, now: int) -> list[Event]:
        # No window check here: a contact that C1 opened in a window may finish after it.
        code = self._device_refusal(kid, m.uid, now, check_window=False)
        if code is None:
            try:
                self._tickets.check(m.tk, kid=kid, td=m.td, now=now)
            except TicketError:
                code = ErrorCode.TICKET_INVALID
        if code is None:
            fresh = self._replay.check_and_add((kid, MessageType.C3, m.td), now)
            if not fresh:
                code = ErrorCode.REPLAY if fresh is False else ErrorCode.RATE_LIMITED
        if code is None and len(m.pf) > self.limits.max_photo:
            code = ErrorCode.PAYLOAD_REJECTED
        if code is None and m.at > now + self.timing.window_ms:
            code = ErrorCode.PAYLOAD_REJECTED  # captured later than the server's now
        if code is not None:
            return [self._refuse(kid, MessageType.C3, m.td, code, now)]
        return [
            IncidentReported(
                kid=kid,
                uid=m.uid,
                td=m.td,
                cid=m.cid,
                incident_id=incident_id_for(kid, m.cid),
                coords=m.gc,
                photo=m.pf,
                score=m.sc,
                label=m.lb,
                captured_at=m.at,
                c3_hash=opened.hash,
            )
        ]

    def _on_invalid_plaintext(self, exc: InvalidPlaintext, now: int) -> list[Event]:
        """An authenticated C3 whose content is unacceptable (not a JPEG, bad coordinates)
        is answered with error 8 if its T_D can be read; anything else is dropped."""
        env = exc.envelope
        assert isinstance(env, Envelope)  # open_message got as far as the plaintext
        dropped = MessageDropped(exc.reason, str(exc), env.kid, env.type)
        if env.type != MessageType.C3 or exc.fields is None:
            return [dropped]
        td = exc.fields.get("td")
        if type(td) is not int or not 0 <= td <= MAX_TIME_MS:
            return [dropped]
        return [dropped, self._refuse(env.kid, MessageType.C3, td, ErrorCode.PAYLOAD_REJECTED, now)]

    def _device_refusal(
        self, kid: bytes, uid: str, now: int, *, check_window: bool
    ) -> ErrorCode | None:
        record = self._directory.lookup(kid)
        assert record is not None
        if uid != record.uid:
            return ErrorCode.UID_MISMATCH
        if record.blocked:
            return ErrorCode.DEVICE_BLOCKED
        if not record.active:
            return ErrorCode.DEVICE_INACTIVE
        if check_window and not self._directory.monitoring_active(kid, now):
            return ErrorCode.FRAMEWORK_INACTIVE
        return None

    def _over_budget(self, data: bytes, now: int) -> MessageDropped | None:
        """A known device sending far more than the protocol ever needs (B2s, and C1s and
        C3s at the C1 rate) is dropped before decrypting, unanswered: a flood costs the
        server a CBOR parse, not an AEAD check and a sealed error 9 per message."""
        try:
            env = decode_envelope(data, max_size=self.limits.max_large_message)
        except RemoteProtocolError:
            return None  # open_message says why
        if self._directory.lookup(env.kid) is None:
            return None
        rl = self.rate_limit
        budget = self.uplink_budget or 1
        burst, per_minute = budget * rl.burst, budget * rl.per_minute
        tokens, at = self._uplinks.get(env.kid, (float(burst), now))
        tokens = min(float(burst), tokens + max(0, now - at) * per_minute / 60_000)
        if tokens < 1:
            self._uplinks[env.kid] = (tokens, now)
            return MessageDropped(
                "flood", "more uplink messages than the protocol needs", env.kid, env.type
            )
        self._uplinks[env.kid] = (tokens - 1, now)
        return None

    def _take_token(self, kid: bytes, now: int) -> bool:
        rl = self.rate_limit
        tokens, at = self._buckets.get(kid, (float(rl.burst), now))
        tokens = min(float(rl.burst), tokens + (now - at) * rl.per_minute / 60_000)
        if tokens < 1:
            self._buckets[kid] = (tokens, now)
            return False
        self._buckets[kid] = (tokens - 1, now)
        return True

    def _refuse(self, kid: bytes, re: int, td: int, code: int, now: int) -> ContactRefused:
        self._reply(kid, ErrorMessage(re=int(re), td=td, code=int(code), now=now))
        return ContactRefused(kid, int(re), int(code))

    def _reply(self, kid: bytes, m: C2Ready | ErrorMessage) -> None:
        record = self._directory.lookup(kid)
        assert record is not None
        self._outbox.append(
            Outgoing(kid, seal(m, cipher=record.cipher, kid=kid, random=self._random))
        )


def _dropped(exc: RemoteProtocolError, data: bytes) -> MessageDropped:
    kid = mtype = None
    try:
        env = decode_envelope(data, max_size=len(data))
        kid, mtype = env.kid, env.type
    except RemoteProtocolError:
        pass
    return MessageDropped(exc.reason, str(exc), kid, mtype)


@dataclass(slots=True)
class _PendingAlert:
    hashes: list[bytes]
    deadline: int
    attempts: int


class EncNotifier:
    """The server's half of the ENC notification phase: N1 out, N2 checked.

    Each attempt is a fresh N1 (fresh T_S); an N2 is accepted if it names the
    incident and hashes one of the N1s sent for it.
    """

    _ACCEPTS = (MessageType.N2,)
    _KEEP_HASHES = 16

    def __init__(
        self,
        *,
        kid: bytes,
        cipher: Cipher,
        random: Callable[[int], bytes],
        timing: Timing | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.kid = kid
        self._cipher = cipher
        self._random = random
        self.timing = timing or Timing()
        self.limits = limits or Limits()
        self._pending: dict[str, _PendingAlert] = {}
        self._pending_addresses: dict[str, _PendingAlert] = {}

    def alert(
        self,
        *,
        incident_id: str,
        coords: Coords,
        photo: bytes,
        score: float,
        label: str,
        captured_at: int,
        device_uid: str,
        now: int,
    ) -> bytes:
        """A fresh N1 for an incident; waits for its N2 until the step's timeout."""
        data = seal(
            N1Alert(
                ts=now,
                inc=incident_id,
                gc=coords,
                pf=photo,
                sc=score,
                lb=label,
                at=captured_at,
                dev=device_uid,
            ),
            cipher=self._cipher,
            kid=self.kid,
            random=self._random,
        )
        self._track(incident_id, data, now)
        return data

    def linked_report(
        self,
        *,
        incident_id: str,
        report_id: str,
        coords: Coords,
        photo: bytes,
        score: float,
        label: str,
        captured_at: int,
        device_uid: str,
        now: int,
    ) -> bytes:
        """A fresh N3: report ``report_id`` fused into the alert ``incident_id`` sent
        before. Waits for its N2 (``inc`` = ``report_id``) like an N1; an ENC that
        answers 404 to ``POST /v1/reports`` does not know N3: send the report as an N1
        of its own (``alert(incident_id=report_id, ...)``) after ``forget(report_id)``."""
        data = seal(
            N3LinkedReport(
                ts=now,
                inc=incident_id,
                rep=report_id,
                gc=coords,
                pf=photo,
                sc=score,
                lb=label,
                at=captured_at,
                dev=device_uid,
            ),
            cipher=self._cipher,
            kid=self.kid,
            random=self._random,
        )
        self._track(report_id, data, now)
        return data

    def pole_address(self, *, device_uid: str, address: str, version: int, now: int) -> bytes:
        """A fresh N4: the street address of ``device_uid`` ("" for none) as set in the
        registry at ``version`` (ms). Waits for its N2 (``inc`` = ``device_uid``); an
        ENC that answers 404 to ``POST /v1/poles`` does not know N4: ``forget_address``
        and send it no more."""
        data = seal(
            N4PoleAddress(ts=now, dev=device_uid, adr=address, ver=version),
            cipher=self._cipher,
            kid=self.kid,
            random=self._random,
        )
        # Kept apart from the alerts' waits: a UID may equal an incident id; the hash
        # decides which an N2 answers.
        self._track(device_uid, data, now, waits=self._pending_addresses)
        return data

    def forget_address(self, device_uid: str) -> None:
        """Stop waiting for an N2 for this device's N4."""
        self._pending_addresses.pop(device_uid, None)

    def forget(self, incident_id: str) -> None:
        """Stop waiting for an N2 for this id (an N3 the ENC does not know)."""
        self._pending.pop(incident_id, None)

    def _track(
        self, key: str, data: bytes, now: int, *, waits: dict[str, _PendingAlert] | None = None
    ) -> None:
        """Wait for an N2 answering ``data`` (the last few sent for ``key`` all count)."""
        waits = self._pending if waits is None else waits
        p = waits.get(key)
        if p is None:
            p = waits[key] = _PendingAlert([], 0, 0)
        p.hashes = [*p.hashes[-(self._KEEP_HASHES - 1) :], hashlib.sha256(data).digest()]
        p.deadline = now + self.timing.n2_timeout_ms
        p.attempts += 1

    def receive(self, data: bytes, now: int) -> list[Event]:
        """Check an N2 from the ENC."""
        try:
            opened = open_message(
                data,
                role="server",
                accepts=self._ACCEPTS,
                limits=self.limits,
                key_for=lambda kid: self._cipher if kid == self.kid else None,
            )
        except RemoteProtocolError as exc:
            return [_dropped(exc, data)]
        m = opened.message
        assert isinstance(m, N2Receipt)
        p = self._pending.get(m.inc)
        if p is None or m.h not in p.hashes:
            a = self._pending_addresses.get(m.inc)
            if a is not None and m.h in a.hashes:
                if abs(m.tenc - now) > self.timing.window_ms:
                    return [
                        MessageDropped(
                            "timestamp",
                            "N2 T_ENC is outside the acceptance window",
                            self.kid,
                            MessageType.N2,
                        )
                    ]
                del self._pending_addresses[m.inc]
                return [PoleAddressConfirmed(m.inc, m.tenc)]
            return [
                MessageDropped(
                    "mismatch", "N2 does not acknowledge an N1 in flight", self.kid, MessageType.N2
                )
            ]
        if abs(m.tenc - now) > self.timing.window_ms:
            return [
                MessageDropped(
                    "timestamp",
                    "N2 T_ENC is outside the acceptance window",
                    self.kid,
                    MessageType.N2,
                )
            ]
        del self._pending[m.inc]
        return [AlertConfirmed(m.inc, m.tenc)]

    def pending(self) -> list[str]:
        return list(self._pending)

    def next_timeout(self) -> int | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def on_timeout(self, now: int) -> list[Event]:
        events: list[Event] = []
        for inc, p in self._pending.items():
            if p.deadline <= now:
                jitter = int.from_bytes(self._random(2), "big") / 65536
                retry_at = now + backoff_delay(p.attempts, timing=self.timing, jitter=jitter)
                p.deadline = retry_at + self.timing.n2_timeout_ms
                events.append(AlertTimedOut(inc, p.attempts, retry_at))
        return events
