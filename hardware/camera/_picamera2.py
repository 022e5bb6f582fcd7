"""A Raspberry Pi camera through picamera2 (libcamera), with two streams from one
sensor readout: "lores" (small, YUV420) for detection, "main" (full resolution) for the
snapshot.

picamera2 is imported only when this driver is configured. It comes with Raspberry Pi
OS as an apt package bound to the system's libcamera, which pip cannot provide; a
virtual environment sees it only when created with ``--system-site-packages``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from ._base import Camera, Frame, Image, encode_jpeg
from ._errors import CameraDriverMissing, CameraError, CameraNotRunning, CameraUnavailable
from ._section import CameraSection, Size

__all__ = ["MISSING_PICAMERA2", "Picamera2Camera", "Picamera2Config", "import_picamera2"]

_log = logging.getLogger(__name__)

MISSING_PICAMERA2 = (
    "picamera2 is not installed: on Raspberry Pi OS `apt install python3-picamera2` "
    "(it is bound to the system's libcamera, which pip cannot install) and create the "
    "virtual environment with `python3 -m venv --system-site-packages` so that it sees it; "
    'for a USB or network camera choose driver = "opencv" instead'
)


class Picamera2Config(CameraSection):
    """A Raspberry Pi camera through picamera2 (libcamera)."""

    driver: Literal["picamera2"]
    camera: int = Field(0, ge=0, le=7)
    """Camera number (``rpicam-hello --list-cameras`` lists them)."""
    main_size: Size | None = None
    """Size of the full-resolution stream the snapshot comes from; none: the sensor's full
    resolution. Lower it (e.g. [2304, 1296] on a Camera Module 3) if the camera cannot
    allocate its buffers (the kernel's CMA memory is too small)."""
    lores_size: Size | None = None
    """Size of the low-resolution stream ``read()`` returns; none: 640 pixels wide with the
    main stream's aspect ratio. It is aligned to what the ISP wants, so it may change a little."""
    fps: float = Field(10.0, gt=0, le=120)
    """Frame rate asked of the sensor."""
    hflip: bool = False
    """Mirror the image left-right."""
    vflip: bool = False
    """Turn the image upside down (with ``hflip``: a camera mounted upside down)."""
    buffer_count: int = Field(4, ge=2, le=8)
    """Buffers per stream; fewer saves CMA memory, more absorbs a slow consumer."""
    jpeg_quality: int = Field(90, ge=1, le=100)
    """JPEG quality of the snapshot."""


def import_picamera2() -> ModuleType:
    """The picamera2 module, or ``CameraDriverMissing`` saying how to install it."""
    try:
        return importlib.import_module("picamera2")
    except ImportError as exc:
        if exc.name == "libcamera":
            raise CameraDriverMissing(
                "picamera2 is installed but libcamera's Python bindings are not: on Raspberry "
                "Pi OS `apt install python3-libcamera`, and create the virtual environment "
                "with --system-site-packages"
            ) from None
        raise CameraDriverMissing(MISSING_PICAMERA2) from None


class Picamera2Camera(Camera):
    """picamera2 behind the camera interface."""

    driver: ClassVar[str] = "picamera2"

    @classmethod
    def from_config(
        cls, config: Picamera2Config, *, clock: Callable[[], float] | None = None
    ) -> Picamera2Camera:
        if clock is not None:
            raise ValueError(f"the {cls.driver} driver follows real time: no clock can drive it")
        return cls(config)

    def __init__(self, config: Picamera2Config) -> None:
        self._config = config
        self._module = import_picamera2()  # at start-up, not in the first read()
        self._cam: Any = None
        self._pending: Any = None  # a capture job that timed out: the next read() collects it
        self._lock = threading.Lock()
        self._index = -1
        self._lores_size: tuple[int, int] | None = None

    @property
    def description(self) -> str:
        return f"picamera2 camera {self._config.camera}"

    def start(self) -> None:
        if self._cam is not None:
            return
        cfg = self._config
        try:
            cam = self._module.Picamera2(cfg.camera)
        except (IndexError, RuntimeError) as exc:
            raise CameraUnavailable(
                f"{self.description} cannot be opened ({exc}): check the ribbon cable and "
                f"`rpicam-hello --list-cameras`, and that no other program holds the camera"
            ) from None
        try:
            main_size = cfg.main_size or tuple(cam.sensor_resolution)
            lores_size = cfg.lores_size or (640, max(16, round(640 * main_size[1] / main_size[0])))
            libcamera = importlib.import_module("libcamera")
            video = cam.create_video_configuration(
                main={"size": main_size, "format": "RGB888"},  # RGB888 is BGR in memory
                lores={"size": lores_size, "format": "YUV420"},  # VC4 (Pi 4) wants YUV lores
                controls={"FrameRate": cfg.fps},
                transform=libcamera.Transform(hflip=int(cfg.hflip), vflip=int(cfg.vflip)),
                buffer_count=cfg.buffer_count,
            )
            cam.align_configuration(video)
            cam.configure(video)
            cam.start()
        except Exception as exc:
            cam.close()
            raise CameraUnavailable(
                f"{self.description} refused the configuration ({exc}): lower main_size "
                f"(the CMA memory may be too small) or buffer_count"
            ) from None
        self._lores_size = tuple(cam.camera_configuration()["lores"]["size"])
        self._cam = cam
        self._index = -1
        _log.info(
            "camera: %s started, main %s, lores %s", self.description, main_size, self._lores_size
        )

    def read(self, timeout: float = 1.0) -> Frame | None:
        with self._lock:
            cam = self._cam
            if cam is None:
                raise CameraNotRunning("read() before start() or after stop()")
            job = self._pending or cam.capture_request(wait=False)
            try:
                request = cam.wait(job, timeout=max(timeout, 0.001))
            except TimeoutError:
                self._pending = job
                return None
            self._pending = None
            try:
                yuv = request.make_array("lores")
                metadata = request.get_metadata()
            finally:
                request.release()
            self._index += 1
            index = self._index
        image = cv2.cvtColor(yuv, cv2.COLOR_YUV420p2BGR)
        sensor_ns = metadata.get("SensorTimestamp")
        # libcamera stamps frames with CLOCK_MONOTONIC (the clock of time.monotonic()).
        stamp = sensor_ns / 1e9 if isinstance(sensor_ns, int) else time.monotonic()
        return Frame(np.ascontiguousarray(image), stamp, index)

    def snapshot(self) -> bytes:
        with self._lock:
            cam = self._cam
            if cam is None:
                raise CameraNotRunning("snapshot() before start() or after stop()")
            try:
                job = cam.capture_array("main", wait=False)
                main: Image = cam.wait(job, timeout=5.0)
            except TimeoutError:
                raise CameraError(f"{self.description} gave no full frame within 5 s") from None
        return encode_jpeg(np.ascontiguousarray(main), self._config.jpeg_quality)

    def stop(self) -> None:
        with self._lock:
            cam, self._cam, self._pending = self._cam, None, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()
