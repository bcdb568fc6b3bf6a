"""Reading a stage's counters: the numbers the supervisor's roll-up and ``edgepipe top`` both show, and how
a stage process reports them to its supervisor (``Stats`` holding one ``StageState`` whose ``counters``
carry ``Stage.stats()`` as plain values; no JSON, no pickle).

>>> st = stage_state("sink", {"kind": "check", "state": "running", "error": None, "ok": 3, "rate": 1.5})
>>> d = stats_from_state(st)
>>> d["ok"], d["rate"], d["state"], st.received
(3, 1.5, 'running', 0)
"""

from __future__ import annotations

from typing import Any

from edgepipe.control import messages as pb
from edgepipe.pipeline.values import check_plain, from_params, to_value

__all__: list[str] = []  # shared by the supervisor, its stage processes and top, not public API


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


def _plain(v: Any) -> Any:
    """A stats value as a plain value: numbers, strings, lists and tables stay; anything else is its str()."""
    if check_plain(v, "v") is None:
        return v
    try:  # numpy scalars and the like
        item = v.item()
        if check_plain(item, "v") is None:
            return item
    except (AttributeError, ValueError, TypeError):
        pass
    return str(v)


def stage_state(name: str, stats: dict[str, Any]) -> pb.StageState:
    """A stage's ``stats()`` dict as the StageState its process reports."""
    received, emitted, dropped = stage_counts(stats)
    st = pb.StageState(name=name, kind=str(stats.get("kind") or ""), state=str(stats.get("state") or ""),
                       error=str(stats.get("error") or ""), received=_u64(received), emitted=_u64(emitted),
                       dropped=_u64(dropped))
    for k, v in stats.items():
        if k in ("name", "kind", "state", "error"):
            continue
        st.counters.add(key=str(k), value=to_value(_plain(v)))
    return st


def stats_from_state(st: pb.StageState) -> dict[str, Any]:
    """The stats dict a StageState carries (the inverse of :func:`stage_state`)."""
    out: dict[str, Any] = {"kind": st.kind or None, "name": st.name, "state": st.state, "error": st.error or None}
    out.update(from_params(st.counters))
    return out


def _u64(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
