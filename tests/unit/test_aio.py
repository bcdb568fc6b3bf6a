"""asyncio waits (edgepipe.aio): records, room, peer death, cancel and close, on the stdlib loop and on
uvloop (every test runs on both: tests/conftest.py), against a producer or consumer in another process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import textwrap

import pytest

from edgepipe import aio
from edgepipe.errors import PeerClosedError, RingClosedError, RingTimeoutError
from edgepipe.ring import Ring

pytestmark = pytest.mark.asyncio
HANG_S = 60  # hang guard only: no test expects to get anywhere near it

PEER = textwrap.dedent("""
    import hashlib, os, sys, time
    from edgepipe.ring import Ring
    from edgepipe import aio
    fd, role, n, pause = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    ring = Ring.from_fd(fd) if not role.startswith("latest") else None
    def rec(i):
        body = i.to_bytes(8, "little") * (1 + i % 7)
        return body + hashlib.blake2b(body, digest_size=8).digest()
    if role == "write":          # n records, pausing `pause` s every 16, then close
        w = ring.writer()
        print("open", flush=True)
        for i in range(n):
            if pause and i % 16 == 0:
                time.sleep(pause)
            w.write(rec(i))
        print("sent", *aio.async_counts(), flush=True)
        w.close()
    elif role == "write-hang":   # n records, then stay open without writing until killed
        w = ring.writer()
        for i in range(n):
            w.write(rec(i))
        print("open", flush=True)
        time.sleep(600)
    elif role == "read":         # read n records slowly, check them, then close
        r = ring.reader()
        print("open", flush=True)
        for i in range(n):
            if pause and i % 16 == 0:
                time.sleep(pause)
            got = r.read(timeout_s=60)
            assert got == rec(i), (i, got)
        print("done", flush=True)
        r.close()
    elif role in ("frames", "latest", "latest-hang"):  # n frames of value i % 256, then close (or hang)
        import numpy as np
        from edgepipe.frames import FrameWriter
        from edgepipe.latest import LatestSlot
        w = FrameWriter(ring.writer()) if role == "frames" else LatestSlot.from_fd(fd).writer()
        print("open", flush=True)
        for i in range(n):
            time.sleep(pause)
            w.write_frame(np.full((4, 6, 3), i % 256, np.uint8), timeout_s=60)
        if role == "latest-hang":
            print("hang", flush=True)
            time.sleep(600)
        w.close()
    elif role == "read-frames":  # n frames, slowly, each of value i % 256
        from edgepipe.frames import FrameReader
        fr = FrameReader(ring.reader())
        print("open", flush=True)
        for i in range(n):
            if pause and i % 4 == 0:
                time.sleep(pause)
            with fr.read_frame(timeout_s=60) as f:
                assert int(f.array.min()) == int(f.array.max()) == i % 256, (i, f.array.min())
        print("done", flush=True)
        fr.close()
    elif role == "open-then-write":  # open, report the datagrams sent so far, write one record on a line
        w = ring.writer()
        print("sent", *aio.async_counts(), flush=True)
        sys.stdin.readline()
        w.write(rec(0))
        print("sent", *aio.async_counts(), flush=True)
        w.close()
    elif role == "async-echo":   # echo n records from this ring to the ring at fd `pause`, all awaited
        import asyncio
        back = Ring.from_fd(int(pause)).writer()
        r = ring.reader()
        print("open", flush=True)
        async def echo():
            for _ in range(n):
                await back.write_async(await r.read_async(timeout_s=60), timeout_s=60)
        (asyncio.run if os.environ.get("EP_TEST_LOOP") != "uvloop" else __import__("uvloop").run)(echo())
        print("spins", *aio.spin_counts(), flush=True)
        back.close()
    elif role == "read-hang":
        r = ring.reader()
        print("open", flush=True)
        time.sleep(600)
""")


def rec(i: int) -> bytes:
    body = i.to_bytes(8, "little") * (1 + i % 7)
    return body + hashlib.blake2b(body, digest_size=8).digest()


def check_rec(i: int, got: bytes) -> None:
    body, digest = got[:-8], got[-8:]
    assert hashlib.blake2b(body, digest_size=8).digest() == digest, f"record {i}: bad checksum"
    assert int.from_bytes(body[:8], "little") == i, f"record {i}: got sequence {int.from_bytes(body[:8], 'little')}"


def peer(ring, role: str, n: int = 0, pause: float = 0.0, prefix: tuple = (), stdin=None,
         pass_fds: tuple = (), env: dict | None = None) -> subprocess.Popen:
    src = os.path.join(os.path.dirname(aio.__file__), os.pardir)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src), **(env or {}))
    p = subprocess.Popen([*prefix, sys.executable, "-c", PEER, str(ring.fd), role, str(n), str(pause)],
                         pass_fds=[ring.fd, *pass_fds], stdout=subprocess.PIPE, stdin=stdin, text=True, env=env)
    return p


async def line(p: subprocess.Popen) -> str:
    return (await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), HANG_S)).strip()


@pytest.fixture
def ring():
    r = Ring.create(capacity=4096)
    yield r
    r.close()


class TestRead:
    async def test_async_for_reads_every_record_in_order_until_the_producer_closes(self, ring):
        """`async for` yields every record of another process, in order and intact, and ends when it closes."""
        r = ring.reader()
        p = peer(ring, "write", 3000, 0.001)
        n = 0
        async with asyncio.timeout(HANG_S):
            async for got in r:
                check_rec(n, got)
                n += 1
        assert n == 3000
        assert p.wait(HANG_S) == 0
        assert aio.word(ring, aio.RING_DATA) & 1 == 0, "no announcement left behind"

    async def test_the_producer_signals_only_while_a_task_awaits(self, ring):
        """A producer whose consumer never awaits sends no datagram at all; one that feeds an awaiting
        task sends at most one per record, and every one reaches its socket."""
        r = ring.reader()
        p = peer(ring, "write", 20, 0.0)  # 20 records fit the ring: the producer never waits
        assert await line(p) == "open"
        assert await line(p) == "sent 0 0"  # nobody awaited: no signal, no failed send
        for i in range(20):
            check_rec(i, r.try_read())
        assert p.wait(HANG_S) == 0
        p = peer(ring, "write", 64, 0.05)
        assert await line(p) == "open"
        for i in range(64):
            check_rec(i, await r.read_async(timeout_s=HANG_S))
        _, sent, failed = (await line(p)).split()
        assert 0 < int(sent) <= 64 and int(failed) == 0, (sent, failed)
        assert p.wait(HANG_S) == 0

    async def test_timeout_raises_and_withdraws_the_announcement(self, ring):
        """A read_async that times out raises RingTimeoutError and leaves bit 0 of the async word clear."""
        r = ring.reader()
        with pytest.raises(RingTimeoutError, match="timeout_s=0.02"):
            await r.read_async(timeout_s=0.02)
        assert aio.word(ring, aio.RING_DATA) & 1 == 0
        w = ring.writer()
        w.write(b"x")
        assert await r.read_async(timeout_s=0) == b"x"

    async def test_bad_timeout_is_a_value_error(self, ring):
        """A negative or NaN timeout_s is a ValueError naming it, and nothing is consumed."""
        r = ring.reader()
        with pytest.raises(ValueError, match="-1"):
            await r.read_async(timeout_s=-1)
        with pytest.raises(ValueError, match="nan"):
            await r.read_async(timeout_s=float("nan"))



class TestWrite:
    async def test_write_async_waits_for_room_and_loses_nothing(self, ring):
        """write_async into a 4 KiB ring drained slowly by another process: every record arrives intact and
        in order (the consumer's releases wake the awaiting writer)."""
        w = ring.writer()
        p = peer(ring, "read", 2000, 0.002)
        assert await line(p) == "open"
        async with asyncio.timeout(HANG_S):
            for i in range(2000):
                await w.write_async(rec(i))
        assert await line(p) == "done"
        assert p.wait(HANG_S) == 0
        assert aio.word(ring, aio.RING_SPACE) & 1 == 0

    async def test_full_ring_times_out(self, ring):
        """write_async on a full ring nobody drains raises RingTimeoutError; what was queued stays queued."""
        w, r = ring.writer(), ring.reader()
        n = 0
        while w.try_write(b"z" * 100):
            n += 1
        with pytest.raises(RingTimeoutError, match="still full"):
            await w.write_async(b"z" * 100, timeout_s=0.02)
        assert len(r.try_read_many(n + 1)) == n


class TestPeerDeath:
    async def test_killed_producer_reaches_the_awaiting_task(self, ring):
        """SIGKILL of the producer while a task awaits: the records it wrote are read, then PeerClosedError."""
        r = ring.reader()
        p = peer(ring, "write-hang", 5)
        assert await line(p) == "open"
        for i in range(5):
            check_rec(i, await r.read_async(timeout_s=HANG_S))
        task = asyncio.ensure_future(r.read_async())
        await asyncio.sleep(0.05)
        assert not task.done() and aio.word(ring, aio.RING_DATA) & 1
        p.send_signal(signal.SIGKILL)
        with pytest.raises(PeerClosedError, match=f"pid {p.pid}"):
            await asyncio.wait_for(task, HANG_S)
        p.wait(HANG_S)

    async def test_killed_consumer_reaches_the_awaiting_writer(self, ring):
        """SIGKILL of the consumer while write_async awaits room: PeerClosedError."""
        w = ring.writer()
        p = peer(ring, "read-hang")
        assert await line(p) == "open"
        while w.try_write(b"y" * 200):
            pass
        task = asyncio.ensure_future(w.write_async(b"y" * 200))
        await asyncio.sleep(0.05)
        assert not task.done()
        p.send_signal(signal.SIGKILL)
        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(task, HANG_S)
        p.wait(HANG_S)

    async def test_a_producer_that_never_opened_then_dies(self, ring):
        """A task awaiting a ring whose producer has not opened yet still sees it when it opens, writes and
        is killed."""
        r = ring.reader()
        task = asyncio.ensure_future(r.read_async())
        await asyncio.sleep(0.02)
        p = peer(ring, "write-hang", 1)
        check_rec(0, await asyncio.wait_for(task, HANG_S))
        assert await line(p) == "open"
        task = asyncio.ensure_future(r.read_async())
        await asyncio.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(task, HANG_S)
        p.wait(HANG_S)


class TestCancelAndClose:
    async def test_cancel_withdraws_the_announcement(self, ring):
        """Cancelling an awaiting task clears bit 0 of the async word, and the next read still works."""
        r, w = ring.reader(), ring.writer()
        task = asyncio.ensure_future(r.read_async())
        await asyncio.sleep(0.02)
        assert aio.word(ring, aio.RING_DATA) & 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert aio.word(ring, aio.RING_DATA) & 1 == 0
        w.write(b"after")
        assert await r.read_async(timeout_s=HANG_S) == b"after"

    async def test_two_tasks_on_one_reader_both_wake(self, ring):
        """Two tasks awaiting the same reader: cancelling one keeps the other's announcement, which a
        write then wakes."""
        r, w = ring.reader(), ring.writer()
        a, b = asyncio.ensure_future(r.read_async()), asyncio.ensure_future(r.read_async())
        await asyncio.sleep(0.02)
        a.cancel()
        await asyncio.sleep(0.02)
        assert aio.word(ring, aio.RING_DATA) & 1
        w.write(b"one")
        assert await asyncio.wait_for(b, HANG_S) == b"one"

    async def test_closing_the_reader_wakes_its_awaiter(self, ring):
        """close() of the reader while a task awaits it: the task raises RingClosedError."""
        r = ring.reader()
        task = asyncio.ensure_future(r.read_async())
        await asyncio.sleep(0.02)
        r.close()
        with pytest.raises(RingClosedError):
            await asyncio.wait_for(task, HANG_S)
        assert not [w for w in aio._WAITERS.values() if w.end is r], "the closed end's waiter was dropped"

    async def test_closing_the_ring_wakes_reader_and_writer_awaiters(self):
        """Ring.close() with one task awaiting data and another awaiting room on a second ring's full
        writer: both raise RingClosedError."""
        a, b = Ring.create(capacity=4096), Ring.create(capacity=4096)
        try:
            r = a.reader()
            w = b.writer()
            b.reader()
            while w.try_write(b"q" * 300):
                pass
            t1, t2 = asyncio.ensure_future(r.read_async()), asyncio.ensure_future(w.write_async(b"q" * 300))
            await asyncio.sleep(0.02)
            a.close()
            b.close()
            for t in (t1, t2):
                with pytest.raises(RingClosedError):
                    await asyncio.wait_for(t, HANG_S)
        finally:
            a.close()
            b.close()

    async def test_writer_close_in_another_process_ends_async_for(self, ring):
        """A producer that closes its end while the task awaits ends `async for` (no error)."""
        r = ring.reader()
        p = peer(ring, "write", 1, 0.2)
        got = [x async for x in r]
        assert len(got) == 1
        assert p.wait(HANG_S) == 0


class TestFork:
    async def test_a_forked_child_leaves_the_parents_waiter_alone(self, ring):
        """A child forked while a task awaits, which cleans up the reader's waiters and exits, does not take
        the parent's loop registration with it (a stdlib loop's epoll instance is shared across fork): the
        parent's task is still woken by the next write."""
        r, w = ring.reader(), ring.writer()
        task = asyncio.ensure_future(r.read_async())
        await asyncio.sleep(0.02)
        pid = os.fork()
        if pid == 0:
            aio.close_waiters(r)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        w.write(b"after fork")
        assert await asyncio.wait_for(task, HANG_S) == b"after fork"  # only a wake ends it
        task = asyncio.ensure_future(r.read_async())
        await asyncio.sleep(0.02)
        w.write(b"again")
        assert await asyncio.wait_for(task, HANG_S) == b"again"


class TestThreadFallback:
    async def test_a_producer_in_another_network_namespace(self, ring, require_system, skip_unless_ci):
        """A producer in its own network namespace (unshare -n) cannot reach the task's abstract socket: the
        task notices (its /proc/PID/ns/net differs), waits through the helper thread, and reads every record;
        the producer never signalled (its word stayed unannounced). (A task that starts waiting before such a
        producer opened announces itself once; that wake, and the open's, are lost to the namespace, and the
        1 s backstop re-check of an unknown peer finds the records.)"""
        require_system("unshare", "util-linux")
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode != 0:  # e.g. an unprivileged container; CI runs as root, where this must work
            skip_unless_ci(f"cannot create a network namespace here: {probe.stderr.decode()[-200:]}")
        r = ring.reader()
        p = peer(ring, "write", 300, 0.002, prefix=("unshare", "-n"))
        assert await line(p) == "open"  # its pid is in the ring before the first wait looks
        n = 0
        async with asyncio.timeout(HANG_S):
            async for got in r:
                check_rec(n, got)
                n += 1
        assert n == 300 and p.wait(HANG_S) == 0
        assert p.stdout.read().split() == ["sent", "0", "0"]  # no datagram sent, none failed


    async def test_helper_thread_reads_every_record(self, ring, monkeypatch):
        """With EDGEPIPE_AIO_THREAD=1 the wait runs on the futex in the loop's executor and still loses
        nothing."""
        monkeypatch.setenv("EDGEPIPE_AIO_THREAD", "1")
        r = ring.reader()
        p = peer(ring, "write", 300, 0.002)
        n = 0
        async with asyncio.timeout(HANG_S):
            async for got in r:
                check_rec(n, got)
                n += 1
        assert n == 300 and p.wait(HANG_S) == 0


class TestFrames:
    async def test_frames_from_another_process_in_order(self):
        """`async with reader.read_frame_async()` gives every frame of another process's FrameWriter in
        order with its pixels, then PeerClosedError once it closed."""
        from edgepipe.frames import FrameReader

        with Ring.create(capacity=1 << 14) as ring:
            fr = FrameReader(ring.reader())
            p = peer(ring, "frames", 40, 0.002)
            for i in range(40):
                async with fr.read_frame_async(timeout_s=HANG_S) as f:
                    assert f.shape == (4, 6, 3) and int(f.array.max()) == int(f.array.min()) == i
            with pytest.raises(PeerClosedError):
                async with fr.read_frame_async(timeout_s=HANG_S):
                    pass
            assert p.wait(HANG_S) == 0

    async def test_write_frame_async_waits_for_room(self):
        """write_frame_async into a 4 KiB ring (about a dozen such frames) drained slowly by another process: all 60
        frames arrive intact and in order."""
        import numpy as np

        from edgepipe.frames import FrameWriter

        with Ring.create(capacity=1 << 12) as ring:
            fw = FrameWriter(ring.writer())
            p = peer(ring, "read-frames", 60, 0.005)
            assert await line(p) == "open"
            seqs = [await fw.write_frame_async(np.full((4, 6, 3), i, np.uint8), timeout_s=HANG_S)
                    for i in range(60)]
            assert seqs == sorted(seqs) and len(set(seqs)) == 60
            assert await line(p) == "done"
            assert p.wait(HANG_S) == 0

    async def test_frame_timeout(self):
        """read_frame_async on an empty ring times out with RingTimeoutError."""
        from edgepipe.frames import FrameReader

        with Ring.create(capacity=1 << 14) as ring:
            fr = FrameReader(ring.reader())
            ring.writer()
            with pytest.raises(RingTimeoutError):
                async with fr.read_frame_async(timeout_s=0.02):
                    pass


class TestLatest:
    async def test_newest_frames_arrive_in_increasing_order(self):
        """An awaiting latest-slot reader sees frames in increasing order, ending with the last one
        published, then PeerClosedError once the producer closed."""
        from edgepipe.latest import LatestSlot

        with LatestSlot.create(None, 4 * 6 * 3) as slot:
            rd = slot.reader()
            p = peer(slot, "latest", 30, 0.01)
            seen = []
            with pytest.raises(PeerClosedError):
                while True:
                    async with rd.read_frame_async(timeout_s=HANG_S) as f:
                        seen.append(int(f.array[0, 0, 0]))
            assert seen == sorted(set(seen)) and seen[-1] == 29, seen
            assert p.wait(HANG_S) == 0
            assert aio.word(slot, aio.LATEST_DATA) & 1 == 0

    async def test_killed_latest_producer_reaches_the_awaiting_task(self):
        """SIGKILL of a latest-slot producer while a task awaits: PeerClosedError."""
        from edgepipe.latest import LatestSlot

        with LatestSlot.create(None, 4 * 6 * 3) as slot:
            rd = slot.reader()
            p = peer(slot, "latest-hang", 1, 0.0)
            assert await line(p) == "open"
            async with rd.read_frame_async(timeout_s=HANG_S) as f:
                assert int(f.array[0, 0, 0]) == 0
            assert await line(p) == "hang"
            task = asyncio.ensure_future(rd.read_frame_async().__aenter__())
            await asyncio.sleep(0.05)
            p.send_signal(signal.SIGKILL)
            with pytest.raises(PeerClosedError):
                await asyncio.wait_for(task, HANG_S)
            p.wait(HANG_S)

    async def test_closing_the_latest_reader_wakes_its_awaiter(self):
        """close() of a latest reader while a task awaits it: RingClosedError in the task."""
        from edgepipe.latest import LatestSlot

        with LatestSlot.create(None, 64) as slot:
            rd = slot.reader()
            slot.writer()
            task = asyncio.ensure_future(rd.read_frame_async().__aenter__())
            await asyncio.sleep(0.02)
            rd.close()
            with pytest.raises(RingClosedError):
                await asyncio.wait_for(task, HANG_S)


FANIN = textwrap.dedent("""
    import hashlib, sys, time
    from edgepipe.ring import Ring
    from edgepipe import aio
    fds = [int(x) for x in sys.argv[1].split(",")]
    writers = [Ring.from_fd(fd).writer() for fd in fds]
    print("open", flush=True)
    for rnd in range(10):
        sys.stdin.readline()                 # every task took the last round and awaits again
        for k, w in enumerate(writers):
            body = k.to_bytes(4, "little") + rnd.to_bytes(4, "little") + time.monotonic_ns().to_bytes(8, "little")
            w.write(body + hashlib.blake2b(body, digest_size=8).digest())
    print("sent", *aio.async_counts(), flush=True)
    for w in writers:
        w.close()
""")


def _fanin_diagnosis(rnd: int, tasks, rings) -> str:
    """What a fan-in round that never completed looks like: tasks that died, and the rings whose record is
    queued while their task sleeps (a lost wakeup) with the state of their async word."""
    dead = [(k, repr(t.exception())[:200]) for k, t in enumerate(tasks) if t.done() and not t.cancelled()]
    stuck = [(k, rg.status().used, aio.word(rg, aio.RING_DATA) & 1) for k, rg in enumerate(rings)
             if rg.status().used and not tasks[k].done()]
    return f"dead tasks {dead[:5]} ({len(dead)}); queued but asleep (task, bytes, armed) {stuck[:5]} ({len(stuck)})"


class TestFanIn:
    async def test_a_thousand_tasks_each_awaiting_its_own_ring(self):
        """One loop, 1000 tasks, each awaiting its own ring fed by one other process, 10 records each: every
        record arrives, intact and in order, each task's `async for` ends at the close, and the producer's
        sends all found their socket. The producer writes the next round only once every task has its
        record of this one, so a single lost wakeup hangs the run (and fails it at the hang guard)."""
        n = 1000
        rings = [Ring.create(capacity=1024) for _ in range(n)]
        try:
            readers = [rg.reader() for rg in rings]
            src = os.path.abspath(os.path.join(os.path.dirname(aio.__file__), os.pardir))
            fds = [rg.fd for rg in rings]
            p = subprocess.Popen([sys.executable, "-c", FANIN, ",".join(map(str, fds))], pass_fds=fds,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, PYTHONPATH=src))
            assert await line(p) == "open"

            done = [0] * 10
            round_done = [asyncio.Event() for _ in range(10)]

            async def consume(k: int, r) -> list[int]:
                rounds = []
                async for got in r:
                    body, digest = got[:16], got[16:]
                    assert hashlib.blake2b(body, digest_size=8).digest() == digest
                    assert int.from_bytes(body[:4], "little") == k
                    rnd = int.from_bytes(body[4:8], "little")
                    rounds.append(rnd)
                    done[rnd] += 1
                    if done[rnd] == n:
                        round_done[rnd].set()
                return rounds

            tasks = [asyncio.ensure_future(consume(k, r)) for k, r in enumerate(readers)]
            deadline = time.monotonic() + HANG_S  # under load the 1000 tasks take a while to reach their await
            while (armed := sum(aio.word(rg, aio.RING_DATA) & 1 for rg in rings)) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert armed == n, f"only {armed} of {n} tasks announced themselves"
            for rnd in range(10):
                p.stdin.write("next\n")
                p.stdin.flush()
                try:
                    await asyncio.wait_for(round_done[rnd].wait(), HANG_S)
                except TimeoutError:
                    raise AssertionError(f"round {rnd}: {done[rnd]} of {n} records arrived; "
                                         + _fanin_diagnosis(rnd, tasks, rings)) from None
            results = await asyncio.wait_for(asyncio.gather(*tasks), HANG_S)
            assert all(r == list(range(10)) for r in results), [r for r in results if r != list(range(10))][:3]
            _, sent, failed = (await line(p)).split()
            assert int(failed) == 0 and 0 < int(sent) <= 10 * n
            assert p.wait(HANG_S) == 0
        finally:
            for rg in rings:
                rg.close()


class TestSpin:
    """The bounded spin before a task parks (EDGEPIPE_AIO_SPIN_NS, default one measured futex wake) runs
    only while nothing else in the loop is ready, and ends when something becomes ready. Each test sets
    a one-hour spin, so a spin that ignored the loop would hold it until a watchdog thread (the hang guard)
    writes the record instead: the record the task gets says who ended its wait."""

    @staticmethod
    def _watchdog(w, fired, loop_wrote):
        def run():
            if not loop_wrote.wait(HANG_S):
                fired.append(True)
                w.write(b"watchdog")  # ends any spin (the position moves) and any park
        t = __import__("threading").Thread(target=run, daemon=True)
        t.start()
        return t

    async def test_a_ready_task_runs_before_the_spin(self, ring, monkeypatch):
        monkeypatch.setenv("EDGEPIPE_AIO_SPIN_NS", str(3600 * 10**9))
        r, w = ring.reader(), ring.writer()
        loop_wrote, fired = __import__("threading").Event(), []

        async def other():  # ready when the reader starts waiting
            loop_wrote.set()
            w.write(b"from a ready task")

        t = self._watchdog(w, fired, loop_wrote)
        a = asyncio.ensure_future(r.read_async())
        b = asyncio.ensure_future(other())
        assert await a == b"from a ready task"
        await b
        t.join(HANG_S)
        assert not fired

    async def test_io_during_the_spin_ends_it(self, ring, monkeypatch):
        """Nothing else is ready, so the task spins; another thread's call_soon_threadsafe (the loop's
        wakeup fd becomes readable) ends the spin, and the callback's record wakes the task."""
        monkeypatch.setenv("EDGEPIPE_AIO_SPIN_NS", str(3600 * 10**9))
        r, w = ring.reader(), ring.writer()
        loop = asyncio.get_running_loop()
        loop_wrote, fired = __import__("threading").Event(), []

        def from_loop():
            loop_wrote.set()
            w.write(b"from a callback")

        spins0 = aio.spin_counts()[0]
        t = self._watchdog(w, fired, loop_wrote)
        a = asyncio.ensure_future(r.read_async())
        threading = __import__("threading")
        poke = threading.Thread(target=lambda: (time.sleep(0.05), loop.call_soon_threadsafe(from_loop)))
        poke.start()
        assert await a == b"from a callback"
        poke.join(HANG_S)
        t.join(HANG_S)
        assert not fired
        assert aio.spin_counts()[0] > spins0, "the task never spun: this test tested nothing"

    async def test_a_timer_due_within_the_window_is_not_spun_through(self, ring, monkeypatch, request):
        """On the stdlib loop, whose timers a waiter can see. (uvloop's timers are not visible: there a
        timer may fire up to one spin window late, below libuv's 1 ms timer resolution at the default.)"""
        if "uvloop" in request.node.name:
            assert aio._loop_queues(asyncio.get_running_loop())[1] is None  # still hidden: keep the note true
            return
        monkeypatch.setenv("EDGEPIPE_AIO_SPIN_NS", str(3600 * 10**9))
        r, w = ring.reader(), ring.writer()
        loop_wrote, fired = __import__("threading").Event(), []

        def from_timer():
            loop_wrote.set()
            w.write(b"from a timer")

        t = self._watchdog(w, fired, loop_wrote)
        asyncio.get_running_loop().call_later(0.05, from_timer)
        assert await r.read_async() == b"from a timer"
        t.join(HANG_S)
        assert not fired

    async def test_spin_zero_never_spins(self, ring, monkeypatch):
        monkeypatch.setenv("EDGEPIPE_AIO_SPIN_NS", "0")
        r, w = ring.reader(), ring.writer()
        before = aio.spin_counts()
        asyncio.get_running_loop().call_later(0.02, w.write, b"x")
        assert await r.read_async(timeout_s=HANG_S) == b"x"
        assert aio.spin_counts() == before

    async def test_bad_spin_setting_is_a_value_error(self, ring, monkeypatch):
        monkeypatch.setenv("EDGEPIPE_AIO_SPIN_NS", "-5")
        with pytest.raises(ValueError, match="-5"):
            await ring.reader().read_async(timeout_s=0.01)

    async def test_two_process_stress_through_spins_and_parks(self, ring):
        """5000 records from another process in bursts of 16 with a pause between: the task catches most
        of a burst in its spin and parks between bursts; every record arrives once, in order, intact."""
        r = ring.reader()
        spins0, caught0 = aio.spin_counts()
        p = peer(ring, "write", 5000, 0.002)
        assert await line(p) == "open"
        for i in range(5000):
            check_rec(i, await r.read_async(timeout_s=HANG_S))
        _, sent, failed = (await line(p)).split()
        assert int(failed) == 0
        assert p.wait(HANG_S) == 0
        spins, caught = aio.spin_counts()
        assert spins > spins0 and int(sent) > 0, (spins - spins0, sent)  # both paths were taken


    async def test_two_process_async_echo_both_sides_spinning(self, request):
        """Both processes await (and spin) in both directions through small rings: 3000 records out, each
        echoed back by an awaiting task in the other process on this test's loop kind, all in order and
        intact; both sides spun."""
        kind = "uvloop" if "uvloop" in request.node.name else "stdlib"
        n = 3000
        with Ring.create(capacity=1024) as out, Ring.create(capacity=1024) as back:
            w, r = out.writer(), back.reader()
            p = peer(out, "async-echo", n, back.fd, pass_fds=(back.fd,), env={"EP_TEST_LOOP": kind})
            assert await line(p) == "open"
            spins0 = aio.spin_counts()[0]

            async def send():
                for i in range(n):
                    await w.write_async(rec(i), timeout_s=HANG_S)

            sender = asyncio.ensure_future(send())
            for i in range(n):
                check_rec(i, await r.read_async(timeout_s=HANG_S))
            await asyncio.wait_for(sender, HANG_S)
            words = (await line(p)).split()
            assert words[0] == "spins" and int(words[1]) > 0, words
            assert aio.spin_counts()[0] > spins0
            assert p.wait(HANG_S) == 0


class TestFirstOpen:
    async def test_the_producers_open_wakes_a_task_that_awaited_before_it(self, ring):
        """A task awaiting a ring whose producer never opened has no process to watch: the producer's open
        signals the announced task (one datagram before any record), which then watches it; the record and
        the producer's death afterwards both reach the task."""
        r = ring.reader()
        task = asyncio.ensure_future(r.read_async())
        deadline = time.monotonic() + HANG_S
        while not aio.word(ring, aio.RING_DATA) & 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert aio.word(ring, aio.RING_DATA) & 1, "the task never announced itself"
        p = peer(ring, "open-then-write", stdin=subprocess.PIPE)
        assert await line(p) == "sent 1 0"  # the open itself signalled the task, and the datagram arrived
        p.stdin.write("go\n")
        p.stdin.flush()
        check_rec(0, await asyncio.wait_for(task, HANG_S))
        assert await line(p) in ("sent 1 0", "sent 2 0")  # at most one more, if the task re-armed first
        assert p.wait(HANG_S) == 0

    async def test_the_consumers_open_wakes_a_writer_awaiting_room(self, ring):
        """The same for room: a writer awaiting a full ring before any consumer opened is signalled by the
        consumer's open (it then watches the consumer), and every record arrives once it reads."""
        w = ring.writer()
        n = 0
        while w.try_write(rec(n)):
            n += 1
        task = asyncio.ensure_future(w.write_async(rec(n)))
        deadline = time.monotonic() + HANG_S
        while not aio.word(ring, aio.RING_SPACE) & 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert aio.word(ring, aio.RING_SPACE) & 1, "the writer never announced itself"
        sent0 = aio.async_counts()[0]
        p = peer(ring, "read", n + 1, 0.05)
        assert await line(p) == "open"
        await asyncio.wait_for(task, HANG_S)
        assert await line(p) == "done"
        assert p.wait(HANG_S) == 0
        assert aio.async_counts()[0] == sent0  # the wakes came from the other process, not from us


class TestFrameFallback:
    async def test_the_thread_fallback_waits_for_a_frames_room_on_the_futex(self, monkeypatch):
        """write_frame_async through the helper thread (EDGEPIPE_AIO_THREAD=1) against a slow reader in
        another process: every frame arrives, and the writer slept on the futex (producer parks > 0)
        rather than polling."""
        import numpy as np

        from edgepipe.frames import FrameWriter

        monkeypatch.setenv("EDGEPIPE_AIO_THREAD", "1")
        with Ring.create(capacity=1024) as ring:  # a few frames fill it: the writer must wait
            fw = FrameWriter(ring.writer())
            p = peer(ring, "read-frames", 24, 0.05)
            assert await line(p) == "open"
            for i in range(24):
                await fw.write_frame_async(np.full((4, 6, 3), i % 256, np.uint8), timeout_s=HANG_S)
            assert await line(p) == "done"
            assert p.wait(HANG_S) == 0
            assert ring.status().producer_parks > 0
            fw.close()
