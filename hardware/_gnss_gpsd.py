"""The ``gpsd`` GNSS driver: the GPS hat through gpsd, with its configuration model.

A fix is used only when gpsd reports 2D or 3D and it arrived within ``max_age_s``; gpsd
down means no fix, and the receiver reconnects with back-off.

The driver speaks gpsd's JSON protocol over its socket itself (``?WATCH`` streaming)
rather than through the ``gpsd-py3`` package: gpsd-py3 0.3 keeps one connection in
module globals, has no timeouts (a silent gpsd blocks the caller for ever), reads fixes
by ``?POLL`` whose sky view can be half-updated (2 or 4 satellites in place of 8), reports
0 m accuracy when gpsd has no estimate, and raises bare ``Exception``/``IndexError``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from ._gnss_base import Fix, FixMode, GnssReceiver, GnssSection, GnssStatus

__all__ = ["GpsdConfig", "GpsdReceiver"]

_log = logging.getLogger("hardware._gnss")


class GpsdConfig(GnssSection):
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

    driver: ClassVar[str] = "gpsd"

    @classmethod
    def from_config(cls, config: Any, *, clock: Callable[[], float]) -> GpsdReceiver:
        if not isinstance(config, GpsdConfig):
            raise TypeError(f"the gpsd driver takes a GpsdConfig, not {type(config)}")
        return cls(config, clock=clock)

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
                    self._lost(
                        str(exc)
                        if isinstance(exc, ValueError)
                        else f"connection failed: {exc.strerror or exc}"
                    )
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
                    raise ValueError(
                        f"not gpsd on port {self._config.port}? it sent {line[:60]!r}"
                    ) from None
                if not isinstance(message, dict):
                    raise ValueError(
                        f"not gpsd on port {self._config.port}? it sent JSON that is not an object"
                    )
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
            _log.info(
                "gnss: connected to gpsd %s at %s:%d",
                version.get("release", "?"),
                self._config.host,
                self._config.port,
            )

    def _lost(self, why: str) -> None:
        with self._lock:
            was = self._connected
            self._connected, self._error = False, why
            self._devices.clear()
            self._mode, self._used, self._visible, self._report = 0, None, None, None
        if was and why != "stopped":
            _log.warning(
                "gnss: lost gpsd at %s:%d (%s); reconnecting",
                self._config.host,
                self._config.port,
                why,
            )

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("class")
        with self._lock:
            if kind == "DEVICES":
                self._devices = {
                    str(d.get("path")) for d in msg.get("devices", []) if isinstance(d, dict)
                }
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
        acc = (
            eph
            if eph is not None
            else (max(epx, epy) if epx is not None and epy is not None else None)
        )
        alt = None
        if self._mode == 3:
            alt = _number(msg, "altMSL")
            if alt is None:
                alt = _number(msg, "alt")  # gpsd before 3.20
        gnss_time = _parse_time(msg.get("time"))
        offset = None if gnss_time is None else gnss_time.timestamp() - self._wall()
        self._report = _Report(
            lat=lat,
            lon=lon,
            alt=alt,
            acc=acc,
            mode=FixMode(self._mode),
            gnss_time=gnss_time,
            received=self._clock(),
            offset=offset,
        )

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
        return Fix(
            lat=report.lat,
            lon=report.lon,
            alt=report.alt,
            acc=report.acc,
            mode=report.mode,
            satellites_used=used,
            gnss_time=report.gnss_time,
            age=age,
        )

    def clock_offset(self) -> float | None:
        with self._lock:
            recent = self._recent()
        return None if recent is None else recent[0].offset

    def status(self) -> GnssStatus:
        with self._lock:
            return GnssStatus(
                connected=self._connected,
                devices=len(self._devices),
                mode=self._mode,
                satellites_used=self._used,
                satellites_visible=self._visible,
                error=self._error,
            )
