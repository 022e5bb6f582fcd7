"""Camera configuration: one section, ``driver`` chooses the driver.

.. code-block:: toml

    [camera]
    driver = "scene"            # or "picamera2", "opencv"
    fps = 10
    lores_size = [640, 360]
    timeline_file = "scenes/person-down.toml"

Relative paths (``timeline_file``, a segment's ``play``) are resolved against the
``base_dir`` given in the validation context (the folder of the config file:
``CameraSection.model_validate(data, context={"base_dir": folder})``), else against the
working directory. Paths inside a timeline file are relative to that file's folder.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "CameraConfig",
    "OpenCvConfig",
    "Picamera2Config",
    "SceneConfig",
    "SceneSegment",
    "Size",
    "load_timeline",
    "parse_camera_config",
]

PathLike = Annotated[Path, Field(strict=False)]
Size = Annotated[
    tuple[Annotated[int, Field(ge=16, le=16384)], Annotated[int, Field(ge=16, le=16384)]],
    Field(strict=False),
]
"""(width, height) in pixels; a TOML list ``[640, 480]``."""


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if path.is_absolute() or base is None:
        return path
    return Path(base) / path


class Picamera2Config(_Section):
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


class OpenCvConfig(_Section):
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


class SceneSegment(_Section):
    """From second ``at`` on, the scene plays ``play`` (or stalls), until the next segment."""

    at: float = Field(ge=0)
    """Seconds after ``start()`` at which this segment begins."""
    play: PathLike | None = None
    """A folder of images (played in name order), a video file, or one image (held)."""
    stall: bool = False
    """The camera delivers no frames during this segment (for fault tests)."""
    loop: bool = True
    """Start the media again when it ends; false: hold its last frame."""
    media_fps: float | None = Field(None, gt=0, le=1000)
    """Rate of the media: images per second for a folder (none: the scene's ``fps``), or
    to override a video file's own rate."""

    @field_validator("play")
    @classmethod
    def _relative(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _resolve(v, info)

    @model_validator(mode="after")
    def _one_kind(self) -> SceneSegment:
        if (self.play is None) == (not self.stall):
            raise ValueError("a segment has either play = PATH or stall = true")
        return self


def _check_order(segments: list[SceneSegment] | tuple[SceneSegment, ...]) -> None:
    if not segments:
        raise ValueError("the timeline has no segment")
    if segments[0].at != 0:
        raise ValueError("the first segment must start at 0")
    for i in range(1, len(segments)):
        if segments[i].at <= segments[i - 1].at:
            raise ValueError(
                f"segment {i} starts at {segments[i].at} s, not after segment {i - 1} "
                f"({segments[i - 1].at} s): segments go in time order"
            )


class _TimelineFile(_Section):
    segment: list[SceneSegment]
    """The segments, as ``[[segment]]`` tables."""


def load_timeline(path: Path) -> tuple[SceneSegment, ...]:
    """Segments of a timeline TOML file (``[[segment]]`` tables); ``ValueError`` naming the
    file and the key when it is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"timeline file {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"timeline file {path}: not valid TOML ({exc})") from None
    try:
        parsed = _TimelineFile.model_validate(data, context={"base_dir": path.parent})
        _check_order(parsed.segment)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"timeline file {path}: {key}: {first['msg']}") from None
    except ValueError as exc:
        raise ValueError(f"timeline file {path}: {exc}") from None
    return tuple(parsed.segment)


class SceneConfig(_Section):
    """The scene player: a fake camera that plays images and videos on a scripted timeline."""

    driver: Literal["scene"]
    fps: float = Field(10.0, gt=0, le=120)
    """Frames per second the fake camera delivers."""
    size: Size | None = None
    """Full-resolution size every frame is scaled to; none: each medium's own size."""
    lores_size: Size | None = None
    """Size of the frames ``read()`` returns; none: full size."""
    timeline: tuple[SceneSegment, ...] = Field((), strict=False)
    """The segments, inline (``[[camera.timeline]]`` tables)."""
    timeline_file: PathLike | None = None
    """A TOML file of ``[[segment]]`` tables, instead of an inline ``timeline``."""
    jpeg_quality: int = Field(90, ge=1, le=100)
    """JPEG quality of the snapshot."""

    @field_validator("timeline_file")
    @classmethod
    def _relative(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _resolve(v, info)

    @model_validator(mode="after")
    def _timeline(self) -> SceneConfig:
        if bool(self.timeline) == (self.timeline_file is not None):
            raise ValueError("give either timeline (inline segments) or timeline_file")
        if self.timeline_file is not None:
            load_timeline(self.timeline_file)  # raises ValueError naming file and key
        else:
            _check_order(self.timeline)
        return self

    def segments(self) -> tuple[SceneSegment, ...]:
        """The timeline, read from ``timeline_file`` where that is given."""
        if self.timeline_file is not None:
            return load_timeline(self.timeline_file)
        return self.timeline


CameraConfig = Annotated[
    Picamera2Config | OpenCvConfig | SceneConfig, Field(discriminator="driver")
]
"""The ``[camera]`` section: ``driver`` picks one of the three models."""

_ADAPTER: TypeAdapter[Picamera2Config | OpenCvConfig | SceneConfig] = TypeAdapter(CameraConfig)


def parse_camera_config(
    data: Any, *, base_dir: Path | None = None
) -> Picamera2Config | OpenCvConfig | SceneConfig:
    """Validate a ``[camera]`` table; relative paths resolve against ``base_dir``."""
    return _ADAPTER.validate_python(data, context={"base_dir": base_dir})
