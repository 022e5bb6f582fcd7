"""The ``none`` GNSS driver: no receiver on this pole (reports carry the registered
position)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from ._gnss_base import Fix, GnssReceiver, GnssSection, GnssStatus

__all__ = ["NoReceiver", "NoReceiverConfig"]


class NoReceiverConfig(GnssSection):
    """No receiver on this pole: reports always carry the registered position."""

    driver: Literal["none"]


class NoReceiver(GnssReceiver):
    """The pole has no receiver."""

    driver: ClassVar[str] = "none"

    @classmethod
    def from_config(cls, config: Any, *, clock: Callable[[], float]) -> NoReceiver:
        if not isinstance(config, NoReceiverConfig):
            raise TypeError(f"the none driver takes a NoReceiverConfig, not {type(config)}")
        return cls()

    @property
    def description(self) -> str:
        return "no GNSS receiver"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def fix(self) -> Fix | None:
        return None

    def clock_offset(self) -> float | None:
        return None

    def status(self) -> GnssStatus:
        return GnssStatus(
            connected=False,
            devices=0,
            mode=0,
            satellites_used=None,
            satellites_visible=None,
            error="no receiver configured",
        )
