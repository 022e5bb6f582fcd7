"""Model files of the server's photo check: pinned origin, install step, verified loading.

The same machinery as the pole's models (``edge._models``): each file is taken from a
pinned registry package, checked against its size and SHA-256, and checked again every
time it is loaded. ``citywatch server models install`` puts them into the server's
models folder (``[verification] models_dir``; ``<project>/var/models`` in a checkout).

- BlazePose detector and landmark model (Google, Apache-2.0) from the ``mediapipe``
  0.10.14 wheel, ``mediapipe/modules/pose_detection/pose_detection.tflite`` and
  ``mediapipe/modules/pose_landmark/pose_landmark_full.tflite``. The wheel has native
  code and is built per platform; the model files inside are the same bytes in the
  x86_64 and aarch64 wheels, whose hashes are both pinned.
- MoveNet MultiPose Lightning, the pole's own model, proposes people that the BlazePose
  detector (which keys on the face) misses, from the photo and from the photo turned by
  90 degrees either way.
"""

from __future__ import annotations

from pathlib import Path

from edge import MOVENET, ModelPin, default_models_dir, install_models, load_verified_model

__all__ = [
    "POSE_DETECTOR",
    "POSE_LANDMARKS",
    "SERVER_INSTALL_HINT",
    "SERVER_MODEL_PINS",
    "VerifierModels",
]

SERVER_INSTALL_HINT = "run `citywatch server models install`"

_MEDIAPIPE = dict(
    package="mediapipe",
    version="0.10.14",
    # manylinux x86_64 wheel for CPython 3.11; the aarch64 one below.
    wheel_sha256="a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4",
    other_wheel_sha256=("1061d499d341e7f11dd7f18d5bee747e862db8ef47665ff777323282225d4315",),
    container="",
    license="Apache-2.0",
    install_hint=SERVER_INSTALL_HINT,
)

POSE_DETECTOR = ModelPin(
    name="pose_detection.tflite",
    description="BlazePose detector: people at any rotation, with hip/shoulder alignment points",
    member="mediapipe/modules/pose_detection/pose_detection.tflite",
    size=2_959_046,
    sha256="9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
    **_MEDIAPIPE,  # type: ignore[arg-type]
)

POSE_LANDMARKS = ModelPin(
    name="pose_landmark_full.tflite",
    description="BlazePose landmark model (full): 33 body landmarks from a person's crop",
    member="mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
    size=6_440_512,
    sha256="e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
    **_MEDIAPIPE,  # type: ignore[arg-type]
)

_MOVENET_FOR_SERVER = ModelPin(
    name=MOVENET.name,
    description=MOVENET.description,
    package=MOVENET.package,
    version=MOVENET.version,
    wheel_sha256=MOVENET.wheel_sha256,
    container=MOVENET.container,
    member=MOVENET.member,
    size=MOVENET.size,
    sha256=MOVENET.sha256,
    license=MOVENET.license,
    install_hint=SERVER_INSTALL_HINT,
)

SERVER_MODEL_PINS: tuple[ModelPin, ...] = (POSE_DETECTOR, POSE_LANDMARKS, _MOVENET_FOR_SERVER)


class VerifierModels:
    """The verified bytes of every model the photo check needs, read once.

    Raises ``edge.ModelError`` naming the file and how to install it when one is missing
    or is not the pinned file, so a server stops at start-up instead of at the first photo.
    """

    def __init__(self, models_dir: Path | None = None) -> None:
        self.models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
        self.detector = load_verified_model(self.models_dir / POSE_DETECTOR.name, POSE_DETECTOR)
        self.landmarks = load_verified_model(self.models_dir / POSE_LANDMARKS.name, POSE_LANDMARKS)
        self.movenet = load_verified_model(self.models_dir / MOVENET.name, _MOVENET_FOR_SERVER)

    @staticmethod
    def default_dir() -> Path:
        """Where the models are when no folder is configured."""
        return default_models_dir()

    @staticmethod
    def install(
        models_dir: Path | None = None, *, wheels: tuple[Path, ...] = (), force: bool = False
    ) -> list[str]:
        """Install every pinned file; one line per file saying what was done."""
        results = install_models(models_dir, pins=SERVER_MODEL_PINS, wheels=wheels, force=force)
        return [
            f"{r.pin.name}: {r.action} ({r.pin.size} bytes, sha256 {r.pin.sha256}) in "
            f"{r.path.parent}"
            for r in results
        ]
