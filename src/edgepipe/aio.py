"""asyncio waits on rings and latest slots without a thread: the handle of ``csrc/ep_async.c``.

The ends' async methods (``RingReader.read_async``, ``async for rec in reader``, ``RingWriter.write_async``,
``FrameReader.read_frame_async``, ``LatestReader.read_frame_async``) all come here with two callables:
``attempt()`` (the non-blocking try: a result, or None for "not now") and, for the rare helper-thread
fallback, ``block(timeout_s)``. :func:`wait_for` then waits the eventcount way:

1. try; if nothing, announce this waiter's key in the segment's async word for that direction
   (``ep_async_arm``: a seq_cst store and a full fence), try again (the re-check), then await;
2. the other end, after its publish and the fence it already issues for the futex, loads that word and,
   only if it is set, clears it and sends one datagram to the waiter's abstract Unix socket
   (``ep_async_hook.h``), which the loop watches with ``add_reader`` (registered once per waiter);
3. the waiter withdraws its announcement (``ep_async_disarm``) whatever woke it, and tries again.

Before step 1 announces anything, a waiter spins for a bounded window when the loop has nothing else
to do, as the blocking hybrid policy does: ``ep_async_spin`` polls the watched position (the ring's tail
for data, its head for room, the latest slot's publish count) for up to ``EDGEPIPE_AIO_SPIN_NS`` (unset:
this machine's hybrid default, one measured futex wake, :mod:`edgepipe.wait`; ``0``: never spin), and
stops early when any fd of the loop becomes ready (its epoll fd polls readable: I/O, another thread's
``call_soon_threadsafe``, a signal). It spins only if no callback is ready, no timer falls due within the
window and no other waiter of the loop was woken and has not resumed yet. A stdlib selector loop shows
its ready queue and timers; uvloop hides both, so there the waiter first yields one pass of the loop
(what was ready runs) and a timer may fire up to one window late (libuv's timers have 1 ms resolution).
An awaited ping-pong answered within the window never enters the loop's wake path; numbers (latency and
CPU per message, with and without the spin) in ``benchmarks/async_pingpong.py``.

Nobody awaiting costs the producer one load. A waiter is created on first use per (end, direction, loop)
and kept: its socket and the peer's pidfd stay registered with the loop, so an await costs two cffi
calls and a future, no syscall on the waiting side until the datagram arrives.

Peer death: the other end's process is watched through a pidfd in the loop (``add_reader``, no polling):
its exit wakes the waiter, which raises PeerClosedError once nothing is left to take. A waiter that
announced itself before the other end first opened (no pid to watch yet) is woken by that open, which
signals the announced word like a publish does; a 1 s re-check remains as the backstop for an opener in
another network namespace, whose datagram cannot arrive. Closing either end (``close()`` in
this process, or the peer's) signals both async words, so every awaiter wakes and sees why. Cancelling
an awaiting task withdraws its announcement in ``finally``.

Fallback: the abstract name is only reachable from the same network namespace. When the other end's
process is in another one (a container with its own network), or ``EDGEPIPE_AIO_THREAD=1`` is set, the
waiter waits in the loop's default executor on the futex instead (``block``), in slices of 50 ms:
measured in ``benchmarks/async_pingpong.py`` (``--mode thread``).

Use an end's async methods from one event loop thread; closing the end from another thread while a task
awaits it is not supported (close it from the loop). A forked child drops the waiters it inherited
without touching their loop (a stdlib loop's epoll instance is shared with the parent).

>>> import asyncio
>>> from edgepipe.ring import Ring
>>> async def main():
...     with Ring.create(capacity=4096) as ring:
...         r, w = ring.reader(), ring.writer()
...         task = asyncio.ensure_future(r.read_async(timeout_s=5))
...         await asyncio.sleep(0.01)   # the task announces itself and sleeps in the loop
...         w.write(b"hello")           # the publish sees the announcement and signals the task's socket
...         return await task, word(ring, RING_DATA) & 1
>>> asyncio.run(main())
(b'hello', 0)
"""

from __future__ import annotations

import asyncio
import collections
import os
import types
import weakref

from edgepipe._ffi import ffi, lib
from edgepipe.errors import PeerClosedError, RingTimeoutError, check

__all__: list[str] = []  # the API is the ends' async methods (read_async, write_async, ...); these serve them

RING_DATA = lib.EP_ASYNC_RING_DATA_OFF
RING_SPACE = lib.EP_ASYNC_RING_SPACE_OFF
LATEST_DATA = lib.EP_ASYNC_LATEST_DATA_OFF
# Backstop while the other end has not opened (no pid to watch): its open signals the announced waiter,
# so this only matters for an opener in another network namespace, whose datagram cannot reach us.
_UNKNOWN_PEER_S = 1.0
_THREAD_SLICE_S = 0.05
# The position a spinning waiter watches for each async word: the ring's tail (data), its head (room);
# the latest slot's data word shares RING_SPACE's offset and its `published` count shares the head's.
_WATCH = {RING_DATA: lib.EP_ASYNC_RING_TAIL_OFF, RING_SPACE: lib.EP_ASYNC_RING_HEAD_OFF}
assert LATEST_DATA == RING_SPACE and lib.EP_ASYNC_LATEST_PUB_OFF == lib.EP_ASYNC_RING_HEAD_OFF
_WAITERS: dict[tuple[int, int], _Waiter] = {}
_PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> [tasks woken, not yet resumed]
_SPINS = [0, 0]  # spins started, spins the position ended (this process): spin_counts()
_WOKE = object()  # the result _wake() gives a waiter's future (a timer's is None)
_next_sweep = 16  # sweep the table when it holds this many waiters


def _netns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _forced_thread() -> bool:
    return os.environ.get("EDGEPIPE_AIO_THREAD", "") not in ("", "0")


def _spin_ns() -> int:
    """The spin before parking: ``EDGEPIPE_AIO_SPIN_NS`` if set (0: never spin), else this machine's
    hybrid default (one measured futex wake, :func:`edgepipe.wait.default_spin_ns`)."""
    v = os.environ.get("EDGEPIPE_AIO_SPIN_NS", "")
    if v:
        try:
            ns = int(v)
        except ValueError:
            raise ValueError(f"EDGEPIPE_AIO_SPIN_NS must be an int >= 0, got {v!r}") from None
        if ns < 0:
            raise ValueError(f"EDGEPIPE_AIO_SPIN_NS must be an int >= 0, got {v!r}")
        return ns
    from edgepipe.wait import default_spin_ns

    return default_spin_ns()


def _loop_queues(loop) -> tuple | None:
    """(ready deque, timer heap, epoll fd) of an asyncio selector loop, whose ready queue a spin must
    see empty; None for a loop that hides it (uvloop): such a loop's waiters park at once."""
    ready, sched = getattr(loop, "_ready", None), getattr(loop, "_scheduled", None)
    sel = getattr(loop, "_selector", None)
    if not isinstance(ready, collections.deque) or not isinstance(sched, list) or sel is None:
        backend = getattr(loop, "_get_backend_id", None)  # uvloop: libuv's epoll fd
        if backend is not None:
            return None, None, backend()
        return None
    try:
        epfd = sel.fileno()  # EpollSelector: its epoll fd polls readable while any fd in it is ready
    except (AttributeError, OSError):
        return None
    return ready, sched, epfd


class _Waiter:
    """One end's async wait for one direction, bound to one event loop: its socket, key and the pidfd of
    the other end's process."""

    __slots__ = ("addr", "end", "epfd", "fd", "futs", "key", "loop", "off", "peer", "peer_exited", "pending",
                 "pid", "pidfd", "ready", "sched", "seg", "spin_ns", "spin_s", "thread", "watch")

    def __init__(self, end, off: int, peer: str, loop: asyncio.AbstractEventLoop) -> None:
        self.end, self.seg, self.off, self.peer, self.loop = end, end.segment, off, peer, loop
        self.addr = self.seg.region.address  # valid while the segment is open (checked before each use)
        self.futs: list[asyncio.Future] = []
        self.pid = 0
        self.pidfd = -1
        self.peer_exited = False
        self.thread = _forced_thread()
        self.watch = _WATCH[off]
        self.pending = _PENDING.setdefault(loop, [0])
        q = _loop_queues(loop)
        self.spin_ns = _spin_ns() if q is not None else 0
        self.spin_s = self.spin_ns / 1e9
        self.ready, self.sched, self.epfd = q if q is not None else (None, None, -1)
        key = ffi.new("uint64_t *")
        self.fd = check(lib.ep_async_open(key), "opening an async waiter's socket")
        self.key = key[0]
        loop.add_reader(self.fd, self._on_signal)

    # -- the other end's process -----------------------------------------------------------------------
    def watch_peer(self) -> None:
        """(Re)open the pidfd of the other end's current owner if it changed."""
        s = self.seg.status()
        pid = getattr(s, f"{self.peer}_pid")
        if pid == self.pid and (self.pidfd >= 0 or pid == 0):
            return
        self._drop_pidfd()
        self.pid, self.peer_exited = pid, False
        if pid <= 0 or getattr(s, f"{self.peer}_closed"):
            return
        if not self.thread and _netns(pid) != _netns("self"):
            self.thread = True  # our socket's name is unreachable from its network namespace
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.peer_exited = True
            return
        self.loop.add_reader(self.pidfd, self._on_peer_exit)

    def _drop_pidfd(self) -> None:
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1

    def _on_peer_exit(self) -> None:
        self.peer_exited = True
        self._drop_pidfd()
        self._wake()

    def _on_signal(self) -> None:
        lib.ep_async_drain(self.fd, 1)  # one per wake: a stale one left over just makes the fd ready again
        self._wake()

    def _wake(self) -> None:
        for f in self.futs:
            if not f.done():
                f.set_result(_WOKE)
                self.pending[0] += 1  # until its task resumes: no other waiter of the loop spins meanwhile

    # -- announcing --------------------------------------------------------------------------------
    def arm(self) -> None:
        lib.ep_async_arm(self.addr, self.off, self.key)  # the caller's attempt() just found the end open

    def disarm(self) -> None:
        # Only the last task awaiting this waiter withdraws: the others still rely on the announcement.
        if not self.futs and not self.seg.closed:
            lib.ep_async_disarm(self.addr, self.off, self.key)

    def close(self) -> None:
        if self.fd < 0:
            return
        self._wake()
        self._drop_pidfd()
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1


def _waiter(end, off: int, peer: str, loop) -> _Waiter:
    k = (id(end), off)
    w = _WAITERS.get(k)
    if w is not None and w.end is end and w.loop is loop and w.fd >= 0:
        return w
    if w is not None:
        _WAITERS.pop(k).close()
    global _next_sweep
    if len(_WAITERS) >= _next_sweep:
        # Sweep waiters of closed ends and closed loops (each holds two fds), each time the table doubled:
        # amortised O(1) per waiter, so a loop opening 1000 waiters does not walk the table 1000 times.
        for k2, w2 in list(_WAITERS.items()):
            if w2.end.closed or w2.loop.is_closed():
                _WAITERS.pop(k2).close()
        _next_sweep = 2 * len(_WAITERS) + 16
    w = _WAITERS[k] = _Waiter(end, off, peer, loop)
    return w


def _forget_after_fork() -> None:
    """In a forked child: drop the parent's waiters without touching their loops (a stdlib loop's epoll
    instance is shared with the parent, so unregistering there would unregister the parent's fds)."""
    for w in _WAITERS.values():
        for fd in (w.fd, w.pidfd):
            if fd >= 0:
                os.close(fd)
        w.fd = w.pidfd = -1
    _WAITERS.clear()
    global _next_sweep
    _next_sweep = 16


os.register_at_fork(after_in_child=_forget_after_fork)


def close_waiters(end) -> None:
    """Drop every waiter of ``end`` (its sockets and pidfds). The ends' close() need not call this: a
    waiter of a closed end is dropped when its last task wakes, or by a later sweep of the table."""
    for k, w in list(_WAITERS.items()):
        if w.end is end:
            _WAITERS.pop(k).close()


async def wait_for(end, off: int, peer: str, attempt, block, timeout_s: float | None, what: str):
    """Await ``attempt()`` returning something other than None, for up to ``timeout_s`` (None: forever).

    Args:
        end: the end (``segment`` and ``closed``). off: the async word (RING_DATA, RING_SPACE, LATEST_DATA).
        peer: "producer" or "consumer": whose process to watch. attempt: the non-blocking try; raises
            PeerClosedError / RingClosedError itself when the peer or the end is gone. block: ``block(t)``
            waits up to t seconds on the futex (helper-thread fallback only). what: for the timeout message.

    Raises:
        RingTimeoutError: still nothing at the deadline. PeerClosedError: the other end's process exited
            and nothing is left. Whatever ``attempt`` raises.
    """
    r = attempt()
    if r is not None:
        return r
    if timeout_s is not None and not timeout_s >= 0:  # negative or NaN
        raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s!r}")
    loop = asyncio.get_running_loop()
    w = _waiter(end, off, peer, loop)
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while True:
        if w.pidfd < 0:
            w.watch_peer()  # a status() read: only until the other end's process is watched
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            r = attempt()
            if r is not None:
                return r
            raise RingTimeoutError(f"{what} within timeout_s={timeout_s}")
        if w.spin_ns and not w.thread and not w.pending[0]:
            if w.sched is None:
                await _pass()  # a loop whose ready queue is hidden (uvloop): what is ready runs first
            if not w.ready and not w.pending[0] and (not w.sched or w.sched[0].when() > loop.time() + w.spin_s):
                # Nothing else in the loop is ready, no other waiter of it was woken, and no timer falls
                # due within the window: spin on the position for up to one wake's worth, ending early
                # if any fd of the loop becomes ready.
                seen = lib.ep_async_pos(w.addr, w.watch)  # before the try: a publish after it is seen
                r = attempt()
                if r is not None:
                    return r
                ns = w.spin_ns if left is None else min(w.spin_ns, int(left * 1e9))
                _SPINS[0] += 1
                if lib.ep_async_spin(w.addr, w.watch, seen, w.epfd, ns) == 1:
                    _SPINS[1] += 1
                    r = attempt()
                    if r is not None:
                        return r
        if w.thread:
            t = _THREAD_SLICE_S if left is None else min(left, _THREAD_SLICE_S)
            await loop.run_in_executor(None, block, t)
            r = attempt()
            if r is not None:
                return r
            continue
        fut = loop.create_future()
        w.futs.append(fut)
        timer = None
        try:
            w.arm()
            r = attempt()  # the re-check, after the announcement's fence
            if r is not None:
                return r
            if w.pidfd < 0:
                # The other end's open signals an announced waiter (ep_ring_writer_open & co.); one that
                # opened before our fence is seen here instead.
                w.watch_peer()
                if w.thread:
                    continue  # it lives in another network namespace: wait through the helper thread
            if w.peer_exited:
                _peer_gone(w, end)
            if w.pidfd < 0:
                left = _UNKNOWN_PEER_S if left is None else min(left, _UNKNOWN_PEER_S)
            if left is not None:
                timer = loop.call_at(loop.time() + left, _set_done, fut)
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            if fut.done() and not fut.cancelled() and fut.result() is _WOKE:
                w.pending[0] -= 1
            w.futs.remove(fut)
            w.disarm()
            if not w.futs and end.closed:
                close_waiters(end)  # its socket and pidfd go now, not at the next waiter's creation
        r = attempt()
        if r is not None:
            return r
        if w.peer_exited:
            _peer_gone(w, end)


@types.coroutine
def _pass():
    yield  # a bare yield: the task goes to the back of the loop's ready queue (asyncio.sleep(0))


def _set_done(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _peer_gone(w: _Waiter, end) -> None:
    """The watched process exited and attempt() found nothing: unless another process took its end
    meanwhile, it is gone for good."""
    s = w.seg.status()
    pid = getattr(s, f"{w.peer}_pid")
    if pid != w.pid and pid > 0 and not getattr(s, f"{w.peer}_closed"):
        w.watch_peer()  # a new owner: watch it instead
        return
    name = w.seg.name or "memfd"
    raise PeerClosedError(f"the {w.peer} of {name!r} (pid {w.pid}) died and nothing is left to take")


class AsyncFrame:
    """``async with reader.read_frame_async() as frame:``: awaits the next frame, then behaves like the
    ``with`` block of ``read_frame()`` (the frame is released when the block ends)."""

    __slots__ = ("_ctx", "_get")

    def __init__(self, get) -> None:
        self._get, self._ctx = get, None

    async def __aenter__(self):
        self._ctx = await self._get()
        return self._ctx.__enter__()

    async def __aexit__(self, *exc):
        return self._ctx.__exit__(*exc)


def async_counts() -> tuple[int, int]:
    """(datagrams sent, sends that found no socket) by this process's producers, since it started."""
    sent, failed = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    lib.ep_async_counts(sent, failed)
    return sent[0], failed[0]


def spin_counts() -> tuple[int, int]:
    """(spins started, spins a publish ended) by this process's async waits since it started."""
    return _SPINS[0], _SPINS[1]


def word(segment, off: int) -> int:
    """The async word at ``off`` of ``segment`` (bit 0: a waiter is announced), for tests."""
    return lib.ep_async_word(segment.region.address, off)
