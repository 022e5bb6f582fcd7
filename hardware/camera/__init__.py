"""Cameras: one interface (``Camera``), three drivers chosen by ``[camera] driver``.

- ``picamera2``: the Raspberry Pi camera, two streams (lores for detection, main for the
  snapshot); needs Raspberry Pi OS's python3-picamera2.
- ``opencv``: ``cv2.VideoCapture`` for a USB/V4L2 device, a network stream, a video file.
- ``scene``: the scene player, the fake CI uses: images and videos on a scripted timeline.

Frames are BGR uint8 arrays with a monotonic timestamp and an index (``Frame``).
"""

from __future__ import annotations

from collections.abc import Callable

from ._base import Camera, Frame, encode_jpeg, redact_url
from ._config import (
    CameraConfig,
    OpenCvConfig,
    Picamera2Config,
    SceneConfig,
    SceneSegment,
    Size,
    load_timeline,
    parse_camera_config,
)
from ._errors import (
    CameraDriverMissing,
    CameraError,
    CameraNotRunning,
    CameraUnavailable,
    NoFrame,
    SceneError,
)
from ._opencv import OpenCvCamera
from ._picamera2 import MISSING_PICAMERA2, Picamera2Camera, import_picamera2
from ._scene import IMAGE_SUFFIXES, SceneCamera

__all__ = [
    "IMAGE_SUFFIXES",
    "MISSING_PICAMERA2",
    "Camera",
    "CameraConfig",
    "CameraDriverMissing",
    "CameraError",
    "CameraNotRunning",
    "CameraUnavailable",
    "Frame",
    "NoFrame",
    "OpenCvCamera",
    "OpenCvConfig",
    "Picamera2Camera",
    "Picamera2Config",
    "SceneCamera",
    "SceneConfig",
    "SceneError",
    "SceneSegment",
    "Size",
    "encode_jpeg",
    "import_picamera2",
    "load_timeline",
    "open_camera",
    "parse_camera_config",
    "redact_url",
]


def open_camera(
    config: Picamera2Config | OpenCvConfig | SceneConfig,
    *,
    clock: Callable[[], float] | None = None,
) -> Camera:
    """The driver the configuration names, not started yet. A driver whose library is
    missing raises ``CameraDriverMissing`` here, at start-up. ``clock`` drives the scene
    player's time (tests); the real drivers follow real time and refuse one."""
    if isinstance(config, SceneConfig):
        return SceneCamera(config, clock=clock)
    if clock is not None:
        raise ValueError(f"the {config.driver} driver follows real time: no clock can drive it")
    if isinstance(config, OpenCvConfig):
        return OpenCvCamera(config)
    return Picamera2Camera(config)
