"""What every started-and-stopped piece of hardware shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["Startable"]


class Startable(ABC):
    """``start()`` / ``stop()``, and ``with`` doing both."""

    @abstractmethod
    def start(self) -> None:
        """Open the device."""

    @abstractmethod
    def stop(self) -> None:
        """Close it; safe to call twice."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
