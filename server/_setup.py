"""First start and every start: the data directory, the key files, the database."""

from __future__ import annotations

import logging
import secrets

from sqlalchemy import func, inspect, select

from hardware._softhsm import find_softhsm_module

from ._config import ServerConfig
from ._errors import MasterKeyError
from ._keys import MasterKey, ensure_secret_file, read_pin_file, token_master_key
from ._schema import DeviceRow
from ._store import Store, make_engine, migrate

__all__ = ["open_store"]

_log = logging.getLogger("citywatch.server")


def _sealed_keys_exist(url: str) -> int:
    engine = make_engine(url)
    try:
        if not inspect(engine).has_table("devices"):
            return 0
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(DeviceRow)).scalar() or 0)
    finally:
        engine.dispose()


def open_store(config: ServerConfig, *, announce: bool = True) -> tuple[Store, MasterKey]:
    """Create what a first start needs (data directory, master key, K_SENC, admin
    token; each file mode 0600), migrate the database, and open it."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    mk = config.master_key
    if mk.source == "pkcs11":
        master = _token_master(config, made)
    else:
        master_path = config.path(mk.file)
        if not master_path.exists():
            n = _sealed_keys_exist(config.database_url)
            if n:
                # A fresh master key would silently orphan every stored device key.
                raise MasterKeyError(
                    f"master key file {master_path} is missing, but the database holds {n} "
                    "device key(s) sealed under a master key: restore that file (from the "
                    "backup, or copy it from another replica) and start again"
                )
            if MasterKey.create_file(master_path):
                made.append(f"master key {master_path}")
        master = MasterKey.from_file(master_path)
    if ensure_secret_file(config.path(config.enc.key_file), secrets.token_hex(32) + "\n"):
        made.append(
            f"ENC key (K_SENC) {config.path(config.enc.key_file)}: give the ENC "
            f"this key with server kid {config.enc.server_kid}"
        )
    if config.admin.enabled and ensure_secret_file(
        config.path(config.admin.token_file), secrets.token_urlsafe(32) + "\n"
    ):
        made.append(f"admin API token {config.path(config.admin.token_file)}")
    if made and announce:
        import sys

        for m in made:
            print(f"citywatch server: created {m}", file=sys.stderr)
    engine = make_engine(config.database_url)
    migrate(engine)
    store = Store(engine, master)
    # Incidents stored before sealing existed are sealed now (resumes if interrupted).
    sealed = store.seal_clear_incidents()
    if sealed:
        _log.warning("sealed the photos and positions of %d incident(s) stored in clear", sealed)
    return store, master


def _token_master(config: ServerConfig, made: list[str]) -> MasterKey:
    mk = config.master_key
    wrapped = config.path(mk.wrapped_file)
    module = mk.module or find_softhsm_module()
    if not module:
        raise MasterKeyError(
            "master_key.module is empty and SoftHSM2 is not installed: "
            "set the token's PKCS#11 module"
        )
    create = not wrapped.exists()
    if create:
        n = _sealed_keys_exist(config.database_url)
        if n:
            raise MasterKeyError(
                f"wrapped master key file {wrapped} is missing, but the database holds {n} "
                "device key(s) sealed under a master key: restore that file (from the "
                "backup, or copy it from another replica) and start again"
            )
    master = token_master_key(
        module=module,
        token_label=mk.token_label,
        pin=read_pin_file(config.path(mk.pin_file)),
        key_label=mk.key_label,
        wrapped_file=wrapped,
        create=create,
    )
    if create:
        made.append(
            f"master key, wrapped under token key {mk.key_label!r} of token "
            f"{mk.token_label!r}: {wrapped}"
        )
    return master
