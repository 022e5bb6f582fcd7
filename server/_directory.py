"""The protocol core's ``DeviceDirectory`` backed by the database.

The core looks devices up synchronously for every message, so lookups are served from
memory: device metadata is re-read every poll, and decrypted keys are cached by kid.
The server calls ``ensure`` (off the event loop) before handing a message to the core,
so a device added since the last poll is found on its first message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from protocol import AesGcmCipher, Cipher, DeviceRecord

from ._store import DeviceInfo, Store
from ._windows import MonitoringPlan

__all__ = ["RegistryDirectory"]

# A kid found nowhere is not looked up again for this long: a stream of messages with
# made-up kids must not become a stream of database queries.
_NEGATIVE_TTL_S = 5.0


@dataclass(slots=True)
class _Entry:
    info: DeviceInfo
    cipher: Cipher | None = None


class RegistryDirectory:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._entries: dict[bytes, _Entry] = {}
        self._unknown: dict[bytes, float] = {}
        self.plan = MonitoringPlan((), ())

    # -- DeviceDirectory -------------------------------------------------------------

    def lookup(self, kid: bytes) -> DeviceRecord | None:
        e = self._entries.get(kid)
        if e is None or e.cipher is None:
            return None
        i = e.info
        return DeviceRecord(kid=kid, uid=i.uid, cipher=e.cipher, active=i.active, blocked=i.blocked)

    def monitoring_active(self, kid: bytes, now: int) -> bool:
        e = self._entries.get(kid)
        return e is not None and self.plan.until(e.info.zone, now) is not None

    # -- maintenance (off the event loop: these read the database) -------------------

    def needs_load(self, kid: bytes) -> bool:
        e = self._entries.get(kid)
        if e is not None and e.cipher is not None:
            return False
        seen = self._unknown.get(kid)
        return seen is None or time.monotonic() - seen > _NEGATIVE_TTL_S

    def ensure_all(self, kids: Iterable[bytes]) -> None:
        """``ensure`` each of ``kids``."""
        for kid in kids:
            self.ensure(kid)

    def ensure(self, kid: bytes) -> None:
        """Load the device's metadata and key if they are not cached."""
        if not self.needs_load(kid):
            return
        found = self._store.device_by_kid(kid)
        if found is None:
            self._unknown[kid] = time.monotonic()
            if len(self._unknown) > 100_000:
                self._unknown.clear()
            return
        info, key = found
        self._entries[kid] = _Entry(info, AesGcmCipher(key))
        self._unknown.pop(kid, None)

    def apply_changes(self, changed: list[DeviceInfo], kids: set[bytes]) -> None:
        """A re-read (``Store.registry_changes``): ``changed`` replaces those devices'
        metadata (keys stay cached), and a device whose kid is not in ``kids`` (deleted)
        is forgotten."""
        for kid in [k for k in self._entries if k not in kids]:
            del self._entries[kid]
        for info in changed:
            self.update(info)

    def update(self, info: DeviceInfo) -> None:
        old = self._entries.get(info.kid)
        self._entries[info.kid] = _Entry(info, old.cipher if old else None)

    def versions(self) -> dict[bytes, int]:
        """kid -> ``updated_at`` of each device held (for ``Store.registry_changes``)."""
        return {kid: e.info.updated_at for kid, e in self._entries.items()}

    def info(self, kid: bytes) -> DeviceInfo | None:
        e = self._entries.get(kid)
        return e.info if e else None

    def devices(self) -> list[DeviceInfo]:
        return [e.info for e in self._entries.values()]
