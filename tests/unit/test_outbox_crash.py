"""The outbox survives SIGKILL at any point, and a torn write (a power cut in the middle
of a commit): every committed incident is there, whole, once; nothing half-written is.

SIGKILL: a child process stores (and deletes) incidents as fast as it can and prints each
one once ``add``/``delete`` has returned; the test kills it at random moments, reopens the
outbox and compares with what the child had reported.

Torn write: SIGKILL leaves the OS page cache intact, so it cannot lose what was written;
a power cut can. The test cuts (and garbles) the write-ahead log at many offsets, as a
power cut during a commit would leave it, and opens each copy.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import protocol as p
from edge._outbox import Outbox
from tests.support.world import jpeg

REPO = Path(__file__).resolve().parents[2]
_BASE_PHOTO = jpeg((32, 24))


def cid_for(n: int) -> bytes:
    return hashlib.sha256(b"cid %d" % n).digest()[:16]


def photo_for(n: int) -> bytes:
    """A JPEG-headed photo of 1 KB .. 256 KB, different for each n (big ones make the
    kill land in the middle of a write more often)."""
    size = random.Random(n).randrange(1_000, 256_000)
    filler = hashlib.sha256(b"photo %d" % n).digest()
    return _BASE_PHOTO + (filler * (size // 32 + 1))[:size]


def coords_for(n: int) -> p.Coords:
    return p.Coords(lat=50.0 + n / 1e4, lon=19.0, alt=float(n), acc=3.0)


def child(db: str, key_hex: str, start: int) -> None:
    """Run by the subprocess: store incidents start, start+1, ...; every third one, delete
    the one before it. Print each operation after it returned."""
    ob = Outbox(db, cipher=p.AesGcmCipher(bytes.fromhex(key_hex)))
    n = start
    while True:
        ob.add(
            photo=photo_for(n),
            coords=coords_for(n),
            score=0.5,
            label="fall",
            captured_at=n,
            cid=cid_for(n),
        )
        print(f"added {n}", flush=True)
        if n % 3 == 2 and n - 1 >= start:
            print(f"deleting {n - 1}", flush=True)
            ob.delete(cid_for(n - 1))
            print(f"deleted {n - 1}", flush=True)
        n += 1


_CHILD = (
    "import sys; from tests.unit.test_outbox_crash import child; child(*sys.argv[1:3], "
    "int(sys.argv[3]))"
)


def _check_intact(ob: Outbox, n: int, *, photo_size: int | None = None) -> None:
    incident = ob.get(cid_for(n))
    assert incident is not None, f"incident {n} is missing"
    assert incident.photo == photo_for(n)[:photo_size], f"incident {n}: photo differs"
    assert (incident.captured_at, incident.coords) == (n, coords_for(n)), f"incident {n}"


def _integrity(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT cid) FROM incidents"
        ).fetchone()
        assert total == distinct, "an incident is stored twice"
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    db = tmp_path / "outbox.sqlite3"
    key = os.urandom(32)
    stored: set[int] = set()  # add returned and no delete was started
    deleted: set[int] = set()  # delete returned
    start = 0
    kills_mid_operation = 0
    for round_ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db), key.hex(), str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        assert proc.stdout is not None
        reader = threading.Thread(target=lines.extend, args=(proc.stdout,))
        reader.start()
        # Wait for the first incident so every round does some work, then kill at random.
        deadline = time.monotonic() + 30
        while not lines and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert lines, f"seed {seed}: the child stored nothing: {proc.stderr.read()}"  # type: ignore[union-attr]
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        assert proc.returncode == -signal.SIGKILL

        in_flight_add: int | None = None
        in_flight_delete: int | None = None
        last_added = start - 1
        for line in lines:
            op, n_text = line.split()
            n = int(n_text)
            if op == "added":
                stored.add(n)
                last_added = n
            elif op == "deleting":
                stored.discard(n)
                in_flight_delete = n
            else:
                deleted.add(n)
                in_flight_delete = None
        in_flight_add = last_added + 1  # may or may not have been committed
        kills_mid_operation += in_flight_delete is not None

        with Outbox(db, cipher=p.AesGcmCipher(key)) as ob:
            by_cid = {cid_for(n): n for n in range(in_flight_add + 1)}
            present_n = [by_cid[c] for c in ob.cids()]
            assert present_n == sorted(present_n), f"seed {seed}: order of capture is lost"
            missing = stored - set(present_n)
            assert not missing, f"seed {seed}, round {round_}: committed incidents lost: {missing}"
            resurrected = deleted & set(present_n)
            assert not resurrected, f"seed {seed}: deleted incidents came back: {resurrected}"
            unexpected = set(present_n) - stored - {in_flight_add, in_flight_delete}
            assert not unexpected, f"seed {seed}: incidents nobody stored: {unexpected}"
            for n in present_n:
                _check_intact(ob, n)
            # What the kill left undecided is now decided; carry on from the disk's truth.
            stored = set(present_n) - deleted
        _integrity(db)
        start = in_flight_add + 1
    assert len(stored) > 8, f"seed {seed}: too little work was done to mean anything"


_SMALL = 6000


def _fill_wal(tmp_path: Path, key: bytes, count: int) -> tuple[Path, Path]:
    """An outbox whose incidents all sit in the write-ahead log (a reader holding an old
    snapshot keeps the checkpointer from moving them into the database file)."""
    db = tmp_path / "src" / "outbox.sqlite3"
    ob = Outbox(db, cipher=p.AesGcmCipher(key))
    reader = sqlite3.connect(db)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM incidents").fetchone()
    for n in range(count):
        ob.add(
            photo=photo_for(n)[:_SMALL],
            coords=coords_for(n),
            score=0.5,
            label="fall",
            captured_at=n,
            cid=cid_for(n),
        )
    wal = db.with_name(db.name + "-wal")
    # Copy while both connections are open: nothing has been checkpointed or deleted.
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    shutil.copy(db, snapshot / db.name)
    shutil.copy(wal, snapshot / wal.name)
    reader.close()
    ob.close()
    return snapshot / db.name, snapshot / wal.name


def test_torn_write_ahead_log_opens_to_a_prefix_of_whole_incidents(tmp_path: Path) -> None:
    key = os.urandom(32)
    count = 12
    db, wal = _fill_wal(tmp_path, key, count)
    log = wal.read_bytes()
    assert len(log) > 12 * 6000, "the incidents are not in the log: the test means nothing"
    rng = random.Random(7)
    cuts = sorted({0, 20, 32, len(log)} | {rng.randrange(len(log)) for _ in range(40)})
    seen = []
    for i, cut in enumerate(cuts):
        for garble in (False, True):
            case = tmp_path / f"cut{i}{'g' if garble else ''}"
            case.mkdir()
            shutil.copy(db, case / db.name)
            tail = rng.randbytes(rng.randrange(1, 5000)) if garble and cut < len(log) else b""
            # A power cut loses the shared-memory index too: SQLite rebuilds it.
            (case / wal.name).write_bytes(log[:cut] + tail)
            with Outbox(case / db.name, cipher=p.AesGcmCipher(key)) as ob:
                present = ob.cids()
                assert present == [cid_for(n) for n in range(len(present))], (
                    f"cut at {cut}: not a prefix of the commits"
                )
                for n in range(len(present)):
                    _check_intact(ob, n, photo_size=_SMALL)
                # And the outbox still works after recovery.
                ob.add(
                    photo=jpeg(),
                    coords=coords_for(99),
                    score=0.1,
                    label="fall",
                    captured_at=99,
                    cid=cid_for(1000),
                )
            _integrity(case / db.name)
            if not garble:
                seen.append(len(present))
    assert seen == sorted(seen), "a longer log gave fewer incidents"
    assert seen[-1] == count and seen[0] == 0
