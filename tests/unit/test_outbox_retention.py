"""Retention on the pole: incidents older than ``[outbox] max_age_hours`` are expired
from the outbox, delivered or not, damaged or not; newer ones stay whole. On a full disk
(a real 1 MiB tmpfs) an expiry either works or says "disk full" and loses nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as p
from edge._config import OutboxConfig
from edge._outbox import Outbox, OutboxDiskFull
from tests.support.world import jpeg

HERE = p.Coords(lat=52.23, lon=21.01, alt=None, acc=5.0, src="gps")
H = 3600_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_000_000_000

    def __call__(self) -> int:
        return self.now


def _add(ob: Outbox, n: int, photo: bytes | None = None) -> bytes:
    return ob.add(
        photo=photo or jpeg(),
        coords=HERE,
        score=0.9,
        label="person_down",
        captured_at=1_764_000_000_000 + n,
    )


def test_old_incidents_expire_and_new_ones_stay(tmp_path: Path) -> None:
    clock = Clock()
    key = os.urandom(32)
    with Outbox(tmp_path / "outbox.sqlite3", cipher=p.AesGcmCipher(key), clock=clock) as ob:
        old = [_add(ob, i) for i in range(3)]
        clock.now += 50 * H
        new = [_add(ob, 10 + i) for i in range(2)]
        clock.now += 23 * H  # the first three are 73 h old, the others 23 h
        assert ob.expire(72 * H) == old
        assert ob.cids() == new
        assert all(ob.get(c) is not None for c in new)
        assert ob.expire(72 * H) == []
        assert ob.usage().depth == 2
    # A photo that no longer opens (another key) is expired as well.
    with Outbox(
        tmp_path / "outbox.sqlite3", cipher=p.AesGcmCipher(os.urandom(32)), clock=clock
    ) as ob:
        assert ob.oldest() is None and ob.usage().damaged == 2
        clock.now += 60 * H
        assert ob.expire(72 * H) == new
        assert ob.usage().depth == 0


def test_the_default_and_zero() -> None:
    assert OutboxConfig().max_age_hours == 72.0
    assert OutboxConfig(max_age_hours=0).max_age_hours == 0


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
        pytest.skip(
            f"cannot mount a 1 MiB tmpfs to fill ({done.stderr.strip()}): needs root "
            "or CAP_SYS_ADMIN"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_expiry_on_a_full_disk_loses_nothing(small_disk: Path) -> None:
    clock = Clock()
    ob = Outbox(
        small_disk / "outbox.sqlite3",
        cipher=p.AesGcmCipher(os.urandom(32)),
        clock=clock,
        max_incidents=10_000,
        max_bytes=10**9,
    )
    try:
        photo = jpeg((160, 120), noisy=True)
        stored = [_add(ob, i, photo) for i in range(4)]
        ballast = small_disk / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill what is left
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        clock.now += 100 * H
        try:
            gone = ob.expire(72 * H)
        except OutboxDiskFull as exc:
            assert "disk is full" in str(exc)
            assert ob.cids() == stored  # nothing lost, nothing half-deleted
            ballast.unlink()
            gone = ob.expire(72 * H)
        assert gone == stored and ob.cids() == []
    finally:
        ob.close()
