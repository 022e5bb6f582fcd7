"""Contact phases per second through a real broker, and C1 -> N2 latency.

Starts a Mosquitto on a free loopback port, the trusted server as a real process
(SQLite), an in-process ENC, and N simulated devices (N = 10, 100, 1000 by default).
The devices are cheap in-process objects: each speaks the real protocol with its own
key, but up to 100 of them share one MQTT connection (so 1000 devices are 10
sockets, not 1000). Each device delivers ``--reports`` incidents, one after another;
all devices run at once.

Beside it, in the same run and through the same broker, the bare request/response
ceiling: an echo over MQTT (request topic -> echo client -> reply topic) with the
same concurrency and the same message sizes as C1/C2 and C3/C4. One contact phase
is two such round trips, so "ceiling contacts/s" = echo round trips/s / 2.

Also shown: the same N = 10 run with TCP_NODELAY off on the server's and the
devices' sockets (design.md: Nagle and delayed ACKs).

Prints figures only; nothing here passes or fails on time.

    .venv/bin/python bench/bench_server.py [--sizes 10,100,1000] [--reports 3]
"""

from __future__ import annotations

import argparse
import asyncio
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
from citywatch._simdevice import MqttLink, ProvisioningBundle, SimulatedDevice  # noqa: E402
from server import load_config, open_store, provisioning_bundle  # noqa: E402
from tests.integration.server_harness import (  # noqa: E402
    EncStub,
    ServerProcess,
    make_server,
    wait_until,
)
from tests.support.services import Broker, free_port, start_mosquitto  # noqa: E402
from tests.support.world import jpeg  # noqa: E402

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")
PER_LINK = 100


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# -- the broker's own ceiling ------------------------------------------------------------


async def echo_ceiling(broker: Broker, *, concurrency: int, rounds: int, big: int,
                       nodelay: bool) -> tuple[float, float, float]:
    """Round trips/s, p50 and p95 ms of (small, small) and (big, small) request pairs."""
    opts = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if nodelay else []
    links = max(1, math.ceil(concurrency / PER_LINK))
    async with aiomqtt.Client(broker.host, broker.port, socket_options=opts,
                              max_inflight_messages=1000) as echo:
        await echo.subscribe("bench/req/#", qos=1)

        async def serve() -> None:
            async for m in echo.messages:
                rid = str(m.topic).rsplit("/", 1)[1]
                await echo.publish(f"bench/resp/{rid}", b"r" * 80, qos=1)

        server = asyncio.create_task(serve())
        clients = [aiomqtt.Client(broker.host, broker.port, socket_options=opts,
                                  max_inflight_messages=1000) for _ in range(links)]
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


async def contact_run(bundles: list[ProvisioningBundle], broker: Broker, enc: EncStub, *,
                      reports: int, photo: bytes, nodelay: bool, timeout: float
                      ) -> tuple[int, float, list[float]]:
    links = [MqttLink(host=broker.host, port=broker.port, client_id=f"bench-{i}-{os.getpid()}",
                      topic_prefix="citywatch/v1", tcp_nodelay=nodelay, shared=True)
             for i in range(max(1, math.ceil(len(bundles) / PER_LINK)))]
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
            # Every report ~200 m from every other: each is a scene of its own, so the
            # server's fusion looks for neighbours and finds none; each reaches the ENC.
            where = p.Coords(lat=HERE.lat + 0.002 * i, lon=HERE.lon + 0.003 * r, alt=None,
                             acc=HERE.acc, src=HERE.src)
            await d.report(photo, where, 0.9, "person_down", cid=cid, timeout=timeout)
            done += 1
        return done

    t0 = time.perf_counter()
    done = sum(await asyncio.gather(*(run(i, d) for i, d in enumerate(devices))))
    elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + timeout
    while not set(started) <= set(enc.answered_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    latencies = [enc.answered_at[i] - t for i, t in started.items() if i in enc.answered_at]
    for link in links:
        await link.stop()
    return done, elapsed, latencies


def mean_ms(server: ServerProcess, metric: str) -> float:
    total = server.metric(f"citywatch_server_{metric}_seconds_sum")
    return 1000 * total / max(1.0, server.metric(f"citywatch_server_{metric}_seconds_count"))


def provision(setup_config: Path, n: int, zone: str) -> list[ProvisioningBundle]:
    cfg = load_config(setup_config)
    store, _ = open_store(cfg, announce=False)
    try:
        out = []
        for i in range(n):
            info, key = store.add_device(uid=f"bench-{zone}-{i}", zone=zone, lat=52.2,
                                         lon=21.0, alg=p.ALG_A256GCM, actor="bench")
            out.append(provisioning_bundle(cfg, info, key))
        return out
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--reports", type=int, default=3, help="incidents per device")
    ap.add_argument("--photo-kb", type=int, default=60, help="approximate photo size")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    # aiomqtt warns about every queue of more than 10 publishes: expected here.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    sizes = [int(x) for x in args.sizes.split(",")]
    side = int(math.sqrt(args.photo_kb * 1024 / 3)) + 1
    photo = jpeg((side, side), quality=95, noisy=True)
    work = Path(tempfile.mkdtemp(prefix="citywatch-bench-"))
    broker = start_mosquitto(work / "broker")
    print(f"CityWatch server benchmark: broker 127.0.0.1:{broker.port} (set_tcp_nodelay true), "
          f"photo {len(photo) // 1024} KiB, {os.cpu_count()} CPUs, server on SQLite")
    print(f"{'devices':>8} {'contacts':>9} {'contacts/s':>11} {'C1->N2 p50':>11} "
          f"{'p95':>8} | {'echo RTT/s':>10} {'ceiling contacts/s':>19} {'RTT p50':>8} "
          f"{'p95':>7}")
    try:
        for nodelay, label_sizes in ((True, sizes), (False, sizes[:1])):
            port = free_port()
            setup = make_server(work / f"nd{int(nodelay)}", broker,
                                enc_url=f"http://127.0.0.1:{port}",
                                timing={"poll_s": 1.0, "rate_limit_burst": 100})
            if not nodelay:
                text = setup.config.read_text().replace(
                    f"port = {broker.port}\n", f"port = {broker.port}\ntcp_nodelay = false\n", 1)
                setup.config.write_text(text)
            enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port).start()
            bundles_by_n = {n: provision(setup.config, n, f"zone-{n}") for n in label_sizes}
            server = ServerProcess(setup).start(timeout=60)
            try:
                for n in label_sizes:
                    server.api("POST", f"/v1/windows/zone-{n}/open",
                               json={"until": "2099-01-01T00:00:00Z"})
                    reports = args.reports if n < 1000 else 1
                    done, elapsed, lat = asyncio.run(contact_run(
                        bundles_by_n[n], broker, enc, reports=reports, photo=photo,
                        nodelay=nodelay, timeout=args.timeout))
                    rps, rp50, rp95 = asyncio.run(echo_ceiling(
                        broker, concurrency=n, rounds=reports, big=len(photo),
                        nodelay=nodelay))
                    tag = "" if nodelay else "  (TCP_NODELAY off)"
                    stages = "  ".join(
                        f"{name} {mean_ms(server, metric):.1f}ms"
                        for name, metric in (("C3->C4", "c3_to_c4"), ("verify", "verification"),
                                             ("N1->N2", "n1_to_n2")))
                    print(f"{n:>8} {done:>9} {done / elapsed:>11.1f} "
                          f"{statistics.median(lat) * 1000 if lat else float('nan'):>9.1f}ms "
                          f"{pct(lat, 0.95) * 1000:>6.1f}ms | {rps:>10.1f} {rps / 2:>19.1f} "
                          f"{rp50:>6.2f}ms {rp95:>5.2f}ms{tag}", flush=True)
                    print(f"{'':>8} server-side means so far: {stages}", flush=True)
                    server.api("POST", f"/v1/windows/zone-{n}/close")
                wait_until(lambda s=server: s.metric("citywatch_server_outbox_depth") == 0,
                           timeout=args.timeout, what="outbox drained")
            finally:
                server.stop()
                enc.stop()
    finally:
        broker.stop()
    print("contacts/s: C1..C4 completed per second by all devices together; C1->N2: from "
          "the device's C1 to the ENC's N2 (answered in this process). Ceiling: the same "
          "broker echoing the same sizes at the same concurrency, two round trips per contact.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
