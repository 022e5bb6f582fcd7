"""The edge daemon against the real trusted server (``citywatch server run``): the bundle
from ``citywatch server device add`` provisions a SoftHSM2 token, the server announces the
window when the device says "online", and an incident is stored at the server once."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import protocol as p
from citywatch._footage import fall_photo
from edge._config import load_config
from edge._outbox import OUTBOX_FILE, Outbox
from edge._state import STATUS_FILE, read_status
from hardware import Pkcs11KeyStore, SoftHsmToken
from tests.support.pole import provision, start_daemon
from tests.support.services import Broker, free_port
from tests.support.world import add_still_camera

REPO = Path(__file__).resolve().parents[2]


def citywatch(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "citywatch", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"citywatch {' '.join(args)}: {done.stderr or done.stdout}")
    return done


def wait(what: str, pred: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for: {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_delivered_to_the_real_server(
    tmp_path: Path, broker: Broker, softhsm_tokens: dict[str, SoftHsmToken]
) -> None:
    if citywatch("server", "run", "--help", check=False).returncode != 0:
        pytest.skip("citywatch server run is not available")
    token = softhsm_tokens["citywatch-device"]
    server_toml = tmp_path / "server.toml"
    example = citywatch("server", "config", "example").stdout
    example = (
        example.replace('data_dir = "./var/server"', f'data_dir = "{tmp_path / "srv"}"')
        .replace("port = 1883", f"port = {broker.port}")
        .replace('host = "localhost"', f'host = "{broker.host}"')
        .replace("enabled = true", "enabled = false")
        .replace("http://127.0.0.1:8700", f"http://127.0.0.1:{free_port()}")
    )
    server_toml.write_text(example)
    bundle = tmp_path / "bundle.json"
    citywatch(
        "server",
        "device",
        "add",
        "--config",
        str(server_toml),
        "--uid",
        "pole-e2e",
        "--zone",
        "e2e",
        "--lat",
        "50.06",
        "--lon",
        "19.94",
        "--bundle-out",
        str(bundle),
    )
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat(timespec="seconds")
    citywatch(
        "server", "window", "open", "--config", str(server_toml), "--zone", "e2e", "--until", until
    )

    config = provision(tmp_path, token, bundle)
    with config.open("a") as f:
        f.write("\n[status]\ninterval_s = 0.5\n")
    add_still_camera(config)
    cfg = load_config(config)
    with (
        Pkcs11KeyStore(*token) as store,
        Outbox(cfg.state_dir / OUTBOX_FILE, cipher=store.cipher(cfg.key_label)) as ob,
    ):
        here = p.Coords(lat=cfg.position.lat, lon=cfg.position.lon, src="fixed")
        cid = ob.add(
            photo=fall_photo(),
            coords=here,
            score=0.9,
            label="person_down",
            captured_at=int(time.time() * 1000),
        )

    logs = tmp_path / "logs.txt"
    with logs.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "citywatch", "server", "run", "--config", str(server_toml)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    daemon = start_daemon(config, logs)
    try:
        status = cfg.state_dir / STATUS_FILE
        wait(
            "the window announced by the server",
            lambda: status.exists() and read_status(status).monitoring.active,
        )
        wait("the incident delivered", lambda: read_status(status).last_delivered is not None)
        delivered = read_status(status).last_delivered
        assert delivered is not None and delivered.cid == cid.hex()
        assert read_status(status).outbox.depth == 0
        listed = json.loads(
            citywatch("server", "incidents", "--config", str(server_toml), "--json").stdout
        )
        assert [(i["id"], i["device_uid"]) for i in listed] == [
            (delivered.incident_id, "pole-e2e")
        ]  # stored once
    except BaseException:
        print(logs.read_text())
        raise
    finally:
        for proc in (daemon, server):
            proc.send_signal(signal.SIGTERM)
        for proc in (daemon, server):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
