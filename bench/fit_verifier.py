"""Refit the server's person-down score and print what it gives on each split.

    .venv/bin/python bench/fit_verifier.py DIR [DIR ...] [--tune-subjects 1,2]
        [--tune-max-clip 75] [--l2 30] [--cache FILE]

Each DIR holds images and a ``labels.csv`` (columns file, label): frames sampled from
GMDCSA24 (``citywatch edge sample-frames``; file names carry the subject,
``gmdcsa24_s<N>_...``) and frames of the fight clips (``fi<NNN>_*.jpg``,
``nofi<NNN>_*.jpg``). The tuning split is GMDCSA24's ``--tune-subjects`` and the clips
numbered up to ``--tune-max-clip``; everything else is held out. Positives: lying on the
ground or on a bed (the posture is what a photo shows; which bed is no floor is the
operator's call); negatives: upright, sitting, every person of the no-fight frames.

The script reads every image with the server's own ``SceneReader`` (cached in
``--cache``), fits a class-balanced, L2-regularised logistic regression over
``server._verify._down_features`` of the usable readings, and prints the weights to put
into ``server/_verify.py`` and the counts per label and threshold on both splits, with
the weights now in ``server/_verify.py`` as well. Figures on the tuning split are tuning
figures.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server._models import VerifierModels
from server._photo import PhotoRejected, prepare_photo
from server._scene import BodyGeometry, SceneReader
from server._verify import (
    _DOWN_BIAS,
    _DOWN_WEIGHTS,
    VerifierSettings,
    _down_features,
    person_down_score,
    usable,
)

POSITIVE = {"lying_ground", "lying_bed"}
NEGATIVE = {"upright", "sitting", "upright_street_crowd", "no_fight"}
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def split_of(name: str, tune_subjects: set[int], tune_max_clip: int) -> str:
    m = re.search(r"gmdcsa24_s(\d+)_", name)
    if m:
        return "tune" if int(m.group(1)) in tune_subjects else "held-out"
    m = re.match(r"(?:no)?fi(\d+)_", name)
    if m:
        return "tune" if int(m.group(1)) <= tune_max_clip else "held-out"
    return "held-out"


def read_all(dirs: list[Path], cache: Path) -> list[dict[str, object]]:
    if cache.is_file():
        return list(json.loads(cache.read_text()))
    s = VerifierSettings()
    reader = SceneReader(VerifierModels())
    rows: list[dict[str, object]] = []
    for folder in dirs:
        with (folder / "labels.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                photo = (folder / row["file"]).read_bytes()
                prepared = prepare_photo(
                    photo,
                    max_pixels=s.max_pixels,
                    min_width=s.min_width,
                    min_height=s.min_height,
                    long_side=s.long_side,
                )
                people: list[dict[str, object]] = []
                long_side = 0
                if not isinstance(prepared, PhotoRejected):
                    long_side = max(prepared.rgb.shape[:2])
                    people = [dataclasses.asdict(b) for b in reader.read(prepared.rgb)]
                rows.append(
                    {
                        "file": row["file"],
                        "label": row["label"],
                        "long": long_side,
                        "people": people,
                    }
                )
    cache.write_text(json.dumps(rows))
    return rows


def bodies(row: dict[str, object]) -> list[BodyGeometry]:
    people = row["people"]
    assert isinstance(people, list)
    out = []
    known = set(BodyGeometry.__dataclass_fields__)
    for p in people:
        p = {k: v for k, v in dict(p).items() if k in known}  # a cache of older readings
        p["centre"], p["box"] = tuple(p["centre"]), tuple(p["box"])
        out.append(BodyGeometry(**p))
    long_side = row["long"]
    assert isinstance(long_side, int)
    return [b for b in out if usable(b, long_side)]


def fit(rows: list[dict[str, object]], l2: float) -> tuple[np.ndarray, float]:
    xs: list[tuple[float, ...]] = []
    ys: list[int] = []
    for row in rows:
        people = bodies(row)
        if not people:
            continue
        if row["label"] in POSITIVE:
            # The lying person of the frame: the most tilted usable reading.
            xs.append(_down_features(max(people, key=lambda b: b.torso_tilt)))
            ys.append(1)
        elif row["label"] in NEGATIVE:
            xs.extend(_down_features(b) for b in people)
            ys.extend([0] * len(people))
    x, y = np.array(xs), np.array(ys, dtype=float)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xn = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    weight = np.where(y == 1, (len(y) - y.sum()) / max(1.0, y.sum()), 1.0)
    w = np.zeros(xn.shape[1])
    reg = np.diag(np.r_[np.ones(len(w) - 1), 0.0]) * l2
    for _ in range(60):  # Newton's method
        p = 1 / (1 + np.exp(-xn @ w))
        grad = xn.T @ (weight * (p - y)) + reg @ w
        hess = (xn.T * (weight * p * (1 - p))) @ xn + reg
        w -= np.linalg.solve(hess, grad)
    print(f"fitted on {len(y)} readings ({int(y.sum())} lying)")
    return w[:-1] / sd, float(w[-1] - (w[:-1] * mu / sd).sum())


def report(
    name: str, rows: list[dict[str, object]], weights: tuple[float, ...], bias: float
) -> None:
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0] * (1 + len(THRESHOLDS)))
    for row in rows:
        people = bodies(row)
        score = max((person_down_score(b, weights, bias) for b in people), default=0.0)
        c = counts[str(row["label"])]
        c[0] += 1
        for i, t in enumerate(THRESHOLDS):
            c[i + 1] += score >= t
    print(f"  {name}: label  n  " + "  ".join(f"@{t}" for t in THRESHOLDS))
    for label, c in sorted(counts.items()):
        print(f"    {label:22s} {c[0]:4d}  " + "  ".join(f"{v:4d}" for v in c[1:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", type=Path, nargs="+")
    ap.add_argument("--tune-subjects", default="1,2")
    ap.add_argument("--tune-max-clip", type=int, default=75)
    ap.add_argument("--l2", type=float, default=30.0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/citywatch-fit-readings.json"))
    args = ap.parse_args()
    subjects = {int(s) for s in args.tune_subjects.split(",") if s}
    rows = read_all(args.dirs, args.cache)
    for row in rows:
        row["split"] = split_of(str(row["file"]), subjects, args.tune_max_clip)
    tune = [r for r in rows if r["split"] == "tune"]
    held = [r for r in rows if r["split"] == "held-out"]
    w, b = fit(tune, args.l2)
    print("weights", tuple(round(float(v), 3) for v in w), "bias", round(b, 3))
    for title, (weights, bias) in (
        ("refitted", (tuple(float(v) for v in w), b)),
        ("in server/_verify.py", (_DOWN_WEIGHTS, _DOWN_BIAS)),
    ):
        print(f"{title}: {tuple(round(v, 3) for v in weights)}, bias {bias:.3f}")
        report("tuning split", tune, weights, bias)
        report("held out", held, weights, bias)
    assert all(math.isfinite(v) for v in w)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
