"""Prometheus metrics of one ENC process (its own registry, so several ENCs can live in
one test process). Alert counts by status are read from the store at each scrape, so
every ENC sharing a database reports the same figures."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["EncMetrics", "RequestCounter"]


class _StoreCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "citywatch_enc_store_up", "1 when the alert store answered this scrape, else 0"
        )
        alerts = GaugeMetricFamily(
            "citywatch_enc_alerts", "Alerts in the store, by status", labels=["status"]
        )
        try:
            counts = self._counts()
        except Exception:  # a failing store is what this gauge reports, not a scrape error
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        for status, n in sorted(counts.items()):
            alerts.add_metric([status], float(n))
        yield up
        yield alerts


class EncMetrics:
    def __init__(self, status_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stored = Counter(
            "citywatch_enc_alerts_stored", "New alerts stored by this process", registry=r
        )
        self.requests = Counter(
            "citywatch_enc_http_requests",
            "HTTP requests answered, by route and status class",
            ["route", "status"],
            registry=r,
        )
        self.started = Gauge(
            "citywatch_enc_start_time_seconds", "When this process started (Unix time)", registry=r
        )
        self.started.set(time.time())
        self.purged = Counter(
            "citywatch_enc_purged",
            "Rows removed or photos erased by retention, by kind",
            ["kind"],
            registry=r,
        )
        r.register(_StoreCollector(status_counts))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _route(path: str) -> str:
    # A few fixed names: a label per URL would let any client grow the metrics.
    if path == "/v1/alerts":
        return "alerts"
    if path in ("/healthz", "/metrics"):
        return path[1:]
    return "static" if path.startswith("/static/") else "dashboard"


class RequestCounter:
    """ASGI middleware counting answered HTTP requests by route and status class."""

    def __init__(self, app: ASGIApp, metrics: EncMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _route(str(scope.get("path", "")))

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.requests.labels(route, f"{status // 100}xx").inc()
            await send(message)

        await self.app(scope, receive, counting_send)
