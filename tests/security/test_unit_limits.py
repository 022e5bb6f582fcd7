"""Every service the project runs has a ceiling on memory and tasks: a flood of photos,
requests or connections, or a leak, ends in a restart by systemd (Restart=on-failure),
never in the host swapping or running out of processes. systemd-analyze accepts the
units as they are (tests/unit/test_systemd_units.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNITS = sorted([*SYSTEMD.glob("*.service"), SYSTEMD / "mosquitto.service.d" / "citywatch.conf"])
_SIZE = re.compile(r"^(\d+)([KMG]?)$")


def _service_section(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[Service]" and (m := re.match(r"^([A-Za-z]+)=(.*)$", line)):
            values[m[1]] = m[2]
    return values


def _bytes(value: str) -> int:
    m = _SIZE.match(value)
    assert m, f"not a fixed size: {value!r}"
    return int(m[1]) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m[2]]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_each_service_has_a_memory_and_task_ceiling(unit: Path) -> None:
    s = _service_section(unit)
    assert "MemoryMax" in s and "TasksMax" in s, unit.name
    memory_max = _bytes(s["MemoryMax"])
    assert 64 * 2**20 <= memory_max <= 4 * 2**30
    assert _bytes(s.get("MemoryHigh", s["MemoryMax"])) <= memory_max
    assert s.get("MemorySwapMax") == "0"  # past the ceiling: restarted, not swapped
    assert s["TasksMax"].isdigit() and 8 <= int(s["TasksMax"]) <= 1024
