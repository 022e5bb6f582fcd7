"""A real NATS cluster (Debian's nats-server) on free loopback ports: JetStream on every
node and NATS's MQTT gateway, so that poles speak MQTT to it as to Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from citywatch._services import ServiceUnavailable, free_port, wait_for_port

__all__ = ["NatsCluster", "NatsNode", "start_nats_cluster"]


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    conf: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        exe = shutil.which("nats-server")
        if exe is None:
            raise ServiceUnavailable(
                "nats-server is not installed (scripts/setup.sh --tests "
                "installs Debian's nats-server)"
            )
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [exe, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.client_port)
            wait_for_port(self.mqtt_port)
        except TimeoutError:
            self.kill()
            raise ServiceUnavailable(
                f"nats-server {self.name} did not start: {self.log.read_text()[-2000:]}"
            ) from None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies as in a power cut (its JetStream files stay)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class NatsCluster:
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def stop(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.stop()


def start_nats_cluster(workdir: Path, size: int = 3, *, extra: str = "") -> NatsCluster:
    """``size`` nodes routed to each other, each with JetStream (its own store folder)
    and an MQTT listener; started and listening when this returns. ``extra`` is added to
    every node's configuration (lines)."""
    workdir.mkdir(parents=True, exist_ok=True)
    nodes = [
        NatsNode(
            f"n{i}",
            free_port(),
            free_port(),
            free_port(),
            workdir / f"n{i}.conf",
            workdir / f"n{i}.log",
        )
        for i in range(size)
    ]
    routes = ", ".join(f"nats://127.0.0.1:{n.cluster_port}" for n in nodes)
    for n in nodes:
        cluster = (
            ""
            if size == 1
            else f"cluster {{ name: citywatch, listen: 127.0.0.1:{n.cluster_port}, "
            f"routes: [{routes}] }}\n"
        )
        n.conf.write_text(
            f"server_name: {n.name}\n"
            f"listen: 127.0.0.1:{n.client_port}\n"
            f"max_payload: 4MB\n"
            f'jetstream {{ store_dir: "{workdir / ("js-" + n.name)}" }}\n'
            + cluster
            + f"mqtt {{ listen: 127.0.0.1:{n.mqtt_port} }}\n"
            + extra
        )
    cluster = NatsCluster(nodes)
    try:
        for n in nodes:
            n.start()
        asyncio.run(_ready(cluster, timeout=60))
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def _ready(cluster: NatsCluster, *, timeout: float) -> None:
    """Until JetStream answers on every node (the cluster elected its meta leader) and
    every MQTT listener accepts a session (the gateway's own streams are placed)."""
    import aiomqtt
    import nats

    deadline = time.monotonic() + timeout
    why = ""
    for node in cluster.nodes:
        while True:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"NATS cluster not ready after {timeout:.0f} s: {why}")
            try:
                nc = await nats.connect(node.url, connect_timeout=2, allow_reconnect=False)
                try:
                    await nc.jetstream().account_info()
                finally:
                    await nc.close()
                async with aiomqtt.Client(
                    "127.0.0.1", node.mqtt_port, identifier=f"ready-{node.name}", timeout=5
                ):
                    pass
                break
            except Exception as exc:  # not ready yet: say the last reason on timeout
                why = f"{node.name}: {type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5)
