"""Another local user of the demo's machine reads nothing of it: ``citywatch demo --dir``
leaves its folder 0700 and every database, key, log and bundle in it readable by its
own user only (before: server.db and the ENC's database, photos in them, were 0644 in
0755 folders)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a whole district: broker, server, ENC and a simulated pole
def test_demo_dir_is_private_to_its_user(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (scripts/setup.sh installs it)")
    workdir = tmp_path / "demo"
    workdir.mkdir(mode=0o755)
    workdir.chmod(0o755)  # as a user's own folder would be
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "citywatch.cli",
            "demo",
            "--once",
            "--poles",
            "simulated",
            "--devices",
            "1",
            "--timeout",
            "120",
            "--dir",
            str(workdir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    databases = 0
    for path in workdir.rglob("*"):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.relative_to(workdir)}: {oct(mode)}"
        databases += path.suffix in (".db", ".sqlite3")
    assert databases >= 2  # the server's and the ENC's
