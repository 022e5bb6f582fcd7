"""``citywatch edge eval`` and ``sample-frames`` as a user runs them, on the shared data.

Thresholds are well below what was measured (docs/prescreen.md: smoke 8/8 lying flagged,
1/13 upright or sitting; GMDCSA24 subjects 3-4: ~100% lying on the ground, 0% upright,
~15% sitting, the price of the looser posture rule that catches people falling), so they
catch a broken pipeline, not noise.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from edge import MOVENET, default_models_dir, model_status, parse_activity_ranges
from edge._eval import ActivityRange


@pytest.fixture(scope="module", autouse=True)
def _model_installed() -> None:
    status = model_status(default_models_dir())[MOVENET.name]
    if status != "ok":
        pytest.skip(f"MoveNet is not installed (run `citywatch edge models install`): {status}")


def citywatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citywatch", "edge", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ},
    )


def label_counts(csv_path: Path) -> Counter[str]:
    with csv_path.open(newline="") as fh:
        return Counter(row["label"] for row in csv.DictReader(fh))


def test_eval_json_on_the_smoke_set(shared_data: Path) -> None:
    smoke = shared_data / "smoke"
    proc = citywatch("eval", smoke, "--labels", "labels.csv", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == {"labels", "model", "input_size", "counted"}
    assert report["counted"] == "person_down"
    assert report["model"] == MOVENET.name and report["input_size"] == 320
    expected = label_counts(smoke / "labels.csv")
    assert {k: v["n"] for k, v in report["labels"].items()} == dict(expected)
    for counts in report["labels"].values():
        assert set(counts) == {"n", "flagged"} and 0 <= counts["flagged"] <= counts["n"]
    lying = report["labels"]["lying_ground"]
    assert lying["flagged"] / lying["n"] >= 0.6
    upright_or_sitting = [
        report["labels"][k] for k in ("upright", "sitting", "upright_street_crowd")
    ]
    assert sum(c["flagged"] for c in upright_or_sitting) <= 2


def test_eval_can_count_everything_the_prescreen_escalates(shared_data: Path) -> None:
    smoke = shared_data / "smoke"
    down = json.loads(citywatch("eval", smoke, "--labels", "labels.csv", "--json").stdout)
    proc = citywatch("eval", smoke, "--labels", "labels.csv", "--json", "--count", "flagged")
    assert proc.returncode == 0, proc.stderr
    flagged = json.loads(proc.stdout)
    assert flagged["counted"] == "flagged"
    for label, counts in down["labels"].items():
        # A person down is always escalated; close groups may add to it.
        assert flagged["labels"][label]["flagged"] >= counts["flagged"], label
        assert flagged["labels"][label]["n"] == counts["n"]


def test_eval_table_names_every_label(shared_data: Path) -> None:
    proc = citywatch(
        "eval",
        shared_data / "smoke",
        "--labels",
        shared_data / "smoke" / "labels.csv",
        "--show-flagged",
    )
    assert proc.returncode == 0, proc.stderr
    for label in label_counts(shared_data / "smoke" / "labels.csv"):
        assert label in proc.stdout
    assert "flagged: " in proc.stdout and "input size 320" in proc.stdout


def test_eval_input_errors_are_user_errors(tmp_path: Path, shared_data: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("file,kind\nx.jpg,upright\n")
    proc = citywatch("eval", tmp_path, "--labels", bad)
    assert proc.returncode == 2 and "no column label" in proc.stderr
    bad.write_text("file,label\nabsent.jpg,upright\n")
    proc = citywatch("eval", tmp_path, "--labels", bad)
    assert proc.returncode == 2 and "absent.jpg does not exist" in proc.stderr
    proc = citywatch("eval", shared_data / "smoke", "--labels", "labels.csv", "--input-size", "250")
    assert proc.returncode == 2 and "input_size" in proc.stderr


@pytest.mark.slow
def test_gmdcsa24_sampled_frames(shared_data: Path, tmp_path: Path) -> None:
    """Frames of subjects 3 and 4 (not used to tune the thresholds), one per second."""
    frames = tmp_path / "frames"
    proc = citywatch(
        "sample-frames",
        shared_data / "gmdcsa24",
        "--out",
        frames,
        "--every",
        "1.0",
        "--subjects",
        "3,4",
    )
    assert proc.returncode == 0, proc.stderr
    counts = label_counts(frames / "labels.csv")
    assert {"upright", "sitting", "lying_ground"} <= set(counts)
    proc = citywatch("eval", frames, "--labels", "labels.csv", "--json")
    assert proc.returncode == 0, proc.stderr
    labels = json.loads(proc.stdout)["labels"]
    assert labels["lying_ground"]["flagged"] / labels["lying_ground"]["n"] >= 0.7
    assert labels["upright"]["flagged"] / labels["upright"]["n"] <= 0.05
    assert labels["sitting"]["flagged"] / labels["sitting"]["n"] <= 0.25

    # The same frames with the floor drawn as the ground region: beds no longer count.
    config = tmp_path / "indoor.toml"
    config.write_text(
        "[prescreen.person_down]\n"
        "ground_region = [[0.0, 0.65], [1.0, 0.65], [1.0, 1.0], [0.0, 1.0]]\n"
    )
    proc = citywatch("eval", frames, "--labels", "labels.csv", "--json", "--config", config)
    assert proc.returncode == 0, proc.stderr
    indoor = json.loads(proc.stdout)["labels"]
    assert indoor["lying_ground"]["flagged"] / indoor["lying_ground"]["n"] >= 0.7
    if "lying_bed" in indoor:
        assert indoor["lying_bed"]["flagged"] == 0


@pytest.mark.slow
def test_eval_video_reports_falls_to_the_floor_only(shared_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "indoor.toml"
    config.write_text(
        "[prescreen.person_down]\n"
        "ground_region = [[0.0, 0.65], [1.0, 0.65], [1.0, 1.0], [0.0, 1.0]]\n"
    )
    proc = citywatch(
        "eval-video", shared_data / "gmdcsa24", "--subjects", "4", "--json", "--config", config
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    kinds = {v["kind"] for v in result["videos"]}
    assert kinds == {"adl", "fall_floor", "fall_bed"}, "subject 4 has all three kinds"
    for video in result["videos"]:
        labels = [r["label"] for r in video["reports"]]
        if video["kind"] == "fall_floor":
            assert labels == ["person_down"], video
        else:
            assert labels == [], video
        assert 0 < video["inferred"] < video["frames"], "the gate skips still frames"


def test_sampler_writes_labels_from_time_ranges(shared_data: Path, tmp_path: Path) -> None:
    proc = citywatch(
        "sample-frames",
        shared_data / "gmdcsa24",
        "--out",
        tmp_path,
        "--every",
        "2.0",
        "--subjects",
        "4",
    )
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"file", "label", "source", "t_sec", "subject"} <= set(rows[0])
    for row in rows:
        assert (tmp_path / row["file"]).is_file()
        assert row["subject"] == "4"
        # Subject 4's fall 01 ends on the bed: never counted as lying on the ground.
        if row["source"].endswith("Fall/01.mp4") and float(row["t_sec"]) > 3.5:
            assert row["label"] == "lying_bed"


def test_sampler_refuses_a_folder_without_the_data_set(tmp_path: Path) -> None:
    proc = citywatch("sample-frames", tmp_path, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "no GMDCSA24 videos" in proc.stderr


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("Sitting[0 to 1]; Sleeping[2 to 8]", [("Sitting", 0, 1), ("Sleeping", 2, 8)]),
        ("Falling (SW)[3.4 to 6]; Sitting[0 to 3.4]", [("Falling", 3.4, 6), ("Sitting", 0, 3.4)]),
        (
            "Sitting[9.7 to 3]; Standing[0 to 0.5; 4.2 to 6.5]",  # a reversed range is dropped
            [("Standing", 0, 0.5), ("Standing", 4.2, 6.5)],
        ),
        ("Falling (BW[5.9 to 10]; Walking[0 to 1.3]", [("Falling", 5.9, 10), ("Walking", 0, 1.3)]),
        ("Eating[0.9 4.6]; Fall (FW)[0 to 3]", [("Eating", 0.9, 4.6), ("Falling", 0, 3)]),
        ("Falling (FW); Sitting[0 to 1.7]", [("Sitting", 0, 1.7)]),
    ],
)
def test_parse_activity_ranges(cell: str, expected: list[tuple[str, float, float]]) -> None:
    assert parse_activity_ranges(cell) == [ActivityRange(a, s, e) for a, s, e in expected]
