"""Interop with an independent COSE implementation (pycose): pycose opens every
message type the project makes, and the project opens messages pycose made."""

from __future__ import annotations

import os

import cbor2
import pytest
from pycose.algorithms import A128GCM, A256GCM
from pycose.headers import IV, KID, Algorithm
from pycose.keys import SymmetricKey
from pycose.messages import CoseMessage, Enc0Message

import protocol as p
from tests.support.world import jpeg

COORDS = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=4.0, src="fixed")
H = bytes(range(32))
SAMPLES: list[p.Message] = [
    p.B1Announce(
        ts=1_764_000_000_000, tx=1_764_028_800_000, h=p.epoch_hash(1_764_000_000_000), ep=7
    ),
    p.B2Confirm(ts=1_764_000_000_000, ep=7, h=H),
    p.C1Hello(td=1_764_000_000_123, uid="pole-0042"),
    p.C2Ready(td=1_764_000_000_123, tk=b"\x01" + bytes(60), h=H),
    p.C3Report(
        td=1_764_000_000_123,
        uid="pole-0042",
        tk=b"\x01" + bytes(60),
        cid=bytes(16),
        gc=COORDS,
        pf=jpeg(),
        sc=0.93,
        lb="person_down",
        at=1_764_000_000_000,
    ),
    p.C4Receipt(td=1_764_000_000_123, inc="inc-1", h=H),
    p.N1Alert(
        ts=1_764_000_001_000,
        inc="inc-1",
        gc=COORDS,
        pf=jpeg(),
        sc=0.87,
        lb="fall",
        at=1_764_000_000_000,
        dev="pole-0042",
    ),
    p.N2Receipt(tenc=1_764_000_001_200, inc="inc-1", h=H),
    p.ErrorMessage(re=3, td=1_764_000_000_123, code=5, now=1_764_000_000_500),
    # The extensions of docs/protocol.md.
    p.N3LinkedReport(
        ts=1_764_000_061_000,
        inc="inc-1",
        rep="inc-2",
        gc=COORDS,
        pf=jpeg(),
        sc=0.9,
        lb="fight",
        at=1_764_000_060_000,
        dev="pole-0043",
    ),
    p.N4PoleAddress(
        ts=1_764_000_002_000, dev="pole-0042", adr="Plac Zamkowy 1", ver=1_763_000_000_000
    ),
]
ALGS = {16: A128GCM, 32: A256GCM}


def test_samples_cover_all_nine_types_and_the_extensions() -> None:
    assert sorted(m.TYPE for m in SAMPLES) == list(range(1, 12)) == sorted(p.MESSAGE_CLASSES)


@pytest.mark.parametrize("key_len", [16, 32])
@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE.name)
def test_pycose_opens_project_messages(message: p.Message, key_len: int) -> None:
    key, kid = os.urandom(key_len), os.urandom(8)
    data = p.seal(message, cipher=p.AesGcmCipher(key), kid=kid, random=os.urandom)
    decoded = CoseMessage.decode(data)
    assert isinstance(decoded, Enc0Message)
    assert decoded.phdr[Algorithm] is ALGS[key_len]
    assert decoded.phdr[KID] == kid
    assert decoded.phdr[-65537] == message.TYPE
    decoded.key = SymmetricKey(k=key)
    decoded.external_aad = p.EXTERNAL_AAD
    plaintext = decoded.decrypt()
    assert plaintext == message.to_plaintext()
    assert p.decode_plaintext(message.TYPE, plaintext) == message


@pytest.mark.parametrize("key_len", [16, 32])
@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE.name)
def test_project_opens_pycose_messages(message: p.Message, key_len: int) -> None:
    key, kid = os.urandom(key_len), os.urandom(8)
    made = Enc0Message(
        phdr={Algorithm: ALGS[key_len], KID: kid, -65537: int(message.TYPE)},
        uhdr={IV: os.urandom(12)},
        payload=message.to_plaintext(),
        external_aad=p.EXTERNAL_AAD,
    )
    made.key = SymmetricKey(k=key)
    data = made.encode()
    opened = p.open_message(
        data,
        role="test",
        accepts=[message.TYPE],
        key_for={kid: p.AesGcmCipher(key)}.get,
        limits=p.Limits(),
    )
    assert opened.message == message
    assert opened.envelope.kid == kid and opened.envelope.alg == (1 if key_len == 16 else 3)


def test_pycose_message_with_other_external_aad_is_refused() -> None:
    key, kid = os.urandom(32), os.urandom(8)
    made = Enc0Message(
        phdr={Algorithm: A256GCM, KID: kid, -65537: 3},
        uhdr={IV: os.urandom(12)},
        payload=p.C1Hello(td=1, uid="x").to_plaintext(),
        external_aad=b"",
    )
    made.key = SymmetricKey(k=key)
    with pytest.raises(p.AuthenticationFailed):
        p.open_message(
            made.encode(),
            role="test",
            accepts=[3],
            key_for={kid: p.AesGcmCipher(key)}.get,
            limits=p.Limits(),
        )


def test_encoding_is_deterministic() -> None:
    for m in SAMPLES:
        assert cbor2.dumps(cbor2.loads(m.to_plaintext()), canonical=True) == m.to_plaintext()
    iv = bytes(12)
    key = bytes(32)
    a = p.seal(SAMPLES[2], cipher=p.AesGcmCipher(key), kid=bytes(8), random=lambda n: iv[:n])
    b = p.seal(SAMPLES[2], cipher=p.AesGcmCipher(key), kid=bytes(8), random=lambda n: iv[:n])
    assert a == b
