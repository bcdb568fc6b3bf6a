"""Rings, frame channels and latest slots given to ``multiprocessing`` children (``edgepipe._segment``).

Every test runs under each start method (fork, spawn, forkserver). The segment is an argument of
``Process(target=..., args=(ring,))`` or of a ``Pool`` task; under spawn and forkserver (and for every Pool
task) it is pickled by the ForkingPickler reducer, which sends only its fd; under fork the child inherits the
object. Records carry sequence numbers and checksums; results come back on a ``multiprocessing`` queue. Waits
are generous hang guards only: nothing here asserts how long anything took.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import re
import signal
import struct
import traceback
import zlib
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

from edgepipe import (
    FrameReader,
    FrameWriter,
    LatestSlot,
    PeerClosedError,
    Ring,
    RingBusyError,
    RingClosedError,
)

METHODS = ["fork", "spawn", "forkserver"]
HDR = struct.Struct("<QII")  # seq, payload bytes, crc32 of the payload
WAIT_S = 60  # hang guard for a child on a loaded machine
SHM_DIR = "/dev/shm"


@pytest.fixture(params=METHODS)
def ctx(request):
    return mp.get_context(request.param)


def record(seq: int) -> bytes:
    """Record ``seq``: header plus 0-199 payload bytes derived from the seq."""
    body = (seq.to_bytes(8, "little") * 25)[: seq * 7 % 200]
    return HDR.pack(seq, len(body), zlib.crc32(body)) + body


def check_record(rec: bytes, seq: int) -> None:
    s, n, crc = HDR.unpack_from(rec)
    body = rec[HDR.size:]
    assert (s, n, crc) == (seq, len(body), zlib.crc32(body)), f"record {seq} came back as seq {s}"
    assert rec == record(seq)


def drain(reader, n: int) -> None:
    """Read records 0..n-1 in order, then expect PeerClosedError (the producer closed or died)."""
    for seq in range(n):
        check_record(reader.read(timeout_s=WAIT_S), seq)
    with pytest.raises(PeerClosedError):
        reader.read(timeout_s=WAIT_S)


def frame_of(seq: int) -> np.ndarray:
    """Frame ``seq``: a shape that changes with seq, every pixel seq % 251."""
    return np.full((8 + seq % 5, 6, 3), seq % 251, np.uint8)


def own_memfds(label: str) -> int:
    """How many of this process's fds are memfds named ``label``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{label} ")
        except OSError:
            pass
    return n


def own_segments() -> set[str]:
    others = re.compile(rf"^edgepipe\.t-(?!{os.getpid()}-)\d+-")
    return {e for e in os.listdir(SHM_DIR) if e.startswith("edgepipe.") and not others.match(e)}


def run(ctx, target, *args):
    """Start target(*args, q) in a child and return (the child's report, its exit code)."""
    q = ctx.Queue()
    p = ctx.Process(target=_report, args=(target, q, args))
    p.start()
    try:
        got = q.get(timeout=WAIT_S)
    finally:
        p.join(WAIT_S)
        if p.is_alive():
            p.kill()
            p.join()
    if isinstance(got, tuple) and got[:1] == ("error",):
        pytest.fail(f"child failed:\n{got[1]}")
    return got, p.exitcode


def _report(target, q, args) -> None:
    try:
        q.put(target(*args))
    except BaseException:  # noqa: BLE001 - sent to the parent, which fails the test with it
        q.put(("error", traceback.format_exc()))


# ---------------------------------------------------------------------------------------------------
# child bodies (module level: spawn and forkserver children import them by name)


def produce(ring: Ring, n: int, start: int = 0) -> int:
    with ring:
        w = ring.writer()
        for seq in range(start, start + n):
            w.write(record(seq), timeout_s=WAIT_S)
    return n


def consume(ring: Ring, n: int) -> tuple[int, int]:
    """Read and check n records; return (count, crc32 over them all)."""
    crc = 0
    with ring:
        r = ring.reader()
        for seq in range(n):
            rec = r.read(timeout_s=WAIT_S)
            check_record(rec, seq)
            crc = zlib.crc32(rec, crc)
    return n, crc


def echo(inbox: Ring, outbox: Ring, n: int) -> int:
    """Send back every record of inbox on outbox, after checking it."""
    with inbox, outbox:
        r, w = inbox.reader(), outbox.writer()
        for seq in range(n):
            rec = r.read(timeout_s=WAIT_S)
            check_record(rec, seq)
            w.write(rec, timeout_s=WAIT_S)
    return n


def try_both_ends(seg) -> list[str]:
    """Try to open each end of seg; report what happened."""
    out = []
    for what in ("reader", "writer"):
        try:
            getattr(seg, what)()
            out.append(f"{what}: opened")
        except RingBusyError as e:
            out.append(f"{what}: RingBusyError: {e}")
    return out


def produce_frames(ring: Ring, n: int) -> int:
    with ring:
        w = FrameWriter(ring.writer())
        for seq in range(1, n + 1):
            assert w.write_frame(frame_of(seq), timeout_s=WAIT_S) == seq
    return n


def consume_frames(ring: Ring, n: int) -> int:
    with ring:
        r = FrameReader(ring.reader())
        total = 0
        for seq in range(1, n + 1):
            with r.read_frame(timeout_s=WAIT_S) as f:
                assert f.seq == seq and f.shape == frame_of(seq).shape
                assert int(f.array.min()) == int(f.array.max()) == seq % 251
                total += int(f.array.sum())
    return total


def publish_latest(slot: LatestSlot, n: int) -> int:
    with slot:
        w = slot.writer()
        for seq in range(1, n + 1):
            assert w.write_frame(frame_of(seq)) == seq
    return n


def hold_writer_until_killed(ring: Ring, slot: LatestSlot, ready) -> None:
    """Open the ring's and the slot's writers, fill the ring, say so, then block on a full ring for ever."""
    w, lw = ring.writer(), slot.writer()
    lw.write_frame(frame_of(1))
    seq = 0
    while w.try_write(record(seq)):
        seq += 1
    ready.put(seq)
    w.write(record(seq))  # blocks: nobody reads until the parent has killed us


def use_inherited(ring: Ring, w) -> str:
    """Under fork: the parent's writer, inherited, refuses; closing the ring here leaves the parent's ends."""
    try:
        w.try_write(b"from the child")
        return "the inherited writer wrote"
    except RingClosedError as e:
        msg = str(e)
    ring.close()
    return msg


# ---------------------------------------------------------------------------------------------------


class TestProcess:
    def test_child_produces(self, ctx):
        """A ring in Process args: the child opens the writer, the parent reads every record in order, checksum
        intact, then PeerClosedError once the child closed."""
        with Ring.create(capacity=1 << 12) as ring:
            r = ring.reader()
            p = ctx.Process(target=produce, args=(ring, 3000))
            p.start()
            drain(r, 3000)
            p.join(WAIT_S)
            assert p.exitcode == 0

    def test_child_consumes(self, ctx):
        """The child opens the reader of a ring passed to it and gets every record the parent writes."""
        with Ring.create(capacity=1 << 12) as ring:
            w = ring.writer()
            q = ctx.Queue()
            p = ctx.Process(target=_report, args=(consume, q, (ring, 3000)))
            p.start()
            crc = 0
            for seq in range(3000):
                w.write(record(seq), timeout_s=WAIT_S)
                crc = zlib.crc32(record(seq), crc)
            assert q.get(timeout=WAIT_S) == (3000, crc)
            p.join(WAIT_S)
            assert p.exitcode == 0

    def test_echo_both_ways(self, ctx):
        """Two rings in one child's args: records go out on one and come back on the other, in order. (The way
        back is larger than everything that can be in flight, so neither side can block the other for good.)"""
        with Ring.create(capacity=1 << 12) as out, Ring.create(capacity=1 << 15) as back:
            w, r = out.writer(), back.reader()
            p = ctx.Process(target=echo, args=(out, back, 2000))
            p.start()
            got = 0
            for seq in range(2000):
                w.write(record(seq), timeout_s=WAIT_S)
                # (not past the last record: the child closes its end once it has sent it back, and an empty
                # ring with its producer closed is PeerClosedError)
                while got < 2000 and (rec := r.try_read()) is not None:
                    check_record(rec, got)
                    got += 1
            while got < 2000:
                check_record(r.read(timeout_s=WAIT_S), got)
                got += 1
            p.join(WAIT_S)
            assert p.exitcode == 0

    def test_second_consumer_and_producer_refused(self, ctx):
        """While the parent holds both ends, a child given the ring is refused each with RingBusyError naming
        the parent's pid, and the parent's ends keep working."""
        with Ring.create(capacity=1 << 12) as ring:
            w, r = ring.writer(), ring.reader()
            got, code = run(ctx, try_both_ends, ring)
            assert code == 0
            me = os.getpid()
            assert got == [f"reader: RingBusyError: ring 'memfd' already has a live reader (pid {me})",
                           f"writer: RingBusyError: ring 'memfd' already has a live writer (pid {me})"]
            assert w.try_write(record(0)) and r.try_read() == record(0)

    def test_ends_free_again_once_the_child_exits(self, ctx):
        """The child's end goes with it: after a producer child exits, another child may open the writer."""
        with Ring.create(capacity=1 << 12) as ring:
            r = ring.reader()
            p = ctx.Process(target=produce, args=(ring, 500))
            p.start()
            drain(r, 500)
            p.join(WAIT_S)
            assert p.exitcode == 0
            got, code = run(ctx, try_both_ends, ring)
            assert got[0].startswith("reader: RingBusyError") and got[1] == "writer: opened" and code == 0

    def test_named_ring_keeps_its_name(self, ctx, shm_name):
        """A named ring reaches the child by its fd, with its name (for messages), never reopened by name."""
        with Ring.create(shm_name, capacity=1 << 12) as ring:
            ring.reader()
            got, code = run(ctx, try_both_ends, ring)
            assert got[0] == f"reader: RingBusyError: ring {shm_name!r} already has a live reader (pid {os.getpid()})"
            assert got[1] == "writer: opened" and code == 0

    def test_an_open_end_is_not_sent(self, ctx):
        """An open end is the process's own: under spawn and forkserver, start() refuses to pickle it
        (TypeError naming the Ring to pass instead); under fork the child inherits it disowned (using it
        raises RingClosedError naming the parent), and closing the ring there leaves the parent's ends open."""
        with Ring.create(capacity=1 << 12) as ring:
            w, r = ring.writer(), ring.reader()
            if ctx.get_start_method() != "fork":
                p = ctx.Process(target=use_inherited, args=(ring, w))
                with pytest.raises(TypeError, match=r"a RingWriter is an open end of a Ring and cannot be "
                                                    r"pickled: pass the Ring \(end.segment\)"):
                    p.start()
                return
            got, code = run(ctx, use_inherited, ring, w)
            assert code == 0
            assert got == (f"this RingWriter on 'memfd' was opened by pid {os.getpid()}, which forked this "
                           f"process, and stays that process's writer: call writer() on the Ring here to open "
                           f"this process's own end")
            st = ring.status()
            assert (st.producer_closed, st.consumer_closed) == (False, False)
            assert w.try_write(b"still mine") and r.try_read() == b"still mine"


class TestPool:
    def test_tasks_produce_and_consume(self, ctx):
        """Pool tasks get rings as arguments (always pickled, the fd sent over SCM_RIGHTS): one task produces
        into one ring, another consumes from a second, both checked record by record."""
        with ctx.Pool(2) as pool, Ring.create(capacity=1 << 12) as a, Ring.create(capacity=1 << 12) as b:
            r, w = a.reader(), b.writer()
            made = pool.apply_async(produce, (a, 1500))
            used = pool.apply_async(consume, (b, 1500))
            crc = 0
            for seq in range(1500):
                w.write(record(seq), timeout_s=WAIT_S)
                crc = zlib.crc32(record(seq), crc)
                check_record(r.read(timeout_s=WAIT_S), seq)
            assert made.get(WAIT_S) == 1500
            assert used.get(WAIT_S) == (1500, crc)

    def test_second_consumer_refused_in_a_task(self, ctx):
        """A task opening an end the parent holds gets RingBusyError, as any second consumer does."""
        with ctx.Pool(1) as pool, Ring.create(capacity=1 << 12) as ring:
            ring.reader()
            got = pool.apply(try_both_ends, (ring,))
            assert got[0].startswith("reader: RingBusyError") and got[1] == "writer: opened"

    def test_map_over_rings(self, ctx):
        """Pool.map over several rings, each task producing into its own; every ring gets its records."""
        rings = [Ring.create(capacity=1 << 14) for _ in range(3)]
        try:
            readers = [g.reader() for g in rings]
            with ctx.Pool(3) as pool:
                assert pool.starmap(produce, [(g, 60, 100 * i) for i, g in enumerate(rings)]) == [60, 60, 60]
            for i, r in enumerate(readers):
                for seq in range(100 * i, 100 * i + 60):
                    check_record(r.read(timeout_s=WAIT_S), seq)
        finally:
            for g in rings:
                g.close()


class TestFrames:
    def test_frames_from_a_child(self, ctx):
        """A frame channel (a Ring carrying frames) in Process args: the child's FrameWriter, the parent's
        FrameReader; seqs in order, every pixel right, each frame released explicitly."""
        with Ring.create(capacity=1 << 14) as ring:
            r = FrameReader(ring.reader())
            p = ctx.Process(target=produce_frames, args=(ring, 400))
            p.start()
            for seq in range(1, 401):
                with r.read_frame(timeout_s=WAIT_S) as f:
                    assert f.seq == seq and f.shape == frame_of(seq).shape
                    assert int(f.array.min()) == int(f.array.max()) == seq % 251
                    f.release()
            with pytest.raises(PeerClosedError):
                r.read_frame(timeout_s=WAIT_S)
            p.join(WAIT_S)
            assert p.exitcode == 0

    def test_frames_to_a_child(self, ctx):
        """The parent writes frames, a child given the ring reads and checks them."""
        with Ring.create(capacity=1 << 14) as ring:
            w = FrameWriter(ring.writer())
            q = ctx.Queue()
            p = ctx.Process(target=_report, args=(consume_frames, q, (ring, 400)))
            p.start()
            want = 0
            for seq in range(1, 401):
                w.write_frame(frame_of(seq), timeout_s=WAIT_S)
                want += int(frame_of(seq).sum())
            assert q.get(timeout=WAIT_S) == want
            p.join(WAIT_S)


class TestLatest:
    def test_latest_from_a_child(self, ctx):
        """A latest slot in Process args: the child publishes, the parent sees newer seqs only, each frame
        whole (every pixel seq % 251), and the last one, then PeerClosedError."""
        with LatestSlot.create(None, max_frame_bytes=frame_of(4).nbytes) as slot:
            r = slot.reader()
            p = ctx.Process(target=publish_latest, args=(slot, 3000))
            p.start()
            last = 0
            while True:
                try:
                    ctx_ = r.read_frame(timeout_s=WAIT_S)
                except PeerClosedError:
                    break
                with ctx_ as f:
                    assert f.seq > last and f.shape == frame_of(f.seq).shape
                    assert int(f.array.min()) == int(f.array.max()) == f.seq % 251
                    last = f.seq
            assert last == 3000
            p.join(WAIT_S)
            assert p.exitcode == 0

    def test_second_latest_consumer_refused(self, ctx):
        """A child given a slot whose reader the parent holds is refused the reader, not the writer."""
        with LatestSlot.create(None, max_frame_bytes=64) as slot:
            slot.reader()
            got, code = run(ctx, try_both_ends, slot)
            assert got == [f"reader: RingBusyError: latest slot 'memfd' already has a live reader (pid {os.getpid()})",
                           "writer: opened"]


class TestKill:
    def test_child_killed_leaves_nothing(self, ctx):
        """A child holding the writers of a ring and a latest slot, killed -9 while blocked: the parent reads
        what it wrote, then PeerClosedError on both; nothing was made in /dev/shm, and once the parent closes
        them no fd of either memfd is left in the parent."""
        before = own_segments()
        base = own_memfds("edgepipe-ring"), own_memfds("edgepipe-latest")
        ring = Ring.create(capacity=1 << 12)
        slot = LatestSlot.create(None, max_frame_bytes=frame_of(4).nbytes)
        try:
            r, lr = ring.reader(), slot.reader()
            ready = ctx.Queue()
            p = ctx.Process(target=hold_writer_until_killed, args=(ring, slot, ready))
            p.start()
            n = ready.get(timeout=WAIT_S)
            os.kill(p.pid, signal.SIGKILL)
            p.join(WAIT_S)
            assert p.exitcode == -signal.SIGKILL
            drain(r, n)
            with lr.read_frame(timeout_s=WAIT_S) as f:
                assert f.seq == 1
            with pytest.raises(PeerClosedError):
                lr.read_frame(timeout_s=WAIT_S)
            assert own_segments() == before
        finally:
            ring.close()
            slot.close()
        assert (own_memfds("edgepipe-ring"), own_memfds("edgepipe-latest")) == base


class TestPickling:
    def test_only_the_fd_is_pickled(self):
        """What ForkingPickler writes for a ring is a few hundred bytes whatever its capacity, and none of
        its records; loading it (the fd comes back through multiprocessing's resource sharer) gives the same
        ring, which reads what was written through the original."""
        marker = b"this record stays in shared memory " * 20
        with Ring.create(capacity=1 << 20) as ring:
            w = ring.writer()
            w.try_write(marker)
            data = bytes(ForkingPickler.dumps(ring))
            assert marker[:35] not in data and len(data) < 1024
            twin = pickle.loads(data)
            try:
                assert isinstance(twin, Ring) and twin.capacity == 1 << 20 and twin.fd != ring.fd
                assert twin.reader().try_read() == marker
            finally:
                twin.close()

    @pytest.mark.parametrize("make", [lambda: Ring.create(capacity=4096),
                                      lambda: LatestSlot.create(None, max_frame_bytes=64)])
    def test_plain_pickle_refused(self, make):
        """Any pickler but multiprocessing's gets a TypeError saying how to send the segment instead."""
        with make() as seg:
            kind = type(seg).__name__
            with pytest.raises(TypeError, match=rf"a {kind} is pickled only by multiprocessing .* open it "
                                                rf"with {kind}.from_fd"):
                pickle.dumps(seg)

    @pytest.mark.parametrize("end", ["RingWriter", "RingReader", "FrameWriter", "FrameReader", "LatestWriter",
                                     "LatestReader"])
    def test_open_ends_refused(self, end):
        """Every kind of open end refuses every pickler, naming the segment to pass instead."""
        with Ring.create(capacity=4096) as ring, LatestSlot.create(None, max_frame_bytes=64) as slot:
            obj = {"RingWriter": ring.writer, "RingReader": ring.reader,
                   "FrameWriter": lambda: FrameWriter(ring.writer()),
                   "FrameReader": lambda: FrameReader(ring.reader()),
                   "LatestWriter": slot.writer, "LatestReader": slot.reader}[end]()
            kind = "LatestSlot" if end.startswith("Latest") else "Ring"
            for dump in (pickle.dumps, ForkingPickler.dumps):
                with pytest.raises(TypeError, match=rf"a {end} is an open end of a {kind} and cannot be pickled: "
                                                    rf"pass the {kind}"):
                    dump(obj)

    def test_closed_ring_refused(self):
        """A closed ring has no fd to send: RingClosedError, naming it."""
        ring = Ring.create(capacity=4096)
        ring.close()
        with pytest.raises(RingClosedError, match="ring 'memfd' is closed: there is nothing to send"):
            ForkingPickler.dumps(ring)

    def test_queue_carries_a_ring(self):
        """A ring put on a multiprocessing queue arrives as a ring over the same memory."""
        q = mp.get_context("spawn").Queue()
        with Ring.create(capacity=4096) as ring:
            ring.writer().try_write(b"via a queue")
            q.put(ring)
            got = q.get(timeout=WAIT_S)
            try:
                assert got.reader().try_read() == b"via a queue"
            finally:
                got.close()
        q.close()
        q.join_thread()
