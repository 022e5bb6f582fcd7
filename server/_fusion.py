"""Fusion: poles that see one scene report it each, and the ENC gets one alert for it.

Pure: no database, no clock. The store narrows the candidates (alerted incidents, not
fused themselves, received within the time) and this module says which of them, if any,
a new dangerous report is the same scene as.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["EARTH_RADIUS_M", "FusionRule", "Sighting", "distance_m"]

EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG), metres."""


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class Sighting:
    """One report as fusion sees it."""

    incident_id: str
    """The incident."""
    lat: float
    """Reported latitude."""
    lon: float
    """Reported longitude."""
    received_at: int
    """When the server stored it, ms."""


@dataclass(frozen=True, slots=True)
class FusionRule:
    """Two reports are one scene when they arrived within ``within_ms`` of each other and
    were made within ``within_m`` of each other."""

    within_m: float
    """Distance, metres; 0 turns fusion off."""
    within_ms: int
    """Time between their arrivals, ms."""

    def __post_init__(self) -> None:
        if self.within_m < 0 or self.within_ms < 0:
            raise ValueError("fusion distance and time are >= 0")

    @property
    def enabled(self) -> bool:
        return self.within_m > 0

    def same_scene(self, a: Sighting, b: Sighting) -> bool:
        """True when ``a`` and ``b`` are reports of one scene (never a report and itself)."""
        if not self.enabled or a.incident_id == b.incident_id:
            return False
        if abs(a.received_at - b.received_at) > self.within_ms:
            return False
        # No two points are nearer than their difference in latitude: most candidates
        # of a busy minute are ruled out before the haversine.
        if math.radians(abs(a.lat - b.lat)) * EARTH_RADIUS_M > self.within_m * (1 + 1e-9):
            return False
        return distance_m(a.lat, a.lon, b.lat, b.lon) <= self.within_m

    def primary(self, report: Sighting, alerted: Iterable[Sighting]) -> str | None:
        """The incident ``report`` fuses into: the earliest alerted one of the same scene
        (ties by id, so every replica picks the same), or None."""
        same = [c for c in alerted if self.same_scene(report, c)]
        if not same:
            return None
        return min(same, key=lambda c: (c.received_at, c.incident_id)).incident_id
