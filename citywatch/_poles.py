"""Street poles on fake hardware: the real ``citywatch edge run`` daemon with a scene
player for a camera, a real gpsd fed by ``gpsfake`` for a GPS hat, and a SoftHSM2
token for a secure element. Used by ``citywatch demo`` and the end-to-end tests."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from hardware import SoftHsmToken
from hardware._gpsfake import GpsFake, nmea_log

__all__ = ["EdgePole", "SceneFootage", "find_footage"]

SHARED_SMOKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "smoke"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@dataclass(frozen=True)
class SceneFootage:
    """Real pictures for scenes: someone upright, someone lying on the ground, a street."""

    upright: Path
    lying: Path
    street: Path
    """A video of people walking, or a folder of street frames."""


def find_footage(smoke: Path = SHARED_SMOKE) -> SceneFootage | None:
    """Footage from the shared labelled images (and OpenCV's street video where Debian's
    opencv-doc is installed), or None where there is none on this machine."""
    labels = smoke / "labels.csv"
    if not labels.is_file():
        return None
    import csv

    by_label: dict[str, list[Path]] = {}
    with labels.open(newline="") as f:
        for row in csv.DictReader(f):
            by_label.setdefault(row["label"], []).append(smoke / row["file"])
    try:
        upright = by_label["upright"][0]
        lying = by_label["lying_ground"][0]
    except (KeyError, IndexError):
        return None
    street = VTEST if VTEST.is_file() else upright
    return SceneFootage(upright=upright, lying=lying, street=street)


@dataclass
class EdgePole:
    """One pole's folder, daemon process and fake GPS."""

    workdir: Path
    uid: str
    lat: float
    lon: float
    token: SoftHsmToken
    softhsm_conf: Path
    timeline: list[dict[str, Any]]
    fps: float = 8.0
    gps: bool = True
    prescreen: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    gpsfake: GpsFake | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "edge.toml"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def provision(self, bundle: Path) -> None:
        """Write the hardware sections, then import the key with ``citywatch edge provision``
        (which keeps those sections and fills in the rest)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        gnss: dict[str, Any] = {"driver": "none"}
        if self.gps:
            log = self.workdir / "gps.nmea"
            log.write_text(nmea_log(self.lat, self.lon, alt=112.0,
                                    start=dt.datetime.now(dt.UTC), epochs=120))
            self.gpsfake = GpsFake.start(log, cycle=0.2, output=self.workdir / "gpsfake.log")
            gnss = {"driver": "gpsd", "host": "127.0.0.1", "port": self.gpsfake.port,
                    "max_age_s": 30.0}
        sections = {"camera": {"driver": "scene", "fps": self.fps, "timeline": self.timeline},
                    "gnss": gnss, "prescreen": self.prescreen}
        self.config.write_text(tomli_w.dumps(sections))
        pin_file = self.workdir / "token.pin"
        pin_file.write_text(self.token.pin + "\n")
        pin_file.chmod(0o600)
        self._cli("edge", "provision", "--bundle", str(bundle), "--config-out", str(self.config),
                  "--module", self.token.module, "--token-label", self.token.label,
                  "--pin-file", str(pin_file), "--state-dir", str(self.state_dir),
                  "--delete-bundle")

    def start(self, *, notify_socket: Path | None = None) -> None:
        env = {**os.environ, "SOFTHSM2_CONF": str(self.softhsm_conf)}
        if notify_socket is not None:
            env["NOTIFY_SOCKET"] = str(notify_socket)
        with open(self.workdir / "edge.log", "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "citywatch", "edge", "run", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.state_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        try:
            return (self.workdir / "edge.log").read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.stop()
        if self.gpsfake is not None:
            self.gpsfake.stop()
            self.gpsfake = None

    def _cli(self, *args: str) -> str:
        env = {**os.environ, "SOFTHSM2_CONF": str(self.softhsm_conf)}
        r = subprocess.run([sys.executable, "-m", "citywatch", *args], capture_output=True,
                           text=True, timeout=120, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"`citywatch {' '.join(args[:2])}` failed for {self.uid}: "
                               f"{(r.stderr or r.stdout).strip()[-800:]}")
        return r.stdout
