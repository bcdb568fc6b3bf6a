"""The one clock every edgepipe stamp uses: ``CLOCK_MONOTONIC_RAW`` nanoseconds from the C core.

RAW is never slewed by NTP, so differences between stamps taken in different processes on one box are
exact. ``clock_nanosleep`` and futex deadlines take ``CLOCK_MONOTONIC`` instead, and reports want wall
time, so :func:`mapping` samples all three at one instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepipe._ffi import ffi, lib

__all__ = ["ClockMapping", "mapping", "monotonic_ns", "now_ns", "wall_ns"]

now_ns = lib.ep_clock_now_ns
monotonic_ns = lib.ep_clock_mono_ns
wall_ns = lib.ep_clock_wall_ns


@dataclass(frozen=True)
class ClockMapping:
    """RAW, MONOTONIC and wall-clock readings taken at one instant (within ``uncertainty_ns``)."""

    raw_ns: int
    mono_ns: int
    wall_ns: int
    uncertainty_ns: int

    def raw_to_wall_ns(self, t_raw_ns: int) -> int:
        """Wall-clock time of a RAW stamp (valid for stamps near this mapping; RAW and wall drift apart)."""
        return self.wall_ns + (t_raw_ns - self.raw_ns)

    def raw_to_mono_ns(self, t_raw_ns: int) -> int:
        """CLOCK_MONOTONIC time of a RAW stamp, e.g. to schedule a deadline with clock_nanosleep."""
        return self.mono_ns + (t_raw_ns - self.raw_ns)


def mapping() -> ClockMapping:
    """Sample the three clocks together.

    >>> m = mapping()
    >>> abs(m.raw_to_wall_ns(m.raw_ns) - m.wall_ns) == 0
    True
    """
    out = ffi.new("struct ep_clock_map *")
    lib.ep_clock_map(out)
    return ClockMapping(out.raw_ns, out.mono_ns, out.wall_ns, out.uncertainty_ns)
