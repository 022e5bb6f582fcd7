"""``citywatch demo``: a demo district on one machine.

It starts a Mosquitto broker, the trusted server (SQLite, its real photo check), the ENC
with its operators' dashboard, and a handful of street poles: real ``citywatch edge run``
daemons on fake hardware whose scene-player cameras play footage (the GMDCSA24 fall clip
that ships in ``citywatch/footage``, or ``--footage PATH``), with the real pre-screen
model. It opens a monitoring window for the district's zone; one pole's camera sees a
person fall and stay down, and the alert travels: pre-screen, contact phase to the
server, the server's own look at the photo, ENC notification, the alert on the
dashboard. Ctrl-C stops everything cleanly.

``--poles simulated`` replaces the daemons by in-process protocol clients: no camera and
no pre-screen, a scripted report carrying a real photo from the footage, which the
server's photo check judges as it would any other.

``--once`` runs the same scenario headless until the first alert is stored at the ENC,
prints one JSON object (incident id, the time spent in each phase, which poles ran and
the footage) and exits 0, or exits 1 with the reason when no alert arrives in time.
Footage that cannot be played is refused before anything starts (exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from rich.console import Console
from rich.markup import escape

from ._poles import (
    USER_FOOTAGE_HELP,
    EdgePole,
    FootageError,
    SceneFootage,
    find_footage,
    user_footage,
)
from ._services import Broker, ServiceUnavailable, free_port, start_mosquitto
from ._simdevice import wall_clock_ms

__all__ = ["DemoDistrict", "DemoFailed", "register"]

ZONE = "old-town"
# Poles along a street in the demo city (lat, lon).
POLES = [
    (52.24970, 21.01220),
    (52.24905, 21.01305),
    (52.24840, 21.01390),
    (52.24775, 21.01475),
    (52.24710, 21.01560),
    (52.24645, 21.01645),
]


class DemoFailed(Exception):
    """The demo could not start or no alert arrived; the message says why."""


class _BadFootage(DemoFailed):
    """The footage given cannot be played (nothing was started)."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--once",
        action="store_true",
        help="headless: stop at the first alert stored at the ENC, print JSON",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=4,
        choices=range(1, len(POLES) + 1),
        metavar=f"1..{len(POLES)}",
        help="how many poles (default 4)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="working folder (default: a new temporary folder, removed after)",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the alert (default 180)"
    )
    parser.add_argument(
        "--poles",
        choices=("auto", "edge", "simulated"),
        default="auto",
        help="edge: real `citywatch edge run` daemons on fake hardware (scene "
        "player, gpsd through gpsfake, SoftHSM2) with the pre-screen "
        "model; simulated: in-process protocol clients that send a "
        "scripted report with a real photo from the footage; auto "
        "(default): edge where gpsfake is installed",
    )
    parser.add_argument(
        "--footage",
        type=Path,
        default=None,
        metavar="PATH",
        help="play your own footage instead of the shipped GMDCSA24 clip. "
        + USER_FOOTAGE_HELP.replace("%", "%%"),
    )
    parser.set_defaults(func=_run_cmd)


def _run_cmd(args: argparse.Namespace) -> int:
    console = Console(stderr=args.once, quiet=args.once)
    workdir = args.dir
    temporary = workdir is None
    if temporary:
        workdir = Path(tempfile.mkdtemp(prefix="citywatch-demo-"))
    workdir = workdir.resolve()
    # The databases hold photos and positions, the folders keys: this user's alone, for
    # the demo's own files and everything its servers and poles create.
    os.umask(0o077)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    try:
        result = asyncio.run(_main(workdir, args, console))
    except _BadFootage as exc:
        print(f"citywatch demo: {exc}", file=sys.stderr)
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        return 2
    except DemoFailed as exc:
        print(f"citywatch demo: {exc}", file=sys.stderr)
        print(f"citywatch demo: logs are in {workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        result = None
    if temporary and result is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.once and result is not None:
        print(json.dumps(result))
    return 0


def _footage(args: argparse.Namespace, workdir: Path) -> SceneFootage:
    try:
        if args.footage is not None:
            return user_footage(args.footage, workdir / "footage")
        return find_footage(workdir / "footage")
    except FootageError as exc:
        raise _BadFootage(f"{exc}\n--footage: {USER_FOOTAGE_HELP}") from None
    except OSError as exc:
        raise DemoFailed(f"the demo footage cannot be prepared: {exc}") from None


async def _main(workdir: Path, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    footage = _footage(args, workdir)
    mode = args.poles
    if mode == "auto":
        mode = "edge" if shutil.which("gpsfake") else "simulated"
        if mode == "simulated":
            console.print(
                "[yellow]gpsfake (Debian package gpsd-clients) is not installed: "
                "the poles are simulated protocol clients[/]"
            )
    if mode == "edge" and not shutil.which("gpsfake"):
        raise DemoFailed(
            "--poles edge needs gpsfake (Debian package gpsd-clients; scripts/setup.sh installs it)"
        )
    if args.once:
        _stderr(f"footage: {footage.source}")
    else:
        console.print(f"[green]footage[/]  {escape(footage.source)}")
    district = DemoDistrict(
        workdir, devices=args.devices, console=console, footage=footage, mode=mode
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await district.start()
        result = await district.incident(timeout=args.timeout)
        if not args.once:
            console.print(
                f"\n[bold]Dashboard:[/] {district.dashboard_url}  "
                f"(user [bold]{district.operator}[/], password "
                f"[bold]{district.operator_password}[/])"
            )
            console.print("The district keeps running; Ctrl-C stops it.")
            await stop.wait()
        return result
    finally:
        console.print("stopping ...")
        await district.stop()


def _stderr(line: str) -> None:
    print(f"citywatch demo: {line}", file=sys.stderr)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class DemoDistrict:
    """Everything of one demo district, in one working folder."""

    workdir: Path
    devices: int = 4
    console: Console = field(default_factory=Console)
    broker: Broker | None = None
    processes: list[_Process] = field(default_factory=list)
    footage: SceneFootage | None = None
    """What the cameras show (and where a simulated pole's photo comes from); None: the
    shipped footage, prepared in ``workdir``."""
    mode: str = "edge"
    """``edge``: real edge daemons; ``simulated``: in-process protocol clients."""
    layout: list[tuple[str, list[dict[str, Any]]]] | None = None
    """Tests: (zone, camera timeline) per edge pole, instead of the demo's own; only
    the demo's zone gets a monitoring window."""
    poles: list[Any] = field(default_factory=list)
    operator: str = "demo"
    operator_password: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    dashboard_url: str = ""

    # -- start ----------------------------------------------------------------------

    async def start(self) -> None:
        say = self.console.print
        if self.mode not in ("edge", "simulated"):
            raise DemoFailed(f"unknown pole mode {self.mode!r}: edge or simulated")
        if self.footage is None:
            try:
                self.footage = await asyncio.to_thread(find_footage, self.workdir / "footage")
            except OSError as exc:
                raise DemoFailed(f"the demo footage cannot be prepared: {exc}") from None
        try:
            self.broker = start_mosquitto(self.workdir / "broker")
        except ServiceUnavailable as exc:
            raise DemoFailed(str(exc)) from None
        say(f"[green]broker[/]   Mosquitto on 127.0.0.1:{self.broker.port}")
        self.enc_port, self.admin_port = free_port(), free_port()
        self.server_config = self._write_server_config()
        bundles = self._register_devices()
        self.enc_config = self._write_enc_config()
        self._cli(
            "enc",
            "operator",
            "add",
            "--config",
            str(self.enc_config),
            "--role",
            "supervisor",
            self.operator,
            "--password-stdin",
            stdin=self.operator_password + "\n",
        )
        self.processes.append(self._spawn("enc", "enc", "run", "--config", str(self.enc_config)))
        self.processes.append(
            self._spawn("server", "server", "run", "--config", str(self.server_config))
        )
        await self._wait_http(f"http://127.0.0.1:{self.enc_port}/healthz", "ENC")
        self.dashboard_url = f"http://127.0.0.1:{self.enc_port}/"
        say(f"[green]ENC[/]      alert endpoint and dashboard on {self.dashboard_url}")
        await self._wait_http(f"http://127.0.0.1:{self.admin_port}/healthz", "server")
        say(f"[green]server[/]   trusted server up (admin API on 127.0.0.1:{self.admin_port})")
        if self.mode == "edge":
            await self._start_edge_poles(bundles)
            say(
                f"[green]devices[/]  {len(self.poles)} `citywatch edge run` daemons in zone "
                f"{ZONE}: scene-player cameras playing the footage, the pre-screen model, "
                "gpsd through gpsfake, keys in SoftHSM2 tokens"
            )
        else:
            await self._start_poles(bundles)
            say(
                f"[green]devices[/]  {len(self.poles)} simulated poles online in zone {ZONE} "
                "(protocol clients: no camera, no pre-screen model), keys held in SoftHSM2 "
                "tokens (non-extractable)"
            )
        until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        self._cli(
            "server",
            "window",
            "open",
            "--config",
            str(self.server_config),
            "--zone",
            ZONE,
            "--until",
            until.isoformat(timespec="seconds"),
            "--actor",
            "demo",
        )
        if self.mode == "edge":
            await self._wait_edge_windows(timeout=60)
        else:
            await asyncio.gather(*(pole.wait_for_window(timeout=30) for pole in self.poles))
        say(
            f"[green]broadcast[/] monitoring window open for {ZONE} until "
            f"{until:%H:%M} UTC: B1 sent, B2 confirmed by {len(self.poles)}/{len(self.poles)}"
        )

    def _write_server_config(self) -> Path:
        data = tomllib.loads(
            self._cli(
                "server", "config", "example", "--data-dir", str(self.workdir / "server-data")
            )
        )
        assert self.broker is not None
        data["broker"]["port"] = self.broker.port
        data["broker"]["host"] = "127.0.0.1"
        data["enc"]["base_url"] = f"http://127.0.0.1:{self.enc_port}"
        data["admin"]["port"] = self.admin_port
        data["timing"]["poll_s"] = 0.5
        path = self.workdir / "server.toml"
        path.write_text(tomli_w.dumps(data))
        return path

    def _register_devices(self) -> list[Path]:
        bundles = []
        (self.workdir / "bundles").mkdir(exist_ok=True)
        for i, (lat, lon) in enumerate(POLES[: self._count()], start=1):
            path = self.workdir / "bundles" / f"pole-{i:02d}.json"
            zone = self.layout[i - 1][0] if self.layout else ZONE
            self._cli(
                "server",
                "device",
                "add",
                "--config",
                str(self.server_config),
                "--uid",
                f"WAW-OT-{i:04d}",
                "--zone",
                zone,
                "--lat",
                str(lat),
                "--lon",
                str(lon),
                "--bundle-out",
                str(path),
                "--actor",
                "demo",
            )
            bundles.append(path)
        return bundles

    def _count(self) -> int:
        return len(self.layout) if self.layout else self.devices

    def _write_enc_config(self) -> Path:
        data = tomllib.loads(self._cli("enc", "config", "example"))
        server = tomllib.loads(self.server_config.read_text())
        server_dir = Path(server["data_dir"])
        data["data_dir"] = str(self.workdir / "enc-data")
        data["http"]["port"] = self.enc_port
        data["servers"] = {
            server["enc"]["server_kid"]: {
                "key_file": str(server_dir / server["enc"]["key_file"]),
                "name": "demo trusted server",
            }
        }
        data["cap"]["status"] = "Exercise"
        path = self.workdir / "enc.toml"
        path.write_text(tomli_w.dumps(data))
        return path

    async def _start_poles(self, bundles: list[Path]) -> None:
        # SoftHSM2 reads its config once per process: set it before the module loads.
        from hardware import Pkcs11KeyStore, create_softhsm_tokens, import_bundle

        from ._simdevice import ProvisioningBundle, SimulatedDevice

        labels = [f"pole-{i:02d}" for i in range(1, len(bundles) + 1)]
        conf, tokens = create_softhsm_tokens(self.workdir / "softhsm", labels)
        os.environ["SOFTHSM2_CONF"] = str(conf)
        self._stores = []
        for path, token in zip(bundles, tokens, strict=True):
            bundle = ProvisioningBundle.parse(json.loads(path.read_text()))
            store = Pkcs11KeyStore(token.module, token.label, token.pin)
            self._stores.append(store)
            cipher = import_bundle(store, bundle)
            path.unlink()  # the key now lives only in the token (and the server)
            pole = SimulatedDevice(bundle, cipher=cipher)
            await pole.start()
            self.poles.append(pole)

    # -- the incident --------------------------------------------------------------------

    async def incident(self, *, timeout: float) -> dict[str, Any]:
        """One pole sees a person down; wait until the alert is stored at the ENC."""
        if self.mode == "edge":
            return await self._edge_incident(timeout=timeout)
        return await self._simulated_incident(timeout=timeout)

    async def _simulated_incident(self, *, timeout: float) -> dict[str, Any]:
        from protocol import Coords, MessageType

        say = self.console.print
        index = min(2, len(self.poles) - 1)
        pole = self.poles[index]
        lat, lon = POLES[index]
        assert self.footage is not None
        # A real photo (the footage's last frame: someone lying on the floor); the device
        # score is scripted, there is no pre-screen model in a simulated pole.
        photo = self.footage.lying.read_bytes()
        detected = wall_clock_ms()
        say(
            f"[yellow]{pole.uid}[/] scripted report (a simulated pole has no camera and no "
            f"pre-screen model): person_down, device score {self.SCRIPTED_SCORE:.2f} set by "
            f"the demo, photo {escape(self.footage.lying.name)} from the footage; contact "
            "phase starts"
        )
        try:
            delivered = await pole.report(
                photo,
                Coords(lat=lat, lon=lon, alt=None, acc=None, src="fixed"),
                self.SCRIPTED_SCORE,
                "person_down",
                captured_at=detected,
                timeout=timeout,
            )
        except TimeoutError:
            raise DemoFailed(f"{pole.uid} got no C4 from the server in {timeout:.0f} s") from None
        c4_at = wall_clock_ms()
        c1_at = next(t for t, kind in pole.uplink_log if kind == MessageType.C1 and t >= detected)
        inc = delivered.incident_id
        say(f"[green]C4[/]       incident {inc} stored at the server ({c4_at - c1_at} ms after C1)")
        record = await self._wait_enc_delivery(inc, timeout)
        n2_at = int(record["enc_delivered_at"])
        self._say_verdict(record)
        say(f"[green]N2[/]       alert stored at the ENC ({n2_at - c4_at} ms after C4)")
        self._check_enc_has(inc)
        return {
            "incident_id": inc,
            "device": pole.uid,
            "poles": "simulated",
            "device_score": {"value": self.SCRIPTED_SCORE, "from": "scripted"},
            "server_score": record.get("server_score"),
            "phases_ms": {
                "detection_to_c1": c1_at - detected,
                "c1_to_c4": c4_at - c1_at,
                "c4_to_n2": max(0, n2_at - c4_at),
            },
            "total_ms": n2_at - detected,
            "footage": self.footage.source,
        }

    SCRIPTED_SCORE = 0.9
    """The device score a simulated pole's report carries (no model computed it)."""

    def _say_verdict(self, record: dict[str, Any]) -> None:
        reason = record.get("decision_reason") or ""
        self.console.print(
            f"[green]verified[/] the server's photo check: score "
            f"{record['server_score']:.2f} ({record['decision']}"
            + (f"; {escape(reason)}" if reason else "")
            + "); N1 sent"
        )

    def _check_enc_has(self, inc: str) -> None:
        alerts = json.loads(self._cli("enc", "alerts", "--json", "--config", str(self.enc_config)))
        ids = [a["incident_id"] for a in alerts]
        if inc not in ids:
            raise DemoFailed(f"the server says N2 arrived, but the ENC lists no alert {inc}")
        self.console.print(f"[green]ENC[/]      alert {inc} on the operators' dashboard")

    # -- real edge daemons ----------------------------------------------------------------

    INCIDENT_POLE = 2  # index of the pole whose camera sees someone fall
    # Seconds of the calm scene before the incident footage starts on that pole's camera:
    # about when the monitoring window is open, so that the fall happens while the pole
    # watches. Later windows find the person still down (the last frame is held).
    FALL_AT = 8.0

    async def _start_edge_poles(self, bundles: list[Path]) -> None:
        from hardware import create_softhsm_tokens

        assert self.footage is not None
        labels = [f"pole-{i:02d}" for i in range(1, len(bundles) + 1)]
        conf, tokens = await asyncio.to_thread(
            create_softhsm_tokens, self.workdir / "softhsm", labels
        )
        incident = min(self.INCIDENT_POLE, len(bundles) - 1)
        for i, (path, token) in enumerate(zip(bundles, tokens, strict=True)):
            lat, lon = POLES[i]
            if self.layout:
                timeline = self.layout[i][1]
            elif i == incident:
                # Someone sits, falls, and does not get up (the last frame is held).
                timeline = self.footage.incident_timeline(fall_at=self.FALL_AT)
            else:
                timeline = self.footage.calm_timeline()
            pole = EdgePole(
                self.workdir / labels[i], f"WAW-OT-{i + 1:04d}", lat, lon, token, conf, timeline
            )
            await asyncio.to_thread(pole.provision, path)
            pole.start()
            self.poles.append(pole)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for pole in self.poles:
                if not pole.alive():
                    raise DemoFailed(f"the daemon of {pole.uid} exited:\n{pole.log()[-1500:]}")
            states = [pole.status() for pole in self.poles]
            if all(
                s
                and s.get("broker", {}).get("connected")
                and (s.get("pipeline") or {}).get("last_frame_at")
                for s in states
            ):
                return
            await asyncio.sleep(0.5)
        raise DemoFailed("the pole daemons did not come up (camera and broker) within 120 s")

    async def _wait_edge_windows(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            zones = [z for z, _ in self.layout] if self.layout else [ZONE] * len(self.poles)
            states = [
                pole.status() or {} for pole, z in zip(self.poles, zones, strict=True) if z == ZONE
            ]
            if all((s.get("monitoring") or {}).get("active") for s in states):
                return
            await asyncio.sleep(0.3)
        raise DemoFailed(f"not every pole confirmed the monitoring window within {timeout:.0f} s")

    async def _edge_incident(self, *, timeout: float) -> dict[str, Any]:
        say = self.console.print
        pole = self.poles[min(self.INCIDENT_POLE, len(self.poles) - 1)]
        say(
            f"[yellow]{pole.uid}[/] camera: someone sits, falls and stays down; the pre-screen "
            "model watches for 5 s of stillness ..."
        )
        deadline = time.monotonic() + timeout
        delivered: dict[str, Any] = {}
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = pole.status() or {}
            delivered = status.get("last_delivered") or {}
            if delivered.get("incident_id"):
                break
            if not pole.alive():
                raise DemoFailed(f"the daemon of {pole.uid} exited:\n{pole.log()[-1500:]}")
            self._check_processes()
            await asyncio.sleep(0.2)
        else:
            raise DemoFailed(
                f"{pole.uid} delivered no incident within {timeout:.0f} s "
                f"(status: {json.dumps(status)[:600]})"
            )
        detection = (status.get("pipeline") or {}).get("last_detection") or {}
        inc = delivered["incident_id"]
        detected, c4_at = int(detection.get("at", 0)), int(delivered["at"])
        c1_at = int(delivered.get("c1_at") or detected)
        score = detection.get("score")
        say(
            f"[yellow]{pole.uid}[/] pre-screen model: {detection.get('label')} (score "
            f"{score:.2f}); snapshot and GNSS position stored, contact phase ..."
            if isinstance(score, float | int)
            else f"[yellow]{pole.uid}[/] pre-screen model: {detection.get('label')}; snapshot and "
            "GNSS position stored, contact phase ..."
        )
        say(f"[green]C4[/]       incident {inc} stored at the server ({c4_at - c1_at} ms after C1)")
        record = await self._wait_enc_delivery(inc, max(10.0, deadline - time.monotonic()))
        n2_at = int(record["enc_delivered_at"])
        self._say_verdict(record)
        say(f"[green]position[/] from {record.get('coords_src')}")
        say(f"[green]N2[/]       alert stored at the ENC ({n2_at - c4_at} ms after C4)")
        self._check_enc_has(inc)
        others = [
            p.uid
            for p in self.poles
            if p is not pole and ((p.status() or {}).get("last_delivered") or {}).get("incident_id")
        ]
        if others:
            raise DemoFailed(f"poles watching a street with nobody down reported: {others}")
        assert self.footage is not None
        return {
            "incident_id": inc,
            "device": pole.uid,
            "poles": "edge",
            "device_score": {"value": score, "from": "pre-screen model"},
            "server_score": record.get("server_score"),
            "phases_ms": {
                "detection_to_c1": max(0, c1_at - detected),
                "c1_to_c4": c4_at - c1_at,
                "c4_to_n2": max(0, n2_at - c4_at),
            },
            "total_ms": n2_at - detected,
            "position": record.get("coords_src"),
            "footage": self.footage.source,
        }

    async def _wait_enc_delivery(self, incident_id: str, timeout: float) -> dict[str, Any]:
        token = (
            (Path(tomllib.loads(self.server_config.read_text())["data_dir"]) / "admin.token")
            .read_text()
            .strip()
        )
        url = f"http://127.0.0.1:{self.admin_port}/v1/incidents/{incident_id}"
        deadline = time.monotonic() + timeout
        record: dict[str, Any] = {}
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            while time.monotonic() < deadline:
                r = await http.get(url)
                if r.status_code == 200:
                    record = r.json()
                    if record.get("decision") == "dismissed":
                        raise DemoFailed(
                            f"the server dismissed incident {incident_id}: "
                            f"{record.get('decision_reason')}"
                        )
                    if record.get("enc_delivered_at"):
                        return record
                self._check_processes()
                await asyncio.sleep(0.1)
        raise DemoFailed(
            f"incident {incident_id} did not reach the ENC in {timeout:.0f} s "
            f"(last state: {record.get('enc_state')}, attempts "
            f"{record.get('enc_attempts')})"
        )

    # -- stop ----------------------------------------------------------------------------

    async def stop(self) -> None:
        for pole in self.poles:
            with contextlib.suppress(Exception):
                if isinstance(pole, EdgePole):
                    await asyncio.to_thread(pole.close)
                else:
                    await pole.stop()
        for store in getattr(self, "_stores", []):
            with contextlib.suppress(Exception):
                store.close()
        for proc in reversed(self.processes):
            proc.stop()
        if self.broker is not None:
            self.broker.stop()

    # -- plumbing ------------------------------------------------------------------------

    def _cli(self, *args: str, stdin: str | None = None) -> str:
        cmd = [sys.executable, "-m", "citywatch", *args]
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise DemoFailed(
                f"`citywatch {' '.join(args[:3])}` failed: {(r.stderr or r.stdout).strip()[-800:]}"
            )
        return r.stdout

    def _spawn(self, name: str, *args: str) -> _Process:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "citywatch", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return _Process(name, popen, log)

    def _check_processes(self) -> None:
        for proc in self.processes:
            if proc.popen.poll() is not None:
                tail = proc.log.read_text(errors="replace")[-1500:]
                raise DemoFailed(
                    f"the {proc.name} exited with status {proc.popen.returncode}:\n{tail}"
                )

    async def _wait_http(self, url: str, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                self._check_processes()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url, timeout=2)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise DemoFailed(f"the {what} did not answer {url} within {timeout:.0f} s")
