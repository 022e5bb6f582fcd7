"""Monitoring windows, what was announced to each zone, and each device's broadcast
epoch: what the broadcast scheduler of every replica shares, each change a
compare-and-set so that one replica sends a zone's B1s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError

from ._database import Database
from ._errors import RegistryError
from ._schema import DeviceRow, WindowRow, ZoneBroadcastRow

__all__ = ["WindowInfo", "ZoneStore"]


@dataclass(frozen=True, slots=True)
class WindowInfo:
    """An operator's monitoring window."""

    id: int
    """Row id."""
    zone: str
    """Zone it covers."""
    opens_at: int
    """Start, ms."""
    closes_at: int
    """End, ms (moved to the closing time when closed early)."""
    opened_by: str
    """Who opened it."""
    closed_by: str | None
    """Who closed it early, if anyone."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "zone": self.zone,
            "opens_at": self.opens_at,
            "closes_at": self.closes_at,
            "opened_by": self.opened_by,
            "closed_by": self.closed_by,
        }


_DEVICES = cast(Table, DeviceRow.__table__)

_RECORD_B1 = (
    _DEVICES.update()
    .where(_DEVICES.c.kid == bindparam("b_kid"), _DEVICES.c.epoch == bindparam("b_prev"))
    .values(epoch=bindparam("b_ep"), last_b1_ts=bindparam("b_ts"), last_b1_hash=bindparam("b_hash"))
)
"""A B1 recorded: one statement, built once and run per device on the connection (a
zone's window is thousands of B1s, and an ORM update built for each cost more than the
database's own work)."""


class ZoneStore:
    """Windows, zone announcements and broadcast epochs. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def epochs(self, kids: list[bytes]) -> dict[bytes, int]:
        """Last broadcast epoch of each device, as stored (any replica)."""
        out: dict[bytes, int] = {}
        with self.db.tx() as s:
            for i in range(0, len(kids), 500):
                out.update(
                    {
                        bytes(k): int(e)
                        for k, e in s.execute(
                            select(DeviceRow.kid, DeviceRow.epoch).where(
                                DeviceRow.kid.in_(kids[i : i + 500])
                            )
                        )
                    }
                )
        return out

    def record_broadcasts(self, sent: list[tuple[bytes, int, int, bytes]]) -> list[bool]:
        """Persist B1s (kid, ep, T_S, H(B1)) before they are sent: each device's epoch
        moves from ep-1 to ep. False where the epoch moved meanwhile (another replica
        announced): seal again with a fresh epoch."""
        out = []
        with self.db.tx() as s:
            conn = s.connection()
            for kid, ep, ts, b1_hash in sent:
                res = conn.execute(
                    _RECORD_B1,
                    {"b_kid": kid, "b_prev": ep - 1, "b_ep": ep, "b_ts": ts, "b_hash": b1_hash},
                )
                out.append(bool(res.rowcount))
        return out

    def last_broadcast(self, kid: bytes) -> tuple[int, int, bytes] | None:
        """(epoch, T_S, H(B1)) of the last B1 sent to the device by any replica, while
        it is unconfirmed (a confirmed one is not confirmed twice: a replayed B2)."""
        return self.last_broadcasts([kid])[0]

    def last_broadcasts(self, kids: Sequence[bytes]) -> list[tuple[int, int, bytes] | None]:
        """``last_broadcast`` of many devices in one read (the B2s of a zone whose
        window just opened arrive together)."""
        found: dict[bytes, tuple[int, int, bytes] | None] = {}
        with self.db.tx() as s:
            for i in range(0, len(kids), 500):
                for kid, ep, ts, b1_hash, confirmed in s.execute(
                    select(
                        DeviceRow.kid,
                        DeviceRow.epoch,
                        DeviceRow.last_b1_ts,
                        DeviceRow.last_b1_hash,
                        DeviceRow.confirmed_epoch,
                    ).where(DeviceRow.kid.in_(set(kids[i : i + 500])))
                ):
                    unconfirmed = confirmed is None or confirmed < ep
                    if ts is not None and b1_hash is not None and unconfirmed:
                        found[bytes(kid)] = (int(ep), int(ts), bytes(b1_hash))
        return [found.get(kid) for kid in kids]

    def confirm_broadcast(self, kid: bytes, *, ep: int) -> None:
        self.confirm_broadcasts([(kid, ep)])

    def confirm_broadcasts(self, confirmed: Sequence[tuple[bytes, int]]) -> list[None]:
        """B2s accepted, (kid, epoch) each, in one transaction: when a zone's window
        opens every device of it answers at once, and one commit each would queue them
        (and the reports behind them) on the disk."""
        now = self.db.now()
        if not confirmed:
            return []
        t = _DEVICES.c
        stmt = (
            update(_DEVICES)
            .where(t.kid == bindparam("b_kid"))
            .values(confirmed_epoch=bindparam("b_ep"), confirmed_at=now)
        )
        with self.db.tx() as s:
            s.execute(stmt, [{"b_kid": kid, "b_ep": ep} for kid, ep in confirmed])
        return [None] * len(confirmed)

    def open_window(self, zone: str, *, until: int, actor: str) -> WindowInfo:
        now = self.db.now()
        if not 1 <= len(zone) <= 64:
            raise RegistryError("a zone name is 1 to 64 characters")
        if until <= now:
            raise RegistryError("the window's end is in the past")
        with self.db.tx() as s:
            row = WindowRow(
                zone=zone, opens_at=now, closes_at=until, opened_by=actor, updated_at=now
            )
            s.add(row)
            s.flush()
            self.db.audit(s, actor, "window.open", zone, until=until, window=row.id)
            return _window_info(row)

    def close_window(self, zone: str, *, actor: str) -> int:
        """End every open operator window of the zone now; returns how many."""
        now = self.db.now()
        with self.db.tx() as s:
            res = s.execute(
                update(WindowRow)
                .where(WindowRow.zone == zone, WindowRow.closes_at > now)
                .values(closes_at=now, closed_by=actor, updated_at=now)
            )
            n = int(res.rowcount)  # type: ignore[attr-defined]
            self.db.audit(s, actor, "window.close", zone, closed=n)
            return n

    def open_windows(self, now: int | None = None) -> list[WindowInfo]:
        now = self.db.now() if now is None else now
        with self.db.tx() as s:
            q = (
                select(WindowRow)
                .where(WindowRow.opens_at <= now, WindowRow.closes_at > now)
                .order_by(WindowRow.id)
            )
            return [_window_info(r) for r in s.scalars(q)]

    def list_windows(self, *, limit: int = 100) -> list[WindowInfo]:
        with self.db.tx() as s:
            q = select(WindowRow).order_by(WindowRow.id.desc()).limit(limit)
            return [_window_info(r) for r in s.scalars(q)]

    def windows_revision(self) -> tuple[int, int]:
        """Changes to the windows table show up here (count, last change)."""
        with self.db.tx() as s:
            n, last = s.execute(
                select(func.count(WindowRow.id), func.max(WindowRow.updated_at))
            ).one()
            return int(n), int(last or 0)

    def zone_announcements(self) -> dict[str, int | None]:
        with self.db.tx() as s:
            return {
                z: u
                for z, u in s.execute(
                    select(ZoneBroadcastRow.zone, ZoneBroadcastRow.announced_until)
                )
            }

    def claim_zone_announcement(self, zone: str, *, old: int | None, new: int | None) -> bool:
        """Compare-and-set what was announced to a zone; True for the one replica that
        moved it from ``old`` to ``new`` (and must now send the B1s)."""
        now = self.db.now()
        with self.db.tx() as s:
            exists = s.scalar(
                select(func.count())
                .select_from(ZoneBroadcastRow)
                .where(ZoneBroadcastRow.zone == zone)
            )
            if not exists:
                if old is not None:
                    return False
                try:
                    with s.begin_nested():
                        s.add(ZoneBroadcastRow(zone=zone, announced_until=new, announced_at=now))
                    return True
                except IntegrityError:
                    return False
            cond = (
                ZoneBroadcastRow.announced_until.is_(None)
                if old is None
                else ZoneBroadcastRow.announced_until == old
            )
            res = s.execute(
                update(ZoneBroadcastRow)
                .where(ZoneBroadcastRow.zone == zone, cond)
                .values(announced_until=new, announced_at=now)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]


def _window_info(r: WindowRow) -> WindowInfo:
    return WindowInfo(
        id=r.id,
        zone=r.zone,
        opens_at=r.opens_at,
        closes_at=r.closes_at,
        opened_by=r.opened_by,
        closed_by=r.closed_by,
    )
