"""The motion gate on synthetic frames: still scenes are skipped, motion and rechecks pass."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

from edge import MotionGate


def scene(
    block_x: int | None = None, *, noise_seed: int | None = None, brightness: int = 90
) -> npt.NDArray[np.uint8]:
    frame = np.full((480, 640, 3), brightness, dtype=np.uint8)
    frame[300:480, :] = 60  # a floor
    if block_x is not None:
        frame[150:400, block_x : block_x + 60] = (30, 40, 200)  # a person-sized block
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        noisy = frame.astype(np.int16) + rng.integers(-6, 7, frame.shape)
        frame = np.clip(noisy, 0, 255).astype(np.uint8)
    return frame


def test_first_frame_then_still_frames_are_skipped() -> None:
    gate = MotionGate(recheck_seconds=2.0)
    assert gate.check(scene(100), 0.0).reason == "first"
    decisions = [gate.check(scene(100, noise_seed=i), 0.1 * i) for i in range(1, 19)]
    assert not any(d.infer for d in decisions), "sensor noise must not count as motion"
    assert all(d.reason == "still" for d in decisions)


def test_still_scene_is_rechecked_periodically() -> None:
    gate = MotionGate(recheck_seconds=2.0)
    inferred = [t for t in np.arange(0.0, 10.0, 0.1) if gate.check(scene(100), float(t)).infer]
    # first frame, then about every 2 s: a person lying still stays watched
    assert len(inferred) == 5
    assert all(b - a >= 1.99 for a, b in itertools.pairwise(inferred))


def test_motion_passes_the_gate() -> None:
    gate = MotionGate()
    gate.check(scene(100), 0.0)
    d = gate.check(scene(140), 0.1)
    assert d.infer and d.reason == "motion" and d.changed_fraction > 0.01


def test_slow_motion_adds_up_against_the_last_inferred_frame() -> None:
    gate = MotionGate(min_changed_fraction=0.003, recheck_seconds=100.0)
    gate.check(scene(100), 0.0)
    # 1 pixel per frame is below the threshold frame to frame, but not in total.
    results = [gate.check(scene(100 + i), 0.1 * i) for i in range(1, 30)]
    assert any(r.reason == "motion" for r in results)
    assert not results[0].infer


def test_disabled_gate_passes_everything_and_size_change_resets() -> None:
    gate = MotionGate(enabled=False)
    assert all(gate.check(scene(100), t).infer for t in (0.0, 0.1, 0.2))
    gate = MotionGate()
    gate.check(scene(100), 0.0)
    wide = np.zeros((360, 640, 3), dtype=np.uint8)  # another camera mode: new reference
    assert gate.check(wide, 0.1).reason == "first"
