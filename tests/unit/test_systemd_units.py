"""The systemd units in systemd/: `systemd-analyze verify` accepts them and
`systemd-analyze security --offline=true` scores each at 2.0 or lower.

`verify` checks that ExecStart's program exists and resolves the units' dependencies,
so each unit is verified inside a throw-away root (``--root``): the host's unit folder
for sysinit.target and friends, the unit under etc/systemd/system, and an executable
where the unit expects /opt/citywatch/current/bin/citywatch. The unit file is the one
from the repository, unchanged. Warnings (an unknown key, a misspelt section) leave
verify's exit status at 0, so any output on stderr is a failure too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = sorted(p.name for p in UNITS_DIR.glob("*.service"))
MOSQUITTO_DROPIN = UNITS_DIR / "mosquitto.service.d" / "citywatch.conf"
MAX_EXPOSURE = 2.0
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    return tool


def _host_unit_dir() -> Path:
    for d in HOST_UNIT_DIRS:
        if (d / "sysinit.target").exists():
            return d
    pytest.skip("no systemd unit folder with sysinit.target on this machine")


def _unit_text(name: str) -> str:
    return (UNITS_DIR / name).read_text()


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            found.setdefault(m[1], []).append(m[2])
    return found


@pytest.fixture
def fake_root(tmp_path: Path) -> Iterator[Path]:
    """A root with the host's units and the programs the CityWatch units run."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(_host_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    program = root / "opt/citywatch/current/bin/citywatch"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    yield root


def test_there_is_a_unit_for_each_service() -> None:
    assert UNITS == ["citywatch-edge.service", "citywatch-enc.service", "citywatch-server.service"]


@pytest.mark.parametrize("unit", UNITS)
def test_verify_accepts_the_unit(unit: str, fake_root: Path) -> None:
    tool = _systemd_analyze()
    shutil.copy(UNITS_DIR / unit, fake_root / "etc/systemd/system" / unit)
    done = subprocess.run(
        [tool, "verify", f"--root={fake_root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_verify_fails_when_the_program_is_missing(fake_root: Path) -> None:
    """The check above can fail: without ExecStart's program, verify says so."""
    tool = _systemd_analyze()
    unit = "citywatch-edge.service"
    shutil.copy(UNITS_DIR / unit, fake_root / "etc/systemd/system" / unit)
    (fake_root / "opt/citywatch/current/bin/citywatch").unlink()
    done = subprocess.run(
        [tool, "verify", f"--root={fake_root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "citywatch" in done.stderr


def _exposure(tool: str, *args: str) -> float:
    done = subprocess.run(
        [tool, "security", "--offline=true", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert m, done.stdout + done.stderr
    return float(m[1])


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_is_at_most_2(unit: str, tmp_path: Path) -> None:
    tool = _systemd_analyze()
    exposure = _exposure(tool, str(UNITS_DIR / unit))
    assert exposure <= MAX_EXPOSURE, f"{unit}: exposure {exposure}"
    # The same threshold through systemd-analyze's own exit status.
    # (--threshold is on a 0..100 scale, ten times the exposure shown.)
    threshold = f"--threshold={int(MAX_EXPOSURE * 10)}"
    done = subprocess.run(
        [tool, "security", "--offline=true", threshold, str(UNITS_DIR / unit)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0


def test_security_scores_an_unhardened_unit_above_the_limit(tmp_path: Path) -> None:
    """The scoring test can fail: the edge unit stripped of its sandboxing scores high."""
    tool = _systemd_analyze()
    kept = ("Type", "ExecStart", "User", "Group", "WatchdogSec", "Description")
    lines = [
        line
        for line in _unit_text("citywatch-edge.service").splitlines()
        if not re.match(r"^[A-Za-z]+=", line) or line.split("=", 1)[0] in kept
    ]
    bare = tmp_path / "citywatch-bare.service"
    bare.write_text("\n".join(lines) + "\n")
    assert _exposure(tool, str(bare)) > MAX_EXPOSURE


def test_mosquitto_dropin_verifies_and_scores_at_most_2(tmp_path: Path) -> None:
    """The broker drop-in on top of Debian's mosquitto.service (where installed)."""
    tool = _systemd_analyze()
    host_units = _host_unit_dir()
    if not (host_units / "mosquitto.service").exists() or shutil.which("mosquitto") is None:
        pytest.skip("Debian's mosquitto package is not installed (apt install mosquitto)")
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    dropins = root / "etc/systemd/system/mosquitto.service.d"
    dropins.mkdir(parents=True)
    shutil.copy(MOSQUITTO_DROPIN, dropins / "citywatch.conf")
    for program in ("/usr/sbin/mosquitto", "/bin/kill"):
        target = root / program.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which(Path(program).name) or program, target)
    done = subprocess.run(
        [tool, "verify", f"--root={root}", "mosquitto.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    assert _exposure(tool, f"--root={root}", "mosquitto.service") <= MAX_EXPOSURE
    assert _exposure(tool, str(host_units / "mosquitto.service")) > MAX_EXPOSURE


@pytest.mark.parametrize("unit", UNITS)
def test_unit_has_the_supervision_the_daemons_expect(unit: str) -> None:
    d = _directives(_unit_text(unit))
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["WatchdogSec"][0] not in ("0", "infinity")
    assert d["Restart"] == ["on-failure"]
    assert d["StartLimitIntervalSec"] and d["StartLimitBurst"]
    assert d["User"] == ["citywatch"]
    assert d["StateDirectory"] and d["ConfigurationDirectory"] == ["citywatch"]
    component = unit.removeprefix("citywatch-").removesuffix(".service")
    assert d["ExecStart"] == [
        f"/opt/citywatch/current/bin/citywatch {component} run "
        f"--config /etc/citywatch/{component}.toml"
    ]


def test_edge_unit_allows_only_the_devices_a_pole_needs() -> None:
    d = _directives(_unit_text("citywatch-edge.service"))
    assert d["DevicePolicy"] == ["closed"]
    allowed = sorted(d["DeviceAllow"])
    assert allowed == ["/dev/i2c-1 rw", "char-dma_heap rw", "char-media rw", "char-video4linux rw"]
    # GNSS arrives through gpsd's socket on localhost: no serial port in the unit.
    assert not any("tty" in a or "serial" in a for a in allowed)


def test_security_report_as_json_names_no_failed_critical_check() -> None:
    """No unit runs as root or keeps a capability (the checks that weigh most)."""
    tool = _systemd_analyze()
    for unit in UNITS:
        done = subprocess.run(
            [tool, "security", "--offline=true", "--json=short", str(UNITS_DIR / unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        checks = {c["name"]: c for c in json.loads(done.stdout)}
        assert checks["User=/DynamicUser="]["set"] is True, unit
        assert checks["CapabilityBoundingSet=~CAP_SYS_ADMIN"]["set"] is True, unit
