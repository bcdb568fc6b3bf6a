"""Build and run the IMU loop harness (tests/c/imu_tsan.c) under ThreadSanitizer and as a plain -O2 build:
the loop thread publishing into a ring while a consumer drains it and the main thread reads stats and
quantiles, in both wait modes, plus create/start/stop/destroy cycles, with no data race and no lost or
reordered record. (TSan and ASLR: see tests/unit/test_tsan.py; the same setarch retry applies.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
SOURCES = [str(ROOT / "tests" / "c" / "imu_tsan.c")] + [
    str(CSRC / f) for f in ("ep_imu.c", "ep_ahrs.c", "ep_ring.c", "ep_shm.c", "ep_clock.c")
]
TSAN_FLAGS = ["-std=gnu11", "-O1", "-g", "-fsanitize=thread", "-pthread", f"-I{CSRC}"]
PLAIN_FLAGS = ["-std=gnu11", "-O2", "-g", "-pthread", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}"]


def _build(tmp_path: Path, name: str, flags: list[str]) -> Path:
    out = tmp_path / name
    r = subprocess.run([os.environ.get("CC", "gcc"), *flags, *SOURCES, "-lm", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"building {name} failed:\n{r.stderr}"
    return out


def _run(exe: Path, env=None, prefix=None):
    return subprocess.run([*(prefix or []), str(exe)], capture_output=True, text=True, env=env, timeout=150)


class TestImuLoopHarness:
    @pytest.mark.timeout(240)
    def test_loop_thread_under_threadsanitizer(self, tmp_path):
        """Start, run, read stats from another thread, stop and destroy the loop under TSan: no report,
        every published record received in order."""
        exe = _build(tmp_path, "imu_tsan", TSAN_FLAGS)
        env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1")
        r = _run(exe, env)
        if "unexpected memory mapping" in r.stderr and shutil.which("setarch"):
            r = _run(exe, env, ["setarch", os.uname().machine, "-R"])
        print(r.stdout)
        assert "WARNING: ThreadSanitizer" not in r.stderr, r.stderr[-8000:]
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "imu_tsan: OK" in r.stdout

    def test_loop_thread_plain_build(self, tmp_path):
        """The same harness at -O2 with -Wall -Wextra -Werror: builds warning-free and passes."""
        exe = _build(tmp_path, "imu_plain", PLAIN_FLAGS)
        r = _run(exe)
        print(r.stdout)
        assert r.returncode == 0 and "imu_tsan: OK" in r.stdout, r.stdout + r.stderr
