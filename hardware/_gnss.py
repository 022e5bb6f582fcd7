"""GNSS: where the pole is, and what time it is.

One interface (``GnssReceiver``: ``fix()``, ``clock_offset()``, ``status()``), drivers
keyed by ``[gnss] driver``, each in its own module with its configuration model beside it:

- ``gpsd`` (``_gnss_gpsd``): the GPS hat through gpsd.
- ``none`` (``_gnss_none``): no receiver on this pole.

A new driver is a module with a ``GnssSection`` model (``driver: Literal[...]``) and a
``GnssReceiver`` subclass (``driver``, ``from_config``), listed in ``GNSS_DRIVERS`` and in
``GnssConfig``. The CI fake is the real gpsd fed by ``gpsfake`` (``_gpsfake``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from ._gnss_base import Fix, FixedPosition, FixMode, GnssReceiver, GnssStatus, coords
from ._gnss_gpsd import GpsdConfig, GpsdReceiver
from ._gnss_none import NoReceiver, NoReceiverConfig
from ._gpsfake import SENTENCES_PER_EPOCH, GnssError, GpsFake, nmea_log

__all__ = [
    "GNSS_DRIVERS",
    "SENTENCES_PER_EPOCH",
    "Fix",
    "FixMode",
    "FixedPosition",
    "GnssConfig",
    "GnssError",
    "GnssReceiver",
    "GnssStatus",
    "GpsFake",
    "GpsdConfig",
    "GpsdReceiver",
    "NoReceiver",
    "NoReceiverConfig",
    "coords",
    "nmea_log",
    "open_gnss",
    "parse_gnss_config",
]

GNSS_DRIVERS: dict[str, type[GnssReceiver]] = {
    driver.driver: driver for driver in (GpsdReceiver, NoReceiver)
}
"""``[gnss] driver`` -> the receiver class."""

GnssConfig = Annotated[GpsdConfig | NoReceiverConfig, Field(discriminator="driver")]
"""The ``[gnss]`` section: ``driver`` picks the model."""

_ADAPTER: TypeAdapter[GpsdConfig | NoReceiverConfig] = TypeAdapter(GnssConfig)


def parse_gnss_config(data: Any) -> GpsdConfig | NoReceiverConfig:
    """Validate a ``[gnss]`` table."""
    return _ADAPTER.validate_python(data)


def open_gnss(
    config: GpsdConfig | NoReceiverConfig, *, clock: Callable[[], float] = time.monotonic
) -> GnssReceiver:
    """The receiver the configuration names, not started yet. ``clock`` (monotonic
    seconds) measures the age of fixes; tests may drive it."""
    return GNSS_DRIVERS[config.driver].from_config(config, clock=clock)
