"""Group commit: writes that arrive while one is being committed go together into the
next transaction.

A durable commit (an fsync) costs the same for one row as for fifty. With one commit per
report, a busy district is limited by the disk, not by the server; with this, the
reports that arrive during a commit share the next one. Nobody waits for a batch to
fill: with no load every write is committed at once, alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["GroupCommit"]


class GroupCommit(Generic[T, R]):
    """Runs ``write(items) -> results`` (one result per item, in order) in a worker
    thread, one batch at a time. A failed batch fails every caller in it."""

    def __init__(self, write: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        """Batches written so far (for metrics and tests)."""

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            live = [(item, f) for item, f in batch if not f.cancelled()]
            if not live:
                continue
            try:
                results = await asyncio.to_thread(self._write, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"a batch of {len(live)} gave {len(results)} results")
            except asyncio.CancelledError:
                for _, f in live:
                    f.cancel()
                raise
            except Exception as exc:  # handed to every caller of the batch
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            finally:
                self.batches += 1
            for (_, f), result in zip(live, results, strict=True):
                if not f.done():
                    f.set_result(result)
