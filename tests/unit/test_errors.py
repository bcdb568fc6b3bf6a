"""edgepipe.errors: the exception tree and check(rc), which turns a C ``-errno`` into the matching class."""

from __future__ import annotations

import errno
import os

import pytest

import edgepipe.errors as E
from edgepipe.errors import check

# errno -> (edgepipe class, the builtin it must also be, or None)
MAPPED = {
    errno.EMSGSIZE: (E.RecordTooLargeError, ValueError),
    errno.EBADMSG: (E.RingCorruptError, None),
    errno.EPIPE: (E.PeerClosedError, ConnectionError),
    errno.EPROTO: (E.LayoutVersionError, None),
    errno.ETIMEDOUT: (E.RingTimeoutError, TimeoutError),
    errno.EBUSY: (E.RingBusyError, None),
}

# errnos with no class of their own and no builtin OSError subclass: they stay EdgepipeOSError.
UNMAPPED = [errno.EINVAL, errno.ENOMEM, errno.ENOBUFS, errno.ENOSPC, 4095]

# errnos Python gives a builtin OSError subclass: check() raises the EdgepipeOSError subclass that is also it.
BUILTIN = {
    errno.EACCES: (E.EdgepipePermissionError, PermissionError),
    errno.EPERM: (E.EdgepipePermissionError, PermissionError),
    errno.ENOENT: (E.EdgepipeFileNotFoundError, FileNotFoundError),
    errno.EEXIST: (E.EdgepipeFileExistsError, FileExistsError),
    errno.EAGAIN: (E.EdgepipeBlockingIOError, BlockingIOError),
    errno.ECONNREFUSED: (E.EdgepipeConnectionRefusedError, ConnectionRefusedError),
    errno.ECONNRESET: (E.EdgepipeConnectionResetError, ConnectionResetError),
    errno.ESRCH: (E.EdgepipeProcessLookupError, ProcessLookupError),
    errno.EINTR: (E.EdgepipeInterruptedError, InterruptedError),
    errno.ENOTDIR: (E.EdgepipeNotADirectoryError, NotADirectoryError),
    errno.EISDIR: (E.EdgepipeIsADirectoryError, IsADirectoryError),
    errno.ECHILD: (E.EdgepipeChildProcessError, ChildProcessError),
    errno.ECONNABORTED: (E.EdgepipeConnectionAbortedError, ConnectionAbortedError),
}


class TestCheckSuccess:
    @pytest.mark.parametrize("rc", [0, 1, 8, 2**31 - 1, 2**40])
    def test_non_negative_passes_through(self, rc):
        """check returns a non-negative return code unchanged."""
        assert check(rc) == rc
        assert check(rc, "context") == rc


class TestCheckMapped:
    @pytest.mark.parametrize("code", sorted(MAPPED), ids=lambda c: errno.errorcode.get(c, str(c)))
    def test_errno_maps_to_its_class(self, code):
        """check(-errno) raises exactly the class mapped to that errno, with .errno set."""
        cls, _ = MAPPED[code]
        with pytest.raises(cls) as ei:
            check(-code)
        assert type(ei.value) is cls
        assert ei.value.errno == code

    @pytest.mark.parametrize("code", sorted(MAPPED), ids=lambda c: errno.errorcode.get(c, str(c)))
    def test_mapped_class_is_also_its_builtin(self, code):
        """A mapped error is catchable as EdgepipeError and as the builtin its meaning matches."""
        cls, builtin = MAPPED[code]
        with pytest.raises(E.EdgepipeError) as ei:
            check(-code)
        if builtin is not None:
            assert isinstance(ei.value, builtin)

    @pytest.mark.parametrize("code", sorted(MAPPED), ids=lambda c: errno.errorcode.get(c, str(c)))
    def test_message_has_strerror_and_context(self, code):
        """The message carries os.strerror of the errno and the caller's context string."""
        with pytest.raises(E.EdgepipeError) as ei:
            check(-code, "segment 'cam0'")
        assert os.strerror(code) in str(ei.value)
        assert "segment 'cam0'" in str(ei.value)


class TestCheckUnmapped:
    @pytest.mark.parametrize("code", UNMAPPED)
    def test_unknown_errno_is_edgepipe_os_error(self, code):
        """check(-errno) for an errno with no class raises EdgepipeOSError with .errno set."""
        with pytest.raises(E.EdgepipeOSError) as ei:
            check(-code, "what")
        assert type(ei.value) is E.EdgepipeOSError
        assert ei.value.errno == code
        assert isinstance(ei.value, OSError)
        assert isinstance(ei.value, E.EdgepipeError)
        assert "what" in str(ei.value)



class TestOSErrorBuiltins:
    @pytest.mark.parametrize("code", sorted(BUILTIN), ids=lambda c: errno.errorcode.get(c, str(c)))
    def test_check_raises_the_builtin_too(self, code):
        """check(-errno) for an errno Python maps to an OSError subclass raises an EdgepipeOSError that is
        also that builtin, with .errno and the context kept."""
        cls, builtin = BUILTIN[code]
        with pytest.raises(builtin) as ei:
            check(-code, "segment 'cam0'")
        assert type(ei.value) is cls
        assert isinstance(ei.value, E.EdgepipeOSError) and ei.value.errno == code
        assert "segment 'cam0'" in str(ei.value)

    def test_except_permission_error_catches_eacces(self):
        """``except PermissionError`` catches EACCES from the C core (it used to slip past as a bare OSError)."""
        try:
            check(-errno.EACCES, "opening segment 'x'")
        except PermissionError as e:
            assert e.errno == errno.EACCES
        else:
            pytest.fail("no exception")

    @pytest.mark.parametrize("code", sorted(BUILTIN), ids=lambda c: errno.errorcode.get(c, str(c)))
    def test_constructor_picks_the_subclass(self, code):
        """EdgepipeOSError(errno, msg, filename) returns the matching subclass, as OSError(errno, msg) does,
        so code that builds one directly is covered too; it pickles to the same class."""
        import pickle

        cls, builtin = BUILTIN[code]
        e = E.EdgepipeOSError(code, "msg", "/dev/shm/edgepipe.x")
        assert type(e) is cls and isinstance(e, builtin)
        assert (e.errno, e.strerror, e.filename) == (code, "msg", "/dev/shm/edgepipe.x")
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is cls and back.errno == code

    def test_untrusted_segment_error_is_a_permission_error(self):
        """UntrustedSegmentError is a PermissionError with errno EACCES, the owner and mode, and pickles."""
        import pickle

        e = E.UntrustedSegmentError("segment 'x' belongs to uid 65534", "/dev/shm/edgepipe.x", 65534, 0o666)
        assert isinstance(e, PermissionError) and isinstance(e, E.EdgepipeOSError)
        assert (e.errno, e.owner_uid, e.mode) == (errno.EACCES, 65534, 0o666)
        back = pickle.loads(pickle.dumps(e))
        assert (type(back), back.owner_uid, back.mode, str(back)) == (type(e), 65534, 0o666, str(e))


class TestTree:
    @pytest.mark.parametrize(
        "cls,bases",
        [
            (E.RingError, (E.EdgepipeError,)),
            (E.RingTimeoutError, (E.RingError, TimeoutError)),
            (E.RecordTooLargeError, (E.RingError, ValueError)),
            (E.RingCorruptError, (E.RingError,)),
            (E.RingBusyError, (E.RingError,)),
            (E.RingClosedError, (E.RingError, ValueError)),
            (E.FrameError, (E.EdgepipeError,)),
            (E.FrameTooLargeError, (E.FrameError, ValueError)),
            (E.PeerClosedError, (E.FrameError, ConnectionError)),
            (E.LayoutVersionError, (E.EdgepipeError,)),
            (E.EdgepipeOSError, (E.EdgepipeError, OSError)),
        ],
        ids=lambda v: v.__name__ if isinstance(v, type) else None,
    )
    def test_class_has_documented_bases(self, cls, bases):
        """Each exception class inherits from the parents drawn in the errors.py docstring."""
        for base in bases:
            assert issubclass(cls, base), f"{cls.__name__} should be a {base.__name__}"

    def test_edgepipe_error_is_an_exception(self):
        """EdgepipeError is an ordinary Exception, so a bare ``except Exception`` catches every edgepipe error."""
        assert issubclass(E.EdgepipeError, Exception)
        assert not issubclass(Exception, E.EdgepipeError)

    def test_corrupt_and_busy_are_not_value_errors(self):
        """RingCorruptError and RingBusyError are not mistaken for argument errors."""
        assert not issubclass(E.RingCorruptError, ValueError)
        assert not issubclass(E.RingBusyError, ValueError)

    def test_every_class_has_a_docstring(self):
        """Every exception class in errors.py documents when it is raised."""
        for name, obj in vars(E).items():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == E.__name__:
                assert obj.__doc__ and obj.__doc__.strip(), name
