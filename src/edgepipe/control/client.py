"""The control-plane client: connect to a :class:`~edgepipe.control.server.Server`, say Hello, send requests
and receive what the server publishes. Any language with protobuf can do the same from ``proto/`` alone
(``examples/uds_client.c``).

>>> from edgepipe.control.server import Server
>>> import tempfile, os
>>> d = tempfile.mkdtemp(prefix="ep-doc-"); os.chmod(d, 0o700)
>>> with Server(os.path.join(d, "doc.sock")) as srv:
...     c = Client.connect(srv.path, stage="doc-client")
...     c.welcome.pid == os.getpid()
...     c.close()
True
"""

from __future__ import annotations

import collections
import os
import socket
import time
from collections.abc import Iterable

from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.control.framing import DEFAULT_MAX_FRAME, PROTOCOL_MAJOR, PROTOCOL_MINOR, Envelope, FrameSocket
from edgepipe.control._sockdir import default_socket_dir
from edgepipe._os import close_fds
from edgepipe.errors import FrameDecodeError, FrameTimeoutError, PeerClosedError, RemoteError

__all__ = ["Client"]

_ROLES = {n[len("ROLE_"):].lower(): v for n, v in pb.Role.items() if v}


def _remote_error(env: Envelope, context: str) -> RemoteError:
    code = env.error.code
    try:
        name = pb.ErrorCode.Name(code)
    except ValueError:
        name = f"ERROR_CODE_{code}"
    return RemoteError(code, name, env.error.message, context)


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
            try:
                fs.send(Envelope(seq=1, hello=pb.Hello(
                    protocol_major=protocol_major, protocol_minor=PROTOCOL_MINOR, stage_name=stage,
                    pid=os.getpid(), role=r, subscribe=subs)), timeout_s=timeout_s)
                send_error = None
            except PeerClosedError as e:
                # A server that refuses without reading (a uid it does not allow, a full server) may have
                # sent its Error and closed before our Hello went out: the Error is still ours to read.
                send_error = e
            try:
                env = fs.recv(timeout_s=timeout_s)
            except PeerClosedError as e:
                raise PeerClosedError(f"the server at {path!r} closed the connection during the handshake "
                                      f"({send_error or e})") from None
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
