"""What operators do with an alert: acknowledge, dispatch, dismiss, reopen, put on hold
and resume, close with a resolution, assign to a colleague and release, note; how urgent
it is (severity from label and score, escalation); and the escalation of alerts nobody
takes or nobody finishes. Transitions are a table; each one is written with its audit
entry in one transaction, and only if the alert is still in the state the operator saw
(two operators clicking at once: one wins, the other is told)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update

from ._errors import ActionRefused, NotFound
from ._schema import AlertRow, OperatorRow
from ._store import Alert, AlertStatus, AlertStore

__all__ = [
    "ALERT_TRANSITIONS",
    "LABEL_KIND",
    "RESOLUTIONS",
    "AlertAction",
    "Role",
    "Severity",
    "alert_severity",
    "apply_action",
    "escalate_due",
    "escalated_now",
    "label_words",
    "priority_key",
    "severity",
]


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
    HOLD = "hold"
    RESUME = "resume"
    CLOSE = "close"
    ASSIGN = "assign"
    RELEASE = "release"
    NOTE = "note"


class Severity(enum.IntEnum):
    """How urgent an alert is; the lower, the more urgent (the list is sorted by it)."""

    FIGHT = 1
    """People are hurting each other: police, now."""
    PERSON_DOWN = 2
    """Someone fell or lies on the ground: an ambulance."""
    UNCERTAIN = 3
    """A score below the ENC's ``uncertain_below``, or a label the ENC does not know."""

    @property
    def words(self) -> str:
        return {1: "Fight", 2: "Person down", 3: "Uncertain"}[self.value]


_LABEL_SEVERITY = {
    "fight": Severity.FIGHT,
    "person_down": Severity.PERSON_DOWN,
    "fall": Severity.PERSON_DOWN,
}
LABEL_KIND = _LABEL_SEVERITY
"""The kind of each known label: a fall and a person down are one kind, a fight another."""
_LABEL_WORDS = {
    "fight": "Fight",
    "person_down": "Person down",
    "fall": "Fall",
    "no_danger": "No danger seen",
    "no_person": "No person seen",
}


def severity(label: str, score: float, *, uncertain_below: float) -> Severity:
    """Fight > person down > uncertain; a low score makes any label uncertain."""
    if score < uncertain_below:
        return Severity.UNCERTAIN
    return _LABEL_SEVERITY.get(label, Severity.UNCERTAIN)


def label_words(label: str) -> str:
    """A label as operators read it: "Person down", not ``person_down``."""
    words = _LABEL_WORDS.get(label)
    if words is None:
        text = " ".join(label.replace("_", " ").replace("-", " ").split())
        words = text[:1].upper() + text[1:] if text else "Unknown"
    return words


def alert_severity(alert: Alert, *, uncertain_below: float) -> Severity:
    """The alert's own severity, raised by its linked reports of another kind
    (``enc._linked``)."""
    return min(
        [
            severity(alert.label, alert.score, uncertain_below=uncertain_below),
            *(severity(lb, sc, uncertain_below=uncertain_below) for lb, sc in alert.linked_labels),
        ]
    )


def escalated_now(alert: Alert) -> bool:
    """Escalated in its present state (taking an escalated alert ends that escalation;
    a taken alert left unfinished is escalated anew)."""
    return (
        alert.escalated_at is not None
        and not alert.status.handled
        and alert.escalated_at >= alert.status_at
    )


def priority_key(alert: Alert, *, uncertain_below: float) -> tuple[int, int, int, int]:
    """The list's order: unhandled first; among them escalated first, then by severity,
    then newest first; handled ones newest first."""
    if alert.status.handled:
        return (1, 0, 0, -alert.received_at)
    return (
        0,
        0 if escalated_now(alert) else 1,
        int(alert_severity(alert, uncertain_below=uncertain_below)),
        -alert.received_at,
    )


_S = AlertStatus
ALERT_TRANSITIONS: dict[tuple[AlertAction, AlertStatus], AlertStatus] = {
    (AlertAction.ACKNOWLEDGE, _S.NEW): _S.ACKNOWLEDGED,
    **{(AlertAction.DISPATCH, s): _S.DISPATCHED for s in (_S.NEW, _S.ACKNOWLEDGED, _S.ON_HOLD)},
    **{(AlertAction.DISMISS, s): _S.DISMISSED for s in (_S.NEW, _S.ACKNOWLEDGED, _S.ON_HOLD)},
    **{
        (AlertAction.REOPEN, s): _S.NEW
        for s in (_S.ACKNOWLEDGED, _S.ON_HOLD, _S.DISPATCHED, _S.DISMISSED, _S.CLOSED)
    },
    (AlertAction.HOLD, _S.NEW): _S.ON_HOLD,
    (AlertAction.HOLD, _S.ACKNOWLEDGED): _S.ON_HOLD,
    (AlertAction.RESUME, _S.ON_HOLD): _S.ACKNOWLEDGED,
    **{
        (AlertAction.CLOSE, s): _S.CLOSED
        for s in (_S.ACKNOWLEDGED, _S.ON_HOLD, _S.DISPATCHED, _S.DISMISSED)
    },
    (AlertAction.ASSIGN, _S.NEW): _S.ACKNOWLEDGED,
    (AlertAction.ASSIGN, _S.ACKNOWLEDGED): _S.ACKNOWLEDGED,
    (AlertAction.ASSIGN, _S.ON_HOLD): _S.ON_HOLD,
    (AlertAction.RELEASE, _S.ACKNOWLEDGED): _S.NEW,
    (AlertAction.RELEASE, _S.ON_HOLD): _S.NEW,
}
"""(action, current status) -> new status; any other pair is refused. A note
(``AlertAction.NOTE``) changes no status and may be written in any."""

RESOLUTIONS: dict[str, str] = {
    "help_arrived": "Help arrived and took over",
    "resolved_on_site": "Resolved on site, no help needed",
    "false_alarm": "False alarm",
    "duplicate": "Duplicate of another alert",
    "nobody_found": "Nobody found at the place",
    "other": "Other (see the comment)",
}
"""Resolution codes a closed alert carries, with their words."""

_PAST = {
    AlertAction.ACKNOWLEDGE: "acknowledged",
    AlertAction.DISPATCH: "dispatched",
    AlertAction.DISMISS: "dismissed",
    AlertAction.REOPEN: "reopened",
    AlertAction.HOLD: "put_on_hold",
    AlertAction.RESUME: "resumed",
    AlertAction.CLOSE: "closed",
    AlertAction.ASSIGN: "assigned",
    AlertAction.RELEASE: "released",
    AlertAction.NOTE: "note",
}
_VERB = {
    AlertAction.ACKNOWLEDGE: "acknowledge (take)",
    AlertAction.DISPATCH: "dispatch",
    AlertAction.DISMISS: "dismiss",
    AlertAction.REOPEN: "reopen",
    AlertAction.HOLD: "put on hold",
    AlertAction.RESUME: "resume",
    AlertAction.CLOSE: "close",
    AlertAction.ASSIGN: "assign",
    AlertAction.RELEASE: "release",
    AlertAction.NOTE: "add a note to",
}
_WORDS = {
    _S.NEW: "new (nobody has taken it)",
    _S.ACKNOWLEDGED: "taken",
    _S.DISPATCHED: "dispatched",
    _S.DISMISSED: "dismissed",
    _S.ON_HOLD: "on hold",
    _S.CLOSED: "closed",
}
_MAX_TEXT = {"unit": 80, "comment": 500, "reason": 500, "resolution": 32, "assignee": 64}


@dataclass(frozen=True, slots=True)
class _Particulars:
    unit: str
    comment: str
    reason: str
    resolution: str
    assignee: str

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
        if action is AlertAction.HOLD:
            if not self.reason:
                raise ActionRefused("say what the alert is waiting for")
            return {"reason": self.reason}
        if action is AlertAction.CLOSE:
            if self.resolution not in RESOLUTIONS:
                raise ActionRefused(
                    "choose a resolution: " + ", ".join(RESOLUTIONS.values()).lower()
                )
            if self.resolution == "other" and not self.comment:
                raise ActionRefused("say in the comment how it was resolved")
            return {"resolution": self.resolution, "comment": self.comment}
        if action is AlertAction.ASSIGN:
            if not self.assignee:
                raise ActionRefused("choose the operator to assign it to")
            return {"to": self.assignee, "comment": self.comment}
        if action is AlertAction.NOTE:
            if not self.comment:
                raise ActionRefused("the note is empty")
            return {"note": self.comment}
        return {"comment": self.comment} if self.comment else {}


def _clean(name: str, value: str | None) -> str:
    text = " ".join((value or "").split())  # one line: the audit trail is read in a table
    if len(text) > _MAX_TEXT[name]:
        raise ActionRefused(f"{name} is longer than {_MAX_TEXT[name]} characters")
    return text


def apply_action(
    store: AlertStore,
    incident_id: str,
    action: AlertAction | str,
    *,
    operator: str,
    role: Role | str,
    now: int,
    unit: str | None = None,
    comment: str | None = None,
    reason: str | None = None,
    resolution: str | None = None,
    assignee: str | None = None,
    seen_status_at: int | None = None,
) -> Alert:
    """Do ``action`` as ``operator``; raise ``ActionRefused`` (with a message for the
    operator) or ``NotFound``. With ``seen_status_at`` (the alert's ``status_at`` on the
    operator's screen), refused if the alert changed since (a note excepted: it changes
    nothing but the trail)."""
    try:
        action = AlertAction(action)
        role = Role(role)
    except ValueError:
        raise ActionRefused("no such action") from None
    particulars = _Particulars(
        _clean("unit", unit),
        _clean("comment", comment),
        _clean("reason", reason),
        _clean("resolution", resolution),
        _clean("assignee", assignee),
    )
    detail = {k: v for k, v in particulars.for_action(action).items() if v != ""}
    with store.transaction(write=True) as s:
        row = s.get(AlertRow, incident_id)
        if row is None:
            raise NotFound(f"no alert {incident_id!r}")
        current = AlertStatus(row.status)
        if action is AlertAction.NOTE:
            store.audit(
                s,
                at=now,
                incident_id=incident_id,
                actor=operator,
                action=_PAST[action],
                detail=detail,
            )
            return store.view(row)
        if seen_status_at is not None and seen_status_at != row.status_at:
            who = f" by {row.taken_by}" if row.taken_by else ""
            raise ActionRefused(
                f"this alert changed while you looked at it: it is now "
                f"{_WORDS[current]}{who}; look again before you act"
            )
        new = ALERT_TRANSITIONS.get((action, current))
        if new is None:
            raise ActionRefused(f"cannot {_VERB[action]} an alert that is {_WORDS[current]}")
        taken_by_other = row.taken_by is not None and row.taken_by != operator
        if role is not Role.SUPERVISOR:
            if current.taken and taken_by_other:
                raise ActionRefused(f"{row.taken_by} has taken this alert; ask a supervisor")
            if action is AlertAction.REOPEN and current.handled:
                raise ActionRefused("only a supervisor reopens a handled alert")
            if action is AlertAction.CLOSE and current.handled and taken_by_other:
                raise ActionRefused(f"only {row.taken_by} or a supervisor closes this alert")
        taken_by: str | None = operator
        if action is AlertAction.ASSIGN:
            target = s.get(OperatorRow, particulars.assignee)
            if target is None or target.disabled:
                raise ActionRefused(f"there is no active operator {particulars.assignee!r}")
            if particulars.assignee == row.taken_by:
                raise ActionRefused(f"it is already {row.taken_by}'s")
            if row.taken_by:
                detail["from"] = row.taken_by
            taken_by = particulars.assignee
        elif taken_by_other and current.taken:
            detail["took_over_from"] = row.taken_by
        if new is AlertStatus.NEW:
            taken_by = None
        # Only if nobody changed it since we read it (the row is not locked on SQLite).
        done = cast(
            CursorResult[Any],
            s.execute(
                update(AlertRow)
                .where(
                    AlertRow.incident_id == incident_id,
                    AlertRow.status == current.value,
                    AlertRow.status_at == row.status_at,
                )
                .values(
                    status=new.value,
                    status_at=now,
                    taken_by=taken_by,
                    escalated_at=None if new is AlertStatus.NEW else row.escalated_at,
                )
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        if done != 1:
            raise ActionRefused("someone else changed this alert a moment ago; look again")
        store.audit(
            s, at=now, incident_id=incident_id, actor=operator, action=_PAST[action], detail=detail
        )
        s.flush()
        s.expire_all()
        fresh = s.get(AlertRow, incident_id)
        assert fresh is not None
        return store.view(fresh)


def escalate_due(
    store: AlertStore, *, now: int, after_ms: int, taken_after_ms: int | None = None
) -> list[str]:
    """Mark alerts that have been untaken for ``after_ms`` as escalated, and (with
    ``taken_after_ms``) alerts taken that long ago and neither dispatched nor dismissed;
    once each per state, with an audit entry. Return their incident ids."""
    with store.transaction(write=True) as s:
        due: list[tuple[str, str, int, str | None]] = [
            (r.incident_id, r.status, r.status_at, r.taken_by)
            for r in s.execute(
                select(AlertRow.incident_id, AlertRow.status, AlertRow.status_at, AlertRow.taken_by)
                .where(
                    AlertRow.status == AlertStatus.NEW.value,
                    AlertRow.escalated_at.is_(None),
                    AlertRow.status_at <= now - after_ms,
                )
                .order_by(AlertRow.received_at)
            )
        ]
        if taken_after_ms is not None:
            due += [
                (r.incident_id, r.status, r.status_at, r.taken_by)
                for r in s.execute(
                    select(
                        AlertRow.incident_id, AlertRow.status, AlertRow.status_at, AlertRow.taken_by
                    )
                    .where(
                        AlertRow.status.in_(
                            [AlertStatus.ACKNOWLEDGED.value, AlertStatus.ON_HOLD.value]
                        ),
                        or_(
                            AlertRow.escalated_at.is_(None),
                            AlertRow.escalated_at < AlertRow.status_at,
                        ),
                        AlertRow.status_at <= now - taken_after_ms,
                    )
                    .order_by(AlertRow.received_at)
                )
            ]
        escalated = []
        for incident_id, status, status_at, taken_by in due:
            # Guarded, so that two ENC processes sharing the store escalate it once.
            done = cast(
                CursorResult[Any],
                s.execute(
                    update(AlertRow)
                    .where(
                        AlertRow.incident_id == incident_id,
                        AlertRow.status == status,
                        AlertRow.status_at == status_at,
                        or_(
                            AlertRow.escalated_at.is_(None),
                            AlertRow.escalated_at < AlertRow.status_at,
                        ),
                    )
                    .values(escalated_at=now)
                    .execution_options(synchronize_session=False)
                ),
            ).rowcount
            if done != 1:
                continue
            if status == AlertStatus.NEW.value:
                detail: dict[str, Any] = {"untaken_for_s": after_ms // 1000}
            else:
                detail = {"taken_by": taken_by, "unfinished_for_s": (now - status_at) // 1000}
            store.audit(
                s,
                at=now,
                incident_id=incident_id,
                actor="system",
                action="escalated",
                detail=detail,
            )
            escalated.append(incident_id)
        return escalated
