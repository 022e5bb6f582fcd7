"""Working alerts at the ENC console in a real headless Chromium, several operators at
once: on hold and resumed, notes at any time, assigned to a colleague and released,
closed with a resolution code; the list and the audit trail filtered by status, label,
zone, time and words, live; refusals said on screen. Against ``citywatch enc run`` fed
real N1 messages."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.e2e import test_dashboard_shift as shift
from tests.e2e.test_dashboard_browser import WAIT_MS, shot
from tests.e2e.test_dashboard_shift import Desk, _enc, api, post, rows
from tests.integration.test_enc_endpoint import EncProcess

playwright, browser, desks = shift.playwright, shift.browser, shift.desks  # fixtures

ZONES = """
[dashboard]
time_zone = "Europe/Warsaw"
[dashboard.zones]
"Centre" = [52.22, 21.00, 52.24, 21.02]
"Praga" = [52.245, 21.03, 52.26, 21.06]
"""
CENTRE = {"lat": 52.2297, "lon": 21.0122}
PRAGA = {"lat": 52.2500, "lon": 21.0450}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncProcess]:
    yield from _enc(tmp_path_factory, "work", ZONES)


def _trail(page: object) -> str:
    return page.text_content("#trail") or ""  # type: ignore[attr-defined]


def test_hold_note_assign_resume_close_with_three_operators(
    work: EncProcess, browser: object, desks: list[Desk]
) -> None:
    inc = post(work, label="fight", score=0.9, device="pole-h1", **CENTRE)
    olga, oscar = Desk(browser, work, "olga"), Desk(browser, work, "oscar")
    desks += [olga, oscar]
    p = olga.open(f"/alerts/{inc}")
    p.click("#btn-acknowledge")
    p.wait_for_selector("#status:text('Acknowledged')", timeout=WAIT_MS)
    p.click("#more-actions summary")
    p.click("#btn-hold")  # no reason: the browser asks for one
    assert p.evaluate("document.getElementById('hold-reason').validity.valueMissing")
    p.fill("#hold-reason", "calling the caller back")
    p.click("#btn-hold")
    p.wait_for_selector("#status:text('On hold')", timeout=WAIT_MS)
    assert "calling the caller back" in p.text_content("#hold-notice")

    # A colleague sees it is olga's: no form that would be refused, but a note is welcome.
    q = oscar.open(f"/alerts/{inc}")
    assert "olga has taken this alert" in q.text_content("#taken-notice")
    for form in (
        "#form-dispatch",
        "#form-dismiss",
        "#form-hold",
        "#form-resume",
        "#form-close",
        "#form-assign",
        "#form-release",
        "#form-reopen",
    ):
        assert q.query_selector(form) is None, form
    q.fill("#note-text", "a passer-by says two men are still there")
    q.click("#btn-note")
    q.wait_for_selector("#trail .action:text('Note')", timeout=WAIT_MS)
    # olga's page, idle, shows the note without her doing anything.
    p.wait_for_function(
        "() => document.getElementById('trail').textContent.includes('two men are still there')",
        timeout=WAIT_MS,
    )
    shot(p, "work-on-hold-with-a-note.png")

    # olga gives it to oscar; his page turns into one he can act on.
    p = olga.open(f"/alerts/{inc}")
    p.select_option("#assignee", "oscar")
    p.click("#btn-assign")
    p.wait_for_selector("#taken-notice", timeout=WAIT_MS)
    assert "oscar has taken this alert" in p.text_content("#taken-notice")
    q.wait_for_selector("#form-resume", timeout=WAIT_MS)
    assert re.search(r"Assigned\s*From olga; To oscar", _trail(q))
    q.click("#btn-resume")
    q.wait_for_selector("#status:text('Acknowledged')", timeout=WAIT_MS)
    q.click("#more-actions summary")
    q.select_option("#resolution-code", "other")
    q.click("#btn-close")  # "other" without a comment: refused, and said why
    q.wait_for_selector("#message", timeout=WAIT_MS)
    assert "say in the comment how it was resolved" in q.text_content("#message")
    q.click("#more-actions summary")
    q.select_option("#resolution-code", "resolved_on_site")
    q.fill("#close-comment", "they had left; nobody hurt")
    q.click("#btn-close")
    q.wait_for_selector("#status:text('Closed')", timeout=WAIT_MS)
    assert "Resolved on site, no help needed (they had left; nobody hurt)" in q.text_content(
        "#resolution"
    )
    assert "Only a supervisor can reopen it" in q.text_content("#closed-notice")
    shot(q, "work-closed.png")
    c = api(work, "sue")
    trail = [(e["action"], e["actor"]) for e in c.get(f"/api/alerts/{inc}").json()["audit"]]
    assert [t for t in trail if t[0] != "photo_viewed"][1:] == [
        ("acknowledged", "olga"),
        ("put_on_hold", "olga"),
        ("note", "oscar"),
        ("assigned", "olga"),
        ("resumed", "oscar"),
        ("closed", "oscar"),
    ]

    # Release: back to new for anyone, and announced as such.
    other = post(work, label="person_down", score=0.9, device="pole-h2", **CENTRE)
    p = olga.open(f"/alerts/{other}")
    p.click("#btn-acknowledge")
    p.wait_for_selector("#status:text('Acknowledged')", timeout=WAIT_MS)
    p.click("#more-actions summary")
    p.click("#btn-release")
    p.wait_for_selector("#status:text('New')", timeout=WAIT_MS)
    assert p.query_selector("#form-acknowledge") is not None


def test_a_supervisor_confirms_before_acting_on_a_colleagues_alert(
    work: EncProcess, browser: object, desks: list[Desk]
) -> None:
    inc = post(work, label="fight", score=0.9, device="pole-s1", **CENTRE)
    olga_http = api(work, "olga")
    olga_http.post(f"/api/alerts/{inc}/actions", json={"action": "hold", "reason": "wait"})
    sue = Desk(browser, work, "sue")
    desks.append(sue)
    p = sue.open(f"/alerts/{inc}")
    assert "olga is working on this alert" in p.text_content("#takeover-warning")
    p.select_option("#assignee", "oscar")
    p.click("#btn-assign")  # not confirmed: the browser keeps it
    assert p.evaluate("document.querySelector('#form-assign input.takeover').validity.valueMissing")
    # Forged past the browser: refused by the ENC, and said on the page.
    p.evaluate("document.querySelectorAll('input.takeover').forEach(i => i.remove())")
    p.click("#btn-assign")
    p.wait_for_selector("#message", timeout=WAIT_MS)
    assert 'tick "Take over from olga"' in p.text_content("#message")
    assert olga_http.get(f"/api/alerts/{inc}").json()["alert"]["taken_by"] == "olga"
    p.select_option("#assignee", "oscar")
    p.check("#form-assign input.takeover")
    p.click("#btn-assign")
    p.wait_for_selector("#taken-by:text('oscar')", timeout=WAIT_MS)
    assert olga_http.get(f"/api/alerts/{inc}").json()["alert"]["status"] == "on_hold"


def test_the_list_and_the_audit_filtered_live(
    work: EncProcess, browser: object, desks: list[Desk]
) -> None:
    fight_centre = post(work, label="fight", score=0.9, device="pole-f1", **CENTRE)
    down_praga = post(work, label="person_down", score=0.9, device="pole-f2", **PRAGA)
    fall_centre = post(work, label="fall", score=0.9, device="pole-f3", **CENTRE)
    olga_http = api(work, "olga")
    olga_http.post(f"/api/alerts/{down_praga}/actions", json={"action": "acknowledge"})
    olga_http.post(
        f"/api/alerts/{down_praga}/actions",
        json={"action": "note", "comment": "neighbour is with him"},
    )
    sue = Desk(browser, work, "sue")
    desks.append(sue)
    p = sue.open("/")
    # Zones named on the list.
    assert p.text_content(f"tr[data-incident='{down_praga}'] .zone") == "Praga"
    # By zone, through the form.
    p.select_option("#filter-zone", "Praga")
    p.click("#filter-apply")
    p.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    assert "zone=Praga" in p.url
    assert down_praga in rows(p) and fight_centre not in rows(p)
    assert all(p.eval_on_selector_all("#alerts tbody .zone", "zs => zs.map(z => z.textContent)"))
    # Live: a new alert elsewhere stays out, one in Praga comes in.
    elsewhere = post(work, label="fight", score=0.9, device="pole-f4", **CENTRE)
    inside = post(work, label="fight", score=0.9, device="pole-f5", **PRAGA)
    p.wait_for_selector(f"tr[data-incident='{inside}']", timeout=WAIT_MS)
    assert elsewhere not in rows(p)
    shot(p, "work-list-filtered.png")
    # ... and one that leaves the filter's status leaves the list.
    p = sue.open("/?status=new&zone=Praga")
    assert inside in rows(p) and down_praga not in rows(p)
    olga_http.post(f"/api/alerts/{inside}/actions", json={"action": "acknowledge"})
    p.wait_for_function(
        f"() => !document.querySelector(\"tr[data-incident='{inside}']\")", timeout=WAIT_MS
    )
    # Label, words, time range (typed in the ENC's zone).
    p = sue.open("/?label=fall")
    assert fall_centre in rows(p) and fight_centre not in rows(p)
    p = sue.open("/")
    p.fill("#filter-q", "POLE-F3")
    p.click("#filter-apply")
    p.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    assert rows(p) == [fall_centre]
    p = sue.open("/?from=2000-01-01T00:00&to=2000-01-02T00:00")
    assert rows(p) == []
    assert "No alert matches the filter" in p.text_content("#empty")
    p = sue.open("/?to=yesterday&zone=Atlantis")
    assert "There is no zone 'atlantis'" in p.text_content("#filters").replace(
        "Atlantis", "atlantis"
    )
    # The JSON API filters the same way, and says what it could not read.
    c = api(work, "sue")
    got = c.get("/api/alerts", params={"zone": "Praga", "label": "person_down"}).json()
    assert [a["incident_id"] for a in got["alerts"]] == [down_praga]
    assert got["alerts"][0]["zone"] == "Praga"
    bad = c.get("/api/alerts", params={"from": "soon"})
    assert bad.status_code == 400 and "not a date and time" in bad.json()["error"]

    # The audit trail: by action, by zone, by who.
    p = sue.open("/audit?action=note")
    actions = p.eval_on_selector_all("#audit tbody tr", "rs => rs.map(r => r.dataset.action)")
    assert actions and set(actions) == {"note"}
    assert "neighbour is with him" in p.text_content("#audit")
    p = sue.open("/audit")
    p.select_option("#filter-zone", "Praga")
    p.fill("#filter-actor", "olga")
    p.click("#filter-apply")
    p.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    linked = set(
        p.eval_on_selector_all(
            "#audit tbody a", "as => as.map(a => decodeURIComponent(a.pathname.split('/')[2]))"
        )
    )
    assert linked == {down_praga, inside}
    actors = set(
        p.eval_on_selector_all(
            "#audit tbody tr td:nth-child(3)", "ts => ts.map(t => t.textContent)"
        )
    )
    assert actors == {"olga"}
    shot(p, "work-audit-filtered.png")


def test_a_closed_alert_exports_as_a_schema_valid_cap_update(
    work: EncProcess, browser: object, desks: list[Desk]
) -> None:
    import xml.etree.ElementTree as ET

    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is not installed")
    from tests.integration.test_enc_dashboard import SCHEMA_FILE

    ns = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
    inc = post(work, label="person_down", score=0.9, device="pole-x1", **CENTRE)
    c = api(work, "olga")
    for body in (
        {"action": "dispatch", "unit": "Ambulance 4"},
        {"action": "close", "resolution": "help_arrived"},
    ):
        assert c.post(f"/api/alerts/{inc}/actions", json=body).status_code == 200
    xml = c.get(f"/alerts/{inc}/cap.xml").content
    xmlschema.XMLSchema(str(SCHEMA_FILE)).validate(xml)
    root = ET.fromstring(xml)
    assert root.findtext("cap:msgType", namespaces=ns) == "Update"
    assert root.findtext("cap:note", namespaces=ns) == ("Closed (olga): Help arrived and took over")
    assert root.findtext("cap:info/cap:responseType", namespaces=ns) == "AllClear"
    assert len(root.findtext("cap:references", namespaces=ns).split()) == 2
