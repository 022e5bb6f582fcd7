"""What the server's decision on an incident came to (one type for the verification, the
store and the metrics)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Outcome"]


class Outcome(StrEnum):
    """The decision on one incident; the value is what the database and the metrics say."""

    DANGEROUS = "dangerous"
    """An alert for the ENC, queued with the decision."""
    FUSED = "fused"
    """Dangerous, but the same scene as an incident alerted already: no alert of its own
    (stored as "dangerous" with ``fused_into``)."""
    DISMISSED = "dismissed"
    """Not dangerous: no alert."""

    @property
    def alerts(self) -> bool:
        """True when the decision queued an alert of its own."""
        return self is Outcome.DANGEROUS
