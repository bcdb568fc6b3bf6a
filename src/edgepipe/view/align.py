"""The ``align`` stage kind: each frame (or each inference result) of one link joined with the IMU samples of
another by capture stamp, published as a small record carrying the attitude at that stamp
(:class:`~edgepipe.stages.align.Aligner`: slerp between the two samples around it, the gap to the nearest).

In a pipeline file::

    [stages.align]
    kind = "align"
    inputs = { frames = "detections.tap", imu = "samples.tap" }
    outputs = { output = "aligned" }
    params = { max_wait_ms = 50 }

Input ``frames`` may carry frame records (a capture stage's ring or its tap: the output is an
``edgepipe.v1.FrameMeta`` with ``attitude`` set, keyed by ``frame_seq`` and ``stamps.capture_ns``; the
pixels are not copied) or ``InferenceResult`` records (the output is the same result with ``attitude``
set). A frame whose stamp the IMU has not passed yet waits up to ``max_wait_ms`` (later frames queue
behind it, in order), then goes out ``extrapolated``.

>>> from edgepipe.stages.align import Aligned
>>> m = attitude_message(Aligned(0, (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.5), 250, False, -250, 750))
>>> m.orientation.w, m.gyro.z, m.gap_ns, m.extrapolated
(1.0, 0.5, 250, False)
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from edgepipe._image import HDR, PIXEL_FORMATS, REC_TYPE
from edgepipe.control import messages as pb
from edgepipe.errors import ConfigError, PeerClosedError
from edgepipe.pipeline.api import EndOfStream, PipelineStage
from edgepipe.stages.align import Aligned, Aligner
from edgepipe.stages.imu import ImuReader
from edgepipe.view.priority import check_policy, lower_priority

__all__ = ["AlignStage"]

_IDLE_WAIT_S = 0.1  # parked on the frames input at most this long (the IMU tap is drained after each wake)
_WAITING_POLL_S = 0.005  # while a frame waits for the IMU: how often the IMU tap is looked at


def attitude_message(a: Aligned) -> pb.AlignedAttitude:
    """The protobuf form of an :class:`~edgepipe.stages.align.Aligned`."""
    w, x, y, z = a.q
    gx, gy, gz = a.gyr
    return pb.AlignedAttitude(orientation=pb.Quaternion(w=w, x=x, y=y, z=z), gyro=pb.Vec3(x=gx, y=gy, z=gz),
                              gap_ns=a.gap_ns, extrapolated=a.extrapolated, before_ns=a.before_ns,
                              after_ns=a.after_ns)


class AlignStage(PipelineStage):
    """Attitude at each frame's capture stamp, from the IMU samples around it (edgepipe.stages.align).

    Args:
        max_wait_ms: how long a frame waits for the IMU to pass its stamp before it goes out extrapolated.
        history: IMU samples kept for alignment (at 1 kHz, 4096 is 4 s).
        sched: the CPU priority of the thread running :meth:`loop`: ``"batch"`` (``SCHED_BATCH``, the
            default: it never preempts a pipeline process when it wakes, yet is not starved, so it keeps
            up and stops promptly on a saturated machine), ``"nice"`` or ``"normal"``
            (edgepipe.view.priority; not ``"idle"``, which only the view's encoder process takes).

    Inputs:
        frames: frame records (a capture ring or its tap) or InferenceResult records.
        imu: IMU samples (an imu stage's ring, or its tap).

    Outputs:
        output: per frame, a FrameMeta (for frame records) or the InferenceResult, with ``attitude`` set.
    """

    kind = "align"

    def __init__(self, name: str | None = None, *, max_wait_ms: float = 50.0, history: int = 4096,
                 sched: str = "batch", **kw: Any) -> None:
        super().__init__(name, **kw)
        self.sched = check_policy(self.name, sched)
        if self.sched == "idle":
            # the loop's thread shares its process with the control thread (Stop, stats): at SCHED_IDLE,
            # preempted holding the interpreter lock on a busy machine, it would stall that one too
            raise ConfigError(f"align stage {self.name!r}: sched 'idle' would stall the stage's control thread "
                              f"on a busy machine; use 'batch' (the default), 'nice' or 'normal'")
        self.sched_applied = ""
        if not isinstance(max_wait_ms, (int, float)) or isinstance(max_wait_ms, bool) or max_wait_ms < 0:
            raise ConfigError(f"align stage {name!r}: max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        self.max_wait_ns = int(max_wait_ms * 1e6)
        self.aligner = Aligner(history)
        self.pending: deque = deque()
        self.max_gap_ns = 0
        self.imu_batch = 256
        self.wakes = 0

    def open(self) -> None:
        for port in ("frames", "imu"):
            if port not in self.inputs:
                raise ConfigError(f"align stage {self.name!r} needs inputs.{port} (it has {sorted(self.inputs)})")
        self.imu = ImuReader(self.inputs["imu"].end, max_batch=self.imu_batch)
        self.imu_open = True

    def _take_imu(self) -> int:
        """Every IMU sample the tap holds now, in batches (one C call each); how many were read."""
        n = 0
        while self.imu_open:
            try:
                batch = self.imu.read(timeout_s=0)
            except PeerClosedError:
                self.imu_open = False  # the IMU ended: what waits goes out extrapolated after max_wait
                break
            self.aligner.push(batch)
            n += len(batch)
            if len(batch) < self.imu_batch:
                break
        return n

    def _frame_of(self, rec) -> tuple[int, int, Any] | None:
        """(seq, capture_ns, message to fill) of a frames-input record, or None if it is neither kind."""
        m = rec.message
        if isinstance(m, pb.InferenceResult):
            return m.frame_seq, m.stamps.capture_ns, m
        data = rec.payload
        if self.inputs["frames"].end.last_type == REC_TYPE and len(data) >= HDR.size:
            f = HDR.unpack_from(data, 0)
            ndim, fmt_code, seq, cap = f[3], f[4], f[7], f[8]
            shape = f[11:11 + ndim]
            meta = pb.FrameMeta(stamps=pb.Stamps(capture_ns=cap, seq=seq), frame_seq=seq,
                                height=int(shape[0]), width=int(shape[1]) if ndim > 1 else 1,
                                channels=int(shape[2]) if ndim > 2 else 1,
                                pixel_format=PIXEL_FORMATS[fmt_code] if fmt_code < len(PIXEL_FORMATS) else "RAW")
            return seq, cap, meta
        if rec.hops:  # a stamped record of a Python stage: its seq and capture stamp
            return rec.seq, rec.capture_ns, pb.FrameMeta(stamps=pb.Stamps(capture_ns=rec.capture_ns, seq=rec.seq),
                                                         frame_seq=rec.seq)
        self.count("not a frame")
        return None

    def _flush(self, now_mono: int) -> None:
        """Send every waiting frame the IMU has passed, in order; the first still waiting within its bound
        holds the rest."""
        while self.pending:
            seq, cap, msg, since = self.pending[0]
            a = self.aligner.at(cap)
            if a is None:
                if now_mono - since < self.max_wait_ns:
                    return
                a = self.aligner.at(cap, extrapolate=True)
                if a is None:  # no IMU sample at all yet: nothing to carry forward
                    self.count("no imu")
                    self.pending.popleft()
                    continue
            self.pending.popleft()
            msg.attitude.CopyFrom(attitude_message(a))
            self.count("extrapolated" if a.extrapolated else "interpolated")
            self.max_gap_ns = max(self.max_gap_ns, a.gap_ns)
            self.emit(msg.SerializeToString(), seq=seq, capture_ns=cap)

    def loop(self) -> None:
        # Woken by the frames, not by the IMU: with nothing waiting, park on the frames input (a frame or a
        # result, ~10-30 a second: its filler pays a futex wake for each, nothing to speak of), then take
        # every IMU sample queued meanwhile in a few batch reads. Never park on the IMU tap: a parked
        # reader makes its filler, the IMU branch's consumer, pay a futex wake for each of 1000 samples a
        # second (the recorder's lesson, benchmarks/README.md: +25 % on the demo's e2e p50). While a frame
        # waits for the IMU to pass its stamp, poll the IMU tap every _WAITING_POLL_S instead.
        frames = self.inputs["frames"]
        self.sched_applied = lower_priority(self.sched)
        while not self.stopping:
            try:
                rec = frames.receive(timeout_s=_WAITING_POLL_S if self.pending else _IDLE_WAIT_S)
            except EndOfStream:
                self._take_imu()
                self._flush(time.monotonic_ns() + self.max_wait_ns)  # nothing more is coming: send what waits
                return
            self.wakes += 1
            self._take_imu()  # after the frame: the samples up to its arrival, long past its capture
            if rec is not None:
                got = self._frame_of(rec)
                frames.release()
                if got is not None:
                    self.pending.append((*got, time.monotonic_ns()))
            self._flush(time.monotonic_ns())

    def extra_stats(self) -> dict[str, Any]:
        return {**super().extra_stats(), "waiting": len(self.pending), "max_gap_us": self.max_gap_ns / 1e3,
                "imu_out_of_order": self.aligner.out_of_order, "sched": self.sched_applied, "wakes": self.wakes}
