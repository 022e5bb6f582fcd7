"""Real services for tests, each on a free loopback port in a temporary folder:
Mosquitto and PostgreSQL. Started by the tests themselves (nothing from the system's
own service manager is used), stopped when the test session ends."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ServiceUnavailable(Exception):
    """The service cannot run on this machine; the message says why (tests skip)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def start_mosquitto(workdir: Path, *, port: int | None = None) -> Broker:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        raise ServiceUnavailable("mosquitto is not installed (scripts/setup.sh installs it)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / f"mosquitto-{port}.conf"
    log = workdir / f"mosquitto-{port}.log"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "set_tcp_nodelay true\n"
        "persistence false\n"
        "max_packet_size 4194304\n"
        "log_dest stderr\n"
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


# -- PostgreSQL ----------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    datadir: Path
    bindir: Path
    user: str

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        """A fresh database; returns its SQLAlchemy URL."""
        self._psql(f'DROP DATABASE IF EXISTS "{name}"')
        self._psql(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _psql(self, sql: str) -> None:
        subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "-d", "postgres", "-qAtc", sql],
                       check=True, capture_output=True)

    def stop(self) -> None:
        _as_user(self.user, [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                             "-w", "stop"], check=False)


def _pg_bindir() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted(root.glob("*/bin/initdb")) if root.exists() else []
    if not versions:
        raise ServiceUnavailable("PostgreSQL is not installed (scripts/setup.sh installs it)")
    return versions[-1].parent


def _as_user(user: str, cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    # PostgreSQL refuses to run as root: run its tools as the 'postgres' user then.
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def start_postgres(workdir: Path | None = None) -> Postgres:
    bindir = _pg_bindir()
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="citywatch-pg-", dir=workdir))
    datadir = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, user)
        os.chmod(base, 0o755)
    port = free_port()
    try:
        _as_user(user, [str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
        _as_user(user, [str(bindir / "pg_ctl"), "-D", str(datadir), "-w", "-t", "30",
                        "-l", str(base / "pg.log"),
                        "-o", f"-p {port} -c listen_addresses=127.0.0.1 "
                              f"-c unix_socket_directories={base} -c fsync=off",
                        "start"])
    except subprocess.CalledProcessError as exc:
        raise ServiceUnavailable(f"PostgreSQL did not start: {exc.stderr.strip()[-500:]}") from None
    wait_for_port(port)
    return Postgres(port, datadir, bindir, user)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    pg = start_postgres()
    try:
        yield pg
    finally:
        pg.stop()
