"""A synthetic street photo, for test vectors and simulated devices (no data set needed)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

__all__ = ["sample_jpeg"]


def sample_jpeg(size: tuple[int, int] = (160, 120), *, quality: int = 75) -> bytes:
    """A real JPEG: a pavement, a kerb, a pole and a figure lying on the ground."""
    w, h = size
    img = Image.new("RGB", size, (118, 140, 160))
    d = ImageDraw.Draw(img)
    d.rectangle([0, h * 3 // 5, w, h], fill=(84, 84, 88))  # pavement
    d.rectangle([0, h * 3 // 5 - 3, w, h * 3 // 5], fill=(150, 150, 150))  # kerb
    d.rectangle([w * 7 // 8, h // 8, w * 7 // 8 + 3, h * 3 // 5], fill=(40, 40, 40))  # pole
    y = h * 4 // 5
    d.ellipse([w // 4 - 6, y - 6, w // 4 + 6, y + 6], fill=(224, 184, 150))  # head
    d.rectangle([w // 4 + 6, y - 5, w // 2 + 10, y + 5], fill=(170, 40, 40))  # body, lying
    d.rectangle([w // 2 + 10, y - 4, w * 2 // 3 + 6, y + 4], fill=(40, 50, 110))  # legs
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
