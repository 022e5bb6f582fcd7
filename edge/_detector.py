"""The pose model: MoveNet MultiPose Lightning on LiteRT.

Frames are numpy arrays ``(height, width, 3)`` of ``uint8`` in **BGR** order, the order
OpenCV and picamera2's ``RGB888`` format deliver; pass ``color_order="rgb"`` for frames
that are RGB. Every coordinate that leaves this module is a fraction of the frame's
width (x) or height (y), so callers never see the model's input size.

The model takes ``[1, H, W, 3]`` uint8 with H and W free multiples of 32 and returns
``[1, 6, 56]`` float32: per person 17 keypoints as (y, x, score), a box as (ymin, xmin,
ymax, xmax) and a person score, all relative to the input tensor. The frame is scaled so
that its long side is ``input_size`` and padded to a multiple of 32 on the short side (the
layout MoveNet MultiPose was trained for), not squashed into a square.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from ._errors import InferenceRuntimeError
from ._models import MOVENET, load_verified_model

__all__ = [
    "KEYPOINT_NAMES",
    "ROTATIONS",
    "BBox",
    "Pose",
    "PoseDetector",
    "load_interpreter_class",
]

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

ROTATIONS = (0, 45, 90, 270, 315)
"""Rotations (degrees clockwise) the model may also be run at, for people lying down
(90 and 270 for people lying across the picture, 45 and 315 for those lying aslant)."""

BBox = tuple[float, float, float, float]
"""(x0, y0, x1, y1) as fractions of the frame's width and height."""

Frame = npt.NDArray[np.uint8]


@dataclass(frozen=True, eq=False)
class Pose:
    """One person the model found in one frame."""

    keypoints: npt.NDArray[np.float32]
    """(17, 3) read-only: x, y (fractions of the frame) and score, in KEYPOINT_NAMES order."""
    bbox: BBox
    """The model's box around the person."""
    score: float
    """The model's person score, 0..1."""
    frame_size: tuple[int, int] = field(default=(1, 1))
    """(width, height) in pixels of the frame the pose was found in (for true angles)."""

    def __post_init__(self) -> None:
        if self.keypoints.shape != (17, 3):
            raise ValueError(f"keypoints must have shape (17, 3), not {self.keypoints.shape}")
        x0, y0, x1, y1 = self.bbox
        if not (x1 >= x0 and y1 >= y0):
            raise ValueError(f"bbox {self.bbox} is not (x0, y0, x1, y1) with x0<=x1, y0<=y1")
        if self.keypoints.flags.writeable:
            frozen = self.keypoints.copy()
            frozen.flags.writeable = False
            object.__setattr__(self, "keypoints", frozen)

    def points_px(self, min_score: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Keypoints in pixels (17, 2) and the mask of those scoring at least ``min_score``."""
        w, h = self.frame_size
        pts = self.keypoints[:, :2].astype(np.float64) * (w, h)
        return pts, self.keypoints[:, 2] >= min_score


def load_interpreter_class() -> tuple[Any, str]:
    """The TFLite ``Interpreter`` class and a name for it: LiteRT first, then tflite-runtime."""
    for module, dist in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        try:
            from importlib.metadata import version

            label = f"{dist} {version(dist)}"
        except Exception:  # metadata missing in odd installs: the name is enough
            label = dist
        return mod.Interpreter, label
    raise InferenceRuntimeError(
        "no TFLite runtime is installed: install LiteRT (`pip install ai-edge-litert`, "
        "scripts/setup.sh does) or, on systems without it, `pip install tflite-runtime` "
        "(needs numpy<2 and runs 5-10x slower)"
    )


@dataclass(frozen=True)
class _Letterbox:
    """How a frame region was placed into the input tensor."""

    crop_x: int
    crop_y: int
    scale: float
    pad_x: int
    pad_y: int
    in_w: int
    in_h: int


class PoseDetector:
    """MoveNet MultiPose Lightning behind a small ``detect(frame)`` call.

    ``tiles=(cols, rows)`` other than (1, 1) also runs the model on overlapping tiles of
    the frame (or of ``roi``) and merges the people found, which finds small distant
    people the whole-frame pass misses, at (1 + cols*rows) times the cost.
    """

    def __init__(
        self,
        model: bytes,
        *,
        input_size: int = 256,
        threads: int = 2,
        min_pose_score: float = 0.15,
        tiles: tuple[int, int] = (1, 1),
        tile_overlap: float = 0.2,
        roi: BBox | None = None,
        color_order: Literal["bgr", "rgb"] = "bgr",
        model_name: str = MOVENET.name,
        rotations: Sequence[int] = (0,),
        low_light: float = 0.0,
    ) -> None:
        if input_size % 32 or not 96 <= input_size <= 1024:
            raise ValueError(f"input_size {input_size} must be a multiple of 32 in 96..1024")
        if (
            not rotations
            or 0 not in rotations
            or any(r not in ROTATIONS for r in rotations)
            or len(set(rotations)) != len(rotations)
        ):
            raise ValueError(
                f"rotations {list(rotations)} must include 0, each of "
                f"{', '.join(map(str, ROTATIONS))} at most once"
            )
        if not 0.0 <= low_light <= 255.0:
            raise ValueError("low_light must be a mean grey level 0..255")
        interpreter_class, self.runtime = load_interpreter_class()
        try:
            self._interpreter = interpreter_class(model_content=model, num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise InferenceRuntimeError(f"{self.runtime} cannot load {model_name}: {exc}") from None
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()
        if (
            len(out) != 1
            or tuple(out[0]["shape"])[-1] != 56
            or inp["dtype"] not in (np.uint8, np.int32)
        ):
            raise InferenceRuntimeError(
                f"{model_name} is not MoveNet MultiPose: input {inp['dtype']} "
                f"{list(inp['shape_signature'])}, outputs {[list(o['shape']) for o in out]}"
            )
        self._input_index = int(inp["index"])
        self._input_dtype = inp["dtype"]
        self._output_index = int(out[0]["index"])
        self._shape: tuple[int, int] | None = None
        self.input_size = input_size
        self.threads = threads
        self.min_pose_score = min_pose_score
        self.tiles = tiles
        self.tile_overlap = tile_overlap
        self.roi = roi
        self.color_order = color_order
        self.model_name = model_name
        self.rotations = tuple(rotations)
        self.low_light = low_light
        self.invocations = 0
        self.brightened = 0
        self._clahe = cv2.createCLAHE(clipLimit=2.5, tileGridSize=(8, 8))

    @classmethod
    def from_file(cls, path: Path | str, **kwargs: Any) -> PoseDetector:
        """Load the model from a file or models folder, refusing one that is not the pin."""
        return cls(load_verified_model(path, MOVENET), **kwargs)

    # -- inference -------------------------------------------------------------------

    def _ensure_shape(self, in_h: int, in_w: int) -> None:
        if self._shape != (in_h, in_w):
            self._interpreter.resize_tensor_input(self._input_index, [1, in_h, in_w, 3])
            self._interpreter.allocate_tensors()
            self._shape = (in_h, in_w)

    def _run(
        self, region: Frame, crop_x: int, crop_y: int
    ) -> tuple[npt.NDArray[np.float32], _Letterbox]:
        """Infer on one region; returns the raw (6, 56) rows and the letterbox used."""
        h, w = region.shape[:2]
        size = self.input_size
        scale = size / max(w, h)
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
        in_w = max(32, math.ceil(rw / 32) * 32)
        in_h = max(32, math.ceil(rh / 32) * 32)
        canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        pad_x, pad_y = (in_w - rw) // 2, (in_h - rh) // 2
        canvas[pad_y : pad_y + rh, pad_x : pad_x + rw] = cv2.resize(
            region, (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        if self.color_order == "bgr":
            canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        self._ensure_shape(in_h, in_w)
        self._interpreter.set_tensor(
            self._input_index, canvas[np.newaxis].astype(self._input_dtype, copy=False)
        )
        self._interpreter.invoke()
        self.invocations += 1
        raw = np.array(self._interpreter.get_tensor(self._output_index)[0], dtype=np.float32)
        return raw, _Letterbox(crop_x, crop_y, scale, pad_x, pad_y, in_w, in_h)

    def _to_poses(
        self, raw: npt.NDArray[np.float32], box: _Letterbox, frame_w: int, frame_h: int
    ) -> list[Pose]:
        poses = []
        for row in raw:
            score = float(row[55])
            if score < self.min_pose_score:
                continue
            yxs = row[:51].reshape(17, 3)
            kp = np.empty((17, 3), dtype=np.float32)
            kp[:, 0] = ((yxs[:, 1] * box.in_w - box.pad_x) / box.scale + box.crop_x) / frame_w
            kp[:, 1] = ((yxs[:, 0] * box.in_h - box.pad_y) / box.scale + box.crop_y) / frame_h
            kp[:, 2] = yxs[:, 2]
            kp[:, :2] = np.clip(kp[:, :2], 0.0, 1.0)
            ymin, xmin, ymax, xmax = (float(v) for v in row[51:55])
            x0 = ((xmin * box.in_w - box.pad_x) / box.scale + box.crop_x) / frame_w
            x1 = ((xmax * box.in_w - box.pad_x) / box.scale + box.crop_x) / frame_w
            y0 = ((ymin * box.in_h - box.pad_y) / box.scale + box.crop_y) / frame_h
            y1 = ((ymax * box.in_h - box.pad_y) / box.scale + box.crop_y) / frame_h
            x0, x1 = sorted((min(max(x0, 0.0), 1.0), min(max(x1, 0.0), 1.0)))
            y0, y1 = sorted((min(max(y0, 0.0), 1.0), min(max(y1, 0.0), 1.0)))
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                continue
            poses.append(Pose(kp, (x0, y0, x1, y1), score, (frame_w, frame_h)))
        return poses

    def detect(self, frame: Frame) -> tuple[Pose, ...]:
        """People in ``frame`` (uint8 HxWx3, in ``color_order``), best score first.

        With more than one rotation, each person is the best-scoring of the views of
        them (a person lying is often found only, or better, in the rotated frame)."""
        passes = self.detect_passes(frame)
        if len(passes) == 1:
            return passes[0]
        return _merge_rotations(passes)

    def detect_passes(self, frame: Frame) -> list[tuple[Pose, ...]]:
        """The people of each rotation's pass, in ``rotations`` order (coordinates of the
        unrotated frame)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be uint8 (height, width, 3), not {frame.dtype} {frame.shape}"
            )
        frame = self._brighten(frame)
        frame_h, frame_w = frame.shape[:2]
        rx0, ry0, rx1, ry1 = 0, 0, frame_w, frame_h
        if self.roi is not None:
            rx0, ry0 = int(self.roi[0] * frame_w), int(self.roi[1] * frame_h)
            rx1, ry1 = math.ceil(self.roi[2] * frame_w), math.ceil(self.roi[3] * frame_h)
        regions = self._regions(rx0, ry0, rx1, ry1)
        passes: list[list[Pose]] = []
        for x0, y0, x1, y1 in regions:
            raw, box = self._run(frame[y0:y1, x0:x1], x0, y0)
            passes.append(self._to_poses(raw, box, frame_w, frame_h))
        if len(passes) == 1:
            poses = passes[0]
        else:
            whole = (rx0 / frame_w, ry0 / frame_h, rx1 / frame_w, ry1 / frame_h)
            tiles = [
                (x0 / frame_w, y0 / frame_h, x1 / frame_w, y1 / frame_h)
                for x0, y0, x1, y1 in regions[1:]
            ]
            poses = _merge_passes(passes[0], list(zip(tiles, passes[1:], strict=True)), whole)
        upright = tuple(sorted(poses, key=lambda p: p.score, reverse=True))
        region = frame[ry0:ry1, rx0:rx1]
        result: list[tuple[Pose, ...]] = []
        for rotation in self.rotations:
            if rotation == 0:
                result.append(upright)
                continue
            if rotation in (90, 270):
                code = cv2.ROTATE_90_CLOCKWISE if rotation == 90 else cv2.ROTATE_90_COUNTERCLOCKWISE
                turned = np.ascontiguousarray(cv2.rotate(region, code), dtype=np.uint8)
                raw, box = self._run(turned, 0, 0)
                th, tw = turned.shape[:2]
                found = [
                    _unrotate(p, rotation, (rx0, ry0, rx1, ry1), frame_w, frame_h)
                    for p in self._to_poses(raw, box, tw, th)
                ]
            else:
                turned, back = _turn(region, rotation)
                raw, box = self._run(turned, 0, 0)
                th, tw = turned.shape[:2]
                found = [
                    _untilt(p, back, (rx0, ry0), frame_w, frame_h)
                    for p in self._to_poses(raw, box, tw, th)
                ]
            result.append(tuple(sorted(found, key=lambda p: p.score, reverse=True)))
        return result

    def _brighten(self, frame: Frame) -> Frame:
        """A dark frame (mean grey below ``low_light``) with its contrast equalised
        (CLAHE on the lightness channel); other frames unchanged."""
        if self.low_light <= 0:
            return frame
        small = cv2.resize(frame, (64, 36), interpolation=cv2.INTER_AREA)
        if float(small.mean()) >= self.low_light:
            return frame
        self.brightened += 1
        lab = cv2.cvtColor(frame, cv2.COLOR_BGR2LAB)  # channel order does not matter for L
        lab[:, :, 0] = self._clahe.apply(lab[:, :, 0])
        return np.asarray(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR), dtype=np.uint8)

    def _regions(self, x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int, int, int]]:
        regions = [(x0, y0, x1, y1)]
        cols, rows = self.tiles
        if cols * rows <= 1:
            return regions
        w, h = x1 - x0, y1 - y0
        tw = w / (cols - (cols - 1) * self.tile_overlap)
        th = h / (rows - (rows - 1) * self.tile_overlap)
        for r in range(rows):
            for c in range(cols):
                tx = x0 + c * tw * (1 - self.tile_overlap)
                ty = y0 + r * th * (1 - self.tile_overlap)
                regions.append(
                    (int(tx), int(ty), min(x1, math.ceil(tx + tw)), min(y1, math.ceil(ty + th)))
                )
        return regions


def _iou(a: BBox, b: BBox) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _merge_passes(
    whole_pass: Sequence[Pose],
    tile_passes: Sequence[tuple[BBox, Sequence[Pose]]],
    whole: BBox,
    edge: float = 0.01,
) -> list[Pose]:
    """The people of the whole-frame pass, plus those only a tile found.

    A tile sees a large person cut in pieces: a pose whose box touches a tile border
    that is not a border of the whole region is dropped (the whole-frame pass or the
    neighbouring tile sees that person whole). A tile pose overlapping a pose already
    kept from another pass is the same person seen twice. People within one pass are
    never merged: two people close together (a fight) must stay two.
    """
    kept: list[tuple[Pose, int]] = [(pose, 0) for pose in whole_pass]
    candidates: list[tuple[Pose, int]] = []
    for index, (tile, poses) in enumerate(tile_passes, start=1):
        for pose in poses:
            b = pose.bbox
            cut = (
                (tile[0] > whole[0] + edge and b[0] <= tile[0] + edge)
                or (tile[1] > whole[1] + edge and b[1] <= tile[1] + edge)
                or (tile[2] < whole[2] - edge and b[2] >= tile[2] - edge)
                or (tile[3] < whole[3] - edge and b[3] >= tile[3] - edge)
            )
            if not cut:
                candidates.append((pose, index))
    for pose, source in sorted(candidates, key=lambda item: item[0].score, reverse=True):
        if not any(
            source != other_source and _same_person(pose.bbox, other.bbox)
            for other, other_source in kept
        ):
            kept.append((pose, source))
    return [pose for pose, _ in kept]


def _same_person(a: BBox, b: BBox) -> bool:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return _iou(a, b) > 0.3 or (smaller > 0 and ix * iy / smaller > 0.6)


def _unrotate(
    pose: Pose, rotation: int, region: tuple[int, int, int, int], frame_w: int, frame_h: int
) -> Pose:
    """A pose found in the region rotated by ``rotation`` degrees clockwise, in the
    unrotated frame's fractions."""
    rx0, ry0, rx1, ry1 = region
    rw, rh = rx1 - rx0, ry1 - ry0
    kp = pose.keypoints.copy()
    u, v = kp[:, 0].astype(np.float64), kp[:, 1].astype(np.float64)  # fractions of turned
    if rotation == 90:  # clockwise: turned (u, v) came from region (v, 1 - u)
        fx, fy = v, 1.0 - u
    else:  # counter-clockwise: turned (u, v) came from region (1 - v, u)
        fx, fy = 1.0 - v, u
    kp[:, 0] = np.clip((rx0 + fx * rw) / frame_w, 0.0, 1.0)
    kp[:, 1] = np.clip((ry0 + fy * rh) / frame_h, 0.0, 1.0)
    x0, y0, x1, y1 = pose.bbox
    cu, cv = np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1])
    if rotation == 90:
        bx, by = cv, 1.0 - cu
    else:
        bx, by = 1.0 - cv, cu
    bx = np.clip((rx0 + bx * rw) / frame_w, 0.0, 1.0)
    by = np.clip((ry0 + by * rh) / frame_h, 0.0, 1.0)
    return Pose(
        kp,
        (float(bx.min()), float(by.min()), float(bx.max()), float(by.max())),
        pose.score,
        (frame_w, frame_h),
    )


_BOX_KEYPOINT_SCORE = 0.2
"""Keypoints at least this confident make the box of a person found in a turned picture."""


def _turn(region: Frame, rotation: int) -> tuple[Frame, npt.NDArray[np.float64]]:
    """``region`` turned by ``rotation`` degrees clockwise on a canvas large enough to
    hold all of it (black corners), and the affine map from the turned picture's pixels
    back to the region's."""
    h, w = region.shape[:2]
    rad = math.radians(rotation)
    cos, sin = abs(math.cos(rad)), abs(math.sin(rad))
    tw, th = math.ceil(w * cos + h * sin), math.ceil(w * sin + h * cos)
    forward = cv2.getRotationMatrix2D((w / 2, h / 2), -rotation, 1.0)  # OpenCV: counter-cw
    forward[0, 2] += tw / 2 - w / 2
    forward[1, 2] += th / 2 - h / 2
    turned = cv2.warpAffine(region, forward, (tw, th), flags=cv2.INTER_LINEAR)
    back = np.asarray(cv2.invertAffineTransform(forward), dtype=np.float64)
    return np.ascontiguousarray(turned, dtype=np.uint8), back


def _untilt(
    pose: Pose,
    back: npt.NDArray[np.float64],
    origin: tuple[int, int],
    frame_w: int,
    frame_h: int,
) -> Pose:
    """A pose found in a picture made by ``_turn``, in the unturned frame's fractions. Its
    box is the one around its confident keypoints (a tenth of their extent added each
    side) within the upright box around the turned box's corners: that hull alone would
    make a person lying aslant look as wide as tall."""
    tw, th = pose.frame_size
    kp = pose.keypoints.copy()
    px = np.column_stack([kp[:, 0] * tw, kp[:, 1] * th, np.ones(17)]) @ back.T
    kp[:, 0] = np.clip((px[:, 0] + origin[0]) / frame_w, 0.0, 1.0)
    kp[:, 1] = np.clip((px[:, 1] + origin[1]) / frame_h, 0.0, 1.0)
    x0, y0, x1, y1 = pose.bbox
    xs, ys = np.array([x0, x1, x0, x1]) * tw, np.array([y0, y0, y1, y1]) * th
    corners = np.column_stack([xs, ys, np.ones(4)]) @ back.T
    bx = np.clip((corners[:, 0] + origin[0]) / frame_w, 0.0, 1.0)
    by = np.clip((corners[:, 1] + origin[1]) / frame_h, 0.0, 1.0)
    hull = (float(bx.min()), float(by.min()), float(bx.max()), float(by.max()))
    seen = kp[:, 2] >= _BOX_KEYPOINT_SCORE
    if seen.sum() >= 3:
        kx, ky = kp[seen, 0], kp[seen, 1]
        mx, my = 0.1 * float(kx.max() - kx.min()), 0.1 * float(ky.max() - ky.min())
        box = (
            max(hull[0], float(kx.min()) - mx),
            max(hull[1], float(ky.min()) - my),
            min(hull[2], float(kx.max()) + mx),
            min(hull[3], float(ky.max()) + my),
        )
        if box[2] > box[0] and box[3] > box[1]:
            hull = box
    return Pose(kp, hull, pose.score, (frame_w, frame_h))


def _merge_rotations(passes: Sequence[Sequence[Pose]]) -> tuple[Pose, ...]:
    """One pose per person over the rotations' passes: the best-scoring view of each
    person; people within one pass are never merged (two people close together stay two)."""
    candidates = [(pose, index) for index, poses in enumerate(passes) for pose in poses]
    kept: list[tuple[Pose, int]] = []
    for pose, source in sorted(candidates, key=lambda item: item[0].score, reverse=True):
        if not any(
            source != other_source and _same_person(pose.bbox, other.bbox)
            for other, other_source in kept
        ):
            kept.append((pose, source))
    return tuple(pose for pose, _ in kept)
