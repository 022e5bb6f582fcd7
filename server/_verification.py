"""Verification of stored incidents: the photo check off the event loop, the decision
(``_verify.decide``), fusion and the ENC alert in the decision's transaction (grouped
like the ingest's commits), blocking a device whose reports keep being dismissed, and
recovery of undecided incidents: those the last run left, and, while the server runs,
those whose decision could not be written (the database down: tried again until it is
back) or failed otherwise (looked for again every ``SWEEP_EVERY_S``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from edge import ModelError

from ._batch import GroupCommit
from ._config import VerificationConfig
from ._database import DATABASE_UNAVAILABLE, RETRY_FIRST_S, RETRY_MAX_S
from ._directory import RegistryDirectory
from ._errors import VerifierModelError
from ._logsafe import EscapeControlCharacters
from ._metrics import ServerMetrics
from ._models import VerifierModels
from ._outcome import Outcome
from ._store import DecisionRecord, IncidentInfo, Store
from ._verify import PoseVerifier, Verdict, VerifierPool, VerifierSettings, decide

__all__ = ["VERIFIER_ACTOR", "PreloadedPoseVerifier", "Verification", "read_models"]

log = logging.getLogger("citywatch.server")
log.addFilter(EscapeControlCharacters())

_R = TypeVar("_R")

SWEEP_EVERY_S = 30.0
"""How often the undecided incidents are looked for."""
SWEEP_AFTER_S = 120.0
"""How long an incident stays undecided before the sweep decides it (a new one is
being decided by the replica that stored it)."""

VERIFIER_ACTOR = "server:verification"
"""The audit log's actor of a block decided by the verification."""


def read_models(models_dir: Path | None) -> VerifierModels:
    """Every model of the photo check, read and checked against its pin; raises
    ``VerifierModelError`` naming the file and the install command."""
    try:
        return VerifierModels(models_dir)
    except ModelError as exc:
        raise VerifierModelError(f"photo check: {exc}") from None


class PreloadedPoseVerifier:
    """The photo check in the server's own process (``workers = 0``) over models read
    once, by the start-up check: ``load`` builds the pose models from those bytes (off
    the event loop), without reading the files again."""

    def __init__(self, models: VerifierModels, settings: VerifierSettings) -> None:
        self._models: VerifierModels | None = models
        self._settings = settings
        self._verifier: PoseVerifier | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._verifier is None:
                assert self._models is not None
                self._verifier = PoseVerifier(self._models, self._settings)
                self._models = None  # the interpreters hold what they need

    def score(
        self, photo: bytes, *, device_score: float | None = None, device_label: str = ""
    ) -> Verdict:
        self.load()
        assert self._verifier is not None
        return self._verifier.score(photo, device_score=device_score, device_label=device_label)


class Verification:
    """Decides incidents. ``alerted(incident_id, t0)`` is told of each new alert (the
    ENC outbox sends it at once)."""

    def __init__(
        self,
        config: VerificationConfig,
        *,
        store: Store,
        verifier: VerifierPool,
        directory: RegistryDirectory,
        metrics: ServerMetrics,
        clock: Callable[[], int],
        alerted: Callable[[str, float | None], None],
    ) -> None:
        self.config = config
        self.store = store
        self.verifier = verifier
        self.directory = directory
        self.metrics = metrics
        self._clock = clock
        self._alerted = alerted
        # Decisions that finish while one is being committed share the next commit.
        self.decisions: GroupCommit[DecisionRecord, Outcome | None] = GroupCommit(store.decide_many)
        self._deciding: set[str] = set()

    async def verify(
        self,
        incident_id: str,
        *,
        t0: float | None = None,
        known: tuple[IncidentInfo, bytes] | None = None,
    ) -> Outcome | None:
        """Check the photo, decide and record the decision; None when the incident was
        decided already (a repeated report, or another replica, or this process
        meanwhile).

        The incident was acknowledged (C4): the device has deleted its copy. While the
        database is down or restarting, reading the incident and writing the decision
        are tried again, with a growing pause, until they succeed: an undecided incident
        is never dropped by a running server."""
        if incident_id in self._deciding:
            return None
        self._deciding.add(incident_id)
        try:
            return await self._verify(incident_id, t0=t0, known=known)
        finally:
            self._deciding.discard(incident_id)

    async def _verify(
        self, incident_id: str, *, t0: float | None, known: tuple[IncidentInfo, bytes] | None
    ) -> Outcome | None:
        t1 = time.perf_counter()
        if known is None:
            known = await self._until_written(
                incident_id,
                "reading it",
                lambda: asyncio.to_thread(self.store.incident_for_verification, incident_id),
            )
        info, photo = known
        verdict = await self.verifier.verify(
            photo, device_score=info.device_score, device_label=info.label
        )
        v = self.config
        decision = decide(verdict, threshold=v.threshold)
        record = DecisionRecord(
            incident_id,
            score=verdict.score,
            uncertain=verdict.uncertain,
            dangerous=decision.dangerous,
            reason=decision.reason,
            fuse_within_m=v.fuse_within_m,
            fuse_within_ms=v.fuse_within_s * 1000,
        )
        outcome = await self._until_written(
            incident_id, "its decision", lambda: self.decisions.submit(record)
        )
        self.metrics.verification.observe(time.perf_counter() - t1)
        if outcome is None:
            return None
        self.metrics.incidents.labels(outcome.value).inc()
        log.info(
            "incident %s from %s: %s (%s)",
            incident_id,
            info.device_uid,
            outcome.value,
            decision.reason,
        )
        if outcome is Outcome.DANGEROUS:
            self._alerted(incident_id, t0)
        elif outcome is Outcome.FUSED:  # queued as a linked report of its alert
            self._alerted(incident_id, None)
        elif outcome is Outcome.DISMISSED:
            await self.block_if_dismissed_too_often(info.device_uid)
        return outcome

    async def _until_written(
        self, incident_id: str, what: str, step: Callable[[], Awaitable[_R]]
    ) -> _R:
        """``step()``, again after a pause while the database cannot be reached."""
        pause = RETRY_FIRST_S
        while True:
            try:
                return await step()
            except DATABASE_UNAVAILABLE as exc:
                log.warning(
                    "incident %s: the database is unavailable (%s); %s is tried again in %.1f s",
                    incident_id,
                    type(exc).__name__,
                    what,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_S)

    async def block_if_dismissed_too_often(self, uid: str) -> None:
        """``block_after_dismissed`` dismissed reports within ``dismissed_period_s``
        block the device, audited once however many decisions see it at once."""
        v = self.config
        if v.block_after_dismissed <= 0:
            return
        since = self._clock() - v.dismissed_period_s * 1000
        n = await asyncio.to_thread(self.store.dismissed_count, uid, since=since)
        if n < v.block_after_dismissed:
            return
        device = await asyncio.to_thread(self.store.get_device, uid)
        if device.blocked:
            return
        reason = (
            f"{n} reports dismissed by verification within {v.dismissed_period_s} s "
            f"(limit {v.block_after_dismissed})"
        )
        info = await asyncio.to_thread(
            self.store.block_unless_blocked, uid, actor=VERIFIER_ACTOR, reason=reason
        )
        if info is None:  # blocked meanwhile by another verification or replica
            return
        self.directory.update(info)
        log.warning("device %s blocked: %s", uid, reason)

    async def recover(self) -> None:
        """Incidents stored (and acknowledged with C4) but not decided are decided here,
        for as long as the server runs: at the start those the last run left, then
        every ``SWEEP_EVERY_S`` those undecided for ``SWEEP_AFTER_S`` (a decision that
        failed for a reason other than the database, or another replica that stopped
        while deciding). Their alerts then go out as usual."""
        first = True
        while True:
            older = None if first else int(SWEEP_AFTER_S * 1000)
            try:
                pending = await asyncio.to_thread(
                    self.store.undecided_incidents, older_than_ms=older
                )
            except DATABASE_UNAVAILABLE as exc:
                log.warning(
                    "undecided incidents: the database is unavailable (%s); looked for "
                    "again in %.0f s",
                    type(exc).__name__,
                    RETRY_MAX_S,
                )
                await asyncio.sleep(RETRY_MAX_S)
                continue
            for incident_id in pending:
                if incident_id in self._deciding:
                    continue
                if first:
                    log.info("verifying incident %s left over from the last run", incident_id)
                else:
                    log.warning("verifying incident %s, undecided for a while", incident_id)
                try:
                    await self.verify(incident_id)
                except Exception:
                    log.exception(
                        "incident %s could not be decided; tried again later", incident_id
                    )
            first = False
            await asyncio.sleep(SWEEP_EVERY_S)
