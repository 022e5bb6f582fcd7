"""A Debian bookworm container with systemd as PID 1 (``systemd-nspawn --boot``), for
running CityWatch's units under a real service manager.

The root is made once by debootstrap from the mirror apt is configured with and cached
by tests/support/rootfs.py (under ``$CITYWATCH_TEST_CACHE``, default
/var/tmp/citywatch-tests), keyed by its package list; each test boots a copy of it.
Needs root, ``debootstrap`` and ``systemd-nspawn`` (package systemd-container, installed
by scripts/setup.sh).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.rootfs import RootSpec, build_root
from tests.support.rootfs import missing_tools as _missing_root_tools
from tests.support.rootfs import run as _run

__all__ = ["PACKAGES", "Container", "build_image", "missing_tools"]

PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "softhsm2",
    "mosquitto",
    "libsystemd0",
]
"""systemd to boot; Python for the release venv; SoftHSM2 for the server's token; the
broker for the server and the pole."""
IMAGE_FORMAT = 1


def missing_tools() -> str | None:
    """Why a container cannot be booted here, or None."""
    return _missing_root_tools(
        ("debootstrap", "systemd-nspawn", "machinectl"), why_root="booting a container needs root"
    )


def _finish(root: Path) -> None:
    # The packaged broker is started by the test when it wants one, on its own config.
    for unit in ("mosquitto.service",):
        link = root / "etc/systemd/system/multi-user.target.wants" / unit
        link.unlink(missing_ok=True)
    (root / "etc/hostname").write_text("citywatch-test\n")


def build_image() -> Path:
    """The cached bookworm root with systemd, made if missing."""
    return build_root(RootSpec("systemd", tuple(PACKAGES), revision=IMAGE_FORMAT), _finish)


@dataclass
class Container:
    """One booted copy of the image. ``run()`` executes a command inside it (through
    ``systemd-run --machine``-free ``nsenter`` into PID 1's namespaces)."""

    name: str
    root: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root.with_name(self.name + ".console.log")

    @classmethod
    def copy_of(cls, image: Path, name: str, where: Path) -> Container:
        root = where / name
        _run(["cp", "-a", "--reflink=auto", str(image), str(root)], timeout=600)
        return cls(name=name, root=root)

    def boot(self, timeout: float = 120) -> None:
        """Boot with systemd as PID 1 and wait for multi-user.target."""
        log = self.log_path.open("wb")
        # --register=no: no machined needed on this machine; --keep-unit: no scope unit.
        self.process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                f"--directory={self.root}",
                f"--machine={self.name}",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=pipe",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the container exited {self.process.returncode}:\n{self.console()[-3000:]}"
                )
            if self.leader() is not None:
                state = self.run("systemctl", "is-system-running", check=False, timeout=20)
                if state.strip() in ("running", "degraded"):
                    return
            time.sleep(1)
        raise RuntimeError(
            f"the container did not reach multi-user.target within "
            f"{timeout:.0f} s:\n{self.console()[-3000:]}"
        )

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def leader(self) -> int | None:
        """The container's PID 1 as this machine sees it (nspawn's child)."""
        if self.process is None or self.process.poll() is not None:
            return None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = children.read_text().split()
        except FileNotFoundError:
            return None
        if not pids:
            return None
        try:
            comm = Path(f"/proc/{pids[0]}/comm").read_text().strip()
        except FileNotFoundError:
            return None
        return int(pids[0]) if comm == "systemd" else None

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input_text: str | None = None
    ) -> str:
        """Run a command inside the booted container; its stdout (stderr appended on
        failure)."""
        pid = self.leader()
        if pid is None:
            raise RuntimeError(f"{self.name} is not running")
        done = subprocess.run(
            [
                "nsenter",
                f"--target={pid}",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--cgroup",
                "--root",
                "--wd",
                "/usr/bin/env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input_text,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in {self.name} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        return done.stdout

    def terminate(self) -> None:
        """Power off (bounded), then kill what is left by pid. Safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # SIGRTMIN+4 asks systemd for a clean poweroff (what machinectl poweroff sends).
            with contextlib.suppress(ProcessLookupError, TypeError):
                leader = self.leader()
                if leader is not None:
                    os.kill(leader, signal.SIGRTMIN + 4)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.process = None
