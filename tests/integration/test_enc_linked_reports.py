"""Linked reports (N3, POST /v1/reports) at a real ``citywatch enc run``: stored with
their alert and answered with an N2 the server's notifier accepts; a report of another
kind raises an open alert's priority and both labels are shown (live, in a real
Chromium); on a handled alert, or for an alert the ENC does not hold, it stands as an
alert of its own; replays and N1s on the wrong endpoint are refused."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import httpx
import pytest

import protocol as p
from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, login, shot
from tests.integration.test_enc_dashboard import Operator, add_operators
from tests.integration.test_enc_endpoint import COSE, EncProcess, jpeg, make_n1, new_id, now_ms

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=4.0, src="gps")


@pytest.fixture(scope="module")
def enc_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncProcess]:
    e = EncProcess(tmp_path_factory.mktemp("linked"))
    add_operators(e, ("olga", "operator"), ("sue", "supervisor"))
    e.start()
    yield e
    e.stop()
    assert "Traceback" not in e.log.read_text()


def n3(
    notifier: p.EncNotifier,
    inc: str,
    rep: str,
    *,
    label: str = "fight",
    score: float = 0.92,
    device: str = "pole-77",
) -> bytes:
    return notifier.linked_report(
        incident_id=inc,
        report_id=rep,
        coords=HERE,
        photo=jpeg((160, 120)),
        score=score,
        label=label,
        captured_at=now_ms() - 1000,
        device_uid=device,
        now=now_ms(),
    )


def send(e: EncProcess, body: bytes) -> httpx.Response:
    return httpx.post(
        e.url + "/v1/reports", content=body, headers={"Content-Type": COSE}, timeout=10
    )


def alert_json(o: Operator, inc: str) -> dict[str, object]:
    r = o.http.get(f"/api/alerts/{inc}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_fight_fused_into_a_fall_raises_it_and_both_are_shown(enc_proc: EncProcess) -> None:
    e = enc_proc
    notifier = e.notifier()
    inc = new_id()
    assert e.post(make_n1(notifier, inc, label="person_down", score=0.9)).status_code == 200
    olga = Operator(e.url)
    olga.login("olga")
    before = alert_json(olga, inc)["alert"]
    assert (before["priority"], before["label_text"]) == (2, "Person down")  # type: ignore[index]
    rep = new_id()
    data = n3(notifier, inc, rep, label="fight")
    r = send(e, data)
    assert r.status_code == 200 and r.headers["content-type"] == COSE
    # The server's notifier takes the N2 as the report's receipt.
    [ok] = notifier.receive(r.content, now_ms())
    assert isinstance(ok, p.AlertConfirmed) and ok.incident_id == rep
    after = alert_json(olga, inc)
    a = after["alert"]
    assert (a["priority"], a["severity"], a["label_text"]) == (  # type: ignore[index]
        1,
        "fight",
        "Person down + Fight",
    )
    linked = [x for x in after["audit"] if x["action"] == "report_linked"]  # type: ignore[union-attr]
    assert [x["detail"]["report"] for x in linked] == [rep]
    # The same N3 again is a replay; a fresh N3 for the same report changes nothing.
    assert send(e, data).status_code == 409
    assert send(e, n3(notifier, inc, rep, label="fight")).status_code == 200
    assert (
        len(
            [
                x
                for x in alert_json(olga, inc)["audit"]  # type: ignore[union-attr]
                if x["action"] == "report_linked"
            ]
        )
        == 1
    )
    # Shown on the alert's page: label, pole, and a blurred preview that is not a view.
    page = olga.http.get(f"/alerts/{inc}").text
    assert "1 more report fused into this alert" in page and "pole-77" in page
    assert olga.http.get(f"/alerts/{inc}/reports/{rep}/photo.jpg?view=preview").status_code == 200
    assert not [
        x
        for x in alert_json(olga, inc)["audit"]  # type: ignore[union-attr]
        if x["action"] == "photo_viewed"
    ]
    assert olga.http.get(f"/alerts/{inc}/reports/{rep}/photo.jpg").status_code == 200
    views = [
        x["detail"]
        for x in alert_json(olga, inc)["audit"]  # type: ignore[union-attr]
        if x["action"] == "photo_viewed"
    ]
    assert views == [{"view": "full", "report": rep}]
    # Recipients hear of it: a CAP Update citing the original, valid against the schema.
    import xml.etree.ElementTree as ET

    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is not installed")
    from tests.integration.test_enc_dashboard import SCHEMA_FILE

    xml = olga.http.get(f"/alerts/{inc}/cap.xml").content
    xmlschema.XMLSchema(str(SCHEMA_FILE)).validate(xml)
    ns = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
    root = ET.fromstring(xml)
    assert root.findtext("cap:msgType", namespaces=ns) == "Update"
    assert root.findtext("cap:note", namespaces=ns) == (
        "Another report fused in: Fight (92%) from street-pole device pole-77; "
        "the priority is raised"
    )
    assert len(root.findtext("cap:references", namespaces=ns).split()) == 1
    # Another alert's report is not reachable through this one.
    assert olga.http.get(f"/alerts/{new_id()}/reports/{rep}/photo.jpg").status_code == 404


def test_same_kind_is_kept_without_raising(enc_proc: EncProcess) -> None:
    e = enc_proc
    inc = new_id()
    assert e.post(make_n1(e.notifier(), inc, label="fall", score=0.9)).status_code == 200
    assert send(e, n3(e.notifier(), inc, new_id(), label="person_down")).status_code == 200
    olga = Operator(e.url)
    olga.login("olga")
    a = alert_json(olga, inc)["alert"]
    assert (a["priority"], a["label_text"]) == (2, "Fall")  # type: ignore[index]
    assert "1 more report fused into this alert" in olga.http.get(f"/alerts/{inc}").text


def test_other_kind_on_a_handled_alert_or_an_unknown_one_stands_alone(enc_proc: EncProcess) -> None:
    e = enc_proc
    inc = new_id()
    assert e.post(make_n1(e.notifier(), inc, label="person_down", score=0.9)).status_code == 200
    olga = Operator(e.url)
    olga.login("olga")
    assert (
        olga.http.post(
            f"/api/alerts/{inc}/actions",
            json={"action": "dismiss", "reason": "got up"},
            headers={"X-CSRF-Token": olga.csrf()},
        ).status_code
        == 200
    )
    rep = new_id()
    assert send(e, n3(e.notifier(), inc, rep, label="fight")).status_code == 200
    own = alert_json(olga, rep)
    assert own["alert"]["status"] == "new" and own["alert"]["priority"] == 1  # type: ignore[index]
    assert own["audit"][0]["detail"]["joins"] == inc  # type: ignore[index]
    assert alert_json(olga, inc)["alert"]["status"] == "dismissed"  # type: ignore[index]
    # An alert this ENC never got: the report is an alert of its own, nothing hidden.
    lost, rep2 = new_id(), new_id()
    assert send(e, n3(e.notifier(), lost, rep2, label="fall")).status_code == 200
    assert alert_json(olga, rep2)["audit"][0]["detail"]["why"] == "unknown"  # type: ignore[index]


def test_wrong_endpoint_wrong_key_and_bad_bodies_are_refused(enc_proc: EncProcess) -> None:
    e = enc_proc
    inc = new_id()
    assert send(e, make_n1(e.notifier(), inc)).status_code == 400  # an N1 is not an N3
    assert e.post(n3(e.notifier(), new_id(), new_id())).status_code == 400  # and vice versa
    stranger = e.notifier(key=secrets.token_bytes(32))
    assert send(e, n3(stranger, inc, new_id())).status_code == 401
    assert (
        httpx.post(
            e.url + "/v1/reports",
            content=b"\x00" * 10,
            headers={"Content-Type": "application/json"},
        ).status_code
        == 415
    )
    assert send(e, b"\xa0garbage").status_code == 400


def test_the_alert_page_shows_a_fused_fight_live(enc_proc: EncProcess) -> None:
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed"
    )
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (scripts/setup.sh installs Debian's chromium)")
    e = enc_proc
    inc = new_id()
    assert (
        e.post(
            make_n1(e.notifier(), inc, label="person_down", score=0.9, device="pole-live")
        ).status_code
        == 200
    )
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            olga = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            sue = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            errors: list[str] = []
            for page, name in ((olga, "olga"), (sue, "sue")):
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                login(page, e.url, name)
                page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
            olga.goto(f"{e.url}/alerts/{inc}")
            olga.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
            assert olga.text_content("#priority") == "P2"
            row = f"#alerts tr[data-incident='{inc}']"
            assert sue.text_content(f"{row} .priority").startswith("P2")
            assert send(e, n3(e.notifier(), inc, new_id(), label="fight")).status_code == 200
            # Olga's open page shows it without her doing anything; so does Sue's list.
            olga.wait_for_selector("#reports li", timeout=WAIT_MS)
            assert olga.text_content("#priority") == "P1"
            assert olga.text_content("#label-words") == "Person down + Fight"
            assert "Fight" in olga.text_content("#reports .report-label")
            sue.wait_for_function(
                f"() => document.querySelector(\"{row} .priority\").textContent.startsWith('P1')",
                timeout=WAIT_MS,
            )
            assert "Person down + Fight" in sue.text_content(f"{row} .what")
            # Sue's notice names the report and the alert it joins, not a "new alert".
            t = sue.wait_for_selector(f".toast.linked[data-incident='{inc}']", timeout=WAIT_MS)
            assert (
                "New report on alert Person down + Fight at pole-live: Fight at pole-77, 92% (P1)"
                in t.text_content()
            )
            assert "New alert" not in t.text_content()
            shot(olga, "linked-report.png")
            assert errors == []
        finally:
            browser.close()
