"""Monitoring windows: which zones are monitored now, and until when.

A zone is monitored while an operator's window or a scheduled occurrence covers now;
its announced end (B1's T_X) is the latest end among those that cover now.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass

from ._config import ScheduleConfig
from ._store import WindowInfo

__all__ = ["MonitoringPlan", "scheduled_until"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# An "always" schedule announces a rolling two-day window, renewed each local midnight,
# so devices never see a gap between two announcements.
_ALWAYS_SPAN = dt.timedelta(days=2)


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def scheduled_until(schedule: ScheduleConfig, now: int) -> int | None:
    """End (ms) of the schedule's occurrence that covers ``now``, or None."""
    if schedule.kind == "once":
        assert schedule.from_ is not None and schedule.until is not None
        return _ms(schedule.until) if _ms(schedule.from_) <= now < _ms(schedule.until) else None
    tz = zoneinfo.ZoneInfo(schedule.timezone)
    local = dt.datetime.fromtimestamp(now / 1000, tz)
    if schedule.kind == "always":
        midnight = dt.datetime.combine(local.date(), dt.time(0), tz)
        return _ms(midnight + _ALWAYS_SPAN)
    sh, sm = map(int, schedule.start.split(":"))
    eh, em = map(int, schedule.end.split(":"))
    best: int | None = None
    # An occurrence starting yesterday may still run (nights), so look one day back.
    for back in (1, 0):
        day = local.date() - dt.timedelta(days=back)
        if _DAYS[day.weekday()] not in schedule.days:
            continue
        start = dt.datetime.combine(day, dt.time(sh, sm), tz)
        end_day = day if (eh, em) > (sh, sm) else day + dt.timedelta(days=1)
        end = dt.datetime.combine(end_day, dt.time(eh, em), tz)
        if _ms(start) <= now < _ms(end):
            best = max(best or 0, _ms(end))
    return best


@dataclass(frozen=True, slots=True)
class MonitoringPlan:
    """Operator windows (from the database) and schedules (from the config)."""

    windows: tuple[WindowInfo, ...]
    """Operator windows that may be open (ends in the future)."""
    schedules: tuple[ScheduleConfig, ...]
    """Configured schedules."""

    @classmethod
    def of(
        cls, windows: Iterable[WindowInfo], schedules: Iterable[ScheduleConfig]
    ) -> MonitoringPlan:
        return cls(tuple(windows), tuple(schedules))

    def zones(self) -> set[str]:
        return {w.zone for w in self.windows} | {s.zone for s in self.schedules}

    def until(self, zone: str, now: int) -> int | None:
        """End of monitoring for the zone if it is monitored at ``now``, else None."""
        ends = [
            w.closes_at for w in self.windows if w.zone == zone and w.opens_at <= now < w.closes_at
        ]
        for s in self.schedules:
            if s.zone == zone:
                end = scheduled_until(s, now)
                if end is not None:
                    ends.append(end)
        return max(ends) if ends else None
