"""Windows, timeouts and limits (protocol.md section 6), in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass

from ._messages import DEFAULT_MAX_PHOTO

__all__ = ["Limits", "Timing", "backoff_delay"]


@dataclass(frozen=True, slots=True)
class Timing:
    """Protocol timing; every field is configurable, defaults from protocol.md section 6."""

    window_ms: int = 30_000
    """Timestamps are accepted within +/- this of the receiver's clock."""
    ticket_lifetime_ms: int = 60_000
    """How long a C2 ticket stays valid."""
    c2_timeout_ms: int = 10_000
    """How long a device waits for C2 after C1."""
    c4_timeout_ms: int = 30_000
    """How long a device waits for C4 after C3."""
    n2_timeout_ms: int = 30_000
    """How long the server waits for N2 after N1."""
    backoff_base_ms: int = 1_000
    """First retry delay after a timeout or refusal."""
    backoff_max_ms: int = 300_000
    """Longest delay between attempts (5 minutes)."""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"Timing.{name} must be positive")

    @property
    def replay_ttl_ms(self) -> int:
        """The replay cache keeps what it saw for twice the window."""
        return 2 * self.window_ms


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits, checked before decrypting."""

    max_photo: int = DEFAULT_MAX_PHOTO
    """Largest photo accepted in C3 / N1, bytes."""
    max_small_message: int = 1_024
    """Largest B1, B2, C1, C2, C4, N2 or error message, bytes."""
    envelope_overhead: int = 4_096
    """Room for everything in C3 / N1 that is not the photo."""

    @property
    def max_large_message(self) -> int:
        return self.max_photo + self.envelope_overhead


def backoff_delay(attempt: int, *, timing: Timing, jitter: float) -> int:
    """Delay before retry number ``attempt`` (1, 2, ...): exponential, capped, with
    ``jitter`` in [0, 1) spreading it over the upper half (so devices don't sync up)."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(timing.backoff_max_ms, timing.backoff_base_ms * 2 ** min(attempt - 1, 30))
    return int(ceiling / 2 + ceiling / 2 * jitter)
