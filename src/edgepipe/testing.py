"""Stages and helpers for tests, examples and benchmarks: a counting source, a relay, a checking sink and a
printing sink (kinds ``counter``, ``relay``, ``check`` and ``print``; also exported from ``edgepipe``).

This module sits above edgepipe.pipeline (it subclasses PipelineStage); the pipeline finds these classes
only through the import paths in its kinds registry, never by importing this module.

>>> from edgepipe import Pipeline
>>> p = Pipeline([CounterStage("src", count=100, outputs={"out": "n"}),
...               CheckStage("sink", inputs={"in": "n"})], stats_path=False)
>>> p.run(), p.stage_stats()["sink"]["ok"]
(0, 100)
"""

from __future__ import annotations

import time
from typing import Any

from edgepipe.pipeline.api import PipelineStage, Record

__all__ = ["CheckStage", "CounterStage", "PrintStage", "RelayStage"]


class CounterStage(PipelineStage):
    """A source: ``count`` records (0: until stopped) of ``size`` bytes holding their sequence number, at
    ``rate_hz`` (0: as fast as the ring takes them).

    A restarted counter resumes where its predecessor stopped: at the number of records its output ring
    has taken (plus, on a drop link, those the ring refused), both counted in the ring itself. The ring
    counts a record just after publishing it, so a kill in between repeats one record; the first record
    after a restart is marked as possibly redelivered for that reason.

    Args:
        count: records to send; 0 sends until stopped.
        rate_hz: records per second; 0 sends as fast as the ring takes them.
        size: bytes per record (>= 8: the first 8 hold the sequence number).

    Outputs:
        *: one port, any name: the numbered records.
    """

    kind = "counter"

    def __init__(self, name: str | None = None, *, count: int = 0, rate_hz: float = 0.0, size: int = 16,
                 **kw: Any) -> None:
        super().__init__(name, **kw)
        for key, v, low in (("count", count, 0), ("rate_hz", rate_hz, 0), ("size", size, 8)):
            if v < low:
                raise ValueError(f"{key} must be >= {low}, got {v!r}")
        self.n, self.rate_hz, self.size = count, rate_hz, size

    def loop(self) -> None:
        period = 1.0 / self.rate_hz if self.rate_hz else 0.0
        t_next = time.monotonic()
        i = 0
        pad = bytes(self.size - 8)
        if self.attempt and len(self.outputs) == 1:
            out = next(iter(self.outputs.values()))
            s = out.status()
            i = s.records_written + (s.full_events if out.mode == "drop" else 0)
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
    ``fail_after`` > 0 it raises after that many records (for restart tests).

    Args:
        work_us: microseconds of busy work per record.
        fail_after: raise after this many records (0: never).

    Inputs:
        *: the records to pass on (any port names).

    Outputs:
        *: where they go (one port, any name).
    """

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
    """A sink that checks sequence numbers per source: counts records (``ok``), gaps (``lost``) and records
    out of order; stops after ``count`` records if given. A record marked redelivered (see
    edgepipe.pipeline.api) whose number it has seen is counted as ``redelivered`` and dropped, so ``ok``
    counts every record once; ``duplicates`` counts unmarked repeats (which a lossless link never makes).
    With ``verify`` it also checks that each payload starts with its sequence number as CounterStage writes
    it, counting ``corrupt`` records.

    Args:
        count: stop after this many good records (0: run until the inputs end).
        verify: also check each payload's first 8 bytes against its sequence number.

    Inputs:
        *: the records to check (any port names).
    """

    kind = "check"

    def __init__(self, name: str | None = None, *, count: int = 0, verify: bool = False, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.n = count
        self.verify = verify
        self.last: dict[int, int] = {}

    def handle(self, rec: Record) -> None:
        src = rec.hops[0].stage if rec.hops else -1
        if self.verify and rec.payload[:8] != rec.seq.to_bytes(8, "little"):
            self.count("corrupt")
            return
        last = self.last.get(src)
        if last is not None:
            if rec.seq > last + 1:
                self.count("lost", rec.seq - last - 1)
            elif rec.seq <= last:
                if rec.redelivered:
                    self.count("redelivered")
                    return
                self.count("duplicates" if rec.seq == last else "out_of_order")
        self.last[src] = rec.seq
        self.count("ok")
        if self.n and self.counters["ok"] >= self.n:
            self.stop()


    def extra_stats(self) -> dict[str, Any]:
        out = super().extra_stats()
        if len(self.last) == 1:  # one source: the last sequence number (ok == last_seq + 1 when none is lost)
            out["last_seq"] = next(iter(self.last.values()))
        return out


class PrintStage(PipelineStage):
    """A sink that prints one line per record (at most ``every``-th, default all): the source's sequence
    number, end-to-end latency, and the payload decoded as an edgepipe.v1 Envelope when it is one.

    Args:
        every: print every n-th record only.

    Inputs:
        *: the records to print (any port names).
    """

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
        text = (f"frame {m.frame_seq}: {len(boxes)} text boxes {shown}{' ...' if len(boxes) > 4 else ''} "
                f"(inference {(m.inference_end_ns - m.inference_start_ns) / 1e6:.1f} ms)")
        if m.HasField("offload"):  # settled by an offload stage (edgepipe.bridge.offload)
            o = m.offload
            text += (f" [server, round trip {o.round_trip_ns / 1e6:.1f} ms]" if o.answered_by == "server" else
                     " [edge, server timed out]" if o.timed_out else f" [edge{', unsure' if o.unsure else ''}]")
        return text
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
