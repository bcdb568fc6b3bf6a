"""What a ring (``edgepipe.ring``) and a latest slot (``edgepipe.latest``) share: a SharedRegion, the ends
opened through it, how the region is created, attached by name (waiting for its creator) or taken from an fd,
how an end is opened and a truncated segment reported, and how a segment crosses to another process.
Private to the handle modules.

multiprocessing: a segment given to ``Process(args=...)``, ``Pool`` or a ``multiprocessing.Queue`` is pickled
by :func:`reduce_segment` (registered with ``ForkingPickler`` for every Segment class), which sends only its fd,
the way multiprocessing sends its own fds (``multiprocessing.reduction.DupFd``: handed to the child at spawn
or forkserver start, else over SCM_RIGHTS through multiprocessing's resource sharer), plus its name, if any,
for messages. The child maps the fd and checks the layout from the segment's header, then opens whichever end
it asks for; the one-live-producer, one-live-consumer rule (RingBusyError) holds across processes as it
always does. Any other pickler gets a TypeError, and so does an open end (it belongs to the process that
opened it). Under the fork start method nothing is pickled: the child inherits the parent's objects, and
:func:`disown_inherited_ends` (an ``os.register_at_fork`` hook) makes the ends the parent had open unusable
there, without touching the shared state the parent still relies on.

>>> from edgepipe.ring import Ring
>>> with Ring.create(capacity=4096) as ring:
...     isinstance(ring, Segment), truncation(ring)
(True, None)
"""

from __future__ import annotations

import errno
import os
import time
import weakref
from collections.abc import Iterable
from multiprocessing import reduction

from edgepipe._args import timeout_ns
from edgepipe._ffi import ffi
from edgepipe.errors import RingBusyError, RingClosedError, RingCorruptError, RingNamespaceError, check
from edgepipe.shm import EmptySegmentError, SharedRegion, validate_name

__all__: list[str] = []  # shared by the handle modules, not API


class Segment:
    __slots__ = ("__weakref__", "_handles", "_region")
    _KIND: str = "segment"  # for messages: "ring", "latest slot"
    _MEMFD_LABEL: str = "edgepipe"
    _C_PREFIX: str = "ep_ring"  # the ends are struct <prefix>_writer / <prefix>_reader
    _OPEN_CONTEXT: str = "opening the {what} of {where!r}"  # the error message when opening an end fails

    @classmethod
    def _create_region(cls, name: str | None, size: int, init):
        """Create the region (named, or a memfd for None), lay it out with ``init(region)``, wrap it."""
        if name is None:
            region = SharedRegion.anonymous(size, cls._MEMFD_LABEL)
        else:
            region = SharedRegion.create(validate_name(name), size)
        try:
            init(region)
        except BaseException:
            region.unlink()
            region.close()
            raise
        return cls(region)

    @classmethod
    def _attach_named(cls, name: str, wait_s: float, allow_uids: Iterable[int] = ()):
        validate_name(name)
        wait_ns = timeout_ns(wait_s)
        deadline = time.monotonic() + (wait_ns / 1e9 if wait_ns >= 0 else 1e12)
        while True:
            try:
                region = SharedRegion.attach(name, allow_uids=allow_uids)
            except (FileNotFoundError, EmptySegmentError) as e:
                # Not there yet, or its creator is between shm_open and ftruncate: retry until wait_s.
                if time.monotonic() >= deadline:
                    if isinstance(e, EmptySegmentError):
                        raise RingCorruptError(
                            f"segment {name!r} is empty (0 bytes): not a {cls._KIND}") from None
                    raise
                time.sleep(0.002)
                continue
            try:
                return cls(region)
            except RingCorruptError:
                region.close()
                # A creator between shm_open and its init call looks exactly like this: retry.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)
            except BaseException:
                region.close()
                raise

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        reduction.ForkingPickler.register(cls, reduce_segment)

    def __reduce_ex__(self, protocol):
        # ForkingPickler (multiprocessing) finds reduce_segment in its dispatch table before it gets here.
        kind = type(self).__name__
        raise TypeError(
            f"a {kind} is pickled only by multiprocessing (Process args, Pool, multiprocessing.Queue), which "
            f"sends its fd by SCM_RIGHTS; elsewhere send its fd (.fd, e.g. with FrameSocket.send_fds) and "
            f"open it with {kind}.from_fd")

    @classmethod
    def _from_segment_fd(cls, fd: int, name: str | None = None):
        try:
            region = SharedRegion.from_fd(fd, name=name)
        except EmptySegmentError:
            raise RingCorruptError(f"fd {fd} is an empty file (0 bytes): not a {cls._KIND}") from None
        try:
            return cls(region)
        except BaseException:
            region.close()
            raise

    @property
    def region(self) -> SharedRegion:
        return self._region

    @property
    def name(self) -> str | None:
        return self._region.name

    @property
    def fd(self) -> int:
        return self._region.fd

    @property
    def closed(self) -> bool:
        return self._region.closed

    # -- lifetime -----------------------------------------------------------------------------------
    def unlink(self) -> None:
        """Remove a named segment's name (attached processes keep working). Idempotent; no-op for memfd."""
        self._region.unlink()

    def close(self) -> None:
        """Close every end opened through this object, then unmap (arrays still alive keep their pages).
        Safe to call twice. Does not unlink.

        Raises:
            RingBusyError: a writer of this ring is leased to a C loop (``ImuLoop``) that still writes
                through it; nothing is closed. Close the loop first.
        """
        for h in self._handles:
            if getattr(h, "_lease", None) is not None:
                raise h._closed_error()
        for h in list(self._handles):
            h.close()
        self._handles.clear()
        self._region.close()

    def _disown_inherited(self) -> None:
        """In a forked child: forget (without closing) the ends the parent had open (see the module doc)."""
        for h in self._handles:
            h._disown()
        self._handles.clear()

    def _forget(self, handle) -> None:
        try:
            self._handles.remove(handle)
        except ValueError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        # The creator of a named segment removes its name on the way out of a `with`.
        self.unlink() if self._created_here() else None
        self.close()

    def _created_here(self) -> bool:
        if self._region.closed or self._region.name is None:
            return False
        try:
            return self.status().creator_pid == os.getpid()
        except RingCorruptError:
            return self._region.created  # truncated under us: the control block may be gone



def truncation(seg: Segment) -> RingCorruptError | None:
    """The RingCorruptError saying the segment was truncated under its mapping, or None if it was not."""
    try:
        seg.region.check_size()
    except RingCorruptError as e:
        return e
    return None


# Segments that have had an end opened in this process: the fork hook below looks at these only.
_WITH_ENDS: weakref.WeakSet = weakref.WeakSet()


def reduce_segment(seg: Segment):
    """ForkingPickler's reducer for every Segment class: the fd (as multiprocessing sends its own) and name."""
    if seg.closed:
        raise RingClosedError(f"{seg._KIND} {seg.name or 'memfd'!r} is closed: there is nothing to send")
    return rebuild_segment, (type(seg), reduction.DupFd(seg.fd), seg.name)


def rebuild_segment(cls, dupfd, name: str | None) -> Segment:
    """The receiving side of :func:`reduce_segment`: map the fd received, check its layout, wrap it."""
    fd = dupfd.detach()
    try:
        return cls._from_segment_fd(fd, name)
    finally:
        os.close(fd)  # the region holds its own duplicate


def disown_inherited_ends() -> None:
    """After a fork, in the child: every end the parent had open stays the parent's. Its C state is a copy
    of the parent's, so closing it here would mark the parent's end closed in shared memory, and using it
    would make two producers (or consumers) of one ring; instead each such end raises RingClosedError naming
    the parent, and ``close()`` of its segment leaves it alone."""
    for seg in list(_WITH_ENDS):
        seg._disown_inherited()
    _WITH_ENDS.clear()


os.register_at_fork(after_in_child=disown_inherited_ends)


def disowned_error(end, what: str, pid: int) -> RingClosedError:
    """What an end inherited through fork raises (see :func:`disown_inherited_ends`)."""
    seg = end.segment
    return RingClosedError(
        f"this {type(end).__name__} on {seg.name or 'memfd'!r} was opened by pid {pid}, which forked this "
        f"process, and stays that process's {what}: call {what}() on the {type(seg).__name__} here to open "
        f"this process's own end")


def refuse_pickle(end) -> TypeError:
    """The TypeError an open end raises when pickled: it belongs to the process that opened it."""
    kind = type(end.segment).__name__
    return TypeError(
        f"a {type(end).__name__} is an open end of a {kind} and cannot be pickled: pass the {kind} "
        f"(end.segment) to the other process (a multiprocessing.Process or Pool argument) and open the end "
        f"there")


def open_end(opener, seg: Segment, what: str):
    """Open the ``what`` ("writer" or "reader") end of a ring or latest slot with its C ``opener``."""
    _WITH_ENDS.add(seg)
    out = ffi.new(f"struct {seg._C_PREFIX}_{what} **")
    rc = opener(seg.region.address, seg.region.size, seg.region.fd, out)
    where = seg.name or "memfd"
    if rc == -errno.EBUSY:
        s = seg.status()
        pid = s.producer_pid if what == "writer" else s.consumer_pid
        raise RingBusyError(f"{seg._KIND} {where!r} already has a live {what} (pid {pid})")
    if rc == -errno.EXDEV:
        raise RingNamespaceError(
            f"{seg._KIND} {where!r}: its {what} end or the other end is held by a process in another pid "
            f"namespace, whose liveness can't be checked from here; open both ends in one pid namespace")
    if rc == -errno.EBADMSG:
        seg.region.check_size()
    check(rc, seg._OPEN_CONTEXT.format(what=what, where=where))
    return out[0]


