"""The edgepipe exception tree. Where a builtin fits, a class inherits from it too, so ``except TimeoutError``
or ``except ValueError`` catch what a user would expect.

One piece: every layer raises these, and one module with the whole tree drawn below is where a user looks
them up (``except edgepipe.RingError``); splitting it by layer would scatter one ``except`` hierarchy.

::

    EdgepipeError
    ├── RingError
    │   ├── RingTimeoutError (TimeoutError)      a timed wait expired
    │   │   └── OutputStalledError               a lossless output stayed full: its consumer never read
    │   ├── RecordTooLargeError (ValueError)     payload over the ring's max_payload
    │   ├── RingCorruptError                     a header or region that cannot be a ring record/region
    │   ├── RingBusyError                        the end is already held by a live process
    │   ├── RingNamespaceError                   a peer lives in another pid namespace: its liveness can't be judged
    │   ├── RingNoMemoryError (MemoryError)      the machine can't back a new segment of that size
    │   └── RingClosedError (ValueError)         this handle was closed
    ├── FrameError                               a framed-socket failure (edgepipe.control.framing)
    │   ├── FrameTooLargeError (ValueError)      a frame over the socket's max_frame
    │   ├── FrameDecodeError (ValueError)        a frame whose bytes are not the expected message
    │   │   └── UnknownBodyError                 an Envelope with no body this schema knows (.envelope)
    │   ├── FrameTimeoutError (TimeoutError)     a send or recv did not finish before its timeout
    │   │   └── FrameStalledError                a frame that began did not complete within frame_timeout_s
    │   ├── FrameClosedError (ValueError)        this FrameSocket was closed
    │   ├── PeerClosedError (ConnectionError)    the other end closed or its process died
    │   └── RemoteError                          the peer answered with an edgepipe.v1.Error (.code, .code_name)
    ├── ServerError                              the control-socket server could not start (edgepipe.control.server)
    │   ├── SocketInUseError (FileExistsError)   a live server listens on that path, or it is not a socket
    │   └── UnsafeSocketDirError (PermissionError) the socket's directory is not ours, a symlink, or too open
    ├── ImuError                                 the IMU stage or one of its sources failed (edgepipe.stages.imu)
    │   ├── ImuConfigError (ValueError)          a rate, beta, wait mode or source argument out of range
    │   ├── ImuSourceError (ValueError)          a source whose data cannot be used: scale, scan type, CSV
    │   ├── ImuDeviceNotFoundError (FileNotFoundError) no such IIO device, channel or CSV file
    │   └── ImuSourceClosedError (ConnectionError) the IIO buffer (or its FIFO stand-in) closed mid-stream
    ├── InferenceError                           the inference stage or its model failed (edgepipe.stages.inference)
    │   ├── ModelNotFoundError (FileNotFoundError) the model file does not exist
    │   ├── ModelLoadError (ValueError)          the file is not a model ONNX Runtime can load, or not a detector
    │   ├── ModelInputError (ValueError)         a frame or input size the model cannot take
    │   ├── WorkerError                          an inference worker could not start or load the model
    │   ├── CalibrationError (ValueError)        no usable calibration frames (edgepipe.stages.inference.quantize)
    │   └── QuantizationAccuracyError            the INT8 model agrees too little with FP32 (edgepipe.stages.inference.quantize)
    ├── ImageError                               a numpy frame record or latest slot failed (edgepipe.frames)
    │   ├── ImageHeaderError (ValueError)        a frame header field that cannot be right (.field, .value)
    │   ├── ImageShapeError (ValueError)         shape/dtype/pixel format not matching the slot or unsupported
    │   ├── ImageTooLargeError (ValueError)      a frame bigger than the ring or slot allows (sizes named)
    │   ├── ImageHeldError (BufferError)         frames kept past their `with` still hold every free slot
    │   └── ImageReleasedError (ValueError)      Frame.array used after its `with` block
    ├── CaptureError                             a capture source failed (edgepipe.stages.capture)
    │   ├── CameraNotFoundError (FileNotFoundError) no such camera device, file or image folder
    │   ├── SourceOpenError (OSError)            the source exists but cannot be opened (busy, unreadable, refused)
    │   └── SourceFailedError                    a source that opened failed mid-stream
    ├── BridgeError                              a bridge to another machine failed (edgepipe.bridge)
    │   └── BridgePayloadError (ValueError)      a sample on a bridged key that is not an edgepipe envelope
    │       ├── BridgeVersionError (LayoutVersionError) an envelope of another layout version
    │       └── BridgePayloadTooLargeError       a record over the receiving end's max_bytes
    ├── ConfigError (ValueError)                 a pipeline description that cannot run (.path, .line, .key)
    ├── PipelineNotFoundError (LookupError)      no running pipeline of that name or control socket (.name)
    ├── TapNotFoundError (LookupError)           a running pipeline's link that is unknown or has no tap (.link, .tappable)
    ├── RealtimeNotPermittedError (PermissionError) SCHED_FIFO refused: no CAP_SYS_NICE, rtprio limit too low (.priority)
    ├── LayoutVersionError                       a region of another layout version
    ├── MissingExtraError (ImportError)          an optional dependency is not installed (.extra names it)
    ├── RecordingError                           an MCAP recording could not be written or read (edgepipe.record; .path)
    │   ├── RecordingNotFoundError (FileNotFoundError) no such recording file
    │   ├── RecordingFormatError (ValueError)    not an MCAP file (another tool's format: a .bag, HDF5, .drec)
    │   ├── RecordingTruncatedError (ValueError) an MCAP file cut off before its end (kill -9, power loss): --recover it
    │   ├── UnknownSchemaError (ValueError)      a channel whose schema this edgepipe cannot decode (.name)
    │   └── RecordingDiskFullError (OSError)     the disk filled while recording: stopped, what was written is kept
    └── EdgepipeOSError (OSError)                any other -errno, with .errno set; built with an errno that
        │                                        Python maps to an OSError subclass, it becomes the matching
        │                                        Edgepipe<Builtin> below (as OSError(errno, msg) does)
        ├── EdgepipePermissionError (PermissionError)       EACCES, EPERM
        │   └── UntrustedSegmentError                        a named segment another user owns, or open
        │                                                    to other users (.owner_uid, .mode)
        ├── EdgepipeFileNotFoundError (FileNotFoundError)   ENOENT
        ├── EdgepipeFileExistsError (FileExistsError)       EEXIST
        ├── EdgepipeBlockingIOError (BlockingIOError)       EAGAIN, EALREADY, EINPROGRESS
        ├── EdgepipeBrokenPipeError (BrokenPipeError)       EPIPE, ESHUTDOWN (check() gives PeerClosedError)
        ├── EdgepipeConnectionAbortedError, EdgepipeConnectionRefusedError, EdgepipeConnectionResetError
        ├── EdgepipeChildProcessError, EdgepipeProcessLookupError, EdgepipeInterruptedError
        ├── EdgepipeIsADirectoryError, EdgepipeNotADirectoryError
        └── EdgepipeTimeoutError (TimeoutError)             ETIMEDOUT (check() gives RingTimeoutError)
"""

from __future__ import annotations

import errno
import os

# check() is left out on purpose: the handle modules share it; users see only the exceptions.
__all__ = [
    "BridgeError",
    "BridgePayloadError",
    "BridgePayloadTooLargeError",
    "BridgeVersionError",
    "CalibrationError",
    "CameraNotFoundError",
    "CaptureError",
    "ConfigError",
    "EdgepipeBlockingIOError",
    "EdgepipeBrokenPipeError",
    "EdgepipeChildProcessError",
    "EdgepipeConnectionAbortedError",
    "EdgepipeConnectionRefusedError",
    "EdgepipeConnectionResetError",
    "EdgepipeError",
    "EdgepipeFileExistsError",
    "EdgepipeFileNotFoundError",
    "EdgepipeInterruptedError",
    "EdgepipeIsADirectoryError",
    "EdgepipeNotADirectoryError",
    "EdgepipeOSError",
    "EdgepipePermissionError",
    "EdgepipeProcessLookupError",
    "EdgepipeTimeoutError",
    "FrameClosedError",
    "FrameDecodeError",
    "FrameError",
    "FrameStalledError",
    "FrameTimeoutError",
    "FrameTooLargeError",
    "ImageError",
    "ImageHeaderError",
    "ImageHeldError",
    "ImageReleasedError",
    "ImageShapeError",
    "ImageTooLargeError",
    "ImuConfigError",
    "ImuDeviceNotFoundError",
    "ImuError",
    "ImuSourceClosedError",
    "ImuSourceError",
    "InferenceError",
    "LayoutVersionError",
    "MissingExtraError",
    "ModelInputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OutputStalledError",
    "PeerClosedError",
    "PipelineNotFoundError",
    "QuantizationAccuracyError",
    "RealtimeNotPermittedError",
    "RecordTooLargeError",
    "RecordingDiskFullError",
    "RecordingError",
    "RecordingFormatError",
    "RecordingNotFoundError",
    "RecordingTruncatedError",
    "RemoteError",
    "RingBusyError",
    "RingClosedError",
    "RingCorruptError",
    "RingError",
    "RingNamespaceError",
    "RingNoMemoryError",
    "RingTimeoutError",
    "ServerError",
    "SocketInUseError",
    "SourceFailedError",
    "SourceOpenError",
    "TapNotFoundError",
    "UnknownBodyError",
    "UnknownSchemaError",
    "UnsafeSocketDirError",
    "UntrustedSegmentError",
    "WorkerError",
]


class EdgepipeError(Exception):
    """Base of every error edgepipe raises."""


class RingError(EdgepipeError):
    """A ring operation failed."""


class RingTimeoutError(RingError, TimeoutError):
    """A blocking ring call did not complete before its timeout."""


class OutputStalledError(RingTimeoutError):
    """A stage waited ``stall_timeout_s`` on a full lossless output ring without its consumer taking a record
    (no reader attached, or the reader stopped reading); the message names the stage and the ring."""


class RecordTooLargeError(RingError, ValueError):
    """A record is larger than the ring's maximum payload (capacity/2 - 8 bytes, and at most 4 GiB - 8: the
    record header's u32 length)."""


class RingCorruptError(RingError):
    """The region is not a ring, is truncated, or holds a record header that cannot be right."""


class RingBusyError(RingError):
    """The producer or consumer end of a ring is already held by a live process."""


class RingNamespaceError(RingError):
    """The other end of a ring or latest slot (or the process holding this end) lives in another pid
    namespace: its pid means nothing here, so it can neither be watched nor presumed dead and replaced."""


class RingNoMemoryError(RingError, MemoryError):
    """A new ring or latest slot can't be backed by memory (or its tmpfs is full); the message names the
    size. ``.errno`` is ENOMEM or ENOSPC."""


class RingClosedError(RingError, ValueError):
    """The handle was closed; like I/O on a closed file, this is a ValueError."""


class FrameError(EdgepipeError):
    """A framing or peer-level failure."""


class FrameTooLargeError(FrameError, ValueError):
    """A frame is larger than the configured maximum."""


class FrameDecodeError(FrameError, ValueError):
    """A complete frame arrived, but its bytes do not parse as the expected protobuf message."""


class UnknownBodyError(FrameDecodeError):
    """A frame parsed as an ``edgepipe.v1.Envelope`` but holds no body this schema knows: a newer minor's
    message (its body is among the unknown fields). ``.envelope`` is the parsed Envelope, so its ``seq``
    can be echoed in a reply; the stream is still at a frame boundary."""

    def __init__(self, message: str, envelope=None) -> None:
        super().__init__(message)
        self.envelope = envelope


class FrameTimeoutError(FrameError, TimeoutError):
    """A FrameSocket send or recv did not complete before its timeout."""


class FrameStalledError(FrameTimeoutError):
    """A frame whose first bytes arrived did not complete within the FrameSocket's ``frame_timeout_s``: the
    peer announced a frame and stopped sending. The receive side is unusable afterwards."""


class FrameClosedError(FrameError, ValueError):
    """The FrameSocket was closed; like I/O on a closed file, this is a ValueError."""


class PeerClosedError(FrameError, ConnectionError):
    """The other end closed cleanly or its process died."""


class RemoteError(FrameError):
    """The peer sent an ``edgepipe.v1.Error`` (a refused Hello, a failed request).

    Attributes:
        code: the ``edgepipe.v1.ErrorCode`` number. code_name: its name (``"ERROR_CODE_VERSION_MISMATCH"``).
        remote_message: the peer's text.
    """

    def __init__(self, code: int, code_name: str, remote_message: str, context: str = "") -> None:
        super().__init__(f"{context}{': ' if context else ''}{code_name} ({code}): {remote_message}")
        self.code = code
        self.code_name = code_name
        self.remote_message = remote_message


class ServerError(EdgepipeError):
    """The control-socket server could not set up its socket."""


class SocketInUseError(ServerError, FileExistsError):
    """A live server already listens on the socket path (it is not stolen), or the path is not a socket."""


class UnsafeSocketDirError(ServerError, PermissionError):
    """The socket's directory is a symlink, is owned by another user, or is open to other users."""


class ImuError(EdgepipeError):
    """The IMU sampling stage or one of its sources failed."""


class ImuConfigError(ImuError, ValueError):
    """An ImuStage or source argument is out of range (rate, beta, wait mode, filter, axis)."""


class ImuSourceError(ImuError, ValueError):
    """A source's data cannot be used: an unreadable scale or scan type, a CSV without usable rows."""


class ImuDeviceNotFoundError(ImuError, FileNotFoundError):
    """No such IIO device, channel file, char device or CSV file."""


class ImuSourceClosedError(ImuError, ConnectionError):
    """The IIO buffered char device (or the FIFO standing in for it) closed while the loop read it."""


class InferenceError(EdgepipeError):
    """The inference stage, its model or the quantizer failed."""


class ModelNotFoundError(InferenceError, FileNotFoundError):
    """The model file does not exist."""


class ModelLoadError(InferenceError, ValueError):
    """The file is not a model ONNX Runtime can load, or its inputs/outputs are not a [N,3,H,W] detector's."""


class ModelInputError(InferenceError, ValueError):
    """A frame (shape, dtype, pixel format) or an input size the model cannot take."""


class WorkerError(InferenceError):
    """An inference worker process could not start or load its model."""


class CalibrationError(InferenceError, ValueError):
    """The calibration source (video file or image folder) gave no usable frames."""


class QuantizationAccuracyError(InferenceError):
    """The quantized model agrees with the FP32 model less than the threshold; nothing was written."""


class ImageError(EdgepipeError):
    """A numpy frame record (edgepipe.frames) or latest-only slot operation failed."""


class ImageHeaderError(ImageError, ValueError):
    """A frame header in a ring or slot holds a field that cannot be right. ``.field`` names it and
    ``.value`` is what was found."""

    def __init__(self, message: str, field: str = "", value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class ImageShapeError(ImageError, ValueError):
    """An array whose shape, dtype or layout does not match the claimed slot, or that frames cannot carry."""


class ImageTooLargeError(ImageError, ValueError):
    """A frame is bigger than the ring (or latest slot) can hold; the message gives both sizes."""


class ImageHeldError(ImageError, BufferError):
    """Arrays kept past their ``with`` block still pin every slot the reader could give back; drop them
    (or keep ``frame.copy()`` instead) before reading on."""


class ImageReleasedError(ImageError, ValueError):
    """``Frame.array`` was used after the frame's ``with`` block released it."""


class CaptureError(EdgepipeError):
    """A capture source (camera, file, URL, folder, pattern) failed."""


class CameraNotFoundError(CaptureError, FileNotFoundError):
    """No such camera device, video file or image folder."""


class SourceOpenError(CaptureError, OSError):
    """The source exists but could not be opened: camera busy, file unreadable or not a video, URL refused."""


class SourceFailedError(CaptureError):
    """A source that opened fine stopped delivering frames before its end (a read error mid-stream)."""


class ConfigError(EdgepipeError, ValueError):
    """A pipeline description (TOML file or Python spec) that cannot run. The message names the file, line
    and key with the bad value; ``.path``, ``.line`` and ``.key`` hold them (None when unknown)."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.key = key


class PipelineNotFoundError(EdgepipeError, LookupError):
    """No running pipeline answers at that name or control socket (edgepipe.pipeline.attach); the message
    lists the running ones. ``.name`` is what was looked for."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class TapNotFoundError(EdgepipeError, LookupError):
    """A running pipeline refused to hand out a link's tap: no such link, or the link has no ``tap = true``
    (the message says how to add it). ``.link`` is the link asked for, ``.tappable`` the links that have a tap
    (empty when the refusal came from a pipeline that did not list them)."""

    def __init__(self, message: str, link: str | None = None, tappable: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.link = link
        self.tappable = tuple(tappable)


class RealtimeNotPermittedError(EdgepipeError, PermissionError):
    """The kernel refused SCHED_FIFO (no CAP_SYS_NICE, an rtprio limit below the priority); the message says
    how to allow it. ``.priority`` is the priority asked for."""

    def __init__(self, message: str, priority: int | None = None) -> None:
        super().__init__(message)
        self.priority = priority


class LayoutVersionError(EdgepipeError):
    """The shared region was laid out by another, incompatible version of edgepipe."""


class BridgeError(EdgepipeError):
    """A bridge to another machine (edgepipe.bridge) failed: zenoh could not open, or a sample was bad."""


class BridgePayloadError(BridgeError, ValueError):
    """A sample on a bridged key that is not an edgepipe bridge envelope (short, bad magic, length or crc).
    The receiving bridge counts and drops it, with a log line; it never stops the bridge."""


class BridgeVersionError(BridgePayloadError, LayoutVersionError):
    """A bridge envelope of another layout version (a peer running another edgepipe)."""


class BridgePayloadTooLargeError(BridgePayloadError):
    """A bridged record over the receiving end's ``max_bytes`` (the message names both sizes)."""


class MissingExtraError(EdgepipeError, ImportError):
    """A part of edgepipe needs an optional dependency that is not installed. The message names the
    ``pip install "edgepipe[...]"`` to run; ``.extra`` is that extra's name (None for a plain package)."""

    def __init__(self, message: str, extra: str | None = None) -> None:
        super().__init__(message)
        self.extra = extra


class RecordingError(EdgepipeError):
    """An MCAP recording could not be written or read (edgepipe.record). ``.path`` names the file."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class RecordingNotFoundError(RecordingError, FileNotFoundError):
    """No recording at that path."""


class RecordingFormatError(RecordingError, ValueError):
    """The file is not MCAP (another tool's format: a ROS 1 .bag, eCAL's HDF5, dora's .drec, ...)."""


class RecordingTruncatedError(RecordingError, ValueError):
    """An MCAP file that was cut off before its end (the recorder was killed, the power went): its complete
    chunks can be recovered with ``edgepipe record --recover FILE``."""


class UnknownSchemaError(RecordingError, ValueError):
    """A schema this edgepipe cannot decode or replay. ``.name`` is the schema's name."""

    def __init__(self, message: str, *, path: str | None = None, name: str | None = None) -> None:
        super().__init__(message, path=path)
        self.name = name


class RecordingDiskFullError(RecordingError, OSError):
    """The disk filled while recording: the recording stopped; what reached the disk is kept (complete
    chunks are recoverable with ``edgepipe record --recover``)."""


class EdgepipeOSError(EdgepipeError, OSError):
    """Any other operating-system error from the C core; ``.errno`` is set.

    Like ``OSError(errno, msg)``, ``EdgepipeOSError(errno, msg[, filename])`` returns the subclass that also
    inherits the builtin Python picks for that errno (EACCES/EPERM: :class:`EdgepipePermissionError`, a
    ``PermissionError``; ENOENT: :class:`EdgepipeFileNotFoundError`; ...), so ``except PermissionError``
    catches an edgepipe EACCES wherever it is raised. Errnos with no builtin (EINVAL, ENOMEM) stay
    EdgepipeOSError.
    """

    def __new__(cls, *args, **kwargs):
        if cls is EdgepipeOSError and len(args) >= 2 and isinstance(args[0], int):
            cls = _os_error_class(args[0])
        return super().__new__(cls, *args, **kwargs)


class EdgepipePermissionError(EdgepipeOSError, PermissionError):
    """EACCES or EPERM from the operating system."""


class EdgepipeFileNotFoundError(EdgepipeOSError, FileNotFoundError):
    """ENOENT: no such segment, file or socket."""


class EdgepipeFileExistsError(EdgepipeOSError, FileExistsError):
    """EEXIST: a segment or file of that name already exists."""


class EdgepipeBlockingIOError(EdgepipeOSError, BlockingIOError):
    """EAGAIN, EALREADY or EINPROGRESS where a call could not wait."""


class EdgepipeBrokenPipeError(EdgepipeOSError, BrokenPipeError):
    """EPIPE or ESHUTDOWN built directly (``check()`` turns EPIPE into PeerClosedError)."""


class EdgepipeConnectionAbortedError(EdgepipeOSError, ConnectionAbortedError):
    """ECONNABORTED."""


class EdgepipeConnectionRefusedError(EdgepipeOSError, ConnectionRefusedError):
    """ECONNREFUSED: nobody listens there."""


class EdgepipeConnectionResetError(EdgepipeOSError, ConnectionResetError):
    """ECONNRESET."""


class EdgepipeChildProcessError(EdgepipeOSError, ChildProcessError):
    """ECHILD."""


class EdgepipeProcessLookupError(EdgepipeOSError, ProcessLookupError):
    """ESRCH: no such process."""


class EdgepipeInterruptedError(EdgepipeOSError, InterruptedError):
    """EINTR that reached the caller."""


class EdgepipeIsADirectoryError(EdgepipeOSError, IsADirectoryError):
    """EISDIR."""


class EdgepipeNotADirectoryError(EdgepipeOSError, NotADirectoryError):
    """ENOTDIR."""


class EdgepipeTimeoutError(EdgepipeOSError, TimeoutError):
    """ETIMEDOUT built directly (``check()`` turns it into RingTimeoutError)."""


class UntrustedSegmentError(EdgepipePermissionError):
    """A named segment that another user owns (and ``allow_uids`` does not list), or whose mode lets other
    users open it: a local user could have created it first under a well-known name and fed us its records.

    Attributes:
        owner_uid: the segment's owner (fstat). mode: its permission bits. ``.errno`` is EACCES and
        ``.filename`` the segment's path.
    """

    # EdgepipeOSError defines __new__, so OSError parses its arguments there (and its __init__ does nothing):
    # hand it the (errno, message, filename) it expects.
    def __new__(cls, message: str, filename: str | None = None, owner_uid: int = -1, mode: int = 0):
        return super().__new__(cls, errno.EACCES, message, filename)

    def __init__(self, message: str, filename: str | None = None, owner_uid: int = -1, mode: int = 0) -> None:
        super().__init__(errno.EACCES, message, filename)
        self.owner_uid = owner_uid
        self.mode = mode

    def __reduce__(self):
        return type(self), (self.strerror, self.filename, self.owner_uid, self.mode)


# The builtin OSError subclass Python picks for an errno -> ours. EdgepipeOSError.__new__ asks Python which
# builtin an errno gets (type(OSError(code, ""))), so the mapping is exactly the interpreter's.
_OS_BY_BUILTIN: dict[type, type] = {
    PermissionError: EdgepipePermissionError,
    FileNotFoundError: EdgepipeFileNotFoundError,
    FileExistsError: EdgepipeFileExistsError,
    BlockingIOError: EdgepipeBlockingIOError,
    BrokenPipeError: EdgepipeBrokenPipeError,
    ConnectionAbortedError: EdgepipeConnectionAbortedError,
    ConnectionRefusedError: EdgepipeConnectionRefusedError,
    ConnectionResetError: EdgepipeConnectionResetError,
    ChildProcessError: EdgepipeChildProcessError,
    ProcessLookupError: EdgepipeProcessLookupError,
    InterruptedError: EdgepipeInterruptedError,
    IsADirectoryError: EdgepipeIsADirectoryError,
    NotADirectoryError: EdgepipeNotADirectoryError,
    TimeoutError: EdgepipeTimeoutError,
}


def _os_error_class(code: int) -> type:
    """The EdgepipeOSError subclass for ``code``: the one that also inherits Python's builtin for it."""
    return _OS_BY_BUILTIN.get(type(OSError(code, "")), EdgepipeOSError)


_BY_ERRNO = {
    errno.EMSGSIZE: RecordTooLargeError,
    errno.EBADMSG: RingCorruptError,
    errno.EPIPE: PeerClosedError,
    errno.EPROTO: LayoutVersionError,
    errno.ETIMEDOUT: RingTimeoutError,
    errno.EBUSY: RingBusyError,
    errno.EXDEV: RingNamespaceError,
}


def check(rc: int, what: str = "") -> int:
    """Pass a success value through; raise the matching EdgepipeError for ``-errno``.

    Args:
        rc: a C return code: ``>= 0`` success, ``-errno`` failure.
        what: context for the message, e.g. the segment name or the bad value.

    Raises:
        EdgepipeError: the subclass for the errno, or EdgepipeOSError.
    """
    if rc >= 0:
        return rc
    code = -rc
    msg = os.strerror(code) + (f": {what}" if what else "")
    cls = _BY_ERRNO.get(code)
    if cls is None:
        raise EdgepipeOSError(code, msg)
    err = cls(msg)
    err.errno = code  # type: ignore[attr-defined]
    raise err
