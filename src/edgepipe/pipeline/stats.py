"""Reading a stage's counters: the numbers the supervisor's roll-up and ``edgepipe top`` both show."""

from __future__ import annotations

from typing import Any

__all__: list[str] = []  # stage_counts is shared by the supervisor and top, not public API


def stage_counts(s: dict[str, Any]) -> tuple[Any, Any, int]:
    """A stage's (received, emitted, dropped) from its stats dict, whatever its counters are called
    (received/frames_in, emitted/published/results, dropped or dropped[<link>: ...]); "" when absent.
    The supervisor fills ``StageState`` with the same numbers.

    >>> stage_counts({"received": 3, "emitted": 2, "dropped[a: full]": 1})
    (3, 2, 1)
    """
    dropped = s.get("dropped", 0) or sum(v for k, v in s.items() if k.startswith("dropped[") and isinstance(v, int))
    return (s.get("received", s.get("frames_in", "")), s.get("emitted", s.get("published", s.get("results", ""))),
            dropped or 0)
