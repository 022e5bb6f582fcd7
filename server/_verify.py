"""Photo verification between C3 and N1: the server's own look at the photo, a score for
"this photo shows a dangerous situation" and the decision that follows from the threshold.

``PoseVerifier`` is the real check (the paper's "the trusted server can analyze and
authenticate the received photograph using AI methods"):

1. ``_photo.prepare_photo``: the JPEG decoded with a cap on its pixels, rejected when it
   cannot show anything (not a JPEG, undecodable, tiny, a decompression bomb, one colour),
   then CLAHE and a light Gaussian blur.
2. ``_scene.SceneReader``: the people in it at any rotation and how each body lies.
3. Scores from that geometry:
   - *person down*, per person: a logistic model over the body's tilt, how far the head
     is above the hips and the ankles below them, fitted once on a tuning split
     (``bench/fit_verifier.py`` refits it and prints the figures; docs/detection.md says
     on which data);
   - *fight*: a single photo shows no motion, so the pole's temporal decision is checked
     against the photo: people in it, two close together agreeing best.
4. The device's own score is one input, with a small weight, and only when the photo
   shows a person: a photo of nobody scores 0 whatever the device says.

``VerifierPool`` runs a verifier off the event loop: worker processes that each load
the models once (``workers`` >= 1), or one worker thread in the server's process
(``workers = 0``, for small installations and tests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge import ModelError

from ._errors import VerifierModelError
from ._models import VerifierModels
from ._outcome import Outcome
from ._photo import PhotoRejected, prepare_photo
from ._scene import BodyGeometry, SceneReader

__all__ = [
    "Decision",
    "PhotoVerifier",
    "PoseVerifier",
    "Verdict",
    "VerifierPool",
    "VerifierSettings",
    "check_models",
    "decide",
    "fight_score",
    "person_down_score",
    "togetherness",
    "usable",
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a verifier thinks of one photo."""

    score: float
    """0.0 (nothing dangerous) .. 1.0 (certainly dangerous)."""
    label: str
    """What it saw: ``person_down``, ``fight``, ``no_danger``, ``no_person``, or why the photo
    is unusable (``not_jpeg``, ``undecodable``, ``too_small``, ``too_large``,
    ``blank_frame``)."""
    uncertain: bool
    """True when the score is too close to the threshold to call."""
    detail: str = ""
    """What the score rests on, in words (people found, their scores, a rejection reason)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError("a verdict's score is in 0.0..1.0")


class PhotoVerifier(Protocol):
    """Scores a photo. ``device_score``/``device_label`` are the device's own opinion,
    which a verifier may use as one input but must not follow alone."""

    def score(
        self, photo: bytes, *, device_score: float | None = None, device_label: str = ""
    ) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """The server's decision on an incident, from its photo alone (fusion with other
    reports comes after, in the decision's transaction)."""

    outcome: Outcome
    """``Outcome.DANGEROUS`` (alert the ENC) or ``Outcome.DISMISSED``."""
    verdict: Verdict
    """The verifier's verdict it rests on."""
    reason: str
    """Why, in words (stored with the incident)."""

    def __post_init__(self) -> None:
        if self.outcome is Outcome.FUSED:
            raise ValueError("a photo's decision is dangerous or dismissed; fusion is the store's")

    @property
    def dangerous(self) -> bool:
        """True: alert the ENC."""
        return self.outcome is Outcome.DANGEROUS


def decide(verdict: Verdict, *, threshold: float) -> Decision:
    """Dangerous at or above ``threshold``, dismissed below."""
    dangerous = verdict.score >= threshold
    rel = ">=" if dangerous else "<"
    detail = f"; {verdict.detail}" if verdict.detail else ""
    return Decision(
        Outcome.DANGEROUS if dangerous else Outcome.DISMISSED,
        verdict,
        f"{verdict.label}: score {verdict.score:.3f} {rel} threshold {threshold:.3f}"
        + (" (uncertain)" if verdict.uncertain else "")
        + detail,
    )


# -- the scores -------------------------------------------------------------------------

# A reading is used only when the landmark model is sure it shows a person whose torso it
# can see, and the torso is not implausibly large (a ghost spanning the picture).
_MIN_PRESENCE = 0.55
_MIN_TORSO_VISIBLE = 0.7
_MAX_TORSO_SHARE = 0.35
# Below this torso length (pixels of the analysed photo) the landmarks are guesses.
_MIN_TORSO_PX = 20.0
# Logistic weights over ``_down_features`` (head rise, sine of the body's tilt, ankle
# drop) and bias; fitted by bench/fit_verifier.py on GMDCSA24 subjects 1-2 and the
# lower-numbered half of the no-fight clips (docs/detection.md).
_DOWN_WEIGHTS = (0.018, 2.235, -1.358)
_DOWN_BIAS = -0.359
# People closer than this many torso lengths (hips to hips) count as together.
_TOGETHER = 2.5


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def usable(body: BodyGeometry, long_side: int) -> bool:
    """Whether a reading is trustworthy enough to score (see the constants above)."""
    return (
        body.presence >= _MIN_PRESENCE
        and body.torso_visible >= _MIN_TORSO_VISIBLE
        and _MIN_TORSO_PX <= body.torso_px <= _MAX_TORSO_SHARE * long_side
    )


def _down_features(b: BodyGeometry) -> tuple[float, float, float]:
    # Head below the hips and ankles above them is a person lying towards the camera
    # (a pole looks down: what is nearer is lower in the picture), not one upside down.
    head, ankles = b.head_rise, b.ankle_drop
    legs = b.legs_visible >= 0.4
    tilt = (b.torso_tilt + b.body_tilt) / 2 if legs else b.torso_tilt
    return (
        max(-1.5, min(1.5, head)),
        math.sin(math.radians(tilt)),
        max(-1.0, min(2.0, ankles)) if legs else 0.6,
    )


def person_down_score(
    body: BodyGeometry, weights: Sequence[float] = _DOWN_WEIGHTS, bias: float = _DOWN_BIAS
) -> float:
    """How likely this person is lying or collapsed, 0..1."""
    if (
        body.legs_visible >= 0.4
        and (body.torso_tilt + body.body_tilt) / 2 > 55
        and body.ankle_drop > 0.6
    ):
        # A body across the picture with the ankles well below the hips: someone bent
        # forward (sitting, picking something up), or a walker read wrongly; not down.
        return 0.0
    return _sigmoid(sum(w * f for w, f in zip(weights, _down_features(body), strict=True)) + bias)


def togetherness(people: Sequence[BodyGeometry]) -> float:
    """How close the closest two people are, 0..1: 1 touching, about 0.2 at
    ``_TOGETHER`` torso lengths apart, 0 with fewer than two people."""
    best = 0.0
    for i, a in enumerate(people):
        for b in people[i + 1 :]:
            gap = math.dist(a.centre, b.centre) / max(a.torso_px, b.torso_px, 1.0)
            best = max(best, math.exp(-gap / (_TOGETHER / 1.6)))
    return best


def fight_score(people: Sequence[BodyGeometry], device_score: float | None) -> float:
    """The photo's support for a fight the device saw, 0..1.

    A single photo shows no motion: the pole decides "fight" from the motion of people
    over two seconds and reports it with a score of 0.5 (at its threshold) or more. The
    server checks that the photo agrees: people in it, two or more close together
    agreeing best; a report at the pole's threshold with one person in the photo scores
    0.64. With nobody in it the score is 0 whatever the device says. (Nothing in one
    photo told fights from people standing together on the tuning frames: raised wrists
    and reach were at chance, docs/detection.md.)
    """
    if not people or device_score is None:
        return 0.0
    support = 0.85 + 0.15 * togetherness(people) if len(people) >= 2 else 0.75
    return support * (0.7 + 0.3 * max(0.0, min(1.0, device_score)))


# -- the verifier -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifierSettings:
    """What a ``PoseVerifier`` needs besides its models (from ``[verification]``)."""

    threshold: float = 0.6
    """The decision threshold (for the uncertainty flag)."""
    uncertainty_band: float = 0.1
    """Scores within this of the threshold are uncertain."""
    min_width: int = 64
    """Narrower photos are unusable."""
    min_height: int = 48
    """Lower photos are unusable."""
    max_pixels: int = 24_000_000
    """Photos with more pixels are refused before decoding (decompression bombs)."""
    long_side: int = 960
    """Photos are analysed with their long side at most this many pixels."""
    device_weight: float = 0.3
    """How far the device's own score moves a person-down score (by up to half this
    either way), when the photo shows a person."""


class PoseVerifier:
    """The server's photo check (module docstring). Not thread-safe: one per worker."""

    def __init__(self, models: VerifierModels, settings: VerifierSettings | None = None) -> None:
        self.settings = settings or VerifierSettings()
        self.reader = SceneReader(models)

    def score(
        self, photo: bytes, *, device_score: float | None = None, device_label: str = ""
    ) -> Verdict:
        """``device_score=None``: no device opinion (an evaluation of bare photos)."""
        s = self.settings
        prepared = prepare_photo(
            photo,
            max_pixels=s.max_pixels,
            min_width=s.min_width,
            min_height=s.min_height,
            long_side=s.long_side,
        )
        if isinstance(prepared, PhotoRejected):
            return Verdict(0.0, prepared.label, False, prepared.reason)
        long_side = max(prepared.rgb.shape[:2])
        people = [p for p in self.reader.read(prepared.rgb) if usable(p, long_side)]
        if not people:
            return Verdict(0.0, "no_person", False, "nobody in the photo")
        down = max(person_down_score(p) for p in people)
        fight = fight_score(people, device_score if device_label == "fight" else None)
        if device_score is not None:
            down += s.device_weight * (max(0.0, min(1.0, device_score)) - 0.5)
        down = max(0.0, min(1.0, down))
        score, label = (fight, "fight") if fight > down else (down, "person_down")
        if score < s.threshold:
            label = "no_danger"
        score = round(score, 4)
        uncertain = abs(score - s.threshold) < s.uncertainty_band
        device = "none" if device_score is None else f"{device_score:.2f}"
        detail = (
            f"{len(people)} {'person' if len(people) == 1 else 'people'}, person down "
            f"{down:.2f}, fight {fight:.2f}, device {device}"
            + (f" ({device_label})" if device_label else "")
        )
        return Verdict(score, label, uncertain, detail)


# -- off the event loop -----------------------------------------------------------------

_worker: PoseVerifier | None = None


def _die_with_parent() -> None:
    # A server killed outright (SIGKILL, OOM) must not leave its workers behind holding
    # the models' memory: Linux ends this process when its parent ends.
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _init_worker(models_dir: str | None, settings: VerifierSettings, nice: int = 0) -> None:
    global _worker
    _die_with_parent()
    if nice:
        # Below the server's own process: the contact phase (devices wait for C2 and C4)
        # keeps the cores it needs; the checks queue behind it and take what is left.
        with contextlib.suppress(OSError):
            os.nice(nice)
    _worker = PoseVerifier(VerifierModels(Path(models_dir) if models_dir else None), settings)


def _score_in_worker(photo: bytes, device_score: float | None, device_label: str) -> Verdict:
    assert _worker is not None, "worker not initialised"
    return _worker.score(photo, device_score=device_score, device_label=device_label)


def _ready() -> bool:
    return _worker is not None


def check_models(models_dir: Path | None) -> None:
    """Raise ``VerifierModelError`` (naming the file and the install command) unless every
    model of the photo check is in ``models_dir`` and is the pinned file."""
    try:
        VerifierModels(models_dir)
    except ModelError as exc:
        raise VerifierModelError(f"photo check: {exc}") from None


class VerifierPool:
    """Runs photo checks off the event loop; ``await pool.verify(...)``.

    ``workers`` >= 1: that many worker processes, each loading the models once at start
    (``start()`` waits until they have, so a missing model stops the server at start-up).
    ``workers = 0``: one thread in this process. ``verifier=`` runs a given verifier (one
    thread, calls serialised), for tests and embedders. ``nice``: the worker processes'
    niceness above the server's.
    """

    def __init__(
        self,
        *,
        models_dir: Path | None = None,
        settings: VerifierSettings | None = None,
        workers: int = 1,
        verifier: PhotoVerifier | None = None,
        nice: int = 0,
    ) -> None:
        self.models_dir = models_dir
        self.settings = settings or VerifierSettings()
        self.workers = workers
        self.nice = nice
        self._verifier = verifier
        self._lock = threading.Lock()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self, *, models_checked: bool = False) -> None:
        """Load the models (in every worker). Raises ``VerifierModelError`` when one is
        missing or not the pinned file. ``models_checked``: the caller has just read and
        checked them (``read_models``), so this process does not read them again only to
        check them (the workers read their own)."""
        load_here = self._verifier is None and not (models_checked and self.workers > 0)
        try:
            models = VerifierModels(self.models_dir) if load_here else None
        except ModelError as exc:
            raise VerifierModelError(f"photo check: {exc}") from None
        if models is not None and self.workers == 0:
            self._verifier = PoseVerifier(models, self.settings)
        del models
        if self._verifier is not None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="citywatch-verify"
            )
            return
        # spawn: the server's process has threads (asyncio, MQTT); forking it is unsafe.
        self._processes = concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(self.models_dir) if self.models_dir else None, self.settings, self.nice),
        )
        # Each worker loads its models in its initializer; one call per worker makes every
        # worker start now, and a failing initializer breaks the pool here, not later.
        try:
            for f in [self._processes.submit(_ready) for _ in range(self.workers)]:
                f.result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            self.close()
            raise VerifierModelError(
                f"photo check: a worker process could not start ({exc})"
            ) from None

    def score_sync(
        self, photo: bytes, *, device_score: float | None = None, device_label: str = ""
    ) -> Verdict:
        """The check in the caller's thread (``citywatch server eval``)."""
        if self._verifier is None:
            try:
                self._verifier = PoseVerifier(VerifierModels(self.models_dir), self.settings)
            except ModelError as exc:
                raise VerifierModelError(f"photo check: {exc}") from None
        with self._lock:
            return self._verifier.score(photo, device_score=device_score, device_label=device_label)

    async def verify(
        self, photo: bytes, *, device_score: float | None = None, device_label: str = ""
    ) -> Verdict:
        loop = asyncio.get_running_loop()
        if self._processes is not None:
            return await loop.run_in_executor(
                self._processes, _score_in_worker, photo, device_score, device_label
            )
        if self._threads is None:
            self.start()
        assert self._threads is not None
        return await loop.run_in_executor(
            self._threads,
            lambda: self.score_sync(photo, device_score=device_score, device_label=device_label),
        )

    def close(self) -> None:
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)
            self._processes = None
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None
