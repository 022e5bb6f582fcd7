"""A report the real server fuses into an alert is never hidden from the ENC: it goes as an
N3 linked report once the ENC has the alert (``citywatch enc run`` shows a fight fused
into a fall with both labels and a raised priority), and, to an ENC that does not know
N3 (it answers 404), as an N1 alert of its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import protocol as p
from citywatch._footage import fall_photo
from citywatch._simdevice import SimulatedDevice
from tests.integration.server_harness import EncStub, ServerProcess, make_server, wait_until
from tests.integration.test_enc_dashboard import Operator, add_operators
from tests.integration.test_enc_endpoint import EncProcess
from tests.support.services import Broker, free_port

pytestmark = pytest.mark.slow

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")
FOREVER = {"until": "2099-01-01T00:00:00Z"}


def _fall_then_fight(server: ServerProcess, bundles: list[p.ProvisioningBundle]) -> tuple[str, str]:
    """Two poles at one place: a person down, then a fight there a few seconds later."""
    server.api("POST", "/v1/windows/z/open", json=FOREVER)

    async def run() -> tuple[str, str]:
        async with SimulatedDevice(bundles[0]) as a, SimulatedDevice(bundles[1]) as b:
            await a.wait_for_window(timeout=15)
            await b.wait_for_window(timeout=15)
            first = await a.report(fall_photo(), HERE, 0.9, "person_down", timeout=30)
            await asyncio.sleep(1.0)
            second = await b.report(fall_photo(), HERE, 0.9, "fight", timeout=30)
            return first.incident_id, second.incident_id

    return asyncio.run(run())


def test_a_fused_fight_reaches_the_real_enc_with_its_alert(tmp_path: Path, broker: Broker) -> None:
    enc_port = free_port()
    setup = make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{enc_port}")
    enc = EncProcess(
        tmp_path / "enc", port=enc_port, key=setup.enc_key, server_kid=setup.server_kid
    )
    add_operators(enc, ("olga", "operator"))
    bundles = [setup.add_device(f"pole-{i}", "z") for i in range(2)]
    enc.start()
    server = ServerProcess(setup).start()
    try:
        first, second = _fall_then_fight(server, bundles)
        wait_until(
            lambda: server.api("GET", f"/v1/incidents/{second}").json()["enc_state"] == "delivered",
            timeout=30,
            what="the linked report at the ENC",
        )
        info = server.api("GET", f"/v1/incidents/{second}").json()
        assert info["fused_into"] == first and info["decision"] == "dangerous"
        olga = Operator(enc.url)
        olga.login("olga")
        got = olga.http.get(f"/api/alerts/{first}")
        assert got.status_code == 200, got.text
        alert = got.json()["alert"]
        assert (alert["priority"], alert["label_text"]) == (1, "Person down + Fight")
        linked = [x for x in got.json()["audit"] if x["action"] == "report_linked"]
        assert [x["detail"]["report"] for x in linked] == [second]
        # One alert at the ENC, not two.
        assert olga.http.get(f"/api/alerts/{second}").status_code == 404
    finally:
        server.stop()
        enc.stop()
    assert "Traceback" not in enc.log.read_text()


def test_an_enc_without_linked_reports_gets_the_fused_report_as_an_alert(
    tmp_path: Path, broker: Broker
) -> None:
    enc_port = free_port()
    setup = make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{enc_port}")
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=enc_port).start()
    bundles = [setup.add_device(f"pole-{i}", "z") for i in range(2)]
    server = ServerProcess(setup).start()
    try:
        first, second = _fall_then_fight(server, bundles)
        wait_until(
            lambda: set(enc.stored) == {first, second},
            timeout=30,
            what="both reports at an ENC that knows only N1",
        )
        assert enc.alerts[second].label == "fight"
        assert server.api("GET", f"/v1/incidents/{second}").json()["fused_into"] == first
    finally:
        server.stop()
        enc.stop()
