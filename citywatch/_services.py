"""Local services that the demo and the tests start themselves, on free loopback
ports: a Mosquitto broker (with TCP_NODELAY on its listener)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hardware._ports import loopback_port

__all__ = ["Broker", "ServiceUnavailable", "free_port", "start_mosquitto", "wait_for_port"]


class ServiceUnavailable(Exception):
    """The service cannot run on this machine; the message says why."""


def free_port() -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range
    (``hardware.loopback_port``, which the fake gpsd uses too)."""
    try:
        return loopback_port()
    except OSError as exc:
        raise ServiceUnavailable(str(exc)) from None


def wait_for_port(port: int, *, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


# -- Mosquitto -----------------------------------------------------------------------


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_mosquitto(
    workdir: Path,
    *,
    port: int | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    extra: str = "",
) -> Broker:
    """A broker on a free loopback port; ``tls`` = (CA, certificate, key) PEM files makes
    its listener TLS-only; ``extra`` is appended to its configuration file (lines)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        raise ServiceUnavailable("mosquitto is not installed (scripts/setup.sh installs it)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / f"mosquitto-{port}.conf"
    log = workdir / f"mosquitto-{port}.log"
    tls_lines = (
        ""
        if tls is None
        else (f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\ntls_version tlsv1.2\n")
    )
    if tls is not None and os.geteuid() == 0:
        # Started as root, mosquitto drops to its own user before reading the key files,
        # which live in this user's private temporary folders: keep the user.
        tls_lines = f"user {pwd.getpwuid(0).pw_name}\n" + tls_lines
    conf.write_text(
        f"listener {port} 127.0.0.1\n" + tls_lines + "allow_anonymous true\n"
        "set_tcp_nodelay true\n"
        "persistence false\n"
        "max_packet_size 4194304\n"
        "log_dest stderr\n" + extra
    )
    user = ["-c", str(conf)]
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, *user], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        raise ServiceUnavailable(f"mosquitto did not start: {log.read_text()[-2000:]}") from None
    return Broker("127.0.0.1", port, proc, log)
