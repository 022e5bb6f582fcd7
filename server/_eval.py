"""Measuring the server's photo check on labelled images, alone or behind the pre-screen.

``evaluate_photos`` scores every image of a labels CSV (columns ``file`` and ``label``)
with the server's verifier and counts, per label, the images and how many reach the
threshold. With a ``PreScreen`` it measures the real two-stage path: an image counts as
flagged only when the pre-screen escalates it (a person down, or a close group that
could be a fight) and the server, given the pre-screen's score as the device's, then
calls it dangerous. It also counts at other thresholds (the trade-off curve) and times
the server's check.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge import EvalError, LabelledImage, PreScreen

from ._verify import PhotoVerifier

__all__ = [
    "CURVE_THRESHOLDS",
    "ClipEvalReport",
    "PhotoEvalReport",
    "evaluate_clips",
    "evaluate_photos",
]

CURVE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class _Counts:
    n: int = 0
    edge: int = 0
    flagged: int = 0
    at: dict[float, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PhotoEvalReport:
    """The result of ``evaluate_photos``."""

    labels: dict[str, _Counts]
    """Per label: images, flagged by the pre-screen, flagged in the end, per threshold."""
    threshold: float
    """The threshold ``flagged`` counts at."""
    after_edge: bool
    """Whether the pre-screen had to flag an image first."""
    ms_per_photo: float
    """Median time of the server's check per photo, in milliseconds."""
    flagged_files: tuple[str, ...]
    """The images flagged in the end."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "labels": {k: {"n": c.n, "flagged": c.flagged} for k, c in self.labels.items()},
            "threshold": self.threshold,
            "after_edge": self.after_edge,
            "curve": [
                {"threshold": t, "labels": {k: c.at[t] for k, c in self.labels.items()}}
                for t in CURVE_THRESHOLDS
            ],
            "ms_per_photo": round(self.ms_per_photo, 1),
        }
        if self.after_edge:
            out["edge"] = {k: {"n": c.n, "flagged": c.edge} for k, c in self.labels.items()}
        return out

    def format_table(self) -> str:
        width = max([len("label"), *(len(k) for k in self.labels)])
        head = f"{'label':<{width}}  {'n':>5}"
        if self.after_edge:
            head += f"  {'edge':>5}"
        head += f"  {'flagged':>7}  {'rate':>6}  " + " ".join(f"@{t:.1f}" for t in CURVE_THRESHOLDS)
        lines = [head]
        for label, c in self.labels.items():
            line = f"{label:<{width}}  {c.n:>5}"
            if self.after_edge:
                line += f"  {c.edge:>5}"
            rate = c.flagged / c.n if c.n else 0.0
            line += f"  {c.flagged:>7}  {rate:>6.1%}  " + " ".join(
                f"{c.at[t]:>4}" for t in CURVE_THRESHOLDS
            )
            lines.append(line)
        lines.append(
            f"threshold {self.threshold:.2f}"
            + (", after the pre-screen" if self.after_edge else ", server alone")
            + f"; server check {self.ms_per_photo:.0f} ms per photo (median)"
        )
        return "\n".join(lines)


def _load(path: Path) -> npt.NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EvalError(f"{path} is not an image OpenCV can read")
    return np.asarray(image, dtype=np.uint8)


def _jpeg_bytes(path: Path) -> bytes:
    # A pole always sends a JPEG: other image files are encoded as one first.
    data = path.read_bytes()
    if data.startswith(b"\xff\xd8"):
        return data
    ok, buf = cv2.imencode(".jpg", _load(path), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return bytes(buf.tobytes()) if ok else data


def evaluate_photos(
    items: Sequence[LabelledImage],
    verifier: PhotoVerifier,
    *,
    threshold: float,
    prescreen: PreScreen | None = None,
) -> PhotoEvalReport:
    labels: dict[str, _Counts] = {}
    times: list[float] = []
    flagged_files: list[str] = []
    for item in items:
        counts = labels.setdefault(item.label, _Counts(at={t: 0 for t in CURVE_THRESHOLDS}))
        counts.n += 1
        device_score: float | None = None
        device_label = ""
        if prescreen is not None:
            assessment = prescreen.assess_image(_load(item.path))
            if not assessment.flagged:
                continue  # the pole would not have reported it
            counts.edge += 1
            if assessment.person_down:
                device_score, device_label = assessment.score, "person_down"
            # A close group alone: one frame has no motion, so the pole has no fight to
            # report yet, and the server judges the photo on its own (``eval-clips``
            # measures fights the way the pole reports them).
        photo = _jpeg_bytes(item.path)
        t0 = time.perf_counter()
        verdict = verifier.score(photo, device_score=device_score, device_label=device_label)
        times.append(time.perf_counter() - t0)
        for t in CURVE_THRESHOLDS:
            counts.at[t] += verdict.score >= t
        if verdict.score >= threshold:
            counts.flagged += 1
            flagged_files.append(item.path.name)
    return PhotoEvalReport(
        labels,
        threshold,
        prescreen is not None,
        1000 * statistics.median(times) if times else 0.0,
        tuple(flagged_files),
    )


@dataclass(frozen=True)
class ClipEvalReport:
    """The result of ``evaluate_clips``: per label, clips, clips the pole reported, clips
    the server then called dangerous."""

    labels: dict[str, _Counts]
    threshold: float
    flagged_files: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": {k: {"n": c.n, "flagged": c.flagged} for k, c in self.labels.items()},
            "edge": {k: {"n": c.n, "flagged": c.edge} for k, c in self.labels.items()},
            "threshold": self.threshold,
            "curve": [
                {"threshold": t, "labels": {k: c.at[t] for k, c in self.labels.items()}}
                for t in CURVE_THRESHOLDS
            ],
        }

    def format_table(self) -> str:
        width = max([len("label"), *(len(k) for k in self.labels)])
        lines = [f"{'label':<{width}}  {'clips':>5}  {'pole':>5}  {'flagged':>7}  {'rate':>6}"]
        for label, c in self.labels.items():
            rate = c.flagged / c.n if c.n else 0.0
            lines.append(f"{label:<{width}}  {c.n:>5}  {c.edge:>5}  {c.flagged:>7}  {rate:>6.1%}")
        lines.append(
            f"threshold {self.threshold:.2f}; pole: the pre-screen reported during "
            "the clip; flagged: the server then called its snapshot dangerous"
        )
        return "\n".join(lines)


def evaluate_clips(
    items: Sequence[LabelledImage],
    make_prescreen: Callable[[], PreScreen],
    verifier: PhotoVerifier,
    *,
    threshold: float,
    fps: float = 10.0,
    hold: float = 0.0,
) -> ClipEvalReport:
    """The two stages on video clips, as a pole runs them: each clip plays through a fresh
    pre-screen at ``fps`` (its last frame held ``hold`` seconds); at each report the frame
    is the snapshot, and the server scores it with the report's score and label. A clip
    counts as flagged when the server calls one of its reports dangerous."""
    labels: dict[str, _Counts] = {}
    flagged_files: list[str] = []
    for item in items:
        counts = labels.setdefault(item.label, _Counts(at={t: 0 for t in CURVE_THRESHOLDS}))
        counts.n += 1
        prescreen = make_prescreen()
        best = -1.0
        reported = False
        for frame, t in _clip_frames(item.path, fps, hold):
            for detection in prescreen.process(frame, t).detections:
                reported = True
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
                if not ok:
                    continue
                verdict = verifier.score(
                    bytes(buf.tobytes()), device_score=detection.score, device_label=detection.label
                )
                best = max(best, verdict.score)
        counts.edge += reported
        for t in CURVE_THRESHOLDS:
            counts.at[t] += best >= t
        if best >= threshold:
            counts.flagged += 1
            flagged_files.append(item.path.name)
    return ClipEvalReport(labels, threshold, tuple(flagged_files))


def _clip_frames(
    path: Path, fps: float, hold: float
) -> Iterator[tuple[npt.NDArray[np.uint8], float]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise EvalError(f"{path} cannot be opened by OpenCV")
    native = capture.get(cv2.CAP_PROP_FPS) or 25.0
    every = max(1, round(native / fps))
    index = 0
    last: npt.NDArray[np.uint8] | None = None
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                last = np.asarray(frame, dtype=np.uint8)
                yield last, index / native
            index += 1
    finally:
        capture.release()
    if last is None:
        raise EvalError(f"{path} has no frames OpenCV can read")
    t = index / native
    for k in range(round(hold * fps)):
        yield last, t + k / fps
