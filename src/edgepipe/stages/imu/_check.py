"""Argument checks the IMU sources and stage share, each naming the bad value (ImuConfigError)."""

from __future__ import annotations

import math

import numpy as np

from edgepipe.errors import ImuConfigError
from edgepipe.imu_loop import MAX_RATE_HZ, MIN_RATE_HZ

AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}



def rate(name: str, value: object) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise ImuConfigError(f"{name} must be a number of Hz, not {type(value).__name__}: {value!r}")
    v = float(value)
    if not (MIN_RATE_HZ <= v <= MAX_RATE_HZ):
        raise ImuConfigError(f"{name} must be in {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz, got {value!r}")
    return v


def finite(name: str, value: object, lo: float | None = None) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise ImuConfigError(f"{name} must be a number, not {type(value).__name__}: {value!r}")
    v = float(value)
    if not math.isfinite(v) or (lo is not None and v < lo):
        raise ImuConfigError(f"{name} must be a finite number{'' if lo is None else f' >= {lo:g}'}, got {value!r}")
    return v


def vec(name: str, value: object, n: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ImuConfigError(f"{name} must be {n} numbers, got {value!r}") from None
    if len(vals) != n or not all(math.isfinite(x) for x in vals):
        raise ImuConfigError(f"{name} must be {n} finite numbers, got {value!r}")
    return vals


def axis(axis: object) -> tuple[float, float, float]:
    if isinstance(axis, str):
        if axis.lower() not in AXES:
            raise ImuConfigError(f"axis must be 'x', 'y', 'z' or 3 numbers, got {axis!r}")
        return AXES[axis.lower()]
    v = vec("axis", axis, 3)
    n = math.sqrt(sum(x * x for x in v))
    if n == 0:
        raise ImuConfigError(f"axis must not be the zero vector, got {axis!r}")
    return (v[0] / n, v[1] / n, v[2] / n)

