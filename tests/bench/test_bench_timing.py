"""The timed-analysis benchmark runs end to end with tiny sizes and prints its table
(so that it cannot rot). It never judges the figures: benchmarks do not pass or fail on
time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_timing.py"

pytestmark = pytest.mark.slow


def test_bench_timing_smoke() -> None:
    check = subprocess.run([sys.executable, str(BENCH), "--check"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    if check.returncode == 3:
        pytest.skip(check.stdout.strip())
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([sys.executable, str(BENCH), "--runs", "3", "--devices", "2",
                             "--dists", "uniform,cauchy", "--limit", "240"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "contact C1..C4" in out and "broadcast B1/B2" in out, out
    assert "Protocol timeouts against the longest measured time" in out, out
    last = json.loads(out.strip().splitlines()[-1])
    assert set(last["results"]) == {"uniform", "cauchy"}
    for dist in ("uniform", "cauchy"):
        res = last["results"][dist]
        assert res["contact_units"]["n"] == 3 and res["missed"] == 0, res
        assert res["broadcast_units"]["n"] == 6, res
        # Every step carries an injected delay of at least one unit: a phase of four
        # steps shorter than four units means the delay was not injected at all.
        assert res["contact_units"]["min"] >= 4, res
        assert res["broadcast_units"]["min"] >= 2, res
    # Nothing of the benchmark's namespaces is left behind.
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"cwt{proc.pid % 100000}" not in left, left
