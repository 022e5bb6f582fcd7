"""The Ansible roles have one shape: each owns its files (the systemd units are copies of
systemd/'s, and cannot drift from them), declares its arguments, has a README, and reads
no other role's variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with ansible-core ([dev] extra)")

ROOT = Path(__file__).resolve().parents[2]
ROLES_DIR = ROOT / "ansible" / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir())
UNITS = {
    "edge": "citywatch-edge.service",
    "enc": "citywatch-enc.service",
    "server": "citywatch-server.service",
}


def _defaults(role: str) -> dict[str, object]:
    data = yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text())
    return dict(data or {})


@pytest.mark.parametrize("role", sorted(UNITS))
def test_the_roles_unit_is_systemds_unit(role: str) -> None:
    unit = UNITS[role]
    copy, original = ROLES_DIR / role / "files" / unit, ROOT / "systemd" / unit
    assert copy.read_bytes() == original.read_bytes(), (
        f"ansible/roles/{role}/files/{unit} differs from systemd/{unit}: copy it over"
    )
    assert _defaults(role)[f"{role}_unit_src"] == unit


def test_the_broker_roles_dropin_is_systemds() -> None:
    copy = ROLES_DIR / "broker" / "files" / "mosquitto-citywatch.conf"
    original = ROOT / "systemd" / "mosquitto.service.d" / "citywatch.conf"
    assert copy.read_bytes() == original.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {original.relative_to(ROOT)}: copy it over"
    )
    assert _defaults("broker")["broker_dropin_src"] == copy.name


@pytest.mark.parametrize("role", ROLES)
def test_no_role_reaches_outside_itself(role: str) -> None:
    for path in (ROLES_DIR / role).rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "role_path }}/.." not in text, path
            assert "../../" not in text, path


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_a_declared_argument(role: str) -> None:
    specs = yaml.safe_load((ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert list(options) == list(_defaults(role))
    for name, option in options.items():
        assert option["description"].strip(), name
        assert name.startswith(f"{role}_"), name


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_a_readme_listing_its_variables(role: str) -> None:
    readme = (ROLES_DIR / role / "README.md").read_text(encoding="utf-8")
    for name in _defaults(role):
        assert f"| `{name}` |" in readme, name


def test_no_role_reads_another_roles_variables() -> None:
    all_roles = [p.name for p in ROLES_DIR.iterdir() if p.is_dir()]
    declared = {role: set(_defaults(role)) for role in all_roles}
    word = re.compile(r"\b[a-z][a-z0-9_]*\b")
    comment = re.compile(r"^\s*#.*$|\{#.*?#\}", re.MULTILINE | re.DOTALL)  # prose may name them
    found = []
    for role in ROLES:
        foreign = set().union(*(names for other, names in declared.items() if other != role))
        for path in (ROLES_DIR / role).rglob("*"):
            if path.is_file() and path.suffix in {".yml", ".j2"} and path.parent.name != "meta":
                code = comment.sub("", path.read_text(encoding="utf-8"))
                used = set(word.findall(code)) & foreign
                found += [f"{path.relative_to(ROLES_DIR)}: {name}" for name in sorted(used)]
    assert found == []
