"""Free loopback ports for the local fakes (gpsd through gpsfake) and, through
``citywatch._services``, every service the demo and the tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["loopback_port"]

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """Where the kernel starts picking source ports for outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def loopback_port() -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range.

    A port from bind(0) is an ephemeral one: between being handed out and being
    listened on, any outgoing connection on the machine may take it as its source
    port (a server connecting to its broker took its own admin port that way). Ports
    below the range are only ever taken by listeners; each is handed out once per
    process, so two services of one test never get the same one. OSError when none is
    found.
    """
    low, high = 20000, _ephemeral_low() - 1
    if high - low < 1000:  # an unusual range: fall back to the kernel's choice
        low = 0
    for _ in range(200):
        port = random.randint(low, high) if low else 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError("no free loopback port found (200 tries)")
