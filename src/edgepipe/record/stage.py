"""The ``record`` stage kind: a pipeline stage that writes its inputs (the side links of tapped links,
``<link>.tap``) into an MCAP recording, continuously or as a flight recorder.

In a pipeline file::

    [stages.rec]
    kind = "record"
    inputs = { samples = "samples.tap", detections = "detections.tap" }
    params = { out = "run.mcap", compression = "zstd" }

    [links.samples]
    tap = true

Each input's topic is ``/<link>`` of the tapped link. With ``pre_buffer_s`` set it is a flight recorder:
``out`` is then a directory of event files (edgepipe.record.recorder.FlightRecorder). A recorder killed
with -9 costs the pipeline nothing (a tap never waits); its file keeps every chunk it closed (chunks close at
least once a second: ``edgepipe record --recover``), and the restarted recorder writes
``<stem>.restart<N>.mcap`` beside it. A full disk stops the recording, not the pipeline: the stage says so
(stderr, ``recording_error`` in its stats) and drains its inputs into nothing until the pipeline ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from edgepipe.errors import RecordingDiskFullError
from edgepipe.pipeline.api import PipelineStage
from edgepipe.pipeline.tap import TAP_SUFFIX
from edgepipe.record.recorder import ContinuousSink, FlightRecorder, Recorder
from edgepipe.record.replay import replay
from edgepipe.record.writer import McapRecorder

__all__ = ["RecordStage", "ReplayStage"]


class _Discard:
    """The sink after a full disk: takes messages and counts them, writes nothing."""

    def __init__(self, was) -> None:
        self.offset_ns = was.offset_ns
        self.discarded = 0

    def add(self, m) -> None:
        self.discarded += 1

    def set_drops(self, topic: str, reason: str, n: int) -> None:
        pass

    def tick(self) -> None:
        pass

    def close(self, reason: str = "closed") -> None:
        pass


def topic_of(link: str) -> str:
    """The recording topic of a link (or of its tap's side link): ``/<link>``.

    >>> topic_of("samples.tap"), topic_of("frames")
    ('/samples', '/frames')
    """
    return "/" + (link[:-len(TAP_SUFFIX)] if link.endswith(TAP_SUFFIX) else link)


class RecordStage(PipelineStage):
    """Record every input link into MCAP (edgepipe.record).

    Args:
        out: the .mcap file (or, for a flight recorder, the directory of event files), relative to the
            directory the pipeline runs in.
        compression: ``zstd``, ``lz4`` or ``none``.
        split_mb: start a new file part every this many MB (0: never).
        split_s: start a new file part every this many seconds (0: never).
        allow: topics to keep (fnmatch patterns, e.g. ``["/samples"]``); empty: all.
        deny: topics to leave out (wins over allow).
        pre_buffer_s: > 0 makes it a flight recorder keeping this many seconds in memory.
        post_s: flight recorder: seconds written after each trigger.
        triggers: flight recorder: any of ``budget``, ``stop``, ``error``, ``signal``.
        budget_ms_e2e: flight recorder: end-to-end budget (ms) for the ``budget`` trigger (0: none).
        max_files: flight recorder: event files kept (oldest removed first).
        max_total_mb: flight recorder: total MB of event files kept.

    Inputs:
        *: the links to record (usually ``<link>.tap`` side links of tapped links).
    """

    kind = "record"

    def __init__(self, name: str | None = None, *, out: str = "recording.mcap", compression: str = "zstd",
                 split_mb: float = 0.0, split_s: float = 0.0, allow: list[str] | None = None,
                 deny: list[str] | None = None, pre_buffer_s: float = 0.0, post_s: float = 5.0,
                 triggers: list[str] | None = None, budget_ms_e2e: float = 0.0, max_files: int = 20,
                 max_total_mb: float = 1024.0, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.path = os.path.abspath(out)
        self.options = dict(compression=compression, split_mb=split_mb, split_s=split_s, allow=list(allow or []),
                            deny=list(deny or []), pre_buffer_s=pre_buffer_s, post_s=post_s,
                            triggers=list(triggers or ["budget", "stop", "error"]), budget_ms_e2e=budget_ms_e2e,
                            max_files=max_files, max_total_mb=max_total_mb)
        self.sink = None
        self.recorder: Recorder | None = None
        self.recording_error: str | None = None

    def open(self) -> None:
        o = self.options
        if self.attempt > 0:  # a restarted recorder: the crashed one's file stays (recoverable), next to ours
            stem, suffix = os.path.splitext(self.path)
            self.path = f"{stem}.restart{self.attempt}{suffix}" if o["pre_buffer_s"] <= 0 else self.path
        if o["pre_buffer_s"] > 0:
            budgets = {"*": int(o["budget_ms_e2e"] * 1e6)} if o["budget_ms_e2e"] > 0 else {}
            self.sink = FlightRecorder(self.path, pre_s=o["pre_buffer_s"], post_s=o["post_s"], budgets_ns=budgets,
                                       triggers=o["triggers"], max_files=o["max_files"],
                                       max_total_bytes=int(o["max_total_mb"] * 1e6), compression=o["compression"],
                                       allow=o["allow"], deny=o["deny"])
        else:
            self.sink = ContinuousSink(McapRecorder(
                self.path, compression=o["compression"], split_bytes=int(o["split_mb"] * 1e6), split_s=o["split_s"],
                allow=o["allow"], deny=o["deny"]))
        sources = {topic_of(inlet.link): inlet.end for inlet in self.inputs.values()}
        self.recorder = Recorder(self.sink, sources, on_error=self._producer_died)
        if isinstance(self.sink, FlightRecorder) and "signal" in self.sink.triggers \
                and threading.current_thread() is threading.main_thread():
            sink = self.sink
            signal.signal(signal.SIGUSR1, lambda s, f: sink.trigger("signal"))

    def _producer_died(self, topic: str) -> None:
        if isinstance(self.sink, FlightRecorder) and "error" in self.sink.triggers:
            self.sink.trigger(f"error-{topic.strip('/')}")

    def loop(self) -> None:
        try:
            self.recorder.run(until=lambda: self.stopping)
        except RecordingDiskFullError as e:
            # Stop recording, not the pipeline: keep draining the taps (so their drop counts stay those of
            # the recorder, not of a full side ring) and discard what comes, counted.
            self.recording_error = str(e)
            print(f"edgepipe record stage {self.name!r}: {e}", file=sys.stderr, flush=True)
            self.sink = self.recorder.sink = _Discard(self.sink)
            self.recorder.run(until=lambda: self.stopping)

    def close(self) -> None:
        # The end of the pipeline (a Stop, or every input ended) is the ``stop`` trigger of a flight recorder.
        if self.sink is not None:
            try:
                self.sink.close("stop")
            except RecordingDiskFullError as e:
                self.recording_error = str(e)

    def extra_stats(self) -> dict[str, Any]:
        r = self.recorder
        out: dict[str, Any] = {"recorded": r.records if r else 0}
        if self.recording_error:
            out["recording_error"] = self.recording_error
            out["discarded"] = self.sink.discarded if isinstance(self.sink, _Discard) else 0
        if isinstance(self.sink, FlightRecorder):
            out["events"] = len(self.sink.events)
            out["events_removed"] = len(self.sink.removed)
        return out


class ReplayStage(PipelineStage):
    """Publish a recording's topics into this stage's output links (a link ``L`` gets topic ``/L``), at the
    recorded pace, xN, or lockstep (edgepipe.record.replay).

    Args:
        file: the .mcap recording (relative to the pipeline file).
        rate: 1.0 the recorded pace, N times faster, 0 as fast as the consumers take them (lossless lockstep).
        loop: start over at the end.
        start_s: skip this many seconds from the recording's start.
        end_s: stop at this many seconds from the recording's start (0: its end).
        restamp: move the stamps inside each record to the time it is replayed.
        realtime: > 0 replays under SCHED_FIFO at this priority (1..99): on time on a loaded machine; needs
            CAP_SYS_NICE or an rtprio limit (the stage fails with RealtimeNotPermittedError otherwise).

    Outputs:
        *: one link per recorded topic to replay (link ``L`` gets topic ``/L``).
    """

    kind = "replay"

    def __init__(self, name: str | None = None, *, file: str = "", rate: float = 1.0, loop: bool = False,
                 start_s: float = 0.0, end_s: float = 0.0, restamp: bool = True, realtime: int = 0,
                 **kw: Any) -> None:
        super().__init__(name, **kw)
        if rate < 0:
            raise ValueError(f"replay stage {name!r}: rate must be >= 0 (0: lockstep), got {rate}")
        self.file = file
        if isinstance(realtime, bool) or not isinstance(realtime, int) or not 0 <= realtime <= 99:
            raise ValueError(f"replay stage {name!r}: realtime must be 0 (off) or a SCHED_FIFO priority 1..99, "
                             f"got {realtime!r}")
        self.options = dict(rate=rate, loop=loop, start_s=start_s, end_s=end_s or None, restamp=restamp,
                            realtime=realtime)
        self.result = None

    def loop(self) -> None:
        writers = {topic_of(o.link): o.end for o in self.outputs.values()}
        self.result = replay(self.file, writers, stop=lambda: self.stopping, **self.options)

    def extra_stats(self) -> dict[str, Any]:
        r = self.result
        if r is None:
            return {}
        return {"replayed": r.total, "loops": r.loops, "late_p99_us": round(r.lateness_us(99), 1)}
