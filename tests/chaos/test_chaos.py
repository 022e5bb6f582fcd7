"""Chaos across the stack (bench/chaos.py, bounded): ten real edge daemons reporting on
the scene player while their daemons, two server replicas, the ENC, Mosquitto and
PostgreSQL are SIGKILLed at 100 random moments (and a few poles lose power: their whole
process group at once). Afterwards every incident a pole stored must be at the ENC
exactly once. The seed is printed; ``CITYWATCH_CHAOS_SEED`` repeats a run."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def chaos_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("citywatch_chaos", ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_the_comparison_finds_lost_duplicated_and_unexpected_incidents() -> None:
    compare = chaos_module().compare
    stored = {"a", "b", "c"}
    assert compare(stored, {"a", "b", "c"}, Counter(a=1, b=1, c=1)) == ([], [], [])
    lost, duplicated, unexpected = compare(stored, {"a", "c", "x"}, Counter(a=1, c=2, x=1))
    assert (lost, duplicated, unexpected) == (["b"], ["c"], ["x"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_nothing_lost_nothing_duplicated_under_100_random_kills() -> None:
    for tool in ("mosquitto", "softhsm2-util"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    if not Path("/usr/lib/postgresql").is_dir():
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "chaos.py"),
        "--poles",
        "10",
        "--seconds",
        "150",
        "--kills",
        "100",
        "--settle",
        "120",
    ]
    if seed := os.environ.get("CITYWATCH_CHAOS_SEED"):
        cmd += ["--seed", seed]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = r.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(
            f"no result line (exit {r.returncode}); stdout: {r.stdout[-1000:]}; "
            f"stderr: {r.stderr[-4000:]}"
        )
    detail = f"{lines[0]}; {lines[-1]}; stderr: {r.stderr[-3000:]}"
    print(f"{lines[0]}\n{lines[-1]}")  # seed and counts, for the record (pytest -s)
    assert result["kills"] >= 100, detail
    assert result["incidents"] >= 20, detail  # the poles kept reporting through it all
    assert result["lost"] == 0, detail
    assert result["duplicated"] == 0, detail
    assert result["unexpected"] == 0, detail
    assert r.returncode == 0, detail


@pytest.mark.slow
def test_a_server_replica_rides_out_a_database_outage(tmp_path: Path) -> None:
    chaos = chaos_module()
    from citywatch._services import ServiceUnavailable, start_mosquitto
    from tests.integration.server_harness import ServerProcess, make_server
    from tests.support.services import free_port

    try:
        db = chaos.PostgresService()  # a cluster of its own: this test kills it
        broker = start_mosquitto(tmp_path / "broker")
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    server = None
    try:
        setup = make_server(
            tmp_path,
            broker,
            enc_url=f"http://127.0.0.1:{free_port()}",
            db_url=db.pg.create_database("server"),
        )
        server = ServerProcess(setup).start(timeout=120)
        db.kill()
        deadline = time.monotonic() + 5  # the outage: several poll_s of every loop
        while (
            time.monotonic() < deadline and server.proc is not None and server.proc.poll() is None
        ):
            time.sleep(0.1)
        db.start()
        text = server.log.read_text(errors="replace")
        where = [line.strip() for line in text.splitlines() if "/server/_" in line]
        assert server.proc is not None and server.proc.poll() is None, (
            f"the server exited: {where[-6:]}; {text.strip().splitlines()[-1:]}"
        )
    finally:
        if server is not None:
            server.stop()
        broker.stop()
        db.stop()
