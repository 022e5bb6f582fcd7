"""Every HTTP listener against clients that never finish their requests (slow-loris):
the server's admin API and the ENC, as real processes. Before: uvicorn waited for the
rest of a request forever (300 half-sent requests were still held after 40 s). Now each
connection whose request is not all there within the deadline is closed, and honest
requests are answered all along. And /docs loads nothing from elsewhere."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from citywatch._services import ServiceUnavailable, start_mosquitto
from httpserve import REQUEST_TIMEOUT_S
from tests.integration.server_harness import ServerProcess, make_server
from tests.integration.test_enc_endpoint import EncProcess
from tests.support.services import free_port

HALF_SENT = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers never end
    b"POST /v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/cose\r\n"
    b"Content-Length: 100000\r\n\r\n" + bytes(100),  # body never ends
    b"G",  # one byte, then nothing
]


def _hold(port: int, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(HALF_SENT[i % len(HALF_SENT)])
        socks.append(s)
    return socks


def _closed(s: socket.socket) -> bool:
    """True once the peer closed (an answer such as 408 before that is fine too)."""
    s.setblocking(False)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _slow_loris(port: int, health: str) -> None:
    socks = _hold(port, 150)
    try:
        start = time.monotonic()
        deadline = start + REQUEST_TIMEOUT_S + 15
        open_ = list(socks)
        while open_ and time.monotonic() < deadline:
            # Honest traffic is answered while the half-sent requests wait.
            assert httpx.get(f"http://127.0.0.1:{port}{health}", timeout=5).status_code == 200
            open_ = [s for s in open_ if not _closed(s)]
            time.sleep(0.5)
        assert not open_, (
            f"{len(open_)} of {len(socks)} half-sent requests still held "
            f"after {time.monotonic() - start:.0f} s"
        )
        assert time.monotonic() - start >= REQUEST_TIMEOUT_S - 1  # not cut off early
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def enc_process(tmp_path: Path) -> Iterator[EncProcess]:
    e = EncProcess(tmp_path / "enc").start()
    yield e
    e.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    try:
        broker = start_mosquitto(tmp_path / "broker")
    except ServiceUnavailable as exc:
        pytest.skip(f"Mosquitto unavailable: {exc}")
    setup = make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{free_port()}")
    s = ServerProcess(setup).start(timeout=90)
    yield s
    s.stop()
    broker.stop()


@pytest.mark.slow  # waits out the deadline
def test_half_sent_requests_to_the_enc_are_cut_off(enc_process: EncProcess) -> None:
    _slow_loris(enc_process.port, "/healthz")


@pytest.mark.slow  # waits out the deadline
def test_half_sent_requests_to_the_admin_api_are_cut_off(server: ServerProcess) -> None:
    _slow_loris(server.setup.admin_port, "/healthz")


def test_admin_docs_load_nothing_from_elsewhere(server: ServerProcess) -> None:
    base = f"http://127.0.0.1:{server.setup.admin_port}"
    page = httpx.get(base + "/docs", timeout=10)
    assert page.status_code == 200
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', page.text)
    assert refs and all(r.startswith("/") for r in refs), refs
    assert "//" not in "".join(refs)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for ref in refs:
        r = httpx.get(base + ref, timeout=10)
        assert r.status_code == 200 and len(r.content) > 0, ref
    assert (
        "SwaggerUIBundle" in httpx.get(base + "/docs/static/swagger-ui-bundle.js", timeout=10).text
    )
