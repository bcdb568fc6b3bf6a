"""IMU sources that need no device: :class:`SyntheticSource` (motion with a known answer, generated in C) and
:class:`CsvSource` (a real recording replayed from a preloaded array). :class:`ImuSource` is what the stage needs
from any source; ``edgepipe.stages.imu.iio`` adds the Linux IIO one.

>>> src = SyntheticSource.rotating(rate_dps=90.0, axis="z")
>>> [round(float(x), 6) for x in src.truth(1.0)[0]]
[0.707107, 0.0, 0.0, 0.707107]
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from edgepipe import ahrs
from edgepipe.errors import ImuConfigError, ImuDeviceNotFoundError, ImuSourceError
from edgepipe.imu_loop import MAX_RATE_HZ, MIN_RATE_HZ, ImuLoopConfig, synthetic_truth
from edgepipe.stages.imu._check import axis as _axis
from edgepipe.stages.imu._check import finite as _finite
from edgepipe.stages.imu._check import rate as _rate
from edgepipe.stages.imu._check import vec as _vec
from edgepipe.stages.imu.csvfile import G, parse_csv, resample

__all__ = ["CsvSource", "ImuSource", "SyntheticSource"]


class ImuSource:
    """What ImuStage needs from a source: a default pace, the filter period, and a C config filled in
    open() (in the process that runs the stage). Sources are plain picklable objects until then.
    Subclass it for a source of your own that the C loop can read (synthetic, array, sysfs or chardev)."""

    paced = True  # False: the device paces the loop (buffered IIO)
    has_mag = False

    def default_rate_hz(self) -> float:
        raise NotImplementedError

    def dt_s(self, rate_hz: float) -> float:
        """Filter sample period when the loop runs at ``rate_hz``."""
        return 1.0 / rate_hz

    def open(self, cfg: ImuLoopConfig) -> None:
        """Describe the source in ``cfg`` (one of its source methods), opening what it needs."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what open() acquired. Safe to call twice."""

    def describe(self) -> str:
        return type(self).__name__


class SyntheticSource(ImuSource):
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

    def open(self, cfg: ImuLoopConfig) -> None:
        cfg.synthetic(self.rate_rad_s, self.q0, self.gravity, self.nan_every)

    def truth(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """The exact attitude (w, x, y, z) and accelerometer reading (m/s^2) at time ``t_s``."""
        return synthetic_truth(self.rate_rad_s, self.q0, self.gravity, t_s)

    def describe(self) -> str:
        return f"synthetic w={self.rate_rad_s} rad/s q0={tuple(round(x, 4) for x in self.q0)}"


class CsvSource(ImuSource):
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
            t, gyr, acc, mag = resample(t, gyr, acc, mag, self.resample_hz)
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
        if self.path_or_name in ahrs.RECORDINGS:
            rec = ahrs.load_recording(self.path_or_name)
            return rec.t_s, rec.gyr, rec.acc * G, rec.mag
        path = Path(self.path_or_name)
        if not path.is_file():
            raise ImuDeviceNotFoundError(
                f"no CSV file {self.path_or_name!r} and no bundled recording of that name "
                f"(bundled: {sorted(ahrs.RECORDINGS)})"
            )
        return parse_csv(path, self)

    def default_rate_hz(self) -> float:
        return self.rate_hz if self.rate_hz is not None else min(max(self.data_rate_hz, MIN_RATE_HZ), MAX_RATE_HZ)

    def dt_s(self, rate_hz: float) -> float:
        return 1.0 / self.data_rate_hz

    def open(self, cfg: ImuLoopConfig) -> None:
        cfg.array(self.rows, self.loop)  # read in place; the config keeps the array alive

    def describe(self) -> str:
        return f"csv {self.path_or_name} ({len(self.rows)} rows at {self.data_rate_hz:.1f} Hz)"

