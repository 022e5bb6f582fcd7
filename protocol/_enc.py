"""The ENC's side of the ENC notification phase: N1 (and N3, a report fused into an
alert already sent, and N4, a pole's street address) in, N2 out."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ._crypto import Cipher
from ._errors import RemoteProtocolError
from ._events import (
    AlertReceived,
    Event,
    LinkedReportReceived,
    MessageDropped,
    PoleAddressReceived,
)
from ._messages import MessageType, N1Alert, N2Receipt, N3LinkedReport, N4PoleAddress
from ._receive import Opened, open_message, seal
from ._replay import ReplayCache
from ._timing import Limits, Timing

__all__ = ["EncEndpoint"]


class EncEndpoint:
    """Checks N1 alerts from the servers it knows (kid -> K_SENC) and makes N2s."""

    def __init__(
        self,
        *,
        servers: Mapping[bytes, Cipher],
        random: Callable[[int], bytes],
        timing: Timing | None = None,
        limits: Limits | None = None,
        replay_capacity: int = 100_000,
    ) -> None:
        self._servers = dict(servers)
        self._random = random
        self.timing = timing or Timing()
        self.limits = limits or Limits()
        self._replay = ReplayCache(ttl_ms=self.timing.replay_ttl_ms, capacity=replay_capacity)

    def receive(self, data: bytes, now: int) -> list[Event]:
        """An N1 (``POST /v1/alerts``)."""
        opened = self._open(data, now, MessageType.N1)
        if isinstance(opened, MessageDropped):
            return [opened]
        m, kid = opened.message, opened.envelope.kid
        assert isinstance(m, N1Alert)
        return [
            AlertReceived(
                server_kid=kid,
                incident_id=m.inc,
                ts=m.ts,
                coords=m.gc,
                photo=m.pf,
                score=m.sc,
                label=m.lb,
                captured_at=m.at,
                device_uid=m.dev,
                n1_hash=opened.hash,
            )
        ]

    def receive_report(self, data: bytes, now: int) -> list[Event]:
        """An N3 (``POST /v1/reports``): the same checks as an N1."""
        opened = self._open(data, now, MessageType.N3)
        if isinstance(opened, MessageDropped):
            return [opened]
        m, kid = opened.message, opened.envelope.kid
        assert isinstance(m, N3LinkedReport)
        return [
            LinkedReportReceived(
                server_kid=kid,
                incident_id=m.inc,
                report_id=m.rep,
                ts=m.ts,
                coords=m.gc,
                photo=m.pf,
                score=m.sc,
                label=m.lb,
                captured_at=m.at,
                device_uid=m.dev,
                n3_hash=opened.hash,
            )
        ]

    def receive_address(self, data: bytes, now: int) -> list[Event]:
        """An N4 (``POST /v1/poles``): the same checks as an N1 (no photo)."""
        opened = self._open(data, now, MessageType.N4)
        if isinstance(opened, MessageDropped):
            return [opened]
        m, kid = opened.message, opened.envelope.kid
        assert isinstance(m, N4PoleAddress)
        return [
            PoleAddressReceived(
                server_kid=kid,
                device_uid=m.dev,
                address=m.adr,
                version=m.ver,
                ts=m.ts,
                n4_hash=opened.hash,
            )
        ]

    def address_receipt(self, entry: PoleAddressReceived, now: int) -> bytes:
        """N2 for an address the caller has stored (``inc`` = the device's UID,
        ``h`` = H(N4))."""
        cipher = self._servers[entry.server_kid]
        return seal(
            N2Receipt(tenc=now, inc=entry.device_uid, h=entry.n4_hash),
            cipher=cipher,
            kid=entry.server_kid,
            random=self._random,
        )

    def _open(self, data: bytes, now: int, mtype: MessageType) -> Opened | MessageDropped:
        """Open an N1, N3 or N4 from a known server and check it: fresh ``T_S``, photo
        within the limit, not seen before; or say why it is dropped."""
        name = mtype.name
        try:
            opened = open_message(
                data,
                role="ENC",
                accepts=(mtype,),
                limits=self.limits,
                key_for=self._servers.get,
            )
        except RemoteProtocolError as exc:
            return MessageDropped(exc.reason, str(exc))
        m, kid = opened.message, opened.envelope.kid
        assert isinstance(m, N1Alert | N3LinkedReport | N4PoleAddress)
        if abs(m.ts - now) > self.timing.window_ms:
            return MessageDropped(
                "timestamp", f"{name} T_S is outside the acceptance window", kid, mtype
            )
        if not isinstance(m, N4PoleAddress) and len(m.pf) > self.limits.max_photo:
            return MessageDropped("too_large", f"{name} photo exceeds the limit", kid, mtype)
        fresh = self._replay.check_and_add(opened.hash, now)
        if not fresh:
            reason = "replay" if fresh is False else "replay_cache_full"
            return MessageDropped(reason, f"{name} was seen before", kid, mtype)
        return opened

    def report_receipt(self, report: LinkedReportReceived, now: int) -> bytes:
        """N2 for a linked report the caller has stored durably (``inc`` = the report's
        own id, ``h`` = H(N3))."""
        cipher = self._servers[report.server_kid]
        return seal(
            N2Receipt(tenc=now, inc=report.report_id, h=report.n3_hash),
            cipher=cipher,
            kid=report.server_kid,
            random=self._random,
        )

    def receipt(self, alert: AlertReceived, now: int) -> bytes:
        """N2 for an alert the caller has stored durably."""
        cipher = self._servers[alert.server_kid]
        return seal(
            N2Receipt(tenc=now, inc=alert.incident_id, h=alert.n1_hash),
            cipher=cipher,
            kid=alert.server_kid,
            random=self._random,
        )
