"""Exceptions of the camera drivers (a branch of ``hardware.HardwareError``).

    HardwareError
    └── CameraError
        ├── CameraUnavailable        the camera cannot be opened: fix the installation, the
        │   │                        wiring or the configuration, then restart
        │   ├── CameraDriverMissing  the driver's library (picamera2, libcamera) is absent
        │   └── SceneError           a scene timeline or its media are wrong (file and key named)
        ├── CameraNotRunning         we did something wrong: used before ``start()`` or after
        │                            ``stop()``
        └── NoFrame                  a snapshot was asked for before any frame arrived

A camera that stops delivering frames is not an error: ``read()`` returns ``None`` and
the daemon decides (it stops feeding the watchdog). Messages say what is wrong and what
to do about it; a URL's password is never part of one.
"""

from __future__ import annotations

from .._errors import HardwareError

__all__ = [
    "CameraDriverMissing",
    "CameraError",
    "CameraNotRunning",
    "CameraUnavailable",
    "NoFrame",
    "SceneError",
]


class CameraError(HardwareError):
    """Base of every camera error."""


class CameraUnavailable(CameraError):
    """The camera cannot be opened; the installation, wiring or configuration must change."""


class CameraDriverMissing(CameraUnavailable):
    """The Python library of the configured driver is not installed."""


class SceneError(CameraUnavailable):
    """The scene player's timeline or one of its media files is wrong."""


class CameraNotRunning(CameraError):
    """``read()`` or ``snapshot()`` before ``start()`` or after ``stop()``."""


class NoFrame(CameraError):
    """No frame has arrived yet, so there is nothing to take a snapshot of."""
