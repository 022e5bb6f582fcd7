"""Prometheus metrics of one server process (its own registry, so several servers can
live in one test process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from protocol import MessageType

__all__ = ["ServerMetrics", "type_label"]

_TYPE_NAMES = {int(t): t.name for t in MessageType}


def type_label(mtype: int) -> str:
    """The ``type`` label of a message: one of the nine names, or ``"unknown"``. Never
    the number itself: a peer choosing type numbers must not choose metric series."""
    return _TYPE_NAMES.get(mtype, "unknown")


_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "citywatch_server_messages",
            "Device messages received, by type and outcome "
            "(accepted, refused: answered with an error, dropped: not answered, "
            "unavailable: not answered while the database could not be reached)",
            ["type", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "citywatch_server_rejected_messages",
            "Messages rejected, by reason (error code name for refusals, drop reason otherwise)",
            ["reason"],
            registry=r,
        )
        self.incidents = Counter(
            "citywatch_server_incidents",
            "Incidents decided, by decision (dangerous: alert "
            "queued; fused: dangerous, covered by a nearby incident's alert; dismissed)",
            ["decision"],
            registry=r,
        )
        self.broadcasts = Counter("citywatch_server_broadcasts", "B1 messages sent", registry=r)
        self.confirmations = Counter(
            "citywatch_server_broadcast_confirmations", "B2 messages accepted", registry=r
        )
        self.alerts = Counter(
            "citywatch_server_enc_attempts", "N1 attempts, by outcome", ["outcome"], registry=r
        )
        self.outbox_depth = Gauge(
            "citywatch_server_outbox_depth", "Alerts waiting for the ENC's N2", registry=r
        )
        self.c3_to_c4 = Histogram(
            "citywatch_server_c3_to_c4_seconds",
            "From C3 received to C4 handed to the broker (incident stored durably in between)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.verification = Histogram(
            "citywatch_server_verification_seconds",
            "Photo verification and decision",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.n1_to_n2 = Histogram(
            "citywatch_server_n1_to_n2_seconds",
            "From N1 sent to a valid N2",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.c3_to_n2 = Histogram(
            "citywatch_server_c3_to_n2_seconds",
            "From C3 received to the ENC's N2 (first attempt successes)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def track_outbox(self, depth: Callable[[], int]) -> None:
        self.outbox_depth.set_function(lambda: float(depth()))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
