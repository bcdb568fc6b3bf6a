"""The control-plane server and client: ``edgepipe.v1`` Envelopes in FrameSocket frames over a Unix socket.

A supervisor runs a :class:`Server`; stages, monitors and programs in other languages connect with a
:class:`Client` (or any protobuf library plus the 4-byte length framing, see ``examples/uds_client.c``).

Handshake: the client's first frame is a Hello carrying its protocol version, stage name, pid, role and the
body names it wants published to it. The server answers Welcome, or an Error (VERSION_MISMATCH for another
major, PERMISSION for a uid it does not allow, BAD_MESSAGE for anything else) and closes the connection.

Security: the socket lives in a directory that is ours, not a symlink, and mode 0700
(``$XDG_RUNTIME_DIR/edgepipe``, else ``/tmp/edgepipe-<uid>``); each peer's uid comes from ``SO_PEERCRED``
and only our own uid (plus ``allowed_uids``) is served. Allowing other users needs a directory they can
search: with ``allowed_uids`` the directory may be 0711/0755 (still ours, never group/other-writable) and
the socket file is 0666, so ``SO_PEERCRED`` is what keeps strangers out.

Concurrency: one accept thread and one thread per session. FrameSocket waits in C with the GIL released and
resumes partly received frames, so a session thread is a plain receive loop, and a client that stalls or
vanishes mid-frame holds up nobody but its own thread. Edge pipelines have a handful to a few dozen clients;
a thread each is cheap at that scale. Measured (benchmarks/frame_socket.py, 2 vCPUs): a request through
the server costs a few us more than FrameSocket alone, and 4-16 client processes saturate one core of
server Python at ~40-50 k requests/s, where a selectors loop would hit the same one-core ceiling without
the isolation (it would have to buffer every client's partial frames itself).
Handlers run in the session's thread. ``publish`` sends from the caller's thread with ``send_timeout_s``:
a subscriber that cannot take a message within it is disconnected rather than stalling the pipeline.

Socket files: an existing socket at the path is probed with connect(). Refused means a dead server left it:
it is replaced. Accepted means a live server: :class:`~edgepipe.errors.SocketInUseError` naming the path,
and nothing is touched. The check and bind happen under ``flock`` on the directory, so two servers starting
at once cannot both "replace" the file. ``close()`` unlinks the socket only if it is still the one we bound.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.errors import (
    FrameClosedError,
    FrameDecodeError,
    FrameError,
    FrameTimeoutError,
    FrameTooLargeError,
    PeerClosedError,
    RemoteError,
    SocketInUseError,
    UnsafeSocketDirError,
)
from edgepipe._os import close_fds
from edgepipe.control.framing import DEFAULT_MAX_FRAME, PROTOCOL_MAJOR, PROTOCOL_MINOR, Envelope, FrameSocket

__all__ = ["Client", "Server", "Session", "default_socket_dir"]

log = logging.getLogger("edgepipe.control.server")

#: Envelope body names (the ``body`` oneof), e.g. "hello", "stats", "inference_result".
BODIES = frozenset(f.name for f in Envelope.DESCRIPTOR.oneofs_by_name["body"].fields)
_ROLES = {n[len("ROLE_"):].lower(): v for n, v in pb.Role.items() if v}
_DIRECTIONS = {"input": pb.DIRECTION_INPUT, "output": pb.DIRECTION_OUTPUT}
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the NUL
_PROBE_TIMEOUT_S = 1.0

Handler = Callable[["Session", Envelope], "Envelope | None"]


def default_socket_dir() -> Path:
    """``$XDG_RUNTIME_DIR/edgepipe`` when XDG_RUNTIME_DIR names a directory, else ``/tmp/edgepipe-<uid>``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return Path(xdg) / "edgepipe"
    return Path("/tmp") / f"edgepipe-{os.geteuid()}"


def _secure_dir(path: Path, shared: bool) -> None:
    """Create ``path`` (mode 0700) if missing; then insist it is a real directory of ours that no other
    user can write to, and (unless ``shared``) that no other user can enter."""
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode went through the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeSocketDirError(f"socket directory {str(path)!r} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketDirError(f"socket directory {str(path)!r} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeSocketDirError(
            f"socket directory {str(path)!r} belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})")
    mode = stat.S_IMODE(st.st_mode)
    too_open = mode & (0o022 if shared else 0o077)
    if too_open:
        want = "not writable by group or others" if shared else "mode 0700"
        raise UnsafeSocketDirError(f"socket directory {str(path)!r} has mode {mode:04o}; it must be {want}")


def _peercred(sock: socket.socket) -> tuple[int, int, int]:
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def _error(code: int, message: str, reply_to: int = 0) -> Envelope:
    return Envelope(reply_to=reply_to, error=pb.Error(code=code, message=message))


def _remote_error(env: Envelope, context: str) -> RemoteError:
    code = env.error.code
    try:
        name = pb.ErrorCode.Name(code)
    except ValueError:
        name = f"ERROR_CODE_{code}"
    return RemoteError(code, name, env.error.message, context)


class Session:
    """One connected client, as the server sees it. Created by the server; handlers receive it.

    Attributes:
        id: unique per server. pid, uid, gid: the peer's credentials from SO_PEERCRED.
        hello: the client's Hello (``stage_name``, ``role``, ``subscribe``, protocol version).
    """

    __slots__ = ("_fs", "_seq", "_server", "_thread", "_tx_lock", "gid", "hello", "id", "pid",
                 "subscribe", "uid")

    def __init__(self, server: Server, fs: FrameSocket, sid: int, cred: tuple[int, int, int]) -> None:
        self._server = server
        self._fs = fs
        self.id = sid
        self.pid, self.uid, self.gid = cred
        self.hello = pb.Hello()
        self.subscribe: frozenset[str] = frozenset()
        self._seq = 0
        self._tx_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def stage_name(self) -> str:
        return self.hello.stage_name

    @property
    def closed(self) -> bool:
        return self._fs.closed

    def wants(self, body: str) -> bool:
        """True if this client subscribed to published messages with this body name."""
        return body in self.subscribe or "*" in self.subscribe

    def send(self, env: Envelope, timeout_s: float | None = None) -> None:
        """Send an Envelope to this client (``seq`` is filled in when 0).

        Raises:
            PeerClosedError: the client is gone. FrameTimeoutError: not sent within ``timeout_s``
                (default: the server's ``send_timeout_s``); the session is then closed.
        """
        self._send(env, (), timeout_s)

    def attach(self, name: str, ring, direction: str | int = "input", record_types: Iterable[int] = (),
               timeout_s: float | None = None) -> None:
        """Hand a ring to this client: an Attach message with the ring's fd attached (SCM_RIGHTS).
        The client opens it with ``Ring.from_fd`` (:meth:`Client.recv_attach` gives it the fd).

        Args:
            name: the ring's logical name ("frames"). ring: an ``edgepipe.Ring`` (usually a memfd ring
                from ``Ring.create(None, ...)``) or anything with ``fd`` and ``capacity``.
            direction: "input" (the client reads) or "output" (the client writes), or a Direction value.
        """
        d = _DIRECTIONS.get(direction, direction) if isinstance(direction, str) else direction
        if d not in (pb.DIRECTION_INPUT, pb.DIRECTION_OUTPUT):
            raise ValueError(f"direction must be 'input' or 'output', got {direction!r}")
        desc = pb.RingDescriptor(name=name, capacity=ring.capacity, direction=d,
                                 record_types=list(record_types), fd_follows=True)
        self._send(Envelope(attach=pb.Attach(rings=[desc])), (ring.fd,), timeout_s)

    def close(self) -> None:
        """Disconnect this client (its session thread ends). Safe to call twice."""
        self._fs.close()

    def _send(self, env: Envelope, fds, timeout_s: float | None) -> None:
        t = self._server.send_timeout_s if timeout_s is None else timeout_s
        with self._tx_lock:
            if not env.seq:
                self._seq += 1
                env.seq = self._seq
            try:
                if fds:
                    self._fs.send_fds(fds, env, timeout_s=t)
                else:
                    self._fs.send(env, timeout_s=t)
            except FrameTimeoutError:
                self._fs.close()  # a frame cut part-way leaves nothing usable
                raise

    def _send_published(self, data: bytes, timeout_s: float) -> None:
        with self._tx_lock:
            self._seq = n = self._seq + 1
            # Concatenated protobuf messages merge and the last scalar wins: the shared serialization
            # plus this session's seq (field 1, a varint), without serializing the message per subscriber.
            tail = bytearray(b"\x08")
            while n > 0x7F:
                tail.append((n & 0x7F) | 0x80)
                n >>= 7
            tail.append(n)
            self._fs.send_bytes(data + tail, timeout_s=timeout_s)

    def __repr__(self) -> str:
        role = pb.Role.Name(self.hello.role) if self.hello.role in pb.Role.values() else self.hello.role
        return (f"<Session {self.id} stage={self.hello.stage_name!r} {role} pid={self.pid} uid={self.uid}"
                f"{' closed' if self.closed else ''}>")


class Server:
    """Accepts control-plane clients on a Unix socket; dispatches their messages to handlers.

    Args:
        path: the socket path; default ``default_socket_dir() / f"{name}.sock"``. Its directory is created
            (0700) if missing and must be ours (see the module docstring).
        name: socket file name stem when ``path`` is not given.
        allowed_uids: uids served besides our own (checked with SO_PEERCRED); others get an Error
            (PERMISSION) and a closed socket.
        max_frame: the largest frame accepted from a client, in bytes.
        hello_timeout_s: a client that sends no Hello within this is dropped.
        send_timeout_s: how long a send to one client may block before that client is dropped.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with Server(os.path.join(d, "ctl.sock")) as srv:
    ...     srv.on("stats", lambda session, env: Envelope(stop=pb.Stop(reason="enough")))
    ...     with Client.connect(srv.path, stage="imu", role="stage") as c:
    ...         c.request(Envelope(stats=pb.Stats(stage_name="imu")), timeout_s=5).stop.reason
    'enough'
    """

    def __init__(self, path: str | os.PathLike | None = None, *, name: str = "control",
                 allowed_uids: Iterable[int] = (), max_frame: int = DEFAULT_MAX_FRAME,
                 hello_timeout_s: float = 5.0, send_timeout_s: float = 1.0) -> None:
        if path is None:
            if not name or "/" in name:
                raise ValueError(f"name must be a non-empty file name stem without '/', got {name!r}")
            path = default_socket_dir() / f"{name}.sock"
        self._path = Path(os.path.abspath(os.fspath(path)))
        if len(os.fsencode(self._path)) > _SUN_PATH_MAX:
            raise ValueError(f"socket path is {len(os.fsencode(self._path))} bytes, over the "
                             f"{_SUN_PATH_MAX}-byte AF_UNIX limit: {str(self._path)!r}")
        uids = set()
        for u in allowed_uids:
            if not isinstance(u, int) or isinstance(u, bool) or u < 0:
                raise ValueError(f"allowed_uids must hold uids (ints >= 0), got {u!r}")
            uids.add(u)
        self._allowed = frozenset(uids | {os.geteuid()})
        self._shared = bool(uids - {os.geteuid()})
        self.max_frame = max_frame
        self.hello_timeout_s = hello_timeout_s
        self.send_timeout_s = send_timeout_s
        self._handlers: dict[str, Handler] = {}
        self._sessions: dict[int, Session] = {}
        self._snapshot: tuple[Session, ...] = ()  # _sessions' values, replaced (under _lock) on each change
        self._pending: set[Session] = set()  # accepted, not yet welcomed (close() reaches them too)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._next_id = 0
        self._listener: socket.socket | None = None
        self._ino: tuple[int, int] | None = None
        self._wake_r = self._wake_w = -1
        self._accept_thread: threading.Thread | None = None
        self._closing = False
        #: Plain int counters: accepted, welcomed, refused_uid, refused_version, refused_hello, bad_frames,
        #: vanished_mid_frame, disconnected, handler_errors, published, dropped_subscribers.
        self.counters: dict[str, int] = dict.fromkeys(
            ("accepted", "welcomed", "refused_uid", "refused_version", "refused_hello", "bad_frames",
             "vanished_mid_frame", "disconnected", "handler_errors", "published", "dropped_subscribers"), 0)
        #: The last few errors sessions ended with (or handlers raised), newest last, for logs and tests.
        self.recent_errors: collections.deque[Exception] = collections.deque(maxlen=32)

    # -- facts --------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return str(self._path)

    @property
    def closed(self) -> bool:
        return self._closing

    def sessions(self) -> list[Session]:
        """The clients that completed the handshake and are still connected."""
        return list(self._snapshot)

    # -- setup --------------------------------------------------------------------------------------
    def on(self, body: str, handler: Handler) -> None:
        """Call ``handler(session, envelope)`` for each incoming Envelope whose body is ``body`` (a name
        from the ``body`` oneof: "stats", "stop", "imu_sample", ...). A returned Envelope is sent back as
        the reply (``reply_to`` set); an exception goes back as an Error (INTERNAL). Messages with no
        handler get an Error (NOT_FOUND); either way the connection stays up."""
        if body not in BODIES or body == "hello":
            raise ValueError(f"body must be one of {sorted(BODIES - {'hello'})}, got {body!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}: {handler!r:.60}")
        self._handlers[body] = handler

    def start(self) -> Server:
        """Bind the socket (replacing a stale one) and start accepting. Returns self.

        Raises:
            SocketInUseError: a live server listens at the path, or the path is not a socket.
            UnsafeSocketDirError: the directory is a symlink, not ours, or open to others.
        """
        if self._listener is not None or self._closing:
            raise RuntimeError(f"server on {self.path!r} was already started")
        _secure_dir(self._path.parent, self._shared)
        dfd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)  # another server starting in this directory waits here
            self._remove_stale()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind(self.path)
                os.chmod(self.path, 0o666 if self._shared else 0o600)
                s.listen(64)
                s.setblocking(False)  # poll says when; a connection gone before accept() must not block us
                st = os.lstat(self.path)
            except BaseException:
                s.close()
                raise
        finally:
            os.close(dfd)  # releases the flock
        self._listener = s
        self._ino = (st.st_dev, st.st_ino)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"edgepipe-accept {self.path}",
                                               daemon=True)
        self._accept_thread.start()
        return self

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUseError(f"{self.path!r} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(_PROBE_TIMEOUT_S)
        try:
            probe.connect(self.path)
        except ConnectionRefusedError:
            log.info("replacing stale socket %s (nobody listens on it)", self.path)
            os.unlink(self.path)
            return
        except TimeoutError:
            pass  # a live server whose backlog is full
        finally:
            probe.close()
        raise SocketInUseError(f"a live server already listens on {self.path!r}; not replacing it")

    # -- sending ------------------------------------------------------------------------------------
    def publish(self, env: Envelope) -> int:
        """Send ``env`` to every session that subscribed to its body name (Hello.subscribe). The message is
        serialized once. A subscriber that cannot take it within ``send_timeout_s``, or is gone, is
        disconnected. Returns how many sessions it was sent to."""
        body = env.WhichOneof("body")
        if body is None:
            raise ValueError(f"publish needs an Envelope with a body, got {env!r:.80}")
        data = env.SerializeToString()
        n = 0
        for s in self._snapshot:
            if body not in s.subscribe and "*" not in s.subscribe:
                continue
            try:
                s._send_published(data, self.send_timeout_s)
                n += 1
            except FrameError as e:
                self.counters["dropped_subscribers"] += 1
                self.recent_errors.append(e)
                log.warning("dropping subscriber %r: %s", s, e)
                s.close()
        self.counters["published"] += n
        return n

    def wait_session(self, stage_name: str | None = None, timeout_s: float = 5.0) -> Session:
        """Wait for a client (with this stage name, if given) to complete its handshake.

        Raises:
            TimeoutError: none within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for s in self._sessions.values():
                    if stage_name is None or s.hello.stage_name == stage_name:
                        return s
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no client with stage name {stage_name!r} connected to {self.path!r} "
                                       f"within {timeout_s} s")
                self._changed.wait(left)

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, disconnect every client, unlink the socket (if it is still ours). Safe twice."""
        if self._closing:
            return
        self._closing = True
        if self._accept_thread is not None:
            os.write(self._wake_w, b"x")
            self._accept_thread.join(timeout_s)
        if self._listener is not None:
            self._listener.close()
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        with self._lock:
            sessions = list(self._sessions.values()) + list(self._pending)
        for s in sessions:
            s.close()
        deadline = time.monotonic() + timeout_s
        for s in sessions:
            if s._thread is not None and s._thread is not threading.current_thread():
                s._thread.join(max(0.0, deadline - time.monotonic()))
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Server:
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closing else ("listening" if self._listener else "not started")
        return f"<Server {self.path!r} {state} sessions={len(self._sessions)}>"

    # -- internals ----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._closing:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            if any(fd == self._wake_r for fd, _ in events):
                return
            try:
                conn, _ = self._listener.accept()
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EINTR):
                    continue
                if self._closing:
                    return
                log.error("accept on %s failed: %s", self.path, e)
                time.sleep(0.05)  # EMFILE and friends: do not spin
                continue
            try:
                self._start_session(conn)
            except Exception as e:  # noqa: BLE001 (the server outlives one bad connection)
                log.error("could not start a session on %s: %s", self.path, e)
                conn.close()

    def _start_session(self, conn: socket.socket) -> None:
        cred = _peercred(conn)
        fs = FrameSocket(conn, self.max_frame)
        with self._lock:
            self._next_id += 1
            s = Session(self, fs, self._next_id, cred)
            self._pending.add(s)
        self.counters["accepted"] += 1
        s._thread = threading.Thread(target=self._serve, args=(s,), daemon=True,
                                     name=f"edgepipe-session {s.id} pid {s.pid}")
        s._thread.start()

    def _refuse(self, s: Session, counter: str, code: int, message: str, reply_to: int = 0) -> None:
        self.counters[counter] += 1
        log.warning("refusing %r: %s", s, message)
        try:
            s._fs.send(_error(code, message, reply_to), timeout_s=min(self.send_timeout_s, 1.0))
        except FrameError:
            pass

    def _handshake(self, s: Session) -> bool:
        if s.uid not in self._allowed:
            self._refuse(s, "refused_uid", pb.ERROR_CODE_PERMISSION,
                         f"uid {s.uid} (pid {s.pid}) may not use {self.path!r}; allowed uids: "
                         f"{sorted(self._allowed)}")
            return False
        try:
            env = s._fs.recv(timeout_s=self.hello_timeout_s)
        except FrameTimeoutError:
            self._refuse(s, "refused_hello", pb.ERROR_CODE_BAD_MESSAGE,
                         f"no Hello within {self.hello_timeout_s} s of connecting")
            return False
        body = env.WhichOneof("body")
        if body != "hello":
            self._refuse(s, "refused_hello", pb.ERROR_CODE_BAD_MESSAGE,
                         f"the first message must be a Hello, got {body!r}", env.seq)
            return False
        h = env.hello
        if h.protocol_major != PROTOCOL_MAJOR:
            self._refuse(s, "refused_version", pb.ERROR_CODE_VERSION_MISMATCH,
                         f"client speaks protocol {h.protocol_major}.{h.protocol_minor}; this server speaks "
                         f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR} and needs major {PROTOCOL_MAJOR}", env.seq)
            return False
        if h.pid and h.pid != s.pid:
            self._refuse(s, "refused_hello", pb.ERROR_CODE_BAD_MESSAGE,
                         f"Hello says pid {h.pid} but the socket's peer is pid {s.pid} (SO_PEERCRED)", env.seq)
            return False
        unknown = sorted(set(h.subscribe) - BODIES - {"*"})
        if unknown:
            self._refuse(s, "refused_hello", pb.ERROR_CODE_BAD_MESSAGE,
                         f"cannot subscribe to {unknown}: not Envelope bodies ({sorted(BODIES)})", env.seq)
            return False
        s.hello = h
        s.subscribe = frozenset(h.subscribe)
        s.send(Envelope(reply_to=env.seq, welcome=pb.Welcome(
            protocol_major=PROTOCOL_MAJOR, protocol_minor=PROTOCOL_MINOR, pid=os.getpid(), session_id=s.id)))
        return True

    def _serve(self, s: Session) -> None:
        welcomed = False
        try:
            if self._closing or not self._handshake(s):
                return
            with self._changed:
                self._pending.discard(s)
                self._sessions[s.id] = s
                self._snapshot = tuple(self._sessions.values())
                self._changed.notify_all()
            welcomed = True
            self.counters["welcomed"] += 1
            while True:
                env = s._fs.recv()
                self._dispatch(s, env)
        except FrameClosedError:
            pass  # we closed it: server shutdown, Session.close(), a dropped subscriber
        except PeerClosedError as e:
            if not e.at_boundary:
                self.counters["vanished_mid_frame"] += 1
                self.recent_errors.append(e)
                log.warning("%r vanished mid-frame: %s", s, e)
        except (FrameDecodeError, FrameTooLargeError) as e:
            self.recent_errors.append(e)
            self._refuse(s, "bad_frames", pb.ERROR_CODE_BAD_MESSAGE, str(e))
        except FrameError as e:
            self.recent_errors.append(e)
            log.warning("%r: %s", s, e)
        except Exception as e:  # noqa: BLE001 (a session thread must not take the server down)
            self.recent_errors.append(e)
            log.exception("session %r failed", s)
        finally:
            s._fs.close()
            with self._changed:
                self._pending.discard(s)
                self._sessions.pop(s.id, None)
                self._snapshot = tuple(self._sessions.values())
                self._changed.notify_all()
            if welcomed:
                self.counters["disconnected"] += 1

    def _dispatch(self, s: Session, env: Envelope) -> None:
        body = env.WhichOneof("body")
        handler = self._handlers.get(body)
        if handler is None:
            s.send(_error(pb.ERROR_CODE_NOT_FOUND, f"this server has no handler for {body!r} messages",
                          env.seq))
            return
        try:
            reply = handler(s, env)
        except Exception as e:  # noqa: BLE001 (reported to the client; the session goes on)
            self.counters["handler_errors"] += 1
            self.recent_errors.append(e)
            log.exception("handler for %r failed on %r", body, s)
            s.send(_error(pb.ERROR_CODE_INTERNAL, f"handler for {body!r} failed: {type(e).__name__}: {e}",
                          env.seq))
            return
        if reply is not None:
            if not reply.reply_to:
                reply.reply_to = env.seq
            s.send(reply)


class Client:
    """A control-plane client: connects, says Hello, and receives the server's messages.

    Use :meth:`connect`; ``welcome`` holds the server's Welcome (``session_id``, ``pid``).
    """

    __slots__ = ("_fs", "_path", "_pending", "_seq", "welcome")

    def __init__(self, fs: FrameSocket, welcome: pb.Welcome, path: str) -> None:
        self._fs = fs
        self.welcome = welcome
        self._path = path
        self._seq = 1  # the Hello was seq 1
        self._pending: collections.deque = collections.deque()

    @classmethod
    def connect(cls, path: str | os.PathLike | None = None, *, stage: str = "", role: str | int = "client",
                subscribe: Iterable[str] = (), timeout_s: float = 5.0, max_frame: int = DEFAULT_MAX_FRAME,
                protocol_major: int = PROTOCOL_MAJOR) -> Client:
        """Connect to a server (default socket: ``default_socket_dir() / "control.sock"``) and handshake.

        Args:
            stage: the stage name to announce. role: "supervisor", "stage", "monitor" or "client".
            subscribe: body names to have published to this client ("stats", "inference_result", "*").
            protocol_major: the version announced (only tests want another than ours).

        Raises:
            RemoteError: the server refused the Hello (``.code_name`` says why).
            FileNotFoundError / ConnectionRefusedError: no server there. FrameTimeoutError: no answer in time.
        """
        r = _ROLES.get(role, role) if isinstance(role, str) else role
        if r not in pb.Role.values() or not r:
            raise ValueError(f"role must be one of {sorted(_ROLES)}, got {role!r}")
        subs = list(subscribe) if not isinstance(subscribe, str) else [subscribe]
        if path is None:
            path = default_socket_dir() / "control.sock"
        path = os.fspath(path)
        fs = FrameSocket.connect(path, timeout_s=timeout_s, max_frame=max_frame)
        try:
            fs.send(Envelope(seq=1, hello=pb.Hello(
                protocol_major=protocol_major, protocol_minor=PROTOCOL_MINOR, stage_name=stage,
                pid=os.getpid(), role=r, subscribe=subs)), timeout_s=timeout_s)
            try:
                env = fs.recv(timeout_s=timeout_s)
            except PeerClosedError as e:
                raise PeerClosedError(f"the server at {path!r} closed the connection during the handshake "
                                      f"({e})") from None
            body = env.WhichOneof("body")
            if body == "error":
                raise _remote_error(env, f"the server at {path!r} refused the Hello")
            if body != "welcome":
                raise FrameDecodeError(f"the server at {path!r} answered the Hello with {body!r}, not a Welcome")
            return cls(fs, env.welcome, path)
        except BaseException:
            fs.close()
            raise

    @property
    def session_id(self) -> int:
        return self.welcome.session_id

    @property
    def closed(self) -> bool:
        return self._fs.closed

    def fileno(self) -> int:
        return self._fs.fileno()

    def send(self, env: Envelope, timeout_s: float | None = None) -> int:
        """Send an Envelope; returns the ``seq`` it was given."""
        self._seq += 1
        env.seq = self._seq
        self._fs.send(env, timeout_s=timeout_s)
        return self._seq

    def recv(self, timeout_s: float | None = None) -> Envelope:
        """The next message from the server (published ones included).

        Raises:
            RemoteError: the server sent an Error. FrameTimeoutError, PeerClosedError, FrameDecodeError:
                as FrameSocket.recv.
        """
        env = self._pending.popleft() if self._pending else self._fs.recv(timeout_s=timeout_s)
        if env.WhichOneof("body") == "error":
            raise _remote_error(env, f"the server at {self._path!r} sent an error")
        return env

    def request(self, env: Envelope, timeout_s: float = 5.0) -> Envelope:
        """Send ``env`` and wait for the reply to it; messages that arrive meanwhile stay queued for recv().

        Raises:
            RemoteError: the server answered with an Error. FrameTimeoutError: no reply within ``timeout_s``.
        """
        seq = self.send(env, timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._fs.recv(timeout_s=max(0.0, deadline - time.monotonic()))
            if reply.reply_to == seq or (reply.WhichOneof("body") == "error" and not reply.reply_to):
                if reply.WhichOneof("body") == "error":
                    raise _remote_error(reply, f"request {env.WhichOneof('body')!r} (seq {seq}) failed")
                return reply
            self._pending.append(reply)

    def recv_attach(self, timeout_s: float | None = None) -> list[tuple[pb.RingDescriptor, int | None]]:
        """Wait for an Attach and return its rings with their fds (``None`` where ``fd_follows`` is false).
        The fds are ours: pass them to ``Ring.from_fd`` and close them. Other messages stay queued.

        Raises:
            FrameDecodeError: the Attach carried a different number of fds than it announced (they are closed).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            data, fds = self._fs.recv_fds(timeout_s=left)
            try:
                env = FrameSocket.decode(data)
            except FrameDecodeError:
                close_fds(fds)
                raise
            if env.WhichOneof("body") != "attach":
                close_fds(fds)
                self._pending.append(env)
                continue
            rings = list(env.attach.rings)
            want = sum(1 for d in rings if d.fd_follows)
            if want != len(fds):
                close_fds(fds)
                raise FrameDecodeError(f"an Attach announced {want} fds but {len(fds)} arrived")
            it = iter(fds)
            return [(d, next(it) if d.fd_follows else None) for d in rings]

    def close(self) -> None:
        self._fs.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self._path!r} session={self.session_id}{' closed' if self.closed else ''}>"
