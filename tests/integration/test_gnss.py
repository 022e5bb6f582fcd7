"""The gpsd driver against the real gpsd, fed by ``gpsfake`` from the NMEA logs in
tests/data/nmea/ (see generate.py there): a pole in Warsaw with a 3D fix, and the same
pole without a fix. Every wait is bounded; a missing gpsd/gpsfake skips with the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import ValidationError

from hardware._gnss import (
    FixedPosition,
    FixMode,
    GnssError,
    GnssReceiver,
    GpsdConfig,
    GpsdReceiver,
    GpsFake,
    NoReceiver,
    coords,
    nmea_log,
    open_gnss,
    parse_gnss_config,
)
from tests.support.services import free_port

NMEA = Path(__file__).resolve().parents[1] / "data" / "nmea"
WARSAW_3D = NMEA / "warsaw-3d.nmea"
WARSAW_NOFIX = NMEA / "warsaw-nofix.nmea"
LOG_START = dt.datetime(2024, 5, 14, 10, 0, 0, tzinfo=dt.UTC)  # first epoch of both logs
LOG_END = LOG_START + dt.timedelta(seconds=29)
REGISTERED = FixedPosition(lat=52.2301, lon=21.0118, alt=None, acc=3.0)
WAIT = 20.0  # seconds: generous bound for gpsd to start and report, never reached when healthy

T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    shutil.which("gpsfake") is None, reason="gpsfake is not installed (apt install gpsd-clients)"
)


class ManualClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    within: float = WAIT,
    gnss: GnssReceiver | None = None,
    fake: GpsFake | None = None,
) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = probe()
        if value is not None and value is not False:
            return value
        time.sleep(0.05)
    state = f"; {gnss.status()}" if gnss is not None else ""
    if fake is not None:
        state += f"; gpsfake {'running' if fake.process.poll() is None else 'exited'}"
    raise AssertionError(f"{what}: not within {within} s{state}")


def start_fake(log: Path, out: Path, **kwargs: object) -> GpsFake:
    return GpsFake.start(log, output=out / "gpsfake.log", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def warsaw_3d(tmp_path: Path) -> Iterator[GpsFake]:
    with start_fake(WARSAW_3D, tmp_path) as fake:
        yield fake


def receiver(fake: GpsFake, **extra: object) -> GpsdReceiver:
    config = parse_gnss_config(
        {
            "driver": "gpsd",
            "host": fake.host,
            "port": fake.port,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.5,
            **extra,
        }
    )
    gnss = open_gnss(config)
    assert isinstance(gnss, GpsdReceiver)
    return gnss


def test_a_3d_fix_from_gpsd(warsaw_3d: GpsFake) -> None:
    with receiver(warsaw_3d) as gnss:
        fix = wait_for(
            "a 3D fix with the full sky view",
            lambda: (
                f
                if (f := gnss.fix()) and f.mode is FixMode.THREE_D and f.satellites_used == 8
                else None
            ),
        )
        status = gnss.status()
    assert fix.lat == pytest.approx(52.2297, abs=1e-7)
    assert fix.lon == pytest.approx(21.0122, abs=1e-7)
    assert fix.alt == pytest.approx(110.4)  # above mean sea level (GGA), not the ellipsoid
    assert fix.acc is not None and 0 < fix.acc < 50  # gpsd's eph from HDOP 0.9
    assert fix.gnss_time is not None and LOG_START <= fix.gnss_time <= LOG_END
    assert 0 <= fix.age <= 5.0
    assert status.connected and status.devices == 1 and status.mode == 3
    assert status.satellites_visible == 10 and status.describe() == "GNSS: 3D fix, 8/10 satellites"
    wire = coords(fix, REGISTERED)
    assert (wire.src, wire.lat, wire.lon, wire.alt) == ("gps", fix.lat, fix.lon, fix.alt)


def test_the_clock_offset_shows_the_system_clock_is_not_2024(warsaw_3d: GpsFake) -> None:
    with receiver(warsaw_3d) as gnss:
        before = time.time()
        offset = wait_for("a clock offset", gnss.clock_offset)
        after = time.time()
    # GNSS time is somewhere in the log; the system clock read it between before and after.
    assert LOG_START.timestamp() - after <= offset <= LOG_END.timestamp() - before
    assert offset < -3600  # this machine's clock is not in May 2024: the daemon can tell


def test_no_fix_falls_back_to_the_registered_position(tmp_path: Path) -> None:
    with start_fake(WARSAW_NOFIX, tmp_path) as fake, receiver(fake) as gnss:
        wait_for("gpsd reporting 'no fix'", lambda: gnss.status().mode == 1)
        fix, offset, status = gnss.fix(), gnss.clock_offset(), gnss.status()
    assert fix is None and offset is None
    assert status.connected and status.devices == 1
    assert status.describe().startswith("GNSS: no fix")
    wire = coords(fix, REGISTERED)
    assert wire.to_map() == {
        "lat": 52.2301,
        "lon": 21.0118,
        "alt": None,
        "acc": 3.0,
        "src": "fixed",
    }


def test_a_fix_that_stops_coming_gets_too_old(tmp_path: Path) -> None:
    clock = ManualClock()
    with start_fake(WARSAW_3D, tmp_path, once=True, cycle=0.01) as fake:
        config = GpsdConfig(driver="gpsd", host=fake.host, port=fake.port, max_age_s=5.0)
        with GpsdReceiver(config, clock=clock) as gnss:
            # The log plays once; its last epoch is 10:00:29. After it, gpsd stays up with
            # nothing new to say, so the fix ages on the test's clock alone.
            last = wait_for(
                "the last epoch of the log",
                lambda: f if (f := gnss.fix()) and f.gnss_time == LOG_END else None,
            )
            assert last.age == 0
            clock.now += 4.9
            aged = gnss.fix()
            assert aged is not None and aged.age == pytest.approx(4.9)
            assert gnss.clock_offset() is not None
            clock.now += 0.2
            assert gnss.fix() is None and gnss.clock_offset() is None
            assert gnss.status().connected


def test_quality_limits_reject_fixes(warsaw_3d: GpsFake) -> None:
    with receiver(warsaw_3d, max_acc_m=1.0) as picky, receiver(warsaw_3d) as plain:
        wait_for("a fix", plain.fix, gnss=plain, fake=warsaw_3d)
        wait_for(
            "gpsd reporting 3D to the picky receiver",
            lambda: picky.status().mode == 3,
            gnss=picky,
            fake=warsaw_3d,
        )
        assert picky.fix() is None  # eph is about 17 m, worse than 1 m


def test_gpsd_down_clears_the_status_and_comes_back(tmp_path: Path) -> None:
    port = free_port()
    gnss = GpsdReceiver(
        GpsdConfig(
            driver="gpsd",
            port=port,
            reconnect_initial_s=0.1,
            reconnect_max_s=0.4,
            connect_timeout_s=1.0,
        )
    )
    with gnss:
        # Nothing listens yet: no fix, no exception, a status that says why.
        wait_for("the first failed attempt", lambda: gnss.status().error)
        status = gnss.status()
        assert not status.connected and "cannot connect" in (status.error or "")
        assert gnss.fix() is None
        assert status.describe().startswith("GNSS: gpsd unreachable")

        fake = start_fake(WARSAW_3D, tmp_path, port=port)
        try:
            wait_for("a fix once gpsd is up", gnss.fix, gnss=gnss, fake=fake)
        finally:
            fake.stop()
        wait_for("noticing gpsd went away", lambda: not gnss.status().connected)
        status = gnss.status()
        assert gnss.fix() is None and gnss.clock_offset() is None
        assert (status.devices, status.mode, status.satellites_used) == (0, 0, None)

        with start_fake(WARSAW_3D, tmp_path, port=port):
            wait_for("a fix after gpsd came back", gnss.fix)


def test_something_else_on_the_port_is_named_in_the_status() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def greet() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=greet, daemon=True).start()
    try:
        config = GpsdConfig(driver="gpsd", port=port, reconnect_initial_s=0.1, reconnect_max_s=0.2)
        with GpsdReceiver(config) as gnss:
            error = wait_for("a failed session", lambda: gnss.status().error)
            assert gnss.fix() is None and not gnss.status().connected
    finally:
        listener.close()
    assert error.startswith(f"not gpsd on port {port}? it sent b'SSH-2.0-OpenSSH")


def test_nmea_log_writes_what_gpsd_reads_back(tmp_path: Path) -> None:
    # Somewhere south and west, to exercise both hemispheres and the 3-digit longitude.
    log = tmp_path / "pole.nmea"
    start = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    log.write_text(nmea_log(-33.8688, -151.2093, alt=42.0, start=start, epochs=20))
    with start_fake(log, tmp_path) as fake, receiver(fake) as gnss:
        fix = wait_for(
            "a 3D fix", lambda: f if (f := gnss.fix()) and f.mode is FixMode.THREE_D else None
        )
    assert (fix.lat, fix.lon) == (
        pytest.approx(-33.8688, abs=1e-6),
        pytest.approx(-151.2093, abs=1e-6),
    )
    assert fix.alt == pytest.approx(42.0)
    assert fix.gnss_time is not None and start <= fix.gnss_time < start + dt.timedelta(seconds=20)


def test_no_receiver_always_means_the_registered_position() -> None:
    gnss: GnssReceiver = open_gnss(parse_gnss_config({"driver": "none"}))
    assert isinstance(gnss, NoReceiver)
    with gnss:
        assert gnss.fix() is None and gnss.clock_offset() is None
    assert coords(gnss.fix(), REGISTERED).src == "fixed"


def test_gnss_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        parse_gnss_config({"driver": "gpsd", "hostname": "localhost"})
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_gnss_config({"driver": "nmea-serial"})
    with pytest.raises(ValidationError, match="port"):
        parse_gnss_config({"driver": "gpsd", "port": 70000})
    with pytest.raises(ValidationError, match="lat"):
        FixedPosition(lat=91.0, lon=0.0)


def test_gpsfake_reports_a_missing_log(tmp_path: Path) -> None:
    with pytest.raises(GnssError, match="does not exist"):
        GpsFake.start(tmp_path / "absent.nmea")
