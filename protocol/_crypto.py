"""All cryptography of the protocol: AEAD sealing and opening of envelopes, hashes.

A ``Cipher`` is anything that seals and opens with one AES-GCM key: the software
``AesGcmCipher`` here, or a key held in a PKCS#11 token (``hardware``), which never
reveals the key.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._envelope import (
    ALG_A128GCM,
    ALG_A256GCM,
    Envelope,
    enc_structure,
    encode_envelope,
    encode_protected,
)
from ._errors import AuthenticationFailed, LocalProtocolError

__all__ = [
    "AesGcmCipher",
    "Cipher",
    "alg_for_key_length",
    "message_hash",
    "open_envelope",
    "seal_message",
]


@runtime_checkable
class Cipher(Protocol):
    """One AES-GCM key, used without being revealed."""

    @property
    def alg(self) -> int:
        """COSE algorithm of the key: 1 (A128GCM) or 3 (A256GCM)."""
        ...

    def seal(self, *, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt; return the ciphertext with the 16-byte tag appended."""
        ...

    def open(self, *, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Decrypt and verify; raise ``AuthenticationFailed`` when the tag is wrong."""
        ...


def alg_for_key_length(length: int) -> int:
    if length == 16:
        return ALG_A128GCM
    if length == 32:
        return ALG_A256GCM
    raise LocalProtocolError(f"an AES-GCM key is 16 or 32 bytes, not {length}")


class AesGcmCipher:
    """A software AES-GCM key (``cryptography``)."""

    __slots__ = ("_aead", "alg")

    def __init__(self, key: bytes) -> None:
        self.alg = alg_for_key_length(len(key))
        self._aead = AESGCM(key)

    def seal(self, *, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(iv, plaintext, aad)

    def open(self, *, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(iv, ciphertext, aad)
        except InvalidTag:
            raise AuthenticationFailed("AEAD tag does not verify") from None

    def __repr__(self) -> str:  # never show the key
        return f"AesGcmCipher(alg={self.alg})"


def message_hash(raw: bytes) -> bytes:
    """H(x): SHA-256 over the exact bytes of a message as sent."""
    return hashlib.sha256(raw).digest()


def seal_message(*, cipher: Cipher, kid: bytes, type: int, plaintext: bytes, iv: bytes) -> bytes:
    protected = encode_protected(alg=cipher.alg, kid=kid, type=type)
    ciphertext = cipher.seal(iv=iv, plaintext=plaintext, aad=enc_structure(protected))
    return encode_envelope(protected=protected, iv=iv, ciphertext=ciphertext)


def open_envelope(envelope: Envelope, cipher: Cipher) -> bytes:
    if envelope.alg != cipher.alg:
        raise AuthenticationFailed("alg of the message is not the alg of the key")
    return cipher.open(
        iv=envelope.iv, ciphertext=envelope.ciphertext, aad=enc_structure(envelope.protected)
    )
