"""The stamped record: the wire form of every record a plain-Python stage puts in a ring.

A fixed header (magic ``EPS1``, hop count, flags, the source's sequence number and capture time), one hop
per stage the record crossed (stage index, the link it arrived on, receive and publish time, all
CLOCK_MONOTONIC_RAW ns), then the payload. Flags: :data:`FLAG_REDELIVERED` marks a record that a
restarted stage took over from its crashed predecessor, which may have handled it already (see
edgepipe.pipeline.api: a sink that counts exactly drops a marked record whose sequence number it has seen).

>>> data = pack_record(b"hi", 7, 100, [Hop(0, NO_LINK, 100, 120)], flags=FLAG_REDELIVERED)
>>> r = unpack_record(data)
>>> r.payload, r.seq, r.redelivered, r.hops[0].publish_ns
(b'hi', 7, True, 120)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["Hop", "Record"]  # exported by edgepipe; the rest is shared inside edgepipe.pipeline

# One stamp header per record: magic, hop count, flags, seq, capture time (CLOCK_MONOTONIC_RAW ns).
_HDR = struct.Struct("<4sHHQq")
_HOP = struct.Struct("<HHIqq")  # stage index, input link index (0xFFFF: source), reserved, receive ns, publish ns
_MAGIC = b"EPS1"
NO_LINK = 0xFFFF
MAX_HOPS = 32
FLAG_REDELIVERED = 0x0001  # a restarted stage took this record over from a crashed one: maybe seen before
# the layout, for code that reads or rewrites stamps in place (the bridge's receiving path)
RECORD_HEADER, RECORD_HOP, RECORD_MAGIC = _HDR, _HOP, _MAGIC


@dataclass(frozen=True)
class Hop:
    """One stage a record went through: which stage, on which link it arrived, when in and when out."""

    stage: int
    link: int
    receive_ns: int
    publish_ns: int


@dataclass
class Record:
    """A record read from a stamped ring: the payload plus its stamps."""

    payload: bytes
    seq: int
    capture_ns: int
    hops: list[Hop]
    link: int = NO_LINK  # the link it was read from
    receive_ns: int = 0  # when this stage took it off the ring
    parts: list[tuple[str, int]] | None = None  # named latency parts, for records of built-in stages
    message: Any = None  # the decoded record of a built-in stage (InferenceResult, IMU sample row)
    redelivered: bool = False  # may have been handled before a crash (FLAG_REDELIVERED)


def pack_record(payload: bytes, seq: int, capture_ns: int, hops: list[Hop], flags: int = 0) -> bytes:
    """The wire form of a stamped record (header, hops, payload)."""
    if len(hops) > MAX_HOPS:
        raise ValueError(f"a record may cross at most {MAX_HOPS} stages, this one has {len(hops)} hops")
    parts = [_HDR.pack(_MAGIC, len(hops), flags, seq, capture_ns)]
    parts += [_HOP.pack(h.stage, h.link, 0, h.receive_ns, h.publish_ns) for h in hops]
    parts.append(payload)
    return b"".join(parts)


def unpack_record(data: bytes | memoryview) -> Record | None:
    """Parse a stamped record; None if ``data`` does not start with the stamp header."""
    if len(data) < _HDR.size:
        return None
    magic, nhops, flags, seq, cap = _HDR.unpack_from(data, 0)
    if magic != _MAGIC or len(data) < _HDR.size + nhops * _HOP.size:
        return None
    hops = []
    off = _HDR.size
    for _ in range(nhops):
        st, ln, _r, rn, pn = _HOP.unpack_from(data, off)
        hops.append(Hop(st, ln, rn, pn))
        off += _HOP.size
    return Record(bytes(data[off:]), seq, cap, hops, redelivered=bool(flags & FLAG_REDELIVERED))
