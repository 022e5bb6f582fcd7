"""Timed analysis: per-phase times of the real stack under injected network delay.

The paper's authors simulated the protocol in abstract time units, with a network
delay of 1..10 units per step drawn from a uniform, normal, exponential or Cauchy
distribution, and give the contact phase (C1..C4) 91-127 units (means 109, 105, 95,
109) and the broadcast phase (B1/B2) 24-42 units (means 33, 33, 26, 33). This
benchmark measures the same phases on the real stack: Mosquitto, ``citywatch server
run`` with its real photo check, the real ENC (``citywatch enc run``) and simulated
poles (``citywatch._simdevice``), in three network namespaces of its own joined by
veth links::

    poles ns ──veth── server ns (broker, server) ──veth── ENC ns (ENC)

One time unit is ``--unit-ms`` milliseconds (10 by default), so a step's delay is
10..100 ms. The delay is injected on both links, in both directions:

- with ``tc netem`` on the four veth ends, where the kernel has ``sch_netem``
  (uniform, normal, pareto for the exponential, paretonormal for the Cauchy);
- otherwise by a delaying TCP relay at the far end of each link (this file's
  ``relay`` command), which draws each burst's delay from the paper's own
  distributions clipped to 1..10 units and keeps the bytes in order. The table says
  which one ran.

Per-step times come from timestamps in the code: the device's send and receive
times (``TimedDevice``), B1's T_S, the server's ``devices.confirmed_at`` (B2
accepted) and ``incidents.received_at`` (C3 stored), the ENC's ``enc_alerts.sent_at``
(N1's T_S) and ``received_at``, the server's ``enc_outbox.tenc`` and
``delivered_at``. One machine, one clock. The contact phase ends at C4, which does
not wait for the photo check; the check is reported on its own.

Needs root (network namespaces). Prints figures only; nothing here passes or fails on
time. Bounded: ``--limit`` seconds overall; namespaces, links and processes are
removed on every exit.

    .venv/bin/python bench/bench_timing.py [--runs 30] [--devices 4] [--unit-ms 10]
        [--dists uniform,normal,exponential,cauchy] [--limit 900] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._jsonlines import LineProcess  # noqa: E402

DISTS = ("uniform", "normal", "exponential", "cauchy")
# The paper's figures, time units: (contact mean, broadcast mean) per distribution.
PAPER = {"uniform": (109, 33), "normal": (105, 33), "exponential": (95, 26), "cauchy": (109, 33)}
PAPER_CONTACT_RANGE = (91, 127)
PAPER_BROADCAST_RANGE = (24, 42)
# The paper's ranges are its delays' range times the steps on top of a fixed cost:
# 91 = 87 + 4 x 1, 127 = 87 + 4 x 10; 24 = 22 + 2 x 1, 42 = 22 + 2 x 10.
PAPER_FIXED = {"contact": 87, "broadcast": 22}
LO, HI = 1.0, 10.0

# Addresses inside the namespaces this benchmark makes (nothing outside them).
SRV_POLES_IP, POLES_IP = "10.77.1.1", "10.77.1.2"
SRV_ENC_IP, ENC_IP = "10.77.2.1", "10.77.2.2"
RELAY_PORT, ENC_PORT = 18830, 18700
CLONE_NEWNET = 0x40000000


class LabUnavailable(Exception):
    """This machine cannot make the namespaces; the message says why."""


# -- delay distributions -----------------------------------------------------------------


def sample_units(dist: str, rng: random.Random) -> float:
    """One step's delay in time units, clipped to the paper's 1..10."""
    if dist == "uniform":
        x = rng.uniform(LO, HI)
    elif dist == "normal":
        x = rng.gauss(5.5, 1.5)
    elif dist == "exponential":
        x = LO + rng.expovariate(1.0)
    elif dist == "cauchy":
        x = 5.5 + math.tan(math.pi * (rng.random() - 0.5))
    elif dist == "none":
        return 0.0
    else:
        raise ValueError(f"unknown distribution {dist!r}")
    return min(HI, max(LO, x))


def netem_args(dist: str, unit_ms: float) -> list[str]:
    """tc netem's nearest equivalent (netem neither clips nor has exponential/Cauchy)."""
    u = unit_ms
    table = {
        "uniform": [f"{5.5 * u:.1f}ms", f"{4.5 * u:.1f}ms"],
        "normal": [f"{5.5 * u:.1f}ms", f"{1.5 * u:.1f}ms", "distribution", "normal"],
        "exponential": [f"{2.0 * u:.1f}ms", f"{1.0 * u:.1f}ms", "distribution", "pareto"],
        "cauchy": [f"{5.5 * u:.1f}ms", f"{1.5 * u:.1f}ms", "distribution", "paretonormal"],
    }
    return ["netem", "delay", *table[dist]]


# -- the namespaces ----------------------------------------------------------------------


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=check)


class Lab:
    """Three network namespaces (poles, server, ENC) and two veth links."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = {"poles": f"cwt{tag}p", "server": f"cwt{tag}s", "enc": f"cwt{tag}e"}
        self.links = {"poles": (f"t{tag}sp", f"t{tag}ps"), "enc": (f"t{tag}se", f"t{tag}es")}
        self.made: list[str] = []
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)

    def up(self) -> None:
        for name in self.ns.values():
            _run("ip", "netns", "add", name)
            self.made.append(name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        s = self.ns["server"]
        for far, (near_if, far_if), near_ip, far_ip in (
            ("poles", self.links["poles"], SRV_POLES_IP, POLES_IP),
            ("enc", self.links["enc"], SRV_ENC_IP, ENC_IP),
        ):
            f = self.ns[far]
            _run(
                "ip",
                "link",
                "add",
                near_if,
                "netns",
                s,
                "type",
                "veth",
                "peer",
                "name",
                far_if,
                "netns",
                f,
            )
            _run("ip", "-n", s, "addr", "add", f"{near_ip}/24", "dev", near_if)
            _run("ip", "-n", f, "addr", "add", f"{far_ip}/24", "dev", far_if)
            _run("ip", "-n", s, "link", "set", near_if, "up")
            _run("ip", "-n", f, "link", "set", far_if, "up")

    def ends(self) -> list[tuple[str, str]]:
        s = self.ns["server"]
        return [
            (s, self.links["poles"][0]),
            (self.ns["poles"], self.links["poles"][1]),
            (s, self.links["enc"][0]),
            (self.ns["enc"], self.links["enc"][1]),
        ]

    def netem_works(self) -> str | None:
        """None when tc netem can be used here, else why not."""
        ns, dev = self.ends()[0]
        r = _run(
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "netem",
            "delay",
            "1ms",
            check=False,
        )
        if r.returncode != 0:
            return (r.stderr.strip() or "tc failed") + " (the kernel has no sch_netem)"
        _run("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        return None

    def set_netem(self, dist: str, unit_ms: float) -> None:
        for ns, dev in self.ends():
            _run(
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                *netem_args(dist, unit_ms),
            )

    def enter(self, which: str) -> None:
        fd = os.open(f"/run/netns/{self.ns[which]}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def down(self) -> None:
        with contextlib.suppress(OSError):
            _setns(self._home)
        for name in reversed(self.made):
            _run("ip", "netns", "del", name, check=False)
        self.made.clear()

    def exec_in(self, which: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[which]]


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def lab_unavailable() -> str | None:
    """None when this machine can run the benchmark, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth links)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing; scripts/setup.sh installs it"
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        return "mosquitto is missing; scripts/setup.sh installs it"
    probe = f"cwtprobe{os.getpid() % 100000}"
    r = _run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot make a network namespace: {r.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


# -- the delaying relay (runs inside a namespace) -----------------------------------------


class DelayRelay:
    """TCP relay that holds each burst of bytes for a delay drawn from ``spec``.

    A burst is what arrives less than 2 ms after the previous read: a message that TCP
    splits into segments is delayed once, as one step of the paper's model. Bytes keep
    their order (a burst never leaves before the one ahead of it)."""

    def __init__(self, spec_path: Path, stats_path: Path) -> None:
        self.spec_path, self.stats_path = spec_path, stats_path
        self.spec: dict[str, Any] = {}
        self.rng = random.Random()
        self.stats: dict[str, dict[str, list[float]]] = {}
        self.reload()

    def reload(self) -> None:
        self.write_stats()
        self.spec = json.loads(self.spec_path.read_text())
        self.rng = random.Random(self.spec.get("seed", 0))

    def delay_s(self) -> float:
        units = sample_units(self.spec["dist"], self.rng)
        self._stat("sample_ms").append(units * self.spec["unit_ms"])
        return units * self.spec["unit_ms"] / 1000

    def _stat(self, what: str) -> list[float]:
        return self.stats.setdefault(self.spec["dist"], {}).setdefault(what, [])

    def write_stats(self) -> None:
        out = {}
        for dist, s in self.stats.items():
            samples, late = s.get("sample_ms", []), s.get("late_ms", [])
            out[dist] = {
                "bursts": len(samples),
                "mean_sample_ms": statistics.mean(samples) if samples else None,
                "late_mean_ms": statistics.mean(late) if late else None,
                "late_max_ms": max(late) if late else None,
            }
        self.stats_path.write_text(json.dumps(out))

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.close()
                    return
                self._stat("late_ms").append(max(0.0, loop.time() - due) * 1000)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        last_read, last_due, current = -math.inf, 0.0, 0.0
        try:
            while True:
                data = await reader.read(1 << 20)
                now = loop.time()
                if now - last_read > 0.002:
                    current = self.delay_s()
                last_read = now
                last_due = max(last_due, now + current)
                queue.put_nowait((last_due, data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            sender.cancel()
        finally:
            writer.close()

    async def serve(self, listen: tuple[str, int], to: tuple[str, int]) -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                ur, uw = await asyncio.open_connection(*to)
            except OSError:
                w.close()
                return
            for writer in (w, uw):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(self.pipe(r, uw), self.pipe(ur, w), return_exceptions=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await asyncio.start_server(handle, *listen)
        async with server:
            await stop.wait()
        self.write_stats()


def relay_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_timing.py relay")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    a = ap.parse_args(argv)
    lh, lp = a.listen.rsplit(":", 1)
    th, tp = a.to.rsplit(":", 1)
    asyncio.run(DelayRelay(a.spec, a.stats).serve((lh, int(lp)), (th, int(tp))))
    return 0


# -- the poles (run inside the poles namespace) -------------------------------------------


def poles_main(argv: list[str]) -> int:
    """Simulated poles driven by JSON commands on stdin; one JSON answer per line."""
    import logging

    import protocol as p
    from citywatch._footage import footage_frame
    from citywatch._simdevice import SimulatedDevice

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("mqtt").setLevel(logging.ERROR)

    class TimedDevice(SimulatedDevice):
        """A simulated device that notes the wall-clock time of everything it sends and
        receives, and of each B1 it accepts with the B2 it answers."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.up_times: list[tuple[float, int]] = []
            self.down_times: list[tuple[float, int]] = []
            self.b1_log: list[dict[str, Any]] = []

        def _flush(self) -> None:
            t, n = time.time(), len(self.uplink_log)
            super()._flush()
            self.up_times.extend((t, typ) for _, typ in self.uplink_log[n:])

        def _on_downlink(self, data: bytes) -> None:
            t = time.time()
            try:
                typ = p.decode_envelope(data, max_size=len(data)).type
            except p.ProtocolError:
                typ = -1
            self.down_times.append((t, typ))
            n_ev, n_up = len(self.events), len(self.up_times)
            super()._on_downlink(data)
            for ev in self.events[n_ev:]:
                if isinstance(ev, p.WindowAnnounced):
                    b2 = [u for u, typ2 in self.up_times[n_up:] if typ2 == 2]
                    self.b1_log.append(
                        {
                            "ts": ev.ts,
                            "tx": ev.tx,
                            "ep": ev.ep,
                            "rx": t,
                            "b2_tx": b2[0] if b2 else None,
                        }
                    )

    spec = json.loads(Path(argv[0]).read_text())
    photos = [footage_frame(k / 10) for k in range(30, 60, 3)]

    async def run() -> None:
        devices: dict[str, TimedDevice] = {}
        for raw in spec["bundles"]:
            b = p.ProvisioningBundle.parse(raw)
            devices[b.uid] = TimedDevice(b)
        await asyncio.gather(*(d.start() for d in devices.values()))
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        def answer(obj: Any) -> None:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

        answer({"ready": sorted(devices)})
        while line := await reader.readline():
            cmd = json.loads(line)
            try:
                if cmd["cmd"] == "window":
                    answer(await window(devices, cmd["after"], cmd["timeout"]))
                elif cmd["cmd"] == "report":
                    answer(await report(devices[cmd["uid"]], cmd, photos))
                elif cmd["cmd"] == "stop":
                    break
            except Exception as exc:  # answered, so the orchestrator can say what failed
                answer({"error": f"{type(exc).__name__}: {exc}"})
        await asyncio.gather(*(d.stop() for d in devices.values()), return_exceptions=True)

    async def window(
        devices: dict[str, TimedDevice], after: dict[str, int], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        out: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for uid, d in devices.items():
                fresh = [b for b in d.b1_log if b["ep"] > after.get(uid, 0) and b["tx"] > b["ts"]]
                if fresh and fresh[-1]["b2_tx"] is not None:
                    out[uid] = fresh[-1]
            if len(out) == len(devices):
                return {"b1": out}
            await asyncio.sleep(0.01)
        return {"b1": out, "missing": sorted(set(devices) - set(out))}

    async def report(d: TimedDevice, cmd: dict[str, Any], photos: list[bytes]) -> dict[str, Any]:
        n_up, n_down = len(d.up_times), len(d.down_times)
        where = p.Coords(lat=cmd["lat"], lon=cmd["lon"], alt=None, acc=3.0, src="gps")
        ev = await d.report(
            photos[cmd["photo"] % len(photos)], where, 0.9, "person_down", timeout=cmd["timeout"]
        )
        ups, downs = d.up_times[n_up:], d.down_times[n_down:]

        def last(times: list[tuple[float, int]], typ: int) -> float | None:
            hits = [t for t, ty in times if ty == typ]
            return hits[-1] if hits else None

        return {
            "incident": ev.incident_id,
            "c1": last(ups, 3),
            "c2": last(downs, 4),
            "c3": last(ups, 5),
            "c4": last(downs, 6),
            "attempts": sum(1 for _, ty in ups if ty == 3),
        }

    asyncio.run(run())
    return 0


# -- the orchestration (runs inside the server namespace) ---------------------------------


class Poles(LineProcess):
    """The poles process, spoken to over its stdin and stdout."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        super().__init__(cmd, log, cwd=ROOT, who="the poles")

    def stop(self, wait_s: float = 10) -> None:
        super().stop(wait_s)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def db_row(path: Path, sql: str, *params: Any) -> tuple[Any, ...] | None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None
    finally:
        conn.close()


def poll(fn: Any, *, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


@dataclasses.dataclass
class Samples:
    """Measured times of one distribution, ms."""

    contact: list[float] = dataclasses.field(default_factory=list)
    c1c2: list[float] = dataclasses.field(default_factory=list)
    c2c3: list[float] = dataclasses.field(default_factory=list)
    c3: list[float] = dataclasses.field(default_factory=list)
    c4: list[float] = dataclasses.field(default_factory=list)
    broadcast: list[float] = dataclasses.field(default_factory=list)
    b1: list[float] = dataclasses.field(default_factory=list)
    b2: list[float] = dataclasses.field(default_factory=list)
    verify: list[float] = dataclasses.field(default_factory=list)
    n1: list[float] = dataclasses.field(default_factory=list)
    n2: list[float] = dataclasses.field(default_factory=list)
    enc: list[float] = dataclasses.field(default_factory=list)
    c1_n2: list[float] = dataclasses.field(default_factory=list)
    c1_c3: list[float] = dataclasses.field(default_factory=list)
    retries: int = 0
    missed: int = 0


def orchestrate(args: argparse.Namespace, lab: Lab, work: Path, deadline: float) -> int:
    import tomllib

    import httpx
    import tomli_w

    import protocol as p
    from server import load_config, open_store, provisioning_bundle
    from tests.integration.server_harness import ServerProcess, make_server
    from tests.support.services import start_mosquitto

    procs: list[subprocess.Popen[bytes]] = []
    broker = server = poles = None
    netem_reason = lab.netem_works()
    injector = (
        "tc netem on the veth links"
        if netem_reason is None
        else (
            "a delaying TCP relay at the far end of each veth link (tc netem unavailable: "
            f"{netem_reason})"
        )
    )
    spec = work / "delay.json"
    spec.write_text(json.dumps({"dist": "none", "unit_ms": args.unit_ms, "seed": args.seed}))
    lab.enter("server")
    try:
        broker = start_mosquitto(work / "broker")
        setup = make_server(
            work,
            broker,
            enc_url=f"http://{ENC_IP}:{ENC_PORT}",
            timing={"poll_s": 1.0, "rate_limit_burst": 100},
            verification={"block_after_dismissed": 0},
        )
        cfg = load_config(setup.config)
        store, _ = open_store(cfg, announce=False)
        bundles = []
        try:
            for i in range(args.devices):
                info, key = store.add_device(
                    uid=f"timing-{i}",
                    zone="timing",
                    lat=52.2,
                    lon=21.0,
                    alg=p.ALG_A256GCM,
                    actor="bench",
                )
                b = provisioning_bundle(cfg, info, key)
                assert b.server is not None
                b = dataclasses.replace(
                    b, server=dataclasses.replace(b.server, host=SRV_POLES_IP, port=RELAY_PORT)
                )
                bundles.append(b.to_json())
        finally:
            store.close()
        enc_cfg = tomllib.loads(
            subprocess.run(
                [sys.executable, "-m", "citywatch", "enc", "config", "example"],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
            ).stdout
        )
        enc_cfg["data_dir"] = str(work / "enc-data")
        enc_cfg["http"]["port"] = ENC_PORT
        enc_cfg["servers"] = {
            setup.server_kid.hex(): {
                "key_file": str(setup.dir / "data" / "enc.key"),
                "name": "timing bench",
            }
        }
        (work / "enc.toml").write_text(tomli_w.dumps(enc_cfg))

        def spawn(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
            with open(work / f"{name}.log", "wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            procs.append(proc)
            return proc

        me = [sys.executable, str(Path(__file__).resolve())]
        spawn(
            "enc",
            [
                *lab.exec_in("enc"),
                sys.executable,
                "-m",
                "citywatch",
                "enc",
                "run",
                "--config",
                str(work / "enc.toml"),
            ],
        )
        relay_dev = spawn(
            "relay-poles",
            [
                *me,
                "relay",
                "--listen",
                f"{SRV_POLES_IP}:{RELAY_PORT}",
                "--to",
                f"127.0.0.1:{broker.port}",
                "--spec",
                str(spec),
                "--stats",
                str(work / "relay-poles.json"),
            ],
        )
        relay_enc = spawn(
            "relay-enc",
            [
                *lab.exec_in("enc"),
                *me,
                "relay",
                "--listen",
                f"{ENC_IP}:{ENC_PORT}",
                "--to",
                f"127.0.0.1:{ENC_PORT}",
                "--spec",
                str(spec),
                "--stats",
                str(work / "relay-enc.json"),
            ],
        )
        enc_up = poll(
            lambda: _http_ok(httpx, f"http://{ENC_IP}:{ENC_PORT}/healthz"), timeout=90, interval=0.3
        )
        if not enc_up:
            raise RuntimeError(f"the ENC did not answer: {(work / 'enc.log').read_text()[-1500:]}")
        server = ServerProcess(setup).start(timeout=240)
        (work / "poles.json").write_text(json.dumps({"bundles": bundles}))
        poles = Poles(
            [*lab.exec_in("poles"), *me, "poles", str(work / "poles.json")], work / "poles.log"
        )
        poles.read(timeout=120)
        base = int(time.time()) + 3600
        epochs: dict[str, int] = {}
        window_no = 0

        def open_window() -> dict[str, Any]:
            nonlocal window_no
            window_no += 1
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + 60 * window_no))
            server.api("POST", "/v1/windows/timing/open", json={"until": until}).raise_for_status()
            return poles.ask({"cmd": "window", "after": epochs, "timeout": 30}, timeout=40)

        # Devices online and monitoring before the first measured run.
        epochs.update({uid: b["ep"] for uid, b in open_window()["b1"].items()})
        db = setup.dir / "data" / "server.db"
        enc_db = work / "enc-data" / "enc.sqlite3"
        results: dict[str, Samples] = {}
        relay_stats: dict[str, Any] = {}
        report_no = 0
        print(
            f"CityWatch timed analysis: 1 time unit = {args.unit_ms:g} ms (a step's delay "
            f"{LO * args.unit_ms:g}..{HI * args.unit_ms:g} ms); delay by {injector}; "
            f"{args.devices} poles, {args.runs} runs per distribution; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for dist in args.dists:
            if time.monotonic() > deadline:
                print(f"time limit reached: {dist} not run", flush=True)
                break
            if netem_reason is None:
                lab.set_netem(dist, args.unit_ms)
            else:
                spec.write_text(
                    json.dumps({"dist": dist, "unit_ms": args.unit_ms, "seed": args.seed})
                )
                for relay in (relay_dev, relay_enc):
                    relay.send_signal(signal.SIGHUP)
                time.sleep(0.3)
            s = results[dist] = Samples()
            for run in range(args.runs):
                if time.monotonic() > deadline:
                    print(f"time limit reached after {run} runs of {dist}", flush=True)
                    break
                # Broadcast: a longer window, so every pole gets a fresh B1 (epoch + 1).
                got = open_window()
                s.missed += len(got.get("missing", []))
                for uid, b in got["b1"].items():
                    epochs[uid] = b["ep"]
                    row = poll(
                        lambda uid=uid, ep=b["ep"]: db_row(
                            db,
                            "SELECT confirmed_at FROM devices WHERE uid = ? AND "
                            "confirmed_epoch = ?",
                            uid,
                            ep,
                        ),
                        timeout=10,
                    )
                    if not row:
                        s.missed += 1
                        continue
                    confirmed = row[0] / 1000
                    s.b1.append((b["rx"] - b["ts"] / 1000) * 1000)
                    s.b2.append((confirmed - b["b2_tx"]) * 1000)
                    s.broadcast.append(row[0] - b["ts"])
                # Contact: one report, ~200 m from every other (a scene of its own, so the
                # server's fusion sends each to the ENC).
                report_no += 1
                uid = f"timing-{run % args.devices}"
                rep = poles.ask(
                    {
                        "cmd": "report",
                        "uid": uid,
                        "lat": 52.2 + 0.002 * report_no,
                        "lon": 21.0,
                        "photo": report_no,
                        "timeout": 60,
                    },
                    timeout=70,
                )
                s.retries += rep["attempts"] - 1
                inc = rep["incident"]
                row = poll(
                    lambda inc=inc: db_row(
                        db,
                        "SELECT i.received_at, i.decided_at, o.tenc, o.delivered_at FROM "
                        "incidents i LEFT JOIN enc_outbox o ON o.incident_id = i.id WHERE i.id = ? "
                        "AND (i.decision = 'dismissed' OR o.delivered_at IS NOT NULL)",
                        inc,
                    ),
                    timeout=60,
                )
                if not row:
                    s.missed += 1
                    continue
                received, decided, tenc, delivered = row
                s.contact.append((rep["c4"] - rep["c1"]) * 1000)
                s.c1c2.append((rep["c2"] - rep["c1"]) * 1000)
                s.c2c3.append((rep["c3"] - rep["c2"]) * 1000)
                s.c3.append(received - rep["c3"] * 1000)
                s.c4.append(rep["c4"] * 1000 - received)
                s.c1_c3.append((rep["c3"] - rep["c1"]) * 1000)
                s.verify.append(decided - received)
                if delivered is not None:
                    alert = db_row(
                        enc_db,
                        "SELECT sent_at, received_at FROM enc_alerts WHERE incident_id = ?",
                        inc,
                    )
                    if alert:
                        s.n1.append(alert[1] - alert[0])
                        s.n2.append(delivered - tenc)
                        s.enc.append(delivered - alert[0])
                    s.c1_n2.append(delivered - rep["c1"] * 1000)
            print(
                f"  {dist}: {len(s.contact)} contact phases, {len(s.broadcast)} broadcast "
                "phases measured",
                flush=True,
            )
        if netem_reason is not None:
            for relay in (relay_dev, relay_enc):
                relay.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            for name in ("poles", "enc"):
                with contextlib.suppress(OSError, ValueError):
                    relay_stats[name] = json.loads((work / f"relay-{name}.json").read_text())
        if args.raw is not None:
            args.raw.write_text(json.dumps({d: dataclasses.asdict(v) for d, v in results.items()}))
        report(args, results, relay_stats, injector, netem=netem_reason is None)
        return 0
    finally:
        if poles is not None:
            poles.stop()
        if server is not None:
            server.stop()
        for proc in reversed(procs):
            stop_process(proc)
        if broker is not None:
            broker.stop()


def _http_ok(httpx: Any, url: str) -> bool:
    try:
        return bool(httpx.get(url, timeout=2).status_code == 200)
    except httpx.HTTPError:
        return False


def _fmt(values: list[float], unit_ms: float) -> str:
    if not values:
        return f"{'-':>19}"
    return (
        f"{statistics.mean(values) / unit_ms:>6.1f} "
        f"[{min(values) / unit_ms:>4.1f}-{max(values) / unit_ms:>5.1f}]"
    )


def report(
    args: argparse.Namespace,
    results: dict[str, Samples],
    relay_stats: dict[str, Any],
    injector: str,
    *,
    netem: bool,
) -> None:
    u = args.unit_ms
    print()
    print(
        f"Phase times in time units (1 unit = {u:g} ms): mean [min-max] over the runs; "
        "the paper's means beside them"
    )
    print(
        f"{'delay':<12} {'contact C1..C4':>19} {'paper':>6} {'broadcast B1/B2':>19} "
        f"{'paper':>6} {'ENC N1/N2':>19} {'verify':>19} {'C1->N2':>19}"
    )
    for dist, s in results.items():
        pc, pb = PAPER[dist]
        print(
            f"{dist:<12} {_fmt(s.contact, u)} {pc:>6} {_fmt(s.broadcast, u)} {pb:>6} "
            f"{_fmt(s.enc, u)} {_fmt(s.verify, u)} {_fmt(s.c1_n2, u)}"
        )
    print(
        f"{'paper range':<12} {f'{PAPER_CONTACT_RANGE[0]}-{PAPER_CONTACT_RANGE[1]}':>19} "
        f"{'':>6} {f'{PAPER_BROADCAST_RANGE[0]}-{PAPER_BROADCAST_RANGE[1]}':>19}"
    )
    print()
    print(
        "Per step, mean time units: C1+C2 (device's C1 sent to C2 received), the device's "
        "C2->C3, C3 (sent to stored), C4 (stored to received); B1 (T_S to received), "
        "B2 (sent to accepted); N1 (T_S to the ENC's receipt), N2 (T_ENC to accepted)"
    )
    print(
        f"{'delay':<12} {'C1+C2':>7} {'C2->C3':>7} {'C3':>7} {'C4':>7} {'B1':>7} {'B2':>7} "
        f"{'N1':>7} {'N2':>7} {'injected':>9} {'fixed C':>8} {'fixed B':>8} {'retries':>8} "
        f"{'missed':>7}"
    )
    summary: dict[str, Any] = {}
    for dist, s in results.items():

        def m(v: list[float]) -> float:
            return statistics.mean(v) / u if v else float("nan")

        stats = relay_stats.get("poles", {}).get(dist, {})
        injected = (
            (stats.get("mean_sample_ms") or float("nan")) / u
            if not netem
            else {"uniform": 5.5, "normal": 5.5, "exponential": 2.0, "cauchy": 5.5}[dist]
        )
        fixed_c = m(s.contact) - 4 * injected
        fixed_b = m(s.broadcast) - 2 * injected
        print(
            f"{dist:<12} {m(s.c1c2):>7.1f} {m(s.c2c3):>7.1f} {m(s.c3):>7.1f} {m(s.c4):>7.1f} "
            f"{m(s.b1):>7.1f} {m(s.b2):>7.1f} {m(s.n1):>7.1f} {m(s.n2):>7.1f} "
            f"{injected:>9.2f} {fixed_c:>8.1f} {fixed_b:>8.1f} {s.retries:>8} {s.missed:>7}"
        )
        summary[dist] = {
            "contact_units": _summ(s.contact, u),
            "broadcast_units": _summ(s.broadcast, u),
            "enc_units": _summ(s.enc, u),
            "verify_units": _summ(s.verify, u),
            "c1_n2_units": _summ(s.c1_n2, u),
            "injected_mean_units": injected,
            "fixed_contact_units": fixed_c,
            "fixed_broadcast_units": fixed_b,
            "paper_contact_mean": PAPER[dist][0],
            "paper_broadcast_mean": PAPER[dist][1],
            "retries": s.retries,
            "missed": s.missed,
        }
    print(
        f"{'paper':<12} fixed cost {PAPER_FIXED['contact']} units in the contact phase, "
        f"{PAPER_FIXED['broadcast']} in the broadcast phase (its ranges minus 4 x and 2 x "
        "the 1..10 delays)"
    )
    if relay_stats:
        late = [
            st.get("late_max_ms") or 0.0 for side in relay_stats.values() for st in side.values()
        ]
        print(
            f"relay timer lateness: at most {max(late, default=0.0):.1f} ms past a burst's due time"
        )
    print()
    # The protocol's timeouts against what the measurements say a step may take.
    every = [s for s in results.values()]

    def worst(attr: str) -> float:
        return max((max(getattr(s, attr)) for s in every if getattr(s, attr)), default=math.nan)

    checks = [
        ("C2 timeout (C1 sent -> C2 received)", worst("c1c2"), 10_000),
        (
            "C4 timeout (C3 sent -> C4 received)",
            max((a + b for s in every for a, b in zip(s.c3, s.c4, strict=True)), default=math.nan),
            30_000,
        ),
        (
            "window +-30 s (a timestamp's age on arrival: C3, B1)",
            max(worst("c3"), worst("b1")),
            30_000,
        ),
        ("ticket lifetime (C1 sent -> C3 sent)", worst("c1_c3"), 60_000),
    ]
    print("Protocol timeouts against the longest measured time:")
    for name, longest, limit in checks:
        print(
            f"  {name:<54} longest {longest:>8.0f} ms, limit {limit:>6} ms, "
            f"margin x{limit / longest if longest else math.inf:.0f}"
        )
    print(
        json.dumps(
            {
                "unit_ms": u,
                "injector": "netem" if netem else "relay",
                "runs": args.runs,
                "devices": args.devices,
                "results": summary,
                "timeouts": {
                    n: {"longest_ms": round(lg, 1), "limit_ms": lim} for n, lg, lim in checks
                },
            }
        )
    )


def _summ(values: list[float], u: float) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "mean": round(statistics.mean(values) / u, 2),
        "min": round(min(values) / u, 2),
        "max": round(max(values) / u, 2),
        "n": len(values),
    }


class _Stop(BaseException):
    """Raised by SIGTERM, SIGINT or the overall time limit: unwinds into the clean-up."""


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        return relay_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "poles":
        return poles_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="runs per distribution")
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--unit-ms", type=float, default=10.0, help="milliseconds per time unit")
    ap.add_argument("--dists", default=",".join(DISTS))
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--limit", type=float, default=900.0, help="overall limit, seconds")
    ap.add_argument("--raw", type=Path, help="also write every sample (ms) to this JSON file")
    ap.add_argument(
        "--check", action="store_true", help="only say whether this machine can run the benchmark"
    )
    args = ap.parse_args()
    args.dists = [d for d in args.dists.split(",") if d]
    for d in args.dists:
        if d not in DISTS:
            ap.error(f"unknown distribution {d!r}; known: {', '.join(DISTS)}")
    if not 1 <= args.runs <= 1000 or not 1 <= args.devices <= 50:
        ap.error("--runs 1..1000, --devices 1..50")
    reason = lab_unavailable()
    if args.check or reason:
        print(f"cannot run here: {reason}" if reason else "ok")
        return 3 if reason else 0

    def stop(signum: int, _frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, stop)
    # The runs stop by themselves at --limit; the alarm is the backstop for a hang.
    signal.alarm(int(args.limit) + 120)
    work = Path(tempfile.mkdtemp(prefix="citywatch-timing-"))
    lab = Lab()
    ok = False
    try:
        lab.up()
        code = orchestrate(args, lab, work, time.monotonic() + args.limit)
        ok = code == 0
        return code
    except _Stop as exc:
        print(f"stopped ({exc}); logs in {work}", file=sys.stderr)
        return 2
    finally:
        signal.alarm(0)
        lab.down()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
