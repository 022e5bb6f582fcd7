"""The ENC's side of the ENC notification phase: N1 (and N3, a report fused into an
alert already sent) in, N2 out."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ._crypto import Cipher
from ._errors import RemoteProtocolError
from ._events import AlertReceived, Event, LinkedReportReceived, MessageDropped
from ._messages import MessageType, N1Alert, N2Receipt, N3LinkedReport
from ._receive import open_message, seal
from ._replay import ReplayCache
from ._timing import Limits, Timing

__all__ = ["EncEndpoint"]


class EncEndpoint:
    """Checks N1 alerts from the servers it knows (kid -> K_SENC) and makes N2s."""

    _ACCEPTS = (MessageType.N1,)
    _ACCEPTS_REPORTS = (MessageType.N3,)

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
        try:
            opened = open_message(
                data,
                role="ENC",
                accepts=self._ACCEPTS,
                limits=self.limits,
                key_for=self._servers.get,
            )
        except RemoteProtocolError as exc:
            return [MessageDropped(exc.reason, str(exc))]
        m, kid = opened.message, opened.envelope.kid
        assert isinstance(m, N1Alert)
        if abs(m.ts - now) > self.timing.window_ms:
            return [
                MessageDropped(
                    "timestamp", "N1 T_S is outside the acceptance window", kid, MessageType.N1
                )
            ]
        if len(m.pf) > self.limits.max_photo:
            return [MessageDropped("too_large", "N1 photo exceeds the limit", kid, MessageType.N1)]
        fresh = self._replay.check_and_add(opened.hash, now)
        if not fresh:
            reason = "replay" if fresh is False else "replay_cache_full"
            return [MessageDropped(reason, "N1 was seen before", kid, MessageType.N1)]
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
        try:
            opened = open_message(
                data,
                role="ENC",
                accepts=self._ACCEPTS_REPORTS,
                limits=self.limits,
                key_for=self._servers.get,
            )
        except RemoteProtocolError as exc:
            return [MessageDropped(exc.reason, str(exc))]
        m, kid = opened.message, opened.envelope.kid
        assert isinstance(m, N3LinkedReport)
        if abs(m.ts - now) > self.timing.window_ms:
            return [
                MessageDropped(
                    "timestamp", "N3 T_S is outside the acceptance window", kid, MessageType.N3
                )
            ]
        if len(m.pf) > self.limits.max_photo:
            return [MessageDropped("too_large", "N3 photo exceeds the limit", kid, MessageType.N3)]
        fresh = self._replay.check_and_add(opened.hash, now)
        if not fresh:
            reason = "replay" if fresh is False else "replay_cache_full"
            return [MessageDropped(reason, "N3 was seen before", kid, MessageType.N3)]
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
