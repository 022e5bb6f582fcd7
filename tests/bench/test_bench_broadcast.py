"""The broadcast benchmark runs end to end with tiny sizes and prints its figures (so that
it cannot rot). It never judges the figures: benchmarks do not pass or fail on time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_broadcast.py"

pytestmark = pytest.mark.slow


def test_bench_broadcast_smoke() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (scripts/setup.sh installs it)")
    proc = subprocess.Popen([sys.executable, str(BENCH), "--devices", "20", "--procs", "2",
                             "--per-conn", "5", "--limit", "240"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "B1 accepted by 20/20 poles" in out, out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["devices"] == 20
    # Both phases completed (a number, not null); how long they took is not judged.
    assert isinstance(last["announce_s"], float), last
    assert isinstance(last["reannounce_s"], float), last
    assert last["server_rss_mib"] > 0
    # Every pole connection came back after the broker's restart: 4 connections, twice.
    assert last["mqtt_connects"] >= 8, last
