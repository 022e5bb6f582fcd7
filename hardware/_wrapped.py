"""Keys and records at rest. A data key lives on disk only wrapped (AES-GCM) under a
non-extractable key in a key store (a PKCS#11 token): the server's master key, the
ENC's store key. ``RecordSealer`` seals database fields (photos, coordinates) under a
key derived from such a data key, each bound to its row by associated data.

The file is JSON, mode 0600::

    {"format": "citywatch-wrapped-key-1", "purpose": "...", "kek": "<token key label>",
     "iv": "<hex>", "sealed": "<hex>"}

``purpose`` is bound as associated data, so a wrapped server master key renamed into the
ENC's place does not open. Without the token (and its PIN) the file is useless; with it,
the key is unwrapped into memory at start-up and never written out in clear.

A sealed record is ``b"CWS1" || IV (12) || ciphertext || tag (16)``: the magic tells
it from a field written in clear before sealing existed (a JPEG starts with FF D8).

Errors (all ``HardwareError``):

    WrappedKeyError      the file is missing, unreadable, malformed, or does not open
                         under the token key it names (another token, a rotated key)
    SealedRecordError    a sealed field does not open (another key, or tampered with)
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import Cipher

from ._errors import HardwareError

__all__ = [
    "SEALED_MAGIC",
    "LabelledCipher",
    "RecordSealer",
    "SealedRecordError",
    "WrappedKey",
    "WrappedKeyError",
    "create_wrapped_key",
    "open_wrapped_key",
    "read_wrapped_key",
    "rewrap_key",
    "token_data_key",
]

FORMAT = "citywatch-wrapped-key-1"


class LabelledCipher(Cipher, Protocol):
    """A key store's cipher: it knows the label of its key."""

    @property
    def label(self) -> str:
        """The key's label in its store."""
        ...


class WrappedKeyError(HardwareError):
    """A wrapped key file cannot be used."""


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """What a wrapped key file says, without the key."""

    purpose: str
    """What the key is for (bound to the ciphertext)."""
    kek: str
    """Label of the token key that wraps it."""


def _aad(purpose: str) -> bytes:
    return b"citywatch wrapped key v1 " + purpose.encode()


def _write(path: Path, *, purpose: str, kek: LabelledCipher, key: bytes, replace: bool) -> None:
    iv = secrets.token_bytes(12)
    sealed = kek.seal(iv=iv, plaintext=key, aad=_aad(purpose))
    body = (
        json.dumps(
            {
                "format": FORMAT,
                "purpose": purpose,
                "kek": kek.label,
                "iv": iv.hex(),
                "sealed": sealed.hex(),
            },
            indent=1,
        )
        + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        if not replace and path.exists():
            raise WrappedKeyError(f"{path} exists already: not replaced")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def create_wrapped_key(
    path: Path, kek: LabelledCipher, *, purpose: str, key: bytes | None = None
) -> bytes:
    """Wrap ``key`` (default: 32 fresh random bytes) under ``kek`` into ``path`` (which
    must not exist); returns the key."""
    if path.exists():
        raise WrappedKeyError(f"{path} exists already: not replaced")
    key = secrets.token_bytes(32) if key is None else key
    _write(path, purpose=purpose, kek=kek, key=key, replace=False)
    return key


def read_wrapped_key(path: Path) -> tuple[WrappedKey, bytes, bytes]:
    """The header, IV and ciphertext of a wrapped key file."""
    try:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise WrappedKeyError(
                f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: make it "
                f"readable by the service's user only (chmod 600 {path})"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WrappedKeyError(f"wrapped key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WrappedKeyError(f"cannot read wrapped key file {path}: {exc}") from None
    try:
        if data["format"] != FORMAT:
            raise WrappedKeyError(f"{path}: format {data['format']!r}, expected {FORMAT!r}")
        header = WrappedKey(purpose=str(data["purpose"]), kek=str(data["kek"]))
        return header, bytes.fromhex(data["iv"]), bytes.fromhex(data["sealed"])
    except (KeyError, TypeError, ValueError):
        raise WrappedKeyError(f"{path} is not a wrapped key file") from None


def open_wrapped_key(path: Path, kek: LabelledCipher, *, purpose: str) -> bytes:
    """Unwrap the key in ``path`` with the token key ``kek``."""
    header, iv, sealed = read_wrapped_key(path)
    if header.purpose != purpose:
        raise WrappedKeyError(f"{path} holds the {header.purpose!r} key, not {purpose!r}")
    if header.kek != kek.label:
        raise WrappedKeyError(
            f"{path} is wrapped under token key {header.kek!r}, not {kek.label!r}"
        )
    try:
        return kek.open(iv=iv, ciphertext=sealed, aad=_aad(purpose))
    except Exception as exc:  # the drivers raise their own "did not open" errors
        raise WrappedKeyError(
            f"{path} does not open under token key {kek.label!r} ({type(exc).__name__}): "
            "is this the token it was made with?"
        ) from None


def rewrap_key(path: Path, old: LabelledCipher, new: LabelledCipher, *, purpose: str) -> None:
    """Replace ``path`` by the same key wrapped under ``new`` (token key rotation); the
    file is replaced atomically, so a crash leaves the old or the new one."""
    key = open_wrapped_key(path, old, purpose=purpose)
    _write(path, purpose=purpose, kek=new, key=key, replace=True)


SEALED_MAGIC = b"CWS1"
SEAL_OVERHEAD = len(SEALED_MAGIC) + 12 + 16
"""Bytes a sealed field has beyond its plaintext."""


class SealedRecordError(HardwareError):
    """A sealed field does not open under this key (another key, or tampered with)."""


class RecordSealer:
    """AES-256-GCM for database fields, under a key derived (HKDF-SHA256) from a data
    key and a purpose. ``aad`` binds a field to its row and column: a sealed photo moved
    onto another incident's row does not open."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes, *, purpose: str) -> None:
        if len(key) != 32:
            raise ValueError("a data key is 32 bytes")
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"citywatch records at rest v1 " + purpose.encode(),
        ).derive(key)
        self._aead = AESGCM(derived)

    @staticmethod
    def is_sealed(blob: bytes) -> bool:
        return bytes(blob[:4]) == SEALED_MAGIC

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        iv = secrets.token_bytes(12)
        return SEALED_MAGIC + iv + self._aead.encrypt(iv, bytes(plaintext), aad)

    def open(self, blob: bytes, *, aad: bytes) -> bytes:
        blob = bytes(blob)
        if not self.is_sealed(blob) or len(blob) < SEAL_OVERHEAD:
            raise SealedRecordError("not a sealed field")
        try:
            return self._aead.decrypt(blob[4:16], blob[16:], aad)
        except InvalidTag:
            raise SealedRecordError("a sealed field does not open under this key") from None

    def __repr__(self) -> str:
        return "RecordSealer(...)"


def token_data_key(
    *,
    module: str,
    token_label: str,
    pin: str,
    kek_label: str,
    path: Path,
    purpose: str,
    create: bool,
    key: bytes | None = None,
) -> bytes:
    """The data key wrapped in ``path``, unwrapped by the token key the file names. With
    ``create`` and no file yet: ``key`` (default: a fresh one), wrapped under ``kek_label``
    (generated in the token, non-extractable, if the token has none by that label)."""
    from protocol import ALG_A256GCM

    from ._errors import KeyNotFound, KeyStoreError
    from ._pkcs11 import Pkcs11KeyStore

    try:
        with Pkcs11KeyStore(module, token_label, pin) as store:
            if path.exists():
                header, _iv, _sealed = read_wrapped_key(path)
                try:
                    kek = store.cipher(header.kek)
                except KeyNotFound:
                    raise WrappedKeyError(
                        f"{path} is wrapped under key {header.kek!r}, which token "
                        f"{token_label!r} does not hold: is this the right token?"
                    ) from None
                return open_wrapped_key(path, kek, purpose=purpose)
            if not create:
                raise WrappedKeyError(f"wrapped key file {path} does not exist")
            kek = (
                store.cipher(kek_label)
                if store.has_key(kek_label)
                else store.generate_key(kek_label, ALG_A256GCM)
            )
            return create_wrapped_key(path, kek, purpose=purpose, key=key)
    except KeyStoreError as exc:
        raise WrappedKeyError(f"token {token_label!r}: {exc}") from None


def shred_file(path: Path) -> None:
    """Overwrite ``path`` with random bytes, flush it to the disk, and remove it."""
    # Overwrite before unlinking: on most file systems the old blocks are then gone.
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(os.urandom(max(size, 64)))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


def rotate_token_key(
    *,
    module: str,
    token_label: str,
    pin: str,
    path: Path,
    purpose: str,
    new_label: str,
    keep_old: bool,
) -> str:
    """Token key rotation: a new token key ``new_label``, the data key in ``path``
    rewrapped under it, the old token key deleted unless ``keep_old``. The old label."""
    from protocol import ALG_A256GCM

    from ._errors import KeyStoreError
    from ._pkcs11 import Pkcs11KeyStore

    header, _iv, _sealed = read_wrapped_key(path)
    try:
        with Pkcs11KeyStore(module, token_label, pin) as store:
            old = store.cipher(header.kek)
            new = store.generate_key(new_label, ALG_A256GCM)
            rewrap_key(path, old, new, purpose=purpose)
            if not keep_old:
                store.delete_key(header.kek)
    except KeyStoreError as exc:
        raise WrappedKeyError(f"token {token_label!r}: {exc}") from None
    return header.kek
