"""Measuring the pre-screen on labelled images, and sampling labelled frames from videos.

``evaluate_images`` runs the single-image check (is a person-down posture present?) over
images listed in a CSV with at least the columns ``file`` and ``label`` and counts, per
label, the images and how many were flagged. Which labels are dangerous is the reader's
business: recall is ``flagged/n`` on the labels that are, the false-alarm rate on the
others.

``sample_gmdcsa24`` turns the GMDCSA24 fall data set (videos with per-video CSVs of
activity time ranges) into such a folder of JPEGs and a ``labels.csv``, with the labels
``upright`` (Standing, Walking), ``sitting``, ``lying_bed`` (Sleeping on a bed, or a fall
that ends on a bed) and ``lying_ground`` (the end of a fall onto the floor, or lying on the
floor). Frames during the fall itself (the first ``settle`` seconds of a Falling range) are
labelled ``falling`` when asked for, else left out; frames whose ranges disagree are left
out.

``evaluate_videos`` plays each GMDCSA24 video through the whole pre-screen (gate, model,
decision over time), holding the last frame, and records what was reported.

``evaluate_clips`` plays labelled clips (a ``labels.csv`` with ``file`` and ``label``
columns listing videos, such as ``fight`` / ``no_fight`` clips) through the whole
pre-screen and records what each reported.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ._errors import EvalError
from ._prescreen import PreScreen

__all__ = [
    "VIDEO_SUFFIXES",
    "ActivityRange",
    "ClipOutcome",
    "EvalReport",
    "LabelCount",
    "LabelledImage",
    "SampledFrame",
    "VideoOutcome",
    "evaluate_clips",
    "evaluate_images",
    "evaluate_videos",
    "is_clip_folder",
    "parse_activity_ranges",
    "read_clip_labels",
    "read_labels",
    "sample_gmdcsa24",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class LabelledImage:
    """One row of a labels CSV."""

    path: Path
    """The image file."""
    label: str
    """Its label, as written in the CSV."""


@dataclass(frozen=True)
class LabelCount:
    """How the pre-screen did on the images of one label."""

    n: int
    """Images with this label."""
    flagged: int
    """Of those, how many the pre-screen flagged as a person down."""

    @property
    def rate(self) -> float:
        return self.flagged / self.n if self.n else 0.0


@dataclass(frozen=True)
class EvalReport:
    """The result of ``evaluate_images``."""

    labels: dict[str, LabelCount]
    """Per label, in first-seen order."""
    model: str
    """Model file name."""
    input_size: int
    """The model's input size (long side, pixels)."""
    flagged_files: tuple[str, ...] = field(default=())
    """Names of the flagged images (for looking at mistakes)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": {k: {"n": v.n, "flagged": v.flagged} for k, v in self.labels.items()},
            "model": self.model,
            "input_size": self.input_size,
        }

    def format_table(self) -> str:
        width = max([len("label"), *(len(k) for k in self.labels)])
        lines = [f"{'label':<{width}}  {'n':>5}  {'flagged':>7}  {'rate':>6}"]
        for label, count in self.labels.items():
            lines.append(f"{label:<{width}}  {count.n:>5}  {count.flagged:>7}  {count.rate:>6.1%}")
        lines.append(f"model {self.model}, input size {self.input_size}")
        return "\n".join(lines)


def read_labels(csv_path: Path, images_dir: Path | None = None) -> list[LabelledImage]:
    """The rows of a labels CSV (columns ``file`` and ``label`` at least); ``file`` is
    relative to ``images_dir`` (default: the CSV's folder)."""
    images_dir = images_dir if images_dir is not None else csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = {"file", "label"} - set(columns)
            if missing:
                raise EvalError(
                    f"{csv_path}: the header has no column "
                    f"{' or '.join(sorted(missing))} (it has: {', '.join(columns)})"
                )
            rows = [
                {(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader
            ]
    except FileNotFoundError:
        raise EvalError(f"labels file {csv_path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalError(f"labels file {csv_path} cannot be read: {exc}") from None
    items: list[LabelledImage] = []
    for line, row in enumerate(rows, start=2):
        if not row["file"]:
            raise EvalError(f"{csv_path} line {line}: the file column is empty")
        path = images_dir / row["file"]
        if not path.is_file():
            raise EvalError(f"{csv_path} line {line}: image {path} does not exist")
        items.append(LabelledImage(path, row["label"]))
    if not items:
        raise EvalError(f"{csv_path} lists no images")
    return items


def load_image(path: Path) -> npt.NDArray[np.uint8]:
    """An image file as a BGR uint8 array."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EvalError(f"{path} is not an image OpenCV can read")
    return np.asarray(image, dtype=np.uint8)


def evaluate_images(
    items: Iterable[LabelledImage],
    flags_person_down: Callable[[npt.NDArray[np.uint8]], bool],
    *,
    model: str,
    input_size: int,
) -> EvalReport:
    """Count, per label, the images and those ``flags_person_down`` (BGR frame) flags."""
    counts: dict[str, list[int]] = {}
    flagged_files: list[str] = []
    for item in items:
        flagged = bool(flags_person_down(load_image(item.path)))
        count = counts.setdefault(item.label, [0, 0])
        count[0] += 1
        if flagged:
            count[1] += 1
            flagged_files.append(item.path.name)
    return EvalReport(
        {k: LabelCount(n, f) for k, (n, f) in counts.items()},
        model,
        input_size,
        tuple(flagged_files),
    )


# -- GMDCSA24 ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivityRange:
    """One labelled time range of a GMDCSA24 video."""

    activity: str
    """First word of the class, capitalised: Standing, Walking, Sitting, Sleeping, Falling."""
    start: float
    """Seconds from the start of the video."""
    end: float
    """Seconds from the start of the video (>= start)."""


# "Falling (SW)[3.4 to 6]", "Standing[0 to 0.5; 4.2 to 6.5]", "Falling (BW[5.9 to 10]",
# "Eating[0.9 4.6]": the data set's own spellings, all of which occur.
_CLASS_RE = re.compile(r"(?P<name>[A-Za-z]+)[^\[\];]*\[(?P<ranges>[^\]]*)\]")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def parse_activity_ranges(text: str) -> list[ActivityRange]:
    """The ranges of a GMDCSA24 ``Classes`` cell; malformed or reversed ranges are dropped."""
    ranges: list[ActivityRange] = []
    for match in _CLASS_RE.finditer(text):
        name = match["name"].capitalize()
        if name == "Fall":
            name = "Falling"
        for part in match["ranges"].split(";"):
            numbers = [float(n) for n in _NUMBER_RE.findall(part)]
            if len(numbers) == 2 and numbers[0] <= numbers[1]:
                ranges.append(ActivityRange(name, numbers[0], numbers[1]))
    return ranges


_POSTURE_LABELS = {"Standing": "upright", "Walking": "upright", "Sitting": "sitting"}
_GROUND_WORDS = ("ground", "floor")


def _fall_ends_on(description: str) -> str:
    """``lying_bed`` when the fall ends on a bed, else ``lying_ground``."""
    text = description.lower()
    last = text.rfind("fall")
    tail = text[last:] if last >= 0 else text
    if any(word in tail for word in _GROUND_WORDS):
        return "lying_ground"
    if "on the bed" in tail:
        return "lying_bed"
    return "lying_ground"


def _label_at(
    t: float,
    ranges: Sequence[ActivityRange],
    description: str,
    settle: float,
    margin: float,
    falling: bool = False,
) -> tuple[str, str] | None:
    """(label, activity) of the frame at ``t``, or None when unknown or ambiguous."""
    labels: set[str] = set()
    activities: list[str] = []
    for r in ranges:
        if r.activity == "Falling":
            if r.start + settle <= t <= r.end:
                labels.add(_fall_ends_on(description))
                activities.append("Falling")
            elif falling and r.start <= t < r.start + settle:
                labels.add("falling")
                activities.append("Falling")
            elif r.start - margin <= t < r.start + settle:
                return None  # the fall itself: neither upright nor lying
        elif r.activity == "Sleeping":
            if r.start + margin <= t <= r.end - margin:
                lower = description.lower()
                labels.add(
                    "lying_ground"
                    if any(w in lower for w in _GROUND_WORDS) and "bed" not in lower
                    else "lying_bed"
                )
                activities.append("Sleeping")
        elif r.activity in _POSTURE_LABELS and r.start + margin <= t <= r.end - margin:
            labels.add(_POSTURE_LABELS[r.activity])
            activities.append(r.activity)
    if len(labels) != 1:
        return None
    return labels.pop(), "+".join(sorted(set(activities)))


@dataclass(frozen=True)
class SampledFrame:
    """One frame written by ``sample_gmdcsa24``."""

    file: str
    """JPEG file name in the output folder."""
    label: str
    """upright, sitting, lying_bed or lying_ground."""
    source: str
    """Video, relative to the data set folder."""
    t_sec: float
    """Time of the frame in the video."""
    subject: int
    """GMDCSA24 subject number (1..4): split by subject to tune and test apart."""
    activity: str
    """The data set's class(es) at that time."""


def _video_rows(root: Path) -> Iterable[tuple[int, str, Path, str, str]]:
    """(subject, kind, video, classes, description) for every video present."""
    for subject_dir in sorted(root.glob("Subject *")):
        try:
            subject = int(subject_dir.name.split()[-1])
        except ValueError:
            continue
        for kind in ("ADL", "Fall"):
            table = subject_dir / f"{kind}.csv"
            if not table.is_file():
                continue
            with table.open(newline="", encoding="utf-8-sig") as fh:
                for row in csv.DictReader(fh):
                    row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                    video = subject_dir / kind / row.get("File Name", "")
                    if video.is_file():
                        yield (
                            subject,
                            kind,
                            video,
                            row.get("Classes", ""),
                            row.get("Description", ""),
                        )


def sample_gmdcsa24(
    root: Path,
    out_dir: Path,
    *,
    every: float = 0.5,
    settle: float = 1.5,
    margin: float = 0.2,
    subjects: Sequence[int] | None = None,
    falling: bool = False,
) -> list[SampledFrame]:
    """Write one labelled JPEG every ``every`` seconds of each GMDCSA24 video under
    ``root`` into ``out_dir``, with a ``labels.csv``; returns what was written.

    ``falling``: also write the frames of the fall itself (the first ``settle`` seconds
    of a Falling range), labelled ``falling``; otherwise they are left out."""
    if every <= 0:
        raise ValueError("every must be positive")
    rows = [r for r in _video_rows(root) if subjects is None or r[0] in subjects]
    if not rows:
        raise EvalError(
            f"{root} has no GMDCSA24 videos (expected 'Subject N/ADL.csv', "
            "'Subject N/Fall.csv' and the videos they list)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    frames: list[SampledFrame] = []
    for subject, kind, video, classes, description in rows:
        ranges = parse_activity_ranges(classes)
        cap = cv2.VideoCapture(str(video))
        if not cap.isOpened():
            raise EvalError(f"{video} cannot be opened by OpenCV")
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        index, next_t = 0, 0.0
        try:
            while True:
                ok, image = cap.read()
                if not ok:
                    break
                t = index / fps
                index += 1
                if t + 1e-6 < next_t:
                    continue
                next_t += every
                found = _label_at(t, ranges, description, settle, margin, falling)
                if found is None:
                    continue
                label, activity = found
                name = f"gmdcsa24_s{subject}_{kind.lower()}{video.stem}_{t:.1f}s.jpg"
                cv2.imwrite(str(out_dir / name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
                frames.append(
                    SampledFrame(
                        name, label, str(video.relative_to(root)), round(t, 3), subject, activity
                    )
                )
        finally:
            cap.release()
    with (out_dir / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "source", "t_sec", "subject", "activity"])
        for f in frames:
            writer.writerow([f.file, f.label, f.source, f.t_sec, f.subject, f.activity])
    return frames


@dataclass(frozen=True)
class VideoOutcome:
    """What the whole pre-screen reported on one GMDCSA24 video."""

    source: str
    """Video, relative to the data set folder."""
    kind: str
    """``fall_floor``, ``fall_bed`` or ``adl`` (activities of daily living)."""
    reports: tuple[tuple[str, float], ...]
    """(label, frame time) of each detection."""
    frames: int
    """Frames processed (including the held last frame)."""
    inferred: int
    """Frames the model ran on."""


def evaluate_videos(
    root: Path,
    make_prescreen: Callable[[], PreScreen],
    *,
    fps: float = 10.0,
    hold: float = 8.0,
    subjects: Sequence[int] | None = None,
) -> list[VideoOutcome]:
    """Play every GMDCSA24 video under ``root`` through a fresh pre-screen at ``fps``, then
    hold its last frame ``hold`` seconds (a person who stays where they ended up)."""
    outcomes: list[VideoOutcome] = []
    rows = [r for r in _video_rows(root) if subjects is None or r[0] in subjects]
    if not rows:
        raise EvalError(f"{root} has no GMDCSA24 videos")
    for _subject, kind, video, classes, description in rows:
        if kind == "Fall" and any(r.activity == "Falling" for r in parse_activity_ranges(classes)):
            kind_label = "fall_bed" if _fall_ends_on(description) == "lying_bed" else "fall_floor"
        else:
            kind_label = "adl"
        prescreen = make_prescreen()
        cap = cv2.VideoCapture(str(video))
        native = cap.get(cv2.CAP_PROP_FPS) or 30.0
        every = max(1, round(native / fps))
        reports: list[tuple[str, float]] = []
        index, n, t, last = 0, 0, 0.0, None
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if index % every == 0:
                    last, t = np.asarray(frame, dtype=np.uint8), index / native
                    reports.extend(
                        (d.label, d.frame_time) for d in prescreen.process(last, t).detections
                    )
                    n += 1
                index += 1
        finally:
            cap.release()
        if last is None:
            raise EvalError(f"{video} has no frames OpenCV can read")
        for k in range(1, round(hold * fps) + 1):
            reports.extend(
                (d.label, d.frame_time) for d in prescreen.process(last, t + k / fps).detections
            )
            n += 1
        outcomes.append(
            VideoOutcome(
                str(video.relative_to(root)), kind_label, tuple(reports), n, prescreen.inferences
            )
        )
    return outcomes


# -- labelled clips (fights) ------------------------------------------------------------

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg"}


@dataclass(frozen=True)
class ClipOutcome:
    """What the whole pre-screen reported on one labelled clip."""

    source: str
    """Clip file, as written in the labels CSV."""
    label: str
    """Its label (``fight`` / ``no_fight`` in the fight data set; any label is kept)."""
    reports: tuple[tuple[str, float], ...]
    """(label, frame time) of each detection."""
    frames: int
    """Frames processed."""
    inferred: int
    """Frames the model ran on."""

    def flagged(self, report_label: str) -> bool:
        """The clip gave at least one report of ``report_label``."""
        return any(label == report_label for label, _ in self.reports)


def read_clip_labels(csv_path: Path, clips_dir: Path | None = None) -> list[LabelledImage]:
    """The rows of a clip labels CSV (columns ``file`` and ``label``; files are videos
    relative to ``clips_dir``, default the CSV's folder)."""
    items = read_labels(csv_path, clips_dir)
    for item in items:
        if item.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise EvalError(
                f"{csv_path}: {item.path.name} is not a video file "
                f"({', '.join(sorted(VIDEO_SUFFIXES))})"
            )
    return items


def is_clip_folder(root: Path) -> bool:
    """``root`` holds a ``labels.csv`` listing video clips (the fight data set's layout)."""
    table = root / "labels.csv"
    if not table.is_file():
        return False
    try:
        with table.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            first = next(reader, None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if first is None or "file" not in first:
        return False
    return Path((first["file"] or "").strip()).suffix.lower() in VIDEO_SUFFIXES


def evaluate_clips(
    items: Iterable[LabelledImage],
    make_prescreen: Callable[[], PreScreen],
    *,
    fps: float = 10.0,
) -> list[ClipOutcome]:
    """Play each labelled clip through a fresh pre-screen at ``fps`` (no held frame: a
    fight is in the motion, not in the last picture)."""
    outcomes: list[ClipOutcome] = []
    for item in items:
        prescreen = make_prescreen()
        cap = cv2.VideoCapture(str(item.path))
        if not cap.isOpened():
            raise EvalError(f"{item.path} cannot be opened by OpenCV")
        native = cap.get(cv2.CAP_PROP_FPS) or 25.0
        every = max(1, round(native / fps))
        reports: list[tuple[str, float]] = []
        index = n = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if index % every == 0:
                    result = prescreen.process(np.asarray(frame, dtype=np.uint8), index / native)
                    reports.extend((d.label, d.frame_time) for d in result.detections)
                    n += 1
                index += 1
        finally:
            cap.release()
        if n == 0:
            raise EvalError(f"{item.path} has no frames OpenCV can read")
        outcomes.append(
            ClipOutcome(item.path.name, item.label, tuple(reports), n, prescreen.inferences)
        )
    return outcomes
