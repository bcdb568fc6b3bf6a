"""RingWriter.wait_room (the writer's counterpart of RingReader.wait) and the timeout rule of the blocking calls:
a finite timeout is checked before anything moves, and costs nothing while data or room is there (the cost is
in benchmarks/test_micro.py and benchmarks/callgrind_hot.py; here only what it does)."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import struct
import threading
import time
import zlib

import numpy as np
import pytest

from edgepipe import Ring
from edgepipe.errors import PeerClosedError, RecordTooLargeError, RingClosedError, RingTimeoutError
from edgepipe.frames import FrameReader, FrameWriter

CAP = 4096
WAITS = ["park", "hybrid", "spin"]
CTX = mp.get_context("fork")


def fill(w) -> int:
    n = 0
    while w.try_write(b"f" * 200):
        n += 1
    return n


def record(seq: int, size: int) -> bytes:
    body = (seq.to_bytes(8, "little") * (size // 8 + 1))[: max(0, size - 12)]
    head = struct.pack("<Q", seq) + body
    return head + struct.pack("<I", zlib.crc32(head))


def check_record(rec: bytes, seq: int) -> bool:
    return (len(rec) >= 12 and struct.unpack_from("<Q", rec)[0] == seq
            and struct.unpack_from("<I", rec, len(rec) - 4)[0] == zlib.crc32(rec[:-4]))


@pytest.fixture
def ring():
    r = Ring.create(capacity=CAP)
    yield r
    r.close()


class TestWaitRoom:
    @pytest.mark.parametrize("timeout_s", [None, 0, 0.0, 5, 2.5, math.inf, np.float64(1.0)], ids=repr)
    def test_true_at_once_when_there_is_room(self, ring, timeout_s):
        """Room for the record: True without waiting (no park), whatever the timeout."""
        w, _ = ring.writer("park"), ring.reader()
        assert w.wait_room(100, timeout_s) is True
        assert w.wait_room(w.max_payload, timeout_s) is True
        assert ring.status().producer_parks == 0

    @pytest.mark.parametrize("wait", WAITS)
    def test_false_when_still_full(self, ring, wait):
        """A full ring stays full: False after the timeout (0: without waiting), nothing written."""
        w, _ = ring.writer(wait), ring.reader()
        n = fill(w)
        assert w.wait_room(200, 0) is False
        assert w.wait_room(200, 0.02) is False
        s = ring.status()
        assert s.records_written == n and s.late_wakeups == 0

    def test_small_record_fits_where_a_large_one_does_not(self, ring):
        """The answer depends on the size asked for (including the padding a wrap would need)."""
        w, r = ring.writer(), ring.reader()
        fill(w)
        r.try_read()  # frees one 208-byte record
        assert w.wait_room(100, 0) is True
        assert w.wait_room(1000, 0) is False

    @pytest.mark.parametrize("wait", WAITS)
    def test_reader_wakes_a_parked_writer(self, ring, wait):
        """A writer waiting for room returns True once a reader thread frees enough of it; a parked one was
        woken by the reader (a futex wake issued, no lost wakeup)."""
        w, r = ring.writer(wait), ring.reader()
        fill(w)
        got = []
        t = threading.Thread(target=lambda: got.append(w.wait_room(1000, timeout_s=30)))
        t.start()
        if wait == "park":
            deadline = time.monotonic() + 30
            while ring.status().producer_parks == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert ring.status().producer_parks > 0
        time.sleep(0.01)
        while r.try_read() is not None:
            pass
        t.join(30)
        assert got == [True]
        s = ring.status()
        assert s.late_wakeups == 0
        if wait == "park":
            assert s.consumer_wakes >= 1
        assert w.try_write(b"y" * 1000)

    @pytest.mark.parametrize("size", [0, 1, 100, 500, 1000, 2040])
    def test_room_found_is_room_to_write(self, ring, size):
        """Whatever the positions (wrap included): after wait_room(n) is True, a record of n bytes fits."""
        w, r = ring.writer(), ring.reader()
        for i in range(200):
            if w.wait_room(size, 0):
                assert w.try_write(bytes(size)), (i, ring.status())
            else:
                r.try_read()
            if i % 3 == 0:
                r.try_read()

    def test_consumer_closed_raises(self, ring):
        """A closed consumer: PeerClosedError, room or not (nobody would read the record)."""
        w, r = ring.writer(), ring.reader()
        r.close()
        with pytest.raises(PeerClosedError, match="closed"):
            w.wait_room(10)
        with pytest.raises(PeerClosedError):
            w.wait_room(10, 0)

    def test_consumer_close_wakes_a_waiting_writer(self, ring):
        """A writer waiting for room raises PeerClosedError when the consumer closes meanwhile."""
        w, r = ring.writer("park"), ring.reader()
        fill(w)
        errs = []

        def waiter():
            try:
                w.wait_room(200, timeout_s=30)
            except PeerClosedError as e:
                errs.append(e)

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.05)
        r.close()
        t.join(30)
        assert len(errs) == 1 and not t.is_alive()

    def test_close_from_another_thread(self, ring):
        """close() of the writer while it waits for room: the waiting call raises RingClosedError."""
        w, _ = ring.writer("park"), ring.reader()
        fill(w)
        errs = []

        def waiter():
            try:
                w.wait_room(200)
            except RingClosedError as e:
                errs.append(e)

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.05)
        w.close()
        t.join(30)
        assert len(errs) == 1 and not t.is_alive()
        with pytest.raises(RingClosedError):
            w.wait_room(1)

    @pytest.mark.parametrize("size,exc", [(-1, ValueError), ("10", TypeError), (True, TypeError), (1.0, TypeError),
                                          (CAP, RecordTooLargeError)], ids=repr)
    def test_bad_size(self, ring, size, exc):
        """A size that is not an int >= 0, or one that could never fit, raises naming it."""
        w, _ = ring.writer(), ring.reader()
        with pytest.raises(exc, match=str(size) if exc is not TypeError else None):
            w.wait_room(size, 0)

    @pytest.mark.parametrize("timeout_s", [-1, math.nan, "1", True], ids=repr)
    def test_bad_timeout(self, ring, timeout_s):
        """A bad timeout raises like everywhere else, even with room available."""
        w, _ = ring.writer(), ring.reader()
        with pytest.raises((ValueError, TypeError), match="timeout_s"):
            w.wait_room(10, timeout_s)


def _slow_reader(fd: int, n: int, conn, kill_after: int) -> None:
    ring = Ring.from_fd(fd)
    r = ring.reader("park")
    conn.send("ready")
    bad = []
    for seq in range(n):
        if seq == kill_after:
            conn.send(("stall", seq, bad))
            time.sleep(3600)  # the parent kills us here
        rec = r.read(timeout_s=60)
        if not check_record(rec, seq):
            bad.append(seq)
        if seq % 97 == 0:
            time.sleep(0.002)  # let the ring fill so the writer waits for room
    conn.send(("done", n, bad))
    conn.recv()
    os._exit(0)


class TestTwoProcesses:
    @pytest.mark.parametrize("wait", WAITS)
    def test_writer_paced_by_wait_room(self, ring, wait):
        """A producer that only ever writes after wait_room() said yes (never a blocking write) streams
        records of varying sizes, with sequence numbers and checksums, to a reader in another process: all
        arrive, in order, intact, and a try_write after a True wait_room never finds the ring full."""
        n = 3000
        a, b = CTX.Pipe()
        p = CTX.Process(target=_slow_reader, args=(ring.fd, n, b, -1))
        p.start()
        try:
            assert a.recv() == "ready"
            w = ring.writer(wait)
            for seq in range(n):
                rec = record(seq, 12 + (seq * 37) % 900)
                assert w.wait_room(len(rec), timeout_s=60)
                assert w.try_write(rec), seq
            assert a.poll(120)
            tag, got, bad = a.recv()
            assert (tag, got, bad) == ("done", n, [])
            s = ring.status()
            assert s.records_read == n and s.late_wakeups == 0
            if wait == "park":
                assert s.producer_parks > 0  # it did wait for room, and was woken
            a.send("bye")
        finally:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()

    def test_killed_consumer_ends_the_wait(self, ring):
        """A writer parked in wait_room() raises PeerClosedError (the consumer died) after its consumer is
        killed with SIGKILL, instead of waiting forever."""
        a, b = CTX.Pipe()
        p = CTX.Process(target=_slow_reader, args=(ring.fd, 10_000, b, 20))
        p.start()
        try:
            assert a.recv() == "ready"
            w = ring.writer("park")
            for seq in range(20):
                w.write(record(seq, 100), timeout_s=60)
            assert a.poll(60)
            tag, _, bad = a.recv()
            assert (tag, bad) == ("stall", [])
            fill(w)
            errs = []

            def waiter():
                try:
                    w.wait_room(1000)  # no timeout: only peer-death detection can end it
                except PeerClosedError as e:
                    errs.append(e)

            t = threading.Thread(target=waiter)
            t.start()
            time.sleep(0.1)
            assert t.is_alive()
            os.kill(p.pid, signal.SIGKILL)
            t.join(60)
            assert not t.is_alive() and len(errs) == 1 and "died" in str(errs[0])
        finally:
            p.join(30)


class TestTimeoutRule:
    """Every blocking call checks a bad timeout before anything moves, and takes a finite one as cheaply as
    None: the same records come out either way."""

    @pytest.mark.parametrize("bad", [-1, -0.5, math.nan, "1", True], ids=repr)
    def test_bad_timeout_moves_nothing(self, ring, bad):
        w, r = ring.writer(), ring.reader()
        w.try_write(b"keep")
        calls = [lambda: r.read(timeout_s=bad), lambda: r.wait(bad), lambda: r.peek(bad),
                 lambda: r.read_many(4, timeout_s=bad), lambda: r.read_into(bytearray(16), bad),
                 lambda: w.write(b"no", timeout_s=bad), lambda: w.claim(4, timeout_s=bad),
                 lambda: w.claim_offset(4, bad)]
        for call in calls:
            with pytest.raises((ValueError, TypeError), match="timeout_s"):
                call()
        s = ring.status()
        assert (s.records_written, s.records_read) == (1, 0)
        assert r.try_read() == b"keep"

    @pytest.mark.parametrize("timeout_s", [None, 0, 0.0, 30, 1.5, math.inf, np.float64(2.0)], ids=repr)
    def test_ready_path_same_results(self, ring, timeout_s):
        """With data or room there, every timeout gives the same result as None."""
        w, r = ring.writer(), ring.reader()
        w.write(b"a", timeout_s=timeout_s)
        w.write(bytearray(b"b"), timeout_s=timeout_s)
        assert r.wait(timeout_s) is True
        assert r.read(timeout_s=timeout_s) == b"a"
        with r.peek(timeout_s) as v:
            assert bytes(v) == b"b"
        with w.claim(1, timeout_s=timeout_s) as buf:
            buf[:] = b"c"
        assert r.read_many(8, timeout_s=timeout_s) == [b"c"]
        w.try_write(b"d")
        buf = bytearray(4)
        assert r.read_into(buf, timeout_s) == 1 and buf[:1] == b"d"

    @pytest.mark.parametrize("timeout_s", [0, 0.0, 0.01])
    def test_empty_and_full_still_time_out(self, ring, timeout_s):
        """The fast path does not change what a timeout does: empty reads and full writes time out."""
        w, r = ring.writer(), ring.reader()
        with pytest.raises(RingTimeoutError):
            r.read(timeout_s=timeout_s)
        assert r.wait(timeout_s) is False
        with pytest.raises(RingTimeoutError):
            r.peek(timeout_s)
        if timeout_s == 0:
            assert r.read_many(4, timeout_s=timeout_s) == []
        else:
            with pytest.raises(RingTimeoutError):
                r.read_many(4, timeout_s=timeout_s)
        fill(w)
        with pytest.raises(RingTimeoutError):
            w.write(b"x" * 300, timeout_s=timeout_s)
        with pytest.raises(RingTimeoutError):
            w.claim(300, timeout_s=timeout_s)

    @pytest.mark.parametrize("timeout_s", [None, 5, 0.5])
    def test_frame_read_ready(self, ring, timeout_s):
        """read_frame takes a frame that is there whatever the timeout, and rejects a bad one first."""
        fw, fr = FrameWriter(ring.writer()), FrameReader(ring.reader())
        px = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
        fw.write_frame(px, timeout_s=timeout_s)
        with pytest.raises(ValueError, match="timeout_s"):
            fr.read_frame(-1)
        with fr.read_frame(timeout_s) as f:
            assert np.array_equal(f.array, px)
