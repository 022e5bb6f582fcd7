"""Photos and positions sealed at rest in the ENC's store, under a store key kept in a
file or wrapped under a key in a real SoftHSM2 token: the database file reveals neither,
a sealed photo moved to another alert does not open, alerts from before sealing are
sealed when the store opens, and a lost key is refused rather than replaced."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import enc
import protocol as p
from enc._errors import ConfigError, StoreError
from enc._keys import open_alert_store, rotate_store_kek, seal_store_key
from hardware import SoftHsmToken

T0 = 1_760_000_000_000


def _config(tmp_path: Path, extra: str = "") -> enc.EncConfig:
    path = tmp_path / "enc.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n' + extra)
    return enc.load_config(path)


def _alert(inc: str, photo: bytes) -> p.AlertReceived:
    return p.AlertReceived(
        server_kid=bytes.fromhex("5e5e5e5e00000001"),
        incident_id=inc,
        ts=T0,
        coords=p.Coords(lat=50.061947, lon=19.936856, alt=219.0, acc=7.5, src="gps"),
        photo=photo,
        score=0.93,
        label="person_down",
        captured_at=T0 - 1500,
        device_uid="pole-1",
        n1_hash=b"\1" * 32,
    )


def _photo() -> bytes:
    return b"\xff\xd8" + secrets.token_bytes(3000)


def test_the_database_holds_neither_photo_nor_position(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = open_alert_store(config)
    photo = _photo()
    assert store.record_alert(_alert("inc-1", photo), received_at=T0)
    a = store.alert("inc-1")
    assert (a.coords.lat, a.coords.lon, a.coords.alt) == (50.061947, 19.936856, 219.0)
    assert store.photo("inc-1") == photo
    assert store.alerts()[0].coords == a.coords
    store.close()
    assert (tmp_path / "data" / "store.key").stat().st_mode & 0o077 == 0
    raw = b"".join(f.read_bytes() for f in (tmp_path / "data").glob("enc.sqlite3*"))
    assert photo[100:164] not in raw
    assert b"50.0619" not in raw and b"19.9368" not in raw
    with sqlite3.connect(tmp_path / "data" / "enc.sqlite3") as conn:
        assert conn.execute("SELECT lat, lon, alt, acc FROM enc_alerts").fetchone() == (
            None,
            None,
            None,
            None,
        )


def test_a_sealed_photo_moved_to_another_alert_does_not_open(tmp_path: Path) -> None:
    store = open_alert_store(_config(tmp_path))
    store.record_alert(_alert("inc-1", _photo()), received_at=T0)
    store.record_alert(_alert("inc-2", _photo()), received_at=T0)
    with store.engine.begin() as conn:
        blob = conn.execute(
            text("SELECT jpeg FROM enc_photos WHERE incident_id = 'inc-1'")
        ).scalar_one()
        conn.execute(
            text("UPDATE enc_photos SET jpeg = :b WHERE incident_id = 'inc-2'"), {"b": blob}
        )
    with pytest.raises(StoreError, match="photo of alert inc-2 does not open"):
        store.photo("inc-2")
    store.close()


def test_alerts_from_before_sealing_are_sealed_when_the_store_opens(tmp_path: Path) -> None:
    config = _config(tmp_path)
    url = config.database_url
    (tmp_path / "data").mkdir()
    engine = create_engine(url)
    from alembic import command
    from alembic.config import Config

    from enc._store import _MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    photos = {f"old-{i}": _photo() for i in range(250)}  # more than one batch
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        for i, (inc, photo) in enumerate(photos.items()):
            conn.execute(
                text(
                    "INSERT INTO enc_alerts (incident_id, server_kid, device_uid, label, score, "
                    "lat, lon, alt, acc, coord_src, captured_at, sent_at, received_at, photo_size, "
                    "photo_sha256, status, status_at) VALUES (:i, '5e5e5e5e00000001', 'pole-1', "
                    "'person_down', 0.9, :lat, 19.5, NULL, 5.0, 'gps', 1, 2, :r, :n, 'x', 'new', "
                    ":r)"
                ),
                {"i": inc, "lat": 50.0 + i / 1000, "r": T0 + i, "n": len(photo)},
            )
            conn.execute(
                text("INSERT INTO enc_photos (incident_id, jpeg) VALUES (:i, :j)"),
                {"i": inc, "j": photo},
            )
    engine.dispose()
    store = open_alert_store(config, at=T0 + 999)
    assert store.sealed_counts() == (250, 0)
    assert store.photo("old-42") == photos["old-42"]
    assert store.alert("old-42").coords.lat == pytest.approx(50.042)
    sealed = [e for e in store.audit_since(0) if e.action == "store_sealed"]
    assert sum(e.detail["count"] for e in sealed) == 250
    store.close()
    with sqlite3.connect(tmp_path / "data" / "enc.sqlite3") as conn:
        assert conn.execute(
            "SELECT count(*) FROM enc_photos WHERE substr(jpeg, 1, 4) != X'43575331'"
        ).fetchone() == (0,)


def test_a_lost_store_key_is_refused_not_replaced(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = open_alert_store(config)
    store.record_alert(_alert("inc-1", _photo()), received_at=T0)
    store.close()
    (tmp_path / "data" / "store.key").unlink()
    with pytest.raises(StoreError, match=r"store key .* is missing, but the alert store holds 1"):
        open_alert_store(config)
    assert not (tmp_path / "data" / "store.key").exists()


def test_store_key_in_a_token(tmp_path: Path, softhsm_tokens: dict[str, SoftHsmToken]) -> None:
    token = softhsm_tokens["citywatch-enc"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "token.pin").write_text(token.pin + "\n")
    (data / "token.pin").chmod(0o600)
    label = f"enc-kek-{secrets.token_hex(4)}"
    section = (
        f'[store_key]\nsource = "pkcs11"\nmodule = "{token.module}"\n'
        f'token_label = "{token.label}"\nkey_label = "{label}"\n'
    )
    config = _config(tmp_path, section)
    store = open_alert_store(config)
    photo = _photo()
    store.record_alert(_alert("inc-1", photo), received_at=T0)
    store.close()
    assert not (data / "store.key").exists()
    assert json.loads((data / "store.key.wrapped").read_text())["kek"] == label
    store = open_alert_store(config)  # a restart unwraps the same key
    assert store.photo("inc-1") == photo
    store.close()
    (data / "token.pin").write_text("1111\n")
    with pytest.raises(ConfigError, match="store key: token"):
        open_alert_store(config)


def test_a_clear_store_key_moves_into_the_token_and_the_alerts_still_open(
    tmp_path: Path, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    token = softhsm_tokens["citywatch-enc"]
    data = tmp_path / "data"
    store = open_alert_store(_config(tmp_path))  # an ENC installed with source = "file"
    photo = _photo()
    store.record_alert(_alert("inc-1", photo), received_at=T0)
    store.close()
    (data / "token.pin").write_text(token.pin + "\n")
    (data / "token.pin").chmod(0o600)
    label = f"enc-kek-{secrets.token_hex(4)}"
    token_keys = (
        f'module = "{token.module}"\ntoken_label = "{token.label}"\nkey_label = "{label}"\n'
    )
    (tmp_path / "enc.toml").write_text(
        f'data_dir = "{data}"\n[store_key]\nsource = "file"\n{token_keys}'
    )
    cfg = str(tmp_path / "enc.toml")
    done = subprocess.run(
        [sys.executable, "-m", "citywatch", "enc", "keys", "seal-store-key", "--config", cfg],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert 'set [store_key] source = "pkcs11"' in done.stdout
    assert not (data / "store.key").exists()
    assert json.loads((data / "store.key.wrapped").read_text())["kek"] == label
    config = _config(tmp_path, f'[store_key]\nsource = "pkcs11"\n{token_keys}')
    store = open_alert_store(config)  # the same key, from the token
    assert store.photo("inc-1") == photo
    store.close()
    with pytest.raises(ConfigError, match="exists already: the store key is in the token"):
        seal_store_key(config)  # a second move has nothing to move

    old, new = rotate_store_kek(config, keep_old=False)  # the token key rotated
    assert old == label and json.loads((data / "store.key.wrapped").read_text())["kek"] == new
    store = open_alert_store(config)
    assert store.photo("inc-1") == photo
    store.close()
    with pytest.raises(ConfigError, match=r"rotate-kek needs \[store_key\] source"):
        rotate_store_kek(_config(tmp_path), keep_old=False)
