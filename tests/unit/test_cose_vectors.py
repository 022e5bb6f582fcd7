"""The envelope against the COSE working group's published Encrypt0 examples
(github.com/cose-wg/Examples), besides the project's own vectors (tests/data) and pycose.

CityWatch's envelope is a profile of COSE_Encrypt0 (RFC 9052 section 5.2): the same CBOR
layout and Enc_structure, AES-GCM with direct keys, but alg, kid and a message type in the
protected header and a fixed external_aad. So the published messages must be built and
opened by the same codec and cipher byte for byte, and refused by the profile's decoder
for what the profile forbids (no kid, no type, alg unprotected).
"""

from __future__ import annotations

import base64

import cbor2
import pytest

from protocol import AesGcmCipher, AuthenticationFailed, MalformedMessage, decode_envelope
from protocol._envelope import EXTERNAL_AAD, enc_structure, encode_envelope

PLAINTEXT = b"This is the content."  # every example's "plaintext"


def _jwk_key(k: str) -> bytes:
    return base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))


# aes-gcm-examples/aes-gcm-enc-01.json: A128GCM, protected {1: 1}, direct key "our-secret".
ENC01_KEY = _jwk_key("hJtXIZ2uSN5kbQfbtTNWbg")
ENC01_CEK = bytes.fromhex("849B57219DAE48DE646D07DBB533566E")
ENC01_IV = bytes.fromhex("02D1F7E6F26C43D4868D87CE")
ENC01_AAD = bytes.fromhex("8368456E63727970743143A1010140")
ENC01_CBOR = bytes.fromhex(
    "D08343A10101A1054C02D1F7E6F26C43D4868D87CE582460973A94BB2898009EE52ECFD9AB1DD25867374B"
    "E487C603CD8A7104140831FB78F9738E"
)

# aes-gcm-examples/aes-gcm-enc-03.json: A256GCM, protected {1: 3}, direct key "sec-256".
ENC03_KEY = _jwk_key("Dx4tPEtaaXiHlqW0w9Lh8B8uPUxbanmIl6a1xNPi8QA")
ENC03_CEK = bytes.fromhex("0F1E2D3C4B5A69788796A5B4C3D2E1F01F2E3D4C5B6A798897A6B5C4D3E2F100")
ENC03_IV = bytes.fromhex("02D1F7E6F26C43D4868D87CE")
ENC03_AAD = bytes.fromhex("8368456E63727970743143A1010340")
ENC03_CBOR = bytes.fromhex(
    "D08343A10103A1054C02D1F7E6F26C43D4868D87CE58249D64A5A59A3B04867DCCF6B8EF82F7D1A3B25EF8"
    "C6558CA310D588EE6906E3F30193E1FC"
)

# encrypted-tests/enc-fail-02.json: aes-gcm-enc-01 with the last byte of the tag changed
# ("failures": {"ChangeTag": 1}); it must not open.
FAIL02_CBOR = bytes.fromhex(
    "D08343A10101A1054C02D1F7E6F26C43D4868D87CE582460973A94BB2898009EE52ECFD9AB1DD25867374B"
    "E487C603CD8A7104140831FB78F9738F"
)

# encrypted-tests/enc-pass-01.json: the same content with alg in the unprotected header and
# an empty protected map (h'A0'), valid COSE but outside the profile. Its AAD is the
# file's "AAD_hex" (context "Encrypt1", as in every example of the repository).
PASS01_CBOR = bytes.fromhex(
    "D08341A0A20101054C02D1F7E6F26C43D4868D87CE582460973A94BB2898009EE52ECFD9AB1DD25867374B"
    "D6170F4A3ED6A739B4B0A9BD4535116B"
)
PASS01_AAD = bytes.fromhex("8368456E6372797074314040")

VECTORS = [
    pytest.param(ENC01_KEY, ENC01_CEK, ENC01_IV, ENC01_AAD, ENC01_CBOR, id="aes-gcm-enc-01"),
    pytest.param(ENC03_KEY, ENC03_CEK, ENC03_IV, ENC03_AAD, ENC03_CBOR, id="aes-gcm-enc-03"),
]


def _parts(message: bytes) -> tuple[bytes, dict[int, bytes], bytes]:
    obj = cbor2.loads(message)
    assert isinstance(obj, cbor2.CBORTag) and obj.tag == 16
    protected, unprotected, ciphertext = obj.value
    return protected, unprotected, ciphertext


@pytest.mark.parametrize(("key", "cek", "iv", "aad", "message"), VECTORS)
def test_the_cipher_seals_and_opens_the_published_messages(
    key: bytes, cek: bytes, iv: bytes, aad: bytes, message: bytes
) -> None:
    assert key == cek  # direct key agreement: the JWK is the content key
    protected, unprotected, ciphertext = _parts(message)
    assert unprotected == {5: iv}
    cipher = AesGcmCipher(cek)
    assert cipher.seal(iv=iv, plaintext=PLAINTEXT, aad=aad) == ciphertext
    assert cipher.open(iv=iv, ciphertext=ciphertext, aad=aad) == PLAINTEXT
    # The envelope codec writes the published bytes exactly.
    assert encode_envelope(protected=protected, iv=iv, ciphertext=ciphertext) == message


@pytest.mark.parametrize(("key", "cek", "iv", "aad", "message"), VECTORS)
def test_enc_structure_is_rfc_9052s_with_the_profiles_external_aad(
    key: bytes, cek: bytes, iv: bytes, aad: bytes, message: bytes
) -> None:
    protected, _, _ = _parts(message)
    # The examples were generated while the draft still named the context "Encrypt1"
    # (their tags authenticate that string; RFC 8152 and 9052 renamed it "Encrypt0"):
    # the published structure, with the RFC's context string, is ours byte for byte but
    # for external_aad (empty in the examples: the last byte h'' = 0x40).
    assert cbor2.loads(aad) == ["Encrypt1", protected, b""]
    rfc = aad.replace(b"Encrypt1", b"Encrypt0")
    assert cbor2.loads(rfc) == ["Encrypt0", protected, b""]
    assert enc_structure(protected) == (rfc[:-1] + bytes([0x40 + len(EXTERNAL_AAD)]) + EXTERNAL_AAD)


def test_a_changed_tag_does_not_open() -> None:
    _, unprotected, ciphertext = _parts(FAIL02_CBOR)
    with pytest.raises(AuthenticationFailed):
        AesGcmCipher(ENC01_CEK).open(iv=unprotected[5], ciphertext=ciphertext, aad=ENC01_AAD)


def test_unprotected_alg_opens_only_with_its_own_enc_structure() -> None:
    protected, unprotected, ciphertext = _parts(PASS01_CBOR)
    assert protected == b"\xa0" and unprotected[1] == 1
    cipher = AesGcmCipher(ENC01_CEK)
    assert cipher.open(iv=unprotected[5], ciphertext=ciphertext, aad=PASS01_AAD) == PLAINTEXT
    # The protected header is authenticated: the enc-01 AAD (alg protected) does not fit.
    with pytest.raises(AuthenticationFailed):
        cipher.open(iv=unprotected[5], ciphertext=ciphertext, aad=ENC01_AAD)


@pytest.mark.parametrize(
    "message",
    [ENC01_CBOR, ENC03_CBOR, FAIL02_CBOR, PASS01_CBOR],
    ids=["enc-01", "enc-03", "fail-02", "pass-01"],
)
def test_the_profile_refuses_what_it_forbids(message: bytes) -> None:
    """Valid COSE, but no kid and no type in the protected header (and, in enc-pass-01, alg
    and a second label in the unprotected one): MalformedMessage, before any key is used."""
    with pytest.raises(MalformedMessage):
        decode_envelope(message, max_size=1 << 16)
