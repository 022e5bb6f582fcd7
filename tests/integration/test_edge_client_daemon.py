"""The daemon as a real process: provisioned into a SoftHSM2 token, ``edge run`` (the
delivery side), SIGKILLed between the server storing an incident and its C4, restarted:
the incident arrives once and leaves the outbox."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

import protocol as p
from edge._config import load_config
from edge._outbox import OUTBOX_FILE, Outbox
from edge._state import STATUS_FILE, read_status, wall_ms
from hardware import Pkcs11KeyStore, SoftHsmToken
from tests.integration.test_edge_client import PREFIX, MqttServer, read_presence, until
from tests.support.pole import provision, start_daemon, write_bundle
from tests.support.services import Broker
from tests.support.world import Directory, add_still_camera, jpeg


class WithholdingServer(MqttServer):
    """Stores incidents but, while ``withhold_c4`` is set, never answers C3."""

    withhold_c4: bool = True

    async def send(self, kid: bytes, data: bytes) -> None:
        env = p.decode_envelope(data, max_size=p.Limits().max_large_message)
        if self.withhold_c4 and env.type == p.MessageType.C4:
            return
        await super().send(kid, data)


@pytest.mark.slow
def test_sigkill_between_storing_and_c4_then_restart(
    tmp_path: Path, broker: Broker, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    token = softhsm_tokens["citywatch-device"]
    kid, key = os.urandom(8), os.urandom(32)
    bundle = write_bundle(
        tmp_path / "bundle.json",
        uid="pole-7",
        kid=kid,
        key=key,
        host=broker.host,
        port=broker.port,
        prefix=PREFIX,
    )
    config = provision(tmp_path, token, bundle)
    with config.open("a") as f:  # short protocol timeouts, a fast heartbeat
        f.write(
            "\n[protocol]\nc2_timeout_s = 2.0\nc4_timeout_s = 2.0\nbackoff_base_s = 0.2\n"
            "backoff_max_s = 2.0\n\n[status]\ninterval_s = 0.5\n"
        )
    add_still_camera(config)
    cfg = load_config(config)

    # The incident is stored (sealed by the token) before the daemon ever runs.
    with (
        Pkcs11KeyStore(*token) as store,
        Outbox(cfg.state_dir / OUTBOX_FILE, cipher=store.cipher(cfg.key_label)) as ob,
    ):
        cid = ob.add(
            photo=jpeg(),
            coords=p.Coords(lat=50.0, lon=19.9, src="fixed"),
            score=0.9,
            label="person_down",
            captured_at=wall_ms(),
        )

    directory = Directory()
    directory.records[kid] = p.DeviceRecord(kid=kid, uid="pole-7", cipher=p.AesGcmCipher(key))
    server = WithholdingServer(broker.host, broker.port, directory)
    log = tmp_path / "daemon.log"

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        daemon = start_daemon(config, log)
        try:
            await until("the test server connects", lambda: server.connected)
            await until(
                "the server has stored the incident (C4 withheld)",
                lambda: bool(server.incidents),
                timeout=60,
            )
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            with Outbox(cfg.state_dir / OUTBOX_FILE, cipher=p.AesGcmCipher(key)) as ob:
                assert ob.cids() == [cid]  # no C4: still stored
            server.withhold_c4 = False
            daemon = start_daemon(config, log)
            await until(
                "the restarted daemon empties the outbox",
                lambda: read_status(cfg.state_dir / STATUS_FILE).last_delivered is not None,
                timeout=60,
            )
            status = read_status(cfg.state_dir / STATUS_FILE)
            assert status.outbox.depth == 0 and status.broker.connected
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.wait, 20) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    except BaseException:
        print(log.read_text())
        raise
    assert {r.cid for r in server.reports} == {cid} and len(server.reports) >= 2
    assert list(server.incidents) == [p.incident_id_for(kid, cid)]  # once, at the server
    with Outbox(cfg.state_dir / OUTBOX_FILE, cipher=p.AesGcmCipher(key)) as ob:
        assert ob.cids() == []
    assert read_presence(broker, kid) == b"offline"  # said on SIGTERM


def test_last_will_says_offline_when_the_daemon_dies(
    tmp_path: Path, broker: Broker, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    token = softhsm_tokens["citywatch-device"]
    kid, key = os.urandom(8), os.urandom(32)
    bundle = write_bundle(
        tmp_path / "bundle.json",
        uid="pole-8",
        kid=kid,
        key=key,
        host=broker.host,
        port=broker.port,
        prefix=None,
    )
    config = provision(tmp_path, token, bundle, delete_bundle=False)
    add_still_camera(config)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 60
        while read_presence(broker, kid) != b"online":
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, "the daemon never said online"
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    # The broker saw the connection drop without DISCONNECT: it publishes the will.
    assert read_presence(broker, kid) == b"offline"
