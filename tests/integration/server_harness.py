"""What the server's integration tests share: a server config on free loopback ports,
the server as a real subprocess, and a small ENC (HTTP, ``protocol.EncEndpoint``) that
stores alerts idempotently and can be told to refuse, hang or go away."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

import protocol as p
from citywatch._simdevice import ProvisioningBundle
from citywatch.cli import main as citywatch_main
from tests.support.services import Broker, free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


# -- the ENC stand-in ------------------------------------------------------------------


@dataclass
class EncStub:
    """An ENC on a loopback port. ``mode``: "ok" answers N2; "refuse" answers 503;
    "flood" answers 200 with 2 MiB that are no N2 (without storing); "hang" keeps the
    request open until ``release()`` and then answers 503 without storing (an N1 that
    never got through)."""

    server_kid: bytes
    key: bytes
    port: int = field(default_factory=free_port)
    mode: str = "ok"
    alerts: dict[str, p.AlertReceived] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)  # incident id -> times stored
    requests: int = 0
    n2_sent: int = 0
    answered_at: dict[str, float] = field(default_factory=dict)  # id -> perf_counter
    hanging: threading.Event = field(default_factory=threading.Event)
    _release: threading.Event = field(default_factory=threading.Event)
    _http: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set[socket.socket] = field(default_factory=set)  # kept-alive connections

    def __post_init__(self) -> None:
        self.endpoint = p.EncEndpoint(
            servers={self.server_kid: p.AesGcmCipher(self.key)}, random=secrets.token_bytes
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EncStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as the real ENC (uvicorn) answers: HTTP/1.0 would make the
            # server open a new connection for every alert.
            # (with TCP_NODELAY: the headers and the body are two writes, and Nagle's
            # algorithm would hold the body for the client's delayed ACK, 40 ms).
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def handle(self) -> None:
                with stub._lock:
                    stub._open.add(self.connection)
                try:
                    super().handle()
                finally:
                    with stub._lock:
                        stub._open.discard(self.connection)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with stub._lock:
                    stub.requests += 1
                if self.path != "/v1/alerts" or not self.headers.get("Content-Type", "").startswith(
                    "application/cose"
                ):
                    return self._answer(404, b"")
                if stub.mode == "hang":
                    stub.hanging.set()
                    stub._release.wait(30)
                    return self._answer(503, b"")
                if stub.mode == "refuse":
                    return self._answer(503, b"")
                if stub.mode == "flood":
                    return self._answer(200, bytes(2 << 20))
                with stub._lock:
                    events = stub.endpoint.receive(body, p_now())
                    alerts = [e for e in events if isinstance(e, p.AlertReceived)]
                    if not alerts:
                        return self._answer(400, b"")
                    a = alerts[0]
                    # Stored idempotently by incident id, as the real ENC does.
                    stub.stored[a.incident_id] = stub.stored.get(a.incident_id, 0) + 1
                    stub.alerts.setdefault(a.incident_id, a)
                    n2 = stub.endpoint.receipt(a, p_now())
                    stub.n2_sent += 1
                    stub.answered_at.setdefault(a.incident_id, time.perf_counter())
                self._answer(200, n2)

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", 'application/cose; cose-type="cose-encrypt0"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        self._release.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        # A stopped ENC answers nothing more, on the connections kept open either.
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def p_now() -> int:
    return time.time_ns() // 1_000_000


# -- the server ------------------------------------------------------------------------


@dataclass
class ServerSetup:
    """A config file and data directory for one server (or several sharing a database)."""

    dir: Path
    config: Path
    admin_port: int
    server_kid: bytes
    enc_key: bytes

    @property
    def token(self) -> str:
        return (self.dir / "data" / "admin.token").read_text().strip()

    def cli(self, *args: str) -> tuple[int, str]:
        """Run ``citywatch server ...`` in a subprocess (as an operator would)."""
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "citywatch.cli",
                "server",
                *args,
                "--config",
                str(self.config),
                "--actor",
                "it-test",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        return r.returncode, r.stdout + r.stderr

    def add_device(self, uid: str, zone: str, *, alg: str = "A256GCM") -> ProvisioningBundle:
        out = self.dir / f"{uid}.json"
        code = citywatch_main(
            [
                "server",
                "device",
                "add",
                "--config",
                str(self.config),
                "--actor",
                "it-test",
                "--uid",
                uid,
                "--zone",
                zone,
                "--lat",
                "52.2297",
                "--lon",
                "21.0122",
                "--alg",
                alg,
                "--bundle-out",
                str(out),
            ]
        )
        assert code == 0
        return ProvisioningBundle.parse(json.loads(out.read_text()))

    def variant(self, name: str, *, admin_port: int | None = None) -> ServerSetup:
        """Another config for the same data directory (a second replica)."""
        port = admin_port or free_port()
        text = self.config.read_text().replace(f"port = {self.admin_port}", f"port = {port}")
        path = self.dir / f"{name}.toml"
        path.write_text(text)
        return ServerSetup(self.dir, path, port, self.server_kid, self.enc_key)


def make_server(
    tmp_path: Path,
    broker: Broker,
    *,
    enc_url: str,
    db_url: str = "",
    timing: dict[str, Any] | None = None,
    verification: dict[str, Any] | None = None,
    enc: dict[str, Any] | None = None,
    extra: str = "",
    broker_extra: dict[str, Any] | None = None,
) -> ServerSetup:
    d = tmp_path / "server"
    (d / "data").mkdir(parents=True, exist_ok=True)
    admin_port = free_port()
    kid, key = secrets.token_bytes(8), secrets.token_bytes(32)
    fd = os.open(d / "data" / "enc.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    t = {"poll_s": 0.3, "backoff_base_s": 0.2, "backoff_max_s": 1.0} | (timing or {})
    e = {"connect_timeout_s": 1.0, "request_timeout_s": 3.0} | (enc or {})
    v = verification or {}

    def section(values: dict[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(val)}\n" for k, val in values.items())

    text = (
        f'data_dir = "data"\n'
        f"[database]\nurl = {json.dumps(db_url)}\n"
        f'[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        + section(broker_extra or {})
        + f'[enc]\nbase_url = "{enc_url}"\nserver_kid = "{kid.hex()}"\n'
        + section(e)
        + f'[admin]\nhost = "127.0.0.1"\nport = {admin_port}\n'
        f"[timing]\n" + section(t) + "[verification]\n" + section(v) + extra
    )
    config = d / "server.toml"
    config.write_text(text)
    return ServerSetup(d, config, admin_port, kid, key)


class ServerProcess:
    """``citywatch server run`` as a real process."""

    def __init__(
        self, setup: ServerSetup, name: str = "server", *, command: list[str] | None = None
    ) -> None:
        self.setup = setup
        # What runs it (``--config FILE`` is appended); the CLI unless a bench says else.
        self.command = command or [sys.executable, "-m", "citywatch.cli", "server", "run"]
        self.log = setup.dir / f"{name}-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 120.0) -> ServerProcess:
        # The photo check loads its models in a worker process before the server is ready.
        out = open(self.log, "wb")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            [*self.command, "--config", str(self.setup.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        out.close()
        try:
            wait_until(self._ready, timeout=timeout, what="server ready", interval=0.1)
        except TimeoutError:
            self.kill()
            raise TimeoutError(
                f"server did not get ready: {self.log.read_text()[-3000:]}"
            ) from None
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"server exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
            )
        try:
            r = httpx.get(f"http://127.0.0.1:{self.setup.admin_port}/healthz", timeout=1)
            return r.status_code == 200 and bool(r.json()["mqtt_connected"])
        except httpx.HTTPError:
            return False

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"http://127.0.0.1:{self.setup.admin_port}{path}",
            headers={"Authorization": f"Bearer {self.setup.token}"},
            timeout=10,
            **kwargs,
        )

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        text = self.api("GET", "/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            got = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if kv)
            if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
