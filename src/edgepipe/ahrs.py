"""Madgwick attitude filter over the C core (``csrc/ep_ahrs.c``), and the bundled real IMU recordings.

Conventions: the quaternion is ``(w, x, y, z)``, unit norm, and rotates the sensor frame into the earth
frame; gravity is +z in the earth frame, so a level sensor at rest reads ``acc = (0, 0, +1 g)``. Gyro in
rad/s; accelerometer and magnetometer in any unit (the filter normalises both). The filter is the
gradient-descent Madgwick (2010) filter and matches the ``ahrs`` package's ``Madgwick.updateIMU`` /
``updateMARG`` step for step, except on purpose at the edges:

- a gyro of exactly zero is an ordinary sample: the accelerometer correction still applies, so a sensor
  at rest converges to its tilt (``ahrs`` returns q unchanged when ``|gyr| == 0``);
- an accelerometer norm of zero skips the correction (q integrates the gyro only; counted in ``no_accel``);
- a magnetometer norm of zero turns a MARG sample into an IMU sample (counted in ``no_mag``), as in ``ahrs``;
- a sample with any NaN or inf component is skipped and counted in ``skipped_nonfinite``: the quaternion
  never becomes NaN (``ahrs`` integrates the gyro when the accel holds a NaN, and returns NaN when the
  gradient is exactly zero, e.g. upside down at q = identity; here that skips the correction).

>>> from edgepipe.ahrs import Madgwick, load_recording
>>> rec = load_recording("ngimu")
>>> rec.gyr.shape, round(rec.rate_hz)
((499, 3), 50)
>>> f = Madgwick(beta=0.1, rate_hz=rec.rate_hz)
>>> f.update_batch(rec.gyr, rec.acc).shape
(499, 4)
>>> f = Madgwick(beta=0.5, rate_hz=100)          # at rest, tilted 30 degrees about x
>>> for _ in range(500):
...     q = f.update((0.0, 0.0, 0.0), (0.0, 0.5, 0.866))
>>> [round(v, 2) for v in q]                   # (cos 15deg, sin 15deg, 0, 0)
[0.97, 0.26, 0.0, 0.0]
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from importlib.resources import files

import numpy as np

from edgepipe._ffi import ffi, lib

__all__ = ["Madgwick", "Recording", "load_recording"]

_step_imu = lib.ep_ahrs_step_imu
_step_marg = lib.ep_ahrs_step_marg
_F64 = np.dtype(np.float64)
_unpack4 = struct.Struct("4d").unpack_from
_pack6 = struct.Struct("6d").pack_into
_pack9 = struct.Struct("9d").pack_into
_IN_OFF = ffi.offsetof("struct ep_ahrs", "in")


def _number(name: str, value: object) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}: {value!r}")
    return float(value)


def _positive(name: str, value: object) -> float:
    v = _number(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _rows(name: str, arr: object, n: int | None) -> np.ndarray:
    """An [N,3] float64 C-contiguous array, or a TypeError/ValueError naming what is wrong."""
    a = np.asarray(arr)
    if a.dtype != _F64:
        raise TypeError(f"{name} must hold float64, got dtype {a.dtype} (convert with .astype(np.float64))")
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} rows, gyr has {n}")
    return np.ascontiguousarray(a)


class Madgwick:
    """Madgwick gradient-descent AHRS (IMU or MARG), float64, state in one C struct.

    Args:
        beta: gradient step gain in rad/s (>= 0). ``ahrs`` defaults to 0.033 (IMU) / 0.041 (MARG).
        rate_hz: sample rate; give this or ``dt_s`` (default 100 Hz, as ``ahrs``).
        dt_s: sample period in seconds, instead of ``rate_hz``.
        q0: initial attitude (w, x, y, z); normalised.

    Raises:
        TypeError: a non-number argument.
        ValueError: beta < 0 or NaN, a rate or period that is not finite and > 0, both rate_hz and dt_s,
            or a q0 that is not 4 finite numbers of non-zero norm.

    >>> f = Madgwick(beta=0.1, rate_hz=1000)
    >>> f.update((0.0, 0.0, 1.0), (0.0, 0.0, 1.0))[0] < 1.0
    True
    >>> f.updates, f.skipped_nonfinite
    (1, 0)
    """

    __slots__ = ("_f", "_qbuf", "_fbuf")

    def __init__(self, beta: float = 0.1, *, rate_hz: float | None = None, dt_s: float | None = None,
                 q0=(1.0, 0.0, 0.0, 0.0)) -> None:
        b = _number("beta", beta)
        if not (b >= 0 and math.isfinite(b)):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        if rate_hz is not None and dt_s is not None:
            raise ValueError(f"give rate_hz or dt_s, not both (rate_hz={rate_hz!r}, dt_s={dt_s!r})")
        if dt_s is not None:
            dt = _positive("dt_s", dt_s)
        else:
            dt = 1.0 / _positive("rate_hz", 100.0 if rate_hz is None else rate_hz)
        self._f = ffi.new("struct ep_ahrs *")
        # The quaternion is read back through struct.unpack_from over this buffer: ~47 ns, against ~85 ns
        # for tuple(self._f.q) plus ~40 ns for the field lookup (per-sample budget: 250 ns in all).
        self._qbuf = ffi.buffer(self._f.q)
        # Samples go in the same way: struct.pack_into the staging array, then a one-argument C call.
        self._fbuf = ffi.buffer(self._f)
        if lib.ep_ahrs_init(self._f, b, dt) != 0:
            raise ValueError(f"beta={beta!r} and dt_s={dt!r} rejected by the C core")
        self.reset(q0)

    # -- state -------------------------------------------------------------------------------------

    def reset(self, q0=(1.0, 0.0, 0.0, 0.0)) -> None:
        """Set the attitude to ``q0`` (normalised) and zero the counters; beta and dt are kept.

        Raises:
            ValueError: q0 is not 4 finite numbers with a non-zero norm.
        """
        try:
            q = [float(v) for v in q0]
        except (TypeError, ValueError):
            raise ValueError(f"q0 must be 4 numbers (w, x, y, z), got {q0!r}") from None
        n = math.sqrt(sum(v * v for v in q)) if len(q) == 4 and all(map(math.isfinite, q)) else 0.0
        if not (n > 0 and math.isfinite(n)):
            raise ValueError(f"q0 must be 4 finite numbers (w, x, y, z) with a non-zero norm, got {q0!r}")
        f = self._f
        f.q[0:4] = [v / n for v in q]
        f.updates = f.skipped_nonfinite = f.no_accel = f.no_mag = 0

    @property
    def quaternion(self) -> tuple[float, float, float, float]:
        """The current attitude (w, x, y, z)."""
        return _unpack4(self._qbuf)

    @property
    def beta(self) -> float:
        """Gradient step gain, rad/s."""
        return self._f.beta

    @property
    def dt_s(self) -> float:
        """Sample period used when an update gives none, seconds."""
        return self._f.dt

    @property
    def updates(self) -> int:
        """Samples applied since construction or the last reset."""
        return self._f.updates

    @property
    def skipped_nonfinite(self) -> int:
        """Samples skipped because an input was NaN/inf (or the step would overflow); q was kept."""
        return self._f.skipped_nonfinite

    @property
    def no_accel(self) -> int:
        """Samples applied gyro-only because the accelerometer norm was zero."""
        return self._f.no_accel

    @property
    def no_mag(self) -> int:
        """MARG samples applied as IMU samples because the magnetometer norm was zero."""
        return self._f.no_mag

    # -- updates -----------------------------------------------------------------------------------

    def update(self, gyr, acc, mag=None) -> tuple[float, float, float, float]:
        """Apply one sample and return the new attitude (w, x, y, z).

        Args:
            gyr: 3 numbers, rad/s.
            acc: 3 numbers, any unit.
            mag: 3 numbers, any unit, or None for an IMU (gyro + accel) update.

        Raises:
            TypeError / ValueError: an argument that is not 3 numbers (named in the message).
        """
        try:
            gx, gy, gz = gyr
            ax, ay, az = acc
            if mag is None:
                _pack6(self._fbuf, _IN_OFF, gx, gy, gz, ax, ay, az)
                _step_imu(self._f)
            else:
                mx, my, mz = mag
                _pack9(self._fbuf, _IN_OFF, gx, gy, gz, ax, ay, az, mx, my, mz)
                _step_marg(self._f)
        except (TypeError, ValueError, struct.error):
            raise _bad_sample(gyr, acc, mag) from None
        return _unpack4(self._qbuf)

    def update_batch(self, gyr, acc, mag=None, dt_s=None) -> np.ndarray:
        """Apply N samples in order in one C call; return the attitude after each, shape (N, 4).

        Args:
            gyr: (N, 3) float64, rad/s.
            acc: (N, 3) float64, any unit.
            mag: (N, 3) float64 or None (IMU).
            dt_s: None (the filter's period), one period for all samples, or (N,) periods in seconds.

        Raises:
            TypeError: an array that is not float64.
            ValueError: a shape other than (N, 3), row counts that differ, or a bad dt_s.
        """
        g = _rows("gyr", gyr, None)
        n = g.shape[0]
        a = _rows("acc", acc, n)
        m = None if mag is None else _rows("mag", mag, n)
        out = np.empty((n, 4))
        f = self._f
        dtp = ffi.NULL
        keep_dt = f.dt
        if dt_s is not None and np.ndim(dt_s) == 0:
            f.dt = _positive("dt_s", dt_s)
        elif dt_s is not None:
            d = np.ascontiguousarray(dt_s, dtype=np.float64)
            if d.shape != (n,):
                raise ValueError(f"dt_s must be a number or have shape ({n},), got shape {d.shape}")
            dtp = ffi.from_buffer("double[]", d)
        try:
            lib.ep_ahrs_batch(f, ffi.from_buffer("double[]", g), ffi.from_buffer("double[]", a),
                              ffi.NULL if m is None else ffi.from_buffer("double[]", m), dtp, n,
                              ffi.from_buffer("double[]", out, require_writable=True))
        finally:
            f.dt = keep_dt
        return out

    def __repr__(self) -> str:
        w, x, y, z = self.quaternion
        return (f"<Madgwick beta={self.beta} rate_hz={1.0 / self.dt_s:g} q=({w:.4f}, {x:.4f}, {y:.4f}, {z:.4f})"
                f" updates={self.updates} skipped_nonfinite={self.skipped_nonfinite}>")


def _bad_sample(gyr, acc, mag) -> Exception:
    for name, v in (("gyr", gyr), ("acc", acc), ("mag", mag)):
        if v is None and name == "mag":
            continue
        try:
            vals = list(v)
        except TypeError:
            return TypeError(f"{name} must be 3 numbers, not {type(v).__name__}: {v!r}")
        if len(vals) != 3:
            return ValueError(f"{name} must be 3 numbers, got {len(vals)}: {v!r}")
        for x in vals:
            if not isinstance(x, (int, float, np.integer, np.floating)) or isinstance(x, bool):
                return TypeError(f"{name} must be 3 numbers, got {type(x).__name__} {x!r} in {v!r}")
    return TypeError(f"bad sample gyr={gyr!r} acc={acc!r} mag={mag!r}")


# -- bundled recordings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """A real IMU recording bundled with edgepipe (see ``edgepipe/data/imu/README.md``).

    Attributes:
        name: the name ``load_recording`` takes.
        t_s: (N,) sample times, seconds from the first sample.
        gyr: (N, 3) angular rate, rad/s (converted from the file's deg/s).
        acc: (N, 3) acceleration, g (NGIMU and x-IMU3 as recorded; Xsens converted from m/s^2).
        mag: (N, 3) magnetic field in the recording's unit (NGIMU: µT; Xsens: normalised a.u.), or None
            when the recording has none (xio3's magnetometer is logged at another rate; not bundled).
        q_ref_t_s: (M,) times of the device's own quaternions, seconds on the t_s clock.
        q_ref: (M, 4) the device's onboard AHRS output, (w, x, y, z).
    """

    name: str
    t_s: np.ndarray
    gyr: np.ndarray
    acc: np.ndarray
    mag: np.ndarray | None
    q_ref_t_s: np.ndarray
    q_ref: np.ndarray

    @property
    def rate_hz(self) -> float:
        """Mean sample rate over the recording."""
        return (len(self.t_s) - 1) / (self.t_s[-1] - self.t_s[0])


_G = 9.80665  # m/s^2 per g


def _read(name: str, **kw) -> np.ndarray:
    with files("edgepipe").joinpath("data").joinpath("imu").joinpath(name).open("r") as fh:
        return np.loadtxt(fh, dtype=np.float64, **kw)


def _ngimu() -> tuple:
    s = _read("ngimu_sensors.csv", delimiter=",", skiprows=1)
    q = _read("ngimu_quaternion.csv", delimiter=",", skiprows=1)
    t0 = s[0, 0]
    return s[:, 0] - t0, np.deg2rad(s[:, 1:4]), s[:, 4:7], s[:, 7:10], q[:, 0] - t0, q[:, 1:5]


def _xio3() -> tuple:
    s = _read("xio3_inertial.csv", delimiter=",", skiprows=1)
    q = _read("xio3_quaternion.csv", delimiter=",", skiprows=1)
    t0 = s[0, 0]
    return (s[:, 0] - t0) * 1e-6, np.deg2rad(s[:, 1:4]), s[:, 4:7], None, (q[:, 0] - t0) * 1e-6, q[:, 1:5]


def _xsens() -> tuple:
    # Counter, Acc_X..Z (m/s^2), Gyr_X..Z (rad/s), Mag_X..Z (a.u., normalised to the local field),
    # Quat_w..z; tab separated with a trailing tab; 50 Hz (from the "// Sample rate" comment line).
    s = _read("xsens_sensors.txt", comments="//", skiprows=5, usecols=range(14))
    t = (s[:, 0] - s[0, 0]) / 50.0
    return t, s[:, 4:7], s[:, 1:4] / _G, s[:, 7:10], t, s[:, 10:14]


RECORDINGS = {"ngimu": _ngimu, "xio3": _xio3, "xsens": _xsens}


def load_recording(name: str = "ngimu") -> Recording:
    """Load a bundled recording as float64 arrays in the units :class:`Recording` lists (gyro rad/s,
    accel g); ``edgepipe/data/imu/README.md`` says what each file holds and how it was converted.

    >>> sorted(RECORDINGS)
    ['ngimu', 'xio3', 'xsens']
    >>> r = load_recording("xio3")
    >>> r.gyr.shape, round(r.rate_hz), r.mag is None
    ((500, 3), 50, True)

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in RECORDINGS:
        raise ValueError(f"unknown recording {name!r}; bundled: {sorted(RECORDINGS)}")
    t, gyr, acc, mag, qt, q = RECORDINGS[name]()
    c = np.ascontiguousarray
    return Recording(name=name, t_s=c(t), gyr=c(gyr), acc=c(acc), mag=None if mag is None else c(mag),
                     q_ref_t_s=c(qt), q_ref=c(q))
