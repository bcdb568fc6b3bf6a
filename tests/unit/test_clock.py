"""edgepipe.clock: RAW, MONOTONIC and wall readings, and the mapping between them.

Each reading is bracketed by Python's own reading of the same clock, so the checks are about ordering,
never about how long anything took.
"""

from __future__ import annotations

import time

import pytest

from edgepipe import clock
from edgepipe.clock import ClockMapping


def _bracket(ours, theirs):
    """Return (theirs before, ours, theirs after)."""
    before = theirs()
    mid = ours()
    after = theirs()
    return before, mid, after


class TestReadings:
    def test_now_ns_is_clock_monotonic_raw(self):
        """now_ns lies between two Python reads of CLOCK_MONOTONIC_RAW taken around it."""
        lo, t, hi = _bracket(clock.now_ns, lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW))
        assert lo <= t <= hi

    def test_monotonic_ns_is_clock_monotonic(self):
        """monotonic_ns lies between two reads of time.monotonic_ns taken around it."""
        lo, t, hi = _bracket(clock.monotonic_ns, time.monotonic_ns)
        assert lo <= t <= hi

    def test_wall_ns_is_clock_realtime(self):
        """wall_ns lies between two reads of time.time_ns taken around it."""
        lo, t, hi = _bracket(clock.wall_ns, time.time_ns)
        assert lo <= t <= hi

    def test_now_ns_never_goes_back(self):
        """A thousand consecutive now_ns readings never decrease."""
        stamps = [clock.now_ns() for _ in range(1000)]
        assert stamps == sorted(stamps)

    @pytest.mark.parametrize("fn", [clock.now_ns, clock.monotonic_ns, clock.wall_ns])
    def test_readings_are_ints(self, fn):
        """Every clock reading is a Python int of nanoseconds."""
        assert type(fn()) is int


class TestMapping:
    def test_mapping_samples_lie_inside_the_call(self):
        """Each of the mapping's three samples lies between reads of its clock taken around mapping()."""
        raw0, mono0, wall0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW), time.monotonic_ns(), time.time_ns()
        m = clock.mapping()
        raw1, mono1, wall1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW), time.monotonic_ns(), time.time_ns()
        assert raw0 <= m.raw_ns <= raw1
        assert mono0 <= m.mono_ns <= mono1
        assert wall0 <= m.wall_ns <= wall1

    def test_uncertainty_is_positive_and_inside_the_call(self):
        """The uncertainty is a positive width no larger than the RAW span of the mapping() call."""
        raw0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
        m = clock.mapping()
        raw1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
        assert 0 < m.uncertainty_ns <= raw1 - raw0

    def test_raw_to_wall_is_an_offset(self):
        """raw_to_wall_ns maps the mapping's RAW instant to its wall instant and preserves differences."""
        m = clock.mapping()
        assert m.raw_to_wall_ns(m.raw_ns) == m.wall_ns
        assert m.raw_to_wall_ns(m.raw_ns + 12_345) - m.raw_to_wall_ns(m.raw_ns) == 12_345

    def test_raw_to_mono_is_an_offset(self):
        """raw_to_mono_ns maps the mapping's RAW instant to its MONOTONIC instant and preserves differences."""
        m = clock.mapping()
        assert m.raw_to_mono_ns(m.raw_ns) == m.mono_ns
        assert m.raw_to_mono_ns(m.raw_ns - 7) == m.mono_ns - 7

    def test_mapping_is_frozen(self):
        """A ClockMapping cannot be modified after it is made."""
        m = ClockMapping(1, 2, 3, 4)
        with pytest.raises(AttributeError):
            m.raw_ns = 5  # type: ignore[misc]
