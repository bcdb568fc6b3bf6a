"""FrameSocket: protobuf messages and raw payloads in length-prefixed frames over an AF_UNIX stream socket.

The wire format and all socket I/O live in ``csrc/ep_frame.c``: a u32 little-endian length, then the bytes;
file descriptors ride on a frame as SCM_RIGHTS. This module checks arguments, turns C return codes into
typed errors, and parses frames as ``edgepipe.v1`` messages (``proto/edgepipe/v1/``).

One piece: the send and receive halves share one socket, its lock, its partial-frame state and its
timeouts; split, each half would reach into the other's private state.

Waiting happens in C (``ppoll`` with an absolute CLOCK_MONOTONIC deadline) with the GIL released. A signal
interrupts the wait: C returns ``-EINTR`` with the frame's progress kept in a ``struct ep_frame_io``, Python
runs its handlers at once (so Ctrl-C works), and the call resumes where it stopped. A receive interrupted
by an exception or a timeout part-way through a frame keeps that progress, and the next receive finishes
the same frame; a send cannot be taken back, so one stopped part-way marks the stream unusable for sending.
The two directions break apart: an incoming frame over max_frame leaves the receive side unusable but the
send side at a frame boundary, so a server can still send the typed Error that explains the refusal.

``frame_timeout_s`` bounds how long a frame may take once its first byte has arrived, whatever the caller's
own timeout: a peer that announces a large frame and stalls short of its end gets FrameStalledError and a
refused receive side, rather than pinning the receive buffer for ever. Waiting for a frame to start is not
limited by it (an idle peer is fine).

The receiver reads ahead (up to READ_AHEAD bytes per recvmsg, kept in C), so a stream of small frames
costs about one system call per frame or less; fds still arrive with the frame they were sent with. Bytes
read ahead belong to this FrameSocket: once it has received, do not read the socket by other means.

A FrameSocket may be used by one sending and one receiving thread at a time; ``close()`` from any thread
(or a signal handler) wakes a blocked call, which then raises FrameClosedError.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time

from google.protobuf.message import DecodeError, Message

from edgepipe._ffi import ffi, lib
from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as _pb
from edgepipe.errors import (
    FrameClosedError,
    FrameDecodeError,
    FrameError,
    FrameStalledError,
    FrameTimeoutError,
    FrameTooLargeError,
    PeerClosedError,
    UnknownBodyError,
    check,
)
from edgepipe._args import timeout_ns
from edgepipe._os import close_fds

__all__ = ["Envelope", "FrameSocket"]

#: The top-level message of every control-plane frame (``edgepipe.v1.Envelope``).
Envelope = _pb.Envelope

PROTOCOL_MAJOR = 1  # edgepipe.control.server refuses a Hello of another major (Error VERSION_MISMATCH)
PROTOCOL_MINOR = 6  # 1: ErrorCode UNSUPPORTED and BUSY, the compatibility rule; 2: StageSpec (no pickles
#                    between a supervisor and its stages), StageState.counters; 3: Stats.start_ns;
#                    4: FrameMeta.attitude, InferenceResult.attitude (AlignedAttitude, the align stage);
#                    5: ImuSample.deadline_ns, device_ns, late_ns, raw_gyro/raw_accel/raw_mag, flags;
#                    an Attach from a client is a request for rings (a supervisor's taps)
#                    6: InferenceResult.offload (OffloadInfo, the offload stage)

DEFAULT_MAX_FRAME = lib.EP_FRAME_DEFAULT_MAX
MAX_FDS = lib.EP_FRAME_MAX_FDS
_MAX_FRAME_LIMIT = 2**31 - 1  # the C calls return the payload length as an int
_RXBUF_START = 64 * 1024  # the receive buffer starts here, grows to the largest frame, and shrinks back
_RXBUF_KEEP = 1 << 20  # after a frame larger than this the buffer drops back to _RXBUF_START
# C reads ahead into this many bytes, so a stream of small frames costs about one recvmsg per socket
# buffer's worth rather than two per frame (header, then payload).
READ_AHEAD = 64 * 1024

_send = lib.ep_frame_send
_recv = lib.ep_frame_recv
_from_buffer = ffi.from_buffer
_unpack = ffi.unpack
_get_ident = threading.get_ident
_EINTR = -errno.EINTR
_ENOBUFS = -errno.ENOBUFS
_EMSGSIZE = -errno.EMSGSIZE
_ETIMEDOUT = -errno.ETIMEDOUT
_EPIPE = -errno.EPIPE
_mono_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux: the clock ep_frame.c's deadlines use
_LINGER_DRAIN_MAX = 1 << 20  # close(linger_s=...) discards at most this much of what the peer still sends


def _deadline(timeout_s: float | None) -> int:
    """Absolute CLOCK_MONOTONIC deadline in ns for C, or -1 for none."""
    if timeout_s is None:
        return -1
    tns = timeout_ns(timeout_s)
    return -1 if tns < 0 else _mono_ns() + tns


def _check_max_frame(max_frame: object) -> int:
    if not isinstance(max_frame, int) or isinstance(max_frame, bool):
        raise TypeError(f"max_frame must be int, not {type(max_frame).__name__}: {max_frame!r}")
    if not 0 <= max_frame <= _MAX_FRAME_LIMIT:
        raise ValueError(f"max_frame must be in 0..{_MAX_FRAME_LIMIT} bytes, got {max_frame}")
    return max_frame


def _check_frame_timeout(frame_timeout_s: object) -> int | None:
    """frame_timeout_s in ns (None stays None); a positive number of seconds."""
    if frame_timeout_s is None:
        return None
    if not isinstance(frame_timeout_s, (int, float)) or isinstance(frame_timeout_s, bool):
        raise TypeError(f"frame_timeout_s must be a number or None, not {type(frame_timeout_s).__name__}: "
                        f"{frame_timeout_s!r}")
    if not 0 < frame_timeout_s < 1e9:
        raise ValueError(f"frame_timeout_s must be > 0 seconds (or None), got {frame_timeout_s!r}")
    return int(frame_timeout_s * 1e9)


def _fd_list(fds: object) -> list[int]:
    """Validate fds: a sequence of ints >= 0 (or objects with fileno()), at most MAX_FDS of them."""
    if isinstance(fds, (str, bytes)) or not hasattr(fds, "__iter__"):
        raise TypeError(f"fds must be a sequence of file descriptors, not {type(fds).__name__}: {fds!r:.60}")
    out = []
    for f in fds:
        if hasattr(f, "fileno") and not isinstance(f, int):
            f = f.fileno()
        if not isinstance(f, int) or isinstance(f, bool):
            raise TypeError(f"a file descriptor must be an int, not {type(f).__name__}: {f!r:.60}")
        if f < 0:
            raise ValueError(f"file descriptors must be >= 0, got {f}")
        out.append(f)
    if len(out) > MAX_FDS:
        raise ValueError(f"a frame carries at most {MAX_FDS} file descriptors, got {len(out)}")
    return out


def _payload(data: object, what: str):
    """A cffi char[] over a bytes-like object or a serialized protobuf message."""
    if isinstance(data, Message):
        data = data.SerializeToString()
    try:
        return ffi.from_buffer(data, require_writable=False)
    except TypeError:
        raise TypeError(
            f"{what} must be a protobuf message or a bytes-like object, not {type(data).__name__}: {data!r:.60}"
        ) from None


def _take_fds(io) -> list[int]:
    fds = [io.fds[i] for i in range(io.nfds)]
    io.nfds = 0
    return fds


class FrameSocket:
    """One end of a connected AF_UNIX stream socket that moves whole frames.

    Args:
        sock: a connected ``socket.socket`` of family AF_UNIX and type SOCK_STREAM; the FrameSocket owns
            it from now on (``close()`` closes it).
        max_frame: the largest payload, in bytes, this end sends or accepts (default 16 MiB).
        frame_timeout_s: once a frame's first byte has arrived, the whole frame must arrive within this
            (FrameStalledError otherwise); None (default) for no limit. Settable later.

    >>> from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
    >>> a, b = FrameSocket.pair()
    >>> with a, b:
    ...     a.send(Envelope(hello=pb.Hello(stage_name="imu", pid=42, role=pb.ROLE_STAGE)))
    ...     msg = b.recv(timeout_s=1.0)
    ...     print(msg.WhichOneof("body"), msg.hello.stage_name, msg.hello.pid)
    ...     b.send_bytes(b"raw")
    ...     a.recv_bytes(timeout_s=1.0)
    hello imu 42
    b'raw'
    """

    __slots__ = ("_fd", "_frame_timeout_ns", "_max_frame", "_ra", "_rx", "_rx_broken", "_rx_started", "_rx_thread",
                 "_rxbuf", "_rxc", "_sock", "_tx", "_tx_broken", "_tx_thread")

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME,
                 frame_timeout_s: float | None = None) -> None:
        if not isinstance(sock, socket.socket):
            raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}: {sock!r:.60}")
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"sock must be an AF_UNIX SOCK_STREAM socket, got {sock.family!r} {sock.type!r}")
        if sock.fileno() < 0:
            raise ValueError(f"sock is closed: {sock!r}")
        self._max_frame = _check_max_frame(max_frame)
        self._frame_timeout_ns = _check_frame_timeout(frame_timeout_s)
        self._rx_started = 0  # CLOCK_MONOTONIC ns when the frame being received was first seen, 0 if none
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._rx = ffi.new("struct ep_frame_io *")
        self._tx = ffi.new("struct ep_frame_io *")
        self._ra = ffi.new("uint8_t[]", READ_AHEAD)  # owned here, used by C through _rx.ra
        self._rx.ra = self._ra
        self._rx.ra_cap = READ_AHEAD
        self._rxbuf = bytearray(_RXBUF_START)
        self._rxc = ffi.from_buffer(self._rxbuf)
        # Why a direction is unusable (it is no longer at a frame boundary), or None.
        self._rx_broken: str | None = None
        self._tx_broken: str | None = None
        # The thread inside a send / recv C call, 0 when none: close() waits for them to leave C.
        self._tx_thread = 0
        self._rx_thread = 0

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def pair(cls, max_frame: int = DEFAULT_MAX_FRAME) -> tuple[FrameSocket, FrameSocket]:
        """Two connected FrameSockets (``socket.socketpair``), e.g. for a parent and a forked child."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a, max_frame), cls(b, max_frame)

    @classmethod
    def connect(cls, path: str | os.PathLike, timeout_s: float | None = None,
                max_frame: int = DEFAULT_MAX_FRAME) -> FrameSocket:
        """Connect to a listening AF_UNIX socket at ``path``.

        Raises:
            FileNotFoundError: nothing at ``path``. ConnectionRefusedError: nobody listens there.
            FrameTimeoutError: the connection did not complete within ``timeout_s``.
        """
        tns = timeout_ns(timeout_s)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(None if tns < 0 else tns / 1e9)
            try:
                s.connect(os.fspath(path))
            except TimeoutError:
                raise FrameTimeoutError(f"connecting to {os.fspath(path)!r} took over {timeout_s} s") from None
            s.settimeout(None)
            return cls(s, max_frame)
        except BaseException:
            s.close()
            raise

    @classmethod
    def from_fd(cls, fd: int, max_frame: int = DEFAULT_MAX_FRAME) -> FrameSocket:
        """Wrap a connected AF_UNIX stream socket fd (inherited, or received with recv_fds). Takes
        ownership of ``fd``: ``close()`` closes it."""
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(f"fd must be int, not {type(fd).__name__}: {fd!r}")
        s = socket.socket(fileno=fd)
        try:
            return cls(s, max_frame)
        except BaseException:
            s.detach()  # the caller keeps an fd we refused
            raise

    # -- facts ----------------------------------------------------------------------------------------
    @property
    def max_frame(self) -> int:
        """The largest payload this end sends or accepts, in bytes."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = _check_max_frame(value)

    @property
    def frame_timeout_s(self) -> float | None:
        """How long a frame may take once its first byte arrived (None: no limit)."""
        return None if self._frame_timeout_ns is None else self._frame_timeout_ns / 1e9

    @frame_timeout_s.setter
    def frame_timeout_s(self, value: float | None) -> None:
        self._frame_timeout_ns = _check_frame_timeout(value)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def fileno(self) -> int:
        """The socket's fd (for selectors); -1 once closed."""
        return self._fd

    # -- messages ------------------------------------------------------------------------------------
    def send(self, msg: Message, timeout_s: float | None = None) -> None:
        """Send one protobuf message (normally an :data:`Envelope`) as one frame.

        Raises:
            FrameTooLargeError: the serialized message is over ``max_frame``.
            PeerClosedError: the peer is gone. FrameTimeoutError: not sent within ``timeout_s``.
        """
        if not isinstance(msg, Message):
            raise TypeError(f"send() takes a protobuf message, not {type(msg).__name__}: {msg!r:.60} "
                            f"(use send_bytes for raw payloads)")
        self._send(msg.SerializeToString(), (), timeout_s, f"{msg.DESCRIPTOR.full_name} message")

    def recv(self, timeout_s: float | None = None, message_type: type[Message] | None = None) -> Message:
        """Receive one frame and parse it as ``message_type`` (default :data:`Envelope`).

        Raises:
            FrameDecodeError: the bytes are not that message. UnknownBodyError (a FrameDecodeError): an
                Envelope with no body this schema knows (a newer peer's message; ``.envelope`` holds it,
                ``seq`` included); the stream is still at a frame boundary.
            PeerClosedError: the peer closed; ``.at_boundary`` is False if it closed mid-frame.
            FrameTimeoutError: no complete frame within ``timeout_s`` (a partly received frame is resumed
                by the next recv). FrameStalledError: a frame that started did not complete within
                ``frame_timeout_s``. FrameTooLargeError: the frame is over ``max_frame``.
        """
        data, fds = self._recv(timeout_s)
        close_fds(fds)
        return self.decode(data, message_type)

    @staticmethod
    def decode(data: bytes, message_type: type[Message] | None = None) -> Message:
        """Parse ``data`` as ``message_type`` (default :data:`Envelope`), raising FrameDecodeError naming
        the frame's size and first bytes when it is not one."""
        cls = Envelope if message_type is None else message_type
        msg = cls()
        try:
            msg.ParseFromString(data)
        except DecodeError as e:
            raise FrameDecodeError(
                f"a frame of {len(data)} bytes is not a {cls.DESCRIPTOR.full_name} ({e}); "
                f"it starts {bytes(data[:16]).hex(' ') or '(empty)'}"
            ) from None
        if cls is Envelope and msg.WhichOneof("body") is None:
            # A newer minor's body lands in the unknown fields (WhichOneof says None): the frame parsed,
            # so the caller may answer it (echoing msg.seq) and go on.
            raise UnknownBodyError(
                f"a frame of {len(data)} bytes holds an edgepipe.v1.Envelope (seq {msg.seq}) with no body this "
                f"schema knows (a newer peer's message, or not an Envelope); it starts "
                f"{bytes(data[:16]).hex(' ') or '(empty)'}", msg)
        return msg

    # -- raw payloads --------------------------------------------------------------------------------
    def send_bytes(self, data, timeout_s: float | None = None) -> None:
        """Send a bytes-like payload as one frame. Raises as :meth:`send`."""
        self._send(data, (), timeout_s, "payload")

    def recv_bytes(self, timeout_s: float | None = None) -> bytes:
        """Receive one frame's payload. File descriptors that came with it are closed (use recv_fds).
        Raises as :meth:`recv`, less FrameDecodeError."""
        data, fds = self._recv(timeout_s)
        close_fds(fds)
        return data

    def send_fds(self, fds, payload=b"", timeout_s: float | None = None) -> None:
        """Send a frame with up to MAX_FDS file descriptors attached (SCM_RIGHTS). The receiver gets its own
        duplicates; the caller keeps (and later closes) its fds.

        Args:
            fds: ints or objects with ``fileno()``.
            payload: a protobuf message (an Envelope with an Attach, say) or a bytes-like object.
        """
        self._send(payload, _fd_list(fds), timeout_s, "payload")

    def recv_fds(self, timeout_s: float | None = None) -> tuple[bytes, list[int]]:
        """Receive one frame and the fds that came with it (O_CLOEXEC, now owned by the caller).

        Returns:
            ``(payload, fds)``; parse the payload with :meth:`decode` if it is a message.
        """
        return self._recv(timeout_s)

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self, linger_s: float = 0.0) -> None:
        """Close the socket. Safe to call twice, and from another thread or a signal handler while a call
        is blocked: that call wakes and raises FrameClosedError.

        Args:
            linger_s: first end our side of the stream (the peer reads what we sent, then a clean EOF) and
                read and discard what the peer still sends, for up to ``linger_s`` seconds (and 1 MiB), or
                until it closes. Closing with the peer's bytes unread makes the kernel reset the connection,
                and a peer that is still sending (a Hello, say) would then get EPIPE instead of reading our
                last frame, typically an Error explaining why we close. Use it from the receiving thread.
        """
        if linger_s > 0 and self._sock is not None:
            self._linger(linger_s)
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._fd = -1
        self._rx_broken = self._tx_broken = None  # a closed socket reports that it is closed
        me = threading.get_ident()
        if self._tx_thread not in (0, me) or self._rx_thread not in (0, me):
            # shutdown wakes a ppoll blocked in another thread; wait for it to leave C before the fd number
            # is freed for reuse. (A call of this very thread is not inside C: a signal handler or a
            # nested call interrupted it between bytecodes, and it sees _fd < 0 when it resumes.)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            while self._tx_thread not in (0, me) or self._rx_thread not in (0, me):
                time.sleep(0.0002)
        sock.close()
        lib.ep_frame_recv_drop(self._rx)  # fds that came ahead of a frame nobody will read now
        close_fds(_take_fds(self._rx))

    def __enter__(self) -> FrameSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._sock is None:
            return "<FrameSocket closed>"
        broken = (" rx-broken" if self._rx_broken else "") + (" tx-broken" if self._tx_broken else "")
        return f"<FrameSocket fd={self._fd} max_frame={self._max_frame}{broken}>"

    # -- internals ----------------------------------------------------------------------------------
    def _closed_error(self) -> FrameClosedError:
        return FrameClosedError("FrameSocket is closed")

    def _linger(self, linger_s: float) -> None:
        """close(linger_s) before the close: half-close, then drain until EOF, the deadline or the cap.
        The receive slot is held meanwhile, so a close() from another thread wakes us (shutdown) and waits."""
        sock = self._sock
        self._rx_thread = _get_ident()
        try:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
            lib.ep_frame_recv_drop(self._rx)  # read-ahead bytes are of no use now
            close_fds(_take_fds(self._rx))
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            deadline = time.monotonic() + linger_s
            drained = 0
            while drained < _LINGER_DRAIN_MAX and self._sock is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    return
                try:
                    chunk = sock.recv(65536, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                if not chunk:
                    return  # the peer closed too
                drained += len(chunk)
        finally:
            self._rx_thread = 0

    def _wait_frame_start(self, deadline: int) -> None:
        """With frame_timeout_s set and nothing of a frame received: wait (GIL released, in poll) until
        bytes arrive or ``deadline`` passes, so the frame timer starts when the frame does."""
        io = self._rx
        if io.done or io.ra_len:
            return
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if deadline < 0:
            poller.poll()
        else:
            poller.poll(max(0, (deadline - _mono_ns() + 999_999) // 1_000_000))

    # The two hot paths are written out in full: each Python-level step costs about as much as a syscall
    # at these message sizes. The thread slot is set before _fd is read and close() clears _fd before it
    # reads the slots, so one of the two always sees the other.
    def _send(self, data, fds: list[int], timeout_s, what: str) -> None:
        if self._tx_broken is not None:
            raise FrameError(self._tx_broken)
        try:
            buf = _from_buffer(data)
        except TypeError:
            buf = _payload(data, what)
        n = len(buf)
        if n > self._max_frame:
            raise FrameTooLargeError(f"{what} of {n} bytes is over max_frame ({self._max_frame} bytes)")
        deadline = -1 if timeout_s is None else _deadline(timeout_s)
        cfds, nfds = (ffi.new("int[]", fds), len(fds)) if fds else (ffi.NULL, 0)
        io = self._tx  # io.done is 0 here: C resets it after a whole frame, _send_failed otherwise
        self._tx_thread = _get_ident()
        try:
            fd = self._fd
            if fd < 0:
                raise self._closed_error()
            rc = _send(fd, io, buf, n, cfds, nfds, deadline)
            while rc == _EINTR:  # back in Python: pending signal handlers run here, then resume
                fd = self._fd
                if fd < 0:
                    raise self._closed_error()
                rc = _send(fd, io, buf, n, cfds, nfds, deadline)
        except BaseException:
            self._tx_thread = 0
            self._send_failed(n)
            raise
        self._tx_thread = 0
        if rc < 0:
            raise self._send_error(rc, self._send_failed(n), n, what, timeout_s)

    def _send_failed(self, n: int) -> int:
        """After a send that did not complete: a frame cut part-way leaves the stream unusable."""
        io = self._tx
        done = io.done
        if done:
            io.done = 0
            if self._sock is not None:
                self._tx_broken = (
                    f"a send stopped after {done} of {n + lib.EP_FRAME_HDR} bytes of a frame, so the "
                    f"outgoing stream is no longer at a frame boundary: close this FrameSocket"
                )
        return done

    def _send_error(self, rc: int, done: int, n: int, what: str, timeout_s) -> Exception:
        if self._sock is None:
            return self._closed_error()
        if rc == _ETIMEDOUT:
            return FrameTimeoutError(f"sending a {what} of {n} bytes took over {timeout_s} s "
                                     f"({done} of {n + lib.EP_FRAME_HDR} bytes sent)")
        if rc == _EPIPE:
            return PeerClosedError(f"the peer closed the connection; {what} of {n} bytes not delivered")
        try:
            check(rc, f"sending a {what} of {n} bytes")
        except Exception as e:  # noqa: BLE001 (returned for the caller to raise)
            return e
        return AssertionError(f"unexpected return code {rc}")  # pragma: no cover

    def _recv(self, timeout_s) -> tuple[bytes, list[int]]:
        if self._rx_broken is not None:
            raise FrameError(self._rx_broken)
        deadline = -1 if timeout_s is None else _deadline(timeout_s)
        io = self._rx
        frame_deadline = -1
        self._rx_thread = _get_ident()
        try:
            fd = self._fd
            if fd < 0:
                raise self._closed_error()
            if self._frame_timeout_ns is not None:
                if not self._rx_started:
                    self._wait_frame_start(deadline)
                    fd = self._fd
                    if fd < 0:
                        raise self._closed_error()
                    if io.done or io.ra_len or deadline < 0 or _mono_ns() < deadline:
                        self._rx_started = _mono_ns()  # bytes are there (or EOF): the frame has begun
                if self._rx_started:
                    frame_deadline = self._rx_started + self._frame_timeout_ns
                    if deadline < 0 or frame_deadline < deadline:
                        deadline = frame_deadline
            rc = _recv(fd, io, self._rxc, len(self._rxbuf), self._max_frame, deadline)
            while rc == _EINTR or rc == _ENOBUFS:
                if rc == _ENOBUFS:
                    # The header is in and the payload is larger than the buffer: grow it and resume.
                    self._rxbuf = bytearray(min(max(io.len, 2 * len(self._rxbuf)), self._max_frame))
                    self._rxc = ffi.from_buffer(self._rxbuf)
                fd = self._fd  # after EINTR, pending signal handlers have run (they may have closed us)
                if fd < 0:
                    raise self._closed_error()
                rc = _recv(fd, io, self._rxc, len(self._rxbuf), self._max_frame, deadline)
        finally:
            self._rx_thread = 0
        if rc >= 0:
            # C has set io.done back to 0 for the next frame.
            self._rx_started = 0
            data = _unpack(self._rxc, rc)
            if rc > _RXBUF_KEEP:
                self._rxbuf = bytearray(_RXBUF_START)
                self._rxc = ffi.from_buffer(self._rxbuf)
            if not io.nfds:
                return data, []
            truncated = io.fds_truncated
            fds = _take_fds(io)  # also clears io.nfds, so close() cannot close fds the caller now owns
            if truncated:
                io.fds_truncated = 0
                close_fds(fds)
                raise FrameError(f"the peer attached more than {MAX_FDS} file descriptors to a frame of "
                                 f"{rc} bytes; frame and descriptors dropped")
            return data, fds
        raise self._recv_error(rc, timeout_s, frame_deadline)

    def _recv_error(self, rc: int, timeout_s, frame_deadline: int = -1) -> Exception:
        io = self._rx
        if self._sock is None:
            return self._closed_error()
        if rc == _ETIMEDOUT:
            if frame_deadline >= 0 and _mono_ns() >= frame_deadline:
                got = (f"{io.done} of {lib.EP_FRAME_HDR} header bytes" if io.done < lib.EP_FRAME_HDR
                       else f"{io.done - lib.EP_FRAME_HDR} of {io.len} payload bytes")
                self._rx_broken = (f"a frame stalled: {got} arrived, and the rest did not within "
                                   f"frame_timeout_s ({self.frame_timeout_s} s); close this FrameSocket")
                self._rx_started = 0
                close_fds(_take_fds(io))
                return FrameStalledError(self._rx_broken)
            got = f"; {io.done} bytes of a frame arrived, the next recv resumes it" if io.done else ""
            return FrameTimeoutError(f"no frame within {timeout_s} s{got}")
        self._rx_started = 0
        close_fds(_take_fds(io))
        if rc == _EMSGSIZE:
            self._rx_broken = (f"an incoming frame of {io.len} bytes was over max_frame ({self._max_frame} bytes); "
                               f"the stream is no longer at a frame boundary: close this FrameSocket")
            return FrameTooLargeError(self._rx_broken)
        if rc == _EPIPE:
            if io.eof == lib.EP_FRAME_EOF_CLEAN:
                err = PeerClosedError("the peer closed the connection (at a frame boundary)")
                err.at_boundary = True
            else:
                where = (f"{io.done} of {lib.EP_FRAME_HDR} header bytes" if io.done < lib.EP_FRAME_HDR
                         else f"{io.done - lib.EP_FRAME_HDR} of {io.len} payload bytes")
                err = PeerClosedError(f"the peer closed the connection mid-frame, after {where}")
                err.at_boundary = False
            io.done = 0
            return err
        io.done = 0
        try:
            check(rc, "receiving a frame")
        except Exception as e:  # noqa: BLE001 (returned for the caller to raise)
            return e
        return AssertionError(f"unexpected return code {rc}")  # pragma: no cover
