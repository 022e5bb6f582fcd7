"""Server configuration: strict TOML, errors that name the file and the key, the
example config, the key files and their modes."""

from __future__ import annotations

import datetime as dt
import os
import stat
import tomllib
from pathlib import Path

import pytest

from server import (
    ConfigError,
    MasterKey,
    MasterKeyError,
    ScheduleConfig,
    example_config,
    load_config,
    open_store,
    scheduled_until,
)
from server._keys import read_key_file


def write(tmp_path: Path, text: str, name: str = "server.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_example_config_is_valid_and_complete(tmp_path: Path) -> None:
    path = write(tmp_path, example_config(data_dir="./data"))
    cfg = load_config(path)
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.broker.host == "localhost" and cfg.broker.port == 1883
    assert cfg.database_url == f"sqlite:///{tmp_path / 'data' / 'server.db'}"
    # Every section of the model appears in the example, so nothing is undocumented.
    doc = tomllib.loads(path.read_text())
    for section in ("database", "broker", "master_key", "enc", "verification", "timing", "admin"):
        assert set(doc[section]) >= {
            k
            for k in type(getattr(cfg, section)).model_fields
            if k not in ("ca_file", "cert_file", "key_file")
        }, section


def test_example_server_kid_is_random(tmp_path: Path) -> None:
    a = tomllib.loads(example_config())["enc"]["server_kid"]
    b = tomllib.loads(example_config())["enc"]["server_kid"]
    assert a != b and len(bytes.fromhex(a)) == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[broker]\nport = "x"\n', "server.toml: broker.port: Input should be a valid integer"),
        (
            "[broker]\nport = 70000\n",
            "server.toml: broker.port: Input should be less than or equal",
        ),
        ('[broker]\nhots = "a"\n', "server.toml: broker.hots: Extra inputs are not permitted"),
        ("colour = 1\n", "server.toml: colour: Extra inputs are not permitted"),
        ("[verification]\nthreshold = 1.5\n", "server.toml: verification.threshold:"),
        ('[broker]\ntls = "yes"\n', "server.toml: broker.tls: Input should be a valid boolean"),
        ('[enc]\nserver_kid = "abc"\n', "server.toml: enc.server_kid: String should match"),
        (
            '[[schedules]]\nzone = "a"\nkind = "daily"\nstart = "25:00"\n',
            "server.toml: schedules[0].start: must be HH:MM",
        ),
        (
            '[[schedules]]\nzone = "a"\nkind = "daily"\ntimezone = "Mars/Olympus"\n',
            "server.toml: schedules[0].timezone: unknown time zone",
        ),
        (
            '[[schedules]]\nzone = "a"\nkind = "once"\n',
            "server.toml: schedules[0]: a 'once' schedule needs 'from' and 'until'",
        ),
        ('[broker]\ncert_file = "c.pem"\n', "server.toml: broker: cert_file and key_file go"),
        ("data_dir = [\n", "server.toml: not valid TOML"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config example"):
        load_config(tmp_path / "nope.toml")


def test_schedules_nights_whole_days_and_once() -> None:
    nights = ScheduleConfig.model_validate(
        {
            "zone": "z",
            "kind": "daily",
            "start": "22:00",
            "end": "06:00",
            "timezone": "Europe/Warsaw",
        }
    )
    tz = dt.timezone(dt.timedelta(hours=1))  # Warsaw in winter

    def at(*a: int) -> int:
        return int(dt.datetime(*a, tzinfo=tz).timestamp() * 1000)

    assert scheduled_until(nights, at(2026, 1, 14, 21, 59)) is None
    assert scheduled_until(nights, at(2026, 1, 14, 22, 0)) == at(2026, 1, 15, 6, 0)
    assert scheduled_until(nights, at(2026, 1, 15, 5, 59)) == at(2026, 1, 15, 6, 0)
    assert scheduled_until(nights, at(2026, 1, 15, 6, 0)) is None
    weekend = nights.model_copy(update={"days": ["sat"]})
    assert scheduled_until(weekend, at(2026, 1, 16, 23, 0)) is None  # a Friday night
    assert scheduled_until(weekend, at(2026, 1, 17, 23, 0)) == at(2026, 1, 18, 6, 0)
    assert scheduled_until(weekend, at(2026, 1, 18, 3, 0)) == at(2026, 1, 18, 6, 0)

    always = ScheduleConfig.model_validate(
        {"zone": "z", "kind": "always", "timezone": "Europe/Warsaw"}
    )
    assert scheduled_until(always, at(2026, 1, 14, 13, 0)) == at(2026, 1, 16, 0, 0)

    once = ScheduleConfig.model_validate(
        {
            "zone": "z",
            "kind": "once",
            "from": dt.datetime(2026, 6, 1, 18, tzinfo=dt.UTC),
            "until": dt.datetime(2026, 6, 2, 1, tzinfo=dt.UTC),
        }
    )
    start = int(dt.datetime(2026, 6, 1, 18, tzinfo=dt.UTC).timestamp() * 1000)
    assert scheduled_until(once, start - 1) is None
    assert scheduled_until(once, start) == start + 7 * 3_600_000
    assert scheduled_until(once, start + 7 * 3_600_000) is None


def test_first_start_creates_private_key_files(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, example_config(data_dir="./d")))
    store, _ = open_store(cfg, announce=False)
    store.close()
    for name in ("master.key", "enc.key", "admin.token"):
        mode = stat.S_IMODE((tmp_path / "d" / name).stat().st_mode)
        assert mode == 0o600, name
    assert len(read_key_file(tmp_path / "d" / "master.key", what="k")) == 32


def test_refuses_a_master_key_others_can_read(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, example_config(data_dir="./d")))
    store, _ = open_store(cfg, announce=False)
    store.close()
    key = tmp_path / "d" / "master.key"
    os.chmod(key, 0o644)
    with pytest.raises(MasterKeyError, match=r"mode 0644.*chmod 600"):
        open_store(cfg, announce=False)


def test_refuses_to_replace_a_lost_master_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, example_config(data_dir="./d")))
    store, _ = open_store(cfg, announce=False)
    store.add_device(uid="pole-1", zone="z", lat=1.0, lon=2.0, alg=3, actor="t")
    store.close()
    (tmp_path / "d" / "master.key").unlink()
    with pytest.raises(MasterKeyError, match="restore that file"):
        open_store(cfg, announce=False)


def test_device_key_is_bound_to_its_kid_and_master_key() -> None:
    mk = MasterKey(os.urandom(32))
    sealed = mk.seal_device_key(b"k" * 32, kid=b"12345678")
    assert b"k" * 32 not in sealed
    assert mk.open_device_key(sealed, kid=b"12345678") == b"k" * 32
    with pytest.raises(MasterKeyError):
        mk.open_device_key(sealed, kid=b"87654321")
    with pytest.raises(MasterKeyError):
        MasterKey(os.urandom(32)).open_device_key(sealed, kid=b"12345678")
    assert "k" * 8 not in repr(mk)
