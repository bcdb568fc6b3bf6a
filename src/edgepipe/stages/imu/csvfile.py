"""Reading an IMU recording from CSV: columns found by their header names, units converted (deg/s, g, ms ...),
malformed rows skipped and counted, optional linear resampling. Used by ``CsvSource``.

>>> unit("Gyroscope X (deg/s)")
'deg/s'
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from edgepipe.errors import ImuDeviceNotFoundError, ImuSourceError

__all__: list[str] = []  # shared with edgepipe.stages.imu.sources, not API

G = 9.80665  # m/s^2 per g

UNIT = re.compile(r"\(([^)]*)\)")


def column(header: list[str], kind: tuple[str, ...], axis: str) -> int | None:
    for i, h in enumerate(header):
        low = h.strip().lower()
        if any(low.startswith(k) for k in kind) and re.search(rf"(^|[\s_]){axis}(\s|$|\(|_)", low.split("(")[0] + " "):
            return i
    return None


def unit(header: str) -> str:
    m = UNIT.search(header)
    return m.group(1).strip().lower() if m else ""


def parse_csv(path: Path, src):
    try:
        return _parse_csv(path, src)
    except (UnicodeDecodeError, csv.Error) as e:  # bytes that are not UTF-8 text, a field over csv's limit
        raise ImuSourceError(f"{str(path)!r} is not a readable CSV file: {e}") from None


def _parse_csv(path: Path, src):
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ImuSourceError(f"{str(path)!r} is empty: no header row") from None
        cols: dict[str, int] = {}
        t_col = next((i for i, h in enumerate(header) if h.strip().lower().startswith(("time", "t ", "t("))), None)
        if t_col is None and header and header[0].strip().lower() in ("t", "time"):
            t_col = 0
        if t_col is None:
            raise ImuSourceError(f"{str(path)!r}: no time column in header {header!r}")
        for name, kind in (("gyr", ("gyr",)), ("acc", ("acc",)), ("mag", ("mag",))):
            for ax in "xyz":
                c = column(header, kind, ax)
                if c is not None:
                    cols[name + ax] = c
        for need in ("gyrx", "gyry", "gyrz", "accx", "accy", "accz"):
            if need not in cols:
                raise ImuDeviceNotFoundError(f"{str(path)!r}: no {need[:3]} {need[3]} column in header {header!r}")
        have_mag = all(f"mag{a}" in cols for a in "xyz")
        t_unit = unit(header[t_col])
        t_scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "": 1.0}.get(t_unit)
        g_unit = unit(header[cols["gyrx"]])
        a_unit = unit(header[cols["accx"]])
        if t_scale is None:
            raise ImuSourceError(f"{str(path)!r}: time unit {t_unit!r} is not s, ms, us or ns")
        g_scale = {"deg/s": math.pi / 180, "dps": math.pi / 180, "rad/s": 1.0, "": 1.0}.get(g_unit)
        if g_scale is None:
            raise ImuSourceError(f"{str(path)!r}: gyro unit {g_unit!r} is not deg/s or rad/s")
        a_scale = {"g": G, "m/s^2": 1.0, "m/s2": 1.0, "m/s²": 1.0, "": 1.0}.get(a_unit)
        if a_scale is None:
            raise ImuSourceError(f"{str(path)!r}: accelerometer unit {a_unit!r} is not g or m/s^2")
        order = [t_col] + [cols[k] for k in ("gyrx", "gyry", "gyrz", "accx", "accy", "accz")]
        if have_mag:
            order += [cols["magx"], cols["magy"], cols["magz"]]
        out = []
        for lineno, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                src.malformed_rows += 1
                src.malformed_lines.append(lineno)
                continue
            try:
                out.append([float(row[i]) for i in order])
            except ValueError:
                src.malformed_rows += 1
                src.malformed_lines.append(lineno)
    if len(out) < 2:
        raise ImuSourceError(
            f"{str(path)!r}: {len(out)} usable rows ({src.malformed_rows} malformed, lines "
            f"{src.malformed_lines[:5]}); need at least 2"
        )
    a = np.array(out, dtype=np.float64)
    mag = a[:, 7:10] if have_mag else None
    return a[:, 0] * t_scale, a[:, 1:4] * g_scale, a[:, 4:7] * a_scale, mag


MAX_RESAMPLED_ROWS = 1 << 22  # 70 minutes at 1 kHz: 320 MiB of rows


def resample(t, gyr, acc, mag, rate_hz):
    t = t - t[0]
    span = float(t[-1])
    if not (math.isfinite(span) and span > 0):
        raise ImuSourceError(f"cannot resample: the time column spans {span!r} s from first row to last "
                             f"(it must be finite and increase)")
    if span * rate_hz >= MAX_RESAMPLED_ROWS:
        raise ImuSourceError(f"cannot resample {span:g} s at {rate_hz:g} Hz: over {MAX_RESAMPLED_ROWS} rows")
    n = int(math.floor(span * rate_hz)) + 1
    tt = np.arange(n) / rate_hz

    def interp(a):
        return None if a is None else np.stack([np.interp(tt, t, a[:, i]) for i in range(3)], axis=1)

    return tt, interp(gyr), interp(acc), interp(mag)

