"""First start and every start: the data directory, the key files, the database."""

from __future__ import annotations

import secrets

from sqlalchemy import func, inspect, select

from ._config import ServerConfig
from ._errors import MasterKeyError
from ._keys import MasterKey, ensure_secret_file
from ._schema import DeviceRow
from ._store import Store, make_engine, migrate

__all__ = ["open_store"]


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
    master_path = config.path(config.master_key.file)
    if not master_path.exists():
        n = _sealed_keys_exist(config.database_url)
        if n:
            # A fresh master key would silently orphan every stored device key.
            raise MasterKeyError(
                f"master key file {master_path} is missing, but the database holds {n} "
                "device key(s) sealed under a master key: restore that file (from the "
                "backup, or copy it from another replica) and start again")
        if MasterKey.create_file(master_path):
            made.append(f"master key {master_path}")
    if ensure_secret_file(config.path(config.enc.key_file), secrets.token_hex(32) + "\n"):
        made.append(f"ENC key (K_SENC) {config.path(config.enc.key_file)}: give the ENC "
                    f"this key with server kid {config.enc.server_kid}")
    if config.admin.enabled and ensure_secret_file(config.path(config.admin.token_file),
                                                   secrets.token_urlsafe(32) + "\n"):
        made.append(f"admin API token {config.path(config.admin.token_file)}")
    if made and announce:
        import sys

        for m in made:
            print(f"citywatch server: created {m}", file=sys.stderr)
    master = MasterKey.from_file(master_path)
    engine = make_engine(config.database_url)
    migrate(engine)
    return Store(engine, master), master
