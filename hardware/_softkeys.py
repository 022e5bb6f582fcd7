"""``SoftwareKeyStore``: keys in a Python dict. FOR UNIT TESTS ONLY.

It is the hand-written fake of the key store: it keeps the keys in process memory, where
any bug or core dump can reveal them. Devices, the server and CI integration tests use
``Pkcs11KeyStore`` (a SoftHSM2 token at least).
"""

from __future__ import annotations

import hmac
import os
import threading

from protocol import AesGcmCipher

from ._errors import KeyExists, KeyNotFound, KeyStoreClosed
from ._keystore import KeyStore, check_iv, check_key_length, check_label, key_length_for_alg

__all__ = ["SoftwareKeyStore"]


class SoftwareKeyStore(KeyStore):
    """An in-memory key store for unit tests only; never use it on a device or server.

    It follows the ``KeyStore`` contract exactly like ``Pkcs11KeyStore`` does (same
    errors, 12-byte IVs only, ciphers dead after ``delete_key`` or ``close``).
    ``max_key_bits=128`` makes it behave like an ATECC608.
    """

    def __init__(self, *, max_key_bits: int = 256) -> None:
        if max_key_bits not in (128, 256):
            raise ValueError(f"max_key_bits is 128 or 256, not {max_key_bits!r}")
        self._max_key_bits = max_key_bits
        self._keys: dict[str, _StoredKey] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def max_key_bits(self) -> int:
        return self._max_key_bits

    def cipher(self, label: str) -> SoftwareCipher:
        check_label(label)
        with self._lock:
            return SoftwareCipher(self, label, self._get(label).cipher)

    def import_key(self, label: str, key: bytes) -> SoftwareCipher:
        check_label(label)
        key = bytes(key)
        check_key_length(len(key), max_key_bits=self._max_key_bits, where="this store")
        with self._lock:
            self._check_open()
            stored = self._keys.get(label)
            if stored is not None and not hmac.compare_digest(stored.key, key):
                raise KeyExists(
                    f"label {label!r} already holds a different key: delete_key({label!r}) "
                    "first if it is to be replaced"
                )
            if stored is None:
                stored = self._keys[label] = _StoredKey(key)
            return SoftwareCipher(self, label, stored.cipher)

    def generate_key(self, label: str, alg: int) -> SoftwareCipher:
        check_label(label)
        length = key_length_for_alg(alg)
        check_key_length(length, max_key_bits=self._max_key_bits, where="this store")
        with self._lock:
            self._check_open()
            if label in self._keys:
                raise KeyExists(f"label {label!r} already holds a key: choose another label")
            stored = self._keys[label] = _StoredKey(os.urandom(length))
            return SoftwareCipher(self, label, stored.cipher)

    def has_key(self, label: str) -> bool:
        check_label(label)
        with self._lock:
            self._check_open()
            return label in self._keys

    def delete_key(self, label: str) -> None:
        check_label(label)
        with self._lock:
            self._get(label)
            del self._keys[label]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._keys.clear()

    def _live_cipher(self, label: str, cipher: AesGcmCipher) -> AesGcmCipher:
        """The key behind a handed-out cipher, if it is still the one stored under its label."""
        with self._lock:
            if self._get(label).cipher is not cipher:
                raise KeyNotFound(f"key {label!r} was deleted and replaced: get a new cipher")
            return cipher

    def _get(self, label: str) -> _StoredKey:
        self._check_open()
        try:
            return self._keys[label]
        except KeyError:
            raise KeyNotFound(
                f"no key labelled {label!r} in this software store: import or generate it first"
            ) from None

    def _check_open(self) -> None:
        if self._closed:
            raise KeyStoreClosed("the software key store is closed: open a new one")

    def __repr__(self) -> str:
        return f"SoftwareKeyStore(keys={len(self._keys)}, max_key_bits={self._max_key_bits})"


class SoftwareCipher:
    """A ``Cipher`` of a ``SoftwareKeyStore``: an ``AesGcmCipher`` that dies with its key."""

    __slots__ = ("_cipher", "_label", "_store")

    def __init__(self, store: SoftwareKeyStore, label: str, cipher: AesGcmCipher) -> None:
        self._store = store
        self._label = label
        self._cipher = cipher

    @property
    def alg(self) -> int:
        return self._cipher.alg

    @property
    def label(self) -> str:
        return self._label

    def seal(self, *, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        check_iv(iv)
        return self._store._live_cipher(self._label, self._cipher).seal(
            iv=iv, plaintext=plaintext, aad=aad
        )

    def open(self, *, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        check_iv(iv)
        return self._store._live_cipher(self._label, self._cipher).open(
            iv=iv, ciphertext=ciphertext, aad=aad
        )

    def __repr__(self) -> str:
        return f"SoftwareCipher(label={self._label!r}, alg={self.alg})"


class _StoredKey:
    """A key and its software cipher; the raw bytes are kept only to compare re-imports."""

    __slots__ = ("cipher", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.cipher = AesGcmCipher(key)
