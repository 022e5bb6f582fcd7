"""The audit log: who changed what, when."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ._database import Database
from ._schema import AuditEntry

__all__ = ["AuditLog", "AuditRecord"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit log entry."""

    at: int
    """When, ms."""
    actor: str
    """Who."""
    action: str
    """What ("device.add", "window.open", ...)."""
    subject: str
    """On what (a UID, a zone)."""
    detail: dict[str, Any]
    """Parameters of the change."""

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "detail": self.detail,
        }


class AuditLog:
    """The audit log (entries are written by the change they record, in its transaction)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def audit_log(self, *, limit: int = 100, subject: str | None = None) -> list[AuditRecord]:
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if subject is not None:
            q = q.where(AuditEntry.subject == subject)
        with self.db.tx() as s:
            return [
                AuditRecord(r.at, r.actor, r.action, r.subject, json.loads(r.detail or "{}"))
                for r in s.scalars(q)
            ]

    def audit(self, actor: str, action: str, subject: str, **detail: Any) -> None:
        with self.db.tx() as s:
            self.db.audit(s, actor, action, subject, **detail)
