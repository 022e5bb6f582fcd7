"""Impersonation, insider forgery, bad timestamps, tickets, payloads and tampering."""

from __future__ import annotations

import os

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from tests.support.world import World, jpeg

from .attacker import RECEIVER, craft, deliver, honest_run, still_works


def c3_map(w: World, d, tk: bytes, td: int, **over: object) -> dict:
    m = {
        "td": td,
        "uid": d.uid,
        "tk": tk,
        "cid": os.urandom(16),
        "gc": {"lat": 52.1, "lon": 21.0, "alt": None, "acc": 5.0, "src": "gps"},
        "pf": jpeg(),
        "sc": 0.9,
        "lb": "fall",
        "at": w.now,
    }
    m.update(over)
    return m


def open_contact(w: World, d) -> tuple[int, bytes]:
    """Run C1/C2 honestly; return T_D and the ticket."""
    w.server_out()
    d.conn.start_report(w.report(), w.now)
    w.to_server(d.conn.data_to_send()[0])
    [c2] = w.server_out()
    opened = p.open_message(
        c2, role="t", accepts=[4], key_for=lambda _: p.AesGcmCipher(d.key), limits=p.Limits()
    )
    assert isinstance(opened.message, p.C2Ready)
    return opened.message.td, opened.message.tk


def refusal(events: list[p.Event]) -> int:
    [r] = [e for e in events if isinstance(e, p.ContactRefused)]
    return r.code


def test_kid_of_one_device_with_key_of_another_is_dropped_unanswered() -> None:
    w = World()
    a, b = w.add_device("pole-a"), w.add_device("pole-b")
    forged = craft(b.key, a.kid, p.MessageType.C1, {"td": w.now, "uid": "pole-a"})
    [dropped] = w.to_server(forged)
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "auth"
    assert w.server_out() == []  # no answer to a message that fails authentication
    still_works(w, a)
    still_works(w, b)


def test_uid_that_does_not_match_the_kid() -> None:
    w = World()
    a, b = w.add_device("pole-a"), w.add_device("pole-b")
    # device a, with its own key, claims to be pole-b
    events = w.to_server(craft(a.key, a.kid, p.MessageType.C1, {"td": w.now, "uid": b.uid}))
    assert refusal(events) == p.ErrorCode.UID_MISMATCH
    td, tk = open_contact(w, a)
    events = w.to_server(craft(a.key, a.kid, p.MessageType.C3, c3_map(w, b, tk, td)))
    assert refusal(events) == p.ErrorCode.UID_MISMATCH
    still_works(w, a)


def test_unknown_kid_is_dropped_unanswered() -> None:
    w = World()
    w.add_device("pole-a")
    events = w.to_server(craft(os.urandom(32), os.urandom(8), 3, {"td": w.now, "uid": "x"}))
    assert [e.reason for e in events] == ["unknown_kid"]  # type: ignore[attr-defined]
    assert w.server_out() == []


def test_wrong_algorithm_for_the_kid_is_refused_before_decrypting() -> None:
    w = World()
    d = w.add_device("pole-a", key_len=16)  # an ATECC608: AES-128 only
    forged = craft(d.key, d.kid, 3, {"td": w.now, "uid": d.uid}, alg_key=os.urandom(32))
    [dropped] = w.to_server(forged)
    assert dropped.reason == "unexpected" and "alg 3" in dropped.detail  # type: ignore
    still_works(w, d)


@pytest.mark.parametrize("mtype", [0, 10, 11, 255, 65535, 2**32])
def test_unknown_message_types_are_dropped(mtype: int) -> None:
    w = World()
    d = w.add_device("pole-a")
    data = craft(d.key, d.kid, mtype, {"td": w.now, "uid": d.uid})
    for role in ("device", "server", "notifier", "enc"):
        [dropped] = deliver(w, d, role, data)
        assert isinstance(dropped, p.MessageDropped) and dropped.reason == "unexpected"
    still_works(w, d)


@pytest.mark.parametrize("skew", [-1, 1])
def test_stale_or_future_timestamps(skew: int) -> None:
    w = World()
    d = w.add_device("pole-a")
    off = skew * (w.timing.window_ms + 1)
    events = w.to_server(craft(d.key, d.kid, 3, {"td": w.now + off, "uid": d.uid}))
    assert refusal(events) == p.ErrorCode.TIMESTAMP_OUT_OF_WINDOW
    # B1 from a server whose clock is off
    b1 = craft(
        d.key,
        d.kid,
        1,
        {"ts": w.now + off, "tx": w.now + off + 60_000, "h": p.epoch_hash(w.now + off), "ep": 99},
    )
    [dropped] = w.to_device(d, b1)
    assert dropped.reason == "timestamp"  # type: ignore[attr-defined]
    # N1 likewise, at the ENC
    n1 = craft(
        w.enc_key,
        w.server_kid,
        7,
        {
            "ts": w.now + off,
            "inc": "x",
            "gc": {"lat": 1.0, "lon": 2.0, "alt": None, "acc": None, "src": "fixed"},
            "pf": jpeg(),
            "sc": 0.5,
            "lb": "fall",
            "at": w.now,
            "dev": "pole-a",
        },
    )
    [dropped] = w.enc.receive(n1, w.now)
    assert dropped.reason == "timestamp"  # type: ignore[attr-defined]
    still_works(w, d)


def test_lowered_epoch_and_forged_epoch_hash() -> None:
    w = World()
    d = w.add_device("pole-a")
    for _ in range(3):
        w.to_device(d, w.announce(d))
    lowered = craft(
        d.key, d.kid, 1, {"ts": w.now, "tx": w.now + 1, "h": p.epoch_hash(w.now), "ep": 2}
    )
    assert w.to_device(d, lowered)[0].reason == "stale_epoch"  # type: ignore[attr-defined]
    bad_h = craft(d.key, d.kid, 1, {"ts": w.now, "tx": w.now + 1, "h": bytes(32), "ep": 9})
    assert w.to_device(d, bad_h)[0].reason == "bad_hash"  # type: ignore[attr-defined]
    assert d.conn.last_epoch == 3
    still_works(w, d)


def test_expired_foreign_and_forged_tickets() -> None:
    w = World()
    a, b = w.add_device("pole-a"), w.add_device("pole-b")
    td_a, tk_a = open_contact(w, a)
    td_b, _ = open_contact(w, b)
    # b presents a's ticket
    events = w.to_server(craft(b.key, b.kid, 5, c3_map(w, b, tk_a, td_b)))
    assert refusal(events) == p.ErrorCode.TICKET_INVALID
    # a ticket from another server (another ticket key)
    other = p.TicketSealer(os.urandom(32), random=os.urandom)
    tk = other.issue(kid=a.kid, td=td_a, expires=w.now + 60_000)
    assert refusal(w.to_server(craft(a.key, a.kid, 5, c3_map(w, a, tk, td_a)))) == 7
    # a's own ticket for another T_D
    assert refusal(w.to_server(craft(a.key, a.kid, 5, c3_map(w, a, tk_a, td_a + 1)))) == 7
    # garbage
    assert refusal(w.to_server(craft(a.key, a.kid, 5, c3_map(w, a, b"\x01" * 40, td_a)))) == 7
    # expired
    w.advance(w.timing.ticket_lifetime_ms + 1)
    assert refusal(w.to_server(craft(a.key, a.kid, 5, c3_map(w, a, tk_a, td_a)))) == 7
    still_works(w, a)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pf", b"\x89PNG\r\n\x1a\n" + bytes(100)),
        ("pf", b""),
        ("gc", {"lat": 91.0, "lon": 21.0, "alt": None, "acc": None, "src": "gps"}),
        ("gc", {"lat": 52.0, "lon": -180.5, "alt": None, "acc": None, "src": "gps"}),
        ("gc", {"lat": float("nan"), "lon": 0.0, "alt": None, "acc": None, "src": "gps"}),
        ("gc", {"lat": 52.0, "lon": 21.0, "alt": None, "acc": None, "src": "galileo"}),
        ("gc", {"lat": 52, "lon": 21, "alt": None, "acc": None, "src": "gps"}),
        ("sc", 1.5),
        ("sc", "high"),
        ("lb", ""),
        ("lb", "x" * 33),
        ("extra", 1),
    ],
)
def test_bad_payloads_are_refused_with_error_8(field: str, value: object) -> None:
    w = World()
    d = w.add_device("pole-a")
    td, tk = open_contact(w, d)
    events = w.to_server(craft(d.key, d.kid, 5, c3_map(w, d, tk, td, **{field: value})))
    assert not [e for e in events if isinstance(e, p.IncidentReported)]
    assert refusal(events) == p.ErrorCode.PAYLOAD_REJECTED
    still_works(w, d)


def test_missing_key_is_rejected() -> None:
    w = World()
    d = w.add_device("pole-a")
    [dropped] = w.to_server(craft(d.key, d.kid, 3, {"td": w.now}))
    assert dropped.reason == "plaintext" and "uid" in dropped.detail  # type: ignore


@pytest.mark.parametrize("size", [p.Limits().max_large_message + 1, 8 * 1024 * 1024])
def test_oversized_input_is_dropped_before_decrypting(size: int) -> None:
    w = World()
    d = w.add_device("pole-a")
    blob = cbor2.dumps(cbor2.CBORTag(16, [b"", {5: bytes(12)}, bytes(size)]))
    for role in ("server", "enc"):
        [dropped] = deliver(w, d, role, blob)
        assert dropped.reason == "too_large"  # type: ignore[attr-defined]
    small = cbor2.dumps(cbor2.CBORTag(16, [b"", {5: bytes(12)}, bytes(2000)]))
    assert deliver(w, d, "device", small)[0].reason == "too_large"  # type: ignore
    still_works(w, d)


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\x00",
        b"\xd0",
        b"\xd0\x83",
        b"\xff" * 50,
        cbor2.dumps([[[[[[]]]]]]),
        cbor2.dumps({"a": 1}),
        b"\x9f" * 10_000,
    ],
)
def test_garbage_is_dropped(junk: bytes) -> None:
    w = World()
    d = w.add_device("pole-a")
    for role in ("device", "server", "notifier", "enc"):
        [dropped] = deliver(w, d, role, junk)
        assert isinstance(dropped, p.MessageDropped)
    still_works(w, d)


# -- tampering and truncation of every byte (property-based) -------------------------

WORLD = World(seed=7)
DEVICE = WORLD.add_device("pole-t")
WIRE = honest_run(WORLD, DEVICE)


INTEGRITY_REASONS = {"auth", "malformed", "too_large", "unexpected", "unknown_kid"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(WIRE)), data=st.data())
def test_flipping_any_byte_is_detected(name: str, data: st.DataObject) -> None:
    msg = WIRE[name]
    i = data.draw(st.integers(0, len(msg) - 1), label="byte")
    mask = data.draw(st.integers(1, 255), label="xor")
    tampered = msg[:i] + bytes([msg[i] ^ mask]) + msg[i + 1 :]
    w = World(seed=11)
    w.directory = WORLD.directory
    w.server = p.ServerEndpoint(
        directory=WORLD.directory, ticket_key=os.urandom(32), random=os.urandom
    )
    w.enc = p.EncEndpoint(
        servers={WORLD.server_kid: p.AesGcmCipher(WORLD.enc_key)}, random=os.urandom
    )
    w.notifier = p.EncNotifier(
        kid=WORLD.server_kid, cipher=p.AesGcmCipher(WORLD.enc_key), random=os.urandom
    )
    d = DEVICE
    d.conn = p.DeviceConnection(
        kid=d.kid, uid=d.uid, cipher=p.AesGcmCipher(d.key), random=os.urandom
    )
    w.now = WORLD.now
    events = deliver(w, d, RECEIVER[name], tampered)
    # Caught by the envelope checks or the AEAD, before any semantic check could run.
    [dropped] = events
    assert isinstance(dropped, p.MessageDropped), (name, i, events)
    assert dropped.reason in INTEGRITY_REASONS, (name, i, dropped)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(WIRE)), data=st.data())
def test_truncating_any_message_is_detected(name: str, data: st.DataObject) -> None:
    msg = WIRE[name]
    cut = data.draw(st.integers(0, len(msg) - 1), label="length")
    w = World(seed=11)
    d = w.add_device("pole-x")
    events = deliver(w, d, RECEIVER[name], msg[:cut])
    [dropped] = events
    assert isinstance(dropped, p.MessageDropped)
    assert dropped.reason in INTEGRITY_REASONS


def test_untampered_messages_would_be_accepted_by_the_same_receivers() -> None:
    """Guard for the tamper test above: it must be the flip that is caught."""
    w = World(seed=11)
    w.directory = WORLD.directory
    d = DEVICE
    d.conn = p.DeviceConnection(
        kid=d.kid, uid=d.uid, cipher=p.AesGcmCipher(d.key), random=os.urandom
    )
    w.now = WORLD.now
    # B1 carries epoch 1 and a T_S within the window: a fresh device accepts it
    assert isinstance(d.conn.receive(WIRE["B1"], WORLD.now)[0], p.WindowAnnounced)
    enc = p.EncEndpoint(
        servers={WORLD.server_kid: p.AesGcmCipher(WORLD.enc_key)}, random=os.urandom
    )
    assert isinstance(enc.receive(WIRE["N1"], WORLD.now)[0], p.AlertReceived)


@pytest.mark.parametrize("name", sorted(WIRE))
def test_flipping_every_byte_of_every_message_type_is_detected(name: str) -> None:
    """Exhaustive companion of the property test: each byte position, one bit."""
    msg = WIRE[name]
    d = DEVICE
    server = p.ServerEndpoint(
        directory=WORLD.directory, ticket_key=os.urandom(32), random=os.urandom
    )
    enc = p.EncEndpoint(
        servers={WORLD.server_kid: p.AesGcmCipher(WORLD.enc_key)}, random=os.urandom
    )
    notifier = p.EncNotifier(
        kid=WORLD.server_kid, cipher=p.AesGcmCipher(WORLD.enc_key), random=os.urandom
    )
    conn = p.DeviceConnection(kid=d.kid, uid=d.uid, cipher=p.AesGcmCipher(d.key), random=os.urandom)
    receive = {
        "device": conn.receive,
        "server": server.receive,
        "enc": enc.receive,
        "notifier": notifier.receive,
    }[RECEIVER[name]]
    for i in range(len(msg)):
        for bit in (0x01, 0x80):
            tampered = msg[:i] + bytes([msg[i] ^ bit]) + msg[i + 1 :]
            [dropped] = receive(tampered, WORLD.now)
            assert isinstance(dropped, p.MessageDropped), (name, i, bit)
            assert dropped.reason in INTEGRITY_REASONS, (name, i, bit, dropped)


@pytest.mark.parametrize("name", sorted(WIRE))
def test_trailing_bytes_after_a_message_are_refused(name: str) -> None:
    w = World(seed=11)
    d = w.add_device("pole-x")
    [dropped] = deliver(w, d, RECEIVER[name], WIRE[name] + b"\x00")
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "malformed"
