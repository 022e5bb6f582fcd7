"""Privacy masks: polygons of the pole's view that must never be seen (windows of homes,
a garden), blacked out where frames leave the camera.

``MaskedCamera`` wraps the pole's camera: every frame ``read()`` returns and every
snapshot is masked before anything else in the pole (motion gate, pre-screen, outbox,
the protocol) gets it, so no unmasked pixel of a masked region leaves the camera object.
Polygons are in fractions of the frame's width and height (0..1), so they hold for the
low-resolution detection stream and the full-resolution snapshot alike. Edges are drawn
generously (the polygon's outline counts as inside): a mask errs towards hiding.

Configuration, in the device config::

    [[privacy.masks]]
    name = "windows, house no. 12"
    points = [[0.62, 0.05], [0.98, 0.05], [0.98, 0.40], [0.62, 0.40]]

Errors: a polygon with fewer than three points, a point outside 0..1 (outside the
frame) or a self-intersecting ring are configuration errors naming the mask; a snapshot
that is not a JPEG is a ``CameraError``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hardware.camera import Camera, CameraError, Frame

__all__ = ["MaskPolygon", "MaskedCamera", "PrivacyConfig", "PrivacyMask"]

Image = npt.NDArray[np.uint8]
_SHIFT = 8  # fillPoly's fixed-point bits: polygon corners to 1/256 of a pixel


class MaskPolygon(BaseModel):
    """One masked region."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    """What it hides, for the preview and the logs."""
    points: Annotated[list[tuple[float, float]], Field(min_length=3)]
    """Corners ``[x, y]`` as fractions of the frame's width and height, 0..1."""

    @field_validator("points")
    @classmethod
    def _inside(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for x, y in v:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(
                    f"point [{x}, {y}] is outside the frame: corners are "
                    "fractions of the width and height, from 0 to 1"
                )
        return v

    @model_validator(mode="after")
    def _simple(self) -> MaskPolygon:
        if _self_intersecting(self.points):
            raise ValueError(
                f"mask {self.name or self.points!r} crosses itself: list the "
                "corners in order around the region"
            )
        pts = np.asarray(self.points, dtype=np.float64)
        area = 0.5 * abs(
            float(
                np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1))
            )
        )
        if area <= 0.0:
            raise ValueError(f"mask {self.name or self.points!r} has no area")
        return self


class PrivacyConfig(BaseModel):
    """``[privacy]``: the regions of the view blacked out in every frame and snapshot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    masks: list[MaskPolygon] = []
    """The masked regions; none: the whole view is used."""


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _segments_cross(
    p1: tuple[float, float],
    p2: tuple[float, float],
    q1: tuple[float, float],
    q2: tuple[float, float],
) -> bool:
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    return (d1 * d2 < 0) and (d3 * d4 < 0)


def _self_intersecting(points: Sequence[tuple[float, float]]) -> bool:
    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a corner
            if _segments_cross(*edges[i], *edges[j]):
                return True
    return False


class PrivacyMask:
    """The masks of one pole, applied to images of any size (a stencil per size)."""

    def __init__(self, polygons: Sequence[MaskPolygon]) -> None:
        self.polygons = tuple(polygons)
        self._stencils: dict[tuple[int, int], npt.NDArray[np.bool_]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: PrivacyConfig) -> PrivacyMask:
        return cls(config.masks)

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def stencil(self, height: int, width: int) -> npt.NDArray[np.bool_]:
        """True where a pixel of a ``height`` x ``width`` image is masked."""
        with self._lock:
            got = self._stencils.get((height, width))
            if got is None:
                canvas = np.zeros((height, width), np.uint8)
                scale = 1 << _SHIFT
                for poly in self.polygons:
                    # Pixel centres sit at (i + 0.5); corner 1.0 is the far image edge.
                    pts = np.array(
                        [
                            [round((x * width - 0.5) * scale), round((y * height - 0.5) * scale)]
                            for x, y in poly.points
                        ],
                        np.int32,
                    )
                    cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_8, shift=_SHIFT)
                    # The outline too (fillPoly may leave a partly covered edge pixel out).
                    cv2.polylines(
                        canvas, [pts], True, 255, thickness=1, lineType=cv2.LINE_8, shift=_SHIFT
                    )
                got = canvas.astype(bool)
                got.flags.writeable = False
                self._stencils[(height, width)] = got
            return got

    def apply(self, image: Image) -> Image:
        """A copy of ``image`` (H x W x 3) with the masked regions black; ``image``
        itself when there are no masks."""
        if not self.polygons:
            return image
        out = np.array(image, copy=True)
        out[self.stencil(out.shape[0], out.shape[1])] = 0
        return out

    def apply_jpeg(self, jpeg: bytes, *, quality: int = 90) -> bytes:
        """The JPEG decoded, masked and encoded again."""
        if not self.polygons:
            return jpeg
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise CameraError("the camera's snapshot is not a JPEG: not used")
        ok, encoded = cv2.imencode(
            ".jpg",
            self.apply(image.astype(np.uint8, copy=False)),
            [cv2.IMWRITE_JPEG_QUALITY, quality],
        )
        if not ok:
            raise CameraError("the masked snapshot could not be encoded")
        return bytes(encoded.tobytes())

    def preview(self, image: Image) -> Image:
        """``image`` with the masked regions as they will be seen (black), outlined in
        red and named: what ``citywatch edge mask-preview`` writes."""
        out = self.apply(image)
        out = np.array(out, copy=True)
        h, w = out.shape[:2]
        for poly in self.polygons:
            pts = np.array(
                [[round(x * (w - 1)), round(y * (h - 1))] for x, y in poly.points], np.int32
            )
            cv2.polylines(out, [pts], True, (0, 0, 255), thickness=max(1, w // 400))
            if poly.name:
                x, y = pts.min(axis=0)
                cv2.putText(
                    out,
                    poly.name,
                    (int(x) + 4, int(y) + 16),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.5,
                    (0, 0, 255),
                    1,
                    cv2.LINE_AA,
                )
        return out


class MaskedCamera(Camera):
    """The pole's camera as the rest of the pole sees it: masks applied to every frame
    and snapshot."""

    driver = "masked"

    def __init__(self, camera: Camera, mask: PrivacyMask, *, jpeg_quality: int = 90) -> None:
        self.camera = camera
        self.mask = mask
        self.jpeg_quality = jpeg_quality

    @classmethod
    def from_config(cls, config: object, *, clock: object = None) -> Camera:
        raise TypeError("a MaskedCamera wraps an opened camera: MaskedCamera(camera, mask)")

    @property
    def description(self) -> str:
        n = len(self.mask.polygons)
        return f"{self.camera.description}, {n} privacy mask(s)" if n else self.camera.description

    def start(self) -> None:
        self.camera.start()

    def read(self, timeout: float = 1.0) -> Frame | None:
        frame = self.camera.read(timeout)
        if frame is None or not self.mask:
            return frame
        return replace(frame, image=self.mask.apply(frame.image))

    def snapshot(self) -> bytes:
        return self.mask.apply_jpeg(self.camera.snapshot(), quality=self.jpeg_quality)

    def stop(self) -> None:
        self.camera.stop()
