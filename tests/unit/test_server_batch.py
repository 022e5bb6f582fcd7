"""The server's group commit: writes that arrive during a commit share the next one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from server._batch import GroupCommit


class Recorder:
    """A write function that records its batches; the first batch waits for a gate, so
    that the test controls what arrives while it is "committing"."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_on: int | None = None

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.gate.wait(10)
        if self.fail_on in items:
            raise OSError("disk full")
        return [i * 10 for i in items]


async def _when(flag: threading.Event) -> None:
    assert await asyncio.to_thread(flag.wait, 10)


def test_one_write_alone_is_not_kept_waiting() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.set()
        group = GroupCommit(rec)
        assert await group.submit(4) == 40
        assert await group.submit(5) == 50
        assert rec.batches == [[4], [5]]

    asyncio.run(main())


def test_writes_during_a_commit_share_the_next_one_in_order() -> None:
    async def main() -> None:
        rec = Recorder()
        group = GroupCommit(rec, max_batch=3)
        first = asyncio.ensure_future(group.submit(1))
        await _when(rec.entered)
        later = [asyncio.ensure_future(group.submit(i)) for i in range(2, 7)]
        await asyncio.sleep(0)
        rec.gate.set()
        assert await first == 10
        assert [await f for f in later] == [20, 30, 40, 50, 60]
        assert rec.batches == [[1], [2, 3, 4], [5, 6]]
        assert group.batches == 3

    asyncio.run(main())


def test_a_failed_batch_fails_its_callers_and_not_the_next() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.fail_on = 3
        group = GroupCommit(rec)
        first = asyncio.ensure_future(group.submit(1))
        await _when(rec.entered)
        doomed = [asyncio.ensure_future(group.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        rec.gate.set()
        assert await first == 10
        for f in doomed:
            with pytest.raises(OSError, match="disk full"):
                await f
        assert await group.submit(4) == 40

    asyncio.run(main())


def test_a_caller_that_gave_up_is_left_out_of_the_batch() -> None:
    async def main() -> None:
        rec = Recorder()
        group = GroupCommit(rec)
        first = asyncio.ensure_future(group.submit(1))
        await _when(rec.entered)
        gone = asyncio.ensure_future(group.submit(2))
        kept = asyncio.ensure_future(group.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        rec.gate.set()
        assert (await first, await kept) == (10, 30)
        assert rec.batches == [[1], [3]]

    asyncio.run(main())


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(lambda items: list(items), max_batch=0)
