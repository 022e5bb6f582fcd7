"""GNSS: the interface every receiver driver implements, and what it reports.

``GnssReceiver`` (``fix()``, ``clock_offset()``, ``status()``) is the interface; each
driver lives in its own module with its configuration model beside it (``_gnss_gpsd``,
``_gnss_none``) and is chosen by ``[gnss] driver`` in ``_gnss``. ``coords(fix, registered)``
gives the ``protocol.Coords`` for a report: the fix (``src "gps"``) or the pole's
registered position (``src "fixed"``).

A receiver that is absent, silent or without fix is not an error: ``fix()`` is ``None``.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from protocol import Coords

from ._lifecycle import Startable

__all__ = [
    "Fix",
    "FixMode",
    "FixedPosition",
    "GnssReceiver",
    "GnssSection",
    "GnssStatus",
    "coords",
]


# -- what a receiver reports ----------------------------------------------------------


class FixMode(IntEnum):
    """gpsd's fix modes that give a position."""

    TWO_D = 2
    THREE_D = 3


@dataclass(frozen=True, slots=True)
class Fix:
    """A position from the receiver, recent enough to use."""

    lat: float
    """Latitude in degrees, -90..90."""
    lon: float
    """Longitude in degrees, -180..180."""
    alt: float | None
    """Altitude above mean sea level in metres (3D fixes only)."""
    acc: float | None
    """Horizontal accuracy in metres (gpsd's 95 % estimate), or None if gpsd has none."""
    mode: FixMode
    """2D or 3D."""
    satellites_used: int | None
    """Satellites in the solution, from gpsd's latest sky view; None before it came."""
    gnss_time: dt.datetime | None
    """UTC time of the fix according to the satellites."""
    age: float
    """Seconds since gpsd reported the fix (when ``fix()`` was called)."""

    def __post_init__(self) -> None:
        if not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0):
            raise ValueError(f"position out of range: {self.lat}, {self.lon}")
        if self.acc is not None and not self.acc >= 0:
            raise ValueError(f"accuracy must be 0 or more, not {self.acc}")
        if self.age < 0:
            raise ValueError(f"age must not be negative, not {self.age}")

    def to_coords(self) -> Coords:
        """The fix as report coordinates (``src "gps"``)."""
        return Coords(lat=self.lat, lon=self.lon, alt=self.alt, acc=self.acc, src="gps")


@dataclass(frozen=True, slots=True)
class GnssStatus:
    """What the receiver is doing, for ``citywatch edge status`` and STATUS lines."""

    connected: bool
    """The driver talks to gpsd."""
    devices: int
    """Receivers gpsd has open."""
    mode: int
    """Mode of the latest report: 0 unknown, 1 no fix, 2 2D, 3 3D."""
    satellites_used: int | None
    """Satellites in the solution, per the latest sky view."""
    satellites_visible: int | None
    """Satellites in view, per the latest sky view."""
    error: str | None
    """Why the driver is not connected, if it is not."""

    def describe(self) -> str:
        """One line a person can read."""
        if not self.connected:
            return f"GNSS: gpsd unreachable ({self.error or 'connecting'})"
        if self.devices == 0:
            return "GNSS: gpsd has no receiver"
        fix = {0: "no data yet", 1: "no fix", 2: "2D fix", 3: "3D fix"}.get(self.mode, "?")
        sats = ""
        if self.satellites_visible is not None:
            sats = f", {self.satellites_used or 0}/{self.satellites_visible} satellites"
        return f"GNSS: {fix}{sats}"


# -- configuration -------------------------------------------------------------------


class GnssSection(BaseModel):
    """Base of the ``[gnss]`` models: strict, unknown keys refused, fields documented."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )


class FixedPosition(GnssSection):
    """The pole's registered position: what reports carry when there is no usable fix."""

    lat: float = Field(ge=-90, le=90)
    """Latitude in degrees."""
    lon: float = Field(ge=-180, le=180)
    """Longitude in degrees."""
    alt: float | None = None
    """Altitude above mean sea level in metres, if surveyed."""
    acc: float | None = Field(None, ge=0)
    """Horizontal accuracy of the survey in metres, if known."""

    def to_coords(self) -> Coords:
        """The registered position as report coordinates (``src "fixed"``)."""
        return Coords(lat=self.lat, lon=self.lon, alt=self.alt, acc=self.acc, src="fixed")


# -- the interface -------------------------------------------------------------------


class GnssReceiver(Startable):
    """A source of position fixes and of satellite time."""

    driver: ClassVar[str]
    """The ``[gnss] driver`` value that picks this receiver."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any, *, clock: Callable[[], float]) -> GnssReceiver:
        """The receiver for its configuration model, not started yet. ``clock``
        (monotonic seconds) measures the age of fixes; tests may drive it."""

    @property
    @abstractmethod
    def description(self) -> str:
        """What the receiver is, for logs."""

    @abstractmethod
    def start(self) -> None:
        """Begin listening; never fails because the receiver is absent."""

    @abstractmethod
    def stop(self) -> None:
        """Stop listening; safe to call twice."""

    @abstractmethod
    def fix(self) -> Fix | None:
        """The current fix if it is good and recent enough to use, else None."""

    @abstractmethod
    def clock_offset(self) -> float | None:
        """GNSS time minus this machine's clock, in seconds, from a recent fix: positive
        means the system clock is behind. None without a recent fix. It is measured when
        gpsd's report arrives, so it includes the report's delay (well under a second):
        good for telling a wrong clock, not for setting one precisely."""

    @abstractmethod
    def status(self) -> GnssStatus:
        """What the receiver is doing."""


def coords(fix: Fix | None, registered: FixedPosition) -> Coords:
    """What a report says about where the pole is: the fix, else the registered position."""
    return fix.to_coords() if fix is not None else registered.to_coords()
