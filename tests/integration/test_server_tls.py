"""MQTT over TLS: a broker whose listener speaks only TLS, with a certificate from a CA
made here; the server and a device trust that CA through the config and the bundle."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from citywatch._footage import fall_photo
from citywatch._services import Broker, ServiceUnavailable, free_port, start_mosquitto
from citywatch._simdevice import SimulatedDevice
from protocol import BrokerAddress, Coords, ProvisioningBundle
from tests.integration.server_harness import EncStub, ServerProcess, make_server, wait_until

FOREVER = {"until": "2099-01-01T00:00:00Z"}
HERE = Coords(lat=52.2297, lon=21.0122, alt=None, acc=None, src="fixed")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca_and_cert(d: Path, *, name: str = "CityWatch test CA") -> tuple[Path, Path, Path]:
    """A CA and a broker certificate for 127.0.0.1 / localhost, as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    d.mkdir(parents=True, exist_ok=True)
    paths = (d / "ca.pem", d / "broker.pem", d / "broker.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    paths[2].chmod(0o600)
    return paths


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    ca, cert, key = make_ca_and_cert(tmp_path / "pki")
    try:
        broker = start_mosquitto(tmp_path / "broker", tls=(ca, cert, key))
    except ServiceUnavailable as exc:
        pytest.skip(f"Mosquitto unavailable: {exc}")
    yield broker, ca
    broker.stop()


def test_contact_over_tls_with_the_ca_from_config_and_bundle(
    tmp_path: Path, tls_broker: tuple[Broker, Path]
) -> None:
    broker, ca = tls_broker
    port = free_port()
    setup = make_server(
        tmp_path,
        broker,
        enc_url=f"http://127.0.0.1:{port}",
        broker_extra={"tls": True, "ca_file": str(ca)},
    )
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port).start()
    bundle = setup.add_device("pole-tls", "z")
    broker_address = bundle.server
    assert broker_address is not None and broker_address.tls and broker_address.ca_pem
    assert "BEGIN CERTIFICATE" in broker_address.ca_pem
    server = ServerProcess(setup).start()
    try:
        server.api("POST", "/v1/windows/z/open", json=FOREVER)

        async def contact() -> str:
            async with SimulatedDevice(bundle) as dev:
                await dev.wait_for_window(timeout=20)
                delivered = await dev.report(fall_photo(), HERE, 0.9, "fall", timeout=30)
                return delivered.incident_id

        incident_id = asyncio.run(contact())
        wait_until(lambda: incident_id in enc.alerts, timeout=30, what="alert at the ENC")
    finally:
        server.stop()
        enc.stop()


def test_device_that_does_not_trust_the_broker_cannot_connect(
    tmp_path: Path, tls_broker: tuple[Broker, Path]
) -> None:
    broker, _ca = tls_broker
    other_ca, _, _ = make_ca_and_cert(tmp_path / "other", name="Someone else's CA")
    bundle = ProvisioningBundle(
        uid="pole-x",
        kid=bytes(8),
        alg=3,
        key=bytes(32),
        server=BrokerAddress(
            host=broker.host, port=broker.port, tls=True, ca_pem=other_ca.read_text()
        ),
    )

    async def connect() -> None:
        async with SimulatedDevice(bundle):
            pass

    with pytest.raises(Exception, match=r"(?i)certificate|ssl|tls"):
        asyncio.run(asyncio.wait_for(connect(), timeout=20))


def test_plain_tcp_to_the_tls_listener_gets_nothing(tls_broker: tuple[Broker, Path]) -> None:
    broker, ca = tls_broker
    # An MQTT CONNECT in clear: the TLS listener never answers it with a CONNACK.
    connect = bytes.fromhex("101000044d5154540402003c0004706c6f74")
    with socket.create_connection((broker.host, broker.port), timeout=5) as s:
        s.sendall(connect)
        s.settimeout(3)
        try:
            answer = s.recv(16)
        except (TimeoutError, ConnectionResetError):
            answer = b""
    assert not answer.startswith(b"\x20")  # 0x20 = CONNACK
    # ... while a TLS client that trusts the CA completes a handshake.
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((broker.host, broker.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
