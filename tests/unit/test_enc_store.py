"""The ENC's alert store, the same tests on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import enc
import protocol as p
from enc._schema import Base
from tests.support.world import T0, jpeg

STORE_KEY = bytes(range(32))
"""The store key photos and positions are sealed under in these tests."""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'enc.sqlite3'}"
    return str(request.getfixturevalue("postgres").create_database(f"encs_{secrets.token_hex(4)}"))


@pytest.fixture
def store(url: str) -> Iterator[enc.AlertStore]:
    s = enc.AlertStore.open(url, key=STORE_KEY)
    yield s
    s.close()


def received(
    inc: str = "inc-1", *, device: str = "pole-1", photo: bytes | None = None, ts: int = T0
) -> p.AlertReceived:
    return p.AlertReceived(
        server_kid=bytes.fromhex("5e5e5e5e00000001"),
        incident_id=inc,
        ts=ts,
        coords=p.Coords(lat=50.06, lon=19.94, alt=None, acc=7.5, src="fixed"),
        photo=photo or jpeg(),
        score=0.93,
        label="person_down",
        captured_at=ts - 1500,
        device_uid=device,
        n1_hash=b"\1" * 32,
    )


def test_alert_is_stored_idempotently(store: enc.AlertStore) -> None:
    photo = jpeg((80, 60))
    assert store.record_alert(received(photo=photo), received_at=T0 + 10) is True
    # A second N1 for the same incident (other values, later) changes nothing.
    other = received(photo=jpeg((30, 30)), ts=T0 + 5000)
    assert store.record_alert(other, received_at=T0 + 5010) is False
    a = store.alert("inc-1")
    assert (a.received_at, a.sent_at, a.captured_at) == (T0 + 10, T0, T0 - 1500)
    assert a.coords == p.Coords(lat=50.06, lon=19.94, alt=None, acc=7.5, src="fixed")
    assert a.status is enc.AlertStatus.NEW and a.taken_by is None
    assert store.photo("inc-1") == photo and a.photo_size == len(photo)
    assert [e.action for e in store.audit_trail("inc-1")] == ["received"]
    assert store.count() == 1


def test_concurrent_duplicates_store_one(store: enc.AlertStore) -> None:
    results: list[bool] = []
    lock = threading.Lock()

    def record() -> None:
        r = store.record_alert(received("inc-race"), received_at=T0)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=record) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.count() == 1


def test_listing_newest_first_and_by_device(store: enc.AlertStore) -> None:
    for i in range(5):
        store.record_alert(received(f"inc-{i}", device=f"pole-{i % 2}"), received_at=T0 + i)
    assert [a.incident_id for a in store.alerts()] == [f"inc-{i}" for i in (4, 3, 2, 1, 0)]
    assert [a.incident_id for a in store.alerts(device_uid="pole-1")] == ["inc-3", "inc-1"]
    assert [a.incident_id for a in store.alerts(device_uid="pole-0", before=T0 + 4)] == [
        "inc-2",
        "inc-0",
    ]
    assert len(store.alerts(limit=2)) == 2


def test_unknown_alert_is_not_found(store: enc.AlertStore) -> None:
    with pytest.raises(enc.NotFound):
        store.alert("nope")
    with pytest.raises(enc.NotFound):
        store.photo("nope")


def test_audit_trail_is_append_only_in_the_database(store: enc.AlertStore) -> None:
    store.record_alert(received(), received_at=T0)
    e = store.append_audit(at=T0 + 1, actor="alice", action="photo_viewed", incident_id="inc-1")
    assert e.id > 0 and store.audit_since(0)[-1] == e
    assert store.last_audit_id() == e.id
    for sql in ("UPDATE enc_audit SET actor = 'mallory'", "DELETE FROM enc_audit"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as c:
            c.execute(text(sql))
    assert [x.actor for x in store.audit_trail("inc-1")] == ["server:5e5e5e5e00000001", "alice"]


def test_migrations_are_idempotent_and_match_the_tables(url: str) -> None:
    enc.AlertStore.open(url, key=STORE_KEY).close()
    s = enc.AlertStore.open(url, key=STORE_KEY)  # a second start finds the schema up to date
    try:
        with s.engine.connect() as c:
            ctx = MigrationContext.configure(c, opts={"version_table": "enc_alembic_version"})
            assert ctx.get_current_revision() is not None
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == []
    finally:
        s.close()


def test_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(enc.StoreError, match="cannot open the alert store"):
        enc.AlertStore.open("postgresql+psycopg://nobody@127.0.0.1:1/none")
