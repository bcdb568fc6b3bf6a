"""SharedRegion: one mapped shared-memory segment, named (POSIX ``/dev/shm/edgepipe.<name>``) or anonymous
(``memfd``). Knows nothing about rings; ``edgepipe.ring`` lays records out inside it.

Attaching a named segment checks who made it (``fstat`` of the opened fd, so there is no window between
the check and the use): a name in /dev/shm is a public namespace, and a local user could create
``edgepipe.<name>`` first (mode 0666) and feed a consumer its own records. Only segments we own and that no
other user can open are attached, unless ``allow_uids`` names the owners trusted to share one.

Lifetime is explicit: ``close()`` closes the fd and unmaps; ``unlink()`` removes the name. Nothing is
released by ``__del__``.

The mapping is made with Python's ``mmap`` rather than ``ep_shm_map`` (which C clients use): an mmap object
counts the buffer views exported from it and refuses to unmap while any is alive. So a memoryview (or a
numpy array over one) that outlives ``close()`` keeps the pages mapped until it dies, instead of crashing
the interpreter on its next access.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
from collections.abc import Iterable

from edgepipe._ffi import ffi, lib
from edgepipe.errors import (
    EdgepipeOSError,
    RingClosedError,
    RingCorruptError,
    RingNoMemoryError,
    UntrustedSegmentError,
    check,
)

__all__ = ["SharedRegion", "list_segments", "validate_name"]

_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\Z")
SHM_DIR = "/dev/shm"
_MAX_SIZE = 1 << 48  # beyond any RAM this library will meet; keeps sizes inside off_t and size_t
PREFIX = "edgepipe."


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid segment name, else raise TypeError/ValueError naming it.

    A name is 1 to 200 characters of ``[A-Za-z0-9._-]`` and does not start with a dot.
    """
    if not isinstance(name, str):
        raise TypeError(f"segment name must be str, not {type(name).__name__}: {name!r}")
    if not (0 < len(name) <= lib.EP_SHM_NAME_MAX) or not _NAME_RE.match(name):
        raise ValueError(
            f"bad segment name {name!r}: use 1-{lib.EP_SHM_NAME_MAX} characters of "
            "[A-Za-z0-9._-], not starting with '.'"
        )
    return name


def _check_size(size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"size must be int, not {type(size).__name__}: {size!r}")
    if size <= 0 or size > _MAX_SIZE:
        raise ValueError(f"size must be in 1..{_MAX_SIZE} bytes, got {size}")
    return size


def _check_uids(allow_uids: object) -> frozenset[int]:
    if isinstance(allow_uids, (str, bytes)) or not hasattr(allow_uids, "__iter__"):
        raise TypeError(f"allow_uids must be an iterable of uids, not {type(allow_uids).__name__}: {allow_uids!r}")
    out = set()
    for u in allow_uids:
        if not isinstance(u, int) or isinstance(u, bool) or u < 0:
            raise ValueError(f"allow_uids must hold uids (ints >= 0), got {u!r}")
        out.add(u)
    return frozenset(out)


def _check_owner(fd: int, name: str, allow: frozenset[int]) -> None:
    """Refuse (UntrustedSegmentError) a segment owned by a uid that is neither ours nor in ``allow``, one that
    others may open when nobody else is allowed (any group/other bit), and a world-writable one always."""
    st = os.fstat(fd)
    me = os.geteuid()
    owner, mode = st.st_uid, stat.S_IMODE(st.st_mode)
    path = SHM_DIR + "/" + PREFIX + name
    if owner != me and owner not in allow:
        raise UntrustedSegmentError(
            f"segment {name!r} belongs to uid {owner} (mode {mode:04o}), not to us (uid {me}): another user "
            f"may have created it to feed us records; pass allow_uids=[{owner}] if that user is trusted",
            path, owner, mode)
    too_open = mode & (0o002 if allow else 0o077)
    if too_open:
        who = "any user may write it" if mode & 0o002 else "other users may open it"
        hint = "" if mode & 0o002 else "; pass allow_uids=[...] if it is shared with other users on purpose"
        raise UntrustedSegmentError(
            f"segment {name!r} of uid {owner} has mode {mode:04o}: {who}, so its records cannot be trusted{hint}",
            path, owner, mode)


def _check_backed(rc: int, size: int, what: str) -> None:
    """A create that could not reserve the segment's memory (ep_shm.c fallocates it) names the size."""
    if rc in (-errno.ENOMEM, -errno.ENOSPC):
        err = RingNoMemoryError(f"cannot back {what} of {size} bytes ({size / 2**30:.3g} GiB): "
                                f"{os.strerror(-rc)}")
        err.errno = -rc  # type: ignore[attr-defined]
        raise err


class EmptySegmentError(EdgepipeOSError):
    """A segment of size 0: its creator has not sized it yet, or it is not ours at all."""


class SharedRegion:
    """A mapped shared-memory segment.

    >>> r = SharedRegion.anonymous(4096)
    >>> r.size, r.name
    (4096, None)
    >>> r.close()
    """

    __slots__ = ("_addr", "_cbuf", "_fd", "_mmap", "_name", "_owner", "_size")

    def __init__(self, fd: int, size: int, name: str | None, owner: bool) -> None:
        try:
            self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError, OverflowError) as e:
            os.close(fd)
            raise EdgepipeOSError(getattr(e, "errno", None) or errno.EINVAL,
                                  f"cannot map {size} bytes of {name or 'memfd'}: {e}") from None
        self._fd = fd
        self._size = size
        self._name = name
        self._owner = owner
        self._cbuf = ffi.from_buffer(self._mmap)  # holds one export of the mmap while the region is open
        self._addr = ffi.cast("void *", self._cbuf)

    @classmethod
    def create(cls, name: str, size: int) -> SharedRegion:
        """Create ``/dev/shm/edgepipe.<name>`` (mode 0600, fails if it exists) and map it."""
        validate_name(name)
        _check_size(size)
        fd = lib.ep_shm_create(name.encode(), size)
        if fd == -errno.EEXIST:
            raise EdgepipeOSError(errno.EEXIST, f"shared memory segment {name!r} already exists",
                                  SHM_DIR + "/" + PREFIX + name)
        _check_backed(fd, size, f"segment {name!r}")
        check(fd, f"creating segment {name!r} of {size} bytes")
        try:
            return cls(fd, size, name, owner=True)
        except BaseException:
            lib.ep_shm_unlink(name.encode())
            raise

    @classmethod
    def attach(cls, name: str, *, allow_uids: Iterable[int] = ()) -> SharedRegion:
        """Map an existing named segment at its full size, if we can trust who made it.

        Args:
            allow_uids: owners trusted besides ourselves. Without it the segment must be ours and mode
                0600 (no group/other bits); with it, an owner it lists is accepted too, and group/other
                read access (how another user's segment is opened at all) is fine, but never a segment
                any user may write.

        Raises:
            UntrustedSegmentError (a PermissionError): another user owns it, or its mode is too open; the
                message names the owner uid and the mode.
            EdgepipeFileNotFoundError (a FileNotFoundError): no such segment.
            EdgepipePermissionError (a PermissionError): we may not open it (EACCES).
        """
        validate_name(name)
        allow = _check_uids(allow_uids)
        fd = lib.ep_shm_open(name.encode())
        if fd == -errno.ENOENT:
            raise EdgepipeOSError(errno.ENOENT, f"no shared memory segment named {name!r}",
                                  SHM_DIR + "/" + PREFIX + name)
        check(fd, f"opening segment {name!r}")
        try:
            _check_owner(fd, name, allow)
        except BaseException:
            os.close(fd)
            raise
        return cls._from_owned_fd(fd, name)

    @classmethod
    def anonymous(cls, size: int, label: str = "edgepipe") -> SharedRegion:
        """Create an unnamed ``memfd`` segment; share it by passing ``fd`` to a child (inherit or SCM_RIGHTS)."""
        _check_size(size)
        fd = lib.ep_memfd_create(label.encode(), size)
        _check_backed(fd, size, "memfd")
        fd = check(fd, f"memfd of {size} bytes")
        return cls(fd, size, None, owner=True)

    @classmethod
    def from_fd(cls, fd: int, name: str | None = None) -> SharedRegion:
        """Map a segment from an fd (received or inherited); the region keeps its own duplicate of it.

        ``name``: the segment's name, if it has one and the sender said which (multiprocessing does): used
        in messages, and by ``unlink``. Nothing is opened by it.
        """
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(f"fd must be int, not {type(fd).__name__}: {fd!r}")
        if name is not None:
            validate_name(name)
        return cls._from_owned_fd(os.dup(fd), name)

    @classmethod
    def _from_owned_fd(cls, fd: int, name: str | None) -> SharedRegion:
        size = ffi.new("uint64_t *")
        rc = lib.ep_shm_size(fd, size)
        if rc < 0:
            os.close(fd)
            check(rc, f"segment {name or fd!r} is unreadable")
        if size[0] == 0:
            os.close(fd)
            raise EmptySegmentError(errno.EINVAL, f"segment {name or fd!r} is empty (0 bytes)")
        return cls(fd, size[0], name, owner=False)

    # -- properties ---------------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        """The segment name (without the ``edgepipe.`` prefix), or None for a memfd."""
        return self._name

    @property
    def size(self) -> int:
        return self._size

    @property
    def created(self) -> bool:
        """True if this object created the segment (not attached to it)."""
        return self._owner

    @property
    def fd(self) -> int:
        """The segment's fd, e.g. to pass to a child process. Owned by the region."""
        self._check_open()
        return self._fd

    @property
    def address(self):
        """The mapping as a cffi ``void *`` (valid until close)."""
        self._check_open()
        return self._addr

    @property
    def closed(self) -> bool:
        return self._addr is None

    def buffer(self) -> memoryview:
        """A writable memoryview over the whole region. It keeps the pages mapped even after close()."""
        self._check_open()
        return memoryview(self._mmap)

    # -- lifetime -----------------------------------------------------------------------------------
    def unlink(self) -> None:
        """Remove the segment's name so no new process can attach; mappings stay valid. Idempotent."""
        if self._name is None:
            return
        rc = lib.ep_shm_unlink(self._name.encode())
        if rc not in (0, -errno.ENOENT):
            check(rc, f"unlinking {self._name!r}")

    def close(self) -> None:
        """Unmap and close the fd. Safe to call twice. Does not unlink (see ``unlink``)."""
        if self._addr is None:
            return
        self._addr = None
        self._cbuf = None  # drops our own export
        try:
            self._mmap.close()
        except BufferError:
            pass  # views are still alive: the pages stay mapped until the last one is gone
        self._mmap = None
        os.close(self._fd)

    def check_size(self) -> None:
        """Raise RingCorruptError if the segment is now shorter than the mapping (another process
        truncated it: touching the missing pages would kill this process with SIGBUS)."""
        self._check_open()
        try:
            now = os.fstat(self._fd).st_size
        except OSError:
            return
        if now < self._size:
            raise RingCorruptError(f"segment {self._name or 'memfd'!r} was truncated to {now} bytes under its "
                                   f"{self._size}-byte mapping (by another process)")

    def _check_open(self) -> None:
        if self._addr is None:
            raise RingClosedError(f"shared region {self._name or 'memfd'!r} is closed")

    def __enter__(self) -> SharedRegion:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._addr is None else f"size={self._size}"
        return f"<SharedRegion {self._name or 'memfd'!r} {state}>"


def list_segments() -> list[str]:
    """Names of every edgepipe segment in /dev/shm."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError as e:  # pragma: no cover - /dev/shm always exists on Linux
        raise EdgepipeOSError(e.errno, f"cannot list {SHM_DIR}: {e}") from e
    return sorted(e[len(PREFIX):] for e in entries if e.startswith(PREFIX))
