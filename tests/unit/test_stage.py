"""The Stage base: lifecycle order, exit status, stop from another thread and from a signal, stats."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from edgepipe.stages.base import Stage


class Recorder(Stage):
    """Records the order of lifecycle calls; loops until stopped or `limit` iterations."""

    kind = "recorder"

    def __init__(self, name=None, limit=None, fail_in=None):
        super().__init__(name)
        self.calls: list[str] = []
        self.limit = limit
        self.fail_in = fail_in

    def open(self):
        self.calls.append("open")
        if self.fail_in == "open":
            raise OSError("device busy: /dev/fake0")

    def loop(self):
        self.calls.append("loop")
        while not self.stopping:
            if self.limit is not None and self.counters.get("ticks", 0) >= self.limit:
                return
            if self.fail_in == "loop" and self.counters.get("ticks", 0) == 2:
                raise ValueError("bad sample 2")
            self.count("ticks")
            time.sleep(0.001)

    def close(self):
        self.calls.append("close")
        if self.fail_in == "close":
            raise RuntimeError("close failed")


class TestLifecycle:
    def test_run_calls_open_loop_close_in_order(self):
        """run() calls open, loop, close once each and returns 0 when the loop ends by itself."""
        s = Recorder(limit=5)
        assert s.state == "new"
        assert s.run() == 0
        assert s.calls == ["open", "loop", "close"]
        assert s.state == "done"
        assert s.counters["ticks"] == 5

    def test_loop_failure_closes_and_returns_1(self):
        """An exception in loop() still closes, returns 1 and keeps the error for stats."""
        s = Recorder(fail_in="loop")
        assert s.run() == 1
        assert s.calls == ["open", "loop", "close"]
        assert isinstance(s.error, ValueError)
        st = s.stats()
        assert st["state"] == "failed"
        assert st["error"] == "ValueError: bad sample 2"
        assert st["ticks"] == 2

    def test_open_failure_does_not_loop_or_close(self):
        """A failed open() skips loop() and close() (nothing was acquired) and names the cause."""
        s = Recorder(fail_in="open")
        assert s.run() == 1
        assert s.calls == ["open"]
        assert "/dev/fake0" in s.stats()["error"]

    def test_close_failure_is_reported(self):
        """A failing close() after a clean loop makes the run fail."""
        s = Recorder(limit=1, fail_in="close")
        assert s.run() == 1
        assert "close failed" in s.stats()["error"]

    def test_run_twice_is_refused(self):
        """A stage object runs once; a second run() names its state."""
        s = Recorder(limit=1)
        s.run()
        with pytest.raises(RuntimeError, match="'done'"):
            s.run()

    def test_base_loop_must_be_overridden(self):
        """A Stage without loop() fails with a message naming the class."""
        s = Stage("bare")
        assert s.run() == 1
        assert "Stage must override loop()" in str(s.error)


class TestStopping:
    def test_stop_from_another_thread(self):
        """stop() from another thread ends a running loop and join() returns 0."""
        s = Recorder()
        s.start()
        deadline = time.monotonic() + 5
        while s.counters.get("ticks", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert s.state == "running"
        s.stop()
        assert s.join(5) == 0
        assert s.calls == ["open", "loop", "close"]

    def test_context_manager_starts_and_stops(self):
        """`with stage:` runs it in the background and stops and joins it on exit."""
        with Recorder() as s:
            time.sleep(0.02)
        assert s.state == "done"
        assert s.counters["ticks"] > 0

    def test_stop_from_signal_handler(self):
        """A signal handler calling stop() ends run() in the main thread."""
        s = Recorder()
        old = signal.signal(signal.SIGUSR1, lambda *_: s.stop())
        try:
            t = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
            t.start()
            assert s.run() == 0
            t.join()
        finally:
            signal.signal(signal.SIGUSR1, old)
        assert s.counters["ticks"] > 0

    def test_join_before_start_is_an_error(self):
        """join() on a stage never started says so."""
        with pytest.raises(RuntimeError, match="not started"):
            Recorder("x").join()


class SlowOpen(Recorder):
    """open() waits for ``gate`` (set by the test), as an InferenceStage waits for its workers' models."""

    def __init__(self, gate, **kw):
        super().__init__(**kw)
        self.gate = gate

    def open(self):
        self.gate.wait(10)
        super().open()


class TestWaitReady:
    def test_returns_only_after_open(self):
        """wait_ready() times out while open() is still running (naming the stage and its state) and
        returns True once it has finished, with the loop running."""
        gate = threading.Event()
        s = SlowOpen(gate, name="slow")
        s.start()
        try:
            with pytest.raises(TimeoutError, match=r"'slow' not ready within 0.05 s \(state 'opening'\)"):
                s.wait_ready(0.05)
            gate.set()
            assert s.wait_ready(10) is True
            assert s.calls[:2] == ["open", "loop"]
        finally:
            gate.set()
            s.stop()
            s.join(5)

    def test_failed_open_raises_the_stages_error(self):
        """A stage whose open() fails makes wait_ready() raise that error, not wait out the timeout."""
        s = Recorder("cam", fail_in="open")
        s.start()
        with pytest.raises(OSError, match="/dev/fake0"):
            s.wait_ready(10)
        assert s.join(5) == 1

    def test_finished_stage_does_not_block(self):
        """A stage that already ran to its end answers wait_ready(0) at once: True, its open() succeeded;
        a negative timeout is a ValueError naming it."""
        s = Recorder("quick", limit=0)
        s.start()
        assert s.join(5) == 0
        assert s.wait_ready(0) is True  # open() succeeded, the loop ran and ended
        with pytest.raises(ValueError, match="-1"):
            s.wait_ready(-1)


class TestNamesAndStats:
    def test_default_name_is_kind(self):
        """Without a name, a stage is named after its kind."""
        assert Recorder().name == "recorder"
        assert Recorder("cam0").name == "cam0"

    @pytest.mark.parametrize("bad", ["", 3])
    def test_bad_name(self, bad):
        """An empty or non-str name is a ValueError naming the value."""
        with pytest.raises(ValueError, match=repr(bad)):
            Recorder(bad)

    def test_extra_stats_are_merged(self):
        """extra_stats() entries appear in stats() after the counters."""

        class WithExtra(Recorder):
            def extra_stats(self):
                return {"p99_us": 12.5}

        s = WithExtra(limit=1)
        s.run()
        st = s.stats()
        assert st["p99_us"] == 12.5 and st["kind"] == "recorder" and st["ticks"] == 1
