"""Cameras: one interface (``Camera``), three drivers chosen by ``[camera] driver``.

- ``picamera2``: the Raspberry Pi camera, two streams (lores for detection, main for the
  snapshot); needs Raspberry Pi OS's python3-picamera2.
- ``opencv``: ``cv2.VideoCapture`` for a USB/V4L2 device, a network stream, a video file.
- ``scene``: the scene player, the fake CI uses: images and videos on a scripted timeline.

Frames are BGR uint8 arrays with a monotonic timestamp and an index (``Frame``).
"""

from __future__ import annotations

from ._base import Camera, Frame, encode_jpeg, redact_url
from ._config import CAMERA_DRIVERS, CameraConfig, open_camera, parse_camera_config
from ._errors import (
    CameraDriverMissing,
    CameraError,
    CameraNotRunning,
    CameraUnavailable,
    NoFrame,
    SceneError,
)
from ._opencv import OpenCvCamera, OpenCvConfig
from ._picamera2 import MISSING_PICAMERA2, Picamera2Camera, Picamera2Config, import_picamera2
from ._scene import IMAGE_SUFFIXES, SceneCamera, SceneConfig, SceneSegment, load_timeline
from ._section import CameraSection, Size

__all__ = [
    "CAMERA_DRIVERS",
    "IMAGE_SUFFIXES",
    "MISSING_PICAMERA2",
    "Camera",
    "CameraConfig",
    "CameraDriverMissing",
    "CameraError",
    "CameraNotRunning",
    "CameraSection",
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
