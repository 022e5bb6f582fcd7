"""People and their poses at any rotation: the BlazePose detector and landmark models.

Both models come from the ``mediapipe`` wheel (Apache-2.0) and run on LiteRT. The
detector (``pose_detection.tflite``) finds people and, for each, four alignment points:
the middle of the hips, a point on the circle around the whole body, the middle of the
shoulders and a point on the circle around the upper body. The vector from the hips to
the whole-body point gives the body's rotation, so a person lying on the ground is found
and its rotation measured; MoveNet and upright-person detectors miss most of them. The
landmark model (``pose_landmark_full.tflite``) then reads 33 body landmarks from a crop
rotated so that the person stands upright in it.

Images are ``uint8`` ``(height, width, 3)`` in RGB order. Every coordinate that leaves
this module is in pixels of the image it was found in.

The decoding follows MediaPipe's own graphs for these models (``pose_detection_cpu``:
SSD anchors over strides 8/16/32/32/32, sigmoid scores, weighted non-maximum
suppression; ``pose_landmark_by_roi_cpu``: a square crop 1.25x the body circle, rotated
so that the hips-to-body-circle vector points up).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge import load_interpreter_class

__all__ = [
    "LANDMARK_NAMES",
    "BlazePoseDetector",
    "BodyLandmarks",
    "PersonDetection",
    "PoseLandmarker",
]

Image = npt.NDArray[np.uint8]

LANDMARK_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)

_DET_SIZE = 224
_DET_STRIDES = (8, 16, 32, 32, 32)
_DET_MIN_SCORE = 0.5
_DET_NMS_IOU = 0.3
_LMK_SIZE = 256
_ROI_SCALE = 1.25


def _anchors() -> npt.NDArray[np.float32]:
    """(2254, 2) anchor centres, as MediaPipe's SsdAnchorsCalculator makes them for the
    pose detector (fixed anchor size, two anchors per layer, layers of one stride merged)."""
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(_DET_STRIDES):
        stride = _DET_STRIDES[layer]
        same = 0
        while layer + same < len(_DET_STRIDES) and _DET_STRIDES[layer + same] == stride:
            same += 1
        size = math.ceil(_DET_SIZE / stride)
        for y in range(size):
            for x in range(size):
                centres.extend([((x + 0.5) / size, (y + 0.5) / size)] * (2 * same))
        layer += same
    return np.asarray(centres, dtype=np.float32)


_ANCHORS = _anchors()


@dataclass(frozen=True, eq=False)
class PersonDetection:
    """One person the detector found."""

    score: float
    """The detector's confidence, 0..1."""
    box: tuple[float, float, float, float]
    """(x0, y0, x1, y1) in pixels: the detector's box (around the head and shoulders)."""
    hips: tuple[float, float]
    """Middle of the hips, in pixels."""
    body_point: tuple[float, float]
    """A point on the circle around the whole body, in the head's direction, in pixels."""
    shoulders: tuple[float, float]
    """Middle of the shoulders, in pixels."""

    @property
    def body_radius(self) -> float:
        """Radius of the circle around the whole body, in pixels."""
        return math.dist(self.hips, self.body_point)

    @property
    def rotation(self) -> float:
        """The body's rotation in degrees, -180..180: 0 when the head is straight above the
        hips, +-90 when the person lies horizontally in the picture."""
        dx = self.body_point[0] - self.hips[0]
        dy = self.body_point[1] - self.hips[1]
        return math.degrees(math.atan2(dx, -dy))


@dataclass(frozen=True, eq=False)
class BodyLandmarks:
    """The 33 landmarks of one person, in LANDMARK_NAMES order."""

    points: npt.NDArray[np.float32]
    """(33, 2) x, y in pixels of the image."""
    visibility: npt.NDArray[np.float32]
    """(33,) how likely each landmark is visible (not hidden), 0..1."""
    presence: float
    """How likely the crop holds a person at all, 0..1."""
    detection: PersonDetection
    """The detection the crop was made from."""

    def point(self, name: str) -> tuple[float, float]:
        x, y = self.points[LANDMARK_NAMES.index(name)]
        return float(x), float(y)

    def visible(self, name: str, at_least: float = 0.5) -> bool:
        return bool(self.visibility[LANDMARK_NAMES.index(name)] >= at_least)


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out = 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))
    return out.astype(np.float32)


class _Model:
    def __init__(self, model: bytes, threads: int) -> None:
        interpreter_class, self.runtime = load_interpreter_class()
        self._it: Any = interpreter_class(model_content=model, num_threads=threads)
        self._it.allocate_tensors()
        self._input = self._it.get_input_details()[0]["index"]
        self._outputs = {d["name"]: d["index"] for d in self._it.get_output_details()}

    def run(self, tensor: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        self._it.set_tensor(self._input, tensor)
        self._it.invoke()
        return {name: self._it.get_tensor(i) for name, i in self._outputs.items()}


class BlazePoseDetector:
    """``detect(image)``: the people in an RGB image, best first."""

    def __init__(
        self,
        model: bytes,
        *,
        threads: int = 1,
        min_score: float = _DET_MIN_SCORE,
        max_people: int = 6,
    ) -> None:
        self._model = _Model(model, threads)
        self.min_score = min_score
        self.max_people = max_people

    def detect(self, image: Image, *, tiles: int = 1) -> list[PersonDetection]:
        """People in ``image``. ``tiles`` > 1 also runs the model on a ``tiles`` x ``tiles``
        grid of overlapping crops, which finds people too small for the whole-image pass
        (a street seen from a pole), at (1 + tiles**2) times the cost."""
        h, w = image.shape[:2]
        regions = [(0, 0, w, h)]
        if tiles > 1:
            tw, th = w * 1.5 / (tiles + 0.5), h * 1.5 / (tiles + 0.5)
            for row in range(tiles):
                for col in range(tiles):
                    x0 = round(col * (w - tw) / (tiles - 1))
                    y0 = round(row * (h - th) / (tiles - 1))
                    regions.append((x0, y0, min(w, round(x0 + tw)), min(h, round(y0 + th))))
        found = [self._candidates(image, r) for r in regions]
        scores = np.concatenate([f[0] for f in found])
        if scores.size == 0:
            return []
        boxes = np.concatenate([f[1] for f in found])
        kps = np.concatenate([f[2] for f in found])
        return self._suppress(scores, boxes, kps)

    def _candidates(
        self, image: Image, region: tuple[int, int, int, int]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        x0, y0, x1, y1 = region
        crop = image[y0:y1, x0:x1]
        h, w = crop.shape[:2]
        scale = _DET_SIZE / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        pad_x, pad_y = (_DET_SIZE - nw) // 2, (_DET_SIZE - nh) // 2
        canvas = np.zeros((_DET_SIZE, _DET_SIZE, 3), dtype=np.float32)
        resized = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
        canvas[pad_y : pad_y + nh, pad_x : pad_x + nw] = resized.astype(np.float32) / 127.5 - 1.0
        out = self._model.run(canvas[None])
        raw = out["Identity"][0]
        scores = _sigmoid(out["Identity_1"][0, :, 0])
        keep = np.flatnonzero(scores >= self.min_score)
        # Tensor coordinates (fractions of the 224-square) back to image pixels.
        anchors = _ANCHORS[keep]
        reg = raw[keep] / _DET_SIZE
        cx, cy = reg[:, 0] + anchors[:, 0], reg[:, 1] + anchors[:, 1]
        bw, bh = reg[:, 2], reg[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        kps = reg[:, 4:12].reshape(-1, 4, 2) + anchors[:, None, :]
        offset = np.array([pad_x, pad_y], dtype=np.float32)
        origin = np.array([x0, y0], dtype=np.float32)
        boxes_px = ((boxes.reshape(-1, 2, 2) * _DET_SIZE - offset) / scale + origin).reshape(-1, 4)
        kps_px = (kps * _DET_SIZE - offset) / scale + origin
        return (
            scores[keep].astype(np.float32),
            boxes_px.astype(np.float32),
            kps_px.astype(np.float32),
        )

    def _suppress(
        self,
        scores: npt.NDArray[np.float32],
        boxes: npt.NDArray[np.float32],
        kps: npt.NDArray[np.float32],
    ) -> list[PersonDetection]:
        # MediaPipe's weighted NMS: overlapping candidates are averaged, weighted by score.
        order = list(np.argsort(-scores))
        people: list[PersonDetection] = []
        while order and len(people) < self.max_people:
            best = order[0]
            ious = _iou(boxes[best], boxes[order])
            group = [order[i] for i in range(len(order)) if ious[i] > _DET_NMS_IOU]
            order = [order[i] for i in range(len(order)) if ious[i] <= _DET_NMS_IOU]
            weights = scores[group][:, None]
            box = (boxes[group] * weights).sum(0) / weights.sum()
            kp = (kps[group] * weights[:, :, None]).sum(0) / weights.sum()
            people.append(
                PersonDetection(
                    score=float(scores[best]),
                    box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    hips=(float(kp[0, 0]), float(kp[0, 1])),
                    body_point=(float(kp[1, 0]), float(kp[1, 1])),
                    shoulders=(float(kp[2, 0]), float(kp[2, 1])),
                )
            )
        return people


def _iou(box: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out: npt.NDArray[np.float32] = inter / np.maximum(area + areas - inter, 1e-9)
    return out


class PoseLandmarker:
    """``landmarks(image, detection)``: the 33 landmarks of a detected person."""

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        self._model = _Model(model, threads)

    def landmarks(self, image: Image, detection: PersonDetection) -> BodyLandmarks:
        # The crop: centred on the hips, 1.25x the body circle's diameter, rotated so that
        # the body stands upright in it (MediaPipe's AlignmentPointsRects + RectTransformation).
        side = 2.0 * detection.body_radius * _ROI_SCALE
        side = max(side, 8.0)
        angle = detection.rotation
        cx, cy = detection.hips
        # Affine map from image pixels to crop pixels: rotate by -angle about the centre.
        theta = math.radians(angle)
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        # Crop axes in image space: u (rightwards in the crop) and v (downwards in the crop).
        u = np.array([cos_t, sin_t]) * side
        v = np.array([-sin_t, cos_t]) * side
        origin = np.array([cx, cy]) - u / 2 - v / 2
        src = np.array([origin, origin + u, origin + v], dtype=np.float32)
        dst = np.array([[0, 0], [_LMK_SIZE, 0], [0, _LMK_SIZE]], dtype=np.float32)
        matrix = cv2.getAffineTransform(src, dst)
        crop = cv2.warpAffine(
            image,
            matrix,
            (_LMK_SIZE, _LMK_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
        out = self._model.run((crop.astype(np.float32) / 255.0)[None])
        raw = out["Identity"][0].reshape(39, 5)[:33]
        presence = float(out["Identity_1"].reshape(-1)[0])
        inverse = cv2.invertAffineTransform(matrix)
        pts = np.hstack([raw[:, :2], np.ones((33, 1), np.float32)]) @ inverse.T.astype(np.float32)
        return BodyLandmarks(
            points=pts.astype(np.float32),
            visibility=_sigmoid(raw[:, 3]).astype(np.float32),
            presence=presence,
            detection=detection,
        )

    def all_landmarks(
        self, image: Image, detections: Sequence[PersonDetection]
    ) -> list[BodyLandmarks]:
        return [self.landmarks(image, d) for d in detections]
