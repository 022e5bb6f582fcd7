"""Message type 11, N4 "pole address" (S -> ENC, POST /v1/poles): a device's street
address from the server's registry, answered with an N2 whose ``inc`` is the device's UID
and whose ``h`` is H(N4). Sans-I/O, through the real roles."""

from __future__ import annotations

import hashlib
import secrets

import cbor2
import pytest

import protocol as p
from protocol._crypto import seal_message
from tests.support.world import T0

KID = bytes.fromhex("5e5e5e5e00000002")
KEY = bytes(range(32))


def roles() -> tuple[p.EncNotifier, p.EncEndpoint]:
    notifier = p.EncNotifier(kid=KID, cipher=p.AesGcmCipher(KEY), random=secrets.token_bytes)
    enc = p.EncEndpoint(servers={KID: p.AesGcmCipher(KEY)}, random=secrets.token_bytes)
    return notifier, enc


def test_n4_round_trip_and_its_n2_confirms_the_address() -> None:
    notifier, enc = roles()
    data = notifier.pole_address(
        device_uid="pole-9", address="ul. Marszałkowska 104, Warszawa", version=T0 - 60, now=T0
    )
    env = p.decode_envelope(data, max_size=4096)
    assert env.type == p.MessageType.N4 == 11
    [ev] = enc.receive_address(data, T0)
    assert isinstance(ev, p.PoleAddressReceived)
    assert (ev.device_uid, ev.address, ev.version, ev.server_kid) == (
        "pole-9",
        "ul. Marszałkowska 104, Warszawa",
        T0 - 60,
        KID,
    )
    assert ev.n4_hash == hashlib.sha256(data).digest()
    # An address's N2 is not an alert's: the alerts in flight are untouched.
    assert notifier.pending() == []
    [ok] = notifier.receive(enc.address_receipt(ev, T0 + 5), T0 + 5)
    assert isinstance(ok, p.PoleAddressConfirmed) and ok.device_uid == "pole-9"
    # The same N2 again confirms nothing (the wait is over).
    [again] = notifier.receive(enc.address_receipt(ev, T0 + 6), T0 + 6)
    assert isinstance(again, p.MessageDropped) and again.reason == "mismatch"


def test_an_alert_and_an_address_with_the_same_id_are_told_apart_by_the_hash() -> None:
    notifier, enc = roles()
    n1 = notifier.alert(
        incident_id="pole-9",
        coords=p.Coords(lat=52.0, lon=21.0, alt=None, acc=None, src="fixed"),
        photo=b"\xff\xd8\xff\xd9",
        score=0.9,
        label="fall",
        captured_at=T0 - 10,
        device_uid="pole-9",
        now=T0,
    )
    n4 = notifier.pole_address(device_uid="pole-9", address="", version=T0, now=T0)
    [a] = enc.receive(n1, T0)
    [d] = enc.receive_address(n4, T0)
    assert isinstance(a, p.AlertReceived) and isinstance(d, p.PoleAddressReceived)
    [ok] = notifier.receive(enc.address_receipt(d, T0), T0)
    assert isinstance(ok, p.PoleAddressConfirmed)
    assert notifier.pending() == ["pole-9"]  # the alert still waits for its own N2
    [ok] = notifier.receive(enc.receipt(a, T0), T0)
    assert isinstance(ok, p.AlertConfirmed)


def test_each_endpoint_takes_only_its_own_type_and_replays_are_dropped() -> None:
    notifier, enc = roles()
    n4 = notifier.pole_address(device_uid="pole-1", address="Plac Zamkowy 1", version=T0, now=T0)
    for receive in (enc.receive, enc.receive_report):
        [dropped] = receive(n4, T0)
        assert isinstance(dropped, p.MessageDropped) and dropped.reason == "unexpected"
    [first] = enc.receive_address(n4, T0)
    assert isinstance(first, p.PoleAddressReceived)
    [dropped] = enc.receive_address(n4, T0 + 1)
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "replay"
    [late] = enc.receive_address(
        notifier.pole_address(device_uid="pole-1", address="x", version=T0, now=T0 - 31_000), T0
    )
    assert isinstance(late, p.MessageDropped) and late.reason == "timestamp"


def _raw_n4(plain: dict[str, object]) -> bytes:
    return seal_message(
        cipher=p.AesGcmCipher(KEY),
        kid=KID,
        type=11,
        plaintext=cbor2.dumps(plain, canonical=True),
        iv=secrets.token_bytes(12),
    )


@pytest.mark.parametrize(
    ("plain", "why"),
    [
        ({"ts": T0, "dev": "pole-1", "adr": "x"}, "lacks key(s) ver"),
        ({"ts": T0, "dev": "pole-1", "adr": "x", "ver": T0, "gc": {}}, "unknown key"),
        ({"ts": T0, "dev": "pole-1", "adr": "a" * 201, "ver": T0}, "adr must be text of 0..200"),
        ({"ts": T0, "dev": "pole-1", "adr": "Main St\n5", "ver": T0}, "control characters"),
        ({"ts": T0, "dev": "pole-1", "adr": " Main St 5", "ver": T0}, "white space"),
        ({"ts": T0, "dev": "", "adr": "Main St 5", "ver": T0}, "dev must be text"),
        ({"ts": T0, "dev": "pole-1", "adr": "Main St 5", "ver": -1}, "ver must be"),
        ({"ts": T0, "dev": "pole-1", "adr": b"Main St 5", "ver": T0}, "adr must be text"),
    ],
)
def test_a_bad_n4_plaintext_is_dropped(plain: dict[str, object], why: str) -> None:
    _, enc = roles()
    [dropped] = enc.receive_address(_raw_n4(plain), T0)
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "plaintext"
    assert why in dropped.detail


def test_the_message_refuses_bad_values_on_construction() -> None:
    with pytest.raises(p.InvalidPlaintext, match="white space"):
        p.N4PoleAddress(ts=T0, dev="pole-1", adr="Main St 5 ", ver=T0)
    assert p.N4PoleAddress(ts=T0, dev="pole-1", adr="", ver=T0).adr == ""
