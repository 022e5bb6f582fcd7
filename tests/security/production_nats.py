"""The city tier's production configuration on a real three-node NATS cluster: every
node's nats-server.conf and the authorization include rendered from ansible/roles/nats
with the role's defaults (only paths, ports, routes and the device list are the test's),
node certificates and client certificates from a test device CA."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from citywatch._services import ServiceUnavailable, free_port
from tests.support.nats import NatsCluster, NatsNode

from .production_broker import DeviceCa

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "nats"

__all__ = [
    "ROLE",
    "ProductionCluster",
    "client_context",
    "node_certificate",
    "render",
    "role_defaults",
    "start_production_cluster",
    "wait_ready",
]


def role_defaults() -> dict[str, Any]:
    """The role's defaults that are plain values (those built from other variables or
    facts are the test's to give)."""
    raw = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return {
        k: v
        for k, v in raw.items()
        if isinstance(v, int | str | list | bool) and "{{" not in str(v)
    }


def render(template: str, values: dict[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,  # as Ansible's template module renders
    )
    return env.get_template(template).render(ansible_managed="Managed by the test", **values)


def node_certificate(ca: DeviceCa, name: str) -> tuple[Path, Path]:
    """A node's certificate as the role's PKI tasks make it: server and client use (the
    nodes' routes show it to each other), SANs for loopback."""
    return ca.issue(name, name, server=True, client=True)


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


@dataclass
class ProductionCluster:
    cluster: NatsCluster
    ca: DeviceCa
    server_tls: tuple[Path, Path, Path]
    """(CA, certificate, key) of the trusted server's identity."""
    values: list[dict[str, Any]]
    """The role's variables each node's files were rendered with."""

    @property
    def nodes(self) -> list[NatsNode]:
        return self.cluster.nodes

    @property
    def urls(self) -> list[str]:
        return [f"tls://127.0.0.1:{n.client_port}" for n in self.nodes]

    def write_auth(self, devices: list[dict[str, Any]]) -> None:
        """The authorization include again (a pole added or blocked), as tasks/auth.yml
        writes it; the nodes read it on SIGHUP (:meth:`reload`)."""
        for v in self.values:
            v["nats_devices"] = devices
            Path(v["nats_config_dir"], v["nats_auth_file_name"]).write_text(
                render("citywatch-auth.conf.j2", v)
            )

    def reload(self) -> None:
        for n in self.nodes:
            if n.alive and n.process is not None:
                n.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.cluster.stop()


def start_production_cluster(
    workdir: Path, ca: DeviceCa, devices: list[dict[str, Any]], *, size: int = 3
) -> ProductionCluster:
    """``devices``: rows as ``citywatch server device list --json`` gives them (kid_hex,
    uid, zone, blocked). Started, with JetStream answering on every node, when this
    returns."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = node_certificate(ca, "nats-node")
    srv_cert, srv_key = ca.issue("nats-server-client", "citywatch-server")
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    nodes, values = [], []
    for i, (client, route, mqtt) in enumerate(ports):
        conf_dir = workdir / f"n{i}"
        conf_dir.mkdir(exist_ok=True)
        v = role_defaults() | {
            "nats_server_name": f"n{i}",
            "nats_listen_address": "127.0.0.1",
            "nats_client_port": client,
            "nats_cluster_port": route,
            "nats_mqtt_port": mqtt,
            "nats_routes": [f"127.0.0.1:{r}" for _, r, _ in ports],
            "nats_config_dir": str(conf_dir),
            "nats_store_dir": str(conf_dir / "jetstream"),
            "nats_ca_file": str(ca.pem),
            "nats_cert_file": str(cert),
            "nats_key_file": str(key),
            "nats_devices": devices,
        }
        conf = conf_dir / "nats-server.conf"
        conf.write_text(render("nats-server.conf.j2", v))
        (conf_dir / v["nats_auth_file_name"]).write_text(render("citywatch-auth.conf.j2", v))
        nodes.append(NatsNode(f"n{i}", client, route, mqtt, conf, workdir / f"n{i}.log"))
        values.append(v)
    pc = ProductionCluster(NatsCluster(nodes), ca, (ca.pem, srv_cert, srv_key), values)
    try:
        for n in nodes:
            n.start()
        probe = next((d["kid_hex"] for d in devices if not d["blocked"]), None)
        asyncio.run(wait_ready(pc, probe, timeout=90))
    except BaseException:
        pc.stop()
        raise
    return pc


async def wait_ready(pc: ProductionCluster, probe: str | None, *, timeout: float) -> None:
    """Until JetStream answers the server's identity on every node and, with a device
    ``probe`` (its kid), every MQTT listener takes its session (the gateway's own
    streams are placed)."""
    import aiomqtt
    import nats

    deadline = time.monotonic() + timeout
    why = ""
    tls = client_context(*pc.server_tls)
    pole_tls = client_context(*pc.ca.client("ready-probe", probe)) if probe else None
    for url, node in zip(pc.urls, pc.nodes, strict=True):
        while True:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"NATS cluster not ready after {timeout:.0f} s: {why}")
            try:
                nc = await nats.connect(url, tls=tls, connect_timeout=2, allow_reconnect=False)
                try:
                    await nc.jetstream().account_info()
                finally:
                    await nc.close()
                if pole_tls is not None:
                    async with aiomqtt.Client(
                        "127.0.0.1",
                        node.mqtt_port,
                        identifier=f"ready-{node.name}",
                        tls_context=pole_tls,
                        timeout=5,
                    ):
                        pass
                break
            except Exception as exc:  # not ready yet: say the last reason on timeout
                why = f"{url}: {type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5)
