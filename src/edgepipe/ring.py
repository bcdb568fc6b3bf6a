"""Ring, RingWriter, RingReader: the Python handles over the C SPSC ring (``csrc/ep_ring.c``).

A :class:`Ring` owns one shared region laid out as a ring. Its :meth:`Ring.writer` and :meth:`Ring.reader`
open the producer and consumer ends; each end may be held by one live process at a time. Hot methods stay
thin: one cffi call, arguments already in the shape C wants, errors decoded only on the failure path.

Zero-copy paths: ``claim(n)`` hands out a writable memoryview inside the ring, ``peek()`` a read-only one;
neither view may be used after its ``with`` block (the bytes are recycled by the other end).

Another process: a Ring given to ``multiprocessing`` (``Process(args=...)``, a ``Pool`` task, a queue) crosses
as its fd alone, under any start method, and the child opens the end it wants (see ``edgepipe._segment``);
the ends themselves stay in the process that opened them.

One piece: the Ring and its two ends are the binding of one C object (``ep_ring_*`` has this one caller):
the ends share the blocking-call and close protocol (``_HandleBase``) and the error mapping, and the
writer's lease and in-place offset API exist for other handles layered on it. Argument checks live in
``_args``, the segment base shared with the latest slot in ``_segment``.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, fields
from itertools import accumulate
from operator import attrgetter

from edgepipe import _fast
from edgepipe._args import timeout_ns
from edgepipe._ffi import ffi, lib
from edgepipe._segment import Segment, disowned_error, open_end, refuse_pickle, truncation
from edgepipe.errors import (
    LayoutVersionError,
    PeerClosedError,
    RecordTooLargeError,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingError,
    RingTimeoutError,
    check,
)
from edgepipe.shm import SharedRegion
from edgepipe.wait import default_spin_ns, wake_cost

__all__ = ["Ring", "RingReader", "RingStatus", "RingWriter", "WaitPolicy"]

_MODES = {"spin": lib.EP_WAIT_SPIN, "park": lib.EP_WAIT_PARK, "hybrid": lib.EP_WAIT_HYBRID}
_MAX_TYPE = 0xFFFFFFFE  # 0xFFFFFFFF marks padding

_try_write = lib.ep_ring_try_write
_try_read = lib.ep_ring_try_read
_write = lib.ep_ring_write
_read = lib.ep_ring_read
_claim = lib.ep_ring_claim
_commit = lib.ep_ring_commit
_abort = lib.ep_ring_abort
_peek = lib.ep_ring_peek
_release = lib.ep_ring_release
_reader_wait = lib.ep_ring_reader_wait
_writer_wait = lib.ep_ring_writer_wait
_EAGAIN = -errno.EAGAIN
_ETIMEDOUT = -errno.ETIMEDOUT
_EINTR = -errno.EINTR
_ECANCELED = -errno.ECANCELED
_mono_ns = time.monotonic_ns
# A blocking call returns from C to Python at least this often, so signal handlers (Ctrl-C) run promptly
# even while a reader spins; it then goes straight back to waiting.
_SLICE_NS = 100_000_000
_NUMBER = (float, int)  # a timeout of one of these exact types (and >= 0) skips validation on the ready path
_BATCH_BUF_MAX = 1 << 20  # bytes the batch read buffer grows to, beyond one max-size record

# The non-blocking one-record calls (try_write, try_read, read_into) run in edgepipe._fast, a CPython
# extension that keeps the GIL (csrc/py_fast.c): its types are the bases of RingWriter and RingReader and own
# their `_h`. It calls these very functions of _ffi, through the addresses handed over here; the
# `_cffi_*` methods below are the same calls through cffi, which the fast path falls back to for anything
# uncommon (and which tests/property/test_fast_path_model.py runs against it).
_fast.bind({name: int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
            for name in ("ep_ring_try_write", "ep_ring_try_read", "ep_ring_try_read_batch",
                         "ep_ring_reader_scratch")},
           lambda h: int(ffi.cast("uintptr_t", h)))


# ---------------------------------------------------------------------------------------------------
# arguments


def _type_id(type_id: object) -> int:
    if not isinstance(type_id, int) or isinstance(type_id, bool):
        raise TypeError(f"type_id must be int, not {type(type_id).__name__}: {type_id!r}")
    if not 0 <= type_id <= _MAX_TYPE:
        raise ValueError(f"type_id must be in 0..{_MAX_TYPE}, got {type_id}")
    return type_id


def _u32_array(obj: object, what: str, writable: bool = False):
    """A cffi uint32_t[] over a buffer of uint32 (numpy uint32, array('I')); anything else is a TypeError."""
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(f"{what} must be a uint32 buffer (numpy uint32 or array('I')), not {type(obj).__name__}") from None
    if mv.itemsize != 4 or mv.format.lstrip("@=<") not in ("I", "L"):
        raise TypeError(f"{what} must hold uint32 items, got format {mv.format!r} of {mv.itemsize} bytes")
    try:
        return ffi.from_buffer("uint32_t[]", obj, require_writable=writable)
    except BufferError:
        raise TypeError(f"{what} must be writable") from None


def _read_buffers(buf, lens, types):
    """cffi views of a batch read's output: bytes, uint32 lengths and optional uint32 types."""
    try:
        b = ffi.from_buffer(buf, require_writable=True)
    except (TypeError, BufferError):
        raise TypeError(f"buf must be a writable bytes-like object, not {type(buf).__name__}") from None
    lb = _u32_array(lens, "lens", writable=True)
    tb = ffi.NULL if types is None else _u32_array(types, "types", writable=True)
    if types is not None and len(tb) < len(lb):
        raise ValueError(f"types holds {len(tb)} entries but lens holds {len(lb)}")
    return b, lb, tb


_BYTES_TYPES = frozenset((bytes, bytearray))
_nbytes_of = attrgetter("nbytes")


def _record_lens(records: list) -> array:
    """The byte count of each record, with C loops only (``len`` of bytes and bytearray; the ``nbytes`` of a
    memoryview of anything else, since ``len`` of a numpy array or memoryview counts items, not bytes)."""
    if set(map(type, records)) <= _BYTES_TYPES:
        return array("I", map(len, records))
    try:
        return array("I", map(_nbytes_of, map(memoryview, records)))
    except TypeError:
        bad = next(r for r in records if not _is_buffer(r))
        raise TypeError(f"every record must be bytes-like, got {type(bad).__name__}: {bad!r:.60}") from None


def _is_buffer(obj: object) -> bool:
    try:
        memoryview(obj)
    except TypeError:
        return False
    return True


def _as_buffer(payload: object):
    """A cffi char[] over any C-contiguous bytes-like object, or TypeError naming what it got."""
    try:
        return ffi.from_buffer(payload, require_writable=False)
    except TypeError:
        raise TypeError(
            f"payload must be a bytes-like object (bytes, bytearray, memoryview, numpy array), "
            f"not {type(payload).__name__}: {payload!r:.60}"
        ) from None


@dataclass(frozen=True)
class WaitPolicy:
    """How a blocking call waits: ``spin`` (burn a core, lowest latency), ``park`` (sleep on a futex at
    once) or ``hybrid`` (spin for ``spin_ns``, then park; the default).

    ``spin_ns`` left out (None) is the default spin of this machine: one futex wake as measured by
    :func:`edgepipe.wait.default_spin_ns` (once per boot, cached), 25 us if it can't be measured.

    >>> WaitPolicy.from_budget(0).mode
    'spin'
    """

    mode: str = "hybrid"
    spin_ns: int | None = None  # None: this machine's default, an int after __init__

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"wait mode must be one of {sorted(_MODES)}, got {self.mode!r}")
        if self.spin_ns is None:
            object.__setattr__(self, "spin_ns", default_spin_ns())
        if not isinstance(self.spin_ns, int) or isinstance(self.spin_ns, bool) or self.spin_ns < 0:
            raise ValueError(f"spin_ns must be an int >= 0, got {self.spin_ns!r}")

    @classmethod
    def from_budget(cls, latency_budget_s: float) -> WaitPolicy:
        """Pick a policy for the latency a handoff may add.

        A budget under two futex wakes (measured on this machine, :mod:`edgepipe.wait`) can't afford to
        park: spin. Under a millisecond: spin about one wake, then park. Looser budgets spin 2 us (enough to
        catch back-to-back records) and sleep otherwise.
        """
        try:
            ns = timeout_ns(latency_budget_s)
        except (TypeError, ValueError):
            raise ValueError(f"latency_budget_s must be a number >= 0, got {latency_budget_s!r}") from None
        if ns < 0:
            return cls("hybrid", 2_000)
        wake = wake_cost()
        if ns < 2 * wake.wake_ns:
            return cls("spin", 0)
        if ns < 1_000_000:
            return cls("hybrid", wake.spin_ns)
        return cls("hybrid", 2_000)

    @classmethod
    def coerce(cls, wait: WaitPolicy | str | None) -> WaitPolicy:
        if wait is None:
            return cls()
        if isinstance(wait, str):
            return cls(wait) if wait != "spin" else cls("spin", 0)
        if isinstance(wait, WaitPolicy):
            return wait
        raise TypeError(f"wait must be a WaitPolicy, 'spin', 'park', 'hybrid' or None, not {wait!r}")


@dataclass(frozen=True)
class RingStatus:
    """A snapshot of a ring's control block (readable from any process that maps it)."""

    capacity: int
    max_payload: int
    region_size: int
    head: int
    tail: int
    used: int
    records_written: int
    records_read: int
    full_events: int
    producer_parks: int
    consumer_parks: int
    producer_wakes: int
    consumer_wakes: int
    late_wakeups: int
    creator_pid: int
    producer_pid: int
    consumer_pid: int
    producer_closed: bool
    consumer_closed: bool
    producer_beat_ns: int
    consumer_beat_ns: int
    version: int

    @property
    def queued(self) -> int:
        """Records written but not yet read."""
        return self.records_written - self.records_read


_STATUS_FIELDS = [f.name for f in fields(RingStatus)]


# ---------------------------------------------------------------------------------------------------
# the ring


class Ring(Segment):
    """A shared-memory SPSC ring: one producer process, one consumer process.

    Share it with a child by passing it to ``multiprocessing`` (``Process(target=f, args=(ring,))``, ``Pool``
    tasks, queues: only its fd is sent), by ``ring.fd`` and :meth:`from_fd`, or by name (:meth:`attach`).

    >>> with Ring.create(capacity=4096) as ring:
    ...     w, r = ring.writer(), ring.reader()
    ...     w.try_write(b"hello")
    ...     r.try_read()
    True
    b'hello'
    """

    __slots__ = ()
    _KIND = "ring"
    _MEMFD_LABEL = "edgepipe-ring"

    def __init__(self, region: SharedRegion) -> None:
        """Wrap a region that already holds a ring (use create/attach/from_fd rather than this)."""
        self._region = region
        self._handles: list = []
        _check_layout(region)

    @classmethod
    def create(cls, name: str | None = None, capacity: int = 1 << 20) -> Ring:
        """Create a ring of ``capacity`` data bytes (a power of two, 64 B .. 1 TiB).

        Args:
            name: a named POSIX segment ``/dev/shm/edgepipe.<name>`` other processes can attach by name;
                None for an anonymous memfd, shared through ``ring.fd`` (nothing to leak on kill -9).
            capacity: data bytes; the largest record payload is ``capacity // 2 - 8``.

        Raises:
            ValueError: bad capacity or name. FileExistsError: the name is taken.
        """
        _check_capacity(capacity)
        return cls._create_region(
            name, lib.ep_ring_region_size(capacity),
            lambda r: check(lib.ep_ring_init(r.address, r.size, capacity), f"capacity {capacity}"))

    @classmethod
    def attach(cls, name: str, wait_s: float = 0.0, *, allow_uids: Iterable[int] = ()) -> Ring:
        """Attach a named ring, waiting up to ``wait_s`` for its creator to create and initialise it.

        The segment must be ours and mode 0600, or owned by a uid in ``allow_uids`` (see
        ``SharedRegion.attach``); otherwise UntrustedSegmentError (a PermissionError) names its owner and mode.
        """
        return cls._attach_named(name, wait_s, allow_uids)

    @classmethod
    def from_fd(cls, fd: int) -> Ring:
        """Attach a ring from a segment fd (inherited, or received over SCM_RIGHTS)."""
        return cls._from_segment_fd(fd)

    # -- ends ---------------------------------------------------------------------------------------
    def writer(self, wait: WaitPolicy | str | None = None) -> RingWriter:
        """Open the producer end in this process. Raises RingBusyError if a live process holds it."""
        w = RingWriter(self, WaitPolicy.coerce(wait))
        self._handles.append(w)
        return w

    def reader(self, wait: WaitPolicy | str | None = None) -> RingReader:
        """Open the consumer end in this process. Raises RingBusyError if a live process holds it."""
        r = RingReader(self, WaitPolicy.coerce(wait))
        self._handles.append(r)
        return r

    # -- facts --------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.status().capacity

    @property
    def max_payload(self) -> int:
        """Largest payload: ``capacity // 2 - 8``, and at most ``EP_REC_MAX_LEN`` (the u32 length field)."""
        return self.status().max_payload

    def status(self) -> RingStatus:
        """Read the control block: positions, counters, and each end's pid and heartbeat."""
        out = ffi.new("struct ep_ring_status *")
        # Read through a buffer export of the mapping, not a bare pointer: if another thread closes the
        # ring meanwhile, the export keeps the pages mapped until this call is done.
        try:
            buf = ffi.from_buffer(self._region.buffer())
        except ValueError:
            raise RingClosedError(f"ring {self.name or 'memfd'!r} is closed") from None
        self._region.check_size()  # a truncated segment is an error here, not a SIGBUS
        check(lib.ep_ring_status(buf, len(buf), out), "reading ring status")
        return RingStatus(**{k: getattr(out, k) for k in _STATUS_FIELDS})

    def __repr__(self) -> str:
        if self.closed:
            return f"<Ring {self.name or 'memfd'!r} closed>"
        s = self.status()
        return f"<Ring {self.name or 'memfd'!r} capacity={s.capacity} used={s.used} queued={s.queued}>"


def _check_capacity(capacity: object) -> None:
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be int, not {type(capacity).__name__}: {capacity!r}")
    lo, hi = lib.EP_RING_MIN_CAPACITY, lib.EP_RING_MAX_CAPACITY
    if capacity < lo or capacity > hi or capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two in {lo}..{hi} bytes, got {capacity}")


def _check_layout(region: SharedRegion) -> None:
    """Refuse a region that is not a ring of this layout version, naming what is wrong."""
    where = region.name or "memfd"
    if region.size < lib.EP_RING_DATA_OFF:
        raise RingCorruptError(
            f"segment {where!r} is {region.size} bytes: too small to be a ring "
            f"(the control block alone is {lib.EP_RING_DATA_OFF})"
        )
    rc = lib.ep_ring_check(region.address, region.size)
    if rc == 0:
        return
    out = ffi.new("struct ep_ring_status *")
    lib.ep_ring_status(region.address, region.size, out)
    if rc == -errno.EPROTO:
        raise LayoutVersionError(
            f"segment {where!r} has ring layout version {out.version}; "
            f"this edgepipe reads version {lib.EP_RING_VERSION}"
        )
    if out.magic != lib.EP_RING_MAGIC:
        raise RingCorruptError(
            f"segment {where!r} is not an edgepipe ring (magic {out.magic:#010x}, "
            f"expected {lib.EP_RING_MAGIC:#010x})"
        )
    raise RingCorruptError(
        f"segment {where!r} holds a ring of capacity {out.capacity} needing "
        f"{lib.ep_ring_region_size(out.capacity)} bytes, but the segment is {region.size} bytes (truncated?)"
    )


class _HandleBase:
    """What both ends share: the closed error, `with`, and running blocking C calls safely.

    A blocking call marks the handle in flight while it is inside C (one attribute store each way, so the
    hot path stays cheap). ``close()`` from another thread then cancels the wait and waits for the call to
    leave C before freeing the handle, so closing a ring while a reader thread is blocked on it raises
    RingClosedError in that thread instead of crashing. A close() from a signal handler that interrupted
    this very call finds the call on its own stack and does not wait for it (it is not inside C then).
    Non-blocking calls are not guarded: an end belongs to one thread at a time, and the one-record try calls
    (edgepipe._fast) keep the GIL while inside C, so a close() from another thread cannot run meanwhile.
    """

    __slots__ = ()

    @property
    def segment(self) -> Ring:
        """The Ring this end was opened on (every kind of end has one: ring, latest slot, frames)."""
        return self._ring

    @property
    def data(self) -> memoryview:
        """The ring's data area (it starts page-aligned in every process): the writer's
        :meth:`~RingWriter.claim_offset` and the reader's :attr:`~RingReader.record_offset` are offsets into it;
        writable on the producer's end only by contract."""
        return self._data

    def _closed_error(self) -> RingClosedError:
        if self._forked_from:
            return disowned_error(self, "writer" if isinstance(self, RingWriter) else "reader", self._forked_from)
        return RingClosedError(f"{type(self).__name__} on {self._ring.name or 'memfd'!r} is closed")

    def _disown(self) -> None:
        """In a forked child: this end is the parent's. Drop it without the C close (that would mark the
        parent's end closed in shared memory); the child's copy of its C struct goes when the child exits."""
        self._h = None
        self._inflight = 0
        self._forked_from = os.getppid()

    def __reduce_ex__(self, protocol):
        raise refuse_pickle(self)

    def _block(self, fn, args: tuple, tns: int) -> int:
        """Call ``fn(handle, *args, slice_ns)`` until it returns something other than a slice timeout or
        EINTR, or the overall timeout ``tns`` (-1: none) runs out. Returns the C result."""
        deadline = -1 if tns < 0 else _mono_ns() + tns
        try:
            while True:
                h = self._enter()
                t = _SLICE_NS if deadline < 0 else max(0, min(_SLICE_NS, deadline - _mono_ns()))
                rc = fn(h, *args, t)
                if rc == _ETIMEDOUT:
                    if deadline < 0 or _mono_ns() < deadline:
                        continue
                    return rc
                if rc == _EINTR:
                    continue  # back in Python, pending signal handlers run at the loop's jump
                if rc == _ECANCELED:
                    raise self._closed_error()
                return rc
        finally:
            self._inflight = 0

    def _handle(self):
        h = self._h
        if h is None:
            raise self._closed_error()
        return h

    def _enter(self):
        self._inflight = 1
        h = self._h
        if h is None:
            self._inflight = 0
            raise self._closed_error()
        return h

    def _close(self, cancel, free) -> bool:
        """Free the C end once no call is inside it; True if this call closed it."""
        h, self._h = self._h, None
        if h is None:
            return False
        self._wait_out_blocked_call(cancel, h)
        free(h)
        self._data.release()
        self._ring._forget(self)
        return True

    def _wait_out_blocked_call(self, cancel, h) -> None:
        """Called by close() after the handle pointer was cleared: stop and wait out a call in flight."""
        if not self._inflight or self._in_own_call():
            return
        cancel(h)
        while self._inflight:
            time.sleep(0.0002)

    def _in_own_call(self) -> bool:
        """True if a blocking method of this handle is on the calling thread's stack (a signal handler
        interrupted it): it is between bytecodes, not inside C, so close() must not wait for it."""
        f = sys._getframe(2)
        while f is not None:
            if f.f_code in _BLOCKING_CODES and f.f_locals.get("self") is self:
                return True
            f = f.f_back
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------
# producer


class WriterLease:
    """A RingWriter lent to a C loop: ``pointer`` is the C end the loop writes through, ``release()`` gives
    the end back to Python (call it only after the loop is destroyed)."""

    __slots__ = ("_writer", "owner", "pointer")

    def __init__(self, writer: RingWriter, pointer, owner: object) -> None:
        self._writer, self.pointer, self.owner = writer, pointer, owner

    def release(self) -> None:
        """Return the end to its writer. Idempotent."""
        w, self._writer = self._writer, None
        if w is not None:
            w._end_lease(self)


class RingWriter(_HandleBase, _fast.RingWriterCore):
    """Producer end of a shared-memory ring. Use it from exactly one process (the one that opened it)."""

    # `_h` (the C end) belongs to the base: try_write runs there, in C, with the GIL kept
    __slots__ = ("_data", "_forked_from", "_inflight", "_lease", "_max_payload", "_ring")

    def __init__(self, ring: Ring, wait: WaitPolicy) -> None:
        self._ring = ring
        self._inflight = 0
        self._forked_from = 0
        self._lease = None
        self._h = open_end(lib.ep_ring_writer_open, ring, "writer")
        self._max_payload = ring.max_payload
        off = lib.EP_RING_DATA_OFF
        self._data = ring.region.buffer()[off : off + ring.capacity]
        self.set_wait(wait)

    @property
    def max_payload(self) -> int:
        """Largest payload in bytes: ``capacity // 2 - 8``."""
        return self._max_payload

    @property
    def closed(self) -> bool:
        return self._h is None and self._lease is None

    @property
    def leased(self) -> bool:
        """True while a C loop (``edgepipe.imu_loop.ImuLoop``) writes through this end."""
        return self._lease is not None

    def lease(self, owner: object) -> WriterLease:
        """Lend this end to a C loop that writes through its pointer on its own thread.

        Until the lease is released, every Python call on this end (writes, claim, set_wait, close, and
        ``Ring.close()``) raises RingBusyError naming ``owner``, so Python can neither write as a second
        producer nor free the end under the loop. The owner releases the lease after destroying the loop.

        Raises:
            RingBusyError: already leased. RingClosedError: the end is closed.
        """
        h = self._handle()
        lease = WriterLease(self, h, owner)
        self._lease, self._h = lease, None
        return lease

    def _disown(self) -> None:
        self._lease = None  # the C loop's thread did not come through the fork
        super()._disown()

    def _end_lease(self, lease: WriterLease) -> None:
        if self._lease is lease:
            self._h, self._lease = lease.pointer, None

    def _closed_error(self) -> RingError:
        if self._lease is not None:
            return RingBusyError(
                f"RingWriter on {self._ring.name or 'memfd'!r} is leased to {self._lease.owner!r}, which writes "
                f"through it from C: close that first"
            )
        return super()._closed_error()

    def set_wait(self, wait: WaitPolicy | str) -> None:
        """Change how blocking writes wait (see WaitPolicy)."""
        p = WaitPolicy.coerce(wait)
        check(lib.ep_ring_writer_set_wait(self._handle(), _MODES[p.mode], p.spin_ns))

    # -- one record ---------------------------------------------------------------------------------
    # try_write(payload, type_id=1) is RingWriterCore's (C, GIL kept); it comes here for what it does not
    # take as is (a closed or leased end, a payload or type_id to convert or refuse) and for the error.

    def _cffi_try_write(self, payload, type_id: int = 1) -> bool:
        """try_write through cffi. Append one record. Return False, without waiting, if the ring is full.

        Raises:
            RecordTooLargeError: payload over ``max_payload``. PeerClosedError: the consumer is gone.
            TypeError/ValueError: payload not bytes-like, bad type_id.
        """
        # Fast path: bytes go straight to C. Anything else, or a closed handle (None), makes cffi raise
        # TypeError, and the slow path converts the payload or raises the right error.
        try:
            rc = _try_write(self._h, payload, len(payload), type_id)
        except (TypeError, OverflowError):
            return self._try_write_slow(payload, type_id)
        if rc >= 0:
            return True
        if rc == _EAGAIN:
            return False
        raise self._error(rc, payload, type_id=type_id)

    def _try_write_slow(self, payload, type_id) -> bool:
        w = self._handle()
        _type_id(type_id)
        buf = _as_buffer(payload)
        rc = _try_write(w, buf, len(buf), type_id)
        if rc >= 0:
            return True
        if rc == _EAGAIN:
            return False
        raise self._error(rc, payload, type_id=type_id)

    def _write_error(self, rc: int, payload) -> Exception:
        """The error of a fast try_write that got ``rc`` (its type_id was valid: C checked it)."""
        return self._error(rc, payload)

    def write(self, payload, type_id: int = 1, timeout_s: float | None = None) -> None:
        """Append one record, waiting up to ``timeout_s`` (None: forever) for room.

        Raises:
            RingTimeoutError: still full at the deadline. PeerClosedError: the consumer closed or died.
        """
        # Fast path: one C call for the first slice of the wait (None), or for the ready case alone (a finite
        # timeout: C computes a deadline only once it must wait, and the full wait below validates the
        # timeout), so a timeout costs nothing while there is room. NaN and negatives fail `>= 0`.
        if timeout_s is None:
            first = _SLICE_NS
        elif type(timeout_s) in _NUMBER and timeout_s >= 0:
            first = 0
        else:
            first = -1
        if first >= 0 and type(payload) is bytes:
            self._inflight = 1
            try:
                rc = _write(self._h, payload, len(payload), type_id, first)
            except (TypeError, OverflowError):
                rc = None  # closed, or a bad type_id: the general path below says which
            finally:  # also when a signal handler raises as the call returns (Ctrl-C): close() waits on it
                self._inflight = 0
            if rc is not None and rc >= 0:
                return
            if rc is not None and rc not in (_ETIMEDOUT, _EINTR):
                raise self._error(rc, payload, timeout_s, type_id=type_id)
            if rc is not None and timeout_s == 0:
                raise self._error(_ETIMEDOUT, payload, timeout_s, type_id=type_id)
        self._handle()
        tns = timeout_ns(timeout_s)
        _type_id(type_id)
        buf = payload if type(payload) is bytes else _as_buffer(payload)
        rc = self._block(_write, (buf, len(buf), type_id), tns)
        if rc < 0:
            raise self._error(rc, payload, timeout_s, type_id=type_id)

    def wait_room(self, size: int, timeout_s: float | None = None) -> bool:
        """Wait until a record of ``size`` payload bytes fits; True if it does, False if the ring is still
        full after ``timeout_s`` (None: wait forever; 0: only look). The writer's counterpart of
        :meth:`RingReader.wait`: it waits with this writer's WaitPolicy (spin, park or hybrid) on the same
        eventcount as a blocking write, and the reader wakes it when it frees room. There is one producer,
        so the room it found stays until this writer uses it.

        >>> with Ring.create(capacity=4096) as ring:
        ...     w, r = ring.writer(), ring.reader()
        ...     w.wait_room(100, timeout_s=0)
        True

        Raises:
            PeerClosedError: the consumer closed or died (room or not, nothing would read the record).
            RecordTooLargeError: ``size`` is over ``max_payload`` (it could never fit).
            TypeError/ValueError: a bad ``size`` or ``timeout_s``.
        """
        if type(size) is not int or not 0 <= size <= self._max_payload:
            self._check_size(size)
        # As in RingReader.wait: the first slice (None) or the ready case alone (a finite timeout) in one C
        # call; the wait computes its deadline only once there is no room.
        if timeout_s is None:
            first = _SLICE_NS
        elif type(timeout_s) in _NUMBER and timeout_s >= 0:
            first = 0
        else:
            first = -1
        if first >= 0:
            self._inflight = 1
            try:
                rc = _writer_wait(self._h, size, first)
            except TypeError:  # self._h is None: closed
                raise self._closed_error() from None
            finally:  # also when a signal handler raises as the call returns (Ctrl-C): close() waits on it
                self._inflight = 0
            if rc == 0:
                return True
            if rc != _ETIMEDOUT and rc != _EINTR:
                raise self._error(rc, None, timeout_s, size)
            if timeout_s == 0:
                return False
        rc = self._block(_writer_wait, (size,), timeout_ns(timeout_s))
        if rc == _ETIMEDOUT:
            return False
        if rc < 0:
            raise self._error(rc, None, timeout_s, size)
        return True

    # -- zero copy ----------------------------------------------------------------------------------
    def claim(self, size: int, type_id: int = 1, timeout_s: float | None = None) -> _Claim:
        """Reserve ``size`` bytes in the ring and write them in place.

        ``with writer.claim(n) as buf:`` yields a writable memoryview; a clean exit commits the record
        (``claim.commit(k)`` inside the block commits only the first k bytes), an exception abandons it.
        The view must not be used after the block.

        >>> with Ring.create(capacity=4096) as ring:
        ...     w = ring.writer()
        ...     with w.claim(5) as buf:
        ...         buf[:] = b"hello"
        ...     ring.reader().try_read()
        b'hello'
        """
        self._check_size(size)
        _type_id(type_id)
        if not (timeout_s is None or (type(timeout_s) in _NUMBER and timeout_s >= 0)):
            timeout_ns(timeout_s)  # raises for a bad one before anything is claimed
        w = self._handle()
        off = lib.ep_ring_claim(w, size)
        if off == _EAGAIN and timeout_s != 0:
            tns = timeout_ns(timeout_s)  # only now: the ready case costs the same with or without a timeout
            rc = self._block(lib.ep_ring_writer_wait, (size,), tns)
            if rc < 0:
                raise self._error(rc, None, timeout_s, size)
            off = lib.ep_ring_claim(self._handle(), size)
        if off == _EAGAIN:
            raise RingTimeoutError(f"no room for a {size}-byte record (timeout_s={timeout_s})")
        if off < 0:
            raise self._error(off, None, timeout_s, size)
        return _Claim(self, self._data[off : off + size], type_id)

    def try_claim(self, size: int, type_id: int = 1) -> _Claim | None:
        """Like claim, but return None at once if the ring is full (nothing raised for "not now")."""
        self._check_size(size)
        _type_id(type_id)
        off = lib.ep_ring_claim(self._handle(), size)
        if off >= 0:
            return _Claim(self, self._data[off : off + size], type_id)
        if off == _EAGAIN:
            return None
        raise self._error(off, None, 0, size)

    # -- many records -------------------------------------------------------------------------------
    def try_write_many(self, records, type_id: int = 1) -> int:
        """Append as many of ``records`` as fit, in order, in one call; return how many. Never blocks.

        ``records`` is a sequence of bytes-like objects, or a 2-D C-contiguous numpy array whose rows are
        the records (the fast path: no Python work per record).
        """
        w = self._handle()
        _type_id(type_id)
        ndim = getattr(records, "ndim", None)
        if ndim == 2:
            n, size = records.shape[0], records.strides[0] if records.shape[0] else 0
            if n == 0:
                return 0
            if not records.flags.c_contiguous:
                raise ValueError("a 2-D records array must be C-contiguous")
            size = records.shape[1] * records.itemsize
            rc = lib.ep_ring_try_write_fixed(w, _as_buffer(records), size, n, type_id)
            biggest = size
        else:
            if isinstance(records, (bytes, bytearray, memoryview, str)):
                raise TypeError(f"records must be a sequence of bytes-like objects, not {type(records).__name__}")
            records = records if isinstance(records, list) else list(records)
            if not records:
                return 0
            try:
                joined = b"".join(records)
            except TypeError:
                bad = next(r for r in records if not isinstance(r, (bytes, bytearray, memoryview)))
                raise TypeError(f"every record must be bytes-like, got {type(bad).__name__}: {bad!r:.60}") from None
            lens = array("I", [memoryview(r).nbytes for r in records])
            rc = lib.ep_ring_try_write_batch(w, joined, ffi.from_buffer("uint32_t[]", lens), len(records), type_id)
            biggest = max(lens)
        if rc == _EAGAIN:
            return 0
        if rc < 0:
            raise self._error(rc, None, size=biggest, type_id=type_id)
        return rc

    def write_many(self, records, type_id: int = 1, timeout_s: float | None = None) -> int:
        """Append all of ``records`` in order, waiting for room as needed; return the count.

        Raises RingTimeoutError if they are not all in by ``timeout_s``; the records written before the
        deadline stay written (their count is in the exception's ``written`` attribute).
        """
        tns = timeout_ns(timeout_s)
        deadline = None if tns < 0 else time.monotonic_ns() + tns
        total = len(records)
        done = 0
        while done < total:
            k = self.try_write_many(records[done:], type_id)
            done += k
            if done == total:
                break
            if k == 0:
                nxt = records[done]
                size = memoryview(nxt).nbytes
                left = -1 if deadline is None else max(0, deadline - time.monotonic_ns())
                rc = self._block(lib.ep_ring_writer_wait, (size,), left)
                if rc < 0:
                    err = self._error(rc, None, timeout_s)
                    err.written = done  # type: ignore[attr-defined]
                    raise err
        return done

    def write_packed(self, buf, lens, type_id: int = 1) -> int:
        """Append records packed back to back in ``buf`` with sizes ``lens`` (uint32 array); never blocks.

        Returns how many were written (a prefix). The fast path for variable sizes: one C call, no Python
        work per record.
        """
        w = self._handle()
        _type_id(type_id)
        lbuf = _u32_array(lens, "lens")
        n = len(lbuf)
        b = _as_buffer(buf)
        total = int(lens.sum(dtype="uint64")) if hasattr(lens, "sum") else sum(lbuf)  # numpy: no Python loop
        if total > len(b):
            raise ValueError(f"lens add up to {total} bytes but buf holds {len(b)}")
        rc = lib.ep_ring_try_write_batch(w, b, lbuf, n, type_id)
        if rc == _EAGAIN:
            return 0
        if rc < 0:
            raise self._error(rc, None, size=max(lbuf) if n else 0, type_id=type_id)
        return rc

    def batch_writer(self, rows, type_id: int = 1):
        """Bind the records to write once, for repeated batch writes with no per-call conversion.

        ``rows`` is either

        * a 2-D C-contiguous array: each row is one record of ``rows.shape[1] * itemsize`` bytes (the
          fastest path: one C call and no Python work per record). Fill the array in place between calls,
          or bind a large pool once and walk ``start`` through it; or
        * a list of bytes-like records of any sizes (bytes, bytearray, memoryview, numpy arrays), read
          afresh at each call, so the list may be refilled or grown in place between calls. The cost:
          each call copies the records it may write into one staging buffer (``b"".join``) and takes
          their lengths (``len`` mapped over them), both C loops with no Python code per record, then
          makes one C call. Records past what the ring can hold at all are not copied (the slice is cut
          at ``capacity`` bytes), but those that do not fit right now are copied again on the next call.

        Returns ``write(n=None, start=0)``, which appends ``rows[start:start + n]`` (n None: to the end) in
        one C call, as many as fit, and returns how many it wrote (never blocks; 0 if the ring is full).

        Raises:
            RecordTooLargeError (at the write): a record of the slice is over ``max_payload``; nothing of it
                is written. TypeError: ``rows`` is neither, or a list item is not bytes-like.

        >>> import numpy as np
        >>> with Ring.create(capacity=4096) as ring:
        ...     rows = np.frombuffer(b"abcdefgh" * 4, np.uint8).reshape(4, 8).copy()
        ...     write = ring.writer().batch_writer(rows)
        ...     write(4), ring.reader().try_read()
        (4, b'abcdefgh')
        >>> with Ring.create(capacity=4096) as ring:
        ...     records = [b"a", b"bcd", bytearray(b"efghij")]
        ...     write = ring.writer().batch_writer(records)
        ...     write(), ring.reader().try_read_many()
        (3, [b'a', b'bcd', b'efghij'])
        """
        self._handle()
        _type_id(type_id)
        if isinstance(rows, list):
            return self._list_writer(rows, type_id)
        if getattr(rows, "ndim", None) != 2 or not rows.flags.c_contiguous:
            raise TypeError(f"rows must be a 2-D C-contiguous array or a list of bytes-like records, "
                            f"not {type(rows).__name__}")
        nmax = rows.shape[0]
        size = rows.shape[1] * rows.itemsize
        self._check_size(size)
        ptr = _as_buffer(rows)
        fixed = lib.ep_ring_try_write_fixed

        def write(n: int | None = None, start: int = 0) -> int:
            if n is None:
                n = nmax - start
            if not (0 <= start and 0 <= n and start + n <= nmax):
                raise ValueError(f"rows[{start}:{start}+{n}] is outside the {nmax} bound rows")
            try:
                rc = fixed(self._h, ptr + start * size, size, n, type_id)
            except TypeError:
                raise self._closed_error() from None
            if rc >= 0:
                return rc
            if rc == _EAGAIN:
                return 0
            raise self._error(rc, None, size=size)

        return write

    def _list_writer(self, rows: list, type_id: int):
        """batch_writer's write() over a list of variable-size records (see there for its cost)."""
        batch = lib.ep_ring_try_write_batch
        from_buffer = ffi.from_buffer
        cap = self._ring.capacity  # no more than this many payload bytes can ever be queued at once
        join = b"".join

        def write(n: int | None = None, start: int = 0) -> int:
            total = len(rows)
            stop = total if n is None else start + n
            if not (0 <= start <= stop <= total) or (n is not None and n < 0):
                raise ValueError(f"rows[{start}:{stop}] is outside the {total} records of the list")
            if start == stop:
                return 0
            part = rows if start == 0 and stop == total else rows[start:stop]
            lens = _record_lens(part)
            if len(lens) > 1 and sum(lens) > cap:
                # Cut the slice where the payloads alone pass the capacity: the rest can't fit this call.
                k = bisect_right(list(accumulate(lens)), cap) + 1
                part, lens = part[:k], lens[:k]
            try:
                joined = join(part)  # every record is a buffer: _record_lens checked
            except BufferError as e:
                raise ValueError(f"every record must be C-contiguous: {e}") from None
            try:
                rc = batch(self._h, joined, from_buffer("uint32_t[]", lens), len(lens), type_id)
            except TypeError:
                raise self._closed_error() from None
            if rc >= 0:
                return rc
            if rc == _EAGAIN:
                return 0
            raise self._error(rc, None, size=max(lens), type_id=type_id)

        return write

    # -- in place, by offset: for handles layered over the ring (edgepipe.frames.FrameWriter) ------------

    async def write_async(self, payload, type_id: int = 1, timeout_s: float | None = None) -> None:
        """``await writer.write_async(b)``: the asyncio form of :meth:`write`, awaiting room without a
        thread (the consumer's release wakes the loop; see ``edgepipe.aio``).

        Raises:
            RingTimeoutError: still full at the deadline. PeerClosedError: the consumer closed or died.
            RecordTooLargeError, TypeError, ValueError: as try_write, before any wait.
        """
        if self.try_write(payload, type_id):
            return  # room: nothing to wait for
        from edgepipe import aio

        def attempt():
            return True if self.try_write(payload, type_id) else None

        def block(t: float) -> None:  # the helper-thread fallback: wait for room on the futex
            self._block(lib.ep_ring_writer_wait, (len(payload),), timeout_ns(t))

        await aio.wait_for(self, aio.RING_SPACE, "consumer", attempt, block, timeout_s,
                           "ring " + repr(self._ring.name or "memfd") + " still full")

    def claim_offset(self, size: int, timeout_s: float | None = None, what: str = "record") -> int:
        """Reserve ``size`` payload bytes in place and return their offset in :attr:`data`; finish the record
        with :meth:`commit_offset` or :meth:`abort_offset`. Waits for room like :meth:`write` (``timeout_s=0``:
        not at all).

        Raises:
            RingTimeoutError: no room in time (the message names ``what``). RingClosedError, PeerClosedError,
            RecordTooLargeError as write() does.
        """
        if not (timeout_s is None or (type(timeout_s) in _NUMBER and timeout_s >= 0)):
            timeout_ns(timeout_s)  # raises for a bad one before anything is claimed
        h = self._h
        if h is None:
            raise self._closed_error()
        off = _claim(h, size)
        if off < 0:
            if off == _EAGAIN and timeout_s != 0:
                tns = timeout_ns(timeout_s)
                rc = self._block(lib.ep_ring_writer_wait, (size,), tns)
                if rc < 0:
                    raise self._error(rc, None, timeout_s, size)
                off = _claim(self._handle(), size)
            if off == _EAGAIN:
                raise RingTimeoutError(f"no room for a {size}-byte {what} (timeout_s={timeout_s})")
            if off < 0:
                raise self._error(off, None, timeout_s, size)
        return off

    def try_claim_offset(self, size: int) -> int:
        """Like :meth:`claim_offset` with ``timeout_s=0``, but return -1 at once when there is no room
        instead of raising: never blocks, and raises only for errors (closed, peer gone, too large)."""
        h = self._h
        if h is None:
            raise self._closed_error()
        off = _claim(h, size)
        if off >= 0:
            return off
        if off == _EAGAIN:
            return -1
        raise self._error(off, None, 0, size)

    def commit_offset(self, size: int, type_id: int) -> None:
        """Publish the record reserved by :meth:`claim_offset` with ``size`` payload bytes and ``type_id``."""
        h = self._h
        if h is None:
            raise self._closed_error()
        rc = _commit(h, size, type_id)
        if rc < 0:
            raise self._error(rc, None)

    def abort_offset(self) -> None:
        """Give back the reservation of :meth:`claim_offset` unpublished (nothing if the end is closed)."""
        h = self._h
        if h is not None:
            _abort(h)

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the producer end: the reader drains what is queued, then gets PeerClosedError.

        Raises:
            RingBusyError: the end is leased to a C loop (see :meth:`lease`); it stays open.
        """
        if self._lease is not None:
            raise self._closed_error()
        self._close(lib.ep_ring_writer_cancel, lib.ep_ring_writer_close)

    def _check_size(self, size: object) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be int, not {type(size).__name__}: {size!r}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if size > self._max_payload:
            raise self._error(-errno.EMSGSIZE, None, size=size)

    def _error(self, rc: int, payload, timeout_s=None, size: int | None = None, type_id=None) -> Exception:
        if rc in (-errno.EBADF, _ECANCELED):
            return self._closed_error()
        if size is None and payload is not None:
            size = memoryview(payload).nbytes
        if rc == -errno.EMSGSIZE:
            cap = self._ring.capacity
            limit = "" if cap // 2 - lib.EP_REC_HDR <= lib.EP_REC_MAX_LEN else (
                f"; a record header's u32 length caps any record at {lib.EP_REC_MAX_LEN} bytes")
            return RecordTooLargeError(
                f"record of {size} bytes exceeds max_payload {self._max_payload} (capacity {cap}{limit})"
            )
        if rc == -errno.EBADMSG:
            truncated = truncation(self._ring)
            if truncated:
                return truncated
        if rc == -errno.EPIPE:
            s = self._ring.status()
            how = "closed" if s.consumer_closed else "died"
            return PeerClosedError(f"the consumer of {self._ring.name or 'memfd'!r} (pid {s.consumer_pid}) {how}")
        if rc == -errno.ETIMEDOUT:
            return RingTimeoutError(f"ring {self._ring.name or 'memfd'!r} still full after timeout_s={timeout_s}")
        if rc == -errno.EINVAL:
            if type_id is not None:
                try:
                    _type_id(type_id)
                except (TypeError, ValueError) as e:
                    return e
            return ValueError("a claim is outstanding: commit or abort it before writing")
        try:
            check(rc)
        except Exception as e:  # noqa: BLE001 - returned, not swallowed
            return e
        raise AssertionError(rc)  # pragma: no cover

    def __repr__(self) -> str:
        if self._h is None:
            return f"<RingWriter {self._ring.name or 'memfd'!r} closed>"
        s = self._ring.status()
        return f"<RingWriter {self._ring.name or 'memfd'!r} capacity={s.capacity} used={s.used}>"


class _Claim:
    """A reserved record being written in place; see RingWriter.claim."""

    __slots__ = ("_done", "_type", "_view", "_writer")

    def __init__(self, writer: RingWriter, view: memoryview, type_id: int) -> None:
        self._writer = writer
        self._view = view
        self._type = type_id
        self._done = False

    @property
    def view(self) -> memoryview:
        return self._view

    def commit(self, size: int | None = None) -> None:
        """Publish the record, optionally only its first ``size`` bytes."""
        if self._done:
            raise ValueError("this claim was already committed or aborted")
        n = len(self._view) if size is None else size
        if not isinstance(n, int) or not 0 <= n <= len(self._view):
            raise ValueError(f"commit size must be an int in 0..{len(self._view)}, got {size!r}")
        self._done = True
        check(lib.ep_ring_commit(self._writer._handle(), n, self._type))
        self._release_view()

    def abort(self) -> None:
        """Abandon the record: nothing is published."""
        if self._done:
            return
        self._done = True
        w = self._writer._h
        if w is not None:
            lib.ep_ring_abort(w)
        self._release_view()

    def _release_view(self) -> None:
        try:
            self._view.release()  # a view kept past the block then raises instead of scribbling
        except BufferError:
            pass  # someone exported it (e.g. numpy); documented: don't use it after the block

    def __enter__(self) -> memoryview:
        return self._view

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()


# ---------------------------------------------------------------------------------------------------
# consumer


class RingReader(_HandleBase, _fast.RingReaderCore):
    """Consumer end of a shared-memory ring. Use it from exactly one process (the one that opened it)."""

    # `_h` (the C end) belongs to the base: try_read and read_into run there, in C, with the GIL kept
    __slots__ = ("_batch", "_blens", "_data", "_forked_from", "_inflight", "_io", "_max_payload", "_ring",
                 "_scratch")

    def __init__(self, ring: Ring, wait: WaitPolicy) -> None:
        self._ring = ring
        self._inflight = 0
        self._forked_from = 0
        self._h = open_end(lib.ep_ring_reader_open, ring, "reader")
        self._io = lib.ep_ring_reader_io(self._h)
        self._max_payload = ring.max_payload
        self._scratch = ffi.buffer(lib.ep_ring_reader_scratch(self._h), max(1, self._max_payload))
        off = lib.EP_RING_DATA_OFF
        self._data = ring.region.buffer()[off : off + ring.capacity]
        self._batch = None
        self._blens = None
        self.set_wait(wait)

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def closed(self) -> bool:
        return self._h is None

    @property
    def last_type(self) -> int:
        """The type of the record most recently read or peeked."""
        self._handle()
        return self._io.type

    def set_wait(self, wait: WaitPolicy | str) -> None:
        """Change how blocking reads wait (see WaitPolicy)."""
        p = WaitPolicy.coerce(wait)
        check(lib.ep_ring_reader_set_wait(self._handle(), _MODES[p.mode], p.spin_ns))

    # -- one record ---------------------------------------------------------------------------------
    # try_read() and read_into(buf, timeout_s=0) are RingReaderCore's (C, GIL kept); read_into comes back
    # to _cffi_read_into to wait or for what it does not take as is, and both come here for the error.

    def _cffi_try_read(self) -> bytes | None:
        """try_read through cffi. Take the next record as bytes, or return None at once if the ring is empty.

        Raises:
            PeerClosedError: the ring is empty and the producer closed (it will never fill again).
            RingCorruptError: the next header cannot be right.
        """
        try:
            n = _try_read(self._h)
        except TypeError:  # self._h is None: closed
            raise self._closed_error() from None
        if n >= 0:
            return self._scratch[0:n]
        if n == _EAGAIN:
            return None
        raise self._error(n)

    def read(self, timeout_s: float | None = None) -> bytes:
        """Take the next record, waiting up to ``timeout_s`` (None: forever).

        Raises:
            RingTimeoutError: nothing arrived in time. PeerClosedError: empty and the producer is gone.
        """
        # Fast path: one C call for the first slice of the wait (None), or for the ready case alone (a finite
        # timeout, validated below before any wait; one that fails `>= 0` or is not a plain number is
        # validated before any record moves). C computes a deadline only once it must wait.
        if timeout_s is None:
            first = _SLICE_NS
        elif type(timeout_s) in _NUMBER and timeout_s >= 0:
            first = 0
        else:
            first = -1
        if first >= 0:
            self._inflight = 1
            try:
                n = _read(self._h, first)
            except TypeError:  # self._h is None: closed
                raise self._closed_error() from None
            finally:  # also when a signal handler raises as the call returns (Ctrl-C): close() waits on it
                self._inflight = 0
            if n >= 0:
                return self._scratch[0:n]
            if n != _ETIMEDOUT and n != _EINTR:
                raise self._error(n, timeout_s)
            if timeout_s == 0:
                raise self._error(_ETIMEDOUT, timeout_s)
        n = self._block(_read, (), timeout_ns(timeout_s))
        if n >= 0:
            return self._scratch[0:n]
        raise self._error(n, timeout_s)

    def _cffi_read_into(self, buf, timeout_s: float | None = 0) -> int | None:
        """read_into through cffi. Copy the next record into ``buf`` (writable bytes-like); return its
        length, or None if the ring stayed empty for ``timeout_s`` (default: don't wait). A record larger
        than ``buf`` raises ValueError and stays queued."""
        r = self._handle()
        try:
            b = ffi.from_buffer(buf, require_writable=True)
        except (TypeError, BufferError):
            raise TypeError(f"buf must be a writable bytes-like object, not {type(buf).__name__}") from None
        lens = self._batch_arrays()[1]
        if not (timeout_s is None or (type(timeout_s) in _NUMBER and timeout_s >= 0)):
            timeout_ns(timeout_s)  # raises for a bad one before any record moves
        tns = None  # computed once the ring is found empty: a timeout costs nothing on the ready path
        while True:
            rc = lib.ep_ring_try_read_batch(r, b, len(b), lens, ffi.NULL, 1)
            if rc == 1:
                return lens[0]
            if rc != _EAGAIN:
                raise self._into_error(rc, len(b), timeout_s)
            if timeout_s == 0:
                return None
            if tns is None:
                tns = timeout_ns(timeout_s)
            rc = self._block(lib.ep_ring_reader_wait, (), tns)
            if rc == _ETIMEDOUT:
                return None
            if rc < 0:
                raise self._error(rc, timeout_s)
            r = self._handle()

    # -- zero copy ----------------------------------------------------------------------------------
    def try_peek(self) -> memoryview | None:
        """A read-only view of the next record, left in the ring until ``release()``; None if empty."""
        r = self._handle()
        n = lib.ep_ring_peek(r)
        if n == _EAGAIN:
            return None
        if n < 0:
            raise self._error(n)
        off = self._io.off
        return self._data[off : off + n].toreadonly()

    def release(self) -> None:
        """Give back the record returned by ``try_peek``/``peek``."""
        rc = lib.ep_ring_release(self._handle())
        if rc == -errno.EINVAL:
            raise ValueError("release() without a peeked record")
        check(rc)

    def peek(self, timeout_s: float | None = None) -> _Peek:
        """``with reader.peek() as view:`` reads the next record in place and releases it after the block
        (even if the block raises). Waits up to ``timeout_s`` for a record. The view must not be used
        after the block.

        >>> with Ring.create(capacity=4096) as ring:
        ...     ring.writer().try_write(b"abc")
        ...     with ring.reader().peek() as v:
        ...         bytes(v)
        True
        b'abc'
        """
        self._handle()  # closed: raise before validating the timeout
        if not (timeout_s is None or (type(timeout_s) in _NUMBER and timeout_s >= 0)):
            timeout_ns(timeout_s)  # raises for a bad one before anything is peeked
        tns = None  # computed once the ring is found empty: a timeout costs nothing on the ready path
        while True:
            view = self.try_peek()
            if view is not None:
                return _Peek(self, view)
            if timeout_s == 0:
                raise RingTimeoutError(f"ring {self._ring.name or 'memfd'!r} is empty")
            if tns is None:
                tns = timeout_ns(timeout_s)
            rc = self._block(lib.ep_ring_reader_wait, (), tns)
            if rc < 0:
                raise self._error(rc, timeout_s)

    # -- many records -------------------------------------------------------------------------------
    def try_read_many(self, max_n: int = 256) -> list[bytes]:
        """Take up to ``max_n`` queued records in one C call; an empty list if none. Never blocks."""
        r = self._handle()
        if not isinstance(max_n, int) or max_n <= 0:
            raise ValueError(f"max_n must be a positive int, got {max_n!r}")
        buf, lens, _ = self._batch_arrays(max_n)
        rc = lib.ep_ring_try_read_batch(r, buf, len(buf), lens, ffi.NULL, min(max_n, len(lens)))
        if rc == _EAGAIN:
            return []
        if rc < 0:
            raise self._error(rc)
        mv = ffi.buffer(buf)
        out = []
        pos = 0
        for i in range(rc):
            n = lens[i]
            out.append(mv[pos : pos + n])
            pos += n
        return out

    def read_many(self, max_n: int = 256, timeout_s: float | None = None) -> list[bytes]:
        """Wait up to ``timeout_s`` for at least one record, then take up to ``max_n``."""
        if not (timeout_s is None or (type(timeout_s) in _NUMBER and timeout_s >= 0)):
            timeout_ns(timeout_s)  # raises for a bad one before any record moves
        out = self.try_read_many(max_n)
        if out or timeout_s == 0:
            return out
        rc = self._block(lib.ep_ring_reader_wait, (), timeout_ns(timeout_s))
        if rc < 0:
            raise self._error(rc, timeout_s)
        return self.try_read_many(max_n)

    def read_packed(self, buf, lens, types=None) -> int:
        """Copy up to ``len(lens)`` records back to back into ``buf`` and their sizes into ``lens`` (a
        writable uint32 array), types into ``types`` if given; return the count (0 if empty). Never blocks.
        The fast path: one C call, no Python work per record."""
        r = self._handle()
        b, lb, tb = _read_buffers(buf, lens, types)
        rc = lib.ep_ring_try_read_batch(r, b, len(b), lb, tb, len(lb))
        if rc == _EAGAIN:
            return 0
        if rc == -errno.ENOBUFS:
            raise ValueError(f"next record is {self._io.len} bytes but buf holds only {len(b)}; it stays queued")
        if rc < 0:
            raise self._error(rc)
        return rc

    def batch_reader(self, buf, lens, types=None):
        """Bind output buffers once for repeated batch reads with no per-call conversion.

        Returns ``read()``, which copies up to ``len(lens)`` queued records back to back into ``buf``,
        their sizes into ``lens`` (uint32) and types into ``types`` if given, in one C call, and returns
        how many (0 if the ring is empty; never blocks). Raises PeerClosedError once the ring is empty
        and the producer is gone.

        ``read.views(n)`` then gives the first ``n`` records of that batch as memoryviews into ``buf`` (an
        iterator: the offsets are the running sum of ``lens``, computed for you; record ``i``'s type is
        ``types[i]``). A view costs one slice; it is valid until the next ``read()`` overwrites ``buf``.

        >>> import numpy as np
        >>> with Ring.create(capacity=4096) as ring:
        ...     ring.writer().try_write_many([b"ab", b"cde"])
        ...     buf, lens = np.zeros(64, np.uint8), np.zeros(8, np.uint32)
        ...     read = ring.reader().batch_reader(buf, lens)
        ...     n = read()
        ...     n, lens[:n].tolist(), bytes(buf[:5]), [bytes(v) for v in read.views(n)]
        2
        (2, [2, 3], b'abcde', [b'ab', b'cde'])
        """
        self._handle()
        b, lb, tb = _read_buffers(buf, lens, types)
        nmax, size = len(lb), len(b)
        batch = lib.ep_ring_try_read_batch

        def read() -> int:
            try:
                rc = batch(self._h, b, size, lb, tb, nmax)
            except TypeError:
                raise self._closed_error() from None
            if rc >= 0:
                return rc
            if rc == _EAGAIN:
                return 0
            if rc == -errno.ENOBUFS:
                raise ValueError(f"next record is {self._io.len} bytes but buf holds only {size}; it stays queued")
            raise self._error(rc)

        whole = memoryview(ffi.buffer(b))  # bytes, whatever the dtype of buf
        unpack = ffi.unpack

        def views(n: int):
            """The first ``n`` records of the last read(), as memoryviews into ``buf``."""
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= nmax:
                raise ValueError(f"n must be an int in 0..{nmax} (the count read() returned), got {n!r}")
            return _views(whole, unpack(lb, n))

        read.views = views
        return read

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until a record is queued; True if one is, False on timeout. PeerClosedError if the ring is
        empty and the producer is gone."""
        # Fast path, as in read(): the first slice (None) or the ready case alone (a finite timeout) in one C
        # call; the wait computes its deadline only once nothing is queued.
        if timeout_s is None:
            first = _SLICE_NS
        elif type(timeout_s) in _NUMBER and timeout_s >= 0:
            first = 0
        else:
            first = -1
        if first >= 0:
            self._inflight = 1
            try:
                rc = _reader_wait(self._h, first)
            except TypeError:  # self._h is None: closed
                raise self._closed_error() from None
            finally:  # also when a signal handler raises as the call returns (Ctrl-C): close() waits on it
                self._inflight = 0
            if rc == 0:
                return True
            if rc != _ETIMEDOUT and rc != _EINTR:
                raise self._error(rc, timeout_s)
            if timeout_s == 0:
                return False
        rc = self._block(_reader_wait, (), timeout_ns(timeout_s))
        if rc == _ETIMEDOUT:
            return False
        if rc < 0:
            raise self._error(rc, timeout_s)
        return True

    # -- asyncio (edgepipe.aio) -----------------------------------------------------------------------
    async def read_async(self, timeout_s: float | None = None) -> bytes:
        """``await reader.read_async()``: the asyncio form of :meth:`read`. The loop sleeps until the
        producer's publish sends this waiter its wake (no thread, no polling; see ``edgepipe.aio``).

        Raises:
            RingTimeoutError: nothing arrived in time. PeerClosedError: empty and the producer closed or
                died (its exit reaches the task through a pidfd in the loop). RingClosedError: this end
                was closed while the task awaited.
        """
        rec = self.try_read()
        if rec is not None:
            return rec  # nothing to wait for: no coroutine of aio's, no import
        from edgepipe import aio

        return await aio.wait_for(self, aio.RING_DATA, "producer", self.try_read, self.wait, timeout_s,
                                  "nothing arrived on " + repr(self._ring.name or "memfd"))

    def __aiter__(self) -> RingReader:
        """``async for rec in reader:`` reads until the producer closes (its death raises PeerClosedError)."""
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.read_async()
        except PeerClosedError:
            if self._ring.status().producer_closed:
                raise StopAsyncIteration from None
            raise

    # -- in place, by offset: for handles layered over the ring (edgepipe.frames.FrameReader) ------------

    def peek_offset(self) -> int:
        """Hold the next record in place and return its payload length, or -1 at once if the ring is empty
        (never blocks). Where it is: :attr:`record_offset`; its type: :attr:`last_type`; give it back with
        :meth:`release`."""
        h = self._h
        if h is None:
            raise self._closed_error()
        n = _peek(h)
        if n < 0:
            if n == _EAGAIN:
                return -1
            raise self._error(n)
        return n

    @property
    def record_offset(self) -> int:
        """Offset in :attr:`data` of the payload of the record most recently read or peeked."""
        return self._io.off

    def release_if_held(self) -> None:
        """Give back a record held by :meth:`peek_offset`; nothing if none is held or the end is closed."""
        h = self._h
        if h is not None:
            _release(h)

    def close(self) -> None:
        """Close the consumer end: a producer's next write raises PeerClosedError."""
        if self._close(lib.ep_ring_reader_cancel, lib.ep_ring_reader_close):
            self._scratch = None

    def _batch_arrays(self, max_n: int = 1):
        if self._batch is None:
            size = max(self._max_payload, min(self._ring.capacity, _BATCH_BUF_MAX), 1)
            self._batch = ffi.new("char[]", size)
        if self._blens is None or len(self._blens) < max_n:
            self._blens = ffi.new("uint32_t[]", max(max_n, 256))
        return self._batch, self._blens, None

    def _into_error(self, rc: int, size: int, timeout_s=None) -> Exception:
        """The error of a read into a caller's buffer of ``size`` bytes that got ``rc``."""
        if rc == -errno.ENOBUFS:
            return ValueError(f"next record is {self._io.len} bytes but buf holds only {size}; it stays queued")
        return self._error(rc, timeout_s)

    def _error(self, rc: int, timeout_s=None) -> Exception:
        name = self._ring.name or "memfd"
        if rc in (-errno.EBADF, _ECANCELED):
            return self._closed_error()
        if rc == -errno.EINVAL:
            return ValueError("a peeked record is still held: release() it before a batch read")
        if rc == -errno.EPIPE:
            s = self._ring.status()
            how = "closed" if s.producer_closed else "died"
            return PeerClosedError(f"the producer of {name!r} (pid {s.producer_pid}) {how} and the ring is empty")
        if rc == -errno.ETIMEDOUT:
            return RingTimeoutError(f"nothing arrived on {name!r} within timeout_s={timeout_s}")
        if rc == -errno.EBADMSG:
            truncated = truncation(self._ring)
            if truncated:
                return truncated
            s = self._ring.status()
            return RingCorruptError(f"corrupt record header in {name!r} at position {s.head} (tail {s.tail})")
        try:
            check(rc)
        except Exception as e:  # noqa: BLE001 - returned, not swallowed
            return e
        raise AssertionError(rc)  # pragma: no cover

    def __repr__(self) -> str:
        if self._h is None:
            return f"<RingReader {self._ring.name or 'memfd'!r} closed>"
        s = self._ring.status()
        return f"<RingReader {self._ring.name or 'memfd'!r} capacity={s.capacity} queued={s.queued}>"


def _views(whole: memoryview, sizes: list):
    pos = 0
    for k in sizes:
        end = pos + k
        yield whole[pos:end]
        pos = end


_BLOCKING_CODES = frozenset(
    f.__code__ for f in (_HandleBase._block, RingWriter.write, RingWriter.wait_room, RingReader.read,
                         RingReader.wait)
)


class _Peek:
    __slots__ = ("_reader", "_view")

    def __init__(self, reader: RingReader, view: memoryview) -> None:
        self._reader = reader
        self._view = view

    def __enter__(self) -> memoryview:
        return self._view

    def __exit__(self, *exc) -> None:
        try:
            self._view.release()
        except BufferError:
            pass
        if self._reader._h is not None:
            self._reader.release()
