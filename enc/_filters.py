"""What the list and the audit trail are filtered by: status, label, zone, a time range
and words to look for, read from a page's query string. Pure: the pages and the JSON
API apply it, the browser applies the same rules to alerts arriving live."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from ._store import Alert, AlertStatus

__all__ = ["AlertFilter", "parse_local_time"]

_MAX_TEXT = 80


def parse_local_time(text: str, zone: ZoneInfo) -> int | None:
    """``2026-12-02T19:03`` (a browser's datetime-local, in the ENC's zone) as ms; None
    for empty or unreadable text."""
    text = text.strip()
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=zone)
    return int(t.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which alerts to show; every part left empty matches everything."""

    statuses: frozenset[str] = field(default_factory=frozenset)
    """Status values (``new``, ``on_hold`` ...); ``open`` stands for every unhandled one."""
    labels: frozenset[str] = field(default_factory=frozenset)
    zone: str = ""
    since: int | None = None
    """Received at or after, ms."""
    until: int | None = None
    """Received before, ms."""
    text: str = ""
    """Words looked for in the incident id, device, label and operator (any case)."""
    errors: tuple[str, ...] = ()
    """What could not be read (said on the page)."""

    @classmethod
    def from_query(
        cls, q: Mapping[str, str] | object, zone: ZoneInfo, zones: Mapping[str, object]
    ) -> AlertFilter:
        get_list = getattr(q, "getlist", None)

        def many(name: str) -> list[str]:
            if get_list is not None:
                return [v for v in get_list(name) if v]
            value = q.get(name, "") if isinstance(q, Mapping) else ""
            return [value] if value else []

        def one(name: str) -> str:
            values = many(name)
            return values[0] if values else ""

        errors = []
        known = {s.value for s in AlertStatus} | {"open"}
        statuses = frozenset(v for v in many("status") if v in known)
        if len(statuses) != len(set(many("status"))):
            errors.append("an unknown status was left out")
        if "open" in statuses:
            statuses = (statuses - {"open"}) | {s.value for s in AlertStatus if not s.handled}
        labels = frozenset(v[:32] for v in many("label"))
        zone_name = one("zone")[:40]
        if zone_name and zone_name not in zones:
            errors.append(f"there is no zone {zone_name!r}")
            zone_name = ""
        since = parse_local_time(one("from")[:40], zone)
        until = parse_local_time(one("to")[:40], zone)
        for name, value, parsed in (("from", one("from"), since), ("to", one("to"), until)):
            if value and parsed is None:
                errors.append(f"the time {name!r} is not a date and time")
        if since is not None and until is not None and until <= since:
            errors.append("the time range ends before it starts")
        text = " ".join(one("q").split())[:_MAX_TEXT]
        return cls(
            statuses=statuses,
            labels=labels,
            zone=zone_name,
            since=since,
            until=until,
            text=text,
            errors=tuple(errors),
        )

    @property
    def active(self) -> bool:
        return bool(
            self.statuses
            or self.labels
            or self.zone
            or self.since is not None
            or self.until is not None
            or self.text
        )

    def matches(self, alert: Alert, zone_of_alert: str, *, label_text: str = "") -> bool:
        if self.statuses and alert.status.value not in self.statuses:
            return False
        if self.labels and alert.label not in self.labels:
            return False
        if self.zone and zone_of_alert != self.zone:
            return False
        if self.since is not None and alert.received_at < self.since:
            return False
        if self.until is not None and alert.received_at >= self.until:
            return False
        if self.text:
            hay = " ".join(
                (
                    alert.incident_id,
                    alert.device_uid,
                    alert.label,
                    label_text,
                    alert.taken_by or "",
                    alert.address or "",
                )
            ).lower()
            if not all(word in hay for word in self.text.lower().split()):
                return False
        return True
