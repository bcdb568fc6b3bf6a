"""Atheris harness: the 128-byte frame header (``struct ep_frame_hdr``, csrc/ep_image.h) as the two frame readers
meet it: a ring record read by ``edgepipe.frames.FrameReader``, and a latest-slot buffer read by
``edgepipe.latest.LatestReader``. (tests/fuzz/fuzz_frames.py is the control plane's length-prefixed
Envelope framing, a different "frame".)

Each input is one record: byte 0 picks the path and, for the ring, whether the record carries the frame
record type or a fuzzed one (bytes 1-4); the rest is the record, header first. Ring: the record is written
with a real RingWriter and read with ``try_read_frame``. Latest slot: a real frame is published, then the
fuzzed bytes are written over every buffer of the slot (as the producer's process could) before
``try_read_frame``. One ring and one slot serve the whole run.

The outcome is checked against a plain-Python reading of ep_image.h (``model``): an ImageHeaderError exactly
when a field is wrong (the ring reader then skips the record: the ring is empty afterwards), otherwise a
Frame whose dtype, shape, pixel format, seq, stamps, source id and pixel bytes are the header's and the
record's. Anything else escaping, or a crash, is a finding.

Run directly (libFuzzer flags pass through):

    python tests/fuzz/fuzz_image.py -max_total_time=600 [CORPUS_DIR]
"""

from __future__ import annotations

import math
import struct

from _harness import instrument, main

with instrument("edgepipe.frames", "edgepipe._image", "edgepipe.latest", "edgepipe.ring"):
    import numpy as np
    from edgepipe._ffi import lib

    from edgepipe.errors import ImageHeaderError
    from edgepipe.frames import PIXEL_FORMATS, FrameReader
    from edgepipe.latest import LatestSlot
    from edgepipe.ring import Ring


HDR = struct.Struct("<IHBBIIQQqqQ4Q4qQ")  # struct ep_frame_hdr, written out from csrc/ep_image.h
HDR_SIZE, MAGIC, VERSION, REC_TYPE = 128, 0x4D465045, 1, 0x46524D31
ITEM = {1: "|b1", 2: "|u1", 3: "|i1", 4: "<u2", 5: "<i2", 6: "<u4", 7: "<i4", 8: "<u8", 9: "<i8", 10: "<f2",
        11: "<f4", 12: "<f8"}
RING_CAP = 8192
SLOT_BYTES = 4096
assert HDR.size == HDR_SIZE == lib.EP_IMAGE_HDR_SIZE and (MAGIC, VERSION) == (lib.EP_IMAGE_MAGIC, lib.EP_IMAGE_VERSION)

_ring = _fw = _fr = None
_slot = _lw = _lr = None


def model(rec: bytes, avail: int):
    """(dtype, shape, pixel format, data_off, nbytes) as ep_image.h defines a valid header, or None."""
    if len(rec) < HDR_SIZE:
        return None
    magic, version, code, ndim, fmt, doff, nbytes = HDR.unpack_from(rec)[:7]
    f = HDR.unpack_from(rec)
    shape4, strides4 = f[11:15], f[15:19]
    if magic != MAGIC or version != VERSION or code not in ITEM or not 1 <= ndim <= 4 or fmt >= 6:
        return None
    shape = shape4[:ndim]
    if 0 in shape or any(shape4[ndim:]) or any(strides4[ndim:]):
        return None
    dt = np.dtype(ITEM[code])
    if math.prod(shape) * dt.itemsize != nbytes:
        return None
    want, acc = [], dt.itemsize
    for n in reversed(shape):
        want.insert(0, acc)
        acc *= n
    if list(strides4[:ndim]) != want:
        return None
    if doff < HDR_SIZE or doff > avail or nbytes > avail - doff:
        return None
    return dt, tuple(shape), PIXEL_FORMATS[fmt], doff, nbytes


def _check_frame(f, rec: bytes, want) -> None:
    dt, shape, fmt, doff, nbytes = want
    fields = HDR.unpack_from(rec)
    assert (f.dtype, f.shape, f.pixel_format) == (dt, shape, fmt), (f.dtype, f.shape, f.pixel_format, want)
    assert (f.seq, f.capture_ns, f.publish_ns, f.source_id) == fields[7:11]
    arr = f.array
    assert not arr.flags.writeable and arr.shape == shape and arr.dtype == dt
    assert arr.tobytes() == rec[doff:doff + nbytes]


def check_ring(rec: bytes, rtype: int) -> None:
    global _ring, _fw, _fr
    if _ring is None:
        _ring = Ring.create(capacity=RING_CAP)
        _fw, _fr = _ring.writer(), FrameReader(_ring.reader())
    rec = rec[:_ring.max_payload]
    assert _fw.try_write(rec, rtype)
    want = model(rec, len(rec)) if rtype == REC_TYPE else None
    corrupt = _fr.corrupt
    try:
        ctx = _fr.try_read_frame()
    except ImageHeaderError as e:
        assert want is None, (want, str(e))
        assert e.field and _fr.corrupt == corrupt + 1  # names the field; the record was skipped
        assert _fr.try_read_frame() is None
        return
    assert want is not None and ctx is not None
    with ctx as f:
        _check_frame(f, rec, want)
    assert _fr.try_read_frame() is None


def check_latest(rec: bytes) -> None:
    global _slot, _lw, _lr
    if _slot is None:
        _slot = LatestSlot.create(None, max_frame_bytes=SLOT_BYTES, buffers=4)
        _lw, _lr = _slot.writer(), _slot.reader()
    st = _slot.status()
    full = rec[:st.slot_size].ljust(st.slot_size, b"\0")
    _lw.write_frame(np.zeros(4, np.uint8), pixel_format="RAW")
    buf = _slot.region.buffer()
    for i in range(4):  # the producer's process can write any buffer; the reader may only read the one it took
        at = lib.EP_LATEST_CTL_SIZE + i * st.slot_size
        buf[at:at + st.slot_size] = full
    want = model(full, st.slot_size)
    try:
        ctx = _lr.try_read_frame()
    except ImageHeaderError as e:
        assert want is None, (want, str(e))
        assert e.field
        return
    assert want is not None and ctx is not None
    with ctx as f:
        _check_frame(f, full, want)


def test_one_input(data: bytes) -> None:
    if len(data) < 5:
        return
    sel = data[0] % 4
    if sel == 3:
        check_latest(data[5:])
    else:
        check_ring(data[5:], REC_TYPE if sel < 2 else int.from_bytes(data[1:5], "little") % lib.EP_REC_PAD)


def seeds() -> dict[str, bytes]:
    """Valid frames of several layouts, as records (pixels at data_off 128 and at 192)."""
    out = {}
    for name, shape, code, fmt, doff in (("bgr", (2, 3, 3), 2, 0, 128), ("gray16", (4, 5), 4, 2, 192),
                                         ("f32-4d", (1, 2, 1, 3), 11, 5, 128), ("nv12", (6, 4), 2, 3, 128)):
        dt = np.dtype(ITEM[code])
        nbytes = math.prod(shape) * dt.itemsize
        strides, acc = [], dt.itemsize
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
        pad = 4 - len(shape)
        hdr = HDR.pack(MAGIC, VERSION, code, len(shape), fmt, doff, nbytes, 7, 11, 13, 5,
                       *shape, *([0] * pad), *strides, *([0] * pad), 0)
        rec = hdr + bytes(doff - HDR_SIZE) + bytes(range(nbytes % 256)) + bytes(max(0, nbytes - 256))
        rec = rec[:doff + nbytes].ljust(doff + nbytes, b"\x01")
        out[f"image-ring-{name}"] = b"\x00" + bytes(4) + rec
        out[f"image-latest-{name}"] = b"\x03" + bytes(4) + rec
    out["image-ring-other-type"] = b"\x02\x01\x00\x00\x00" + out["image-ring-bgr"][5:]
    return out


if __name__ == "__main__":
    main(test_one_input, seeds)
