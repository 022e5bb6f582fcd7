"""The daemon as a real process: provisioned into a SoftHSM2 token, ``edge run`` (the
delivery side), SIGKILLed between the server storing an incident and its C4, restarted:
the incident arrives once and leaves the outbox."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import protocol as p
from edge._config import load_config
from edge._outbox import OUTBOX_FILE, Outbox
from edge._state import STATUS_FILE, read_status, wall_ms
from hardware import Pkcs11KeyStore, SoftHsmToken
from tests.integration.test_edge_client import PREFIX, MqttServer, read_presence, until
from tests.support.services import Broker
from tests.support.world import Directory, add_still_camera, jpeg
from tests.unit.test_edge_config_cli import cli

REPO = Path(__file__).resolve().parents[2]
_RUN = (
    "import sys, argparse; from edge._cli_daemon import register_daemon_commands; "
    "p = argparse.ArgumentParser(); register_daemon_commands(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


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
    bundle = tmp_path / "bundle.json"
    bundle.write_text(
        json.dumps(
            {
                "uid": "pole-7",
                "kid_hex": kid.hex(),
                "alg": "A256GCM",
                "key_hex": key.hex(),
                "zone": "z",
                "lat": 50.0,
                "lon": 19.9,
                "server": {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX},
            }
        )
    )
    (tmp_path / "pin").write_text(token.pin)
    config = tmp_path / "edge.toml"
    assert (
        cli(
            "provision",
            "--bundle",
            str(bundle),
            "--config-out",
            str(config),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(tmp_path / "pin"),
            "--state-dir",
            str(tmp_path / "state"),
            "--delete-bundle",
        )
        == 0
    )
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

    def start_daemon() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-c", _RUN, "run", "--config", str(config)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        daemon = start_daemon()
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
            daemon = start_daemon()
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
    bundle = tmp_path / "bundle.json"
    bundle.write_text(
        json.dumps(
            {
                "uid": "pole-8",
                "kid_hex": kid.hex(),
                "alg": "A256GCM",
                "key_hex": key.hex(),
                "zone": "z",
                "lat": 50.0,
                "lon": 19.9,
                "server": {"host": broker.host, "port": broker.port},
            }
        )
    )
    (tmp_path / "pin").write_text(token.pin)
    config = tmp_path / "edge.toml"
    assert (
        cli(
            "provision",
            "--bundle",
            str(bundle),
            "--config-out",
            str(config),
            "--module",
            token.module,
            "--token-label",
            token.label,
            "--pin-file",
            str(tmp_path / "pin"),
            "--state-dir",
            str(tmp_path / "state"),
        )
        == 0
    )
    add_still_camera(config)
    with (tmp_path / "daemon.log").open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-c", _RUN, "run", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
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
