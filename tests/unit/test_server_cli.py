"""``citywatch server ...`` commands, run in-process against a SQLite data directory."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from citywatch.cli import main
from server import example_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "server.toml"
    # No server runs here: point the admin API at a port where nothing listens, so the
    # window commands take the database path.
    from tests.support.services import free_port

    text = example_config(data_dir="./var").replace("port = 8600", f"port = {free_port()}")
    path.write_text(text)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["server", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_config_example_prints_valid_toml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "config", "example", "--data-dir", "/srv/citywatch")
    assert code == 0 and 'data_dir = "/srv/citywatch"' in out
    (tmp_path / "s.toml").write_text(out)
    code, out, _ = run(capsys, "config", "check", "--config", str(tmp_path / "s.toml"))
    assert code == 0 and "valid" in out


def test_device_lifecycle(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> None:
    c = ["--config", str(config), "--actor", "alice"]
    bundle = tmp_path / "pole-1.json"
    code, out, _ = run(
        capsys,
        "device",
        "add",
        *c,
        "--uid",
        "pole-1",
        "--zone",
        "old-town",
        "--lat",
        "52.25",
        "--lon",
        "21.01",
        "--bundle-out",
        str(bundle),
    )
    assert code == 0, out
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    b = json.loads(bundle.read_text())
    assert set(b) >= {"uid", "kid_hex", "alg", "key_hex", "server"}
    assert b["uid"] == "pole-1" and b["alg"] == "A256GCM" and len(bytes.fromhex(b["key_hex"])) == 32
    assert b["server"] == {
        "host": "localhost",
        "port": 1883,
        "tls": False,
        "ca_pem": None,
        "topic_prefix": "citywatch/v1",
    }
    # The kid is a pseudonym: nothing of the UID in it.
    assert b"pole" not in bytes.fromhex(b["kid_hex"])

    code, _, err = run(
        capsys,
        "device",
        "add",
        *c,
        "--uid",
        "pole-1",
        "--zone",
        "z",
        "--lat",
        "0",
        "--lon",
        "0",
        "--bundle-out",
        str(tmp_path / "x.json"),
    )
    assert code == 2 and "already registered" in err
    code, _, err = run(
        capsys,
        "device",
        "add",
        *c,
        "--uid",
        "pole-2",
        "--zone",
        "z",
        "--lat",
        "0",
        "--lon",
        "0",
        "--bundle-out",
        str(bundle),
    )
    assert code == 2 and "exists" in err  # never overwrite another device's key
    code, _, _ = run(
        capsys,
        "device",
        "add",
        *c,
        "--uid",
        "pole-2",
        "--zone",
        "z",
        "--lat",
        "0",
        "--lon",
        "0",
        "--alg",
        "A128GCM",
        "--bundle-out",
        str(tmp_path / "pole-2.json"),
    )
    assert code == 0
    assert len(bytes.fromhex(json.loads((tmp_path / "pole-2.json").read_text())["key_hex"])) == 16

    code, out, _ = run(capsys, "device", "list", *c)
    assert code == 0 and "pole-1" in out and "old-town" in out and b["kid_hex"] in out
    for action, status in [
        ("block", "blocked"),
        ("unblock", "active"),
        ("deactivate", "inactive"),
        ("activate", "active"),
    ]:
        code, out, _ = run(capsys, "device", action, "pole-1", *c)
        assert code == 0 and out.strip() == f"device pole-1: {status}"
    code, _, err = run(capsys, "device", "block", "ghost", *c)
    assert code == 2 and "no device" in err
    code, out, _ = run(capsys, "device", "delete", "pole-2", *c)
    assert code == 0
    code, out, _ = run(capsys, "device", "list", *c, "--json")
    assert [d["uid"] for d in json.loads(out)] == ["pole-1"]

    code, out, _ = run(capsys, "audit", *c, "--json")
    entries = json.loads(out)
    assert {e["actor"] for e in entries} == {"alice"}
    assert [e["action"] for e in reversed(entries)] == [
        "device.add",
        "device.add",
        "device.block",
        "device.unblock",
        "device.deactivate",
        "device.activate",
        "device.delete",
    ]


def test_windows_without_a_running_server(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    c = ["--config", str(config), "--actor", "bob"]
    code, out, _ = run(
        capsys, "window", "open", *c, "--zone", "old-town", "--until", "2099-01-01T06:00+01:00"
    )
    assert code == 0 and "picks it up" in out
    code, out, _ = run(capsys, "window", "list", *c, "--json")
    data = json.loads(out)
    assert data["zones"] == {"old-town": 4070926800000}
    code, _, err = run(capsys, "window", "open", *c, "--zone", "z", "--until", "yesterday")
    assert code == 2 and "ISO 8601" in err
    code, _, err = run(capsys, "window", "open", *c, "--zone", "z", "--until", "2000-01-01T00:00Z")
    assert code == 2 and "past" in err
    code, out, _ = run(capsys, "window", "close", *c, "--zone", "old-town")
    assert code == 0 and "1 operator window(s) closed" in out
    code, out, _ = run(capsys, "window", "list", *c, "--json")
    assert json.loads(out)["zones"] == {}


def test_incidents_empty_and_bad_config(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "incidents", "--config", str(config))
    assert code == 0 and "no incidents" in out
    code, out, _ = run(capsys, "incidents", "--config", str(config), "--json")
    assert json.loads(out) == []
    bad = tmp_path / "bad.toml"
    bad.write_text('[broker]\nport = "x"\n')
    code, _, err = run(capsys, "device", "list", "--config", str(bad))
    assert code == 2 and "bad.toml: broker.port: Input should be a valid integer" in err


def test_incidents_show_a_fused_report(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    import os

    import protocol as p
    from server import load_config, open_store
    from server._store import DecisionRecord
    from tests.support.world import T0, jpeg

    store, _ = open_store(load_config(config))
    try:
        reports = []
        for i, uid in enumerate(("pole-a", "pole-b")):
            device, _ = store.add_device(uid=uid, zone="z", lat=52.2, lon=21.0, alg=3, actor="t")
            cid = os.urandom(16)
            inc = p.IncidentReported(
                kid=device.kid,
                uid=uid,
                td=T0,
                cid=cid,
                incident_id=p.incident_id_for(device.kid, cid),
                coords=p.Coords(lat=52.2 + 0.0001 * i, lon=21.0, alt=None, acc=4.0),
                photo=jpeg(),
                score=0.9,
                label="person_down",
                captured_at=T0,
                c3_hash=bytes(32),
            )
            store.store_incident(inc, zone="z")
            reports.append(inc)
        assert store.decide_many(
            [
                DecisionRecord(
                    r.incident_id, 0.9, False, True, "r", fuse_within_m=50, fuse_within_ms=120_000
                )
                for r in reports
            ]
        ) == ["dangerous", "fused"]
    finally:
        store.close()
    code, out, _ = run(capsys, "incidents", "--config", str(config))
    assert code == 0 and f"fused into {reports[0].incident_id}" in out
    code, out, _ = run(capsys, "incidents", "--config", str(config), "--json")
    fused = {i["id"]: i["fused_into"] for i in json.loads(out)}
    assert fused == {reports[0].incident_id: None, reports[1].incident_id: reports[0].incident_id}
