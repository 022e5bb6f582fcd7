"""``citywatch server keys ...``: where the master key is kept, moving it from a file
into a PKCS#11 token, and rotating the token key that wraps it.

- ``keys status``: the master key's source, the token key that wraps it, and how many
  incidents are sealed.
- ``keys seal-master``: a server with ``[master_key] source = "file"`` gets its master
  key wrapped under a token key (``wrapped_file``), and the clear file is overwritten
  and removed; then set ``source = "pkcs11"``. Nothing stored changes: the same master
  key, kept another way.
- ``keys rotate-kek``: a new token key, the master key rewrapped under it (the file is
  replaced atomically), the old token key deleted (``--keep-old`` keeps it).
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from hardware._errors import KeyStoreError
from hardware._softhsm import find_softhsm_module
from hardware._wrapped import (
    WrappedKeyError,
    create_wrapped_key,
    read_wrapped_key,
    rotate_token_key,
    shred_file,
)
from protocol import ALG_A256GCM

from ._config import ServerConfig, load_config
from ._errors import MasterKeyError
from ._keys import MASTER_KEY_PURPOSE, read_key_file, read_pin_file

__all__ = ["register_keys"]


def register_keys(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="the master key: status, move into a token, rotate")
    ks = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    st = ks.add_parser("status", parents=[common], help="where the master key is kept")
    st.set_defaults(func=_status)
    sm = ks.add_parser(
        "seal-master",
        parents=[common],
        help="wrap the master key file under a token key and remove the file",
    )
    sm.set_defaults(func=_seal_master)
    rk = ks.add_parser(
        "rotate-kek", parents=[common], help="rewrap the master key under a new token key"
    )
    rk.add_argument(
        "--keep-old",
        action="store_true",
        help="keep the old token key in the token (default: delete it)",
    )
    rk.set_defaults(func=_rotate_kek)


def _token(cfg: ServerConfig) -> Any:
    from hardware._pkcs11 import Pkcs11KeyStore

    mk = cfg.master_key
    module = mk.module or find_softhsm_module()
    if not module:
        raise MasterKeyError("master_key.module is empty and SoftHSM2 is not installed")
    try:
        return Pkcs11KeyStore(module, mk.token_label, read_pin_file(cfg.path(mk.pin_file)))
    except KeyStoreError as exc:
        raise MasterKeyError(f"token {mk.token_label!r}: {exc}") from None


def _status(args: argparse.Namespace) -> int:
    from ._setup import open_store

    cfg = load_config(args.config)
    mk = cfg.master_key
    if mk.source == "file":
        print(f'master key: in clear in {cfg.path(mk.file)} (source = "file")')
    else:
        header, _iv, _sealed = read_wrapped_key(cfg.path(mk.wrapped_file))
        print(
            f"master key: wrapped in {cfg.path(mk.wrapped_file)} under token key "
            f'{header.kek!r} of token {mk.token_label!r} (source = "pkcs11")'
        )
    store, _master = open_store(cfg, announce=False)
    try:
        sealed, clear = store.sealed_counts()
    finally:
        store.close()
    print(f"incidents: {sealed} sealed, {clear} in clear")
    return 0


def _seal_master(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    mk = cfg.master_key
    clear_file = cfg.path(mk.file)
    wrapped = cfg.path(mk.wrapped_file)
    if wrapped.exists():
        raise MasterKeyError(f"{wrapped} exists already: the master key is in the token")
    master = read_key_file(clear_file, what="master key file")
    try:
        with _token(cfg) as store:
            kek = (
                store.cipher(mk.key_label)
                if store.has_key(mk.key_label)
                else store.generate_key(mk.key_label, ALG_A256GCM)
            )
            create_wrapped_key(wrapped, kek, purpose=MASTER_KEY_PURPOSE, key=master)
    except (KeyStoreError, WrappedKeyError) as exc:
        raise MasterKeyError(f"master key not moved: {exc}") from None
    shred_file(clear_file)
    print(
        f"master key wrapped under token key {mk.key_label!r} of token "
        f"{mk.token_label!r} into {wrapped}; {clear_file} overwritten and removed.\n"
        f'Now set [master_key] source = "pkcs11" in {args.config} and restart the server.'
    )
    return 0


def _rotate_kek(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    mk = cfg.master_key
    if mk.source != "pkcs11":
        raise MasterKeyError(
            'rotate-kek needs [master_key] source = "pkcs11" (run '
            "`citywatch server keys seal-master` first)"
        )
    wrapped = cfg.path(mk.wrapped_file)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    new_label = f"{mk.key_label}-{stamp}"
    module = mk.module or find_softhsm_module()
    if not module:
        raise MasterKeyError("master_key.module is empty and SoftHSM2 is not installed")
    try:
        old_label = rotate_token_key(
            module=module,
            token_label=mk.token_label,
            pin=read_pin_file(cfg.path(mk.pin_file)),
            path=wrapped,
            purpose=MASTER_KEY_PURPOSE,
            new_label=new_label,
            keep_old=args.keep_old,
        )
    except WrappedKeyError as exc:
        raise MasterKeyError(f"token key not rotated: {exc}") from None
    print(
        f"master key rewrapped under token key {new_label!r} in {wrapped}; old token key "
        f"{old_label!r} {'kept' if args.keep_old else 'deleted'}"
    )
    return 0
