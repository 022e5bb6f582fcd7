"""Real services for tests, each on a free loopback port in a temporary folder:
Mosquitto and PostgreSQL. Started by the tests themselves (nothing from the system's
own service manager is used), stopped when the test session ends."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from citywatch._services import (
    Broker,
    ServiceUnavailable,
    free_port,
    start_mosquitto,
    wait_for_port,
)

__all__ = [
    "Broker",
    "Postgres",
    "ServiceUnavailable",
    "free_port",
    "postgres_server",
    "start_mosquitto",
    "start_postgres",
    "wait_for_port",
]


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
        subprocess.run(
            [
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qAtc",
                sql,
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        """Start the server (again, after ``stop``: same port, same data)."""
        base = self.datadir.parent
        try:
            _as_user(
                self.user,
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-w",
                    "-t",
                    "30",
                    "-l",
                    str(base / "pg.log"),
                    "-o",
                    f"-p {self.port} -c listen_addresses=127.0.0.1 "
                    f"-c unix_socket_directories={base} -c fsync=off",
                    "start",
                ],
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceUnavailable(
                f"PostgreSQL did not start: {exc.stderr.strip()[-500:]}"
            ) from None
        wait_for_port(self.port)

    def stop(self) -> None:
        _as_user(
            self.user,
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
            check=False,
        )


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
        _as_user(
            user,
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceUnavailable(f"PostgreSQL did not start: {exc.stderr.strip()[-500:]}") from None
    pg = Postgres(port, datadir, bindir, user)
    pg.start()
    return pg


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    pg = start_postgres()
    try:
        yield pg
    finally:
        pg.stop()
