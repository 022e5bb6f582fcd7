"""The device config (edge.toml): strict, errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import protocol as p
from edge._config import EdgeConfigError, load_config, parse_config

GOOD = """\
uid = "pole-0042"
kid_hex = "0123456789ABCDEF"
alg = "A256GCM"
zone = "old-town"
state_dir = "state"

[position]
lat = 52.2297
lon = 21
alt = 110.5

[key_store]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "citywatch"
pin_file = "token.pin"

[broker]
host = "broker.example"
port = 8883

[broker.tls]
ca_file = "ca.pem"

[outbox]
max_incidents = 50

[protocol]
c4_timeout_s = 12.5

[camera]
driver = "scene"
folder = "/srv/scenes/lying"

[prescreen.person_down]
still_s = 5
"""


def write(tmp_path: Path, text: str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_complete_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.uid == "pole-0042" and cfg.kid == bytes.fromhex("0123456789abcdef")
    assert cfg.alg_id == p.ALG_A256GCM
    assert cfg.key_label == "citywatch-0123456789abcdef"
    assert cfg.position.lon == 21.0 and isinstance(cfg.position.lon, float)
    # Relative paths are relative to the config file's folder.
    assert cfg.state_dir == tmp_path.resolve() / "state"
    assert cfg.key_store.pin_file == tmp_path.resolve() / "token.pin"
    assert cfg.broker.tls is not None and cfg.broker.tls.ca_file == tmp_path.resolve() / "ca.pem"
    assert cfg.topic("up") == "citywatch/v1/0123456789abcdef/up"
    assert cfg.topic("status") == "citywatch/v1/0123456789abcdef/status"
    assert cfg.outbox.max_incidents == 50 and cfg.outbox.max_bytes == 256 * 1024 * 1024
    timing = cfg.protocol.timing()
    assert timing.c4_timeout_ms == 12_500 and timing.c2_timeout_ms == p.Timing().c2_timeout_ms
    assert cfg.protocol.limits().max_photo == p.DEFAULT_MAX_PHOTO
    # Driver sections are free-form tables until the drivers' models replace them.
    assert cfg.camera == {"driver": "scene", "folder": "/srv/scenes/lying"}
    assert cfg.prescreen == {"person_down": {"still_s": 5}}
    assert cfg.gnss == {}


def test_defaults(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "uid": "u",
            "kid_hex": "00" * 8,
            "zone": "z",
            "position": {"lat": 1.0, "lon": 2.0},
            "key_store": {"module": "/m.so", "pin": "secret-1234"},
            "broker": {"host": "h", "password": "hunter2"},
        }
    )
    assert str(cfg.state_dir) == "/var/lib/citywatch"
    assert cfg.broker.port == 1883 and cfg.broker.tls is None and cfg.broker.tcp_nodelay
    assert cfg.broker.topic_prefix == "citywatch/v1"
    assert cfg.protocol.timing() == p.Timing()
    assert cfg.read_pin() == "secret-1234"
    assert "secret-1234" not in repr(cfg) and "hunter2" not in repr(cfg)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ("[broker]\nhost = 'h'\nprot = 1883", "broker.prot: unknown key"),
        ("[broker]\nhost = 'h'\nport = '1883'", "broker.port"),
        ("[broker]\nhost = 'h'\nport = 70000", "broker.port"),
        ("[outbox]\nmax_incidents = 0", "outbox.max_incidents"),
        ("[position]\nlat = 91.0\nlon = 0.0", "position.lat"),
        ("colour = 'red'", "colour: unknown key"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, change: str, where: str) -> None:
    text = GOOD
    section = change.split("\n")[0]
    if section.startswith("["):
        # Replace that section of GOOD by the changed one.
        start = text.index(section)
        end = text.find("\n[", start + 1)
        text = text[:start] + change + "\n" + (text[end:] if end != -1 else "")
    else:
        text = change + "\n" + text
    path = write(tmp_path, text)
    with pytest.raises(EdgeConfigError) as info:
        load_config(path)
    assert f"{path}: {where}" in str(info.value)


@pytest.mark.parametrize(
    ("key_store", "words"),
    [
        ('module = "/m.so"', "exactly one of 'pin' and 'pin_file'"),
        ('module = "/m.so"\npin = "1"\npin_file = "p"', "exactly one of 'pin' and 'pin_file'"),
        ('module = "/m.so"\npin = "1"\nmax_key_bits = 192', "key_store.max_key_bits"),
    ],
)
def test_key_store_section(tmp_path: Path, key_store: str, words: str) -> None:
    text = GOOD.replace(
        'module = "/usr/lib/softhsm/libsofthsm2.so"\ntoken_label = "citywatch"\n'
        'pin_file = "token.pin"',
        key_store,
    )
    with pytest.raises(EdgeConfigError, match=words):
        load_config(write(tmp_path, text))


def test_tls_client_certificate_needs_its_key(tmp_path: Path) -> None:
    text = GOOD.replace('ca_file = "ca.pem"', 'ca_file = "ca.pem"\ncert_file = "c.pem"')
    with pytest.raises(EdgeConfigError, match=r"broker\.tls: 'cert_file' and 'key_file' go"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("line", "key"),
    [('kid_hex = "0123"', "kid_hex"), ('alg = "A192GCM"', "alg"), ('uid = ""', "uid")],
)
def test_identity(tmp_path: Path, line: str, key: str) -> None:
    name = line.split(" ")[0]
    text = "\n".join(line if x.startswith(f"{name} =") else x for x in GOOD.splitlines())
    with pytest.raises(EdgeConfigError, match=f"edge.toml: {key}"):
        load_config(write(tmp_path, text))


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "uid = \n"))
    with pytest.raises(EdgeConfigError, match=r"cannot read the device config.*provision"):
        load_config(tmp_path / "absent.toml")


def test_pin_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    with pytest.raises(EdgeConfigError, match=r"key_store\.pin_file: cannot read the PIN"):
        cfg.read_pin()
    (tmp_path / "token.pin").write_text("")
    with pytest.raises(EdgeConfigError, match=r"key_store\.pin_file"):
        cfg.read_pin()
    (tmp_path / "token.pin").write_text("8765\n")
    assert cfg.read_pin() == "8765"
