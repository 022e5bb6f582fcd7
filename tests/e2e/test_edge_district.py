"""The edge appliance end to end: real `citywatch edge run` daemons (scene-player
cameras, gpsd through gpsfake, SoftHSM2 tokens), a real broker, server and ENC.

- a pole whose camera sees someone lying still produces exactly one alert at the ENC,
  with the photo and the position from gpsd;
- a pole watching people walk produces none;
- a pole in a zone whose monitoring window never opened produces none, though its
  camera sees someone lying on the ground;
- a camera that stops delivering frames stops feeding the watchdog, and STATUS says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console

from citywatch._poles import EdgePole, find_footage
from citywatch.demo import POLES, ZONE, DemoDistrict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoDistrict]:
    footage = find_footage()
    if footage is None:
        pytest.skip("no footage for the scenes: the shared labelled images are absent")
    layout = [
        (
            ZONE,
            [{"at": 0.0, "play": str(footage.upright)}, {"at": 3.0, "play": str(footage.lying)}],
        ),
        (ZONE, [{"at": 0.0, "play": str(footage.street)}]),
        ("harbour", [{"at": 0.0, "play": str(footage.lying)}]),
    ]
    d = DemoDistrict(
        tmp_path_factory.mktemp("district"),
        console=Console(quiet=True),
        footage=footage,
        layout=layout,
    )
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(d.start())
        yield d
    finally:
        loop.run_until_complete(d.stop())
        loop.close()


def enc_alerts(d: DemoDistrict) -> list[dict[str, Any]]:
    return list(json.loads(d._cli("enc", "alerts", "--json", "--config", str(d.enc_config))))


def test_lying_person_gives_exactly_one_alert_with_photo_and_gps_position(
    district: DemoDistrict,
) -> None:
    down, _street, _closed = district.poles
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not enc_alerts(district):
        assert down.alive(), down.log()[-2000:]
        time.sleep(0.5)
    alerts = enc_alerts(district)
    assert len(alerts) == 1, alerts
    # Keep watching: the person stays down, the pole must not report them again.
    time.sleep(12)
    alerts = enc_alerts(district)
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert alert["device_uid"] == down.uid
    status = down.status() or {}
    assert status["last_delivered"]["incident_id"] == alert["incident_id"]
    assert status["outbox"]["depth"] == 0  # deleted after C4

    # The server's record: GNSS position from gpsd (src gps), at the pole's coordinates.
    token = (district.workdir / "server-data" / "admin.token").read_text().strip()
    import httpx

    r = httpx.get(
        f"http://127.0.0.1:{district.admin_port}/v1/incidents/{alert['incident_id']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    record = r.json()
    assert record["coords_src"] == "gps"
    assert record["lat"] == pytest.approx(POLES[0][0], abs=1e-5)
    assert record["lon"] == pytest.approx(POLES[0][1], abs=1e-5)
    assert record["label"] == "person_down"
    # The photo is the full-resolution snapshot, a real JPEG.
    photo = httpx.get(
        f"http://127.0.0.1:{district.admin_port}/v1/incidents/{alert['incident_id']}/photo",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert photo.status_code == 200
    img = Image.open(io.BytesIO(photo.content))
    assert img.format == "JPEG" and img.size[0] >= 320


def test_walking_people_and_closed_zone_give_no_alert(district: DemoDistrict) -> None:
    down, street, closed = district.poles
    # Both have been watching for as long as the first test ran (tens of seconds).
    for pole in (street, closed):
        status = pole.status() or {}
        assert pole.alive(), pole.log()[-2000:]
        assert status.get("last_delivered") is None, status
        assert status["outbox"]["depth"] == 0
        assert (status.get("pipeline") or {}).get("last_frame_at"), status
    assert (street.status() or {})["monitoring"]["active"] is True
    assert (closed.status() or {})["monitoring"]["active"] is False
    assert (closed.status() or {}).get("pipeline", {}).get("last_detection") is None
    assert {a["incident_id"] for a in enc_alerts(district)} == {
        (down.status() or {})["last_delivered"]["incident_id"]
    }


def test_stalled_camera_stops_the_watchdog_and_says_why(
    district: DemoDistrict, tmp_path: Path
) -> None:
    footage = district.footage
    assert footage is not None
    from hardware import create_softhsm_tokens

    bundle = tmp_path / "bundle.json"
    district._cli(
        "server",
        "device",
        "add",
        "--config",
        str(district.server_config),
        "--uid",
        "WAW-OT-STALL",
        "--zone",
        ZONE,
        "--lat",
        "52.25",
        "--lon",
        "21.01",
        "--bundle-out",
        str(bundle),
    )
    conf, [token] = create_softhsm_tokens(tmp_path / "softhsm", ["stall"])
    pole = EdgePole(
        tmp_path / "pole",
        "WAW-OT-STALL",
        52.25,
        21.01,
        token,
        conf,
        [{"at": 0.0, "play": str(footage.upright)}, {"at": 12.0, "stall": True}],
        gps=False,
    )
    pole.provision(bundle)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    messages: list[tuple[float, str]] = []
    try:
        import os

        os.environ["WATCHDOG_USEC"] = "4000000"  # inherited by the daemon: stall after 2 s
        try:
            pole.start(notify_socket=sock_path)
        finally:
            del os.environ["WATCHDOG_USEC"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            if any("camera: no frame for" in m for _, m in messages[-5:]):
                stall_seen = time.monotonic()
                break
            assert pole.alive(), pole.log()[-2000:]
        else:
            pytest.fail(f"no stall status; got {[m for _, m in messages][-10:]}")
        # Watch a little longer: no WATCHDOG=1 may follow the stall report.
        while time.monotonic() < stall_seen + 5:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), sock.recv(4096).decode()))
    finally:
        pole.close()
        sock.close()
    texts = [m for _, m in messages]
    assert any("READY=1" in m for m in texts), texts[:10]
    assert any(m == "WATCHDOG=1" for m in texts), texts[:10]
    stall_index = next(i for i, m in enumerate(texts) if "camera: no frame for" in m)
    assert "watchdog not fed" in texts[stall_index]
    assert "WATCHDOG=1" not in texts[stall_index + 1 :], texts[stall_index:]
