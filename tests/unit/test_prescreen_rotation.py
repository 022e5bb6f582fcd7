"""Rotated passes, low-light equalisation and the single-image escalation, on the real model
and the shared frames (skipped, saying why, where either is absent)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edge import MOVENET, PoseDetector, PreScreen, PreScreenConfig, default_models_dir, model_status
from edge._decision import PostureRule, read_posture

UPRIGHT = "gmdcsa24_s3_adl07_0.2s.jpg"  # one person standing, facing the camera
LYING = "gmdcsa24_s3_fall16_5.5s.jpg"  # one person lying on the floor


@pytest.fixture(scope="module")
def models() -> Path:
    models = default_models_dir()
    status = model_status(models)[MOVENET.name]
    if status != "ok":
        pytest.skip(
            f"MoveNet is not installed in {models} (run `citywatch edge models install`): {status}"
        )
    return models


def image(shared_data: Path, name: str) -> npt.NDArray[np.uint8]:
    frame = cv2.imread(str(shared_data / "smoke" / name))
    assert frame is not None, name
    return np.asarray(frame, dtype=np.uint8)


def video_frame(shared_data: Path, video: str, t: float) -> npt.NDArray[np.uint8]:
    path = shared_data / "gmdcsa24" / video
    if not path.is_file():
        pytest.skip(f"{path} is absent (the GMDCSA24 videos are in the shared data)")
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, round(t * cap.get(cv2.CAP_PROP_FPS)))
    ok, frame = cap.read()
    cap.release()
    assert ok, f"{video} at {t} s"
    return np.asarray(frame, dtype=np.uint8)


def test_the_pass_that_turns_a_lying_body_upright_sees_it_better_and_maps_back(
    models: Path, shared_data: Path
) -> None:
    # A standing person turned a quarter clockwise looks like a person lying: the
    # counter-clockwise (270) pass sees them upright again, as MoveNet was trained.
    upright = image(shared_data, UPRIGHT)
    turned = np.ascontiguousarray(cv2.rotate(upright, cv2.ROTATE_90_CLOCKWISE))
    detector = PoseDetector.from_file(models, rotations=(0, 90, 270))
    straight, clockwise, counter = detector.detect_passes(turned)
    assert detector.invocations == 3
    assert counter and counter[0].score > (straight[0].score if straight else 0.0) + 0.1
    assert counter[0].score > clockwise[0].score if clockwise else True
    # Its keypoints, mapped back, are where the original's keypoints go under the turn:
    # (x, y) in the original is (1 - y, x) in the turned frame.
    (original,) = PoseDetector.from_file(models).detect(upright)[:1]
    expected = np.column_stack([1.0 - original.keypoints[:, 1], original.keypoints[:, 0]])
    good = (original.keypoints[:, 2] > 0.4) & (counter[0].keypoints[:, 2] > 0.4)
    assert good.sum() >= 8
    error = np.abs(counter[0].keypoints[good, :2] - expected[good]).max()
    assert error < 0.04, f"mapped keypoints are {error:.3f} of the frame off"
    reading = read_posture(counter[0], PostureRule())
    assert reading is not None and reading.down and reading.axis_angle > 70
    # detect() keeps one pose per person: the best view.
    merged = detector.detect(turned)
    assert len(merged) == 1 and merged[0].score == counter[0].score


def test_the_aslant_pass_sees_a_body_lying_at_45_degrees_and_maps_it_back(
    models: Path, shared_data: Path
) -> None:
    # A standing person turned by 45 degrees clockwise (on a canvas holding all of the
    # picture) lies aslant: the 315 pass turns them upright again.
    upright = image(shared_data, UPRIGHT)
    h, w = upright.shape[:2]
    side = int(np.hypot(w, h)) + 2
    canvas = np.zeros((side, side, 3), np.uint8)
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = upright
    turn = cv2.getRotationMatrix2D((side / 2, side / 2), -45, 1.0)
    aslant = np.ascontiguousarray(cv2.warpAffine(canvas, turn, (side, side)), dtype=np.uint8)
    detector = PoseDetector.from_file(models, rotations=(0, 45, 90, 270, 315))
    straight, _, _, _, counter = detector.detect_passes(aslant)
    assert detector.invocations == 5
    assert counter and counter[0].score > (straight[0].score if straight else 0.0)
    # Keypoints mapped back are where the original's go under the same turn.
    (original,) = PoseDetector.from_file(models).detect(upright)[:1]
    px = original.keypoints[:, :2] * (w, h) + (x0, y0)
    expected = (np.column_stack([px, np.ones(17)]) @ turn.T) / side
    good = (original.keypoints[:, 2] > 0.4) & (counter[0].keypoints[:, 2] > 0.4)
    assert good.sum() >= 8
    error = np.abs(counter[0].keypoints[good, :2] - expected[good]).max()
    assert error < 0.04, f"mapped keypoints are {error:.3f} of the frame off"
    # The box follows the body, not the turned picture's square hull around it.
    x0b, y0b, x1b, y1b = counter[0].bbox
    kx, ky = counter[0].keypoints[good, 0], counter[0].keypoints[good, 1]
    assert x0b <= kx.min() and kx.max() <= x1b and y0b <= ky.min() and ky.max() <= y1b
    reading = read_posture(counter[0], PostureRule())
    assert reading is not None and 30 < reading.axis_angle < 60


def test_a_dark_frame_is_equalised_and_the_turned_pass_finds_the_person_down(
    models: Path, shared_data: Path
) -> None:
    # Subject 2's fall 12, lying on the floor, at a quarter of the light.
    frame = video_frame(shared_data, "Subject 2/Fall/12.mp4", 10.5)
    dark = (frame.astype(np.float32) * 0.25).astype(np.uint8)
    plain = PoseDetector.from_file(models, rotations=(0,), low_light=0.0)
    assert plain.detect(dark) == (), "upright pass on the raw dark frame finds nobody"
    strong = PoseDetector.from_file(models, rotations=(0, 90, 270), low_light=60.0)
    poses = strong.detect(dark)
    assert strong.brightened == 1
    readings = [read_posture(p, PostureRule()) for p in poses]
    assert any(r is not None and r.down for r in readings)
    strong.detect(frame)
    assert strong.brightened == 1, "a normally lit frame is left as it is"


def test_rotations_and_low_light_come_from_the_config(models: Path) -> None:
    config = PreScreenConfig.model_validate(
        {"model": {"models_dir": str(models), "rotations": [0, 270], "low_light": 0}}
    )
    prescreen = PreScreen.from_config(config)
    assert prescreen.detector.rotations == (0, 270) and prescreen.detector.low_light == 0.0
    prescreen.assess_image(np.zeros((240, 320, 3), np.uint8))
    assert prescreen.detector.invocations == 2
    default = PreScreen.from_config(
        PreScreenConfig.model_validate({"model": {"models_dir": str(models)}})
    )
    assert default.detector.rotations == (0, 90, 270)


def test_assess_image_flags_a_person_down_not_a_person_standing(
    models: Path, shared_data: Path
) -> None:
    prescreen = PreScreen.from_config(
        PreScreenConfig.model_validate({"model": {"models_dir": str(models)}})
    )
    lying = prescreen.assess_image(image(shared_data, LYING))
    assert lying.person_down and lying.flagged and lying.score > 0.5
    standing = prescreen.assess_image(image(shared_data, UPRIGHT))
    assert not standing.person_down and not standing.close_group and not standing.flagged
    empty = prescreen.assess_image(np.zeros((480, 640, 3), np.uint8))
    assert not empty.flagged and empty.poses == ()


def test_the_close_group_escalation_follows_its_setting(models: Path, shared_data: Path) -> None:
    # Two people side by side in the street frame: a close group only with a wide net.
    frame = image(shared_data, "opencv_vtest_f100.jpg")
    wide = PreScreen.from_config(
        PreScreenConfig.model_validate(
            {"model": {"models_dir": str(models)}, "fight": {"image_group_distance": 5.0}}
        )
    )
    seen = wide.assess_image(frame)
    judged = [r for r in seen.readings if r is not None]
    assert len(judged) >= 2, "the model finds two walkers in this street frame"
    assert seen.close_group and seen.flagged and not seen.person_down
    off = PreScreen.from_config(
        PreScreenConfig.model_validate(
            {"model": {"models_dir": str(models)}, "fight": {"image_group_distance": None}}
        )
    )
    assert not off.assess_image(frame).flagged
    no_fights = PreScreen.from_config(
        PreScreenConfig.model_validate(
            {
                "model": {"models_dir": str(models)},
                "fight": {"enabled": False, "image_group_distance": 5.0},
            }
        )
    )
    assert not no_fights.assess_image(frame).close_group
