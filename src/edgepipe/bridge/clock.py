"""The offset and drift between two machines' clocks, estimated over the bridge (NTP-style exchanges), with
an error bound that holds without assuming the two ends share anything.

One exchange: this end stamps ``t1`` and sends a ping; the other stamps ``t2`` when it arrives and ``t3``
when it sends the pong; this end stamps ``t4`` when that arrives. Causality alone (t1 before t2, t3 before
t4, in real time) puts the true offset (remote minus local) at the exchange inside
``[t3 - t4, t2 - t1]``: its midpoint ``theta`` is the sample, its half-width ``delta / 2`` (half the round
trip less the remote's turnaround) the sample's own bound. The drift over one exchange (< 1 ms at a few
hundred ppm) is far below a nanosecond and is ignored.

The truth is taken to be a line, ``offset(t) = a + b t`` (``b`` is the drift; crystals keep it constant
over seconds), with ``|b|`` under MAX_DRIFT (0.2 %, twenty times what clock crystals are specified to). Every
exchange in the window then constrains the line: ``t3 - t4 <= a + b t_i <= t2 - t1``. The estimator keeps
every line that meets all of them (a linear program in two unknowns: for each slope, the feasible
intercepts are an interval, whose width is concave in the slope) and, at the first and the last exchange of
the window, takes the highest and lowest value any of those lines has there. The estimate is the line
through the two midpoints, its bound the larger half-width: the error of that line against the truth is a
line too, within the bound at both ends and so everywhere between; past the span it grows linearly with the
distance, by the slope two bounded ends allow. So exchanges combine: a short trip out in one exchange and a
short trip back in another, both near an end, narrow the bound below half of any single round trip. The
pinging end sends its pings in bursts (the next one from the callback that took the previous answer), in
which zenoh's threads are awake and the trips are shortest. A bound wider than a latency it is used for makes
that latency unknown, said as such, never printed as a number.

>>> est = ClockEstimate()
>>> for i in range(20):  # the remote runs 5 ms ahead, drifting +100 ppm; 40 us each way, 10 us turnaround
...     t1 = i * 10_000_000
...     remote = lambda t: t + 5_000_000 + t // 10_000
...     est.add(t1, remote(t1 + 40_000), remote(t1 + 50_000), t1 + 90_000)
>>> e = est.estimate()
>>> round(e.offset_at(100_000_000) / 1e6, 3), round(e.drift_ppm), round(e.bound_ns / 1e3)  # 80 us / 2 (+ 0.2 %)
(5.01, 100, 40)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

__all__ = ["ClockEstimate", "OffsetEstimate"]

MIN_SAMPLES = 8
MAX_DRIFT = 2e-3  # the two clocks' rates differ by less than this (crystals: within 1e-4)
_ITER = 48  # golden-section / bisection steps over the slope: its range shrinks by 1e-10 or more
@dataclass(frozen=True)
class OffsetEstimate:
    """remote clock = local clock + offset_at(local time), within ``bound_at(local time)`` ns."""

    t0: int  # local ns the line is centred on
    a: float  # offset at t0, ns
    b: float  # drift (remote ns per local ns, minus 1)
    bound_ns: float  # error bound between first_ns and last_ns
    first_ns: int
    last_ns: int
    samples: int

    @property
    def drift_ppm(self) -> float:
        return self.b * 1e6

    def offset_at(self, local_ns: int) -> float:
        return self.a + self.b * (local_ns - self.t0)

    def bound_at(self, local_ns: int) -> float:
        """The bound at ``local_ns``: ``bound_ns`` within the samples' span, growing linearly beyond it."""
        span = max(1, self.last_ns - self.first_ns)
        out = max(0, self.first_ns - local_ns, local_ns - self.last_ns)
        return self.bound_ns * (1 + 2 * out / span)

    def to_local(self, remote_ns: int) -> float:
        """A remote stamp on the local clock (error ``bound_at`` that time)."""
        # remote = local + a + b (local - t0)  =>  local = (remote - a + b t0) / (1 + b)
        return (remote_ns - self.a + self.b * self.t0) / (1 + self.b)


class ClockEstimate:
    """A window of the last ``window`` exchanges with one remote end; thread-safe (samples arrive on zenoh's
    threads, estimates are read by the stage)."""

    def __init__(self, window: int = 4096) -> None:
        if not isinstance(window, int) or window < MIN_SAMPLES:
            raise ValueError(f"window must be an int >= {MIN_SAMPLES}, got {window!r}")
        # rows (local mid, theta, delta, t4 - t1), a ring of the last ``window``: estimate() copies it as one
        # array (a deque of tuples took milliseconds to sort and convert, holding the GIL)
        self._rows = np.empty((window, 4), dtype=np.float64)  # local times ~1e13 ns: exact in a double
        self._count = 0  # rows filled
        self._next = 0  # the row the next exchange goes to
        self.exchanges = 0
        self._lock = threading.Lock()

    def add(self, t1: int, t2: int, t3: int, t4: int) -> None:
        """One exchange: t1, t4 on this end's clock, t2, t3 on the remote's. Ignored if not causal
        (t4 < t1 or a turnaround longer than the round trip)."""
        delta = (t4 - t1) - (t3 - t2)
        if t4 < t1 or delta < 0:
            return
        theta = ((t2 - t1) + (t3 - t4)) / 2
        with self._lock:
            self._rows[self._next] = ((t1 + t4) // 2, theta, delta, t4 - t1)
            self._next = (self._next + 1) % len(self._rows)
            self._count = min(self._count + 1, len(self._rows))
            self.exchanges += 1

    def estimate(self) -> OffsetEstimate | None:
        """The current line and its bound, or None with fewer than MIN_SAMPLES exchanges (or exchanges no
        line of slope under MAX_DRIFT satisfies: a clock that jumped; the window then refills)."""
        with self._lock:
            arr = self._rows[:self._count].copy()
        if len(arr) < MIN_SAMPLES:
            return None
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        t0, ref = int(arr[0, 0]), float(arr[0, 1])
        x_all = arr[:, 0] - t0
        # the interval holds the offset at some instant of the exchange, not exactly at its middle: widened
        # by the most drift over half the round trip (a few ns)
        half = arr[:, 2] / 2 + MAX_DRIFT * arr[:, 3] / 2
        hi_all, lo_all = arr[:, 1] - ref + half, arr[:, 1] - ref - half
        # Any two exchanges bound the slope of every feasible line; the tightest one early in the window and
        # the tightest one late in it bound it to a few ppm. Only slopes in that range (and under MAX_DRIFT)
        # are searched, and only the points that can bind a line of such a slope are kept: a few dozen of
        # the thousands (evaluating every point at every step held the GIL for ~10 ms per estimate).
        b_min, b_max = -MAX_DRIFT, MAX_DRIFT
        q = max(1, len(arr) // 4)
        i = int(np.argmin(arr[:q, 2]))
        j = len(arr) - q + int(np.argmin(arr[-q:, 2]))
        if x_all[j] > x_all[i]:
            span = float(x_all[j] - x_all[i])
            b_min = max(b_min, float(lo_all[j] - hi_all[i]) / span)
            b_max = min(b_max, float(hi_all[j] - lo_all[i]) / span)
        if b_min > b_max:  # no line fits every exchange: start over
            with self._lock:
                self._count = self._next = 0
            return None
        x, hi_c = _hull(*_envelope(x_all, hi_all, b_min, b_max))
        xl, neg_lo = _hull(*_envelope(x_all, -lo_all, -b_max, -b_min))  # the upper hull of the lower limits
        lo_c = -neg_lo

        # a dozen points each: plain Python beats a numpy call per evaluation (hundreds of them)
        up_pts, lo_pts = list(zip(x.tolist(), hi_c.tolist())), list(zip(xl.tolist(), lo_c.tolist()))

        def width(b: float) -> float:  # of the feasible intercepts at slope b; concave in b
            return min(h - b * px for px, h in up_pts) - max(lo - b * px for px, lo in lo_pts)

        b_best = _argmax(width, b_min, b_max)
        if width(b_best) < 0:  # no line fits every exchange: start over
            with self._lock:
                self._count = self._next = 0
            return None
        b_lo, b_hi = _edge(width, b_min, b_best), _edge(width, b_max, b_best)  # a hair wide
        ends = []
        for xt in (float(x_all[0]), float(x_all[-1])):
            def top(b: float, xt: float = xt) -> float:  # the highest feasible line at xt, for slope b
                return min(h + b * (xt - px) for px, h in up_pts)

            def neg_bottom(b: float, xt: float = xt) -> float:
                return -max(lo + b * (xt - px) for px, lo in lo_pts)

            up = top(_argmax(top, b_lo, b_hi))
            down = -neg_bottom(_argmax(neg_bottom, b_lo, b_hi))
            ends.append((xt, (up + down) / 2, (up - down) / 2 + 1))  # + 1 ns: the searches' rounding
        (x1, m1, h1), (x2, m2, h2) = ends
        b = (m2 - m1) / (x2 - x1) if x2 > x1 else b_best
        return OffsetEstimate(t0 + int(x1), ref + m1, b, max(h1, h2), t0 + int(x1), t0 + int(x2), len(arr))


def _envelope(x: np.ndarray, y: np.ndarray, b_lo: float, b_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """The points (``x`` ascending) that could be the lowest of all, ``y - b x`` minimal, for some slope ``b``
    in ``[b_lo, b_hi]``. Point i is out when a point j is lower for every such slope: for j before i that is
    ``y_j - b_hi x_j < y_i - b_hi x_i``, for j after it ``y_j - b_lo x_j < y_i - b_lo x_i``. Two running minima
    decide it for every point at once: exact, vectorized."""
    inf = np.array([np.inf])
    u, v = y - b_hi * x, y - b_lo * x
    left = np.concatenate([inf, np.minimum.accumulate(u)[:-1]])  # best j before i
    right = np.concatenate([np.minimum.accumulate(v[::-1])[::-1][1:], inf])  # best j after i
    keep = (u <= left) & (v <= right)
    return x[keep], y[keep]


def _hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower convex hull of the points, ``x`` ascending (monotone chain): of the points that could bind,
    the few that do (every evaluation of the searches then touches only those)."""
    hx: list[float] = []
    hy: list[float] = []
    for px, py in zip(x.tolist(), y.tolist()):
        while len(hx) >= 2:
            cross = (hx[-1] - hx[-2]) * (py - hy[-2]) - (hy[-1] - hy[-2]) * (px - hx[-2])
            if cross <= 0:
                hx.pop()
                hy.pop()
            else:
                break
        hx.append(px)
        hy.append(py)
    return np.array(hx), np.array(hy)


def _argmax(f, lo: float, hi: float) -> float:
    """Where the concave ``f`` is largest on ``[lo, hi]`` (golden-section search)."""
    g = 0.6180339887498949
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(_ITER):
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
        else:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
    return (lo + hi) / 2


def _edge(f, outside: float, inside: float) -> float:
    """The point between ``outside`` and ``inside`` (where ``f >= 0``) at which ``f`` reaches 0 (bisection),
    on its ``f < 0`` side (a range of slopes a hair wider than the feasible one only widens the bound);
    ``outside`` itself if ``f`` is >= 0 there too."""
    if f(outside) >= 0:
        return outside
    for _ in range(_ITER):
        mid = (outside + inside) / 2
        if f(mid) >= 0:
            inside = mid
        else:
            outside = mid
    return outside
