"""Working an alert beyond take/dispatch/dismiss: on hold and resumed, closed with a
resolution code, assigned to a colleague and released, notes at any time; and the
filters of the list and the audit trail. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

import enc
from enc._filters import AlertFilter, parse_local_time
from enc._wording import Presentation
from tests.support.world import T0
from tests.unit import test_enc_handling
from tests.unit.test_enc_store import received

store = test_enc_handling.store  # the same fixtures: SQLite and PostgreSQL
ops = test_enc_handling.ops

S = enc.AlertStatus


def act(
    store: enc.AlertStore,
    action: str,
    who: str = "olga",
    role: str = "operator",
    at: int = T0 + 1000,
    inc: str = "inc-1",
    **kw: str,
) -> enc.Alert:
    return enc.apply_action(store, inc, action, operator=who, role=role, now=at, **kw)


def test_hold_resume_and_close_with_a_resolution(
    store: enc.AlertStore, ops: enc.OperatorDirectory
) -> None:
    store.record_alert(received(), received_at=T0)
    act(store, "acknowledge", at=T0 + 1)
    with pytest.raises(enc.ActionRefused, match="waiting for"):
        act(store, "hold", at=T0 + 2)
    a = act(store, "hold", at=T0 + 2, reason="calling the caller back")
    assert (a.status, a.taken_by, a.status.handled) == (S.ON_HOLD, "olga", False)
    # Still olga's: a colleague can neither resume nor close it.
    for action in ("resume", "close", "dispatch", "release"):
        with pytest.raises(enc.ActionRefused, match="olga has taken this alert"):
            act(store, action, who="oscar", at=T0 + 3, resolution="false_alarm", unit="U")
    assert act(store, "resume", at=T0 + 4).status is S.ACKNOWLEDGED
    with pytest.raises(enc.ActionRefused, match="choose a resolution"):
        act(store, "close", at=T0 + 5, resolution="fixed it")
    with pytest.raises(enc.ActionRefused, match="how it was resolved"):
        act(store, "close", at=T0 + 5, resolution="other")
    a = act(store, "close", at=T0 + 5, resolution="nobody_found", comment="area searched")
    assert (a.status, a.status.handled) == (S.CLOSED, True)
    last = store.audit_trail("inc-1")[-1]
    assert (last.action, last.detail) == (
        "closed",
        {"resolution": "nobody_found", "comment": "area searched"},
    )
    with pytest.raises(enc.ActionRefused, match="cannot resume an alert that is closed"):
        act(store, "resume", at=T0 + 6)
    with pytest.raises(enc.ActionRefused, match="only a supervisor reopens"):
        act(store, "reopen", at=T0 + 6, reason="more")
    assert (
        act(
            store, "reopen", who="sue", role="supervisor", at=T0 + 7, reason="caller rang again"
        ).status
        is S.NEW
    )


def test_a_dispatched_alert_is_closed_by_its_dispatcher_or_a_supervisor(
    store: enc.AlertStore, ops: enc.OperatorDirectory
) -> None:
    store.record_alert(received(), received_at=T0)
    act(store, "dispatch", at=T0 + 1, unit="Ambulance 12")
    with pytest.raises(enc.ActionRefused, match="only olga or a supervisor closes"):
        act(store, "close", who="oscar", at=T0 + 2, resolution="help_arrived")
    a = act(store, "close", at=T0 + 2, resolution="help_arrived")
    assert (a.status, a.taken_by) == (S.CLOSED, "olga")


def test_assign_to_a_colleague_and_release(
    store: enc.AlertStore, ops: enc.OperatorDirectory
) -> None:
    store.record_alert(received(), received_at=T0)
    act(store, "acknowledge", at=T0 + 1)
    with pytest.raises(enc.ActionRefused, match="no active operator 'nobody'"):
        act(store, "assign", at=T0 + 2, assignee="nobody")
    ops.set_disabled("oscar", True, now=T0)
    with pytest.raises(enc.ActionRefused, match="no active operator 'oscar'"):
        act(store, "assign", at=T0 + 2, assignee="oscar")
    ops.set_disabled("oscar", False, now=T0)
    with pytest.raises(enc.ActionRefused, match="already olga's"):
        act(store, "assign", at=T0 + 2, assignee="olga")
    a = act(store, "assign", at=T0 + 2, assignee="oscar", comment="you know the place")
    assert (a.status, a.taken_by) == (S.ACKNOWLEDGED, "oscar")
    assert store.audit_trail("inc-1")[-1].detail == {
        "to": "oscar",
        "from": "olga",
        "comment": "you know the place",
    }
    # Now olga is the colleague: she cannot take it back herself.
    with pytest.raises(enc.ActionRefused, match="oscar has taken this alert"):
        act(store, "assign", at=T0 + 3, assignee="olga")
    a = act(store, "release", who="oscar", at=T0 + 3)
    assert (a.status, a.taken_by, a.escalated_at) == (S.NEW, None, None)
    # A new alert assigned straight away is taken by the assignee.
    store.record_alert(received("inc-2"), received_at=T0)
    a = act(store, "assign", who="sue", role="supervisor", at=T0 + 4, inc="inc-2", assignee="olga")
    assert (a.status, a.taken_by) == (S.ACKNOWLEDGED, "olga")


def test_notes_at_any_time_change_nothing_else(
    store: enc.AlertStore, ops: enc.OperatorDirectory
) -> None:
    store.record_alert(received(), received_at=T0)
    act(store, "acknowledge", at=T0 + 1)
    before = store.alert("inc-1")
    with pytest.raises(enc.ActionRefused, match="the note is empty"):
        act(store, "note", who="oscar", comment="   ")
    # Anyone, whoever has it, whatever they saw (a note never stands in the way).
    a = act(
        store, "note", who="oscar", at=T0 + 2, comment="caller says two people", seen_status_at="1"
    )  # type: ignore[arg-type]
    assert a == before
    act(store, "dispatch", at=T0 + 3, unit="Police 3")
    act(store, "note", who="oscar", at=T0 + 4, comment="unit on site")
    trail = [(e.action, e.actor, e.detail) for e in store.audit_trail("inc-1")][-3:]
    assert trail == [
        ("note", "oscar", {"note": "caller says two people"}),
        ("dispatched", "olga", {"unit": "Police 3"}),
        ("note", "oscar", {"note": "unit on site"}),
    ]


def test_an_alert_left_on_hold_is_escalated(
    store: enc.AlertStore, ops: enc.OperatorDirectory
) -> None:
    store.record_alert(received(), received_at=T0)
    act(store, "hold", at=T0 + 1, reason="waiting for the unit")
    assert enc.escalate_due(store, now=T0 + 50_000, after_ms=10_000, taken_after_ms=60_000) == []
    assert enc.escalate_due(store, now=T0 + 61_001, after_ms=10_000, taken_after_ms=60_000) == [
        "inc-1"
    ]
    e = store.audit_trail("inc-1")[-1]
    assert (e.action, e.detail["taken_by"]) == ("escalated", "olga")


WARSAW = ZoneInfo("Europe/Warsaw")
ZONES = {"Old Town": (50.05, 19.93, 50.07, 19.95), "Podgorze": (50.03, 19.94, 50.045, 19.97)}


def _filter(**q: str | list[str]) -> AlertFilter:
    class Query(dict[str, list[str]]):
        def getlist(self, k: str) -> list[str]:
            return self.get(k, [])

    return AlertFilter.from_query(
        Query({k: v if isinstance(v, list) else [v] for k, v in q.items()}), WARSAW, ZONES
    )


def test_filters_read_from_a_query_and_match() -> None:
    ui = Presentation(WARSAW, 0.7, ZONES)
    base = received()
    alert = enc.Alert(
        incident_id="inc-abc",
        server_kid="5e",
        device_uid="pole-17",
        label="fight",
        score=0.9,
        coords=base.coords,
        captured_at=T0,
        sent_at=T0,
        received_at=T0,
        photo_size=1,
        photo_sha256="0",
        status=S.ON_HOLD,
        status_at=T0,
        taken_by="olga",
    )
    zone = ui.area(alert)
    assert zone == "Old Town"
    assert _filter().matches(alert, zone) and not _filter().active
    assert _filter(status="open").matches(alert, zone)
    assert not _filter(status=["new", "closed"]).matches(alert, zone)
    assert _filter(label="fight", zone="Old Town", q="POLE-17 olga").matches(alert, zone)
    assert not _filter(zone="Podgorze").matches(alert, zone)
    assert not _filter(q="pole-18").matches(alert, zone)
    # Times typed in the ENC's zone (T0 is 2025-11-24 16:00 UTC, 17:00 in Warsaw).
    assert parse_local_time("2025-11-24T17:00", WARSAW) == T0
    assert parse_local_time("2025-11-24T17:00+00:00", WARSAW) == T0 + 3600_000
    assert _filter(**{"from": "2025-11-24T17:00"}).matches(alert, zone)
    assert not _filter(**{"from": "2025-11-24T17:00:01"}).matches(alert, zone)
    assert not _filter(to="2025-11-24T17:00").matches(alert, zone)
    assert _filter(**{"from": "2025-11-24T16:00", "to": "2025-11-24T18:00"}).matches(alert, zone)
    bad = _filter(status="gone", zone="Atlantis", to="yesterday")
    assert not bad.active
    assert bad.errors == (
        "an unknown status was left out",
        "there is no zone 'Atlantis'",
        "the time 'to' is not a date and time",
    )
    assert _filter(**{"from": "2026-01-02T00:00", "to": "2026-01-01T00:00"}).errors == (
        "the time range ends before it starts",
    )


def test_words_for_the_new_entries() -> None:
    ui = Presentation(WARSAW, 0.7)
    assert ui.action("put_on_hold") == "Put on hold"
    assert ui.detail("closed", {"resolution": "help_arrived", "comment": "ok"}) == [
        "Resolution: Help arrived and took over",
        "Comment: ok",
    ]
    assert ui.detail("assigned", {"to": "oscar", "from": "olga"}) == ["To oscar", "From olga"]
    assert ui.detail("note", {"note": "unit on site"}) == ["unit on site"]
