"""The wall clock that adapters inject into the role objects (the core reads no clock).

One helper for every component, so that the server, the pole, the ENC and the simulator
share one time base: milliseconds since the Unix epoch, as the protocol's timestamps.
"""

from __future__ import annotations

import time

__all__ = ["wall_clock_ms"]


def wall_clock_ms() -> int:
    """The local wall clock in ms since the Unix epoch (the protocol's time base)."""
    return time.time_ns() // 1_000_000
