"""Atheris harness: IMU recordings from CSV (``edgepipe.stages.imu.CsvSource`` over ``csvfile.parse_csv``) on
fuzzed file contents.

Byte 0 of each input picks the options: resampling (none, 50 Hz or 1000 Hz) and whether a valid header
line (one of ``HEADERS``, chosen by byte 1) goes in front of the fuzzed bytes, so most inputs reach the
row parser rather than stopping at the header. The file is written to one temporary path per process.

Only the documented errors may come out: ImuSourceError, ImuDeviceNotFoundError (a missing column) and
ImuConfigError. A source that loads must be consistent: rows is a C-contiguous (N, 10) float64 array, N >= 2
without resampling, time starting at 0, a positive finite data rate, mag columns zero without a mag
header; and without resampling every non-blank data line is either a row or counted in
``malformed_rows`` (with its line number in ``malformed_lines``). NaN and inf values are kept (the
docstring says the loop counts and skips them), so values are not checked for finiteness.

Run directly (libFuzzer flags pass through):

    python tests/fuzz/fuzz_imu_csv.py -max_total_time=600 [CORPUS_DIR]
"""

from __future__ import annotations

import csv
import math
import os
import tempfile

from _harness import instrument, main

with instrument("edgepipe.stages.imu.csvfile", "edgepipe.stages.imu.sources"):
    import numpy as np

    from edgepipe.errors import ImuConfigError, ImuDeviceNotFoundError, ImuSourceError
    from edgepipe.stages.imu import CsvSource


HEADERS = [
    ("Time (s),Gyroscope X (deg/s),Gyroscope Y (deg/s),Gyroscope Z (deg/s),"
     "Accelerometer X (g),Accelerometer Y (g),Accelerometer Z (g)"),
    ("Timestamp (us),gyr_x (rad/s),gyr_y (rad/s),gyr_z (rad/s),acc_x (m/s^2),acc_y (m/s^2),acc_z (m/s^2),"
     "mag_x,mag_y,mag_z"),
    "t,gyro x,gyro y,gyro z,accel x,accel y,accel z",
    ("time (ms),acc_x (g),gyr_x,acc_y (g),gyr_y,acc_z (g),gyr_z,Magnetometer X (uT),Magnetometer Y (uT),"
     "Magnetometer Z (uT)"),
]
RESAMPLE = [None, 50.0, 1000.0, None]

_path: str | None = None


def _file() -> str:
    global _path
    if _path is None:
        # libFuzzer ends the process with exit(): the test names a directory it removes itself.
        d = os.environ.get("EDGEPIPE_FUZZ_TMPDIR") or tempfile.mkdtemp(prefix="ep-fuzz-csv-")
        _path = os.path.join(d, f"imu-{os.getpid()}.csv")
    return _path


def _data_lines(path: str) -> int | None:
    """Non-blank data rows after the header as csv.reader sees them (None if the file does not parse)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error):
        return None
    return sum(1 for row in rows[1:] if row and not (len(row) == 1 and not row[0].strip()))


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    opts, which, body = data[0], data[1], data[2:]
    if opts & 4:
        body = HEADERS[which % len(HEADERS)].encode() + b"\n" + body
    resample = RESAMPLE[opts % 4]
    path = _file()
    with open(path, "wb") as f:
        f.write(body)
    try:
        src = CsvSource(path, resample_hz=resample)
    except (ImuSourceError, ImuDeviceNotFoundError, ImuConfigError):
        return
    rows = src.rows
    assert rows.dtype == np.float64 and rows.ndim == 2 and rows.shape[1] == 10, (rows.dtype, rows.shape)
    assert rows.flags.c_contiguous and len(rows) >= (1 if resample else 2), rows.shape
    assert rows[0, 0] == 0.0, rows[0, 0]
    assert math.isfinite(src.data_rate_hz) and src.data_rate_hz > 0, src.data_rate_hz
    assert src.gyr.shape == src.acc.shape == (len(rows), 3)
    if src.has_mag:
        assert src.mag.shape == (len(rows), 3)
    else:
        assert src.mag is None and not rows[:, 7:10].any()
    assert src.malformed_rows == len(src.malformed_lines)
    assert all(ln >= 2 for ln in src.malformed_lines)
    if resample is None:
        n = _data_lines(path)
        assert n == len(rows) + src.malformed_rows, (n, len(rows), src.malformed_rows)


def seeds() -> dict[str, bytes]:
    out = {}
    for i, h in enumerate(HEADERS):
        ncol = h.count(",") + 1
        rows = [",".join(str(k * 0.01 + j) for j in range(ncol)) for k in range(4)]
        body = "\n".join(rows[:2] + ["1,2,oops," + ",".join(["0"] * (ncol - 3)), "", "1,2"] + rows[2:]) + "\n"
        out[f"csv-{i}"] = bytes([i % 4, 0]) + (h + "\n" + body).encode()
        out[f"csv-{i}-body"] = bytes([4 | (i % 4), i]) + body.encode()
    out["csv-nan-time"] = bytes([5, 0]) + b"0,1,2,3,4,5,6\nnan,1,2,3,4,5,6\n2,1,2,3,4,5,6\n"
    out["csv-quoted"] = bytes([4, 2]) + b'"0","1",2,3,4,5,6\n0.5,1e308,-inf,3,4,5,6\n1,1,2,3,4,5,6\n'
    return out


if __name__ == "__main__":
    main(test_one_input, seeds)
