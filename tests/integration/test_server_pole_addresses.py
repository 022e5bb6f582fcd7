"""A pole's street address, set with ``citywatch server device add --address`` or
``device set-address``, reaches the real ENC (an N4, docs/protocol.md) and is shown with
that pole's alerts, changed and removed while both run; an ENC that knows only protocol
v1 (``/v1/poles`` answers 404) still gets every alert, and the real ENC shows an alert
of a pole without an address as having none."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import protocol as p
from citywatch._footage import fall_photo
from citywatch._simdevice import SimulatedDevice
from tests.integration.server_harness import (
    EncStub,
    ServerProcess,
    ServerSetup,
    make_server,
    wait_until,
)
from tests.integration.test_enc_dashboard import Operator, add_operators
from tests.integration.test_enc_endpoint import EncProcess
from tests.support.services import Broker, free_port

pytestmark = pytest.mark.slow

FOREVER = {"until": "2099-01-01T00:00:00Z"}
MARSZALKOWSKA = "ul. Marszałkowska 104, 00-017 Warszawa"


def _add(setup: ServerSetup, uid: str, *extra: str) -> p.ProvisioningBundle:
    import json

    out = setup.dir / f"{uid}.json"
    code, text = setup.cli(
        "device",
        "add",
        "--uid",
        uid,
        "--zone",
        "z",
        "--lat",
        "52.2297",
        "--lon",
        "21.0122",
        "--bundle-out",
        str(out),
        *extra,
    )
    assert code == 0, text
    return p.ProvisioningBundle.parse(json.loads(out.read_text()))


def _report(server: ServerProcess, bundle: p.ProvisioningBundle, *, far: float = 0.0) -> str:
    """One person down reported by the pole; its incident id."""
    server.api("POST", "/v1/windows/z/open", json=FOREVER)
    # Poles far enough apart that the server does not fuse their reports.
    here = p.Coords(lat=52.2297 + far, lon=21.0122, alt=None, acc=3.0, src="gps")

    async def run() -> str:
        async with SimulatedDevice(bundle) as d:
            await d.wait_for_window(timeout=15)
            r = await d.report(fall_photo(), here, 0.9, "person_down", timeout=30)
            return r.incident_id

    return asyncio.run(run())


def test_the_address_reaches_the_real_enc_and_follows_changes(
    tmp_path: Path, broker: Broker
) -> None:
    enc_port = free_port()
    setup = make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{enc_port}")
    enc = EncProcess(
        tmp_path / "enc", port=enc_port, key=setup.enc_key, server_kid=setup.server_kid
    )
    add_operators(enc, ("olga", "operator"))
    with_address = _add(setup, "pole-a", "--address", "  ul. Marszałkowska 104,\t00-017 Warszawa ")
    without = _add(setup, "pole-b")
    # Refused with a clear message, nothing changed.
    code, text = setup.cli("device", "set-address", "pole-a", "line one\nline two")
    assert code != 0 and "control characters" in text
    code, text = setup.cli("device", "set-address", "pole-x", "Plac Zamkowy 1")
    assert code != 0 and "no device with UID 'pole-x'" in text
    code, text = setup.cli("device", "list")
    assert code == 0 and MARSZALKOWSKA in text, text  # white space collapsed
    enc.start()
    server = ServerProcess(setup).start()
    try:
        inc = _report(server, with_address)
        other = _report(server, without, far=0.05)
        olga = Operator(enc.url)
        olga.login("olga")

        def address(i: str) -> object:
            r = olga.http.get(f"/api/alerts/{i}")
            return r.json()["alert"]["address"] if r.status_code == 200 else "absent"

        wait_until(lambda: address(inc) == MARSZALKOWSKA, timeout=30, what="the address")
        wait_until(lambda: address(other) is None, timeout=30, what="the other alert")
        page = olga.http.get(f"/alerts/{inc}").text
        assert MARSZALKOWSKA in page
        assert "no address registered" in olga.http.get(f"/alerts/{other}").text
        listing = olga.http.get("/").text
        assert f'<span class="address">{MARSZALKOWSKA}</span>' in listing
        # CAP and EIDO say where in words.
        ns = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
        cap = ET.fromstring(olga.http.get(f"/alerts/{inc}/cap.xml").content)
        assert cap.findtext("cap:info/cap:area/cap:areaDesc", namespaces=ns) == (
            f"{MARSZALKOWSKA} (within 50 m of street-pole device pole-a)"
        )
        eido = olga.http.get(f"/alerts/{inc}/eido.json").json()
        assert eido["locationComponent"][0]["civicAddressText"] == MARSZALKOWSKA
        cap = ET.fromstring(olga.http.get(f"/alerts/{other}/cap.xml").content)
        assert cap.findtext("cap:info/cap:area/cap:areaDesc", namespaces=ns) == (
            "Within 50 m of street-pole device pole-b"
        )
        assert (
            "civicAddressText"
            not in olga.http.get(f"/alerts/{other}/eido.json").json()["locationComponent"][0]
        )

        # Changed while both run: the ENC follows; then removed.
        code, text = setup.cli("device", "set-address", "pole-a", "Plac Zamkowy 1")
        assert code == 0 and "address Plac Zamkowy 1" in text, text
        wait_until(lambda: address(inc) == "Plac Zamkowy 1", timeout=30, what="the new address")
        code, text = setup.cli("device", "set-address", "pole-a", "")
        assert code == 0 and "no address" in text, text
        wait_until(lambda: address(inc) is None, timeout=30, what="the address removed")
        assert "no address registered" in olga.http.get(f"/alerts/{inc}").text
        audit = server.api("GET", "/v1/devices/pole-a").json()
        assert audit["address"] is None
    finally:
        server.stop()
        enc.stop()
    assert "Traceback" not in enc.log.read_text()
    assert "Traceback" not in server.log.read_text()


def test_an_enc_without_addresses_still_gets_every_alert(tmp_path: Path, broker: Broker) -> None:
    enc_port = free_port()
    setup = make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{enc_port}")
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=enc_port).start()
    bundle = _add(setup, "pole-a", "--address", MARSZALKOWSKA)
    server = ServerProcess(setup).start()
    try:
        inc = _report(server, bundle)
        wait_until(lambda: inc in enc.stored, timeout=30, what="the alert at an N1-only ENC")
        wait_until(
            lambda: "does not know pole addresses" in server.log.read_text(),
            timeout=30,
            what="the server noticing the ENC has no N4",
        )
        assert enc.alerts[inc].device_uid == "pole-a"
    finally:
        server.stop()
        enc.stop()
    assert "Traceback" not in server.log.read_text()
