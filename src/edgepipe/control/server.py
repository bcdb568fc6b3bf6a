"""The control-plane server: ``edgepipe.v1`` Envelopes in FrameSocket frames over a Unix socket.

A supervisor runs a :class:`Server`; stages, monitors and programs in other languages connect with a
:class:`Client` (or any protobuf library plus the 4-byte length framing, see ``examples/uds_client.c``).

Handshake: the client's first frame is a Hello carrying its protocol version, stage name, pid, role and the
body names it wants published to it. The server answers Welcome, or an Error (VERSION_MISMATCH for another
major, PERMISSION for a uid it does not allow, BUSY when it is at ``max_clients``, UNSUPPORTED for a
subscription it does not know, BAD_MESSAGE for anything else) and closes the connection. Every Error that
answers a message echoes its seq in ``reply_to``; a refusing server half-closes and drains for a moment
before it closes, so a client still sending its Hello reads the Error instead of getting EPIPE.

After the handshake, the compatibility rule of ``proto/edgepipe/v1/edgepipe.proto`` holds: a body this
server does not know (a newer minor's) gets Error UNSUPPORTED, a known body without a handler NOT_FOUND,
both echoing the request's seq, and the connection stays up.

Security: the socket lives in a directory that is ours, not a symlink, and mode 0700
(``$XDG_RUNTIME_DIR/edgepipe``, else ``/tmp/edgepipe-<uid>``); each peer's uid comes from ``SO_PEERCRED``
and only our own uid (plus ``allowed_uids``) is served. Allowing other users needs a directory they can
search: with ``allowed_uids`` naming another uid the server creates its directory 0711 (others may enter
it but not list or write it; an existing one may be 0711/0755, still ours and never group/other-writable),
and the default directory is then a dedicated ``/tmp/edgepipe-<uid>-shared`` (``$XDG_RUNTIME_DIR`` is
0700 by specification, so no other user could reach a socket under it). The socket file is then 0666, so
``SO_PEERCRED`` is what keeps strangers out. A directory on the way that an allowed uid cannot search is
logged as a warning (ACLs may still let it through).

Resource bounds (a client that stalls must not pin the server's memory): before its Hello a connection may
send frames of ``pre_hello_max_frame`` bytes only (the Hello is small; ``max_frame`` applies once it is
welcomed); a frame that has begun must complete within ``frame_timeout_s`` (idle clients are fine); at most
``max_clients`` connections, welcomed or not, are open at once, and the next is refused with Error BUSY.
So a server holds at most about ``max_clients`` x (``pre_hello_max_frame`` + 128 KiB) for strangers, and a
stalled frame of a welcomed client for at most ``frame_timeout_s``.

Concurrency: one accept thread and one thread per session. FrameSocket waits in C with the GIL released and
resumes partly received frames, so a session thread is a plain receive loop, and a client that stalls or
vanishes mid-frame holds up nobody but its own thread. Edge pipelines have a handful to a few dozen clients;
a thread each is cheap at that scale. Measured (benchmarks/frame_socket.py, 2 vCPUs): a request through
the server costs a few us more than FrameSocket alone, and 4-16 client processes saturate one core of
server Python at ~40-50 k requests/s, where a selectors loop would hit the same one-core ceiling without
the isolation (it would have to buffer every client's partial frames itself).
Handlers run in the session's thread. ``publish`` never waits for a subscriber: it serializes the message
once and appends it to each subscriber's bounded queue, and a sender thread per subscriber (started for
sessions that subscribed to anything) sends from there with ``send_timeout_s``. A subscriber whose send takes
longer, or whose queue would pass ``publish_queue_bytes``, is dropped, so a slow subscriber costs only
itself: K stalled subscribers no longer stall every publication by K x send_timeout_s.

Socket files: an existing socket at the path is probed with connect(). Refused means a dead server left it:
it is replaced. Accepted means a live server: :class:`~edgepipe.errors.SocketInUseError` naming the path,
and nothing is touched. The check and bind happen under ``flock`` on the directory, so two servers starting
at once cannot both "replace" the file. ``close()`` unlinks the socket only if it is still the one we bound.

One piece: a Session lives and dies with its Server (registration, publish queues, counters and shutdown
order are the server's), so both stay in this module; the socket directory rules are in ``_sockdir`` and
the client in ``client``.
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
    FrameStalledError,
    FrameTimeoutError,
    FrameTooLargeError,
    PeerClosedError,
    RemoteError,
    SocketInUseError,
    UnknownBodyError,
)
from edgepipe._os import close_fds
from edgepipe.control._sockdir import default_socket_dir, secure_dir, unreachable_for
from edgepipe.control.framing import DEFAULT_MAX_FRAME, PROTOCOL_MAJOR, PROTOCOL_MINOR, Envelope, FrameSocket

__all__ = ["Server", "Session", "default_socket_dir"]

log = logging.getLogger("edgepipe.control.server")

#: Envelope body names (the ``body`` oneof), e.g. "hello", "stats", "inference_result".
BODIES = frozenset(f.name for f in Envelope.DESCRIPTOR.oneofs_by_name["body"].fields)
#: The bodies a server publishes and a Hello may subscribe to (besides "*"): the handshake's own messages,
#: Attach (one session's fds) and Error (an answer) are never published.
PUBLISHABLE = BODIES - {"hello", "welcome", "attach", "error"}
DEFAULT_PRE_HELLO_MAX_FRAME = 64 * 1024
_REFUSE_LINGER_S = 1.0  # after a refusal, how long the server drains what the client still sends
_QUEUED_OVERHEAD = 64  # bytes counted per queued publication besides its payload (deque slot, tail)
_DIRECTIONS = {"input": pb.DIRECTION_INPUT, "output": pb.DIRECTION_OUTPUT}
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the NUL
_PROBE_TIMEOUT_S = 1.0

Handler = Callable[["Session", Envelope], "Envelope | None"]


def _check_size_arg(name: str, value: object, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be int, not {type(value).__name__}: {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return value


def _check_seconds_arg(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}: {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return float(value)


def _peercred(sock: socket.socket) -> tuple[int, int, int]:
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def _error(code: int, message: str, reply_to: int = 0) -> Envelope:
    return Envelope(reply_to=reply_to, error=pb.Error(code=code, message=message))


class Session:
    """One connected client, as the server sees it. Created by the server; handlers receive it.

    Attributes:
        id: unique per server. pid, uid, gid: the peer's credentials from SO_PEERCRED.
        hello: the client's Hello (``stage_name``, ``role``, ``subscribe``, protocol version).
    """

    __slots__ = ("_dropped", "_fs", "_out_busy", "_out_cv", "_outbox", "_outbox_bytes", "_sender", "_seq", "_server",
                 "_thread", "_tx_lock", "gid", "hello", "id", "pid", "subscribe", "uid")

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
        # Published messages waiting for this subscriber's sender thread, and the bytes they count.
        self._outbox: collections.deque[bytes] = collections.deque()
        self._outbox_bytes = 0
        self._out_cv = threading.Condition(threading.Lock())
        self._sender: threading.Thread | None = None
        self._out_busy = False  # the sender thread is sending one it took off the queue
        self._dropped = False

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
        self.attach_many([(name, ring, direction, record_types)], timeout_s=timeout_s)

    def attach_many(self, rings: Iterable[tuple], reply_to: int = 0, timeout_s: float | None = None) -> None:
        """Hand several rings in one Attach (their fds on the same frame, in order), e.g. as the answer to a
        client's Attach request (``reply_to``: that request's seq).

        Args:
            rings: ``(name, ring, direction)`` or ``(name, ring, direction, record_types)`` tuples, as
                :meth:`attach` takes them.
        """
        descs, fds = [], []
        for name, ring, direction, *types in rings:
            d = _DIRECTIONS.get(direction, direction) if isinstance(direction, str) else direction
            if d not in (pb.DIRECTION_INPUT, pb.DIRECTION_OUTPUT):
                raise ValueError(f"direction must be 'input' or 'output', got {direction!r}")
            descs.append(pb.RingDescriptor(name=name, capacity=ring.capacity, direction=d,
                                           record_types=list(types[0]) if types else [], fd_follows=True))
            fds.append(ring.fd)
        self._send(Envelope(reply_to=reply_to, attach=pb.Attach(rings=descs)), tuple(fds), timeout_s)

    def close(self) -> None:
        """Disconnect this client (its session and sender threads end). Safe to call twice."""
        self._fs.close()
        with self._out_cv:
            self._outbox.clear()
            self._outbox_bytes = 0
            self._out_cv.notify_all()

    def _enqueue(self, data: bytes, limit: int) -> bool | None:
        """Queue a publication for the sender thread: True if queued, None if the session is closed,
        False if it would take the queue past ``limit`` bytes (the subscriber has fallen too far behind)."""
        cost = len(data) + _QUEUED_OVERHEAD
        with self._out_cv:
            if self._fs.closed:
                return None
            if self._outbox and self._outbox_bytes + cost > limit:
                return False
            self._outbox.append(data)
            self._outbox_bytes += cost
            self._out_cv.notify()
        return True

    def _sender_loop(self) -> None:
        server = self._server
        while True:
            with self._out_cv:
                while not self._outbox and not self._fs.closed:
                    self._out_cv.wait()
                if self._fs.closed:
                    return
                data = self._outbox.popleft()
                self._outbox_bytes -= len(data) + _QUEUED_OVERHEAD
                self._out_busy = True
            try:
                self._send_published(data, server.send_timeout_s)
            except FrameError as e:
                server._drop_subscriber(self, e)
                return
            finally:
                with self._out_cv:
                    self._out_busy = False
                    self._out_cv.notify_all()

    def _flush(self, deadline: float) -> None:
        """Wait (until ``deadline``, time.monotonic) for the sender thread to send what is queued."""
        with self._out_cv:
            while (self._outbox or self._out_busy) and not self._fs.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._out_cv.wait(left)

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
        path: the socket path; default ``default_socket_dir() / f"{name}.sock"`` (with ``allowed_uids``
            naming another uid: ``default_socket_dir(shared=True)``). Its directory is created if missing
            (0700; 0711 with other allowed uids, so they can reach the socket) and must be ours (see the
            module docstring).
        name: socket file name stem when ``path`` is not given.
        allowed_uids: uids served besides our own (checked with SO_PEERCRED); others get an Error
            (PERMISSION) and a closed socket.
        max_frame: the largest frame accepted from a welcomed client, in bytes (default 16 MiB).
        pre_hello_max_frame: the largest frame accepted before the Hello (default 64 KiB): a stranger that
            announces a bigger one gets Error BAD_MESSAGE, so it cannot make us allocate ``max_frame``.
        frame_timeout_s: once a frame's first byte has arrived, the rest must arrive within this (default
            10 s), or the client gets Error BAD_MESSAGE and is dropped; waiting between frames is free.
        max_clients: the most connections open at once, welcomed or still handshaking (default 64); the
            next one gets Error BUSY and is closed.
        hello_timeout_s: a client that sends no Hello within this is dropped.
        send_timeout_s: how long a send to one client may block before that client is dropped.
        publish_queue_bytes: how far (payload bytes plus 64 per message) a subscriber may fall behind
            ``publish`` before it is dropped (default 4 MiB); a single larger message is still queued alone.

    Memory a server can be made to hold: about ``max_clients`` x (``pre_hello_max_frame`` + 128 KiB) from
    clients that never say Hello, for at most ``hello_timeout_s``; a welcomed client's partial frame of up to
    ``max_frame`` for at most ``frame_timeout_s``; ``publish_queue_bytes`` per subscriber.

    >>> import tempfile, os
    >>> from edgepipe.control.client import Client
    >>> d = tempfile.mkdtemp()
    >>> with Server(os.path.join(d, "ctl.sock")) as srv:
    ...     srv.on("stats", lambda session, env: Envelope(stop=pb.Stop(reason="enough")))
    ...     with Client.connect(srv.path, stage="imu", role="stage") as c:
    ...         c.request(Envelope(stats=pb.Stats(stage_name="imu")), timeout_s=5).stop.reason
    'enough'
    """

    def __init__(self, path: str | os.PathLike | None = None, *, name: str = "control",
                 allowed_uids: Iterable[int] = (), max_frame: int = DEFAULT_MAX_FRAME,
                 pre_hello_max_frame: int = DEFAULT_PRE_HELLO_MAX_FRAME, frame_timeout_s: float = 10.0,
                 max_clients: int = 64, hello_timeout_s: float = 5.0, send_timeout_s: float = 1.0,
                 publish_queue_bytes: int = 4 << 20) -> None:
        uids = set()
        for u in allowed_uids:
            if not isinstance(u, int) or isinstance(u, bool) or u < 0:
                raise ValueError(f"allowed_uids must hold uids (ints >= 0), got {u!r}")
            uids.add(u)
        self._allowed = frozenset(uids | {os.geteuid()})
        self._shared = bool(uids - {os.geteuid()})
        if path is None:
            if not name or "/" in name:
                raise ValueError(f"name must be a non-empty file name stem without '/', got {name!r}")
            path = default_socket_dir(self._shared) / f"{name}.sock"
        self._path = Path(os.path.abspath(os.fspath(path)))
        if len(os.fsencode(self._path)) > _SUN_PATH_MAX:
            raise ValueError(f"socket path is {len(os.fsencode(self._path))} bytes, over the "
                             f"{_SUN_PATH_MAX}-byte AF_UNIX limit: {str(self._path)!r}")
        self.max_frame = _check_size_arg("max_frame", max_frame, 0)
        self.pre_hello_max_frame = _check_size_arg("pre_hello_max_frame", pre_hello_max_frame, 0)
        self.frame_timeout_s = _check_seconds_arg("frame_timeout_s", frame_timeout_s)
        self.max_clients = _check_size_arg("max_clients", max_clients, 1)
        self.hello_timeout_s = hello_timeout_s
        self.send_timeout_s = send_timeout_s
        self.publish_queue_bytes = _check_size_arg("publish_queue_bytes", publish_queue_bytes, 0)
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
        #: Plain int counters: accepted, welcomed, refused_uid, refused_version, refused_hello, refused_busy,
        #: bad_frames, stalled_frames, unsupported, vanished_mid_frame, disconnected, handler_errors,
        #: published, dropped_subscribers.
        self.counters: dict[str, int] = dict.fromkeys(
            ("accepted", "welcomed", "refused_uid", "refused_version", "refused_hello", "refused_busy",
             "bad_frames", "stalled_frames", "unsupported", "vanished_mid_frame", "disconnected",
             "handler_errors", "published", "dropped_subscribers"), 0)
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
        secure_dir(self._path.parent, self._shared)
        if self._shared:
            for why in unreachable_for(self._path.parent, self._allowed - {os.geteuid()}):
                log.warning("allowed_uids may not reach %s: %s", self.path, why)
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
        """Queue ``env`` for every session that subscribed to its body name (Hello.subscribe); never waits
        for a subscriber. The message is serialized once; each subscriber's sender thread sends it with
        ``send_timeout_s``. A subscriber that cannot take it in time, or that has fallen more than
        ``publish_queue_bytes`` behind, is disconnected (``counters["dropped_subscribers"]``).
        Returns how many sessions it was queued for.

        Raises:
            ValueError: ``env`` has no body, or one that is never published (hello, welcome, attach, error).
        """
        body = env.WhichOneof("body")
        if body not in PUBLISHABLE:
            raise ValueError(f"publish needs an Envelope with one of the bodies {sorted(PUBLISHABLE)}, "
                             f"got {body!r}: {env!r:.80}")
        data = env.SerializeToString()
        n = 0
        for s in self._snapshot:
            if body not in s.subscribe and "*" not in s.subscribe:
                continue
            queued = s._enqueue(data, self.publish_queue_bytes)
            if queued:
                n += 1
            elif queued is False:
                self._drop_subscriber(s, FrameTimeoutError(
                    f"subscriber {s!r} fell {s._outbox_bytes} bytes behind (publish_queue_bytes "
                    f"{self.publish_queue_bytes}); a message of {len(data)} bytes did not fit"))
        with self._lock:
            self.counters["published"] += n
        return n

    def _drop_subscriber(self, s: Session, err: Exception) -> None:
        """Disconnect a subscriber that cannot keep up. The session leaves sessions() before the counter
        moves, so whoever sees the count also sees it gone."""
        with self._changed:
            if s._dropped or s.closed:
                return  # closed already (by the server, the client, or another drop)
            s._dropped = True
            self._sessions.pop(s.id, None)
            self._snapshot = tuple(self._sessions.values())
            self._changed.notify_all()
            self.counters["dropped_subscribers"] += 1
        self.recent_errors.append(err)
        log.warning("dropping subscriber %r: %s", s, err)
        s.close()

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
        """Stop accepting, give each subscriber's queue up to ``timeout_s`` to go out (a stalled subscriber
        is dropped after ``send_timeout_s`` as usual), disconnect every client, unlink the socket (if it is
        still ours). Safe twice."""
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
        deadline = time.monotonic() + timeout_s
        for s in self._snapshot:
            s._flush(deadline)  # what publish() accepted before close() is delivered, as when it sent inline
        with self._lock:
            sessions = list(self._sessions.values()) + list(self._pending)
        for s in sessions:
            s.close()
        for s in sessions:
            for t in (s._thread, s._sender):
                if t is not None and t is not threading.current_thread():
                    t.join(max(0.0, deadline - time.monotonic()))
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
        # Until the Hello, frames are capped at pre_hello_max_frame: a stranger cannot make us allocate more.
        fs = FrameSocket(conn, self.pre_hello_max_frame, frame_timeout_s=self.frame_timeout_s)
        with self._lock:
            self.counters["accepted"] += 1
            busy = len(self._pending) + len(self._sessions) >= self.max_clients
            if not busy:
                self._next_id += 1
                s = Session(self, fs, self._next_id, cred)
                self._pending.add(s)
        if busy:
            # Refused here, in the accept thread: a fresh socket's buffer always takes one small frame, and
            # no thread is spent on it (no linger either; Client.connect reads the Error even after EPIPE).
            with self._lock:
                self.counters["refused_busy"] += 1
            msg = (f"the server at {self.path!r} is at its limit of {self.max_clients} connections "
                   f"(max_clients); refusing pid {cred[0]} (uid {cred[1]})")
            log.warning("%s", msg)
            try:
                fs.send(Envelope(seq=1, error=pb.Error(code=pb.ERROR_CODE_BUSY, message=msg)), timeout_s=0.1)
            except FrameError:
                pass
            fs.close()
            return
        s._thread = threading.Thread(target=self._serve, args=(s,), daemon=True,
                                     name=f"edgepipe-session {s.id} pid {s.pid}")
        s._thread.start()

    def _refuse(self, s: Session, counter: str, code: int, message: str, reply_to: int = 0) -> None:
        """Send the Error (its own seq, ``reply_to`` the refused message's), then close: half-close and
        drain briefly first, so a client still sending (its Hello, the rest of a frame) reads the Error
        instead of a reset or EPIPE."""
        with self._lock:
            self.counters[counter] += 1
        log.warning("refusing %r: %s", s, message)
        try:
            s._send(_error(code, message, reply_to), (), min(self.send_timeout_s, 1.0))
        except FrameError:
            pass
        s._fs.close(linger_s=_REFUSE_LINGER_S)

    def _handshake(self, s: Session) -> Envelope | None:
        """Check the peer and its Hello: the Welcome to send, or None after refusing."""
        if s.uid not in self._allowed:
            self._refuse(s, "refused_uid", pb.ERROR_CODE_PERMISSION,
                         f"uid {s.uid} (pid {s.pid}) may not use {self.path!r}; allowed uids: "
                         f"{sorted(self._allowed)}")
            return False
        try:
            env = s._fs.recv(timeout_s=self.hello_timeout_s)
        except FrameStalledError as e:
            self._refuse(s, "refused_hello", pb.ERROR_CODE_BAD_MESSAGE, f"no complete Hello: {e}")
            return False
        except FrameTimeoutError:
            self._refuse(s, "refused_hello", pb.ERROR_CODE_BAD_MESSAGE,
                         f"no Hello within {self.hello_timeout_s} s of connecting")
            return False
        except UnknownBodyError as e:
            self._refuse(s, "refused_hello", pb.ERROR_CODE_BAD_MESSAGE,
                         f"the first message must be a Hello, got a body this server does not know: {e}",
                         e.envelope.seq)
            return False
        except FrameTooLargeError as e:
            self._refuse(s, "refused_hello", pb.ERROR_CODE_BAD_MESSAGE,
                         f"{e} (before its Hello a client may send frames of up to pre_hello_max_frame = "
                         f"{self.pre_hello_max_frame} bytes)")
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
        unpublished = sorted(set(h.subscribe) & (BODIES - PUBLISHABLE))
        if unknown or unpublished:
            bad = unknown or unpublished
            code = pb.ERROR_CODE_UNSUPPORTED if unknown else pb.ERROR_CODE_BAD_MESSAGE
            what = "bodies this server does not know" if unknown else "bodies that are never published"
            self._refuse(s, "refused_hello", code,
                         f"cannot subscribe to {bad}: {what}; subscribe to some of {sorted(PUBLISHABLE)} or '*' "
                         f"(protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR})", env.seq)
            return False
        s.hello = h
        s.subscribe = frozenset(h.subscribe)
        s._fs.max_frame = self.max_frame  # welcomed: full-size frames from now on
        return Envelope(reply_to=env.seq, welcome=pb.Welcome(
            protocol_major=PROTOCOL_MAJOR, protocol_minor=PROTOCOL_MINOR, pid=os.getpid(), session_id=s.id))

    def _serve(self, s: Session) -> None:
        welcomed = False
        try:
            welcome = None if self._closing else self._handshake(s)
            if welcome is None:
                return
            # Registered and counted before the Welcome leaves: a client holding its Welcome is already in
            # sessions() and in counters["welcomed"]. Publications queued meanwhile wait for the sender
            # thread, which starts after the Welcome is sent, so they still arrive after it.
            with self._changed:
                self._pending.discard(s)
                self._sessions[s.id] = s
                self._snapshot = tuple(self._sessions.values())
                self.counters["welcomed"] += 1
                self._changed.notify_all()
            welcomed = True
            s.send(welcome)
            if s.subscribe:
                s._sender = threading.Thread(target=s._sender_loop, daemon=True,
                                             name=f"edgepipe-publish {s.id} pid {s.pid}")
                s._sender.start()
            while True:
                try:
                    env = s._fs.recv()
                except UnknownBodyError as e:
                    # The compatibility rule (edgepipe.proto): a newer minor's body is answered, not fatal.
                    with self._lock:
                        self.counters["unsupported"] += 1
                    s.send(_error(pb.ERROR_CODE_UNSUPPORTED,
                                  f"this server speaks protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR} and does not "
                                  f"know the body of message seq {e.envelope.seq} (a newer minor's?)",
                                  e.envelope.seq))
                    continue
                self._dispatch(s, env)
        except FrameClosedError:
            pass  # we closed it: server shutdown, Session.close(), a dropped subscriber
        except FrameStalledError as e:
            self.recent_errors.append(e)
            self._refuse(s, "stalled_frames", pb.ERROR_CODE_BAD_MESSAGE, str(e))
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
