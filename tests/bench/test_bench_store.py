"""The store benchmark runs end to end with tiny sizes on SQLite and PostgreSQL and
prints its figures (so that it cannot rot). It never judges the figures: benchmarks do
not pass or fail on time."""

from __future__ import annotations

import pytest

from tests.support.bench import run_bench

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_bench_store_smoke(database: str, request: pytest.FixtureRequest) -> None:
    extra = []
    if database == "postgresql":
        request.getfixturevalue("postgres")  # skips, with its reason, where there is none
        extra = ["--postgres"]
    run = run_bench(
        "bench_store.py", "--history", "0,600", "--batch", "4", "--rounds", "3", *extra, timeout=400
    )
    assert run.returncode == 0, run.why()
    last = run.last_json()
    assert last["database"] == database and last["batch"] == 4
    assert [r["history"] for r in last["rows"]] == [0, 600]
    for row in last["rows"]:
        assert all(row[k] > 0 for k in ("decide_ms", "claim_ms", "delivered_ms")), row
    assert "600 earlier incidents against none" in run.out, run.out
