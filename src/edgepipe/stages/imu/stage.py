"""ImuStage: configure, start, stop and report one C sampling loop (``edgepipe.imu_loop.ImuLoop``) as a stage.

>>> from edgepipe.stages.imu import SyntheticSource
>>> st = ImuStage(SyntheticSource(), rate_hz=500, wait="sleep", max_samples=10)
>>> st.run(), st.stats()["samples"], st.stats()["loop_state"]
(0, 10, 'ended')
"""

from __future__ import annotations

import errno
import os
import threading
import time
import warnings
from typing import Any

from edgepipe.errors import EdgepipeOSError, ImuConfigError, ImuSourceClosedError
from edgepipe.imu_loop import HIST_JITTER, HIST_WAKE, IMU_SAMPLE_DTYPE, STATES, ImuLoop, ImuLoopConfig
from edgepipe.stages.base import Stage
from edgepipe.stages.imu._check import finite as _finite
from edgepipe.stages.imu._check import rate as _rate
from edgepipe.stages.imu._check import vec as _vec
from edgepipe.stages.imu.sources import ImuSource

__all__ = ["ImuStage"]

_FILTERS = ("madgwick", "madgwick-marg")
_WAITS = ("sleep", "hybrid")


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
            Leased to the C loop from open() to close(): meanwhile Python cannot write through it, and
            closing it (or its ring) raises RingBusyError instead of freeing it under the loop.
        duration_s: stop after this long (None: until stop() or the source ends).
        max_samples: end after this many samples (0/None: no limit).
        priority: ask for SCHED_FIFO at this priority (1..99) for the loop thread.
        cpu: pin the loop thread to this CPU.
        guard_us: hybrid: the initial guard. It then follows the p99.5 of the observed wake lateness
            (+20 % + 5 us), between 20 us and ``guard_max_us`` or half a period, whichever is less.
        guard_max_us: hybrid: the largest guard it may grow to.
        q0: initial filter attitude.

    Raises:
        ImuConfigError: a value out of range (the message names it).

    A refused priority or CPU pinning does not stop the stage: it is reported in ``stats()["rt"]`` and as a
    RuntimeWarning.
    """

    kind = "imu"

    def __init__(self, source: ImuSource, rate_hz: float | None = None, filter: str = "madgwick",
                 beta: float = 0.1, wait: str = "hybrid", output=None, *, name: str | None = None,
                 duration_s: float | None = None, max_samples: int | None = None, priority: int | None = None,
                 cpu: int | None = None, guard_us: float = 150.0, guard_max_us: float = 2000.0,
                 q0=(1.0, 0.0, 0.0, 0.0)) -> None:
        super().__init__(name)
        if not isinstance(source, ImuSource):
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
        self._final: dict[str, Any] | None = None
        self.rate_hz: float | None = self._rate_arg
        self.rt: dict[str, str] = {}

    # -- lifecycle
    def open(self) -> None:
        src = self.source
        rate = self._rate_arg if self._rate_arg is not None else _rate("rate_hz", src.default_rate_hz())
        self.rate_hz = rate
        cfg = ImuLoopConfig(wait=self.wait if src.paced else "device", q0=self.q0)
        src.open(cfg)
        try:
            # Spinning more than half of every period buys little: cap the adapted guard there.
            guard_min = min(20_000, int(0.25e9 / rate))
            cfg.set(rate_hz=rate, dt_s=src.dt_s(rate), beta=self.beta,
                    use_mag=self.filter == "madgwick-marg" and src.has_mag,
                    sched_priority=self.priority or 0, cpu=-1 if self.cpu is None else self.cpu,
                    guard_ns=self.guard_ns, guard_min_ns=guard_min,
                    guard_max_ns=max(guard_min, min(self.guard_max_ns, int(0.5e9 / rate))),
                    max_samples=self.max_samples)
            # the output writer is leased to the loop until close(): no Python write, no close under it
            self._loop = ImuLoop(cfg, self.output)
        except BaseException:
            src.close()
            raise

    def loop(self) -> None:
        self._loop.start()
        self._report_rt()
        t_end = None if self.duration_s is None else time.monotonic() + self.duration_s
        try:
            while not self.stopping:
                st = self._c_stats()
                if STATES.get(st.state) in ("ended", "failed"):
                    break
                left = 0.05 if t_end is None else min(0.05, t_end - time.monotonic())
                if left <= 0:
                    break
                time.sleep(left)
                self._update_counters(st)
        finally:
            self._loop.stop()  # joins the thread; cffi releases the GIL meanwhile
            st = self._c_stats()
            self._update_counters(st)
            self._final = self._extra(st)
        if STATES.get(st.state) == "failed":
            raise self._failure(st)

    def close(self) -> None:
        with self._loop_lock:
            if self._loop is not None:
                self._loop.close()  # destroys the C loop, then returns the output writer's lease
                self._loop = None
        self.source.close()

    # -- stats
    def _c_stats(self):
        return self._loop.stats()

    def _update_counters(self, st) -> None:
        for k in ("samples", "published", "dropped", "missed", "skipped_bad", "read_errors"):
            self.counters[k] = getattr(st, k)

    def _quantiles(self, which: int) -> dict[str, float]:
        return self._loop.quantiles(which)

    def _extra(self, st) -> dict[str, Any]:
        wall_ns = max(1, st.now_ns - st.start_ns)
        span = st.last_sample_ns - st.first_sample_ns
        return {
            "rate_hz": self.rate_hz,
            "wait": self.wait if self.source.paced else "device",
            "loop_state": STATES.get(st.state, str(st.state)),
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
            "jitter_us": self._quantiles(HIST_JITTER),
            "wake_late_us": self._quantiles(HIST_WAKE),
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

