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

import asyncio
import collections
import functools
import os
import socket
import time
from collections.abc import Iterable

from edgepipe.control._proto.edgepipe.v1 import edgepipe_pb2 as pb
from edgepipe.control.framing import DEFAULT_MAX_FRAME, PROTOCOL_MAJOR, PROTOCOL_MINOR, Envelope, FrameSocket
from edgepipe.control._sockdir import default_socket_dir
from edgepipe._os import close_fds
from edgepipe.errors import FrameDecodeError, FrameTimeoutError, PeerClosedError, RemoteError

__all__ = ["AsyncClient", "Client"]

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

    def request_attach(self, names: Iterable[str], timeout_s: float = 5.0) -> list[tuple[pb.RingDescriptor, int]]:
        """Ask the server for rings by name (an Attach whose descriptors name them, ``fd_follows`` unset; a
        supervisor answers with its taps, every one for no name: edgepipe.pipeline.attach) and return the answer's rings with their
        fds, which are ours (``Ring.from_fd``, then close them). Other messages stay queued for recv().

        Raises:
            RemoteError: the server refused (NOT_FOUND for a name it cannot hand out, with its reason).
            FrameTimeoutError: no answer within ``timeout_s``. FrameDecodeError: fds missing from the answer.
        """
        names = list(names)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"names must be non-empty strings, got {names!r}")
        req = Envelope(attach=pb.Attach(rings=[pb.RingDescriptor(name=n, direction=pb.DIRECTION_INPUT)
                                               for n in names]))
        seq = self.send(req, timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            data, fds = self._fs.recv_fds(timeout_s=max(0.0, deadline - time.monotonic()))
            try:
                env = FrameSocket.decode(data)
            except FrameDecodeError:
                close_fds(fds)
                raise
            body = env.WhichOneof("body")
            if env.reply_to != seq and not (body == "error" and not env.reply_to):
                close_fds(fds)
                self._pending.append(env)
                continue
            if body == "error":
                close_fds(fds)
                raise _remote_error(env, f"attach request for {', '.join(names) or 'every tap'} (seq {seq}) failed")
            rings = list(env.attach.rings) if body == "attach" else []
            if body != "attach" or len(fds) != len(rings) or not all(d.fd_follows for d in rings):
                close_fds(fds)
                raise FrameDecodeError(f"the answer to attach request seq {seq} was {body!r} with {len(rings)} "
                                       f"rings and {len(fds)} fds")
            return list(zip(rings, fds))

    def try_recv_raw(self) -> Envelope | None:
        """The next frame as it came (errors included, nothing raised for them), or None at once if no whole
        frame is there yet (a partial one is kept for the next call). For :class:`AsyncClient`'s reader.

        Raises:
            PeerClosedError: the server closed the connection. FrameDecodeError: not an Envelope.
        """
        if self._pending:
            return self._pending.popleft()
        try:
            return self._fs.recv(timeout_s=0)
        except FrameTimeoutError:
            return None

    def close(self) -> None:
        self._fs.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self._path!r} session={self.session_id}{' closed' if self.closed else ''}>"


_CLOSED = object()  # what a subscription's queue gets when the connection ends


class AsyncClient:
    """The asyncio form of :class:`Client`: ``await client.request(env)`` and ``async for env in
    client.subscribe("stats")``, so an asyncio program can watch Stats and results.

    The connection's socket is watched with ``loop.add_reader``: each whole frame that arrives is either
    the reply a ``request`` awaits (matched by ``reply_to``) or a published message, handed to every open
    subscription whose body names it (and kept, up to ``backlog`` messages, for the next ``subscribe`` or
    ``recv`` while none is open). Sends are written at once: control messages are small, so they go into
    the socket's buffer without waiting (a send that would wait longer than ``timeout_s`` raises).
    Use it from one event loop; the handshake in ``connect`` runs in the loop's executor.

    >>> import asyncio, tempfile, os
    >>> from edgepipe.control.server import Server
    >>> d = tempfile.mkdtemp(prefix="ep-doc-"); os.chmod(d, 0o700)
    >>> async def main(path):
    ...     async with await AsyncClient.connect(path, stage="doc", role="stage") as c:
    ...         return (await c.request(Envelope(stats=pb.Stats(stage_name="doc")))).stop.reason
    >>> with Server(os.path.join(d, "doc.sock")) as srv:
    ...     srv.on("stats", lambda session, env: Envelope(stop=pb.Stop(reason="enough")))
    ...     asyncio.run(main(srv.path))
    'enough'
    """

    __slots__ = ("_backlog", "_client", "_closed_by", "_loop", "_replies", "_subs")

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, backlog: int = 1024) -> None:
        self._client = client
        self._loop = loop
        self._replies: dict[int, asyncio.Future] = {}
        self._subs: list[tuple[frozenset[str] | None, asyncio.Queue]] = []
        self._backlog: collections.deque = collections.deque(maxlen=backlog)
        self._closed_by: BaseException | None = None
        loop.add_reader(client.fileno(), self._on_readable)

    @classmethod
    async def connect(cls, path: str | os.PathLike | None = None, *, backlog: int = 1024, **kwargs) -> AsyncClient:
        """Connect and handshake as :meth:`Client.connect` (same arguments), without blocking the loop."""
        loop = asyncio.get_running_loop()
        client = await loop.run_in_executor(None, functools.partial(Client.connect, path, **kwargs))
        return cls(client, loop, backlog)

    @property
    def client(self) -> Client:
        """The blocking Client underneath (``welcome``, ``session_id``)."""
        return self._client

    @property
    def closed(self) -> bool:
        return self._client.closed

    def _on_readable(self) -> None:
        try:
            while True:
                env = self._client.try_recv_raw()
                if env is None:
                    return
                self._route(env)
        except (PeerClosedError, FrameDecodeError, OSError) as e:
            self._end(e)

    def _route(self, env: Envelope) -> None:
        fut = self._replies.pop(env.reply_to, None) if env.reply_to else None
        if fut is not None:
            if not fut.done():
                fut.set_result(env)
            return
        body = env.WhichOneof("body")
        if body == "error" and not env.reply_to and self._replies:
            # An error that answers no seq (the server is dropping us): every request in flight gets it.
            for f in self._replies.values():
                if not f.done():
                    f.set_result(env)
            self._replies.clear()
            return
        delivered = False
        for bodies, q in self._subs:
            if bodies is None or body in bodies:
                q.put_nowait(env)
                delivered = True
        if not delivered:
            self._backlog.append(env)

    def _end(self, why: BaseException) -> None:
        if self._closed_by is not None:
            return
        self._closed_by = why
        if not self._loop.is_closed():
            self._loop.remove_reader(self._client.fileno())
        for f in self._replies.values():
            if not f.done():
                f.set_exception(PeerClosedError(f"the connection to {self._client._path!r} ended: {why}"))
        self._replies.clear()
        for _, q in self._subs:
            q.put_nowait(_CLOSED)

    async def request(self, env: Envelope, timeout_s: float = 5.0) -> Envelope:
        """Send ``env`` and await the reply to it; published messages arriving meanwhile go to subscriptions.

        Raises:
            RemoteError: the server answered with an Error. FrameTimeoutError: no reply within ``timeout_s``.
            PeerClosedError: the connection ended first.
        """
        if self._closed_by is not None:
            raise PeerClosedError(f"the connection to {self._client._path!r} ended: {self._closed_by}")
        fut = self._loop.create_future()
        seq = self._client.send(env, timeout_s=timeout_s)
        self._replies[seq] = fut  # no reply can be routed before this: routing runs on this loop
        try:
            reply = await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            raise FrameTimeoutError(f"no reply to {env.WhichOneof('body')!r} (seq {seq}) within "
                                    f"timeout_s={timeout_s}") from None
        finally:
            self._replies.pop(seq, None)
        if reply.WhichOneof("body") == "error":
            raise _remote_error(reply, f"request {env.WhichOneof('body')!r} (seq {seq}) failed")
        return reply

    async def send(self, env: Envelope, timeout_s: float | None = 5.0) -> int:
        """Send an Envelope without awaiting a reply; returns its seq."""
        return self._client.send(env, timeout_s=timeout_s)

    async def subscribe(self, *bodies: str):
        """``async for env in client.subscribe("stats", "inference_result"):`` the published messages with
        these body names (none: every published message), until the connection ends. The server sends only
        what the client subscribed to in ``connect(subscribe=...)``.

        Raises:
            RemoteError: the server sent an Error that answers no request.
        """
        want = frozenset(bodies) or None
        q: asyncio.Queue = asyncio.Queue()
        keep = collections.deque()
        while self._backlog:  # what arrived while nobody listened, oldest first
            env = self._backlog.popleft()
            (q.put_nowait if want is None or env.WhichOneof("body") in want else keep.append)(env)
        self._backlog.extend(keep)
        if self._closed_by is not None:
            q.put_nowait(_CLOSED)
        entry = (want, q)
        self._subs.append(entry)
        try:
            while True:
                env = await q.get()
                if env is _CLOSED:
                    return
                if env.WhichOneof("body") == "error":
                    raise _remote_error(env, f"the server at {self._client._path!r} sent an error")
                yield env
        finally:
            self._subs.remove(entry)

    def close(self) -> None:
        """Stop watching the socket and close the connection. Safe to call twice."""
        if not self._client.closed:
            self._end(PeerClosedError("closed by this client"))
            self._client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<AsyncClient {self._client!r}>"
