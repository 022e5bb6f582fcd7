"""The CAP outbox on SQLite and PostgreSQL: messages made once from the audit trail even
by two ENC processes at once, each recipient's messages handed out in order and leased,
retries doubling up to the limit, the photo token's expiry and binding."""

from __future__ import annotations

import threading

import enc
from enc._delivery import CapOutbox
from tests.support.world import T0
from tests.unit import test_enc_handling
from tests.unit.test_enc_store import received

store = test_enc_handling.store  # the same fixture: SQLite and PostgreSQL

SETTINGS = enc.CapSection(
    public_url="https://enc.city.example",
    retry_first_seconds=1.0,
    retry_max_seconds=4.0,
    photo_token_hours=1.0,
)


def _outbox(store: enc.AlertStore) -> CapOutbox:
    return CapOutbox(store, SETTINGS, recipients=("fire", "police"))


def test_two_processes_make_each_message_once(store: enc.AlertStore) -> None:
    for n in range(30):
        store.record_alert(received(f"inc-{n}"), received_at=T0 + n)
    boxes = [_outbox(store), _outbox(store)]
    made: list[int] = []
    threads = [threading.Thread(target=lambda b=b: made.append(b.follow(batch=7))) for b in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(made) == 30
    assert len(boxes[0].messages(limit=100)) == 30
    assert boxes[0].pending() == {"fire": 30, "police": 30}
    assert boxes[1].follow() == 0  # nothing new


def test_in_order_leased_and_retried_with_doubling_waits(store: enc.AlertStore) -> None:
    store.record_alert(received("inc-1"), received_at=T0)
    enc.apply_action(
        store,
        "inc-1",
        "dispatch",
        operator="olga",
        role="operator",
        now=T0 + 10,
        unit="Ambulance 1",
    )
    box = _outbox(store)
    assert box.follow() == 2
    first = box.claim(now=T0 + 20, lease_ms=5000)
    assert sorted(d.recipient for d in first) == ["fire", "police"]
    assert {d.identifier for d in first} == {"citywatch.inc-1"}  # the alert before its update
    assert box.claim(now=T0 + 21, lease_ms=5000) == []  # leased: nobody else sends it
    fire = next(d for d in first if d.recipient == "fire")
    police = next(d for d in first if d.recipient == "police")
    box.delivered(police, now=T0 + 30, status=200)
    retry_at = box.failed(fire, now=T0 + 30, error="answered 503", status=503)
    assert retry_at == T0 + 30 + 1000
    # Police moves on to the update; fire waits for its retry, the update behind it.
    [nxt] = box.claim(now=T0 + 40, lease_ms=5000)
    assert (nxt.recipient, nxt.identifier.count(".")) == ("police", 2)
    # Its lease runs out unanswered (a send that hung): it is handed out again, with
    # fire's retry, now due.
    got = {d.recipient: d for d in box.claim(now=T0 + 40 + 5000, lease_ms=5000)}
    assert got["police"].id == nxt.id and got["fire"].identifier == "citywatch.inc-1"
    box.delivered(got["police"], now=T0 + 5050, status=204)
    waits = []
    now, again = T0 + 5050, got["fire"]
    for i in range(5):
        later = box.failed(again, now=now, error="refused", status=None)
        waits.append(later - now)
        now = later
        assert box.claim(now=now - 1, lease_ms=5000) == []  # not before its time
        [again] = box.claim(now=now, lease_ms=5000)
        assert again.identifier == "citywatch.inc-1" and again.attempts == i + 2
    assert waits == [2000, 4000, 4000, 4000, 4000]  # doubling, then at most the limit
    assert box.pending() == {"fire": 2, "police": 0}


def test_photo_token_is_bound_to_its_alert_and_expires(store: enc.AlertStore) -> None:
    store.record_alert(received("inc-1"), received_at=T0)
    box = _outbox(store)
    uri = box.photo_uri("inc-1", at=T0)
    assert uri is not None and uri.startswith("https://enc.city.example/cap/photo/inc-1.jpg?")
    token = uri.split("token=")[1]
    assert box.check_photo_token("inc-1", token, now=T0 + 3599_000)
    assert not box.check_photo_token("inc-1", token, now=T0 + 3600_000)  # expired
    assert not box.check_photo_token("inc-2", token, now=T0)  # another alert
    expiry, mac = token.split(".")
    assert not box.check_photo_token("inc-1", f"{int(expiry) + 3600}.{mac}", now=T0)
    assert not box.check_photo_token("inc-1", "", now=T0)
    # Another process on the same database makes the same tokens (one key, kept there).
    assert _outbox(store).photo_token("inc-1", expires_s=int(expiry)) == token
