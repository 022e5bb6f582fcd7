"""The pose model on the real runtime: signature, coordinate mapping, ROI, tiles, refusal of
a tampered file. Needs the installed model (scripts/setup.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edge import (
    MOVENET,
    ModelError,
    PoseDetector,
    PreScreen,
    PreScreenConfig,
    default_models_dir,
    load_interpreter_class,
    load_verified_model,
    model_status,
)
from edge._decision import PostureRule, read_posture

UPRIGHT = "gmdcsa24_s3_adl07_0.2s.jpg"  # one person standing, facing the camera
LYING = "gmdcsa24_s3_fall16_5.5s.jpg"  # one person lying on the floor


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    models = default_models_dir()
    status = model_status(models)[MOVENET.name]
    if status != "ok":
        pytest.skip(
            f"MoveNet is not installed in {models} (run `citywatch edge models install`): {status}"
        )
    return load_verified_model(models / MOVENET.name)


@pytest.fixture(scope="module")
def detector(model_bytes: bytes) -> PoseDetector:
    return PoseDetector(model_bytes)


def image(shared_data: Path, name: str) -> npt.NDArray[np.uint8]:
    frame = cv2.imread(str(shared_data / "smoke" / name))
    assert frame is not None, name
    return np.asarray(frame, dtype=np.uint8)


def test_runtime_is_litert() -> None:
    _, name = load_interpreter_class()
    assert name.startswith("ai-edge-litert")


def test_model_signature(model_bytes: bytes) -> None:
    interpreter_class, _ = load_interpreter_class()
    interpreter = interpreter_class(model_content=model_bytes)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert inp["dtype"] == np.uint8
    assert list(inp["shape_signature"]) == [1, -1, -1, 3]  # any H, W (multiples of 32)
    assert list(out["shape"]) == [1, 6, 56]  # 6 people x (17 x (y, x, score) + box + score)


def test_empty_scenes_have_no_people(detector: PoseDetector) -> None:
    assert detector.detect(np.zeros((480, 640, 3), np.uint8)) == ()
    noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert detector.detect(noise) == ()


def test_frames_of_the_wrong_kind_are_programming_errors(detector: PoseDetector) -> None:
    with pytest.raises(ValueError):
        detector.detect(np.zeros((480, 640), np.uint8))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((480, 640, 3), np.float32))  # type: ignore[arg-type]


def test_finds_an_upright_person_the_right_way_up(
    detector: PoseDetector, shared_data: Path
) -> None:
    poses = detector.detect(image(shared_data, UPRIGHT))
    assert poses and poses[0].score > 0.3
    kp = poses[0].keypoints
    nose_y, ankles_y = kp[0, 1], kp[15:17, 1].mean()
    assert ankles_y - nose_y > 0.5, "feet well below the head"
    reading = read_posture(poses[0], PostureRule())
    assert reading is not None and not reading.lying_posture and reading.axis_angle < 30


def test_finds_a_lying_person_lying(detector: PoseDetector, shared_data: Path) -> None:
    poses = detector.detect(image(shared_data, LYING))
    readings = [read_posture(p, PostureRule()) for p in poses]
    assert any(r is not None and r.lying_posture and r.axis_angle > 60 for r in readings)


def test_coordinates_are_fractions_of_the_frame(detector: PoseDetector, shared_data: Path) -> None:
    frame = image(shared_data, UPRIGHT)
    h, w = frame.shape[:2]
    base = detector.detect(frame)[0].keypoints
    # Mirrored frame: x becomes 1 - x (and left/right swap).
    mirrored = detector.detect(np.ascontiguousarray(frame[:, ::-1]))[0].keypoints
    assert abs(base[0, 0] - (1 - mirrored[0, 0])) < 0.02
    assert abs(base[0, 1] - mirrored[0, 1]) < 0.02
    # The same picture inside a larger black frame: coordinates scale and shift with it.
    canvas = np.zeros((h * 2, w * 2, 3), np.uint8)
    canvas[h // 2 : h // 2 + h, w // 4 : w // 4 + w] = frame
    inside = detector.detect(canvas)[0].keypoints
    expected_x = (base[0, 0] * w + w // 4) / (2 * w)
    expected_y = (base[0, 1] * h + h // 2) / (2 * h)
    assert abs(inside[0, 0] - expected_x) < 0.02 and abs(inside[0, 1] - expected_y) < 0.02


def test_rgb_frames_with_rgb_order_match_bgr(model_bytes: bytes, shared_data: Path) -> None:
    frame = image(shared_data, UPRIGHT)
    bgr = PoseDetector(model_bytes).detect(frame)[0].keypoints
    rgb = (
        PoseDetector(model_bytes, color_order="rgb")
        .detect(np.ascontiguousarray(frame[:, :, ::-1]))[0]
        .keypoints
    )
    np.testing.assert_allclose(bgr, rgb, atol=1e-4)


def test_roi_crop_keeps_frame_coordinates(model_bytes: bytes, shared_data: Path) -> None:
    frame = image(shared_data, UPRIGHT)
    whole = PoseDetector(model_bytes).detect(frame)[0]
    x0, _, x1, _ = whole.bbox
    roi = (max(0.0, x0 - 0.1), 0.0, min(1.0, x1 + 0.1), 1.0)
    cropped = PoseDetector(model_bytes, roi=roi).detect(frame)[0]
    confident = (whole.keypoints[:, 2] > 0.4) & (cropped.keypoints[:, 2] > 0.4)
    assert confident.sum() >= 8
    diff = np.abs(whole.keypoints[confident, :2] - cropped.keypoints[confident, :2])
    assert float(diff.max()) < 0.03


def test_tiles_cost_more_inferences_and_do_not_duplicate(
    model_bytes: bytes, shared_data: Path
) -> None:
    tiled = PoseDetector(model_bytes, tiles=(2, 2))
    poses = tiled.detect(image(shared_data, UPRIGHT))
    assert tiled.invocations == 5  # whole frame + 4 tiles
    assert len([p for p in poses if p.score > 0.3]) == 1, "one person, found once"


def test_a_tampered_model_is_refused(model_bytes: bytes, tmp_path: Path) -> None:
    damaged = bytearray(model_bytes)
    damaged[len(damaged) // 2] ^= 0x01
    (tmp_path / MOVENET.name).write_bytes(bytes(damaged))
    config = PreScreenConfig.model_validate({"model": {"models_dir": str(tmp_path)}})
    with pytest.raises(ModelError, match="citywatch edge models install"):
        PreScreen.from_config(config)
    shutil.rmtree(tmp_path)
    with pytest.raises(ModelError, match="missing"):
        PreScreen.from_config(config)


def test_motion_gate_saves_inference_on_a_still_scene(
    model_bytes: bytes, shared_data: Path
) -> None:
    prescreen = PreScreen(PreScreenConfig(), PoseDetector(model_bytes))
    frame = image(shared_data, UPRIGHT)
    results = [prescreen.process(frame, i * 0.1) for i in range(50)]  # 5 s at 10 fps
    inferred = [r.frame_time for r in results if r.inferred]
    assert inferred[0] == 0.0 and 2 <= len(inferred) <= 4  # first frame + rechecks
    assert prescreen.inferences == len(inferred) and prescreen.frames == 50
    assert all(r.detections == () for r in results)


def test_no_runtime_installed_is_a_clear_error() -> None:
    """On a machine with neither LiteRT nor tflite-runtime (imports blocked in a child
    Python), the error says what to install instead of an ImportError deep in a call."""
    code = (
        "import sys\n"
        "for name in ('ai_edge_litert', 'ai_edge_litert.interpreter', 'tflite_runtime',\n"
        "             'tflite_runtime.interpreter'):\n"
        "    sys.modules[name] = None  # makes `import name` fail, as if not installed\n"
        "from edge import InferenceRuntimeError, load_interpreter_class\n"
        "try:\n"
        "    load_interpreter_class()\n"
        "except InferenceRuntimeError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert "no TFLite runtime is installed" in proc.stdout
    assert "ai-edge-litert" in proc.stdout and "tflite-runtime" in proc.stdout
