"""Privacy masks through the real daemon: ``edge run`` on the scene player (someone sits,
then lies on the ground), provisioned into SoftHSM2, over a real broker to an in-process
server. The photo that leaves the pole is black inside every mask; and a mask over the
whole view leaves the pre-screen nothing to see, so no incident is reported at all."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import protocol as p
from citywatch._poles import find_footage
from edge._privacy import MaskPolygon, PrivacyMask
from edge._state import STATUS_FILE, read_status
from hardware import SoftHsmToken
from tests.integration.test_edge_client import PREFIX, MqttServer, until
from tests.support.pole import provision, start_daemon, write_bundle
from tests.support.services import Broker
from tests.support.world import Directory

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BAND = [(0.0, 0.0), (1.0, 0.0), (1.0, 0.3), (0.0, 0.3)]
"""The top 30 % of the view (the windows across the street)."""
WHOLE = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]


def _pole(
    tmp_path: Path, broker: Broker, token: SoftHsmToken, mask: list[tuple[float, float]], uid: str
) -> tuple[Path, bytes, bytes]:
    kid, key = os.urandom(8), os.urandom(32)
    bundle = write_bundle(
        tmp_path / "bundle.json",
        uid=uid,
        kid=kid,
        key=key,
        host=broker.host,
        port=broker.port,
        prefix=PREFIX,
    )
    config = provision(tmp_path, token, bundle)
    footage = find_footage()
    points = json.dumps([list(pt) for pt in mask])
    with config.open("a") as f:
        f.write(
            "\n[protocol]\nc2_timeout_s = 5.0\nc4_timeout_s = 5.0\nbackoff_base_s = 0.2\n"
            "backoff_max_s = 2.0\n\n[status]\ninterval_s = 0.5\n"
            '\n[camera]\ndriver = "scene"\nfps = 10.0\n'
            f'[[camera.timeline]]\nat = 0.0\nplay = "{footage.upright}"\n'
            f'[[camera.timeline]]\nat = 3.0\nplay = "{footage.lying}"\n'
            f'\n[[privacy.masks]]\nname = "windows"\npoints = {points}\n'
        )
    return config, kid, key


def _run(
    config: Path, kid: bytes, key: bytes, uid: str, broker: Broker, log: Path, seconds: float
) -> MqttServer:
    """The daemon for up to ``seconds`` in a monitoring window; the server it spoke to."""
    directory = Directory()
    directory.records[kid] = p.DeviceRecord(kid=kid, uid=uid, cipher=p.AesGcmCipher(key))
    server = MqttServer(broker.host, broker.port, directory)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        daemon = start_daemon(config, log)
        try:
            await until("the test server connects", lambda: server.connected)
            await asyncio.sleep(2)  # the daemon subscribes
            await server.announce(kid)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not server.incidents:
                assert daemon.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.5)
        finally:
            if daemon.poll() is None:
                daemon.terminate()
                await asyncio.to_thread(daemon.wait, 20)
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    return server


def test_the_photo_that_leaves_the_pole_is_masked(
    tmp_path: Path, broker: Broker, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    config, kid, key = _pole(
        tmp_path, broker, softhsm_tokens["citywatch-device"], BAND, "pole-mask-1"
    )
    log = tmp_path / "daemon.log"
    server = _run(config, kid, key, "pole-mask-1", broker, log, seconds=150)
    assert server.incidents, f"no incident from the lying person:\n{log.read_text()[-3000:]}"
    # Unmasked, that part of the view is anything but black.
    view = cv2.imread(str(find_footage().lying))
    band = PrivacyMask([MaskPolygon(points=BAND)]).stencil(*view.shape[:2])
    assert float(view[band].mean()) > 40 and int(view[band].max()) > 150
    for report in server.reports:
        img = cv2.imdecode(np.frombuffer(report.photo, np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        inside = PrivacyMask([MaskPolygon(points=BAND)]).stencil(h, w)
        # Away from JPEG's 16-pixel blocks at the edge, nothing of the view is left.
        deep = cv2.erode(inside.astype(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)
        assert deep.any()
        assert int(img[deep].max()) <= 4, "an unmasked pixel left the pole"
        assert float(img[~inside].mean()) > 20  # the rest of the view is there


def test_a_mask_over_the_whole_view_leaves_nothing_to_detect(
    tmp_path: Path, broker: Broker, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    config, kid, key = _pole(
        tmp_path, broker, softhsm_tokens["citywatch-device"], WHOLE, "pole-mask-2"
    )
    log = tmp_path / "daemon.log"
    server = _run(config, kid, key, "pole-mask-2", broker, log, seconds=45)
    assert server.incidents == {}, "the pre-screen saw through a mask"
    # It was watching all along: frames flowed, inside a monitoring window.
    status = read_status(tmp_path / "state" / STATUS_FILE)
    assert status.monitoring.active, log.read_text()[-3000:]
    assert status.pipeline.last_frame_at is not None
    assert status.pipeline.last_detection is None
