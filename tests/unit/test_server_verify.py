"""The stand-in photo verifier and the decision rule."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from server import StandInVerifier, Verdict, decide
from tests.support.world import jpeg


def solid(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 120, 120)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def verifier() -> StandInVerifier:
    return StandInVerifier(threshold=0.6, uncertainty_band=0.1, min_width=64, min_height=48)


def test_usable_photo_follows_the_device_score(verifier: StandInVerifier) -> None:
    photo = jpeg((320, 240))
    high = verifier.score(photo, device_score=0.95, device_label="person_down")
    low = verifier.score(photo, device_score=0.2, device_label="person_down")
    assert high.label == "person_down" and high.score > 0.8 and not high.uncertain
    assert low.score < 0.4
    assert decide(high, threshold=0.6).dangerous
    assert not decide(low, threshold=0.6).dangerous
    near = verifier.score(photo, device_score=0.68)
    assert near.uncertain


@pytest.mark.parametrize(("photo", "label"), [
    (solid((320, 240)), "blank_frame"),
    (jpeg((32, 24)), "too_small"),
    (b"\xff\xd8not really a jpeg", "undecodable"),
    (solid((320, 240), "PNG"), "not_jpeg"),
])
def test_unusable_photos_score_zero(verifier: StandInVerifier, photo: bytes, label: str) -> None:
    v = verifier.score(photo, device_score=1.0)
    assert (v.score, v.label) == (0.0, label)
    assert not decide(v, threshold=0.6).dangerous


def test_decision_reason_and_bounds() -> None:
    d = decide(Verdict(0.6, "fall", True), threshold=0.6)
    assert d.dangerous and d.reason == "fall: score 0.600 >= threshold 0.600 (uncertain)"
    with pytest.raises(ValueError):
        Verdict(1.5, "x", False)
