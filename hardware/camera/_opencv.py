"""A camera through OpenCV's ``VideoCapture``: a USB/V4L2 device, a network stream
(RTSP, HTTP MJPEG), or a video file.

A reader thread pulls frames as fast as the source gives them and keeps only the
newest, so a slow detector never works on stale buffered frames (live sources buffer,
RTSP especially). A video file is played at its frame rate, like a camera would. A live
source that stops (cable pulled, stream dropped, camera rebooted) is reopened with
exponential back-off; meanwhile ``read()`` returns ``None``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator, model_validator

from ._base import Camera, Frame, Image, encode_jpeg, redact_url
from ._errors import CameraNotRunning, CameraUnavailable, NoFrame
from ._section import CameraSection, Size

__all__ = ["OpenCvCamera", "OpenCvConfig"]

_log = logging.getLogger(__name__)

SourceKind = Literal["device", "stream", "file"]


class OpenCvConfig(CameraSection):
    """A camera through OpenCV's ``VideoCapture``: USB/V4L2 device, network stream, video file."""

    driver: Literal["opencv"]
    source: int | str
    """A V4L2 device number (``0``) or path (``/dev/video0``), a stream URL
    (``rtsp://user:password@camera/stream1``, ``http://.../video.mjpg``), or a video file."""
    size: Size | None = None
    """Capture size asked of a V4L2 device; none: the device's default. Ignored for streams
    and files."""
    fps: float | None = Field(None, gt=0, le=120)
    """Frame rate asked of a V4L2 device; for a video file, the rate it is played at
    (none: the file's own rate)."""
    lores_size: Size | None = None
    """Size of the frames ``read()`` returns (scaled down from the full frame); none: full size."""
    loop: bool = False
    """Video file only: start again at the end (else the camera stops delivering)."""
    open_timeout_s: float = Field(10.0, gt=0, le=300)
    """How long to wait for a network stream to open."""
    read_timeout_s: float = Field(5.0, gt=0, le=300)
    """A network stream silent for this long is treated as dropped and reconnected."""
    reconnect_initial_s: float = Field(0.5, gt=0, le=600)
    """First wait before reconnecting a dropped stream or device; doubles on every failure."""
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    """Longest wait between two reconnection attempts."""
    jpeg_quality: int = Field(90, ge=1, le=100)
    """JPEG quality of the snapshot."""

    @field_validator("source")
    @classmethod
    def _non_empty(cls, v: int | str) -> int | str:
        if isinstance(v, str) and not v.strip():
            raise ValueError("source must not be empty")
        if isinstance(v, int) and v < 0:
            raise ValueError("a device number is 0 or more")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> OpenCvConfig:
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError("reconnect_initial_s must not exceed reconnect_max_s")
        return self


def _kind(source: int | str) -> SourceKind:
    if isinstance(source, int) or source.startswith("/dev/"):
        return "device"
    if "://" in source:
        return "stream"
    return "file"


class OpenCvCamera(Camera):
    """``VideoCapture`` behind the camera interface."""

    driver: ClassVar[str] = "opencv"

    @classmethod
    def from_config(
        cls, config: OpenCvConfig, *, clock: Callable[[], float] | None = None
    ) -> OpenCvCamera:
        if clock is not None:
            raise ValueError(f"the {cls.driver} driver follows real time: no clock can drive it")
        return cls(config)

    def __init__(self, config: OpenCvConfig) -> None:
        self._config = config
        self._kind = _kind(config.source)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._full: Image | None = None
        self._timestamp = 0.0
        self._index = -1  # index of the newest frame
        self._returned = -1  # index of the newest frame read() gave out
        self._ended = False
        self._connected = False

    @property
    def description(self) -> str:
        source = self._config.source
        shown = redact_url(source) if isinstance(source, str) else str(source)
        return f"opencv {self._kind} {shown}"

    @property
    def connected(self) -> bool:
        """The source is open and delivering (false while a stream reconnects)."""
        return self._connected

    # -- opening ---------------------------------------------------------------------

    def _open(self) -> cv2.VideoCapture:
        cfg = self._config
        if self._kind == "device":
            cap = cv2.VideoCapture(cfg.source, cv2.CAP_V4L2)
            if cap.isOpened():
                if cfg.size is not None:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.size[0])
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.size[1])
                if cfg.fps is not None:
                    cap.set(cv2.CAP_PROP_FPS, cfg.fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            return cap
        if self._kind == "stream":
            return cv2.VideoCapture(
                str(cfg.source),
                cv2.CAP_FFMPEG,
                [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    int(cfg.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    int(cfg.read_timeout_s * 1000),
                ],
            )
        return cv2.VideoCapture(str(cfg.source))

    def _file_fps(self, cap: cv2.VideoCapture) -> float:
        if self._config.fps is not None:
            return self._config.fps
        native = cap.get(cv2.CAP_PROP_FPS)
        if not native or not np.isfinite(native) or native <= 0:
            raise CameraUnavailable(
                f"video file {self._config.source} does not say its frame rate: set fps"
            )
        return float(native)

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._kind == "file" and not Path(str(self._config.source)).is_file():
            raise CameraUnavailable(f"camera source {self._config.source}: no such video file")
        cap = self._open()
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailable(self._cannot_open())
        fps = self._file_fps(cap) if self._kind == "file" else 0.0
        self._stop.clear()
        self._ended = False
        self._connected = True
        self._thread = threading.Thread(
            target=self._run, args=(cap, fps), name="camera-opencv", daemon=True
        )
        self._thread.start()
        _log.info("camera: %s started", self.description)

    def _cannot_open(self) -> str:
        what = self.description
        if self._kind == "device":
            return (
                f"{what} cannot be opened: is the camera plugged in, is the device "
                f"number right (v4l2-ctl --list-devices), may this user read it (group video)?"
            )
        if self._kind == "stream":
            return (
                f"{what} cannot be opened within {self._config.open_timeout_s:g} s: check "
                f"the URL, the credentials and that the camera is reachable"
            )
        return f"{what} cannot be opened: not a video file OpenCV can decode"

    # -- the reader thread -------------------------------------------------------------

    def _publish(self, image: Image) -> None:
        with self._cond:
            self._full = image
            self._timestamp = time.monotonic()
            self._index += 1
            self._cond.notify_all()

    def _run(self, cap: cv2.VideoCapture, fps: float) -> None:
        backoff = self._config.reconnect_initial_s
        played = 0  # frames of the current pass through a file
        t_pass = time.monotonic()
        try:
            while not self._stop.is_set():
                ok, image = cap.read()
                if ok and image is not None:
                    if self._kind == "file":
                        # Play a file at its own pace, like a camera filming it.
                        if self._stop.wait(max(t_pass + played / fps - time.monotonic(), 0.0)):
                            break
                        played += 1
                    self._publish(np.ascontiguousarray(image))
                    if not self._connected:
                        _log.info("camera: %s delivers frames again", self.description)
                    self._connected = True
                    backoff = self._config.reconnect_initial_s
                    continue
                if self._kind == "file":
                    if self._config.loop and played > 0:
                        cap.release()
                        cap = self._open()
                        played, t_pass = 0, time.monotonic()
                        continue
                    _log.info("camera: %s reached its end", self.description)
                    self._ended = True
                    break
                cap = self._reconnect(cap, backoff)
                backoff = min(backoff * 2, self._config.reconnect_max_s)
        finally:
            cap.release()
            self._connected = False
            with self._cond:
                self._cond.notify_all()

    def _reconnect(self, cap: cv2.VideoCapture, delay: float) -> cv2.VideoCapture:
        if self._connected:
            _log.warning("camera: %s stopped delivering frames; reconnecting", self.description)
        self._connected = False
        cap.release()
        if self._stop.wait(delay):
            return cap
        fresh = self._open()
        if not fresh.isOpened():
            _log.warning(
                "camera: %s still unavailable; next attempt in %.1f s",
                self.description,
                min(delay * 2, self._config.reconnect_max_s),
            )
        return fresh

    # -- Camera --------------------------------------------------------------------------

    def read(self, timeout: float = 1.0) -> Frame | None:
        if self._thread is None:
            raise CameraNotRunning("read() before start() or after stop()")
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while self._index <= self._returned:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set() or self._ended:
                    return None
                self._cond.wait(remaining)
            assert self._full is not None
            full, index, timestamp = self._full, self._index, self._timestamp
            self._returned = index
        size = self._config.lores_size
        lores = full if size is None else cv2.resize(full, size, interpolation=cv2.INTER_AREA)
        return Frame(np.ascontiguousarray(lores), timestamp, index)

    def snapshot(self) -> bytes:
        if self._thread is None:
            raise CameraNotRunning("snapshot() before start() or after stop()")
        with self._cond:
            full = self._full
        if full is None:
            raise NoFrame(f"{self.description} has delivered no frame yet")
        return encode_jpeg(full, self._config.jpeg_quality)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # A stream read blocks at most read_timeout_s (open_timeout_s while reopening).
        thread.join(self._config.open_timeout_s + self._config.read_timeout_s + 1.0)
        if thread.is_alive():
            _log.warning("camera: %s reader did not stop in time", self.description)
