"""``citywatch server eval``: the server's photo check over a labelled folder, alone and
behind the pre-screen, on frames of the shipped footage (no shared data needed)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from citywatch._footage import footage_frame


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("eval")
    rows = ["file,label"]
    for t in (0.3, 0.8, 1.3):
        (d / f"sit_{t}.jpg").write_bytes(footage_frame(t))
        rows.append(f"sit_{t}.jpg,sitting")
    for t in (4.5, 5.0, 5.5):
        (d / f"down_{t}.jpg").write_bytes(footage_frame(t))
        rows.append(f"down_{t}.jpg,lying_ground")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    return d


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citywatch", "server", "eval", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_json_counts_per_label_with_the_curve(folder: Path) -> None:
    proc = run(str(folder), "--labels", "labels.csv", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["labels"]["lying_ground"] == {"n": 3, "flagged": 3}
    assert out["labels"]["sitting"] == {"n": 3, "flagged": 0}
    assert out["threshold"] == 0.6 and out["after_edge"] is False
    curve = {c["threshold"]: c["labels"] for c in out["curve"]}
    # Lower thresholds never flag fewer images.
    ts = sorted(curve)
    assert all(
        curve[a]["lying_ground"] >= curve[b]["lying_ground"] for a, b in itertools.pairwise(ts)
    )
    assert out["ms_per_photo"] > 0


def test_after_edge_counts_only_what_the_pre_screen_flags_too(folder: Path) -> None:
    proc = run(str(folder), "--labels", "labels.csv", "--json", "--after-edge")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["after_edge"] is True
    for label, counts in out["labels"].items():
        assert counts["flagged"] <= out["edge"][label]["flagged"] <= counts["n"]
    assert out["labels"]["sitting"]["flagged"] == 0


def test_a_threshold_of_one_flags_nothing_and_a_bad_one_is_refused(folder: Path) -> None:
    proc = run(str(folder), "--labels", "labels.csv", "--json", "--threshold", "1.0")
    assert proc.returncode == 0
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(c["flagged"] == 0 for c in out["labels"].values())
    bad = run(str(folder), "--labels", "labels.csv", "--threshold", "1.5")
    assert bad.returncode != 0 and "--threshold 1.5" in bad.stderr


def test_a_missing_labels_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = run(str(tmp_path), "--labels", "nope.csv")
    assert proc.returncode != 0
    assert "nope.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_the_server_will_not_start_without_its_models(tmp_path: Path) -> None:
    import os

    config = tmp_path / "server.toml"
    example = subprocess.run(
        [sys.executable, "-m", "citywatch", "server", "config", "example", "--data-dir", "./var"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    config.write_text(example.stdout)
    (tmp_path / "models").mkdir()
    env = {**os.environ, "CITYWATCH_MODELS_DIR": str(tmp_path / "models")}
    proc = subprocess.run(
        [sys.executable, "-m", "citywatch", "server", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert proc.returncode != 0
    assert "pose_detection.tflite is missing" in proc.stderr
    assert "citywatch server models install" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "var").exists()  # nothing was created before the check


def test_eval_clips_runs_both_stages_on_a_real_fall_and_on_someone_sitting(tmp_path: Path) -> None:
    import cv2

    from citywatch._footage import DEMO_FALL

    # The first 1.5 s of the footage: someone sitting on a chair, nothing to report.
    capture = cv2.VideoCapture(str(DEMO_FALL))
    fps = capture.get(cv2.CAP_PROP_FPS)
    ok, frame = capture.read()
    assert ok, DEMO_FALL
    writer = cv2.VideoWriter(
        str(tmp_path / "sitting.mp4"),
        cv2.VideoWriter_fourcc(*"mp4v"),
        fps,
        (frame.shape[1], frame.shape[0]),
    )
    for _ in range(int(1.5 * fps)):
        writer.write(frame)
        _, frame = capture.read()
    writer.release()
    capture.release()
    (tmp_path / "fall.mp4").write_bytes(DEMO_FALL.read_bytes())
    (tmp_path / "labels.csv").write_text("file,label\nfall.mp4,fall\nsitting.mp4,sitting\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "citywatch",
            "server",
            "eval-clips",
            str(tmp_path),
            "--labels",
            "labels.csv",
            "--json",
            "--hold",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["edge"]["fall"] == {"n": 1, "flagged": 1}  # the pole reported the fall
    assert out["labels"]["fall"] == {"n": 1, "flagged": 1}  # and the server confirmed it
    assert out["edge"]["sitting"]["flagged"] == 0
    assert out["labels"]["sitting"]["flagged"] == 0
