"""The whole way, seen from the operator's chair: a simulated device reports over a real
Mosquitto to the real trusted server (``citywatch server run``), the server forwards the
alert to ``citywatch enc run``, and an operator in headless Chromium sees it arrive
without reloading, opens it and dispatches help."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as p
from citywatch._footage import fall_photo
from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, login, shot
from tests.integration.test_enc_dashboard import add_operators
from tests.integration.test_enc_endpoint import EncProcess
from tests.support.services import Broker, free_port

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
harness = pytest.importorskip(
    "tests.integration.server_harness", reason="the trusted server's test harness is not there"
)
simdevice = pytest.importorskip("citywatch._simdevice", reason="the simulated device is not there")

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")


@pytest.fixture
def stack(tmp_path: Path, broker: Broker) -> Iterator[tuple[object, EncProcess, object]]:
    enc_port = free_port()
    setup = harness.make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{enc_port}")
    enc = EncProcess(
        tmp_path / "enc", port=enc_port, key=setup.enc_key, server_kid=setup.server_kid
    )
    add_operators(enc, ("olga", "operator"))
    bundle = setup.add_device("pole-7", "old-town")
    enc.start()
    server = harness.ServerProcess(setup)
    server.start()
    try:
        yield setup, enc, bundle
    finally:
        server.stop()
        enc.stop()
    assert "Traceback" not in enc.log.read_text()


@pytest.mark.slow  # broker, server, ENC and a browser: ~10-20 s
def test_alert_forwarded_by_the_real_server_arrives_live(stack) -> None:  # type: ignore[no-untyped-def]
    setup, enc, bundle = stack
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (scripts/setup.sh installs Debian's chromium)")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        login(page, enc.url, "olga")
        page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        loaded_at = page.evaluate("window.cw.loadedAt")

        # The device's side runs in its own thread and event loop (Playwright's sync API
        # owns this one).
        delivered: list[str] = []
        failure: list[BaseException] = []

        async def device() -> None:
            async with simdevice.SimulatedDevice(bundle) as d:
                code, out = await asyncio.to_thread(
                    setup.cli,
                    "window",
                    "open",
                    "--zone",
                    "old-town",
                    "--until",
                    "2099-01-01T00:00Z",
                )
                assert code == 0, out
                await d.wait_for_window(timeout=15)
                r = await d.report(fall_photo(), HERE, 0.94, "person_down", timeout=30)
                delivered.append(r.incident_id)

        def run() -> None:
            try:
                asyncio.run(device())
            except BaseException as exc:  # handed to the test's thread
                failure.append(exc)

        t = threading.Thread(target=run)
        t.start()
        t.join(60)
        assert not t.is_alive() and not failure, failure
        [incident_id] = delivered

        row = page.wait_for_selector(f"tr[data-incident='{incident_id}']", timeout=30_000)
        assert page.evaluate("window.cw.loadedAt") == loaded_at  # no reload
        assert "new" in page.evaluate("window.cw.cues")
        shot(page, "full-flow-list.png")
        row.click()
        page.wait_for_selector("#alert", timeout=WAIT_MS)
        assert page.text_content("#device") == "pole-7"
        page.fill("#unit", "Ambulance 3")
        page.click("#btn-dispatch")
        page.wait_for_selector("#status:text('dispatched')", timeout=WAIT_MS)
        actions = [
            r.get_attribute("data-action") for r in page.query_selector_all("#trail tbody tr")
        ]
        assert actions[0] == "received" and actions[-1] == "dispatched"
        shot(page, "full-flow-alert.png", full_page=True)
        browser.close()
