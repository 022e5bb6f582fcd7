"""Who is in a photo and how each person's body lies: the input of the server's check.

``SceneReader.read(rgb)`` finds people with two detectors of different families, so that
one's blind spot is covered by the other: the BlazePose detector (any rotation, keyed on
the head; on a tiled pass as well for people far away) and MoveNet on the photo and on
the photo turned by 90 degrees either way (MoveNet was trained on upright people; a
person lying across the picture stands upright in the turned one). Each candidate is
then read by the BlazePose landmark model on a crop turned so the body stands upright;
its presence score rejects candidates that are not people. What comes out per person is
geometry only (``BodyGeometry``): angles of torso and legs, where the head and the
ankles are relative to the hips, how tall and wide the body is; scoring it is
``_verify``'s business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge import PoseDetector

from ._models import VerifierModels
from ._pose import LANDMARK_NAMES, BlazePoseDetector, BodyLandmarks, PersonDetection, PoseLandmarker

__all__ = ["BodyGeometry", "SceneReader"]

_IDX = {name: i for i, name in enumerate(LANDMARK_NAMES)}
_MIN_PRESENCE = 0.5
# MoveNet keypoint indices (edge.KEYPOINT_NAMES order).
_MN_SHOULDERS, _MN_HIPS = (5, 6), (11, 12)


def _mid(points: npt.NDArray[np.float32], a: str, b: str) -> npt.NDArray[np.float64]:
    mid: npt.NDArray[np.float64] = (points[_IDX[a]].astype(np.float64) + points[_IDX[b]]) / 2.0
    return mid


def _tilt(start: npt.NDArray[np.float64], end: npt.NDArray[np.float64]) -> float:
    """Degrees between the segment start->end and the picture's vertical, 0..90."""
    d = end - start
    return math.degrees(math.atan2(abs(d[0]), abs(d[1]) + 1e-9))


@dataclass(frozen=True, slots=True)
class BodyGeometry:
    """How one person's body lies in the picture (from the 33 landmarks)."""

    presence: float
    """The landmark model's confidence that the crop shows a person, 0..1."""
    torso_tilt: float
    """Degrees of the hips-to-shoulders line from the vertical (0 standing, 90 lying)."""
    body_tilt: float
    """Degrees of the ankles-to-shoulders line from the vertical."""
    head_rise: float
    """How far the nose is above the hips, in torso lengths (about 1.3 standing, 0 lying)."""
    ankle_drop: float
    """How far the ankles are below the hips, in torso lengths (about 1.4 standing)."""
    legs_visible: float
    """Mean visibility of knees and ankles, 0..1."""
    torso_visible: float
    """Mean visibility of shoulders and hips, 0..1."""
    torso_px: float
    """Torso length in pixels."""
    centre: tuple[float, float]
    """Middle of the hips, in pixels."""
    box: tuple[float, float, float, float]
    """(x0, y0, x1, y1) around the body's main landmarks, in pixels."""

    @classmethod
    def of(cls, lm: BodyLandmarks) -> BodyGeometry:
        p = lm.points
        shoulders = _mid(p, "left_shoulder", "right_shoulder")
        hips = _mid(p, "left_hip", "right_hip")
        ankles = _mid(p, "left_ankle", "right_ankle")
        nose = p[_IDX["nose"]].astype(np.float64)
        torso = max(float(np.linalg.norm(shoulders - hips)), 1.0)
        main = p[
            [
                _IDX[n]
                for n in (
                    "nose",
                    "left_shoulder",
                    "right_shoulder",
                    "left_hip",
                    "right_hip",
                    "left_knee",
                    "right_knee",
                    "left_ankle",
                    "right_ankle",
                )
            ]
        ]
        x0, y0 = main.min(0)
        x1, y1 = main.max(0)
        vis = lm.visibility
        return cls(
            presence=lm.presence,
            torso_tilt=_tilt(hips, shoulders),
            body_tilt=_tilt(ankles, shoulders),
            head_rise=float((hips[1] - nose[1]) / torso),
            ankle_drop=float((ankles[1] - hips[1]) / torso),
            legs_visible=float(
                vis[
                    [_IDX["left_knee"], _IDX["right_knee"], _IDX["left_ankle"], _IDX["right_ankle"]]
                ].mean()
            ),
            torso_visible=float(
                vis[
                    [
                        _IDX["left_shoulder"],
                        _IDX["right_shoulder"],
                        _IDX["left_hip"],
                        _IDX["right_hip"],
                    ]
                ].mean()
            ),
            torso_px=torso,
            centre=(float(hips[0]), float(hips[1])),
            box=(float(x0), float(y0), float(x1), float(y1)),
        )


class SceneReader:
    """The people in a photo and the geometry of each. One instance per worker thread or
    process: the interpreters inside are not safe to share."""

    def __init__(
        self, models: VerifierModels, *, tiles_from: int = 600, max_people: int = 8
    ) -> None:
        self._detector = BlazePoseDetector(models.detector, threads=1)
        self._landmarker = PoseLandmarker(models.landmarks, threads=1)
        # A low person score: MoveNet only proposes; the landmark model's presence decides.
        self._movenet = PoseDetector(
            models.movenet,
            threads=1,
            color_order="rgb",
            rotations=(0, 90, 270),
            min_pose_score=0.05,
        )
        self.tiles_from = tiles_from
        self.max_people = max_people

    def read(self, rgb: npt.NDArray[np.uint8]) -> list[BodyGeometry]:
        h, w = rgb.shape[:2]
        tiles = 2 if max(h, w) >= self.tiles_from else 1
        candidates = self._detector.detect(rgb, tiles=tiles)
        candidates += [
            _from_movenet(pose.keypoints, pose.bbox, w, h) for pose in self._movenet.detect(rgb)
        ]
        people: list[BodyGeometry] = []
        for candidate in candidates:
            if len(people) >= self.max_people:
                break
            lm = self._landmarker.landmarks(rgb, candidate)
            if lm.presence < _MIN_PRESENCE:
                continue
            body = BodyGeometry.of(lm)
            same = next((i for i, other in enumerate(people) if _same_person(body, other)), None)
            if same is None:
                people.append(body)
            elif body.presence > people[same].presence:
                people[same] = body
        return people


def _from_movenet(
    kp: npt.NDArray[np.float32], bbox: tuple[float, float, float, float], w: int, h: int
) -> PersonDetection:
    """A BlazePose-style alignment (hips, body-circle point) from a MoveNet pose, so that
    the landmark model reads MoveNet's people the same way as the detector's."""
    pts = kp[:, :2].astype(np.float64) * (w, h)
    ok = kp[:, 2] >= 0.2
    x0, y0, x1, y1 = bbox[0] * w, bbox[1] * h, bbox[2] * w, bbox[3] * h
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    hips = pts[list(_MN_HIPS)].mean(0) if ok[list(_MN_HIPS)].all() else centre
    if ok[list(_MN_SHOULDERS)].all():
        up = pts[list(_MN_SHOULDERS)].mean(0) - hips
    elif ok[0]:
        up = pts[0] - hips
    else:
        up = np.array([0.0, -1.0])
    norm = float(np.linalg.norm(up)) or 1.0
    visible = pts[ok] if ok.any() else np.array([[x0, y0], [x1, y1]])
    radius = max(
        float(np.linalg.norm(visible - hips, axis=1).max()) * 1.1,
        0.5 * math.hypot(x1 - x0, y1 - y0),
        8.0,
    )
    body_point = hips + up / norm * radius
    return PersonDetection(
        score=0.0,
        box=(x0, y0, x1, y1),
        hips=(float(hips[0]), float(hips[1])),
        body_point=(float(body_point[0]), float(body_point[1])),
        shoulders=(float(hips[0] + up[0]), float(hips[1] + up[1])),
    )


def _same_person(a: BodyGeometry, b: BodyGeometry) -> bool:
    near = math.dist(a.centre, b.centre) < 0.5 * min(a.torso_px, b.torso_px)
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return near or (union > 0 and inter / union > 0.6)
