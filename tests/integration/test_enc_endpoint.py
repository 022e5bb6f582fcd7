"""The ENC's alert endpoint as a real process (``citywatch enc run``) on a free loopback
port, fed N1 messages made by the protocol core's ``EncNotifier``; on SQLite and on a
real PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import httpx
import pytest

import protocol as p
from tests.support.services import free_port
from tests.support.world import jpeg

ROOT = Path(__file__).resolve().parents[2]
SERVER_KID = bytes.fromhex("5e5e5e5e00000001")
COSE = 'application/cose; cose-type="cose-encrypt0"'
# The console script, as installed beside this interpreter (python -m citywatch.cli would
# give the CLI module a second identity, and its CliError would not be caught).
CITYWATCH = str(Path(sys.executable).with_name("citywatch"))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def citywatch(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CITYWATCH, *args], cwd=ROOT, capture_output=True, text=True, check=check, timeout=60
    )


@dataclass
class EncProcess:
    """A ``citywatch enc run`` subprocess with its config, key and log."""

    workdir: Path
    database_url: str = ""
    extra_toml: str = ""
    port: int = field(default_factory=free_port)
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    server_kid: bytes = SERVER_KID
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key_file = self.workdir / "server-1.key"
        key_file.write_text(self.key.hex() + "\n")
        key_file.chmod(0o600)
        self.config = self.workdir / "enc.toml"
        self.config.write_text(
            'data_dir = "data"\n'
            f'[database]\nurl = "{self.database_url}"\n'
            f'[http]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[servers.{self.server_kid.hex()}]\nkey_file = "server-1.key"\n'
            'name = "test server"\n' + self.extra_toml
        )
        self.log = self.workdir / "enc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notifier(self, *, kid: bytes | None = None, key: bytes | None = None) -> p.EncNotifier:
        return p.EncNotifier(
            kid=kid or self.server_kid,
            cipher=p.AesGcmCipher(key or self.key),
            random=secrets.token_bytes,
        )

    def start(self) -> EncProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [CITYWATCH, "enc", "run", "--config", str(self.config)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"enc run exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"enc run did not become healthy: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def post(self, body: bytes, content_type: str = COSE, **kw: object) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/alerts",
            content=body,
            headers={"Content-Type": content_type},
            timeout=10,
            **kw,
        )

    def alerts(self) -> list[dict[str, object]]:
        out = citywatch("enc", "alerts", "--json", "--config", str(self.config))
        return json.loads(out.stdout)


def make_n1(
    notifier: p.EncNotifier,
    incident_id: str = "inc-0001",
    *,
    photo: bytes | None = None,
    now: int | None = None,
    device: str = "pole-017",
    label: str = "person_down",
    score: float = 0.87,
    lat: float = 52.2297,
    lon: float = 21.0122,
) -> bytes:
    return notifier.alert(
        incident_id=incident_id,
        coords=p.Coords(lat=lat, lon=lon, alt=110.0, acc=4.0, src="gps"),
        photo=photo or jpeg((160, 120)),
        score=score,
        label=label,
        captured_at=(now or now_ms()) - 2_000,
        device_uid=device,
        now=now or now_ms(),
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _database_url(request: pytest.FixtureRequest, kind: str) -> str:
    if kind == "sqlite":
        return ""  # the default: SQLite under the data directory
    pg = request.getfixturevalue("postgres")
    return str(pg.create_database(f"enc_{secrets.token_hex(4)}"))


_SMALL_LIMITS = "[limits]\nmax_photo_bytes = 65536\nmax_body_bytes = 70000\n"


def _check_log(e: EncProcess) -> None:
    log = e.log.read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def enc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, database_kind: str
) -> Iterator[EncProcess]:
    """One ENC per database kind for the tests that do not restart it (each test uses
    its own incident ids)."""
    e = EncProcess(
        tmp_path_factory.mktemp("enc"),
        database_url=_database_url(request, database_kind),
        extra_toml=_SMALL_LIMITS,
    )
    e.start()
    yield e
    e.stop()
    _check_log(e)


@pytest.fixture
def fresh_enc(
    request: pytest.FixtureRequest, tmp_path: Path, database_kind: str
) -> Iterator[EncProcess]:
    """An ENC of its own, for tests that stop or kill it."""
    e = EncProcess(
        tmp_path / "enc",
        database_url=_database_url(request, database_kind),
        extra_toml=_SMALL_LIMITS,
    )
    e.start()
    yield e
    e.stop()
    _check_log(e)


def ids(e: EncProcess) -> set[str]:
    return {str(a["incident_id"]) for a in e.alerts()}


def new_id() -> str:
    return f"inc-{secrets.token_hex(6)}"


# -- the happy path -----------------------------------------------------------------


def test_alert_is_stored_once_and_n2_verifies(enc: EncProcess) -> None:
    notifier = enc.notifier()
    photo = jpeg((160, 120))
    inc = new_id()
    r = enc.post(make_n1(notifier, inc, photo=photo))
    assert r.status_code == 200
    assert r.headers["content-type"] == COSE
    [confirmed] = notifier.receive(r.content, now_ms())
    assert confirmed == p.AlertConfirmed(inc, confirmed.tenc)

    # The server retries with a fresh N1 (its N2 got lost): answered, nothing changes.
    r2 = enc.post(make_n1(notifier, inc, photo=photo, label="fall", score=0.5))
    assert r2.status_code == 200
    assert isinstance(notifier.receive(r2.content, now_ms())[0], p.AlertConfirmed)

    [a] = [a for a in enc.alerts() if a["incident_id"] == inc]
    assert a["label"] == "person_down"
    assert a["score"] == pytest.approx(0.87) and a["device_uid"] == "pole-017"
    assert a["coords"] == {"lat": 52.2297, "lon": 21.0122, "alt": 110.0, "acc": 4.0, "src": "gps"}
    assert a["status"] == "new" and a["server_kid"] == SERVER_KID.hex()
    assert a["photo_size"] == len(photo)


def test_alerts_are_listed_newest_first(enc: EncProcess) -> None:
    notifier = enc.notifier()
    sent = [new_id() for _ in range(4)]
    for inc in sent:
        assert enc.post(make_n1(notifier, inc)).status_code == 200
        time.sleep(0.002)  # distinct received times, so the order is defined
    listed = [a["incident_id"] for a in enc.alerts()]
    assert [i for i in listed if i in sent] == sent[::-1]
    out = citywatch("enc", "alerts", "--config", str(enc.config)).stdout
    assert sent[-1] in out and "person_down" in out


# -- refusals -----------------------------------------------------------------------


def test_replayed_n1_is_refused(enc: EncProcess) -> None:
    notifier = enc.notifier()
    inc = new_id()
    n1 = make_n1(notifier, inc)
    assert enc.post(n1).status_code == 200
    r = enc.post(n1)
    assert r.status_code == 409
    assert r.text == "conflict\n"
    assert len([a for a in enc.alerts() if a["incident_id"] == inc]) == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "application/octet-stream",
        "application/cbor",
        'application/cose; cose-type="cose-mac0"',
        "text/plain",
        "",
    ],
)
def test_wrong_content_type_is_refused(enc: EncProcess, content_type: str) -> None:
    inc = new_id()
    r = enc.post(make_n1(enc.notifier(), inc), content_type=content_type)
    assert r.status_code == 415
    assert inc not in ids(enc)


def test_content_type_without_parameter_is_accepted(enc: EncProcess) -> None:
    assert (
        enc.post(make_n1(enc.notifier(), new_id()), content_type="application/cose").status_code
        == 200
    )


def test_oversized_body_is_refused_before_it_is_read(enc: EncProcess) -> None:
    inc = new_id()
    big = make_n1(enc.notifier(), inc, photo=jpeg((400, 400), quality=95, noisy=True))
    assert len(big) > 70_000
    r = enc.post(big)
    assert r.status_code == 413

    # Without a Content-Length (chunked), the limit applies while streaming.
    def chunks() -> Iterator[bytes]:
        yield big[:10_000]
        for _ in range(20):
            yield b"\0" * 10_000

    r = httpx.post(
        enc.url + "/v1/alerts", content=chunks(), headers={"Content-Type": COSE}, timeout=10
    )
    assert r.status_code == 413
    assert inc not in ids(enc)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe garbage",
        cbor2.dumps([1, 2, 3]),
        cbor2.dumps(cbor2.CBORTag(16, [b"", {}, b""])),
        cbor2.dumps(cbor2.CBORTag(16, [b"\xa0", {5: b"x" * 12}, b"y" * 40])),
    ],
)
def test_malformed_cbor_is_refused(enc: EncProcess, body: bytes) -> None:
    r = enc.post(body)
    assert r.status_code == 400
    assert r.text == "bad request\n"


def test_unknown_kid_and_wrong_key_are_refused(enc: EncProcess) -> None:
    a, b = new_id(), new_id()
    other_kid = enc.notifier(kid=bytes.fromhex("0102030405060708"))
    assert enc.post(make_n1(other_kid, a)).status_code == 401
    wrong_key = enc.notifier(key=secrets.token_bytes(32))
    r = enc.post(make_n1(wrong_key, b))
    assert r.status_code == 401
    assert r.text == "unauthorized\n"
    assert not {a, b} & ids(enc)


def test_stale_timestamp_is_refused(enc: EncProcess) -> None:
    inc = new_id()
    r = enc.post(make_n1(enc.notifier(), inc, now=now_ms() - 5 * 60_000))
    assert r.status_code == 400
    assert inc not in ids(enc)


def test_other_message_types_are_refused(enc: EncProcess) -> None:
    # An N2 (ENC -> server) sent to the ENC: right key, wrong direction.
    cipher = p.AesGcmCipher(enc.key)
    n2 = p.seal(
        p.N2Receipt(tenc=now_ms(), inc="inc-1", h=b"\0" * 32),
        cipher=cipher,
        kid=SERVER_KID,
        random=secrets.token_bytes,
    )
    assert enc.post(n2).status_code == 400


def test_get_and_unknown_paths_do_not_leak(enc: EncProcess) -> None:
    r = httpx.get(enc.url + "/v1/alerts", timeout=5)
    assert r.status_code == 405 and "Traceback" not in r.text
    r = httpx.get(enc.url + "/nothing-here", timeout=5)
    assert r.status_code == 404
    assert "server" not in {k.lower() for k in r.headers}


def test_photo_over_the_limit_inside_a_small_enough_body_is_refused(tmp_path: Path) -> None:
    # max_body above max_photo: a body that fits but whose photo does not.
    e = EncProcess(
        tmp_path / "enc", extra_toml="[limits]\nmax_photo_bytes = 4096\nmax_body_bytes = 200000\n"
    ).start()
    try:
        r = e.post(make_n1(e.notifier(), photo=jpeg((200, 200), noisy=True)))
        assert r.status_code in (400, 413)
        assert e.alerts() == []
    finally:
        e.stop()


# -- durability ---------------------------------------------------------------------


def test_restart_keeps_alerts(fresh_enc: EncProcess) -> None:
    enc = fresh_enc
    notifier = enc.notifier()
    assert enc.post(make_n1(notifier, "inc-a")).status_code == 200
    enc.stop()
    assert enc.proc is not None and enc.proc.returncode == 0
    enc.start()
    assert [a["incident_id"] for a in enc.alerts()] == ["inc-a"]
    # The same incident after the restart (the replay cache is empty now): answered, kept once.
    r = enc.post(make_n1(notifier, "inc-a"))
    assert r.status_code == 200
    assert isinstance(notifier.receive(r.content, now_ms())[0], p.AlertConfirmed)
    assert len(enc.alerts()) == 1


def test_killed_enc_keeps_every_answered_alert(fresh_enc: EncProcess) -> None:
    enc = fresh_enc
    notifier = enc.notifier()
    for i in range(3):
        assert enc.post(make_n1(notifier, f"inc-{i}")).status_code == 200
    enc.stop(signal.SIGKILL)
    enc.start()
    assert sorted(a["incident_id"] for a in enc.alerts()) == ["inc-0", "inc-1", "inc-2"]


def test_config_errors_are_reported_with_file_and_key(tmp_path: Path) -> None:
    e = EncProcess(tmp_path / "enc", extra_toml="[limits]\nmax_body = 5\n")
    r = citywatch("enc", "run", "--config", str(e.config), check=False)
    assert r.returncode == 2
    assert f"{e.config}: limits.max_body" in r.stderr and "Traceback" not in r.stderr
    (e.workdir / "server-1.key").chmod(0o644)
    e.config.write_text(e.config.read_text().replace("max_body = 5\n", ""))
    r = citywatch("enc", "run", "--config", str(e.config), check=False)
    assert r.returncode == 2
    assert f"servers.{SERVER_KID.hex()}.key_file" in r.stderr and "chmod 600" in r.stderr


def test_config_example_runs_as_is(tmp_path: Path) -> None:
    conf = tmp_path / "enc.toml"
    conf.write_text(citywatch("enc", "config", "example").stdout)
    port = free_port()
    conf.write_text(conf.read_text().replace("port = 8700", f"port = {port}"))
    env = dict(os.environ)
    proc = subprocess.Popen(
        [CITYWATCH, "enc", "run", "--config", str(conf)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # No server is trusted yet: any alert is refused as unauthorised.
        n1 = make_n1(
            p.EncNotifier(
                kid=SERVER_KID, cipher=p.AesGcmCipher(b"k" * 32), random=secrets.token_bytes
            )
        )
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/alerts",
            content=n1,
            headers={"Content-Type": COSE},
            timeout=5,
        )
        assert r.status_code == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert (tmp_path / "var" / "enc" / "enc.sqlite3").is_file()
    assert b"Traceback" not in out


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enc.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    workdir.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = workdir / "enc.crt", workdir / "enc.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def test_https_with_a_certificate(tmp_path: Path) -> None:
    import ssl

    cert, key = _self_signed(tmp_path / "enc")
    e = EncProcess(tmp_path / "enc")
    e.config.write_text(
        e.config.read_text().replace(
            'host = "127.0.0.1"\n', f'host = "127.0.0.1"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        )
    )
    with open(e.log, "ab") as out:
        e.proc = subprocess.Popen(
            [CITYWATCH, "enc", "run", "--config", str(e.config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ctx = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{e.port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", verify=ctx, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert e.proc.poll() is None and time.monotonic() < deadline, e.log.read_text()
            time.sleep(0.05)
        notifier = e.notifier()
        r = httpx.post(
            url + "/v1/alerts",
            content=make_n1(notifier, "inc-tls"),
            headers={"Content-Type": COSE},
            verify=ctx,
            timeout=10,
        )
        assert r.status_code == 200
        assert isinstance(notifier.receive(r.content, now_ms())[0], p.AlertConfirmed)
        # A client that does not trust the certificate gets nowhere.
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{e.port}/healthz", timeout=5)
    finally:
        e.stop()
    assert [a["incident_id"] for a in e.alerts()] == ["inc-tls"]
