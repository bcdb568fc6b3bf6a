"""The measured futex wake and the default spin derived from it (edgepipe.wait, csrc/ep_wait_calib.c): measured
once per boot, cached in $XDG_CACHE_HOME/edgepipe/wake.json, the 25 us constant when it can't be measured."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import edgepipe.wait as wait
from edgepipe import Ring
from edgepipe._ffi import lib
from edgepipe.cli import doctor


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No value cached in this process, and a cache directory of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(wait, "_cost", None)
    return tmp_path / "edgepipe" / "wake.json"


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


class TestMeasure:
    def test_c_measurement_is_a_plausible_wake(self):
        """Half a futex round trip between two threads: more than a syscall's worth, far less than a tick."""
        ns = lib.ep_wait_wake_cost_ns(20)
        assert 100 <= ns < 50_000_000

    def test_callers_cpu_mask_is_restored(self):
        """The measurement pins its two threads to two CPUs, then gives the caller its own mask back; a
        caller pinned to one CPU keeps exactly that mask too (its partner ran on another CPU)."""
        mask = os.sched_getaffinity(0)
        try:
            assert lib.ep_wait_wake_cost_ns(10) > 0
            assert os.sched_getaffinity(0) == mask
            one = {min(mask)}
            os.sched_setaffinity(0, one)
            assert lib.ep_wait_wake_cost_ns(10) > 0
            assert os.sched_getaffinity(0) == one
        finally:
            os.sched_setaffinity(0, mask)

    @pytest.mark.parametrize("rounds", [0, 100_001])
    def test_bad_rounds(self, rounds):
        """Zero or too many rounds are refused with -EINVAL, and measure_wake_ns turns that into OSError."""
        assert lib.ep_wait_wake_cost_ns(rounds) == -errno.EINVAL
        with pytest.raises(OSError) as e:
            wait.measure_wake_ns(rounds)
        assert e.value.errno == errno.EINVAL

    @pytest.mark.parametrize("wake,spin", [(12_000, 12_000), (300, 1_000), (2_000_000, 100_000)])
    def test_spin_is_one_wake_clamped(self, wake, spin):
        """The derived spin is one wake, kept within [1 us, 100 us]."""
        assert wait.derive_spin_ns(wake) == spin
        assert wait.WakeCost(wake, "measured").spin_ns == spin


class TestCache:
    def test_measured_once_then_read_from_the_cache(self, fresh):
        """The first call measures and writes the boot's cache; a new process state reads it back."""
        first = wait.wake_cost()
        assert first.source == "measured" and first.wake_ns > 0
        data = json.loads(fresh.read_text())
        assert data["boot_id"] == boot_id() and data["wake_ns"] == first.wake_ns
        assert wait.wake_cost() is first  # in memory for the process
        wait._cost = None
        again = wait.wake_cost()
        assert (again.source, again.wake_ns) == ("cache", first.wake_ns)
        assert wait.default_spin_ns() == wait.derive_spin_ns(first.wake_ns)

    def test_another_processes_reads_the_cache(self, fresh):
        """A second process finds the value the first one measured and does not measure again."""
        fresh.parent.mkdir(parents=True)
        fresh.write_text(json.dumps({"boot_id": boot_id(), "wake_ns": 4321}))
        code = ("import edgepipe.wait as w; c = w.wake_cost(); "
                "from edgepipe import WaitPolicy; print(c.source, c.wake_ns, WaitPolicy().spin_ns)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "XDG_CACHE_HOME": str(fresh.parent.parent)})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["cache", "4321", "4321"]

    @pytest.mark.parametrize("content", [
        "not json", json.dumps({"boot_id": "another boot", "wake_ns": 4321}),
        json.dumps({"boot_id": "BOOT", "wake_ns": "4321"}), json.dumps({"boot_id": "BOOT", "wake_ns": 5}),
        json.dumps({"boot_id": "BOOT"}), json.dumps([1, 2]),
    ], ids=["garbage", "other-boot", "str", "too-small", "missing", "list"])
    def test_a_bad_or_stale_cache_is_measured_over(self, fresh, content):
        """A cache from another boot, or one that is not what we wrote, is ignored and replaced."""
        fresh.parent.mkdir(parents=True)
        fresh.write_text(content.replace("BOOT", boot_id()))
        c = wait.wake_cost()
        assert c.source == "measured" and c.wake_ns != 4321
        assert json.loads(fresh.read_text())["wake_ns"] == c.wake_ns

    def test_refresh_measures_again(self, fresh):
        """refresh=True (what doctor does) measures even with a valid cache, and rewrites it."""
        fresh.parent.mkdir(parents=True)
        fresh.write_text(json.dumps({"boot_id": boot_id(), "wake_ns": 4321}))
        c = wait.wake_cost(refresh=True)
        assert c.source == "measured"
        assert json.loads(fresh.read_text())["wake_ns"] == c.wake_ns != 4321

    def test_unwritable_cache_is_no_error(self, fresh, monkeypatch):
        """A cache directory that can't be created (a file in the way): measured, used, not cached."""
        (fresh.parent.parent / "edgepipe").write_text("a file, not a directory")
        c = wait.wake_cost()
        assert c.source == "measured" and wait.default_spin_ns() == c.spin_ns

    def test_failed_measurement_falls_back_to_the_constant(self, fresh, monkeypatch):
        """If the wake can't be measured, the 25 us constant is used and nothing is cached."""
        def broken(rounds=wait.ROUNDS, repeats=wait.REPEATS):
            raise OSError(errno.EAGAIN, "no threads")

        monkeypatch.setattr(wait, "measure_wake_ns", broken)
        c = wait.wake_cost()
        assert (c.source, c.wake_ns) == ("fallback", lib.EP_DEFAULT_SPIN_NS) == ("fallback", 25_000)
        assert "no threads" in c.detail and not fresh.exists()
        assert wait.default_spin_ns() == 25_000


class TestUse:
    def test_ring_ends_and_latest_reader_open_with_the_derived_spin(self, fresh, monkeypatch):
        """Ends opened with the default policy take the derived spin (a bad one would be refused by C)."""
        monkeypatch.setattr(wait, "_cost", wait.WakeCost(9_000, "measured"))
        from edgepipe.latest import LatestSlot
        from edgepipe.ring import WaitPolicy

        assert WaitPolicy() == WaitPolicy("hybrid", 9_000)
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader()
            assert w.try_write(b"x") and r.read(timeout_s=1) == b"x"
        with LatestSlot.create(None, 4096) as slot:
            slot.reader()

    def test_doctor_prints_the_wake_and_the_spin(self, fresh):
        """edgepipe doctor measures afresh and shows the wake cost and the spin derived from it."""
        c = doctor.check_wake()
        assert c.status == "ok" and "one futex wake" in c.found and "default hybrid spin" in c.found
        cost = wait.wake_cost()
        assert cost.source == "measured"
        assert f"{cost.spin_ns / 1e3:.1f} us" in c.found and str(fresh) in c.found
        assert "wake" in {x.name for x in doctor.run_doctor()}
