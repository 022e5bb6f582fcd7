"""An active attacker replays and reflects every message type."""

from __future__ import annotations

import pytest

import protocol as p
from tests.support.world import World

from .attacker import RECEIVER, SENDER, deliver, honest_run, still_works

TYPES = list(RECEIVER)
ACCEPTED = (
    p.WindowAnnounced,
    p.BroadcastConfirmed,
    p.ContactOpened,
    p.IncidentReported,
    p.ReportDelivered,
    p.ReportRefused,
    p.ClockCorrected,
    p.AlertReceived,
    p.AlertConfirmed,
)


def assert_rejected(events: list[p.Event], *, allow_refusal: bool = False) -> None:
    assert events, "the receiver said nothing at all"
    assert not [e for e in events if isinstance(e, ACCEPTED)], events
    allowed = (p.MessageDropped, p.ContactRefused) if allow_refusal else (p.MessageDropped,)
    assert all(isinstance(e, allowed) for e in events), events


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("delay", ["inside", "outside"])
def test_replay_of_every_type_to_its_receiver(name: str, delay: str) -> None:
    w = World()
    d = w.add_device("pole-001")
    wire = honest_run(w, d)
    w.advance(1_000 if delay == "inside" else 10 * w.timing.window_ms)
    w.directory.windows[d.kid] = w.now + 3_600_000
    events = deliver(w, d, RECEIVER[name], wire[name])
    # The server answers a replayed C1/C3 with an error (6 replay, 5 stale, 7 ticket).
    assert_rejected(events, allow_refusal=name in ("C1", "C3"))
    refusals = [e.code for e in events if isinstance(e, p.ContactRefused)]
    if name == "C1":
        assert refusals == [
            p.ErrorCode.REPLAY if delay == "inside" else p.ErrorCode.TIMESTAMP_OUT_OF_WINDOW
        ]
    if name == "C3":
        assert refusals == [p.ErrorCode.REPLAY if delay == "inside" else p.ErrorCode.TICKET_INVALID]
    still_works(w, d)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("target", ["sender", "other"])
def test_reflection_of_every_type(name: str, target: str) -> None:
    w = World()
    d = w.add_device("pole-001")
    wire = honest_run(w, d)
    roles = {"device", "server", "notifier", "enc"}
    to = [SENDER[name]] if target == "sender" else sorted(roles - {SENDER[name], RECEIVER[name]})
    for role in to:
        assert_rejected(deliver(w, d, role, wire[name]))
    still_works(w, d)


def test_c2_in_place_of_c4_is_refused_and_report_kept() -> None:
    w = World()
    d = w.add_device("pole-001")
    report = w.report()
    d.conn.start_report(report, w.now)
    w.to_server(d.conn.data_to_send()[0])
    [c2] = w.server_out()
    w.to_device(d, c2)
    d.conn.data_to_send()  # the attacker drops C3 ...
    events = w.to_device(d, c2)  # ... and plays C2 back in place of C4
    assert_rejected(events)
    assert d.conn.report == report and d.conn.state is p.ContactState.AWAIT_C4
    w.advance(w.timing.c4_timeout_ms)
    assert isinstance(d.conn.on_timeout(w.now)[0], p.ContactTimedOut)


def test_b2_in_place_of_b1_is_refused() -> None:
    w = World()
    d = w.add_device("pole-001")
    w.to_device(d, w.announce(d))
    [b2] = d.conn.data_to_send()
    assert_rejected(w.to_device(d, b2))
    assert d.conn.last_epoch == 1


def test_n2_from_an_earlier_alert_does_not_confirm_a_new_one() -> None:
    w = World()
    d = w.add_device("pole-001")
    wire = honest_run(w, d)  # alert A confirmed, its N2 captured
    d.conn.start_report(w.report(), w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    [inc] = [e for e in w.to_server(d.conn.data_to_send()[0]) if isinstance(e, p.IncidentReported)]
    w.notifier.alert(
        incident_id=inc.incident_id,
        coords=inc.coords,
        photo=inc.photo,
        score=0.9,
        label="fall",
        captured_at=inc.captured_at,
        device_uid=inc.uid,
        now=w.now,
    )  # the attacker drops this N1 ...
    assert_rejected(w.notifier.receive(wire["N2"], w.now))  # ... and replays an old N2
    assert w.notifier.pending() == [inc.incident_id]


def test_replayed_error_does_not_move_the_device_clock() -> None:
    w = World()
    d = w.add_device("pole-001")
    wire = honest_run(w, d)
    offset = d.conn.clock_offset_ms
    d.conn.start_report(w.report(), w.now)
    assert_rejected(w.to_device(d, wire["ERROR"]))
    assert d.conn.clock_offset_ms == offset
