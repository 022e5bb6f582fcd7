"""The city tier in the provisioning playbooks and the server's configuration.

provision.yml and decommission.yml regenerate every NATS node's per-device permissions
(tasks/nats_auth.yml, delegated to each node of citywatch_nats from the poles' play), so
that a pole added or removed under ``--limit <pole>`` is let in or shut out on every
node, each node's file written in its own root folder. And the server role writes
``[broker] transport = "nats"`` with every node's endpoint when the inventory has a
citywatch_nats group (Mosquitto's ``[broker]`` without one), in a file the server's own
config loader takes, whose provisioning bundles list every node's MQTT gateway."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from protocol import ProvisioningBundle
from server import load_config
from tests.integration.server_harness import make_server
from tests.security.poles import Pole
from tests.security.production_broker import DeviceCa
from tests.security.production_nats import ProductionCluster, client_context, wait_ready
from tests.support.nats import NatsCluster, NatsNode
from tests.support.services import free_port

from .fleet import ANSIBLE_DIR, VENV_BIN
from .test_nats_role import _config_test

NATS_TASK = "tasks/nats_auth.yml"


def _playbook_exe() -> Path:
    exe = VENV_BIN / "ansible-playbook"
    if not exe.exists():
        pytest.skip("ansible-playbook is not in the venv: pip install -e '.[dev]'")
    return exe


def _need_nats_group() -> None:
    try:
        grp.getgrnam("nats")
    except KeyError:
        pytest.skip("no nats group (Debian's nats-server package makes it)")


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ) | {
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
    }


def _play(tmp_path: Path, playbook: Path, *args: str) -> str:
    done = subprocess.run(
        [str(_playbook_exe()), "-i", str(tmp_path / "inventory.yml"), str(playbook), *args],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return done.stdout


def _citywatch(tmp_path: Path) -> Path:
    """The project's own command (from its source tree, where its migrations are)."""
    citywatch = tmp_path / "citywatch"
    citywatch.write_text(
        f'#!/bin/sh\ncd {ANSIBLE_DIR.parent}\nexec {sys.executable} -m citywatch.cli "$@"\n'
    )
    citywatch.chmod(0o755)
    return citywatch


def _local() -> dict[str, object]:
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "citywatch_manage_packages": False,
        "citywatch_manage_services": False,
        "citywatch_become": False,
    }


def _nats_task(playbook: str) -> dict[str, Any]:
    """The task of ``ansible/<playbook>``'s poles' play that includes tasks/nats_auth.yml."""
    plays = yaml.safe_load((ANSIBLE_DIR / playbook).read_text())
    found = [
        task
        for play in plays
        if play.get("hosts") == "citywatch_poles"
        for task in play.get("tasks", [])
        if task.get("ansible.builtin.include_tasks") == NATS_TASK
    ]
    assert len(found) == 1, f"{playbook} includes {NATS_TASK} once in the poles' play"
    return dict(found[0])


@pytest.mark.parametrize("playbook", ["provision.yml", "decommission.yml"])
def test_provision_and_decommission_regenerate_the_nats_permissions_after_the_acl(
    playbook: str,
) -> None:
    """Both playbooks include the same task file, only with a citywatch_nats group, in the
    play that changed the registry and right after the broker's ACL (so both follow it)."""
    task = _nats_task(playbook)
    assert task["when"] == "groups['citywatch_nats'] | default([]) | length > 0"
    plays = yaml.safe_load((ANSIBLE_DIR / playbook).read_text())
    tasks = next(p["tasks"] for p in plays if task in p.get("tasks", []))
    before = tasks[tasks.index(task) - 1]["ansible.builtin.include_role"]
    assert (before["name"], before["tasks_from"]) == ("broker", "acl.yml")


def test_the_task_file_passes_every_variable_the_permissions_are_written_from() -> None:
    """Delegated from a pole, the nats role's auth tasks see the pole's variables: every
    nats_* variable they (and their template) read must come from the node's hostvars."""
    role = ANSIBLE_DIR / "roles" / "nats"
    read = set(
        re.findall(
            r"\bnats_[a-z_]+\b",
            (role / "tasks" / "auth.yml").read_text()
            + (role / "templates" / "citywatch-auth.conf.j2").read_text(),
        )
    )
    registered = {"nats_registry", "nats_auth", "nats_devices"}
    defaults = set(yaml.safe_load((role / "defaults" / "main.yml").read_text()))
    (include,) = yaml.safe_load((ANSIBLE_DIR / NATS_TASK).read_text())
    passed = set(include["vars"])
    assert read - registered <= defaults
    assert read - registered - {"nats_root"} <= passed
    assert passed <= defaults
    loop_var = include["loop_control"]["loop_var"]
    for name, value in include["vars"].items():
        assert f"hostvars[{loop_var}]['{name}']" in value, name


def _first_run(tmp_path: Path) -> SimpleNamespace:
    """A registry with one pole, three NATS nodes (each with its own root folder and
    ports) and two poles, each a folder on this machine; the nats role run once."""
    ca = DeviceCa(tmp_path / "ca")
    (ca.dir / "ca.key").write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    setup = make_server(
        tmp_path,
        SimpleNamespace(port=free_port()),  # type: ignore[arg-type]
        enc_url="http://127.0.0.1:9",
    )
    first = setup.add_device("pole-1", "z")
    names = ["cw-nats-1", "cw-nats-2", "cw-nats-3"]
    ports = {n: (free_port(), free_port(), free_port()) for n in names}
    root = tmp_path / "hosts"
    poles = ["cw-pole-1", "cw-pole-2"]
    inventory = {
        "all": {
            "vars": _local(),
            "children": {
                "citywatch_servers": {"hosts": {"cw-server": {}}},
                "citywatch_nats": {
                    "hosts": {
                        n: {
                            "citywatch_root": str(root / n),
                            "nats_client_port": c,
                            "nats_cluster_port": r,
                            "nats_mqtt_port": m,
                        }
                        for n, (c, r, m) in ports.items()
                    },
                    # Only the nodes know these: a delegated task must take them from
                    # the node's hostvars, not from the pole it runs for.
                    "vars": {
                        "nats_listen_address": "127.0.0.1",
                        "nats_routes": [f"127.0.0.1:{r}" for _, r, _ in ports.values()],
                        "nats_ca_dir": str(ca.dir),
                        "nats_citywatch": str(_citywatch(tmp_path)),
                        "nats_registry_config": str(setup.config),
                    },
                },
                "citywatch_poles": {"hosts": {p: {"citywatch_root": str(root / p)} for p in poles}},
            },
        }
    }
    for host in [*names, *poles]:
        (root / host).mkdir(parents=True)
    (tmp_path / "inventory.yml").write_text(json.dumps(inventory))
    cluster = tmp_path / "cluster.yml"
    cluster.write_text(
        "- name: The city's NATS cluster\n  hosts: citywatch_nats\n"
        "  gather_facts: false\n  roles:\n    - nats\n"
    )
    _play(tmp_path, cluster)
    return SimpleNamespace(
        ca=ca, setup=setup, first=first, names=names, ports=ports, root=root, poles=poles
    )


def _poles_playbook(tmp_path: Path, source: str) -> Path:
    """A poles' play with ``source``'s own NATS task (its include path made absolute)."""
    task = _nats_task(source)
    task["ansible.builtin.include_tasks"] = str(ANSIBLE_DIR / NATS_TASK)
    play = [
        {
            "name": f"The NATS part of {source}",
            "hosts": "citywatch_poles",
            "gather_facts": False,
            "become": "{{ citywatch_become }}",
            "tasks": [task],
        }
    ]
    path = tmp_path / f"poles-{source}"
    path.write_text(json.dumps(play))
    return path


def _users(fleet: SimpleNamespace, node: str) -> list[str]:
    auth = fleet.root / node / "etc" / "nats-citywatch-auth.conf"
    return re.findall(r'user: "([^"]+)"', auth.read_text())


async def _mqtt_refused(port: int, tls: Any, *, timeout: float) -> str:
    """Until the node's MQTT gateway refuses a session with ``tls``'s certificate (it
    reads its permissions again on SIGHUP, a moment later); what it answered."""
    import aiomqtt

    deadline = time.monotonic() + timeout
    while True:
        try:
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="gone", tls_context=tls, timeout=5
            ):
                pass
        except aiomqtt.MqttError as exc:
            return str(exc)
        if time.monotonic() > deadline:
            return "still accepted"
        await asyncio.sleep(0.3)


@pytest.mark.slow
def test_provisioning_a_pole_under_limit_lets_it_into_every_nats_node_and_decommissioning_removes_it(  # noqa: E501
    tmp_path: Path,
) -> None:
    """The nats role once; then a pole is added to the registry, and provision.yml's NATS
    task runs with --limit on that pole alone: every node's permissions (in the node's
    own root folder) have its user, and the cluster started from what was written takes
    its MQTT session on every node. The pole is deleted from the registry and
    decommission.yml's task runs: no node has its user any more, and once the nodes have
    read the file again (SIGHUP: systemd is off here) its certificate is refused."""
    _playbook_exe()
    _need_nats_group()
    fleet = _first_run(tmp_path)
    first_cn = f"CN={fleet.first.kid.hex()}"
    for node in fleet.names:
        assert _users(fleet, node) == ["CN=citywatch-server", first_cn]

    second = fleet.setup.add_device("pole-2", "z")
    second_cn = f"CN={second.kid.hex()}"
    out = _play(tmp_path, _poles_playbook(tmp_path, "provision.yml"), "--limit", "cw-pole-2")
    for node in fleet.names:
        assert sorted(_users(fleet, node)) == sorted(["CN=citywatch-server", first_cn, second_cn])
    # Once per node, not once per node and pole; nothing written in a pole's folder.
    assert len(re.findall(r"^changed: \[cw-pole-2 -> cw-nats-\d\]", out, re.M)) == 3, out
    for pole in fleet.poles:
        assert not list((fleet.root / pole).rglob("*")), pole

    nodes = []
    for n, (c, r, m) in fleet.ports.items():
        conf = fleet.root / n / "etc" / "nats-server.conf"
        checked = _config_test(conf)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        nodes.append(NatsNode(n, c, r, m, conf, tmp_path / f"{n}.log"))
    ca = fleet.ca
    srv_cert, srv_key = ca.issue("server-client", "citywatch-server")
    pc = ProductionCluster(NatsCluster(nodes), ca, (ca.pem, srv_cert, srv_key), [])
    try:
        for node in nodes:
            node.start()
        # JetStream answers the server's identity, and every node's gateway takes the
        # new pole's session.
        asyncio.run(wait_ready(pc, second.kid.hex(), timeout=120))

        # The pole is still connected when it is decommissioned (a stolen pole is).
        held = Pole(
            "127.0.0.1",
            nodes[0].mqtt_port,
            client_id=second.kid.hex(),
            tls=ca.client("held", second.kid.hex()),
        ).start(subscribe_down=False, timeout=20)
        try:
            code, said = fleet.setup.cli("device", "delete", "pole-2", "--reason", "test")
            assert code == 0, said
            _play(tmp_path, _poles_playbook(tmp_path, "decommission.yml"), "--limit", "cw-pole-2")
            for node in fleet.names:
                assert _users(fleet, node) == ["CN=citywatch-server", first_cn]
            pc.reload()
            gone = client_context(*ca.client("gone", second.kid.hex()))
            for node in nodes:
                said = asyncio.run(_mqtt_refused(node.mqtt_port, gone, timeout=20))
                assert said != "still accepted", node.name
            # And the session it already had is closed by the reload, not left open.
            deadline = time.monotonic() + 20
            while not held.disconnects and time.monotonic() < deadline:
                time.sleep(0.1)
            assert held.disconnects, "the decommissioned pole's open session survived"
        finally:
            held.stop()
    finally:
        pc.stop()


@pytest.mark.slow
def test_without_a_nats_group_the_playbooks_nats_task_does_nothing(tmp_path: Path) -> None:
    """A pilot on Mosquitto: the task is skipped, nothing is written anywhere."""
    _playbook_exe()
    root = tmp_path / "hosts"
    (root / "cw-pole-1").mkdir(parents=True)
    inventory = {
        "all": {
            "vars": _local(),
            "children": {
                "citywatch_servers": {"hosts": {"cw-server": {}}},
                "citywatch_poles": {
                    "hosts": {"cw-pole-1": {"citywatch_root": str(root / "cw-pole-1")}}
                },
            },
        }
    }
    (tmp_path / "inventory.yml").write_text(json.dumps(inventory))
    for source in ["provision.yml", "decommission.yml"]:
        out = _play(tmp_path, _poles_playbook(tmp_path, source), "--limit", "cw-pole-1")
        assert re.search(r"^cw-pole-1\s*:\s*ok=0\s+changed=0\s+.*skipped=1", out, re.M), out
    assert not list((root / "cw-pole-1").rglob("*"))


# The server role's [broker]: Mosquitto's without a citywatch_nats group, the cluster's
# with one. The role itself runs (ansible-playbook, a folder for the host, systemd off,
# the master key in a file), with its own `server config check`; the file it wrote is
# then loaded with the server's loader and gives a pole's provisioning bundle.
BROKER_CASES = {
    "mosquitto": [],
    "nats-2-nodes": ["cw-nats-1", "cw-nats-2"],
    "nats-4-nodes": ["cw-nats-1", "cw-nats-2", "cw-nats-3", "cw-nats-4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BROKER_CASES))
def test_the_server_roles_config_names_the_broker_the_inventory_has(
    tmp_path: Path, case: str
) -> None:
    _playbook_exe()
    nodes = BROKER_CASES[case]
    root = tmp_path / "hosts" / "cw-server"
    ca = DeviceCa(tmp_path / "ca")
    pki = root / "etc" / "citywatch" / "pki"
    pki.mkdir(parents=True)
    (pki / "ca.pem").write_bytes(ca.pem.read_bytes())  # the broker role's, on a real host
    children: dict[str, object] = {
        "citywatch_servers": {
            "hosts": {
                "cw-server": {
                    "citywatch_root": str(root),
                    "citywatch_user": pwd.getpwuid(os.getuid()).pw_name,
                    "citywatch_group": grp.getgrgid(os.getgid()).gr_name,
                    "server_citywatch": str(_citywatch(tmp_path)),
                    "server_master_key_source": "file",
                    "server_broker_device_host": "cw-server.city.example",
                    # No ENC host in this inventory: the role must still run.
                }
            }
        }
    }
    if nodes:
        children["citywatch_nats"] = {"hosts": {n: {} for n in nodes}}
    inventory = {"all": {"vars": _local(), "children": children}}
    (tmp_path / "inventory.yml").write_text(json.dumps(inventory))
    play = tmp_path / "server.yml"
    play.write_text(
        "- name: The trusted server\n  hosts: citywatch_servers\n"
        "  gather_facts: false\n  roles:\n    - server\n"
    )
    out = _play(tmp_path, play)
    assert "Check the server's config" in out

    config = root / "etc" / "citywatch" / "server.toml"
    broker = load_config(config).broker
    if not nodes:
        assert broker.transport == "mqtt"
        assert (broker.host, broker.port) == ("localhost", 8883)
        assert (broker.device_host, broker.device_port) == ("cw-server.city.example", 8883)
        assert broker.device_alternates == [] and broker.nats_servers == []
        endpoints = [("cw-server.city.example", 8883)]
    else:
        assert broker.transport == "nats"
        assert broker.nats_servers == [f"tls://{n}:4222" for n in nodes]
        assert broker.nats_stream == "CITYWATCH_UP"
        assert broker.nats_replicas == min(3, len(nodes))
        assert (broker.device_host, broker.device_port) == (nodes[0], 8883)
        assert broker.device_alternates == [f"{n}:8883" for n in nodes[1:]]
        endpoints = [(n, 8883) for n in nodes]
    assert broker.tls and broker.share_group == "citywatch-server"
    assert broker.cert_file is not None and str(broker.cert_file).endswith("server-client.pem")

    # What a pole provisioned with this configuration is told: every endpoint, in order.
    bundle_file = tmp_path / "pole-1.json"
    done = subprocess.run(
        [
            str(tmp_path / "citywatch"),
            "server",
            "device",
            "add",
            "--config",
            str(config),
            "--uid",
            "pole-1",
            "--zone",
            "z",
            "--lat",
            "52.2",
            "--lon",
            "21.0",
            "--bundle-out",
            str(bundle_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    server = ProvisioningBundle.parse(json.loads(bundle_file.read_text())).server
    assert [(server.host, server.port), *server.alternates] == endpoints
    assert server.tls and server.ca_pem == ca.pem.read_text()
