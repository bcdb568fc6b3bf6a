"""The offset and drift between two machines' clocks, estimated over the bridge (NTP-style exchanges), with
an error bound that holds without assuming the two ends share anything.

One exchange: this end stamps ``t1`` and sends a ping; the other stamps ``t2`` when it arrives and ``t3``
when it sends the pong; this end stamps ``t4`` when that arrives. Causality alone (t1 before t2, t3 before
t4, in real time) puts the true offset (remote minus local) at the exchange inside
``[t3 - t4, t2 - t1]``: its midpoint ``theta`` is the sample, its half-width ``delta / 2`` (half the round
trip less the remote's turnaround) the sample's own bound. The drift over one exchange (< 1 ms at a few
hundred ppm) is far below a nanosecond and is ignored.

The estimate is a line ``offset(t) = a + b (t - t0)`` (b is the drift) fitted by least squares to the
samples of smallest delay (the best quarter of the window, at least MIN_SAMPLES). Its error ``e(t)`` (fitted
line minus the truth, a line too) is bounded at each chosen sample by ``delta_i / 2 + |residual_i|``; a line
bounded at two times is bounded by the larger of the two between them, so the estimate's span runs from an
early sample to a late one, each the one with the smallest such bound among the earliest and the latest
eighth of the chosen samples, and its bound is the larger of those two. Past the span the bound grows
linearly with the distance, by the slope two bounded ends allow. So the bound is about half the shortest
round trips at the two ends of the window, not of a typical one: the pinging end sends its pings in bursts
(the next one from the callback that took the previous answer), in which zenoh's threads are awake. A
bound wider than a latency it is used for makes that latency unknown, said as such, never printed as a
number.

>>> est = ClockEstimate()
>>> for i in range(20):  # the remote runs 5 ms ahead, drifting +100 ppm; 40 us each way, 10 us turnaround
...     t1 = i * 10_000_000
...     remote = lambda t: t + 5_000_000 + t // 10_000
...     est.add(t1, remote(t1 + 40_000), remote(t1 + 50_000), t1 + 90_000)
>>> e = est.estimate()
>>> round(e.offset_at(100_000_000) / 1e6, 3), round(e.drift_ppm), round(e.bound_ns / 1e3, 1)  # bound: 80 us / 2
(5.01, 100, 40.0)
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["ClockEstimate", "OffsetEstimate"]

MIN_SAMPLES = 8


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
        self.samples: deque[tuple[int, float, int, int]] = deque(maxlen=window)  # (local mid, theta, delta, t4-t1)
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
            self.samples.append(((t1 + t4) // 2, theta, delta, t4 - t1))
            self.exchanges += 1

    def estimate(self) -> OffsetEstimate | None:
        """The current line and its bound, or None with fewer than MIN_SAMPLES exchanges."""
        with self._lock:
            s = list(self.samples)
        if len(s) < MIN_SAMPLES:
            return None
        best = sorted(sorted(s, key=lambda x: x[2])[:max(MIN_SAMPLES, len(s) // 4)])  # by delay, then by time
        t0 = best[0][0]
        xs = [t - t0 for t, _, _, _ in best]
        ys = [th for _, th, _, _ in best]
        n = len(best)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
        a = my - b * mx
        # the interval holds the offset at some instant of the exchange, not exactly at its middle: the drift
        # over half the round trip is added (a few ns)
        bounds = [d / 2 + abs(y - (a + b * x)) + abs(b) * rtt / 2 for x, y, (_, _, d, rtt) in zip(xs, ys, best)]
        k = max(1, n // 8)
        first = min(range(k), key=bounds.__getitem__)
        last = min(range(n - k, n), key=bounds.__getitem__)
        return OffsetEstimate(t0, a, b, max(bounds[first], bounds[last]), best[first][0], best[last][0], n)
