"""The CI's GNSS receiver: the real gpsd fed by ``gpsfake`` replaying an NMEA log
(``GpsFake``), and ``nmea_log()`` that writes one for any position.

    HardwareError
    └── GnssError          gpsfake cannot run (not installed, or gpsd did not come up)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from functools import reduce
from pathlib import Path
from types import TracebackType

from ._errors import HardwareError
from ._ports import loopback_port

__all__ = ["SENTENCES_PER_EPOCH", "GnssError", "GpsFake", "nmea_log"]

_log = logging.getLogger("hardware._gnss")


class GnssError(HardwareError):
    """gpsfake cannot run here; the message says what to install."""


def _nmea(body: str) -> str:
    checksum = reduce(lambda acc, ch: acc ^ ord(ch), body, 0)
    return f"${body}*{checksum:02X}\r\n"


def _nmea_angle(value: float, degree_digits: int, hemispheres: str) -> str:
    hemisphere = hemispheres[0] if value >= 0 else hemispheres[1]
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60
    if round(minutes, 4) >= 60:  # 59.99999' rounds up to the next degree
        degrees, minutes = degrees + 1, 0.0
    return f"{degrees:0{degree_digits}d}{minutes:07.4f},{hemisphere}"


SENTENCES_PER_EPOCH = 5
"""Sentences in one epoch of ``nmea_log()``: RMC, GGA, GSA and two GSV."""


def nmea_log(
    lat: float,
    lon: float,
    *,
    alt: float = 100.0,
    start: dt.datetime,
    epochs: int = 60,
    fix: bool = True,
) -> str:
    """An NMEA 0183 log of a receiver standing still at (lat, lon): one epoch a second of
    RMC, GGA, GSA and two GSV (8 satellites used, HDOP 0.9), or no fix (``fix=False``).
    An epoch is ``SENTENCES_PER_EPOCH`` sentences, so ``GpsFake.start(log, cycle=0.2)``
    plays it in real time (a faster cycle makes the GNSS clock run fast)."""
    if start.tzinfo is None:
        raise ValueError("start must carry a time zone (UTC)")
    sky = [
        (2, 45, 120, 42),
        (5, 30, 300, 38),
        (7, 62, 210, 45),
        (13, 18, 45, 33),
        (15, 55, 80, 44),
        (20, 25, 170, 36),
        (24, 40, 260, 40),
        (29, 70, 15, 46),
    ]
    position = f"{_nmea_angle(lat, 2, 'NS')},{_nmea_angle(lon, 3, 'EW')}"
    used = ",".join(f"{s[0]:02d}" for s in sky) + ",,,,"
    gsv = []
    for page in range(2):
        sats = ",".join(
            f"{p:02d},{e:02d},{a:03d},{snr if fix else ''}"
            for p, e, a, snr in sky[page * 4 : page * 4 + 4]
        )
        gsv.append(_nmea(f"GPGSV,2,{page + 1},08,{sats}"))
    out = []
    for i in range(epochs):
        t = start.astimezone(dt.UTC) + dt.timedelta(seconds=i)
        hms, dmy = t.strftime("%H%M%S") + ".00", t.strftime("%d%m%y")
        if fix:
            out += [
                _nmea(f"GPRMC,{hms},A,{position},0.00,0.0,{dmy},,,A"),
                _nmea(f"GPGGA,{hms},{position},1,08,0.9,{alt:.1f},M,0.0,M,,"),
                _nmea(f"GPGSA,A,3,{used},1.6,0.9,1.3"),
            ]
        else:
            out += [
                _nmea(f"GPRMC,{hms},V,,,,,,,{dmy},,,N"),
                _nmea(f"GPGGA,{hms},,,,,0,00,99.99,,,,,,"),
                _nmea("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"),
            ]
        out += gsv
    return "".join(out)


def _lists_a_device(sock: socket.socket, timeout: float) -> bool:
    """Whether the gpsd on ``sock`` reports an open receiver within ``timeout`` seconds."""
    sock.settimeout(timeout)
    sock.sendall(b'?WATCH={"enable":true,"json":true};\n')
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            return False
        if not chunk:
            return False
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and (
                    (msg.get("class") == "DEVICES" and msg.get("devices"))
                    or (msg.get("class") == "DEVICE" and msg.get("activated"))
                ):
                    return True
    return False


class GpsFake:
    """A real gpsd on a loopback port, fed an NMEA log by ``gpsfake``: the GNSS receiver
    of CI and of ``citywatch demo``. Use ``GpsFake.start(...)``; ``stop()`` ends both
    gpsfake and its gpsd."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, log: Path, output: Path | None
    ) -> None:
        self.process = process
        self.host = "127.0.0.1"
        self.port = port
        self.log = log
        self._output = output

    @classmethod
    def start(
        cls,
        log: Path,
        *,
        port: int | None = None,
        cycle: float = 0.1,
        once: bool = False,
        ready_timeout: float = 15.0,
        output: Path | None = None,
    ) -> GpsFake:
        """Replay ``log`` (looping unless ``once``), one sentence every ``cycle`` seconds;
        returns once gpsd accepts connections and has the fake receiver open. ``output``
        collects gpsfake's and gpsd's messages."""
        exe = shutil.which("gpsfake")
        if exe is None:
            raise GnssError("gpsfake is not installed: apt install gpsd gpsd-clients")
        if not log.is_file():
            raise GnssError(f"NMEA log {log} does not exist")
        # gpsfake hands the receiver to gpsd through gpsd's control socket as soon as the
        # socket file exists; if gpsd is not listening on it yet, gpsfake drops the device
        # silently and gpsd runs with no receiver (seen under load). Check, and try again.
        problem = ""
        for _attempt in range(3):
            fake = cls._spawn(exe, log, port or loopback_port(), cycle, once, output)
            problem = fake._wait_ready(ready_timeout)
            if not problem:
                return fake
            fake.stop()
            _log.warning("gnss: gpsfake did not come up (%s); trying again", problem)
        raise GnssError(problem + fake._tail())

    @classmethod
    def _spawn(
        cls, exe: str, log: Path, port: int, cycle: float, once: bool, output: Path | None
    ) -> GpsFake:
        # -n: feed without waiting for a client; -q: no chatter; its own session, so that
        # stop() can end gpsfake and the gpsd it started together.
        cmd = [exe, "-n", "-q", "-P", str(port), "-c", f"{cycle:g}"]
        if once:
            cmd += ["-1", "-W", "3600"]  # -W: stay up after the log ends (default 60 s)
        cmd.append(str(log))
        sink = open(output, "ab") if output is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if output is not None:
                sink.close()  # type: ignore[union-attr]
        return cls(process, port, log, output)

    def _wait_ready(self, timeout: float) -> str:
        """'' once gpsd lists a receiver, else what went wrong."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"gpsfake exited with status {self.process.returncode}"
            try:
                with socket.create_connection((self.host, self.port), 0.5) as sock:
                    if _lists_a_device(sock, min(3.0, max(deadline - time.monotonic(), 0.1))):
                        return ""
                    return f"gpsd on port {self.port} has no receiver"
            except OSError:
                time.sleep(0.05)
        return f"gpsd did not listen on port {self.port} within {timeout:g} s"

    def _tail(self) -> str:
        if self._output is None or not self._output.is_file():
            return ""
        return ": " + self._output.read_text(errors="replace")[-500:].strip()

    def stop(self) -> None:
        """End gpsfake and its gpsd (they share a process group, whose id is gpsfake's
        pid); safe to call twice."""
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            self.process.wait(5)
        # gpsd, gpsfake's child, may outlive it by a moment.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)

    def __enter__(self) -> GpsFake:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
