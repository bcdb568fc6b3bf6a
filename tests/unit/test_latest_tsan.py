"""Build and run the two-thread latest-slot harness (tests/c/latest_tsan.c) under ThreadSanitizer and as a
plain -O2 build, so CI catches data races, torn frames and lost wakeups in csrc/ep_latest.c.

The producer thread publishes frames whose every word is their seq; the consumer takes the newest, checks it
is whole and newer than the last, keeps one frame aside now and then (4 buffers) and re-checks it never
changes, and parks in ep_latest_wait() when nothing is fresh. The harness exits non-zero on any torn,
stale or reordered frame, on counters that do not add up, or on a hang (its alarm). Weakening the exchange in
ep_latest_publish() to relaxed makes TSan report a data race on the frame bytes here (checked by hand).
See _cbuild.py for the TSan/ASLR note and test_tsan.py for the seq_cst fence warning.
"""

from __future__ import annotations

import pytest

from _cbuild import LATEST_CORE, PLAIN_FLAGS, TSAN_FLAGS, build, run, run_tsan, sources

SOURCES = sources("latest_tsan.c", *LATEST_CORE)
WATCHDOG_S = 120


class TestLatestHarness:
    @pytest.mark.parametrize("nbuf", [3, 4])
    @pytest.mark.timeout(WATCHDOG_S + 120)
    def test_two_threads_under_threadsanitizer(self, tmp_path, require_system, nbuf):
        """Producer and consumer threads trade 100k frames with no data race reported, no torn or
        reordered frame, and counters that add up (3 buffers, and 4 with a kept frame)."""
        require_system("-fsanitize=thread", "libtsan2")  # the TSan runtime
        exe = build(tmp_path, "latest_tsan", TSAN_FLAGS, SOURCES)
        r = run_tsan(exe, 100_000, nbuf, WATCHDOG_S, options="halt_on_error=0 history_size=4",
                     timeout=WATCHDOG_S + 60)
        print(r.stdout)
        assert "ThreadSanitizer" not in r.stderr, r.stderr[-6000:]
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "latest_tsan: OK" in r.stdout

    def test_two_threads_plain_optimised_build(self, tmp_path):
        """The same harness at -O2 without sanitizer (real reorderings) trades 2M frames intact."""
        exe = build(tmp_path, "latest_plain", [*PLAIN_FLAGS, "-Werror"], SOURCES)
        r = run(exe, 2_000_000, 4, WATCHDOG_S, timeout=WATCHDOG_S + 60)
        print(r.stdout)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "latest_tsan: OK" in r.stdout
