"""InferenceStage: a pool of ONNX Runtime worker processes fed from shared memory.

Shape of the stage (all in the process that runs it, plus N workers)::

    input (FrameReader / LatestReader)
        │ dispatcher = Stage.loop(): read a frame in place, check it, drop it if over budget,
        │ copy it once into the least loaded worker's frame ring
        ▼
    [frames ring k] ──▶ worker k (python -m edgepipe.stages.inference._worker, its own InferenceSession)
                           reads the frame in place, preprocesses it into its preallocated input, frees the
                           slot, runs the model, DB post-processing, one reply per frame
    [results ring k] ◀──┘
        │ output given (a RingWriter): collector thread k completes frame_seq and the stamps and writes the
        ▼ serialized edgepipe.v1.InferenceResult to the output (type id RESULT_TYPE_ID)
    output (RingWriter)   - or, with output=None, no collector: the consumer's read_result() reads the
                            results rings itself (one wake-up fewer per frame) and gets InferenceResult messages

Why ``output=None``: with an output ring, a result crosses four parked wake-ups (dispatcher, worker,
collector, the output's consumer). A consumer in the stage's own process can instead read each worker's
results ring directly (the rings stay single-producer, single-consumer), which drops the collector's wake-up
and its parse/serialize/write. It delivers results in the order the frames were dispatched (the order they
left the input), so it always knows which worker holds the next result and parks on that ring alone; with
nothing in flight it parks on the ring of the worker the dispatcher will pick next (the dispatcher prefers
it), so a dispatch wakes the worker and nobody else. A
watcher thread per worker then only reads the READY/FATAL handshake and checks, every 0.1 s, for a dead or
hung worker; a dead worker's replies already in its ring are still read before it is restarted.

Why one copy into a per-worker ring instead of handing workers the input ring itself: a ring has exactly one
consumer, and a dispatcher that picks the least loaded worker must see every frame first. The copy is one
memcpy of the frame (about 0.1 ms for 480x640x3 here, ~0.2 % of the model's time; see
benchmarks/infer_throughput.py), and in exchange a worker reads its frame in place (no pickling, no socket),
the input slot is released at once, and a worker that crashes holds only its own ring.

Worker processes are started with ``subprocess.Popen`` and inherit exactly their two memfd rings (``pass_fds``),
not ``fork``: the stage usually runs in a thread of a process that may already hold ORT or OpenCV thread pools,
which a forked child would inherit in an undefined state. Each worker builds its own session after start.

Every frame sent to a worker gets exactly one reply, in order (result, dropped, bad), so the stage always knows
what each worker holds: ``queue_depth`` frames at most (default 2: the one running plus the next, so a worker
never idles waiting for the dispatcher). A worker that dies is reported (``worker_crashes``, ``last_crash``),
the frames it held are counted in ``frames_lost``, and it is restarted on fresh rings; a worker that fails
while loading its model (or crashes ``max_restarts`` times before becoming ready) fails the stage with
:class:`~edgepipe.errors.WorkerError`.

One piece: the dispatcher, the collectors (or, with ``output=None``, read_result() and the watchers) and the
restart path all keep one ledger, the per-worker in-flight queues under one lock; split across modules they
would have to share it through private names.

Micro-batching is not offered: batching 2 or 4 frames made each frame slower here (1 thread, 480x640:
37.8 ms per frame at batch 1, 41.6 at batch 2, 45.9 at batch 4), so ``micro_batch`` only accepts None or 1.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgepipe.clock import now_ns
from edgepipe.errors import (
    EdgepipeError,
    ImageHeaderError,
    ModelInputError,
    PeerClosedError,
    RingClosedError,
    RingTimeoutError,
    WorkerError,
)
import edgepipe.stages.inference._wire as W
from edgepipe.stages.inference.model import ModelSpec, TextDetector
from edgepipe.stages.base import Stage, producer_closed

__all__ = ["InferenceStage"]

_log = logging.getLogger("edgepipe.stages.inference")

#: Record type id of InferenceResult records on the output ring (the Envelope field number of inference_result).
RESULT_TYPE_ID = 22
_SEQ = W.SEQ
_HDR_ROOM = 256  # frame header + alignment per record


def _reap(proc: subprocess.Popen) -> None:
    """Wait for a worker whose ring end closed (kill it if it lingers)."""
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pow2_at_least(n: int) -> int:
    return 1 << max(12, (n - 1).bit_length())


@dataclass
class _InFlight:
    wseq: int  # seq in the worker's ring
    seq: int  # seq of the input frame
    capture_ns: int
    source_id: int
    in_publish_ns: int
    recv_ns: int
    order: int = 0  # dispatch order across all workers (read_result delivers by it)


class _Slot:
    """One worker position: its process and rings, replaced together on restart."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.frames_ring = None
        self.results_ring = None
        self.fw = None  # FrameWriter (dispatcher side)
        self.rr = None  # RingReader of results (collector side)
        self.inflight: collections.deque[_InFlight] = collections.deque()
        self.ready = False
        self.model_id = ""
        self.starts = 0
        self.failed_starts = 0  # consecutive deaths before READY
        self.fatal: str | None = None
        self.hung = False
        self.last_progress = 0.0  # monotonic time of the last reply, or of a dispatch to an idle worker
        self.thread: threading.Thread | None = None
        # held by whoever reads or replaces ``rr`` once the worker is ready: read_result() (with output=None),
        # the watcher while it restarts the worker, close() while it tears the rings down
        self.rx = threading.Lock()


class InferenceStage(Stage):
    """Run a text detector on every frame of ``input`` in ``workers`` processes; results go to ``output``.

    Args:
        input: a :class:`~edgepipe.frames.FrameReader` (lossless ring) or a latest-slot reader.
        output: a :class:`~edgepipe.ring.RingWriter`; each record is a serialized ``edgepipe.v1.InferenceResult``
            with type id ``RESULT_TYPE_ID`` (22). A full output ring drops the result (``results_dropped``).
            None: no output ring and no collector threads; a thread of this process takes each result with
            :meth:`read_result`, in dispatch order, straight from the workers' rings (one hop fewer).
        model: path of a .onnx detector, a :class:`~edgepipe.stages.inference.ModelSpec`, or None for the bundled one.
        workers: worker processes (default ``os.cpu_count()``).
        intra_op_threads: ORT threads per worker.
        intra_op_spinning: let those threads spin while idle (see :class:`~edgepipe.stages.inference.TextDetector`).
        budget_ms: frames older than this (from their capture stamp, else their publish stamp) when the
            dispatcher or a worker gets to them are dropped and counted in ``dropped_deadline``.
        micro_batch: None or 1 (batching measured slower for this model; see the module docstring).
        queue_depth: frames a worker may hold (running + queued).
        max_frame_bytes: largest frame the worker rings must carry (sizes the rings).
        publish: an :class:`edgepipe.Server` (each result goes out as an Envelope to the UDS clients that
            subscribed to ``inference_result``) or a callable given each finished ``InferenceResult``.
        start_timeout_s: how long open() waits for every worker to load its model.
        max_restarts: consecutive deaths of a worker before it is ready that fail the stage.
        hang_timeout_s: a worker holding frames that has not replied for this long is killed (and restarted
            like a crashed one; counted in ``worker_hangs`` too).

    Counters: frames_in, dispatched, results, dropped_deadline, bad_frames, frames_lost, worker_crashes,
    worker_hangs, worker_restarts, results_dropped, publish_errors.

    Stamps of each result (CLOCK_MONOTONIC_RAW ns): ``capture_ns`` from the frame (its publish time if it has
    none); ``publish_ns`` = [input ring, worker ring (dispatch), worker's results ring, output ring];
    ``receive_ns`` = [dispatcher read, worker read, collector read]; with ``output=None`` there is no output
    ring: ``publish_ns`` ends at the worker's results ring and ``receive_ns`` at read_result()'s read.
    ``inference_start_ns``/``_end_ns`` bracket the session run alone (preprocessing is before it, DB
    post-processing after it).

    >>> InferenceStage(input=None, output=None, micro_batch=4)
    Traceback (most recent call last):
      ...
    ValueError: micro_batch must be None or 1 (batching measured slower per frame for this model), got 4
    """

    kind = "inference"
    deadline_param = "budget_ms"  # the load shedding a regression run turns off (edgepipe.pipeline.config)
    stop_drain_s = 5.0  # how long a stopped stage waits for the frames its workers hold (then counts them lost)

    def __init__(
        self,
        input,
        output,
        model: ModelSpec | str | os.PathLike | None = None,
        *,
        workers: int | None = None,
        intra_op_threads: int = 1,
        intra_op_spinning: bool = False,
        budget_ms: float | None = None,
        micro_batch: int | None = None,
        queue_depth: int = 2,
        max_frame_bytes: int = 1280 * 720 * 3,
        publish: Callable[[Any], None] | None = None,
        start_timeout_s: float = 60.0,
        max_restarts: int = 3,
        hang_timeout_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        if micro_batch not in (None, 1):
            raise ValueError(
                f"micro_batch must be None or 1 (batching measured slower per frame for this model), got {micro_batch!r}"
            )
        super().__init__(name)
        workers = (os.cpu_count() or 1) if workers is None else workers
        for key, v in (("workers", workers), ("intra_op_threads", intra_op_threads), ("queue_depth", queue_depth),
                       ("max_frame_bytes", max_frame_bytes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{key} must be an int >= 1, got {v!r}")
        if budget_ms is not None and (not isinstance(budget_ms, (int, float)) or budget_ms <= 0):
            raise ValueError(f"budget_ms must be a positive number or None, got {budget_ms!r}")
        self.spec = ModelSpec.coerce(model)
        if self.spec.path is not None and not Path(self.spec.path).is_file():
            from edgepipe.errors import ModelNotFoundError

            raise ModelNotFoundError(f"model file not found: {self.spec.path!r}")
        self._input = input
        self._output = output
        self._direct = output is None  # results are taken by read_result(): no collector threads
        self._order = 0  # dispatch counter (_InFlight.order)
        # output=None, nothing in flight: the worker read_result() parks on, which the dispatcher then picks
        # first (so the reader is already waiting on the ring the next result comes from: no wake-up at dispatch)
        self._awaiting: _Slot | None = None
        self._reader_on_cond = False  # read_result() waits on the condition (no ready worker): wake it on dispatch
        self._watch_stop = threading.Event()
        self.workers = workers
        self.intra_op_threads = intra_op_threads
        self.intra_op_spinning = bool(intra_op_spinning)
        self.budget_ns = int(budget_ms * 1e6) if budget_ms else 0
        self.queue_depth = queue_depth
        self.max_frame_bytes = max_frame_bytes
        self.start_timeout_s = start_timeout_s
        self.max_restarts = max_restarts
        if not isinstance(hang_timeout_s, (int, float)) or hang_timeout_s <= 0:
            raise ValueError(f"hang_timeout_s must be a positive number, got {hang_timeout_s!r}")
        self.hang_timeout_s = float(hang_timeout_s)
        if publish is not None and not callable(publish) and hasattr(publish, "publish"):
            server = publish  # an edgepipe.Server: results go to clients that subscribed to "inference_result"
            from edgepipe.control.framing import Envelope

            publish = lambda m: server.publish(Envelope(inference_result=m))  # noqa: E731
        if publish is not None and not callable(publish):
            raise TypeError(f"publish must be a callable or an edgepipe.Server, got {publish!r}")
        self._publish = publish
        self._lock = threading.Lock()  # slots, in-flight queues, counters written by more than one thread
        self._cond = threading.Condition(self._lock)
        self._out_lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._closing = False
        self._fatal: WorkerError | None = None
        self.last_crash: str | None = None
        self.last_bad_frame: str | None = None
        self.last_publish_error: str | None = None
        for k in ("frames_in", "dispatched", "results", "dropped_deadline", "bad_frames", "frames_lost",
                  "worker_crashes", "worker_hangs", "worker_restarts", "results_dropped", "publish_errors"):
            self.counters[k] = 0

    # -- counters shared by the dispatcher and the collector threads ------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    # -- workers -----------------------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        """Fresh rings and a fresh process for ``slot`` (called with the lock held or before threads run)."""
        from edgepipe.frames import FrameWriter
        from edgepipe.ring import Ring

        cap = _pow2_at_least((self.queue_depth + 1) * (self.max_frame_bytes + _HDR_ROOM))
        frames = Ring.create(None, cap)
        results = Ring.create(None, 1 << 18)
        cfg = {
            "spec": self.spec.to_json(),
            "intra_op_threads": self.intra_op_threads,
            "spin": self.intra_op_spinning,
            "budget_ns": self.budget_ns,
            "warm_hw": list(self.spec.input_hw) if self.spec.input_hw else None,
        }
        try:
            proc = subprocess.Popen(
                # SIGINT ignored: a terminal's Ctrl-C reaches the whole process group, but a worker belongs to
                # its stage, which ends it (closing its frame ring, then SIGTERM) once it has stopped.
                [sys.executable, "-c",
                 "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import sys; "
                 "from edgepipe.stages.inference._worker import main; sys.exit(main(sys.argv[1:]))",
                 str(frames.fd), str(results.fd), json.dumps(cfg)],
                pass_fds=(frames.fd, results.fd),
                stdin=subprocess.DEVNULL,
            )
        except OSError as e:
            frames.close()
            results.close()
            raise WorkerError(f"cannot start inference worker {slot.index}: {e}") from None
        slot.frames_ring, slot.results_ring = frames, results
        slot.fw = FrameWriter(frames.writer())
        slot.rr = results.reader(wait="park")
        slot.proc = proc
        slot.ready = False
        slot.starts += 1

    def _teardown(self, slot: _Slot) -> None:
        for h in (slot.fw, slot.rr, slot.frames_ring, slot.results_ring):
            if h is not None:
                try:
                    h.close()
                except EdgepipeError:
                    pass
        slot.fw = slot.rr = slot.frames_ring = slot.results_ring = None

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (0 for a slot between processes)."""
        with self._lock:
            return [s.proc.pid if s.proc is not None else 0 for s in self._slots]

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def open(self) -> None:
        self._slots = [_Slot(i) for i in range(self.workers)]
        try:
            for slot in self._slots:
                self._spawn(slot)
                target, what = (self._watch, "watch") if self._direct else (self._collect, "collect")
                slot.thread = threading.Thread(
                    target=target, args=(slot,), name=f"edgepipe-{self.name}-{what}{slot.index}", daemon=True
                )
                slot.thread.start()
            deadline = time.monotonic() + self.start_timeout_s
            with self._cond:
                while not all(s.ready for s in self._slots) and not self.stopping:
                    if self._fatal is not None:
                        raise self._fatal
                    left = deadline - time.monotonic()
                    if left <= 0:
                        waiting = [s.index for s in self._slots if not s.ready]
                        raise WorkerError(f"workers {waiting} did not load the model within {self.start_timeout_s} s")
                    self._cond.wait(min(left, 0.1))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._watch_stop.set()
            slots = list(self._slots)
            for s in slots:
                if s.fw is not None:
                    s.fw.close()  # the worker sees PeerClosedError on its frame ring and exits
            self._cond.notify_all()
        for s in slots:
            p = s.proc
            if p is None:
                continue
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    try:
                        p.send_signal(sig)
                    except ProcessLookupError:
                        pass
                try:
                    p.wait(timeout=3.0 if sig is None else 2.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for s in slots:
            if s.thread is not None:
                s.thread.join(timeout=5.0)
            with s.rx, self._lock:  # not under a read_result() that is reading this slot's ring
                # frames never answered (a stop cut the drain short): lost, and counted, never silently
                self.counters["frames_lost"] += len(s.inflight)
                s.inflight.clear()
                self._teardown(s)

    # -- the dispatcher ----------------------------------------------------------------------------------------
    def _pick(self) -> _Slot | None:
        """The least loaded ready worker; among equals, the one an idle read_result() parks on (lock held)."""
        best = None
        for s in self._slots:
            if s.ready and s.fw is not None and len(s.inflight) < self.queue_depth:
                if best is None or len(s.inflight) < len(best.inflight) or (
                        len(s.inflight) == len(best.inflight) and s is self._awaiting):
                    best = s
        return best

    def _in_flight(self) -> int:
        return sum(len(s.inflight) for s in self._slots)

    def loop(self) -> None:
        inp = self._input
        budget = self.budget_ns
        ended = False
        try:
            while not self.stopping:
                with self._cond:
                    if self._fatal is not None:
                        raise self._fatal
                    if self._pick() is None:
                        self._cond.wait(0.05)
                        continue
                try:
                    ctx = inp.read_frame(timeout_s=0.1)
                except RingTimeoutError:
                    continue
                except PeerClosedError:
                    if producer_closed(inp):
                        ended = True
                        break  # the source ended
                    time.sleep(0.005)  # the source died: a restarted one takes its end over
                    continue
                except ImageHeaderError as e:  # a record that is not a frame: the reader skipped it
                    self.last_bad_frame = str(e)
                    self._count("bad_frames")
                    continue
                with ctx as f:
                    t_recv = now_ns()
                    self.counters["frames_in"] += 1  # only this thread writes it: no lock
                    try:
                        TextDetector.check_frame(f.array, f.pixel_format)
                    except ModelInputError as e:
                        self.last_bad_frame = f"seq {f.seq}: {e}"
                        self._count("bad_frames")
                        continue
                    cap = f.capture_ns or f.publish_ns
                    if budget and t_recv - cap > budget:
                        self._count("dropped_deadline")
                        continue
                    self._dispatch(f, cap, t_recv)
        finally:
            # The source ended: every frame dispatched gets its reply, however slow the machine (a hung
            # worker is still killed after hang_timeout_s, its frames counted lost). Told to stop (the
            # pipeline's drain timeout passed, or an owner's stop()), or output=None (the replies wait for
            # a read_result() that may never come): a bounded wait.
            self._drain(None if ended and not self._direct else self.stop_drain_s)

    def _dispatch(self, f, cap: int, t_recv: int) -> None:
        while not self.stopping:
            with self._cond:
                if self._fatal is not None:
                    raise self._fatal
                slot = self._pick()
                if slot is None:
                    self._cond.wait(0.05)
                    continue
                try:
                    wseq = slot.fw.try_write_frame(f.array, pixel_format=f.pixel_format, capture_ns=cap,
                                                   source_id=f.source_id)
                except EdgepipeError as e:  # too large for the worker ring, or a format frames cannot carry
                    self.last_bad_frame = f"seq {f.seq}: {e}"
                    self.counters["bad_frames"] += 1
                    return
                if wseq is None:  # ring momentarily full (padding at the wrap): try again shortly
                    self._cond.wait(0.001)
                    continue
                if not slot.inflight:
                    slot.last_progress = time.monotonic()  # an idle worker starts its clock now
                self._order += 1
                slot.inflight.append(_InFlight(wseq, f.seq, cap, f.source_id, f.publish_ns, t_recv, self._order))
                self.counters["dispatched"] += 1
                if self._reader_on_cond:
                    self._cond.notify_all()  # a read_result() waiting for a worker to wait on
                return

    def _drain(self, timeout_s: float | None) -> None:
        """Wait for the frames workers hold, so the end of the source loses none: ``timeout_s`` None waits
        until every one is answered (or counted lost), but a stop asked for meanwhile bounds it to
        :attr:`stop_drain_s` from then. What is still in flight at close() is counted in ``frames_lost``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._in_flight() and self._fatal is None:
                now = time.monotonic()
                if deadline is None and self.stopping:
                    deadline = now + self.stop_drain_s
                if deadline is not None and now >= deadline:
                    break
                self._cond.wait(0.05)

    # -- collectors: one thread per worker slot ----------------------------------------------------------------
    def _collect(self, slot: _Slot) -> None:
        from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb

        while True:
            with self._lock:
                rr, proc = slot.rr, slot.proc
            if rr is None:
                return
            try:
                payload = rr.read(timeout_s=0.1)
                t_rx = now_ns()
                rtype = rr.last_type
            except RingTimeoutError:
                if proc.poll() is None:
                    self._check_hung(slot, proc)
                    continue
                if self._worker_gone(slot):
                    return
                continue
            except (PeerClosedError, RingClosedError):
                _reap(proc)
                if self._worker_gone(slot):
                    return
                continue
            slot.last_progress = time.monotonic()
            msg = self._on_reply(slot, rtype, payload, pb, t_rx)
            if msg is not None:
                self._emit(msg)

    def _on_reply(self, slot: _Slot, rtype: int, payload: bytes, pb, t_rx: int):
        """Account for one record of a worker's results ring; the completed InferenceResult for a result."""
        if rtype == W.T_RESULT:
            return self._complete(slot, payload, pb, t_rx)
        if rtype in (W.T_DROPPED, W.T_BAD):
            (wseq,) = _SEQ.unpack_from(payload)
            with self._cond:
                e = self._settle(slot, wseq)
                if rtype == W.T_DROPPED:
                    self.counters["dropped_deadline"] += 1
                else:
                    self.counters["bad_frames"] += 1
                    self.last_bad_frame = f"seq {e.seq if e else '?'}: {payload[8:].decode(errors='replace')}"
                self._cond.notify_all()
        elif rtype == W.T_READY:
            info = json.loads(payload)
            with self._cond:
                slot.ready = True
                slot.failed_starts = 0
                slot.model_id = info["model_id"]
                self._cond.notify_all()
        elif rtype == W.T_FATAL:
            slot.fatal = payload.decode(errors="replace")
        return None

    def _check_hung(self, slot: _Slot, proc: subprocess.Popen) -> None:
        """Kill a worker that holds frames but has not replied for hang_timeout_s (a wedged session, a
        stopped process); the crash path then counts its frames lost and restarts it."""
        with self._lock:
            hung = bool(slot.inflight) and time.monotonic() - slot.last_progress > self.hang_timeout_s
        if hung and self._direct and slot.results_ring.status().queued:
            slot.last_progress = time.monotonic()  # it replied: the reader is behind, not the worker
            hung = False
        if hung:
            slot.hung = True
            self._count("worker_hangs")
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    def _settle(self, slot: _Slot, wseq: int) -> _InFlight | None:
        """Pop the in-flight entry for worker seq ``wseq`` (lock held). Replies come in order, so it is the
        oldest; anything older that was skipped cannot be answered any more and is counted lost."""
        while slot.inflight:
            e = slot.inflight.popleft()
            if e.wseq == wseq:
                return e
            self.counters["frames_lost"] += 1
        return None

    def _complete(self, slot: _Slot, payload: bytes, pb, t_rx: int):
        """Settle a RESULT reply and complete its message (frame_seq, the stamps on either side of the
        worker); None if its frame was already counted lost."""
        (wseq,) = _SEQ.unpack_from(payload)
        with self._cond:
            e = self._settle(slot, wseq)
            self._cond.notify_all()
        if e is None:
            return None
        msg = pb.InferenceResult()
        msg.ParseFromString(memoryview(payload)[8:])
        msg.frame_seq = e.seq
        st = msg.stamps
        st.seq = e.seq
        st.capture_ns = e.capture_ns
        st.source = str(e.source_id)
        # the worker stamped its receive, the dispatch publish (from its frame's header) and its own publish;
        # add the hops on either side of it, in order
        st.receive_ns.insert(0, e.recv_ns)
        st.receive_ns.append(t_rx)
        st.publish_ns.insert(0, e.in_publish_ns)
        return msg

    def _emit(self, msg) -> None:
        """A collector's last step: the result onto the output ring (and to ``publish``)."""
        msg.stamps.publish_ns.append(now_ns())
        data = msg.SerializeToString()
        with self._out_lock:  # one producer at a time on the output ring (and into publish)
            ok = self._output.try_write(data, RESULT_TYPE_ID)
            self._publish_one(msg)
        self._count("results" if ok else "results_dropped")

    def _publish_one(self, msg) -> None:
        if self._publish is not None:
            try:
                self._publish(msg)
            except Exception as exc:  # noqa: BLE001 - a failing subscriber must not stop the results
                self.last_publish_error = f"{type(exc).__name__}: {exc}"
                self._count("publish_errors")

    # -- output=None: the consumer reads the workers' rings; a watcher per worker ----------------------------
    def read_result(self, timeout_s: float | None = None):
        """The next result of a stage made with ``output=None``, in the order the frames were dispatched.

        Reads the results ring of the worker holding the oldest frame in flight, in the calling thread (no
        collector between the worker and the caller), and completes frame_seq and the stamps. One thread at a
        time should call it. Replies for frames a worker dropped (over budget) or could not take are
        counted, not returned; frames of a worker that died are counted in ``frames_lost`` and skipped.

        Args:
            timeout_s: how long to wait for a result (None: as long as it takes).

        Returns:
            An ``edgepipe.v1.InferenceResult`` message.

        Raises:
            ValueError: the stage writes its results to an output ring instead.
            RingTimeoutError: no result within ``timeout_s``.
            WorkerError: the stage failed (a worker cannot load its model).
            PeerClosedError: the stage has ended and every result it had was read.
        """
        if not self._direct:
            raise ValueError(f"read_result() is for a stage made with output=None; {self.name!r} writes its "
                             f"results to {self._output!r}")
        from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = 0.1 if deadline is None else deadline - time.monotonic()
            with self._cond:
                slot = self._next_slot()
                first = slot.inflight[0] if slot is not None else None
                if slot is None:
                    if self._fatal is not None:
                        raise self._fatal
                    if self.state in ("done", "failed"):
                        raise PeerClosedError(f"stage {self.name!r} has ended ({self.state}): no result left")
                    if left <= 0:
                        raise RingTimeoutError(f"no inference result within {timeout_s} s")
                    # nothing in flight: wait on the ring of the worker the next frame will go to (_pick
                    # prefers it), not on the condition, so the dispatch wakes only the worker
                    slot = self._pick()
                    if slot is None:
                        self._reader_on_cond = True
                        self._cond.wait(min(left, 0.1))
                        self._reader_on_cond = False
                        continue
                self._awaiting = slot if first is None else None
            with slot.rx:
                with self._lock:  # still the slot we picked? (its worker may have been replaced meanwhile)
                    if first is not None:
                        ok = bool(slot.inflight) and slot.inflight[0] is first
                    else:  # still ready, and holding the oldest frame if one was dispatched since
                        ok = slot.ready and self._next_slot() in (None, slot)
                    rr = slot.rr if ok else None
                payload = None
                if rr is not None:
                    try:
                        payload = rr.read(timeout_s=min(max(left, 0.0), 0.1))
                        t_rx = now_ns()
                        rtype = rr.last_type
                    except RingTimeoutError:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise RingTimeoutError(f"no inference result within {timeout_s} s") from None
                        continue
                    except (PeerClosedError, RingClosedError):
                        pass  # the worker died: its watcher counts its frames lost and restarts it
            if payload is None:  # a worker replaced or gone, or the stage closed its rings
                if self.state in ("done", "failed"):
                    raise PeerClosedError(f"stage {self.name!r} has ended ({self.state}): its rings are closed")
                if deadline is not None and time.monotonic() >= deadline:
                    raise RingTimeoutError(f"no inference result within {timeout_s} s")
                with self._cond:
                    self._cond.wait(0.01)
                continue
            slot.last_progress = time.monotonic()
            msg = self._on_reply(slot, rtype, payload, pb, t_rx)
            if msg is not None:
                self._count("results")
                self._publish_one(msg)
                return msg

    def _next_slot(self) -> _Slot | None:
        """The slot holding the frame dispatched first among those in flight (lock held)."""
        best = None
        for s in self._slots:
            if s.inflight and (best is None or s.inflight[0].order < best.inflight[0].order):
                best = s
        return best

    def _watch(self, slot: _Slot) -> None:
        """output=None: read the worker's READY / FATAL (nothing is dispatched to it before READY, so this
        thread is then its ring's only reader), then every 0.1 s look for a dead or hung worker, and
        restart it once read_result() has taken the replies it left in its ring."""
        from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb

        while not self._watch_stop.is_set():
            with self._lock:
                rr, proc, ready = slot.rr, slot.proc, slot.ready
            if rr is None:
                return
            if not ready:
                try:
                    payload = rr.read(timeout_s=0.1)
                    self._on_reply(slot, rr.last_type, payload, pb, now_ns())
                    continue
                except RingTimeoutError:
                    if proc.poll() is None:
                        continue
                except (PeerClosedError, RingClosedError):
                    _reap(proc)
            else:
                if self._watch_stop.wait(0.1):
                    return
                if proc.poll() is None:
                    self._check_hung(slot, proc)
                    continue
                with self._lock:
                    pending = bool(slot.inflight)
                if pending and slot.results_ring.status().queued:
                    continue  # replies the worker sent before it died: read_result() takes them first
            with slot.rx:
                if self._worker_gone(slot):
                    return

    def _worker_gone(self, slot: _Slot) -> bool:
        """The worker of ``slot`` exited. Count and restart it; True when the collector should end."""
        with self._cond:
            proc = slot.proc
            rc = proc.returncode if proc is not None else None
            if self._closing:
                return True
            lost = len(slot.inflight)
            slot.inflight.clear()
            how = f"signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
            if slot.hung:
                how += f" (killed by the stage: no reply for {self.hang_timeout_s:g} s)"
                slot.hung = False
            self.last_crash = f"worker {slot.index} (pid {proc.pid if proc else 0}) died with {how}; {lost} frame(s) lost"
            self.counters["frames_lost"] += lost
            self.counters["worker_crashes"] += 1
            _log.warning("stage %r: %s", self.name, self.last_crash)
            if not slot.ready:
                slot.failed_starts += 1
            self._teardown(slot)
            slot.proc = None
            if slot.fatal is not None or slot.failed_starts >= self.max_restarts:
                why = slot.fatal or f"it died {slot.failed_starts} times before loading the model ({how})"
                self._fatal = WorkerError(f"inference worker {slot.index} cannot run model "
                                          f"{self.spec.path or 'bundled'!r}: {why}")
                self._cond.notify_all()
                return True
            try:
                self._spawn(slot)
            except EdgepipeError as e:
                self._fatal = e if isinstance(e, WorkerError) else WorkerError(str(e))
                self._cond.notify_all()
                return True
            self.counters["worker_restarts"] += 1
            _log.info("stage %r: worker %d restarted as pid %d", self.name, slot.index, slot.proc.pid)
            self._cond.notify_all()
            return False

    # -- stats -------------------------------------------------------------------------------------------------
    def extra_stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "workers": [
                    {"index": s.index, "pid": s.proc.pid if s.proc else 0, "ready": s.ready,
                     "in_flight": len(s.inflight), "starts": s.starts}
                    for s in self._slots
                ],
                "model_id": next((s.model_id for s in self._slots if s.model_id), ""),
                "last_crash": self.last_crash,
                "last_bad_frame": self.last_bad_frame,
            }
