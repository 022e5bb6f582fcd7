"""A Mosquitto that runs the production configuration: ``citywatch.conf`` and
``citywatch.acl`` rendered from ansible/roles/broker/templates with the role's defaults
(only paths, the port and the device list are the test's), a test CA, and client
certificates whose CN is the MQTT identity, as the role's PKI tasks make them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from citywatch._services import ServiceUnavailable, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "broker"


def role_defaults() -> dict[str, Any]:
    """The role's defaults, with the Ansible-only values the templates do not use."""
    raw = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return {k: v for k, v in raw.items() if isinstance(v, int | str | list) and "{{" not in str(v)}


def dynsec_plugin() -> Path:
    """Where Debian's mosquitto package put its dynamic security plugin."""
    found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    if not found:
        raise ServiceUnavailable("mosquitto's dynamic security plugin is not installed")
    return found[0]


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class DeviceCa:
    dir: Path
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CityWatch"),
                x509.NameAttribute(NameOID.COMMON_NAME, "test device CA"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.dir / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, cn: str, *, server: bool = False, client: bool = False
    ) -> tuple[Path, Path]:
        """A certificate (as the role's device-ext.cnf / broker-ext.cnf) and its key: for
        client use, or with ``server`` for server use with SANs for loopback (and for
        client use as well with ``client=True``, as a cluster node's)."""
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        if client or not server:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(usages),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = b.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem(key))
        key_path.chmod(0o600)
        return cert_path, key_path

    def client(self, name: str, cn: str) -> tuple[Path, Path, Path]:
        """(CA, certificate, key) for a client whose certificate's CN is ``cn``."""
        cert, key = self.issue(name, cn)
        return self.pem, cert, key


@dataclass
class ProductionBroker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    conf: Path
    acl: Path
    values: dict[str, Any]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def render(template: str, values: dict[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(template).render(ansible_managed="Managed by the test", **values)


def start_production_broker(
    workdir: Path, ca: DeviceCa, devices: list[dict[str, Any]], **overrides: Any
) -> ProductionBroker:
    """``devices``: rows as ``citywatch server device list --json`` gives them (kid_hex,
    uid, zone, blocked)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        raise ServiceUnavailable("mosquitto is not installed (scripts/setup.sh installs it)")
    mosq_dir = workdir / "mosquitto"
    (mosq_dir / "conf.d").mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca.pem, pki / "ca.pem")
    cert, key = ca.issue("broker", "broker", server=True)
    shutil.copy(cert, pki / "broker.pem")
    shutil.copy(key, pki / "broker.key")
    port = free_port()
    values = (
        role_defaults()
        | {
            "broker_listen_address": "127.0.0.1",
            "broker_port": port,
            "broker_pki_dir": str(pki),
            "broker_mosquitto_dir": str(mosq_dir),
            "broker_devices": devices,
            "broker_dynsec_plugin": str(dynsec_plugin()),
            "broker_server_identities": ["citywatch-server"],
        }
        | overrides
    )
    port = values["broker_port"]
    conf = mosq_dir / "conf.d" / "citywatch.conf"
    conf.write_text(render("citywatch.conf.j2", values))
    acl = mosq_dir / "citywatch-dynsec.json"
    acl.write_text(render("citywatch-dynsec.json.j2", values))
    # What Debian's /etc/mosquitto/mosquitto.conf adds around conf.d, minus persistence.
    main = mosq_dir / "mosquitto.conf"
    user = f"user {pwd.getpwuid(0).pw_name}\n" if os.geteuid() == 0 else ""
    main.write_text(
        f"{user}persistence false\nlog_dest stderr\nlog_type all\n"
        f"include_dir {mosq_dir / 'conf.d'}\n"
    )
    log = workdir / "mosquitto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-c", str(main)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        raise ServiceUnavailable(f"mosquitto did not start: {log.read_text()[-2000:]}") from None
    return ProductionBroker("127.0.0.1", port, proc, log, conf, acl, values)
