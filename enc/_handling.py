"""What operators do with an alert: acknowledge, dispatch, dismiss, reopen; and the
escalation of alerts nobody takes. Transitions are a table; each one is written with
its audit entry in one transaction, and only if the alert is still in the state the
operator saw (two operators clicking at once: one wins, the other is told)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from ._errors import ActionRefused, NotFound
from ._schema import AlertRow
from ._store import Alert, AlertStatus, AlertStore

__all__ = ["ALERT_TRANSITIONS", "AlertAction", "Role", "apply_action", "escalate_due"]


class Role(enum.StrEnum):
    """What an operator may do."""

    OPERATOR = "operator"
    """Takes alerts and handles the ones they took (or nobody took)."""
    SUPERVISOR = "supervisor"
    """Also takes over alerts another operator took, reopens handled ones, and sees the
    whole audit trail."""


class AlertAction(enum.StrEnum):
    ACKNOWLEDGE = "acknowledge"
    DISPATCH = "dispatch"
    DISMISS = "dismiss"
    REOPEN = "reopen"


_S = AlertStatus
ALERT_TRANSITIONS: dict[tuple[AlertAction, AlertStatus], AlertStatus] = {
    (AlertAction.ACKNOWLEDGE, _S.NEW): _S.ACKNOWLEDGED,
    (AlertAction.DISPATCH, _S.NEW): _S.DISPATCHED,
    (AlertAction.DISPATCH, _S.ACKNOWLEDGED): _S.DISPATCHED,
    (AlertAction.DISMISS, _S.NEW): _S.DISMISSED,
    (AlertAction.DISMISS, _S.ACKNOWLEDGED): _S.DISMISSED,
    (AlertAction.REOPEN, _S.ACKNOWLEDGED): _S.NEW,
    (AlertAction.REOPEN, _S.DISPATCHED): _S.NEW,
    (AlertAction.REOPEN, _S.DISMISSED): _S.NEW,
}
"""(action, current status) -> new status; any other pair is refused."""

_PAST = {AlertAction.ACKNOWLEDGE: "acknowledged", AlertAction.DISPATCH: "dispatched",
         AlertAction.DISMISS: "dismissed", AlertAction.REOPEN: "reopened"}
_MAX_TEXT = {"unit": 80, "comment": 500, "reason": 500}


@dataclass(frozen=True, slots=True)
class _Particulars:
    unit: str
    comment: str
    reason: str

    def for_action(self, action: AlertAction) -> dict[str, Any]:
        if action is AlertAction.DISPATCH:
            if not self.unit:
                raise ActionRefused("say which unit or service is dispatched")
            return {"unit": self.unit, "comment": self.comment}
        if action is AlertAction.DISMISS:
            if not self.reason:
                raise ActionRefused("give the reason this is a false alarm")
            return {"reason": self.reason}
        if action is AlertAction.REOPEN:
            if not self.reason:
                raise ActionRefused("give the reason for reopening")
            return {"reason": self.reason}
        return {"comment": self.comment} if self.comment else {}


def _clean(name: str, value: str | None) -> str:
    text = " ".join((value or "").split())  # one line: the audit trail is read in a table
    if len(text) > _MAX_TEXT[name]:
        raise ActionRefused(f"{name} is longer than {_MAX_TEXT[name]} characters")
    return text


def apply_action(store: AlertStore, incident_id: str, action: AlertAction | str, *,
                 operator: str, role: Role | str, now: int, unit: str | None = None,
                 comment: str | None = None, reason: str | None = None) -> Alert:
    """Do ``action`` as ``operator``; raise ``ActionRefused`` (with a message for the
    operator) or ``NotFound``."""
    try:
        action = AlertAction(action)
        role = Role(role)
    except ValueError:
        raise ActionRefused("no such action") from None
    particulars = _Particulars(_clean("unit", unit), _clean("comment", comment),
                               _clean("reason", reason))
    detail = particulars.for_action(action)
    with store.transaction(write=True) as s:
        row = s.get(AlertRow, incident_id)
        if row is None:
            raise NotFound(f"no alert {incident_id!r}")
        current = AlertStatus(row.status)
        new = ALERT_TRANSITIONS.get((action, current))
        if new is None:
            raise ActionRefused(f"cannot {action.value} an alert that is {current.value}")
        taken_by_other = row.taken_by is not None and row.taken_by != operator
        if role is not Role.SUPERVISOR:
            if current is AlertStatus.ACKNOWLEDGED and taken_by_other:
                raise ActionRefused(f"{row.taken_by} has taken this alert; ask a supervisor")
            if action is AlertAction.REOPEN and current.handled:
                raise ActionRefused("only a supervisor reopens a handled alert")
        if taken_by_other and current is AlertStatus.ACKNOWLEDGED:
            detail["took_over_from"] = row.taken_by
        taken_by = None if new is AlertStatus.NEW else operator
        # Only if nobody changed it since we read it (the row is not locked on SQLite).
        done = cast(CursorResult[Any], s.execute(
            update(AlertRow)
            .where(AlertRow.incident_id == incident_id, AlertRow.status == current.value,
                   AlertRow.status_at == row.status_at)
            .values(status=new.value, status_at=now, taken_by=taken_by,
                    escalated_at=None if new is AlertStatus.NEW else row.escalated_at)
            .execution_options(synchronize_session=False)
        )).rowcount
        if done != 1:
            raise ActionRefused("someone else changed this alert a moment ago; look again")
        store.audit(s, at=now, incident_id=incident_id, actor=operator,
                    action=_PAST[action], detail=detail)
        s.flush()
        s.expire_all()
        fresh = s.get(AlertRow, incident_id)
        assert fresh is not None
        return store.view(fresh)


def escalate_due(store: AlertStore, *, now: int, after_ms: int) -> list[str]:
    """Mark alerts that have been untaken for ``after_ms`` as escalated (once each, with
    an audit entry); return their incident ids."""
    with store.transaction(write=True) as s:
        due = list(s.scalars(
            select(AlertRow.incident_id)
            .where(AlertRow.status == AlertStatus.NEW.value,
                   AlertRow.escalated_at.is_(None),
                   AlertRow.status_at <= now - after_ms)
            .order_by(AlertRow.received_at)
        ))
        escalated = []
        for incident_id in due:
            # Guarded, so that two ENC processes sharing the store escalate it once.
            done = cast(CursorResult[Any], s.execute(
                update(AlertRow)
                .where(AlertRow.incident_id == incident_id, AlertRow.escalated_at.is_(None),
                       AlertRow.status == AlertStatus.NEW.value)
                .values(escalated_at=now).execution_options(synchronize_session=False)
            )).rowcount
            if done == 1:
                store.audit(s, at=now, incident_id=incident_id, actor="system",
                            action="escalated", detail={"untaken_for_s": after_ms // 1000})
                escalated.append(incident_id)
        return escalated
