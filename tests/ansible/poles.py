"""Street poles that Ansible reaches over SSH: each a Debian bookworm root filesystem
(made by debootstrap from the mirror apt is configured with) in a network namespace of
its own, with its own sshd, hostname, process tree and address.

What a pole image starts with is what a freshly imaged Raspberry Pi OS Lite has and the
playbooks expect (``IMAGE_PACKAGES``), plus a first user, ``pilot``, with the test's SSH
key and sudo. The packages the roles install are in the image's apt cache, downloaded
when the image was made: the poles have no route to a mirror, and ``apt`` installs them
from the cache during site.yml (dpkg and maintainer scripts run for real; services do
not start: there is no systemd in a pole, and ``policy-rc.d`` says so).

Needs root (network namespaces, chroot, mounts), ``debootstrap``, ``ip`` and ``ssh``.
Images are made and cached by tests/support/rootfs.py (under ``$CITYWATCH_TEST_CACHE``,
default /var/tmp/citywatch-tests), one per package list, so a second run does not
download them again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.rootfs import SUITE, RootSpec, apt_mirror, build_root, cache_dir
from tests.support.rootfs import missing_tools as _missing_root_tools
from tests.support.rootfs import run as _run

__all__ = [
    "PILOT_USER",
    "SUITE",
    "Pole",
    "apt_mirror",
    "build_image",
    "cache_dir",
    "missing_tools",
    "role_packages",
]

PROJECT = Path(__file__).resolve().parents[2]
ROLES = PROJECT / "ansible" / "roles"

IMAGE_PACKAGES = ["openssh-server", "python3", "python3-apt", "sudo", "iproute2"]
"""On every pole before Ansible first reaches it (Raspberry Pi OS Lite has them)."""
ROLE_PACKAGE_LISTS = {
    "base": "base_packages",
    "gpsd": "gpsd_packages",
    "keystore": "keystore_softhsm2_packages",
    "release": "release_packages",
}
"""The pole roles' package lists (their defaults), downloaded into the image's cache."""
IMAGE_FORMAT = 2
"""Bumped whenever the way an image is made changes, so that cached images are remade."""

PILOT_USER = "pilot"
SUBNET = "198.18"
"""RFC 2544's benchmarking range: addresses of this test's own poles, nothing else's."""


def role_packages() -> list[str]:
    """Every package the pole roles install, read from their defaults."""
    packages: list[str] = []
    for role, var in ROLE_PACKAGE_LISTS.items():
        defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
        packages += [p for p in defaults.get(var, []) if p not in packages]
    return packages


def missing_tools() -> str | None:
    """Why poles cannot be made here, or None."""
    why = _missing_root_tools(
        ("debootstrap", "ip", "unshare", "ssh", "ssh-keygen"),
        why_root="poles need root (network namespaces, chroot, mounts)",
    )
    if why:
        return why
    probe = f"cwprobe{os.getpid()}"
    done = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return f"cannot make a network namespace here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def _download_role_packages(root: Path) -> None:
    # As in container images: maintainer scripts start no service in a pole.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    _run(["chroot", str(root), "apt-get", "-q", "update"], env=env)
    _run(
        [
            "chroot",
            str(root),
            "apt-get",
            "-q",
            "-y",
            "--download-only",
            "install",
            *role_packages(),
        ],
        env=env,
    )
    # No host keys in the image: each pole makes its own.
    for hostkey in (root / "etc/ssh").glob("ssh_host_*"):
        hostkey.unlink()


def build_image() -> Path:
    """The cached pole image for the current package lists, made if missing. Raises
    RuntimeError with debootstrap's or apt's words when it cannot be made."""
    spec = RootSpec(
        "pole", tuple(IMAGE_PACKAGES), revision=IMAGE_FORMAT, extra_key=tuple(role_packages())
    )
    return build_root(spec, _download_role_packages, timeout=1200)


@dataclass
class Pole:
    """One pole: its root folder (a copy of the image), network namespace and sshd."""

    name: str
    index: int
    root: Path
    tag: str = field(default_factory=lambda: f"cw{os.getpid() % 100000}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def netns(self) -> str:
        return f"{self.tag}p{self.index}"

    @property
    def veth(self) -> str:
        return f"{self.tag}h{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}.2"

    @property
    def host_address(self) -> str:
        return f"{SUBNET}.{self.index}.1"

    def chroot(self, *argv: str, timeout: float = 120) -> str:
        return _run(
            ["chroot", str(self.root), *argv],
            timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )

    def make(self, image: Path, authorized_key: str) -> None:
        """Copy the image and make the pole's own: host keys, the first user, a fresh
        apt cache stamp (the image's lists are as new as the image)."""
        shutil.rmtree(self.root, ignore_errors=True)
        _run(["cp", "-a", "--reflink=auto", str(image), str(self.root)])
        (self.root / "etc/hostname").write_text(f"{self.name}\n")
        hosts = self.root / "etc/hosts"
        hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.name}\n")
        self.chroot("ssh-keygen", "-A")
        self.chroot(
            "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", PILOT_USER
        )
        ssh_dir = self.root / "home" / PILOT_USER / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(authorized_key + "\n")
        self.chroot("chown", "-R", f"{PILOT_USER}:{PILOT_USER}", f"/home/{PILOT_USER}/.ssh")
        sudoers = self.root / "etc/sudoers.d/010-pilot"
        sudoers.write_text(f"{PILOT_USER} ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        stamp = self.root / "var/lib/apt/periodic/update-success-stamp"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        os.utime(self.root / "var/lib/apt/lists")

    def host_key_line(self) -> str:
        """The pole's ED25519 host key as a known_hosts line."""
        key = (self.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        return f"{self.address} {key[0]} {key[1]}"

    def start(self) -> None:
        """The namespace, a veth pair to this machine, and sshd as the first process of
        the pole's own PID, mount and UTS namespaces, chrooted into its root."""
        # A run that was killed leaves its veth (ours: named cw...) with this address.
        stale = _run(["ip", "-o", "addr", "show", "to", f"{self.host_address}/30"])
        for line in stale.splitlines():
            name = line.split()[1].split("@")[0]
            if name.startswith("cw"):
                subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        _run(["ip", "netns", "add", self.netns])
        _run(
            [
                "ip",
                "link",
                "add",
                self.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.netns,
            ]
        )
        _run(["ip", "addr", "add", f"{self.host_address}/30", "dev", self.veth])
        _run(["ip", "link", "set", self.veth, "up"])
        _run(["ip", "-n", self.netns, "addr", "add", f"{self.address}/30", "dev", "eth0"])
        _run(["ip", "-n", self.netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        root = str(self.root)
        inside = (
            f"hostname {self.name} && mount --make-rprivate / && "
            f"mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && "
            f"mount -t sysfs sysfs {root}/sys && "
            f"mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs {root}/run && "
            f"mkdir -p {root}/run/sshd && "
            f"exec chroot {root} /usr/sbin/sshd -D -e"
        )
        log = open(self.root.with_name(self.name + ".sshd.log"), "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "unshare",
                "--mount",
                "--pid",
                "--uts",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                inside,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, 22), timeout=1).close()
                return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(
            f"sshd of {self.name} did not come up: "
            f"{self.root.with_name(self.name + '.sshd.log').read_text()[-2000:]}"
        )

    def sshd_pid(self) -> int | None:
        """The pole's sshd (the first process of its PID namespace), as this machine
        sees it."""
        if self.process is None or self.process.poll() is not None:
            return None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = children.read_text().split()
        except FileNotFoundError:
            return None
        return int(pids[0]) if pids else None

    def reload_sshd(self) -> None:
        """What ``systemctl reload ssh`` does on a pole: sshd re-reads its config."""
        pid = self.sshd_pid()
        assert pid is not None, f"sshd of {self.name} is not running"
        os.kill(pid, signal.SIGHUP)

    def stop(self) -> None:
        """End the pole's processes (the whole PID namespace goes with its first
        process) and remove its namespace and veth pair. Safe to call twice."""
        pid = self.sshd_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
