"""Turning the bytes of a reported photo into pixels the models can look at, safely.

A photo comes from a device, which may be compromised: its header is read first and the
pixels are decoded only when the picture is a JPEG of a sane size. A large photo is
decoded at a reduced scale straight from the JPEG's DCT (libjpeg's "draft" mode), so a
13000 x 13000 decompression bomb never becomes 500 MB of pixels. Then the paper's
preprocessing: contrast-limited adaptive histogram equalisation (CLAHE) on the
lightness, which lifts people out of shadows and night scenes, and a light Gaussian blur
against JPEG block noise.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

__all__ = ["PhotoRejected", "PreparedPhoto", "prepare_photo"]


@dataclass(frozen=True, slots=True)
class PhotoRejected:
    """A photo that cannot show anything: why, in a word and in a sentence."""

    label: str
    """``not_jpeg``, ``undecodable``, ``too_small``, ``too_large``, ``blank_frame``."""
    reason: str
    """What is wrong with it, for the incident record and the operator."""


@dataclass(frozen=True, slots=True, eq=False)
class PreparedPhoto:
    """The decoded, preprocessed photo."""

    rgb: npt.NDArray[np.uint8]
    """(height, width, 3) RGB, the long side at most the configured size."""
    original_size: tuple[int, int]
    """(width, height) of the JPEG as sent."""


def prepare_photo(
    photo: bytes,
    *,
    max_pixels: int,
    min_width: int,
    min_height: int,
    long_side: int,
    clahe_clip: float = 2.0,
) -> PreparedPhoto | PhotoRejected:
    """Decode and preprocess ``photo``, or say why it cannot be used. Never raises for
    what a device sends."""
    if not photo.startswith(b"\xff\xd8"):
        return PhotoRejected("not_jpeg", "the photo is not a JPEG (it does not start FF D8)")
    try:
        with warnings.catch_warnings():
            # Pillow warns, then raises, on pixel counts past its own limit: ours is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            jpeg = Image.open(io.BytesIO(photo), formats=("JPEG",))
            width, height = jpeg.size
            if width < min_width or height < min_height:
                return PhotoRejected(
                    "too_small",
                    f"the photo is {width}x{height} pixels, smaller than {min_width}x{min_height}",
                )
            if width * height > max_pixels:
                return PhotoRejected(
                    "too_large",
                    f"the photo is {width}x{height} pixels "
                    f"({width * height / 1e6:.1f} MP), more than the "
                    f"{max_pixels / 1e6:.1f} MP a pole's camera sends",
                )
            # Decode at 1/2, 1/4 or 1/8 scale when that still covers the size we work at.
            jpeg.draft("RGB", (long_side, long_side))
            rgb = np.asarray(jpeg.convert("RGB"), dtype=np.uint8)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        MemoryError,
    ) as exc:
        return PhotoRejected("undecodable", f"the photo cannot be decoded as a JPEG ({exc})")
    h, w = rgb.shape[:2]
    if max(h, w) > long_side:
        scale = long_side / max(h, w)
        rgb = np.asarray(
            cv2.resize(
                rgb,
                (max(1, round(w * scale)), max(1, round(h * scale))),
                interpolation=cv2.INTER_AREA,
            ),
            dtype=np.uint8,
        )
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if float(grey.std()) < 3.0:
        # A covered lens, a dead sensor or a frame of one colour: nothing can be seen.
        return PhotoRejected(
            "blank_frame", "the photo is of one colour (a covered lens or a dead sensor)"
        )
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=clahe_clip, tileGridSize=(8, 8))
    lab[:, :, 0] = clahe.apply(lab[:, :, 0])
    out = cv2.GaussianBlur(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), (3, 3), 0)
    return PreparedPhoto(np.ascontiguousarray(out), (width, height))
