"""A pole's street address (an N4 to ``POST /v1/poles``, docs/protocol.md) in a real
headless Chromium against ``citywatch enc run``: on the alert page, in the list (also
when a row arrives live), on the wall display and in the map's label; a pole the server
sent no address for says "no address registered". An older or replayed N4 changes
nothing. Screenshots go to ``artifacts/dashboard/``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, shot
from tests.e2e.test_dashboard_shift import Desk, api, post, rows
from tests.integration.test_enc_dashboard import add_operators
from tests.integration.test_enc_endpoint import COSE, EncProcess

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

ADDRESS = "ul. Marszałkowska 104, 00-017 Warszawa"


@pytest.fixture(scope="module")
def enc_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncProcess]:
    e = EncProcess(tmp_path_factory.mktemp("address"))
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


def send_address(e: EncProcess, device: str, address: str, version: int) -> httpx.Response:
    n4 = e.notifier().pole_address(
        device_uid=device, address=address, version=version, now=time.time_ns() // 1_000_000
    )
    return httpx.post(e.url + "/v1/poles", content=n4, headers={"Content-Type": COSE}, timeout=10)


def test_the_address_is_shown_wherever_the_pole_is(enc_proc: EncProcess, browser: object) -> None:
    e = enc_proc
    v = 1_790_000_000_000
    r = send_address(e, "pole-s1", ADDRESS, v)
    assert r.status_code == 200 and r.headers["content-type"] == COSE
    # An older setting arriving late changes nothing (and is still acknowledged).
    assert send_address(e, "pole-s1", "Plac Zamkowy 1", v - 1).status_code == 200
    # Only on its own endpoint, and only once.
    n4 = e.notifier().pole_address(
        device_uid="pole-s1", address=ADDRESS, version=v, now=time.time_ns() // 1_000_000
    )
    assert e.post(n4).status_code == 400  # /v1/alerts takes N1 only
    poles = e.url + "/v1/poles"
    assert httpx.post(poles, content=n4, headers={"Content-Type": COSE}).status_code == 200
    assert httpx.post(poles, content=n4, headers={"Content-Type": COSE}).status_code == 409

    inc = post(e, label="fight", score=0.9, device="pole-s1")
    bare = post(e, label="person_down", score=0.9, device="pole-s2", lat=52.2301, lon=21.0130)
    olga = Desk(browser, e, "olga")
    try:
        p = olga.open(f"/alerts/{inc}")
        assert p.text_content("#address") == ADDRESS
        p.wait_for_selector("#map .leaflet-tooltip", timeout=WAIT_MS)
        assert f"Fight at pole-s1, {ADDRESS}" in p.text_content("#map .leaflet-tooltip")
        shot(p, "address-alert-page.png")
        p = olga.open(f"/alerts/{bare}")
        assert p.text_content("#address") == "no address registered"

        p = olga.open("/")
        row = f"#alerts tr[data-incident='{inc}']"
        assert p.text_content(f"{row} .place .address") == ADDRESS
        assert p.query_selector(f"#alerts tr[data-incident='{bare}'] .place .address") is None
        # A row that arrives live carries it too.
        live = post(e, label="fight", score=0.8, device="pole-s1")
        p.wait_for_selector(f"#alerts tr[data-incident='{live}'] .place .address", timeout=WAIT_MS)
        assert p.text_content(f"#alerts tr[data-incident='{live}'] .place .address") == ADDRESS
        # The search finds the pole's alerts by its street.
        p.fill("#filter-q", "MARSZAŁKOWSKA")
        p.click("#filter-apply")
        p.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        assert sorted(rows(p)) == sorted([inc, live])
    finally:
        olga.close()

    wall = Desk(browser, e, "oscar", size=(1920, 1080))
    try:
        p = wall.open("/?wall=1")
        p.wait_for_selector("#wall-map path.focus", timeout=WAIT_MS)
        assert "P1 Fight at pole-s1" in p.text_content("#wall-title")
        assert p.text_content("#wall-place").startswith(f"{ADDRESS} \u2014 52.2297")
        shot(p, "address-wall.png")
    finally:
        wall.close()
    # A new address reaches open pages without a reload: in place on the alert's page
    # (and its map label), in the list's rows.
    olga, oscar = Desk(browser, e, "olga"), Desk(browser, e, "oscar")
    try:
        page, listing = olga.open(f"/alerts/{inc}"), oscar.open("/")
        page.evaluate("window.cwLoaded = true")  # gone if the page reloads
        assert send_address(e, "pole-s1", "Plac Zamkowy 1", v + 1).status_code == 200
        page.wait_for_function(
            "() => document.getElementById('address').textContent === 'Plac Zamkowy 1'",
            timeout=WAIT_MS,
        )
        assert page.evaluate("window.cwLoaded") is True
        page.wait_for_function(
            "() => document.querySelector('#map .leaflet-tooltip').textContent"
            ".includes('Plac Zamkowy 1')",
            timeout=WAIT_MS,
        )
        for i in (inc, live):
            listing.wait_for_function(
                f"() => (document.querySelector(\"#alerts tr[data-incident='{i}'] .address\")"
                " || {}).textContent === 'Plac Zamkowy 1'",
                timeout=WAIT_MS,
            )
        # Removed: the page says so.
        assert send_address(e, "pole-s1", "", v + 2).status_code == 200
        page.wait_for_function(
            "() => document.getElementById('address').textContent === 'no address registered'",
            timeout=WAIT_MS,
        )
        listing.wait_for_function(
            f"() => !document.querySelector(\"#alerts tr[data-incident='{inc}'] .address\")",
            timeout=WAIT_MS,
        )
    finally:
        olga.close()
        oscar.close()
    # The trail says, in words, once each, that the server sent them.
    trail = api(e, "sue").get("/audit").text
    assert trail.count("Pole address from the server") == 3
    assert f"Address: {ADDRESS}" in trail
