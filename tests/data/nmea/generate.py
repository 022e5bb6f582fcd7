"""Writes the NMEA logs that the GNSS tests replay through gpsfake.

Run it again only to change the logs: ``python tests/data/nmea/generate.py``. The logs are
committed; the tests never regenerate them.

- ``warsaw-3d.nmea``: a still receiver on a street pole in Warsaw (52.2297 N, 21.0122 E,
  110.4 m above mean sea level), 3D fix, 8 satellites used, HDOP 0.9, one epoch per second
  from 2024-05-14 10:00:00 UTC.
- ``warsaw-nofix.nmea``: the same receiver under a bridge: satellites in view, none used,
  GGA quality 0, RMC status V, GSA mode 1.
"""

from __future__ import annotations

import datetime as dt
from functools import reduce
from pathlib import Path

HERE = Path(__file__).resolve().parent
START = dt.datetime(2024, 5, 14, 10, 0, 0, tzinfo=dt.UTC)
EPOCHS = 30
LAT = "5213.7820,N"  # 52 deg 13.782 min = 52.2297 deg
LON = "02100.7320,E"  # 21 deg 0.732 min = 21.0122 deg
# (prn, elevation, azimuth, snr): a plausible GPS sky over Warsaw; the first 8 are used.
SKY = [
    (2, 45, 120, 42),
    (5, 30, 300, 38),
    (7, 62, 210, 45),
    (13, 18, 45, 33),
    (15, 55, 80, 44),
    (20, 25, 170, 36),
    (24, 40, 260, 40),
    (29, 70, 15, 46),
    (10, 8, 330, 0),
    (18, 5, 95, 0),
]


def sentence(body: str) -> str:
    """``$body*CS`` with the NMEA 0183 checksum: XOR of every character of the body."""
    checksum = reduce(lambda acc, ch: acc ^ ord(ch), body, 0)
    return f"${body}*{checksum:02X}\r\n"


def gsv(sky: list[tuple[int, int, int, int]], *, snr: bool) -> list[str]:
    pages = [sky[i : i + 4] for i in range(0, len(sky), 4)]
    out = []
    for n, page in enumerate(pages, start=1):
        sats = ",".join(
            f"{prn:02d},{el:02d},{az:03d}," + (f"{s:02d}" if snr and s else "")
            for prn, el, az, s in page
        )
        out.append(sentence(f"GPGSV,{len(pages)},{n},{len(sky):02d},{sats}"))
    return out


def epoch(t: dt.datetime, *, fix: bool) -> list[str]:
    hms = t.strftime("%H%M%S") + ".00"
    dmy = t.strftime("%d%m%y")
    if fix:
        used = ",".join(f"{prn:02d}" for prn, *_ in SKY[:8]) + ",,,,"
        return [
            sentence(f"GPRMC,{hms},A,{LAT},{LON},0.02,0.0,{dmy},,,A"),
            sentence(f"GPGGA,{hms},{LAT},{LON},1,08,0.9,110.4,M,33.5,M,,"),
            sentence(f"GPGSA,A,3,{used},1.6,0.9,1.3"),
            *gsv(SKY, snr=True),
        ]
    return [
        sentence(f"GPRMC,{hms},V,,,,,,,{dmy},,,N"),
        sentence(f"GPGGA,{hms},,,,,0,00,99.99,,,,,,"),
        sentence("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"),
        *gsv(SKY, snr=False),
    ]


def write(name: str, *, fix: bool) -> None:
    lines = [f"# {name}: written by generate.py beside this file; see its docstring\n"]
    for i in range(EPOCHS):
        lines += epoch(START + dt.timedelta(seconds=i), fix=fix)
    (HERE / name).write_bytes("".join(lines).encode("ascii"))


if __name__ == "__main__":
    write("warsaw-3d.nmea", fix=True)
    write("warsaw-nofix.nmea", fix=False)
