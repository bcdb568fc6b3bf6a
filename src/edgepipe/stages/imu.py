"""ImuStage: a deadline-scheduled IMU sampling loop in C (``csrc/ep_imu.c``), its sources, and the reader side.

Python configures, starts, stops and reads the stats; the loop itself runs on its own pthread with the GIL
released: it waits for each deadline (absolute, on CLOCK_MONOTONIC), reads one sample, stamps it with
CLOCK_MONOTONIC_RAW, runs the Madgwick filter and writes one 192-byte ImuSample record into a ring with
``try_write`` (a full ring drops the sample and counts it; the loop never blocks on the consumer). Nothing is
allocated per sample.

Sources:

- :class:`SyntheticSource`: constant body rate from a known attitude, gravity rotated to match, generated in
  C; :meth:`SyntheticSource.truth` gives the exact attitude for tests.
- :class:`CsvSource`: replay of a recording (a bundled one by name, or a CSV file), preloaded into a numpy
  array that C reads, at the recorded rate, a chosen rate, or resampled.
- :class:`IioSource`: a Linux IIO device as the st_lsm6dsx driver exposes an LSM6DSOX, either polled through
  sysfs (``in_accel_x_raw`` times ``in_accel_scale``) or through the buffered char device
  (``/dev/iio:deviceN``, scans decoded from ``scan_elements``). The device root is configurable, so a fake
  sysfs tree and a FIFO stand in for hardware in tests.

Conventions: gyro rad/s, accel m/s^2 (CSV data in g is converted), magnetometer in the source's units,
quaternion (w, x, y, z) rotating the sensor frame into the earth frame with gravity along earth +z (see
``edgepipe.ahrs``).

Wait modes: ``"sleep"`` (clock_nanosleep to the deadline, timer slack 1 ns: cheap, wakes tens of us late on
a VM) and ``"hybrid"`` (sleep to deadline - guard, then spin: wakes within ~100 ns, costs CPU; the guard
follows the observed wake lateness). A buffered IIO source paces itself (``"device"``).

>>> import numpy as np
>>> from edgepipe import Ring
>>> from edgepipe.stages.imu import ImuStage, ImuReader, SyntheticSource
>>> with Ring.create(capacity=1 << 16) as ring:
...     src = SyntheticSource.rotating(rate_dps=90.0, axis="z")
...     stage = ImuStage(src, rate_hz=1000, wait="sleep", output=ring.writer(), max_samples=50)
...     stage.run()
...     batch = ImuReader(ring.reader()).read()
...     len(batch), int(batch["seq"][-1]), stage.stats()["published"]
0
(50, 49, 50)
"""

from __future__ import annotations

import csv
import errno
import math
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe._ffi import ffi, lib
from edgepipe.errors import (
    EdgepipeOSError,
    ImuConfigError,
    ImuDeviceNotFoundError,
    ImuSourceClosedError,
    ImuSourceError,
    check,
)
from edgepipe.stages.base import Stage

__all__ = [
    "IMU_RECORD_TYPE",
    "IMU_SAMPLE_DTYPE",
    "CsvSource",
    "IioSource",
    "ImuReader",
    "ImuStage",
    "SyntheticSource",
    "euler_deg",
]

G = 9.80665  # m/s^2 per g
IMU_RECORD_TYPE = lib.EP_IMU_RECORD_TYPE
MIN_RATE_HZ = lib.EP_IMU_MIN_RATE_HZ
MAX_RATE_HZ = lib.EP_IMU_MAX_RATE_HZ

#: One ring record as numpy sees it; mirrors ``struct ep_imu_sample`` (checked against the C layout below).
IMU_SAMPLE_DTYPE = np.dtype(
    [
        ("seq", "<u8"),
        ("deadline_ns", "<i8"),  # CLOCK_MONOTONIC deadline (0 when the device paces the loop)
        ("sample_ns", "<i8"),  # CLOCK_MONOTONIC_RAW right after the read
        ("publish_ns", "<i8"),  # CLOCK_MONOTONIC_RAW right before the ring write
        ("device_ns", "<i8"),  # IIO timestamp channel, or the recording's time
        ("late_ns", "<i8"),  # sample time - deadline (jitter), CLOCK_MONOTONIC
        ("raw_gyr", "<i4", (3,)),
        ("raw_acc", "<i4", (3,)),
        ("raw_mag", "<i4", (3,)),
        ("flags", "<u4"),
        ("gyr", "<f8", (3,)),  # rad/s
        ("acc", "<f8", (3,)),  # m/s^2
        ("mag", "<f8", (3,)),
        ("q", "<f8", (4,)),  # w, x, y, z after this sample
    ]
)
for _f in IMU_SAMPLE_DTYPE.names:
    assert IMU_SAMPLE_DTYPE.fields[_f][1] == ffi.offsetof("struct ep_imu_sample", _f), _f
assert IMU_SAMPLE_DTYPE.itemsize == ffi.sizeof("struct ep_imu_sample")

FLAG_MAG = lib.EP_IMU_F_MAG
FLAG_RAW = lib.EP_IMU_F_RAW
FLAG_MISSED = lib.EP_IMU_F_MISSED
FLAG_DEVICE_TS = lib.EP_IMU_F_DEVICE_TS
FLAG_NO_ACCEL = lib.EP_IMU_F_NO_ACCEL

_WAITS = {"sleep": lib.EP_IMU_WAIT_SLEEP, "hybrid": lib.EP_IMU_WAIT_HYBRID}
_FILTERS = ("madgwick", "madgwick-marg")
_STATES = {
    lib.EP_IMU_IDLE: "idle",
    lib.EP_IMU_RUNNING: "running",
    lib.EP_IMU_STOPPED: "stopped",
    lib.EP_IMU_ENDED: "ended",
    lib.EP_IMU_FAILED: "failed",
}
_AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


# ---------------------------------------------------------------------------------------------------
# argument checks


def _rate(name: str, value: object) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise ImuConfigError(f"{name} must be a number of Hz, not {type(value).__name__}: {value!r}")
    v = float(value)
    if not (MIN_RATE_HZ <= v <= MAX_RATE_HZ):
        raise ImuConfigError(f"{name} must be in {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz, got {value!r}")
    return v


def _finite(name: str, value: object, lo: float | None = None) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise ImuConfigError(f"{name} must be a number, not {type(value).__name__}: {value!r}")
    v = float(value)
    if not math.isfinite(v) or (lo is not None and v < lo):
        raise ImuConfigError(f"{name} must be a finite number{'' if lo is None else f' >= {lo:g}'}, got {value!r}")
    return v


def _vec(name: str, value: object, n: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ImuConfigError(f"{name} must be {n} numbers, got {value!r}") from None
    if len(vals) != n or not all(math.isfinite(x) for x in vals):
        raise ImuConfigError(f"{name} must be {n} finite numbers, got {value!r}")
    return vals


def _axis(axis: object) -> tuple[float, float, float]:
    if isinstance(axis, str):
        if axis.lower() not in _AXES:
            raise ImuConfigError(f"axis must be 'x', 'y', 'z' or 3 numbers, got {axis!r}")
        return _AXES[axis.lower()]
    v = _vec("axis", axis, 3)
    n = math.sqrt(sum(x * x for x in v))
    if n == 0:
        raise ImuConfigError(f"axis must not be the zero vector, got {axis!r}")
    return (v[0] / n, v[1] / n, v[2] / n)


def euler_deg(q) -> np.ndarray:
    """Roll, pitch, yaw in degrees (aerospace ZYX order) of quaternions ``q`` (..., 4) in w, x, y, z.

    >>> euler_deg([math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)]).round(6).tolist()
    [0.0, 0.0, 45.0]
    """
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.degrees(np.stack([roll, pitch, yaw], axis=-1))


# ---------------------------------------------------------------------------------------------------
# sources


class _Source:
    """What ImuStage needs from a source: a default pace, the filter period, and a C config filled in
    open() (in the process that runs the stage). Sources are plain picklable objects until then."""

    paced = True  # False: the device paces the loop (buffered IIO)
    has_mag = False

    def default_rate_hz(self) -> float:
        raise NotImplementedError

    def dt_s(self, rate_hz: float) -> float:
        """Filter sample period when the loop runs at ``rate_hz``."""
        return 1.0 / rate_hz

    def open(self, cfg) -> None:
        """Fill the source part of ``cfg`` (a ``struct ep_imu_config *``), opening what it needs."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what open() acquired. Safe to call twice."""

    def describe(self) -> str:
        return type(self).__name__


class SyntheticSource(_Source):
    """Motion with a known answer, generated in C: the sensor turns at a constant body rate ``rate_rad_s``
    from the attitude ``q0``; the accelerometer reads gravity (``gravity`` m/s^2) in the sensor frame.

    Sample ``n`` is the state at ``t = n * dt`` (dt = 1 / the loop rate), independent of wake-up times, so
    a run is reproducible. ``nan_every=N`` puts a NaN in the gyro of every Nth sample (skip-path tests).

    >>> src = SyntheticSource.rotating(rate_dps=90.0, axis="z")
    >>> q, acc = src.truth(1.0)            # 90 degrees about z after 1 s
    >>> np.round(q, 6).tolist(), np.round(acc, 5).tolist()
    ([0.707107, 0.0, 0.0, 0.707107], [0.0, 0.0, 9.80665])
    """

    def __init__(self, rate_rad_s=(0.0, 0.0, 0.0), q0=(1.0, 0.0, 0.0, 0.0), gravity: float = G,
                 nan_every: int = 0, rate_hz: float = 1000.0) -> None:
        self.rate_rad_s = _vec("rate_rad_s", rate_rad_s, 3)
        q = _vec("q0", q0, 4)
        n = math.sqrt(sum(x * x for x in q))
        if n == 0:
            raise ImuConfigError(f"q0 must have a non-zero norm, got {q0!r}")
        self.q0 = tuple(x / n for x in q)
        self.gravity = _finite("gravity", gravity, 0.0)
        if not isinstance(nan_every, int) or isinstance(nan_every, bool) or nan_every < 0:
            raise ImuConfigError(f"nan_every must be an int >= 0, got {nan_every!r}")
        self.nan_every = nan_every
        self.rate_hz = _rate("rate_hz", rate_hz)

    @classmethod
    def rotating(cls, rate_dps: float, axis="z", **kw) -> SyntheticSource:
        """Level start, constant rotation of ``rate_dps`` degrees/s about a body ``axis``."""
        a = _axis(axis)
        r = math.radians(_finite("rate_dps", rate_dps))
        return cls(rate_rad_s=(a[0] * r, a[1] * r, a[2] * r), **kw)

    @classmethod
    def tilted(cls, angle_deg: float, axis="x", **kw) -> SyntheticSource:
        """At rest, tilted by ``angle_deg`` about ``axis`` (the filter should converge to that tilt)."""
        a = _axis(axis)
        h = math.radians(_finite("angle_deg", angle_deg)) / 2
        s = math.sin(h)
        return cls(q0=(math.cos(h), a[0] * s, a[1] * s, a[2] * s), **kw)

    def default_rate_hz(self) -> float:
        return self.rate_hz

    def _fill(self, cfg) -> None:
        cfg.syn_w = list(self.rate_rad_s)
        cfg.syn_q0 = list(self.q0)
        cfg.syn_g = self.gravity
        cfg.syn_nan_every = self.nan_every

    def open(self, cfg) -> None:
        cfg.source = lib.EP_IMU_SRC_SYNTH
        self._fill(cfg)

    def truth(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """The exact attitude (w, x, y, z) and accelerometer reading (m/s^2) at time ``t_s``."""
        cfg = ffi.new("struct ep_imu_config *")
        self._fill(cfg)
        q, a = ffi.new("double[4]"), ffi.new("double[3]")
        check(lib.ep_imu_synth_truth(cfg, float(t_s), q, a))
        return np.array(list(q)), np.array(list(a))

    def describe(self) -> str:
        return f"synthetic w={self.rate_rad_s} rad/s q0={tuple(round(x, 4) for x in self.q0)}"


class CsvSource(_Source):
    """Replay of a real recording, preloaded into one (N, 10) float64 array the C loop reads in place.

    Args:
        path_or_name: a bundled recording's name (``edgepipe.ahrs.load_recording``: "ngimu", ...) or the
            path of a CSV file with a header row naming a time column (``Time (s)``, ``Timestamp (us)``,
            ``... (ms)``), gyro X/Y/Z columns in ``deg/s`` or ``rad/s``, accelerometer X/Y/Z in ``g`` or
            ``m/s^2``, and optionally magnetometer X/Y/Z.
        rate_hz: pace of the replay (default: the data rate). The filter always uses the data's period.
        resample_hz: linearly resample the data to this rate first (e.g. 1000).
        loop: start over at the end instead of ending the stage.

    Malformed rows (wrong field count, text that is not a number) are skipped and counted in
    ``malformed_rows``; a file without two usable rows raises ImuSourceError. NaN/inf values are kept: the
    loop counts and skips them.
    """

    def __init__(self, path_or_name: str | os.PathLike = "ngimu", rate_hz: float | None = None,
                 resample_hz: float | None = None, loop: bool = False) -> None:
        self.path_or_name = os.fspath(path_or_name)
        self.rate_hz = None if rate_hz is None else _rate("rate_hz", rate_hz)
        self.resample_hz = None if resample_hz is None else _rate("resample_hz", resample_hz)
        self.loop = bool(loop)
        self.malformed_rows = 0
        self.malformed_lines: list[int] = []
        t, gyr, acc, mag = self._load()
        if self.resample_hz is not None:
            t, gyr, acc, mag = _resample(t, gyr, acc, mag, self.resample_hz)
        self.has_mag = mag is not None
        rows = np.zeros((len(t), 10), dtype=np.float64)
        rows[:, 0] = t - t[0]
        rows[:, 1:4] = gyr
        rows[:, 4:7] = acc
        if mag is not None:
            rows[:, 7:10] = mag
        self.rows = np.ascontiguousarray(rows)
        span = rows[-1, 0]
        self.data_rate_hz = self.resample_hz or ((len(rows) - 1) / span if span > 0 else 0.0)
        if not self.data_rate_hz > 0:
            raise ImuSourceError(f"{self.path_or_name!r}: time column does not increase (span {span!r} s)")

    @property
    def gyr(self) -> np.ndarray:
        return self.rows[:, 1:4]

    @property
    def acc(self) -> np.ndarray:
        return self.rows[:, 4:7]

    @property
    def mag(self) -> np.ndarray | None:
        return self.rows[:, 7:10] if self.has_mag else None

    def _load(self):
        from edgepipe import ahrs

        if self.path_or_name in ahrs._RECORDINGS:
            rec = ahrs.load_recording(self.path_or_name)
            return rec.t_s, rec.gyr, rec.acc * G, rec.mag
        path = Path(self.path_or_name)
        if not path.is_file():
            raise ImuDeviceNotFoundError(
                f"no CSV file {self.path_or_name!r} and no bundled recording of that name "
                f"(bundled: {sorted(ahrs._RECORDINGS)})"
            )
        return _parse_csv(path, self)

    def default_rate_hz(self) -> float:
        return self.rate_hz if self.rate_hz is not None else min(max(self.data_rate_hz, MIN_RATE_HZ), MAX_RATE_HZ)

    def dt_s(self, rate_hz: float) -> float:
        return 1.0 / self.data_rate_hz

    def open(self, cfg) -> None:
        cfg.source = lib.EP_IMU_SRC_ARRAY
        self._rows_c = ffi.from_buffer("double[]", self.rows)  # kept alive while the loop lives
        cfg.rows = self._rows_c
        cfg.n_rows = len(self.rows)
        cfg.loop_data = int(self.loop)

    def close(self) -> None:
        self._rows_c = None

    def describe(self) -> str:
        return f"csv {self.path_or_name} ({len(self.rows)} rows at {self.data_rate_hz:.1f} Hz)"


_UNIT = re.compile(r"\(([^)]*)\)")


def _col(header: list[str], kind: tuple[str, ...], axis: str) -> int | None:
    for i, h in enumerate(header):
        low = h.strip().lower()
        if any(low.startswith(k) for k in kind) and re.search(rf"(^|[\s_]){axis}(\s|$|\(|_)", low.split("(")[0] + " "):
            return i
    return None


def _unit(header: str) -> str:
    m = _UNIT.search(header)
    return m.group(1).strip().lower() if m else ""


def _parse_csv(path: Path, src: CsvSource):
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
                c = _col(header, kind, ax)
                if c is not None:
                    cols[name + ax] = c
        for need in ("gyrx", "gyry", "gyrz", "accx", "accy", "accz"):
            if need not in cols:
                raise ImuDeviceNotFoundError(f"{str(path)!r}: no {need[:3]} {need[3]} column in header {header!r}")
        have_mag = all(f"mag{a}" in cols for a in "xyz")
        t_unit = _unit(header[t_col])
        t_scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "": 1.0}.get(t_unit)
        g_unit = _unit(header[cols["gyrx"]])
        a_unit = _unit(header[cols["accx"]])
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


def _resample(t, gyr, acc, mag, rate_hz):
    t = t - t[0]
    n = int(math.floor(t[-1] * rate_hz)) + 1
    tt = np.arange(n) / rate_hz

    def interp(a):
        return None if a is None else np.stack([np.interp(tt, t, a[:, i]) for i in range(3)], axis=1)

    return tt, interp(gyr), interp(acc), interp(mag)


# -- IIO ------------------------------------------------------------------------------------------------

_SCAN_TYPE = re.compile(r"^(le|be):([su])(\d+)/(\d+)(?:X(\d+))?>>(\d+)$")
_CHANNELS = {  # channel slot in struct ep_imu_config -> IIO channel name
    0: "in_anglvel_x", 1: "in_anglvel_y", 2: "in_anglvel_z",
    3: "in_accel_x", 4: "in_accel_y", 5: "in_accel_z",
    6: "in_magn_x", 7: "in_magn_y", 8: "in_magn_z",
    9: "in_timestamp",
}


def parse_scan_type(text: str) -> tuple[bool, bool, int, int, int]:
    """Decode an IIO ``scan_elements/*_type`` string into (big_endian, signed, bits, storage_bits, shift).

    >>> parse_scan_type("le:s16/16>>0")
    (False, True, 16, 16, 0)
    >>> parse_scan_type("be:u12/16>>4")
    (True, False, 12, 16, 4)
    """
    m = _SCAN_TYPE.match(text.strip())
    if not m:
        raise ImuSourceError(f"scan type {text.strip()!r} is not [le|be]:[s|u]bits/storagebits>>shift")
    endian, sign, bits, storage, repeat, shift = m.groups()
    bits, storage, shift = int(bits), int(storage), int(shift)
    if repeat not in (None, "1") or storage not in (8, 16, 32, 64) or not 0 < bits <= storage or shift >= storage:
        raise ImuSourceError(f"scan type {text.strip()!r}: unsupported storage/bits/shift/repeat")
    return endian == "be", sign == "s", bits, storage, shift


class IioSource(_Source):
    """An IIO IMU as the kernel's st_lsm6dsx driver exposes an LSM6DSOX.

    Args:
        root: the IIO devices directory (``/sys/bus/iio/devices``; a fake tree in tests).
        device: ``"iio:deviceN"``, an int N, or a device ``name`` (``"lsm6dsox"`` also matches the driver's
            split ``lsm6dsox_accel`` / ``lsm6dsox_gyro`` devices, read together in polled mode).
        buffered: read scans from the char device instead of polling sysfs; the device paces the loop.
        dev_path: the char device (default ``/dev/<iio:deviceN>``; a FIFO in tests).
        enable: buffered only: write 1 to the channels' ``*_en`` and to ``buffer/enable`` at open (0 at close).

    Values: ``in_accel_*`` x ``in_accel_scale`` is m/s^2, ``in_anglvel_*`` x ``in_anglvel_scale`` rad/s, as
    the IIO ABI defines them. A per-axis ``in_accel_x_scale`` wins over the shared one.

    On real st_lsm6dsx hardware (from the driver source; not run on a device here): every polled
    ``*_raw`` read is a one-shot conversion (enable the sensor, sleep one to two ODR periods, read,
    disable), so polling six channels cannot keep up with 1 kHz; use the buffered mode there. The driver
    also registers accel and gyro as two devices with two char devices, while buffered mode reads one
    device's scans: both sensors in one buffer need a driver (or a fake tree) that puts them in one device.
    """

    def __init__(self, root: str | os.PathLike = "/sys/bus/iio/devices", device: str | int = "lsm6dsox",
                 buffered: bool = False, dev_path: str | os.PathLike | None = None, enable: bool = True) -> None:
        self.root = Path(root)
        self.device = f"iio:device{device}" if isinstance(device, int) and not isinstance(device, bool) else device
        if not isinstance(self.device, str) or not self.device:
            raise ImuConfigError(f"device must be 'iio:deviceN', an int or a device name, got {device!r}")
        self.buffered = bool(buffered)
        self.paced = not self.buffered
        self.dev_path = None if dev_path is None else Path(dev_path)
        self.enable = bool(enable)
        self._fds: list[int] = []
        self._enabled_dir: Path | None = None
        self.name = ""
        self.sampling_frequency: float | None = None
        self.scan_size = 0

    # -- discovery
    def _devices(self) -> list[Path]:
        if not self.root.is_dir():
            raise ImuDeviceNotFoundError(f"IIO root {str(self.root)!r} does not exist")
        if self.device.startswith("iio:device"):
            d = self.root / self.device
            if not d.is_dir():
                raise ImuDeviceNotFoundError(f"IIO device {self.device!r} not found under {str(self.root)!r}")
            return [d]
        found = []
        for d in sorted(self.root.glob("iio:device*")):
            try:
                nm = (d / "name").read_text().strip()
            except OSError:
                continue
            if nm == self.device or nm.startswith(self.device + "_"):
                found.append(d)
        if not found:
            raise ImuDeviceNotFoundError(f"no IIO device named {self.device!r} under {str(self.root)!r}")
        return found

    @staticmethod
    def _scale(dev: Path, chan: str) -> float:
        """in_accel_x -> in_accel_x_scale, else in_accel_scale."""
        kind = chan.rsplit("_", 1)[0]
        for p in (dev / f"{chan}_scale", dev / f"{kind}_scale"):
            if p.exists():
                try:
                    text = p.read_text().strip()
                    v = float(text)
                except (OSError, ValueError) as e:
                    raise ImuSourceError(f"unreadable scale {str(p)!r}: {e}") from None
                if not (math.isfinite(v) and v != 0):
                    raise ImuSourceError(f"unusable scale {str(p)!r}: {text!r}")
                return v
        raise ImuSourceError(f"unreadable scale: neither {chan}_scale nor {kind}_scale in {str(dev)!r}")

    def _channel_dev(self, devs: list[Path], chan: str, required: bool) -> Path | None:
        suffix = "_raw"
        for d in devs:
            if self.buffered:
                if (d / "scan_elements" / f"{chan}_en").exists():
                    return d
            elif (d / f"{chan}{suffix}").exists():
                return d
        if required:
            where = ", ".join(str(d) for d in devs)
            what = f"scan_elements/{chan}_en" if self.buffered else f"{chan}{suffix}"
            raise ImuDeviceNotFoundError(f"IIO channel {what} missing in {where}")
        return None

    def default_rate_hz(self) -> float:
        devs = self._devices()
        for d in devs:
            try:
                return _rate("sampling_frequency", float((d / "sampling_frequency").read_text().split()[0]))
            except (OSError, ValueError, IndexError, ImuConfigError):
                continue
        return 1000.0

    def dt_s(self, rate_hz: float) -> float:
        return 1.0 / (self.sampling_frequency or rate_hz)

    # -- open
    def open(self, cfg) -> None:
        devs = self._devices()
        self.name = ",".join((d / "name").read_text().strip() if (d / "name").exists() else d.name for d in devs)
        try:
            self.sampling_frequency = float((devs[0] / "sampling_frequency").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.sampling_frequency = None
        cfg.fd = [-1] * 10
        try:
            if self.buffered:
                self._open_buffered(cfg, devs)
            else:
                self._open_polled(cfg, devs)
        except BaseException:
            self.close()
            raise

    def _open_polled(self, cfg, devs: list[Path]) -> None:
        cfg.source = lib.EP_IMU_SRC_SYSFS
        for slot in range(9):
            chan = _CHANNELS[slot]
            d = self._channel_dev(devs, chan, required=slot < 6)
            if d is None:
                continue
            scale = self._scale(d, chan)
            try:
                fd = os.open(d / f"{chan}_raw", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise ImuDeviceNotFoundError(f"cannot open {str(d / (chan + '_raw'))!r}: {e.strerror}") from None
            self._fds.append(fd)
            cfg.fd[slot] = fd
            cfg.scale[slot] = scale
        self.has_mag = cfg.fd[6] >= 0

    def _open_buffered(self, cfg, devs: list[Path]) -> None:
        cfg.source = lib.EP_IMU_SRC_CHARDEV
        if len(devs) != 1:
            raise ImuConfigError(
                f"buffered mode reads one device's scans, but {self.device!r} matches {len(devs)} devices "
                f"({', '.join(d.name for d in devs)}); pass device='iio:deviceN' or use polled mode"
            )
        dev = devs[0]
        se = dev / "scan_elements"
        if not se.is_dir():
            raise ImuDeviceNotFoundError(f"{str(dev)!r} has no scan_elements: not a buffered IIO device")
        for slot in range(6):
            self._channel_dev(devs, _CHANNELS[slot], required=True)
        if self.enable:
            for slot in (*range(6), 9):
                p = se / f"{_CHANNELS[slot]}_en"
                if p.exists() and p.read_text().strip() != "1":
                    p.write_text("1\n")
        # Layout: enabled channels in scan-index order, each aligned to its own storage size.
        chans = []
        for en in sorted(se.glob("*_en")):
            chan = en.name[:-3]
            if en.read_text().strip() != "1":
                continue
            try:
                idx = int((se / f"{chan}_index").read_text().strip())
                typ = (se / f"{chan}_type").read_text()
            except (OSError, ValueError) as e:
                raise ImuSourceError(f"unreadable index/type of scan element {chan!r} in {str(se)!r}: {e}") from None
            chans.append((idx, chan, parse_scan_type(typ)))
        chans.sort()
        off = 0
        align = 1
        slots = {v: k for k, v in _CHANNELS.items()}
        for _, chan, (be, signed, bits, storage, shift) in chans:
            nbytes = storage // 8
            off = (off + nbytes - 1) // nbytes * nbytes
            align = max(align, nbytes)
            if chan in slots:
                s = slots[chan]
                cfg.ch_off[s], cfg.ch_bytes[s], cfg.ch_bits[s] = off, nbytes, bits
                cfg.ch_shift[s], cfg.ch_signed[s], cfg.ch_be[s] = shift, int(signed), int(be)
                if s < 9:
                    cfg.scale[s] = self._scale(dev, chan)
            off += nbytes
        scan = (off + align - 1) // align * align
        if not 0 < scan <= lib.EP_IMU_SCAN_MAX:
            raise ImuSourceError(f"scan of {scan} bytes from {str(se)!r}; supported: 1..{lib.EP_IMU_SCAN_MAX}")
        for slot in range(6):
            if not cfg.ch_bytes[slot]:
                raise ImuDeviceNotFoundError(f"IIO channel {_CHANNELS[slot]} is not enabled in {str(se)!r}")
        cfg.scan_size = self.scan_size = scan
        self.has_mag = bool(cfg.ch_bytes[6])
        path = self.dev_path or Path("/dev") / dev.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise ImuDeviceNotFoundError(f"cannot open IIO char device {str(path)!r}: {e.strerror}") from None
        self._fds.append(fd)
        cfg.fd[0] = fd
        if self.enable and (dev / "buffer" / "enable").exists():
            (dev / "buffer" / "enable").write_text("1\n")
            self._enabled_dir = dev

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        if self._enabled_dir is not None:
            try:
                (self._enabled_dir / "buffer" / "enable").write_text("0\n")
            except OSError:
                pass
            self._enabled_dir = None

    def describe(self) -> str:
        mode = f"buffered {self.dev_path or '/dev/' + self.device}" if self.buffered else "polled sysfs"
        return f"iio {self.device!r} under {self.root} ({mode})"


# ---------------------------------------------------------------------------------------------------
# the stage


class ImuStage(Stage):
    """Sample an IMU source at a fixed rate in C, filter, and publish ImuSample records into a ring.

    Args:
        source: a SyntheticSource, CsvSource or IioSource.
        rate_hz: loop rate, 1..4000 Hz. Default: the source's own (synthetic: 1000; CSV: the data rate or
            its ``rate_hz``; polled IIO: ``sampling_frequency``); ignored by a buffered IIO source.
        filter: ``"madgwick"`` (gyro + accel) or ``"madgwick-marg"`` (+ magnetometer when the source has one).
        beta: Madgwick gain (>= 0).
        wait: ``"sleep"`` or ``"hybrid"`` (see the module docstring).
        output: a RingWriter (records of 192 bytes, type IMU_RECORD_TYPE), or None to only filter and count.
            Keep it open until the stage has finished: the C loop writes through it.
        duration_s: stop after this long (None: until stop() or the source ends).
        max_samples: end after this many samples (0/None: no limit).
        priority: ask for SCHED_FIFO at this priority (1..99) for the loop thread.
        cpu: pin the loop thread to this CPU.
        guard_us: hybrid: the initial guard. It then follows the p99.5 of the observed wake lateness
            (+20 % + 5 us), between 20 us and ``guard_max_us`` or half a period, whichever is less.
        q0: initial filter attitude.

    Raises:
        ImuConfigError: a value out of range (the message names it).

    A refused priority or CPU pinning does not stop the stage: it is reported in ``stats()["rt"]`` and as a
    RuntimeWarning.
    """

    kind = "imu"

    def __init__(self, source: _Source, rate_hz: float | None = None, filter: str = "madgwick",
                 beta: float = 0.1, wait: str = "hybrid", output=None, *, name: str | None = None,
                 duration_s: float | None = None, max_samples: int | None = None, priority: int | None = None,
                 cpu: int | None = None, guard_us: float = 150.0, guard_max_us: float = 2000.0,
                 q0=(1.0, 0.0, 0.0, 0.0)) -> None:
        super().__init__(name)
        if not isinstance(source, _Source):
            raise ImuConfigError(f"source must be a SyntheticSource, CsvSource or IioSource, not {source!r}")
        self.source = source
        self._rate_arg = None if rate_hz is None else _rate("rate_hz", rate_hz)
        if filter not in _FILTERS:
            raise ImuConfigError(f"filter must be one of {_FILTERS}, got {filter!r}")
        self.filter = filter
        self.beta = _finite("beta", beta, 0.0)
        if wait not in _WAITS:
            raise ImuConfigError(f"wait must be 'sleep' or 'hybrid', got {wait!r}")
        self.wait = wait
        self.output = output
        if output is not None and output.max_payload < IMU_SAMPLE_DTYPE.itemsize:
            raise ImuConfigError(
                f"output ring takes records of at most {output.max_payload} bytes; an ImuSample is "
                f"{IMU_SAMPLE_DTYPE.itemsize} (use capacity >= 512)"
            )
        self.duration_s = None if duration_s is None else _finite("duration_s", duration_s, 0.0)
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 0):
            raise ImuConfigError(f"max_samples must be an int >= 0, got {max_samples!r}")
        self.max_samples = max_samples or 0
        if priority is not None and (not isinstance(priority, int) or not 1 <= priority <= 99):
            raise ImuConfigError(f"priority must be an int in 1..99 (SCHED_FIFO), got {priority!r}")
        self.priority = priority
        if cpu is not None and (not isinstance(cpu, int) or cpu < 0):
            raise ImuConfigError(f"cpu must be an int >= 0, got {cpu!r}")
        self.cpu = cpu
        self.guard_ns = int(_finite("guard_us", guard_us, 0.0) * 1000)
        self.guard_max_ns = int(_finite("guard_max_us", guard_max_us, 1.0) * 1000)
        self.q0 = _vec("q0", q0, 4)
        self._loop = None
        # Held by close() around ep_imu_destroy and by stats()/quaternion() from other threads around their C
        # calls on the loop: cffi releases the GIL in each call, so without it a supervisor's stats() could
        # run on a loop that close() just freed.
        self._loop_lock = threading.Lock()
        self._cfg = None
        self._final: dict[str, Any] | None = None
        self.rate_hz: float | None = self._rate_arg
        self.rt: dict[str, str] = {}

    # -- lifecycle
    def open(self) -> None:
        cfg = ffi.new("struct ep_imu_config *")
        src = self.source
        rate = self._rate_arg if self._rate_arg is not None else _rate("rate_hz", src.default_rate_hz())
        self.rate_hz = rate
        src.open(cfg)
        try:
            cfg.rate_hz = rate
            cfg.dt_s = src.dt_s(rate)
            cfg.beta = self.beta
            cfg.q0 = list(self.q0)
            cfg.wait_mode = _WAITS[self.wait] if src.paced else lib.EP_IMU_WAIT_DEVICE
            cfg.use_mag = int(self.filter == "madgwick-marg" and src.has_mag)
            cfg.sched_priority = self.priority or 0
            cfg.cpu = -1 if self.cpu is None else self.cpu
            cfg.guard_ns = self.guard_ns
            # Spinning more than half of every period buys little: cap the adapted guard there.
            cfg.guard_min_ns = min(20_000, int(0.25e9 / rate))
            cfg.guard_max_ns = max(cfg.guard_min_ns, min(self.guard_max_ns, int(0.5e9 / rate)))
            cfg.max_samples = self.max_samples
            out = ffi.new("struct ep_imu **")
            w = ffi.NULL if self.output is None else self.output._handle()
            check(lib.ep_imu_create(cfg, w, out), f"IMU loop config (rate {rate} Hz, dt {cfg.dt_s} s)")
        except BaseException:
            src.close()
            raise
        self._cfg = cfg
        self._loop = out[0]

    def loop(self) -> None:
        check(lib.ep_imu_start(self._loop), "starting the IMU loop thread")
        self._report_rt()
        t_end = None if self.duration_s is None else time.monotonic() + self.duration_s
        try:
            while not self.stopping:
                st = self._c_stats()
                if st.state in (lib.EP_IMU_ENDED, lib.EP_IMU_FAILED):
                    break
                left = 0.05 if t_end is None else min(0.05, t_end - time.monotonic())
                if left <= 0:
                    break
                time.sleep(left)
                self._update_counters(st)
        finally:
            lib.ep_imu_stop(self._loop)  # joins the thread; cffi releases the GIL meanwhile
            st = self._c_stats()
            self._update_counters(st)
            self._final = self._extra(st)
        if st.state == lib.EP_IMU_FAILED:
            raise self._failure(st)

    def close(self) -> None:
        with self._loop_lock:
            if self._loop is not None:
                lib.ep_imu_destroy(self._loop)
                self._loop = None
        self.source.close()

    # -- stats
    def _c_stats(self):
        s = ffi.new("struct ep_imu_stats *")
        lib.ep_imu_stats(self._loop, s)
        return s

    def _update_counters(self, st) -> None:
        for k in ("samples", "published", "dropped", "missed", "skipped_bad", "read_errors"):
            self.counters[k] = getattr(st, k)

    def _quantiles(self, which: int) -> dict[str, float]:
        out = ffi.new("int64_t *")
        res = {}
        for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)):
            lib.ep_imu_quantile(self._loop, which, q, out)
            res[label] = out[0] / 1000.0
        n = ffi.new("uint64_t *")
        lib.ep_imu_hist_count(self._loop, which, n)
        res["count"] = n[0]
        return res

    def _extra(self, st) -> dict[str, Any]:
        wall_ns = max(1, st.now_ns - st.start_ns)
        span = st.last_sample_ns - st.first_sample_ns
        return {
            "rate_hz": self.rate_hz,
            "wait": self.wait if self.source.paced else "device",
            "loop_state": _STATES.get(st.state, str(st.state)),
            "achieved_rate_hz": (st.samples - 1) * 1e9 / span if st.samples > 1 and span > 0 else 0.0,
            # deadlines served + skipped over the same RAW span: the schedule's own rate (drift check)
            "schedule_rate_hz": ((st.ticks + st.missed - 1) * 1e9 / span
                                 if self.source.paced and st.ticks > 1 and span > 0 else 0.0),
            "ticks": st.ticks,
            "consumer_gone": st.consumer_gone,
            "missed_events": st.missed_events,
            "missed_max_us": st.missed_max_ns / 1000.0,
            "truncated_bytes": st.truncated,
            "filter_no_accel": st.filter_no_accel,
            "jitter_us": self._quantiles(lib.EP_IMU_HIST_JITTER),
            "wake_late_us": self._quantiles(lib.EP_IMU_HIST_WAKE),
            "guard_us": st.guard_ns / 1000.0,
            "cpu_percent": 100.0 * st.cpu_ns / wall_ns,
            "q": tuple(st.q),
            "rt": dict(self.rt),
            "malformed_rows": getattr(self.source, "malformed_rows", 0),
        }

    def extra_stats(self) -> dict[str, Any]:
        with self._loop_lock:
            if self._loop is not None and self._final is None:
                return self._extra(self._c_stats())
        return dict(self._final or {})

    def quaternion(self) -> tuple[float, float, float, float]:
        """The filter's attitude after the latest sample (w, x, y, z)."""
        with self._loop_lock:
            if self._loop is not None:
                return tuple(self._c_stats().q)
        return tuple((self._final or {}).get("q", self.q0))

    def _report_rt(self) -> None:
        st = self._c_stats()
        if self.priority:
            if st.sched_errno:
                self.rt["sched"] = (f"SCHED_FIFO priority {self.priority} refused: {os.strerror(st.sched_errno)} "
                                    "(needs CAP_SYS_NICE or an rtprio limit); running at normal priority")
            else:
                self.rt["sched"] = f"SCHED_FIFO priority {self.priority}"
        if self.cpu is not None:
            if st.affinity_errno:
                self.rt["cpu"] = f"pinning to CPU {self.cpu} refused: {os.strerror(st.affinity_errno)}; not pinned"
            else:
                self.rt["cpu"] = f"pinned to CPU {self.cpu}"
        for k, msg in self.rt.items():
            if "refused" in msg:
                warnings.warn(f"ImuStage {self.name!r}: {msg}", RuntimeWarning, stacklevel=3)

    def _failure(self, st) -> Exception:
        code = -st.end_errno
        if code == errno.EPIPE:
            return ImuSourceClosedError(
                f"{self.source.describe()}: the buffer closed after {st.samples} samples "
                f"({st.truncated} bytes of a partial scan dropped)"
            )
        return EdgepipeOSError(code, f"{os.strerror(code)}: {self.source.describe()} after {st.samples} samples")


# ---------------------------------------------------------------------------------------------------
# reader side


class ImuReader:
    """Read ImuSample records from a RingReader in batches, as numpy structured arrays (IMU_SAMPLE_DTYPE).

    One C call per batch copies up to ``max_batch`` records into a preallocated array; ``read()`` returns a
    view of it that the next ``read()`` overwrites (``copy=True`` for a private array).
    """

    def __init__(self, reader, max_batch: int = 256) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ImuConfigError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.reader = reader
        self._buf = np.zeros(max_batch, dtype=IMU_SAMPLE_DTYPE)
        self._lens = np.zeros(max_batch, dtype=np.uint32)
        self._types = np.zeros(max_batch, dtype=np.uint32)
        self._read = reader.batch_reader(self._buf.view(np.uint8), self._lens, self._types)

    def read(self, timeout_s: float | None = 0.0, copy: bool = False) -> np.ndarray:
        """Up to max_batch samples (an empty array if none arrive within ``timeout_s``)."""
        n = self._read()
        if n == 0 and timeout_s != 0 and self.reader.wait(timeout_s):
            n = self._read()
        wrong = (self._lens[:n] != IMU_SAMPLE_DTYPE.itemsize) | (self._types[:n] != IMU_RECORD_TYPE)
        if wrong.any():
            bad = int(np.flatnonzero(wrong)[0])
            raise ImuSourceError(
                f"ring record of {int(self._lens[bad])} bytes, type {int(self._types[bad]):#x} is not an ImuSample "
                f"({IMU_SAMPLE_DTYPE.itemsize} bytes, type {IMU_RECORD_TYPE:#x})"
            )
        out = self._buf[:n]
        return out.copy() if copy else out
