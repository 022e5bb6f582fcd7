"""The daemon's state directory: state.json (durable protocol state) and status.json."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from edge._state import (
    STATE_FILE,
    STATUS_FILE,
    BrokerStatus,
    DeliveryStatus,
    MonitoringStatus,
    OutboxStatus,
    ProtocolState,
    StateError,
    StateFile,
    StatusBoard,
    StatusSnapshot,
    assess_health,
    read_status,
    summarize,
    write_atomic,
)


def test_protocol_state_round_trip(tmp_path: Path) -> None:
    f = StateFile(tmp_path)
    assert f.load() == ProtocolState()  # a new device
    state = ProtocolState(last_epoch=7, clock_offset_ms=-1234, monitoring_until=1_800_000_000_000)
    f.save(state)
    assert StateFile(tmp_path).load() == state
    assert stat.S_IMODE((tmp_path / STATE_FILE).stat().st_mode) == 0o640
    assert [x.name for x in tmp_path.iterdir()] == [STATE_FILE]  # no temporary files left


@pytest.mark.parametrize(
    "content", [b"{", b"[]", b'{"last_epoch": -1}', b'{"last_epoch": 1, "colour": 2}']
)
def test_damaged_state_is_not_silently_reset(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(StateError, match=r"damaged.*epoch"):
        StateFile(tmp_path).load()


def test_unwritable_state_dir(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot write"):
        StateFile(tmp_path / "absent").save(ProtocolState(last_epoch=1))


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"one", durable=True)
    write_atomic(path, b"two", durable=False, mode=0o600)
    assert path.read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path)) == ["f"]


def snapshot(**changes: object) -> StatusSnapshot:
    return StatusSnapshot(uid="pole-1", kid_hex="00" * 8, zone="z", **changes)  # type: ignore[arg-type]


def test_status_file_round_trip_and_forward_compatibility(tmp_path: Path) -> None:
    board = StatusBoard(tmp_path / STATUS_FILE, snapshot(), clock=lambda: 1_000)
    board.update(outbox=OutboxStatus(depth=3, full=True), problems=("outbox full",))
    written = board.write()
    read = read_status(tmp_path / STATUS_FILE)
    assert read == written and read.updated_at == 1_000 and read.outbox.depth == 3
    assert read.summary == summarize(read) and read.summary.startswith("outbox full")
    # A newer daemon may write fields this reader does not know.
    data = json.loads((tmp_path / STATUS_FILE).read_text())
    data["something_new"] = {"x": 1}
    data["broker"]["tls_version"] = "1.3"
    (tmp_path / STATUS_FILE).write_text(json.dumps(data))
    assert read_status(tmp_path / STATUS_FILE).outbox.depth == 3


def test_unreadable_status(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        read_status(tmp_path / STATUS_FILE)
    (tmp_path / STATUS_FILE).write_text("[1, 2]")
    with pytest.raises(StateError, match="not a status file"):
        read_status(tmp_path / STATUS_FILE)


def test_health() -> None:
    s = snapshot(
        updated_at=100_000,
        broker=BrokerStatus(connected=False, host="b", port=1883, last_error="refused"),
    )
    assert assess_health(s, now=110_000, max_age_s=30) == []
    [stale] = assess_health(s, now=200_000, max_age_s=30)
    assert "100 s ago" in stale and "stopped, stuck" in stale
    [broker] = assess_health(s, now=110_000, max_age_s=30, require_broker=True)
    assert "b:1883" in broker and "refused" in broker


def test_summary_line() -> None:
    s = snapshot(
        monitoring=MonitoringStatus(active=False),
        broker=BrokerStatus(connected=True),
        outbox=OutboxStatus(depth=2),
        delivery=DeliveryStatus(state="stopped", stopped_reason="device blocked"),
    )
    line = summarize(s)
    assert "idle (no monitoring window)" in line and "broker connected" in line
    assert "outbox 2 waiting" in line and "device blocked" in line


def test_status_is_written_on_change_and_as_a_heartbeat(tmp_path: Path) -> None:
    ticks = iter(range(1, 10_000))
    board = StatusBoard(tmp_path / STATUS_FILE, snapshot(), clock=lambda: next(ticks))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(board.keep_written(stop, interval_s=0.3, debounce_s=0.01))
        path = tmp_path / STATUS_FILE
        while not path.exists():
            await asyncio.sleep(0.01)
        board.update(outbox=OutboxStatus(depth=5))  # a change: written soon, not at 0.3 s
        while read_status(path).outbox.depth != 5:
            await asyncio.sleep(0.01)
        first = read_status(path).updated_at
        while read_status(path).updated_at == first:  # the heartbeat, with no change
            await asyncio.sleep(0.05)
        board.update(outbox=OutboxStatus(depth=6))
        stop.set()
        await task
        assert read_status(path).outbox.depth == 6  # written once more on the way out

    asyncio.run(asyncio.wait_for(main(), 20))
