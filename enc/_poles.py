"""Pole addresses (N4, docs/protocol.md "N4, a pole's street address"): the street
address the server's registry holds for each device, kept so that an alert can say where
it is in words. Without them (a server that sends no N4) an alert shows its position
only, and "no address registered".

An N4 changes the stored address only if its ``ver`` is higher than the one kept: a late
or repeated N4, or one from a second server replica, changes nothing. Each change is one
transaction with its audit entry (``pole_address``).
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

import protocol as p

from ._schema import PoleAddressRow
from ._store import AlertStore

__all__ = ["pole_address", "record_pole_address"]


def record_pole_address(store: AlertStore, ev: p.PoleAddressReceived, *, received_at: int) -> bool:
    """Keep a valid N4's address unless a newer one is kept; whether it changed."""
    try:
        return _record(store, ev, received_at=received_at)
    except IntegrityError:
        # Another N4 for a device seen for the first time was stored at the same moment
        # (two server replicas): now there is a row to compare versions with.
        return _record(store, ev, received_at=received_at)


def _record(store: AlertStore, ev: p.PoleAddressReceived, *, received_at: int) -> bool:
    with store.transaction(write=True) as s:
        row = s.get(PoleAddressRow, ev.device_uid)
        if row is not None and row.version >= ev.version:
            return False
        address = ev.address or None
        old = row.address if row is not None else None
        if row is None:
            row = PoleAddressRow(device_uid=ev.device_uid)
            s.add(row)
        row.address = address
        row.version = ev.version
        row.server_kid = ev.server_kid.hex()
        row.received_at = received_at
        if old != address:
            store.audit(
                s,
                at=received_at,
                incident_id=None,
                actor=f"server:{ev.server_kid.hex()}",
                action="pole_address",
                detail={"device": ev.device_uid, "address": address or ""},
            )
    return True


def pole_address(store: AlertStore, device_uid: str) -> str | None:
    """The device's street address, or None."""
    with store.transaction(write=False) as s:
        row = s.get(PoleAddressRow, device_uid)
        return row.address if row is not None else None
