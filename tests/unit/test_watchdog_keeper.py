"""The watchdog keeper against a real unix datagram socket set as NOTIFY_SOCKET: it feeds
the watchdog at a third of WatchdogSec while the check passes, stops when the check fails
or the event loop is blocked, and says why once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware._service import ServiceNotifier, WatchdogKeeper
from tests.unit.test_sdnotify import NotifySocket


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / f"notify-{uuid.uuid4().hex[:8]}"
    sock = NotifySocket(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def _timed(sock: NotifySocket, seconds: float) -> list[tuple[float, str]]:
    """Datagrams received within ``seconds``, with their arrival times."""
    out: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    sock.sock.settimeout(0.05)
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            out.append((time.monotonic(), sock.sock.recv(65536).decode()))
    sock.sock.settimeout(5.0)
    return out


async def _run_for(keeper: WatchdogKeeper, seconds: float, *, block: float = 0.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))
    await asyncio.sleep(seconds / 2)
    if block:
        time.sleep(block)  # a blocking call on the loop: nothing else runs meanwhile
    await asyncio.sleep(seconds / 2)
    stop.set()
    await asyncio.wait_for(task, timeout=2)


def test_tick_is_a_third_of_the_period_and_without_a_watchdog_one_second() -> None:
    notifier = ServiceNotifier(backend="socket")
    assert WatchdogKeeper(notifier, environ={"WATCHDOG_USEC": "600000"}).tick == pytest.approx(0.2)
    assert WatchdogKeeper(notifier, environ={"WATCHDOG_USEC": "30000000"}).tick == 1.0
    assert WatchdogKeeper(notifier, environ={}).period is None
    assert WatchdogKeeper(notifier, environ={}).tick == 1.0


@pytest.mark.parametrize("backend", ["socket", "systemd"])
def test_a_passing_check_feeds_the_watchdog_at_a_third_of_the_period(
    notify_socket: NotifySocket, backend: str
) -> None:
    keeper = WatchdogKeeper(
        ServiceNotifier(backend=backend),  # type: ignore[arg-type]
        environ={"WATCHDOG_USEC": "600000"},
    )
    asyncio.run(_run_for(keeper, 1.2))
    beats = [m for m in notify_socket.pending() if m == "WATCHDOG=1"]
    # 1.2 s at one beat per 0.2 s: about 6; never fewer than one per half period.
    assert 4 <= len(beats) <= 8, beats
    assert keeper.fed == len(beats)


def test_a_failing_check_stops_the_feed_says_why_once_and_resumes(
    notify_socket: NotifySocket,
) -> None:
    state = {"why": None}
    keeper = WatchdogKeeper(
        ServiceNotifier(backend="socket"), lambda: state["why"], environ={"WATCHDOG_USEC": "300000"}
    )
    assert keeper.beat() is True
    state["why"] = "camera: no frame for 12 s"
    assert [keeper.beat() for _ in range(3)] == [False, False, False]
    assert keeper.failing == "camera: no frame for 12 s"
    state["why"] = None
    assert keeper.beat() is True and keeper.failing is None
    assert notify_socket.pending() == [
        "WATCHDOG=1",
        "STATUS=camera: no frame for 12 s; watchdog not fed",
        "WATCHDOG=1",
    ]


def test_a_check_that_raises_counts_as_failing(notify_socket: NotifySocket) -> None:
    def broken() -> str | None:
        raise RuntimeError("store gone")

    keeper = WatchdogKeeper(ServiceNotifier(backend="socket"), broken, status=False)
    assert keeper.beat() is False
    assert keeper.failing == "health check failed: store gone"
    assert notify_socket.pending() == []  # status=False: the daemon writes its own STATUS


def test_a_blocked_event_loop_stops_the_feed(notify_socket: NotifySocket) -> None:
    keeper = WatchdogKeeper(ServiceNotifier(backend="socket"), environ={"WATCHDOG_USEC": "300000"})
    received: list[tuple[float, str]] = []

    async def main() -> None:
        listener = asyncio.create_task(asyncio.to_thread(_timed, notify_socket, 3.0))
        await _run_for(keeper, 1.0, block=1.5)
        received.extend(await listener)

    asyncio.run(main())
    times = [t for t, m in received if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 4
    # Beats every 0.1 s, except across the 1.5 s the loop was blocked.
    assert max(gaps) >= 1.4
    assert sorted(gaps)[len(gaps) // 2] < 0.3


def test_outside_systemd_it_runs_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    keeper = WatchdogKeeper(ServiceNotifier(backend="socket"), environ={})
    assert keeper.beat() is True
    assert keeper.fed == 0


def test_a_service_manager_that_does_not_read_never_blocks_the_sender(
    notify_socket: NotifySocket,
) -> None:
    """A unix datagram queue holds a few messages (net.unix.max_dgram_qlen); past that a
    blocking send would stall the event loop that feeds the watchdog."""
    notifier = ServiceNotifier(backend="socket")
    # A blocking send would hang here on the first message past the queue's length.
    delivered = [notifier.watchdog() for _ in range(2000)]
    assert delivered[0] is True
    assert delivered[-1] is False  # the queue is full: dropped, not waited for
    assert len(notify_socket.pending()) == sum(delivered)
