"""Device, server and ENC objects driven against each other in memory, fake clock:
every phase, every error code, every timeout."""

from __future__ import annotations

import pytest

import protocol as p
from tests.support.world import T0, World, jpeg


def only(events: list[p.Event], cls: type) -> p.Event:
    found = [e for e in events if isinstance(e, cls)]
    assert len(found) == 1, events
    return found[0]


def c1_reply(w: World, d) -> tuple[list[p.Event], list[p.Event]]:
    """Start a report, deliver C1; return server events and the device's events on the
    server's answer."""
    d.conn.start_report(w.report(), w.now)
    [c1] = d.conn.data_to_send()
    server_events = w.to_server(c1)
    [answer] = w.server_out()
    return server_events, w.to_device(d, answer)


# -- broadcast ----------------------------------------------------------------------


def test_broadcast_b1_b2_round_trip() -> None:
    w = World()
    d = w.add_device("pole-001", window=False)
    b1 = w.announce(d, until=w.now + 8 * 3_600_000)
    ev = only(w.to_device(d, b1), p.WindowAnnounced)
    assert ev.ep == 1 and ev.tx == w.now + 8 * 3_600_000
    assert d.conn.monitoring(w.now) and d.conn.last_epoch == 1
    [b2] = d.conn.data_to_send()
    confirmed = only(w.to_server(b2), p.BroadcastConfirmed)
    assert confirmed == p.BroadcastConfirmed(d.kid, 1, w.now)


def test_window_ends_early_with_tx_equal_ts() -> None:
    w = World()
    d = w.add_device("pole-001")
    w.to_device(d, w.announce(d))
    w.advance(1000)
    only(w.to_device(d, w.announce(d, until=w.now)), p.WindowAnnounced)
    assert not d.conn.monitoring(w.now)


def test_window_runs_out_at_tx() -> None:
    w = World()
    d = w.add_device("pole-001")
    w.to_device(d, w.announce(d, until=w.now + 60_000))
    assert d.conn.monitoring(w.now + 59_999)
    assert not d.conn.monitoring(w.now + 60_000)


def test_b1_with_older_epoch_is_dropped_and_device_carries_on() -> None:
    w = World()
    d = w.add_device("pole-001")
    first = w.announce(d)
    second = w.announce(d)
    w.to_device(d, second)
    dropped = only(w.to_device(d, first), p.MessageDropped)
    assert dropped.reason == "stale_epoch"
    assert d.conn.last_epoch == 2
    only(w.to_device(d, w.announce(d)), p.WindowAnnounced)


def test_b1_epochs_survive_a_device_restart() -> None:
    w = World()
    d = w.add_device("pole-001")
    old = w.announce(d)
    w.to_device(d, old)
    restarted = p.DeviceConnection(
        kid=d.kid,
        uid=d.uid,
        cipher=p.AesGcmCipher(d.key),
        random=w.rand,
        last_epoch=d.conn.last_epoch,
    )
    assert only(restarted.receive(old, w.now), p.MessageDropped).reason == "stale_epoch"


def test_b1_outside_window_is_dropped() -> None:
    w = World()
    d = w.add_device("pole-001")
    b1 = w.announce(d)
    w.advance(w.timing.window_ms + 1)
    assert only(w.to_device(d, b1), p.MessageDropped).reason == "timestamp"


# -- contact ------------------------------------------------------------------------


def test_contact_c1_to_c4_delivers_report() -> None:
    w = World()
    d = w.add_device("pole-001")
    report = w.report()
    events, _ = w.contact(d, report)
    delivered = only(events, p.ReportDelivered)
    assert delivered.cid == report.cid
    assert delivered.incident_id == p.incident_id_for(d.kid, report.cid)
    assert d.conn.state is p.ContactState.IDLE and d.conn.report is None
    assert d.conn.next_timeout() is None


def test_incident_reported_carries_the_report() -> None:
    w = World()
    d = w.add_device("pole-001")
    report = w.report()
    d.conn.start_report(report, w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    inc = only(w.to_server(d.conn.data_to_send()[0]), p.IncidentReported)
    assert (inc.uid, inc.cid, inc.coords, inc.photo, inc.score, inc.label, inc.captured_at) == (
        d.uid,
        report.cid,
        report.coords,
        report.photo,
        report.score,
        report.label,
        report.captured_at,
    )


def test_same_kid_and_cid_give_same_incident_id_across_retries_and_replicas() -> None:
    w = World()
    d = w.add_device("pole-001")
    report = w.report()
    first, _ = w.contact(d, report)
    w.advance(5_000)
    second, _ = w.contact(d, report)
    assert only(first, p.ReportDelivered).incident_id == only(second, p.ReportDelivered).incident_id
    other = w.add_device("pole-002")
    third, _ = w.contact(other, w.report(cid=report.cid))
    assert only(third, p.ReportDelivered).incident_id != only(first, p.ReportDelivered).incident_id


def test_ticket_from_one_replica_is_accepted_by_another() -> None:
    w = World()
    d = w.add_device("pole-001")
    ticket_key = w.rand(32)
    a = p.ServerEndpoint(directory=w.directory, ticket_key=ticket_key, random=w.rand)
    b = p.ServerEndpoint(directory=w.directory, ticket_key=ticket_key, random=w.rand)
    d.conn.start_report(w.report(), w.now)
    a.receive(d.conn.data_to_send()[0], w.now)
    d.conn.receive(a.data_to_send()[0].data, w.now)
    inc = only(b.receive(d.conn.data_to_send()[0], w.now), p.IncidentReported)
    only(d.conn.receive(b.receipt(inc, w.now), w.now), p.ReportDelivered)


def test_start_report_twice_is_a_local_error_and_sticky() -> None:
    w = World()
    d = w.add_device("pole-001")
    d.conn.start_report(w.report(), w.now)
    with pytest.raises(p.LocalProtocolError, match=r"pole-001.*start_report.*await_c2"):
        d.conn.start_report(w.report(), w.now)
    with pytest.raises(p.LocalProtocolError, match="error state"):
        d.conn.receive(b"", w.now)


def test_invalid_report_is_refused_locally() -> None:
    w = World()
    with pytest.raises(p.LocalProtocolError, match="JPEG"):
        w.report(photo=b"PNG...")


# -- every error code over the contact phase -------------------------------------------


def test_error_1_uid_does_not_match_kid() -> None:
    w = World()
    d = w.add_device("pole-001")
    d.conn.uid = "pole-999"
    server_events, device_events = c1_reply(w, d)
    assert only(server_events, p.ContactRefused).code == p.ErrorCode.UID_MISMATCH
    assert only(device_events, p.ReportRefused).code == 1


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"active": False}, p.ErrorCode.DEVICE_INACTIVE),
        ({"blocked": True}, p.ErrorCode.DEVICE_BLOCKED),
        ({"blocked": True, "active": False}, p.ErrorCode.DEVICE_BLOCKED),
    ],
)
def test_errors_2_and_3_inactive_or_blocked_device(change: dict, code: int) -> None:
    w = World()
    d = w.add_device("pole-001")
    w.directory.set(d.kid, **change)
    server_events, device_events = c1_reply(w, d)
    assert only(server_events, p.ContactRefused).code == code
    refused = only(device_events, p.ReportRefused)
    assert refused.code == code and refused.retry_at > w.now
    assert d.conn.state is p.ContactState.BACKOFF and d.conn.report is not None


def test_error_4_framework_inactive_then_retry_as_soon_as_window_opens() -> None:
    w = World()
    d = w.add_device("pole-001", window=False)
    _, device_events = c1_reply(w, d)
    refused = only(device_events, p.ReportRefused)
    assert refused.code == p.ErrorCode.FRAMEWORK_INACTIVE
    w.advance(100)
    w.to_device(d, w.announce(d))
    assert d.conn.next_timeout() == w.now  # retry right away, not after the back-off
    d.conn.data_to_send()  # B2
    d.conn.on_timeout(w.now)
    [c1] = d.conn.data_to_send()
    only(w.to_server(c1), p.ContactOpened)


def test_error_5_corrects_the_device_clock_and_retries_at_once() -> None:
    w = World()
    d = w.add_device("pole-001")
    d.conn.clock_offset_ms = -120_000  # device clock two minutes slow
    _, device_events = c1_reply(w, d)
    corrected = only(device_events, p.ClockCorrected)
    assert corrected.offset_ms == 0
    assert only(device_events, p.ReportRefused).code == p.ErrorCode.TIMESTAMP_OUT_OF_WINDOW
    assert d.conn.next_timeout() == w.now
    d.conn.on_timeout(w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    [inc] = [e for e in w.to_server(d.conn.data_to_send()[0]) if isinstance(e, p.IncidentReported)]
    only(w.to_device(d, w.server.receipt(inc, w.now)), p.ReportDelivered)


def test_error_5_future_timestamp() -> None:
    w = World()
    d = w.add_device("pole-001")
    d.conn.clock_offset_ms = w.timing.window_ms + 1
    server_events, _ = c1_reply(w, d)
    assert only(server_events, p.ContactRefused).code == 5


def test_error_6_replayed_c1() -> None:
    w = World()
    d = w.add_device("pole-001")
    d.conn.start_report(w.report(), w.now)
    [c1] = d.conn.data_to_send()
    only(w.to_server(c1), p.ContactOpened)
    w.server_out()
    assert only(w.to_server(c1), p.ContactRefused).code == p.ErrorCode.REPLAY


def test_error_7_expired_ticket() -> None:
    w = World(timing=p.Timing(c4_timeout_ms=120_000))
    d = w.add_device("pole-001")
    d.conn.start_report(w.report(), w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    [c3] = d.conn.data_to_send()
    w.advance(w.timing.ticket_lifetime_ms + 1)
    assert only(w.to_server(c3), p.ContactRefused).code == p.ErrorCode.TICKET_INVALID
    [err] = w.server_out()
    assert only(w.to_device(d, err), p.ReportRefused).code == 7


def test_error_8_photo_too_large() -> None:
    big = jpeg((160, 120), quality=95, noisy=True)
    w = World(limits=p.Limits(max_photo=len(big) - 100))
    d = w.add_device("pole-001")
    d.conn.limits = p.Limits()  # the device does not know the server's limit
    d.conn.start_report(w.report(photo=big), w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    assert only(w.to_server(d.conn.data_to_send()[0]), p.ContactRefused).code == 8


def test_message_far_over_the_limit_is_dropped_before_decrypting() -> None:
    big = jpeg((160, 120), quality=95, noisy=True)
    w = World(limits=p.Limits(max_photo=len(big) - 5_000))
    d = w.add_device("pole-001")
    d.conn.limits = p.Limits()
    d.conn.start_report(w.report(photo=big), w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    dropped = only(w.to_server(d.conn.data_to_send()[0]), p.MessageDropped)
    assert dropped.reason == "too_large" and w.server_out() == []


def test_error_9_rate_limited() -> None:
    w = World(rate_limit=p.RateLimit(burst=2, per_minute=1))
    d = w.add_device("pole-001")
    codes = []
    for _ in range(3):
        conn = p.DeviceConnection(kid=d.kid, uid=d.uid, cipher=p.AesGcmCipher(d.key), random=w.rand)
        conn.start_report(w.report(), w.now)
        events = w.to_server(conn.data_to_send()[0])
        codes.append([type(e).__name__ for e in events])
        w.advance(1)
    assert codes[:2] == [["ContactOpened"]] * 2
    assert codes[2] == ["ContactRefused"]
    w.server_out()
    w.advance(60_000)
    d.conn.start_report(w.report(), w.now)
    only(w.to_server(d.conn.data_to_send()[0]), p.ContactOpened)


# -- timeouts ----------------------------------------------------------------------


def test_c2_timeout_backs_off_and_retries_with_new_td_same_cid() -> None:
    w = World()
    d = w.add_device("pole-001")
    report = w.report()
    d.conn.start_report(report, w.now)
    [first_c1] = d.conn.data_to_send()  # lost
    assert d.conn.next_timeout() == w.now + w.timing.c2_timeout_ms
    w.advance(w.timing.c2_timeout_ms - 1)
    assert d.conn.on_timeout(w.now) == []
    w.advance(1)
    timed_out = only(d.conn.on_timeout(w.now), p.ContactTimedOut)
    assert timed_out.step == "C2" and timed_out.retry_at > w.now
    w.now = timed_out.retry_at
    d.conn.on_timeout(w.now)
    [c1] = d.conn.data_to_send()
    assert c1 != first_c1
    only(w.to_server(c1), p.ContactOpened)
    w.to_device(d, w.server_out()[0])
    inc = only(w.to_server(d.conn.data_to_send()[0]), p.IncidentReported)
    assert inc.cid == report.cid


def test_c4_timeout_keeps_report_and_retries() -> None:
    w = World()
    d = w.add_device("pole-001")
    d.conn.start_report(w.report(), w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    d.conn.data_to_send()  # C3 lost
    w.advance(w.timing.c4_timeout_ms)
    assert only(d.conn.on_timeout(w.now), p.ContactTimedOut).step == "C4"
    assert d.conn.report is not None


def test_backoff_grows_exponentially_to_five_minutes() -> None:
    t = p.Timing()
    delays = [p.backoff_delay(n, timing=t, jitter=0.999) for n in range(1, 14)]
    assert delays == sorted(delays)
    assert delays[-1] <= 300_000 and delays[-1] > 299_000
    assert p.backoff_delay(1, timing=t, jitter=0.0) == 500


def test_device_never_drops_a_report_after_many_timeouts() -> None:
    w = World()
    d = w.add_device("pole-001")
    d.conn.start_report(w.report(), w.now)
    for _ in range(40):
        d.conn.data_to_send()
        w.now = d.conn.next_timeout() or w.now
        d.conn.on_timeout(w.now)
    assert d.conn.report is not None
    assert d.conn.state in (p.ContactState.AWAIT_C2, p.ContactState.BACKOFF)


# -- ENC notification --------------------------------------------------------------------


def delivered_incident(w: World) -> p.IncidentReported:
    d = w.add_device(f"pole-{len(w.devices) + 1:03d}")
    d.conn.start_report(w.report(), w.now)
    w.to_server(d.conn.data_to_send()[0])
    w.to_device(d, w.server_out()[0])
    return only(w.to_server(d.conn.data_to_send()[0]), p.IncidentReported)  # type: ignore


def test_enc_notification_n1_n2() -> None:
    w = World()
    inc = delivered_incident(w)
    events, _ = w.notify(inc)
    assert only(events, p.AlertConfirmed).incident_id == inc.incident_id
    assert w.notifier.pending() == []


def test_n2_timeout_schedules_a_retry_with_a_fresh_n1() -> None:
    w = World()
    inc = delivered_incident(w)
    kw = dict(
        incident_id=inc.incident_id,
        coords=inc.coords,
        photo=inc.photo,
        score=0.8,
        label="fall",
        captured_at=inc.captured_at,
        device_uid=inc.uid,
    )
    first = w.notifier.alert(**kw, now=w.now)  # lost
    assert w.notifier.next_timeout() == w.now + w.timing.n2_timeout_ms
    w.advance(w.timing.n2_timeout_ms)
    timed_out = only(w.notifier.on_timeout(w.now), p.AlertTimedOut)
    assert timed_out.attempts == 1 and timed_out.retry_at >= w.now
    w.now = timed_out.retry_at
    second = w.notifier.alert(**kw, now=w.now)
    assert second != first
    [alert] = w.enc.receive(second, w.now)
    only(w.notifier.receive(w.enc.receipt(alert, w.now), w.now), p.AlertConfirmed)


def test_late_n2_for_an_earlier_attempt_still_confirms() -> None:
    w = World()
    inc = delivered_incident(w)
    kw = dict(
        incident_id=inc.incident_id,
        coords=inc.coords,
        photo=inc.photo,
        score=0.8,
        label="fall",
        captured_at=inc.captured_at,
        device_uid=inc.uid,
    )
    first = w.notifier.alert(**kw, now=w.now)
    [alert] = w.enc.receive(first, w.now)
    n2 = w.enc.receipt(alert, w.now)
    w.advance(1_000)
    w.notifier.alert(**kw, now=w.now)
    only(w.notifier.receive(n2, w.now), p.AlertConfirmed)


def test_clock_starts_where_expected() -> None:
    assert World().now == T0
