"""The delivery policy without a broker (like h11's tests): the pole's ``DeliveryPolicy``
against the real ``protocol.ServerEndpoint``, the test carrying every message across and
playing the policy's adapter (an outbox held in a list), with a clock it moves by hand."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import protocol as p
from edge._delivery import (
    DELETE_RETRY_MS,
    Action,
    DeleteIncident,
    DeliveryPolicy,
    LoadNext,
    NoteAttempt,
    Publish,
    SaveState,
)
from edge._state import ProtocolState
from tests.support.world import Device, World

TIMING = p.Timing()  # protocol.md section 6: C2 10 s, C4 30 s, back-off 1 s .. 300 s


@dataclass
class Pole:
    """A policy with the adapter's side done in memory."""

    w: World
    device: Device
    policy: DeliveryPolicy
    skew: int = 0
    """The pole's clock runs this many ms behind the server's."""
    stored: list[p.PendingReport] = field(default_factory=list)
    wire: list[bytes] = field(default_factory=list)
    saved: list[ProtocolState] = field(default_factory=list)
    notes: list[tuple[bytes, str]] = field(default_factory=list)
    done: list[Action] = field(default_factory=list)
    events: list[p.Event] = field(default_factory=list)
    delete_fails: str | None = None

    @property
    def cipher(self) -> p.Cipher:
        return p.AesGcmCipher(self.device.key)

    @property
    def now(self) -> int:
        return self.w.now - self.skew

    def carry_out(self) -> None:
        while (a := self.policy.next_action()) is not None:
            self.done.append(a)
            if isinstance(a, Publish):
                self.wire.append(a.data)
            elif isinstance(a, SaveState):
                self.saved.append(a.state)
            elif isinstance(a, NoteAttempt):
                self.notes.append((a.cid, a.why))
            elif isinstance(a, LoadNext):
                nxt = next((r for r in self.stored if r.cid not in a.exclude), None)
                self.policy.incident_loaded(nxt, self.now)
            elif isinstance(a, DeleteIncident):
                if self.delete_fails is not None:
                    self.policy.deletion_failed(a.cid, self.delete_fails, self.now)
                else:
                    self.stored = [r for r in self.stored if r.cid != a.cid]
                    self.policy.incident_deleted(a.cid)

    def store(self, **overrides: object) -> p.PendingReport:
        r = self.w.report(**overrides)
        self.stored.append(r)
        self.policy.incident_stored(self.now)
        self.carry_out()
        return r

    def take(self) -> list[bytes]:
        out, self.wire = self.wire, []
        return out

    def deliver(self, data: bytes) -> list[p.Event]:
        """One downlink message to the pole."""
        events = self.policy.receive(data, self.now)
        self.events += events
        self.carry_out()
        return events

    def tick(self, until: int) -> list[p.Event]:
        """Move the clock (the pole's) to ``until`` and fire what is due."""
        self.w.now = until + self.skew
        events = self.policy.on_timeout(self.now)
        self.events += events
        self.carry_out()
        return events

    def to_server(self, data: bytes) -> tuple[list[p.Event], list[bytes]]:
        events = self.w.server.receive(data, self.w.now)
        return events, [o.data for o in self.w.server.data_to_send()]

    def exchange(self) -> list[p.Event]:
        """Carry every uplink message to the server and its answers back, C4 included,
        until nothing moves; the server-side events."""
        seen: list[p.Event] = []
        while self.wire:
            for up in self.take():
                events, replies = self.to_server(up)
                seen += events
                for ev in events:
                    if isinstance(ev, p.IncidentReported):
                        replies.append(self.w.server.receipt(ev, self.w.now))
                for down in replies:
                    self.deliver(down)
        return seen

    def types(self, actions: list[Action]) -> list[str]:
        return [
            type(a).__name__ if not isinstance(a, Publish) else p.MessageType(a.type).name
            for a in actions
        ]


def make_pole(
    *,
    skew: int = 0,
    timing: p.Timing = TIMING,
    state: ProtocolState | None = None,
    w: World | None = None,
) -> Pole:
    w = w or World(timing=timing)
    d = w.add_device("pole-1")
    policy = DeliveryPolicy(
        kid=d.kid,
        uid=d.uid,
        cipher=p.AesGcmCipher(d.key),
        random=w.rand,
        timing=timing,
        state=state,
    )
    return Pole(w, d, policy, skew=skew)


def online(pole: Pole) -> Pole:
    pole.policy.connected(pole.now)
    pole.carry_out()
    return pole


def c3_cid_and_td(pole: Pole, c3: bytes) -> tuple[bytes, int]:
    opened = p.open_message(
        c3,
        role="server",
        accepts=(p.MessageType.C3,),
        limits=p.Limits(),
        key_for=lambda kid: pole.cipher,
    )
    m = opened.message
    assert isinstance(m, p.C3Report)
    return m.cid, m.td


def c1_td(pole: Pole, c1: bytes) -> int:
    opened = p.open_message(
        c1,
        role="server",
        accepts=(p.MessageType.C1,),
        limits=p.Limits(),
        key_for=lambda kid: pole.cipher,
    )
    assert isinstance(opened.message, p.C1Hello)
    return opened.message.td


# -- order and the outbox ----------------------------------------------------------------


def test_nothing_leaves_before_the_broker_is_up_then_oldest_first() -> None:
    pole = make_pole()
    first, second = pole.store(), pole.store()
    assert pole.wire == [] and not any(isinstance(a, LoadNext) for a in pole.done)
    assert pole.policy.view(pole.now).state == "offline"
    online(pole)
    [c1] = pole.wire
    assert p.decode_envelope(c1, max_size=4096).type == p.MessageType.C1
    assert pole.policy.view(pole.now).cid == first.cid
    reported = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert [e.cid for e in reported] == [first.cid, second.cid]
    assert pole.stored == []
    deletes = [a.cid for a in pole.done if isinstance(a, DeleteIncident)]
    assert deletes == [first.cid, second.cid]  # each only after its C4
    view = pole.policy.view(pole.now)
    assert view.state == "idle" and view.cid is None
    assert view.last_delivered is not None and view.last_delivered.cid == second.cid
    assert view.last_delivered.incident_id == p.incident_id_for(pole.policy.kid, second.cid)


def test_one_contact_at_a_time() -> None:
    pole = online(make_pole())
    pole.store()
    pole.store()
    assert len(pole.wire) == 1  # the second waits for the first's C4
    assert pole.policy.next_action() is None


def test_epoch_is_saved_before_the_b2_leaves_and_a_replay_is_dropped() -> None:
    pole = online(make_pole())
    b1 = pole.w.announce(pole.device)
    pole.done.clear()
    [ev] = pole.deliver(b1)
    assert isinstance(ev, p.WindowAnnounced)
    kinds = pole.types(pole.done)
    assert kinds.index("SaveState") < kinds.index("B2")
    assert pole.saved[-1].last_epoch == 1
    assert pole.saved[-1].monitoring_until == ev.tx
    assert pole.policy.monitoring(pole.now)
    pole.done.clear()
    [dropped] = pole.deliver(b1)
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "stale_epoch"
    assert not any(isinstance(a, (SaveState, Publish)) for a in pole.done)


# -- timeouts and back-off ------------------------------------------------------------------


def test_no_c2_within_10_s_backs_off_and_retries_with_a_new_td() -> None:
    pole = online(make_pole())
    r = pole.store()
    [c1] = pole.take()
    start = pole.now
    assert pole.policy.next_timeout() == start + 10_000
    assert pole.tick(start + 9_999) == [] and pole.wire == []
    [ev] = pole.tick(start + 10_000)
    assert isinstance(ev, p.ContactTimedOut) and ev.step == "C2" and ev.cid == r.cid
    assert pole.notes == [(r.cid, "no C2 within its timeout")]
    view = pole.policy.view(pole.now)
    assert view.state == "waiting" and view.next_attempt_at == ev.retry_at
    assert start + 10_000 + 500 <= ev.retry_at <= start + 10_000 + 1_000  # first back-off
    assert pole.tick(ev.retry_at - 1) == [] and pole.wire == []
    pole.tick(ev.retry_at)
    [again] = pole.take()
    assert c1_td(pole, again) > c1_td(pole, c1)
    assert pole.policy.view(pole.now).attempts == 2
    pole.wire.append(again)
    [inc] = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert inc.cid == r.cid and pole.stored == []


def test_back_off_doubles_up_to_the_maximum() -> None:
    timing = p.Timing(backoff_base_ms=1_000, backoff_max_ms=8_000)
    pole = online(make_pole(timing=timing))
    pole.store()
    delays = []
    for _ in range(7):
        pole.take()
        deadline = pole.policy.next_timeout()
        assert deadline is not None
        [ev] = pole.tick(deadline)  # C2 never comes
        assert isinstance(ev, p.ContactTimedOut)
        delays.append(ev.retry_at - pole.now)
        pole.tick(ev.retry_at)
    ceilings = [1_000, 2_000, 4_000, 8_000, 8_000, 8_000, 8_000]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert pole.policy.view(pole.now).attempts == 8


def test_no_c4_within_30_s_then_a_late_c4_is_dropped_and_the_retry_delivers() -> None:
    pole = online(make_pole())
    r = pole.store()
    [c1] = pole.take()
    _, [c2] = pole.to_server(c1)
    pole.deliver(c2)
    [c3] = pole.take()
    sent_at = pole.now
    assert pole.policy.next_timeout() == sent_at + 30_000
    [inc] = [e for e in pole.to_server(c3)[0] if isinstance(e, p.IncidentReported)]
    late_c4 = pole.w.server.receipt(inc, pole.w.now)  # held back past the timeout
    assert pole.tick(sent_at + 29_999) == []
    [ev] = pole.tick(sent_at + 30_000)
    assert isinstance(ev, p.ContactTimedOut) and ev.step == "C4"
    [dropped] = pole.deliver(late_c4)
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "unexpected"
    assert pole.stored == [r]  # not taken for a receipt of the contact now backing off
    assert not any(isinstance(a, DeleteIncident) for a in pole.done)
    pole.tick(ev.retry_at)
    reported = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert [e.incident_id for e in reported] == [inc.incident_id]  # the same incident
    assert pole.stored == []


def test_a_duplicate_c4_deletes_nothing_more() -> None:
    pole = online(make_pole())
    first = pole.store()
    second = pole.store()
    [c1] = pole.take()
    _, [c2] = pole.to_server(c1)
    pole.deliver(c2)
    [c3] = pole.take()
    [inc] = [e for e in pole.to_server(c3)[0] if isinstance(e, p.IncidentReported)]
    c4 = pole.w.server.receipt(inc, pole.w.now)
    [ok] = pole.deliver(c4)
    assert isinstance(ok, p.ReportDelivered) and ok.cid == first.cid
    assert pole.policy.view(pole.now).cid == second.cid  # the next one started
    [dup] = pole.deliver(c4)
    assert isinstance(dup, p.MessageDropped)
    assert [a.cid for a in pole.done if isinstance(a, DeleteIncident)] == [first.cid]
    assert pole.stored == [second] and pole.policy.view(pole.now).cid == second.cid


def test_a_c4_whose_h_does_not_match_the_c3_is_dropped() -> None:
    pole = online(make_pole())
    r = pole.store()
    [c1] = pole.take()
    _, [c2] = pole.to_server(c1)
    pole.deliver(c2)
    [c3] = pole.take()
    [inc] = [e for e in pole.to_server(c3)[0] if isinstance(e, p.IncidentReported)]
    forged = p.seal(
        p.C4Receipt(td=inc.td, inc=inc.incident_id, h=bytes(32)),
        cipher=pole.cipher,
        kid=pole.policy.kid,
        random=pole.w.rand,
    )
    [dropped] = pole.deliver(forged)
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "mismatch"
    assert pole.stored == [r] and pole.policy.view(pole.now).state == "sending"
    # Another T_D with the right h is not a receipt either.
    other_td = p.seal(
        p.C4Receipt(td=inc.td + 1, inc=inc.incident_id, h=inc.c3_hash),
        cipher=pole.cipher,
        kid=pole.policy.kid,
        random=pole.w.rand,
    )
    [dropped] = pole.deliver(other_td)
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "mismatch"
    [ok] = pole.deliver(pole.w.server.receipt(inc, pole.w.now))
    assert isinstance(ok, p.ReportDelivered) and pole.stored == []


def test_a_reflected_c2_in_place_of_c4_is_dropped() -> None:
    pole = online(make_pole())
    r = pole.store()
    [c1] = pole.take()
    _, [c2] = pole.to_server(c1)
    pole.deliver(c2)
    pole.take()  # the attacker drops C3 ...
    [dropped] = pole.deliver(c2)  # ... and plays C2 back
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "unexpected"
    assert pole.stored == [r] and pole.policy.view(pole.now).state == "sending"


def test_an_expired_ticket_error_7_retries_the_same_incident() -> None:
    pole = online(make_pole())
    r = pole.store()
    [c1] = pole.take()
    _, [c2] = pole.to_server(c1)
    pole.deliver(c2)
    [c3] = pole.take()
    pole.w.now += TIMING.ticket_lifetime_ms + 1  # C3 held in transit past the ticket
    events, [err] = pole.to_server(c3)
    assert [e.code for e in events if isinstance(e, p.ContactRefused)] == [7]
    [refused] = pole.deliver(err)
    assert isinstance(refused, p.ReportRefused) and refused.code == 7
    assert pole.notes[-1] == (r.cid, "the contact ticket expired (error 7); retrying")
    assert pole.policy.view(pole.now).state == "waiting"
    pole.tick(refused.retry_at)
    [inc] = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert inc.cid == r.cid and pole.stored == []


# -- error 5: the clock ----------------------------------------------------------------------


def test_error_5_corrects_the_clock_saves_it_first_and_retries_at_once() -> None:
    skew = 120_000  # the pole's clock is two minutes slow
    pole = online(make_pole(skew=skew))
    [dropped] = pole.deliver(pole.w.announce(pole.device))
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "timestamp"
    r = pole.store()
    [c1] = pole.take()
    _, [err] = pole.to_server(c1)
    pole.done.clear()
    events = pole.deliver(err)
    assert [type(e) for e in events] == [p.ClockCorrected, p.ReportRefused]
    assert isinstance(events[0], p.ClockCorrected) and events[0].offset_ms == skew
    kinds = pole.types(pole.done)
    assert kinds[:3] == ["NoteAttempt", "SaveState", "C1"]  # on disk before the retry
    assert pole.saved[-1].clock_offset_ms == skew
    [inc] = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert inc.cid == r.cid and pole.stored == []
    assert pole.policy.view(pole.now).clock_offset_ms == skew
    pole.deliver(pole.w.announce(pole.device))
    assert pole.policy.monitoring(pole.now)  # fresh with the corrected clock


def test_a_second_error_5_in_the_same_contact_backs_off() -> None:
    skew = 120_000
    pole = online(make_pole(skew=skew))
    pole.store()
    _, [err] = pole.to_server(pole.take()[0])
    pole.deliver(err)
    [retry] = pole.take()  # at once, with the corrected clock
    pole.w.now += 90_000  # ... but held in transit: stale when it reaches the server
    _, [err2] = pole.to_server(retry)
    events = pole.deliver(err2)
    [corrected] = [e for e in events if isinstance(e, p.ClockCorrected)]
    assert corrected.offset_ms == skew  # the pole's clock was right, the message late
    [refused] = [e for e in events if isinstance(e, p.ReportRefused)]
    assert refused.code == 5 and refused.retry_at > pole.now  # backed off this time
    assert pole.wire == [] and pole.policy.view(pole.now).state == "waiting"
    pole.tick(refused.retry_at)
    assert [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]


def test_a_later_drift_is_corrected_again_and_saved() -> None:
    pole = online(make_pole(skew=120_000))
    pole.store()
    _, [err] = pole.to_server(pole.take()[0])
    pole.deliver(err)
    pole.exchange()
    assert pole.saved[-1].clock_offset_ms == 120_000
    pole.skew -= 60_000  # a day later the pole's clock has gained a minute
    r = pole.store()
    _, [err] = pole.to_server(pole.take()[0])
    pole.done.clear()
    pole.deliver(err)
    assert pole.types(pole.done)[:3] == ["NoteAttempt", "SaveState", "C1"]
    assert pole.saved[-1].clock_offset_ms == 60_000
    # The refused T_D was never cached by the server, so the corrected clock's T_D, below
    # it, is used at once: the retry is delivered without waiting for the clock to pass it.
    [inc] = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert inc.cid == r.cid
    assert {s.clock_offset_ms for s in pole.saved[-1:]} == {60_000}


def test_a_t_d_the_server_may_have_cached_is_never_sent_again() -> None:
    pole = online(make_pole())
    pole.store()
    [first], _c2 = pole.to_server(pole.take()[0])  # accepted, but its C2 is lost
    assert isinstance(first, p.ContactOpened)
    pole.skew += 60_000  # and the pole's clock falls a minute behind
    for _ in range(5):  # no C2: the C1 times out, and after the back-off a fresh one
        deadline = pole.policy.next_timeout()
        assert deadline is not None
        pole.tick(deadline)
        if pole.wire:
            break
    [c1] = pole.take()
    second = p.open_message(
        c1, role="server", accepts=(3,), limits=p.Limits(), key_for=lambda _kid: pole.cipher
    ).message
    assert isinstance(second, p.C1Hello) and second.td > first.td


def test_a_clock_correction_survives_a_restart() -> None:
    skew = -45_000  # fast this time
    pole = online(make_pole(skew=skew))
    pole.store()
    _, [err] = pole.to_server(pole.take()[0])
    pole.deliver(err)
    pole.exchange()
    saved = pole.saved[-1]
    assert saved.clock_offset_ms == skew
    pole.w.now += 2_000  # the restart takes a moment
    again = DeliveryPolicy(
        kid=pole.policy.kid, uid="pole-1", cipher=pole.cipher, random=pole.w.rand, state=saved
    )
    assert again.view(pole.now).clock_offset_ms == skew
    again.connected(pole.now)
    again.incident_loaded(pole.w.report(), pole.now)
    [load, c1] = [again.next_action(), again.next_action()]
    assert isinstance(load, LoadNext) and isinstance(c1, Publish)
    events = pole.w.server.receive(c1.data, pole.w.now)
    assert [type(e) for e in events] == [p.ContactOpened]  # no error 5 any more


# -- refusals that stop or defer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"blocked": True}, 3, "blocked"),
        ({"active": False}, 2, "deactivated"),
    ],
)
def test_errors_2_and_3_stop_reports_until_the_next_b1(
    change: dict[str, object], code: int, words: str
) -> None:
    pole = online(make_pole())
    pole.w.directory.set(pole.policy.kid, **change)
    r = pole.store()
    _, [err] = pole.to_server(pole.take()[0])
    [refused] = pole.deliver(err)
    assert isinstance(refused, p.ReportRefused) and refused.code == code
    view = pole.policy.view(pole.now)
    assert view.state == "stopped" and words in (view.stopped_reason or "")
    assert any(kind == "refused" and words in text for kind, text in view.problems)
    assert view.next_attempt_at == pole.now + TIMING.backoff_max_ms
    assert pole.policy.next_timeout() == pole.now + TIMING.backoff_max_ms
    pole.done.clear()
    pole.tick(pole.now + TIMING.backoff_max_ms - 1)
    pole.store()
    assert not any(isinstance(a, (LoadNext, Publish)) for a in pole.done)  # stopped
    pole.w.directory.set(pole.policy.kid, blocked=False, active=True)
    pole.deliver(pole.w.announce(pole.device))
    view = pole.policy.view(pole.now)
    assert view.state != "stopped" and view.problems == ()
    reported = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert reported[0].cid == r.cid and pole.stored == []


def test_stopped_reports_start_again_by_themselves_after_backoff_max() -> None:
    pole = online(make_pole())
    pole.w.directory.set(pole.policy.kid, blocked=True)
    pole.store()
    _, [err] = pole.to_server(pole.take()[0])
    pole.deliver(err)
    resume = pole.policy.next_timeout()
    assert resume == pole.now + TIMING.backoff_max_ms
    pole.tick(resume)
    [c1] = pole.take()  # tried again: still blocked
    assert p.decode_envelope(c1, max_size=4096).type == p.MessageType.C1


def test_error_4_holds_reports_without_a_problem_until_the_window_opens() -> None:
    pole = online(make_pole())
    pole.w.directory.windows.clear()  # no monitoring window at the server
    r = pole.store()
    _, [err] = pole.to_server(pole.take()[0])
    [refused] = pole.deliver(err)
    assert isinstance(refused, p.ReportRefused) and refused.code == 4
    view = pole.policy.view(pole.now)
    assert view.state == "stopped" and "error 4" in (view.stopped_reason or "")
    assert view.problems == ()  # nothing for a person to do
    pole.deliver(pole.w.announce(pole.device))
    [inc] = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert inc.cid == r.cid


def test_error_8_defers_that_incident_while_the_next_ones_go() -> None:
    pole = online(make_pole())
    bad = pole.store(captured_at=pole.w.now + 10 * TIMING.window_ms)  # "from the future"
    good = pole.store()
    [c1] = pole.take()
    _, [c2] = pole.to_server(c1)
    pole.deliver(c2)
    events, [err] = pole.to_server(pole.take()[0])
    assert [e.code for e in events if isinstance(e, p.ContactRefused)] == [8]
    pole.w.now += 40  # a round trip later: the next C1's T_D is a fresh one
    pole.deliver(err)
    view = pole.policy.view(pole.now)
    assert any(kind == "payload" and bad.cid.hex() in text for kind, text in view.problems)
    loads = [a for a in pole.done if isinstance(a, LoadNext)]
    assert bad.cid in loads[-1].exclude
    [inc] = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert inc.cid == good.cid and pole.stored == [bad]  # kept, never dropped
    assert pole.policy.next_timeout() == pole.now + TIMING.backoff_max_ms
    pole.done.clear()
    pole.tick(pole.now + TIMING.backoff_max_ms)
    [load] = [a for a in pole.done if isinstance(a, LoadNext)]
    assert bad.cid not in load.exclude
    [c1] = pole.take()  # tried again
    assert p.decode_envelope(c1, max_size=4096).type == p.MessageType.C1


@pytest.mark.parametrize("code", [1, 6, 9])
def test_other_refusals_back_off_and_retry(code: int) -> None:
    pole = online(make_pole())
    r = pole.store()
    [c1] = pole.take()
    td = c1_td(pole, c1)
    err = p.seal(
        p.ErrorMessage(re=int(p.MessageType.C1), td=td, code=code, now=pole.w.now),
        cipher=pole.cipher,
        kid=pole.policy.kid,
        random=pole.w.rand,
    )
    [refused] = pole.deliver(err)
    assert isinstance(refused, p.ReportRefused) and refused.code == code
    assert pole.policy.view(pole.now).state == "waiting" and pole.wire == []
    assert pole.now < refused.retry_at <= pole.now + TIMING.backoff_base_ms
    problems = dict(pole.policy.view(pole.now).problems)
    assert ("refused" in problems) == (code == 1)  # a UID mismatch needs a person
    pole.tick(refused.retry_at)
    [again] = pole.take()
    assert c1_td(pole, again) > td
    pole.wire.append(again)
    [inc] = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert inc.cid == r.cid


def test_an_error_for_another_td_is_dropped() -> None:
    pole = online(make_pole())
    pole.store()
    [c1] = pole.take()
    err = p.seal(
        p.ErrorMessage(re=int(p.MessageType.C1), td=c1_td(pole, c1) - 1, code=3, now=pole.w.now),
        cipher=pole.cipher,
        kid=pole.policy.kid,
        random=pole.w.rand,
    )
    [dropped] = pole.deliver(err)
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "unexpected"
    assert pole.policy.view(pole.now).state == "sending"


# -- the broker coming and going ------------------------------------------------------------


def test_a_lost_broker_abandons_the_contact_and_it_starts_over_on_reconnect() -> None:
    pole = online(make_pole())
    r = pole.store()
    [c1] = pole.take()
    _, [c2] = pole.to_server(c1)
    pole.deliver(c2)
    pole.take()  # C3 lost with the connection
    pole.policy.disconnected(pole.now)
    pole.carry_out()
    view = pole.policy.view(pole.now)
    assert view.state == "offline" and view.cid is None
    assert pole.policy.next_timeout() is None  # no timeout fires while offline
    pole.tick(pole.now + 60_000)
    assert pole.wire == [] and pole.stored == [r]
    online(pole)
    [again] = pole.take()
    assert c1_td(pole, again) > c1_td(pole, c1)
    pole.wire.append(again)
    [inc] = [e for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert inc.cid == r.cid and pole.stored == []


# -- deletion after C4 ------------------------------------------------------------------------


def test_a_failed_deletion_is_retried_and_never_redelivered() -> None:
    pole = online(make_pole())
    pole.delete_fails = "the disk is full"
    first = pole.store()
    second = pole.store()
    reported = [e.cid for e in pole.exchange() if isinstance(e, p.IncidentReported)]
    assert reported == [first.cid, second.cid]  # the second went while the first waits
    assert pole.stored == [first, second]  # both kept aside, neither sent again
    view = pole.policy.view(pole.now)
    assert dict(view.problems)["delete"] == "the disk is full"
    c1s = [a for a in pole.done if isinstance(a, Publish) and a.type == p.MessageType.C1]
    assert len(c1s) == 2  # first once, second once
    loads = [a for a in pole.done if isinstance(a, LoadNext)]
    assert {first.cid, second.cid} <= loads[-1].exclude
    pole.tick(pole.now + 60_000)
    assert pole.wire == []  # still nothing re-sent
    failed_at = pole.now
    assert pole.policy.next_timeout() == failed_at + DELETE_RETRY_MS
    pole.delete_fails = None
    pole.tick(failed_at + DELETE_RETRY_MS)
    assert pole.stored == [] and pole.policy.view(pole.now).problems == ()
    assert pole.policy.next_timeout() is None
    deletes = [a.cid for a in pole.done if isinstance(a, DeleteIncident)]
    assert deletes.count(first.cid) >= 2 and deletes.count(second.cid) >= 2
    pole.store()
    loads = [a for a in pole.done if isinstance(a, LoadNext)]
    assert loads[-1].exclude == frozenset()  # nothing left aside


def test_a_load_that_fails_is_asked_again_later() -> None:
    pole = online(make_pole())
    pole.stored.append(pole.w.report())
    pole.policy.incident_stored(pole.now)
    action = pole.policy.next_action()
    assert isinstance(action, LoadNext)
    pole.policy.load_failed(pole.now)
    assert pole.policy.next_action() is None
    pole.policy.on_timeout(pole.now + 1_000)
    assert isinstance(pole.policy.next_action(), LoadNext)


def test_an_answer_to_a_load_is_ignored_once_the_broker_is_gone() -> None:
    pole = online(make_pole())
    pole.policy.incident_stored(pole.now)
    assert isinstance(pole.policy.next_action(), LoadNext)
    pole.policy.disconnected(pole.now)
    pole.policy.incident_loaded(pole.w.report(), pole.now)
    assert pole.policy.next_action() is None
    assert pole.policy.view(pole.now).state == "offline"
