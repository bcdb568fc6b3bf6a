"""Build and run the IMU loop harness (tests/c/imu_tsan.c) under ThreadSanitizer and as a plain -O2 build:
the loop thread publishing into a ring while a consumer drains it and the main thread reads stats and
quantiles, in both wait modes, plus create/start/stop/destroy cycles, with no data race and no lost or
reordered record. (TSan and ASLR: see tests/unit/_cbuild.py; the same setarch retry applies.)"""

from __future__ import annotations

import pytest

from _cbuild import PLAIN_FLAGS, RING_CORE, TSAN_FLAGS, build, run, run_tsan, sources

SOURCES = sources("imu_tsan.c", "ep_imu.c", "ep_ahrs.c", *RING_CORE)


class TestImuLoopHarness:
    @pytest.mark.timeout(240)
    def test_loop_thread_under_threadsanitizer(self, tmp_path, require_system):
        """Start, run, read stats from another thread, stop and destroy the loop under TSan: no report,
        every published record received in order."""
        require_system("-fsanitize=thread", "libtsan2")  # the TSan runtime
        exe = build(tmp_path, "imu_tsan", TSAN_FLAGS, SOURCES, libs=("-lm",))
        r = run_tsan(exe, options="halt_on_error=0 second_deadlock_stack=1", timeout=150)
        print(r.stdout)
        assert "WARNING: ThreadSanitizer" not in r.stderr, r.stderr[-8000:]
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "imu_tsan: OK" in r.stdout

    def test_loop_thread_plain_build(self, tmp_path):
        """The same harness at -O2 with -Wall -Wextra -Werror: builds warning-free and passes."""
        exe = build(tmp_path, "imu_plain", [*PLAIN_FLAGS, "-Werror"], SOURCES, libs=("-lm",))
        r = run(exe, timeout=150)
        print(r.stdout)
        assert r.returncode == 0 and "imu_tsan: OK" in r.stdout, r.stdout + r.stderr
