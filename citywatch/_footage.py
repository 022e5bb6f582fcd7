"""The footage that ships with CityWatch: a few seconds of a real fall (GMDCSA24, MIT
licence; ``footage/README.md`` says what it is and how to cite it).

``DEMO_FALL`` plays in the demo's scene-player cameras; ``fall_photo()`` is one of its
frames as a JPEG, a real photo of a person lying on the floor for simulated poles and
tests that need one the server's photo check calls dangerous.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2

__all__ = ["DEMO_FALL", "FOOTAGE_DIR", "fall_photo", "footage_frame"]

FOOTAGE_DIR = Path(__file__).resolve().parent / "footage"
DEMO_FALL = FOOTAGE_DIR / "gmdcsa24-subject1-fall15.mp4"
"""Six seconds at 10 fps: sitting on a chair (0-2 s), falling, lying on the floor (4-6 s)."""


@functools.lru_cache(maxsize=16)
def footage_frame(t: float, video: Path = DEMO_FALL, *, quality: int = 85) -> bytes:
    """The frame of ``video`` shown at ``t`` seconds, as a JPEG."""
    capture = cv2.VideoCapture(str(video))
    try:
        if not capture.isOpened():
            raise FileNotFoundError(f"footage {video} cannot be opened")
        fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
        capture.set(cv2.CAP_PROP_POS_FRAMES, min(count - 1, max(0, round(t * fps))))
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok:
        raise ValueError(f"footage {video} has no frame at {t} s")
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("the frame cannot be encoded as a JPEG")
    return bytes(data.tobytes())


def fall_photo() -> bytes:
    """A real photo of a person lying on the floor after a fall (the demo footage at 5 s)."""
    return footage_frame(5.0)
