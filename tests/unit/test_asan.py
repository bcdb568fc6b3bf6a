"""Every C harness under AddressSanitizer + UndefinedBehaviorSanitizer: the ring (tests/c/ring_tsan.c), the
latest slot (latest_tsan.c), the IMU loop (imu_tsan.c) and the lost-wakeup race (late_race.c) are built with
``-fsanitize=address,undefined -fno-sanitize-recover=all`` and must finish with no report (memory error,
leak, signed overflow, misaligned or out-of-range access) and their own "OK". The frame harness has its own
ASan test in test_frame_c.py. Counts are smaller than the TSan runs': ASan finds what it finds per access,
not per interleaving.
"""

from __future__ import annotations

import os

import pytest

from _cbuild import ASAN_FLAGS, LATEST_CORE, RING_CORE, build, run, sources

ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
CASES = {
    "ring": (sources("ring_tsan.c", *RING_CORE), (), (300_000, 1, 200), "ring_tsan: OK"),
    "latest": (sources("latest_tsan.c", *LATEST_CORE), (), (50_000, 4, 200), "latest_tsan: OK"),
    "imu": (sources("imu_tsan.c", "ep_imu.c", "ep_ahrs.c", *RING_CORE), ("-lm",), (), "imu_tsan: OK"),
    "late_race": (sources("late_race.c", *(f for f in RING_CORE if f != "ep_clock.c")), (), (100,),
                  "late_race: OK"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.timeout(400)
def test_harness_under_asan_and_ubsan(tmp_path, name):
    """The harness builds warning-free (-Werror) with ASan and UBSan and runs to its OK line with no report."""
    srcs, libs, args, ok = CASES[name]
    exe = build(tmp_path, f"{name}_asan", [*ASAN_FLAGS, "-Werror"], srcs, libs=libs)
    r = run(exe, *args, timeout=300, env=ENV)
    print(r.stdout)
    assert "ERROR: AddressSanitizer" not in r.stderr, r.stderr[-6000:]
    assert "runtime error:" not in r.stderr, r.stderr[-6000:]
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    assert ok in r.stdout
