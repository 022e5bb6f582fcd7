"""sd_notify and journald logging, through a real unix datagram socket set as
NOTIFY_SOCKET (what systemd gives a ``Type=notify`` service), in this process and in
daemon-like child processes. systemd-python is made missing in a child by
``sys.modules["systemd"] = None``, which makes ``import systemd`` fail as if uninstalled.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware._service import (
    ServiceNotifier,
    configure_logging,
    journal_is_stderr,
    watchdog_interval,
)

ROOT = Path(__file__).resolve().parents[2]
BLOCK_SYSTEMD = 'import sys; sys.modules["systemd"] = None\n'


class NotifySocket:
    """What systemd listens on: one datagram per notification."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(5.0)

    def receive(self) -> str:
        return self.sock.recv(65536).decode("utf-8")

    def pending(self) -> list[str]:
        """Every datagram already sent, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(65536).decode("utf-8"))
        except BlockingIOError:
            return out
        finally:
            self.sock.settimeout(5.0)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    # A short folder: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="cw-notify-") as folder:
        listener = NotifySocket(str(Path(folder) / "notify.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        yield listener
        listener.close()


BACKENDS = ["systemd", "socket"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ready_status_watchdog_stopping(notify_socket: NotifySocket, backend: str) -> None:
    notifier = ServiceNotifier(backend=backend)  # type: ignore[arg-type]
    assert notifier.backend == backend and notifier.enabled
    assert notifier.ready("camera, key store and broker up")
    assert notify_socket.receive() == "READY=1\nSTATUS=camera, key store and broker up"
    assert notifier.status("monitoring window 08:00-20:00, 9.8 fps")
    assert notify_socket.receive() == "STATUS=monitoring window 08:00-20:00, 9.8 fps"
    assert notifier.watchdog()
    assert notify_socket.receive() == "WATCHDOG=1"
    assert notifier.extend_timeout(90)
    assert notify_socket.receive() == "EXTEND_TIMEOUT_USEC=90000000"
    assert notifier.stopping("shutting down: SIGTERM")
    assert notify_socket.receive() == "STOPPING=1\nSTATUS=shutting down: SIGTERM"
    assert notify_socket.pending() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_status_cannot_smuggle_another_field(notify_socket: NotifySocket, backend: str) -> None:
    notifier = ServiceNotifier(backend=backend)  # type: ignore[arg-type]
    notifier.status("camera stalled\nREADY=1\r\nWATCHDOG=1")
    assert notify_socket.receive() == "STATUS=camera stalled READY=1 WATCHDOG=1"


def test_field_names_are_checked(notify_socket: NotifySocket) -> None:
    with pytest.raises(ValueError, match="upper case"):
        ServiceNotifier().notify(ready=1)
    with pytest.raises(ValueError, match="upper case"):
        ServiceNotifier().notify(**{"READY=1\nX": 1})
    assert notify_socket.pending() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abstract_socket_address(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    listener = NotifySocket(f"@citywatch-test-{uuid.uuid4().hex}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        assert ServiceNotifier(backend=backend).ready()  # type: ignore[arg-type]
        assert listener.receive() == "READY=1"
    finally:
        listener.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = ServiceNotifier(backend=backend)  # type: ignore[arg-type]
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_vanished_socket_is_reported_once(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    backend: str,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    notifier = ServiceNotifier(backend=backend)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="hardware._service"):
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if "did not take a notification" in r.getMessage()]
    assert len(warnings) == 1


def test_watchdog_interval_comes_from_watchdog_usec() -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 20.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": me}) == 20.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


# -- as a daemon: child processes ------------------------------------------------------

DAEMON = textwrap.dedent("""
    import logging
    from hardware._service import ServiceNotifier, configure_logging, watchdog_interval
    where = configure_logging("INFO", identifier="citywatch-test")
    notifier = ServiceNotifier()
    log = logging.getLogger("edge")
    log.info("logging to %s, notifications through %s", where, notifier.backend)
    interval = watchdog_interval()
    notifier.ready(f"watchdog every {interval} s")
    for frame in range(3):
        notifier.watchdog()
    log.warning("camera stalled")
    notifier.status("camera stalled: no frame for 10 s")
    notifier.stopping()
    print(where, notifier.backend, type(logging.getLogger().handlers[-1]).__name__)
""")


def run_daemon(
    env: dict[str, str], *, prelude: str = "", stderr_to: Path | None = None
) -> tuple[str, str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    full_env.update(env, PYTHONPATH=str(ROOT))
    with open(stderr_to or os.devnull, "wb") as err_file:
        result = subprocess.run(
            [sys.executable, "-c", prelude + DAEMON],
            env=full_env,
            cwd=ROOT,
            timeout=60,
            stdout=subprocess.PIPE,
            stderr=err_file if stderr_to else subprocess.PIPE,
        )
    stderr = stderr_to.read_text() if stderr_to else result.stderr.decode()
    assert result.returncode == 0, stderr
    return result.stdout.decode().strip(), stderr


def test_a_daemon_under_systemd_notifies_in_order(notify_socket: NotifySocket) -> None:
    out, err = run_daemon({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "4000000"})
    assert out == "stderr systemd StreamHandler"
    assert notify_socket.pending() == [
        "READY=1\nSTATUS=watchdog every 4.0 s",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STATUS=camera stalled: no frame for 10 s",
        "STOPPING=1",
    ]
    assert "INFO edge: logging to stderr, notifications through systemd" in err
    assert "WARNING edge: camera stalled" in err


def test_without_systemd_python_the_socket_fallback_says_so(notify_socket: NotifySocket) -> None:
    out, err = run_daemon({"NOTIFY_SOCKET": notify_socket.address}, prelude=BLOCK_SYSTEMD)
    assert out == "stderr socket StreamHandler"
    assert notify_socket.pending() == [
        "READY=1\nSTATUS=watchdog every None s",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STATUS=camera stalled: no frame for 10 s",
        "STOPPING=1",
    ]
    assert (
        "systemd-python is not installed; sending sd_notify messages to NOTIFY_SOCKET directly"
    ) in err


def _journal_stream(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def test_under_systemd_logs_go_to_the_journal(tmp_path: Path) -> None:
    stderr_file = tmp_path / "stderr.txt"
    stderr_file.touch()
    out, _ = run_daemon({"JOURNAL_STREAM": _journal_stream(stderr_file)}, stderr_to=stderr_file)
    assert out == "journal systemd JournalHandler"


def test_without_systemd_python_journal_lines_carry_priorities(tmp_path: Path) -> None:
    stderr_file = tmp_path / "stderr.txt"
    stderr_file.touch()
    out, err = run_daemon(
        {"JOURNAL_STREAM": _journal_stream(stderr_file)},
        prelude=BLOCK_SYSTEMD,
        stderr_to=stderr_file,
    )
    assert out == "journal socket StreamHandler"
    lines = err.splitlines()
    assert "<6>edge: logging to journal, notifications through socket" in lines
    assert "<4>edge: camera stalled" in lines
    assert any(
        line.startswith("<4>hardware._service: service: systemd-python is not installed")
        for line in lines
    )


def test_a_stale_journal_stream_means_stderr(tmp_path: Path) -> None:
    # systemd set JOURNAL_STREAM, then stderr was redirected elsewhere: not the journal.
    other = tmp_path / "other.txt"
    other.touch()
    stderr_file = tmp_path / "stderr.txt"
    stderr_file.touch()
    out, err = run_daemon({"JOURNAL_STREAM": _journal_stream(other)}, stderr_to=stderr_file)
    assert out.startswith("stderr ")
    assert "WARNING edge: camera stalled" in err
    assert not journal_is_stderr({"JOURNAL_STREAM": "not:numbers"})


def test_configure_logging_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("DEBUG", stream=sys.stdout)
        configure_logging("INFO", stream=sys.stdout)
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1 and foreign in root.handlers
        assert root.level == logging.INFO
    finally:
        for handler in root.handlers:
            if handler not in before:
                root.removeHandler(handler)
        root.removeHandler(foreign)
        root.setLevel(level)


@pytest.mark.skipif(
    not Path("/run/systemd/journal/socket").exists() or shutil.which("journalctl") is None,
    reason="no journald on this machine (containers have none)",
)
def test_a_record_reaches_journald(tmp_path: Path) -> None:
    marker = f"citywatch-journal-test-{uuid.uuid4().hex}"
    stderr_file = tmp_path / "stderr.txt"
    stderr_file.touch()
    script = (
        f"import logging\nfrom hardware._service import configure_logging\n"
        f"configure_logging(identifier='citywatch-test')\n"
        f"logging.getLogger('edge').warning('{marker}')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNAL_STREAM": _journal_stream(stderr_file)}
    with open(stderr_file, "wb") as err:
        subprocess.run([sys.executable, "-c", script], env=env, stderr=err, check=True, timeout=60)
    found = subprocess.run(
        [
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "--since",
            "-5min",
            "SYSLOG_IDENTIFIER=citywatch-test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert marker in found.stdout


def test_asking_for_systemd_python_without_it_is_an_error() -> None:
    script = BLOCK_SYSTEMD + textwrap.dedent("""
        from hardware._service import NotifyDriverMissing, ServiceNotifier
        try:
            ServiceNotifier(backend="systemd")
        except NotifyDriverMissing as exc:
            print(exc)
        print(ServiceNotifier(backend="auto").backend)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "systemd-python is not installed: pip install systemd-python (it builds against "
        'libsystemd-dev and pkg-config), or use backend "socket"',
        "socket",
    ]
