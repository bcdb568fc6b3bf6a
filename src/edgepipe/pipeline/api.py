"""Pipelines: stages as processes, wired by shared-memory rings, with a latency budget for every part.

:class:`Pipeline` is the supervisor's Python face. It takes stages (``PipelineStage`` instances, or
:class:`~edgepipe.pipeline.config.StageSpec` for registered kinds such as ``"capture"``), creates one memfd ring per
link, starts each stage as its own process (edgepipe.pipeline.host), hands it its ring fds over a
control socket, restarts crashed stages, and on stop() (or Ctrl-C / SIGTERM in run()) stops the sources
first and lets every record already in flight drain through to the sinks.

User stages subclass :class:`PipelineStage` and talk to their rings through :class:`Outlet` (``emit``) and
:class:`Inlet` (``receive``). Every record carries a small fixed stamp header (edgepipe.pipeline.wire): the
source's sequence number and capture time, and for each stage it crossed, the CLOCK_MONOTONIC_RAW time it
was received and published. A sink (a stage with inputs and no outputs) splits each record's end-to-end
latency into parts: ``<source stage>`` (capture to publish), ``<link>`` (time queued in that ring) and
``<stage>`` (time inside that stage), and records them in HDR histograms (edgepipe.pipeline.report.LatencyBook).

Delivery across crashes. A stage that dies (kill -9, an exception) is restarted; its neighbours wait for
it (a ring end whose process *died* is taken over by the new process; only an end that was *closed* in
order ends the stream). What a crash costs depends on the link's mode:

- ``lossless``: no record is lost. A stage holds each input record in the ring (peeked, not released)
  until it has handled it, so a record that a crash interrupts is still queued for the restarted
  process. That process may handle it a second time (if the crashed one had already passed it on), so
  the first record it takes from each input carries ``Record.redelivered`` (FLAG_REDELIVERED in the
  header), and so does everything emitted from it; a restarted source that resumes its numbering marks
  its first record too. A sink that must count exactly drops a marked record whose sequence number it
  has already seen (CheckStage does): at least once on the wire, exactly once at such a sink.
- ``drop``: a record that finds the ring full is dropped and counted in the ring itself
  (``full_events``, so the count survives a crash of either end); one written while the consumer is
  restarting is dropped and counted by the producer (``dropped[<link>: consumer restarting]``).
- ``latest``: the slot counts what it overwrote; a frame is only ever the newest one.

A sink's own counters live in its process: a sink that is restarted starts counting again.

One piece: Outlet, Inlet and PipelineStage are the two ends of a link and the loop between them; the
delivery rules above (hold until handled, redelivery marks, waiting for a restarted peer, taps) are shared
by all three. The record format is in wire.py, taps in tap.py.

In one process, for tests and notebooks, the same stages run on threads over plain rings:

>>> from edgepipe.ring import Ring
>>> class Double(PipelineStage):
...     def handle(self, rec):
...         self.emit(rec.payload * 2, parent=rec)
>>> with Ring.create(capacity=4096) as a, Ring.create(capacity=4096) as b:
...     src = Outlet(a.writer(), "a", stage_index=0)
...     stage = Double("double", inputs={"in": "a"}, outputs={"out": "b"})
...     stage.attach(inputs={"in": Inlet(a.reader(), "a")}, outputs={"out": Outlet(b.writer(), "b", 1)})
...     sink = Inlet(b.reader(), "b")
...     src.emit(b"ab"); src.close()
...     stage.run()
...     rec = sink.receive(timeout_s=1.0)
...     rec.payload, rec.seq, [h.stage for h in rec.hops]
True
0
(b'abab', 0, [0, 1])
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterable

from edgepipe.clock import now_ns
from edgepipe.errors import PeerClosedError, RingTimeoutError
from edgepipe.pipeline.wire import FLAG_REDELIVERED, NO_LINK, Hop, Record, pack_record, unpack_record
from edgepipe.stages.base import Stage

__all__ = [
    "EndOfStream",
    "Hop",
    "Inlet",
    "Outlet",
    "PipelineStage",
    "Record",
    "sink",
    "source",
    "transform",
]

_WAIT_SLICE_S = 0.05  # blocking ring calls return this often so a stage sees stop() promptly


class EndOfStream(Exception):
    """Every input of a stage has ended: its producers finished and the rings are drained."""


# ---------------------------------------------------------------------------------------------------
# ring ends with stamps


class Outlet:
    """The producer end of one link, as a stage sees it: writes stamped records.

    Args:
        writer: a RingWriter (lossless or drop mode).
        link: the link's name. stage_index: the index of the stage that writes (stamped into each hop).
        mode: ``"lossless"`` waits for room (checking ``stopping``), ``"drop"`` drops a record that does
            not fit and counts it.
        link_index: the link's index in the pipeline (unused by the producer, kept for stats).
        mark_first: mark the first source record (one emitted without a parent) as possibly redelivered:
            a restarted source that resumes its numbering may repeat the last record of its predecessor.
        tap: an edgepipe.pipeline.tap.Tap offered a copy of every record published (never waited for).
    """

    def __init__(self, writer, link: str, stage_index: int = 0, mode: str = "lossless",
                 link_index: int = 0, stopping: Callable[[], bool] | None = None, *,
                 mark_first: bool = False, tap=None) -> None:
        if mode not in ("lossless", "drop"):
            raise ValueError(f"Outlet mode must be 'lossless' or 'drop', got {mode!r}")
        self.end = writer
        self.link = link
        self.link_index = link_index
        self.stage_index = stage_index
        self.mode = mode
        self.stopping = stopping or (lambda: False)
        self.seq = 0
        self.written = 0
        self.bytes_written = 0
        self.dropped: dict[str, int] = {}
        self.mark_first = mark_first
        self.tap = tap

    def emit(self, payload: bytes, *, parent: Record | None = None, seq: int | None = None,
             capture_ns: int | None = None) -> bool:
        """Publish ``payload``. With ``parent`` (a record this stage received) the stamps carry on and this
        stage's hop is added (and its redelivery mark); without one this is a source record: ``seq``
        (default: a counter) and ``capture_ns`` (default: now) start its stamps. Returns False if it was
        dropped."""
        t = now_ns()
        flags = 0
        if parent is None:
            s = self.seq if seq is None else seq
            self.seq = s + 1
            cap = t if capture_ns is None else capture_ns
            hops = [Hop(self.stage_index, NO_LINK, cap, t)]
            if self.mark_first:
                self.mark_first = False
                flags = FLAG_REDELIVERED
        else:
            s, cap = parent.seq, parent.capture_ns
            hops = [*parent.hops, Hop(self.stage_index, parent.link, parent.receive_ns, t)]
            if parent.redelivered:
                flags = FLAG_REDELIVERED
        return self.write_raw(pack_record(payload, s, cap, hops, flags))

    def write_raw(self, data: bytes, type_id: int = 1) -> bool:
        """Publish bytes as they are (no stamps), as a ring record of type ``type_id`` (1: a stamped record;
        a built-in stage's type, e.g. 22 for an InferenceResult, lets the consumer decode it as that stage's
        output). Same waiting and dropping rules as :meth:`emit`.

        A consumer that died (the supervisor restarts it) is waited for on a lossless link; on a drop link
        the record is dropped and counted (``consumer restarting``). One that closed ends the stream
        (:class:`EndOfStream`)."""
        w = self.end
        if self.mode == "drop":
            try:
                ok = w.try_write(data, type_id)
            except PeerClosedError:
                if not self._consumer_gone():
                    raise EndOfStream(f"the consumer of {self.link!r} closed") from None
                self.dropped["consumer restarting"] = self.dropped.get("consumer restarting", 0) + 1
                return False
            if not ok:
                self.dropped["ring full"] = self.dropped.get("ring full", 0) + 1
                return False
        else:
            while True:
                try:
                    w.write(data, type_id, timeout_s=_WAIT_SLICE_S)
                    break
                except RingTimeoutError:
                    if self.stopping():
                        self.dropped["stopped while ring full"] = self.dropped.get("stopped while ring full", 0) + 1
                        return False
                except PeerClosedError:
                    if not self._consumer_gone():
                        self.dropped["consumer closed"] = self.dropped.get("consumer closed", 0) + 1
                        raise EndOfStream(f"the consumer of {self.link!r} closed") from None
                    if self.stopping():
                        self.dropped["stopped while consumer restarting"] = \
                            self.dropped.get("stopped while consumer restarting", 0) + 1
                        return False
        self.written += 1
        self.bytes_written += len(data)
        if self.tap is not None:
            self.tap.offer(data, type_id)
        return True

    def _consumer_gone(self) -> bool:
        """The consumer died (a restart may follow: wait a little and say retry) or closed (False)."""
        if self.status().consumer_closed:
            return False
        time.sleep(0.005)
        return True

    def status(self):
        """The ring's status (edgepipe.ring.RingStatus): its shared counters outlive any one process."""
        return self.end.segment.status()

    def counters(self) -> dict[str, Any]:
        s = self.status()
        return {"name": self.link, "records_written": s.records_written, "records_read": s.records_read,
                "bytes_written": self.bytes_written, "full_events": s.full_events,
                "dropped": sum(self.dropped.values()), "used": s.used, "capacity": s.capacity}

    def close(self) -> None:
        """Close the producer end cleanly (and the tap's): the consumer drains what is queued, then sees end of
        stream."""
        self.end.close()
        if self.tap is not None:
            self.tap.close()


class Inlet:
    """The consumer end of one link, as a stage sees it: reads stamped records.

    A producer that died (and may be restarted) is waited for; one that closed cleanly ends the stream
    once the ring is drained (:class:`EndOfStream`).

    A record stays in the ring (peeked, not yet released) until the stage is done with it: the next
    :meth:`receive` (or :meth:`release`, or a clean :meth:`close`) gives it back. A stage that crashes
    while handling a record leaves it in the ring, and its restarted process takes it again; with
    ``mark_first`` (set for a restarted stage) the first record taken is marked ``redelivered``, since
    the crashed process may have handled (and passed on) it before it died. A ``tap``
    (edgepipe.pipeline.tap.Tap) is offered a copy of every record taken, with its type id.
    """

    def __init__(self, reader, link: str, link_index: int = 0,
                 stopping: Callable[[], bool] | None = None,
                 topology: dict[str, tuple[str, list[str]]] | None = None, *, mark_first: bool = False,
                 tap=None, mode: str = "lossless") -> None:
        self.end = reader
        self.mode = mode  # the link's mode (lossless | drop | latest), for a stage that passes it on (bridge)
        self.topology = topology or {}  # link -> (producer stage, that stage's input links), for naming parts
        self.link = link
        self.link_index = link_index
        self.stopping = stopping or (lambda: False)
        self.ended = False
        self.read = 0
        self.bytes_read = 0
        self.mark_first = mark_first
        self.tap = tap
        self._taken_ns = 0
        self._held = False

    def receive_raw(self, timeout_s: float | None = None) -> bytes | None:
        """The next record's bytes, or None if none arrived within ``timeout_s`` (None: until stopping).
        Releases the record taken before.

        Raises:
            EndOfStream: the producer closed and everything it wrote has been read.
        """
        self.release()
        if self.ended:
            raise EndOfStream(self.link)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        end = self.end
        while True:
            try:
                view = end.try_peek()
                if view is None:
                    left = _WAIT_SLICE_S if deadline is None else max(0.0, min(_WAIT_SLICE_S,
                                                                               deadline - time.monotonic()))
                    if left > 0 and end.wait(left):
                        view = end.try_peek()
                if view is not None:
                    data = bytes(view)
                    view.release()
                    self._held = True
                    self.read += 1
                    self.bytes_read += len(data)
                    if self.tap is not None:
                        # stamped before the copy for the tap, which is this stage's time, not the link's
                        self._taken_ns = now_ns()
                        self.tap.offer(data, end.last_type)
                    return data
            except PeerClosedError:
                if self.end.segment.status().producer_closed:
                    self.ended = True
                    raise EndOfStream(self.link) from None
                time.sleep(0.005)  # died: a restarted producer takes the end over
            if (deadline is not None and time.monotonic() >= deadline) or (deadline is None and self.stopping()):
                return None

    def release(self) -> None:
        """Give back the record taken last (the stage is done with it); nothing if none is held."""
        if self._held:
            self._held = False
            self.end.release()

    def receive(self, timeout_s: float | None = None) -> Record | None:
        """The next stamped record (receive time set), or None on timeout. Unstamped bytes come back as a
        Record with seq 0 and no hops."""
        data = self.receive_raw(timeout_s)
        if data is None:
            return None
        t = now_ns() if self.tap is None else self._taken_ns
        rec = unpack_record(data)
        if rec is None:
            rec = _decode_builtin(data, self.end.last_type, t, self.link, self.topology)
        rec.link = self.link_index
        rec.receive_ns = t
        if self.mark_first:
            self.mark_first = False
            rec.redelivered = True
        if rec.parts is not None:
            rec.parts.append((self.link, t - rec.parts.pop()[1]))  # last entry held the last publish time
        return rec

    def counters(self) -> dict[str, Any]:
        s = self.end.segment.status()
        return {"name": self.link, "records_written": s.records_written, "records_read": s.records_read,
                "bytes_read": self.bytes_read, "full_events": s.full_events, "dropped": 0,
                "used": s.used, "capacity": s.capacity}

    def close(self) -> None:
        """Close the consumer end cleanly (the record taken last counts as handled)."""
        if not self.end.closed:
            self.release()
        self.end.close()
        if self.tap is not None:
            self.tap.close()


_RESULT_TYPE = 22  # edgepipe.stages.inference.RESULT_TYPE_ID: a serialized edgepipe.v1.InferenceResult
_imu_type: int | None = None


def _decode_builtin(data, type_id: int, t: int, link: str, topo: dict) -> Record:
    """A record of a built-in stage as a Record whose ``parts`` name each latency part. The last entry of
    ``parts`` is a placeholder holding the record's last publish time (the caller turns it into the queueing
    time of the link it arrived on)."""
    global _imu_type
    producer, inputs = topo.get(link, ("?", []))
    if type_id == _RESULT_TYPE:
        from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb

        m = pb.InferenceResult()
        try:
            m.ParseFromString(bytes(data))
        except Exception:  # noqa: BLE001 - not a result after all: keep the bytes
            return Record(bytes(data), 0, t, [])
        st = m.stamps
        cap = st.capture_ns or (st.publish_ns[0] if st.publish_ns else t)
        parts = None
        pubs, recvs = list(st.publish_ns), list(st.receive_ns)
        relay = None
        if m.HasField("offload") and len(pubs) >= 4 and len(recvs) >= 3:
            # passed on by an offload stage (edgepipe.bridge.offload), which appended its receive and publish:
            # the inference parts are named after the stage that made the result (the producer of the offload
            # stage's input that has inputs itself), then that link and the offload stage get a part each
            for link_in in inputs:
                made_by, its_inputs = topo.get(link_in, ("?", []))
                if its_inputs:
                    relay = (producer, link_in, recvs.pop(), pubs.pop())
                    producer, inputs = made_by, its_inputs
                    break
        if len(pubs) >= 3 and len(recvs) >= 2 and m.inference_start_ns:
            p_in, p_disp, p_out = pubs[0], pubs[1], pubs[-1]
            r_in, r_worker = recvs[0], recvs[1]
            frames = inputs[0] if inputs else "frames"
            source = topo.get(frames, ("source", []))[0]
            parts = [(source, p_in - cap), (frames, r_in - p_in), (f"{producer}.dispatch", p_disp - r_in),
                     (f"{producer}.worker_queue", r_worker - p_disp),
                     (f"{producer}.preprocess", m.inference_start_ns - r_worker),
                     (f"{producer}.inference", m.inference_end_ns - m.inference_start_ns),
                     (f"{producer}.postprocess", p_out - m.inference_end_ns), ("", p_out)]
            if len(pubs) >= 4:
                # publish_ns = [input ring, worker ring, worker's results ring, output ring]: split the
                # worker's post-processing from the trip back through the collector
                p_res = pubs[2]
                parts[-2:] = [(f"{producer}.postprocess", p_res - m.inference_end_ns),
                              (f"{producer}.return", p_out - p_res), ("", p_out)]
            if relay is not None:
                relay_stage, link_in, r_relay, p_relay = relay
                parts[-1:] = [(link_in, r_relay - p_out), (relay_stage, p_relay - r_relay), ("", p_relay)]
        return Record(bytes(data), m.frame_seq, cap, [], parts=parts, message=m)
    if _imu_type is None:
        try:
            from edgepipe.stages.imu import IMU_RECORD_TYPE

            _imu_type = IMU_RECORD_TYPE
        except ImportError:  # pragma: no cover - a broken install
            _imu_type = -1
    if type_id == _imu_type:
        import numpy as np
        from edgepipe.stages.imu import IMU_SAMPLE_DTYPE

        if len(data) == IMU_SAMPLE_DTYPE.itemsize:
            row = np.frombuffer(bytes(data), IMU_SAMPLE_DTYPE)[0]
            cap, pub = int(row["sample_ns"]), int(row["publish_ns"])
            return Record(bytes(data), int(row["seq"]), cap, [], parts=[(producer, pub - cap), ("", pub)],
                          message=row)
    return Record(bytes(data), 0, t, [])


# ---------------------------------------------------------------------------------------------------
# user stages


class PipelineStage(Stage):
    """Base of user stages in a pipeline. Override :meth:`handle` (called per input record; the default
    :meth:`loop` feeds it) or :meth:`loop` itself (sources: emit until ``stopping``).

    Constructor arguments are remembered, so a stage built in the parent is rebuilt with the same arguments
    in its own process: the class travels by import path (``module:qualname``; a class in the script being
    run is found as multiprocessing finds it) and the arguments as plain values (strings, numbers,
    booleans, None, lists and dicts of them, paths), never pickled. Anything else is a ConfigError when
    the Pipeline is made. ``inputs`` / ``outputs`` map port names to link names; in the
    running stage, ``self.inputs`` / ``self.outputs`` map the same port names to :class:`Inlet` /
    :class:`Outlet` objects.

    Args:
        name: unique within the pipeline. inputs, outputs: ``{port: link}``.
        budget_ms: latency budget of this stage's own processing (ms).
        restart: ``"never"``, ``"on-failure"`` or ``"always"`` (default: the pipeline's).
    """

    kind = "python"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("loop")
        if own is not None and not getattr(own, "_eos_wrapped", False):
            # A downstream stage that closed, or inputs that all ended, end a loop cleanly, not as a failure.
            @functools.wraps(own)
            def loop(self):
                try:
                    own(self)
                except EndOfStream:
                    pass

            loop._eos_wrapped = True
            cls.loop = loop

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj._init_args = (args, kwargs)
        return obj

    def __init__(self, name: str | None = None, *, inputs: dict[str, str] | None = None,
                 outputs: dict[str, str] | None = None, budget_ms: float | None = None,
                 restart: str | None = None) -> None:
        super().__init__(name)
        self.input_links: dict[str, str] = dict(inputs or {})
        self.output_links: dict[str, str] = dict(outputs or {})
        self.budget_ms = budget_ms
        self.restart = restart
        self.inputs: dict[str, Inlet] = {}
        self.outputs: dict[str, Outlet] = {}
        self.latency = None  # a LatencyBook when this stage is a sink (set by attach)
        self.attempt = 0  # 0 in the stage's first process, n in its n-th restart (set by the stage process)
        self._rr = 0

    def rebuild_args(self) -> tuple[Any, tuple, dict[str, Any], str]:
        """How a stage process rebuilds this stage: ``(target, args, kwargs, function_role)``; the target
        (a class, or for a function stage the function) is called with the arguments this stage was made
        with. function_role is "" for a class."""
        args, kwargs = self._init_args
        return type(self), tuple(args), dict(kwargs), ""

    # -- wiring ---------------------------------------------------------------------------------------
    def attach(self, inputs: dict[str, Inlet], outputs: dict[str, Outlet], latency=None) -> None:
        """Hand the stage its ring ends (the supervisor does this in the stage's process)."""
        self.inputs, self.outputs = dict(inputs), dict(outputs)
        for end in (*self.inputs.values(), *self.outputs.values()):
            end.stopping = lambda: self.stopping
        self.latency = latency

    # -- what user code calls ----------------------------------------------------------------------------
    def emit(self, payload: bytes, port: str | None = None, *, parent: Record | None = None,
             seq: int | None = None, capture_ns: int | None = None) -> bool:
        """Publish on output ``port`` (may be omitted when there is one output)."""
        out = self._one(self.outputs, port, "output")
        ok = out.emit(payload, parent=parent, seq=seq, capture_ns=capture_ns)
        self.count("emitted" if ok else "dropped")
        return ok

    def receive(self, port: str | None = None, timeout_s: float | None = None) -> Record | None:
        """The next record from input ``port`` (or from any input, round robin, when None).

        Returns None on timeout or when stopping. Raises :class:`EndOfStream` once every input has ended.
        The record received before is given back to its ring first (see :class:`Inlet`): at most one
        record is held at a time, so a crash redelivers at most that one.
        """
        self._release_inputs()
        if port is not None or len(self.inputs) == 1:
            inlet = self._one(self.inputs, port, "input")
            rec = inlet.receive(timeout_s)
        else:
            rec = self._receive_any(timeout_s)
        if rec is not None:
            self.count("received")
            if self.latency is not None:
                self.latency.record(rec)
        return rec

    def handle(self, rec: Record) -> None:
        """Process one input record (override). The default passes it on unchanged to every output."""
        for out in self.outputs.values():
            out.emit(rec.payload, parent=rec)

    def loop(self) -> None:
        """Feed every input record to :meth:`handle` until the inputs end or the stage is stopped."""
        if not self.inputs:
            raise NotImplementedError(f"{type(self).__name__} has no inputs: a source must override loop()")
        while not self.stopping:
            try:
                rec = self.receive(timeout_s=0.1)
            except EndOfStream:
                return
            if rec is not None:
                self.handle(rec)
                self._release_inputs()

    def _release_inputs(self) -> None:
        for inlet in self.inputs.values():
            inlet.release()

    def extra_stats(self) -> dict[str, Any]:
        drops: dict[str, int] = {}
        for o in self.outputs.values():
            for k, v in o.dropped.items():
                drops[f"dropped[{o.link}: {k}]"] = v
        return drops

    # -- helpers ----------------------------------------------------------------------------------------
    def _one(self, ends: dict, port: str | None, what: str):
        if port is None:
            if len(ends) != 1:
                raise ValueError(f"stage {self.name!r} has {len(ends)} {what}s {sorted(ends)}: name the port")
            return next(iter(ends.values()))
        try:
            return ends[port]
        except KeyError:
            raise KeyError(f"stage {self.name!r} has no {what} port {port!r}; it has {sorted(ends)}") from None

    def _receive_any(self, timeout_s: float | None) -> Record | None:
        live = [i for i in self.inputs.values() if not i.ended]
        if not live:
            raise EndOfStream(self.name)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for _ in range(len(live)):
                inlet = live[self._rr % len(live)]
                self._rr += 1
                rec = _receive_or_drop(inlet, 0, live)
                if rec is not None and rec is not _ENDED:
                    return rec
            # nothing queued anywhere: wait a short while on one input, then look at all again
            rec = _receive_or_drop(live[self._rr % len(live)], 0.002, live)
            if rec is _ENDED:
                continue
            if rec is not None:
                return rec
            if (deadline is not None and time.monotonic() >= deadline) or (deadline is None and self.stopping):
                return None


_ENDED = object()


def _receive_or_drop(inlet, timeout_s: float, live: list):
    """``inlet.receive(timeout_s)``. If the inlet has ended, every ended inlet leaves ``live`` (in place) and
    the answer is ``_ENDED``; EndOfStream once none is left."""
    try:
        return inlet.receive(timeout_s)
    except EndOfStream:
        live[:] = [i for i in live if not i.ended]
        if not live:
            raise
        return _ENDED


class _FnStage(PipelineStage):
    """A stage made from a plain function by :func:`source`, :func:`transform` or :func:`sink`."""

    def __init__(self, fn: Callable, role: str, name: str | None = None, **kw: Any) -> None:
        self.kind = role  # type: ignore[misc]  # per instance: "source", "transform" or "sink"
        super().__init__(name or getattr(fn, "__name__", role), **kw)
        self.fn = fn
        self.role = role

    def rebuild_args(self) -> tuple[Any, tuple, dict[str, Any], str]:
        # the function itself is the target (its module attribute is the factory; the stage process
        # unwraps it through __wrapped__); the role and the factory's keywords are the arguments
        args, kwargs = self._init_args
        rest = {k: v for k, v in kwargs.items() if k not in ("fn", "role")}
        return self.fn, (), rest, self.role

    def loop(self) -> None:
        if self.role == "source":
            for payload in self.fn():
                if self.stopping:
                    return
                self.emit(payload)
            return
        super().loop()

    def handle(self, rec: Record) -> None:
        out = self.fn(rec.payload) if self.role == "transform" else self.fn(rec)
        if self.role == "transform" and out is not None:
            for o in self.outputs.values():
                o.emit(out, parent=rec)


def source(fn: Callable[[], Iterable[bytes]] | None = None, **kw: Any):
    """Make a source stage from a generator function yielding payloads (a decorator, with or without
    keyword arguments). Call the result with ``outputs=`` (and ``name=``) to place it in a pipeline."""
    return _fn_factory("source", fn, kw)


def transform(fn: Callable[[bytes], bytes | None] | None = None, **kw: Any):
    """Make a stage from ``fn(payload) -> payload or None`` (None: nothing is passed on)."""
    return _fn_factory("transform", fn, kw)


def sink(fn: Callable[[Record], None] | None = None, **kw: Any):
    """Make a sink stage from ``fn(record)``; latency is recorded for every record it takes."""
    return _fn_factory("sink", fn, kw)


def function_stage(fn: Callable, role: str, **kw: Any) -> PipelineStage:
    """The stage :func:`source`, :func:`transform` or :func:`sink` (``role``) make from ``fn``."""
    return _FnStage(fn, role, **kw)


def _fn_factory(role, fn, kw):
    def wrap(f):
        def make(**more: Any) -> _FnStage:
            return _FnStage(f, role, **{**kw, **more})
        make.__name__ = getattr(f, "__name__", role)
        make.__doc__ = f.__doc__
        make.__wrapped__ = f
        return make
    return wrap(fn) if fn is not None else wrap


