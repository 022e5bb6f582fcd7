"""Broadcast phase at city scale: 10,000 poles announced, then re-announced after a
broker restart.

Registers ``--devices`` devices in one zone of a real ``citywatch server run``
(SQLite, its real photo check loaded but idle) behind a real Mosquitto, connects them
as simulated poles, opens a monitoring window and measures until every pole has
accepted its B1 and the server has accepted every B2 (``announce_s``). Then it
restarts the broker (same port) and measures, from the moment the broker listens
again, until every pole has accepted a fresh B1 and the server every B2 again
(``reannounce_s``): the poles reconnect with jittered back-off and publish ``online``
on their status topics, and the server answers each with a B1 (docs/server.md,
presence).

Poles are cheap: ``--procs`` processes, each carrying its share of the devices over
MQTT connections of ``--per-conn`` devices each (every device its own protocol state,
key, topics and retained status; only the TCP connection is shared, so a shared
connection has no per-device last will). With the defaults, 10,000 devices ride on
100 connections: the broker's per-connection costs (CONNECT, keep-alive, TLS) are
those of 100 clients, not 10,000; ``--per-conn 1`` gives every device its own
connection where the machine allows it.

Prints figures and ends with one JSON line
``{"devices", "announce_s", "reannounce_s", "server_rss_mib", ...}``. Nothing here passes
or fails on time; ``--limit`` bounds the whole run.

    .venv/bin/python bench/bench_broadcast.py [--devices 10000] [--procs 2] [--per-conn 100]
        [--limit 900]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._jsonlines import LineProcess  # noqa: E402

# -- one pole process -------------------------------------------------------------------


def poles_main(argv: list[str]) -> int:
    """Devices of ``argv[0]`` (a JSON file) over shared MQTT connections; JSON commands on
    stdin, one JSON answer per line on stdout."""
    import aiomqtt

    import protocol as p

    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    spec = json.loads(Path(argv[0]).read_text())
    host, port, prefix, per_conn = spec["host"], spec["port"], spec["prefix"], spec["per_conn"]

    class Pole:
        __slots__ = ("announced", "conn", "kid_hex")

        def __init__(self, raw: dict[str, Any]) -> None:
            b = p.ProvisioningBundle.parse(raw)
            self.kid_hex = b.kid.hex()
            self.conn = p.DeviceConnection(
                kid=b.kid, uid=b.uid, cipher=p.AesGcmCipher(b.key), random=secrets.token_bytes
            )
            self.announced: list[tuple[int, float]] = []  # (epoch, wall time) of open B1s

    poles = [Pole(raw) for raw in spec["bundles"]]
    groups = [poles[i : i + per_conn] for i in range(0, len(poles), per_conn)]
    connected = [asyncio.Event() for _ in groups]
    stats = {"connects": 0, "drops": 0}

    async def carry(group: list[Pole], ready: asyncio.Event, n: int) -> None:
        by_kid = {pole.kid_hex: pole for pole in group}
        delay = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    host,
                    port,
                    identifier=f"bench-poles-{os.getpid()}-{n}",
                    keepalive=60,
                    max_inflight_messages=2000,
                    max_queued_outgoing_messages=0,
                    clean_session=True,
                ) as client:
                    stats["connects"] += 1
                    delay = 0.5
                    await client.subscribe([(f"{prefix}/{k}/down", 1) for k in by_kid])
                    await asyncio.gather(
                        *(
                            client.publish(f"{prefix}/{k}/status", b"online", qos=1, retain=True)
                            for k in by_kid
                        )
                    )
                    ready.set()
                    sends: set[asyncio.Task[None]] = set()
                    async for msg in client.messages:
                        kid_hex = str(msg.topic).split("/")[-2]
                        pole = by_kid.get(kid_hex)
                        if pole is None or not isinstance(msg.payload, bytes | bytearray):
                            continue
                        now = time.time()
                        for ev in pole.conn.receive(bytes(msg.payload), int(now * 1000)):
                            if isinstance(ev, p.WindowAnnounced) and ev.tx > ev.ts:
                                pole.announced.append((ev.ep, now))
                        for data in pole.conn.data_to_send():
                            task = asyncio.create_task(
                                client.publish(f"{prefix}/{kid_hex}/up", data, qos=1)
                            )
                            sends.add(task)
                            task.add_done_callback(sends.discard)
            except aiomqtt.MqttError:
                ready.clear()
                stats["drops"] += 1
                # Jittered back-off, as a fleet of real poles would (no thundering herd).
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 8.0)

    async def run() -> None:
        tasks = [asyncio.create_task(carry(g, connected[i], i)) for i, g in enumerate(groups)]
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        def answer(obj: Any) -> None:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

        marks: dict[str, int] = {}
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "connected":
                deadline = time.monotonic() + cmd["timeout"]
                while not all(e.is_set() for e in connected) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                answer(
                    {"connected": sum(e.is_set() for e in connected), "of": len(connected), **stats}
                )
            elif cmd["cmd"] == "mark":
                marks = {pl.kid_hex: pl.announced[-1][0] if pl.announced else 0 for pl in poles}
                answer({"marked": len(marks)})
            elif cmd["cmd"] == "wait":
                deadline = time.monotonic() + cmd["timeout"]
                moved, seen = time.monotonic(), -1
                while True:
                    got = [
                        next((t for ep, t in pl.announced if ep > marks.get(pl.kid_hex, 0)), None)
                        for pl in poles
                    ]
                    done = [t for t in got if t is not None]
                    if len(done) != seen:
                        moved, seen = time.monotonic(), len(done)
                    if (
                        len(done) == len(poles)
                        or time.monotonic() > deadline
                        or time.monotonic() - moved > cmd["stall"]
                    ):
                        break
                    await asyncio.sleep(0.05)
                answer(
                    {
                        "announced": len(done),
                        "of": len(poles),
                        "last": max(done) if done else None,
                        **stats,
                    }
                )
            elif cmd["cmd"] == "stop":
                break
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    return 0


class PoleProcess(LineProcess):
    def __init__(self, spec: Path, log: Path) -> None:
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), "poles", str(spec)],
            log,
            cwd=ROOT,
            who="a pole process",
        )


def ask_all(procs: list[PoleProcess], obj: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    for pp in procs:
        pp.send(obj)
    return [pp.read(timeout + 30) for pp in procs]


def start_broker(workdir: Path, *, port: int | None, queue: int | None) -> Any:
    """Mosquitto as the tests start it, with ``max_queued_messages`` set when ``queue`` is
    given (the broker role sets 100000; Mosquitto's own default: 1000 QoS 1 messages
    queued per client, then dropped)."""
    from citywatch._services import start_mosquitto

    return start_mosquitto(
        workdir, port=port, extra="" if queue is None else f"max_queued_messages {queue}\n"
    )


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


class _Stop(BaseException):
    """SIGTERM, SIGINT or the overall time limit: unwinds into the clean-up."""


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "poles":
        return poles_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--procs", type=int, default=2, help="pole processes")
    ap.add_argument("--per-conn", type=int, default=100, help="devices per MQTT connection")
    ap.add_argument("--limit", type=float, default=900.0, help="overall limit, seconds")
    ap.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="a phase ends when nothing moved for this many seconds",
    )
    ap.add_argument(
        "--broker-queue",
        type=int,
        default=100_000,
        help="Mosquitto's max_queued_messages (default: the broker role's, 100000; "
        "Mosquitto's own is 1000; 0: unlimited)",
    )
    args = ap.parse_args()
    if not 1 <= args.devices <= 100_000 or not 1 <= args.procs <= 16 or args.per_conn < 1:
        ap.error("--devices 1..100000, --procs 1..16, --per-conn >= 1")

    import httpx  # noqa: F401 - the harness's API calls

    import protocol as p
    from server import load_config, open_store, provisioning_bundle
    from tests.integration.server_harness import ServerProcess, make_server

    def stop(signum: int, _frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, stop)
    signal.alarm(int(args.limit) + 60)
    t_start = time.monotonic()

    def left() -> float:
        return max(5.0, args.limit - (time.monotonic() - t_start))

    work = Path(tempfile.mkdtemp(prefix="citywatch-broadcast-"))
    broker = server = None
    procs: list[PoleProcess] = []
    ok = False
    result: dict[str, Any] = {
        "devices": args.devices,
        "announce_s": None,
        "reannounce_s": None,
        "server_rss_mib": None,
    }
    try:
        broker = start_broker(work / "broker", port=None, queue=args.broker_queue)
        setup = make_server(work, broker, enc_url="http://127.0.0.1:9", timing={"poll_s": 1.0})
        cfg = load_config(setup.config)
        store, _ = open_store(cfg, announce=False)
        t = time.perf_counter()
        bundles = []
        try:
            for i in range(args.devices):
                info, key = store.add_device(
                    uid=f"city-{i}",
                    zone="city",
                    lat=52.2,
                    lon=21.0,
                    alg=p.ALG_A256GCM,
                    actor="bench",
                )
                bundles.append(provisioning_bundle(cfg, info, key).to_json())
                if time.monotonic() - t_start > args.limit / 3:
                    raise TimeoutError(f"registration: only {i + 1} devices in a third of --limit")
        finally:
            store.close()
        result["register_s"] = round(time.perf_counter() - t, 2)
        print(
            f"CityWatch broadcast benchmark: {args.devices} devices registered in "
            f"{result['register_s']:.1f} s (one transaction each); {args.procs} pole "
            f"processes, {args.per_conn} devices per MQTT connection "
            f"({-(-args.devices // args.per_conn)} connections); {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        server = ServerProcess(setup).start(timeout=240)
        assert server.proc is not None
        share = -(-args.devices // args.procs)
        for k in range(args.procs):
            part = bundles[k * share : (k + 1) * share]
            if not part:
                continue
            spec = work / f"poles-{k}.json"
            spec.write_text(
                json.dumps(
                    {
                        "host": broker.host,
                        "port": broker.port,
                        "prefix": "citywatch/v1",
                        "per_conn": args.per_conn,
                        "bundles": part,
                    }
                )
            )
            procs.append(PoleProcess(spec, work / f"poles-{k}.log"))
        t = time.perf_counter()
        got = ask_all(procs, {"cmd": "connected", "timeout": left()}, left())
        result["connect_s"] = round(time.perf_counter() - t, 2)
        print(
            f"  poles connected and online: {sum(g['connected'] for g in got)}/"
            f"{sum(g['of'] for g in got)} connections in {result['connect_s']:.1f} s",
            flush=True,
        )

        def counters() -> dict[str, float]:
            return {
                "b1_sent": server.metric("citywatch_server_broadcasts_total"),
                "b2_accepted": server.metric("citywatch_server_broadcast_confirmations_total"),
                "b2_received": server.metric("citywatch_server_messages_total", type="B2"),
                "b2_mismatch": server.metric(
                    "citywatch_server_rejected_messages_total", reason="mismatch"
                ),
            }

        def confirmed_devices() -> int:
            # Devices whose last B1 the server holds confirmed (the registry's view).
            import sqlite3

            conn = sqlite3.connect(
                f"file:{setup.dir / 'data' / 'server.db'}?mode=ro", uri=True, timeout=10
            )
            try:
                return int(
                    conn.execute(
                        "SELECT count(*) FROM devices WHERE confirmed_epoch = epoch"
                    ).fetchone()[0]
                )
            finally:
                conn.close()

        def settle(what: str) -> float:
            """Seconds until the server's CPU goes quiet (its backlog worked through)."""
            assert server is not None and server.proc is not None
            t, last = time.perf_counter(), cpu_s(server.proc.pid)
            quiet = 0
            while quiet < 2 and time.perf_counter() - t < min(120.0, left()):
                time.sleep(1.0)
                now = cpu_s(server.proc.pid)
                quiet = quiet + 1 if now - last < 0.1 else 0
                last = now
            took = time.perf_counter() - t - 2.0
            print(f"  {what}: the server busy for {max(0.0, took):.1f} s more", flush=True)
            return round(max(0.0, took), 1)

        def phase(name: str, t0: float, base: dict[str, float]) -> float | None:
            got = ask_all(procs, {"cmd": "wait", "timeout": left(), "stall": args.stall}, left())
            announced = sum(g["announced"] for g in got)
            last_b1 = max((g["last"] for g in got if g["last"] is not None), default=None)
            deadline = time.monotonic() + left()
            moved, seen = time.monotonic(), -1.0
            while time.monotonic() < deadline and time.monotonic() - moved < args.stall:
                now = counters()["b2_accepted"] - base["b2_accepted"]
                if now >= args.devices:
                    break
                if now != seen:
                    moved, seen = time.monotonic(), now
                time.sleep(0.2)
            end = time.time()
            c = {k: int(v - base[k]) for k, v in counters().items()}
            b1_s = (last_b1 - t0) if last_b1 is not None else float("nan")
            complete = announced == args.devices and c["b2_accepted"] >= args.devices
            print(
                f"  {name}: B1 accepted by {announced}/{args.devices} poles, the last "
                f"{b1_s:.1f} s after the start; B2 accepted by the server "
                f"{c['b2_accepted']}/{args.devices} after {end - t0:.1f} s"
                + (
                    ""
                    if complete
                    else f" (incomplete: nothing moved for {args.stall:.0f} s or the time limit)"
                )
                + f"; B1 sent {c['b1_sent']}, B2 received {c['b2_received']}, "
                f"dropped as not matching the last B1 {c['b2_mismatch']}; devices confirmed "
                f"in the registry {confirmed_devices()}/{args.devices}",
                flush=True,
            )
            result[f"{name}_b1_s"] = round(b1_s, 2)
            result[f"{name}_counts"] = c | {"b1_accepted": announced}
            return round(end - t0, 2) if complete else None

        # The poles' 10,000 `online`s are worked through before the window opens, so that
        # the announcement is measured alone.
        result["online_backlog_s"] = settle("after the poles' `online`s")
        ask_all(procs, {"cmd": "mark"}, 10)
        base = counters()
        t0 = time.time()
        server.api(
            "POST", "/v1/windows/city/open", json={"until": "2099-01-01T00:00:00Z"}
        ).raise_for_status()
        result["announce_s"] = phase("announce", t0, base)
        result["server_rss_mib"] = round(rss_mib(server.proc.pid)[0], 1)

        # The broker goes away and comes back empty (no persistence): every pole and the
        # server reconnect; the retained `online`s are published anew, each answered by a B1.
        settle("after the announcement")
        ask_all(procs, {"cmd": "mark"}, 10)
        base = counters()
        port = broker.port
        broker.stop()
        broker = start_broker(work / "broker", port=port, queue=args.broker_queue)
        t0 = time.time()
        result["reannounce_s"] = phase("reannounce", t0, base)
        got = ask_all(procs, {"cmd": "connected", "timeout": 5}, 5)
        rss, peak = rss_mib(server.proc.pid)
        result["server_rss_mib"] = round(max(result["server_rss_mib"] or 0.0, rss), 1)
        result["server_peak_rss_mib"] = round(peak, 1)
        result["mqtt_connects"] = sum(g["connects"] for g in got)
        drops = [
            line
            for line in broker.log.read_text(errors="replace").splitlines()
            if "are being dropped" in line
        ]
        result["broker_drop_notices"] = len(drops)
        if drops:
            print(
                f"  the broker dropped QoS 1 messages for a slow client ({len(drops)} "
                f"notice(s) in its log, e.g. {drops[0].split(': ', 1)[-1]!r}); "
                "--broker-queue 0 lifts its queue limit",
                flush=True,
            )
        print(
            f"  server process: {rss:.0f} MiB resident, {peak:.0f} MiB at its peak (its "
            "photo-check models included)",
            flush=True,
        )
        print(
            "announce: from the window's opening (admin API) until every pole accepted "
            "its B1 and the server accepted every B2; reannounce: from the restarted broker "
            "listening until the same, after every pole and the server reconnected"
        )
        print(json.dumps(result))
        ok = True
        return 0
    except _Stop as exc:
        print(f"stopped ({exc}); partial: {json.dumps(result)}", flush=True)
        return 2
    finally:
        signal.alarm(0)
        for pp in procs:
            pp.stop()
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
