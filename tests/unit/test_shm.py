"""edgepipe.shm.SharedRegion: named and memfd segments, their names, sizes, permissions and lifetime.

Named segments use the ``shm_name`` fixture and are unlinked inside the test; everything else is memfd.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import re
import stat

import pytest

from edgepipe import RingClosedError, SharedRegion
from edgepipe.errors import EdgepipeOSError
from edgepipe.shm import validate_name

SHM_DIR = "/dev/shm"

def _own_segments() -> set[str]:
    """/dev/shm as this test session sees it: less the per-test names other test runs on this shared machine
    create meanwhile (conftest's shm_name: edgepipe.t-<their pid>-...)."""
    others = re.compile(rf"^edgepipe\.t-(?!{os.getpid()}-)\d+-")
    return {e for e in os.listdir(SHM_DIR) if not others.match(e)}



def _path(name: str) -> str:
    return os.path.join(SHM_DIR, "edgepipe." + name)


@pytest.fixture
def named(shm_name):
    """A 4096-byte named region, unlinked and closed after the test."""
    region = SharedRegion.create(shm_name, 4096)
    yield region
    region.unlink()
    region.close()


class TestCreate:
    def test_create_makes_the_file(self, named, shm_name):
        """create() makes /dev/shm/edgepipe.<name> of exactly the requested size."""
        assert os.path.exists(_path(shm_name))
        assert os.stat(_path(shm_name)).st_size == 4096
        assert named.size == 4096
        assert named.name == shm_name

    def test_create_is_mode_0600(self, named, shm_name):
        """A named segment is readable and writable by its owner only."""
        assert stat.S_IMODE(os.stat(_path(shm_name)).st_mode) == 0o600

    def test_create_is_exclusive(self, named, shm_name):
        """Creating a name that exists raises FileExistsError naming the segment, and leaves it alone."""
        named.buffer()[:4] = b"keep"
        with pytest.raises(FileExistsError) as ei:
            SharedRegion.create(shm_name, 8192)
        assert shm_name in str(ei.value)
        assert os.stat(_path(shm_name)).st_size == 4096
        assert bytes(named.buffer()[:4]) == b"keep"

    def test_new_region_is_zeroed(self, named):
        """A freshly created region reads as zeros."""
        assert bytes(named.buffer()) == bytes(4096)

    def test_repr_names_the_segment(self, named, shm_name):
        """repr shows the name and the size while open."""
        assert repr(named) == f"<SharedRegion {shm_name!r} size=4096>"


class TestAttach:
    def test_attach_sees_the_same_bytes(self, named, shm_name):
        """Bytes written through one mapping are read through an attached one, at the full size."""
        other = SharedRegion.attach(shm_name)
        try:
            named.buffer()[100:105] = b"hello"
            assert other.size == 4096
            assert other.name == shm_name
            assert bytes(other.buffer()[100:105]) == b"hello"
            other.buffer()[0:2] = b"ok"
            assert bytes(named.buffer()[0:2]) == b"ok"
        finally:
            other.close()

    def test_attach_missing_raises_file_not_found(self, shm_name):
        """Attaching a name nobody created raises FileNotFoundError naming it."""
        with pytest.raises(FileNotFoundError) as ei:
            SharedRegion.attach(shm_name)
        assert shm_name in str(ei.value)

    def test_attach_from_another_process(self, named, shm_name):
        """A separate process attaches by name and its writes are visible here."""

        def child(name):
            region = SharedRegion.attach(name)
            region.buffer()[8:16] = b"childpid"
            region.close()

        p = mp.get_context("fork").Process(target=child, args=(shm_name,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert bytes(named.buffer()[8:16]) == b"childpid"


class TestAnonymousAndFd:
    def test_anonymous_has_no_name_and_no_file(self):
        """An anonymous region is a memfd: no name and nothing in /dev/shm."""
        before = _own_segments()
        region = SharedRegion.anonymous(8192)
        try:
            assert region.name is None
            assert region.size == 8192
            assert os.fstat(region.fd).st_size == 8192
            assert "memfd:" in os.readlink(f"/proc/self/fd/{region.fd}")
            assert _own_segments() == before
        finally:
            region.close()

    def test_anonymous_cannot_shrink_or_grow(self):
        """A memfd region is sealed: nobody can resize it under a mapped reader."""
        region = SharedRegion.anonymous(4096)
        try:
            with pytest.raises(PermissionError):
                os.ftruncate(region.fd, 100)
            with pytest.raises(PermissionError):
                os.ftruncate(region.fd, 8192)
            assert os.fstat(region.fd).st_size == 4096
        finally:
            region.close()

    def test_from_fd_shares_bytes_and_dups_the_fd(self):
        """from_fd maps the same memory through its own duplicate of the fd."""
        a = SharedRegion.anonymous(4096)
        b = SharedRegion.from_fd(a.fd)
        try:
            assert b.fd != a.fd
            assert b.size == 4096
            assert b.name is None
            a.buffer()[0:3] = b"abc"
            assert bytes(b.buffer()[0:3]) == b"abc"
            a.close()
            assert bytes(b.buffer()[0:3]) == b"abc"  # b's mapping and fd outlive a
        finally:
            a.close()
            b.close()

    def test_from_fd_of_a_named_segment(self, named):
        """from_fd works on a named segment's fd too, and reports no name."""
        other = SharedRegion.from_fd(named.fd)
        try:
            named.buffer()[0:1] = b"z"
            assert bytes(other.buffer()[0:1]) == b"z"
            assert other.name is None
        finally:
            other.close()

    def test_child_inherits_anonymous_region(self):
        """A forked child maps the memfd from the inherited fd and its writes come back."""
        region = SharedRegion.anonymous(4096)

        def child(fd):
            r = SharedRegion.from_fd(fd)
            r.buffer()[0:5] = b"child"
            r.close()

        try:
            p = mp.get_context("fork").Process(target=child, args=(region.fd,))
            p.start()
            p.join(30)
            assert p.exitcode == 0
            assert bytes(region.buffer()[0:5]) == b"child"
        finally:
            region.close()

    def test_from_fd_rejects_non_int(self):
        """from_fd with a non-int raises TypeError naming the value."""
        with pytest.raises(TypeError, match="'3'"):
            SharedRegion.from_fd("3")  # type: ignore[arg-type]

    def test_from_fd_rejects_bad_fd(self):
        """from_fd with a descriptor that is not open raises OSError EBADF."""
        with pytest.raises(OSError) as ei:
            SharedRegion.from_fd(-1)
        assert ei.value.errno == 9

    def test_from_fd_rejects_empty_file(self):
        """from_fd of an empty file raises an EdgepipeOSError instead of mapping nothing."""
        fd = os.memfd_create("empty")
        try:
            with pytest.raises(EdgepipeOSError):
                SharedRegion.from_fd(fd)
        finally:
            os.close(fd)


class TestLifetime:
    def test_close_twice_is_fine(self):
        """close() may be called twice; closed reports it."""
        region = SharedRegion.anonymous(4096)
        assert not region.closed
        region.close()
        region.close()
        assert region.closed
        assert "closed" in repr(region)

    @pytest.mark.parametrize("use", ["fd", "address", "buffer"])
    def test_use_after_close_raises(self, use):
        """fd, address and buffer() on a closed region raise RingClosedError."""
        region = SharedRegion.anonymous(4096)
        region.close()
        with pytest.raises(RingClosedError):
            attr = getattr(region, use)
            attr() if use == "buffer" else None

    def test_close_releases_the_fd(self):
        """close() closes the region's file descriptor."""
        region = SharedRegion.anonymous(4096)
        fd = region.fd
        region.close()
        with pytest.raises(OSError):
            os.fstat(fd)

    def test_with_closes(self):
        """Leaving a ``with`` block closes the region."""
        with SharedRegion.anonymous(4096) as region:
            assert not region.closed
        assert region.closed

    def test_unlink_removes_name_but_keeps_mapping(self, shm_name):
        """unlink() removes the name; the mapping stays usable and a second unlink is a no-op."""
        region = SharedRegion.create(shm_name, 4096)
        try:
            region.buffer()[0:2] = b"hi"
            region.unlink()
            assert not os.path.exists(_path(shm_name))
            region.unlink()
            assert bytes(region.buffer()[0:2]) == b"hi"
            with pytest.raises(FileNotFoundError):
                SharedRegion.attach(shm_name)
        finally:
            region.unlink()
            region.close()

    def test_unlink_after_close_still_removes_name(self, shm_name):
        """A closed region can still remove its name."""
        region = SharedRegion.create(shm_name, 4096)
        region.close()
        assert os.path.exists(_path(shm_name))
        region.unlink()
        assert not os.path.exists(_path(shm_name))

    def test_close_does_not_unlink(self, shm_name):
        """close() leaves the name in place, so another process can still attach."""
        region = SharedRegion.create(shm_name, 4096)
        try:
            region.close()
            other = SharedRegion.attach(shm_name)
            other.close()
        finally:
            region.unlink()

    def test_unlink_of_anonymous_is_noop(self):
        """unlink() on a memfd region does nothing and raises nothing."""
        region = SharedRegion.anonymous(4096)
        region.unlink()
        assert not region.closed
        region.close()


BAD_NAMES = ["", "x" * 201, "a/b", "/lead", "..", ".hidden", "é", "caméra", "a b", "tab\t", "nul\x00"]


class TestNames:
    @pytest.mark.parametrize("name", BAD_NAMES)
    @pytest.mark.parametrize("how", ["create", "attach"])
    def test_bad_name_raises_value_error_naming_it(self, name, how):
        """A malformed name raises ValueError whose message shows the name, and creates nothing."""
        before = _own_segments()
        with pytest.raises(ValueError) as ei:
            SharedRegion.create(name, 4096) if how == "create" else SharedRegion.attach(name)
        assert repr(name) in str(ei.value)
        assert _own_segments() == before

    @pytest.mark.parametrize("name", [None, 5, b"abc", ["a"], 1.5])
    @pytest.mark.parametrize("how", ["create", "attach"])
    def test_non_str_name_raises_type_error_naming_it(self, name, how):
        """A name that is not a str raises TypeError whose message shows the value."""
        with pytest.raises(TypeError) as ei:
            SharedRegion.create(name, 4096) if how == "create" else SharedRegion.attach(name)
        assert repr(name) in str(ei.value)

    @pytest.mark.parametrize("name", ["a", "A-b_c.d", "0", "x" * 200, "cam0.frames", "-lead"])
    def test_good_names_pass(self, name):
        """validate_name accepts 1-200 characters of [A-Za-z0-9._-] not starting with a dot."""
        assert validate_name(name) == name

    def test_longest_name_round_trips(self, shm_name):
        """A name of exactly 200 characters creates, attaches and unlinks."""
        name = (shm_name + "-" + "n" * 200)[:200]
        region = SharedRegion.create(name, 4096)
        try:
            other = SharedRegion.attach(name)
            other.close()
        finally:
            region.unlink()
            region.close()
        assert not os.path.exists(_path(name))


class TestSizes:
    @pytest.mark.parametrize("size", [0, -1, -4096])
    @pytest.mark.parametrize("how", ["create", "anonymous"])
    def test_non_positive_size_raises_value_error(self, shm_name, size, how):
        """A size <= 0 raises ValueError naming the size, and creates nothing."""
        with pytest.raises(ValueError) as ei:
            SharedRegion.create(shm_name, size) if how == "create" else SharedRegion.anonymous(size)
        assert str(size) in str(ei.value)
        assert not os.path.exists(_path(shm_name))

    @pytest.mark.parametrize("size", [1.5, 4096.0, "4096", None, True])
    @pytest.mark.parametrize("how", ["create", "anonymous"])
    def test_non_int_size_raises_type_error(self, shm_name, size, how):
        """A size that is not an int (bool included) raises TypeError naming the value."""
        with pytest.raises(TypeError) as ei:
            SharedRegion.create(shm_name, size) if how == "create" else SharedRegion.anonymous(size)
        assert repr(size) in str(ei.value)
        assert not os.path.exists(_path(shm_name))

    @pytest.mark.parametrize("how", ["create", "anonymous"])
    def test_size_beyond_u64_raises_value_error(self, shm_name, how):
        """A size that does not fit in 64 bits raises ValueError naming it, not a bare OverflowError."""
        size = 2**64
        with pytest.raises(ValueError) as ei:
            SharedRegion.create(shm_name, size) if how == "create" else SharedRegion.anonymous(size)
        assert str(size) in str(ei.value)
        assert not os.path.exists(_path(shm_name))

    @pytest.mark.parametrize("size", [1, 4095, 4097, 1 << 20])
    def test_odd_sizes_are_honoured(self, size):
        """Any positive size maps, and the region reports exactly that size."""
        region = SharedRegion.anonymous(size)
        try:
            assert region.size == size
            assert len(region.buffer()) == size
        finally:
            region.close()


NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")


def _as_nobody(fn, *args) -> int:
    """Fork a child that drops to uid/gid 65534 and runs ``fn(*args)``; return its exit code
    (fn's return value, 1 for an unexpected exception)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = fn(*args)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _squat_ring(name: str, mode: int) -> int:
    """As another user: create ring ``name``, write one record, set ``mode`` (as a squatter would)."""
    from edgepipe import Ring

    ring = Ring.create(name, capacity=4096)
    ring.writer().try_write(b"squatted")
    os.fchmod(ring.region.fd, mode)
    ring.close()
    return 0


def _squat_slot(name: str) -> int:
    from edgepipe import LatestSlot

    LatestSlot.create(name, 1024).close()
    return 0


@needs_root
class TestAttachPermissions:
    def test_eacces_is_caught_as_permission_error(self, named, shm_name):
        """Another user attaching our 0600 segment gets a real EACCES that ``except PermissionError`` catches,
        as an EdgepipeOSError with errno EACCES naming the segment."""

        def attach(name):
            try:
                SharedRegion.attach(name)
            except PermissionError as e:
                ok = isinstance(e, EdgepipeOSError) and e.errno == errno.EACCES and name in str(e)
                return 10 if ok else 2
            return 3

        assert _as_nobody(attach, shm_name) == 10


@needs_root
class TestAttachOwner:
    def test_foreign_squatted_ring_is_refused(self, shm_name):
        """A ring another uid created first (mode 0666) is refused with UntrustedSegmentError (a
        PermissionError) naming the owner uid and the mode; none of its records is read."""
        from edgepipe import Ring, UntrustedSegmentError

        try:
            assert _as_nobody(_squat_ring, shm_name, 0o666) == 0
            with pytest.raises(PermissionError, match=f"uid {NOBODY}.*0666") as ei:
                Ring.attach(shm_name)
            assert isinstance(ei.value, UntrustedSegmentError)
            assert (ei.value.owner_uid, ei.value.mode) == (NOBODY, 0o666)
            # Trusting the owner is not enough while any user may write the segment.
            with pytest.raises(UntrustedSegmentError, match="any user may write"):
                Ring.attach(shm_name, allow_uids=[NOBODY])
        finally:
            os.unlink(_path(shm_name))

    def test_allow_uids_accepts_a_listed_owner(self, shm_name):
        """With allow_uids naming the owner, another user's group-shared ring is attached and read."""
        from edgepipe import Ring, UntrustedSegmentError

        try:
            assert _as_nobody(_squat_ring, shm_name, 0o660) == 0
            with pytest.raises(UntrustedSegmentError, match=f"belongs to uid {NOBODY}"):
                Ring.attach(shm_name, allow_uids=[12345])
            with Ring.attach(shm_name, allow_uids=[NOBODY]) as ring:
                assert ring.reader().try_read() == b"squatted"
        finally:
            os.unlink(_path(shm_name))

    def test_latest_slot_attach_checks_the_owner(self, shm_name):
        """LatestSlot.attach refuses another user's slot and accepts it with allow_uids."""
        from edgepipe import LatestSlot, UntrustedSegmentError

        try:
            assert _as_nobody(_squat_slot, shm_name) == 0
            with pytest.raises(UntrustedSegmentError, match=f"uid {NOBODY}"):
                LatestSlot.attach(shm_name)
            LatestSlot.attach(shm_name, allow_uids=[NOBODY]).close()
        finally:
            os.unlink(_path(shm_name))


class TestAttachMode:
    def test_own_segment_open_to_others_is_refused(self, named, shm_name):
        """Our own segment with group/other bits is refused naming its mode, accepted with allow_uids only
        while nobody else may write it."""
        from edgepipe import UntrustedSegmentError

        os.chmod(_path(shm_name), 0o644)
        with pytest.raises(UntrustedSegmentError, match="mode 0644"):
            SharedRegion.attach(shm_name)
        SharedRegion.attach(shm_name, allow_uids=[NOBODY]).close()
        os.chmod(_path(shm_name), 0o666)
        with pytest.raises(UntrustedSegmentError, match="mode 0666"):
            SharedRegion.attach(shm_name, allow_uids=[NOBODY])

    def test_bad_allow_uids_are_named(self, named, shm_name):
        """allow_uids must hold uids: a negative one or a string is refused naming it."""
        with pytest.raises(ValueError, match="-1"):
            SharedRegion.attach(shm_name, allow_uids=[-1])
        with pytest.raises(TypeError, match="'65534'"):
            SharedRegion.attach(shm_name, allow_uids="65534")
