"""The bridge's envelope: what one zenoh sample carries for one ring record (edgepipe.bridge).

A fixed 40-byte little-endian header, then the record's bytes exactly as they sat in the local ring (a
stamped record keeps its stamps, a frame record its 128-byte frame header, a protobuf message its bytes)::

    offset  size  field
    0       4     magic  b"EPB1"
    4       1     version (ENVELOPE_VERSION; another value is refused, not guessed at)
    5       1     kind    KIND_RECORD | KIND_END (the publisher's link ended cleanly) | KIND_PING | KIND_PONG
    6       2     flags   (reserved, 0)
    8       4     type_id the ring record's type (1: a stamped record, EP_IMAGE_REC_TYPE: a frame, ...)
    12      4     crc32   of the body (zlib.crc32)
    16      8     seq     the bridge's own number for this key, from 0 (gaps = lost on the wire)
    24      8     send_ns the sender's CLOCK_MONOTONIC_RAW when it handed the sample to zenoh
    32      4     length  of the body
    36      4     reserved

>>> env = pack(b"hello", seq=3, send_ns=10, type_id=1)
>>> e = unpack(env, max_bytes=1 << 20)
>>> (e.kind, e.seq, e.send_ns, e.type_id, bytes(e.body))
(1, 3, 10, 1, b'hello')
>>> unpack(b"EPB1" + bytes([9]) + bytes(35), max_bytes=1 << 20)
Traceback (most recent call last):
  ...
edgepipe.errors.BridgeVersionError: bridge envelope of layout version 9; this edgepipe reads version 1
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from edgepipe.errors import (
    BridgePayloadError,
    BridgePayloadTooLargeError,
    BridgeVersionError,
)

__all__: list[str] = []  # shared inside edgepipe.bridge

HEADER = struct.Struct("<4sBBHIIQqII")
MAGIC = b"EPB1"
ENVELOPE_VERSION = 1
KIND_RECORD, KIND_END, KIND_PING, KIND_PONG = 1, 2, 3, 4
_KINDS = (KIND_RECORD, KIND_END, KIND_PING, KIND_PONG)
assert HEADER.size == 40


@dataclass
class Envelope:
    kind: int
    type_id: int
    seq: int
    send_ns: int
    body: memoryview


def pack(body: bytes | memoryview, *, seq: int, send_ns: int, type_id: int = 1, kind: int = KIND_RECORD) -> bytes:
    """Header + body as one bytes object (zenoh copies it once more into its own buffer)."""
    return HEADER.pack(MAGIC, ENVELOPE_VERSION, kind, 0, type_id, zlib.crc32(body), seq, send_ns, len(body),
                       0) + body


def unpack(data: bytes | memoryview, *, max_bytes: int) -> Envelope:
    """Check and split an envelope. The body is a view into ``data``.

    Raises:
        BridgePayloadError: too short, wrong magic, unknown kind, a length that does not match, a bad crc.
        BridgeVersionError: another envelope layout version.
        BridgePayloadTooLargeError: a body over ``max_bytes``.
    """
    view = memoryview(data)
    if len(view) < HEADER.size:
        raise BridgePayloadError(f"bridge envelope of {len(view)} bytes, shorter than its {HEADER.size}-byte header")
    magic, version, kind, _flags, type_id, crc, seq, send_ns, length, _r = HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise BridgePayloadError(f"not a bridge envelope: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != ENVELOPE_VERSION:
        raise BridgeVersionError(f"bridge envelope of layout version {version}; this edgepipe reads version "
                                 f"{ENVELOPE_VERSION}")
    if kind not in _KINDS:
        raise BridgePayloadError(f"bridge envelope of unknown kind {kind}")
    if length > max_bytes:
        raise BridgePayloadTooLargeError(f"bridge record of {length} bytes, over this end's max_bytes {max_bytes}")
    body = view[HEADER.size:]
    if len(body) != length:
        raise BridgePayloadError(f"bridge envelope says {length} body bytes but carries {len(body)}")
    if zlib.crc32(body) != crc:
        raise BridgePayloadError(f"bridge record seq {seq}: crc32 {zlib.crc32(body):#010x} != {crc:#010x} in its header")
    return Envelope(kind, type_id, seq, send_ns, body)
