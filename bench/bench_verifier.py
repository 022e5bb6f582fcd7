"""Speed and memory of the server's photo check on one core: milliseconds per photo of
``PoseVerifier.score`` (decoding, CLAHE, the BlazePose detector, MoveNet at 0/90/270
degrees, the landmark model per candidate, the scores), the time of the model
invocations alone within it, their ratio, and the process's resident memory.

One core: the process pins itself to CPU 0 (``sched_setaffinity``, what ``taskset -c 0``
does) and every model, OpenCV and the BLAS libraries run one thread. Photos: every frame
of the footage that ships with CityWatch (``citywatch/footage``, 480x360) and, where
present, the shared labelled images (``../shared/data/smoke``, 640x480); each group gets
its own rows. Each photo is scored ``--repeat`` times after a warm-up.

Prints figures only; nothing here passes or fails on time.

    .venv/bin/python bench/bench_verifier.py [--repeat 3] [--cpu 0] [--smoke DIR]
"""

from __future__ import annotations

import os

# One thread everywhere, before numpy and OpenCV load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from citywatch._footage import DEMO_FALL, footage_frame  # noqa: E402
from server import PoseVerifier, VerifierModels  # noqa: E402

SMOKE = ROOT.parent / "shared" / "data" / "smoke"


def rss_mib() -> float:
    """Resident memory now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else float("nan")


@dataclass
class InvokeClock:
    """Time spent inside the interpreters' ``invoke`` (the models alone), per model: wall
    time and this thread's CPU time (with one thread per model, inference runs in the
    calling thread, so its CPU time is the model's cost whatever else the machine runs)."""

    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def wrap(self, name: str, interpreter: Any) -> None:
        invoke: Callable[[], None] = interpreter.invoke

        def timed() -> None:
            t, c = time.perf_counter(), time.thread_time()
            invoke()
            self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - c
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
            self.calls[name] = self.calls.get(name, 0) + 1

        interpreter.invoke = timed

    def total(self) -> float:
        return sum(self.seconds.values())

    def total_cpu(self) -> float:
        return sum(self.cpu.values())

    def reset(self) -> None:
        self.seconds.clear()
        self.cpu.clear()
        self.calls.clear()


def footage_photos() -> list[tuple[str, bytes]]:
    cap = cv2.VideoCapture(str(DEMO_FALL))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    cap.release()
    return [(f"{DEMO_FALL.name}@{k / fps:.1f}s", footage_frame(k / fps)) for k in range(count)]


def smoke_photos(folder: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(folder.glob("*.jpg"))]


@dataclass
class Row:
    name: str
    photos: int
    total_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    total_cpu_ms: list[float] = field(default_factory=list)
    model_cpu_ms: list[float] = field(default_factory=list)
    per_model_ms: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


def measure(
    verifier: PoseVerifier,
    clock: InvokeClock,
    name: str,
    photos: list[tuple[str, bytes]],
    repeat: int,
) -> Row:
    row = Row(name, len(photos))
    for _ in range(repeat):
        for _label, photo in photos:
            clock.reset()
            t, c = time.perf_counter(), time.thread_time()
            verifier.score(photo, device_score=0.9, device_label="person_down")
            row.total_cpu_ms.append((time.thread_time() - c) * 1000)
            row.total_ms.append((time.perf_counter() - t) * 1000)
            row.model_ms.append(clock.total() * 1000)
            row.model_cpu_ms.append(clock.total_cpu() * 1000)
            for model, s in clock.cpu.items():
                row.per_model_ms[model] = row.per_model_ms.get(model, 0.0) + s * 1000
            for model, n in clock.calls.items():
                row.calls[model] = row.calls.get(model, 0) + n
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="times each photo is scored")
    ap.add_argument("--cpu", type=int, default=0, help="the core to run on")
    ap.add_argument(
        "--smoke",
        type=Path,
        default=SMOKE,
        help="a folder of labelled JPEGs (default: the shared smoke images)",
    )
    ap.add_argument("--models-dir", type=Path, default=None)
    args = ap.parse_args()

    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
        pinned = f"pinned to CPU {args.cpu} (sched_setaffinity, as taskset -c {args.cpu})"
    else:
        pinned = "NOT pinned (no sched_setaffinity on this system): figures may use more cores"
    rss_start = rss_mib()
    models = VerifierModels(args.models_dir)
    verifier = PoseVerifier(models)
    reader = verifier.reader
    clock = InvokeClock()
    clock.wrap("detector", reader._detector._model._it)
    clock.wrap("landmarks", reader._landmarker._model._it)
    clock.wrap("movenet", reader._movenet._interpreter)
    rss_loaded = rss_mib()

    groups = [("shipped footage (480x360)", footage_photos())]
    if (args.smoke / "labels.csv").is_file():
        groups.append((f"smoke images ({args.smoke.name}, 640x480)", smoke_photos(args.smoke)))
        smoke_note = f"{args.smoke}: {len(groups[-1][1])} images"
    else:
        smoke_note = f"{args.smoke}: absent, skipped"
    # Warm-up: the first invocations allocate the interpreters' buffers.
    for _label, photo in groups[0][1][:3]:
        verifier.score(photo)

    print(
        f"CityWatch photo check benchmark: {reader._movenet.runtime}, {pinned}; "
        f"1 thread per model, cv2.setNumThreads(1); {os.cpu_count()} CPUs on the machine, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"photos: {DEMO_FALL.name} every frame; {smoke_note}; each scored {args.repeat}x")
    print(
        f"{'photos':<30} {'n':>3} {'clock':<5} {'ms/photo p50':>12} {'p95':>7} {'mean':>7} | "
        f"{'models p50':>10} {'mean':>7} {'ratio':>6}"
    )
    for name, photos in groups:
        row = measure(verifier, clock, name, photos, args.repeat)
        n = len(row.total_ms)
        for kind, total, model in (
            ("CPU", row.total_cpu_ms, row.model_cpu_ms),
            ("wall", row.total_ms, row.model_ms),
        ):
            mean_total, mean_model = sum(total) / n, sum(model) / n
            print(
                f"{name if kind == 'CPU' else '':<30} {row.photos if kind == 'CPU' else '':>3} "
                f"{kind:<5} {pct(total, 0.5):>10.1f}ms {pct(total, 0.95):>5.1f}ms "
                f"{mean_total:>5.1f}ms | {pct(model, 0.5):>8.1f}ms {mean_model:>5.1f}ms "
                f"{mean_total / max(mean_model, 1e-9):>5.2f}x",
                flush=True,
            )
        per_model = ", ".join(
            f"{m} {row.calls.get(m, 0) / n:.1f}x {row.per_model_ms.get(m, 0.0) / n:.1f}ms"
            for m in ("detector", "movenet", "landmarks")
        )
        print(f"{'':<30} model invocations and CPU per photo: {per_model}")
    print(
        f"resident memory: {rss_start:.0f} MiB at start, {rss_loaded:.0f} MiB with the models "
        f"loaded, {rss_mib():.0f} MiB after scoring, peak {peak_rss_mib():.0f} MiB "
        "(one verifier worker)"
    )
    print(
        "ms/photo: PoseVerifier.score on one core, as CPU time of the scoring thread (what "
        "one photo costs, whatever else runs) and as wall time (what it took here: with a "
        "busy machine, waits for the core count too); models: the time inside the three "
        "models' invoke() calls within it; ratio = whole check / models alone (the rest: "
        "JPEG decoding, CLAHE and blur, crops and rotations, scoring)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
