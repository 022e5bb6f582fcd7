"""The chaos cue of the fight rule: optical flow on synthetic scenes (no model involved)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from edge._motion import ChaosSample, MotionChaos

H, W = 180, 320


def textured(seed: int = 0) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (H // 8, W // 8), dtype=np.uint8)
    big = np.kron(small, np.ones((8, 8), dtype=np.uint8))
    return np.repeat(big[:, :, None], 3, axis=2)


def samples(frames: list[npt.NDArray[np.uint8]], step: float = 0.1) -> list[ChaosSample]:
    chaos = MotionChaos()
    out = []
    for i, frame in enumerate(frames):
        sample = chaos.update(frame, i * step)
        if sample is not None:
            out.append(sample)
    return out


def test_a_still_scene_has_no_chaos() -> None:
    found = samples([textured()] * 10)
    assert len(found) == 8, "the first two frames only prime the flow"
    assert all(s.changing == 0.0 and s.spread == 0.0 for s in found)


def test_a_panning_camera_is_not_chaos() -> None:
    base = np.tile(textured(), (1, 2, 1))
    frames = [np.ascontiguousarray(base[:, 6 * i : 6 * i + W]) for i in range(12)]
    found = samples(frames)
    assert found and max(s.changing for s in found) < 0.02
    assert float(np.median([s.spread for s in found])) < 0.2


def test_blobs_jerking_every_way_are_chaos() -> None:
    rng = np.random.default_rng(3)
    background = textured(1)
    patch = textured(2)[:40, :40]
    frames = []
    positions = [(60, 60), (60, 200), (110, 130)]
    for _ in range(12):
        frame = background.copy()
        for k, (y, x) in enumerate(positions):
            dy, dx = rng.integers(-12, 13, size=2)
            positions[k] = (int(np.clip(y + dy, 0, H - 40)), int(np.clip(x + dx, 0, W - 40)))
            y2, x2 = positions[k]
            frame[y2 : y2 + 40, x2 : x2 + 40] = patch
        frames.append(frame)
    found = samples(frames)
    assert float(np.median([s.changing for s in found])) > 0.03
    assert float(np.median([s.spread for s in found])) > 0.3


def test_speeds_do_not_depend_on_the_frame_rate() -> None:
    base = np.tile(textured(), (1, 2, 1))
    # The same motion per second at 10 and at 20 frames per second: same figures.
    slow = samples([np.ascontiguousarray(base[:, 8 * i : 8 * i + W]) for i in range(10)], 0.1)
    fast = samples([np.ascontiguousarray(base[:, 4 * i : 4 * i + W]) for i in range(20)], 0.05)
    assert len(fast) <= len(slow) + 1, "samples come once per 0.1 s step, not per frame"
    assert abs(np.median([s.changing for s in slow]) - np.median([s.changing for s in fast])) < 0.02


def test_a_gap_or_a_new_picture_size_restarts() -> None:
    chaos = MotionChaos()
    frame = textured()
    assert chaos.update(frame, 0.0) is None
    assert chaos.update(frame, 0.1) is None
    assert chaos.update(frame, 0.2) is not None
    assert chaos.update(frame, 5.0) is None, "after a gap the flow starts again"
    assert chaos.update(np.zeros((90, 160, 3), np.uint8), 5.1) is None
    with pytest.raises(ValueError):
        MotionChaos(width=8)


def _block_frames(offsets: list[int]) -> list[npt.NDArray[np.uint8]]:
    background = textured(1)
    patch = textured(2)[:48, :48]
    frames = []
    for dx in offsets:
        frame = background.copy()
        frame[60:108, 100 + dx : 148 + dx] = patch
        frames.append(frame)
    return frames


def test_back_and_forth_motion_reverses_and_jerks_a_steady_one_does_not() -> None:
    steady = samples(_block_frames([8 * i for i in range(12)]))
    shaking = samples(_block_frames([0 if i % 2 == 0 else 16 for i in range(12)]))
    assert steady and shaking
    assert float(np.median([s.reversal for s in steady])) < 0.2
    assert float(np.median([s.reversal for s in shaking])) > 0.6
    assert float(np.median([s.jerk for s in shaking])) > 2 * float(
        np.median([s.jerk for s in steady])
    )
