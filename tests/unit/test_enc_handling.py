"""Operators' actions on alerts, escalation, accounts, lock-out and sessions; on SQLite
and on a real PostgreSQL."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import update

import enc
from enc._schema import SessionRow
from tests.support.world import T0
from tests.unit.test_enc_store import received

STORE_KEY = bytes(range(32))
"""The store key photos and positions are sealed under in these tests."""

SETTINGS = enc.DashboardSection(
    lockout_failures=3, lockout_minutes=10, session_lifetime_minutes=60, session_idle_minutes=15
)
PW = "night shift 2026"
# Still argon2id, with less time and memory than the ENC's own (which takes ~0.5 s here).
FAST_ARGON2 = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[enc.AlertStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'enc.sqlite3'}"
    else:
        url = str(
            request.getfixturevalue("postgres").create_database(f"ench_{secrets.token_hex(4)}")
        )
    s = enc.AlertStore.open(url, key=STORE_KEY)
    yield s
    s.close()


@pytest.fixture
def ops(store: enc.AlertStore) -> enc.OperatorDirectory:
    d = enc.OperatorDirectory(store, SETTINGS, hasher=FAST_ARGON2)
    d.add("olga", PW, "operator", now=T0)
    d.add("oscar", PW, "operator", now=T0)
    d.add("sue", PW, "supervisor", now=T0)
    return d


def act(
    store: enc.AlertStore,
    action: str,
    who: str = "olga",
    role: str = "operator",
    at: int = T0 + 1000,
    **kw: str,
) -> enc.Alert:
    return enc.apply_action(store, "inc-1", action, operator=who, role=role, now=at, **kw)


# -- actions ------------------------------------------------------------------------


def test_acknowledge_then_dispatch_with_unit_and_comment(store: enc.AlertStore) -> None:
    store.record_alert(received(), received_at=T0)
    a = act(store, "acknowledge")
    assert a.status is enc.AlertStatus.ACKNOWLEDGED and a.taken_by == "olga"
    a = act(store, "dispatch", at=T0 + 2000, unit="Ambulance 12", comment="  two   people\n")
    assert a.status is enc.AlertStatus.DISPATCHED and a.status_at == T0 + 2000
    trail = store.audit_trail("inc-1")
    assert [(e.actor, e.action) for e in trail] == [
        ("server:5e5e5e5e00000001", "received"),
        ("olga", "acknowledged"),
        ("olga", "dispatched"),
    ]
    assert trail[-1].detail == {"unit": "Ambulance 12", "comment": "two people"}


def test_dismiss_needs_a_reason_and_dispatch_a_unit(store: enc.AlertStore) -> None:
    store.record_alert(received(), received_at=T0)
    with pytest.raises(enc.ActionRefused, match="reason"):
        act(store, "dismiss", reason="  ")
    with pytest.raises(enc.ActionRefused, match="unit"):
        act(store, "dispatch", comment="no unit")
    with pytest.raises(enc.ActionRefused, match="longer than 80"):
        act(store, "dispatch", unit="x" * 81)
    a = act(store, "dismiss", reason="a bag on the pavement")
    assert a.status is enc.AlertStatus.DISMISSED and a.taken_by == "olga"
    assert store.audit_trail("inc-1")[-1].detail == {"reason": "a bag on the pavement"}


@pytest.mark.parametrize(
    ("status_path", "action"),
    [
        ([], "reopen"),
        (["acknowledge"], "acknowledge"),
        (["dispatch"], "dispatch"),
        (["dispatch"], "dismiss"),
        (["dismiss"], "acknowledge"),
    ],
)
def test_transitions_not_in_the_table_are_refused(
    store: enc.AlertStore, status_path: list[str], action: str
) -> None:
    store.record_alert(received(), received_at=T0)
    for i, step in enumerate(status_path):
        act(store, step, who="sue", role="supervisor", at=T0 + i + 1, unit="U1", reason="r")
    before = store.audit_trail("inc-1")
    with pytest.raises(enc.ActionRefused, match=f"cannot {action}"):
        act(store, action, who="sue", role="supervisor", at=T0 + 50, unit="U", reason="r")
    assert store.audit_trail("inc-1") == before


def test_every_transition_in_the_table_works(
    store: enc.AlertStore, ops: enc.OperatorDirectory
) -> None:
    via = {
        enc.AlertStatus.NEW: [],
        enc.AlertStatus.ACKNOWLEDGED: ["acknowledge"],
        enc.AlertStatus.DISPATCHED: ["dispatch"],
        enc.AlertStatus.DISMISSED: ["dismiss"],
        enc.AlertStatus.ON_HOLD: ["hold"],
        enc.AlertStatus.CLOSED: ["dispatch", "close"],
    }
    for n, ((action, start), end) in enumerate(enc.ALERT_TRANSITIONS.items()):
        inc = f"inc-t{n}"
        store.record_alert(received(inc), received_at=T0)
        for i, step in enumerate(via[start]):
            enc.apply_action(
                store,
                inc,
                step,
                operator="sue",
                role="supervisor",
                now=T0 + i + 1,
                unit="U1",
                reason="r",
                resolution="help_arrived",
            )
        a = enc.apply_action(
            store,
            inc,
            action,
            operator="sue",
            role="supervisor",
            now=T0 + 100,
            unit="U2",
            reason="why",
            resolution="duplicate",
            assignee="oscar",
        )
        assert a.status is end, (action, start)


def test_an_operator_cannot_handle_an_alert_another_took(store: enc.AlertStore) -> None:
    store.record_alert(received(), received_at=T0)
    act(store, "acknowledge", who="olga")
    with pytest.raises(enc.ActionRefused, match="olga has taken this alert"):
        act(store, "dispatch", who="oscar", unit="Police 3")
    # A supervisor may take over; the trail says from whom.
    a = act(store, "dispatch", who="sue", role="supervisor", at=T0 + 3000, unit="Police 3")
    assert a.taken_by == "sue"
    assert store.audit_trail("inc-1")[-1].detail["took_over_from"] == "olga"


def test_only_a_supervisor_reopens_a_handled_alert(store: enc.AlertStore) -> None:
    store.record_alert(received(), received_at=T0)
    act(store, "dismiss", reason="shadow")
    with pytest.raises(enc.ActionRefused, match="only a supervisor"):
        act(store, "reopen", at=T0 + 2000, reason="I was wrong")
    a = act(store, "reopen", who="sue", role="supervisor", at=T0 + 3000, reason="second look")
    assert a.status is enc.AlertStatus.NEW and a.taken_by is None and a.status_at == T0 + 3000
    # The operator who took an alert may give it back.
    act(store, "acknowledge", at=T0 + 4000)
    assert act(store, "reopen", at=T0 + 5000, reason="shift ends").status is enc.AlertStatus.NEW


def test_two_operators_at_once_one_wins(store: enc.AlertStore) -> None:
    store.record_alert(received(), received_at=T0)
    outcomes: list[str] = []
    lock = threading.Lock()

    def take(who: str) -> None:
        try:
            act(store, "acknowledge", who=who)
            r = "ok"
        except enc.ActionRefused:
            r = "refused"
        with lock:
            outcomes.append(r)

    threads = [threading.Thread(target=take, args=(f"op{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 5
    assert [e.action for e in store.audit_trail("inc-1")].count("acknowledged") == 1


def test_unknown_alert_and_unknown_action(store: enc.AlertStore) -> None:
    with pytest.raises(enc.NotFound):
        act(store, "acknowledge")
    store.record_alert(received(), received_at=T0)
    with pytest.raises(enc.ActionRefused, match="no such action"):
        act(store, "delete")


def test_escalation_marks_untaken_alerts_once(store: enc.AlertStore) -> None:
    store.record_alert(received("inc-1"), received_at=T0)
    store.record_alert(received("inc-2"), received_at=T0 + 50_000)
    store.record_alert(received("inc-3"), received_at=T0)
    enc.apply_action(store, "inc-3", "acknowledge", operator="olga", role="operator", now=T0 + 1)
    assert enc.escalate_due(store, now=T0 + 119_999, after_ms=120_000) == []
    assert enc.escalate_due(store, now=T0 + 120_000, after_ms=120_000) == ["inc-1"]
    assert enc.escalate_due(store, now=T0 + 130_000, after_ms=120_000) == []
    assert store.alert("inc-1").escalated_at == T0 + 120_000
    assert store.audit_trail("inc-1")[-1].actor == "system"
    # Taking it clears nothing (the trail keeps it); reopening restarts the clock.
    a = enc.apply_action(
        store, "inc-1", "acknowledge", operator="olga", role="operator", now=T0 + 140_000
    )
    assert a.escalated_at == T0 + 120_000
    a = enc.apply_action(
        store, "inc-1", "reopen", operator="olga", role="operator", now=T0 + 150_000, reason="back"
    )
    assert a.escalated_at is None
    assert enc.escalate_due(store, now=T0 + 170_000, after_ms=120_000) == ["inc-2"]
    assert enc.escalate_due(store, now=T0 + 269_999, after_ms=120_000) == []
    assert enc.escalate_due(store, now=T0 + 270_000, after_ms=120_000) == ["inc-1"]


# -- accounts, lock-out, sessions ----------------------------------------------------


def test_passwords_are_argon2_hashes(store: enc.AlertStore, ops: enc.OperatorDirectory) -> None:
    from sqlalchemy import select

    from enc._schema import OperatorRow

    with store.transaction(write=False) as s:
        hashes = list(s.scalars(select(OperatorRow.password_hash)))
    assert all(h.startswith("$argon2id$") and PW not in h for h in hashes)
    assert len(set(hashes)) == 3  # salted


def test_login_and_session(ops: enc.OperatorDirectory) -> None:
    token, s = ops.login("Olga ", PW, now=T0, peer="127.0.0.1")
    assert s.operator.username == "olga" and s.operator.role is enc.Role.OPERATOR
    got = ops.session(token, now=T0 + 1000)
    assert got is not None and got.csrf == s.csrf
    assert ops.csrf_ok(got, s.csrf) and not ops.csrf_ok(got, "") and not ops.csrf_ok(got, "x")
    assert ops.session("not-a-token", now=T0) is None and ops.session(None, now=T0) is None
    ops.logout(got, now=T0 + 2000)
    assert ops.session(token, now=T0 + 3000) is None


def test_sessions_expire_when_idle_and_absolutely(ops: enc.OperatorDirectory) -> None:
    token, _ = ops.login("olga", PW, now=T0)
    assert ops.session(token, now=T0 + 14 * 60_000) is not None  # activity at 14 min
    assert ops.session(token, now=T0 + 28 * 60_000) is not None  # 14 min idle again
    assert ops.session(token, now=T0 + 43 * 60_000 + 1) is None  # 15 min idle: gone
    token, _ = ops.login("olga", PW, now=T0)
    for minute in range(10, 60, 10):
        assert ops.session(token, now=T0 + minute * 60_000) is not None
    assert ops.session(token, now=T0 + 60 * 60_000) is None  # lifetime over


def test_wrong_passwords_back_off_the_address_and_the_account(
    store: enc.AlertStore, ops: enc.OperatorDirectory
) -> None:
    from enc._errors import LoginThrottled

    for i in range(4):  # three free failures; the fourth starts a 1 s back-off
        with pytest.raises(enc.LoginRefused) as e:
            ops.login("olga", "wrong password!", now=T0 + i, peer="10.0.0.1")
        assert not isinstance(e.value, LoginThrottled)
    with pytest.raises(LoginThrottled) as t:  # not even checked
        ops.login("olga", PW, now=T0 + 10, peer="10.0.0.1")
    assert t.value.retry_after_s == 1
    with pytest.raises(enc.LoginRefused) as e2:
        ops.login("nobody", PW, now=T0 + 10, peer="10.0.0.3")
    assert str(e2.value) != str(t.value) and not isinstance(e2.value, LoginThrottled)
    # Elsewhere, the account's back-off slows the operator briefly; never a lock-out.
    with pytest.raises(LoginThrottled):
        ops.login("olga", PW, now=T0 + 10, peer="10.0.0.2")
    assert ops.login("olga", PW, now=T0 + 1_010, peer="10.0.0.2")[1].operator.username == "olga"
    failed = [x for x in store.audit_since(0) if x.action == "login_failed"]
    # One summary row per actor and address, not one per failure.
    assert sorted((x.actor, x.detail["peer"], x.detail["reason"]) for x in failed) == [
        ("anonymous", "10.0.0.1", "throttled"),
        ("anonymous", "10.0.0.2", "throttled"),
        ("anonymous", "10.0.0.3", "unknown name"),
        ("olga", "10.0.0.1", "password"),
    ]


def test_passwd_lifts_a_lock_out_and_ends_sessions(ops: enc.OperatorDirectory) -> None:
    token, _ = ops.login("olga", PW, now=T0)
    for i in range(3):
        with pytest.raises(enc.LoginRefused):
            ops.login("olga", "nope nope nope", now=T0 + i)
    ops.set_password("olga", "a new password", now=T0 + 10)
    assert ops.session(token, now=T0 + 20) is None
    with pytest.raises(enc.LoginRefused):
        ops.login("olga", PW, now=T0 + 30)
    # That failure was the fourth in a row from this address: a 1 s back-off first.
    assert ops.login("olga", "a new password", now=T0 + 1_040)[1].operator.username == "olga"


def test_disabled_operator_cannot_log_in_and_loses_sessions(ops: enc.OperatorDirectory) -> None:
    token, _ = ops.login("oscar", PW, now=T0)
    ops.set_disabled("oscar", True, now=T0 + 1)
    assert ops.session(token, now=T0 + 2) is None
    with pytest.raises(enc.LoginRefused):
        ops.login("oscar", PW, now=T0 + 3)
    ops.set_disabled("oscar", False, now=T0 + 4)
    assert ops.login("oscar", PW, now=T0 + 5)[1].operator.username == "oscar"
    assert [o.username for o in ops.list()] == ["olga", "oscar", "sue"]


@pytest.mark.parametrize(
    ("name", "password", "match"),
    [
        ("Olga", PW, "user name"),
        ("", PW, "user name"),
        ("a b", PW, "user name"),
        ("newop", "short", "at least 10"),
    ],
)
def test_account_rules(ops: enc.OperatorDirectory, name: str, password: str, match: str) -> None:
    with pytest.raises(enc.ActionRefused, match=match):
        ops.add(name, password, "operator", now=T0)


def test_duplicate_operator_is_refused(ops: enc.OperatorDirectory) -> None:
    with pytest.raises(enc.ActionRefused, match="exists already"):
        ops.add("olga", PW, "supervisor", now=T0)


def test_session_row_in_the_past_is_refused(
    store: enc.AlertStore, ops: enc.OperatorDirectory
) -> None:
    token, s = ops.login("sue", PW, now=T0)
    with store.transaction(write=True) as tx:
        tx.execute(
            update(SessionRow)
            .where(SessionRow.token_hash == s.token_hash)
            .values(expires_at=T0 + 5)
        )
    assert ops.session(token, now=T0 + 6) is None


def test_severity_from_label_and_score() -> None:
    from enc._handling import Severity, label_words, severity

    assert severity("fight", 0.8, uncertain_below=0.7) is Severity.FIGHT
    assert severity("person_down", 0.8, uncertain_below=0.7) is Severity.PERSON_DOWN
    assert severity("fall", 0.7, uncertain_below=0.7) is Severity.PERSON_DOWN
    assert severity("fight", 0.69, uncertain_below=0.7) is Severity.UNCERTAIN
    assert severity("smoke", 0.99, uncertain_below=0.7) is Severity.UNCERTAIN
    assert Severity.FIGHT < Severity.PERSON_DOWN < Severity.UNCERTAIN
    assert label_words("person_down") == "Person down"
    assert label_words("crowd_crush") == "Crowd crush"


def test_a_taken_alert_left_unfinished_is_escalated_once(store: enc.AlertStore) -> None:
    from enc._handling import escalated_now

    store.record_alert(received("inc-1"), received_at=T0)
    enc.apply_action(store, "inc-1", "acknowledge", operator="olga", role="operator", now=T0 + 1000)
    due = dict(after_ms=120_000, taken_after_ms=600_000)
    assert enc.escalate_due(store, now=T0 + 600_999, **due) == []
    assert enc.escalate_due(store, now=T0 + 601_000, **due) == ["inc-1"]
    assert enc.escalate_due(store, now=T0 + 700_000, **due) == []
    a = store.alert("inc-1")
    assert a.escalated_at == T0 + 601_000 and escalated_now(a)
    assert store.audit_trail("inc-1")[-1].detail == {"taken_by": "olga", "unfinished_for_s": 600}
    # Finished: no longer escalated; reopened and taken again: the clock starts anew.
    a = enc.apply_action(
        store,
        "inc-1",
        "dispatch",
        operator="olga",
        role="operator",
        now=T0 + 700_000,
        unit="Ambulance 1",
    )
    assert not escalated_now(a)
    enc.apply_action(
        store,
        "inc-1",
        "reopen",
        operator="sue",
        role="supervisor",
        now=T0 + 710_000,
        reason="again",
    )
    enc.apply_action(
        store, "inc-1", "acknowledge", operator="oscar", role="operator", now=T0 + 711_000
    )
    assert enc.escalate_due(store, now=T0 + 1_310_999, **due) == []
    assert enc.escalate_due(store, now=T0 + 1_311_000, **due) == ["inc-1"]


def test_an_action_on_a_state_the_operator_no_longer_sees_is_refused(store: enc.AlertStore) -> None:
    store.record_alert(received(), received_at=T0)
    seen = store.alert("inc-1").status_at
    act(store, "acknowledge", who="olga", at=T0 + 1000)
    before = store.audit_trail("inc-1")
    with pytest.raises(
        enc.ActionRefused, match="changed while you looked at it: it is now taken by olga"
    ):
        enc.apply_action(
            store,
            "inc-1",
            "dispatch",
            operator="sue",
            role="supervisor",
            now=T0 + 2000,
            unit="Police 1",
            seen_status_at=seen,
        )
    assert store.audit_trail("inc-1") == before
    a = enc.apply_action(
        store,
        "inc-1",
        "dispatch",
        operator="sue",
        role="supervisor",
        now=T0 + 3000,
        unit="Police 1",
        seen_status_at=T0 + 1000,
    )
    assert a.taken_by == "sue"


def test_audit_details_and_times_in_words() -> None:
    from zoneinfo import ZoneInfo

    from enc._wording import Presentation

    ui = Presentation(ZoneInfo("Europe/Warsaw"), 0.7)
    # 2026-01-15 12:00:00 UTC is 13:00 CET; 2026-07-15 12:00:00 UTC is 14:00 CEST.
    assert ui.time(1_768_478_400_000) == "2026-01-15 13:00:00 CET"
    assert ui.time(1_784_116_800_000) == "2026-07-15 14:00:00 CEST"
    assert ui.detail("escalated", {"untaken_for_s": 120}) == ["nobody took it for 2 min"]
    assert ui.detail("escalated", {"taken_by": "olga", "unfinished_for_s": 600}) == [
        "taken by olga and not finished for 10 min"
    ]
    assert ui.detail("photo_viewed", {"full": False, "view": "page"}) == ["on the alert page"]
    assert ui.detail("photo_viewed", {"full": True}) == ["full size"]
    assert ui.detail(
        "dispatched", {"unit": "Police 3", "comment": "", "took_over_from": "olga"}
    ) == ["Unit: Police 3", "Taken over from olga"]
    assert ui.detail("received", {"device": "pole-1", "label": "person_down", "score": 0.87}) == [
        "confidence 87%",
        "Device: pole-1",
        "Label: Person down",
    ]
    assert ui.action("acknowledged") == "Taken (acknowledged)"
    assert ui.action("some_new_thing") == "Some new thing"
