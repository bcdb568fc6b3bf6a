"""What a ring (``edgepipe.ring``) and a latest slot (``edgepipe.latest``) share: a SharedRegion, the ends
opened through it, how the region is created, attached by name (waiting for its creator) or taken from an fd,
and how an end is opened and a truncated segment reported. Private to the handle modules.

>>> from edgepipe.ring import Ring
>>> with Ring.create(capacity=4096) as ring:
...     isinstance(ring, Segment), truncation(ring)
(True, None)
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable

from edgepipe._args import timeout_ns
from edgepipe._ffi import ffi
from edgepipe.errors import RingBusyError, RingCorruptError, RingNamespaceError, check
from edgepipe.shm import EmptySegmentError, SharedRegion, validate_name

__all__: list[str] = []  # shared by the handle modules, not API


class Segment:
    __slots__ = ("_handles", "_region")
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

    @classmethod
    def _from_segment_fd(cls, fd: int):
        try:
            region = SharedRegion.from_fd(fd)
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


def open_end(opener, seg: Segment, what: str):
    """Open the ``what`` ("writer" or "reader") end of a ring or latest slot with its C ``opener``."""
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


