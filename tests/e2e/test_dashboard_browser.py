"""The operators' dashboard in a real headless Chromium (Debian's package, driven by
Playwright), against ``citywatch enc run`` fed real N1 messages over HTTP.

Screenshots of the list and of an alert are written to ``artifacts/dashboard/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update

from enc._schema import SessionRow
from tests.integration.test_enc_dashboard import PW, add_operators
from tests.integration.test_enc_endpoint import EncProcess, make_n1, new_id

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = "/usr/bin/chromium"
# Nothing leaves the machine: no updates, no sync, no QUIC probing.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
WAIT_MS = 15_000  # an upper bound for the page to react, not a measurement


@pytest.fixture(scope="module")
def enc_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncProcess]:
    e = EncProcess(
        tmp_path_factory.mktemp("e2e"), extra_toml='[cap]\nsender = "enc.e2e@city.invalid"\n'
    )
    add_operators(e, ("olga", "operator"), ("oscar", "operator"), ("sue", "supervisor"))
    e.start()
    yield e
    e.stop()
    assert "Traceback" not in e.log.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (scripts/setup.sh installs Debian's chromium)")
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    ctx = browser.new_context(viewport={"width": 1366, "height": 768})  # type: ignore[attr-defined]
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    external: list[str] = []
    p.on(
        "request",
        lambda r: (
            external.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:")) else None
        ),
    )
    yield p
    ctx.close()
    assert errors == [], errors  # no script errors on any page
    assert external == [], external  # nothing fetched from elsewhere


def login(page: object, base: str, name: str, password: str = PW) -> None:
    page.goto(base + "/")  # type: ignore[attr-defined]
    page.fill("#username", name)  # type: ignore[attr-defined]
    page.fill("#password", password)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]


def shot(page: object, name: str, **kw: object) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), **kw)  # type: ignore[attr-defined]


def test_alert_arrives_live_is_opened_and_dispatched(enc_proc: EncProcess, page) -> None:  # type: ignore[no-untyped-def]
    login(page, enc_proc.url, "olga")
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    loaded_at = page.evaluate("window.cw.loadedAt")
    unhandled = int(page.text_content("#count-unhandled"))

    inc = new_id()
    assert (
        enc_proc.post(
            make_n1(enc_proc.notifier(), inc, device="pole-e2e-1", score=0.93)
        ).status_code
        == 200
    )
    row = page.wait_for_selector(f"tr[data-incident='{inc}']", timeout=WAIT_MS)
    # It came without a reload, with the visual and the sound cue.
    assert page.evaluate("window.cw.loadedAt") == loaded_at
    assert "arrived" in row.get_attribute("class")
    assert "new" in page.evaluate("window.cw.cues")
    assert int(page.text_content("#count-unhandled")) == unhandled + 1
    assert page.eval_on_selector("tbody tr", "r => r.dataset.incident") == inc  # newest first
    age = row.query_selector("td.age")
    first = age.text_content()
    page.wait_for_function(
        "([sel, first]) => document.querySelector(sel).textContent !== first",
        arg=[f"tr[data-incident='{inc}'] td.age", first],
        timeout=WAIT_MS,
    )  # the age ticks
    shot(page, "list-1366x768.png")

    row.click()
    page.wait_for_selector("#alert", timeout=WAIT_MS)
    assert page.text_content("#device") == "pole-e2e-1"
    assert page.text_content("#confidence") == "93%"
    assert page.text_content("#coords") == "52.229700, 21.012200"
    assert page.get_attribute("#geo-link", "href") == "geo:52.229700,21.012200;u=4"
    assert page.evaluate("document.getElementById('photo').naturalWidth") == 160
    shot(page, "alert-1366x768.png")
    page.keyboard.press("p")  # full size
    page.wait_for_selector("#photo-full[open]", timeout=WAIT_MS)
    page.wait_for_function(
        "() => document.getElementById('photo-full-img').naturalWidth > 0", timeout=WAIT_MS
    )
    page.keyboard.press("Escape")
    page.wait_for_selector("#photo-full", state="hidden", timeout=WAIT_MS)

    page.click("#btn-acknowledge")
    page.wait_for_selector("#status:text('acknowledged')", timeout=WAIT_MS)
    page.fill("#unit", "Ambulance 12")
    page.fill("#comment", "patient on the ground, conscious")
    page.click("#btn-dispatch")
    page.wait_for_selector("#status:text('dispatched')", timeout=WAIT_MS)
    trail = [
        (
            r.query_selector(".actor").text_content(),
            r.get_attribute("data-action"),
            r.query_selector(".detail").text_content(),
        )
        for r in page.query_selector_all("#trail tbody tr")
    ]
    actions = [(who, what) for who, what, _ in trail]
    assert actions[0] == ("server:5e5e5e5e00000001", "received")
    assert ("olga", "photo_viewed") in actions
    decisions = [t for t in trail if t[1] != "photo_viewed"]
    assert [(who, what) for who, what, _ in decisions[-2:]] == [
        ("olga", "acknowledged"),
        ("olga", "dispatched"),
    ]
    assert "Ambulance 12" in decisions[-1][2] and "conscious" in decisions[-1][2]
    shot(page, "alert-dispatched.png", full_page=True)


def test_alert_is_dismissed_as_false_alarm_with_the_keyboard(enc_proc: EncProcess, page) -> None:  # type: ignore[no-untyped-def]
    login(page, enc_proc.url, "oscar")
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    inc = new_id()
    assert (
        enc_proc.post(
            make_n1(enc_proc.notifier(), inc, label="fight", device="pole-e2e-2")
        ).status_code
        == 200
    )
    page.wait_for_selector(f"tr[data-incident='{inc}']", timeout=WAIT_MS)
    page.keyboard.press("j")
    assert page.eval_on_selector("tr.selected", "r => r.dataset.incident") == inc
    page.keyboard.press("Enter")
    page.wait_for_selector("#alert", timeout=WAIT_MS)
    page.keyboard.press("f")
    assert page.evaluate("document.activeElement.id") == "dismiss-reason"
    page.keyboard.type("two people hugging at the bus stop")
    page.keyboard.press("Enter")
    page.wait_for_selector("#status:text('dismissed')", timeout=WAIT_MS)
    last = page.query_selector_all("#trail tbody tr:not([data-action='photo_viewed'])")[-1]
    assert last.get_attribute("data-action") == "dismissed"
    assert last.query_selector(".actor").text_content() == "oscar"
    assert "hugging" in last.query_selector(".detail").text_content()
    # Its CAP export is now a Cancel that references the original.
    cap = page.request.get(f"{enc_proc.url}/alerts/{inc}/cap.xml")
    assert cap.ok and b"<msgType>Cancel</msgType>" in cap.body()
    assert b"<references>enc.e2e@city.invalid,citywatch." in cap.body()
    # Back on the list it sits below the unhandled ones.
    page.keyboard.press("Escape")
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    row = page.query_selector(f"tr[data-incident='{inc}']")
    assert row.get_attribute("data-status") == "dismissed"


def test_wrong_password_missing_csrf_and_expired_session_are_refused(
    enc_proc: EncProcess, page
) -> None:  # type: ignore[no-untyped-def]
    login(page, enc_proc.url, "sue", "not her password")
    page.wait_for_selector("p.error", timeout=WAIT_MS)
    assert "Wrong name or password" in page.text_content("p.error")
    assert "/login" in page.url and page.query_selector("#alerts") is None

    login(page, enc_proc.url, "sue")
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    inc = new_id()
    assert enc_proc.post(make_n1(enc_proc.notifier(), inc)).status_code == 200
    page.goto(f"{enc_proc.url}/alerts/{inc}")
    # A forged form: the token taken out before it is sent.
    page.evaluate("document.querySelector('#form-acknowledge input[name=csrf]').value = ''")
    page.click("#btn-acknowledge")
    page.wait_for_selector("h1:text('Refused')", timeout=WAIT_MS)
    status = page.request.get(f"{enc_proc.url}/api/alerts/{inc}").json()["alert"]["status"]
    assert status == "new"
    api = page.evaluate(
        """async (inc) => (await fetch(`/api/alerts/${inc}/actions`, {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({action: "acknowledge"})})).status""",
        inc,
    )
    assert api == 403

    # The session ends (as time would end it): the next page is the login page.
    engine = create_engine(f"sqlite:///{enc_proc.workdir / 'data' / 'enc.sqlite3'}")
    with engine.begin() as c:
        c.execute(
            update(SessionRow)
            .where(SessionRow.username == "sue")
            .values(expires_at=time.time_ns() // 1_000_000 - 1)
        )
    engine.dispose()
    page.goto(f"{enc_proc.url}/alerts/{inc}")
    assert "/login" in page.url
    page.goto(f"{enc_proc.url}/")
    assert "/login" in page.url
    assert page.request.get(f"{enc_proc.url}/api/alerts").status == 401


def test_wall_display_and_help(enc_proc: EncProcess, browser) -> None:  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 2560, "height": 1440})
    p = ctx.new_page()
    try:
        login(p, enc_proc.url, "olga")
        p.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        p.goto(f"{enc_proc.url}/?wall=1")
        p.wait_for_selector("body.wall[data-ready='1']", timeout=WAIT_MS)
        size = p.evaluate("parseFloat(getComputedStyle(document.querySelector('td.age')).fontSize)")
        assert size >= 30  # readable across the room
        shot(p, "list-wall-2560x1440.png")
        p.keyboard.press("?")
        p.wait_for_selector("#help[open]", timeout=WAIT_MS)
        assert "dismiss as a false alarm" in p.text_content("#help")
    finally:
        ctx.close()
