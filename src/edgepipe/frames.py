"""Numpy frames in shared memory: :class:`FrameWriter` / :class:`FrameReader` over a lossless ring, (and, in
``edgepipe.latest``, :class:`~edgepipe.latest.LatestSlot`: a lock-free triple buffer, ``csrc/ep_latest.c``, for
consumers that only want the newest).

Every frame is a fixed 128-byte header (``struct ep_frame_hdr`` in ``csrc/ep_image.h``: layout version,
dtype code, ndim <= 4, shape, strides, seq, capture and publish stamps from :func:`edgepipe.clock.now_ns`,
source id, pixel format) followed by the pixels, 64-byte aligned. Writers fill the pixels in place
(``claim_frame``), so a decoder can write straight into shared memory; readers get a read-only ndarray
over the same bytes. Neither side copies.

Lifetime rule (both kinds of channel): **a slot stays held until the last array over it dies.** At the end
of a reader's ``with`` block (or at ``frame.release()``, which does the same inside it) the frame drops its
own references; if no array over the slot is left (the
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

import gc
import time
import weakref

import numpy as np

from edgepipe._args import timeout_ns
from edgepipe._image import (
    ALIGN,
    HDR_SIZE,
    MAGIC,
    PIXEL_FORMATS,
    REC_TYPE,
    VERSION,
    Frame,
    FrameClaim,
    FrameRead,
    Layout,
    WriterBase,
    bad_field,
    free,
    pack_hdr,
    parse_header,
    unpack_hdr,
)
from edgepipe._segment import refuse_pickle, truncation
from edgepipe.clock import now_ns
from edgepipe.errors import (
    ImageHeaderError,
    ImageHeldError,
    ImageTooLargeError,
    PeerClosedError,
    RingTimeoutError,
)
from edgepipe.ring import RingReader, RingWriter

__all__ = ["PIXEL_FORMATS", "Frame", "FrameReader", "FrameWriter"]

# ---------------------------------------------------------------------------------------------------
# ring


class FrameWriter(WriterBase):
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
        self._data = writer.data  # the ring's data area; it starts page-aligned in every process
        self.max_frame_bytes: int = max(0, writer.max_payload - HDR_SIZE - (ALIGN - 8))
        # seq continues from the ring's record count, so a producer that reopens the ring keeps counting
        self._seq = writer.segment.status().records_written
        self.frames_written = 0

    @property
    def segment(self):
        """The Ring under this frame channel."""
        return self._w.segment

    @property
    def closed(self) -> bool:
        return self._w.closed

    @property
    def ring_name(self) -> str:
        """The ring's shm name, or ``"memfd"`` for an anonymous ring (for messages naming the ring)."""
        return self._w.segment.name or "memfd"

    def _too_large(self, lay: Layout) -> ImageTooLargeError:
        need = lay.nbytes + HDR_SIZE + ALIGN - 8
        cap = 1 << max(6, (2 * need + 16 - 1).bit_length())
        return ImageTooLargeError(
            f"a {lay.shape} {lay.dtype} frame needs {need} bytes ({lay.nbytes} pixel bytes + {HDR_SIZE}-byte "
            f"header + alignment) but the ring's max_payload is {self._w.max_payload} bytes "
            f"(max_frame_bytes {self.max_frame_bytes}); use a ring of capacity >= {cap}"
        )

    def _claim(self, lay: Layout, capture_ns: int, source_id: int, timeout_s) -> FrameClaim:
        off = self._w.claim_offset(lay.nbytes + HDR_SIZE + ALIGN - 8, timeout_s, "frame record")
        return self._claim_at(off, lay, capture_ns, source_id)

    def _try_claim(self, lay: Layout, capture_ns: int, source_id: int) -> FrameClaim | None:
        off = self._w.try_claim_offset(lay.nbytes + HDR_SIZE + ALIGN - 8)
        return None if off < 0 else self._claim_at(off, lay, capture_ns, source_id)

    def _claim_at(self, off: int, lay: Layout, capture_ns: int, source_id: int) -> FrameClaim:
        doff = HDR_SIZE + (-(off + HDR_SIZE)) % ALIGN  # pixel address = data area (page-aligned) + off + doff
        try:
            arr = np.ndarray(lay.shape, lay.dtype, buffer=self._data, offset=off + doff)
        except BaseException:
            self._w.abort_offset()
            raise
        return FrameClaim(self, lay, arr, (off, doff), capture_ns, source_id)

    def _publish(self, ctx, lay: Layout, capture_ns: int, source_id: int) -> int:
        off, doff = ctx
        seq = self._seq + 1
        if self._w.closed or self._w.leased:
            self._w.commit_offset(0, REC_TYPE)  # raises the end's own closed (or leased) error
        pack_hdr(self._data, off, MAGIC, VERSION, lay.code, lay.ndim, lay.fmt_code, doff, lay.nbytes, seq,
                  capture_ns, now_ns(), source_id, *lay.shape4, *lay.strides4, 0)
        self._w.commit_offset(doff + lay.nbytes, REC_TYPE)
        self._seq = seq
        self.frames_written += 1
        return seq

    def _abort(self, ctx) -> None:
        self._w.abort_offset()

    async def write_frame_async(self, arr, *, pixel_format: str = "BGR", capture_ns: int | None = None,
                                source_id: int = 0, timeout_s: float | None = None) -> int:
        """``await writer.write_frame_async(arr)``: the asyncio form of :meth:`write_frame`, awaiting room
        without a thread (the reader's release wakes the loop; see ``edgepipe.aio``). Returns the seq.

        Raises:
            RingTimeoutError: still no room at the deadline; plus everything write_frame raises.
        """
        from edgepipe import aio

        def attempt():
            return self.try_write_frame(arr, pixel_format=pixel_format, capture_ns=capture_ns,
                                        source_id=source_id)

        need = min(getattr(arr, "nbytes", 0) + HDR_SIZE + ALIGN - 8, self._w.max_payload)

        def block(t: float) -> None:  # the helper-thread fallback: wait for a frame's room on the futex
            self._w.wait_room(need, t)

        return await aio.wait_for(self._w, aio.RING_SPACE, "consumer", attempt, block, timeout_s,
                                  "no room for a frame in " + repr(self.ring_name))

    def close(self) -> None:
        """Close the ring's producer end (the reader drains what is queued)."""
        self._w.close()

    def __repr__(self) -> str:
        return f"<FrameWriter max_frame_bytes={self.max_frame_bytes} frames_written={self.frames_written}>"


class FrameReader:
    """Frame consumer over a :class:`~edgepipe.ring.RingReader`.

    ``with reader.read_frame() as frame:`` gives a :class:`Frame` whose ``array`` is a read-only view
    of the record in the ring; the record is released when the block ends, or earlier by
    ``frame.release()`` (see the lifetime rule in the module docstring). Like FrameWriter, the per-frame
    path calls the ring's C functions directly on the RingReader's handle; waiting and errors go through
    the RingReader.
    """

    __slots__ = ("_held", "_io", "_open", "_r", "_ro", "corrupt", "frames_read")

    def __init__(self, reader: RingReader) -> None:
        if not isinstance(reader, RingReader):
            raise TypeError(f"FrameReader wraps a RingReader, not {type(reader).__name__}")
        self._r = reader
        self._ro = reader.data.toreadonly()  # frames are built over this read-only view of the data area
        self._held: tuple | None = None  # (weakref to its array, seq) of a frame kept past its block
        self._open = False
        self.frames_read = 0
        self.corrupt = 0

    @property
    def segment(self):
        """The Ring under this frame channel."""
        return self._r.segment

    @property
    def closed(self) -> bool:
        return self._r.closed

    @property
    def held_seq(self) -> int | None:
        """seq of a frame still pinned by an array kept past its block, else None."""
        self._reap(collect=False)
        return None if self._held is None else self._held[1]

    def _peek(self) -> int:
        return self._r.peek_offset()  # payload length, -1 when empty

    def try_read_frame(self) -> FrameRead | None:
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

    def read_frame(self, timeout_s: float | None = None) -> FrameRead:
        """``with reader.read_frame(timeout_s) as frame:`` waits up to ``timeout_s`` (None: forever).

        Raises:
            RingTimeoutError: nothing arrived in time; plus everything try_read_frame raises.
        """
        self._ready()
        if not (timeout_s is None or (type(timeout_s) in (float, int) and timeout_s >= 0)):
            timeout_ns(timeout_s)  # raises for a bad one; a plain number >= 0 costs nothing when a frame is there
        n = self._peek()
        if n < 0 and timeout_s != 0:
            tns = timeout_ns(timeout_s)
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

    def read_frame_async(self, timeout_s: float | None = None):
        """``async with reader.read_frame_async(timeout_s) as frame:``: the asyncio form of
        :meth:`read_frame` (the wait is the ring reader's ``read_async`` wait; see ``edgepipe.aio``).

        Raises:
            RingTimeoutError: nothing arrived in time; plus everything try_read_frame raises.
        """
        from edgepipe import aio

        r = self._r
        return aio.AsyncFrame(lambda: aio.wait_for(r, aio.RING_DATA, "producer", self.try_read_frame, r.wait,
                                                   timeout_s, "no frame arrived"))

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
        if not free(ref):
            if not collect:
                return
            gc.collect()  # arrays caught in reference cycles
            if not free(ref):
                return
        self._held = None
        self._release()

    def _release(self) -> None:
        self._r.release_if_held()

    def _wrap(self, n: int) -> FrameRead:
        off, t = self._r.record_offset, self._r.last_type
        try:
            if t != REC_TYPE:
                raise ImageHeaderError(f"ring record of type {t:#x} is not a frame (frame records have type "
                                       f"{REC_TYPE:#x}); skipped", "record type", t)
            if n < HDR_SIZE:
                raise bad_field("record length", n, f"shorter than the {HDR_SIZE}-byte header", "ring")
            fields = unpack_hdr(self._ro, off)
            p, doff = parse_header(fields, n, "ring")
        except ImageHeaderError:
            truncated = truncation(self._r.segment)  # zero pages standing in for a truncated segment
            if truncated:
                raise truncated from None
            self._release()
            self.corrupt += 1
            raise
        flat = np.frombuffer(self._ro, p.dtype, p.nbytes // p.dtype.itemsize, off + doff)
        arr = flat.reshape(p.shape) if len(p.shape) > 1 else flat
        frame = Frame(arr, fields[7], fields[8], fields[9], p.fmt, fields[10])
        self._open = True
        return FrameRead(self, frame, weakref.ref(flat), None)

    def _done(self, ref: weakref.ref, token, seq: int) -> None:
        self._open = False
        self.frames_read += 1
        if free(ref):
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

    def __reduce_ex__(self, protocol):
        raise refuse_pickle(self)

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FrameReader frames_read={self.frames_read} held={self._held is not None}>"


