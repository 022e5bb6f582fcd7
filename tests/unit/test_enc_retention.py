"""Retention at the ENC (SQLite and PostgreSQL): photos of dismissed alerts deleted after
their period, closed alerts after theirs, open alerts never, the append-only audit trail
kept with one ``purged`` entry per purge; ``citywatch enc purge --dry-run``."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

import enc
import protocol as p
from enc._errors import NotFound
from enc._keys import open_alert_store
from enc._schema import AlertRow

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_760_000_000_000
H = 3600_000
DAY = 24 * H
PERIODS = (24 * H, 30 * DAY)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[enc.AlertStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'enc.sqlite3'}"
    else:
        url = str(
            request.getfixturevalue("postgres").create_database(f"encr_{secrets.token_hex(4)}")
        )
    s = enc.AlertStore.open(url, key=secrets.token_bytes(32))
    yield s
    s.close()


def _alert(store: enc.AlertStore, inc: str, status: str, at: int) -> str:
    store.record_alert(
        p.AlertReceived(
            server_kid=bytes.fromhex("5e5e5e5e00000001"),
            incident_id=inc,
            ts=T0,
            coords=p.Coords(lat=50.06, lon=19.94, alt=None, acc=7.5, src="gps"),
            photo=b"\xff\xd8" + secrets.token_bytes(300),
            score=0.9,
            label="person_down",
            captured_at=T0 - 1500,
            device_uid="pole-1",
            n1_hash=b"\1" * 32,
        ),
        received_at=T0,
    )
    with store.transaction(write=True) as s:  # as the operators left it
        s.execute(
            update(AlertRow).where(AlertRow.incident_id == inc).values(status=status, status_at=at)
        )
    return inc


def test_each_period_takes_only_what_it_should(store: enc.AlertStore) -> None:
    new = _alert(store, "new", "new", T0)
    taken = _alert(store, "taken", "acknowledged", T0)
    dismissed = _alert(store, "false-alarm", "dismissed", T0)
    dispatched = _alert(store, "helped", "dispatched", T0)
    audit_before = len(store.audit_since(0))

    assert store.purge(PERIODS, now=T0 + 23 * H).total == 0
    report = store.purge(PERIODS, now=T0 + 25 * H)
    assert report.photos == (dismissed,) and report.alerts == ()
    with pytest.raises(NotFound):
        store.photo(dismissed)
    assert store.alert(dismissed).status is enc.AlertStatus.DISMISSED  # the alert stays
    assert store.photo(dispatched)

    report = store.purge(PERIODS, now=T0 + 31 * DAY)
    assert sorted(report.alerts) == sorted([dismissed, dispatched]) and report.photos == ()
    assert {a.incident_id for a in store.alerts()} == {new, taken}
    assert store.photo(new) and store.photo(taken)

    entries = store.audit_since(0)
    purged = [e for e in entries if e.action == "purged"]
    assert [(e.detail["photos"], e.detail["alerts"]) for e in purged] == [(1, 0), (0, 2)]
    # The trail of a deleted alert is still there (append-only).
    assert [e.action for e in store.audit_trail(dispatched)] == ["received"]
    assert len(entries) == audit_before + 2


def test_photos_of_linked_reports_go_with_their_alerts(store: enc.AlertStore) -> None:
    from enc._linked import linked_reports, record_linked_report

    def report(inc: str, rep: str) -> None:
        record_linked_report(
            store,
            p.LinkedReportReceived(
                server_kid=bytes.fromhex("5e5e5e5e00000001"),
                incident_id=inc,
                report_id=rep,
                ts=T0,
                coords=p.Coords(lat=50.06, lon=19.94, alt=None, acc=7.5, src="gps"),
                photo=b"\xff\xd8" + secrets.token_bytes(100),
                score=0.9,
                label="fall",
                captured_at=T0 - 100,
                device_uid="pole-2",
                n3_hash=b"\2" * 32,
            ),
            received_at=T0,
        )

    dismissed = _alert(store, "false-alarm", "acknowledged", T0)
    kept = _alert(store, "taken", "acknowledged", T0)
    helped = _alert(store, "helped", "acknowledged", T0)
    for inc in (dismissed, kept, helped):
        report(inc, f"{inc}-r")
    with store.transaction(write=True) as s:
        s.execute(
            update(AlertRow).where(AlertRow.incident_id == dismissed).values(status="dismissed")
        )
        s.execute(
            update(AlertRow).where(AlertRow.incident_id == helped).values(status="dispatched")
        )
    assert store.purge(PERIODS, now=T0 + 25 * H).photos == (dismissed,)
    assert linked_reports(store, dismissed) == []
    assert [r.report_id for r in linked_reports(store, kept)] == ["taken-r"]
    assert store.purge(PERIODS, now=T0 + 31 * DAY).alerts == tuple(sorted((dismissed, helped)))
    assert linked_reports(store, helped) == []  # deleted with its alert
    assert [e.action for e in store.audit_trail(helped)] == ["received", "report_linked"]


def test_a_dry_run_changes_nothing(store: enc.AlertStore) -> None:
    closed = _alert(store, "old", "dispatched", T0)
    report = store.purge(PERIODS, now=T0 + 100 * DAY, dry_run=True)
    assert report.dry_run and report.alerts == (closed,)
    assert store.photo(closed)
    assert not [e for e in store.audit_since(0) if e.action == "purged"]


def test_purge_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "enc.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[retention]\nclosed_alert_days = 0.000001\n'
    )  # 86 ms
    config = enc.load_config(path)
    store = open_alert_store(config)
    import time

    now = time.time_ns() // 1_000_000
    closed = _alert(store, "closed-1", "dismissed", now - 1000)
    _alert(store, "open-1", "new", now - 1000)
    store.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(Path(sys.executable).with_name("citywatch")),
                "enc",
                "purge",
                "--config",
                str(path),
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
    assert "1 closed alert(s) would be deleted" in dry.stdout and closed in dry.stdout
    assert "open-1" not in dry.stdout
    done = cli("--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["alerts"] == [closed]
    store = open_alert_store(config)
    assert [a.incident_id for a in store.alerts()] == ["open-1"]
    [entry] = [e for e in store.audit_since(0) if e.action == "purged"]
    assert entry.actor == "cli" and entry.detail["ids"] == [closed]
    store.close()
