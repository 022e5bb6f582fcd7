"""``citywatch demo``: the README's main command, run as a user runs it.

The demo must work on a fresh clone: the main run copies the source into a folder with
no ``../shared`` beside it and runs the demo from there (real edge daemons playing the
shipped footage, the real pre-screen model, the server's real photo check).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from citywatch._footage import DEMO_FALL
from edge import default_models_dir

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("citywatch", "protocol", "hardware", "edge", "server", "enc", "storage")


def _clone(dest: Path) -> Path:
    """The project's source as a fresh clone has it: no ``../shared``, no ``var``."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    assert not (dest.parent / "shared").exists()
    return dest


def _threshold(workdir: Path) -> float:
    return float(tomllib.loads((workdir / "server.toml").read_text())["verification"]["threshold"])


def _enc_alert_ids(workdir: Path, env: dict[str, str] | None = None) -> str:
    alerts = subprocess.run(
        [
            sys.executable,
            "-m",
            "citywatch",
            "enc",
            "alerts",
            "--json",
            "--config",
            str(workdir / "enc.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert alerts.returncode == 0, alerts.stderr
    return alerts.stdout


@pytest.mark.slow
def test_demo_once_on_a_fresh_clone_runs_edge_poles_on_the_shipped_footage(tmp_path: Path) -> None:
    clone = _clone(tmp_path / "clone")
    env = {
        **os.environ,
        "PYTHONPATH": str(clone),
        # The models a set-up run installs (their files are not in the repository).
        "CITYWATCH_MODELS_DIR": str(default_models_dir()),
    }
    where = subprocess.run(
        [sys.executable, "-c", "import citywatch; print(citywatch.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=clone,
        check=True,
    )
    assert where.stdout.strip().startswith(str(clone))
    workdir = tmp_path / "demo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "citywatch",
            "demo",
            "--once",
            "--devices",
            "3",
            "--dir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=clone,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "footage: GMDCSA24 subject 1" in r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["poles"] == "edge"
    assert "GMDCSA24" in result["footage"]
    # The pre-screen model decided on the pole; the server's own check agreed.
    assert result["device_score"]["from"] == "pre-screen model"
    assert result["server_score"] >= _threshold(workdir)
    assert result["position"] == "gps"
    assert set(result["phases_ms"]) == {"detection_to_c1", "c1_to_c4", "c4_to_n2"}
    assert all(v >= 0 for v in result["phases_ms"].values())
    assert result["total_ms"] >= result["phases_ms"]["c1_to_c4"]
    # The incident pole played the shipped clip; the others a calm scene from it.
    timelines = [
        tomllib.loads((workdir / f"pole-{i:02d}" / "edge.toml").read_text())["camera"]["timeline"]
        for i in (1, 2, 3)
    ]
    plays = [[Path(seg["play"]) for seg in t] for t in timelines]
    assert plays[2][-1] == clone / "citywatch" / "footage" / DEMO_FALL.name
    assert timelines[2][-1]["loop"] is False  # the last frame held: the person stays down
    assert all(p[0].is_relative_to(workdir / "footage") for p in plays)
    # The alert is really stored at the ENC: ask the ENC itself.
    assert result["incident_id"] in _enc_alert_ids(workdir, env)
    # Bundles were deleted once the keys were in the tokens.
    assert list((workdir / "bundles").glob("*.json")) == []


def _run_until_dashboard(args: list[str], workdir: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "citywatch", "demo", *args, "--dir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 400
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C stops it" in line or time.monotonic() > deadline:
            break
    return proc, seen


def _stop(proc: subprocess.Popen[str], workdir: Path, seen: list[str]) -> str:
    try:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, ("".join(seen) + rest)[-4000:]
    assert "stopping" in rest
    for name in ("server", "enc"):
        assert (workdir / f"{name}.log").exists()
    # The server, ENC and daemons it started are gone.
    out = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True)
    assert out.stdout.strip() == "", out.stdout
    return rest


def _frames_of(video: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    cap = cv2.VideoCapture(str(video))
    k = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"frame-{k:04d}.jpg"), frame)
        k += 1
    cap.release()
    assert k > 20


@pytest.mark.slow
def test_demo_plays_a_users_own_footage_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # A user's footage as a folder of images, with a calm/ scene for the other poles.
    mine = tmp_path / "my footage"
    _frames_of(DEMO_FALL, mine)
    (mine / "calm").mkdir()
    shutil.copy2(mine / "frame-0005.jpg", mine / "calm" / "sitting.jpg")
    workdir = tmp_path / "demo"
    proc, seen = _run_until_dashboard(
        ["--devices", "2", "--poles", "edge", "--footage", str(mine)], workdir
    )
    text = "".join(seen)
    rest = _stop(proc, workdir, seen)
    assert "Dashboard:" in text, text[-3000:] + rest[-2000:]
    assert f"footage  your footage, {mine}" in text
    assert "`citywatch edge run` daemons" in text
    assert "pre-screen model: person_down (score" in text
    assert "the server's photo check: score" in text
    timelines = [
        tomllib.loads((workdir / f"pole-{i:02d}" / "edge.toml").read_text())["camera"]["timeline"]
        for i in (1, 2)
    ]
    assert timelines[0] == [
        {"at": 0.0, "play": str(mine / "calm"), "loop": True, "media_fps": 10.0}
    ]
    assert timelines[1][-1] == {
        "at": timelines[1][-1]["at"],
        "play": str(mine),
        "loop": False,
        "media_fps": 10.0,
    }


@pytest.mark.slow
def test_simulated_poles_send_a_real_photo_and_say_their_score_is_scripted(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc, seen = _run_until_dashboard(["--devices", "2", "--poles", "simulated"], workdir)
    text = "".join(seen)
    _stop(proc, workdir, seen)
    assert "Dashboard:" in text, text[-3000:]
    assert "simulated poles online" in text
    assert "scripted report" in text and "no pre-screen model" in text
    # No line reads as if a model had scored the scene on the pole.
    assert "pre-screen model:" not in text and "pre-screen: " not in text
    # The server's real check judged the real photo (the footage's last frame).
    line = next(x for x in seen if "the server's photo check: score" in x)
    score = float(line.split("score", 1)[1].split()[0])
    assert score >= _threshold(workdir), line
    assert "1 person" in line


def _bad_footage(kind: str, d: Path) -> Path:
    if kind == "missing":
        return d / "nothing here"
    if kind == "empty folder":
        (d / "empty").mkdir()
        return d / "empty"
    if kind == "images and a video":
        (d / "both").mkdir()
        cv2.imwrite(str(d / "both" / "a.jpg"), np.full((120, 160, 3), 128, np.uint8))
        shutil.copy2(DEMO_FALL, d / "both" / "b.mp4")
        return d / "both"
    if kind == "two videos":
        (d / "two").mkdir()
        shutil.copy2(DEMO_FALL, d / "two" / "a.mp4")
        shutil.copy2(DEMO_FALL, d / "two" / "b.avi")
        return d / "two"
    if kind == "damaged image":
        (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
        return d / "broken.jpg"
    if kind == "damaged video":
        (d / "broken.mp4").write_bytes(b"\x00" * 4096)
        return d / "broken.mp4"
    if kind == "text file":
        (d / "notes.txt").write_text("hello")
        return d / "notes.txt"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file or folder"),
        ("empty folder", "holds no video"),
        ("images and a video", "holds both images and videos"),
        ("two videos", "holds 2 videos"),
        ("damaged image", "cannot be read"),
        ("damaged video", "cannot be opened"),
        ("text file", "neither a video"),
    ],
)
def test_footage_that_cannot_play_is_refused_before_anything_starts(
    tmp_path: Path, kind: str, message: str
) -> None:
    path = _bad_footage(kind, tmp_path)
    workdir = tmp_path / "demo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "citywatch",
            "demo",
            "--once",
            "--footage",
            str(path),
            "--dir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr
    assert str(path) in r.stderr
    assert "PATH is what the incident pole's camera sees" in r.stderr
    assert r.stdout == ""
    # Nothing was started: no broker, server or ENC folder.
    assert not (workdir / "server.toml").exists() and not (workdir / "broker").exists()
