"""COSE_Encrypt0 envelope codec (RFC 9052 section 5.2), protocol.md section 2.

This module only encodes and decodes; it never touches a cipher (that is ``_crypto``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from ._cbor import loads_exact
from ._errors import MalformedMessage, MessageTooLarge

__all__ = [
    "ALG_A128GCM",
    "ALG_A256GCM",
    "ALG_NAMES",
    "COSE_ENCRYPT0_TAG",
    "EXTERNAL_AAD",
    "IV_LENGTH",
    "KID_LENGTH",
    "MAX_TYPE",
    "TAG_LENGTH",
    "TYPE_LABEL",
    "Envelope",
    "decode_envelope",
    "enc_structure",
    "encode_envelope",
]

COSE_ENCRYPT0_TAG = 16
EXTERNAL_AAD = b"citywatch/v1"
ALG_A128GCM = 1
ALG_A256GCM = 3
ALG_NAMES = {ALG_A128GCM: "A128GCM", ALG_A256GCM: "A256GCM"}
KID_LENGTH = 8
IV_LENGTH = 12
TAG_LENGTH = 16
# COSE header labels: 1 alg, 4 kid, 5 IV; the message type is a private label.
_ALG, _KID, _IV = 1, 4, 5
TYPE_LABEL = -65537
MAX_TYPE = 2**64 - 1
"""The largest message type an envelope may carry: a CBOR unsigned integer, never a
bignum (section 3 uses 1..9, N3 is 10; each role refuses the others as unexpected)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded, not yet decrypted, COSE_Encrypt0 message."""

    alg: int
    """COSE algorithm: 1 (A128GCM) or 3 (A256GCM)."""
    kid: bytes
    """8-byte key identifier, in clear."""
    type: int
    """Message type, from the protected header."""
    protected: bytes
    """The protected header exactly as received (it is authenticated data)."""
    iv: bytes
    """12-byte AES-GCM nonce."""
    ciphertext: bytes
    """Ciphertext with the 16-byte tag appended."""
    raw: bytes
    """The whole message as received; H(x) is computed over these bytes."""


def encode_protected(*, alg: int, kid: bytes, type: int) -> bytes:
    return cbor2.dumps({_ALG: alg, _KID: kid, TYPE_LABEL: type}, canonical=True)


def enc_structure(protected: bytes) -> bytes:
    """The AEAD's additional data: ``["Encrypt0", protected, external_aad]``."""
    return cbor2.dumps(["Encrypt0", protected, EXTERNAL_AAD], canonical=True)


def encode_envelope(*, protected: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    return cbor2.dumps(
        cbor2.CBORTag(COSE_ENCRYPT0_TAG, [protected, {_IV: iv}, ciphertext]), canonical=True
    )


def decode_envelope(data: bytes, *, max_size: int) -> Envelope:
    """Parse and check the envelope, nothing more. Raises ``MalformedMessage``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage("message is not bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    obj = _loads(data, "message")
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != COSE_ENCRYPT0_TAG:
        raise MalformedMessage("not a COSE_Encrypt0 (CBOR tag 16)")
    value = obj.value
    if not isinstance(value, list) or len(value) != 3:
        raise MalformedMessage("COSE_Encrypt0 is not an array of 3")
    protected, unprotected, ciphertext = value
    if not isinstance(protected, bytes):
        raise MalformedMessage("protected header is not a byte string")
    if not isinstance(unprotected, dict) or set(unprotected) != {_IV}:
        raise MalformedMessage("unprotected header must hold exactly the IV (label 5)")
    iv = unprotected[_IV]
    if not isinstance(iv, bytes) or len(iv) != IV_LENGTH:
        raise MalformedMessage(f"IV must be {IV_LENGTH} bytes")
    if not isinstance(ciphertext, bytes) or len(ciphertext) < TAG_LENGTH:
        raise MalformedMessage("ciphertext is not a byte string of at least the tag's length")
    header = _loads(protected, "protected header")
    if not isinstance(header, dict) or set(header) != {_ALG, _KID, TYPE_LABEL}:
        raise MalformedMessage("protected header must hold exactly alg (1), kid (4), type (-65537)")
    alg, kid, mtype = header[_ALG], header[_KID], header[TYPE_LABEL]
    if type(alg) is not int or alg not in ALG_NAMES:
        # Never the peer's value in the message: a huge integer cannot even be printed.
        raise MalformedMessage("alg is not A128GCM (1) or A256GCM (3)")
    if not isinstance(kid, bytes) or len(kid) != KID_LENGTH:
        raise MalformedMessage(f"kid must be {KID_LENGTH} bytes")
    if type(mtype) is not int or not 0 <= mtype <= MAX_TYPE:
        raise MalformedMessage("type is not an unsigned integer of at most 64 bits")
    return Envelope(
        alg=alg, kid=kid, type=mtype, protected=protected, iv=iv, ciphertext=ciphertext, raw=data
    )


def _loads(data: bytes, what: str) -> Any:
    try:
        return loads_exact(data)
    except Exception as exc:  # cbor2 raises several types, all meaning "not CBOR"
        raise MalformedMessage(f"{what} is not valid CBOR: {exc}") from None
