"""Argument checks that several handle modules share (ring, frames, latest slot, framing): one rule for what a
timeout means everywhere, with the bad value in the message."""

from __future__ import annotations

import math

FOREVER_NS = 1 << 62  # timeouts beyond ~146 years mean "forever"


def timeout_ns(timeout_s: float | None) -> int:
    """``timeout_s`` as C's nanoseconds: None or +inf mean wait forever (-1); anything else must be a finite
    number >= 0.

    >>> timeout_ns(None), timeout_ns(0.25), timeout_ns(float("inf"))
    (-1, 250000000, -1)
    >>> timeout_ns(-1)
    Traceback (most recent call last):
      ...
    ValueError: timeout_s must be >= 0 or None, got -1
    """
    if timeout_s is None:
        return -1
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool):
        raise TypeError(f"timeout_s must be a number or None, not {type(timeout_s).__name__}: {timeout_s!r}")
    if math.isnan(timeout_s) or timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s!r}")
    if math.isinf(timeout_s) or timeout_s * 1e9 >= FOREVER_NS:
        return -1
    return int(timeout_s * 1e9)
