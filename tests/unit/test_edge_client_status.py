"""The pole's status board as the daemon keeps it: a real outbox (SQLite) and a real
delivery policy report into it; ``status.json`` as ``citywatch edge status`` reads it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as p
from edge._delivery import DeliveryPolicy, LoadNext
from edge._outbox import Outbox, OutboxFull
from edge._state import STATUS_FILE, read_status
from edge._status import PoleStatus, store_incident
from tests.support.world import World, jpeg

HERE = p.Coords(lat=52.2297, lon=21.0122, src="fixed")
NOW = 1_764_000_000_000


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.sqlite3", cipher=p.AesGcmCipher(os.urandom(32)), max_incidents=2)
    yield ob
    ob.close()


def status_in(tmp_path: Path) -> PoleStatus:
    return PoleStatus.in_state_dir(
        tmp_path, uid="pole-9", kid_hex="00" * 8, zone="z", clock=lambda: NOW
    )


def store(ob: Outbox, status: PoleStatus, n: int = 0) -> bytes:
    return store_incident(
        ob, status, photo=jpeg(), coords=HERE, score=0.8, label="fall", captured_at=NOW + n
    )


def test_a_full_outbox_is_shown_while_it_lasts(tmp_path: Path, outbox: Outbox) -> None:
    status = status_in(tmp_path)
    first = store(outbox, status)
    store(outbox, status, 1)
    s = status.snapshot()
    assert (s.outbox.depth, s.outbox.max_incidents, s.outbox.full) == (2, 2, False)
    assert s.outbox.oldest_captured_at == NOW and s.problems == ()
    with pytest.raises(OutboxFull) as refused:
        store(outbox, status, 2)
    s = status.snapshot()
    assert s.outbox.full and s.outbox.refused == 1 and s.outbox.depth == 2
    assert s.problems == (str(refused.value),)
    assert s.last_error is not None and s.last_error.message == str(refused.value)
    assert "FULL" in status.line and status.line.startswith(str(refused.value))
    outbox.delete(first)  # delivered: room again
    status.show_outbox(outbox)
    s = status.snapshot()
    assert not s.outbox.full and s.outbox.depth == 1 and s.problems == ()


def test_the_delivery_view_is_shown_and_problems_keep_their_order(
    tmp_path: Path, outbox: Outbox
) -> None:
    status = status_in(tmp_path)
    store(outbox, status)
    store(outbox, status, 1)
    with pytest.raises(OutboxFull):
        store(outbox, status, 2)
    w = World()
    d = w.add_device("pole-9")
    w.directory.set(d.kid, blocked=True)
    policy = DeliveryPolicy(kid=d.kid, uid=d.uid, cipher=p.AesGcmCipher(d.key), random=w.rand)
    policy.connected(w.now)
    assert isinstance(policy.next_action(), LoadNext)
    incident = outbox.oldest()
    assert incident is not None
    policy.incident_loaded(incident.report(), w.now)
    c1 = policy.next_action()
    status.show_delivery(policy.view(w.now))
    s = status.snapshot()
    assert s.delivery.state == "sending" and s.delivery.cid == incident.cid.hex()
    assert s.delivery.attempts == 1
    w.server.receive(c1.data, w.now)  # type: ignore[union-attr]
    [err] = w.server_out()
    policy.receive(err, w.now)
    status.show_delivery(policy.view(w.now))
    s = status.snapshot()
    assert s.delivery.state == "stopped" and "blocked" in (s.delivery.stopped_reason or "")
    assert s.delivery.next_attempt_at == w.now + p.Timing().backoff_max_ms
    assert len(s.problems) == 2 and "blocked" in s.problems[1]  # the outbox came first
    assert "outbox" not in s.problems[1]
    policy.receive(w.announce(d), w.now)  # unblocked: the server announces again
    status.show_delivery(policy.view(w.now))
    s = status.snapshot()
    assert s.delivery.state != "stopped" and len(s.problems) == 1
    assert s.monitoring.active and s.monitoring.epoch == 1


def test_status_json_is_written_for_the_health_check(tmp_path: Path, outbox: Outbox) -> None:
    status = status_in(tmp_path)
    store(outbox, status)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(status.keep_written(stop, interval_s=0.05))
        await asyncio.sleep(0.2)
        stop.set()
        await task

    asyncio.run(run())
    s = read_status(tmp_path / STATUS_FILE)
    assert (s.uid, s.zone, s.outbox.depth, s.updated_at) == ("pole-9", "z", 1, NOW)
    assert s.summary == status.line
