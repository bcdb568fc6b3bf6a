"""Attitude at a frame's capture stamp, from the IMU samples around it: :class:`Aligner`.

Every stamp in edgepipe is CLOCK_MONOTONIC_RAW (edgepipe.clock), in every process, so a frame's
``capture_ns`` and an IMU sample's ``sample_ns`` are on one time line: no clock offset is estimated. For a
frame stamp ``t`` between two samples ``a <= t <= b`` the attitude is the slerp of their quaternions at
``(t - a) / (b - a)`` and the body rates are interpolated linearly; on a sample's own stamp it is that
sample's quaternion exactly. The **gap** is the distance from ``t`` to the nearest sample.

A frame whose stamp the IMU has not passed yet (``t`` after the newest sample) waits: :meth:`Aligner.at`
answers None until a later sample arrives, or until the caller decides it has waited long enough and asks
with ``extrapolate=True``; then the newest sample's attitude is carried forward at its body rates
(``q(t) = q_b ⊗ exp(ω_b (t - b) / 2)``) and the answer is marked ``extrapolated`` (gap = ``t - b``). A stamp
older than every kept sample is answered from the oldest, extrapolated backwards the same way.

>>> import numpy as np
>>> from edgepipe.stages.imu import IMU_SAMPLE_DTYPE
>>> s = np.zeros(2, IMU_SAMPLE_DTYPE)
>>> s["sample_ns"] = [1_000_000, 2_000_000]
>>> s["q"] = [[1, 0, 0, 0], [np.cos(np.pi / 8), 0, 0, np.sin(np.pi / 8)]]   # 0 then 45 deg about z
>>> al = Aligner()
>>> al.push(s)
2
>>> a = al.at(1_500_000)                                  # half way: 22.5 deg about z
>>> round(float(np.degrees(2 * np.arctan2(a.q[3], a.q[0]))), 9), a.gap_ns, a.extrapolated
(22.5, 500000, False)
>>> al.at(2_500_000) is None                              # the IMU has not passed it yet: wait
True
>>> al.at(2_500_000, extrapolate=True).extrapolated
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgepipe.errors import ImuConfigError

__all__ = ["Aligned", "Aligner"]


@dataclass(frozen=True)
class Aligned:
    """The attitude at one stamp.

    Attributes:
        t_ns: the stamp asked for. q: unit quaternion (w, x, y, z), sensor to world. gyr: body rates, rad/s.
        gap_ns: distance to the nearest sample (>= 0). extrapolated: True when ``t_ns`` was outside the
        samples (carried at the body rates from the nearest one). before_ns / after_ns: the stamps of the
        samples used (equal when only one was).
    """

    t_ns: int
    q: tuple[float, float, float, float]
    gyr: tuple[float, float, float]
    gap_ns: int
    extrapolated: bool
    before_ns: int
    after_ns: int


def slerp(q0, q1, u: float) -> tuple[float, float, float, float]:
    """Spherical linear interpolation between unit quaternions ``q0`` (u=0) and ``q1`` (u=1), the short way.

    >>> slerp((1, 0, 0, 0), (0, 0, 0, 1), 0.5)[0] == slerp((1, 0, 0, 0), (0, 0, 0, 1), 0.5)[3]
    True
    """
    w0, x0, y0, z0 = (float(v) for v in q0)
    w1, x1, y1, z1 = (float(v) for v in q1)
    d = w0 * w1 + x0 * x1 + y0 * y1 + z0 * z1
    if d < 0.0:  # q and -q are the same rotation: take the shorter arc
        w1, x1, y1, z1, d = -w1, -x1, -y1, -z1, -d
    if d > 0.9999995:  # nearly equal: normalized lerp (sin(theta) would lose the digits)
        a, b = 1.0 - u, u
    else:
        th = math.acos(min(d, 1.0))
        s = math.sin(th)
        a, b = math.sin((1.0 - u) * th) / s, math.sin(u * th) / s
    w, x, y, z = a * w0 + b * w1, a * x0 + b * x1, a * y0 + b * y1, a * z0 + b * z1
    n = math.sqrt(w * w + x * x + y * y + z * z)
    return (w / n, x / n, y / n, z / n)


def _advance(q, gyr, dt_s: float) -> tuple[float, float, float, float]:
    """``q ⊗ exp(ω dt / 2)``: the attitude after turning at body rates ``gyr`` for ``dt_s`` seconds."""
    wx, wy, wz = (float(v) * dt_s for v in gyr)
    ang = math.sqrt(wx * wx + wy * wy + wz * wz)
    if ang < 1e-12:
        return tuple(float(v) for v in q)  # type: ignore[return-value]
    h = 0.5 * ang
    s = math.sin(h) / ang
    dw, dx, dy, dz = math.cos(h), wx * s, wy * s, wz * s
    w, x, y, z = (float(v) for v in q)
    out = (w * dw - x * dx - y * dy - z * dz, w * dx + x * dw + y * dz - z * dy,
           w * dy - x * dz + y * dw + z * dx, w * dz + x * dy - y * dx + z * dw)
    n = math.sqrt(sum(v * v for v in out))
    return tuple(v / n for v in out)  # type: ignore[return-value]


class Aligner:
    """The recent IMU samples (stamps, quaternions, rates), and the attitude at any stamp among them.

    Args:
        capacity: samples kept (the newest); at 1 kHz the default 4096 is 4 s of history. Storage is
            allocated once (twice ``capacity``; it is compacted in place when full).

    Samples must arrive in stamp order (as an IMU ring delivers them); one whose stamp is not after the
    newest kept is skipped and counted in ``out_of_order``.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 2:
            raise ImuConfigError(f"Aligner capacity must be an int >= 2, got {capacity!r}")
        self.capacity = capacity
        self._t = np.zeros(2 * capacity, np.int64)
        self._q = np.zeros((2 * capacity, 4), np.float64)
        self._g = np.zeros((2 * capacity, 3), np.float64)
        self._n = 0
        self.pushed = 0
        self.out_of_order = 0

    def __len__(self) -> int:
        return min(self._n, self.capacity)

    @property
    def newest_ns(self) -> int | None:
        """The newest sample's stamp (None before the first)."""
        return int(self._t[self._n - 1]) if self._n else None

    @property
    def oldest_ns(self) -> int | None:
        """The oldest kept sample's stamp (None before the first)."""
        return int(self._t[self._n - len(self)]) if self._n else None

    def push(self, samples) -> int:
        """Add IMU samples (an array of ``IMU_SAMPLE_DTYPE`` records, e.g. from an ImuReader batch; they
        are copied). Returns how many were kept."""
        t = samples["sample_ns"]
        m = len(t)
        if m == 0:
            return 0
        ok = np.empty(m, bool)
        ok[1:] = t[1:] > t[:-1]
        ok[0] = self._n == 0 or t[0] > self._t[self._n - 1]
        if not ok.all():
            # keep a strictly increasing run: drop what is not after the newest kept so far
            last = self._t[self._n - 1] if self._n else np.iinfo(np.int64).min
            keep = np.maximum.accumulate(np.concatenate(([last], t)))[:-1] < t
            self.out_of_order += int(m - keep.sum())
            samples, t = samples[keep], t[keep]
            m = len(t)
        if m > self.capacity:
            samples, t, m = samples[-self.capacity:], t[-self.capacity:], self.capacity
        if self._n + m > len(self._t):  # compact in place: keep the newest capacity - m, then append
            keep_n = min(self._n, self.capacity - m)
            src = slice(self._n - keep_n, self._n)
            self._t[:keep_n] = self._t[src]
            self._q[:keep_n] = self._q[src]
            self._g[:keep_n] = self._g[src]
            self._n = keep_n
        end = self._n + m
        self._t[self._n:end] = t
        self._q[self._n:end] = samples["q"]
        self._g[self._n:end] = samples["gyr"]
        self._n = end
        self.pushed += m
        return m

    def at(self, t_ns: int, *, extrapolate: bool = False) -> Aligned | None:
        """The attitude at stamp ``t_ns``; None when no sample at or after it has arrived yet (wait for
        more, or ask with ``extrapolate=True`` to carry the newest forward) or when there are no samples."""
        n = self._n
        if n == 0:
            return None
        lo = n - len(self)
        t = self._t
        t_ns = int(t_ns)
        newest = int(t[n - 1])
        if t_ns > newest:
            if not extrapolate:
                return None
            j = n - 1
            return Aligned(t_ns, _advance(self._q[j], self._g[j], (t_ns - newest) * 1e-9),
                           tuple(float(v) for v in self._g[j]), t_ns - newest, True, newest, newest)
        i = int(np.searchsorted(t[lo:n], t_ns, side="left")) + lo  # first sample at or after t_ns
        ti = int(t[i])
        if ti == t_ns:  # on a sample: that sample, exactly
            return Aligned(t_ns, tuple(float(v) for v in self._q[i]), tuple(float(v) for v in self._g[i]), 0,
                           False, ti, ti)
        if i == lo:  # before every kept sample: carried backwards from the oldest
            return Aligned(t_ns, _advance(self._q[i], self._g[i], (t_ns - ti) * 1e-9),
                           tuple(float(v) for v in self._g[i]), ti - t_ns, True, ti, ti)
        ta = int(t[i - 1])
        u = (t_ns - ta) / (ti - ta)
        g = (1.0 - u) * self._g[i - 1] + u * self._g[i]
        return Aligned(t_ns, slerp(self._q[i - 1], self._q[i], u), tuple(float(v) for v in g),
                       min(t_ns - ta, ti - t_ns), False, ta, ti)
