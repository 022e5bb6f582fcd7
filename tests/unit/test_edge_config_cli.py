"""``citywatch edge provision`` into a real SoftHSM2 token, and ``citywatch edge status``."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

import protocol as p
from edge import UsageError
from edge._cli_daemon import register_daemon_commands
from edge._config import load_config
from edge._state import (
    STATUS_FILE,
    BrokerStatus,
    MonitoringStatus,
    OutboxStatus,
    StatusBoard,
    StatusSnapshot,
    wall_ms,
)
from hardware import Pkcs11KeyStore, SoftHsmToken


def cli(*argv: str) -> int:
    """``citywatch edge ...`` as the console script runs it (UsageError: exit status 2)."""
    parser = argparse.ArgumentParser(prog="citywatch edge")
    register_daemon_commands(parser.add_subparsers(dest="edge_command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def token(softhsm_tokens: dict[str, SoftHsmToken]) -> SoftHsmToken:
    return softhsm_tokens["citywatch-device"]


@pytest.fixture
def pin_file(tmp_path: Path, token: SoftHsmToken) -> Path:
    path = tmp_path / "token.pin"
    path.write_text(token.pin + "\n")
    path.chmod(0o600)
    return path


def bundle(tmp_path: Path, **changes: object) -> tuple[Path, bytes, bytes]:
    kid, key = os.urandom(8), os.urandom(32)
    data: dict[str, object] = {
        "uid": "pole-0042",
        "kid_hex": kid.hex(),
        "alg": "A256GCM",
        "key_hex": key.hex(),
        "zone": "old-town",
        "lat": 52.2297,
        "lon": 21.0122,
        "alt": 110.0,
        "server": {
            "host": "broker.example",
            "port": 8883,
            "topic_prefix": "citywatch/v1",
            "tls": {"ca_pem": "-----BEGIN CERTIFICATE-----\n...\n"},
        },
    }
    data.update(changes)
    path = tmp_path / f"bundle-{kid.hex()}.json"
    path.write_text(json.dumps(data))
    return path, kid, key


def test_provision_imports_the_key_and_writes_the_config(
    tmp_path: Path, token: SoftHsmToken, pin_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, kid, key = bundle(tmp_path)
    out = tmp_path / "etc" / "edge.toml"
    assert (
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(out),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
            "--state-dir",
            str(tmp_path / "state"),
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert key.hex() not in printed and key.hex() not in out.read_text()
    assert "DELETE" in printed and path.exists()  # told, not done
    assert stat.S_IMODE(out.stat().st_mode) == 0o640

    cfg = load_config(out)
    assert (cfg.uid, cfg.kid, cfg.alg, cfg.zone) == ("pole-0042", kid, "A256GCM", "old-town")
    assert (cfg.position.lat, cfg.position.lon, cfg.position.alt) == (52.2297, 21.0122, 110.0)
    assert cfg.broker.host == "broker.example" and cfg.broker.port == 8883
    assert cfg.broker.tls is not None and cfg.broker.tls.ca_file == out.parent / "broker-ca.pem"
    assert cfg.broker.tls.ca_file.read_text().startswith("-----BEGIN CERTIFICATE")
    assert cfg.key_store.pin_file == pin_file.resolve() and cfg.key_store.pin is None
    assert cfg.state_dir == tmp_path / "state"

    # The key is in the token and works: what it seals, the bundle's key opens.
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        cipher = store.cipher(cfg.key_label)
        iv = os.urandom(12)
        sealed = cipher.seal(iv=iv, plaintext=b"hello", aad=b"a")
        assert p.AesGcmCipher(key).open(iv=iv, ciphertext=sealed, aad=b"a") == b"hello"


def test_provision_again_keeps_the_hand_written_sections(
    tmp_path: Path, token: SoftHsmToken, pin_file: Path
) -> None:
    path, kid, _ = bundle(tmp_path)
    out = tmp_path / "edge.toml"
    args = (
        "provision",
        "--bundle",
        str(path),
        "--config-out",
        str(out),
        "--module",
        token.module,
        "--token-label",
        token.label,
        "--pin-file",
        str(pin_file),
    )
    assert cli(*args) == 0
    out.write_text(
        out.read_text() + '\n[camera]\ndriver = "scene"\n\n[outbox]\nmax_incidents = 7\n'
    )
    # The same bundle again (a re-run of the rollout): the same key is accepted.
    assert cli(*args[:-2]) == 0  # PIN file taken from the existing config
    cfg = load_config(out)
    assert cfg.camera == {"driver": "scene"} and cfg.outbox.max_incidents == 7
    assert cfg.kid == kid


def test_provision_refuses_a_different_key_for_a_provisioned_kid(
    tmp_path: Path, token: SoftHsmToken, pin_file: Path
) -> None:
    path, kid, _ = bundle(tmp_path)
    common = (
        "--module",
        token.module,
        "--token-label",
        token.label,
        "--pin-file",
        str(pin_file),
        "--config-out",
        str(tmp_path / "edge.toml"),
    )
    assert cli("provision", "--bundle", str(path), *common) == 0
    other, _, _ = bundle(tmp_path, kid_hex=kid.hex())  # the same kid, another key
    with pytest.raises(UsageError, match="DIFFERENT key"):
        cli("provision", "--bundle", str(other), *common)


def test_provision_can_delete_the_bundle(
    tmp_path: Path, token: SoftHsmToken, pin_file: Path
) -> None:
    path, _, _ = bundle(tmp_path)
    assert (
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(tmp_path / "e.toml"),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
            "--delete-bundle",
        )
        == 0
    )
    assert not path.exists()


@pytest.mark.parametrize(
    ("changes", "extra", "words"),
    [
        ({"key_hex": "00" * 20}, (), "key_hex"),
        ({"alg": "A192GCM"}, (), "alg"),
        ({"server": None}, (), "no 'server' part"),
        ({"zone": None}, (), "pass --zone"),
        ({"lat": None}, (), "pass --lat and --lon"),
        ({"server": {"host": "b", "port": "1883"}}, (), r"broker\.port"),
    ],
)
def test_provision_refuses_bad_bundles_before_touching_the_token(
    tmp_path: Path,
    token: SoftHsmToken,
    pin_file: Path,
    changes: dict[str, object],
    extra: tuple[str, ...],
    words: str,
) -> None:
    path, _, _ = bundle(tmp_path)
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=words):
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(tmp_path / "e.toml"),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
            *extra,
        )
    assert not (tmp_path / "e.toml").exists()


def test_provision_without_a_pin(tmp_path: Path, token: SoftHsmToken) -> None:
    path, _, _ = bundle(tmp_path)
    with pytest.raises(UsageError, match="--pin-file"):
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(tmp_path / "e.toml"),
            "--module",
            token.module,
        )


# -- status -------------------------------------------------------------------------------


def write_status(state_dir: Path, *, age_s: float = 0, **changes: object) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    now = wall_ms()
    fields: dict[str, object] = dict(
        started_at=now - 60_000,
        pid=4242,
        uid="pole-0042",
        kid_hex="0123456789abcdef",
        zone="old-town",
        monitoring=MonitoringStatus(active=True, until=now + 3_600_000, epoch=3),
        broker=BrokerStatus(connected=True, host="broker.example", port=8883, since=now),
        outbox=OutboxStatus(depth=2, bytes=1000, max_incidents=1000, max_bytes=10**8),
    )
    fields.update(changes)
    board = StatusBoard(
        state_dir / STATUS_FILE,
        StatusSnapshot(**fields),  # type: ignore[arg-type]
        clock=lambda: now - int(age_s * 1000),
    )
    board.write()


def test_status_of_a_healthy_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path)
    assert cli("status", "--state-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    for words in (
        "monitoring window",
        "OPEN until",
        "connected to broker.example:8883",
        "2 waiting",
        "last delivered",
        "clock offset",
        "frames per second",
        "healthy",
    ):
        assert words in out, words
    assert cli("status", "--state-dir", str(tmp_path), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["healthy"] is True and data["unhealthy_reasons"] == []
    assert data["outbox"]["depth"] == 2 and data["monitoring"]["epoch"] == 3
    assert data["pipeline"] == {"last_frame_at": None, "fps": None, "last_detection": None}


def test_status_of_a_stale_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path, age_s=120)
    assert cli("status", "--state-dir", str(tmp_path)) == 1
    assert "UNHEALTHY" in capsys.readouterr().out
    assert cli("status", "--state-dir", str(tmp_path), "--max-age", "300", "--json") == 0
    capsys.readouterr()


def test_status_requiring_the_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(
        tmp_path,
        broker=BrokerStatus(connected=False, host="b", port=1, last_error="connection refused"),
    )
    assert cli("status", "--state-dir", str(tmp_path)) == 0
    assert "NOT connected" in capsys.readouterr().out
    assert cli("status", "--state-dir", str(tmp_path), "--require-broker", "--json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["healthy"] is False
    assert "connection refused" in data["unhealthy_reasons"][0]


def test_status_without_a_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("status", "--state-dir", str(tmp_path), "--json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["healthy"] is False and "does not exist" in data["unhealthy_reasons"][0]


def test_status_finds_the_state_dir_in_the_config(
    tmp_path: Path, token: SoftHsmToken, pin_file: Path
) -> None:
    path, _, _ = bundle(tmp_path)
    out = tmp_path / "edge.toml"
    assert (
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(out),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
            "--state-dir",
            str(tmp_path / "state"),
        )
        == 0
    )
    write_status(tmp_path / "state")
    assert cli("status", "--config", str(out)) == 0


@pytest.mark.parametrize(
    ("server", "ca"),
    [
        (
            {"host": "b", "port": 8883, "tls": True, "ca_pem": "PEM\n", "topic_prefix": "cw/v1"},
            "PEM\n",
        ),
        ({"host": "b", "port": 1883, "tls": False, "ca_pem": None, "topic_prefix": "cw/v1"}, None),
    ],
)
def test_provision_reads_the_servers_bundle_shape(
    tmp_path: Path, token: SoftHsmToken, pin_file: Path, server: dict[str, object], ca: str | None
) -> None:
    # What `citywatch server device add` writes: a TLS flag with the CA beside it.
    path, _, _ = bundle(tmp_path, server=server)
    out = tmp_path / "edge.toml"
    assert (
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(out),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
        )
        == 0
    )
    cfg = load_config(out)
    assert cfg.broker.topic_prefix == "cw/v1" and cfg.broker.port == server["port"]
    if ca is None:
        assert cfg.broker.tls is None
    else:
        assert cfg.broker.tls is not None and cfg.broker.tls.ca_file is not None
        assert cfg.broker.tls.ca_file.read_text() == ca


def test_provision_gives_the_pole_its_tls_identity(
    tmp_path: Path, token: SoftHsmToken, pin_file: Path
) -> None:
    path, _, _ = bundle(tmp_path)
    out = tmp_path / "edge.toml"
    cert, key = tmp_path / "pki" / "device.pem", tmp_path / "pki" / "device.key"
    assert (
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(out),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        )
        == 0
    )
    tls = load_config(out).broker.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file) == (cert, key)
    assert tls.ca_file == out.parent / "broker-ca.pem"  # the bundle's CA is kept


@pytest.mark.parametrize(
    ("server", "extra", "words"),
    [
        (None, ("--tls-cert", "c.pem"), "go together"),
        (None, ("--tls-key", "c.key"), "go together"),
        (
            {"host": "b", "port": 1883, "tls": False, "topic_prefix": "cw/v1"},
            ("--tls-cert", "c.pem", "--tls-key", "c.key"),
            "needs a TLS broker",
        ),
    ],
)
def test_provision_refuses_a_tls_identity_it_cannot_use(
    tmp_path: Path,
    token: SoftHsmToken,
    pin_file: Path,
    server: dict[str, object] | None,
    extra: tuple[str, ...],
    words: str,
) -> None:
    path, _, _ = bundle(tmp_path, **({"server": server} if server else {}))
    with pytest.raises(UsageError, match=words):
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(tmp_path / "e.toml"),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
            *extra,
        )
    assert not (tmp_path / "e.toml").exists()


def test_provision_takes_the_clusters_other_endpoints(
    tmp_path: Path, token: SoftHsmToken, pin_file: Path
) -> None:
    server = {
        "host": "node-1.example",
        "port": 1883,
        "tls": False,
        "alternates": [
            {"host": "node-2.example", "port": 1883},
            {"host": "node-3.example", "port": 1884},
        ],
    }
    path, _, _ = bundle(tmp_path, server=server)
    out = tmp_path / "edge.toml"
    assert (
        cli(
            "provision",
            "--bundle",
            str(path),
            "--config-out",
            str(out),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
        )
        == 0
    )
    assert load_config(out).broker.endpoints == [
        ("node-1.example", 1883),
        ("node-2.example", 1883),
        ("node-3.example", 1884),
    ]
    bad, _, _ = bundle(tmp_path, server=server | {"alternates": [{"host": "x"}]})
    with pytest.raises(UsageError, match=r"server\.alternates"):
        cli(
            "provision",
            "--bundle",
            str(bad),
            "--config-out",
            str(tmp_path / "bad.toml"),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(pin_file),
        )
