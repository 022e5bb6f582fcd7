"""Retention in the server's store (SQLite and PostgreSQL): photos of dismissed incidents
erased after their period, alerted ones after the ENC's receipt, decided incidents
deleted; never an undecided incident or an alert the ENC has not acknowledged; one audit
entry per purge; a dry run changes nothing; ``citywatch server purge --dry-run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as p
from server import MasterKey, Store, load_config, open_store
from server._store import DecisionRecord
from tests.support.world import T0

ROOT = Path(__file__).resolve().parents[2]
H = 3600 * 1000
DAY = 24 * H
PERIODS = (24 * H, 7 * DAY, 90 * DAY)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    return str(request.getfixturevalue("postgres").create_database(f"ret_{os.urandom(4).hex()}"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[Store]:
    s = Store.open(db_url, MasterKey(os.urandom(32)), clock=clock)
    yield s
    s.close()


def _incident(store: Store, decision: str | None) -> str:
    kid, cid = b"\x05" * 8, os.urandom(16)
    inc = p.IncidentReported(
        kid=kid,
        uid="pole-1",
        td=T0,
        cid=cid,
        incident_id=p.incident_id_for(kid, cid),
        coords=p.Coords(lat=52.2, lon=21.0, alt=None, acc=4.0),
        photo=b"\xff\xd8" + os.urandom(500),
        score=0.9,
        label="person_down",
        captured_at=T0 - 100,
        c3_hash=b"h" * 32,
    )
    info, _ = store.store_incident(inc, zone="z1")
    if decision is not None:
        store.decide_many([DecisionRecord(info.id, 0.9, False, decision == "dangerous", "t")])
    return info.id


def test_each_period_takes_only_what_it_should(store: Store, clock: Clock) -> None:
    undecided = _incident(store, None)
    dismissed = _incident(store, "dismissed")
    pending = _incident(store, "dangerous")  # the ENC never answered
    delivered = _incident(store, "dangerous")
    store.alert_delivered(delivered, tenc=T0)

    clock.now = T0 + 23 * H  # nothing is old enough yet
    assert store.purge(PERIODS).total == 0

    clock.now = T0 + 25 * H
    report = store.purge(PERIODS)
    assert report.photos_dismissed == (dismissed,) and report.photos_alerted == ()
    assert store.incident_photo(dismissed) == b""
    assert store.get_incident(dismissed).photo_bytes == 0
    assert store.get_incident(dismissed).lat == 52.2  # the record stays, its photo went
    assert store.incident_photo(delivered) != b""

    clock.now = T0 + 8 * DAY
    report = store.purge(PERIODS)
    assert report.photos_alerted == (delivered,) and report.photos_dismissed == ()
    assert store.incident_photo(pending) != b""  # not delivered: kept

    clock.now = T0 + 91 * DAY
    report = store.purge(PERIODS)
    assert sorted(report.incidents) == sorted([dismissed, delivered])
    ids = {i.id for i in store.list_incidents(limit=100)}
    assert ids == {undecided, pending}
    assert store.outbox_depth() == 1  # the pending alert is still there to deliver

    audit = [e for e in store.audit_log(limit=50) if e.action == "retention.purge"]
    assert [e.detail["incidents"] for e in audit] == [2, 0, 0]
    assert [e.detail["photos_dismissed"] for e in audit] == [0, 0, 1]


def test_a_dry_run_changes_nothing(store: Store, clock: Clock) -> None:
    dismissed = _incident(store, "dismissed")
    clock.now = T0 + 100 * DAY
    report = store.purge(PERIODS, dry_run=True)
    assert report.dry_run and report.incidents == (dismissed,)
    assert store.incident_photo(dismissed) != b""
    assert not [e for e in store.audit_log(limit=10) if e.action == "retention.purge"]


def test_zero_keeps_for_ever(store: Store, clock: Clock) -> None:
    _incident(store, "dismissed")
    clock.now = T0 + 1000 * DAY
    assert store.purge((None, None, None)).total == 0


def test_purge_from_the_command_line(tmp_path: Path) -> None:
    cfg_path = tmp_path / "server.toml"
    cfg_path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[admin]\nenabled = false\n'
        "[retention]\ndismissed_photo_hours = 0.0001\n"
    )
    cfg = load_config(cfg_path)
    store, _ = open_store(cfg, announce=False)
    dismissed = _incident(store, "dismissed")
    store.close()
    import time

    time.sleep(0.5)  # 0.36 s of retention

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "citywatch.cli",
                "server",
                "purge",
                "--config",
                str(cfg_path),
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    dry = cli("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1 photo(s) of dismissed incidents would be erased" in dry.stdout
    assert dismissed in dry.stdout
    done = cli("--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["photos_dismissed"] == [dismissed]
    again = cli("--dry-run", "--json")
    assert json.loads(again.stdout)["photos_dismissed"] == []
    store, _ = open_store(cfg, announce=False)
    [entry] = [e for e in store.audit_log(limit=10) if e.action == "retention.purge"]
    assert entry.actor.startswith("cli:") and entry.detail["ids"] == [dismissed]
    store.close()


def test_a_purge_on_a_full_disk_removes_nothing_and_says_so(tmp_path: Path) -> None:
    """A real 8 MiB tmpfs, filled: the purge's transaction fails whole."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount an 8 MiB tmpfs ({done.stderr.strip()}): needs root")
    try:
        clock = Clock()
        store = Store.open(f"sqlite:///{mnt / 'server.db'}", MasterKey(os.urandom(32)), clock=clock)
        ids = [_incident(store, "dismissed") for _ in range(5)]
        fd = os.open(mnt / "ballast", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill what is left
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        clock.now = T0 + 100 * DAY
        from server._errors import RegistryError

        try:
            report = store.purge(PERIODS)
        except RegistryError as exc:
            assert "nothing was removed" in str(exc)
            assert {i.id for i in store.list_incidents(limit=100)} == set(ids)
            assert all(store.incident_photo(i) for i in ids)
            (mnt / "ballast").unlink()
            report = store.purge(PERIODS)
        assert sorted(report.incidents) == sorted(ids)
        assert store.list_incidents(limit=100) == []
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
