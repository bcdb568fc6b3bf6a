"""Numpy frames in shared memory: :class:`FrameWriter` / :class:`FrameReader` over a lossless ring, and
:class:`LatestSlot` (a lock-free triple buffer, ``csrc/ep_latest.c``) for consumers that only want the newest.

Every frame is a fixed 128-byte header (``struct ep_frame_hdr`` in ``csrc/ep_image.h``: layout version,
dtype code, ndim <= 4, shape, strides, seq, capture and publish stamps from :func:`edgepipe.clock.now_ns`,
source id, pixel format) followed by the pixels, 64-byte aligned. Writers fill the pixels in place
(``claim_frame``), so a decoder can write straight into shared memory; readers get a read-only ndarray
over the same bytes. Neither side copies.

Lifetime rule (both kinds of channel): **a slot stays held until the last array over it dies.** At the end
of a reader's ``with`` block the frame drops its own references; if no array over the slot is left (the
usual case) the slot goes back to the producer at once. If an array (or any view of it) escaped the block,
the slot stays held, so those bytes are never reused under it, and it is given back by a later read once
the array is garbage. A ring can only move past its oldest record, so on a ring the *next* read raises
:class:`~edgepipe.errors.ImageHeldError` while a kept array still pins the previous frame; a latest slot
made with ``buffers=4`` (the default) lets the reader keep one such frame and read on (``buffers=3`` is a
plain triple buffer). To keep a frame, keep ``frame.copy()``. A writer's array must not be used after its
block (it is made read-only when the block ends).

>>> import numpy as np
>>> from edgepipe import Ring
>>> with Ring.create(capacity=1 << 16) as ring:
...     w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
...     with w.claim_frame((4, 6, 3)) as arr:
...         arr[:] = 7
...     with r.read_frame(timeout_s=1) as f:
...         f.seq, f.shape, f.pixel_format, int(f.array.sum())
(1, (4, 6, 3), 'BGR', 504)
"""

from __future__ import annotations

import errno
import gc
import math
import struct
import sys
import time
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from edgepipe._ffi import ffi, lib
from edgepipe.clock import now_ns
from edgepipe.errors import (
    ImageHeaderError,
    ImageHeldError,
    ImageReleasedError,
    ImageShapeError,
    ImageTooLargeError,
    LayoutVersionError,
    PeerClosedError,
    RingClosedError,
    RingCorruptError,
    RingTimeoutError,
    check,
)
from edgepipe.ring import RingReader, RingWriter, _Segment, _open_end, _timeout_ns, _truncation
from edgepipe.shm import SharedRegion

__all__ = [
    "PIXEL_FORMATS",
    "Frame",
    "FrameReader",
    "FrameWriter",
    "LatestReader",
    "LatestSlot",
    "LatestStatus",
    "LatestWriter",
]

PIXEL_FORMATS = ("BGR", "RGB", "GRAY", "NV12", "I420", "RAW")
_PIX_CODE = {name: i for i, name in enumerate(PIXEL_FORMATS)}

HDR_SIZE = lib.EP_IMAGE_HDR_SIZE
ALIGN = lib.EP_IMAGE_ALIGN
REC_TYPE = lib.EP_IMAGE_REC_TYPE
MAGIC = lib.EP_IMAGE_MAGIC
VERSION = lib.EP_IMAGE_VERSION
MAX_NDIM = lib.EP_IMAGE_MAX_NDIM

# struct ep_frame_hdr, field for field (checked against the compiled struct just below)
_HDR = struct.Struct("<IHBBIIQQqqQ4Q4qQ")
_pack_hdr = _HDR.pack_into
_unpack_hdr = _HDR.unpack_from
assert _HDR.size == HDR_SIZE == ffi.sizeof("struct ep_frame_hdr")
for _f, _off in (("pixel_format", 8), ("data_off", 12), ("nbytes", 16), ("seq", 24), ("capture_ns", 32),
                 ("publish_ns", 40), ("source_id", 48), ("shape", 56), ("strides", 88), ("reserved", 120)):
    assert ffi.offsetof("struct ep_frame_hdr", _f) == _off, _f

_DTYPES = {
    lib.EP_DT_BOOL: np.dtype(np.bool_),
    lib.EP_DT_U8: np.dtype("<u1"),
    lib.EP_DT_I8: np.dtype("<i1"),
    lib.EP_DT_U16: np.dtype("<u2"),
    lib.EP_DT_I16: np.dtype("<i2"),
    lib.EP_DT_U32: np.dtype("<u4"),
    lib.EP_DT_I32: np.dtype("<i4"),
    lib.EP_DT_U64: np.dtype("<u8"),
    lib.EP_DT_I64: np.dtype("<i8"),
    lib.EP_DT_F16: np.dtype("<f2"),
    lib.EP_DT_F32: np.dtype("<f4"),
    lib.EP_DT_F64: np.dtype("<f8"),
}
_DTYPE_CODE = {dt: code for code, dt in _DTYPES.items()}
if sys.byteorder != "little":  # pragma: no cover - the header says little-endian
    raise ImportError("edgepipe.frames needs a little-endian machine")

_ring_claim = lib.ep_ring_claim
_ring_commit = lib.ep_ring_commit
_ring_abort = lib.ep_ring_abort
_ring_peek = lib.ep_ring_peek
_ring_release = lib.ep_ring_release
_EAGAIN = -errno.EAGAIN
_EPIPE = -errno.EPIPE
_ETIMEDOUT = -errno.ETIMEDOUT
_EINTR = -errno.EINTR
_SLICE_NS = 100_000_000  # blocking calls come back to Python this often (signals, peer checks)


# ---------------------------------------------------------------------------------------------------
# layouts: shape + dtype + pixel format -> header fields (cached; a stream repeats one layout)


class _Layout:
    __slots__ = ("code", "dtype", "fmt", "fmt_code", "nbytes", "ndim", "shape", "shape4", "strides4")

    def __init__(self, shape: tuple, dtype: np.dtype, fmt: str) -> None:
        self.shape = shape
        self.dtype = dtype
        self.fmt = fmt
        self.fmt_code = _PIX_CODE[fmt]
        self.code = _DTYPE_CODE[dtype]
        self.ndim = len(shape)
        self.nbytes = math.prod(shape) * dtype.itemsize
        strides = []
        acc = dtype.itemsize
        for n in reversed(shape):
            strides.append(acc)
            acc *= n
        strides.reverse()
        pad = MAX_NDIM - self.ndim
        self.shape4 = tuple(shape) + (0,) * pad
        self.strides4 = tuple(strides) + (0,) * pad


_layouts: dict[tuple, _Layout] = {}


def _layout(shape, dtype, pixel_format) -> _Layout:
    key = (shape, dtype, pixel_format)
    try:
        return _layouts[key]
    except (KeyError, TypeError):
        pass
    lay = _make_layout(shape, dtype, pixel_format)
    if len(_layouts) > 256:
        _layouts.clear()
    _layouts[(lay.shape, dtype, pixel_format)] = lay
    return lay


def _make_layout(shape, dtype, pixel_format) -> _Layout:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ImageShapeError(f"shape must be a tuple of ints, got {shape!r}") from None
    if not 1 <= len(shape) <= MAX_NDIM:
        raise ImageShapeError(f"frames have 1..{MAX_NDIM} dimensions, got shape {shape} ({len(shape)} dims)")
    if any(n <= 0 for n in shape):
        raise ImageShapeError(f"every dimension must be >= 1, got shape {shape}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ImageShapeError(f"dtype must be a numpy dtype, got {dtype!r}") from None
    if dt.byteorder == ">" or dt.newbyteorder("<") not in _DTYPE_CODE:
        names = ", ".join(str(d) for d in _DTYPES.values())
        raise ImageShapeError(f"frames carry native little-endian {names}; got dtype {dt.str!r}")
    dt = dt.newbyteorder("<") if dt.byteorder == "=" else dt
    dt = _DTYPES[_DTYPE_CODE[dt]]
    if pixel_format not in _PIX_CODE:
        raise ImageShapeError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
    _check_pixel_format(shape, dt, pixel_format)
    return _Layout(shape, dt, pixel_format)


def _check_pixel_format(shape: tuple, dt: np.dtype, fmt: str) -> None:
    if fmt in ("BGR", "RGB"):
        if len(shape) != 3 or shape[2] != 3:
            raise ImageShapeError(f"a {fmt} frame has shape (height, width, 3), got {shape}")
    elif fmt == "GRAY":
        if not (len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)):
            raise ImageShapeError(f"a GRAY frame has shape (height, width) or (height, width, 1), got {shape}")
    elif fmt in ("NV12", "I420"):
        # Planar YUV 4:2:0 as OpenCV holds it: one (height * 3 / 2, width) uint8 plane stack.
        if len(shape) != 2 or shape[0] % 3 or shape[1] % 2 or (shape[0] // 3 * 2) % 2 or dt != np.uint8:
            raise ImageShapeError(
                f"a {fmt} frame is uint8 of shape (height * 3 // 2, width) with even height and width, "
                f"got {shape} {dt}"
            )


# ---------------------------------------------------------------------------------------------------
# header parsing (readers trust nothing)


class _Parsed:
    __slots__ = ("dtype", "fmt", "nbytes", "shape")


_parsed_cache: dict[tuple, _Parsed] = {}


def _bad(field: str, value, why: str, where: str) -> ImageHeaderError:
    return ImageHeaderError(f"corrupt frame header in {where}: {field} = {value!r} ({why})", field, value)


def _parse(fields: tuple, avail: int, where: str) -> tuple[_Parsed, int]:
    """Validate a header tuple against ``avail`` bytes after the header start; return the layout and
    data_off. Every check names the field and the value found."""
    magic, version, code, ndim, fmt, doff, nbytes = fields[:7]
    key = fields[2:5] + fields[6:7] + fields[11:19]  # dtype, ndim, fmt, nbytes, shape, strides
    p = _parsed_cache.get(key)
    if p is None:
        if magic != MAGIC:
            raise _bad("magic", hex(magic), f"expected {MAGIC:#x}", where)
        if version != VERSION:
            raise _bad("version", version, f"this edgepipe reads frame layout version {VERSION}", where)
        p = _parse_layout(fields, where)
        if len(_parsed_cache) > 256:
            _parsed_cache.clear()
        _parsed_cache[key] = p
    elif magic != MAGIC or version != VERSION:
        raise _bad("magic" if magic != MAGIC else "version", hex(magic) if magic != MAGIC else version,
                   f"expected magic {MAGIC:#x} version {VERSION}", where)
    if doff < HDR_SIZE or doff > avail or nbytes > avail - doff:
        raise _bad("data_off", doff, f"pixels of {nbytes} bytes must fit between the {HDR_SIZE}-byte header "
                   f"and the end of the {avail}-byte record", where)
    return p, doff


def _parse_layout(fields: tuple, where: str) -> _Parsed:
    code, ndim, fmt, _doff, nbytes = fields[2:7]
    shape4, strides4 = fields[11:15], fields[15:19]
    if code not in _DTYPES:
        raise _bad("dtype", code, f"known codes are {sorted(_DTYPES)}", where)
    if not 1 <= ndim <= MAX_NDIM:
        raise _bad("ndim", ndim, f"must be 1..{MAX_NDIM}", where)
    if fmt >= len(PIXEL_FORMATS):
        raise _bad("pixel_format", fmt, f"known formats are 0..{len(PIXEL_FORMATS) - 1} {PIXEL_FORMATS}", where)
    dt = _DTYPES[code]
    shape = tuple(shape4[:ndim])
    if any(n == 0 for n in shape) or any(shape4[ndim:]) or any(strides4[ndim:]):
        raise _bad("shape", shape4, f"ndim {ndim}: the first {ndim} dimensions must be >= 1, the rest 0", where)
    if math.prod(shape) * dt.itemsize != nbytes:
        raise _bad("nbytes", nbytes, f"shape {shape} of {dt} holds {math.prod(shape) * dt.itemsize} bytes", where)
    want = _Layout(shape, dt, "RAW").strides4
    if tuple(strides4) != want:
        raise _bad("strides", tuple(strides4[:ndim]), f"expected C-contiguous {want[:ndim]}", where)
    p = _Parsed()
    p.dtype, p.shape, p.fmt, p.nbytes = dt, shape, PIXEL_FORMATS[fmt], nbytes
    return p


# ---------------------------------------------------------------------------------------------------
# Frame


class Frame:
    """One frame being read: a read-only ndarray over the slot plus its header fields.

    Valid inside its ``with`` block; ``array`` raises ImageReleasedError after it. Keep ``copy()`` to
    hold on to the pixels (see the module docstring for arrays kept past the block).
    """

    __slots__ = ("_arr", "capture_ns", "dtype", "pixel_format", "publish_ns", "seq", "shape", "source_id")

    def __init__(self, arr, seq, capture_ns, publish_ns, pixel_format, source_id):
        self._arr = arr
        self.seq: int = seq
        self.capture_ns: int = capture_ns
        self.publish_ns: int = publish_ns
        self.pixel_format: str = pixel_format
        self.source_id: int = source_id
        self.shape: tuple = arr.shape
        self.dtype: np.dtype = arr.dtype

    @property
    def array(self) -> np.ndarray:
        """The pixels, read-only, in place in shared memory."""
        a = self._arr
        if a is None:
            raise ImageReleasedError(
                f"frame seq {self.seq} was released at the end of its with block; use frame.copy() inside it"
            )
        return a

    @property
    def latency_ns(self) -> int:
        """Nanoseconds from publish to now (the handoff so far)."""
        return now_ns() - self.publish_ns

    def copy(self) -> np.ndarray:
        """An owned, writable copy of the pixels."""
        return self.array.copy()

    def __repr__(self) -> str:
        state = "" if self._arr is not None else " released"
        return (f"<Frame seq={self.seq} {self.pixel_format} {self.shape} {self.dtype} "
                f"source={self.source_id}{state}>")


def _new_frame(view: memoryview, base_off: int, avail: int, where: str) -> tuple[Frame, weakref.ref]:
    """Parse the header at ``base_off`` and build the frame's array over ``view``. Returns the Frame and
    a weak reference to the array every view of the pixels leads back to: numpy collapses ``.base``
    chains to the 1-D array over our buffer, so that array dies exactly when the last view of the frame
    does (a memoryview's own export count cannot tell: numpy takes its export from the memoryview's
    underlying buffer, not from the memoryview)."""
    fields = _unpack_hdr(view, base_off)
    p, doff = _parse(fields, avail, where)
    flat = np.frombuffer(view, p.dtype, p.nbytes // p.dtype.itemsize, base_off + doff)
    arr = flat.reshape(p.shape) if len(p.shape) > 1 else flat
    return Frame(arr, fields[7], fields[8], fields[9], p.fmt, fields[10]), weakref.ref(flat)


def _free(ref: weakref.ref) -> bool:
    """True once no array over the frame's slot is left (the slot may go back to the producer)."""
    return ref() is None


# ---------------------------------------------------------------------------------------------------
# writing (shared by the ring and the latest slot)


class _WriterBase:
    """claim_frame / write_frame / try_write_frame over a ``_claim(lay, timeout_s)`` primitive."""

    __slots__ = ()

    def claim_frame(self, shape, dtype=np.uint8, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                    source_id: int = 0, timeout_s: float | None = None) -> _FrameClaim:
        """``with writer.claim_frame(shape, dtype) as arr:`` fills a frame in place in shared memory.

        A clean exit publishes it (header stamped with ``publish_ns`` just before), an exception abandons
        it. Set ``claim.capture_ns`` inside the block (``claim = w.claim_frame(...)``; ``with claim as
        arr:``) to stamp capture time after the fact, e.g. right after a camera grab; by default it is the
        time of this call.

        Raises:
            ImageShapeError: bad shape, dtype or pixel format. ImageTooLargeError: over max_frame_bytes.
            RingTimeoutError: (ring) no room within ``timeout_s``.
        """
        lay = _layout(shape, dtype, pixel_format)
        if lay.nbytes > self.max_frame_bytes:
            raise self._too_large(lay)
        if not isinstance(source_id, int) or not 0 <= source_id < 1 << 64:
            raise ValueError(f"source_id must be an int in 0..2**64-1, got {source_id!r}")
        return self._claim(lay, now_ns() if capture_ns is None else capture_ns, source_id, timeout_s)

    def write_frame(self, arr, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                    source_id: int = 0, timeout_s: float | None = None) -> int:
        """Copy ``arr`` (any numpy array of a supported dtype) into one frame; return its seq."""
        arr = _as_array(arr)
        c = self.claim_frame(arr.shape, arr.dtype, pixel_format=pixel_format, capture_ns=capture_ns,
                             source_id=source_id, timeout_s=timeout_s)
        with c as dst:
            np.copyto(dst, arr, casting="no")
        return c.seq

    def try_write_frame(self, arr, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                        source_id: int = 0) -> int | None:
        """Like write_frame, but return None at once if there is no room (never blocks)."""
        try:
            return self.write_frame(arr, pixel_format=pixel_format, capture_ns=capture_ns,
                                    source_id=source_id, timeout_s=0)
        except RingTimeoutError:
            return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_array(arr) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        try:
            arr = np.asarray(arr)
        except Exception:  # noqa: BLE001 - reported as the type below
            raise TypeError(f"frame must be a numpy array, not {type(arr).__name__}") from None
        if arr.dtype == object:
            raise TypeError(f"frame must be a numeric array, got {type(arr).__name__}")
    return arr


class _FrameClaim:
    """A frame being filled in place; see claim_frame. ``capture_ns`` and ``source_id`` may be changed
    inside the block; ``seq`` is set once it is published."""

    __slots__ = ("_arr", "_ctx", "_lay", "_writer", "capture_ns", "seq", "source_id")

    def __init__(self, writer, lay: _Layout, arr: np.ndarray, ctx, capture_ns: int, source_id: int):
        self._writer = writer
        self._lay = lay
        self._arr = arr
        self._ctx = ctx
        self.capture_ns = capture_ns
        self.source_id = source_id
        self.seq: int | None = None

    @property
    def array(self) -> np.ndarray:
        return self._arr

    def copy_from(self, src) -> None:
        """Copy ``src`` into the claimed slot, refusing (ImageShapeError, naming both) an array whose shape
        or dtype differs from the claim instead of letting numpy broadcast or cast it."""
        arr = self._arr
        if arr is None:
            raise ImageShapeError("this claim was already published or abandoned")
        src = _as_array(src)
        if src.shape != arr.shape or src.dtype != arr.dtype:
            raise ImageShapeError(f"array of shape {src.shape} {src.dtype} does not match the claimed slot "
                                  f"{arr.shape} {arr.dtype}")
        np.copyto(arr, src, casting="no")

    def __enter__(self) -> np.ndarray:
        return self._arr

    def __exit__(self, exc_type, exc, tb) -> None:
        arr, self._arr = self._arr, None
        if arr is None:
            return
        try:
            arr.flags.writeable = False  # a writer's array must not be written after publish
        except ValueError:
            pass
        if exc_type is not None:
            self._writer._abort(self._ctx)
        else:
            self.seq = self._writer._publish(self._ctx, self._lay, self.capture_ns, self.source_id)


# ---------------------------------------------------------------------------------------------------
# ring


class FrameWriter(_WriterBase):
    """Frame producer over a :class:`~edgepipe.ring.RingWriter`: lossless, one frame = one ring record.

    ``max_frame_bytes`` (pixel bytes) is the ring's max_payload minus the header and alignment slack.
    The per-frame path calls the ring's C functions directly on the RingWriter's handle (a few
    microseconds a frame); waiting for room, closing and errors go through the RingWriter itself.
    """

    __slots__ = ("_data", "_seq", "_w", "frames_written", "max_frame_bytes")

    def __init__(self, writer: RingWriter) -> None:
        if not isinstance(writer, RingWriter):
            raise TypeError(f"FrameWriter wraps a RingWriter, not {type(writer).__name__}")
        self._w = writer
        self._data = writer._data  # the ring's data area; it starts page-aligned in every process
        self.max_frame_bytes: int = max(0, writer.max_payload - HDR_SIZE - (ALIGN - 8))
        # seq continues from the ring's record count, so a producer that reopens the ring keeps counting
        self._seq = writer._ring.status().records_written
        self.frames_written = 0

    @property
    def closed(self) -> bool:
        return self._w.closed

    @property
    def ring_name(self) -> str:
        """The ring's shm name, or ``"memfd"`` for an anonymous ring (for messages naming the ring)."""
        return self._w._ring.name or "memfd"

    def _too_large(self, lay: _Layout) -> ImageTooLargeError:
        need = lay.nbytes + HDR_SIZE + ALIGN - 8
        cap = 1 << max(6, (2 * need + 16 - 1).bit_length())
        return ImageTooLargeError(
            f"a {lay.shape} {lay.dtype} frame needs {need} bytes ({lay.nbytes} pixel bytes + {HDR_SIZE}-byte "
            f"header + alignment) but the ring's max_payload is {self._w.max_payload} bytes "
            f"(max_frame_bytes {self.max_frame_bytes}); use a ring of capacity >= {cap}"
        )

    def _claim(self, lay: _Layout, capture_ns: int, source_id: int, timeout_s) -> _FrameClaim:
        size = lay.nbytes + HDR_SIZE + ALIGN - 8
        tns = _timeout_ns(timeout_s)
        w = self._w
        h = w._h
        if h is None:
            raise w._closed_error()
        off = _ring_claim(h, size)
        if off < 0:
            if off == _EAGAIN and tns != 0:
                rc = w._block(lib.ep_ring_writer_wait, (size,), tns)
                if rc < 0:
                    raise w._error(rc, None, timeout_s, size)
                off = _ring_claim(w._handle(), size)
            if off == _EAGAIN:
                raise RingTimeoutError(f"no room for a {size}-byte frame record (timeout_s={timeout_s})")
            if off < 0:
                raise w._error(off, None, timeout_s, size)
        doff = HDR_SIZE + (-(off + HDR_SIZE)) % ALIGN  # pixel address = data area (page-aligned) + off + doff
        try:
            arr = np.ndarray(lay.shape, lay.dtype, buffer=self._data, offset=off + doff)
        except BaseException:
            _ring_abort(h)
            raise
        return _FrameClaim(self, lay, arr, (off, doff), capture_ns, source_id)

    def _publish(self, ctx, lay: _Layout, capture_ns: int, source_id: int) -> int:
        off, doff = ctx
        seq = self._seq + 1
        h = self._w._h
        if h is None:
            raise self._w._closed_error()
        _pack_hdr(self._data, off, MAGIC, VERSION, lay.code, lay.ndim, lay.fmt_code, doff, lay.nbytes, seq,
                  capture_ns, now_ns(), source_id, *lay.shape4, *lay.strides4, 0)
        rc = _ring_commit(h, doff + lay.nbytes, REC_TYPE)
        if rc < 0:
            raise self._w._error(rc, None)
        self._seq = seq
        self.frames_written += 1
        return seq

    def _abort(self, ctx) -> None:
        h = self._w._h
        if h is not None:
            _ring_abort(h)

    def close(self) -> None:
        """Close the ring's producer end (the reader drains what is queued)."""
        self._w.close()

    def __repr__(self) -> str:
        return f"<FrameWriter max_frame_bytes={self.max_frame_bytes} frames_written={self.frames_written}>"


class _FrameRead:
    """``with`` body of a read: yields the Frame, then releases the slot (or keeps it held if arrays
    escaped)."""

    __slots__ = ("_frame", "_owner", "_ref", "_token")

    def __init__(self, owner, frame: Frame, ref: weakref.ref, token) -> None:
        self._owner = owner
        self._frame = frame
        self._ref = ref
        self._token = token

    def __enter__(self) -> Frame:
        return self._frame

    def __exit__(self, *exc) -> None:
        f = self._frame
        if f is None:
            return
        self._frame = None
        f._arr = None
        seq = f.seq
        del f
        self._owner._done(self._ref, self._token, seq)

    def __del__(self) -> None:
        # read_frame() called without `with` (or the block never entered): give the slot back when this
        # object goes, instead of leaving the reader "inside a block" for ever
        if getattr(self, "_frame", None) is not None:
            try:
                self.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - a closed reader at interpreter exit: nothing to give back
                pass


class FrameReader:
    """Frame consumer over a :class:`~edgepipe.ring.RingReader`.

    ``with reader.read_frame() as frame:`` gives a :class:`Frame` whose ``array`` is a read-only view
    of the record in the ring; the record is released when the block ends (see the lifetime rule in the
    module docstring). Like FrameWriter, the per-frame path calls the ring's C functions directly on the
    RingReader's handle; waiting and errors go through the RingReader.
    """

    __slots__ = ("_held", "_io", "_open", "_r", "_ro", "corrupt", "frames_read")

    def __init__(self, reader: RingReader) -> None:
        if not isinstance(reader, RingReader):
            raise TypeError(f"FrameReader wraps a RingReader, not {type(reader).__name__}")
        self._r = reader
        self._io = reader._io
        self._ro = reader._data.toreadonly()  # frames are built over this read-only view of the data area
        self._held: tuple | None = None  # (weakref to its array, seq) of a frame kept past its block
        self._open = False
        self.frames_read = 0
        self.corrupt = 0

    @property
    def closed(self) -> bool:
        return self._r.closed

    @property
    def held_seq(self) -> int | None:
        """seq of a frame still pinned by an array kept past its block, else None."""
        self._reap(collect=False)
        return None if self._held is None else self._held[1]

    def _peek(self) -> int:
        h = self._r._h
        if h is None:
            raise self._r._closed_error()
        n = _ring_peek(h)
        if n < 0 and n != _EAGAIN:
            raise self._r._error(n)
        return n

    def try_read_frame(self) -> _FrameRead | None:
        """The next frame as a context manager, or None at once if the ring is empty. Never blocks.

        Raises:
            ImageHeldError: an array kept from the previous frame still pins it.
            ImageHeaderError: the record is not a valid frame (it is skipped).
            PeerClosedError: empty and the producer is gone.
        """
        self._ready()
        n = self._peek()
        if n < 0:
            return None
        return self._wrap(n)

    def read_frame(self, timeout_s: float | None = None) -> _FrameRead:
        """``with reader.read_frame(timeout_s) as frame:`` waits up to ``timeout_s`` (None: forever).

        Raises:
            RingTimeoutError: nothing arrived in time; plus everything try_read_frame raises.
        """
        self._ready()
        tns = _timeout_ns(timeout_s)
        n = self._peek()
        if n < 0 and tns != 0:
            deadline = None if tns < 0 else time.monotonic_ns() + tns
            while n < 0:
                left = None if deadline is None else max(0, deadline - time.monotonic_ns()) / 1e9
                if left == 0 or not self._r.wait(left):
                    break
                n = self._peek()  # empty again only if the producer published padding alone: wait again
        if n < 0:
            raise RingTimeoutError(f"no frame arrived within timeout_s={timeout_s}")
        return self._wrap(n)

    def frames(self, timeout_s: float | None = None):
        """Iterate ``with``-blocks' worth of frames until the producer closes: ``for f in r.frames():``
        yields each Frame and releases it when the loop body moves on."""
        while True:
            try:
                ctx = self.read_frame(timeout_s)
            except PeerClosedError:
                return
            with ctx as f:
                yield f

    def _ready(self) -> None:
        if self._open:
            raise ImageHeldError("the previous frame is still open (read_frame inside its with block, or its "
                                 "read_frame() result is still referenced without a with): a ring hands out one "
                                 "frame at a time")
        if self._held is not None:
            self._reap(collect=True)
            if self._held is not None:
                raise ImageHeldError(
                    f"an array kept past its with block still pins frame seq {self._held[1]}; a ring can only "
                    f"move past its oldest frame. Drop that array (del it) or keep frame.copy() instead"
                )

    def _reap(self, collect: bool) -> None:
        if self._held is None:
            return
        ref = self._held[0]
        if not _free(ref):
            if not collect:
                return
            gc.collect()  # arrays caught in reference cycles
            if not _free(ref):
                return
        self._held = None
        self._release()

    def _release(self) -> None:
        h = self._r._h
        if h is not None:
            _ring_release(h)

    def _wrap(self, n: int) -> _FrameRead:
        io = self._io
        off, t = io.off, io.type
        try:
            if t != REC_TYPE:
                raise ImageHeaderError(f"ring record of type {t:#x} is not a frame (frame records have type "
                                       f"{REC_TYPE:#x}); skipped", "record type", t)
            if n < HDR_SIZE:
                raise _bad("record length", n, f"shorter than the {HDR_SIZE}-byte header", "ring")
            fields = _unpack_hdr(self._ro, off)
            p, doff = _parse(fields, n, "ring")
        except ImageHeaderError:
            truncated = _truncation(self._r._ring)  # zero pages standing in for a truncated segment
            if truncated:
                raise truncated from None
            self._release()
            self.corrupt += 1
            raise
        flat = np.frombuffer(self._ro, p.dtype, p.nbytes // p.dtype.itemsize, off + doff)
        arr = flat.reshape(p.shape) if len(p.shape) > 1 else flat
        frame = Frame(arr, fields[7], fields[8], fields[9], p.fmt, fields[10])
        self._open = True
        return _FrameRead(self, frame, weakref.ref(flat), None)

    def _done(self, ref: weakref.ref, token, seq: int) -> None:
        self._open = False
        self.frames_read += 1
        if _free(ref):
            self._release()
        else:
            self._held = (ref, seq)

    def close(self) -> None:
        """Close the ring's consumer end. Arrays still alive keep their pages mapped."""
        if self._held is not None:
            self._reap(collect=False)
        self._r.close()
        try:
            self._ro.release()
        except BufferError:
            pass  # a kept array still uses it; the pages stay mapped until it dies

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FrameReader frames_read={self.frames_read} held={self._held is not None}>"


# ---------------------------------------------------------------------------------------------------
# latest-only slot


class LatestStatus:
    """A snapshot of a latest slot's control block (readable from any process that maps it)."""

    __slots__ = ("consumer_closed", "consumer_parks", "consumer_pid", "creator_pid", "delivered", "fresh",
                 "late_wakeups", "max_frame_bytes", "nbuf", "overwritten", "producer_closed", "producer_pid",
                 "published", "region_size", "slot_size", "version")

    def __init__(self, out) -> None:
        for k in self.__slots__:
            setattr(self, k, getattr(out, k))
        self.fresh = bool(self.fresh)
        self.producer_closed = bool(self.producer_closed)
        self.consumer_closed = bool(self.consumer_closed)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return (f"<LatestStatus published={self.published} delivered={self.delivered} "
                f"overwritten={self.overwritten} fresh={self.fresh}>")


class LatestSlot(_Segment):
    """A latest-only frame slot in shared memory: one producer that never waits, one consumer that always
    gets the newest frame (a lock-free triple buffer, ``csrc/ep_latest.c``). Frames the consumer is too
    slow for are overwritten and counted.

    >>> import numpy as np
    >>> with LatestSlot.create(None, max_frame_bytes=64) as slot:
    ...     w, r = slot.writer(), slot.reader()
    ...     for i in range(3):
    ...         _ = w.write_frame(np.full((8, 8), i, np.uint8), pixel_format="GRAY")
    ...     with r.read_frame(timeout_s=1) as f:
    ...         f.seq, int(f.array[0, 0])
    ...     s = slot.status()
    ...     s.published, s.delivered, s.overwritten
    (3, 2)
    (3, 1, 2)
    """

    __slots__ = ()
    _KIND = "latest slot"
    _MEMFD_LABEL = "edgepipe-latest"
    _C_PREFIX = "ep_latest"
    _OPEN_CONTEXT = "opening the {what} of latest slot {where!r}"

    def __init__(self, region: SharedRegion) -> None:
        """Wrap a region that already holds a latest slot (use create/attach/from_fd)."""
        self._region = region
        self._handles: list = []
        _check_latest(region)

    @classmethod
    def create(cls, name: str | None, max_frame_bytes: int, buffers: int = 4) -> LatestSlot:
        """Create a slot for frames of up to ``max_frame_bytes`` pixel bytes.

        Args:
            name: ``/dev/shm/edgepipe.<name>``, or None for an anonymous memfd shared through ``fd``.
            max_frame_bytes: the largest frame's pixel bytes (e.g. ``1920 * 1080 * 3``).
            buffers: 3 for a plain triple buffer; 4 (default) also lets the reader keep one frame's
                array past its ``with`` block while it reads on. At most 8.
        """
        if not isinstance(max_frame_bytes, int) or isinstance(max_frame_bytes, bool):
            raise TypeError(f"max_frame_bytes must be int, not {type(max_frame_bytes).__name__}")
        if not 1 <= max_frame_bytes <= lib.EP_LATEST_MAX_FRAME:
            raise ValueError(f"max_frame_bytes must be in 1..{lib.EP_LATEST_MAX_FRAME}, got {max_frame_bytes}")
        if not isinstance(buffers, int) or not lib.EP_LATEST_MIN_BUFS <= buffers <= lib.EP_LATEST_MAX_BUFS:
            raise ValueError(f"buffers must be an int in {lib.EP_LATEST_MIN_BUFS}..{lib.EP_LATEST_MAX_BUFS}, "
                             f"got {buffers!r}")
        return cls._create_region(
            name, lib.ep_latest_region_size(max_frame_bytes, buffers),
            lambda r: check(lib.ep_latest_init(r.address, r.size, max_frame_bytes, buffers),
                            f"max_frame_bytes {max_frame_bytes}, buffers {buffers}"))

    @classmethod
    def attach(cls, name: str, wait_s: float = 0.0, *, allow_uids: Iterable[int] = ()) -> LatestSlot:
        """Attach a named slot, waiting up to ``wait_s`` for its creator. Owner checks and ``allow_uids``
        as ``Ring.attach``."""
        return cls._attach_named(name, wait_s, allow_uids)

    @classmethod
    def from_fd(cls, fd: int) -> LatestSlot:
        """Attach a slot from a segment fd (inherited, or received over SCM_RIGHTS)."""
        return cls._from_segment_fd(fd)

    def writer(self) -> LatestWriter:
        """Open the producer end in this process (RingBusyError if a live process holds it)."""
        w = LatestWriter(self)
        self._handles.append(w)
        return w

    def reader(self, spin_ns: int = 25_000) -> LatestReader:
        """Open the consumer end in this process. A blocking read spins ``spin_ns`` before it parks."""
        r = LatestReader(self, spin_ns)
        self._handles.append(r)
        return r

    @property
    def max_frame_bytes(self) -> int:
        return self.status().max_frame_bytes

    def status(self) -> LatestStatus:
        """Counters (published, delivered, overwritten), buffer count and each end's pid."""
        out = ffi.new("struct ep_latest_status *")
        try:
            buf = ffi.from_buffer(self._region.buffer())
        except ValueError:
            raise RingClosedError(f"latest slot {self.name or 'memfd'!r} is closed") from None
        self._region.check_size()  # a truncated segment is an error here, not a SIGBUS
        lib.ep_latest_status(buf, len(buf), out)
        return LatestStatus(out)

    def stats(self) -> dict[str, Any]:
        """status() as a dict."""
        return self.status().as_dict()

    def __repr__(self) -> str:
        if self.closed:
            return f"<LatestSlot {self.name or 'memfd'!r} closed>"
        s = self.status()
        return (f"<LatestSlot {self.name or 'memfd'!r} max_frame_bytes={s.max_frame_bytes} buffers={s.nbuf} "
                f"published={s.published} delivered={s.delivered} overwritten={s.overwritten}>")


def _check_latest(region: SharedRegion) -> None:
    where = region.name or "memfd"
    if region.size < lib.EP_LATEST_CTL_SIZE:
        raise RingCorruptError(f"segment {where!r} is {region.size} bytes: too small to be a latest slot")
    rc = lib.ep_latest_check(region.address, region.size)
    if rc == 0:
        return
    out = ffi.new("struct ep_latest_status *")
    lib.ep_latest_status(region.address, region.size, out)
    if rc == -errno.EPROTO:
        raise LayoutVersionError(f"segment {where!r} has latest-slot layout version {out.version}; "
                                 f"this edgepipe reads version {lib.EP_LATEST_VERSION}")
    if out.magic != lib.EP_LATEST_MAGIC:
        raise RingCorruptError(f"segment {where!r} is not an edgepipe latest slot (magic {out.magic:#010x}, "
                               f"expected {lib.EP_LATEST_MAGIC:#010x})")
    raise RingCorruptError(f"segment {where!r} holds a latest slot of {out.nbuf} buffers x {out.slot_size} "
                           f"bytes but is {region.size} bytes (truncated?)")


class LatestWriter(_WriterBase):
    """Producer end of a :class:`LatestSlot`: the same claim_frame / write_frame API as FrameWriter, but it
    never waits: publishing replaces a frame the consumer has not taken yet (counted as overwritten)."""

    __slots__ = ("_buf", "_h", "_inflight", "_seq", "_slot", "frames_written", "max_frame_bytes", "overwritten")

    def __init__(self, slot: LatestSlot) -> None:
        self._slot = slot
        self._h = _open_end(lib.ep_latest_writer_open, slot, "writer")
        self._inflight = 0  # C calls in progress on _h (see close)
        self._buf = slot.region.buffer()
        s = slot.status()
        self.max_frame_bytes: int = s.max_frame_bytes
        self._seq = s.published
        self.frames_written = 0
        self.overwritten = 0

    @property
    def closed(self) -> bool:
        return self._h is None

    def _too_large(self, lay: _Layout) -> ImageTooLargeError:
        return ImageTooLargeError(
            f"a {lay.shape} {lay.dtype} frame has {lay.nbytes} pixel bytes but the latest slot "
            f"{self._slot.name or 'memfd'!r} takes at most max_frame_bytes {self.max_frame_bytes}"
        )

    def _claim(self, lay: _Layout, capture_ns: int, source_id: int, timeout_s) -> _FrameClaim:
        if timeout_s is not None:
            _timeout_ns(timeout_s)  # validated for a uniform API; a latest slot never waits
        h = self._h
        if h is None:
            raise RingClosedError(f"LatestWriter on {self._slot.name or 'memfd'!r} is closed")
        self._inflight += 1  # see close
        try:
            off = lib.ep_latest_writer_slot(h)
        finally:
            self._inflight -= 1
        arr = np.ndarray(lay.shape, lay.dtype, buffer=self._buf, offset=off + HDR_SIZE)
        return _FrameClaim(self, lay, arr, off, capture_ns, source_id)

    def _publish(self, off: int, lay: _Layout, capture_ns: int, source_id: int) -> int:
        h = self._h
        if h is None:
            raise RingClosedError(f"LatestWriter on {self._slot.name or 'memfd'!r} is closed")
        seq = self._seq + 1
        _pack_hdr(self._buf, off, MAGIC, VERSION, lay.code, lay.ndim, lay.fmt_code, HDR_SIZE, lay.nbytes, seq,
                  capture_ns, now_ns(), source_id, *lay.shape4, *lay.strides4, 0)
        self._inflight += 1  # see close
        try:
            rc = lib.ep_latest_publish(h)
        finally:
            self._inflight -= 1
        if rc < 0:
            if rc == -errno.EBADMSG:
                truncated = _truncation(self._slot)
                if truncated:
                    raise truncated
            check(rc, "publishing to the latest slot")
        self.overwritten += rc
        self._seq = seq
        self.frames_written += 1
        return seq

    def _abort(self, off) -> None:
        pass  # the buffer stays ours; the next claim overwrites it

    def close(self) -> None:
        """Close the producer end: the consumer takes what is fresh, then gets PeerClosedError."""
        # As in LatestReader.close: _h goes first, then a C call still running on another thread (cffi
        # releases the GIL; a publish never waits, so this is short) returns before the handle is freed.
        h, self._h = self._h, None
        if h is None:
            return
        while self._inflight:
            time.sleep(0.0002)
        lib.ep_latest_writer_close(h)
        try:
            self._buf.release()
        except BufferError:
            pass  # an array from a claim outlived its block: the pages stay mapped until it dies
        self._slot._forget(self)

    def __repr__(self) -> str:
        return f"<LatestWriter frames_written={self.frames_written} overwritten={self.overwritten}>"


class LatestReader:
    """Consumer end of a :class:`LatestSlot`: the same read_frame / try_read_frame API as FrameReader.
    ``read_frame`` waits for a frame newer than the last one read and always returns the newest."""

    __slots__ = ("_buf", "_deferred", "_h", "_held", "_inflight", "_open", "_slot", "_slot_size", "frames_read")

    def __init__(self, slot: LatestSlot, spin_ns: int = 25_000) -> None:
        self._slot = slot
        self._h = _open_end(lib.ep_latest_reader_open, slot, "reader")
        self._inflight = 0  # read calls in progress (see try_read_frame)
        self._deferred = None  # a handle close() left for the interrupted read to free (see close)
        check(lib.ep_latest_reader_set_spin(self._h, spin_ns), f"spin_ns {spin_ns}")
        self._buf = slot.region.buffer()
        self._slot_size = slot.status().slot_size
        self._held: dict[int, tuple] = {}  # buffer index -> (weakref, seq) of frames kept past their block
        self._open: int | None = None      # buffer index of the frame inside a with block
        self.frames_read = 0

    @property
    def closed(self) -> bool:
        return self._h is None

    @property
    def held_seqs(self) -> list[int]:
        """seqs of frames still pinned by arrays kept past their blocks."""
        self._reap(False)
        return sorted(s for _, s in self._held.values())

    def _handle(self):
        h = self._h
        if h is None:
            raise RingClosedError(f"LatestReader on {self._slot.name or 'memfd'!r} is closed")
        return h

    def _give(self, h) -> int:
        """A buffer we own and nobody uses, to hand back in exchange for the newest frame."""
        if self._open is not None:
            raise ImageHeldError("read_frame inside another frame's with block: close that block first")
        owned = lib.ep_latest_reader_owned(h)
        for collect in (False, True):
            if self._held:
                self._reap(collect)
            for i in range(lib.EP_LATEST_MAX_BUFS):
                if owned >> i & 1 and i not in self._held:
                    return i
        seqs = sorted(s for _, s in self._held.values())
        raise ImageHeldError(
            f"arrays kept past their with blocks still pin frames {seqs}, every buffer this reader could give "
            f"back; drop them (del) or keep frame.copy() instead, or create the slot with more buffers"
        )

    def _reap(self, collect: bool) -> None:
        if collect:
            gc.collect()
        for i, (ref, _) in list(self._held.items()):
            if _free(ref):
                del self._held[i]

    def try_read_frame(self) -> _FrameRead | None:
        """The newest frame as a context manager, or None at once if nothing new was published.

        Raises:
            PeerClosedError: nothing new and the producer closed or died.
            ImageHeldError: kept arrays pin every buffer the reader could give back.
        """
        # _inflight spans every C call on the handle, so a close() from another thread waits instead of
        # freeing the reader under a running call (cffi releases the GIL during each call).
        self._inflight += 1
        try:
            return self._try_read_frame()
        finally:
            self._leave()

    def _try_read_frame(self) -> _FrameRead | None:
        h = self._handle()
        idx = lib.ep_latest_try_take(h, self._give(h))
        if idx >= 0:
            return self._wrap(idx)
        if idx == _EAGAIN:
            return None
        raise self._error(idx)

    def read_frame(self, timeout_s: float | None = None) -> _FrameRead:
        """``with reader.read_frame(timeout_s) as frame:`` waits up to ``timeout_s`` (None: forever) for
        a frame newer than the last one read.

        Raises:
            RingTimeoutError: nothing new in time; plus everything try_read_frame raises.
        """
        self._inflight += 1  # see try_read_frame
        try:
            return self._read_frame(timeout_s)
        finally:
            self._leave()

    def _leave(self) -> None:
        self._inflight -= 1
        if not self._inflight and self._deferred is not None:
            h, self._deferred = self._deferred, None
            lib.ep_latest_reader_close(h)

    def _read_frame(self, timeout_s: float | None) -> _FrameRead:
        h = self._handle()
        give = self._give(h)
        idx = lib.ep_latest_try_take(h, give)
        if idx >= 0:
            return self._wrap(idx)
        if idx != _EAGAIN:
            raise self._error(idx)
        tns = _timeout_ns(timeout_s)
        deadline = -1 if tns < 0 else time.monotonic_ns() + tns
        while True:
            left = _SLICE_NS if deadline < 0 else min(_SLICE_NS, max(0, deadline - time.monotonic_ns()))
            rc = lib.ep_latest_wait(self._handle(), left)
            if rc == 0 or rc == _EPIPE:
                idx = lib.ep_latest_try_take(self._handle(), give)
                if idx >= 0:
                    return self._wrap(idx)
                if idx != _EAGAIN:
                    raise self._error(idx)
            elif rc == _ETIMEDOUT:
                if deadline >= 0 and time.monotonic_ns() >= deadline:
                    raise RingTimeoutError(f"no new frame in latest slot {self._slot.name or 'memfd'!r} "
                                           f"within timeout_s={timeout_s}")
            elif rc != _EINTR:
                raise self._error(rc)

    def frames(self, timeout_s: float | None = None):
        """Iterate the newest frames until the producer closes (see FrameReader.frames)."""
        while True:
            try:
                ctx = self.read_frame(timeout_s)
            except PeerClosedError:
                return
            with ctx as f:
                yield f

    def _wrap(self, idx: int) -> _FrameRead:
        off = lib.EP_LATEST_CTL_SIZE + idx * self._slot_size
        view = self._buf[off:off + self._slot_size].toreadonly()
        try:
            frame, ref = _new_frame(view, 0, self._slot_size, f"latest slot buffer {idx}")
        except ImageHeaderError:
            # zero pages in place of a truncated segment's (the SIGBUS guard) read as a bad header
            truncated = _truncation(self._slot)
            if truncated:
                raise truncated from None
            raise
        self._open = idx
        return _FrameRead(self, frame, ref, idx)

    def _done(self, ref: weakref.ref, idx: int, seq: int) -> None:
        self._open = None
        self.frames_read += 1
        if not _free(ref):
            self._held[idx] = (ref, seq)

    def _error(self, rc: int) -> Exception:
        name = self._slot.name or "memfd"
        if rc == _EPIPE:
            s = self._slot.status()
            how = "closed" if s.producer_closed else "died"
            return PeerClosedError(f"the producer of latest slot {name!r} (pid {s.producer_pid}) {how} "
                                   f"and no new frame is left")
        if rc == -errno.ECANCELED or rc == -errno.EBADF:
            return RingClosedError(f"LatestReader on {name!r} is closed")
        if rc == -errno.EBADMSG:
            return _truncation(self._slot) or RingCorruptError(
                f"latest slot {name!r}: the exchange word holds a buffer index out of range")
        try:
            check(rc)
        except Exception as e:  # noqa: BLE001 - returned, not swallowed
            return e
        raise AssertionError(rc)  # pragma: no cover

    def close(self) -> None:
        """Close the consumer end. Arrays still alive keep their pages mapped."""
        # _h goes first, then _inflight is read (the reads do the opposite): under the GIL either a read
        # sees _h None and raises RingClosedError, or we see it in flight, cancel its wait and let its C
        # call return before the handle is freed. A close from a signal handler that interrupted this
        # thread's own read finds that read on its own stack (between bytecodes, not inside C): waiting for
        # it would wait forever, so the read frees the handle as it unwinds (_leave) and raises
        # RingClosedError at its next use of the handle, as RingReader does.
        h, self._h = self._h, None
        if h is None:
            return
        if self._inflight:
            if self._in_own_read():
                self._deferred = h
                self._slot._forget(self)
                return
            lib.ep_latest_reader_cancel(h)
            while self._inflight:
                time.sleep(0.0002)
        lib.ep_latest_reader_close(h)
        self._slot._forget(self)

    def _in_own_read(self) -> bool:
        f = sys._getframe(2)
        while f is not None:
            if f.f_code in _LATEST_READ_CODES and f.f_locals.get("self") is self:
                return True
            f = f.f_back
        return False

    def __enter__(self) -> LatestReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LatestReader frames_read={self.frames_read} held={sorted(self._held)}>"


_LATEST_READ_CODES = frozenset(
    f.__code__ for f in (LatestReader.read_frame, LatestReader._read_frame, LatestReader.try_read_frame,
                         LatestReader._try_read_frame)
)
