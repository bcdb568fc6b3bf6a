"""Lost-wakeup accounting of the eventcount (csrc/ep_wait.c), issue 14 point 9: tests/c/late_race.c stages
the benign race deterministically (a record published between a futex timeout and the waiter's re-check,
through the harness's own clock hook) and it must not count as a late wakeup. Before the fix every one of
those rounds counted. The TSan harnesses and the stress test keep asserting late_wakeups == 0 for the real
thing."""

from __future__ import annotations

from _cbuild import PLAIN_FLAGS, RING_CORE, build, run, sources

SOURCES = sources("late_race.c", *(f for f in RING_CORE if f != "ep_clock.c"))  # the harness is the clock


def test_publish_between_timeout_and_recheck_is_not_a_lost_wakeup(tmp_path):
    """200 parks time out and each finds a record published right after its timeout; late_wakeups stays 0."""
    exe = build(tmp_path, "late_race", [*PLAIN_FLAGS, "-Werror"], SOURCES)
    r = run(exe, 200, timeout=120)
    print(r.stdout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    assert "late_race: OK" in r.stdout
