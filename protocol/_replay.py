"""Replay cache: remembers what it saw for a bounded time and a bounded count."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["ReplayCache"]


class ReplayCache:
    """Keys seen in the last ``ttl_ms``; at most ``capacity`` of them.

    When full of live entries, ``check_and_add`` refuses new keys (returns ``None``)
    rather than forgetting one early: forgetting would reopen a replay.
    """

    def __init__(self, *, ttl_ms: int, capacity: int = 100_000) -> None:
        if ttl_ms <= 0 or capacity <= 0:
            raise ValueError("ttl_ms and capacity must be positive")
        self.ttl_ms = ttl_ms
        self.capacity = capacity
        self._seen: OrderedDict[Hashable, int] = OrderedDict()  # key -> expiry, oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: int) -> None:
        while self._seen:
            key, expiry = next(iter(self._seen.items()))
            if expiry > now:
                break
            del self._seen[key]

    def seen(self, key: Hashable, now: int) -> bool:
        self._expire(now)
        return key in self._seen

    def check_and_add(self, key: Hashable, now: int) -> bool | None:
        """True if ``key`` is new (and is now remembered), False if it is a replay,
        None if the cache is full of live entries."""
        self._expire(now)
        if key in self._seen:
            return False
        if len(self._seen) >= self.capacity:
            return None
        self._seen[key] = now + self.ttl_ms
        return True
