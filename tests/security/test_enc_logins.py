"""Logins as an attacker uses them against the real ENC (``citywatch enc run``): a flood
from many addresses while alerts arrive, guessing one operator's password, and the
audit trail such floods used to drown."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, select

from enc._schema import AuditRow
from tests.integration.test_enc_dashboard import PW, add_operators
from tests.integration.test_enc_endpoint import EncProcess, make_n1, new_id

DASHBOARD_TOML = """
[dashboard]
lockout_failures = 3
lockout_minutes = 5
"""


class Browser:
    """A browser-less client from one loopback address of its own."""

    def __init__(self, url: str, address: str) -> None:
        self.http = httpx.Client(
            base_url=url,
            follow_redirects=False,
            timeout=120,
            transport=httpx.HTTPTransport(local_address=address),
        )

    def form(self) -> str:
        page = self.http.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token, page.text[:300]
        return token.group(1)

    def post_login(self, csrf: str, name: str, pw: str) -> httpx.Response:
        return self.http.post(
            "/login", data={"username": name, "password": pw, "csrf": csrf, "next": "/"}
        )

    def login(self, name: str, pw: str = PW) -> httpx.Response:
        return self.post_login(self.form(), name, pw)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def enc_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncProcess]:
    e = EncProcess(tmp_path_factory.mktemp("enc-logins"), extra_toml=DASHBOARD_TOML)
    add_operators(e, ("lena", "operator"), ("sue", "supervisor"))
    e.start()
    yield e
    e.stop()
    assert "Traceback" not in e.log.read_text()


def _audit(e: EncProcess, action: str) -> list[dict[str, object]]:
    engine = create_engine(f"sqlite:///{e.workdir / 'data' / 'enc.sqlite3'}")
    try:
        with engine.begin() as c:
            rows = c.execute(
                select(AuditRow.actor, AuditRow.detail).where(AuditRow.action == action)
            ).all()
    finally:
        engine.dispose()
    return [{"actor": a, **json.loads(d)} for a, d in rows]


def test_a_login_flood_does_not_hold_up_alert_intake(enc_process: EncProcess) -> None:
    """48 anonymous logins at once, each from its own address (no back-off applies, and
    every one costs a real argon2id check), and five N1s sent into the flood. Before: the
    password checks ran inside the database's write lock and on the threads that store
    alerts, so each N1 waited behind a queue of them. Now no N1 waits for more than two
    password checks to finish."""
    e = enc_process
    flood = [Browser(e.url, f"127.0.1.{i + 1}") for i in range(48)]
    log: list[tuple[str, int]] = []
    lock = threading.Lock()
    go = threading.Barrier(len(flood) + 1)

    def attempt(i: int, b: Browser) -> None:
        csrf = b.form()
        go.wait(timeout=60)
        status = b.post_login(csrf, f"nobody-{i}", "guess guess guess").status_code
        with lock:
            log.append(("login", status))

    threads = [
        threading.Thread(target=attempt, args=(i, b), daemon=True) for i, b in enumerate(flood)
    ]
    for t in threads:
        t.start()
    notifier = e.notifier()
    try:
        go.wait(timeout=60)
        time.sleep(0.3)  # the flood is at the door
        waited: list[int] = []
        for _ in range(5):
            with lock:
                before = sum(1 for kind, code in log if kind == "login" and code == 401)
            assert e.post(make_n1(notifier, new_id())).status_code == 200
            with lock:
                after = sum(1 for kind, code in log if kind == "login" and code == 401)
            waited.append(after - before)
        for t in threads:
            t.join(timeout=180)
        statuses = [code for _, code in log]
        assert len(statuses) == 48
        assert set(statuses) <= {401, 429}
        assert statuses.count(401) >= 10, statuses  # the checks did run meanwhile
        assert max(waited) <= 2, waited
    finally:
        for b in flood:
            b.close()


def test_guessing_slows_the_attacker_and_never_locks_the_operator_out(
    enc_process: EncProcess,
) -> None:
    """Before: five (here three) wrong guesses locked the account for minutes, and the
    right password was refused. Now the guessing address and the account back off, the
    operator gets in after a short wait, and from then on is not held up at all."""
    e = enc_process
    attacker, lena = Browser(e.url, "127.0.2.1"), Browser(e.url, "127.0.2.2")
    try:
        for _ in range(4):  # three free failures, the fourth starts the back-off
            assert attacker.login("lena", "wrong password!").status_code == 401
        r = attacker.login("lena", "wrong password!")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        first = lena.login("lena")
        if first.status_code == 429:  # the account's back-off: short, and said so
            wait = int(first.headers["Retry-After"])
            assert 1 <= wait <= 30
            time.sleep(wait)
            first = lena.login("lena")
        assert first.status_code == 303, first.text[:300]
        # The attacker keeps going, waiting each time as told: the waits grow.
        waits = []
        for _ in range(3):
            r = attacker.login("lena", "wrong password!")
            if r.status_code == 429:
                waits.append(int(r.headers["Retry-After"]))
                time.sleep(waits[-1])
                r = attacker.login("lena", "wrong password!")
            assert r.status_code == 401
        assert waits == sorted(waits) and waits[-1] >= 2, waits
        # The account is backing off again, but not for the address lena logs in from.
        again = Browser(e.url, "127.0.2.2")
        try:
            assert again.login("lena").status_code == 303
        finally:
            again.close()
    finally:
        attacker.close()
        lena.close()


def test_failed_logins_are_summarised_in_the_audit(enc_process: EncProcess) -> None:
    """60 failures from one address (unknown names and wrong passwords for an operator):
    a couple of audit rows with counts, not 60 rows that push everything else out of the
    supervisor's view; the operator's next login says how many failures came before."""
    e = enc_process
    b = Browser(e.url, "127.0.3.1")
    try:
        for i in range(30):
            assert b.login(f"nobody-{i}", "guess guess guess").status_code in (401, 429)
            assert b.login("lena", "guess guess guess").status_code in (401, 429)
        rows = _audit(e, "login_failed")
        assert 1 <= len(rows) <= 4, rows
        assert all(r["peer"] == "127.0.3.1" and int(r["count"]) >= 1 for r in rows)  # type: ignore[call-overload]
    finally:
        b.close()
    ok = Browser(e.url, "127.0.3.2")
    try:
        assert ok.login("sue").status_code == 303
    finally:
        ok.close()
    assert len(_audit(e, "login")) == 1
