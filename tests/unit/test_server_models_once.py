"""The photo check's models are read once per process: the start-up check's bytes are
the ones the server's own check (``workers = 0``) runs on, so the files are not read
again (removed after the check, the server still verifies)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

import protocol as p
from server import Outcome, TrustedServer, VerifierModelError, example_config, load_config
from server._models import SERVER_MODEL_PINS, VerifierModels
from tests.support.services import free_port
from tests.support.world import T0, jpeg


def _config(tmp_path: Path, models: Path) -> Path:
    path = tmp_path / "server.toml"
    text = (
        example_config(data_dir=str(tmp_path / "data"))
        .replace("port = 8600", f"port = {free_port()}")
        .replace("workers = 1 ", "workers = 0 ")
        .replace('models_dir = ""', f"models_dir = {json.dumps(str(models))}")
    )
    assert "workers = 0 " in text and str(models) in text
    path.write_text(text)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    installed = VerifierModels.default_dir()
    if not all((installed / pin.name).is_file() for pin in SERVER_MODEL_PINS):
        pytest.skip(
            f"the photo check's models are not installed in {installed} "
            "(citywatch server models install)"
        )
    copy = tmp_path / "models"
    shutil.copytree(installed, copy)
    return copy


def test_the_start_up_check_is_the_only_read_of_the_models(tmp_path: Path, models: Path) -> None:
    server = TrustedServer(load_config(_config(tmp_path, models)))
    try:
        shutil.rmtree(models)  # read once already: never needed again
        kid = server.store.add_device(uid="pole-1", zone="z", lat=52.2, lon=21.0, alg=3, actor="t")[
            0
        ].kid
        cid = os.urandom(16)
        report = p.IncidentReported(
            kid=kid,
            uid="pole-1",
            td=T0,
            cid=cid,
            incident_id=p.incident_id_for(kid, cid),
            coords=p.Coords(lat=52.2, lon=21.0, alt=None, acc=4.0),
            photo=jpeg(),
            score=0.9,
            label="person_down",
            captured_at=T0 - 100,
            c3_hash=b"h" * 32,
        )
        server.store.store_incident(report, zone="z")
        # A grey test card shows nobody: dismissed, by the real check.
        assert asyncio.run(server.verification.verify(report.incident_id)) is Outcome.DISMISSED
        assert "no_person" in str(server.store.get_incident(report.incident_id).decision_reason)
    finally:
        server.verifier.close()
        server.store.close()


def test_a_missing_model_still_stops_the_start_before_anything_is_created(
    tmp_path: Path, models: Path
) -> None:
    (models / SERVER_MODEL_PINS[0].name).unlink()
    with pytest.raises(VerifierModelError, match="models install"):
        TrustedServer(load_config(_config(tmp_path, models)))
    assert not (tmp_path / "data").exists()
