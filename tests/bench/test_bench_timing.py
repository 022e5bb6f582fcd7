"""The timed-analysis benchmark runs end to end with tiny sizes and prints its table
(so that it cannot rot). It never judges the figures: benchmarks do not pass or fail on
time."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.bench import run_bench

pytestmark = pytest.mark.slow


def test_bench_timing_smoke() -> None:
    check = run_bench("bench_timing.py", "--check", timeout=60)
    if check.returncode == 3:
        pytest.skip(check.out.strip())
    assert check.returncode == 0, check.why()
    run = run_bench(
        "bench_timing.py",
        "--runs",
        "3",
        "--devices",
        "2",
        "--dists",
        "uniform,cauchy",
        "--limit",
        "240",
        timeout=420,
    )
    assert run.returncode == 0, run.why()
    assert "contact C1..C4" in run.out and "broadcast B1/B2" in run.out, run.out
    assert "Protocol timeouts against the longest measured time" in run.out, run.out
    last = run.last_json()
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
    assert f"cwt{run.pid % 100000}" not in left, left
