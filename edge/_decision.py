"""The decision over time: which people are down, which are fighting, what to report.

Pure logic on ``Pose`` objects and timestamps (seconds, any monotonic origin): no model,
no clock of its own, so tests drive it with hand-made poses.

- **Posture** (one frame): a person is *down* (lying, or on the way down) when the main
  axis of their confident keypoints is within ``90 - min_axis_angle`` degrees of
  horizontal and their box is at least ``min_aspect`` times as wide as tall (in pixels),
  or when the line from their hips to their shoulders is at least ``min_torso_angle``
  degrees from upright (a falling or lying torso, whatever the legs and the box do); and
  their centre is on the ground region (if one is configured) and outside every
  exclusion zone (a bench, a bed).
- **Person down** (over time): a tracked person lies, staying within ``still_tolerance``
  of a body length of where they lay down, for ``still_seconds``. One frame without the
  lying posture is forgiven (the model's keypoints flicker); two in a row end the streak.
- **Fight**, with ``min_probability`` set (as the pre-screen's configuration does by
  default), the *learned cue*: a logistic model (``fight_probability``,
  inputs and weights chosen and fitted by bench/fit_fight.py) over ``FightFeatures`` of
  the last ``window_seconds`` (people in view, how close, limb speed, the ``MotionChaos``
  measures) reaching
  ``min_probability`` with at least ``min_people_learned`` people in view (the mean of
  the last ``smooth_frames`` such frames' probabilities within the window). With
  ``min_probability`` None, either of two hand-set cues over the window:
  *limbs*: at least ``min_people`` people seen now, close together (centres within
  ``max_distance`` body lengths), whose wrists and elbows move fast relative to their
  shoulders (the 75th percentile of the group's limb speeds over the window, at least
  ``min_frames`` of them, is ``min_limb_speed`` body lengths per second or more); or
  *chaos*: at least ``min_people`` people seen now in a scene whose motion is violent
  and disorderly (the medians over the window of the ``MotionChaos`` samples reach
  ``min_motion_change`` and ``min_motion_spread``, at least ``min_frames`` samples).
- **One incident, one report**: a person (track) is reported once while they stay down;
  and a zone (a configured polygon, or the whole frame) reports a label again only when
  ``cooldown_seconds`` have passed since that incident was last seen.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._detector import BBox, Pose
from ._motion import ChaosSample

__all__ = [
    "FIGHT_BIAS",
    "FIGHT_INPUTS",
    "FIGHT_WEIGHTS",
    "DangerTracker",
    "Detection",
    "FightFeatures",
    "PostureReading",
    "close_group",
    "fight_probability",
    "point_in_polygon",
    "read_posture",
]

Label = Literal["person_down", "fight"]
Point = tuple[float, float]
Polygon = Sequence[Point]

_SHOULDERS = (5, 6)
_HIPS = (11, 12)
_ARMS = (7, 8, 9, 10)  # elbows, wrists


@dataclass(frozen=True)
class Detection:
    """A dangerous situation the pre-screen reports (once per incident)."""

    label: Label
    """``person_down`` or ``fight``."""
    score: float
    """Confidence 0..1 (a heuristic from posture and pose quality, not a probability)."""
    frame_time: float
    """Time of the frame that completed the decision, as passed in (seconds)."""
    bbox: BBox
    """Where in the frame: (x0, y0, x1, y1) fractions of width and height."""
    zone: str
    """Name of the configured zone the incident is in, or ``frame``."""
    people: int = 1
    """How many people the incident involves."""

    def __post_init__(self) -> None:
        if self.label not in ("person_down", "fight"):
            raise ValueError(f"unknown detection label {self.label!r}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score {self.score} is outside 0..1")
        x0, y0, x1, y1 = self.bbox
        if not (0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0):
            raise ValueError(f"bbox {self.bbox} is not inside the frame")
        if self.people < 1:
            raise ValueError("people must be at least 1")


def point_in_polygon(point: Point, polygon: Polygon) -> bool:
    """Ray casting; points are (x, y) fractions of the frame."""
    x, y = point
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


@dataclass(frozen=True)
class PostureReading:
    """What one frame says about one person's posture."""

    axis_angle: float
    """Angle of the body's main axis from vertical, degrees (90 = horizontal)."""
    torso_angle: float | None
    """Angle of the hips-to-shoulders line from upright, degrees (0 = head up, 90 =
    horizontal, 180 = head down); None when no shoulder or no hip is confident."""
    aspect: float
    """Box width / height in pixels."""
    centre: Point
    """Centre of the confident keypoints (fractions of the frame)."""
    body_length_px: float
    """Longest side of the box, in pixels."""
    lying_posture: bool
    """Axis and aspect, or the torso, say lying or falling (before the ground and
    exclusion checks)."""
    on_ground: bool
    """Inside the ground region (always true when none is configured)."""
    excluded: bool
    """Inside an exclusion zone."""
    score: float
    """How clearly lying, 0..1, from the axis angle and the pose score."""

    @property
    def down(self) -> bool:
        """Lying, on the ground, not excluded: what the person-down rule counts."""
        return self.lying_posture and self.on_ground and not self.excluded


@dataclass(frozen=True)
class PostureRule:
    """The posture thresholds (copied from the pydantic config so this module stays plain)."""

    min_axis_angle: float = 55.0
    min_aspect: float = 0.8
    min_torso_angle: float | None = 55.0
    min_keypoints: int = 5
    min_keypoint_score: float = 0.2
    ground_region: tuple[Point, ...] | None = None
    exclusion_zones: tuple[tuple[Point, ...], ...] = ()


def read_posture(pose: Pose, rule: PostureRule) -> PostureReading | None:
    """The posture of one pose, or None when too few keypoints are confident to tell."""
    pts, ok = pose.points_px(rule.min_keypoint_score)
    if int(ok.sum()) < rule.min_keypoints:
        return None
    confident = pts[ok]
    # The main axis of the keypoint cloud: robust to missing joints, unlike a single
    # shoulder-to-ankle line, and true in pixels (the frame's aspect is applied).
    centred = confident - confident.mean(axis=0)
    cov = centred.T @ centred
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    vx, vy = eigenvectors[:, int(np.argmax(eigenvalues))]
    angle = math.degrees(math.atan2(abs(vx), abs(vy)))
    w, h = pose.frame_size
    x0, y0, x1, y1 = pose.bbox
    box_w, box_h = (x1 - x0) * w, (y1 - y0) * h
    aspect = box_w / box_h if box_h > 0 else float("inf")
    cx, cy = (float(v) for v in confident.mean(axis=0) / (w, h))
    torso = _torso_angle(pts, ok)
    lying = (angle >= rule.min_axis_angle and aspect >= rule.min_aspect) or (
        rule.min_torso_angle is not None and torso is not None and torso >= rule.min_torso_angle
    )
    on_ground = rule.ground_region is None or point_in_polygon((cx, cy), rule.ground_region)
    excluded = any(point_in_polygon((cx, cy), zone) for zone in rule.exclusion_zones)
    tilt = max(angle, min(torso, 90.0) if torso is not None else 0.0)
    horizontality = min(1.0, max(0.0, (tilt - 40.0) / 40.0))
    score = horizontality * (0.5 + 0.5 * min(1.0, pose.score / 0.3))
    return PostureReading(
        angle,
        torso,
        aspect,
        (cx, cy),
        max(box_w, box_h),
        lying,
        on_ground,
        excluded,
        round(score, 4),
    )


def _torso_angle(pts: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_]) -> float | None:
    """Degrees of the hips-to-shoulders line from upright (0 = head up, 180 = head down)."""
    shoulders = [i for i in _SHOULDERS if ok[i]]
    hips = [i for i in _HIPS if ok[i]]
    if not shoulders or not hips:
        return None
    vx, vy = pts[shoulders].mean(axis=0) - pts[hips].mean(axis=0)
    if vx == 0 and vy == 0:
        return None
    return math.degrees(math.atan2(abs(float(vx)), -float(vy)))


def close_group(
    poses: Sequence[Pose],
    readings: Sequence[PostureReading | None],
    min_people: int,
    max_distance: float,
) -> bool:
    """At least ``min_people`` judged people (a reading each) with every one within
    ``max_distance`` body lengths (the mean of the pair's) of another of the group: one
    picture's hint of a fight."""
    people = [(pose, r) for pose, r in zip(poses, readings, strict=True) if r is not None]
    if len(people) < min_people:
        return False
    close: dict[int, set[int]] = {i: {i} for i in range(len(people))}
    for i in range(len(people)):
        for j in range(i + 1, len(people)):
            (pa, ra), (_, rb) = people[i], people[j]
            w, h = pa.frame_size
            d = math.hypot((ra.centre[0] - rb.centre[0]) * w, (ra.centre[1] - rb.centre[1]) * h)
            if d <= max_distance * (ra.body_length_px + rb.body_length_px) / 2:
                merged = close[i] | close[j]
                for k in merged:
                    close[k] = merged
    return max(len(g) for g in close.values()) >= min_people


@dataclass(frozen=True)
class FightFeatures:
    """What the last ``window_seconds`` of a scene say about a fight: the learned cue's
    input (``fight_probability``)."""

    people: int
    """People in view: the most people followed at once over the last second (the pose
    model finds tangled or small people in some frames only)."""
    closeness: float
    """exp(-gap) of the closest two people followed now, the gap between their centres in
    body lengths (the mean of the pair's): 1 overlapping, 0.37 one body length apart, 0
    with fewer than two people."""
    limb_speed: float
    """75th percentile of the elbow and wrist speeds (relative to the shoulders, body
    lengths per second) of everyone followed now, over the window; 0 with fewer than
    ``min_frames`` of them."""
    motion_change: float
    """Median over the window of ``ChaosSample.changing`` (0 with fewer than
    ``min_frames`` samples, as every motion figure here)."""
    motion_spread: float
    """Largest ``ChaosSample.spread`` of the window (moments of motion every way)."""
    motion_jerk: float
    """Median of ``ChaosSample.jerk``."""
    motion_reversal: float
    """Mean of ``ChaosSample.reversal``."""
    motion_jerk_mean: float = 0.0
    """Mean of ``ChaosSample.jerk`` over the window, a step with too little motion to
    measure counting 0: high only when jerky motion (limbs that strike and stop) goes on
    through most of the window, where a median misses short bursts and a maximum takes
    one shake of the camera."""

    def inputs(self) -> dict[str, float]:
        """Every input the logistic model may use, by name (``FIGHT_INPUTS`` picks)."""
        return {
            "people": min(self.people, 4) / 4.0,
            "closeness": self.closeness,
            "limb_speed": min(self.limb_speed, 4.0),
            "motion_change": self.motion_change,
            "motion_spread": self.motion_spread,
            "motion_jerk": min(self.motion_jerk, 3.0),
            "motion_reversal": self.motion_reversal,
            "motion_jerk_mean": min(self.motion_jerk_mean, 3.0),
        }


# The learned cue: logistic weights over ``FightFeatures.inputs()[name]`` for each name
# of ``FIGHT_INPUTS``, and the bias; fitted by bench/fit_fight.py (class-balanced, L2
# 1000 on standardised inputs, the penalty chosen by 5-fold cross-validation over the
# tuning clips) on every inferred frame with two or more people of the fight clips
# numbered up to 75 and of GMDCSA24 subjects 1-2's videos (docs/prescreen.md, which also
# gives the figures of the median jerk alone, the choice of `fit_fight.py --select`: better
# cross-validated on the tuning clips, not better on the held-out ones, not adopted).
FIGHT_INPUTS: tuple[str, ...] = (
    "people",
    "closeness",
    "limb_speed",
    "motion_change",
    "motion_spread",
    "motion_jerk",
    "motion_reversal",
)
FIGHT_WEIGHTS: tuple[float, ...] = (0.251, -0.015, 0.143, 1.508, 0.181, 0.368, 1.536)
FIGHT_BIAS = -0.819


def fight_probability(
    features: FightFeatures,
    weights: Sequence[float] = FIGHT_WEIGHTS,
    bias: float = FIGHT_BIAS,
    inputs: Sequence[str] = FIGHT_INPUTS,
) -> float:
    """The learned cue: how much the window looks like a fight, 0..1."""
    values = features.inputs()
    z = bias + sum(w * values[name] for w, name in zip(weights, inputs, strict=True))
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


@dataclass(frozen=True)
class PersonDownRule:
    still_seconds: float = 5.0
    still_tolerance: float = 0.3


@dataclass(frozen=True)
class FightRule:
    enabled: bool = True
    min_people: int = 2
    max_distance: float = 1.0
    min_limb_speed: float = 1.2
    window_seconds: float = 2.0
    min_frames: int = 4
    min_motion_change: float | None = 0.08
    min_motion_spread: float = 0.3
    # The learned cue: report a fight when ``fight_probability`` reaches this, with at
    # least ``min_people_learned`` people in view (instead of the limbs and chaos cues);
    # None: the two hand-set cues.
    min_probability: float | None = None
    min_people_learned: int = 2
    # The learned cue decides on the mean probability of the last ``smooth_frames``
    # inferred frames with ``min_people_learned`` people in view (within
    # ``window_seconds``), once it has that many: one frame's flicker neither reports
    # nor hides a fight.
    smooth_frames: int = 1


@dataclass
class _Track:
    id: int
    pose: Pose
    last_seen: float
    reading: PostureReading | None
    missed: int = 0
    down_since: float | None = None
    anchor: Point | None = None
    not_down_streak: int = 0
    reported_down: bool = False
    reported_fight: bool = False
    # (time, limb speed in body lengths per second) for the fight rule
    limb_speeds: deque[tuple[float, float]] = field(default_factory=deque)


def _iou(a: BBox, b: BBox) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(box: BBox) -> Point:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _union(boxes: Sequence[BBox]) -> BBox:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _limb_speed(prev: Pose, cur: Pose, dt: float, min_score: float) -> float | None:
    """Median speed of elbows and wrists relative to the shoulders' midpoint, in body
    lengths per second; None when the joints are not visible in both frames. Relative to
    the shoulders so that walking or being jostled does not count as swinging limbs."""
    p_pts, p_ok = prev.points_px(min_score)
    c_pts, c_ok = cur.points_px(min_score)
    if not (p_ok[list(_SHOULDERS)].any() and c_ok[list(_SHOULDERS)].any()):
        return None
    p_ref = p_pts[[i for i in _SHOULDERS if p_ok[i]]].mean(axis=0)
    c_ref = c_pts[[i for i in _SHOULDERS if c_ok[i]]].mean(axis=0)
    joints = [i for i in _ARMS if p_ok[i] and c_ok[i]]
    if not joints:
        return None
    w, h = cur.frame_size
    x0, y0, x1, y1 = cur.bbox
    length = max((x1 - x0) * w, (y1 - y0) * h, 1.0)
    moves = [float(np.linalg.norm((c_pts[i] - c_ref) - (p_pts[i] - p_ref))) for i in joints]
    return float(np.median(moves)) / length / dt


class DangerTracker:
    """Follows people across inferred frames and decides when to report.

    ``update(poses, t)`` after each inference; ``update(None, t)`` for a frame the motion
    gate skipped (the scene did not change, so everyone is where they were).
    """

    def __init__(
        self,
        posture: PostureRule | None = None,
        person_down: PersonDownRule | None = None,
        fight: FightRule | None = None,
        *,
        zones: Sequence[tuple[str, Sequence[Point]]] = (),
        cooldown_seconds: float = 120.0,
        person_down_enabled: bool = True,
        max_missed: int = 2,
    ) -> None:
        self.posture = posture or PostureRule()
        self.person_down = person_down or PersonDownRule()
        self.fight = fight or FightRule()
        self.zones = [(name, tuple(poly)) for name, poly in zones]
        self.cooldown_seconds = cooldown_seconds
        self.person_down_enabled = person_down_enabled
        self.max_missed = max_missed
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._quiet_until: dict[tuple[str, str], float] = {}
        self._chaos: deque[ChaosSample] = deque()
        # (time, fight_probability) of the last frames with enough people in view
        self._fight_p: deque[tuple[float, float]] = deque(maxlen=max(1, self.fight.smooth_frames))
        # (time, people followed) of the inferred frames of the last second
        self._followed: deque[tuple[float, int]] = deque()

    @property
    def people(self) -> int:
        """People currently tracked."""
        return len(self._tracks)

    def zone_of(self, point: Point) -> str:
        for name, polygon in self.zones:
            if point_in_polygon(point, polygon):
                return name
        return "frame"

    # -- tracking ----------------------------------------------------------------------

    def _associate(self, poses: Sequence[Pose], t: float) -> list[_Track]:
        """Match poses to tracks greedily by box overlap (then centre distance); returns the
        tracks seen in this frame."""
        pairs: list[tuple[float, int, int]] = []
        for ti, track in enumerate(self._tracks):
            for pi, pose in enumerate(poses):
                iou = _iou(track.pose.bbox, pose.bbox)
                if iou > 0.05:
                    pairs.append((1.0 - iou, ti, pi))
                    continue
                (ax, ay), (bx, by) = _centre(track.pose.bbox), _centre(pose.bbox)
                size = max(
                    track.pose.bbox[2] - track.pose.bbox[0], track.pose.bbox[3] - track.pose.bbox[1]
                )
                distance = math.hypot(ax - bx, ay - by)
                if distance < 0.5 * size:
                    pairs.append((1.0 + distance / max(size, 1e-6), ti, pi))
        pairs.sort()
        used_t: set[int] = set()
        used_p: set[int] = set()
        seen: list[_Track] = []
        for _, ti, pi in pairs:
            if ti in used_t or pi in used_p:
                continue
            used_t.add(ti)
            used_p.add(pi)
            track = self._tracks[ti]
            self._observe_limbs(track, poses[pi], t)
            track.pose, track.last_seen, track.missed = poses[pi], t, 0
            track.reading = read_posture(poses[pi], self.posture)
            seen.append(track)
        for ti, track in enumerate(self._tracks):
            if ti not in used_t:
                track.missed += 1
        self._tracks = [tr for tr in self._tracks if tr.missed <= self.max_missed]
        for pi, pose in enumerate(poses):
            if pi not in used_p:
                track = _Track(self._next_id, pose, t, read_posture(pose, self.posture))
                self._next_id += 1
                self._tracks.append(track)
                seen.append(track)
        return seen

    def _observe_limbs(self, track: _Track, pose: Pose, t: float) -> None:
        dt = t - track.last_seen
        # Speeds over gaps longer than half a second (frames the gate skipped) say nothing
        # about fast limbs.
        if 0 < dt <= 0.5:
            speed = _limb_speed(track.pose, pose, dt, self.posture.min_keypoint_score)
            if speed is not None:
                track.limb_speeds.append((t, speed))
        while track.limb_speeds and track.limb_speeds[0][0] < t - self.fight.window_seconds:
            track.limb_speeds.popleft()

    # -- decisions -----------------------------------------------------------------------

    def update(
        self, poses: Sequence[Pose] | None, t: float, chaos: ChaosSample | None = None
    ) -> list[Detection]:
        """Feed one frame's people (None: frame not inferred, scene unchanged) and, when
        there is one, the frame's ``MotionChaos`` sample; returns the detections to report
        now."""
        if chaos is not None:
            self._chaos.append(chaos)
        while self._chaos and self._chaos[0].t < t - self.fight.window_seconds:
            self._chaos.popleft()
        seen = self._tracks if poses is None else self._associate(poses, t)
        if poses is not None:
            self._followed.append((t, len(self._tracks)))
        while self._followed and self._followed[0][0] < t - 1.0:
            self._followed.popleft()
        detections: list[Detection] = []
        if self.person_down_enabled:
            for track in seen:
                detection = self._person_down(track, t, fresh=poses is not None)
                if detection is not None:
                    detections.append(detection)
        if self.fight.enabled and poses is not None:
            detection = self._fight(t)
            if detection is not None:
                detections.append(detection)
        return detections

    def _person_down(self, track: _Track, t: float, *, fresh: bool) -> Detection | None:
        reading = track.reading
        if fresh:
            if reading is not None and reading.down:
                track.not_down_streak = 0
                w, h = track.pose.frame_size
                drift = (
                    math.hypot(
                        (reading.centre[0] - track.anchor[0]) * w,
                        (reading.centre[1] - track.anchor[1]) * h,
                    )
                    if track.anchor is not None
                    else math.inf
                )
                if track.down_since is None or drift > (
                    self.person_down.still_tolerance * reading.body_length_px
                ):
                    # Lay down just now, or moved along the ground: the stillness clock
                    # starts (again) here.
                    track.down_since, track.anchor = t, reading.centre
            else:
                track.not_down_streak += 1
                if track.not_down_streak >= 2:
                    track.down_since, track.anchor, track.reported_down = None, None, False
        if track.down_since is None or reading is None:
            return None
        key = ("person_down", self.zone_of(reading.centre))
        if track.reported_down:
            # Still down: the incident goes on, and so does its zone's quiet time.
            self._quiet_until[key] = t + self.cooldown_seconds
            return None
        if t - track.down_since < self.person_down.still_seconds:
            return None
        track.reported_down = True
        quiet = self._quiet_until.get(key)
        self._quiet_until[key] = t + self.cooldown_seconds
        if quiet is not None and t < quiet:
            return None
        return Detection("person_down", reading.score, t, track.pose.bbox, key[1], 1)

    def fight_features(self, t: float) -> FightFeatures:
        """The learned cue's inputs for the frame at ``t`` (after ``update``)."""
        rule = self.fight
        tracks = self._tracks
        closeness = 0.0
        for i, a in enumerate(tracks):
            for b in tracks[i + 1 :]:
                closeness = max(closeness, math.exp(-self._gap(a, b)))
        speeds = [s for tr in tracks for _, s in tr.limb_speeds]
        limb = float(np.percentile(speeds, 75)) if len(speeds) >= rule.min_frames else 0.0
        people = max((n for _, n in self._followed), default=len(tracks))
        chaos = list(self._chaos)
        if len(chaos) < rule.min_frames:
            return FightFeatures(people, closeness, limb, 0.0, 0.0, 0.0, 0.0, 0.0)
        return FightFeatures(
            people,
            closeness,
            limb,
            float(np.median([c.changing for c in chaos])),
            max(c.spread for c in chaos),
            float(np.median([c.jerk for c in chaos])),
            float(np.mean([c.reversal for c in chaos])),
            float(np.mean([c.jerk for c in chaos])),
        )

    def _fight(self, t: float) -> Detection | None:
        rule = self.fight
        active = [tr for tr in self._tracks if tr.last_seen == t]
        if rule.min_probability is not None:
            features = self.fight_features(t)
            if features.people < max(1, rule.min_people_learned):
                return None
            recent = self._fight_p
            recent.append((t, fight_probability(features)))
            while recent[0][0] < t - rule.window_seconds:
                recent.popleft()
            if len(recent) < (recent.maxlen or 1) or not active:
                return None
            p = sum(q for _, q in recent) / len(recent)
            if p < rule.min_probability:
                return None
            # Reported as 0.5 at the threshold, 1 at certainty, as the other cues are.
            score = 0.5 + 0.5 * (p - rule.min_probability) / max(1e-6, 1 - rule.min_probability)
            return self._report_fight(t, self._tracks, min(1.0, score))
        best: tuple[float, list[_Track]] | None = None
        for i, a in enumerate(active):
            group = [a] + [b for b in active[i + 1 :] if self._close(a, b)]
            if len(group) < max(2, rule.min_people):
                continue
            speeds = [s for tr in group for _, s in tr.limb_speeds]
            if len(speeds) < rule.min_frames:
                continue
            speed = float(np.percentile(speeds, 75))
            if speed >= rule.min_limb_speed and (best is None or speed > best[0]):
                best = (speed, group)
        if best is not None:
            score = min(1.0, best[0] / (2.0 * rule.min_limb_speed))
            group = best[1]
        else:
            chaos = self._chaos_score(active)
            if chaos is None:
                return None
            score, group = chaos, active
        return self._report_fight(t, group, score)

    def _report_fight(self, t: float, group: Sequence[_Track], score: float) -> Detection | None:
        box = _union([tr.pose.bbox for tr in group])
        key = ("fight", self.zone_of(_centre(box)))
        quiet = self._quiet_until.get(key)
        self._quiet_until[key] = t + self.cooldown_seconds
        if quiet is not None and t < quiet:
            return None
        return Detection("fight", round(score, 4), t, box, key[1], len(group))

    def _chaos_score(self, active: Sequence[_Track]) -> float | None:
        """The chaos cue's score (0..1) when it holds with people in view, else None."""
        rule = self.fight
        if (
            rule.min_motion_change is None
            or len(active) < max(2, rule.min_people)
            or len(self._chaos) < rule.min_frames
        ):
            return None
        change = float(np.median([c.changing for c in self._chaos]))
        spread = float(np.median([c.spread for c in self._chaos]))
        if change < rule.min_motion_change or spread < rule.min_motion_spread:
            return None
        return min(1.0, change / (2.0 * rule.min_motion_change))

    def _gap(self, a: _Track, b: _Track) -> float:
        """Distance of two people's centres in body lengths (the mean of the pair's)."""
        w, h = a.pose.frame_size
        (ax, ay), (bx, by) = _centre(a.pose.bbox), _centre(b.pose.bbox)
        distance = math.hypot((ax - bx) * w, (ay - by) * h)
        la = max((a.pose.bbox[2] - a.pose.bbox[0]) * w, (a.pose.bbox[3] - a.pose.bbox[1]) * h)
        lb = max((b.pose.bbox[2] - b.pose.bbox[0]) * w, (b.pose.bbox[3] - b.pose.bbox[1]) * h)
        return distance / max((la + lb) / 2, 1e-6)

    def _close(self, a: _Track, b: _Track) -> bool:
        return self._gap(a, b) <= self.fight.max_distance
