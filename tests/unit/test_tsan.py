"""Build and run the C two-thread ring harness (tests/c/ring_tsan.c) under ThreadSanitizer and as a plain
-O2 build, so CI catches data races and lost wakeups in csrc/ep_ring.c.

The harness trades millions of sequence-numbered, checksummed records between a producer and a consumer
thread through every ring API and wait policy, and exits non-zero on any lost, reordered or corrupt record,
on a lost wakeup (status late_wakeups) or on a hang (its alarm). TSan exits with 66 when it reports.

TSan and ASLR: see tests/unit/_cbuild.py (a refused run is retried once under ``setarch -R``, never skipped).

Note: gcc warns that TSan does not model ``atomic_thread_fence``. The ring's two seq_cst fences form the
eventcount's Dekker step (store then load), an ordering TSan cannot check anyway; the harness checks that
property itself through ``late_wakeups == 0`` and its watchdog.
"""

from __future__ import annotations

import pytest

from _cbuild import PLAIN_FLAGS, RING_CORE, TSAN_FLAGS, build, run, run_tsan, sources

SOURCES = sources("ring_tsan.c", *RING_CORE)
TSAN_RECORDS = 3_000_000  # ~10 s on an idle 2-core VM under TSan, ~45 s on a loaded one
PLAIN_RECORDS = 10_000_000  # ~5 s
WATCHDOG_S = 240  # the harness's alarm(): a hang fails the run instead of stalling CI


def _args(records: int) -> tuple:
    return (records, 1, WATCHDOG_S)


class TestRingHarness:
    @pytest.mark.timeout(WATCHDOG_S + 120)
    def test_two_threads_under_threadsanitizer_race_free_and_lossless(self, tmp_path, require_system):
        """Two threads trade millions of records through every ring API and wait policy under TSan with no
        data race reported and none lost, reordered or corrupt."""
        require_system("-fsanitize=thread", "libtsan2")  # the TSan runtime
        exe = build(tmp_path, "ring_tsan", TSAN_FLAGS, SOURCES)
        r = run_tsan(exe, *_args(TSAN_RECORDS), options="halt_on_error=0 second_deadlock_stack=1 history_size=4",
                     timeout=WATCHDOG_S + 60)
        print(r.stdout)
        assert "FATAL: ThreadSanitizer" not in r.stderr, r.stderr[-4000:]
        assert "WARNING: ThreadSanitizer" not in r.stderr, r.stderr[-8000:]
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "ring_tsan: OK" in r.stdout

    def test_two_threads_plain_optimised_build_lossless(self, tmp_path):
        """The same harness built with -O2 and no sanitizer (where reorderings the compiler may make do
        happen) trades every record intact and in order with no lost wakeup."""
        exe = build(tmp_path, "ring_plain", PLAIN_FLAGS, SOURCES)
        r = run(exe, *_args(PLAIN_RECORDS), timeout=WATCHDOG_S + 60)
        print(r.stdout)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "ring_tsan: OK" in r.stdout
