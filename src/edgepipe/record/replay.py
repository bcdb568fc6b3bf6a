"""Replay: recorded channels back into rings, at the recorded pace, at xN, or as fast as the consumer takes
them (lossless lockstep), over a time range and topic filter, once or looped.

Each message becomes the ring record it was recorded from (edgepipe.record.convert.from_message) with its
record type. Pace follows the recording's log times (the receive stamps): message k is published at
``t0 + (log_k - log_0) / rate``; the wait sleeps until shortly before that time (:func:`pace_spin_ns`) and
spins the rest, optionally under SCHED_FIFO (``realtime``: on a loaded machine the preemption of a normal
process, not the wait, is what makes a replay late; benchmarks/record_replay.py measures both), and
the lateness of every publish is kept (:attr:`ReplayStats.lateness`, an HDR histogram). Writes are lossless: a full ring
is waited for (so a slow consumer slows the replay rather than losing records), checking ``stop``.

Frames (recorded as foxglove.RawImage) are written through a FrameWriter, so they are numbered 1, 2, ...
in replay order, which is the recorded numbering for a recording that starts at the source's first frame
and whose tap dropped none.

Stamps: a replayed record is restamped as if it happened now: every RAW stamp inside it (capture,
each hop's publish/receive, an IMU sample's stamps, a result's stamps, a frame's capture/publish) moves by
``publish time now - recorded receive stamp``, so the latencies a pipeline measures on replayed data are
its own, while the intervals between stamps stay what they were. ``restamp=False`` keeps them as recorded.

>>> import os, tempfile
>>> from edgepipe.ring import Ring
>>> from edgepipe.record.writer import McapRecorder
>>> from edgepipe.record.recorder import Recorder
>>> path = os.path.join(tempfile.mkdtemp(), "r.mcap")
>>> with Ring.create(capacity=4096) as ring:
...     w = ring.writer()
...     for i in range(3):
...         _ = w.try_write(b"rec %d" % i, type_id=9)
...     w.close()
...     with McapRecorder(path) as mcap:
...         Recorder(mcap, {"/a": ring.reader()}).run()
>>> with Ring.create(capacity=4096) as ring:
...     st = replay(path, {"/a": ring.writer()}, rate=0)
...     r = ring.reader()
...     st.sent, [(r.try_read(), r.last_type) for _ in range(3)]
({'/a': 3}, [(b'rec 0', 9), (b'rec 1', 9), (b'rec 2', 9)])
"""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from hdrh.histogram import HdrHistogram

from edgepipe._image import HDR, REC_TYPE
from edgepipe.clock import now_ns
from edgepipe.control import messages as pb
from edgepipe.errors import RealtimeNotPermittedError, RingTimeoutError
from edgepipe.imu_loop import IMU_RECORD_TYPE, IMU_SAMPLE_DTYPE
from edgepipe.pipeline.wire import Hop, pack_record, unpack_record
from edgepipe.frames import FrameWriter
from edgepipe.record.convert import from_message, image_array
from edgepipe.record.schemas import RAW_IMAGE
from edgepipe.record.reader import iter_recording, recording_info
from edgepipe.stages.inference import RESULT_TYPE_ID
from edgepipe.wait import wake_cost

__all__ = ["ReplayStats", "realtime_priority", "replay"]

PACE_SPIN_MIN_NS = 20_000
PACE_SPIN_MAX_NS = 500_000
_TIMER_SLACK_NS = 50_000  # Linux's default timer slack for a normal thread: a sleep may end this much late


def pace_spin_ns(wake_ns: int | None = None) -> int:
    """How long before a publish time a paced replay stops sleeping and spins on the clock: what a sleep
    can overshoot by on an idle machine (the timer slack, plus a wake of this machine from
    edgepipe.wait.wake_cost, twice for margin), clamped to [20 us, 500 us].

    >>> pace_spin_ns(25_000)
    100000
    """
    if wake_ns is None:
        wake_ns = wake_cost().wake_ns
    return max(PACE_SPIN_MIN_NS, min(PACE_SPIN_MAX_NS, _TIMER_SLACK_NS + 2 * int(wake_ns)))


@contextmanager
def realtime_priority(priority: int):
    """Run the calling thread under SCHED_FIFO at ``priority`` (1..99) inside the block, then restore its
    policy. A FIFO thread is not preempted by normal ones and its sleeps have no timer slack, which is what
    keeps a paced replay on time on a loaded machine (benchmarks/record_replay.py).

    Raises:
        RealtimeNotPermittedError: the kernel refused (no CAP_SYS_NICE and no rtprio limit that allows it).
        ValueError: a priority outside 1..99.
    """
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 99:
        raise ValueError(f"a SCHED_FIFO priority is an int in 1..99, got {priority!r}")
    old_policy, old_param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as e:
        limit = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
        raise RealtimeNotPermittedError(
            f"SCHED_FIFO priority {priority} refused: {e.strerror} (rtprio limit {limit}); give the process "
            f"CAP_SYS_NICE or raise its rtprio limit (/etc/security/limits.conf `<user> - rtprio {priority}`, "
            f"`ulimit -r {priority}`, Docker --cap-add SYS_NICE --ulimit rtprio={priority}), or replay without "
            f"realtime", priority=priority) from None
    try:
        yield
    finally:
        os.sched_setscheduler(0, old_policy, old_param)


@dataclass
class ReplayStats:
    """What a replay published: per topic counts, loops done, and the lateness of each paced publish."""

    sent: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # messages with no ring or no record of their own
    # how late each paced publish was (ns, after its write returned): 1 ns .. 60 s, 3 digits
    lateness: Any = field(default_factory=lambda: HdrHistogram(1, 60_000_000_000, 3))
    early: int = 0  # publishes that were not late at all (counted here: the histogram starts at 1 ns)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def lateness_us(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of publish lateness in microseconds."""
        return self.lateness.get_value_at_percentile(q) / 1e3 if self.lateness.get_total_count() else 0.0


def _shift_record(data: bytes, type_id: int, shift: int) -> bytes:
    """The record with every RAW stamp in it moved by ``shift`` ns."""
    if type_id == IMU_RECORD_TYPE and len(data) == IMU_SAMPLE_DTYPE.itemsize:
        row = np.frombuffer(data, IMU_SAMPLE_DTYPE).copy()
        for k in ("deadline_ns", "sample_ns", "publish_ns"):
            if row[k][0]:
                row[k] += shift
        return row.tobytes()
    if type_id == RESULT_TYPE_ID:
        m = pb.InferenceResult.FromString(data)
        st = m.stamps
        if st.capture_ns:
            st.capture_ns += shift
        st.publish_ns[:] = [t + shift for t in st.publish_ns]
        st.receive_ns[:] = [t + shift for t in st.receive_ns]
        if m.inference_start_ns:
            m.inference_start_ns += shift
            m.inference_end_ns += shift
        return m.SerializeToString()
    if type_id == REC_TYPE and len(data) >= HDR.size:
        f = list(HDR.unpack_from(data, 0))
        f[8] += shift if f[8] else 0
        f[9] += shift if f[9] else 0
        buf = bytearray(data)
        HDR.pack_into(buf, 0, *f)
        return bytes(buf)
    rec = unpack_record(data)
    if rec is not None:
        hops = [Hop(h.stage, h.link, h.receive_ns + shift, h.publish_ns + shift) for h in rec.hops]
        return pack_record(rec.payload, rec.seq, rec.capture_ns + shift, hops,
                           flags=1 if rec.redelivered else 0)
    return data


def replay(path, writers: dict[str, Any], *, rate: float = 1.0, loop: bool = False, start_s: float = 0.0,
           end_s: float | None = None, topics: list[str] | None = None, restamp: bool = True,
           stop: Callable[[], bool] | None = None, max_loops: int = 0, realtime: int = 0,
           spin_ns: int | None = None) -> ReplayStats:
    """Publish the recording at ``path`` into ``writers`` (``{topic: RingWriter}``; topics without a writer
    are skipped and counted).

    Args:
        rate: 1.0 the recorded pace, N for N times faster, 0 as fast as the consumers take them (lockstep).
        loop: start over at the end (until ``stop()``, or ``max_loops`` passes when > 0).
        start_s / end_s: the range to replay, in seconds from the recording's first message.
        topics: only these topics (default: every topic that has a writer).
        restamp: move the stamps inside each record to now (see the module docstring).
        stop: polled between messages; True ends the replay.
        realtime: > 0 runs the replay under SCHED_FIFO at this priority (:func:`realtime_priority`), so a
            loaded machine does not make it late; 0 (default) at normal priority.
        spin_ns: how long before each publish time the wait stops sleeping and spins on the clock (default
            :func:`pace_spin_ns`).

    Raises:
        RecordingNotFoundError, RecordingFormatError, RecordingTruncatedError, UnknownSchemaError.
        RealtimeNotPermittedError: ``realtime`` asked for and the kernel refused it (nothing was replayed).
        ValueError: a negative rate or an empty range.
    """
    if rate < 0:
        raise ValueError(f"rate must be >= 0 (0: lockstep), got {rate}")
    if spin_ns is not None and (isinstance(spin_ns, bool) or not isinstance(spin_ns, int) or spin_ns < 0):
        raise ValueError(f"spin_ns must be an int >= 0, got {spin_ns!r}")
    spin = pace_spin_ns() if spin_ns is None else spin_ns
    with realtime_priority(realtime) if realtime else nullcontext():
        return _replay(path, writers, rate=rate, loop=loop, start_s=start_s, end_s=end_s, topics=topics,
                       restamp=restamp, stop=stop, max_loops=max_loops, spin=spin)


def _replay(path, writers, *, rate, loop, start_s, end_s, topics, restamp, stop, max_loops, spin) -> ReplayStats:
    info = recording_info(path)
    offset = int(info.clock["offset_ns"]) if "offset_ns" in info.clock else 0
    t_first = info.start_ns + int(start_s * 1e9)
    t_last = info.end_ns + 1 if end_s is None else info.start_ns + int(end_s * 1e9)
    if t_last <= t_first:
        raise ValueError(f"empty time range: start_s={start_s}, end_s={end_s} of a {info.duration_s:.3f} s recording")
    wanted = [t for t in (topics or list(writers)) if t in writers]
    stats = ReplayStats()
    frame_writers: dict[str, FrameWriter] = {}
    stop = stop or (lambda: False)
    while True:
        t0 = None
        for topic, schema, msg, _decoded in iter_recording(path, topics=wanted, start_ns=t_first, end_ns=t_last):
            if stop():
                return stats
            rec = (b"", REC_TYPE) if schema == RAW_IMAGE else from_message(schema, msg.data)
            if rec is None:
                stats.skipped[topic] = stats.skipped.get(topic, 0) + 1
                continue
            data, type_id = rec
            now = now_ns()
            if t0 is None:
                t0 = now
            if rate > 0:
                due = t0 + int((msg.log_time - t_first) / rate)
                left = due - now
                if left > spin:
                    time.sleep((left - spin) / 1e9)
                while now_ns() < due:
                    pass
            if schema == RAW_IMAGE:  # a frame record of its own layout: through a FrameWriter (renumbered)
                fw = frame_writers.get(topic)
                if fw is None:
                    fw = frame_writers[topic] = FrameWriter(writers[topic])
                arr, fmt = image_array(msg.data)
                cap = msg.publish_time - offset
                if restamp:
                    cap += now_ns() - (msg.log_time - offset)
                _write_frame(fw, arr, fmt, cap, stop)
            else:
                if restamp:
                    data = _shift_record(data, type_id, now_ns() - (msg.log_time - offset))
                _write(writers[topic], data, type_id, stop)
            if rate > 0:
                late = now_ns() - due
                if late > 0:
                    stats.lateness.record_value(min(late, 60_000_000_000))
                else:
                    stats.early += 1
            stats.sent[topic] = stats.sent.get(topic, 0) + 1
        stats.loops += 1
        if not loop or (max_loops and stats.loops >= max_loops) or stop():
            return stats


def _write_frame(fw: FrameWriter, arr, fmt: str, capture_ns: int, stop: Callable[[], bool]) -> None:
    while True:
        try:
            fw.write_frame(arr, pixel_format=fmt, capture_ns=capture_ns, timeout_s=0.05)
            return
        except RingTimeoutError:
            if stop():
                return


def _write(w, data: bytes, type_id: int, stop: Callable[[], bool]) -> None:
    while True:
        try:
            w.write(data, type_id, timeout_s=0.05)
            return
        except RingTimeoutError:
            if stop():
                return
