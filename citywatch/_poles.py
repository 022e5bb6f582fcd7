"""Street poles on fake hardware: the real ``citywatch edge run`` daemon with a scene
player for a camera, a real gpsd fed by ``gpsfake`` for a GPS hat, and a SoftHSM2
token for a secure element. Used by ``citywatch demo`` and the end-to-end tests.

``SceneFootage`` is what their cameras show: by default the clip that ships with
CityWatch (``citywatch/footage``: a GMDCSA24 fall, MIT licence), or a user's own
(``citywatch demo --footage PATH``, checked by ``user_footage``). Nothing outside the
repository is needed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import tomli_w

from hardware import GpsFake, SoftHsmToken, nmea_log
from hardware.camera import IMAGE_SUFFIXES

from ._footage import DEMO_FALL, fall_photo, footage_frame

__all__ = [
    "USER_FOOTAGE_HELP",
    "VIDEO_SUFFIXES",
    "EdgePole",
    "FootageError",
    "SceneFootage",
    "find_footage",
    "user_footage",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
"""Files ``user_footage`` takes for videos."""
FOLDER_FPS = 10.0
"""Images per second at which a folder of footage plays."""
CALM_SECONDS = 1.5
"""The part of the shipped clip the calm poles loop: the person still sits."""
SHIPPED_SOURCE = (
    "GMDCSA24 subject 1, fall 15 (MIT licence; citywatch/footage/README.md "
    "has the citation), shipped with CityWatch"
)


class FootageError(ValueError):
    """Footage given for the demo cannot be played; the message says what is wrong."""


@dataclass(frozen=True)
class SceneFootage:
    """What the poles' scene-player cameras show."""

    incident: Path
    """Someone falls and stays down: a video, one image, or a folder of images, played
    once with its last frame held (so the person stays down for the pre-screen's
    ``still_seconds``)."""
    calm: Path
    """Nothing dangerous, looped by the other poles: a video or a folder of images."""
    upright: Path
    """One image of a person who is not down (sitting, standing)."""
    lying: Path
    """One image of a person lying on the ground (what the incident ends with)."""
    source: str
    """Where the footage comes from, in words (the demo prints it)."""

    @property
    def street(self) -> Path:
        """What a pole that sees nobody in danger plays (``calm``)."""
        return self.calm

    def segment(self, path: Path, *, at: float = 0.0, loop: bool = True) -> dict[str, Any]:
        """A scene-player timeline segment that plays ``path``."""
        seg: dict[str, Any] = {"at": at, "play": str(path), "loop": loop}
        if path.is_dir():
            seg["media_fps"] = FOLDER_FPS
        return seg

    def incident_timeline(self, *, fall_at: float = 0.0) -> list[dict[str, Any]]:
        """The calm scene until ``fall_at`` seconds, then the incident, held at its end."""
        if fall_at <= 0:
            return [self.segment(self.incident, loop=False)]
        return [self.segment(self.calm), self.segment(self.incident, at=fall_at, loop=False)]

    def calm_timeline(self) -> list[dict[str, Any]]:
        return [self.segment(self.calm)]


def _write_jpeg(path: Path, data: bytes) -> None:
    # Whole files only, also when two runs prepare the same cache folder at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def find_footage(folder: Path | None = None) -> SceneFootage:
    """The shipped footage: the fall clip itself for the incident, and stills and the
    clip's first ``CALM_SECONDS`` (the person sitting) written as JPEGs into ``folder``
    (default: a cache folder in the system's temporary folder, named after the clip's
    hash, so that every run reuses it)."""
    if folder is None:
        digest = hashlib.sha256(DEMO_FALL.read_bytes()).hexdigest()[:12]
        folder = Path(tempfile.gettempdir()) / f"citywatch-footage-{os.getuid()}-{digest}"
    calm = folder / "calm"
    calm.mkdir(parents=True, exist_ok=True)
    frames = round(CALM_SECONDS * FOLDER_FPS)
    for k in range(frames):
        path = calm / f"{k:03d}.jpg"
        if not path.is_file():
            _write_jpeg(path, footage_frame(k / FOLDER_FPS, quality=92))
    upright, lying = folder / "sitting.jpg", folder / "lying.jpg"
    if not upright.is_file():
        _write_jpeg(upright, footage_frame(1.0, quality=92))
    if not lying.is_file():
        _write_jpeg(lying, fall_photo())
    return SceneFootage(
        incident=DEMO_FALL, calm=calm, upright=upright, lying=lying, source=SHIPPED_SOURCE
    )


# -- a user's own footage -----------------------------------------------------------------

USER_FOOTAGE_HELP = (
    "PATH is what the incident pole's camera sees, played once with its last frame held: "
    "a video file, one image, or a folder holding one video or images (played in name "
    f"order at {FOLDER_FPS:g} fps). A subfolder calm/ (images or one video), if present, "
    "is what the other poles see, looped; otherwise they see the shipped clip's first "
    f"{CALM_SECONDS:g} s (a person sitting)."
)


def _check_image(path: Path) -> Any:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FootageError(f"footage image {path} cannot be read (not an image, or damaged)")
    return image


def _last_video_frame(path: Path) -> Any:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise FootageError(
                f"footage video {path} cannot be opened (format or codec OpenCV cannot read)"
            )
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not (fps and fps > 0):
            raise FootageError(f"footage video {path} does not say its frame rate")
        last = None
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            last = frame
    finally:
        cap.release()
    if last is None:
        raise FootageError(f"footage video {path} has no frame that decodes")
    return last


def _medium(path: Path, what: str) -> tuple[Path, Any]:
    """``path`` checked as playable: (what to play, its last frame)."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return path, _check_image(path)
        if suffix in VIDEO_SUFFIXES:
            return path, _last_video_frame(path)
        raise FootageError(
            f"{what} {path} is neither a video ({', '.join(VIDEO_SUFFIXES)}) "
            f"nor an image ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if not path.is_dir():
        raise FootageError(f"{what} {path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if images and videos:
        raise FootageError(
            f"{what} {path} holds both images and videos: put either images "
            "(played in name order) or one video in it"
        )
    if len(videos) > 1:
        raise FootageError(
            f"{what} {path} holds {len(videos)} videos "
            f"({', '.join(v.name for v in videos[:4])}): put one in it"
        )
    if videos:
        return videos[0], _last_video_frame(videos[0])
    if not images:
        raise FootageError(
            f"{what} {path} holds no video ({', '.join(VIDEO_SUFFIXES)}) and "
            f"no image ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    last = None
    for image in images:  # every one, so that a damaged file fails now, not mid-scene
        last = _check_image(image)
    return path, last


def user_footage(path: Path, folder: Path) -> SceneFootage:
    """A user's own footage (``USER_FOOTAGE_HELP``), checked: ``FootageError`` saying what
    is wrong. Stills it needs are written into ``folder``."""
    path = path.expanduser().resolve()
    incident, last = _medium(path, "--footage")
    shipped = find_footage(folder / "shipped")
    calm, upright = shipped.calm, shipped.upright
    if path.is_dir() and (path / "calm").exists():
        calm, _ = _medium(path / "calm", "--footage calm")
        if calm.is_file() and calm.suffix.lower() in IMAGE_SUFFIXES:
            upright = calm
    folder.mkdir(parents=True, exist_ok=True)
    lying = folder / "incident-last-frame.jpg"
    ok, data = cv2.imencode(".jpg", last, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise FootageError(f"the last frame of {incident} cannot be encoded as a JPEG")
    _write_jpeg(lying, bytes(data.tobytes()))
    return SceneFootage(
        incident=incident,
        calm=calm,
        upright=upright,
        lying=lying,
        source=f"your footage, {incident}",
    )


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
            log.write_text(
                nmea_log(self.lat, self.lon, alt=112.0, start=dt.datetime.now(dt.UTC), epochs=120)
            )
            self.gpsfake = GpsFake.start(log, cycle=0.2, output=self.workdir / "gpsfake.log")
            gnss = {
                "driver": "gpsd",
                "host": "127.0.0.1",
                "port": self.gpsfake.port,
                "max_age_s": 30.0,
            }
        sections = {
            "camera": {"driver": "scene", "fps": self.fps, "timeline": self.timeline},
            "gnss": gnss,
            "prescreen": self.prescreen,
        }
        self.config.write_text(tomli_w.dumps(sections))
        pin_file = self.workdir / "token.pin"
        pin_file.write_text(self.token.pin + "\n")
        pin_file.chmod(0o600)
        self._cli(
            "edge",
            "provision",
            "--bundle",
            str(bundle),
            "--config-out",
            str(self.config),
            "--module",
            self.token.module,
            "--token-label",
            self.token.label,
            "--pin-file",
            str(pin_file),
            "--state-dir",
            str(self.state_dir),
            "--delete-bundle",
        )

    def start(self, *, notify_socket: Path | None = None) -> None:
        env = {**os.environ, "SOFTHSM2_CONF": str(self.softhsm_conf)}
        if notify_socket is not None:
            env["NOTIFY_SOCKET"] = str(notify_socket)
        with open(self.workdir / "edge.log", "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "citywatch", "edge", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

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
        r = subprocess.run(
            [sys.executable, "-m", "citywatch", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"`citywatch {' '.join(args[:2])}` failed for {self.uid}: "
                f"{(r.stderr or r.stdout).strip()[-800:]}"
            )
        return r.stdout
