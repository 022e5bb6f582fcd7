"""Key material of the server: the master key, the device keys encrypted under it, the
ticket key and the incidents' record key derived from it, K_SENC and the admin token.

The master key is kept either wrapped under a non-extractable key in a PKCS#11 token
(``[master_key] source = "pkcs11"``: nothing on disk opens it without the token) or in
clear in a file readable by the server's user only (``source = "file"``).

Device keys are sealed with AES-256-GCM under a key derived from the master key, with
the device's kid as associated data, so a sealed key copied onto another device's row
does not open. Incident photos and coordinates are sealed the same way
(``MasterKey.records``), bound to their incident id and column.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hardware._wrapped import RecordSealer, WrappedKeyError, token_data_key

from ._errors import MasterKeyError

__all__ = [
    "MASTER_KEY_PURPOSE",
    "MasterKey",
    "ensure_secret_file",
    "read_key_file",
    "read_pin_file",
    "read_token_file",
    "token_master_key",
]

MASTER_KEY_PURPOSE = "citywatch server master key"

_DEVICE_KEYS_INFO = b"citywatch server: device keys at rest v1"
_TICKET_INFO = b"citywatch server: C2 ticket key v1"


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def _check_private(path: Path, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise MasterKeyError(
            f"{what} {path} has mode {mode:04o}: other users could read it. Make it "
            f"readable by the server's user only (chmod 600 {path}) and start again"
        )


def ensure_secret_file(path: Path, content: str) -> bool:
    """Create ``path`` with mode 0600 holding ``content`` unless it exists; True if made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return True


def read_key_file(path: Path, *, what: str, lengths: tuple[int, ...] = (32,)) -> bytes:
    """A key stored as hex digits (whitespace ignored), mode 0600."""
    try:
        _check_private(path, what)
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise MasterKeyError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MasterKeyError(f"cannot read {what} {path}: {exc}") from None
    try:
        key = bytes.fromhex("".join(text.split()))
    except ValueError:
        raise MasterKeyError(f"{what} {path} is not hex digits") from None
    if len(key) not in lengths:
        want = " or ".join(str(2 * n) for n in lengths)
        raise MasterKeyError(f"{what} {path} holds {2 * len(key)} hex digits, not {want}")
    return key


def read_pin_file(path: Path) -> str:
    """A token's user PIN: the first line of a file readable by the server's user only."""
    try:
        _check_private(path, "token PIN file")
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MasterKeyError(
            f"token PIN file {path} does not exist: write the token's user PIN in it (mode 0600)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MasterKeyError(f"cannot read token PIN file {path}: {exc}") from None
    if not lines or not lines[0].strip():
        raise MasterKeyError(f"token PIN file {path} is empty")
    return lines[0].strip()


def token_master_key(
    *, module: str, token_label: str, pin: str, key_label: str, wrapped_file: Path, create: bool
) -> MasterKey:
    """The master key unwrapped by the token; with ``create`` and no wrapped file, a new
    one (and the token key, if the token has none labelled ``key_label``)."""
    try:
        return MasterKey(
            token_data_key(
                module=module,
                token_label=token_label,
                pin=pin,
                kek_label=key_label,
                path=wrapped_file,
                purpose=MASTER_KEY_PURPOSE,
                create=create,
            )
        )
    except WrappedKeyError as exc:
        raise MasterKeyError(f"master key: {exc}") from None


def read_token_file(path: Path) -> str:
    try:
        _check_private(path, "admin token file")
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise MasterKeyError(f"admin token file {path} does not exist") from None
    if len(token) < 16:
        raise MasterKeyError(f"admin token file {path} holds fewer than 16 characters")
    return token


class MasterKey:
    """The server's master key: seals device keys at rest, derives the ticket key."""

    __slots__ = ("_device_keys", "_ticket_key", "records")

    def __init__(self, master: bytes) -> None:
        if len(master) != 32:
            raise MasterKeyError("the master key is 32 bytes")
        self._device_keys = AESGCM(_derive(master, _DEVICE_KEYS_INFO))
        self._ticket_key = _derive(master, _TICKET_INFO)
        #: Seals incident photos and coordinates in the database.
        self.records = RecordSealer(master, purpose="server incidents")

    @classmethod
    def from_file(cls, path: Path) -> MasterKey:
        return cls(read_key_file(path, what="master key file"))

    @classmethod
    def create_file(cls, path: Path) -> bool:
        """Write a fresh random master key to ``path`` (mode 0600) unless it exists."""
        return ensure_secret_file(path, secrets.token_hex(32) + "\n")

    @property
    def ticket_key(self) -> bytes:
        """Shared by every replica with the same master key: a ticket from one opens on
        another."""
        return self._ticket_key

    def seal_device_key(self, key: bytes, *, kid: bytes) -> bytes:
        iv = secrets.token_bytes(12)
        return iv + self._device_keys.encrypt(iv, key, b"citywatch device key " + kid)

    def open_device_key(self, sealed: bytes, *, kid: bytes) -> bytes:
        try:
            return self._device_keys.decrypt(
                sealed[:12], sealed[12:], b"citywatch device key " + kid
            )
        except InvalidTag:
            raise MasterKeyError(
                f"the key of device {kid.hex()} does not open under this master key (was "
                "the master key file replaced?)"
            ) from None

    def __repr__(self) -> str:
        return "MasterKey(...)"
