"""What a parked wake costs on this machine, and the default spin of the hybrid wait policy derived from it.

The hybrid policy spins before it parks on the futex. Spinning about as long as a park-and-wake takes keeps
a wrong guess within twice the better choice either way, so the right spin is one futex wake of the machine
the code runs on: 6-25 us on x86 VMs, more on small ARM boards. A constant measured on one VM
(``EP_DEFAULT_SPIN_NS``, 25 us) is only the fallback.

:func:`wake_cost` measures it (``ep_wait_wake_cost_ns``: two threads pinned to two CPUs bounce a sequence
number over two shared futex words; half the median round trip of 100 round trips, the median of 3 such
measurements, ~15-40 ms) at the first default policy a process needs, once per boot, and caches it: in
memory for the process, and in ``$XDG_CACHE_HOME/edgepipe/wake.json`` (``~/.cache/edgepipe``) keyed by the
kernel's boot id, so later processes read it instead of measuring (a reboot, or a VM migrated to other
hardware after one, measures again). A cache that can't be read or written is skipped, never an error. If
the measurement fails, the fallback is used. ``edgepipe doctor`` measures afresh, rewrites the cache and
prints both numbers.

>>> from edgepipe.wait import derive_spin_ns
>>> derive_spin_ns(12_000), derive_spin_ns(300), derive_spin_ns(2_000_000)
(12000, 1000, 100000)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepipe._ffi import lib

# The package exports these two; default_spin_ns, derive_spin_ns, measure_wake_ns and cache_path are used as
# edgepipe.wait.<name> (by WaitPolicy, the latest slot, doctor).
__all__ = ["WakeCost", "wake_cost"]

FALLBACK_WAKE_NS = lib.EP_DEFAULT_SPIN_NS
ROUNDS = 100
REPEATS = 3
SPIN_MIN_NS = 1_000  # below this a spin can't even see a back-to-back record arrive
SPIN_MAX_NS = 100_000  # a slower wake (a loaded box) is not worth burning a core that long for
_SANE_NS = (100, 10_000_000)  # a cached or measured value outside this is ignored


@dataclass(frozen=True)
class WakeCost:
    """One futex wake on this machine: ``wake_ns`` and where the number came from (``"measured"``,
    ``"cache"`` or ``"fallback"``, with ``detail`` saying why)."""

    wake_ns: int
    source: str
    detail: str = ""

    @property
    def spin_ns(self) -> int:
        """The default hybrid spin derived from it."""
        return derive_spin_ns(self.wake_ns)


def derive_spin_ns(wake_ns: int) -> int:
    """The hybrid spin for a measured wake cost: one wake, clamped to [1 us, 100 us]."""
    return max(SPIN_MIN_NS, min(SPIN_MAX_NS, int(wake_ns)))


def measure_wake_ns(rounds: int = ROUNDS, repeats: int = REPEATS) -> int:
    """Measure one futex wake now (no cache): the median of ``repeats`` measurements of ``rounds`` round
    trips each, so one disturbed measurement is not what a boot keeps. OSError if it can't be measured."""
    got = []
    for _ in range(repeats):
        ns = lib.ep_wait_wake_cost_ns(rounds)
        if ns < 0:
            raise OSError(-ns, f"measuring a futex wake: {os.strerror(-ns)}")
        got.append(ns)
    return sorted(got)[len(got) // 2]


def cache_path() -> Path:
    """Where the measured wake cost is cached (``$XDG_CACHE_HOME/edgepipe/wake.json``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgepipe" / "wake.json"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _read_cache(boot: str) -> int | None:
    try:
        d = json.loads(cache_path().read_text())
        ns = d["wake_ns"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if d.get("boot_id") != boot or type(ns) is not int or not _SANE_NS[0] <= ns <= _SANE_NS[1]:
        return None
    return ns


def _write_cache(boot: str, ns: int) -> None:
    p = cache_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".wake.", dir=p.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"boot_id": boot, "wake_ns": ns, "rounds": ROUNDS}, f)
            os.replace(tmp, p)  # atomic: a concurrent reader sees the old file or the new one
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only home: the value still holds for this process


_cost: WakeCost | None = None


def wake_cost(refresh: bool = False) -> WakeCost:
    """The cost of one futex wake here: cached for the process, then for the boot (see the module
    docstring); ``refresh=True`` measures again and rewrites the cache."""
    global _cost
    if _cost is not None and not refresh:
        return _cost
    boot = _boot_id()
    ns = None if refresh or not boot else _read_cache(boot)
    if ns is not None:
        _cost = WakeCost(ns, "cache", str(cache_path()))
        return _cost
    try:
        ns = measure_wake_ns()
    except OSError as e:
        _cost = WakeCost(FALLBACK_WAKE_NS, "fallback", f"measurement failed: {e}")
        return _cost
    if not _SANE_NS[0] <= ns <= _SANE_NS[1]:
        _cost = WakeCost(FALLBACK_WAKE_NS, "fallback", f"measured {ns} ns, outside {_SANE_NS}")
        return _cost
    if boot:
        _write_cache(boot, ns)
    _cost = WakeCost(ns, "measured", f"median of {REPEATS} x {ROUNDS} round trips")
    return _cost


def default_spin_ns() -> int:
    """The default spin of the hybrid wait policy on this machine (one measured futex wake)."""
    return wake_cost().spin_ns
