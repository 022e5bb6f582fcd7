"""Contact phases per second through a real broker, and C1 -> N2 latency, with the
server's real photo check in the loop.

Starts a Mosquitto on a free loopback port, the trusted server as a real process
(SQLite, its ``PoseVerifier`` in ``[verification] workers`` worker processes: 1 by
default; ``--verifier light``: the same server with a stand-in photo check that costs
next to nothing, ``bench/light_server.py``), an in-process ENC, and N simulated devices
(N = 10, 100, 1000 by default).
The devices are cheap in-process objects: each speaks the real protocol with its own
key, but up to 100 of them share one MQTT connection (so 1000 devices are 10
sockets, not 1000). Each device delivers ``--reports`` incidents, one after another;
all devices run at once. The photos are real: frames of the footage that ships with
CityWatch in which the person lies on the floor (3.0-5.9 s of the clip), which the
photo check calls dangerous, so every report is verified and reaches the ENC. The
contact phase (C1..C4) does not wait for the check; N1/N2 do, so "alerts/s" (N2
answered per second) is what the check's workers sustain.

Beside it, in the same run and through the same broker, the bare request/response
ceiling: an echo over MQTT (request topic -> echo client -> reply topic) with the
same concurrency and the same message sizes as C1/C2 and C3/C4. One contact phase
is two such round trips, so "ceiling contacts/s" = echo round trips/s / 2.

Also shown: the same N = 10 run with TCP_NODELAY off on the server's and the
devices' sockets (design.md: Nagle and delayed ACKs).

Prints figures only; nothing here passes or fails on time. The last line is one JSON
object, ``{"runs": [{"verifier", "workers", "devices", "contacts_per_s", "ceiling_per_s",
"ratio", "c1_n2_p50_ms", "c1_n2_p95_ms"}, ...]}`` (the TCP_NODELAY-off run left out).

    .venv/bin/python bench/bench_server.py [--sizes 10,100,1000] [--reports 2]
        [--verifier light,real] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

import protocol as p  # noqa: E402
from citywatch._footage import footage_frame  # noqa: E402
from citywatch._simdevice import MqttLink, ProvisioningBundle, SimulatedDevice  # noqa: E402
from server import load_config, open_store, provisioning_bundle  # noqa: E402
from tests.integration.server_harness import (  # noqa: E402
    EncStub,
    ServerProcess,
    make_server,
    wait_until,
)
from tests.support.services import Broker, free_port, start_mosquitto  # noqa: E402

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")
PER_LINK = 100


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# -- the broker's own ceiling ------------------------------------------------------------


async def echo_ceiling(
    broker: Broker, *, concurrency: int, rounds: int, big: int, nodelay: bool
) -> tuple[float, float, float]:
    """Round trips/s, p50 and p95 ms of (small, small) and (big, small) request pairs."""
    opts = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if nodelay else []
    links = max(1, math.ceil(concurrency / PER_LINK))
    async with aiomqtt.Client(
        broker.host, broker.port, socket_options=opts, max_inflight_messages=1000
    ) as echo:
        await echo.subscribe("bench/req/#", qos=1)

        async def serve() -> None:
            async for m in echo.messages:
                rid = str(m.topic).rsplit("/", 1)[1]
                await echo.publish(f"bench/resp/{rid}", b"r" * 80, qos=1)

        server = asyncio.create_task(serve())
        clients = [
            aiomqtt.Client(
                broker.host, broker.port, socket_options=opts, max_inflight_messages=1000
            )
            for _ in range(links)
        ]
        waiters: dict[str, asyncio.Future[None]] = {}
        readers = []
        for c in clients:
            await c.__aenter__()
            await c.subscribe("bench/resp/#", qos=1)

            async def read(c: aiomqtt.Client = c) -> None:
                async for m in c.messages:
                    f = waiters.pop(str(m.topic).rsplit("/", 1)[1], None)
                    if f is not None and not f.done():
                        f.set_result(None)

            readers.append(asyncio.create_task(read()))
        latencies: list[float] = []

        async def requester(i: int) -> None:
            c = clients[i % links]
            for r in range(rounds):
                for size in (100, big):
                    rid = f"{i}-{r}-{size}"
                    fut = asyncio.get_running_loop().create_future()
                    waiters[rid] = fut
                    t = time.perf_counter()
                    await c.publish(f"bench/req/{rid}", b"q" * size, qos=1)
                    await asyncio.wait_for(fut, 30)
                    latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(requester(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - t0
        for task in [server, *readers]:
            task.cancel()
        for c in clients:
            await c.__aexit__(None, None, None)
    return len(latencies) / elapsed, pct(latencies, 0.5) * 1000, pct(latencies, 0.95) * 1000


# -- the real server -------------------------------------------------------------------


async def contact_run(
    bundles: list[ProvisioningBundle],
    broker: Broker,
    enc: EncStub,
    *,
    reports: int,
    photos: list[bytes],
    nodelay: bool,
    timeout: float,
    lon_offset: float = 0.0,
) -> tuple[int, float, list[float], float]:
    """Contacts done, seconds they took, C1->N2 latencies, N2 answered per second."""
    links = [
        MqttLink(
            host=broker.host,
            port=broker.port,
            client_id=f"bench-{i}-{os.getpid()}",
            topic_prefix="citywatch/v1",
            tcp_nodelay=nodelay,
            shared=True,
        )
        for i in range(max(1, math.ceil(len(bundles) / PER_LINK)))
    ]
    for link in links:
        await link.start()
    devices = [SimulatedDevice(b, link=links[i % len(links)]) for i, b in enumerate(bundles)]
    for d in devices:
        await d.start()
    await asyncio.gather(*(d.wait_for_window(timeout=timeout) for d in devices))
    started: dict[str, float] = {}

    async def run(i: int, d: SimulatedDevice) -> int:
        done = 0
        for r in range(reports):
            cid = secrets.token_bytes(16)
            started[p.incident_id_for(d.kid, cid)] = time.perf_counter()
            # Every report ~200 m from every other (and each run's a degree of longitude
            # from the previous run's): each is a scene of its own, so the server's fusion
            # looks for neighbours and finds none; each reaches the ENC.
            where = p.Coords(
                lat=HERE.lat + 0.002 * i,
                lon=HERE.lon + lon_offset + 0.003 * r,
                alt=None,
                acc=HERE.acc,
                src=HERE.src,
            )
            await d.report(
                photos[(i + r) % len(photos)], where, 0.9, "person_down", cid=cid, timeout=timeout
            )
            done += 1
        return done

    t0 = time.perf_counter()
    done = sum(await asyncio.gather(*(run(i, d) for i, d in enumerate(devices))))
    elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + timeout
    while not set(started) <= set(enc.answered_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    latencies = [enc.answered_at[i] - t for i, t in started.items() if i in enc.answered_at]
    answered = [enc.answered_at[i] for i in started if i in enc.answered_at]
    alerts_per_s = len(answered) / (max(answered) - t0) if answered else float("nan")
    for link in links:
        await link.stop()
    return done, elapsed, latencies, alerts_per_s


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of process ``root`` and its descendants (the server and
    its photo-check workers), from /proc: a figure that a busy machine does not inflate."""
    parent_of: dict[int, int] = {}
    cpu_of: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        parent_of[pid] = int(fields[1])
        cpu_of[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu_of.get(pid, 0.0)
        todo.extend(child for child, parent in parent_of.items() if parent == pid)
    return total


def mean_ms(server: ServerProcess, metric: str) -> float:
    total = server.metric(f"citywatch_server_{metric}_seconds_sum")
    return 1000 * total / max(1.0, server.metric(f"citywatch_server_{metric}_seconds_count"))


def provision(setup_config: Path, n: int, zone: str) -> list[ProvisioningBundle]:
    cfg = load_config(setup_config)
    store, _ = open_store(cfg, announce=False)
    try:
        out = []
        for i in range(n):
            info, key = store.add_device(
                uid=f"bench-{zone}-{i}",
                zone=zone,
                lat=52.2,
                lon=21.0,
                alg=p.ALG_A256GCM,
                actor="bench",
            )
            out.append(provisioning_bundle(cfg, info, key))
        return out
    finally:
        store.close()


def lying_photos() -> list[bytes]:
    """The shipped clip's frames from 3.0 s to 5.9 s: the person lies on the floor."""
    return [footage_frame(k / 10) for k in range(30, 60)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--reports", type=int, default=2, help="incidents per device")
    ap.add_argument(
        "--workers",
        default="1",
        help="[verification] workers values to run with the real check (its processes)",
    )
    ap.add_argument(
        "--verifier",
        default="light,real",
        help="light (a stand-in photo check), real (the pose models), or both",
    )
    ap.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="[verification] worker_nice of the server (default: the server's default)",
    )
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    # aiomqtt warns about every queue of more than 10 publishes: expected here.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    sizes = [int(x) for x in args.sizes.split(",")]
    workers_list = [int(x) for x in args.workers.split(",")]
    verifiers = [x.strip() for x in args.verifier.split(",")]
    if not verifiers or any(v not in ("light", "real") for v in verifiers):
        ap.error(f"--verifier: light, real or both, not {args.verifier!r}")
    photos = lying_photos()
    mean_kib = statistics.mean(len(ph) for ph in photos) / 1024
    work = Path(tempfile.mkdtemp(prefix="citywatch-bench-"))
    broker = start_mosquitto(work / "broker")
    print(
        f"CityWatch server benchmark: broker 127.0.0.1:{broker.port} (set_tcp_nodelay true), "
        f"{len(photos)} real photos of {mean_kib:.0f} KiB (shipped footage, 480x360), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, server on SQLite"
    )
    print(
        f"{'check':>5} {'workers':>7} {'devices':>8} {'contacts':>9} {'contacts/s':>11} "
        f"{'alerts/s':>9} "
        f"{'C1->N2 p50':>11} {'p95':>8} {'at ENC':>7} {'server CPU/alert':>17} | "
        f"{'echo RTT/s':>10} "
        f"{'ceiling contacts/s':>19} {'RTT p50':>8}"
    )
    runs: list[tuple[str, int, bool, list[int]]] = []
    for verifier in verifiers:
        if verifier == "light":
            runs.append(("light", 0, True, sizes))
        else:
            runs.extend(("real", w, True, sizes) for w in workers_list)
    first = runs[0]
    runs.append((first[0], first[1], False, sizes[:1]))
    ceilings: dict[int, tuple[float, float, float]] = {}
    results: list[dict[str, object]] = []
    try:
        for run_no, (verifier, workers, nodelay, label_sizes) in enumerate(runs):
            port = free_port()
            # block_after_dismissed = 0: a dismissed photo must not block a bench device.
            setup = make_server(
                work / f"run{run_no}",
                broker,
                enc_url=f"http://127.0.0.1:{port}",
                # A device's C1s back to back: all of its --reports, so the server's rate
                # limit (rate_limit_per_minute) never paces a longer run.
                timing={"poll_s": 1.0, "rate_limit_burst": max(100, 2 * args.reports)},
                verification={"workers": workers, "block_after_dismissed": 0}
                | ({} if args.worker_nice is None else {"worker_nice": args.worker_nice}),
            )
            if not nodelay:
                text = setup.config.read_text().replace(
                    f"port = {broker.port}\n", f"port = {broker.port}\ntcp_nodelay = false\n", 1
                )
                setup.config.write_text(text)
            enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port).start()
            bundles_by_n = {n: provision(setup.config, n, f"zone-{n}") for n in label_sizes}
            command = (
                [sys.executable, str(ROOT / "bench" / "light_server.py")]
                if verifier == "light"
                else None
            )
            server = ServerProcess(setup, command=command).start(timeout=120)
            try:
                for size_no, n in enumerate(label_sizes):
                    server.api(
                        "POST", f"/v1/windows/zone-{n}/open", json={"until": "2099-01-01T00:00:00Z"}
                    )
                    reports = args.reports if n < 1000 else 1
                    assert server.proc is not None
                    cpu0 = tree_cpu_s(server.proc.pid)
                    done, elapsed, lat, alerts_per_s = asyncio.run(
                        contact_run(
                            bundles_by_n[n],
                            broker,
                            enc,
                            reports=reports,
                            photos=photos,
                            nodelay=nodelay,
                            timeout=args.timeout,
                            lon_offset=float(size_no),
                        )
                    )
                    cpu_per_alert = (tree_cpu_s(server.proc.pid) - cpu0) / max(1, len(lat))
                    if nodelay and n not in ceilings:
                        ceilings[n] = asyncio.run(
                            echo_ceiling(
                                broker,
                                concurrency=n,
                                rounds=reports,
                                big=len(photos[0]),
                                nodelay=nodelay,
                            )
                        )
                    p50 = statistics.median(lat) * 1000 if lat else float("nan")
                    if nodelay:
                        rps, rp50, _ = ceilings[n]
                        ceiling = f"{rps:>10.1f} {rps / 2:>19.1f} {rp50:>6.2f}ms"
                        results.append(
                            {
                                "verifier": verifier,
                                "workers": workers,
                                "devices": n,
                                "contacts_per_s": round(done / elapsed, 1),
                                "ceiling_per_s": round(rps / 2, 1),
                                "ratio": round(done / elapsed / (rps / 2), 3),
                                "c1_n2_p50_ms": round(p50),
                                "c1_n2_p95_ms": round(pct(lat, 0.95) * 1000),
                            }
                        )
                    else:
                        ceiling = "(TCP_NODELAY off on the server and the devices)"
                    stages = "  ".join(
                        f"{name} {mean_ms(server, metric):.1f}ms"
                        for name, metric in (
                            ("C3->C4", "c3_to_c4"),
                            ("verify", "verification"),
                            ("N1->N2", "n1_to_n2"),
                        )
                    )
                    print(
                        f"{verifier:>5} {workers:>7} {n:>8} {done:>9} {done / elapsed:>11.1f} "
                        f"{alerts_per_s:>9.1f} {p50:>9.0f}ms {pct(lat, 0.95) * 1000:>6.0f}ms "
                        f"{len(lat):>7} {cpu_per_alert * 1000:>15.0f}ms | {ceiling}",
                        flush=True,
                    )
                    print(f"{'':>22} server-side means so far: {stages}", flush=True)
                    server.api("POST", f"/v1/windows/zone-{n}/close")

                def drained(s: ServerProcess = server) -> bool:
                    return s.metric("citywatch_server_outbox_depth") == 0

                wait_until(drained, timeout=args.timeout, what="outbox drained")
            finally:
                server.stop()
                enc.stop()
    finally:
        broker.stop()
    print(
        "contacts/s: C1..C4 completed per second by all devices together (C4 does not wait "
        "for the photo check); alerts/s: N2 answered by the ENC per second, from the first "
        "C1 to the last N2 (what the check's workers sustain); C1->N2: from the device's C1 "
        "to the ENC's N2 (answered in this process), including the wait for a worker; at "
        "ENC: reports that reached it; server CPU/alert: CPU time of the server's process and "
        "its photo-check workers per alert (user + system, from /proc; a busy machine does "
        "not inflate it). verify: the server's mean time from a report's turn to be "
        "verified to its decision, waiting for a free worker included. "
        "Ceiling: the same broker echoing the same sizes at the same concurrency, two round "
        "trips per contact. check: real (the pose models in worker processes) or light (a "
        "stand-in that follows the device's score)."
    )
    print(json.dumps({"runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
