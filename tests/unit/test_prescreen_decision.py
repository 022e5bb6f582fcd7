"""The decision over time, driven by hand-made stick-figure poses (no model involved)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge import DangerTracker, Detection, Pose, point_in_polygon, read_posture
from edge._decision import FightRule, PersonDownRule, PostureRule

FRAME = (640, 480)

# (along the body from head 0 to feet 1, across the body), in body lengths
_FIGURE = [
    (0.05, 0.0),
    (0.04, -0.02),
    (0.04, 0.02),
    (0.05, -0.04),
    (0.05, 0.04),  # face
    (0.2, -0.1),
    (0.2, 0.1),  # shoulders
    (0.35, -0.13),
    (0.35, 0.13),  # elbows
    (0.5, -0.14),
    (0.5, 0.14),  # wrists
    (0.55, -0.07),
    (0.55, 0.07),  # hips
    (0.75, -0.07),
    (0.75, 0.07),  # knees
    (0.95, -0.07),
    (0.95, 0.07),  # ankles
]


def figure(
    cx: float,
    cy: float,
    length: float = 200.0,
    angle: float = 0.0,
    *,
    arm_swing: float = 0.0,
    score: float = 0.6,
    kp_score: float = 0.8,
    frame: tuple[int, int] = FRAME,
) -> Pose:
    """A person centred at (cx, cy) (fractions), ``length`` pixels long, whose head-to-feet
    axis is ``angle`` degrees from vertical; ``arm_swing`` moves elbows and wrists up by
    that many body lengths (relative to the shoulders)."""
    w, h = frame
    a = math.radians(angle)
    d = np.array([math.sin(a), math.cos(a)])
    n = np.array([math.cos(a), -math.sin(a)])
    top = np.array([cx * w, cy * h]) - 0.5 * length * d
    pts = []
    for i, (u, v) in enumerate(_FIGURE):
        if i in (7, 8, 9, 10):
            u -= arm_swing * (1.0 if i in (9, 10) else 0.5)
        pts.append(top + u * length * d + v * length * n)
    arr = np.array(pts)
    kp = np.column_stack([arr[:, 0] / w, arr[:, 1] / h, np.full(17, kp_score)])
    kp = np.clip(kp, 0.0, 1.0).astype(np.float32)
    margin_x, margin_y = 10 / w, 10 / h
    box = (
        max(0.0, float(kp[:, 0].min()) - margin_x),
        max(0.0, float(kp[:, 1].min()) - margin_y),
        min(1.0, float(kp[:, 0].max()) + margin_x),
        min(1.0, float(kp[:, 1].max()) + margin_y),
    )
    return Pose(kp, box, score, frame)


def standing(cx: float = 0.5, **kw: float) -> Pose:
    return figure(cx, 0.5, 300.0, 0.0, **kw)


def lying(cx: float = 0.5, cy: float = 0.8, **kw: float) -> Pose:
    return figure(cx, cy, 250.0, 88.0, **kw)


def tracker(**kw: object) -> DangerTracker:
    still = float(kw.pop("still", 5.0))  # type: ignore[arg-type]
    return DangerTracker(
        PostureRule(**kw),
        PersonDownRule(still_seconds=still),  # type: ignore[arg-type]
        FightRule(enabled=False),
        cooldown_seconds=60.0,
    )


def run(t: DangerTracker, frames: list[tuple[float, list[Pose] | None]]) -> list[Detection]:
    out: list[Detection] = []
    for time_, poses in frames:
        out.extend(t.update(poses, time_))
    return out


def every(
    start: float, stop: float, step: float, poses: list[Pose] | None
) -> list[tuple[float, list[Pose] | None]]:
    return [(start + i * step, poses) for i in range(round((stop - start) / step))]


# -- posture ------------------------------------------------------------------------------


def test_posture_tells_standing_from_lying() -> None:
    rule = PostureRule()
    up = read_posture(standing(), rule)
    down = read_posture(lying(), rule)
    assert up is not None and down is not None
    assert up.axis_angle < 10 and not up.lying_posture and not up.down
    assert down.axis_angle > 80 and down.lying_posture and down.down
    assert down.score > up.score


def test_posture_angle_is_measured_in_pixels_not_fractions() -> None:
    # 45 degrees in pixels on a wide frame is far from 45 degrees in fractions of it.
    pose = figure(0.5, 0.5, 300.0, 45.0, frame=(1920, 480))
    reading = read_posture(pose, PostureRule())
    assert reading is not None
    assert abs(reading.axis_angle - 45.0) < 5.0


def test_posture_needs_enough_confident_keypoints() -> None:
    assert read_posture(lying(kp_score=0.1), PostureRule()) is None


def test_ground_region_and_exclusion_zones() -> None:
    lower_half = ((0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0))
    bench = ((0.1, 0.6), (0.4, 0.6), (0.4, 0.95), (0.1, 0.95))
    rule = PostureRule(ground_region=lower_half, exclusion_zones=(bench,))
    on_floor = read_posture(lying(0.7, 0.8), rule)
    on_bed = read_posture(lying(0.7, 0.3), rule)
    on_bench = read_posture(lying(0.25, 0.8), rule)
    assert on_floor is not None and on_floor.down
    assert on_bed is not None and on_bed.lying_posture and not on_bed.on_ground
    assert not on_bed.down
    assert on_bench is not None and on_bench.excluded and not on_bench.down


def test_point_in_polygon() -> None:
    square = ((0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8))
    assert point_in_polygon((0.5, 0.5), square)
    assert not point_in_polygon((0.9, 0.5), square)
    assert not point_in_polygon((0.5, 0.1), square)


# -- person down --------------------------------------------------------------------------


def test_person_lying_still_is_reported_once_after_still_seconds() -> None:
    t = tracker(still=5.0)
    found = run(t, every(0.0, 4.9, 0.1, [lying()]))
    assert found == []
    found = run(t, every(5.0, 60.0, 0.1, [lying()]))
    assert [d.label for d in found] == ["person_down"]
    d = found[0]
    assert 5.0 <= d.frame_time < 5.2
    assert d.zone == "frame" and d.people == 1 and 0.5 < d.score <= 1.0
    x0, y0, x1, y1 = d.bbox
    assert x0 < 0.5 < x1 and y0 < 0.8 < y1


def test_standing_and_walking_people_are_never_reported() -> None:
    t = tracker(still=1.0)
    frames = [(i * 0.1, [standing(0.2 + 0.005 * i)]) for i in range(120)]
    assert run(t, frames) == []


def test_frames_skipped_by_the_motion_gate_count_as_unchanged() -> None:
    t = tracker(still=5.0)
    # Inferred every 2 s (the gate's recheck), None in between: still reported at 5 s.
    frames: list[tuple[float, list[Pose] | None]] = []
    for i in range(80):
        time_ = i * 0.1
        frames.append((time_, [lying()] if i % 20 == 0 else None))
    found = run(t, frames)
    assert len(found) == 1
    assert 5.0 <= found[0].frame_time < 5.2


def test_crawling_along_the_ground_restarts_the_stillness_clock() -> None:
    t = tracker(still=3.0)
    # Moves 0.02 of the frame width (~0.05 body lengths) per 0.1 s: never still for 3 s.
    crawl = [(i * 0.1, [lying(0.2 + 0.02 * i)]) for i in range(30)]
    assert run(t, crawl) == []
    rest = every(3.0, 7.0, 0.1, [lying(0.2 + 0.02 * 29)])
    found = run(t, rest)
    # The clock last restarted when the drift passed 0.3 body lengths, after 2 s at least.
    assert len(found) == 1 and found[0].frame_time >= 5.0


def test_one_flickering_frame_is_forgiven_two_are_not() -> None:
    t = tracker(still=3.0)
    frames = [
        *every(0.0, 2.0, 0.1, [lying()]),
        (2.0, [standing()]),
        *every(2.1, 3.5, 0.1, [lying()]),
    ]
    assert len(run(t, frames)) == 1
    t = tracker(still=3.0)
    frames = [
        *every(0.0, 2.0, 0.1, [lying()]),
        (2.0, [standing()]),
        (2.1, [standing()]),
        *every(2.2, 3.5, 0.1, [lying()]),
    ]
    assert run(t, frames) == []


def test_a_person_on_a_bench_is_not_reported() -> None:
    bench = ((0.3, 0.6), (0.7, 0.6), (0.7, 0.95), (0.3, 0.95))
    t = tracker(still=1.0, exclusion_zones=(bench,))
    assert run(t, every(0.0, 5.0, 0.1, [lying(0.5, 0.8)])) == []


def test_cooldown_one_incident_one_report() -> None:
    t = DangerTracker(
        PostureRule(),
        PersonDownRule(still_seconds=1.0),
        FightRule(enabled=False),
        cooldown_seconds=30.0,
    )
    first = run(t, every(0.0, 3.0, 0.1, [lying()]))
    assert len(first) == 1
    # Gets up, lies down again within the cool-down: the same incident, no new report.
    again = run(t, [*every(3.0, 4.0, 0.1, [standing()]), *every(4.0, 10.0, 0.1, [lying()])])
    assert again == []
    # Up for longer than the cool-down, then down again: a new incident.
    later = run(t, [*every(10.0, 45.0, 0.5, [standing()]), *every(45.0, 48.0, 0.1, [lying()])])
    assert len(later) == 1


def test_cooldown_is_per_zone() -> None:
    left = ("left", ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)))
    right = ("right", ((0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)))
    t = DangerTracker(
        PostureRule(),
        PersonDownRule(still_seconds=1.0),
        FightRule(enabled=False),
        zones=[left, right],
        cooldown_seconds=60.0,
    )
    found = run(t, every(0.0, 3.0, 0.1, [lying(0.2), lying(0.8)]))
    assert sorted(d.zone for d in found) == ["left", "right"]
    # Two people down in one zone: one incident.
    t2 = DangerTracker(
        PostureRule(),
        PersonDownRule(still_seconds=1.0),
        FightRule(enabled=False),
        zones=[left, right],
        cooldown_seconds=60.0,
    )
    found = run(t2, every(0.0, 3.0, 0.1, [lying(0.1, 0.9), lying(0.35, 0.6)]))
    assert [d.zone for d in found] == ["left"]


def test_a_lost_and_found_again_person_is_still_one_incident() -> None:
    t = tracker(still=1.0)
    frames = [
        *every(0.0, 3.0, 0.1, [lying()]),
        *every(3.0, 4.0, 0.1, []),
        *every(4.0, 20.0, 0.1, [lying()]),
    ]
    assert len(run(t, frames)) == 1


# -- fight --------------------------------------------------------------------------------


def _fight_tracker(**kw: float) -> DangerTracker:
    return DangerTracker(
        PostureRule(),
        PersonDownRule(),
        FightRule(**kw),  # type: ignore[arg-type]
        person_down_enabled=False,
        cooldown_seconds=60.0,
    )


def _swing(i: int, amplitude: float = 0.4) -> float:
    return amplitude * (i % 2)  # arms up, down, up ... every frame


def test_two_people_close_together_swinging_arms_is_a_fight() -> None:
    t = _fight_tracker()
    frames = [
        (i * 0.1, [standing(0.42, arm_swing=_swing(i)), standing(0.58, arm_swing=_swing(i + 1))])
        for i in range(40)
    ]
    found = run(t, frames)
    assert [d.label for d in found] == ["fight"], "one report for one fight"
    d = found[0]
    assert d.people == 2 and d.frame_time <= 1.0
    assert d.bbox[0] < 0.42 and d.bbox[2] > 0.58


def test_people_far_apart_or_calm_or_alone_are_not_a_fight() -> None:
    far = [
        (i * 0.1, [standing(0.1, arm_swing=_swing(i)), standing(0.9, arm_swing=_swing(i))])
        for i in range(40)
    ]
    assert run(_fight_tracker(), far) == []
    # Gesturing while talking: arms moving about 0.75 body lengths per second.
    calm = [
        (
            i * 0.1,
            [
                standing(0.42, arm_swing=_swing(i, 0.1)),
                standing(0.58, arm_swing=_swing(i + 1, 0.1)),
            ],
        )
        for i in range(40)
    ]
    assert run(_fight_tracker(), calm) == []
    alone = [(i * 0.1, [standing(0.5, arm_swing=_swing(i))]) for i in range(40)]
    assert run(_fight_tracker(), alone) == []


def test_walking_side_by_side_is_not_a_fight() -> None:
    # Whole bodies moving fast (shoulders too) is not limbs moving relative to the body.
    frames = [(i * 0.1, [standing(0.3 + 0.02 * i), standing(0.45 + 0.02 * i)]) for i in range(25)]
    assert run(_fight_tracker(), frames) == []


def test_sparse_frames_do_not_make_a_fight() -> None:
    # One inference a second (the gate's recheck) cannot measure limb speed.
    frames = [(float(i), [standing(0.42, arm_swing=_swing(i)), standing(0.58)]) for i in range(20)]
    assert run(_fight_tracker(), frames) == []


# -- detection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"label": "sleeping"},
        {"score": 1.5},
        {"bbox": (0.5, 0.5, 0.4, 0.6)},
        {"bbox": (0.0, 0.0, 1.2, 1.0)},
        {"people": 0},
    ],
)
def test_detection_validates(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "label": "person_down",
        "score": 0.5,
        "frame_time": 1.0,
        "bbox": (0.1, 0.1, 0.2, 0.2),
        "zone": "frame",
        "people": 1,
    }
    fields.update(kwargs)
    with pytest.raises(ValueError):
        Detection(**fields)  # type: ignore[arg-type]
