"""The looser person-down posture (torso), the single-image close group and the fight
rule's chaos cue, on hand-made poses and motion samples (no model involved)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge import Pose, read_posture
from edge._decision import (
    DangerTracker,
    FightRule,
    PersonDownRule,
    PostureRule,
    close_group,
    fight_probability,
)
from edge._motion import ChaosSample
from edge._prescreen import FightConfig
from tests.unit.test_prescreen_decision import FRAME, figure, standing


def bent(torso: float, cx: float = 0.5, cy: float = 0.5) -> Pose:
    """Legs upright, the torso (shoulders, head, arms) tipped ``torso`` degrees about the
    hips: someone toppling over, whose keypoint cloud still looks mostly upright."""
    pose = figure(cx, cy, 300.0, 0.0)
    kp = pose.keypoints.copy()
    w, h = FRAME
    hips = kp[[11, 12], :2].mean(axis=0) * (w, h)
    a = np.radians(torso)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    for i in range(11):  # face, shoulders, elbows, wrists
        p = kp[i, :2] * (w, h) - hips
        kp[i, :2] = (rot @ p + hips) / (w, h)
    kp[:, :2] = np.clip(kp[:, :2], 0.0, 1.0)
    box = (
        float(kp[:, 0].min()),
        float(kp[:, 1].min()),
        float(kp[:, 0].max()),
        float(kp[:, 1].max()),
    )
    return Pose(kp, box, 0.5, FRAME)


def test_a_toppling_torso_counts_as_down_by_the_torso_rule_only() -> None:
    rule = PostureRule()
    toppling = read_posture(bent(75.0), rule)
    assert toppling is not None and toppling.torso_angle is not None
    assert 70 < toppling.torso_angle < 80
    assert toppling.down, "torso 75 degrees from upright: falling"
    assert toppling.axis_angle < rule.min_axis_angle, "the axis alone would not say so"
    old = PostureRule(min_axis_angle=60.0, min_aspect=1.0, min_torso_angle=None)
    reading = read_posture(bent(75.0), old)
    assert reading is not None and not reading.down
    leaning = read_posture(bent(20.0), rule)
    assert leaning is not None and not leaning.down, "leaning forward is not falling"


def test_torso_angle_reads_head_down_and_needs_shoulders_and_hips() -> None:
    upside_down = read_posture(figure(0.5, 0.5, 300.0, 180.0), PostureRule())
    assert upside_down is not None and upside_down.torso_angle is not None
    assert upside_down.torso_angle > 170 and upside_down.down
    up = read_posture(standing(), PostureRule())
    assert up is not None and up.torso_angle is not None and up.torso_angle < 5
    pose = standing()
    kp = pose.keypoints.copy()
    kp[[11, 12], 2] = 0.0  # hips not visible
    reading = read_posture(Pose(kp, pose.bbox, pose.score, FRAME), PostureRule())
    assert reading is not None and reading.torso_angle is None and not reading.down


def test_close_group_needs_enough_judged_people_near_each_other() -> None:
    rule = PostureRule()

    def group(poses: list[Pose], distance: float = 1.0, people: int = 2) -> bool:
        return close_group(poses, [read_posture(p, rule) for p in poses], people, distance)

    pair = [standing(0.42), standing(0.58)]
    assert group(pair)
    assert not group([standing(0.1), standing(0.9)]), "1.7 body lengths apart"
    assert group([standing(0.1), standing(0.9)], distance=2.0)
    assert not group([standing(0.5)])
    assert not group(pair, people=3)
    assert group([standing(0.3), standing(0.45), standing(0.6)], people=3), "a chain"
    faint = standing(0.58, kp_score=0.1)  # too few keypoints to judge
    assert not group([standing(0.42), faint])


def _chaos_tracker(**kw: object) -> DangerTracker:
    return DangerTracker(
        PostureRule(),
        PersonDownRule(),
        FightRule(min_limb_speed=50.0, **kw),  # type: ignore[arg-type]
        person_down_enabled=False,
        cooldown_seconds=60.0,
    )


def _feed(
    tracker: DangerTracker, people: list[Pose], changing: float, spread: float, n: int = 30
) -> list[str]:
    labels = []
    for i in range(n):
        t = i * 0.1
        labels += [d.label for d in tracker.update(people, t, ChaosSample(t, changing, spread))]
    return labels


def test_violent_disorderly_motion_with_people_in_view_is_a_fight() -> None:
    assert _feed(_chaos_tracker(), [standing(0.3), standing(0.7)], 0.2, 0.5) == ["fight"]
    # One person alone (exercising, a fall seen up close) is no fight, however wild.
    assert _feed(_chaos_tracker(), [standing(0.5)], 0.2, 0.5) == []
    assert _feed(_chaos_tracker(min_people=3), [standing(0.3), standing(0.7)], 0.2, 0.5) == []


def test_orderly_or_mild_motion_or_an_empty_scene_is_not() -> None:
    people = [standing(0.3), standing(0.7)]
    assert _feed(_chaos_tracker(), people, 0.2, 0.05) == [], "everything moves one way"
    assert _feed(_chaos_tracker(), people, 0.05, 0.5) == [], "mild"
    assert _feed(_chaos_tracker(), [], 0.2, 0.5) == [], "nobody there"
    assert _feed(_chaos_tracker(min_motion_change=None), people, 0.2, 0.5) == []
    assert _feed(_chaos_tracker(), people, 0.2, 0.5, n=3) == [], "too few samples"


def test_old_samples_leave_the_window() -> None:
    # No cool-down: the cue reports on every frame while it holds, so the last report
    # shows when the violent samples stopped counting.
    tracker = DangerTracker(
        PostureRule(),
        PersonDownRule(),
        FightRule(min_limb_speed=50.0),
        person_down_enabled=False,
        cooldown_seconds=0.0,
    )
    people = [standing(0.3), standing(0.7)]
    times = []
    for i in range(60):
        t = i * 0.1
        sample = ChaosSample(t, 0.3 if i < 20 else 0.01, 0.6)
        times += [t for _ in tracker.update(people, t, sample)]
    assert times and times[0] < 0.5
    assert 2.0 < times[-1] < 3.2, "violent samples count for one window (2 s), then not"


def _learned(**kw: object) -> DangerTracker:
    return DangerTracker(
        PostureRule(),
        PersonDownRule(),
        FightRule(
            min_probability=FightConfig().min_probability,
            **{"smooth_frames": FightConfig().smooth_frames, **kw},  # type: ignore[arg-type]
        ),
        person_down_enabled=False,
        cooldown_seconds=60.0,
    )


def _feed_learned(
    tracker: DangerTracker, people: list[Pose], sample: ChaosSample | None, n: int = 30
) -> list[str]:
    labels: list[str] = []
    for i in range(n):
        t = i * 0.1
        s = (
            None
            if sample is None
            else ChaosSample(t, sample.changing, sample.spread, sample.jerk, sample.reversal)
        )
        labels += [d.label for d in tracker.update(people, t, s)]
    return labels


def test_the_learned_cue_reports_back_and_forth_motion_of_people_together() -> None:
    pair = [standing(0.42), standing(0.58)]
    wild = ChaosSample(0.0, 0.15, 0.8, 1.2, 0.5)
    calm = ChaosSample(0.0, 0.01, 0.2, 0.4, 0.05)
    assert _feed_learned(_learned(), pair, wild) == ["fight"]
    assert _feed_learned(_learned(), pair, calm) == []
    assert _feed_learned(_learned(), pair, None) == [], "no motion measured"
    assert _feed_learned(_learned(), [standing(0.5)], wild) == [], "one person alone"
    assert _feed_learned(_learned(), [], wild) == [], "nobody there"
    # The probability rises with what the fit found for fights: jerky motion that goes on.
    tracker = _learned()
    _feed_learned(tracker, pair, wild, n=10)
    f = tracker.fight_features(0.9)
    assert f.people == 2 and f.motion_jerk == pytest.approx(1.2)
    assert f.motion_jerk_mean == pytest.approx(1.2)
    assert fight_probability(f) > fight_probability(replace(f, motion_jerk=0.4))
    # A window whose motion is jerky in a few steps only (a shake of the camera, a door):
    # the median input ignores those steps, the mean input (for fits) sees them.
    tracker = _learned()
    for i in range(20):
        t = i * 0.1
        jerk = 2.0 if i in (5, 6, 7) else 0.2
        tracker.update(pair, t, ChaosSample(t, 0.15, 0.8, jerk, 0.5))
    f = tracker.fight_features(1.9)
    assert f.motion_jerk == pytest.approx(0.2) and f.motion_jerk_mean > 0.4
    assert f.inputs()["motion_jerk_mean"] == pytest.approx(f.motion_jerk_mean)


def test_the_learned_cue_counts_people_the_model_misses_in_some_frames() -> None:
    # The pose model finds the second person every other frame only: still two in view.
    tracker = _learned()
    wild = ChaosSample(0.0, 0.15, 0.8, 1.2, 0.5)
    labels: list[str] = []
    for i in range(30):
        t = i * 0.1
        people = [standing(0.42), standing(0.58)] if i % 2 == 0 else [standing(0.42)]
        labels += [
            d.label
            for d in tracker.update(
                people, t, ChaosSample(t, wild.changing, wild.spread, wild.jerk, wild.reversal)
            )
        ]
    assert labels == ["fight"]


def test_the_learned_cue_decides_on_the_mean_of_several_frames() -> None:
    # Violent motion all along; a pair in view for three inferred frames only (a flicker
    # of the pose model on two passers-by), nobody before or after.
    wild = ChaosSample(0.0, 0.15, 0.8, 1.2, 0.5)

    def play(tracker: DangerTracker, pair_frames: range) -> list[float]:
        times: list[float] = []
        for i in range(40):
            t = i * 0.1
            people = [standing(0.42), standing(0.58)] if i in pair_frames else []
            sample = ChaosSample(t, wild.changing, wild.spread, wild.jerk, wild.reversal)
            times += [d.frame_time for d in tracker.update(people, t, sample)]
        return times

    assert play(_learned(smooth_frames=1), range(10, 13)) == [1.0], "one frame decides"
    assert play(_learned(smooth_frames=5), range(10, 13)) == [], "three frames are not five"
    assert FightConfig().smooth_frames == 5
    # Held in view, the pair is reported once five frames with two people agree.
    assert play(_learned(smooth_frames=5), range(10, 40)) == [pytest.approx(1.4)]
