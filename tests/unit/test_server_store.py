"""Server storage, the same tests on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event

import protocol as p
from server import (
    DeviceExists,
    DeviceNotFound,
    MasterKey,
    RegistryError,
    Store,
    make_engine,
    migrate,
)
from server._schema import Base
from server._store import DecisionRecord
from tests.support.world import T0, incident_report


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    pg = request.getfixturevalue("postgres")
    return str(pg.create_database(f"server_{uuid.uuid4().hex[:12]}"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[Store]:
    s = Store.open(db_url, MasterKey(os.urandom(32)), clock=clock)
    yield s
    s.close()


def test_migrations_match_the_models_and_rerun(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "server_alembic_version"})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == []


def test_registry_add_list_state_delete_audited(store: Store, clock: Clock) -> None:
    d, key = store.add_device(
        uid="pole-1", zone="old-town", lat=52.1, lon=21.0, alg=p.ALG_A256GCM, actor="alice"
    )
    assert len(key) == 32 and len(d.kid) == 8 and d.status == "active"
    d128, key128 = store.add_device(
        uid="pole-2", zone="old-town", lat=52.1, lon=21.0, alg=p.ALG_A128GCM, actor="alice"
    )
    assert len(key128) == 16 and d128.kid != d.kid
    with pytest.raises(DeviceExists):
        store.add_device(uid="pole-1", zone="x", lat=0, lon=0, alg=p.ALG_A256GCM, actor="a")
    found = store.device_by_kid(d.kid)
    assert found is not None and found[1] == key
    assert store.device_by_kid(b"\0" * 8) is None
    assert [x.uid for x in store.list_devices()] == ["pole-1", "pole-2"]

    clock.now += 1000
    assert store.set_device_state("pole-1", "block", actor="bob", reason="fakes").blocked
    assert store.set_device_state("pole-1", "deactivate", actor="bob").status == "blocked"
    assert store.set_device_state("pole-1", "unblock", actor="bob").status == "inactive"
    assert store.set_device_state("pole-1", "activate", actor="bob").status == "active"
    with pytest.raises(DeviceNotFound):
        store.set_device_state("nope", "block", actor="bob")
    with pytest.raises(RegistryError):
        store.set_device_state("pole-1", "explode", actor="bob")
    store.delete_device("pole-2", actor="carol")
    with pytest.raises(DeviceNotFound):
        store.get_device("pole-2")

    log = [(a.actor, a.action, a.subject) for a in reversed(store.audit_log())]
    assert log == [
        ("alice", "device.add", "pole-1"),
        ("alice", "device.add", "pole-2"),
        ("bob", "device.block", "pole-1"),
        ("bob", "device.deactivate", "pole-1"),
        ("bob", "device.unblock", "pole-1"),
        ("bob", "device.activate", "pole-1"),
        ("carol", "device.delete", "pole-2"),
    ]
    assert store.audit_log(subject="pole-1")[-1].detail["kid"] == d.kid.hex()
    assert [a.detail for a in store.audit_log() if a.action == "device.block"] == [
        {"reason": "fakes"}
    ]


def test_registry_rejects_bad_input(store: Store) -> None:
    for kwargs in (
        {"uid": ""},
        {"uid": "x" * 65},
        {"lat": 91.0},
        {"lon": -181.0},
        {"alg": 7},
        {"zone": ""},
    ):
        args = {"uid": "u", "zone": "z", "lat": 1.0, "lon": 1.0, "alg": p.ALG_A256GCM} | kwargs
        with pytest.raises(RegistryError):
            store.add_device(actor="t", **args)  # type: ignore[arg-type]


def test_keys_are_encrypted_at_rest(store: Store) -> None:
    _, key = store.add_device(uid="pole-1", zone="z", lat=1, lon=1, alg=p.ALG_A256GCM, actor="t")
    with store.engine.connect() as conn:
        from sqlalchemy import text

        sealed = conn.execute(text("SELECT key_sealed FROM devices")).scalar_one()
    assert key not in bytes(sealed) and len(sealed) == 12 + 32 + 16


def test_broadcast_epochs_compare_and_set(store: Store) -> None:
    d, _ = store.add_device(uid="pole-1", zone="z", lat=1, lon=1, alg=3, actor="t")
    assert store.epochs([d.kid]) == {d.kid: 0}
    assert store.record_broadcasts([(d.kid, 1, T0, b"a" * 32)]) == [True]
    # A replica that read epoch 0 too loses: it must seal again.
    assert store.record_broadcasts([(d.kid, 1, T0 + 1, b"b" * 32)]) == [False]
    assert store.last_broadcast(d.kid) == (1, T0, b"a" * 32)
    store.confirm_broadcast(d.kid, ep=1)
    assert store.last_broadcast(d.kid) is None  # confirmed: a second B2 is a replay
    info = store.get_device("pole-1")
    assert info.epoch == 1 and info.confirmed_epoch == 1


def test_broadcasts_are_read_and_confirmed_many_at_once(store: Store) -> None:
    """The B2s of a zone whose window opened arrive together: one read and one commit
    for all of them, each device's answer its own."""
    a, b, c = (
        store.add_device(uid=f"pole-{i}", zone="z", lat=1, lon=1, alg=3, actor="t")[0]
        for i in range(3)
    )
    assert store.record_broadcasts([(a.kid, 1, T0, b"a" * 32), (b.kid, 1, T0 + 1, b"b" * 32)]) == [
        True,
        True,
    ]
    assert store.last_broadcasts([a.kid, c.kid, b.kid, a.kid, os.urandom(8)]) == [
        (1, T0, b"a" * 32),
        None,  # never sent a B1
        (1, T0 + 1, b"b" * 32),
        (1, T0, b"a" * 32),
        None,  # no such device
    ]
    assert store.confirm_broadcasts([(a.kid, 1), (b.kid, 1)]) == [None, None]
    assert store.last_broadcasts([a.kid, b.kid]) == [None, None]  # a B2 again is a replay
    assert [store.get_device(f"pole-{i}").confirmed_epoch for i in range(3)] == [1, 1, None]
    assert store.confirm_broadcasts([]) == []


def test_windows_open_close_and_zone_announcements(store: Store, clock: Clock) -> None:
    with pytest.raises(RegistryError, match="past"):
        store.open_window("z", until=T0 - 1, actor="t")
    w = store.open_window("z", until=T0 + 60_000, actor="alice")
    store.open_window("y", until=T0 + 30_000, actor="alice")
    assert {x.zone for x in store.open_windows()} == {"z", "y"}
    clock.now += 10_000
    assert store.close_window("z", actor="bob") == 1
    assert store.close_window("z", actor="bob") == 0
    assert [x.zone for x in store.open_windows()] == ["y"]
    assert store.list_windows()[-1].id == w.id and store.list_windows()[-1].closed_by == "bob"
    assert store.open_windows(T0 + 30_000) == []

    assert store.claim_zone_announcement("z", old=None, new=5)
    assert not store.claim_zone_announcement("z", old=None, new=6)  # another replica won
    assert store.zone_announcements() == {"z": 5}
    assert store.claim_zone_announcement("z", old=5, new=None)
    assert store.zone_announcements() == {"z": None}
    assert [a.action for a in reversed(store.audit_log())] == [
        "window.open",
        "window.open",
        "window.close",
        "window.close",
    ]


def test_incidents_are_idempotent_and_decisions_queue_alerts(store: Store, clock: Clock) -> None:
    d, _ = store.add_device(uid="pole-1", zone="z", lat=1, lon=1, alg=3, actor="t")
    inc = incident_report(d.kid, d.uid)
    stored, new = store.store_incident(inc, zone="z")
    assert new and stored.id == inc.incident_id and stored.decision is None
    again, new2 = store.store_incident(inc, zone="z")
    assert not new2 and again.id == stored.id
    assert len(store.list_incidents()) == 1
    assert store.incident_photo(inc.incident_id) == inc.photo
    assert store.undecided_incidents() == [inc.incident_id]

    assert store.decide(inc.incident_id, score=0.8, uncertain=False, dangerous=True, reason="r")
    assert not store.decide(
        inc.incident_id, score=0.1, uncertain=False, dangerous=False, reason="second opinion"
    )  # decided once, never twice
    assert store.undecided_incidents() == []
    assert store.outbox_depth() == 1
    got = store.get_incident(inc.incident_id)
    assert (got.decision, got.server_score, got.enc_state, got.photo_bytes) == (
        "dangerous",
        0.8,
        "pending",
        len(inc.photo),
    )

    low = incident_report(d.kid, d.uid)
    store.store_incident(low, zone="z")
    store.decide(low.incident_id, score=0.1, uncertain=False, dangerous=False, reason="low")
    assert store.outbox_depth() == 1
    assert store.dismissed_count("pole-1", since=T0) == 1
    assert [i.id for i in store.list_incidents(decision="dismissed")] == [low.incident_id]


def test_a_batch_of_incidents_is_one_transaction_and_still_idempotent(store: Store) -> None:
    """What the server's group commit writes: new, repeated (in the batch and already
    stored) and from several devices, in one transaction."""
    a, _ = store.add_device(uid="pole-a", zone="za", lat=1, lon=1, alg=3, actor="t")
    b, _ = store.add_device(uid="pole-b", zone="zb", lat=1, lon=1, alg=3, actor="t")
    earlier = incident_report(a.kid, a.uid)
    store.store_incident(earlier, zone="za")
    store.decide(earlier.incident_id, score=0.9, uncertain=False, dangerous=True, reason="r")
    first, second = incident_report(a.kid, a.uid), incident_report(b.kid, b.uid)
    got = store.store_incidents([(first, "za"), (earlier, "za"), (second, "zb"), (first, "za")])
    assert [(info.id, new) for info, new in got] == [
        (first.incident_id, True),
        (earlier.incident_id, False),
        (second.incident_id, True),
        (first.incident_id, False),
    ]
    assert got[1][0].decision == "dangerous"  # the stored one, not the report again
    assert got[2][0].zone == "zb" and got[2][0].photo_bytes == len(second.photo)
    assert len(store.list_incidents()) == 3
    assert sorted(store.undecided_incidents()) == sorted([first.incident_id, second.incident_id])

    assert store.decide_many(
        [
            DecisionRecord(first.incident_id, 0.9, False, True, "r"),
            DecisionRecord(second.incident_id, 0.1, False, False, "low"),
            DecisionRecord(first.incident_id, 0.1, False, False, "second opinion"),
            DecisionRecord(earlier.incident_id, 0.1, False, False, "decided before"),
        ]
    ) == ["dangerous", "dismissed", None, None]
    assert store.outbox_depth() == 2  # earlier's and first's alerts, once each
    assert store.get_incident(first.incident_id).decision == "dangerous"


def test_outbox_leases_retries_and_delivery(store: Store, clock: Clock) -> None:
    d, _ = store.add_device(uid="pole-1", zone="z", lat=1, lon=1, alg=3, actor="t")
    inc = incident_report(d.kid, d.uid)
    store.store_incident(inc, zone="z")
    store.decide(inc.incident_id, score=0.8, uncertain=True, dangerous=True, reason="r")

    [item] = store.claim_due_alerts(owner="a", lease_ms=10_000, limit=5)
    assert item.incident_id == inc.incident_id and item.score == 0.8 and item.attempts == 0
    assert item.photo == inc.photo and item.device_uid == "pole-1"
    assert store.claim_due_alerts(owner="b", lease_ms=10_000, limit=5) == []  # leased
    clock.now += 10_001
    [stolen] = store.claim_due_alerts(owner="b", lease_ms=10_000, limit=5)  # lease lapsed
    store.alert_failed(stolen.incident_id, retry_at=clock.now + 5_000, error="HTTP 503")
    assert store.next_alert_due() == clock.now + 5_000
    assert store.claim_due_alerts(owner="a", lease_ms=10_000, limit=5) == []  # not yet due
    clock.now += 5_000
    [retry] = store.claim_due_alerts(owner="a", lease_ms=10_000, limit=5)
    assert retry.attempts == 1
    store.alert_delivered(retry.incident_id, tenc=clock.now)
    assert store.outbox_depth() == 0 and store.next_alert_due() is None
    got = store.get_incident(inc.incident_id)
    assert (got.enc_state, got.enc_attempts) == ("delivered", 2)
    clock.now += 10**9
    assert store.claim_due_alerts(owner="a", lease_ms=10_000, limit=5) == []


def test_alerts_are_leased_and_delivered_many_at_once(store: Store, clock: Clock) -> None:
    poles = [
        store.add_device(uid=f"pole-{i}", zone="z", lat=1, lon=1, alg=3, actor="t")[0]
        for i in range(3)
    ]
    incs = [incident_report(d.kid, d.uid, lon=21.0 + i) for i, d in enumerate(poles)]
    for inc in incs:
        store.store_incident(inc, zone="z")
    assert store.decide_many([_fusing(inc) for inc in incs]) == ["dangerous"] * 3
    claimed = store.claim_due_alerts(owner="a", lease_ms=10_000, limit=2)
    assert len(claimed) == 2
    assert store.claim_due_alerts(owner="b", lease_ms=10_000, limit=5)[0].incident_id not in {
        c.incident_id for c in claimed
    }
    store.alerts_delivered([(c.incident_id, clock.now) for c in claimed])
    assert store.outbox_depth() == 1
    states = {i.incident_id: store.get_incident(i.incident_id).enc_state for i in incs}
    assert sorted(states.values()) == ["delivered", "delivered", "pending"]


def test_a_device_is_blocked_and_audited_once(store: Store) -> None:
    store.add_device(uid="pole-1", zone="z", lat=1, lon=1, alg=3, actor="t")
    first = store.block_unless_blocked("pole-1", actor="server:verification", reason="2 low")
    assert first is not None and first.blocked
    assert store.block_unless_blocked("pole-1", actor="server:verification", reason="3 low") is None
    blocks = [a for a in store.audit_log() if a.action == "device.block"]
    assert [b.detail for b in blocks] == [{"reason": "2 low"}]
    with pytest.raises(DeviceNotFound):
        store.block_unless_blocked("pole-9", actor="t", reason="r")


def _fusing(inc: p.IncidentReported, dangerous: bool = True) -> DecisionRecord:
    return DecisionRecord(
        inc.incident_id,
        0.9 if dangerous else 0.1,
        False,
        dangerous,
        "r",
        fuse_within_m=50.0,
        fuse_within_ms=120_000,
    )


def test_nearby_dangerous_reports_fuse_into_the_first_alert(store: Store, clock: Clock) -> None:
    """Two poles 30 m apart see the same fall: one alert. A third 30 m further (60 m
    from the first) and a report from across the street after the window alert on
    their own; a dismissed report is never a fusion target."""
    poles = [
        store.add_device(uid=f"pole-{i}", zone="z", lat=1, lon=1, alg=3, actor="t")[0]
        for i in range(5)
    ]
    north = 30 / 111_195  # degrees of latitude for 30 m
    dismissed = incident_report(poles[4].kid, poles[4].uid)
    store.store_incident(dismissed, zone="z")
    assert store.decide_many([_fusing(dismissed, dangerous=False)]) == ["dismissed"]

    first = incident_report(poles[0].kid, poles[0].uid)
    second = incident_report(poles[1].kid, poles[1].uid, lat=52.2 + north)
    third = incident_report(poles[2].kid, poles[2].uid, lat=52.2 + 2 * north)
    for inc in (first, second, third):
        store.store_incident(inc, zone="z")
    assert store.decide_many([_fusing(first), _fusing(second)]) == ["dangerous", "fused"]
    # 60 m from the first, 30 m from the second: the second is fused, not a target.
    assert store.decide_many([_fusing(third)]) == ["dangerous"]
    clock.now += 121_000
    later = incident_report(poles[3].kid, poles[3].uid)
    store.store_incident(later, zone="z")
    assert store.decide_many([_fusing(later)]) == ["dangerous"]

    got = store.get_incident(second.incident_id)
    assert got.fused_into == first.incident_id and got.decision == "dangerous"
    # No alert of its own, but queued as a linked report of the first's alert (N3).
    assert got.enc_state == "pending" and f"fused into {first.incident_id}" in str(
        got.decision_reason
    )
    assert store.get_incident(first.incident_id).fused_into is None
    assert store.outbox_depth() == 4  # first, third, later, and second linked to first
    assert store.get_incident(second.incident_id).to_json()["fused_into"] == first.incident_id
    # The linked report waits until the ENC has the alert it joins, then goes as such.
    claimed = store.claim_due_alerts(owner="t", lease_ms=60_000, limit=10)
    assert {c.incident_id for c in claimed} == {
        first.incident_id,
        third.incident_id,
        later.incident_id,
    }
    assert all(c.linked_to is None for c in claimed)
    assert store.claim_due_alerts(owner="t", lease_ms=60_000, limit=10) == []
    store.alert_delivered(first.incident_id, tenc=clock.now)
    (linked,) = store.claim_due_alerts(owner="t", lease_ms=60_000, limit=10)
    assert (linked.incident_id, linked.linked_to) == (second.incident_id, first.incident_id)


def test_a_linked_report_is_not_due_before_the_alert_it_joins(store: Store, clock: Clock) -> None:
    """While the ENC refuses the alert (retried later), the report fused into it waits
    too: the outbox is told to come back at the alert's retry, not at once (it polled
    the database every 20 ms for as long as the ENC was down)."""
    a, _ = store.add_device(uid="pole-a", zone="z", lat=1, lon=1, alg=3, actor="t")
    b, _ = store.add_device(uid="pole-b", zone="z", lat=1, lon=1, alg=3, actor="t")
    first = incident_report(a.kid, a.uid)
    second = incident_report(b.kid, b.uid, lat=52.2 + 30 / 111_195)
    store.store_incidents([(first, "z"), (second, "z")])
    assert store.decide_many([_fusing(first), _fusing(second)]) == ["dangerous", "fused"]
    [alert] = store.claim_due_alerts(owner="a", lease_ms=10_000, limit=5)
    assert alert.incident_id == first.incident_id
    store.alert_failed(first.incident_id, retry_at=clock.now + 5_000, error="HTTP 503")
    assert store.next_alert_due() == clock.now + 5_000
    assert store.claim_due_alerts(owner="a", lease_ms=10_000, limit=5) == []
    clock.now += 5_000
    [again] = store.claim_due_alerts(owner="a", lease_ms=10_000, limit=5)
    store.alert_delivered(again.incident_id, tenc=clock.now)
    due = store.next_alert_due()
    assert due is not None and due <= clock.now  # the linked report may go now
    [linked] = store.claim_due_alerts(owner="a", lease_ms=10_000, limit=5)
    assert (linked.incident_id, linked.linked_to) == (second.incident_id, first.incident_id)


def test_fusion_off_alerts_every_report(store: Store) -> None:
    a, _ = store.add_device(uid="pole-a", zone="z", lat=1, lon=1, alg=3, actor="t")
    b, _ = store.add_device(uid="pole-b", zone="z", lat=1, lon=1, alg=3, actor="t")
    one, two = incident_report(a.kid, a.uid), incident_report(b.kid, b.uid)
    store.store_incident(one, zone="z")
    store.store_incident(two, zone="z")
    assert store.decide(one.incident_id, score=0.9, uncertain=False, dangerous=True, reason="r")
    assert store.decide(two.incident_id, score=0.9, uncertain=False, dangerous=True, reason="r")
    assert store.outbox_depth() == 2


def test_fusion_and_claims_read_by_index_not_every_incident(tmp_path: Path, clock: Clock) -> None:
    """What a fusing decision and a claim read grows with the time window and the due
    alerts, not with the database: SQLite's plan for fusion's candidates walks the
    received_at range (not the fused_into index, i.e. every unfused incident ever
    stored), and a linked report's "has its alert been delivered" is a look-up by key
    (not a list of every delivered alert)."""
    store = Store.open(
        f"sqlite:///{tmp_path / 'server.db'}", MasterKey(os.urandom(32)), clock=clock
    )
    seen: list[tuple[str, object]] = []

    def record(_c: object, _cur: object, statement: str, params: object, *_: object) -> None:
        seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", record)
    pole, _ = store.add_device(uid="pole-1", zone="z", lat=1, lon=1, alg=3, actor="t")
    inc = incident_report(pole.kid, pole.uid)
    store.store_incident(inc, zone="z")
    assert store.decide_many([_fusing(inc)]) == ["dangerous"]
    assert len(store.claim_due_alerts(owner="a", lease_ms=1_000, limit=5)) == 1

    def plan(marker: str) -> str:
        [(statement, params)] = [(st, pa) for st, pa in seen if marker in st]
        with store.engine.connect() as c:
            rows = c.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)  # type: ignore[arg-type]
            return " | ".join(str(r[-1]) for r in rows)

    candidates = plan("JOIN enc_outbox ON enc_outbox.incident_id = incidents.id")
    assert "USING INDEX ix_incidents_received_at" in candidates, candidates
    assert "fused_into" not in candidates, candidates
    due = plan("enc_outbox.next_attempt_at <=")
    assert "CORRELATED" in due and "LIST SUBQUERY" not in due, due
    assert "(incident_id=?)" in due, due
    store.close()


def test_a_database_of_the_first_schema_is_upgraded_with_its_incidents(db_url: str) -> None:
    """A server updated in place: its database at revision 0001, with an incident, is
    brought to the newest schema at start and keeps the incident."""
    from alembic import command
    from sqlalchemy import text

    from storage.migrate import alembic_config

    engine = make_engine(db_url)
    with engine.begin() as conn:
        cfg = alembic_config(str(resources.files("server").joinpath("migrations")))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO incidents (id, kid, cid, device_uid, zone, lat, lon, coords_src, "
                "photo, device_score, label, captured_at, td, received_at) VALUES ('old', :k, "
                ":c, 'pole-1', 'z', 52.2, 21.0, 'gps', :p, 0.9, 'fall', 1, 1, 1)"
            ),
            {"k": b"\x01" * 8, "c": b"\x02" * 16, "p": b"\xff\xd8"},
        )
    engine.dispose()
    store = Store.open(db_url, MasterKey(os.urandom(32)))
    try:
        got = store.get_incident("old")
        assert got.fused_into is None and got.device_uid == "pole-1"
    finally:
        store.close()


def test_registry_changes_gives_what_moved_whatever_the_writers_clock(
    store: Store, clock: Clock
) -> None:
    """A poll holds each device's updated_at; a change by a writer whose clock is far
    behind (another replica, the CLI on another host) is still found, and an unchanged
    registry gives nothing to read again."""
    a, _ = store.add_device(uid="pole-a", zone="z", lat=0, lon=0, alg=p.ALG_A256GCM, actor="t")
    b, _ = store.add_device(uid="pole-b", zone="z", lat=0, lon=0, alg=p.ALG_A256GCM, actor="t")
    held = {d.kid: d.updated_at for d in store.list_devices()}
    assert store.registry_changes(held) == ([], {a.kid, b.kid})

    clock.now -= 3_600_000  # an hour behind
    blocked = store.set_device_state("pole-b", "block", actor="t")
    changed, kids = store.registry_changes(held)
    assert [(d.uid, d.blocked) for d in changed] == [("pole-b", True)] and kids == {a.kid, b.kid}
    held[b.kid] = blocked.updated_at

    store.delete_device("pole-a", actor="t")
    c, _ = store.add_device(uid="pole-c", zone="z", lat=0, lon=0, alg=p.ALG_A256GCM, actor="t")
    changed, kids = store.registry_changes(held)
    assert [d.uid for d in changed] == ["pole-c"] and kids == {b.kid, c.kid}
