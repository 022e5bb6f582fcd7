"""``citywatch demo``: the README's main command, run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_once_prints_the_alert_and_its_phases(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "citywatch", "demo", "--once", "--devices", "3",
                        "--dir", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result["phases_ms"]) == {"detection_to_c1", "c1_to_c4", "c4_to_n2"}
    assert all(v >= 0 for v in result["phases_ms"].values())
    assert result["total_ms"] >= result["phases_ms"]["c1_to_c4"]
    # The alert is really stored at the ENC: ask the ENC itself.
    alerts = subprocess.run([sys.executable, "-m", "citywatch", "enc", "alerts", "--json",
                             "--config", str(tmp_path / "demo" / "enc.toml")],
                            capture_output=True, text=True, timeout=60)
    assert alerts.returncode == 0, alerts.stderr
    assert result["incident_id"] in alerts.stdout
    # Bundles were deleted once the keys were in the tokens.
    assert list((tmp_path / "demo" / "bundles").glob("*.json")) == []


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "citywatch", "demo", "--devices", "2",
                             "--dir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 400
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C stops it" in line or time.monotonic() > deadline:
                break
        assert any("Dashboard:" in line for line in seen), "".join(seen)[-3000:]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "stopping" in rest
    # The server and ENC it started are gone.
    for name in ("server", "enc"):
        log = tmp_path / "demo" / f"{name}.log"
        assert log.exists()
    out = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True,
                         text=True)
    assert out.stdout.strip() == "", out.stdout
