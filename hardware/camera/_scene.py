"""The scene player: the fake camera CI uses.

Time is cut into frame slots: slot ``k`` is due ``k / fps`` seconds after ``start()``.
The segment whose ``at`` is the latest at or before that moment decides what slot ``k``
shows (or that it shows nothing: a ``stall`` segment). Within a segment, the medium is
indexed by the time since the segment began, so a 30 fps video played by a 10 fps scene
shows real-time motion, and every second of a test's timeline means a second of scene.

With the real clock, ``read()`` sleeps until the next slot is due and, like a real
camera, skips slots a slow reader missed (the frame index shows the gap). With an
injected clock (a function returning seconds), ``read()`` never sleeps: it returns the
newest slot due at the clock's time that was not returned yet, or ``None``; the test
moves the clock.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ._base import Camera, Frame, Image, encode_jpeg
from ._errors import CameraNotRunning, NoFrame, SceneError
from ._section import CameraSection, PathLike, Size, resolve_path

__all__ = ["IMAGE_SUFFIXES", "SceneCamera", "SceneConfig", "SceneSegment", "load_timeline"]

_log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})
"""Files of a folder that the scene player shows; anything else in the folder is ignored."""
_EPS = 1e-9  # slot arithmetic in floats: 0.3 * 10 must be slot 3, not 2.999...


# -- configuration -------------------------------------------------------------------


class SceneSegment(CameraSection):
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
        return None if v is None else resolve_path(v, info)

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


class _TimelineFile(CameraSection):
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


class SceneConfig(CameraSection):
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
        return None if v is None else resolve_path(v, info)

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


# -- the player ----------------------------------------------------------------------


def _read_image(path: Path) -> Image:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SceneError(f"scene image {path} cannot be read (not an image, or unreadable)")
    return np.ascontiguousarray(image)


class _Medium(ABC):
    """What one segment plays: a frame for a time since the segment began."""

    @abstractmethod
    def frame(self, t: float) -> Image: ...

    def close(self) -> None:  # noqa: B027 -- most media hold no decoder
        """Release decoders."""


class _Still(_Medium):
    def __init__(self, path: Path) -> None:
        self._image = _read_image(path)

    def frame(self, t: float) -> Image:
        return self._image


class _Folder(_Medium):
    def __init__(self, path: Path, fps: float, loop: bool) -> None:
        self._files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self._files:
            raise SceneError(
                f"scene folder {path} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self._fps, self._loop = fps, loop
        self._cached: tuple[int, Image] | None = None
        _read_image(self._files[0])  # fail at start-up, not mid-scene

    def frame(self, t: float) -> Image:
        k = math.floor(t * self._fps + _EPS)
        n = len(self._files)
        k = k % n if self._loop else min(k, n - 1)
        if self._cached is None or self._cached[0] != k:
            self._cached = (k, _read_image(self._files[k]))
        return self._cached[1]


class _Video(_Medium):
    """Sequential decoding with seeks by re-opening: files are short and seeking in
    compressed video lands on key frames anyway."""

    def __init__(self, path: Path, fps: float | None, loop: bool) -> None:
        self._path, self._loop = path, loop
        self._cap = self._open()
        native = self._cap.get(cv2.CAP_PROP_FPS)
        if fps is None and not (native and math.isfinite(native) and native > 0):
            raise SceneError(f"scene video {path} does not say its frame rate: set media_fps")
        self._fps = fps if fps is not None else float(native)
        self._next = 0  # index of the frame the decoder gives next
        self._count: int | None = None  # known once the decoder reached the end
        self._cached: tuple[int, Image] | None = None
        self._decode(0)  # fail at start-up, not mid-scene

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self._path))
        if not cap.isOpened():
            raise SceneError(f"scene video {self._path} cannot be opened (format or codec)")
        return cap

    def _decode(self, k: int) -> Image | None:
        if k < self._next:
            self._cap.release()
            self._cap, self._next = self._open(), 0
        while self._next < k:
            if not self._cap.grab():
                return None
            self._next += 1
        ok, image = self._cap.read()
        if not ok:
            return None
        self._next += 1
        return np.ascontiguousarray(image)

    def frame(self, t: float) -> Image:
        k = math.floor(t * self._fps + _EPS)
        if self._count is not None:
            k = k % self._count if self._loop else min(k, self._count - 1)
        if self._cached is not None and self._cached[0] == k:
            return self._cached[1]
        image = self._decode(k)
        if image is None:
            # Ran off the end: now the length is known.
            self._count = max(self._next, 1)
            if self._cached is not None and not self._loop:
                return self._cached[1]
            k = k % self._count if self._loop else self._count - 1
            image = self._decode(k)
            if image is None:
                raise SceneError(f"scene video {self._path} stopped decoding at frame {k}")
        self._cached = (k, image)
        return image

    def close(self) -> None:
        self._cap.release()


def _open_medium(segment: SceneSegment, scene_fps: float) -> _Medium:
    path = segment.play
    assert path is not None
    if path.is_dir():
        return _Folder(path, segment.media_fps or scene_fps, segment.loop)
    if not path.is_file():
        raise SceneError(f"scene medium {path} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _Still(path)
    return _Video(path, segment.media_fps, segment.loop)


def _scaled(image: Image, size: Size | None) -> Image:
    if size is None or (image.shape[1], image.shape[0]) == size:
        return image
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


class SceneCamera(Camera):
    """Plays a ``SceneConfig`` timeline as a camera."""

    driver: ClassVar[str] = "scene"

    @classmethod
    def from_config(
        cls, config: SceneConfig, *, clock: Callable[[], float] | None = None
    ) -> SceneCamera:
        return cls(config, clock=clock)

    def __init__(self, config: SceneConfig, *, clock: Callable[[], float] | None = None) -> None:
        try:
            self._segments = config.segments()
        except ValueError as exc:
            raise SceneError(str(exc)) from None
        self._config = config
        self._clock = clock or time.monotonic
        self._driven = clock is not None
        self._fps = config.fps
        # First slot of each segment: the first k with k / fps >= at.
        self._starts = [math.ceil(s.at * self._fps - _EPS) for s in self._segments]
        self._media: list[_Medium | None] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._t0: float | None = None
        self._last_slot = -1
        self._last_full: Image | None = None

    @property
    def description(self) -> str:
        where = self._config.timeline_file or f"{len(self._segments)} segments"
        return f"scene player ({where}, {self._fps:g} fps)"

    # -- slot arithmetic ---------------------------------------------------------------

    def _segment_of(self, slot: int) -> int:
        return bisect.bisect_right(self._starts, slot) - 1

    def _latest_produced(self, after: int, upto: int) -> int | None:
        """The newest slot in (after, upto] that a non-stall segment fills."""
        slot = upto
        while slot > after:
            i = self._segment_of(slot)
            if not self._segments[i].stall:
                return slot
            slot = self._starts[i] - 1
        return None

    def _next_produced(self, after: int) -> int | None:
        """The first slot after ``after`` that a non-stall segment fills; None: never."""
        slot = after + 1
        while True:
            i = self._segment_of(slot)
            if not self._segments[i].stall:
                return slot
            if i + 1 == len(self._segments):
                return None
            slot = self._starts[i + 1]

    def _slot_now(self, now: float) -> int:
        assert self._t0 is not None
        return math.floor((now - self._t0) * self._fps + _EPS)

    def _render(self, slot: int) -> Image:
        i = self._segment_of(slot)
        medium = self._media[i]
        assert medium is not None
        t = slot / self._fps - self._segments[i].at
        return _scaled(medium.frame(max(t, 0.0)), self._config.size)

    # -- Camera --------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._t0 is not None:
                return
            self._media = [None if s.stall else _open_medium(s, self._fps) for s in self._segments]
            self._stopped.clear()
            self._last_slot = -1
            self._last_full = None
            self._t0 = self._clock()
        _log.info("camera: %s started", self.description)

    def _deliver(self, slot: int) -> Frame:
        assert self._t0 is not None
        full = self._render(slot)
        self._last_slot, self._last_full = slot, full
        # Without scaling, the frame shares the medium's pixels: Frame makes them read-only.
        lores = _scaled(full, self._config.lores_size)
        return Frame(lores, self._t0 + slot / self._fps, slot)

    def read(self, timeout: float = 1.0) -> Frame | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._lock:
                if self._t0 is None:
                    raise CameraNotRunning("read() before start() or after stop()")
                now_slot = self._slot_now(self._clock())
                slot = self._latest_produced(self._last_slot, now_slot)
                if slot is not None:
                    return self._deliver(slot)
                if self._driven:
                    return None
                upcoming = self._next_produced(max(now_slot, self._last_slot))
                due = None if upcoming is None else self._t0 + upcoming / self._fps
            wake = deadline if due is None else min(due, deadline)
            if self._stopped.wait(max(wake - time.monotonic(), 0.0)):
                return None
            if due is None or due > deadline:
                return None

    def snapshot(self) -> bytes:
        with self._lock:
            if self._t0 is None:
                raise CameraNotRunning("snapshot() before start() or after stop()")
            if self._last_full is None:
                raise NoFrame("no frame has been read yet, so there is no scene to photograph")
            return encode_jpeg(self._last_full, self._config.jpeg_quality)

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for medium in self._media:
                if medium is not None:
                    medium.close()
            self._media = []
            self._t0 = None
