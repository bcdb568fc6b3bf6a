"""edgepipe.record.recorder.FlightRecorder: the last seconds in bounded memory, written with the seconds
after each trigger (budget from each record's own stamps, stop, error, signal), one file per event, with
caps on files and bytes that remove the oldest first. Time here is the messages' own receive stamps, so
nothing depends on how fast the test runs."""

from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("mcap")

from edgepipe import messages as pb  # noqa: E402
from edgepipe.clock import ClockMapping  # noqa: E402
from edgepipe.record.convert import Message  # noqa: E402
from edgepipe.record.reader import iter_recording, recording_info  # noqa: E402
from edgepipe.record.recorder import FlightRecorder  # noqa: E402

CLOCK = ClockMapping(raw_ns=0, mono_ns=0, wall_ns=1_700_000_000_000_000_000, uncertainty_ns=10)
MS = 1_000_000


def msg(i: int, t_ms: float, e2e_ms: float = 1.0, size: int = 16, topic: str = "/s") -> Message:
    t = int(t_ms * MS)
    data = pb.Stamps(seq=i, source="x" * size).SerializeToString()
    return Message(topic, "edgepipe.v1.Stamps", data, receive_ns=t, capture_ns=t - int(e2e_ms * MS), seq=i)


def seqs(path) -> list[int]:
    return [m.seq for _t, _s, _r, m in iter_recording(path)]


def make(tmp_path, **kw) -> FlightRecorder:
    return FlightRecorder(tmp_path / "events", clock=CLOCK, **kw)


class TestBuffer:
    def test_memory_holds_only_the_last_pre_seconds(self, tmp_path):
        """After 3 s of messages at 100 Hz with pre_s=1 the buffer spans at most 1 s and nothing is written."""
        fr = make(tmp_path, pre_s=1.0, post_s=0.5)
        for i in range(300):
            fr.add(msg(i, 1000 + i * 10))
        span = fr.buffer[-1].receive_ns - fr.buffer[0].receive_ns
        assert span <= 1000 * MS and len(fr.buffer) == 101 and fr.evicted == 199
        assert os.listdir(tmp_path / "events") == []

    def test_memory_is_bounded_in_bytes(self, tmp_path):
        """With max_memory_bytes the buffer never holds more serialized bytes than the bound."""
        fr = make(tmp_path, pre_s=100.0, max_memory_bytes=10_000)
        for i in range(1000):
            fr.add(msg(i, i, size=200))
            assert fr.buffered_bytes <= 10_000
        assert fr.buffered_bytes > 10_000 - 300


class TestTriggers:
    def test_signal_writes_pre_and_post(self, tmp_path):
        """A trigger at t=2 s (pre 1 s, post 0.5 s) writes exactly the messages from 1 s to 2.5 s into one
        file named after the reason, with the event in its metadata."""
        fr = make(tmp_path, pre_s=1.0, post_s=0.5)
        for i in range(400):
            if i == 200:
                fr.trigger("signal")
            fr.add(msg(i, i * 10))
        assert len(fr.events) == 1 and os.path.basename(fr.events[0]).startswith("signal-")
        assert seqs(fr.events[0]) == list(range(100, 251))

    def test_budget_trigger_uses_each_records_stamps(self, tmp_path):
        """Only a record whose receive - capture exceeds its topic's budget starts an event, named budget-<topic>."""
        fr = make(tmp_path, pre_s=0.1, post_s=0.1, budgets_ns={"/s": 5 * MS}, triggers=["budget"])
        for i in range(100):
            fr.add(msg(i, i * 10, e2e_ms=4.9))
        assert fr.events == []
        for i in range(100, 200):
            fr.add(msg(i, i * 10, e2e_ms=50.0 if i == 150 else 1.0))
        assert len(fr.events) == 1 and os.path.basename(fr.events[0]).startswith("budget-s-")
        assert seqs(fr.events[0]) == list(range(140, 161))

    def test_disabled_trigger_does_nothing(self, tmp_path):
        """Without 'budget' among the triggers an over-budget record starts no event."""
        fr = make(tmp_path, pre_s=0.1, post_s=0.1, budgets_ns={"*": MS}, triggers=["signal"])
        for i in range(50):
            fr.add(msg(i, i * 10, e2e_ms=100))
        assert fr.events == []

    def test_stop_writes_the_buffer(self, tmp_path):
        """close('stop') with the stop trigger writes what is buffered as a stop- event."""
        fr = make(tmp_path, pre_s=1.0, triggers=["stop"])
        for i in range(50):
            fr.add(msg(i, i * 10))
        fr.close("stop")
        assert len(fr.events) == 1 and os.path.basename(fr.events[0]).startswith("stop-")
        assert seqs(fr.events[0]) == list(range(50))

    def test_trigger_from_a_real_signal_handler(self, tmp_path):
        """SIGUSR1 delivered to this process, with a handler that calls trigger(), starts an event at the
        next message."""
        fr = make(tmp_path, pre_s=0.05, post_s=0.05)
        old = signal.signal(signal.SIGUSR1, lambda s, f: fr.trigger("signal"))
        try:
            for i in range(20):
                fr.add(msg(i, i * 10))
            os.kill(os.getpid(), signal.SIGUSR1)
            for i in range(20, 40):
                fr.add(msg(i, i * 10))
        finally:
            signal.signal(signal.SIGUSR1, old)
        assert len(fr.events) == 1 and seqs(fr.events[0]) == list(range(15, 26))

    def test_denied_topics_are_not_buffered(self, tmp_path):
        """deny leaves a topic out of memory and out of the event file."""
        fr = make(tmp_path, pre_s=1.0, deny=["/noise*"])
        for i in range(50):
            fr.add(msg(i, i * 10))
            fr.add(msg(i, i * 10, topic="/noise/a"))
        assert {m.topic for m in fr.buffer} == {"/s"}
        fr.close("stop")
        assert {t for t, _s, _r, _m in iter_recording(fr.events[0])} == {"/s"}

    def test_unknown_trigger_is_refused(self, tmp_path):
        """An unknown trigger name is a ValueError naming it."""
        with pytest.raises(ValueError, match="'lunar'"):
            make(tmp_path, triggers=["budget", "lunar"])


class TestCaps:
    def test_oldest_files_go_first(self, tmp_path):
        """With max_files=2, five events leave the last two files; the three oldest are removed, in order."""
        fr = make(tmp_path, pre_s=0.02, post_s=0.02, max_files=2)
        for i in range(500):
            if i % 100 == 50:
                fr.trigger(f"signal{i}")
            fr.add(msg(i, i * 10))
        names = [os.path.basename(p).split("-")[0] for p in fr.events]
        assert names == ["signal350", "signal450"]
        assert [os.path.basename(p).split("-")[0] for p in fr.removed] == ["signal50", "signal150", "signal250"]
        assert sorted(os.listdir(tmp_path / "events")) == sorted(os.path.basename(p) for p in fr.events)

    def test_total_bytes_cap(self, tmp_path):
        """max_total_bytes keeps the kept files' total under the cap."""
        fr = make(tmp_path, pre_s=0.2, post_s=0.2, max_total_bytes=100_000, compression="none")
        for i in range(1000):
            if i % 100 == 50:
                fr.trigger("signal")
            fr.add(msg(i, i * 10, size=100))
        total = sum(os.path.getsize(p) for p in fr.events)
        assert total <= 100_000 and fr.removed and fr.events
        for p in fr.events:
            assert recording_info(p).messages > 0
