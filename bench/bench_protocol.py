"""Bytes on the wire per message type (overhead over the plaintext), and how many
complete contact phases (C1..C4) and ENC notifications the sans-I/O core runs per
second in memory on this machine. Prints figures; never passes or fails on time.

    .venv/bin/python bench/bench_protocol.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

import protocol as p
from citywatch._cli_protocol import make_vectors
from citywatch._sample import sample_jpeg
from tests.support.world import World


def wire_table() -> Table:
    t = Table(title="Bytes on the wire per message type (COSE_Encrypt0, AES-GCM)")
    for col in ("type", "plaintext B", "message B", "overhead B", "overhead %"):
        t.add_column(col, justify="right")
    for v in make_vectors():
        pt = len(v["plaintext_cbor_hex"]) // 2
        msg = len(v["message_hex"]) // 2
        t.add_row(v["name"], str(pt), str(msg), str(msg - pt), f"{100 * (msg - pt) / pt:.1f}")
    return t


def rate(label: str, fn, seconds: float = 1.5) -> tuple[str, float, float]:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    elapsed = time.perf_counter() - start
    return label, n / elapsed, 1e3 * elapsed / n


def main() -> None:
    console = Console()
    console.print(wire_table())
    photo_300k = os.urandom(300_000)
    photo_300k = b"\xff\xd8" + photo_300k[2:]
    # no rate limit: this measures the core, not the policy
    w = World(rate_limit=p.RateLimit(burst=10**9, per_minute=1e12))
    d = w.add_device("bench-pole")
    small = w.report(photo=sample_jpeg())
    large = w.report(photo=photo_300k)

    def contact(report: p.PendingReport) -> None:
        w.advance(1)
        events, _ = w.contact(d, report)
        assert isinstance(events[0], p.ReportDelivered)

    inc_holder: list[p.IncidentReported] = []

    def notify() -> None:
        if not inc_holder:
            d.conn.start_report(small, w.now)
            w.to_server(d.conn.data_to_send()[0])
            w.to_device(d, w.server_out()[0])
            inc_holder.extend(
                e
                for e in w.to_server(d.conn.data_to_send()[0])
                if isinstance(e, p.IncidentReported)
            )
            w.to_device(d, w.server.receipt(inc_holder[0], w.now))
        w.advance(1)
        events, _ = w.notify(inc_holder[0])
        assert isinstance(events[0], p.AlertConfirmed)

    t = Table(title="Sans-I/O core in memory, one process, software AES-GCM")
    for col in ("operation", "per second", "ms each"):
        t.add_column(col, justify="right")
    for label, per_s, ms in (
        rate(f"contact C1..C4, {len(small.photo) // 1024 + 1} KB photo", lambda: contact(small)),
        rate("contact C1..C4, 300 KB photo", lambda: contact(large)),
        rate(f"ENC notification N1/N2, {len(small.photo) // 1024 + 1} KB photo", notify),
    ):
        t.add_row(label, f"{per_s:,.0f}", f"{ms:.3f}")
    console.print(t)


if __name__ == "__main__":
    main()
