"""A real pole, deployed by site.yml and provision.yml, checked from the control machine
over SSH (docs/hil.md). Skipped unless CITYWATCH_HIL_HOST names the pole.

    CITYWATCH_HIL_HOST=pole-hil.lab.example CITYWATCH_HIL_USER=operator \\
        .venv/bin/pytest -m hil tests/ansible/test_hil_pole.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

pytestmark = pytest.mark.hil

HOST = os.environ.get("CITYWATCH_HIL_HOST", "")
USER = os.environ.get("CITYWATCH_HIL_USER", "")
MODULE = os.environ.get("CITYWATCH_HIL_PKCS11_MODULE", "/usr/lib/libcryptoauth.so")
CITYWATCH = "/opt/citywatch/current/bin/citywatch"


def _ssh(command: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if not HOST:
        pytest.skip("CITYWATCH_HIL_HOST is not set: no real pole to test (docs/hil.md)")
    target = f"{USER}@{HOST}" if USER else HOST
    return subprocess.run(
        ["ssh", "-o", "BatchMode=yes", target, command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_services_are_running() -> None:
    for unit in ("citywatch-edge.service", "gpsd.socket", "chrony.service"):
        done = _ssh(f"systemctl is-active {unit}")
        assert done.stdout.strip() == "active", (unit, done.stdout, done.stderr)


def test_edge_unit_as_loaded_scores_at_most_2() -> None:
    """The unit with the drop-ins the role may have added, as systemd loaded it."""
    done = _ssh("systemd-analyze security citywatch-edge.service --no-pager")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert m, done.stdout + done.stderr
    assert float(m[1]) <= 2.0


def test_daemon_reports_healthy() -> None:
    done = _ssh(
        f"sudo -u citywatch {CITYWATCH} edge status --json --config /etc/citywatch/edge.toml"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    json.loads(done.stdout)


def test_devices_the_unit_needs_exist() -> None:
    done = _ssh("ls /dev/i2c-1 && ls /dev/video* && ls /dev/pps0 && ls /dev/serial0")
    assert done.returncode == 0, done.stderr


def test_secure_element_token_is_visible() -> None:
    done = _ssh(f"sudo -u citywatch p11tool --provider {MODULE} --list-tokens")
    assert done.returncode == 0, done.stderr
    assert "Label:" in done.stdout


def test_gnss_fix_and_clock_locked_to_pps() -> None:
    fix = _ssh("gpspipe -w -n 20", timeout=90)
    modes = [
        json.loads(line).get("mode", 0)
        for line in fix.stdout.splitlines()
        if '"class":"TPV"' in line
    ]
    assert modes and max(modes) >= 2, fix.stdout[-2000:]
    sources = _ssh("chronyc -c sources").stdout
    assert any(line.startswith("#,*,PPS") for line in sources.splitlines()), sources
    tracking = _ssh("chronyc -c tracking").stdout.split(",")
    assert abs(float(tracking[4])) < 0.05, tracking  # last offset, seconds


def test_watchdog_restarts_a_hung_daemon() -> None:
    """SIGSTOP freezes the main loop: no WATCHDOG=1, so systemd kills and restarts it."""
    before = _ssh("systemctl show -p MainPID --value citywatch-edge").stdout.strip()
    watchdog = _ssh("systemctl show -p WatchdogUSec --value citywatch-edge").stdout.strip()
    assert before not in ("", "0") and watchdog not in ("", "0", "infinity")
    _ssh("sudo systemctl kill -s SIGSTOP --kill-whom=main citywatch-edge")
    deadline = time.monotonic() + 120
    after = before
    while time.monotonic() < deadline and after in (before, "0", ""):
        time.sleep(5)
        after = _ssh("systemctl show -p MainPID --value citywatch-edge").stdout.strip()
    assert after not in (before, "0", ""), "the watchdog did not restart the daemon"
    assert _ssh("systemctl is-active citywatch-edge").stdout.strip() == "active"
