"""Speed and memory of the pre-screen on this machine: frames per second and per-frame
latency of the whole pipeline (motion gate + pose model + decision) and of the model
alone, their ratio, and the process's resident memory. Prints figures; never passes or
fails on time.

Frames come from a GMDCSA24 video in the shared data (a walk, a fall and lying still,
1280x720) when it is there, else synthetic frames (a person-sized block moving, then
still) with a message saying so.

    .venv/bin/python bench/bench_pipeline.py [--input-size 256] [--threads 2] [--video FILE]
        [--rotations 0,90,270]

"Model alone" is one upright inference per frame (what the pre-screen cost before the
rotated passes); the pipeline rows run the configured rotations (default 0, 90 and 270:
three inferences per inferred frame), the low-light check, the motion gate and the fight
rule's optical flow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edge import (  # noqa: E402
    MOVENET,
    EdgeError,
    MotionGate,
    PoseDetector,
    PreScreen,
    PreScreenConfig,
    default_models_dir,
    load_verified_model,
)
from edge._motion import MotionChaos  # noqa: E402

Frame = npt.NDArray[np.uint8]
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "gmdcsa24" / "Subject 3" / "Fall" / "16.mp4"


def read_video(path: Path) -> tuple[list[Frame], float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
    frames: list[Frame] = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(np.asarray(frame, dtype=np.uint8))
    cap.release()
    return frames, fps


def synthetic_frames(n: int = 150) -> tuple[list[Frame], float]:
    """A block walks across a room for 2/3 of the clip, then lies still."""
    rng = np.random.default_rng(0)
    frames: list[Frame] = []
    for i in range(n):
        frame = np.full((720, 1280, 3), 120, np.uint8)
        frame[450:, :] = 80
        if i < 2 * n // 3:
            x = 100 + 10 * i
            frame[200:600, x : x + 120] = (40, 60, 160)
        else:
            frame[540:640, 900:1300] = (40, 60, 160)
        noise = rng.integers(-4, 5, frame.shape)
        frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames, 15.0


def rss_mib() -> tuple[float, float]:
    """Resident memory now and at its peak, MiB (Linux /proc)."""
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def timed(
    frames: list[Frame], fps: float, steps: dict[str, Callable[[Frame, float], object]], repeat: int
) -> dict[str, list[float]]:
    """Per-frame latencies (seconds) of each step over the clip, ``repeat`` passes each.
    Passes of the different steps take turns, so a burst of load elsewhere on the machine
    does not land on one of them only. Time keeps increasing across passes, as in a
    camera stream."""
    latencies: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeat):
        offset = r * (len(frames) / fps + 1.0)
        for name, step in steps.items():
            for i, frame in enumerate(frames):
                start = time.perf_counter()
                step(frame, offset + i / fps)
                latencies[name].append(time.perf_counter() - start)
    return latencies


def row(
    table: Table, name: str, latencies: list[float], model_mean: float, extra: str = ""
) -> None:
    mean = statistics.fmean(latencies)
    q = statistics.quantiles(latencies, n=20)
    table.add_row(
        name,
        f"{1 / mean:.1f}",
        f"{1e3 * mean:.2f}",
        f"{1e3 * q[9]:.2f}",
        f"{1e3 * q[18]:.2f}",
        f"{1e3 * max(latencies):.2f}",
        f"{mean / model_mean:.2f}",
        extra,
    )


def first_frame(path: Path) -> Frame | None:
    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read()
    cap.release()
    return np.asarray(frame, dtype=np.uint8) if ok else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=PreScreenConfig().model.input_size)
    parser.add_argument("--threads", type=int, default=PreScreenConfig().model.threads)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the clip")
    parser.add_argument(
        "--rotations",
        default=",".join(str(r) for r in PreScreenConfig().model.rotations),
        help="rotations of the pipeline rows, comma-separated (0 must be one)",
    )
    args = parser.parse_args()
    console = Console(width=150)

    try:
        rotations = [int(r) for r in args.rotations.split(",") if r.strip()]
    except ValueError:
        console.print(f"[red]--rotations {args.rotations!r}: give angles like 0,90,270[/red]")
        return 2
    config = PreScreenConfig.model_validate(
        {"model": {"input_size": args.input_size, "threads": args.threads, "rotations": rotations}}
    )
    rss_imports, _ = rss_mib()
    try:
        model = load_verified_model(default_models_dir() / MOVENET.name)
    except EdgeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1

    def make_detector(upright_only: bool = False) -> PoseDetector:
        mc = config.model
        return PoseDetector(
            model,
            input_size=mc.input_size,
            threads=mc.threads,
            min_pose_score=mc.min_pose_score,
            rotations=(0,) if upright_only else mc.rotations,
            low_light=0.0 if upright_only else mc.low_light,
        )

    # What a daemon holds: one pre-screen, warmed up on one frame of the camera's size.
    gated = PreScreen(config, make_detector())
    probe = first_frame(args.video) if args.video.is_file() else None
    gated.detector.detect(probe if probe is not None else synthetic_frames(1)[0][0])
    rss_ready, _ = rss_mib()

    if args.video.is_file():
        frames, fps = read_video(args.video)
        source = f"{args.video.name} of GMDCSA24 {args.video.parent.parent.name}"
    else:
        console.print(
            f"[yellow]video {args.video} is absent (the shared data is only on "
            "development and CI machines): using synthetic frames[/yellow]"
        )
        frames, fps = synthetic_frames()
        source = "synthetic frames"
    if not frames:
        console.print(f"[red]{args.video} has no frames[/red]")
        return 1
    h, w = frames[0].shape[:2]

    detector = make_detector(upright_only=True)
    upright_config = config.model_copy(
        update={"model": config.model.model_copy(update={"rotations": (0,)})}
    )
    upright = PreScreen(upright_config, make_detector(upright_only=True))
    ungated_config = config.model_copy(
        update={"motion": config.motion.model_copy(update={"enabled": False})}
    )
    ungated = PreScreen(ungated_config, make_detector())
    gate = MotionGate()
    chaos = MotionChaos()
    for frame in frames[:5]:  # warm-up: tensor allocation, XNNPACK weight packing
        detector.detect(frame)
        ungated.detector.detect(frame)
        upright.detector.detect(frame)
    lat = timed(
        frames,
        fps,
        {
            "model": lambda f, _t: detector.detect(f),
            "gated": gated.process,
            "ungated": ungated.process,
            "upright": upright.process,
            "gate": gate.check,
            "chaos": chaos.update,
        },
        args.repeat,
    )
    model_lat, gated_lat, ungated_lat, gate_lat = (
        lat["model"],
        lat["gated"],
        lat["ungated"],
        lat["gate"],
    )
    model_mean = statistics.fmean(model_lat)
    _, rss_peak = rss_mib()
    load = os.getloadavg()[0]

    table = Table(
        title=f"Pre-screen on {len(frames)} frames x {args.repeat} of {source}, "
        f"{w}x{h} at {fps:.0f} fps; input size {args.input_size}, "
        f"{args.threads} threads, {detector.runtime}"
    )
    for col in ("what", "frames/s", "mean ms", "p50 ms", "p95 ms", "max ms", "÷ model", "note"):
        table.add_column(col, justify="right" if col not in ("what", "note") else "left")
    row(table, "model alone (letterbox + infer)", model_lat, model_mean)
    row(
        table,
        f"pipeline, rotations {args.rotations}, gate on (default)",
        gated_lat,
        model_mean,
        f"model ran on {gated.inferences}/{gated.frames} frames, "
        f"{gated.detector.invocations} inferences",
    )
    row(
        table,
        f"pipeline, rotations {args.rotations}, gate off",
        ungated_lat,
        model_mean,
        f"model ran on {ungated.inferences}/{ungated.frames} frames",
    )
    row(
        table,
        "pipeline, upright only, gate on",
        lat["upright"],
        model_mean,
        f"model ran on {upright.inferences}/{upright.frames} frames",
    )
    row(table, "motion gate alone", gate_lat, model_mean)
    row(table, "fight rule's optical flow alone", lat["chaos"], model_mean)
    console.print(table)
    console.print(
        f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs: "
        "other work on the machine inflates the figures"
    )
    console.print(
        f"resident memory with the pre-screen loaded and warmed up: {rss_ready:.0f} "
        f"MiB (Python, numpy, OpenCV, pydantic and rich imported: "
        f"{rss_imports:.0f} MiB); peak of this benchmark {rss_peak:.0f} MiB (it "
        f"also holds the decoded clip, {sum(f.nbytes for f in frames) / 2**20:.0f} "
        "MiB, and four pre-screens)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
