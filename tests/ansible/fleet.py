"""A fake fleet for the Ansible playbooks: every host is a folder on this machine.

Each host of the inventory runs through Ansible's local connection with its own root
folder (``citywatch_root``), and with systemd, apt and user management switched off
(``citywatch_manage_*: false``). What the roles do is real otherwise: files, venvs
built by pip from a wheelhouse, SoftHSM2 tokens, OpenSSL certificates, the server's
registry (the project's own ``citywatch server``), the broker's ACL.

A release is a wheelhouse holding one small ``citywatch`` wheel whose console script
runs the project's own ``citywatch`` (``python -m citywatch``) with the project's
interpreter: the release machinery (venvs, symlinks, rollback) is what is under test, and
the commands the roles call (``server device add``, ``edge provision``, ``edge status``
...) are the real ones.
"""

from __future__ import annotations

import base64
import csv
import grp
import hashlib
import io
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import free_port

PROJECT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = PROJECT / "ansible"
VENV_BIN = Path(sys.executable).parent

SERVER = "cw-server"
ENC = "cw-enc"
ZONES = {"north": ["pole-n1", "pole-n2", "pole-n3"], "south": ["pole-s1", "pole-s2", "pole-s3"]}
POLES = [pole for poles in ZONES.values() for pole in poles]
"""Inventory order, which is the order rollout.yml's batches take the poles in."""
SYSTEM_SITE_POLE = POLES[-2]
"""Its release venv sees the system's site-packages, as a picamera2 pole's does."""

_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+"
    r"rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.M,
)


def build_release_wheel(wheelhouse: Path, version: str) -> Path:
    """Write ``citywatch-<version>-py3-none-any.whl`` into ``wheelhouse``: a console
    script ``citywatch`` that runs the project's ``citywatch`` with this interpreter."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    dist = f"citywatch-{version}.dist-info"
    module = (
        '"""The fake fleet\'s citywatch release (tests/ansible/fleet.py)."""\n'
        "import os\nimport sys\n\n"
        f"RELEASE = {version!r}\nPYTHON = {sys.executable!r}\n\n\n"
        "def main():\n"
        "    os.execv(PYTHON, [PYTHON, '-m', 'citywatch', *sys.argv[1:]])\n"
    )
    files = {
        "citywatch_fleet_release.py": module,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: citywatch\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: fleet\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\ncitywatch = citywatch_fleet_release:main\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        writer.writerow([name, f"sha256={digest.decode()}", len(text.encode())])
    writer.writerow([f"{dist}/RECORD", "", ""])
    path = wheelhouse / f"citywatch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
        whl.writestr(f"{dist}/RECORD", record.getvalue())
    return path


TOKEN_KEYS_SCRIPT = """
import json, sys, pkcs11
from pkcs11 import Attribute, ObjectClass
token = pkcs11.lib(sys.argv[1]).get_token(token_label=(sys.argv[3:] or ["citywatch-edge"])[0])
with token.open(user_pin=open(sys.argv[2]).read().strip()) as session:
    keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
    print(json.dumps([{"label": k[Attribute.LABEL], "extractable": k[Attribute.EXTRACTABLE],
                       "sensitive": k[Attribute.SENSITIVE]} for k in keys]))
"""
"""``python -c`` it with a pole's PKCS#11 module and PIN file (and its SOFTHSM2_CONF):
every secret key in the pole's token, with its label and protection; a third argument
names another token (the server's, the ENC's). No single quote in it, so that a shell on
the pole can take it quoted."""


def softhsm_module() -> str | None:
    from hardware import find_softhsm_module

    return find_softhsm_module()


@dataclass(frozen=True)
class Recap:
    """One host's line of the PLAY RECAP."""

    ok: int
    changed: int
    unreachable: int
    failed: int
    skipped: int
    rescued: int
    ignored: int


@dataclass(frozen=True)
class PlaybookRun:
    """An ansible-playbook run: its exit status, output and recap per host."""

    returncode: int
    output: str
    recap: dict[str, Recap]

    def changed_hosts(self) -> dict[str, int]:
        return {host: r.changed for host, r in self.recap.items() if r.changed}

    def failed_hosts(self) -> set[str]:
        return {host for host, r in self.recap.items() if r.failed or r.unreachable}


class Fleet:
    """A fleet of host folders under ``base`` and its inventory."""

    def __init__(
        self,
        base: Path,
        module: str,
        *,
        broker_port: int = 8883,
        scene_image: Path | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self.base = base
        self.hosts_dir = base / "hosts"
        self.dist = base / "dist"
        self.inventory = base / "inventory.yml"
        self.softhsm_module = module
        self.broker_port = broker_port
        """The broker's port, in its listener and in every pole's bundle."""
        self.scene_image = scene_image
        """What every pole's camera sees: the scene player holding this image."""
        self.models_dir = models_dir
        """Where the poles' pre-screen finds its models (the project's own)."""
        self.admin_port = free_port()
        """The server's admin API (and /healthz), on loopback."""
        self.enc_port = free_port()
        """The ENC's HTTPS listener, on loopback."""
        self.logs: list[tuple[str, float, float]] = []

    def root(self, host: str) -> Path:
        return self.hosts_dir / host

    def write_inventory(self) -> None:
        # JSON is YAML: no YAML writer needed.
        self.inventory.write_text(json.dumps(self.inventory_data(), indent=2))

    def inventory_data(self, zones: dict[str, list[str]] = ZONES) -> dict[str, object]:
        """The fleet's inventory: every host a folder reached by the local connection."""
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        # Modules need only the standard library; the system's interpreter starts them
        # faster than the project's venv (each task on each host is one start).
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        local = {"ansible_connection": "local", "ansible_python_interpreter": python}

        def host(name: str, **extra: object) -> dict[str, object]:
            self.root(name).mkdir(parents=True, exist_ok=True)
            return {**local, "citywatch_root": str(self.root(name)), **extra}

        zone_groups = {
            f"zone_{zone}": {
                "vars": {"edge_zone": zone},
                "hosts": {
                    pole: host(
                        pole,
                        edge_lat=50.06 + 0.001 * i,
                        edge_lon=19.93 + 0.001 * i,
                        **(
                            {"citywatch_system_site_packages": True}
                            if pole == SYSTEM_SITE_POLE
                            else {}
                        ),
                    )
                    for i, pole in enumerate(poles)
                },
            }
            for zone, poles in zones.items()
        }
        inventory: dict[str, object] = {
            "all": {
                "vars": {
                    "citywatch_release_version": "1.0.0",
                    "citywatch_release_wheelhouse": (
                        f"{self.dist}/{{{{ citywatch_release_version }}}}"
                    ),
                    "citywatch_manage_services": False,
                    "citywatch_manage_packages": False,
                    "citywatch_manage_users": False,
                    "citywatch_become": False,
                    "citywatch_user": user,
                    "citywatch_group": group,
                    "broker_mosquitto_group": group,
                    "release_python": sys.executable,
                    "release_venv_with_pip": False,
                    "keystore_softhsm2_module": self.softhsm_module,
                    "edge_manage_models": False,
                    "edge_health_retries": 2,
                    # No daemon runs: the tests write its status file, with a timestamp
                    # that must not go stale while the rollout runs.
                    "edge_health_args": ["--max-age", "86400", "--require-broker"],
                    "edge_health_delay": 0,
                    "base_chrony_servers": ["ntp1.city.example"],
                    "server_broker_device_host": "localhost",
                    "broker_port": self.broker_port,
                    "server_broker_port": self.broker_port,
                    "server_broker_device_port": self.broker_port,
                    **self.pole_settings(),
                },
                "children": {
                    "citywatch_servers": {
                        "hosts": {SERVER: host(SERVER, server_admin_port=self.admin_port)}
                    },
                    "citywatch_enc": {
                        "hosts": {
                            ENC: host(
                                ENC, enc_listen_host="127.0.0.1", enc_listen_port=self.enc_port
                            )
                        }
                    },
                    "citywatch_poles": {"children": {"district_test": {"children": zone_groups}}},
                },
            }
        }
        return inventory

    def pole_settings(self) -> dict[str, object]:
        """The inventory's edge_* variables the edge role writes each pole's config from:
        the scene player in place of the camera, no GNSS receiver, the project's models,
        one privacy mask."""
        camera: dict[str, object] = (
            {
                "driver": "scene",
                "fps": 2.0,
                "timeline": [{"at": 0.0, "play": str(self.scene_image)}],
            }
            if self.scene_image is not None
            else {"driver": "opencv", "source": "/dev/video0"}
        )  # checked, never opened
        prescreen: dict[str, object] = {"cooldown_seconds": 60.0}
        if self.models_dir is not None:
            prescreen["model"] = {"models_dir": str(self.models_dir), "threads": 1}
        return {
            "edge_camera": camera,
            "edge_gnss": {"driver": "none"},
            "edge_prescreen": prescreen,
            "edge_privacy_masks": [
                {
                    "name": "windows, house no. 12",
                    "points": [[0.62, 0.05], [0.98, 0.05], [0.98, 0.4], [0.62, 0.4]],
                }
            ],
            "edge_outbox": {"max_incidents": 50},
        }

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
                "ANSIBLE_LOCAL_TEMP": str(self.base / "ansible-local"),
                "ANSIBLE_HOME": str(self.base / "ansible-home"),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "false",
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        return env

    def run(self, playbook: str, *args: str, timeout: float = 900) -> PlaybookRun:
        """Run ``ansible/<playbook>`` against the fleet; never raises on failure."""
        import resource
        import time

        command = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory), playbook, *args]
        start = time.monotonic()
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            command,
            cwd=ANSIBLE_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
        self.logs.append((" ".join([playbook, *args]), time.monotonic() - start, cpu_s))
        output = done.stdout + done.stderr
        recap = {
            m["host"]: Recap(**{k: int(v) for k, v in m.groupdict().items() if k != "host"})
            for m in _RECAP.finditer(output)
        }
        return PlaybookRun(done.returncode, output, recap)

    def current_release(self, host: str) -> str | None:
        link = self.root(host) / "opt/citywatch/current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def installed_releases(self, host: str) -> list[str]:
        releases = self.root(host) / "opt/citywatch/releases"
        return sorted(p.name for p in releases.iterdir()) if releases.is_dir() else []

    def set_health(self, host: str, healthy: bool) -> None:
        """What the daemon writes to its status file: recently when it runs and is
        connected to the broker; long ago when it is stopped or stuck."""
        import time

        now_ms = int(time.time() * 1000)
        state = self.root(host) / "var/lib/citywatch/edge"
        state.mkdir(parents=True, exist_ok=True)
        status = {
            "version": 1,
            "updated_at": now_ms if healthy else 1,
            "started_at": now_ms if healthy else 1,
            "pid": 4242,
            "uid": host,
            "broker": {"connected": healthy, "host": "localhost", "port": 8883},
        }
        (state / "status.json").write_text(json.dumps(status))

    def tree_digest(self) -> str:
        """SHA-256 over every path, its type, mode, owner, link target and content."""
        digest = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(self.hosts_dir):
            dirnames.sort()
            for name in sorted([*dirnames, *filenames]):
                path = Path(dirpath, name)
                st = path.lstat()
                digest.update(
                    f"{path.relative_to(self.hosts_dir)}\0{st.st_mode}\0"
                    f"{st.st_uid}:{st.st_gid}\0".encode()
                )
                if path.is_symlink():
                    digest.update(os.readlink(path).encode())
                elif path.name == "token.object":
                    # A SoftHSM2 token's first 8 bytes count its updates, and every user
                    # login is one: reading the server's registry (to write the broker's
                    # ACL, in check mode too) opens its master key with the token.
                    digest.update(path.read_bytes()[8:])
                elif path.is_file():
                    digest.update(path.read_bytes())
        return digest.hexdigest()


def host_env(fleet: Fleet, host: str) -> dict[str, str]:
    """The environment the host's units give its services: SoftHSM2's configuration, where
    the roles put the host's tokens (the pole's device key, the server's and the ENC's
    wrapping keys)."""
    return {**os.environ, "SOFTHSM2_CONF": str(fleet.root(host) / "etc/citywatch/softhsm2.conf")}


def registry(fleet: Fleet) -> list[dict[str, object]]:
    """The server's registry, read with the project's real CLI (the server's master key
    is in its token)."""
    done = subprocess.run(
        [
            str(VENV_BIN / "citywatch"),
            "server",
            "device",
            "list",
            "--json",
            "--config",
            str(fleet.root(SERVER) / "etc/citywatch/server.toml"),
        ],
        env=host_env(fleet, SERVER),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return list(json.loads(done.stdout))


def syntax_check(playbooks: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--syntax-check", *playbooks],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def have_tools() -> str | None:
    """Why the fake fleet cannot run here, or None."""
    for tool in ("ansible-playbook",):
        if not (VENV_BIN / tool).exists():
            return f"{tool} is not in the venv: pip install -e '.[dev]'"
    for tool in ("openssl", "softhsm2-util"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    return None
