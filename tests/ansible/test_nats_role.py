"""The nats role's templates make a configuration nats-server accepts (``nats-server
-t``, Debian's binary), with the permissions generated for the registry's devices: a
blocked device gets no user, a kid that is not hex gets none; and the role itself, run
twice, writes a cluster that starts."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest
from cryptography.hazmat.primitives import serialization

from tests.integration.server_harness import make_server
from tests.security.production_broker import DeviceCa
from tests.security.production_nats import (
    ProductionCluster,
    client_context,
    node_certificate,
    render,
    role_defaults,
    wait_ready,
)
from tests.support.nats import NatsCluster, NatsNode
from tests.support.services import free_port

from .fleet import ANSIBLE_DIR, VENV_BIN

DEVICES = [
    {"kid_hex": "00112233445566aa", "uid": "pole-1", "zone": "z", "blocked": False},
    {"kid_hex": "ffeeddccbbaa9988", "uid": "pole-2", "zone": "z", "blocked": True},
]


def _values(tmp_path: Path, **over: object) -> dict[str, object]:
    ca = DeviceCa(tmp_path / "ca")
    cert, key = node_certificate(ca, "nats-1")
    return (
        role_defaults()
        | {
            "nats_server_name": "nats-1",
            "nats_routes": ["10.0.0.11:6222", "10.0.0.12:6222", "10.0.0.13:6222"],
            "nats_config_dir": str(tmp_path),
            "nats_store_dir": str(tmp_path / "jetstream"),
            "nats_ca_file": str(ca.pem),
            "nats_cert_file": str(cert),
            "nats_key_file": str(key),
            "nats_devices": DEVICES,
        }
        | over
    )


def _write(tmp_path: Path, values: dict[str, object]) -> Path:
    conf = tmp_path / "nats-server.conf"
    conf.write_text(render("nats-server.conf.j2", values))
    (tmp_path / str(values["nats_auth_file_name"])).write_text(
        render("citywatch-auth.conf.j2", values)
    )
    return conf


def _config_test(conf: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(exe).exists():
        pytest.skip("nats-server is not installed (scripts/setup.sh --tests installs it)")
    return subprocess.run([exe, "-c", str(conf), "-t"], capture_output=True, text=True)


def test_the_rendered_node_configuration_passes_nats_servers_check(tmp_path: Path) -> None:
    conf = _write(tmp_path, _values(tmp_path))
    done = _config_test(conf)
    assert done.returncode == 0, done.stdout + done.stderr
    text = conf.read_text()
    assert 'listen: "0.0.0.0:8883"' in text and "verify_and_map: true" in text
    assert text.count("tls://10.0.0.1") == 3


def test_a_broken_permission_file_fails_the_check(tmp_path: Path) -> None:
    """The check reads the include too: what the role writes is what the node accepts."""
    values = _values(tmp_path)
    conf = _write(tmp_path, values)
    (tmp_path / str(values["nats_auth_file_name"])).write_text("authorization { users = [ {")
    assert _config_test(conf).returncode != 0


def test_only_registered_unblocked_devices_and_the_server_get_users(tmp_path: Path) -> None:
    auth = render("citywatch-auth.conf.j2", _values(tmp_path))
    users = re.findall(r'user: "([^"]+)"', auth)
    assert users == ["CN=citywatch-server", "CN=00112233445566aa"]
    assert '"citywatch.v1.00112233445566aa.up", "citywatch.v1.00112233445566aa.status"' in auth
    assert "ffeeddccbbaa9988" not in auth


def test_a_kid_that_is_not_hex_gets_no_user(tmp_path: Path) -> None:
    """A kid is a subject token: a dot or a wildcard in one would widen its rights."""
    rows = [
        {"kid_hex": kid, "uid": "x", "zone": "z", "blocked": False}
        for kid in ("00112233.>", "*", "", "00aa")
    ]
    auth = render("citywatch-auth.conf.j2", _values(tmp_path, nats_devices=rows))
    assert re.findall(r'user: "([^"]+)"', auth) == ["CN=citywatch-server", "CN=00aa"]


@pytest.mark.slow
def test_the_role_makes_a_cluster_that_runs_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    """The role itself (ansible-playbook, local connection, a folder per host, systemd
    and apt off): three nodes' keys, certificates signed by the CA on the server host,
    configuration and the permissions from a real registry. A second run changes
    nothing; the three nodes then start from what the role wrote and form a cluster
    that the server's identity and a registered pole get into."""
    playbook_exe = VENV_BIN / "ansible-playbook"
    if not playbook_exe.exists():
        pytest.skip("ansible-playbook is not in the venv: pip install -e '.[dev]'")
    try:
        grp.getgrnam("nats")
    except KeyError:
        pytest.skip("no nats group (Debian's nats-server package makes it)")
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
    pole = setup.add_device("pole-1", "z")
    citywatch = tmp_path / "citywatch"
    # The project's own command (from its source tree, where its migrations are).
    citywatch.write_text(
        f'#!/bin/sh\ncd {ANSIBLE_DIR.parent}\nexec {sys.executable} -m citywatch.cli "$@"\n'
    )
    citywatch.chmod(0o755)
    names = ["cw-nats-1", "cw-nats-2", "cw-nats-3"]
    ports = {n: (free_port(), free_port(), free_port()) for n in names}
    root = tmp_path / "hosts"
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "citywatch_manage_packages": False,
                "citywatch_manage_services": False,
                "citywatch_become": False,
            },
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
                    "vars": {
                        "nats_listen_address": "127.0.0.1",
                        "nats_routes": [f"127.0.0.1:{r}" for _, r, _ in ports.values()],
                        "nats_ca_dir": str(ca.dir),
                        "nats_citywatch": str(citywatch),
                        "nats_registry_config": str(setup.config),
                    },
                },
            },
        }
    }
    (tmp_path / "inventory.yml").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(
        "- name: The city's NATS cluster\n  hosts: citywatch_nats\n"
        "  gather_facts: false\n  roles:\n    - nats\n"
    )
    env = dict(os.environ) | {
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
    }

    def play() -> str:
        done = subprocess.run(
            [str(playbook_exe), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml")],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
        return done.stdout

    play()
    again = play()
    changed = re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", again, re.M)
    assert sorted(changed) == sorted((n, "0") for n in names), again[-4000:]

    nodes = []
    for n, (c, r, m) in ports.items():
        etc = root / n / "etc"
        conf = etc / "nats-server.conf"
        done = _config_test(conf)
        assert done.returncode == 0, done.stdout + done.stderr
        pki = etc / "nats" / "pki"
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca.pem), str(pki / "node.pem")],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert (pki / "ca.pem").read_bytes() == ca.pem.read_bytes()
        nodes.append(NatsNode(n, c, r, m, conf, tmp_path / f"{n}.log"))
    srv_cert, srv_key = ca.issue("server-client", "citywatch-server")
    pc = ProductionCluster(NatsCluster(nodes), ca, (ca.pem, srv_cert, srv_key), [])
    try:
        for node in nodes:
            node.start()
        # JetStream answers the server's identity on every node, and every node's MQTT
        # gateway takes the registered pole's session.
        asyncio.run(wait_ready(pc, pole.kid.hex(), timeout=120))
        # and the permissions are in force: a certificate with no user is refused.
        stranger = client_context(*ca.client("stranger", "ff" * 8))

        async def unknown() -> str:
            try:
                nc = await nats.connect(
                    pc.urls[0], tls=stranger, allow_reconnect=False, connect_timeout=3
                )
            except Exception as exc:  # what the node answered
                return str(exc)
            await nc.close()
            return "connected"

        assert "Authorization Violation" in asyncio.run(unknown())
    finally:
        pc.stop()
