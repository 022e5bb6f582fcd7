"""The device registry: devices, their keys (sealed under the master key), their
state; every change audited."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from protocol import ALG_A128GCM, ALG_A256GCM, ALG_NAMES, MAX_ADDRESS

from ._database import Database
from ._errors import DeviceExists, DeviceNotFound, RegistryError
from ._schema import DeviceRow

__all__ = ["DEVICE_ACTIONS", "AddressToSend", "DeviceInfo", "DeviceRegistry", "clean_address"]

DEVICE_ACTIONS = ("activate", "deactivate", "block", "unblock")


def clean_address(address: str | None) -> str | None:
    """A street address as stored: white space collapsed, None for none; refused if it
    is too long or holds control characters (it travels in an N4 and ends up on web
    pages and in CAP messages)."""
    if address is None:
        return None
    if any(not c.isprintable() and c != "\t" for c in address):
        raise RegistryError("an address must not hold control characters (a new line, ...)")
    text = " ".join(address.split())
    if len(text) > MAX_ADDRESS:
        raise RegistryError(f"an address is at most {MAX_ADDRESS} characters ({len(text)} given)")
    return text or None


@dataclass(frozen=True, slots=True)
class AddressToSend:
    """A device whose address the ENC has not confirmed in its latest setting."""

    uid: str
    """The device's UID."""
    address: str | None
    """The address (None: removed)."""
    version: int
    """When it was set, ms (the N4's ``ver``)."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A registered device as the rest of the server sees it (no key)."""

    uid: str
    """The device's UID."""
    kid: bytes
    """Its key id (a pseudonym)."""
    zone: str
    """Monitoring zone."""
    lat: float
    """Registered latitude."""
    lon: float
    """Registered longitude."""
    alg: int
    """COSE alg of its key."""
    active: bool
    """False once deactivated."""
    blocked: bool
    """True while blocked."""
    epoch: int
    """Last broadcast epoch sent."""
    confirmed_epoch: int | None
    """Epoch of the last B2 received."""
    confirmed_at: int | None
    """When that B2 arrived, ms."""
    created_at: int
    """Registration time, ms."""
    updated_at: int
    """Last change, ms."""
    address: str | None = None
    """Street address of the pole (shown at the ENC), or None."""

    @property
    def status(self) -> str:
        return "blocked" if self.blocked else ("active" if self.active else "inactive")

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "kid_hex": self.kid.hex(),
            "zone": self.zone,
            "lat": self.lat,
            "lon": self.lon,
            "alg": ALG_NAMES.get(self.alg, str(self.alg)),
            "status": self.status,
            "active": self.active,
            "blocked": self.blocked,
            "epoch": self.epoch,
            "confirmed_epoch": self.confirmed_epoch,
            "confirmed_at": self.confirmed_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "address": self.address,
        }


class DeviceRegistry:
    """Registered devices. One transaction per call; thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_device(
        self,
        *,
        uid: str,
        zone: str,
        lat: float,
        lon: float,
        alg: int,
        actor: str,
        key: bytes | None = None,
        address: str | None = None,
    ) -> tuple[DeviceInfo, bytes]:
        """Register a device with a fresh random kid and key (or the given key), and its
        street address if known; returns the device and its key, which leaves the server
        only in the provisioning bundle."""
        address = clean_address(address)
        if not 1 <= len(uid) <= 64:
            raise RegistryError("a UID is 1 to 64 characters")
        if not 1 <= len(zone) <= 64:
            raise RegistryError("a zone name is 1 to 64 characters")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise RegistryError("latitude must be in -90..90 and longitude in -180..180")
        if alg not in (ALG_A128GCM, ALG_A256GCM):
            raise RegistryError(f"unknown key algorithm {alg}")
        length = 16 if alg == ALG_A128GCM else 32
        if key is None:
            key = secrets.token_bytes(length)
        elif len(key) != length:
            raise RegistryError(f"a {ALG_NAMES[alg]} key is {length} bytes")
        # The kid is a random pseudonym, never derived from the UID (protocol.md 1.3).
        kid = secrets.token_bytes(8)
        now = self.db.now()
        row = DeviceRow(
            uid=uid,
            kid=kid,
            zone=zone,
            lat=float(lat),
            lon=float(lon),
            alg=alg,
            key_sealed=self.db.master.seal_device_key(key, kid=kid),
            active=True,
            blocked=False,
            epoch=0,
            created_at=now,
            updated_at=now,
            address=address,
            address_at=now if address is not None else None,
        )
        try:
            with self.db.tx() as s:
                s.add(row)
                s.flush()
                self.db.audit(
                    s,
                    actor,
                    "device.add",
                    uid,
                    kid=kid.hex(),
                    zone=zone,
                    lat=lat,
                    lon=lon,
                    alg=ALG_NAMES[alg],
                    **({"address": address} if address is not None else {}),
                )
        except IntegrityError:
            raise DeviceExists(f"a device with UID {uid!r} is already registered") from None
        return _device_info(row), key

    def list_devices(self, *, zone: str | None = None) -> list[DeviceInfo]:
        with self.db.tx() as s:
            q = select(DeviceRow).order_by(DeviceRow.uid)
            if zone is not None:
                q = q.where(DeviceRow.zone == zone)
            return [_device_info(r) for r in s.scalars(q)]

    def get_device(self, uid: str) -> DeviceInfo:
        with self.db.tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            return _device_info(row)

    def device_by_kid(self, kid: bytes) -> tuple[DeviceInfo, bytes] | None:
        """The device and its decrypted key, or None."""
        with self.db.tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.kid == kid)).first()
            if row is None:
                return None
            return _device_info(row), self.db.master.open_device_key(row.key_sealed, kid=kid)

    def registry_changes(self, held: Mapping[bytes, int]) -> tuple[list[DeviceInfo], set[bytes]]:
        """The devices whose ``updated_at`` is not the one in ``held`` (kid -> the
        ``updated_at`` the caller holds; new devices too), and the kids of all devices (a
        deleted device is the one missing), in one read: a scan of two columns, then the
        whole rows of what changed only. Every writer moves ``updated_at`` on, so no
        writer's clock matters here."""
        with self.db.tx() as s:
            kids: set[bytes] = set()
            stale: list[bytes] = []
            for raw, at in s.execute(select(DeviceRow.kid, DeviceRow.updated_at)):
                kid = bytes(raw)
                kids.add(kid)
                if held.get(kid) != at:
                    stale.append(kid)
            infos: list[DeviceInfo] = []
            for i in range(0, len(stale), 500):
                q = select(DeviceRow).where(DeviceRow.kid.in_(stale[i : i + 500]))
                infos.extend(_device_info(r) for r in s.scalars(q))
            return infos, kids

    def set_device_state(
        self, uid: str, action: str, *, actor: str, reason: str = ""
    ) -> DeviceInfo:
        """activate, deactivate, block or unblock; audited."""
        values: dict[str, bool] = {
            "activate": {"active": True},
            "deactivate": {"active": False},
            "block": {"blocked": True},
            "unblock": {"blocked": False},
        }.get(action, {})
        if not values:
            raise RegistryError(f"unknown device action {action!r}")
        with self.db.tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = max(self.db.now(), row.updated_at + 1)
            detail: dict[str, Any] = {"reason": reason} if reason else {}
            self.db.audit(s, actor, f"device.{action}", uid, **detail)
            s.flush()
            return _device_info(row)

    def set_device_address(self, uid: str, address: str | None, *, actor: str) -> DeviceInfo:
        """Set (or, with None or "", remove) a device's street address; audited. The ENC
        is sent it (an N4) by the ENC outbox."""
        address = clean_address(address)
        with self.db.tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            if row.address == address:
                return _device_info(row)  # nothing changes, nothing to send
            now = max(self.db.now(), row.updated_at + 1, (row.address_at or 0) + 1)
            row.address = address
            row.address_at = now
            row.updated_at = now
            self.db.audit(s, actor, "device.address", uid, address=address or "")
            s.flush()
            return _device_info(row)

    def addresses_to_send(self, *, limit: int = 50) -> list[AddressToSend]:
        """Devices whose address (or its removal) the ENC has not confirmed yet."""
        q = (
            select(DeviceRow.uid, DeviceRow.address, DeviceRow.address_at)
            .where(
                DeviceRow.address_at.is_not(None),
                (DeviceRow.address_sent_at.is_(None))
                | (DeviceRow.address_sent_at < DeviceRow.address_at),
            )
            .order_by(DeviceRow.address_at)
            .limit(limit)
        )
        with self.db.tx() as s:
            return [AddressToSend(uid, adr, int(at or 0)) for uid, adr, at in s.execute(q)]

    def address_sent(self, uid: str, version: int) -> None:
        """The ENC confirmed the address set at ``version`` (a later setting is still to
        send: the update changes only rows that were not set again since)."""
        with self.db.tx() as s:
            s.execute(
                update(DeviceRow)
                .where(DeviceRow.uid == uid, DeviceRow.address_at == version)
                .values(address_sent_at=version)
                .execution_options(synchronize_session=False)
            )

    def block_unless_blocked(self, uid: str, *, actor: str, reason: str) -> DeviceInfo | None:
        """Block a device and audit it, unless it is blocked already (None then): one
        conditional UPDATE, so that two replicas or two verifications deciding at once
        block it, and audit it, once."""
        with self.db.tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            res = s.execute(
                update(DeviceRow)
                .where(DeviceRow.uid == uid, DeviceRow.blocked.is_(False))
                .values(blocked=True, updated_at=max(self.db.now(), row.updated_at + 1))
                .execution_options(synchronize_session=False)
            )
            if not res.rowcount:  # type: ignore[attr-defined]
                return None
            self.db.audit(s, actor, "device.block", uid, reason=reason)
            s.flush()
            s.refresh(row)
            return _device_info(row)

    def delete_device(self, uid: str, *, actor: str) -> None:
        with self.db.tx() as s:
            row = s.scalars(select(DeviceRow).where(DeviceRow.uid == uid)).first()
            if row is None:
                raise DeviceNotFound(f"no device with UID {uid!r}")
            s.delete(row)
            self.db.audit(s, actor, "device.delete", uid, kid=row.kid.hex())


def _device_info(r: DeviceRow) -> DeviceInfo:
    return DeviceInfo(
        uid=r.uid,
        kid=bytes(r.kid),
        zone=r.zone,
        lat=r.lat,
        lon=r.lon,
        alg=r.alg,
        active=bool(r.active),
        blocked=bool(r.blocked),
        epoch=int(r.epoch or 0),
        confirmed_epoch=r.confirmed_epoch,
        confirmed_at=r.confirmed_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        address=r.address,
    )
