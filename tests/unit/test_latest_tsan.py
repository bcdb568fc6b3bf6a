"""Build and run the two-thread latest-slot harness (tests/c/latest_tsan.c) under ThreadSanitizer and as a
plain -O2 build, so CI catches data races, torn frames and lost wakeups in csrc/ep_latest.c.

The producer thread publishes frames whose every word is their seq; the consumer takes the newest, checks it
is whole and newer than the last, keeps one frame aside now and then (4 buffers) and re-checks it never
changes, and parks in ep_latest_wait() when nothing is fresh. The harness exits non-zero on any torn,
stale or reordered frame, on counters that do not add up, or on a hang (its alarm). Weakening the exchange in
ep_latest_publish() to relaxed makes TSan report a data race on the frame bytes here (checked by hand).
See test_tsan.py for the TSan/ASLR note and the seq_cst fence warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
SOURCES = [str(ROOT / "tests" / "c" / "latest_tsan.c"), str(CSRC / "ep_latest.c"), str(CSRC / "ep_clock.c")]
TSAN_FLAGS = ["-std=gnu11", "-O1", "-g", "-fsanitize=thread", "-pthread", f"-I{CSRC}"]
PLAIN_FLAGS = ["-std=gnu11", "-O2", "-g", "-pthread", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}"]
WATCHDOG_S = 120


def _build(tmp_path: Path, name: str, flags: list[str]) -> Path:
    out = tmp_path / name
    r = subprocess.run([os.environ.get("CC", "gcc"), *flags, *SOURCES, "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, f"building {name} failed:\n{r.stderr}"
    return out


def _run(exe: Path, frames: int, nbuf: int, env=None, prefix=None):
    cmd = [*(prefix or []), str(exe), str(frames), str(nbuf), str(WATCHDOG_S)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=WATCHDOG_S + 60)


class TestLatestHarness:
    @pytest.mark.parametrize("nbuf", [3, 4])
    @pytest.mark.timeout(WATCHDOG_S + 120)
    def test_two_threads_under_threadsanitizer(self, tmp_path, nbuf):
        """Producer and consumer threads trade 100k frames with no data race reported, no torn or
        reordered frame, and counters that add up (3 buffers, and 4 with a kept frame)."""
        exe = _build(tmp_path, "latest_tsan", TSAN_FLAGS)
        env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 history_size=4")
        r = _run(exe, 100_000, nbuf, env)
        if "unexpected memory mapping" in r.stderr and shutil.which("setarch"):
            r = _run(exe, 100_000, nbuf, env, ["setarch", os.uname().machine, "-R"])
        print(r.stdout)
        assert "ThreadSanitizer" not in r.stderr, r.stderr[-6000:]
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "latest_tsan: OK" in r.stdout

    def test_two_threads_plain_optimised_build(self, tmp_path):
        """The same harness at -O2 without sanitizer (real reorderings) trades 2M frames intact."""
        exe = _build(tmp_path, "latest_plain", PLAIN_FLAGS)
        r = _run(exe, 2_000_000, 4)
        print(r.stdout)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "latest_tsan: OK" in r.stdout
