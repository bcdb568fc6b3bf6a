"""Build and run the two-thread async-wait harness (tests/c/async_tsan.c) under ThreadSanitizer, as a plain -O2
build and under ASan+UBSan, so CI catches data races and lost wakeups in csrc/ep_async.c and its hooks in
csrc/ep_ring.c.

Both threads wait the way edgepipe.aio does, with poll() on their own datagram socket in place of the event
loop: the consumer for records, the producer for room in a 256-byte ring; every other wait first spins
(ep_async_pos, ep_async_spin on the position and an epoll fd holding the thread's socket) before it
announces, as edgepipe.aio does when its loop is idle. A poll that sleeps 20 s is a lost
wakeup and fails the harness, as does a lost, reordered or corrupt record, or a datagram that found no
socket. See _cbuild.py for the TSan/ASLR note and test_tsan.py for the seq_cst fence warning.
"""

from __future__ import annotations

import pytest

from _cbuild import ASAN_FLAGS, PLAIN_FLAGS, RING_CORE, TSAN_FLAGS, build, run, run_tsan, sources

SOURCES = sources("async_tsan.c", *RING_CORE)
TIMEOUT_S = 240


class TestAsyncHarness:
    @pytest.mark.timeout(TIMEOUT_S + 60)
    def test_two_threads_under_threadsanitizer(self, tmp_path, require_system):
        """50k records with both threads sleeping in poll() between announcements: no data race reported,
        no lost wakeup, every record in order."""
        require_system("-fsanitize=thread", "libtsan2")
        exe = build(tmp_path, "async_tsan", TSAN_FLAGS, SOURCES)
        r = run_tsan(exe, 50_000, options="halt_on_error=0 history_size=4", timeout=TIMEOUT_S)
        print(r.stdout)
        assert "ThreadSanitizer" not in r.stderr, r.stderr[-6000:]
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "async_tsan: OK" in r.stdout

    @pytest.mark.timeout(TIMEOUT_S + 60)
    def test_two_threads_plain_optimised_build(self, tmp_path):
        """The same harness at -O2 without sanitizer (real reorderings): 500k records, no lost wakeup."""
        exe = build(tmp_path, "async_plain", [*PLAIN_FLAGS, "-Werror"], SOURCES)
        r = run(exe, 500_000, timeout=TIMEOUT_S)
        print(r.stdout)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "async_tsan: OK" in r.stdout

    @pytest.mark.timeout(TIMEOUT_S + 60)
    def test_two_threads_under_asan_and_ubsan(self, tmp_path, require_system):
        """The same harness under AddressSanitizer and UndefinedBehaviorSanitizer: 50k records, no report."""
        require_system("-fsanitize=address,undefined", "libasan8 libubsan1")
        exe = build(tmp_path, "async_asan", ASAN_FLAGS, SOURCES)
        r = run(exe, 50_000, timeout=TIMEOUT_S)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
        assert "async_tsan: OK" in r.stdout
