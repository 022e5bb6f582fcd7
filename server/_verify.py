"""Photo verification between C3 and N1: a score for "this photo shows a dangerous
situation" and the decision that follows from the configured threshold.

``PhotoVerifier`` is the interface; ``StandInVerifier`` is the placeholder until the
person/pose models arrive: it checks that the photo is a usable picture and otherwise
trusts the device's own score, nudged by how much the frame has in it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Protocol

from PIL import Image, ImageStat, UnidentifiedImageError

__all__ = ["Decision", "PhotoVerifier", "StandInVerifier", "Verdict", "decide"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a verifier thinks of one photo."""

    score: float
    """0.0 (nothing dangerous) .. 1.0 (certainly dangerous)."""
    label: str
    """What it saw ("person_down", "blank_frame", ...)."""
    uncertain: bool
    """True when the score is too close to call."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError("a verdict's score is in 0.0..1.0")


class PhotoVerifier(Protocol):
    """Scores a photo. ``device_score``/``device_label`` are the device's own opinion,
    which a verifier may use or ignore."""

    def score(self, photo: bytes, *, device_score: float = 0.0,
              device_label: str = "") -> Verdict:
        ...


@dataclass(frozen=True, slots=True)
class Decision:
    """The server's decision on an incident."""

    dangerous: bool
    """True: alert the ENC."""
    verdict: Verdict
    """The verifier's verdict it rests on."""
    reason: str
    """Why, in words (stored with the incident)."""


def decide(verdict: Verdict, *, threshold: float) -> Decision:
    dangerous = verdict.score >= threshold
    rel = ">=" if dangerous else "<"
    return Decision(dangerous, verdict,
                    f"{verdict.label}: score {verdict.score:.3f} {rel} threshold {threshold:.3f}"
                    + (" (uncertain)" if verdict.uncertain else ""))


class StandInVerifier:
    """Placeholder verifier: unusable photos (undecodable, too small, a uniform frame)
    score 0; usable ones get the device's score blended with a little image evidence."""

    # A frame whose luminance barely varies is a covered lens or a dead sensor.
    _BLANK_STDDEV = 3.0

    def __init__(self, *, threshold: float, uncertainty_band: float, min_width: int = 64,
                 min_height: int = 48) -> None:
        self.threshold = threshold
        self.band = uncertainty_band
        self.min_width = min_width
        self.min_height = min_height

    def score(self, photo: bytes, *, device_score: float = 0.0,
              device_label: str = "") -> Verdict:
        try:
            with Image.open(io.BytesIO(photo)) as img:
                if img.format != "JPEG":
                    return Verdict(0.0, "not_jpeg", False)
                img.load()
                width, height = img.size
                stddev = ImageStat.Stat(img.convert("L")).stddev[0]
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            return Verdict(0.0, "undecodable", False)
        if width < self.min_width or height < self.min_height:
            return Verdict(0.0, "too_small", False)
        if stddev < self._BLANK_STDDEV:
            return Verdict(0.0, "blank_frame", False)
        texture = min(1.0, stddev / 40.0)
        score = max(0.0, min(1.0, 0.85 * device_score + 0.15 * texture))
        uncertain = abs(score - self.threshold) < self.band
        return Verdict(round(score, 4), device_label or "unknown", uncertain)
