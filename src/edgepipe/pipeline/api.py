"""Pipelines: stages as processes, wired by shared-memory rings, with a latency budget for every part.

:class:`Pipeline` is the supervisor's Python face. It takes stages (``PipelineStage`` instances, or
:class:`~edgepipe.pipeline.config.StageSpec` for registered kinds such as ``"capture"``), creates one memfd ring per
link, starts each stage as its own process (``python -m edgepipe.pipeline.supervisor``), hands it its ring fds over a
control socket, restarts crashed stages, and on stop() (or Ctrl-C / SIGTERM in run()) stops the sources
first and lets every record already in flight drain through to the sinks.

User stages subclass :class:`PipelineStage` and talk to their rings through :class:`Outlet` (``emit``) and
:class:`Inlet` (``receive``). Every record carries a small fixed stamp header (see ``_HDR``/``_HOP``): the
source's sequence number and capture time, and for each stage it crossed, the CLOCK_MONOTONIC_RAW time it
was received and published. A sink (a stage with inputs and no outputs) splits each record's end-to-end
latency into parts: ``<source stage>`` (capture to publish), ``<link>`` (time queued in that ring) and
``<stage>`` (time inside that stage), and records them in HDR histograms (edgepipe.pipeline.report.LatencyBook).

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
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from edgepipe.clock import now_ns
from edgepipe.errors import PeerClosedError, RingTimeoutError
from edgepipe.stages.base import Stage

__all__ = [
    "CheckStage",
    "CounterStage",
    "EndOfStream",
    "Hop",
    "Inlet",
    "Outlet",
    "PipelineStage",
    "PrintStage",
    "Record",
    "RelayStage",
    "sink",
    "source",
    "transform",
]

# One stamp header per record: magic, hop count, seq, capture time (CLOCK_MONOTONIC_RAW ns).
_HDR = struct.Struct("<4sHHQq")
_HOP = struct.Struct("<HHIqq")  # stage index, input link index (0xFFFF: source), reserved, receive ns, publish ns
_MAGIC = b"EPS1"
_NO_LINK = 0xFFFF
MAX_HOPS = 32
_WAIT_SLICE_S = 0.05  # blocking ring calls return this often so a stage sees stop() promptly


class EndOfStream(Exception):
    """Every input of a stage has ended: its producers finished and the rings are drained."""


@dataclass(frozen=True)
class Hop:
    """One stage a record went through: which stage, on which link it arrived, when in and when out."""

    stage: int
    link: int
    receive_ns: int
    publish_ns: int


@dataclass
class Record:
    """A record read from a stamped ring: the payload plus its stamps."""

    payload: bytes
    seq: int
    capture_ns: int
    hops: list[Hop]
    link: int = _NO_LINK  # the link it was read from
    receive_ns: int = 0  # when this stage took it off the ring
    parts: list[tuple[str, int]] | None = None  # named latency parts, for records of built-in stages
    message: Any = None  # the decoded record of a built-in stage (InferenceResult, IMU sample row)


def pack_record(payload: bytes, seq: int, capture_ns: int, hops: list[Hop]) -> bytes:
    """The wire form of a stamped record (header, hops, payload)."""
    if len(hops) > MAX_HOPS:
        raise ValueError(f"a record may cross at most {MAX_HOPS} stages, this one has {len(hops)} hops")
    parts = [_HDR.pack(_MAGIC, len(hops), 0, seq, capture_ns)]
    parts += [_HOP.pack(h.stage, h.link, 0, h.receive_ns, h.publish_ns) for h in hops]
    parts.append(payload)
    return b"".join(parts)


def unpack_record(data: bytes | memoryview) -> Record | None:
    """Parse a stamped record; None if ``data`` does not start with the stamp header."""
    if len(data) < _HDR.size:
        return None
    magic, nhops, _, seq, cap = _HDR.unpack_from(data, 0)
    if magic != _MAGIC or len(data) < _HDR.size + nhops * _HOP.size:
        return None
    hops = []
    off = _HDR.size
    for _ in range(nhops):
        st, ln, _r, rn, pn = _HOP.unpack_from(data, off)
        hops.append(Hop(st, ln, rn, pn))
        off += _HOP.size
    return Record(bytes(data[off:]), seq, cap, hops)


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
    """

    def __init__(self, writer, link: str, stage_index: int = 0, mode: str = "lossless",
                 link_index: int = 0, stopping: Callable[[], bool] | None = None) -> None:
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

    def emit(self, payload: bytes, *, parent: Record | None = None, seq: int | None = None,
             capture_ns: int | None = None) -> bool:
        """Publish ``payload``. With ``parent`` (a record this stage received) the stamps carry on and this
        stage's hop is added; without one this is a source record: ``seq`` (default: a counter) and
        ``capture_ns`` (default: now) start its stamps. Returns False if it was dropped."""
        t = now_ns()
        if parent is None:
            s = self.seq if seq is None else seq
            self.seq = s + 1
            cap = t if capture_ns is None else capture_ns
            hops = [Hop(self.stage_index, _NO_LINK, cap, t)]
        else:
            s, cap = parent.seq, parent.capture_ns
            hops = [*parent.hops, Hop(self.stage_index, parent.link, parent.receive_ns, t)]
        return self.write_raw(pack_record(payload, s, cap, hops))

    def write_raw(self, data: bytes) -> bool:
        """Publish bytes as they are (no stamps). Same waiting and dropping rules as :meth:`emit`."""
        w = self.end
        if self.mode == "drop":
            try:
                ok = w.try_write(data)
            except PeerClosedError:
                if not self._consumer_gone():
                    raise EndOfStream(f"the consumer of {self.link!r} closed") from None
                ok = False
            if not ok:
                self.dropped["ring full"] = self.dropped.get("ring full", 0) + 1
                return False
        else:
            while True:
                try:
                    w.write(data, timeout_s=_WAIT_SLICE_S)
                    break
                except RingTimeoutError:
                    if self.stopping():
                        self.dropped["stopped while ring full"] = self.dropped.get("stopped while ring full", 0) + 1
                        return False
                except PeerClosedError:
                    if not self._consumer_gone():
                        self.dropped["consumer closed"] = self.dropped.get("consumer closed", 0) + 1
                        raise EndOfStream(f"the consumer of {self.link!r} closed") from None
        self.written += 1
        self.bytes_written += len(data)
        return True

    def _consumer_gone(self) -> bool:
        """The consumer died (a restart may follow: wait a little and say retry) or closed (False)."""
        if self.end._ring.status().consumer_closed:
            return False
        time.sleep(0.005)
        return True

    def counters(self) -> dict[str, Any]:
        s = self.end._ring.status()
        return {"name": self.link, "records_written": s.records_written, "records_read": s.records_read,
                "bytes_written": self.bytes_written, "full_events": s.full_events,
                "dropped": sum(self.dropped.values()), "used": s.used, "capacity": s.capacity}

    def close(self) -> None:
        """Close the producer end cleanly: the consumer drains what is queued, then sees end of stream."""
        self.end.close()


class Inlet:
    """The consumer end of one link, as a stage sees it: reads stamped records.

    A producer that died (and may be restarted) is waited for; one that closed cleanly ends the stream
    once the ring is drained (:class:`EndOfStream`).
    """

    def __init__(self, reader, link: str, link_index: int = 0,
                 stopping: Callable[[], bool] | None = None,
                 topology: dict[str, tuple[str, list[str]]] | None = None) -> None:
        self.end = reader
        self.topology = topology or {}  # link -> (producer stage, that stage's input links), for naming parts
        self.link = link
        self.link_index = link_index
        self.stopping = stopping or (lambda: False)
        self.ended = False
        self.read = 0
        self.bytes_read = 0

    def receive_raw(self, timeout_s: float | None = None) -> bytes | None:
        """The next record's bytes, or None if none arrived within ``timeout_s`` (None: until stopping).

        Raises:
            EndOfStream: the producer closed and everything it wrote has been read.
        """
        if self.ended:
            raise EndOfStream(self.link)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = _WAIT_SLICE_S if deadline is None else max(0.0, min(_WAIT_SLICE_S, deadline - time.monotonic()))
            try:
                data = self.end.read(timeout_s=left)
                self.read += 1
                self.bytes_read += len(data)
                return data
            except RingTimeoutError:
                pass
            except PeerClosedError:
                if self.end._ring.status().producer_closed:
                    self.ended = True
                    raise EndOfStream(self.link) from None
                time.sleep(0.005)  # died: a restarted producer takes the end over
            if (deadline is not None and time.monotonic() >= deadline) or (deadline is None and self.stopping()):
                return None

    def receive(self, timeout_s: float | None = None) -> Record | None:
        """The next stamped record (receive time set), or None on timeout. Unstamped bytes come back as a
        Record with seq 0 and no hops."""
        data = self.receive_raw(timeout_s)
        if data is None:
            return None
        t = now_ns()
        rec = unpack_record(data)
        if rec is None:
            rec = _decode_builtin(data, self.end.last_type, t, self.link, self.topology)
        rec.link = self.link_index
        rec.receive_ns = t
        if rec.parts is not None:
            rec.parts.append((self.link, t - rec.parts.pop()[1]))  # last entry held the last publish time
        return rec

    def counters(self) -> dict[str, Any]:
        s = self.end._ring.status()
        return {"name": self.link, "records_written": s.records_written, "records_read": s.records_read,
                "bytes_read": self.bytes_read, "full_events": s.full_events, "dropped": 0,
                "used": s.used, "capacity": s.capacity}

    def close(self) -> None:
        self.end.close()


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
        if len(st.publish_ns) >= 3 and len(st.receive_ns) >= 2 and m.inference_start_ns:
            p_in, p_disp, p_out = st.publish_ns[0], st.publish_ns[1], st.publish_ns[-1]
            r_in, r_worker = st.receive_ns[0], st.receive_ns[1]
            frames = inputs[0] if inputs else "frames"
            source = topo.get(frames, ("source", []))[0]
            parts = [(source, p_in - cap), (frames, r_in - p_in), (f"{producer}.dispatch", p_disp - r_in),
                     (f"{producer}.worker_queue", r_worker - p_disp),
                     (f"{producer}.preprocess", m.inference_start_ns - r_worker),
                     (f"{producer}.inference", m.inference_end_ns - m.inference_start_ns),
                     (f"{producer}.postprocess", p_out - m.inference_end_ns), ("", p_out)]
            if len(st.publish_ns) >= 4:
                # publish_ns = [input ring, worker ring, worker's results ring, output ring]: split the
                # worker's post-processing from the trip back through the collector
                p_res = st.publish_ns[2]
                parts[-2:] = [(f"{producer}.postprocess", p_res - m.inference_end_ns),
                              (f"{producer}.return", p_out - p_res), ("", p_out)]
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
    in its own process (they must pickle). ``inputs`` / ``outputs`` map port names to link names; in the
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
        self._rr = 0

    def __reduce__(self):
        args, kwargs = self._init_args
        return (_rebuild, (type(self), args, kwargs))

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
        """
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


def _rebuild(cls, args, kwargs):
    return cls(*args, **kwargs)


class _FnStage(PipelineStage):
    """A stage made from a plain function by :func:`source`, :func:`transform` or :func:`sink`."""

    def __init__(self, fn: Callable, role: str, name: str | None = None, **kw: Any) -> None:
        self.kind = role  # type: ignore[misc]  # per instance: "source", "transform" or "sink"
        super().__init__(name or getattr(fn, "__name__", role), **kw)
        self.fn = fn
        self.role = role

    def __reduce__(self):
        # the module attribute is the factory, not fn itself: rebuild through the factory's name
        args, kwargs = self._init_args
        fn = args[0] if args else kwargs["fn"]
        return (_rebuild_fn, (fn.__module__, fn.__qualname__, args[1:], {k: v for k, v in kwargs.items() if k != "fn"}))

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


def _rebuild_fn(module: str, qualname: str, args: tuple, kwargs: dict) -> _FnStage:
    import importlib

    obj: Any = sys.modules.get(module) or importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return _FnStage(getattr(obj, "__wrapped__", obj), *args, **kwargs)


def _fn_factory(role, fn, kw):
    def wrap(f):
        def make(**more: Any) -> _FnStage:
            return _FnStage(f, role, **{**kw, **more})
        make.__name__ = getattr(f, "__name__", role)
        make.__doc__ = f.__doc__
        make.__wrapped__ = f
        return make
    return wrap(fn) if fn is not None else wrap


# ---------------------------------------------------------------------------------------------------
# plain-Python stages shipped with edgepipe (kinds "counter", "relay", "check", "print")


class CounterStage(PipelineStage):
    """A source: ``count`` records (0: until stopped) of ``size`` bytes holding their sequence number, at
    ``rate_hz`` (0: as fast as the ring takes them)."""

    kind = "counter"

    def __init__(self, name: str | None = None, *, count: int = 0, rate_hz: float = 0.0, size: int = 16,
                 **kw: Any) -> None:
        super().__init__(name, **kw)
        if count < 0 or rate_hz < 0 or size < 8:
            raise ValueError(f"counter needs count >= 0, rate_hz >= 0, size >= 8; got {count}, {rate_hz}, {size}")
        self.n, self.rate_hz, self.size = count, rate_hz, size

    def loop(self) -> None:
        period = 1.0 / self.rate_hz if self.rate_hz else 0.0
        t_next = time.monotonic()
        i = 0
        pad = bytes(self.size - 8)
        while not self.stopping and (self.n == 0 or i < self.n):
            if period:
                delay = t_next - time.monotonic()
                if delay > 0:
                    time.sleep(min(delay, 0.1))
                    continue
                t_next += period
            self.emit(i.to_bytes(8, "little") + pad, seq=i)
            i += 1


class RelayStage(PipelineStage):
    """Passes every record on, after ``work_us`` of busy work (to stand in for processing); with
    ``fail_after`` > 0 it raises after that many records (for restart tests)."""

    kind = "relay"

    def __init__(self, name: str | None = None, *, work_us: float = 0.0, fail_after: int = 0, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.work_ns = int(work_us * 1000)
        self.fail_after = fail_after

    def handle(self, rec: Record) -> None:
        if self.work_ns:
            end = time.perf_counter_ns() + self.work_ns
            while time.perf_counter_ns() < end:
                pass
        if self.fail_after and self.counters.get("received", 0) >= self.fail_after:
            raise RuntimeError(f"{self.name}: failing after {self.fail_after} records, as configured")
        super().handle(rec)


class CheckStage(PipelineStage):
    """A sink that checks sequence numbers per source: counts records, gaps (lost records) and records out
    of order; stops after ``count`` records if given."""

    kind = "check"

    def __init__(self, name: str | None = None, *, count: int = 0, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.n = count
        self.last: dict[int, int] = {}

    def handle(self, rec: Record) -> None:
        src = rec.hops[0].stage if rec.hops else -1
        last = self.last.get(src)
        if last is not None:
            if rec.seq > last + 1:
                self.count("lost", rec.seq - last - 1)
            elif rec.seq <= last:
                self.count("out_of_order")
        self.last[src] = rec.seq
        self.count("ok")
        if self.n and self.counters["ok"] >= self.n:
            self.stop()


class PrintStage(PipelineStage):
    """A sink that prints one line per record (at most ``every``-th, default all): the source's sequence
    number, end-to-end latency, and the payload decoded as an edgepipe.v1 Envelope when it is one."""

    kind = "print"

    def __init__(self, name: str | None = None, *, every: int = 1, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.every = max(1, int(every))

    def handle(self, rec: Record) -> None:
        n = self.counters.get("received", 0)
        if (n - 1) % self.every:
            return
        what = _describe_message(rec.message) if rec.message is not None else _describe_payload(rec.payload)
        print(f"[{self.name}] seq={rec.seq} e2e={(rec.receive_ns - rec.capture_ns) / 1e6:.3f} ms {what}", flush=True)


def _describe_message(m: Any) -> str:
    if hasattr(m, "detections"):  # an InferenceResult
        boxes = m.detections.boxes
        shown = " ".join(f"[{b.x_min:.0f},{b.y_min:.0f},{b.x_max:.0f},{b.y_max:.0f} {b.score:.2f}]" for b in boxes[:4])
        return (f"frame {m.frame_seq}: {len(boxes)} text boxes {shown}{' ...' if len(boxes) > 4 else ''} "
                f"(inference {(m.inference_end_ns - m.inference_start_ns) / 1e6:.1f} ms)")
    try:  # an IMU sample row
        import math

        w, x, y, z = (float(v) for v in m["q"])
        roll = math.degrees(math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y)))
        pitch = math.degrees(math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x)))))
        yaw = math.degrees(math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
        return f"sample {int(m['seq'])}: roll {roll:7.2f} pitch {pitch:7.2f} yaw {yaw:7.2f} deg"
    except (KeyError, ValueError, TypeError, IndexError):
        return repr(m)[:200]


def _describe_payload(data: bytes) -> str:
    try:
        from edgepipe.control.framing import FrameSocket

        env = FrameSocket.decode(data)
    except Exception:  # noqa: BLE001 - not an Envelope: describe the bytes
        return f"{len(data)} bytes"
    body = env.WhichOneof("body")
    msg = getattr(env, body)
    return f"{body}: {str(msg).strip().replace(chr(10), ' ')[:200]}"


# ---------------------------------------------------------------------------------------------------
# built-in kinds: the sensor, camera and inference stages take their ring ends wrapped in their own reader
# and writer types; these build them from the bare ends the supervisor hands over.


def _capture_kind(name: str, output, source: Any = None, video: str | None = None, **params: Any):
    from edgepipe.stages.capture import CaptureStage
    from edgepipe.frames import FrameWriter
    from edgepipe.ring import RingWriter

    out = FrameWriter(output) if isinstance(output, RingWriter) else output
    src = source if source is not None else video
    if src is None:
        raise ValueError(f"capture stage {name!r} needs params.video (a file) or params.source")
    return CaptureStage(src, out, name=name, **params)


def _imu_kind(name: str, output, recording: str | None = None, csv: str | None = None, synthetic: bool = False,
              source_params: dict[str, Any] | None = None, **params: Any):
    from edgepipe.stages.imu import CsvSource, ImuStage, SyntheticSource

    sp = dict(source_params or {})
    src = SyntheticSource(**sp) if synthetic else CsvSource(csv or recording or "ngimu", **sp)
    return ImuStage(src, output=output, name=name, **params)


def _inference_kind(name: str, input, output, **params: Any):  # noqa: A002 - the stage's own port name
    from edgepipe.frames import FrameReader
    from edgepipe.stages.inference import InferenceStage
    from edgepipe.ring import RingReader

    inp = FrameReader(input) if isinstance(input, RingReader) else input
    return InferenceStage(inp, output, name=name, **params)
