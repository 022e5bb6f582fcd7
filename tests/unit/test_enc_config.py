"""The ENC's TOML config: the example works, mistakes name the file and the key."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

import enc

KID = "5e5e5e5e00000001"


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "enc.toml"
    f.write_text(text)
    return f


def key_file(tmp_path: Path, data: bytes, mode: int = 0o600, name: str = "s.key") -> Path:
    f = tmp_path / name
    f.write_bytes(data)
    f.chmod(mode)
    return f


def test_example_loads_and_means_one_machine(tmp_path: Path) -> None:
    c = enc.load_config(write(tmp_path, enc.example_config()))
    assert c.base_url == "http://127.0.0.1:8700"
    assert c.data_dir == tmp_path / "var" / "enc"
    assert c.database_url == f"sqlite:///{tmp_path / 'var' / 'enc' / 'enc.sqlite3'}"
    assert c.servers == () and not c.secure_cookies
    assert c.dashboard.escalate_after_seconds == 120
    # Every section of the model is present in the example, so it documents them all.
    for section in ("[database]", "[http]", "[servers]", "[limits]", "[dashboard]", "[cap]"):
        assert section in enc.example_config()


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    c = enc.load_config(write(tmp_path, ""))
    assert c.http.port == 8700 and c.limits.max_body_bytes >= c.limits.max_photo_bytes


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("dat_dir = 'x'\n", "dat_dir"),
        ("[http]\nport = '8700'\n", "http.port"),
        ("[http]\nport = 70000\n", "http.port"),
        ("[http]\nhots = '127.0.0.1'\n", "http.hots"),
        ("[dashboard]\nescalate_after_seconds = 0\n", "dashboard.escalate_after_seconds"),
        ("[dashboard]\nsession_lifetime_minutes = 1.5\n", "dashboard.session_lifetime_minutes"),
        ("[cap]\nsender = 'has space'\n", "cap.sender"),
        ("[servers.XYZ]\nkey_file = 'k'\n", "servers"),
        ("[servers.5e5e5e5e00000001]\nkey = 'k'\n", "servers.5e5e5e5e00000001.key"),
        ("[limits]\nmax_body_bytes = 2000\nmax_photo_bytes = 4000\n", "limits.max_body_bytes"),
        ("[http]\nhost = '0.0.0.0'\n", "http.host"),
        ("[http]\ntls_cert = 'c.pem'\n", "http.tls_key"),
        ("[database]\nurl = 'mysql://x/y'\n", "database.url"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    f = write(tmp_path, text)
    with pytest.raises(enc.ConfigError) as e:
        enc.load_config(f)
    assert f"{f}: {where}" in str(e.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    f = write(tmp_path, "[http\n")
    with pytest.raises(enc.ConfigError, match=f"{f}: not valid TOML"):
        enc.load_config(f)
    with pytest.raises(enc.ConfigError, match=r"no such file.*config example"):
        enc.load_config(tmp_path / "nope.toml")


RAW32 = bytes(range(200, 232))
RAW16 = bytes(range(240, 256))


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (RAW32, RAW32),
        (RAW16, RAW16),
        (RAW32.hex().encode() + b"\n", RAW32),
        (RAW16.hex().upper().encode(), RAW16),
    ],
)
def test_server_keys_raw_or_hex(tmp_path: Path, data: bytes, key: bytes) -> None:
    key_file(tmp_path, data)
    c = enc.load_config(write(tmp_path, f"[servers.{KID}]\nkey_file = 's.key'\nname = 'S1'\n"))
    [s] = c.servers
    assert s.kid == bytes.fromhex(KID) and s.name == "S1"
    assert s.key == key
    assert s.key.hex() not in repr(s)


@pytest.mark.parametrize(
    ("data", "mode", "message"),
    [
        (secrets.token_bytes(32), 0o644, "readable by others.*chmod 600"),
        (secrets.token_bytes(32), 0o640, "readable by others"),
        (b"short", 0o600, "16- or 32-byte key"),
    ],
)
def test_bad_server_key_files(tmp_path: Path, data: bytes, mode: int, message: str) -> None:
    key_file(tmp_path, data, mode)
    f = write(tmp_path, f"[servers.{KID}]\nkey_file = 's.key'\n")
    with pytest.raises(enc.ConfigError, match=f"servers.{KID}.key_file: .*{message}"):
        enc.load_config(f)


def test_missing_key_file(tmp_path: Path) -> None:
    f = write(tmp_path, f"[servers.{KID}]\nkey_file = 'absent.key'\n")
    with pytest.raises(enc.ConfigError, match=f"{f}: servers.{KID}.key_file: cannot read"):
        enc.load_config(f)


def test_tls_paths_are_resolved_and_https_allows_any_host(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    c = enc.load_config(
        write(tmp_path, "[http]\nhost = '0.0.0.0'\ntls_cert = 'c.pem'\ntls_key = 'k.pem'\n")
    )
    assert c.http.tls_cert == str(tmp_path / "c.pem")
    assert c.base_url.startswith("https://") and c.secure_cookies


def test_postgres_url_is_taken_as_is(tmp_path: Path) -> None:
    url = "postgresql+psycopg://enc@db.invalid/enc"
    assert enc.load_config(write(tmp_path, f"[database]\nurl = '{url}'\n")).database_url == url
