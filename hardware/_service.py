"""The service manager: systemd's readiness/status/watchdog notifications and journald
logging, for daemons started by a ``Type=notify`` unit.

``ServiceNotifier`` sends ``sd_notify(3)`` messages through systemd-python
(``systemd.daemon.notify``) or, where that module is missing, straight to the datagram
socket named by ``NOTIFY_SOCKET`` (the protocol is one datagram of ``KEY=value`` lines).
Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing and returns False.

``WatchdogKeeper`` feeds systemd's watchdog from the asyncio loop (``await
keeper.run(stop)``), and only while the daemon's own check says it is doing its work: a
loop that is stuck (blocking call, deadlock, ``SIGSTOP``) or a check that fails (no
camera frames) stops the ``WATCHDOG=1`` messages, and systemd kills and restarts it.

``configure_logging()`` sends log records to journald when stderr is the journal
(``JOURNAL_STREAM`` names stderr's device and inode), with the logger name and the
priority as journal fields, and to stderr with timestamps otherwise.

Nothing here raises because systemd is absent or gone: a notification that cannot be
delivered is logged once and dropped, like ``sd_notify`` does. The one error:

    HardwareError
    └── NotifyDriverMissing   ``backend="systemd"`` was asked for without systemd-python
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Literal, TextIO

from ._errors import HardwareError

__all__ = [
    "NotifyDriverMissing",
    "ServiceNotifier",
    "WatchdogKeeper",
    "configure_logging",
    "journal_is_stderr",
    "watchdog_interval",
]

_log = logging.getLogger(__name__)

Backend = Literal["auto", "systemd", "socket"]


class NotifyDriverMissing(HardwareError):
    """systemd-python was asked for explicitly and is not installed."""


def _systemd_daemon() -> ModuleType | None:
    try:
        return importlib.import_module("systemd.daemon")
    except ImportError:
        return None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value field: "ok\nREADY=1" must not say ready.
    return " ".join(text.splitlines()).strip()


class ServiceNotifier:
    """Tells systemd how the daemon is doing. ``backend``: ``"systemd"`` (systemd-python),
    ``"socket"`` (the protocol written out here), or ``"auto"``: the module if installed."""

    def __init__(self, backend: Backend = "auto") -> None:
        self._daemon: ModuleType | None = None
        if backend != "socket":
            self._daemon = _systemd_daemon()
            if self._daemon is None:
                if backend == "systemd":
                    raise NotifyDriverMissing(
                        "systemd-python is not installed: pip install systemd-python (it "
                        "builds against libsystemd-dev and pkg-config), or use backend "
                        '"socket"'
                    )
                if os.environ.get("NOTIFY_SOCKET"):
                    _log.info(
                        "service: systemd-python is not installed; sending sd_notify "
                        "messages to NOTIFY_SOCKET directly"
                    )
        self._warned = False

    @property
    def backend(self) -> Literal["systemd", "socket"]:
        """Which way notifications go."""
        return "systemd" if self._daemon is not None else "socket"

    @property
    def enabled(self) -> bool:
        """Started by systemd with a notification socket (``Type=notify``)."""
        return bool(os.environ.get("NOTIFY_SOCKET"))

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` fields in one message (``notify(READY=1, STATUS="...")``);
        True if it was delivered."""
        for key in fields:
            if not key.isupper() or not key.replace("_", "").isalnum():
                raise ValueError(f"sd_notify field names are upper case, not {key!r}")
        message = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items())
        if not self.enabled:
            return False
        if self._daemon is not None:
            try:
                delivered = bool(self._daemon.notify(message))
            except OSError:  # systemd-python raises where sd_notify returns an error
                delivered = False
        else:
            delivered = self._send(message.encode("utf-8"))
        if not delivered and not self._warned:
            self._warned = True
            _log.warning(
                "service: systemd did not take a notification (NOTIFY_SOCKET=%s)",
                os.environ.get("NOTIFY_SOCKET"),
            )
        return delivered

    def _send(self, payload: bytes) -> bool:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        elif not address.startswith("/"):
            if not self._warned:
                _log.warning(
                    "service: NOTIFY_SOCKET=%s is not a unix socket path; only "
                    "systemd-python can use it",
                    address,
                )
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the caller (an event loop) on a service manager that does
                # not read: a full queue drops the message, as a failed sd_notify does.
                sock.setblocking(False)
                sock.connect(address)
                sock.sendall(payload)
        except OSError:  # BlockingIOError included
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is over (systemd starts the units that wait for this one)."""
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        """A line a person reads in ``systemctl status`` (newlines become spaces)."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """The daemon is alive and doing its work; send at least every half
        ``watchdog_interval()``."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time for start-up or shut-down (slow storage, a large model)."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def stopping(self, status: str | None = None) -> bool:
        """Shut-down has begun."""
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd wants ``WATCHDOG=1`` (``WatchdogSec=``), or None when
    the unit has no watchdog or it is meant for another process (``WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class WatchdogKeeper:
    """Sends ``WATCHDOG=1`` every third of ``WatchdogSec=`` from the event loop while
    ``check()`` returns None; a string from ``check()`` says why the daemon is not doing
    its work: no ``WATCHDOG=1`` then, and that reason goes to ``STATUS=`` and the log
    once (``status=False``: the daemon writes its own ``STATUS=`` lines). Without a
    watchdog (outside systemd, or no ``WatchdogSec=``) it still runs the check every
    second, so ``failing`` means the same everywhere."""

    def __init__(
        self,
        notifier: ServiceNotifier,
        check: Callable[[], str | None] | None = None,
        *,
        status: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.notifier = notifier
        self._check = check or (lambda: None)
        self._report_status = status
        self.period = watchdog_interval(environ)
        #: Seconds between two checks (and two ``WATCHDOG=1``).
        self.tick = min(1.0, self.period / 3) if self.period else 1.0
        #: Why the last check failed, or None.
        self.failing: str | None = None
        #: ``WATCHDOG=1`` messages systemd took.
        self.fed = 0

    def beat(self) -> bool:
        """One check, and one ``WATCHDOG=1`` if it passed; True if the check passed."""
        try:
            why = self._check()
        except Exception as exc:  # a broken check means "not healthy", not a dead keeper
            why = f"health check failed: {exc}"
        if why is not None:
            if why != self.failing:
                _log.error("service: not doing its work (%s): watchdog not fed", why)
                if self._report_status:
                    self.notifier.status(f"{why}; watchdog not fed")
            self.failing = why
            return False
        if self.failing is not None:
            _log.warning("service: working again after: %s", self.failing)
            self.failing = None
        if self.notifier.watchdog():
            self.fed += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every ``tick`` seconds until ``stop`` is set."""
        while not stop.is_set():
            self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick)


def journal_is_stderr(environ: Mapping[str, str] | None = None) -> bool:
    """systemd connected stderr to the journal (``JOURNAL_STREAM`` is ``device:inode`` of
    stderr; when stderr was redirected since, it names another file)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _SyslogPrefix(logging.Formatter):
    """``<3>name: message``: journald reads the priority from the ``<N>`` prefix of
    stderr lines (sd-daemon(3)); used when systemd-python is missing."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelno
        priority = (
            2
            if level >= logging.CRITICAL
            else 3
            if level >= logging.ERROR
            else 4
            if level >= logging.WARNING
            else 6
            if level >= logging.INFO
            else 7
        )
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


_HANDLER_MARK = "_citywatch_handler"


def configure_logging(
    level: int | str = "INFO", *, identifier: str = "citywatch", stream: TextIO | None = None
) -> Literal["journal", "stderr"]:
    """Route the root logger to journald (under systemd) or to ``stream`` (stderr);
    returns which. Calling it again replaces the handler it installed before."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.setLevel(level)
    handler: logging.Handler
    where: Literal["journal", "stderr"]
    if stream is None and journal_is_stderr():
        where = "journal"
        try:
            journal = importlib.import_module("systemd.journal")
        except ImportError:
            # journald still reads stderr; timestamps are its own.
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_SyslogPrefix("%(name)s: %(message)s"))
            missing = True
        else:
            handler = journal.JournalHandler(SYSLOG_IDENTIFIER=identifier)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            missing = False
    else:
        where, missing = "stderr", False
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    if missing:
        _log.warning(
            "service: systemd-python is not installed; logging to journald through "
            "stderr with <priority> prefixes"
        )
    return where
