"""The motion gate: skip the pose model on frames where nothing moved.

Each frame is shrunk to a small blurred grey image and compared with the one from the
last frame the model ran on (not with the previous frame, so that slow motion, a person
sinking to the ground over seconds, adds up until it counts). The model runs when enough
pixels changed, and in any case every ``recheck_seconds``, so a person who lies still
(and so no longer makes motion) stays watched.

``MotionChaos`` measures, from dense optical flow on the same kind of small image, how
disorderly the motion in the scene is (one of the fight rule's two cues).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["ChaosSample", "GateDecision", "MotionChaos", "MotionGate"]

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


@dataclass(frozen=True)
class ChaosSample:
    """How violently and how disorderly a scene moved over one short step."""

    t: float
    """Time of the frame that ended the step."""
    changing: float
    """Fraction of pixels whose motion speed changed by more than ``speed_change`` pixels
    (of the small image) between this step and the previous one (the "violent flows"
    measure: fighting limbs speed up and stop all the time)."""
    spread: float
    """1 - the mean resultant length of the directions of the moving pixels: 0 when all
    move one way (a walker, a passing car), near 1 when they move every way."""
    jerk: float = 0.0
    """How much the moving pixels' motion changed since the step before, relative to how
    fast they move: the mean length of the change of their flow vectors over their mean
    speed (a walker keeps his motion: near 0.3; limbs that strike and stop: near 1)."""
    reversal: float = 0.0
    """Fraction of the pixels moving in both steps whose motion turned by more than 90
    degrees from one step to the next (back-and-forth motion)."""


class MotionChaos:
    """Dense optical flow (Farneback) on a small grey image, every ``step_seconds``.

    The scene's median flow is taken away first (a panning or shaking camera moves every
    pixel alike), then per step: which pixels move, in which directions, and how much
    their speed changed since the step before. Costs about a millisecond per step at the
    default 160-pixel width.
    """

    def __init__(
        self,
        *,
        width: int = 160,
        step_seconds: float = 0.1,
        moving_speed: float = 1.0,
        speed_change: float = 1.0,
        color_order: Literal["bgr", "rgb"] = "bgr",
    ) -> None:
        if width < 16:
            raise ValueError("width must be at least 16 pixels")
        self.width = width
        self.step_seconds = step_seconds
        self.moving_speed = moving_speed
        self.speed_change = speed_change
        self._gray_code = cv2.COLOR_BGR2GRAY if color_order == "bgr" else cv2.COLOR_RGB2GRAY
        self._prev: npt.NDArray[np.uint8] | None = None
        self._prev_t = 0.0
        self._prev_speed: npt.NDArray[np.float32] | None = None
        self._prev_flow: npt.NDArray[np.float32] | None = None

    def _small(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        h, w = frame.shape[:2]
        height = max(8, round(h * self.width / w))
        small = cv2.resize(frame, (self.width, height), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, self._gray_code)
        return np.asarray(cv2.GaussianBlur(gray, (3, 3), 0), dtype=np.uint8)

    def update(self, frame: npt.NDArray[np.uint8], t: float) -> ChaosSample | None:
        """Feed one frame; returns a sample when a step has passed since the last one."""
        prev = self._prev
        if prev is not None and 0 <= t - self._prev_t < self.step_seconds * 0.75:
            return None
        small = self._small(frame)
        if (
            prev is None
            or prev.shape != small.shape
            or t < self._prev_t
            or t - self._prev_t > 4 * self.step_seconds
        ):
            self._prev, self._prev_t, self._prev_speed = small, t, None
            self._prev_flow = None
            return None
        flow = cv2.calcOpticalFlowFarneback(prev, small, None, 0.5, 2, 9, 2, 5, 1.1, 0)
        # Speeds per step of the nominal length, so the figures do not depend on the fps.
        flow = flow * (self.step_seconds / max(t - self._prev_t, 1e-6))
        residual = flow - np.median(flow.reshape(-1, 2), axis=0)
        speed = np.asarray(np.hypot(residual[..., 0], residual[..., 1]), dtype=np.float32)
        moving = speed > self.moving_speed
        if int(moving.sum()) > 20:
            angles = np.arctan2(residual[..., 1][moving], residual[..., 0][moving])
            spread = 1.0 - float(np.hypot(np.cos(angles).mean(), np.sin(angles).mean()))
        else:
            spread = 0.0
        last, last_flow = self._prev_speed, self._prev_flow
        self._prev, self._prev_t, self._prev_speed = small, t, speed
        self._prev_flow = residual
        if last is None or last_flow is None:
            return None
        changing = float(np.count_nonzero(np.abs(speed - last) > self.speed_change)) / speed.size
        jerk = reversal = 0.0
        if int(moving.sum()) > 20:
            change = np.hypot(
                residual[..., 0] - last_flow[..., 0], residual[..., 1] - last_flow[..., 1]
            )
            jerk = float(change[moving].mean()) / max(float(speed[moving].mean()), 1e-6)
            both = moving & (last > self.moving_speed)
            if int(both.sum()) > 20:
                dot = (residual[..., 0] * last_flow[..., 0] + residual[..., 1] * last_flow[..., 1])[
                    both
                ]
                reversal = float(np.count_nonzero(dot < 0)) / int(both.sum())
        return ChaosSample(t, changing, spread, jerk, reversal)

    def reset(self) -> None:
        self._prev, self._prev_speed, self._prev_flow = None, None, None
