"""The ENC notifier: a durable outbox worker.

Alerts are queued in the database in the same transaction as the decision that made
them (``Store.decide``). This worker leases due alerts, sends each a fresh N1, and marks
it delivered only on a 200 answer whose body is the matching N2. Anything else is
retried with exponential back-off (capped), forever: a server restart or an ENC that is
down for hours loses nothing. The ENC stores alerts idempotently by incident id, so the
rare resend after a lost N2 does not duplicate an alert.

Beside the alerts, it sends the ENC each pole's street address from the registry (an
N4, docs/protocol.md) whenever it was set or removed and the ENC has not confirmed that
setting yet. An ENC that does not know N4 (404) is asked again only every ten minutes:
it shows alerts without addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from sqlalchemy.exc import SQLAlchemyError

from protocol import (
    AesGcmCipher,
    AlertConfirmed,
    Coords,
    EncNotifier,
    PoleAddressConfirmed,
    backoff_delay,
)

from ._batch import GroupCommit
from ._config import ServerConfig
from ._errors import EncDeliveryError
from ._keys import read_key_file
from ._metrics import ServerMetrics
from ._store import OutboxItem, Store

__all__ = ["CONTENT_TYPE", "EncOutbox"]

CONTENT_TYPE = 'application/cose; cose-type="cose-encrypt0"'
log = logging.getLogger("citywatch.server.enc")
# The most of an answer read: an N2 is a few hundred bytes.
_MAX_ANSWER = 1 << 20
# An ENC that answered 404 to /v1/poles (it does not know N4) is asked again this late:
# after an upgrade it gets the addresses without a server restart.
_N4_UNKNOWN_RETRY_S = 600.0


@dataclass(frozen=True)
class _Answer:
    """An ENC's answer to one POST, read whole."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class EncOutbox:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        metrics: ServerMetrics,
        *,
        clock: Callable[[], int],
        owner: str,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._clock = clock
        self.owner = owner
        e = config.enc
        key = read_key_file(config.path(e.key_file), what="ENC key file", lengths=(16, 32))
        self.timing = config.timing.protocol_timing()
        self.notifier = EncNotifier(
            kid=config.server_kid,
            cipher=AesGcmCipher(key),
            random=secrets.token_bytes,
            timing=self.timing,
            limits=config.timing.limits(),
        )
        self.url = e.base_url.rstrip("/") + "/v1/alerts"
        self.reports_url = e.base_url.rstrip("/") + "/v1/reports"
        self.poles_url = e.base_url.rstrip("/") + "/v1/poles"
        self._address_failures = 0
        self._addresses_unknown = False
        # Held a little longer than one attempt can take, so a crashed replica's lease
        # lapses soon and another picks the alert up.
        self.lease_ms = int((e.connect_timeout_s + e.request_timeout_s + 5) * 1000)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: dict[str, float] = {}  # incident id -> perf_counter at C3
        # N2s that arrive while one delivery is being recorded share the next commit.
        self.deliveries: GroupCommit[tuple[str, int], None] = GroupCommit(store.alerts_delivered)

    def wake(self, incident_id: str | None = None, t0: float | None = None) -> None:
        """A new alert is queued: look now instead of at the next poll."""
        if incident_id is not None and t0 is not None:
            self._started[incident_id] = t0
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _http_client(self) -> aiohttp.ClientSession:
        """One session for the outbox's life: up to ``concurrency`` alerts and the address
        sync each on a connection kept open. aiohttp, not httpx: ~0.12 against ~1.4 ms of
        CPU per request on the server's event loop (docs/server.md)."""
        e = self.config.enc
        tls: ssl.SSLContext | bool = True
        if e.ca_file is not None:
            tls = ssl.create_default_context(cafile=str(self.config.path(e.ca_file)))
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=e.concurrency + 1, ssl=tls),
            timeout=aiohttp.ClientTimeout(
                total=e.connect_timeout_s + e.request_timeout_s,
                sock_connect=e.connect_timeout_s,
                sock_read=e.request_timeout_s,
            ),
            skip_auto_headers=("User-Agent",),
        )

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        in_flight: set[asyncio.Task[Any]] = set()
        poll = self.config.timing.poll_s
        async with self._http_client() as http:
            addresses = asyncio.create_task(self._sync_addresses(http))
            try:
                while True:
                    self._wake.clear()
                    try:
                        delay = await self._claim(http, in_flight, poll)
                    except SQLAlchemyError as exc:
                        # The database is down or restarting: the alerts stay queued in
                        # it; try again, never end the server for it.
                        log.warning(
                            "ENC outbox: the database is unavailable (%s); retrying in %.0f s",
                            type(exc).__name__,
                            max(poll, 1.0),
                        )
                        delay = max(poll, 1.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=delay)
            finally:
                addresses.cancel()
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(addresses, *in_flight, return_exceptions=True)

    async def _sync_addresses(self, http: aiohttp.ClientSession) -> None:
        """Send the ENC the addresses it has not confirmed, forever, beside the alerts."""
        poll = self.config.timing.poll_s
        while True:
            try:
                delay = await self._send_addresses(http)
            except SQLAlchemyError as exc:
                log.warning("pole addresses: the database is unavailable (%s)", type(exc).__name__)
                delay = max(poll, 1.0)
            await asyncio.sleep(delay)

    async def _send_addresses(self, http: aiohttp.ClientSession) -> float:
        """One pass: an N4 for each device whose address is not confirmed; the seconds
        until the next pass."""
        poll = self.config.timing.poll_s
        for a in await asyncio.to_thread(self.store.addresses_to_send, limit=50):
            n4 = self.notifier.pole_address(
                device_uid=a.uid, address=a.address or "", version=a.version, now=self._clock()
            )
            try:
                r = await self._post(http, self.poles_url, n4)
                if r.status == 404:
                    self.notifier.forget_address(a.uid)
                    if not self._addresses_unknown:
                        log.info(
                            "the ENC does not know pole addresses (N4, 404 from %s): it "
                            "shows alerts without them; asked again every %.0f s",
                            self.poles_url,
                            _N4_UNKNOWN_RETRY_S,
                        )
                    self._addresses_unknown = True
                    return _N4_UNKNOWN_RETRY_S
                if r.status != 200:
                    raise EncDeliveryError(f"HTTP {r.status} {r.text[:200]!r}")
                events = self.notifier.receive(r.body, self._clock())
                if not any(isinstance(e, PoleAddressConfirmed) for e in events):
                    detail = getattr(events[0], "detail", "no event") if events else "no event"
                    raise EncDeliveryError(f"the answer is not a valid N2: {detail}")
            except EncDeliveryError as exc:
                self._address_failures += 1
                jitter = int.from_bytes(secrets.token_bytes(2), "big") / 65536
                delay = backoff_delay(self._address_failures, timing=self.timing, jitter=jitter)
                log.warning(
                    "address of device %s: not delivered (%s); next in %.1f s",
                    a.uid,
                    exc,
                    delay / 1000,
                )
                return delay / 1000
            self._address_failures = 0
            self._addresses_unknown = False
            await asyncio.to_thread(self.store.address_sent, a.uid, a.version)
            log.info("address of device %s delivered to the ENC", a.uid)
        return poll

    async def _claim(
        self, http: aiohttp.ClientSession, in_flight: set[asyncio.Task[Any]], poll: float
    ) -> float:
        """Start deliveries of the due alerts there is room for; seconds until the next."""
        free = self.config.enc.concurrency - len(in_flight)
        if free <= 0:
            return poll  # a delivery that ends wakes the loop (_delivered)
        items = await asyncio.to_thread(
            self.store.claim_due_alerts, owner=self.owner, lease_ms=self.lease_ms, limit=free
        )
        for item in items:
            task = asyncio.create_task(self._deliver(http, item))
            in_flight.add(task)
            task.add_done_callback(self._delivered(in_flight))
        if len(items) == free:
            # Every slot taken and maybe more due: the next claim comes when a delivery
            # ends; asking the database when the next is due would be a query per alert.
            return poll
        due = await asyncio.to_thread(self.store.next_alert_due)
        return poll if due is None else min(poll, max(0.02, (due - self._clock()) / 1000))

    def _delivered(self, in_flight: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
        """A delivery's done-callback: forget the task, wake the loop to claim the next."""

        def done(task: asyncio.Task[Any]) -> None:
            in_flight.discard(task)
            if self._wake is not None:
                self._wake.set()

        return done

    async def _post(self, http: aiohttp.ClientSession, url: str, body: bytes) -> _Answer:
        try:
            async with http.post(url, data=body, headers={"Content-Type": CONTENT_TYPE}) as r:
                if (r.content_length or 0) > _MAX_ANSWER:
                    raise EncDeliveryError(f"an answer of {r.content_length} bytes")
                answer = bytearray()
                async for chunk in r.content.iter_chunked(1 << 16):
                    answer += chunk
                    if len(answer) > _MAX_ANSWER:
                        raise EncDeliveryError(f"an answer of over {_MAX_ANSWER} bytes")
                return _Answer(r.status, bytes(answer))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EncDeliveryError(f"{type(exc).__name__}: {exc or 'no answer'}") from None

    async def _deliver(self, http: aiohttp.ClientSession, item: OutboxItem) -> None:
        try:
            await self._attempt(http, item)
        except SQLAlchemyError as exc:
            # The outcome could not be written: the lease lapses and the alert is sent
            # again (the ENC stores it once, by incident id).
            log.warning(
                "alert %s: the database is unavailable (%s); it will be sent again",
                item.incident_id,
                type(exc).__name__,
            )

    async def _attempt(self, http: aiohttp.ClientSession, item: OutboxItem) -> None:
        coords = Coords(lat=item.lat, lon=item.lon, alt=item.alt, acc=item.acc, src=item.coords_src)
        try:
            t0 = time.perf_counter()
            r: _Answer | None = None
            if item.linked_to is not None:
                # A report fused into an alert sent before: an N3 (docs/protocol.md). An
                # ENC that does not know N3 answers 404: then it gets an N1 of its own.
                n3 = self.notifier.linked_report(
                    incident_id=item.linked_to,
                    report_id=item.incident_id,
                    coords=coords,
                    photo=item.photo,
                    score=item.score,
                    label=item.label,
                    captured_at=item.captured_at,
                    device_uid=item.device_uid,
                    now=self._clock(),
                )
                r = await self._post(http, self.reports_url, n3)
                if r.status == 404:
                    self.notifier.forget(item.incident_id)
                    log.info(
                        "report %s: the ENC does not know linked reports; sent as an "
                        "alert of its own",
                        item.incident_id,
                    )
                    r = None
            if r is None:
                n1 = self.notifier.alert(
                    incident_id=item.incident_id,
                    coords=coords,
                    photo=item.photo,
                    score=item.score,
                    label=item.label,
                    captured_at=item.captured_at,
                    device_uid=item.device_uid,
                    now=self._clock(),
                )
                r = await self._post(http, self.url, n1)
            if r.status != 200:
                raise EncDeliveryError(f"HTTP {r.status} {r.text[:200]!r}")
            events = self.notifier.receive(r.body, self._clock())
            confirmed = [e for e in events if isinstance(e, AlertConfirmed)]
            if not confirmed:
                detail = getattr(events[0], "detail", "no event") if events else "no event"
                raise EncDeliveryError(f"the answer is not a valid N2: {detail}")
            await self.deliveries.submit((item.incident_id, confirmed[0].tenc))
        except EncDeliveryError as exc:
            attempt = item.attempts + 1
            jitter = int.from_bytes(secrets.token_bytes(2), "big") / 65536
            retry_at = self._clock() + backoff_delay(attempt, timing=self.timing, jitter=jitter)
            self.metrics.alerts.labels("failed").inc()
            log.warning(
                "alert %s: attempt %d failed (%s); next in %.1f s",
                item.incident_id,
                attempt,
                exc,
                (retry_at - self._clock()) / 1000,
            )
            await asyncio.to_thread(
                self.store.alert_failed, item.incident_id, retry_at=retry_at, error=str(exc)
            )
            return
        self.metrics.alerts.labels("delivered").inc()
        self.metrics.n1_to_n2.observe(time.perf_counter() - t0)
        started = self._started.pop(item.incident_id, None)
        if started is not None and item.attempts == 0:
            self.metrics.c3_to_n2.observe(time.perf_counter() - started)
        log.info("alert %s delivered to the ENC (attempt %d)", item.incident_id, item.attempts + 1)
