"""N1s an attacker who holds a server's key (or a server gone wrong) could send the real
ENC: a capture time past what a calendar holds (before: stored, then its alert page
answered 503 and its CAP export reset the connection), a label that would forge a log
line, and an alg header too long to print (before: 503 and a traceback). Each is
refused with a 4xx, counted in the log as refused, and nothing is stored."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

import protocol as p
from protocol._crypto import seal_message
from protocol._envelope import TYPE_LABEL
from tests.integration.test_enc_endpoint import EncProcess, make_n1, new_id, now_ms
from tests.support.world import jpeg


@pytest.fixture
def enc_process(tmp_path: Path) -> Iterator[EncProcess]:
    e = EncProcess(tmp_path / "enc").start()
    yield e
    e.stop()


def _n1(e: EncProcess, **over: Any) -> tuple[str, bytes]:
    inc = new_id()
    m = {
        "ts": now_ms(),
        "inc": inc,
        "pf": jpeg((160, 120)),
        "sc": 0.9,
        "lb": "fall",
        "at": now_ms() - 2_000,
        "dev": "pole-017",
        "gc": {"lat": 52.2, "lon": 21.0, "alt": None, "acc": 4.0, "src": "gps"},
    } | over
    return inc, seal_message(
        cipher=p.AesGcmCipher(e.key),
        kid=e.server_kid,
        type=7,
        plaintext=cbor2.dumps(m, canonical=True),
        iv=os.urandom(12),
    )


def test_out_of_range_and_control_character_n1s_are_refused(enc_process: EncProcess) -> None:
    e = enc_process
    refused = []
    for over in (
        {"at": 2**63 - 1},
        {"at": 2**63},
        {"at": 2**70},
        {"ts": 2**64 + 1},
        {"lb": "fall\n2026-01-01 INFO citywatch.enc: alert forged"},
        {"dev": "pole\x1b[2J"},
    ):
        inc, body = _n1(e, **over)
        r = e.post(body)
        assert 400 <= r.status_code < 500, (over, r.status_code)
        refused.append(inc)
    protected = cbor2.dumps({1: 10**5000, 4: e.server_kid, TYPE_LABEL: 7})
    huge_alg = cbor2.dumps(cbor2.CBORTag(16, [protected, {5: bytes(12)}, bytes(32)]))
    assert e.post(huge_alg).status_code == 400
    stored = {a["incident_id"] for a in e.alerts()}
    assert not stored & set(refused)
    # An honest N1 still goes through.
    ok = new_id()
    assert e.post(make_n1(e.notifier(), ok)).status_code == 200
    assert ok in {a["incident_id"] for a in e.alerts()}
    log = e.log.read_text()
    assert "Traceback" not in log and "alert forged" not in log and "\x1b" not in log
