"""The ENC's store key: photos and positions are sealed under it in the alert store.

Kept wrapped under a non-extractable key in a PKCS#11 token (``[store_key] source =
"pkcs11"``), or in clear in a file readable by the ENC's user only (``source =
"file"``). Made at first start; refused then if the database already holds sealed
alerts (a fresh key would orphan them).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path

from hardware._softhsm import find_softhsm_module
from hardware._wrapped import WrappedKeyError, rotate_token_key, shred_file, token_data_key

from ._config import EncConfig, StoreKeySection
from ._errors import ConfigError, StoreError
from ._store import AlertStore

__all__ = [
    "STORE_KEY_PURPOSE",
    "open_alert_store",
    "rotate_store_kek",
    "seal_store_key",
    "store_key",
]

STORE_KEY_PURPOSE = "citywatch enc store key"

_log = logging.getLogger("citywatch.enc")


def _private_text(path: Path, what: str) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{what} {path} has mode {mode:04o}: make it readable by the "
                f"ENC's user only (chmod 600 {path})"
            )
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def _token_pin(sk: StoreKeySection) -> tuple[str, str]:
    """The token's PKCS#11 module and user PIN for the store key."""
    module = sk.module or find_softhsm_module()
    if not module:
        raise ConfigError(
            "store_key.module is empty and SoftHSM2 is not installed: set "
            "the token's PKCS#11 module"
        )
    pin = _private_text(Path(sk.pin_file), "token PIN file").splitlines()[0:1]
    if not pin:
        raise ConfigError(f"token PIN file {sk.pin_file} is empty")
    return module, pin[0]


def seal_store_key(config: EncConfig) -> tuple[Path, Path]:
    """Wrap the clear store key file under the token key and remove the file: the same
    key, kept another way (nothing stored changes). The clear file and the wrapped one."""
    sk = config.store_key
    clear, wrapped = Path(sk.file), Path(sk.wrapped_file)
    if wrapped.exists():
        raise ConfigError(f"{wrapped} exists already: the store key is in the token")
    key = _file_key(clear)
    module, pin = _token_pin(sk)
    try:
        token_data_key(
            module=module,
            token_label=sk.token_label,
            pin=pin,
            kek_label=sk.key_label,
            path=wrapped,
            purpose=STORE_KEY_PURPOSE,
            create=True,
            key=key,
        )
    except WrappedKeyError as exc:
        raise ConfigError(f"store key not moved: {exc}") from None
    shred_file(clear)
    return clear, wrapped


def rotate_store_kek(config: EncConfig, *, keep_old: bool) -> tuple[str, str]:
    """A new token key ``<key_label>-<UTC time>``, the store key rewrapped under it (the
    wrapped file replaced atomically), the old token key deleted unless ``keep_old``.
    The old label and the new one."""
    sk = config.store_key
    if sk.source != "pkcs11":
        raise ConfigError(
            'rotate-kek needs [store_key] source = "pkcs11" (run '
            "`citywatch enc keys seal-store-key` first)"
        )
    module, pin = _token_pin(sk)
    new_label = f"{sk.key_label}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    try:
        old_label = rotate_token_key(
            module=module,
            token_label=sk.token_label,
            pin=pin,
            path=Path(sk.wrapped_file),
            purpose=STORE_KEY_PURPOSE,
            new_label=new_label,
            keep_old=keep_old,
        )
    except WrappedKeyError as exc:
        raise ConfigError(f"token key not rotated: {exc}") from None
    return old_label, new_label


def _file_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(_private_text(path, "store key file"))
    except ValueError:
        raise ConfigError(f"store key file {path} is not hex digits") from None
    if len(key) != 32:
        raise ConfigError(f"store key file {path} holds {2 * len(key)} hex digits, not 64")
    return key


def store_key(config: EncConfig, *, create: bool) -> bytes:
    """The store key; with ``create``, made (file, or token key and wrapped file) when
    missing."""
    sk = config.store_key
    if sk.source == "pkcs11":
        module, pin = _token_pin(sk)
        try:
            return token_data_key(
                module=module,
                token_label=sk.token_label,
                pin=pin,
                kek_label=sk.key_label,
                path=Path(sk.wrapped_file),
                purpose=STORE_KEY_PURPOSE,
                create=create,
            )
        except WrappedKeyError as exc:
            raise ConfigError(f"store key: {exc}") from None
    path = Path(sk.file)
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        _log.warning(
            'created the store key %s (source = "file": it sits in clear on '
            "disk; see docs/operations.md for keeping it in a token)",
            path,
        )
    return _file_key(path)


def open_alert_store(config: EncConfig, *, at: int | None = None) -> AlertStore:
    """The alert store with its key; alerts from before sealing are sealed now."""
    probe = AlertStore.open(config.database_url)
    try:
        sealed, _clear = probe.sealed_counts()
    finally:
        probe.close()
    sk = config.store_key
    key_there = Path(sk.wrapped_file if sk.source == "pkcs11" else sk.file).exists()
    if sealed and not key_there:
        where = sk.wrapped_file if sk.source == "pkcs11" else sk.file
        raise StoreError(
            f"the store key ({where}) is missing, but the alert store holds "
            f"{sealed} sealed alert(s): restore it from the backup (a new key "
            "would not open them) and start again"
        )
    store = AlertStore.open(config.database_url, key=store_key(config, create=True))
    import time

    done = store.seal_clear_alerts(at=at if at is not None else time.time_ns() // 1_000_000)
    if done:
        _log.warning("sealed the photos and positions of %d alert(s) stored in clear", done)
    return store
