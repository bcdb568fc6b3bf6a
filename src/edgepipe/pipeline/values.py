"""Plain values as protobuf: the ``edgepipe.v1.Value`` tree that carries stage parameters and counters
between a supervisor and its stage processes.

Plain means what a TOML file can say: strings, integers, floats, booleans, lists and tables of them, plus
None and paths (sent as strings). Integers stay integers (int64) and floats floats (double). Anything else
(a callable, an array, an arbitrary object) is refused by :func:`check_plain`, which names where it sits,
because a control socket carries data, never code.

>>> v = to_value({"count": 3, "rate_hz": 2.5, "tags": ["a", True], "path": None})
>>> from_value(v)
{'count': 3, 'rate_hz': 2.5, 'tags': ['a', True], 'path': None}
>>> check_plain({"fn": len}, "params")
'params.fn is a builtin_function_or_method'
"""

from __future__ import annotations

import os
from typing import Any

from edgepipe.control import messages as pb

__all__: list[str] = []  # shared inside edgepipe.pipeline, not public API

_INT64 = (-(1 << 63), (1 << 63) - 1)


def check_plain(obj: Any, where: str) -> str | None:
    """None if ``obj`` is a plain value, else what is not (``"<where>.<key> is a <type>"``)."""
    if obj is None or isinstance(obj, (bool, str, float, os.PathLike)):
        return None
    if isinstance(obj, int):
        return None if _INT64[0] <= obj <= _INT64[1] else f"{where} is an integer out of the int64 range ({obj})"
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = check_plain(v, f"{where}[{i}]")
            if bad:
                return bad
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                return f"{where} has a key of type {type(k).__name__} ({k!r}); table keys are strings"
            bad = check_plain(v, f"{where}.{k}")
            if bad:
                return bad
        return None
    return f"{where} is a {type(obj).__name__}"


def to_value(obj: Any) -> pb.Value:
    """A plain value as a Value (ValueError naming the type for anything else)."""
    v = pb.Value()
    if obj is None:
        return v
    if isinstance(obj, bool):
        v.bool_value = obj
    elif isinstance(obj, int):
        v.int_value = obj
    elif isinstance(obj, float):
        v.double_value = obj
    elif isinstance(obj, str):
        v.string_value = obj
    elif isinstance(obj, os.PathLike):
        v.string_value = os.fspath(obj)
    elif isinstance(obj, (list, tuple)):
        v.list_value.SetInParent()
        v.list_value.items.extend(to_value(x) for x in obj)
    elif isinstance(obj, dict):
        v.map_value.SetInParent()
        v.map_value.entries.extend(to_params(obj))
    else:
        raise ValueError(f"not a plain value: a {type(obj).__name__} ({obj!r:.60})")
    return v


def from_value(v: pb.Value) -> Any:
    """The Python value of a Value (None when no kind is set)."""
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "list_value":
        return [from_value(x) for x in v.list_value.items]
    if kind == "map_value":
        return from_params(v.map_value.entries)
    return getattr(v, kind)


def to_params(d: dict[str, Any]) -> list[pb.Param]:
    """A dict of plain values as Params, in order."""
    return [pb.Param(key=k, value=to_value(x)) for k, x in d.items()]


def from_params(params) -> dict[str, Any]:
    """Params back into a dict, in order."""
    return {p.key: from_value(p.value) for p in params}
