"""What frame rings (``edgepipe.frames``) and the latest slot (``edgepipe.latest``) share: the 128-byte frame
header (``struct ep_frame_hdr`` in ``csrc/ep_image.h``), pixel layouts, :class:`Frame`, and the writer's
claim/publish protocol with its lifetime rule (a slot stays held until the last array over it dies; see
``edgepipe.frames``). Private to those two modules.

>>> lay = layout((4, 6, 3), np.uint8, "BGR")
>>> lay.nbytes, lay.ndim
(72, 3)
"""

from __future__ import annotations

import math
import struct
import sys
import weakref

import numpy as np

from edgepipe._ffi import ffi, lib
from edgepipe._segment import refuse_pickle
from edgepipe.clock import now_ns
from edgepipe.errors import (
    ImageHeaderError,
    ImageReleasedError,
    ImageShapeError,
)

__all__: list[str] = []  # shared by edgepipe.frames and edgepipe.latest; Frame is public through them

PIXEL_FORMATS = ("BGR", "RGB", "GRAY", "NV12", "I420", "RAW")
PIX_CODE = {name: i for i, name in enumerate(PIXEL_FORMATS)}

HDR_SIZE = lib.EP_IMAGE_HDR_SIZE
ALIGN = lib.EP_IMAGE_ALIGN
REC_TYPE = lib.EP_IMAGE_REC_TYPE
MAGIC = lib.EP_IMAGE_MAGIC
VERSION = lib.EP_IMAGE_VERSION
MAX_NDIM = lib.EP_IMAGE_MAX_NDIM

# struct ep_frame_hdr, field for field (checked against the compiled struct just below)
HDR = struct.Struct("<IHBBIIQQqqQ4Q4qQ")
pack_hdr = HDR.pack_into
unpack_hdr = HDR.unpack_from
assert HDR.size == HDR_SIZE == ffi.sizeof("struct ep_frame_hdr")
for _f, _off in (("pixel_format", 8), ("data_off", 12), ("nbytes", 16), ("seq", 24), ("capture_ns", 32),
                 ("publish_ns", 40), ("source_id", 48), ("shape", 56), ("strides", 88), ("reserved", 120)):
    assert ffi.offsetof("struct ep_frame_hdr", _f) == _off, _f

DTYPES = {
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
DTYPE_CODE = {dt: code for code, dt in DTYPES.items()}
if sys.byteorder != "little":  # pragma: no cover - the header says little-endian
    raise ImportError("edgepipe.frames needs a little-endian machine")



# ---------------------------------------------------------------------------------------------------
# layouts: shape + dtype + pixel format -> header fields (cached; a stream repeats one layout)


class Layout:
    __slots__ = ("code", "dtype", "fmt", "fmt_code", "nbytes", "ndim", "shape", "shape4", "strides4")

    def __init__(self, shape: tuple, dtype: np.dtype, fmt: str) -> None:
        self.shape = shape
        self.dtype = dtype
        self.fmt = fmt
        self.fmt_code = PIX_CODE[fmt]
        self.code = DTYPE_CODE[dtype]
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


_layouts: dict[tuple, Layout] = {}


def layout(shape, dtype, pixel_format) -> Layout:
    key = (shape, dtype, pixel_format)
    try:
        lay = _layouts.get(key)
    except TypeError:  # an unhashable shape (a list): built every time
        return make_layout(shape, dtype, pixel_format)
    if lay is None:
        lay = make_layout(shape, dtype, pixel_format)
        if len(_layouts) > 256:
            _layouts.clear()
        # Under the key as given: ``np.uint8`` (the default dtype) hashes unlike ``np.dtype("uint8")``.
        _layouts[key] = lay
    return lay


def make_layout(shape, dtype, pixel_format) -> Layout:
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
    if dt.byteorder == ">" or dt.newbyteorder("<") not in DTYPE_CODE:
        names = ", ".join(str(d) for d in DTYPES.values())
        raise ImageShapeError(f"frames carry native little-endian {names}; got dtype {dt.str!r}")
    dt = dt.newbyteorder("<") if dt.byteorder == "=" else dt
    dt = DTYPES[DTYPE_CODE[dt]]
    if pixel_format not in PIX_CODE:
        raise ImageShapeError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
    check_pixel_format(shape, dt, pixel_format)
    return Layout(shape, dt, pixel_format)


def check_pixel_format(shape: tuple, dt: np.dtype, fmt: str) -> None:
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


class Parsed:
    __slots__ = ("dtype", "fmt", "nbytes", "shape")


_parsed_cache: dict[tuple, Parsed] = {}


def bad_field(field: str, value, why: str, where: str) -> ImageHeaderError:
    return ImageHeaderError(f"corrupt frame header in {where}: {field} = {value!r} ({why})", field, value)


def parse_header(fields: tuple, avail: int, where: str) -> tuple[Parsed, int]:
    """Validate a header tuple against ``avail`` bytes after the header start; return the layout and
    data_off. Every check names the field and the value found."""
    magic, version, code, ndim, fmt, doff, nbytes = fields[:7]
    key = fields[2:5] + fields[6:7] + fields[11:19]  # dtype, ndim, fmt, nbytes, shape, strides
    p = _parsed_cache.get(key)
    if p is None:
        if magic != MAGIC:
            raise bad_field("magic", hex(magic), f"expected {MAGIC:#x}", where)
        if version != VERSION:
            raise bad_field("version", version, f"this edgepipe reads frame layout version {VERSION}", where)
        p = parse_layout(fields, where)
        if len(_parsed_cache) > 256:
            _parsed_cache.clear()
        _parsed_cache[key] = p
    elif magic != MAGIC or version != VERSION:
        raise bad_field("magic" if magic != MAGIC else "version", hex(magic) if magic != MAGIC else version,
                   f"expected magic {MAGIC:#x} version {VERSION}", where)
    if doff < HDR_SIZE or doff > avail or nbytes > avail - doff:
        raise bad_field("data_off", doff, f"pixels of {nbytes} bytes must fit between the {HDR_SIZE}-byte header "
                   f"and the end of the {avail}-byte record", where)
    return p, doff


def parse_layout(fields: tuple, where: str) -> Parsed:
    code, ndim, fmt, _doff, nbytes = fields[2:7]
    shape4, strides4 = fields[11:15], fields[15:19]
    if code not in DTYPES:
        raise bad_field("dtype", code, f"known codes are {sorted(DTYPES)}", where)
    if not 1 <= ndim <= MAX_NDIM:
        raise bad_field("ndim", ndim, f"must be 1..{MAX_NDIM}", where)
    if fmt >= len(PIXEL_FORMATS):
        raise bad_field("pixel_format", fmt, f"known formats are 0..{len(PIXEL_FORMATS) - 1} {PIXEL_FORMATS}", where)
    dt = DTYPES[code]
    shape = tuple(shape4[:ndim])
    if any(n == 0 for n in shape) or any(shape4[ndim:]) or any(strides4[ndim:]):
        raise bad_field("shape", shape4, f"ndim {ndim}: the first {ndim} dimensions must be >= 1, the rest 0", where)
    if math.prod(shape) * dt.itemsize != nbytes:
        raise bad_field("nbytes", nbytes, f"shape {shape} of {dt} holds {math.prod(shape) * dt.itemsize} bytes", where)
    want = Layout(shape, dt, "RAW").strides4
    if tuple(strides4) != want:
        raise bad_field("strides", tuple(strides4[:ndim]), f"expected C-contiguous {want[:ndim]}", where)
    p = Parsed()
    p.dtype, p.shape, p.fmt, p.nbytes = dt, shape, PIXEL_FORMATS[fmt], nbytes
    return p


# ---------------------------------------------------------------------------------------------------
# Frame


class Frame:
    """One frame being read: a read-only ndarray over the slot plus its header fields.

    Valid until it is released: at the end of its ``with`` block, or earlier by :meth:`release`. After
    that ``array`` raises ImageReleasedError. Keep ``copy()`` to hold on to the pixels (see the module
    docstring for arrays kept past the release).
    """

    __slots__ = ("_arr", "_owner", "_ref", "_token", "capture_ns", "dtype", "pixel_format", "publish_ns", "seq",
                 "shape", "source_id")

    def __init__(self, arr, seq, capture_ns, publish_ns, pixel_format, source_id):
        self._arr = arr
        self._owner = None  # the reader to give the slot back to (set by FrameRead), None once released
        self._ref = None
        self._token = None
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
                f"frame seq {self.seq} was released (its with block ended or release() was called); "
                f"use frame.copy() before that"
            )
        return a

    @property
    def released(self) -> bool:
        """True once the frame was given back (``release()`` or the end of its ``with`` block)."""
        return self._arr is None

    def release(self) -> None:
        """Give the frame's slot back now, without leaving its ``with`` block (which then does nothing).

        Safe while views of the pixels are alive, as at the end of a ``with`` block: ``array`` raises
        ImageReleasedError from now on, and an array (or view) kept from before stays valid and keeps its
        slot held until it dies (see the module docstring). The reader may read its next frame at once.
        Idempotent.

        >>> import numpy as np
        >>> from edgepipe import FrameReader, FrameWriter, Ring
        >>> with Ring.create(capacity=1 << 12) as ring:
        ...     w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
        ...     for i in (1, 2):
        ...         _ = w.write_frame(np.full((4, 4), i, np.uint8), pixel_format="GRAY")
        ...     with r.read_frame(timeout_s=1) as f:
        ...         first = int(f.array.sum())
        ...         f.release()  # the next read needs no second block around it
        ...         with r.read_frame(timeout_s=1) as g:
        ...             second = int(g.array.sum())
        ...     first, second, f.released
        (16, 32, True)
        """
        owner = self._owner
        if owner is None:
            self._arr = None
            return
        self._owner = None
        self._arr = None  # before _done: the reader sees the slot free unless the caller's views keep it
        ref, self._ref = self._ref, None
        owner._done(ref, self._token, self.seq)

    def copy(self) -> np.ndarray:
        """An owned, writable copy of the pixels."""
        return self.array.copy()

    @property
    def latency_ns(self) -> int:
        """Nanoseconds from publish to now (the handoff so far)."""
        return now_ns() - self.publish_ns

    def __repr__(self) -> str:
        state = "" if self._arr is not None else " released"
        return (f"<Frame seq={self.seq} {self.pixel_format} {self.shape} {self.dtype} "
                f"source={self.source_id}{state}>")


def new_frame(view: memoryview, base_off: int, avail: int, where: str) -> tuple[Frame, weakref.ref]:
    """Parse the header at ``base_off`` and build the frame's array over ``view``. Returns the Frame and
    a weak reference to the array every view of the pixels leads back to: numpy collapses ``.base``
    chains to the 1-D array over our buffer, so that array dies exactly when the last view of the frame
    does (a memoryview's own export count cannot tell: numpy takes its export from the memoryview's
    underlying buffer, not from the memoryview)."""
    fields = unpack_hdr(view, base_off)
    p, doff = parse_header(fields, avail, where)
    flat = np.frombuffer(view, p.dtype, p.nbytes // p.dtype.itemsize, base_off + doff)
    arr = flat.reshape(p.shape) if len(p.shape) > 1 else flat
    return Frame(arr, fields[7], fields[8], fields[9], p.fmt, fields[10]), weakref.ref(flat)


def free(ref: weakref.ref) -> bool:
    """True once no array over the frame's slot is left (the slot may go back to the producer)."""
    return ref() is None


# ---------------------------------------------------------------------------------------------------
# writing (shared by the ring and the latest slot)


class WriterBase:
    """claim_frame / write_frame and their try_ forms over the ``_claim(lay, capture_ns, source_id, timeout_s)``
    and ``_try_claim(lay, capture_ns, source_id)`` (None when there is no room) primitives."""

    __slots__ = ()

    def claim_frame(self, shape, dtype=np.uint8, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                    source_id: int = 0, timeout_s: float | None = None) -> FrameClaim:
        """``with writer.claim_frame(shape, dtype) as arr:`` fills a frame in place in shared memory.

        A clean exit publishes it (header stamped with ``publish_ns`` just before), an exception abandons
        it. Set ``claim.capture_ns`` inside the block (``claim = w.claim_frame(...)``; ``with claim as
        arr:``) to stamp capture time after the fact, e.g. right after a camera grab; by default it is the
        time of this call.

        Raises:
            ImageShapeError: bad shape, dtype or pixel format. ImageTooLargeError: over max_frame_bytes.
            RingTimeoutError: (ring) no room within ``timeout_s``.
        """
        lay = self._layout(shape, dtype, pixel_format, source_id)
        return self._claim(lay, now_ns() if capture_ns is None else capture_ns, source_id, timeout_s)

    def try_claim_frame(self, shape, dtype=np.uint8, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                        source_id: int = 0) -> FrameClaim | None:
        """Like claim_frame, but return None at once if there is no room: never blocks, and raises nothing
        for "not now" (a latest slot always has room)."""
        lay = self._layout(shape, dtype, pixel_format, source_id)
        return self._try_claim(lay, now_ns() if capture_ns is None else capture_ns, source_id)

    def _layout(self, shape, dtype, pixel_format, source_id) -> Layout:
        lay = layout(shape, dtype, pixel_format)
        if lay.nbytes > self.max_frame_bytes:
            raise self._too_large(lay)
        if not isinstance(source_id, int) or not 0 <= source_id < 1 << 64:
            raise ValueError(f"source_id must be an int in 0..2**64-1, got {source_id!r}")
        return lay

    def write_frame(self, arr, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                    source_id: int = 0, timeout_s: float | None = None) -> int:
        """Copy ``arr`` (any numpy array of a supported dtype) into one frame; return its seq."""
        arr = as_array(arr)
        c = self.claim_frame(arr.shape, arr.dtype, pixel_format=pixel_format, capture_ns=capture_ns,
                             source_id=source_id, timeout_s=timeout_s)
        with c as dst:
            np.copyto(dst, arr, casting="no")
        return c.seq

    def try_write_frame(self, arr, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                        source_id: int = 0) -> int | None:
        """Like write_frame, but return None at once if there is no room. Never blocks, and a full ring
        costs one C call that says so: nothing is raised (or caught) for "not now"."""
        arr = as_array(arr)
        c = self.try_claim_frame(arr.shape, arr.dtype, pixel_format=pixel_format, capture_ns=capture_ns,
                                 source_id=source_id)
        if c is None:
            return None
        with c as dst:
            np.copyto(dst, arr, casting="no")
        return c.seq

    def __reduce_ex__(self, protocol):
        raise refuse_pickle(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_array(arr) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        try:
            arr = np.asarray(arr)
        except Exception:  # noqa: BLE001 - reported as the type below
            raise TypeError(f"frame must be a numpy array, not {type(arr).__name__}") from None
        if arr.dtype == object:
            raise TypeError(f"frame must be a numeric array, got {type(arr).__name__}")
    return arr


class FrameClaim:
    """A frame being filled in place; see claim_frame. ``capture_ns`` and ``source_id`` may be changed
    inside the block; ``seq`` is set once it is published."""

    __slots__ = ("_arr", "_ctx", "_lay", "_writer", "capture_ns", "seq", "source_id")

    def __init__(self, writer, lay: Layout, arr: np.ndarray, ctx, capture_ns: int, source_id: int):
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
        src = as_array(src)
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


class FrameRead:
    """``with`` body of a read: yields the Frame, then releases it (:meth:`Frame.release`: the slot goes back,
    or stays held if arrays escaped)."""

    __slots__ = ("_frame",)

    def __init__(self, owner, frame: Frame, ref: weakref.ref, token) -> None:
        frame._owner, frame._ref, frame._token = owner, ref, token
        self._frame = frame

    def __enter__(self) -> Frame:
        return self._frame

    def __exit__(self, *exc) -> None:
        f = self._frame
        if f is None:
            return
        self._frame = None
        f.release()

    def __del__(self) -> None:
        # read_frame() called without `with` (or the block never entered): give the slot back when this
        # object goes, instead of leaving the reader "inside a block" for ever
        if getattr(self, "_frame", None) is not None:
            try:
                self.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - a closed reader at interpreter exit: nothing to give back
                pass
