"""The server's photo check: real models (from the pinned packages), real photos.

The shipped demo footage (GMDCSA24, MIT) gives photos that need no shared data set; the
shared labelled images, where present, check each kind of scene.
"""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citywatch._footage import fall_photo, footage_frame
from server import PoseVerifier, Verdict, VerifierModelError, VerifierModels, VerifierPool, decide
from server._models import POSE_DETECTOR
from tests.support.world import jpeg

SMOKE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "smoke"


def encoded(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def verifier() -> PoseVerifier:
    return PoseVerifier(VerifierModels())


def test_a_person_lying_after_a_fall_is_dangerous(verifier: PoseVerifier) -> None:
    v = verifier.score(fall_photo())
    assert v.label == "person_down" and v.score >= 0.75, v
    assert decide(v, threshold=0.7).dangerous


def test_the_same_person_sitting_before_the_fall_is_not(verifier: PoseVerifier) -> None:
    v = verifier.score(footage_frame(0.5), device_score=1.0, device_label="person_down")
    assert v.score < 0.5 and v.label == "no_danger", v
    assert "1 person" in v.detail


@pytest.mark.parametrize(
    ("photo", "label"),
    [
        (encoded(Image.new("RGB", (640, 480), (0, 0, 0))), "blank_frame"),  # covered lens
        (encoded(Image.new("RGB", (640, 480), (120, 120, 120))), "blank_frame"),
        (jpeg((32, 24)), "too_small"),
        (b"\xff\xd8\xff\xe0 not really a jpeg", "undecodable"),
        (encoded(Image.new("RGB", (320, 240), (10, 200, 10)), "PNG"), "not_jpeg"),
        (b"", "not_jpeg"),
    ],
)
def test_unusable_photos_score_zero_whatever_the_device_says(
    verifier: PoseVerifier, photo: bytes, label: str
) -> None:
    v = verifier.score(photo, device_score=1.0, device_label="person_down")
    assert (v.score, v.label) == (0.0, label), v
    assert v.detail  # a reason in words


def test_a_decompression_bomb_is_refused_before_decoding(verifier: PoseVerifier) -> None:
    # 13000 x 13000 of one colour compresses to well under a megabyte.
    bomb = encoded(Image.new("L", (13000, 13000), 0))
    assert len(bomb) < 2 * 1024 * 1024
    v = verifier.score(bomb, device_score=1.0)
    assert (v.score, v.label) == (0.0, "too_large") and "169.0 MP" in v.detail


def test_a_photo_of_nobody_scores_zero_even_when_the_device_is_sure(verifier: PoseVerifier) -> None:
    rng = np.random.default_rng(7)
    texture = Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8))
    for label in ("person_down", "fight"):
        v = verifier.score(encoded(texture), device_score=1.0, device_label=label)
        assert (v.score, v.label) == (0.0, "no_person"), v
    street = jpeg((640, 480))  # a drawn street with a red blob: no person
    assert verifier.score(street, device_score=1.0).score == 0.0


def test_the_device_score_nudges_but_never_decides(verifier: PoseVerifier) -> None:
    sitting = footage_frame(0.5)
    sure = verifier.score(sitting, device_score=1.0)
    doubtful = verifier.score(sitting, device_score=0.0)
    alone = verifier.score(sitting)
    assert doubtful.score < alone.score < sure.score
    assert sure.score - doubtful.score <= 0.3 + 1e-6
    assert not decide(sure, threshold=0.6).dangerous


def test_a_fight_report_needs_people_in_the_photo(verifier: PoseVerifier) -> None:
    lying = fall_photo()
    with_people = verifier.score(lying, device_score=0.9, device_label="fight")
    assert with_people.score > 0.0
    empty = encoded(
        Image.fromarray((np.random.default_rng(3).random((360, 480, 3)) * 255).astype(np.uint8))
    )
    assert verifier.score(empty, device_score=0.9, device_label="fight").score == 0.0


def test_a_fight_the_pole_reports_is_confirmed_when_the_photo_shows_people(
    verifier: PoseVerifier,
) -> None:
    # The pole reports a fight with 0.5 at its threshold: a photo with a person in it
    # confirms it; the photo with people but no report behind it (score 0) does not.
    photo = footage_frame(0.5)  # a person sitting, not down
    at_threshold = verifier.score(photo, device_score=0.5, device_label="fight")
    assert at_threshold.label == "fight" and at_threshold.score >= 0.6, at_threshold
    assert verifier.score(photo, device_score=0.0, device_label="fight").label != "fight"


def test_decision_reason_and_bounds() -> None:
    d = decide(Verdict(0.7, "person_down", True, "1 person"), threshold=0.7)
    assert d.dangerous
    assert d.reason == "person_down: score 0.700 >= threshold 0.700 (uncertain); 1 person"
    with pytest.raises(ValueError):
        Verdict(1.5, "x", False)


def test_a_missing_model_stops_the_pool_at_start_with_the_fix(tmp_path: Path) -> None:
    pool = VerifierPool(models_dir=tmp_path, workers=0)
    with pytest.raises(VerifierModelError, match="citywatch server models install"):
        pool.start()


def test_a_damaged_model_is_refused(tmp_path: Path) -> None:
    src = VerifierModels().models_dir
    for name in (
        "pose_detection.tflite",
        "pose_landmark_full.tflite",
        "movenet_multipose_lightning.tflite",
    ):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    damaged = bytearray((tmp_path / POSE_DETECTOR.name).read_bytes())
    damaged[1000] ^= 0xFF
    (tmp_path / POSE_DETECTOR.name).write_bytes(bytes(damaged))
    with pytest.raises(VerifierModelError, match="SHA-256"):
        VerifierPool(models_dir=tmp_path, workers=0).start()


def test_the_pool_checks_photos_in_a_worker_process() -> None:
    async def check() -> tuple[Verdict, Verdict]:
        return (
            await pool.verify(fall_photo(), device_score=0.9, device_label="person_down"),
            await pool.verify(encoded(Image.new("RGB", (320, 240))), device_score=1.0),
        )

    pool = VerifierPool(workers=1)
    pool.start()
    try:
        v, blank = asyncio.run(check())
    finally:
        pool.close()
    assert v.label == "person_down" and v.score >= 0.75
    assert blank.label == "blank_frame"


def _smoke_rows() -> list[dict[str, str]]:
    if not (SMOKE / "labels.csv").is_file():
        return []
    with (SMOKE / "labels.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not _smoke_rows(), reason=f"shared labelled images absent ({SMOKE})")
def test_shared_smoke_images_lying_versus_upright(verifier: PoseVerifier) -> None:
    scores: dict[str, list[float]] = {}
    for row in _smoke_rows():
        v = verifier.score((SMOKE / row["file"]).read_bytes())
        scores.setdefault(row["label"], []).append(v.score)
    lying = scores["lying_ground"]
    assert sum(s >= 0.7 for s in lying) >= 6, lying  # of 8 (tuning-set frames)
    for label in ("upright", "upright_street_crowd"):
        assert max(scores[label]) < 0.5, (label, scores[label])


def test_workers_end_when_the_server_is_killed_outright() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    # A parent that starts a pool, prints its worker's pid, then waits to be killed.
    code = (
        "import os, sys\n"
        "from server import VerifierPool\n"
        "pool = VerifierPool(workers=1); pool.start()\n"
        "print(*[p for p in pool._processes._processes], flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert parent.stdout is not None
    worker = int(parent.stdout.readline().split()[0])
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{worker}/stat") as f:
            if f.read().split()[2] == "Z":
                break  # ended, waiting to be reaped by init
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its killed server")
