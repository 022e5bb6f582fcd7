"""The durable outbox on a real SQLite file: order, sealing, caps, refusals, reopening."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

import protocol as p
from edge._outbox import (
    IncidentRejected,
    Outbox,
    OutboxDamaged,
    OutboxError,
    OutboxFull,
    photo_aad,
)
from hardware import Pkcs11KeyStore, SoftHsmToken
from tests.support.world import jpeg

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=110.0, acc=3.5)
FIXED = p.Coords(lat=52.2297, lon=21.0122, src="fixed")


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def outbox(tmp_path: Path, key: bytes) -> Outbox:
    ob = Outbox(tmp_path / "outbox.sqlite3", cipher=p.AesGcmCipher(key))
    yield ob
    ob.close()


def add(ob: Outbox, n: int = 0, **kw: object) -> bytes:
    fields: dict[str, object] = dict(
        photo=jpeg(), coords=HERE, score=0.9, label="person_down", captured_at=1_764_000_000_000 + n
    )
    fields.update(kw)
    return ob.add(**fields)  # type: ignore[arg-type]


def test_incidents_come_back_whole_oldest_first(outbox: Outbox) -> None:
    photo = jpeg((128, 96))
    # Stored order wins over capture time (a clock can jump back).
    a = add(outbox, 50, photo=photo, coords=FIXED, score=0.75, label="fall")
    b = add(outbox, 10)
    c = add(outbox, 30)
    assert outbox.cids() == [a, b, c]
    first = outbox.oldest()
    assert first is not None and first.cid == a
    assert (first.photo, first.coords, first.score, first.label, first.captured_at) == (
        photo,
        FIXED,
        0.75,
        "fall",
        1_764_000_000_050,
    )
    assert first.report() == p.PendingReport(
        cid=a, coords=FIXED, photo=photo, score=0.75, label="fall", captured_at=1_764_000_000_050
    )
    assert outbox.oldest(exclude=frozenset({a})).cid == b  # type: ignore[union-attr]
    assert outbox.delete(a) and not outbox.delete(a)
    assert outbox.oldest().cid == b  # type: ignore[union-attr]
    assert outbox.get(a) is None and outbox.get(c).cid == c  # type: ignore[union-attr]
    u = outbox.usage()
    assert (u.depth, u.oldest_captured_at, u.refusing, u.refused) == (
        2,
        1_764_000_000_010,
        False,
        0,
    )


def test_survives_reopening(tmp_path: Path, key: bytes) -> None:
    with Outbox(tmp_path / "o.sqlite3", cipher=p.AesGcmCipher(key)) as ob:
        cids = [add(ob, i) for i in range(3)]
        ob.note_attempt(cids[0], "no C4 within its timeout")
    with Outbox(tmp_path / "o.sqlite3", cipher=p.AesGcmCipher(key)) as ob:
        assert ob.cids() == cids
        assert ob.get(cids[0]).attempts == 1  # type: ignore[union-attr]


def test_uses_a_write_ahead_log_fsynced_at_every_commit(outbox: Outbox) -> None:
    other = sqlite3.connect(outbox.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    # synchronous is per connection: ask the outbox's own (2 = FULL).
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_photos_are_sealed_at_rest_and_bound_to_their_cid(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "o.sqlite3"
    photo_a, photo_b = jpeg((200, 150), noisy=True), jpeg((160, 120), noisy=True)
    with Outbox(path, cipher=p.AesGcmCipher(key)) as ob:
        a, b = add(ob, 0, photo=photo_a), add(ob, 1, photo=photo_b)
        raw = b"".join(f.read_bytes() for f in tmp_path.iterdir())
        assert photo_a[200:264] not in raw and photo_b[200:264] not in raw
        db = sqlite3.connect(path)
        ivs = [r[0] for r in db.execute("SELECT photo_iv FROM incidents")]
        assert len(set(ivs)) == 2  # a fresh IV per photo
        # The photo opens only with its own cid as associated data.
        iv, sealed = db.execute(
            "SELECT photo_iv, photo_sealed FROM incidents WHERE cid = ?", (a,)
        ).fetchone()
        assert p.AesGcmCipher(key).open(iv=iv, ciphertext=sealed, aad=photo_aad(a)) == photo_a
        with pytest.raises(p.AuthenticationFailed):
            p.AesGcmCipher(key).open(iv=iv, ciphertext=sealed, aad=photo_aad(b))
        # Swap the two sealed photos on disk: neither opens any more, and neither is sent.
        rows = {
            r[0]: r[1:] for r in db.execute("SELECT cid, photo_iv, photo_sealed FROM incidents")
        }
        with db:
            for cid, other in ((a, b), (b, a)):
                db.execute(
                    "UPDATE incidents SET photo_iv = ?, photo_sealed = ? WHERE cid = ?",
                    (*rows[other], cid),
                )
        db.close()
        with pytest.raises(OutboxDamaged, match="does not open with the device key"):
            ob.get(a)
        assert ob.oldest() is None
        u = ob.usage()
        assert (u.depth, u.damaged) == (2, 2)  # kept, counted, not delivered


def test_a_different_key_cannot_read_the_photos(tmp_path: Path, key: bytes) -> None:
    with Outbox(tmp_path / "o.sqlite3", cipher=p.AesGcmCipher(key)) as ob:
        a = add(ob)
    with Outbox(tmp_path / "o.sqlite3", cipher=p.AesGcmCipher(os.urandom(32))) as ob:
        assert ob.oldest() is None
        assert ob.cids() == [a]  # never dropped
        assert ob.usage().damaged == 1


def test_cap_on_count_refuses_the_newest_and_keeps_the_rest(tmp_path: Path, key: bytes) -> None:
    with Outbox(tmp_path / "o.sqlite3", cipher=p.AesGcmCipher(key), max_incidents=3) as ob:
        kept = [add(ob, i) for i in range(3)]
        with pytest.raises(OutboxFull, match="NOT stored") as info:
            add(ob, 3)
        assert "outbox.max_incidents=3" in str(info.value)
        assert ob.cids() == kept
        u = ob.usage()
        assert (u.depth, u.refusing, u.refused) == (3, True, 1)
        with pytest.raises(OutboxFull):
            add(ob, 4)
        assert ob.usage().refused == 2
        ob.delete(kept[0])  # delivered: room again
        assert not ob.usage().refusing
        newest = add(ob, 5)
        assert ob.cids() == [*kept[1:], newest]


def test_cap_on_bytes(tmp_path: Path, key: bytes) -> None:
    big = jpeg((400, 300), noisy=True)
    with Outbox(
        tmp_path / "o.sqlite3", cipher=p.AesGcmCipher(key), max_bytes=int(2.5 * len(big))
    ) as ob:
        kept = [add(ob, 0, photo=big), add(ob, 1, photo=big)]
        with pytest.raises(OutboxFull, match=r"outbox\.max_bytes"):
            add(ob, 2, photo=big)
        add(ob, 3)  # a small one still fits: the cap is on bytes
        assert ob.cids()[:2] == kept


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"photo": b"not a jpeg"}, "JPEG"),
        ({"label": ""}, "lb"),
        ({"score": 1.5}, "sc"),
        ({"photo": b"\xff\xd8" + bytes(3000)}, "above the server's limit"),
    ],
)
def test_incidents_the_server_would_refuse_are_not_stored(
    tmp_path: Path, key: bytes, change: dict[str, object], words: str
) -> None:
    with Outbox(tmp_path / "o.sqlite3", cipher=p.AesGcmCipher(key), max_photo=2048) as ob:
        with pytest.raises(IncidentRejected, match=words):
            add(ob, **change)
        assert ob.cids() == []


def test_same_cid_twice_is_refused(outbox: Outbox) -> None:
    cid = os.urandom(16)
    add(outbox, cid=cid)
    with pytest.raises(IncidentRejected, match="already stored"):
        add(outbox, cid=cid)
    assert outbox.cids() == [cid]


def test_numpy_like_scores_are_stored_as_floats(outbox: Outbox) -> None:
    class Score(float):
        pass

    cid = add(outbox, score=Score(0.5))
    assert type(outbox.get(cid).score) is float  # type: ignore[union-attr]


def test_concurrent_captures_and_deliveries(outbox: Outbox) -> None:
    stored: list[bytes] = []
    lock = threading.Lock()

    def capture(base: int) -> None:
        for i in range(10):
            cid = add(outbox, base + i)
            with lock:
                stored.append(cid)

    threads = [threading.Thread(target=capture, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    delivered = []
    while any(t.is_alive() for t in threads) or outbox.cids():
        incident = outbox.oldest()
        if incident is not None:
            assert outbox.delete(incident.cid)
            delivered.append(incident.cid)
    for t in threads:
        t.join()
    assert sorted(delivered) == sorted(stored) and len(stored) == 40


def test_a_file_that_is_not_an_outbox(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "o.sqlite3"
    path.write_bytes(b"garbage " * 1000)
    with pytest.raises(OutboxError, match=r"not an outbox database.*move it aside"):
        Outbox(path, cipher=p.AesGcmCipher(key))


def test_an_outbox_from_a_newer_version_is_left_alone(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "o.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(OutboxError, match="newer CityWatch"):
        Outbox(path, cipher=p.AesGcmCipher(key))


def test_closed_outbox(outbox: Outbox) -> None:
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        add(outbox)


def test_softhsm_key_seals_the_photos(
    tmp_path: Path, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    with Pkcs11KeyStore(*softhsm_tokens["citywatch-device"]) as store:
        label = f"citywatch-{os.urandom(8).hex()}"
        cipher = store.generate_key(label, p.ALG_A256GCM)
        photo = jpeg((100, 80), noisy=True)
        with Outbox(tmp_path / "o.sqlite3", cipher=cipher) as ob:
            cid = add(ob, photo=photo)
        with Outbox(tmp_path / "o.sqlite3", cipher=store.cipher(label)) as ob:
            assert ob.get(cid).photo == photo  # type: ignore[union-attr]
        store.delete_key(label)
