"""What the dashboard says to people: times in the ENC's time zone with its abbreviation,
audit entries and their details as sentences (``Taken over from olga``, not
``took_over_from olga``), labels as words."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from ._handling import RESOLUTIONS, Severity, alert_severity, escalated_now, label_words
from ._store import Alert

__all__ = ["Presentation"]

_ACTIONS = {
    "received": "Received",
    "acknowledged": "Taken (acknowledged)",
    "dispatched": "Help dispatched",
    "dismissed": "Dismissed as a false alarm",
    "reopened": "Reopened",
    "escalated": "Escalated",
    "photo_viewed": "Photo viewed",
    "cap_exported": "CAP exported",
    "eido_exported": "EIDO exported",
    "login": "Logged in",
    "login_failed": "Failed login",
    "logout": "Logged out",
    "operator_added": "Operator added",
    "operator_disabled": "Operator disabled",
    "operator_enabled": "Operator enabled",
    "password_changed": "Password changed",
    "purged": "Purged",
    "store_sealed": "Store sealed",
    "put_on_hold": "Put on hold",
    "resumed": "Resumed (off hold)",
    "closed": "Closed",
    "assigned": "Assigned",
    "released": "Released (back to new)",
    "note": "Note",
    "report_linked": "Another report fused in",
    "pole_address": "Pole address from the server",
}


def _duration(seconds: Any) -> str:
    try:
        s = int(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass(frozen=True, slots=True)
class Presentation:
    """How the dashboard words things for this ENC (its zone, its uncertainty line)."""

    zone: ZoneInfo
    """Times are shown in this zone, with its abbreviation."""
    uncertain_below: float
    """Scores below this are "uncertain"."""
    zones: Mapping[str, Sequence[float]] = field(default_factory=dict)
    """Named parts of the district (``dashboard.zones``), sorted by name."""

    def area(self, alert: Alert) -> str:
        """The zone of the district an alert is in ("" for none)."""
        c = alert.coords
        for name, (south, west, north, east) in self.zones.items():
            if south <= c.lat <= north and west <= c.lon <= east:
                return name
        return ""

    def time(self, ms: int | None) -> str:
        """``2026-12-02 19:03:12 CET``."""
        if ms is None:
            return ""
        t = datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.zone)
        return t.strftime("%Y-%m-%d %H:%M:%S ") + (t.tzname() or "")

    def severity(self, alert: Alert) -> Severity:
        return alert_severity(alert, uncertain_below=self.uncertain_below)

    def labels(self, alert: Alert) -> str:
        """Its label in words, and those of linked reports of another kind
        ("Person down + Fight")."""
        words = [label_words(alert.label)]
        for lb, _ in alert.linked_labels:
            if label_words(lb) not in words:
                words.append(label_words(lb))
        return " + ".join(words)

    def escalated(self, alert: Alert) -> bool:
        return escalated_now(alert)

    @staticmethod
    def label(label: str) -> str:
        return label_words(label)

    @staticmethod
    def action(action: str) -> str:
        return _ACTIONS.get(action, label_words(action))

    def detail(self, action: str, detail: dict[str, Any]) -> list[str]:
        """An audit entry's details, one short sentence each."""
        d = dict(detail)
        out: list[str] = []
        if action == "photo_viewed":
            full = d.pop("full", False)  # entries older than "view" have only this
            where = d.pop("view", "full" if full else "page")
            out.append(
                {
                    "full": "full size",
                    "wall": "on the wall display",
                    "cap": "by a CAP recipient, with its token",
                }.get(str(where), "on the alert page")
            )
        if "untaken_for_s" in d:
            out.append(f"nobody took it for {_duration(d.pop('untaken_for_s'))}")
        if "unfinished_for_s" in d:
            who = d.pop("taken_by", None)
            out.append(
                f"taken{f' by {who}' if who else ''} and not finished for "
                f"{_duration(d.pop('unfinished_for_s'))}"
            )
        words = {
            "unit": "Unit: {}",
            "comment": "Comment: {}",
            "reason": "Reason: {}",
            "took_over_from": "Taken over from {}",
            "label": "Label: {}",
            "device": "Device: {}",
            "role": "Role: {}",
            "peer": "From address {}",
            "count": "{} time(s)",
            "server": "Server {}",
            "username": "Operator: {}",
            "photos": "{} photo(s)",
            "alerts": "{} alert(s)",
            "to": "To {}",
            "from": "From {}",
            "note": "{}",
            "report": "Report {}",
            "joins": "It joins alert {}",
            "address": "Address: {}",
        }
        if action == "pole_address" and not d.get("address"):
            out.append("no address any more")
        if d.pop("other_kind", False):
            out.append("of another kind: the priority is raised")
        if d.pop("own_alert", False):
            out.append("of another kind on a handled alert: stands as an alert of its own")
        why = d.pop("why", None)
        if why:
            out.append(
                {"unknown": "(that alert is not here)", "handled": "(that alert was handled)"}.get(
                    str(why), str(why)
                )
            )
        if "score" in d:
            score = d.pop("score")
            out.append(
                f"confidence {score:.0%}" if isinstance(score, float) else f"confidence {score}"
            )
        if isinstance(d.get("since"), int):
            out.append(f"since {self.time(d.pop('since'))}")
        for key, value in d.items():
            if value is None or value == "":
                continue
            if key == "label":
                value = label_words(str(value))
            if key == "resolution":
                out.append(f"Resolution: {RESOLUTIONS.get(str(value), str(value))}")
                continue
            if isinstance(value, bool):
                out.append(f"{key.replace('_', ' ')}: {'yes' if value else 'no'}")
            elif isinstance(value, list):
                out.append(f"{key.replace('_', ' ')}: {len(value)}")
            elif key in words:
                out.append(words[key].format(value))
            elif key.endswith("_s"):
                out.append(f"{key[:-2].replace('_', ' ')}: {_duration(value)}")
            else:
                out.append(f"{key.replace('_', ' ')}: {value}")
        return out
