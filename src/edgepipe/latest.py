"""LatestSlot: the newest frame only, for consumers that should never see a backlog (``csrc/ep_latest.c``, a
lock-free triple buffer; 4 buffers by default so a reader can keep one frame and read on). The writer never
waits; a reader takes the newest published frame. Frames and their lifetime rule are those of
``edgepipe.frames``.

>>> import numpy as np
>>> with LatestSlot.create(None, max_frame_bytes=4 * 6 * 3) as slot:
...     w, r = slot.writer(), slot.reader()
...     w.write_frame(np.full((4, 6, 3), 7, np.uint8))
...     w.write_frame(np.full((4, 6, 3), 9, np.uint8))
...     with r.read_frame(timeout_s=1) as f:
...         f.seq, int(f.array[0, 0, 0])
1
2
(2, 9)
"""

from __future__ import annotations

import errno
import gc
import os
import sys
import time
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from edgepipe._args import timeout_ns
from edgepipe._ffi import ffi, lib
from edgepipe._image import (
    HDR_SIZE,
    MAGIC,
    VERSION,
    FrameClaim,
    FrameRead,
    Layout,
    WriterBase,
    free,
    new_frame,
    pack_hdr,
)
from edgepipe._segment import Segment, disowned_error, open_end, refuse_pickle, truncation
from edgepipe.clock import now_ns
from edgepipe.errors import (
    ImageHeaderError,
    ImageHeldError,
    ImageTooLargeError,
    LayoutVersionError,
    PeerClosedError,
    RingClosedError,
    RingCorruptError,
    RingTimeoutError,
    check,
)
from edgepipe.shm import SharedRegion
from edgepipe.wait import default_spin_ns

_EAGAIN, _EPIPE, _ETIMEDOUT, _EINTR = -errno.EAGAIN, -errno.EPIPE, -errno.ETIMEDOUT, -errno.EINTR
_SLICE_NS = 100_000_000  # blocking calls come back to Python this often (signals, peer checks)

__all__ = ["LatestReader", "LatestSlot", "LatestStatus", "LatestWriter"]


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


class LatestSlot(Segment):
    """A latest-only frame slot in shared memory: one producer that never waits, one consumer that always
    gets the newest frame (a lock-free triple buffer, ``csrc/ep_latest.c``). Frames the consumer is too
    slow for are overwritten and counted. Passed to ``multiprocessing`` (Process args, Pool tasks, queues)
    it crosses as its fd alone, as a Ring does.

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

    def reader(self, spin_ns: int | None = None) -> LatestReader:
        """Open the consumer end in this process. A blocking read spins ``spin_ns`` before it parks
        (None: this machine's default, one measured futex wake; see :mod:`edgepipe.wait`)."""
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


class LatestWriter(WriterBase):
    """Producer end of a :class:`LatestSlot`: the same claim_frame / write_frame API as FrameWriter, but it
    never waits: publishing replaces a frame the consumer has not taken yet (counted as overwritten)."""

    __slots__ = ("_buf", "_forked_from", "_h", "_inflight", "_seq", "_slot", "frames_written", "max_frame_bytes",
                 "overwritten")

    def __init__(self, slot: LatestSlot) -> None:
        self._slot = slot
        self._forked_from = 0
        self._h = open_end(lib.ep_latest_writer_open, slot, "writer")
        self._inflight = 0  # C calls in progress on _h (see close)
        self._buf = slot.region.buffer()
        s = slot.status()
        self.max_frame_bytes: int = s.max_frame_bytes
        self._seq = s.published
        self.frames_written = 0
        self.overwritten = 0

    @property
    def segment(self) -> LatestSlot:
        """The LatestSlot this end was opened on."""
        return self._slot

    @property
    def closed(self) -> bool:
        return self._h is None

    def _too_large(self, lay: Layout) -> ImageTooLargeError:
        return ImageTooLargeError(
            f"a {lay.shape} {lay.dtype} frame has {lay.nbytes} pixel bytes but the latest slot "
            f"{self._slot.name or 'memfd'!r} takes at most max_frame_bytes {self.max_frame_bytes}"
        )

    def _claim(self, lay: Layout, capture_ns: int, source_id: int, timeout_s) -> FrameClaim:
        if not (timeout_s is None or (type(timeout_s) in (float, int) and timeout_s >= 0)):
            timeout_ns(timeout_s)  # validated for a uniform API (a latest slot never waits); cheap when plain
        h = self._h
        if h is None:
            raise self._closed_error()
        self._inflight += 1  # see close
        try:
            off = lib.ep_latest_writer_slot(h)
        finally:
            self._inflight -= 1
        arr = np.ndarray(lay.shape, lay.dtype, buffer=self._buf, offset=off + HDR_SIZE)
        return FrameClaim(self, lay, arr, off, capture_ns, source_id)

    def _try_claim(self, lay: Layout, capture_ns: int, source_id: int) -> FrameClaim:
        return self._claim(lay, capture_ns, source_id, None)  # a latest slot always has room

    def _publish(self, off: int, lay: Layout, capture_ns: int, source_id: int) -> int:
        h = self._h
        if h is None:
            raise self._closed_error()
        seq = self._seq + 1
        pack_hdr(self._buf, off, MAGIC, VERSION, lay.code, lay.ndim, lay.fmt_code, HDR_SIZE, lay.nbytes, seq,
                  capture_ns, now_ns(), source_id, *lay.shape4, *lay.strides4, 0)
        self._inflight += 1  # see close
        try:
            rc = lib.ep_latest_publish(h)
        finally:
            self._inflight -= 1
        if rc < 0:
            if rc == -errno.EBADMSG:
                truncated = truncation(self._slot)
                if truncated:
                    raise truncated
            check(rc, "publishing to the latest slot")
        self.overwritten += rc
        self._seq = seq
        self.frames_written += 1
        return seq

    def _abort(self, off) -> None:
        pass  # the buffer stays ours; the next claim overwrites it

    def _closed_error(self) -> RingClosedError:
        if self._forked_from:
            return disowned_error(self, "writer", self._forked_from)
        return RingClosedError(f"LatestWriter on {self._slot.name or 'memfd'!r} is closed")

    def _disown(self) -> None:
        """In a forked child: the parent's end, dropped without the C close (see ``_segment``)."""
        self._h = None
        self._inflight = 0
        self._forked_from = os.getppid()

    def __reduce_ex__(self, protocol):
        raise refuse_pickle(self)

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

    __slots__ = ("_buf", "_deferred", "_forked_from", "_h", "_held", "_inflight", "_open", "_slot", "_slot_size",
                 "frames_read")

    def __init__(self, slot: LatestSlot, spin_ns: int | None = None) -> None:
        if spin_ns is None:
            spin_ns = default_spin_ns()
        self._slot = slot
        self._forked_from = 0
        self._h = open_end(lib.ep_latest_reader_open, slot, "reader")
        self._inflight = 0  # read calls in progress (see try_read_frame)
        self._deferred = None  # a handle close() left for the interrupted read to free (see close)
        check(lib.ep_latest_reader_set_spin(self._h, spin_ns), f"spin_ns {spin_ns}")
        self._buf = slot.region.buffer()
        self._slot_size = slot.status().slot_size
        self._held: dict[int, tuple] = {}  # buffer index -> (weakref, seq) of frames kept past their block
        self._open: int | None = None      # buffer index of the frame inside a with block
        self.frames_read = 0

    @property
    def segment(self) -> LatestSlot:
        """The LatestSlot this end was opened on."""
        return self._slot

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
            if self._forked_from:
                raise disowned_error(self, "reader", self._forked_from)
            raise RingClosedError(f"LatestReader on {self._slot.name or 'memfd'!r} is closed")
        return h

    def _disown(self) -> None:
        """In a forked child: the parent's end, dropped without the C close (see ``_segment``)."""
        self._h = None
        self._inflight = 0
        self._deferred = None
        self._forked_from = os.getppid()

    def __reduce_ex__(self, protocol):
        raise refuse_pickle(self)

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
            if free(ref):
                del self._held[i]

    def try_read_frame(self) -> FrameRead | None:
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

    def _try_read_frame(self) -> FrameRead | None:
        h = self._handle()
        idx = lib.ep_latest_try_take(h, self._give(h))
        if idx >= 0:
            return self._wrap(idx)
        if idx == _EAGAIN:
            return None
        raise self._error(idx)

    def read_frame(self, timeout_s: float | None = None) -> FrameRead:
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
            _release_view(self._buf)  # as close() does

    def _read_frame(self, timeout_s: float | None) -> FrameRead:
        h = self._handle()
        give = self._give(h)
        idx = lib.ep_latest_try_take(h, give)
        if idx >= 0:
            return self._wrap(idx)
        if idx != _EAGAIN:
            raise self._error(idx)
        tns = timeout_ns(timeout_s)
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

    def read_frame_async(self, timeout_s: float | None = None):
        """``async with reader.read_frame_async(timeout_s) as frame:``: the asyncio form of
        :meth:`read_frame`; the producer's publish wakes the loop only while a task awaits (``edgepipe.aio``).

        Raises:
            RingTimeoutError: nothing new in time; plus everything try_read_frame raises.
        """
        from edgepipe import aio

        def block(t: float) -> None:  # the helper-thread fallback: wait on the futex, take nothing
            lib.ep_latest_wait(self._handle(), timeout_ns(t))

        return aio.AsyncFrame(lambda: aio.wait_for(
            self, aio.LATEST_DATA, "producer", self.try_read_frame, block, timeout_s,
            "no new frame in latest slot " + repr(self._slot.name or "memfd")))

    def frames(self, timeout_s: float | None = None):
        """Iterate the newest frames until the producer closes (see FrameReader.frames)."""
        while True:
            try:
                ctx = self.read_frame(timeout_s)
            except PeerClosedError:
                return
            with ctx as f:
                yield f

    def _wrap(self, idx: int) -> FrameRead:
        off = lib.EP_LATEST_CTL_SIZE + idx * self._slot_size
        view = self._buf[off:off + self._slot_size].toreadonly()
        try:
            frame, ref = new_frame(view, 0, self._slot_size, f"latest slot buffer {idx}")
        except ImageHeaderError:
            # zero pages in place of a truncated segment's (the SIGBUS guard) read as a bad header
            truncated = truncation(self._slot)
            if truncated:
                raise truncated from None
            raise
        self._open = idx
        return FrameRead(self, frame, ref, idx)

    def _done(self, ref: weakref.ref, idx: int, seq: int) -> None:
        self._open = None
        self.frames_read += 1
        if not free(ref):
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
            return truncation(self._slot) or RingCorruptError(
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
        # Our own export of the mapping: without this a closed reader kept the segment mapped (and its fd
        # open in the mmap) until it was garbage. Frames' views are slices of it and keep the pages alive.
        _release_view(self._buf)

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


def _release_view(view: memoryview) -> None:
    try:
        view.release()
    except BufferError:
        pass  # exported as a whole (nothing here does that): it goes when its last user does


_LATEST_READ_CODES = frozenset(
    f.__code__ for f in (LatestReader.read_frame, LatestReader._read_frame, LatestReader.try_read_frame,
                         LatestReader._try_read_frame)
)
