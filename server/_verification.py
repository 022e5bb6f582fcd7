"""Verification of stored incidents: the photo check off the event loop, the decision
(``_verify.decide``), fusion and the ENC alert in the decision's transaction (grouped
like the ingest's commits), blocking a device whose reports keep being dismissed, and
recovery of incidents left undecided by the last run."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge import ModelError

from ._batch import GroupCommit
from ._config import VerificationConfig
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

    async def verify(
        self,
        incident_id: str,
        *,
        t0: float | None = None,
        known: tuple[IncidentInfo, bytes] | None = None,
    ) -> Outcome | None:
        """Check the photo, decide and record the decision; None when the incident was
        decided already (a repeated report, or another replica)."""
        t1 = time.perf_counter()
        if known is None:
            known = await asyncio.to_thread(self.store.incident_for_verification, incident_id)
        info, photo = known
        verdict = await self.verifier.verify(
            photo, device_score=info.device_score, device_label=info.label
        )
        v = self.config
        decision = decide(verdict, threshold=v.threshold)
        outcome = await self.decisions.submit(
            DecisionRecord(
                incident_id,
                score=verdict.score,
                uncertain=verdict.uncertain,
                dangerous=decision.dangerous,
                reason=decision.reason,
                fuse_within_m=v.fuse_within_m,
                fuse_within_ms=v.fuse_within_s * 1000,
            )
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
        """Incidents stored (and acknowledged with C4) but not verified when the server
        last stopped are verified now; their alerts then go out as usual."""
        pending = await asyncio.to_thread(self.store.undecided_incidents)
        for incident_id in pending:
            log.info("verifying incident %s left over from the last run", incident_id)
            await self.verify(incident_id)
