"""Bad input from an owned pole against the real server process: every integer out of
protocol.md's ranges, floods, type numbers and labels chosen by the attacker. Each gets
a clear, counted refusal; honest poles carry on; nothing is stored."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest

import protocol as p
from citywatch._services import ServiceUnavailable, start_mosquitto
from protocol._envelope import TYPE_LABEL
from tests.integration.server_harness import (
    EncStub,
    ServerProcess,
    ServerSetup,
    make_server,
    wait_until,
)
from tests.support.services import Broker, free_port
from tests.support.world import jpeg

from .poles import Pole, now_ms, pole_for

FOREVER = {"until": "2099-01-01T00:00:00Z"}
LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, protocol.md section 3


@dataclass
class Stack:
    broker: Broker
    setup: ServerSetup
    server: ServerProcess
    enc: EncStub
    honest: Pole
    owned: Pole

    def incidents_of(self, uid: str) -> list[dict[str, Any]]:
        r = self.server.api("GET", "/v1/incidents", params={"limit": 1000})
        assert r.status_code == 200
        return [i for i in r.json() if i["device_uid"] == uid]

    def log(self) -> str:
        return self.server.log.read_text(errors="replace")


def _stack(tmp_path: Path, timing: dict[str, Any] | None = None) -> Iterator[Stack]:
    try:
        broker = start_mosquitto(tmp_path / "broker")
    except ServiceUnavailable as exc:
        pytest.skip(f"Mosquitto unavailable: {exc}")
    port = free_port()
    # The honest pole's many synthetic photos must not get it blocked for fake reports.
    setup = make_server(
        tmp_path,
        broker,
        enc_url=f"http://127.0.0.1:{port}",
        timing=timing,
        verification={"block_after_dismissed": 0},
    )
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port).start()
    honest_b, owned_b = setup.add_device("pole-honest", "z"), setup.add_device("pole-owned", "z")
    server = ServerProcess(setup).start(timeout=90)
    poles: list[Pole] = []
    try:
        server.api("POST", "/v1/windows/z/open", json=FOREVER)
        honest = pole_for(honest_b, broker.host, broker.port).start()
        poles.append(honest)
        owned = pole_for(owned_b, broker.host, broker.port).start()
        poles.append(owned)
        yield Stack(broker, setup, server, enc, honest, owned)
    finally:
        for pole in poles:
            pole.stop()
        server.stop()
        enc.stop()
        broker.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(tmp_path)


def _code(m: p.Message) -> int:
    assert isinstance(m, p.ErrorMessage), m
    return m.code


def test_capture_time_out_of_range_is_refused_with_error_8_and_nothing_stored(stack: Stack) -> None:
    """`at` beyond 9999-12-31, at or over 2^63 (the database's limit), a bignum, negative
    or a day in the future: error 8, nothing stored; an honest report sent at the same
    moment (the same group commit, before the fix) gets its C4."""
    s = stack
    for at in (2**63 - 1, 2**63, 2**64 + 7, 10**30, LATEST_MS + 1, -1, now_ms() + 86_400_000):
        td, tk = s.owned.open_contact()
        htd, htk = s.honest.open_contact()
        s.owned.publish(s.owned.report(td, tk, jpeg((320, 240)), at=at))
        s.honest.publish(s.honest.report(htd, htk, jpeg((320, 240))))
        answer = s.owned.expect(p.Message, td=td, timeout=15)
        assert _code(answer) == p.ErrorCode.PAYLOAD_REJECTED, f"at={at}: {answer}"
        s.honest.expect(p.C4Receipt, td=htd, timeout=15)
    assert s.incidents_of("pole-owned") == []
    assert len(s.incidents_of("pole-honest")) == 7
    assert s.server.metric("citywatch_server_messages_total", type="C3", outcome="refused") >= 7
    assert "Traceback" not in s.log()


def test_every_integer_field_out_of_range_is_dropped_and_counted(stack: Stack) -> None:
    """C1's T_D at 2^63, 2^64 (a bignum) and far in the future: never answered, never
    a traceback, counted as refused plaintexts; the pole can still make contact."""
    s = stack
    before = s.server.metric("citywatch_server_rejected_messages_total", reason="plaintext")
    for td in (2**63, 2**64, 2**200, LATEST_MS + 1):
        s.owned.publish(s.owned.hello(td=td))
    wait_until(
        lambda: (
            s.server.metric("citywatch_server_rejected_messages_total", reason="plaintext")
            >= before + 4
        ),
        timeout=15,
        what="four refusals counted",
    )
    assert s.owned.next_message(timeout=1, accepts=(4, 6, 9)) is None
    s.owned.open_contact()
    assert "Traceback" not in s.log()


def test_huge_integer_in_the_alg_header_is_refused_and_counted(stack: Stack) -> None:
    """An alg of 5000 digits (more than Python prints): refused as malformed, counted,
    no traceback; an honest pole carries on."""
    s = stack
    before = s.server.metric("citywatch_server_rejected_messages_total", reason="malformed")
    protected = cbor2.dumps({1: 10**5000, 4: s.owned.kid, TYPE_LABEL: 3})
    body = cbor2.dumps(cbor2.CBORTag(16, [protected, {5: bytes(12)}, bytes(32)]))
    for _ in range(5):
        s.owned.publish(body)
    wait_until(
        lambda: (
            s.server.metric("citywatch_server_rejected_messages_total", reason="malformed")
            >= before + 5
        ),
        timeout=15,
        what="five malformed messages counted",
    )
    assert "Traceback" not in s.log()
    assert "could not be handled" not in s.log()
    s.honest.open_contact()


def test_unknown_type_numbers_do_not_become_metric_series(stack: Stack) -> None:
    """300 messages with 300 type numbers: the type label stays one of the nine names or
    "unknown", and /metrics does not grow with them."""
    s = stack
    s.honest.open_contact()
    size_before = len(s.server.api("GET", "/metrics").text)
    for mtype in range(10, 310):
        s.owned.publish(s.owned.craft(mtype, {"td": now_ms(), "uid": s.owned.uid}))
    wait_until(
        lambda: s.server.metric("citywatch_server_messages_total") >= 301,
        timeout=20,
        what="300 messages counted",
    )
    text = s.server.api("GET", "/metrics").text
    types = set(
        re.findall(r'^citywatch_server_messages_total\{[^}]*type="([^"]*)"', text, re.MULTILINE)
    )
    assert types <= {t.name for t in p.MessageType} | {"unknown"}, types
    assert "unknown" in types
    assert len(text) < size_before + 2000


def test_control_characters_in_the_label_are_refused_and_never_logged(stack: Stack) -> None:
    """A label with a newline (a forged log line after it) or a terminal escape: error 8,
    nothing stored, no log line of the attacker's making."""
    s = stack
    forged = "2026-01-01 ERROR citywatch.server: device pole-honest blocked"
    for label in (f"fall\n{forged}", "fall\r\x1b[2Kforged", "fall\x00"):
        td, tk = s.owned.open_contact()
        s.owned.publish(s.owned.report(td, tk, jpeg((320, 240)), lb=label))
        answer = s.owned.expect(p.Message, td=td, timeout=15)
        assert _code(answer) == p.ErrorCode.PAYLOAD_REJECTED
    assert s.incidents_of("pole-owned") == []
    log = s.log()
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert "\x1b" not in log


def test_a_refused_c1_flood_leaves_the_replay_cache_to_honest_poles(tmp_path: Path) -> None:
    """Two owned poles send 300 C1s each (every one fresh, inside the window) against a
    replay cache of 100 entries: the rate limit refuses them before they take an entry,
    so the honest pole's first C1 gets its C2, not error 9."""
    it = _stack(
        tmp_path,
        timing={"rate_limit_burst": 3, "rate_limit_per_minute": 1.0, "replay_capacity": 100},
    )
    s = next(it)
    try:
        bundle = s.setup.add_device("pole-owned-2", "z")
        second = pole_for(bundle, s.broker.host, s.broker.port).start()
        s.server.api("POST", "/v1/windows/z/open", json=FOREVER)
        try:
            start = now_ms()
            for i in range(300):
                s.owned.publish(s.owned.hello(td=start - i))
                second.publish(second.hello(td=start - i))
            wait_until(
                lambda: s.server.metric("citywatch_server_messages_total", type="C1") >= 600,
                timeout=60,
                what="600 C1s handled",
            )
            refused = sum(
                s.server.metric("citywatch_server_rejected_messages_total", reason=r)
                for r in ("rate_limited", "flood")
            )
            assert refused >= 600 - 2 * 3
            # Most of the flood is dropped before decrypting, and never answered.
            assert (
                s.server.metric("citywatch_server_rejected_messages_total", reason="flood")
                >= 600 - 2 * 4 * 3
            )
            answers = 0
            while s.owned.next_message(timeout=0.5, accepts=(4, 9)) is not None:
                answers += 1
            assert answers <= 4 * 3
            td = now_ms()
            s.honest.publish(s.honest.hello(td=td))
            answer = s.honest.expect(p.Message, td=td, timeout=15)
            assert isinstance(answer, p.C2Ready), answer
        finally:
            second.stop()
    finally:
        with pytest.raises(StopIteration):
            next(it)
