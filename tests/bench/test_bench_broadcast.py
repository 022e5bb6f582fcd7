"""The broadcast benchmark runs end to end with tiny sizes and prints its figures (so that
it cannot rot). It never judges the figures: benchmarks do not pass or fail on time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.bench import run_bench

pytestmark = pytest.mark.slow


def test_bench_broadcast_smoke() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (scripts/setup.sh installs it)")
    run = run_bench(
        "bench_broadcast.py",
        "--devices",
        "20",
        "--procs",
        "2",
        "--per-conn",
        "5",
        "--limit",
        "240",
        timeout=400,
    )
    assert run.returncode == 0, run.why()
    assert "B1 accepted by 20/20 poles" in run.out, run.out
    last = run.last_json()
    assert last["devices"] == 20
    # Both phases completed (a number, not null); how long they took is not judged.
    assert isinstance(last["announce_s"], float), last
    assert isinstance(last["reannounce_s"], float), last
    assert last["server_rss_mib"] > 0
    # Every pole connection came back after the broker's restart: 4 connections, twice.
    assert last["mqtt_connects"] >= 8, last
