"""Photos and coordinates sealed at rest in the server's database, and the master key in
a real SoftHSM2 token: nothing in the database file or the key files reveals a photo, a
position or the key; a sealed field moved to another row does not open; a database
from before sealing is sealed at start-up; the token is needed to start, and its key
can be rotated."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from hardware import SoftHsmToken
from protocol import Coords, IncidentReported, incident_id_for
from server import load_config
from server._errors import MasterKeyError
from server._setup import open_store
from server._store import Store
from tests.support.world import jpeg

ROOT = Path(__file__).resolve().parents[2]
HERE = Coords(lat=52.229701, lon=21.012203, alt=110.5, acc=3.0, src="gps")


def _config(tmp_path: Path, master_key: str = "") -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    path = tmp_path / "server.toml"
    path.write_text(f'data_dir = "{data}"\n[admin]\nenabled = false\n' + master_key)
    return path


def _photo(n: int = 4000) -> bytes:
    """JPEG-like bytes, different every time."""
    return b"\xff\xd8" + secrets.token_bytes(n)


def _report(kid: bytes, photo: bytes, coords: Coords = HERE) -> IncidentReported:
    cid = secrets.token_bytes(16)
    return IncidentReported(
        kid=kid,
        uid="pole-1",
        cid=cid,
        incident_id=incident_id_for(kid, cid),
        coords=coords,
        score=0.9,
        label="person_down",
        captured_at=1_700_000_000_000,
        td=1_700_000_000_100,
        photo=photo,
        c3_hash=b"h" * 32,
    )


def _stored(store: Store, photo: bytes, coords: Coords = HERE) -> str:
    info, new = store.store_incident(_report(b"\x01" * 8, photo, coords), zone="z1")
    assert new
    return info.id


def test_photo_and_position_are_sealed_in_the_database(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    store, _ = open_store(cfg, announce=False)
    photo = jpeg((320, 240))
    incident = _stored(store, photo)
    got = store.get_incident(incident)
    assert (got.lat, got.lon, got.alt, got.acc) == (HERE.lat, HERE.lon, HERE.alt, HERE.acc)
    assert got.photo_bytes == len(photo)
    assert store.incident_photo(incident) == photo
    store.close()

    db = cfg.data_dir / "server.db"
    with sqlite3.connect(db) as conn:
        lat, lon, alt, acc, sealed, stored_photo = conn.execute(
            "SELECT lat, lon, alt, acc, coords_sealed, photo FROM incidents"
        ).fetchone()
    assert (lat, lon, alt, acc) == (None, None, None, None)
    assert sealed and stored_photo[:4] == b"CWS1"
    # An attacker with the database files: neither the photo nor a digit of the position.
    raw = b"".join(p.read_bytes() for p in cfg.data_dir.glob("server.db*"))
    assert photo[200:264] not in raw and photo[:64] not in raw
    assert b"52.2297" not in raw and b"21.0122" not in raw


def test_a_sealed_photo_moved_to_another_incident_does_not_open(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    store, _ = open_store(cfg, announce=False)
    first = _stored(store, _photo())
    second = _stored(store, _photo())
    with store.engine.begin() as conn:
        blob, coords = conn.execute(
            text("SELECT photo, coords_sealed FROM incidents WHERE id = :i"), {"i": first}
        ).one()
        conn.execute(
            text("UPDATE incidents SET photo = :p, coords_sealed = :c WHERE id = :i"),
            {"p": blob, "c": coords, "i": second},
        )
    with pytest.raises(MasterKeyError, match=f"photo of incident {second}"):
        store.incident_photo(second)
    with pytest.raises(MasterKeyError, match=f"position of incident {second}"):
        store.get_incident(second)
    assert store.incident_photo(first)  # the original still opens
    store.close()


def test_a_database_from_before_sealing_is_sealed_at_start(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    store, _ = open_store(cfg, announce=False)  # creates the key files
    store.close()
    db = cfg.data_dir / "server.db"
    db.unlink()
    # The schema of the release before sealing, with incidents in clear in it.
    engine = create_engine(f"sqlite:///{db}")
    from alembic import command

    from storage.migrate import alembic_config

    alembic = alembic_config(str(resources.files("server").joinpath("migrations")))
    with engine.begin() as conn:
        alembic.attributes["connection"] = conn
        command.upgrade(alembic, "0002")
        photos = {}
        for i in range(450):  # more than one sealing batch
            photos[f"old-{i:03d}"] = _photo(300)
            conn.execute(
                text(
                    "INSERT INTO incidents (id, kid, cid, device_uid, zone, lat, lon, alt, acc, "
                    "coords_src, photo, device_score, label, captured_at, td, received_at) VALUES "
                    "(:id, :kid, :cid, 'pole-1', 'z1', :lat, 21.5, NULL, 4.0, 'gps', :photo, 0.8, "
                    "'person_down', 1, 2, 3)"
                ),
                {
                    "id": f"old-{i:03d}",
                    "kid": b"\x02" * 8,
                    "cid": bytes(16),
                    "lat": 52.0 + i / 1000,
                    "photo": photos[f"old-{i:03d}"],
                },
            )
        # Alerts waiting for the ENC refer to incidents (ON DELETE CASCADE): the column
        # change must not take them with it.
        for i in range(0, 450, 9):
            conn.execute(
                text(
                    "INSERT INTO enc_outbox (incident_id, state, attempts, "
                    "next_attempt_at, lease_until, created_at) VALUES "
                    "(:id, 'pending', 0, 0, 0, 0)"
                ),
                {"id": f"old-{i:03d}"},
            )
    engine.dispose()

    store, _ = open_store(cfg, announce=False)
    assert store.sealed_counts() == (450, 0)
    assert store.outbox_depth() == 50
    got = store.get_incident("old-123")
    assert (got.lat, got.lon, got.acc) == (52.123, 21.5, 4.0)
    assert store.incident_photo("old-123") == photos["old-123"]
    audit = [e for e in store.audit_log(limit=10) if e.action == "store.seal"]
    assert sum(e.detail["count"] for e in audit) == 450
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM incidents WHERE lat IS NOT NULL OR "
            "substr(photo, 1, 4) != X'43575331'"
        ).fetchone() == (0,)
    # A second start finds nothing left to seal.
    store, _ = open_store(cfg, announce=False)
    assert store.sealed_counts() == (450, 0)
    store.close()


def _token_section(token: SoftHsmToken, tmp_path: Path, key_label: str) -> str:
    pin = tmp_path / "data" / "token.pin"
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_text(token.pin + "\n")
    pin.chmod(0o600)
    return (
        f'[master_key]\nsource = "pkcs11"\nmodule = "{token.module}"\n'
        f'token_label = "{token.label}"\nkey_label = "{key_label}"\n'
    )


def test_master_key_in_a_token_never_sits_in_clear_on_disk(
    tmp_path: Path, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    token = softhsm_tokens["citywatch-server"]
    label = f"kek-{secrets.token_hex(4)}"
    cfg = load_config(_config(tmp_path, _token_section(token, tmp_path, label)))
    store, master = open_store(cfg, announce=False)
    device, key = store.add_device(uid="pole-7", zone="z1", lat=52.0, lon=21.0, alg=3, actor="test")
    incident = _stored(store, _photo())
    store.close()
    wrapped = cfg.data_dir / "master.key.wrapped"
    assert not (cfg.data_dir / "master.key").exists()
    body = json.loads(wrapped.read_text())
    assert body["kek"] == label and body["format"] == "citywatch-wrapped-key-1"
    assert oct(wrapped.stat().st_mode & 0o777) == "0o600"
    # The ticket key is derived from the master key: not derivable from what is on disk.
    disk = b"".join(p.read_bytes() for p in cfg.data_dir.iterdir() if p.is_file())
    assert master.ticket_key not in disk

    # A restart unwraps the same master key: the device key and the photo open.
    store, again = open_store(cfg, announce=False)
    assert again.ticket_key == master.ticket_key
    found = store.device_by_kid(device.kid)
    assert found is not None and found[1] == key
    assert store.incident_photo(incident)
    store.close()


def test_without_the_token_or_its_key_the_server_does_not_start(
    tmp_path: Path, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    token = softhsm_tokens["citywatch-server"]
    cfg_path = _config(tmp_path, _token_section(token, tmp_path, f"kek-{secrets.token_hex(4)}"))
    store, _ = open_store(load_config(cfg_path), announce=False)
    store.add_device(uid="pole-8", zone="z1", lat=52.0, lon=21.0, alg=3, actor="test")
    store.close()
    text_ = cfg_path.read_text()
    # Another token (which has not got the key the file names).
    other = softhsm_tokens["citywatch-enc"]
    (tmp_path / "data" / "token.pin").write_text(other.pin + "\n")
    cfg_path.write_text(
        text_.replace(f'token_label = "{token.label}"', f'token_label = "{other.label}"')
    )
    with pytest.raises(MasterKeyError, match="does not hold: is this the right token"):
        open_store(load_config(cfg_path), announce=False)
    # The right token, a wrong PIN.
    cfg_path.write_text(text_)
    (tmp_path / "data" / "token.pin").write_text("000000\n")
    with pytest.raises(MasterKeyError, match="master key"):
        open_store(load_config(cfg_path), announce=False)
    # No PIN file.
    (tmp_path / "data" / "token.pin").unlink()
    with pytest.raises(MasterKeyError, match=r"token PIN file .* does not exist"):
        open_store(load_config(cfg_path), announce=False)
    # The wrapped file lost while device keys are stored: no fresh master key.
    (tmp_path / "data" / "token.pin").write_text(token.pin + "\n")
    (tmp_path / "data" / "token.pin").chmod(0o600)
    (tmp_path / "data" / "master.key.wrapped").unlink()
    with pytest.raises(MasterKeyError, match=r"wrapped master key file .* is missing"):
        open_store(load_config(cfg_path), announce=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citywatch.cli", "server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_moving_the_master_key_into_the_token_and_rotating_its_key(
    tmp_path: Path, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    token = softhsm_tokens["citywatch-server"]
    label = f"kek-{secrets.token_hex(4)}"
    section = _token_section(token, tmp_path, label)
    cfg_path = _config(tmp_path)
    store, master = open_store(load_config(cfg_path), announce=False)
    incident = _stored(store, _photo())
    store.close()
    # Still source = "file", with the token settings beside it.
    cfg_path.write_text(
        cfg_path.read_text() + section.replace('source = "pkcs11"', 'source = "file"')
    )
    done = _cli("keys", "seal-master", "--config", str(cfg_path))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "data" / "master.key").exists()
    assert 'source = "pkcs11"' in done.stdout
    cfg_path.write_text(cfg_path.read_text().replace('source = "file"', 'source = "pkcs11"'))
    store, moved = open_store(load_config(cfg_path), announce=False)
    assert moved.ticket_key == master.ticket_key
    assert store.incident_photo(incident)
    store.close()

    done = _cli("keys", "rotate-kek", "--config", str(cfg_path))
    assert done.returncode == 0, done.stderr
    body = json.loads((tmp_path / "data" / "master.key.wrapped").read_text())
    assert body["kek"].startswith(label + "-")
    store, rotated = open_store(load_config(cfg_path), announce=False)
    assert rotated.ticket_key == master.ticket_key
    store.close()
    status = _cli("keys", "status", "--config", str(cfg_path))
    assert status.returncode == 0, status.stderr
    assert body["kek"] in status.stdout and "1 sealed, 0 in clear" in status.stdout
    # The old token key is gone: the wrapped file from before rotation no longer opens.
    from hardware import Pkcs11KeyStore

    with Pkcs11KeyStore(*token) as ks:
        assert not ks.has_key(label)
