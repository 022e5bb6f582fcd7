"""Refit the pole's learned fight cue and print what it gives on each split.

    .venv/bin/python bench/fit_fight.py CLIPS_DIR [--videos GMDCSA24_DIR]
        [--tune-max-clip 75] [--tune-subjects 1,2] [--l2 1000] [--max-false 0.10]
        [--inputs NAME,...] [--select] [--cv 1,100,1000,10000] [--smooth 5] [--held-out]
        [--cache FILE]

CLIPS_DIR is the fight data set (``labels.csv``: ``fight`` / ``no_fight`` clips,
``fi<NNN>.mp4`` / ``nofi<NNN>.mp4``). Each clip plays through a fresh pre-screen with the
default settings at 10 fps, exactly as ``citywatch edge eval-video`` plays it, and at
every frame the model ran on the tracker's ``FightFeatures.inputs()`` are recorded
(cached in ``--cache``). With ``--videos``, the GMDCSA24 videos (one person each, falls and
everyday activities) are played the same way and their frames are negatives too.

The tuning split is the clips numbered up to ``--tune-max-clip`` (and GMDCSA24's
``--tune-subjects``); the script fits a class-balanced, L2-regularised logistic
regression over the ``--inputs`` (default: ``FIGHT_INPUTS``, the ones in the code) of
the tuning frames (every frame of a fight clip is a positive, every frame of a no-fight
clip or a GMDCSA24 video a negative), then chooses the threshold on the tuning clips: a
clip is flagged when the mean probability of ``--smooth`` frames in a row with
``min_people_learned`` people in view (within the rule's window, as the pole averages
them: ``fight.smooth_frames``) reaches it, and the threshold is the lowest whose share
of tuning no-fight clips flagged is at most ``--max-false``. It prints the weights and
the threshold to put into edge/_decision.py and edge/_prescreen.py, and the clips
flagged on both splits at several thresholds, with the weights now in the code as well.
Figures on the tuning split are tuning figures; the held-out split is not used for any
choice, and its figures are printed only with ``--held-out``. ``--cv`` prints the
cross-validated recall on the tuning clips for each L2 penalty given (how the default
penalty was chosen); ``--select`` chooses the inputs by forward selection on that
cross-validated recall, from none, adding the input that helps most while it helps (how
``FIGHT_INPUTS`` was chosen), and fits on what it chose.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import deque
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import PreScreen, PreScreenConfig
from edge._decision import FIGHT_BIAS, FIGHT_INPUTS, FIGHT_WEIGHTS, FightFeatures

Frames = list[dict[str, object]]


def play(path: Path, fps: float = 10.0) -> Frames:
    """The features at every inferred frame of one video, as eval-video plays it."""
    config = PreScreenConfig.model_validate({"fight": {"min_probability": False}})
    prescreen = PreScreen.from_config(config)
    capture = cv2.VideoCapture(str(path))
    native = capture.get(cv2.CAP_PROP_FPS) or 25.0
    every = max(1, round(native / fps))
    rows: Frames = []
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                t = index / native
                result = prescreen.process(np.asarray(frame, dtype=np.uint8), t)
                if result.inferred:
                    f = prescreen.tracker.fight_features(t)
                    rows.append({"t": t, "people": f.people, "x": f.inputs()})
            index += 1
    finally:
        capture.release()
    return rows


def collect(
    clips: Path, videos: Path | None, cache: Path, tune_max_clip: int, tune_subjects: set[int]
) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(cache.read_text()) if cache.is_file() else {}
    todo: list[tuple[str, str, Path]] = []
    with (clips / "labels.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            todo.append((row["file"], row["label"], clips / row["file"]))
    if videos is not None:
        for path in sorted(videos.rglob("*.mp4")):
            name = str(path.relative_to(videos))
            if split_of(name, tune_max_clip, tune_subjects) == "tune":
                todo.append((name, "gmdcsa24", path))
    for i, (name, label, path) in enumerate(todo):
        if name in data:
            continue
        data[name] = {"label": label, "frames": play(path)}
        if i % 10 == 0:
            print(f"  {i + 1}/{len(todo)} {name}", file=sys.stderr)
            cache.write_text(json.dumps(data))
    cache.write_text(json.dumps(data))
    return data


def split_of(name: str, tune_max_clip: int, tune_subjects: set[int]) -> str:
    m = re.search(r"(?:no)?fi(\d+)\.", Path(name).name)
    if m:
        return "tune" if int(m.group(1)) <= tune_max_clip else "held-out"
    m = re.search(r"Subject[ _]?(\d+)", name, re.IGNORECASE)
    if m:
        return "tune" if int(m.group(1)) in tune_subjects else "held-out"
    return "held-out"


def fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression with an L2 penalty on standardised inputs
    (Newton's method); returns weights and bias for the raw inputs."""
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    pos = y.sum()
    sw = np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * (len(y) - pos)))
    reg = np.diag(np.r_[np.ones(z.shape[1] - 1), 0.0]) * l2
    w = np.zeros(z.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-(z @ w)))
        grad = z.T @ (sw * (p - y)) + reg @ w
        hess = (z.T * (sw * p * (1 - p))) @ z + reg
        w -= np.linalg.solve(hess, grad)
    return w[:-1] / std, float(w[-1] - (w[:-1] * mean / std).sum())


def clip_scores(
    data: dict[str, dict[str, object]],
    weights: np.ndarray,
    bias: float,
    min_people: int,
    inputs: tuple[str, ...],
    smooth: int = 1,
    window: float = PreScreenConfig().fight.window_seconds,
) -> dict[str, float]:
    """Each clip's highest probability, as the pole decides (edge/_decision.py): at each
    frame with ``min_people`` in view, the mean of the last ``smooth`` such frames'
    probabilities within ``window`` seconds, once there are ``smooth`` of them (what
    makes the pole report: the first frame whose mean reaches the threshold)."""
    out: dict[str, float] = {}
    for name, entry in data.items():
        best = 0.0
        recent: deque[tuple[float, float]] = deque(maxlen=max(1, smooth))
        for frame in entry["frames"]:  # type: ignore[attr-defined]
            if int(frame["people"]) < min_people:
                continue
            t = float(frame["t"])
            z = bias + sum(w * float(frame["x"][k]) for w, k in zip(weights, inputs, strict=True))
            recent.append((t, 1.0 / (1.0 + float(np.exp(-max(-60.0, min(60.0, z)))))))
            while recent and recent[0][0] < t - window:
                recent.popleft()
            if len(recent) == recent.maxlen:
                best = max(best, sum(q for _, q in recent) / len(recent))
        out[name] = best
    return out


def frames_of(
    data: dict[str, dict[str, object]], names: list[str], min_people: int, inputs: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The training rows: every frame with ``min_people`` in view, 1 for a fight clip."""
    xs, ys = [], []
    for n in names:
        for frame in data[n]["frames"]:  # type: ignore[attr-defined]
            if int(frame["people"]) >= min_people:
                xs.append([float(frame["x"][k]) for k in inputs])
                ys.append(1.0 if data[n]["label"] == "fight" else 0.0)
    return np.array(xs, dtype=np.float64).reshape(len(xs), len(inputs)), np.array(ys)


def cross_validate(
    data: dict[str, dict[str, object]],
    args: argparse.Namespace,
    subjects: set[int],
    l2: float,
    inputs: tuple[str, ...],
    repeats: int = 5,
) -> float:
    """Mean recall on the tuning fight clips, over ``repeats`` 5-fold splits by clip, at
    the threshold that lets through ``--max-false`` of the held-back no-fight clips."""
    tune = sorted(n for n in data if split_of(n, args.tune_max_clip, subjects) == "tune")
    recalls = []
    for r in range(repeats):
        fold = dict(zip(tune, np.random.default_rng(r).permutation(len(tune)) % 5, strict=True))
        scores: dict[str, float] = {}
        for k in range(5):
            x, y = frames_of(data, [n for n in tune if fold[n] != k], args.min_people, inputs)
            w, b = fit(x, y, l2)
            held = {n: data[n] for n in tune if fold[n] == k}
            scores.update(clip_scores(held, w, b, args.min_people, inputs, args.smooth))
        calm = sorted((scores[n] for n in tune if data[n]["label"] == "no_fight"), reverse=True)
        threshold = calm[int(args.max_false * len(calm))] + 1e-3
        recalls.append(sum(scores[n] >= threshold for n in tune if data[n]["label"] == "fight"))
    return float(np.mean(recalls))


def select_inputs(
    data: dict[str, dict[str, object]], args: argparse.Namespace, subjects: set[int]
) -> tuple[str, ...]:
    """Forward selection on the cross-validated recall (tuning clips only)."""
    names = tuple(FightFeatures(0, 0, 0, 0, 0, 0, 0).inputs())
    chosen: tuple[str, ...] = ()
    best = 0.0
    while len(chosen) < len(names):
        tried = [
            (cross_validate(data, args, subjects, args.l2, (*chosen, n)), n)
            for n in names
            if n not in chosen
        ]
        recall, name = max(tried)
        print(
            "  then "
            + ", ".join(f"{n} {r:.1f}" for r, n in sorted(tried, reverse=True)[:4])
            + " cross-validated tuning fight clips"
        )
        if recall <= best:
            break
        chosen, best = (*chosen, name), recall
    print(f"selected inputs: {', '.join(chosen)} (cross-validated recall {best:.1f})")
    return chosen


def report(
    title: str,
    data: dict[str, dict[str, object]],
    scores: dict[str, float],
    tune_max_clip: int,
    tune_subjects: set[int],
    thresholds: list[float],
    splits: tuple[str, ...],
) -> None:
    print(title)
    for split in splits:
        for label in ("fight", "no_fight", "gmdcsa24"):
            names = [
                n
                for n, e in data.items()
                if e["label"] == label and split_of(n, tune_max_clip, tune_subjects) == split
            ]
            if not names:
                continue
            counts = " ".join(
                f"{t:.2f}:{sum(scores[n] >= t for n in names):>2}" for t in thresholds
            )
            print(f"  {split:<8} {label:<9} n={len(names):>2}  {counts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clips", type=Path)
    ap.add_argument("--videos", type=Path)
    ap.add_argument("--tune-max-clip", type=int, default=75)
    ap.add_argument("--tune-subjects", default="1,2")
    ap.add_argument("--l2", type=float, default=1000.0)
    ap.add_argument(
        "--cv",
        default="",
        help="comma-separated L2 penalties: print each one's 5-fold "
        "cross-validated recall on the tuning clips (at --max-false) first",
    )
    ap.add_argument("--max-false", type=float, default=0.10)
    ap.add_argument("--min-people", type=int, default=2)
    ap.add_argument(
        "--smooth",
        type=int,
        default=PreScreenConfig().fight.smooth_frames,
        help="frames whose probabilities the pole averages before deciding "
        "(fight.smooth_frames); 1: each frame alone",
    )
    ap.add_argument(
        "--inputs",
        default=",".join(FIGHT_INPUTS),
        help="comma-separated names of FightFeatures.inputs() to fit on",
    )
    ap.add_argument(
        "--select", action="store_true", help="choose the inputs by forward selection first"
    )
    ap.add_argument("--cache", type=Path, default=Path("fight-features.json"))
    ap.add_argument(
        "--held-out",
        action="store_true",
        help="print the held-out figures too (only once the choices are made)",
    )
    args = ap.parse_args()
    subjects = {int(s) for s in args.tune_subjects.split(",") if s}
    data = collect(args.clips, args.videos, args.cache, args.tune_max_clip, subjects)
    inputs = tuple(v for v in args.inputs.split(",") if v)
    if args.select:
        inputs = select_inputs(data, args, subjects)
    for l2 in (float(v) for v in args.cv.split(",") if v):
        recall = cross_validate(data, args, subjects, l2, inputs)
        print(f"L2 {l2:g}: cross-validated recall {recall:.1f} tuning fight clips")
    tune = [n for n in data if split_of(n, args.tune_max_clip, subjects) == "tune"]
    x, y = frames_of(data, tune, args.min_people, inputs)
    print(f"tuning frames: {int(y.sum())} fight, {int(len(y) - y.sum())} not")
    w, b = fit(x, y, args.l2)
    scores = clip_scores(data, w, b, args.min_people, inputs, args.smooth)
    calm = sorted(scores[n] for n in tune if data[n]["label"] != "fight")
    calm_clips = sorted((scores[n] for n in tune if data[n]["label"] == "no_fight"), reverse=True)
    allowed = int(args.max_false * len(calm_clips))
    threshold = calm_clips[allowed] + 1e-3 if allowed < len(calm_clips) else 0.5
    gmd = [s for s in calm if s >= threshold]
    print(f"FIGHT_INPUTS = ({', '.join(repr(n) for n in inputs)},)")
    print(f"FIGHT_WEIGHTS = ({', '.join(f'{v:.3f}' for v in w)},)")
    print(f"FIGHT_BIAS = {b:.3f}")
    print(
        f"min_probability = {threshold:.3f} (at most {allowed} tuning no-fight clips; "
        f"{len(gmd)} tuning negatives in all reach it)"
    )
    grid = sorted({round(threshold, 3), 0.3, 0.4, 0.5, 0.6, 0.7, 0.8})
    splits = ("tune", "held-out") if args.held_out else ("tune",)
    report(
        "fitted now (clips flagged at each threshold):",
        data,
        scores,
        args.tune_max_clip,
        subjects,
        grid,
        splits,
    )
    in_code = clip_scores(
        data, np.array(FIGHT_WEIGHTS), FIGHT_BIAS, args.min_people, FIGHT_INPUTS, args.smooth
    )
    report(
        "the weights in edge/_decision.py:",
        data,
        in_code,
        args.tune_max_clip,
        subjects,
        grid,
        splits,
    )


if __name__ == "__main__":
    main()
