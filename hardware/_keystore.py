"""The key-store interface: AES-GCM keys kept under labels and used without being revealed.

Drivers: ``Pkcs11KeyStore`` (SoftHSM2, a secure element's PKCS#11 module) and
``SoftwareKeyStore`` (unit tests only). Both hand out ``protocol`` ``Cipher`` objects.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

from protocol import ALG_A128GCM, ALG_A256GCM, ALG_NAMES, Cipher
from protocol._envelope import IV_LENGTH  # not exported by protocol (yet)

from ._errors import UnsupportedKey

# The check_* helpers are shared by the drivers of this package, not exported.
__all__ = ["KeyStore"]

_KEY_LENGTH_FOR_ALG = {ALG_A128GCM: 16, ALG_A256GCM: 32}


class KeyStore(abc.ABC):
    """AES-GCM keys kept under labels. A key, once in the store, is never revealed.

    Labels are unique within a store. A store is a context manager; ``close()`` is
    idempotent, and any use of the store or of its ciphers afterwards raises
    ``KeyStoreClosed``.
    """

    @property
    @abc.abstractmethod
    def max_key_bits(self) -> int:
        """Longest AES key the store holds: 128 (an ATECC608) or 256."""

    @abc.abstractmethod
    def cipher(self, label: str) -> Cipher:
        """Return a cipher bound to the key ``label``; ``KeyNotFound`` if there is none."""

    @abc.abstractmethod
    def import_key(self, label: str, key: bytes) -> Cipher:
        """Store ``key`` (16 or 32 bytes) as non-extractable under ``label``; return its cipher.

        Importing the same key under the same label again returns its cipher (provisioning
        can be re-run); a different key under a used label raises ``KeyExists``.
        """

    @abc.abstractmethod
    def generate_key(self, label: str, alg: int) -> Cipher:
        """Generate a key for COSE ``alg`` (1 A128GCM, 3 A256GCM) inside the store."""

    @abc.abstractmethod
    def has_key(self, label: str) -> bool:
        """Whether a key carries ``label``."""

    @abc.abstractmethod
    def delete_key(self, label: str) -> None:
        """Destroy the key ``label``; ``KeyNotFound`` if there is none."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (sessions, login). Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_label(label: str) -> None:
    """Reject a label that is not a non-empty string (a caller's bug, not a store error)."""
    if not isinstance(label, str) or not label:
        raise ValueError(f"a key label is a non-empty string, not {label!r}")


def key_length_for_alg(alg: int) -> int:
    """Key length in bytes for a COSE AES-GCM alg."""
    try:
        return _KEY_LENGTH_FOR_ALG[alg]
    except (KeyError, TypeError):
        raise UnsupportedKey(
            f"alg {alg!r} is not A128GCM ({ALG_A128GCM}) or A256GCM ({ALG_A256GCM})"
        ) from None


def check_key_length(length: int, *, max_key_bits: int, where: str) -> None:
    """Reject a key length the protocol does not use or the store cannot hold."""
    if length not in _KEY_LENGTH_FOR_ALG.values():
        raise UnsupportedKey(
            f"an AES-GCM key for CityWatch is 16 or 32 bytes, not {length}: check the key material"
        )
    if length * 8 > max_key_bits:
        alg = ALG_NAMES[ALG_A256GCM if length == 32 else ALG_A128GCM]
        raise UnsupportedKey(
            f"{where} holds AES keys of at most {max_key_bits} bits, not {length * 8}: "
            f"provision this device with an A128GCM key instead of {alg}, or use a store "
            "that supports AES-256"
        )


def check_iv(iv: bytes) -> None:
    """Both stores take exactly the protocol's IV length, so a unit test with the software
    store catches what a PKCS#11 token would refuse."""
    if len(iv) != IV_LENGTH:
        raise ValueError(f"an AES-GCM IV is {IV_LENGTH} bytes here, not {len(iv)}")
