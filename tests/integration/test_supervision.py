"""The server and the ENC as real processes under what systemd gives a ``Type=notify``
unit with a watchdog: a NOTIFY_SOCKET (a real unix datagram socket here) and
WATCHDOG_USEC. Each says READY=1 once it can work, sends WATCHDOG=1 from its event loop
(none while the process is frozen), and STOPPING=1 then exit status 0 on SIGTERM. The
server's /healthz says 503 while its broker is away, without the watchdog starving; the
ENC's /metrics answers the configured networks only.

tests/systemd/test_units.py runs the same units under a real systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.server_harness import EncStub, make_server, wait_until
from tests.integration.test_enc_endpoint import CITYWATCH, ROOT, EncProcess, make_n1
from tests.support.services import Broker, free_port, start_mosquitto

WATCHDOG_USEC = 600_000  # beats every 0.2 s


class Notifications:
    """systemd's side of NOTIFY_SOCKET: every datagram with its arrival time, read at
    once by a thread as systemd does (a sender blocks once a few datagrams are unread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.got.append((time.monotonic(), data.decode()))

    def poll(self, seconds: float = 0.0) -> list[tuple[float, str]]:
        time.sleep(seconds)
        with self._lock:
            return list(self.got)

    def wait_for(self, prefix: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, msg in self.poll(0.1):
                if any(line.startswith(prefix) for line in msg.splitlines()):
                    return t
        raise AssertionError(f"no {prefix!r} within {timeout} s; got {self.got[-10:]}")

    def beats(self, since: float = 0.0) -> list[float]:
        return [t for t, msg in self.poll() if msg == "WATCHDOG=1" and t >= since]

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    n = Notifications(tmp_path / "notify")
    yield n
    n.close()


def _env(n: Notifications) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "JOURNAL_STREAM")}
    return env | {"NOTIFY_SOCKET": str(n.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def _frozen_then_stopped(proc: subprocess.Popen[bytes], n: Notifications, log: Path) -> None:
    """Beats while running, none while SIGSTOPped, beats again after SIGCONT; SIGTERM
    gives STOPPING=1 and exit status 0."""
    n.poll(1.0)
    running = n.beats(since=time.monotonic() - 1.0)
    assert len(running) >= 3, n.got[-10:]
    proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    n.poll(1.5)
    resumed_at = time.monotonic()
    proc.send_signal(signal.SIGCONT)
    n.poll(1.0)
    # A beat already in the socket buffer may land just after SIGSTOP; then none.
    during = [t for t in n.beats() if frozen_at + 0.3 < t < resumed_at]
    assert during == [], "WATCHDOG=1 while the process was frozen"
    assert n.beats(since=resumed_at), "no WATCHDOG=1 after SIGCONT"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
    assert any(msg.startswith("STOPPING=1") for _, msg in n.poll(0.2))


def test_enc_under_a_notify_socket(tmp_path: Path, notifications: Notifications) -> None:
    enc = EncProcess(tmp_path / "enc")
    with open(enc.log, "wb") as out:
        proc = subprocess.Popen(
            [CITYWATCH, "enc", "run", "--config", str(enc.config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(notifications),
        )
    try:
        ready = notifications.wait_for("READY=1", timeout=30)
        assert httpx.get(enc.url + "/healthz", timeout=5).status_code == 200
        assert [m for t, m in notifications.poll() if t <= ready][-1] == (
            "READY=1\nSTATUS=accepting alerts"
        )
        _frozen_then_stopped(proc, notifications, enc.log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in the metrics:\n{text}")


def test_enc_metrics_count_alerts_and_answer_allowed_networks_only(tmp_path: Path) -> None:
    enc = EncProcess(tmp_path / "enc").start()
    try:
        before = httpx.get(enc.url + "/metrics", timeout=5)
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        assert _metric(before.text, 'citywatch_enc_alerts{status="new"}') == 0
        assert _metric(before.text, "citywatch_enc_store_up") == 1
        for i in range(2):
            assert enc.post(make_n1(enc.notifier(), f"inc-{i}")).status_code == 200
        assert enc.post(make_n1(enc.notifier(), "inc-0")).status_code == 200  # a repeat
        after = httpx.get(enc.url + "/metrics", timeout=5).text
        assert _metric(after, 'citywatch_enc_alerts{status="new"}') == 2
        assert _metric(after, "citywatch_enc_alerts_stored_total") == 2
        assert _metric(after, 'citywatch_enc_http_requests_total{route="alerts",status="2xx"}') == 3
    finally:
        enc.stop()
    # The same ENC with metrics for a monitoring network only: loopback gets 404.
    enc.config.write_text(enc.config.read_text() + '[metrics]\nallow_from = ["10.9.0.0/16"]\n')
    enc.start()
    try:
        r = httpx.get(enc.url + "/metrics", timeout=5)
        assert r.status_code == 404
        assert "citywatch" not in r.text
    finally:
        enc.stop()


def test_enc_config_with_a_bad_metrics_network_is_refused(tmp_path: Path) -> None:
    enc = EncProcess(tmp_path / "enc", extra_toml='[metrics]\nallow_from = ["10.9.0.0/33"]\n')
    done = subprocess.run(
        [CITYWATCH, "enc", "config", "check", "--config", str(enc.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "metrics.allow_from" in done.stderr and "10.9.0.0/33" in done.stderr


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_server_under_a_notify_socket_and_without_its_broker(
    tmp_path: Path, notifications: Notifications
) -> None:
    broker_port = free_port()
    broker: Broker = start_mosquitto(tmp_path / "broker", port=broker_port)
    enc = EncStub(server_kid=b"\0" * 8, key=b"\0" * 32).start()
    setup = make_server(tmp_path, broker, enc_url=enc.url)
    health = f"http://127.0.0.1:{setup.admin_port}/healthz"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "citywatch.cli", "server", "run", "--config", str(setup.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=_env(notifications),
        )
    try:
        notifications.wait_for("READY=1", timeout=30)
        wait_until(lambda: _status(health) == 200, timeout=60, what="healthz 200")
        # The broker goes away: 503 and a STATUS line, but the watchdog is still fed
        # (reconnecting is the server's own job; a restart would not bring the broker).
        broker.stop()
        gone = time.monotonic()
        wait_until(
            lambda: _status(health) == 503, timeout=20, what="healthz 503 without the broker"
        )
        body = httpx.get(health, timeout=2).json()
        assert body["status"] == "unavailable" and body["mqtt_connected"] is False
        notifications.wait_for("STATUS=broker unreachable", timeout=20)
        notifications.poll(1.0)
        assert len(notifications.beats(since=gone + 0.5)) >= 3
        broker = start_mosquitto(tmp_path / "broker", port=broker_port)
        wait_until(
            lambda: _status(health) == 200,
            timeout=30,
            what="healthz 200 again with the broker back",
        )
        _frozen_then_stopped(proc, notifications, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.stop()
        enc.stop()
