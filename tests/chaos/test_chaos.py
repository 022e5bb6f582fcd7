"""Chaos across the stack (bench/chaos.py, bounded): ten real edge daemons reporting on
the scene player while their daemons, two server replicas, the ENC, Mosquitto and
PostgreSQL are SIGKILLed at 100 random moments (and a few poles lose power: their whole
process group at once). Afterwards every incident a pole stored must be at the ENC
exactly once. The seed is printed; ``CITYWATCH_CHAOS_SEED`` repeats a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_nothing_lost_nothing_duplicated_under_100_random_kills() -> None:
    for tool in ("mosquitto", "softhsm2-util"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    if not Path("/usr/lib/postgresql").is_dir():
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
    cmd = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--poles", "10", "--seconds",
           "150", "--kills", "100", "--settle", "120"]
    if seed := os.environ.get("CITYWATCH_CHAOS_SEED"):
        cmd += ["--seed", seed]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = r.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {r.stderr[-3000:]}"
    result = json.loads(lines[-1])
    detail = f"{lines[0]}; {lines[-1]}; stderr: {r.stderr[-3000:]}"
    assert result["kills"] >= 100, detail
    assert result["incidents"] >= 20, detail  # the poles kept reporting through it all
    assert result["lost"] == 0, detail
    assert result["duplicated"] == 0, detail
    assert result["unexpected"] == 0, detail
    assert r.returncode == 0, detail
