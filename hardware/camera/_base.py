"""The camera interface every driver implements, and the frame it delivers."""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from .._lifecycle import Startable
from ._errors import CameraError

__all__ = ["Camera", "Frame", "encode_jpeg", "redact_url"]

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One frame for detection (the low-resolution stream where the camera has one)."""

    image: Image
    """Pixels, ``(height, width, 3)`` uint8 in BGR order (OpenCV's order), read-only."""
    timestamp: float
    """When the frame was captured, in ``time.monotonic()`` seconds (the scene player's
    clock when one is injected)."""
    index: int
    """Frame number since ``start()``, from 0; a gap means frames were dropped or skipped."""

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(
                f"a frame is (height, width, 3) uint8, not {self.image.shape} {self.image.dtype}"
            )
        if self.index < 0:
            raise ValueError(f"frame index must not be negative, not {self.index}")
        # Frames are shared between the pipeline stages: nobody may draw on one in place.
        self.image.flags.writeable = False

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


class Camera(Startable):
    """A source of frames: ``start()``, then ``read()`` in the main loop, ``snapshot()``
    when an incident needs a photo, ``stop()`` at the end. Also a context manager.

    A driver names itself (``driver``, the ``[camera] driver`` value) and builds itself from
    its configuration model, which lives beside it in the driver's module."""

    driver: ClassVar[str]
    """The ``[camera] driver`` value that picks this camera."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any, *, clock: Callable[[], float] | None = None) -> Camera:
        """The camera for its configuration model, not started yet. A driver whose library
        is missing raises ``CameraDriverMissing`` here. ``clock`` drives a fake's time
        (tests); real drivers follow real time and refuse one (``ValueError``)."""

    @property
    @abstractmethod
    def description(self) -> str:
        """What the camera is, for logs and STATUS lines (no password in it)."""

    @abstractmethod
    def start(self) -> None:
        """Open the camera; raises ``CameraUnavailable`` saying what to fix."""

    @abstractmethod
    def read(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not returned before, waiting up to ``timeout`` seconds for one;
        ``None`` when none came (the camera stalled, or a stream is reconnecting)."""

    @abstractmethod
    def snapshot(self) -> bytes:
        """A JPEG at full resolution of the scene of the newest frame."""

    @abstractmethod
    def stop(self) -> None:
        """Close the camera; safe to call twice."""


def encode_jpeg(image: Image, quality: int) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise CameraError(f"JPEG encoding of a {image.shape} frame failed")
    return bytes(buf.tobytes())


_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@]*)@")


def redact_url(source: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x``: logs never hold passwords."""

    def hide(m: re.Match[str]) -> str:
        user = m.group(2).split(":", 1)[0]
        return f"{m.group(1)}{user}:***@"

    return _USERINFO.sub(hide, source)
