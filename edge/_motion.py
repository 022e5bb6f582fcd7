"""The motion gate: skip the pose model on frames where nothing moved.

Each frame is shrunk to a small blurred grey image and compared with the one from the
last frame the model ran on (not with the previous frame, so that slow motion, a person
sinking to the ground over seconds, adds up until it counts). The model runs when enough
pixels changed, and in any case every ``recheck_seconds``, so a person who lies still
(and so no longer makes motion) stays watched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["GateDecision", "MotionGate"]

Reason = Literal["first", "motion", "recheck", "still", "disabled"]


@dataclass(frozen=True)
class GateDecision:
    """What the gate said about one frame."""

    infer: bool
    """Run the pose model on this frame."""
    reason: Reason
    """first frame, motion, periodic recheck, still (skip), or gate disabled."""
    changed_fraction: float
    """Fraction of (small, blurred) pixels that changed since the last inferred frame."""


class MotionGate:
    """Frame differencing on a downscaled grey frame; cheap (well under a millisecond)."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        width: int = 160,
        pixel_threshold: int = 18,
        min_changed_fraction: float = 0.003,
        recheck_seconds: float = 2.0,
        color_order: Literal["bgr", "rgb"] = "bgr",
    ) -> None:
        if width < 16:
            raise ValueError("width must be at least 16 pixels")
        self.enabled = enabled
        self.width = width
        self.pixel_threshold = pixel_threshold
        self.min_changed_fraction = min_changed_fraction
        self.recheck_seconds = recheck_seconds
        self._gray_code = cv2.COLOR_BGR2GRAY if color_order == "bgr" else cv2.COLOR_RGB2GRAY
        self._reference: npt.NDArray[np.uint8] | None = None
        self._reference_time = 0.0

    def _small(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        h, w = frame.shape[:2]
        height = max(1, round(h * self.width / w))
        small = cv2.resize(frame, (self.width, height), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, self._gray_code)
        # Blur so sensor noise and compression artefacts do not count as motion.
        return np.asarray(cv2.GaussianBlur(gray, (5, 5), 0), dtype=np.uint8)

    def check(self, frame: npt.NDArray[np.uint8], t: float) -> GateDecision:
        """Decide for one frame; when the answer is to infer, the frame becomes the new
        reference."""
        if not self.enabled:
            return GateDecision(True, "disabled", 1.0)
        small = self._small(frame)
        ref = self._reference
        if ref is None or ref.shape != small.shape or t < self._reference_time:
            self._reference, self._reference_time = small, t
            return GateDecision(True, "first", 1.0)
        changed = float(np.count_nonzero(cv2.absdiff(small, ref) > self.pixel_threshold))
        fraction = changed / small.size
        if fraction >= self.min_changed_fraction:
            reason: Reason = "motion"
        elif t - self._reference_time >= self.recheck_seconds:
            reason = "recheck"
        else:
            return GateDecision(False, "still", fraction)
        self._reference, self._reference_time = small, t
        return GateDecision(True, reason, fraction)

    def reset(self) -> None:
        """Forget the reference (after a camera restart, or a gap in frames)."""
        self._reference = None
