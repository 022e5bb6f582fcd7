"""GNSS: where the pole is, and what time it is.

One interface (``GnssReceiver``: ``fix()``, ``clock_offset()``, ``status()``), two
drivers chosen by ``[gnss] driver``:

- ``gpsd``: the GPS hat through gpsd. A fix is used only when gpsd reports 2D or 3D and
  it arrived within ``max_age_s``; gpsd down means no fix, and the receiver reconnects
  with back-off.
- ``none``: no receiver on this pole.

Either way ``coords(fix, registered)`` gives the ``protocol.Coords`` for a report: the
fix (``src "gps"``) or the pole's registered position (``src "fixed"``).

The driver speaks gpsd's JSON protocol over its socket itself (``?WATCH`` streaming)
rather than through the ``gpsd-py3`` package: gpsd-py3 0.3 keeps one connection in
module globals, has no timeouts (a silent gpsd blocks the caller for ever), reads fixes
by ``?POLL`` whose sky view can be half-updated (2 or 4 satellites in place of 8), reports
0 m accuracy when gpsd has no estimate, and raises bare ``Exception``/``IndexError``.

The CI fake is the real gpsd: ``GpsFake`` runs ``gpsfake`` replaying an NMEA log, and
``nmea_log()`` writes one for any position.

    HardwareError
    └── GnssError          gpsfake cannot run (not installed, or gpsd did not come up)

A receiver that is absent, silent or without fix is not an error: ``fix()`` is ``None``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from functools import reduce
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from protocol import Coords

from ._errors import HardwareError
from ._lifecycle import Startable

__all__ = [
    "SENTENCES_PER_EPOCH",
    "Fix",
    "FixMode",
    "FixedPosition",
    "GnssConfig",
    "GnssError",
    "GnssReceiver",
    "GnssStatus",
    "GpsFake",
    "GpsdConfig",
    "GpsdReceiver",
    "NoReceiver",
    "NoReceiverConfig",
    "coords",
    "nmea_log",
    "open_gnss",
    "parse_gnss_config",
]

_log = logging.getLogger(__name__)


class GnssError(HardwareError):
    """gpsfake cannot run here; the message says what to install."""


# -- what a receiver reports ----------------------------------------------------------


class FixMode(IntEnum):
    """gpsd's fix modes that give a position."""

    TWO_D = 2
    THREE_D = 3


@dataclass(frozen=True, slots=True)
class Fix:
    """A position from the receiver, recent enough to use."""

    lat: float
    """Latitude in degrees, -90..90."""
    lon: float
    """Longitude in degrees, -180..180."""
    alt: float | None
    """Altitude above mean sea level in metres (3D fixes only)."""
    acc: float | None
    """Horizontal accuracy in metres (gpsd's 95 % estimate), or None if gpsd has none."""
    mode: FixMode
    """2D or 3D."""
    satellites_used: int | None
    """Satellites in the solution, from gpsd's latest sky view; None before it came."""
    gnss_time: dt.datetime | None
    """UTC time of the fix according to the satellites."""
    age: float
    """Seconds since gpsd reported the fix (when ``fix()`` was called)."""

    def __post_init__(self) -> None:
        if not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0):
            raise ValueError(f"position out of range: {self.lat}, {self.lon}")
        if self.acc is not None and not self.acc >= 0:
            raise ValueError(f"accuracy must be 0 or more, not {self.acc}")
        if self.age < 0:
            raise ValueError(f"age must not be negative, not {self.age}")

    def to_coords(self) -> Coords:
        """The fix as report coordinates (``src "gps"``)."""
        return Coords(lat=self.lat, lon=self.lon, alt=self.alt, acc=self.acc, src="gps")


@dataclass(frozen=True, slots=True)
class GnssStatus:
    """What the receiver is doing, for ``citywatch edge status`` and STATUS lines."""

    connected: bool
    """The driver talks to gpsd."""
    devices: int
    """Receivers gpsd has open."""
    mode: int
    """Mode of the latest report: 0 unknown, 1 no fix, 2 2D, 3 3D."""
    satellites_used: int | None
    """Satellites in the solution, per the latest sky view."""
    satellites_visible: int | None
    """Satellites in view, per the latest sky view."""
    error: str | None
    """Why the driver is not connected, if it is not."""

    def describe(self) -> str:
        """One line a person can read."""
        if not self.connected:
            return f"GNSS: gpsd unreachable ({self.error or 'connecting'})"
        if self.devices == 0:
            return "GNSS: gpsd has no receiver"
        fix = {0: "no data yet", 1: "no fix", 2: "2D fix", 3: "3D fix"}.get(self.mode, "?")
        sats = ""
        if self.satellites_visible is not None:
            sats = f", {self.satellites_used or 0}/{self.satellites_visible} satellites"
        return f"GNSS: {fix}{sats}"


# -- configuration -------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )


class FixedPosition(_Section):
    """The pole's registered position: what reports carry when there is no usable fix."""

    lat: float = Field(ge=-90, le=90)
    """Latitude in degrees."""
    lon: float = Field(ge=-180, le=180)
    """Longitude in degrees."""
    alt: float | None = None
    """Altitude above mean sea level in metres, if surveyed."""
    acc: float | None = Field(None, ge=0)
    """Horizontal accuracy of the survey in metres, if known."""

    def to_coords(self) -> Coords:
        """The registered position as report coordinates (``src "fixed"``)."""
        return Coords(lat=self.lat, lon=self.lon, alt=self.alt, acc=self.acc, src="fixed")


class GpsdConfig(_Section):
    """A receiver behind gpsd."""

    driver: Literal["gpsd"]
    host: str = "127.0.0.1"
    """Where gpsd listens."""
    port: int = Field(2947, ge=1, le=65535)
    """Its TCP port."""
    max_age_s: float = Field(5.0, gt=0, le=3600)
    """A fix older than this is not used (the receiver went quiet)."""
    require_3d: bool = False
    """Use 3D fixes only (a 2D fix has no altitude and is often poor)."""
    max_acc_m: float | None = Field(None, gt=0)
    """A fix whose horizontal accuracy is worse than this is not used; none: any."""
    connect_timeout_s: float = Field(3.0, gt=0, le=60)
    """How long one connection attempt to gpsd may take."""
    reconnect_initial_s: float = Field(0.5, gt=0, le=600)
    """First wait before reconnecting to gpsd; doubles on every failure."""
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    """Longest wait between two attempts."""


class NoReceiverConfig(_Section):
    """No receiver on this pole: reports always carry the registered position."""

    driver: Literal["none"]


GnssConfig = Annotated[GpsdConfig | NoReceiverConfig, Field(discriminator="driver")]
"""The ``[gnss]`` section: ``driver`` picks the model."""

_ADAPTER: TypeAdapter[GpsdConfig | NoReceiverConfig] = TypeAdapter(GnssConfig)


def parse_gnss_config(data: Any) -> GpsdConfig | NoReceiverConfig:
    """Validate a ``[gnss]`` table."""
    return _ADAPTER.validate_python(data)


# -- receivers -----------------------------------------------------------------------


class GnssReceiver(Startable):
    """A source of position fixes and of satellite time."""

    @property
    @abstractmethod
    def description(self) -> str:
        """What the receiver is, for logs."""

    @abstractmethod
    def start(self) -> None:
        """Begin listening; never fails because the receiver is absent."""

    @abstractmethod
    def stop(self) -> None:
        """Stop listening; safe to call twice."""

    @abstractmethod
    def fix(self) -> Fix | None:
        """The current fix if it is good and recent enough to use, else None."""

    @abstractmethod
    def clock_offset(self) -> float | None:
        """GNSS time minus this machine's clock, in seconds, from a recent fix: positive
        means the system clock is behind. None without a recent fix. It is measured when
        gpsd's report arrives, so it includes the report's delay (well under a second):
        good for telling a wrong clock, not for setting one precisely."""

    @abstractmethod
    def status(self) -> GnssStatus:
        """What the receiver is doing."""



class NoReceiver(GnssReceiver):
    """The pole has no receiver."""

    @property
    def description(self) -> str:
        return "no GNSS receiver"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def fix(self) -> Fix | None:
        return None

    def clock_offset(self) -> float | None:
        return None

    def status(self) -> GnssStatus:
        return GnssStatus(connected=False, devices=0, mode=0, satellites_used=None,
                          satellites_visible=None, error="no receiver configured")


@dataclass(frozen=True, slots=True)
class _Report:
    """The latest TPV with a position, stamped on arrival."""

    lat: float
    lon: float
    alt: float | None
    acc: float | None
    mode: FixMode
    gnss_time: dt.datetime | None
    received: float  # monotonic
    offset: float | None


def _number(msg: dict[str, Any], key: str) -> float | None:
    value = msg.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


_MAX_LINE = 1 << 20  # gpsd's longest reports (SKY with many satellites) are a few kB


class GpsdReceiver(GnssReceiver):
    """gpsd's JSON protocol (``?WATCH={"enable":true,"json":true}``) on a reader thread."""

    def __init__(
        self,
        config: GpsdConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock, self._wall = clock, wall_clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._connected = False
        self._devices: set[str] = set()
        self._mode = 0
        self._used: int | None = None
        self._visible: int | None = None
        self._error: str | None = None
        self._report: _Report | None = None

    @property
    def description(self) -> str:
        return f"gpsd at {self._config.host}:{self._config.port}"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gnss-gpsd", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        thread.join(self._config.connect_timeout_s + 2.0)

    # -- reading -----------------------------------------------------------------------

    def _run(self) -> None:
        cfg = self._config
        delay = cfg.reconnect_initial_s
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((cfg.host, cfg.port), cfg.connect_timeout_s)
            except OSError as exc:
                self._lost(f"cannot connect: {exc.strerror or exc}")
            else:
                self._sock = sock
                try:
                    if self._session(sock):
                        delay = cfg.reconnect_initial_s  # it worked for a while: retry soon
                except (OSError, ValueError) as exc:
                    self._lost(str(exc) if isinstance(exc, ValueError)
                               else f"connection failed: {exc.strerror or exc}")
                finally:
                    self._sock = None
                    sock.close()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, cfg.reconnect_max_s)
        self._lost("stopped")

    def _session(self, sock: socket.socket) -> bool:
        """Read reports until the connection ends; True if gpsd greeted us."""
        sock.settimeout(0.5)  # wake up now and then to notice stop()
        sock.sendall(b'?WATCH={"enable":true,"json":true};\n')
        buffer = b""
        greeted = False
        while not self._stop.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                if self._stop.is_set():
                    break
                if greeted:
                    self._lost("gpsd closed the connection")
                    return True
                raise ValueError("gpsd closed the connection before greeting")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > _MAX_LINE:
                raise ValueError("gpsd sent a line longer than 1 MiB")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    raise ValueError(f"not gpsd on port {self._config.port}? it sent "
                                     f"{line[:60]!r}") from None
                if not isinstance(message, dict):
                    raise ValueError(f"not gpsd on port {self._config.port}? it sent "
                                     f"JSON that is not an object")
                if message.get("class") == "VERSION" and not greeted:
                    greeted = True
                    self._greeted(message)
                self._handle(message)
        return greeted

    def _greeted(self, version: dict[str, Any]) -> None:
        with self._lock:
            was = self._connected
            self._connected, self._error = True, None
        if not was:
            _log.info("gnss: connected to gpsd %s at %s:%d", version.get("release", "?"),
                      self._config.host, self._config.port)

    def _lost(self, why: str) -> None:
        with self._lock:
            was = self._connected
            self._connected, self._error = False, why
            self._devices.clear()
            self._mode, self._used, self._visible, self._report = 0, None, None, None
        if was and why != "stopped":
            _log.warning("gnss: lost gpsd at %s:%d (%s); reconnecting",
                         self._config.host, self._config.port, why)

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("class")
        with self._lock:
            if kind == "DEVICES":
                self._devices = {str(d.get("path")) for d in msg.get("devices", [])
                                 if isinstance(d, dict)}
            elif kind == "DEVICE":
                path = str(msg.get("path"))
                if msg.get("activated"):
                    self._devices.add(path)
                else:
                    self._devices.discard(path)
            elif kind == "SKY":
                self._sky(msg)
            elif kind == "TPV":
                self._tpv(msg)
            elif kind == "ERROR":
                _log.warning("gnss: gpsd says: %s", msg.get("message"))

    def _sky(self, msg: dict[str, Any]) -> None:
        sats = [s for s in msg.get("satellites", []) if isinstance(s, dict)]
        used, visible = msg.get("uSat"), msg.get("nSat")
        self._used = used if isinstance(used, int) else sum(1 for s in sats if s.get("used"))
        self._visible = visible if isinstance(visible, int) else len(sats)

    def _tpv(self, msg: dict[str, Any]) -> None:
        mode = msg.get("mode")
        self._mode = mode if isinstance(mode, int) else 0
        lat, lon = _number(msg, "lat"), _number(msg, "lon")
        if self._mode < 2 or lat is None or lon is None:
            self._report = None  # the fix is lost now, not max_age_s from now
            return
        eph = _number(msg, "eph")
        epx, epy = _number(msg, "epx"), _number(msg, "epy")
        acc = eph if eph is not None else (
            max(epx, epy) if epx is not None and epy is not None else None)
        alt = None
        if self._mode == 3:
            alt = _number(msg, "altMSL")
            if alt is None:
                alt = _number(msg, "alt")  # gpsd before 3.20
        gnss_time = _parse_time(msg.get("time"))
        offset = None if gnss_time is None else gnss_time.timestamp() - self._wall()
        self._report = _Report(lat=lat, lon=lon, alt=alt, acc=acc, mode=FixMode(self._mode),
                               gnss_time=gnss_time, received=self._clock(), offset=offset)

    # -- GnssReceiver ------------------------------------------------------------------

    def _recent(self) -> tuple[_Report, float] | None:
        report = self._report
        if report is None:
            return None
        age = max(self._clock() - report.received, 0.0)
        if age > self._config.max_age_s:
            return None
        return report, age

    def fix(self) -> Fix | None:
        with self._lock:
            recent = self._recent()
            used = self._used
        if recent is None:
            return None
        report, age = recent
        cfg = self._config
        if cfg.require_3d and report.mode is not FixMode.THREE_D:
            return None
        if cfg.max_acc_m is not None and (report.acc is None or report.acc > cfg.max_acc_m):
            return None
        return Fix(lat=report.lat, lon=report.lon, alt=report.alt, acc=report.acc,
                   mode=report.mode, satellites_used=used, gnss_time=report.gnss_time, age=age)

    def clock_offset(self) -> float | None:
        with self._lock:
            recent = self._recent()
        return None if recent is None else recent[0].offset

    def status(self) -> GnssStatus:
        with self._lock:
            return GnssStatus(connected=self._connected, devices=len(self._devices),
                              mode=self._mode, satellites_used=self._used,
                              satellites_visible=self._visible, error=self._error)


def open_gnss(
    config: GpsdConfig | NoReceiverConfig, *, clock: Callable[[], float] = time.monotonic
) -> GnssReceiver:
    """The receiver the configuration names, not started yet. ``clock`` (monotonic
    seconds) measures the age of fixes; tests may drive it."""
    if isinstance(config, GpsdConfig):
        return GpsdReceiver(config, clock=clock)
    return NoReceiver()


def coords(fix: Fix | None, registered: FixedPosition) -> Coords:
    """What a report says about where the pole is: the fix, else the registered position."""
    return fix.to_coords() if fix is not None else registered.to_coords()


# -- the CI fake: gpsd fed by gpsfake ------------------------------------------------


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
    sky = [(2, 45, 120, 42), (5, 30, 300, 38), (7, 62, 210, 45), (13, 18, 45, 33),
           (15, 55, 80, 44), (20, 25, 170, 36), (24, 40, 260, 40), (29, 70, 15, 46)]
    position = f"{_nmea_angle(lat, 2, 'NS')},{_nmea_angle(lon, 3, 'EW')}"
    used = ",".join(f"{s[0]:02d}" for s in sky) + ",,,,"
    gsv = []
    for page in range(2):
        sats = ",".join(f"{p:02d},{e:02d},{a:03d},{snr if fix else ''}"
                        for p, e, a, snr in sky[page * 4:page * 4 + 4])
        gsv.append(_nmea(f"GPGSV,2,{page + 1},08,{sats}"))
    out = []
    for i in range(epochs):
        t = start.astimezone(dt.UTC) + dt.timedelta(seconds=i)
        hms, dmy = t.strftime("%H%M%S") + ".00", t.strftime("%d%m%y")
        if fix:
            out += [_nmea(f"GPRMC,{hms},A,{position},0.00,0.0,{dmy},,,A"),
                    _nmea(f"GPGGA,{hms},{position},1,08,0.9,{alt:.1f},M,0.0,M,,"),
                    _nmea(f"GPGSA,A,3,{used},1.6,0.9,1.3")]
        else:
            out += [_nmea(f"GPRMC,{hms},V,,,,,,,{dmy},,,N"),
                    _nmea(f"GPGGA,{hms},,,,,0,00,99.99,,,,,,"),
                    _nmea("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99")]
        out += gsv
    return "".join(out)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path,
                 output: Path | None) -> None:
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
            fake = cls._spawn(exe, log, port or _free_port(), cycle, once, output)
            problem = fake._wait_ready(ready_timeout)
            if not problem:
                return fake
            fake.stop()
            _log.warning("gnss: gpsfake did not come up (%s); trying again", problem)
        raise GnssError(problem + fake._tail())

    @classmethod
    def _spawn(cls, exe: str, log: Path, port: int, cycle: float, once: bool,
               output: Path | None) -> GpsFake:
        # -n: feed without waiting for a client; -q: no chatter; its own session, so that
        # stop() can end gpsfake and the gpsd it started together.
        cmd = [exe, "-n", "-q", "-P", str(port), "-c", f"{cycle:g}"]
        if once:
            cmd += ["-1", "-W", "3600"]  # -W: stay up after the log ends (default 60 s)
        cmd.append(str(log))
        sink = open(output, "ab") if output is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink,
                                       stderr=subprocess.STDOUT, start_new_session=True)
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
