"""The nats role's templates make a configuration nats-server accepts (``nats-server
-t``, Debian's binary), with the permissions generated for the registry's devices: a
blocked device gets no user, a kid that is not hex gets none."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.security.production_broker import DeviceCa
from tests.security.production_nats import node_certificate, render, role_defaults

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
