"""The ``[camera]`` section: drivers keyed by ``driver``, each in its own module with its
configuration model beside it (frigate's detector plugins are the model).

.. code-block:: toml

    [camera]
    driver = "scene"            # or "picamera2", "opencv"
    fps = 10
    lores_size = [640, 360]
    timeline_file = "scenes/person-down.toml"

A new driver is a module with a ``CameraSection`` model (``driver: Literal[...]``) and a
``Camera`` subclass (``driver``, ``from_config``), listed in ``CAMERA_DRIVERS`` and in
``CameraConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from ._base import Camera
from ._opencv import OpenCvCamera, OpenCvConfig
from ._picamera2 import Picamera2Camera, Picamera2Config
from ._scene import SceneCamera, SceneConfig

__all__ = ["CAMERA_DRIVERS", "CameraConfig", "open_camera", "parse_camera_config"]

CAMERA_DRIVERS: dict[str, type[Camera]] = {
    driver.driver: driver for driver in (Picamera2Camera, OpenCvCamera, SceneCamera)
}
"""``[camera] driver`` -> the camera class."""

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


def open_camera(
    config: Picamera2Config | OpenCvConfig | SceneConfig,
    *,
    clock: Callable[[], float] | None = None,
) -> Camera:
    """The driver the configuration names, not started yet. A driver whose library is
    missing raises ``CameraDriverMissing`` here, at start-up. ``clock`` drives the scene
    player's time (tests); the real drivers follow real time and refuse one."""
    return CAMERA_DRIVERS[config.driver].from_config(config, clock=clock)
