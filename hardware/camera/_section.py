"""What every ``[camera]`` model shares: strict sections, sizes, paths relative to the
config file's folder.

Relative paths (``timeline_file``, a segment's ``play``) are resolved against the
``base_dir`` given in the validation context (the folder of the config file:
``parse_camera_config(data, base_dir=folder)``), else against the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

__all__ = ["CameraSection", "PathLike", "Size", "resolve_path"]

PathLike = Annotated[Path, Field(strict=False)]
Size = Annotated[
    tuple[Annotated[int, Field(ge=16, le=16384)], Annotated[int, Field(ge=16, le=16384)]],
    Field(strict=False),
]
"""(width, height) in pixels; a TOML list ``[640, 480]``."""


class CameraSection(BaseModel):
    """Base of the ``[camera]`` models: strict, unknown keys refused, fields documented."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if path.is_absolute() or base is None:
        return path
    return Path(base) / path
