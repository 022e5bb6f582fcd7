"""A full disk, for real: the outbox on a 1 MiB tmpfs mounted by the test (needs root or
CAP_SYS_ADMIN; skipped with the reason otherwise)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as p
from edge._client import ProtocolClient
from edge._config import BrokerConfig
from edge._outbox import Outbox, OutboxDiskFull
from edge._status import PoleStatus, store_incident
from tests.support.world import jpeg

HERE = p.Coords(lat=52.2297, lon=21.0122)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        why = done.stderr.strip() or "mount failed"
        pytest.skip(
            f"cannot mount a 1 MiB tmpfs to fill ({why}): the full-disk test needs "
            "root or CAP_SYS_ADMIN"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def add(ob: Outbox, photo: bytes, n: int) -> bytes:
    return ob.add(photo=photo, coords=HERE, score=0.7, label="fall", captured_at=n)


def test_full_disk_refuses_the_new_capture_and_keeps_the_stored_ones(small_disk: Path) -> None:
    key = os.urandom(32)
    ballast = small_disk / "ballast"
    ballast.write_bytes(os.urandom(200_000))  # freed later, as an operator would
    photo = jpeg((160, 120), noisy=True)
    stored: list[bytes] = []
    ob = Outbox(
        small_disk / "outbox.sqlite3",
        cipher=p.AesGcmCipher(key),
        max_incidents=10_000,
        max_bytes=10**9,
    )  # the disk, not the cap, is the limit
    try:
        with pytest.raises(OutboxDiskFull) as info:
            for n in range(500):
                stored.append(add(ob, photo, n))
        assert stored, "not a single incident fitted: the test means nothing"
        words = str(info.value)
        assert "disk" in words and "full" in words and "NOT stored" in words
        assert "Free space" in words and str(small_disk) in words
        u = ob.usage()
        assert (u.depth, u.refusing, u.refused) == (len(stored), True, 1)
        assert ob.cids() == stored
        for cid in stored:  # every incident stored before is whole
            assert ob.get(cid).photo == photo  # type: ignore[union-attr]
        with pytest.raises(OutboxDiskFull):
            add(ob, photo, 999)
        # Deleting may itself need room in the log: it works or says "disk full", and
        # loses nothing either way.
        try:
            if ob.delete(stored[0]):
                stored.pop(0)
        except OutboxDiskFull:
            pass
        assert ob.cids() == stored

        ballast.unlink()  # space freed: captures are stored again
        stored.append(add(ob, photo, 1000))
        assert not ob.usage().refusing
        assert ob.delete(stored.pop(0))
    finally:
        ob.close()
    with Outbox(small_disk / "outbox.sqlite3", cipher=p.AesGcmCipher(key)) as again:
        assert again.cids() == stored
        assert all(again.get(c).photo == photo for c in stored)  # type: ignore[union-attr]


def test_the_daemon_reports_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    key = os.urandom(32)
    (small_disk / "ballast").write_bytes(os.urandom(900_000))
    photo = jpeg((160, 120), noisy=True)
    with Outbox(small_disk / "outbox.sqlite3", cipher=p.AesGcmCipher(key)) as ob:
        client = ProtocolClient(
            uid="pole-1",
            kid=os.urandom(8),
            cipher=p.AesGcmCipher(key),
            broker=BrokerConfig(host="127.0.0.1"),
            outbox=ob,
            state_dir=tmp_path,
        )
        with pytest.raises(OutboxDiskFull):
            for n in range(100):
                client.record_incident(
                    photo=photo, coords=HERE, score=0.7, label="fall", captured_at=n
                )
        status = client.status.snapshot()
        assert status.outbox.full and status.outbox.refused == 1
        assert any("disk" in problem and "full" in problem for problem in status.problems)
        assert status.last_error is not None and "NOT stored" in status.last_error.message
        assert "FULL" in client.status_line


def test_the_daemons_status_board_reports_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    # What the daemon does with a capture: store it itself, the status board says why not.
    key = os.urandom(32)
    (small_disk / "ballast").write_bytes(os.urandom(900_000))
    photo = jpeg((160, 120), noisy=True)
    status = PoleStatus.in_state_dir(tmp_path, uid="pole-1", kid_hex="11" * 8)
    with Outbox(small_disk / "outbox.sqlite3", cipher=p.AesGcmCipher(key)) as ob:
        with pytest.raises(OutboxDiskFull):
            for n in range(100):
                store_incident(
                    ob, status, photo=photo, coords=HERE, score=0.7, label="fall", captured_at=n
                )
        s = status.snapshot()
        assert s.outbox.full and s.outbox.refused == 1 and s.outbox.depth == len(ob.cids())
        assert any("disk" in problem and "full" in problem for problem in s.problems)
        assert s.last_error is not None and "NOT stored" in s.last_error.message
        assert "FULL" in status.line


def test_no_room_for_a_new_outbox(small_disk: Path) -> None:
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(os.urandom(64 * 1024))
        except OSError:
            pass
    with pytest.raises(OutboxDiskFull, match="disk is full"):
        Outbox(small_disk / "outbox.sqlite3", cipher=p.AesGcmCipher(os.urandom(32)))
