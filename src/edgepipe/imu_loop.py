"""ImuLoop: the handle of one C sampling loop (``csrc/ep_imu.c``), and the sample record it writes.

The stage layer (``edgepipe.stages.imu``) decides what to sample and how fast; this module is the only one
that talks to ``ep_imu_*``. A loop runs on its own pthread with the GIL released: it waits for each deadline,
reads one sample, stamps it, runs the Madgwick filter and ``try_write``s one 192-byte record into a ring.

The ring writer handed to a loop is *leased* to it (``RingWriter.lease``): while the loop exists, Python
cannot write through that writer (two producers) and closing the writer or its ring raises
``RingBusyError`` instead of freeing memory the C thread still writes through. ``ImuLoop.close()`` destroys
the loop (joining its thread) and only then returns the lease.

>>> from edgepipe.imu_loop import ImuLoop, ImuLoopConfig, IMU_SAMPLE_DTYPE
>>> cfg = ImuLoopConfig(rate_hz=1000.0, dt_s=0.001, wait="sleep", max_samples=5)
>>> cfg.synthetic(rate_rad_s=(0.0, 0.0, 1.0))
>>> with ImuLoop(cfg) as loop:
...     loop.start()
...     ended = loop.join(timeout_s=5.0)
...     loop.stats().samples, loop.state()
(5, 'ended')
>>> IMU_SAMPLE_DTYPE.itemsize
192
"""

from __future__ import annotations

import threading
import time

import numpy as np

from edgepipe._ffi import ffi, lib
from edgepipe.errors import ImuConfigError, check

__all__ = ["IMU_RECORD_TYPE", "IMU_SAMPLE_DTYPE", "ImuLoop", "ImuLoopConfig"]

IMU_RECORD_TYPE = lib.EP_IMU_RECORD_TYPE
MIN_RATE_HZ = lib.EP_IMU_MIN_RATE_HZ
MAX_RATE_HZ = lib.EP_IMU_MAX_RATE_HZ
SCAN_MAX = lib.EP_IMU_SCAN_MAX

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

HIST_JITTER = lib.EP_IMU_HIST_JITTER
HIST_WAKE = lib.EP_IMU_HIST_WAKE

WAITS = {"sleep": lib.EP_IMU_WAIT_SLEEP, "hybrid": lib.EP_IMU_WAIT_HYBRID, "device": lib.EP_IMU_WAIT_DEVICE}
SOURCES = {"synthetic": lib.EP_IMU_SRC_SYNTH, "array": lib.EP_IMU_SRC_ARRAY, "sysfs": lib.EP_IMU_SRC_SYSFS,
           "chardev": lib.EP_IMU_SRC_CHARDEV}
STATES = {
    lib.EP_IMU_IDLE: "idle",
    lib.EP_IMU_RUNNING: "running",
    lib.EP_IMU_STOPPED: "stopped",
    lib.EP_IMU_ENDED: "ended",
    lib.EP_IMU_FAILED: "failed",
}
NCH = 10  # channel slots: gyro xyz, accel xyz, mag xyz, timestamp


class ImuLoopConfig:
    """What one loop does, filled in Python before the loop is created (``struct ep_imu_config``).

    Keyword arguments set the loop's own fields (``rate_hz``, ``dt_s``, ``beta``, ``q0``, ``wait``,
    ``use_mag``, ``sched_priority``, ``cpu``, ``guard_ns``, ``guard_min_ns``, ``guard_max_ns``,
    ``max_samples``); a source then describes itself with exactly one of :meth:`synthetic`, :meth:`array`,
    :meth:`sysfs` or :meth:`chardev`. Arrays handed to it are kept alive as long as the config.
    """

    _LOOP_FIELDS = ("rate_hz", "dt_s", "beta", "sched_priority", "cpu", "guard_ns", "guard_min_ns",
                    "guard_max_ns", "max_samples", "use_mag")

    def __init__(self, *, wait: str = "sleep", q0=(1.0, 0.0, 0.0, 0.0), **fields) -> None:
        self._c = ffi.new("struct ep_imu_config *")
        self._keep: list = []
        self._c.fd = [-1] * NCH
        self._c.cpu = -1
        self.set(wait=wait, q0=q0, **fields)

    def set(self, *, wait: str | None = None, q0=None, **fields) -> None:
        """Set loop fields (see the class docstring); unknown names are an ImuConfigError."""
        for k, v in fields.items():
            if k not in self._LOOP_FIELDS:
                raise ImuConfigError(f"unknown IMU loop field {k!r} (known: {', '.join(self._LOOP_FIELDS)})")
            setattr(self._c, k, int(v) if k in ("use_mag",) else v)
        if wait is not None:
            if wait not in WAITS:
                raise ImuConfigError(f"wait must be one of {sorted(WAITS)}, got {wait!r}")
            self._c.wait_mode = WAITS[wait]
        if q0 is not None:
            self._c.q0 = list(q0)

    def get(self, name: str):
        """A loop field's current value (``rate_hz``, ``dt_s``, ...)."""
        return getattr(self._c, name)

    # -- sources
    def synthetic(self, rate_rad_s=(0.0, 0.0, 0.0), q0=(1.0, 0.0, 0.0, 0.0), gravity: float = 9.80665,
                  nan_every: int = 0) -> None:
        """Constant body rate from attitude ``q0``, gravity rotated to match (generated in C)."""
        c = self._c
        c.source = SOURCES["synthetic"]
        c.syn_w = list(rate_rad_s)
        c.syn_q0 = list(q0)
        c.syn_g = gravity
        c.syn_nan_every = nan_every

    def array(self, rows: np.ndarray, loop: bool = False) -> None:
        """Replay preloaded rows of 10 float64 (t_s, gyr xyz rad/s, acc xyz m/s^2, mag xyz), read in place."""
        if rows.dtype != np.float64 or rows.ndim != 2 or rows.shape[1] != 10 or not rows.flags.c_contiguous:
            raise ImuConfigError(f"rows must be a C-contiguous (N, 10) float64 array, got {rows.dtype} {rows.shape}")
        c = self._c
        c.source = SOURCES["array"]
        buf = ffi.from_buffer("double[]", rows)
        self._keep.append((rows, buf))
        c.rows = buf
        c.n_rows = len(rows)
        c.loop_data = int(loop)

    def sysfs(self, fds: dict[int, int], scales: dict[int, float]) -> None:
        """Polled IIO sysfs: ``fds[slot]`` an open ``in_*_raw`` file, times ``scales[slot]``."""
        c = self._c
        c.source = SOURCES["sysfs"]
        for slot, fd in fds.items():
            c.fd[slot] = fd
        for slot, s in scales.items():
            c.scale[slot] = s

    def chardev(self, fd: int, scan_size: int, channels: dict[int, tuple[int, int, int, int, bool, bool]],
                scales: dict[int, float]) -> None:
        """Buffered IIO char device: scans of ``scan_size`` bytes; ``channels[slot]`` = (offset, bytes, bits,
        shift, signed, big_endian) of each enabled channel in a scan."""
        if not 0 < scan_size <= SCAN_MAX:
            raise ImuConfigError(f"scan of {scan_size} bytes; supported: 1..{SCAN_MAX}")
        c = self._c
        c.source = SOURCES["chardev"]
        c.fd[0] = fd
        c.scan_size = scan_size
        for slot, (off, nbytes, bits, shift, signed, be) in channels.items():
            c.ch_off[slot], c.ch_bytes[slot], c.ch_bits[slot] = off, nbytes, bits
            c.ch_shift[slot], c.ch_signed[slot], c.ch_be[slot] = shift, int(signed), int(be)
        for slot, s in scales.items():
            c.scale[slot] = s


def synthetic_truth(rate_rad_s, q0, gravity: float, t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic source's exact attitude (w, x, y, z) and accelerometer reading (m/s^2) at ``t_s``."""
    cfg = ImuLoopConfig()
    cfg.synthetic(rate_rad_s, q0, gravity)
    q, a = ffi.new("double[4]"), ffi.new("double[3]")
    check(lib.ep_imu_synth_truth(cfg._c, float(t_s), q, a))
    return np.array(list(q)), np.array(list(a))


class ImuLoop:
    """One C sampling loop: created from an :class:`ImuLoopConfig` and an optional ring writer (leased to the
    loop until :meth:`close`), started on its own pthread, stopped, read while it runs.

    ``stats()`` and the histogram calls may run on another thread than ``close()``: a lock keeps them off a
    loop that ``close()`` is destroying (cffi releases the GIL inside each call).
    """

    __slots__ = ("_cfg", "_loop", "_lock", "_writer", "_lease")

    def __init__(self, cfg: ImuLoopConfig, writer=None) -> None:
        self._cfg = cfg
        self._lock = threading.Lock()
        self._writer = writer
        self._lease = None
        out = ffi.new("struct ep_imu **")
        if writer is not None:
            self._lease = writer.lease(self)  # refuses a closed or already leased writer
        try:
            w = ffi.NULL if self._lease is None else self._lease.pointer
            check(lib.ep_imu_create(cfg._c, w, out),
                  f"IMU loop config (rate {cfg.get('rate_hz')} Hz, dt {cfg.get('dt_s')} s)")
        except BaseException:
            if self._lease is not None:
                self._lease.release()
            raise
        self._loop = out[0]

    def start(self) -> None:
        """Start the loop thread."""
        check(lib.ep_imu_start(self._ptr()), "starting the IMU loop thread")

    def stop(self) -> None:
        """Ask the loop to stop and join its thread (the GIL is released meanwhile)."""
        lib.ep_imu_stop(self._ptr())

    def join(self, timeout_s: float | None = None, poll_s: float = 0.01) -> bool:
        """Wait until the loop has ended, stopped or failed on its own; True if it has."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while self.state() == "running":
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(poll_s)
        return True

    def stats(self):
        """A copy of ``struct ep_imu_stats`` (counters, state, filter attitude ``q``, RT errnos, ...)."""
        s = ffi.new("struct ep_imu_stats *")
        with self._lock:
            lib.ep_imu_stats(self._ptr(), s)
        return s

    def state(self) -> str:
        """"idle", "running", "stopped", "ended" or "failed"."""
        st = self.stats().state
        return STATES.get(st, str(st))

    def quantiles(self, which: int) -> dict[str, float]:
        """p50/p99/p999/max in us (and the count) of histogram ``which`` (HIST_JITTER or HIST_WAKE)."""
        out = ffi.new("int64_t *")
        n = ffi.new("uint64_t *")
        res = {}
        with self._lock:
            loop = self._ptr()
            for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)):
                lib.ep_imu_quantile(loop, which, q, out)
                res[label] = out[0] / 1000.0
            lib.ep_imu_hist_count(loop, which, n)
        res["count"] = n[0]
        return res

    @property
    def closed(self) -> bool:
        return self._loop is None

    def close(self) -> None:
        """Destroy the loop (stopping and joining its thread first), then return the writer's lease. Twice is
        fine."""
        with self._lock:
            if self._loop is not None:
                lib.ep_imu_destroy(self._loop)
                self._loop = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _ptr(self):
        if self._loop is None:
            raise ImuConfigError("the IMU loop is closed")
        return self._loop

    def __enter__(self) -> ImuLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ImuLoop {'closed' if self._loop is None else self.state()}>"
