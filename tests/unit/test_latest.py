"""LatestSlot (csrc/ep_latest.c + edgepipe.frames): newest-frame semantics and counters, blocking and
non-blocking reads, the lifetime rule with 3 and 4 buffers, typed errors, attach by name and by fd, and
two-process runs (ring and slot) that check every frame's seq and checksum and that the reader never sees a
torn frame."""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest

from edgepipe import Ring
from edgepipe._ffi import lib
from edgepipe.errors import (
    ImageHeaderError,
    LayoutVersionError,
    ImageHeldError,
    ImageTooLargeError,
    PeerClosedError,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingTimeoutError,
)
from edgepipe.frames import FrameReader, FrameWriter
from edgepipe.latest import LatestSlot
from edgepipe.shm import SharedRegion

_FORK = mp.get_context("fork")


@pytest.fixture
def slot():
    s = LatestSlot.create(None, max_frame_bytes=64 * 64 * 3)
    yield s
    s.close()


def _frame(v: int, shape=(64, 64, 3)) -> np.ndarray:
    return np.full(shape, v & 255, np.uint8)


class TestNewest:
    def test_reader_gets_the_newest_and_counts_overwritten(self, slot):
        """After several publishes the reader gets only the last; the others count as overwritten."""
        w, r = slot.writer(), slot.reader()
        for i in range(1, 6):
            assert w.write_frame(_frame(i)) == i
        with r.read_frame(0) as f:
            assert f.seq == 5 and int(f.array[0, 0, 0]) == 5
        s = slot.status()
        assert (s.published, s.delivered, s.overwritten, s.fresh) == (5, 1, 4, False)
        assert w.overwritten == 4 and w.frames_written == 5

    def test_read_blocks_until_a_newer_frame(self, slot):
        """read_frame waits for a frame newer than the last one read, and wakes when it is published."""
        w, r = slot.writer(), slot.reader()
        w.write_frame(_frame(1))
        with r.read_frame(0) as f:
            assert f.seq == 1
        assert r.try_read_frame() is None
        with pytest.raises(RingTimeoutError):
            r.read_frame(timeout_s=0.02)
        published = []                               # the publisher's clock just before it publishes

        def publish():
            published.append(time.monotonic())
            w.write_frame(_frame(2))

        t = threading.Timer(0.05, publish)
        t.start()
        with r.read_frame(timeout_s=5) as f:
            assert f.seq == 2
            woke = time.monotonic()
        t.join()
        # it returned only after the publish began (an order, not a duration: a loaded machine may run the
        # timer before this thread gets to read_frame at all, which is fine)
        assert published and woke >= published[0]

    def test_writer_never_blocks_and_header_fields_arrive(self, slot):
        """Thousands of publishes with no reader never wait; the header fields of the last arrive intact."""
        w, r = slot.writer(), slot.reader()
        t0 = time.monotonic()
        for i in range(2000):
            c = w.claim_frame((64, 64), pixel_format="GRAY", capture_ns=i, source_id=3)
            with c as arr:
                arr[:] = i & 255
        assert time.monotonic() - t0 < 5
        with r.read_frame(0) as f:
            assert (f.seq, f.capture_ns, f.source_id, f.pixel_format, f.shape) == (2000, 1999, 3, "GRAY", (64, 64))
            assert f.array.ctypes.data % 64 == 0

    def test_shapes_may_change_between_frames(self, slot):
        """Each frame carries its own shape and dtype, within max_frame_bytes."""
        w, r = slot.writer(), slot.reader()
        w.write_frame(np.arange(10, dtype=np.float32), pixel_format="RAW")
        with r.read_frame(0) as f:
            assert f.dtype == np.float32 and f.shape == (10,)
        w.write_frame(np.zeros((32, 16), np.uint16), pixel_format="GRAY")
        with r.read_frame(0) as f:
            assert f.dtype == np.uint16 and f.shape == (32, 16)

    def test_aborted_claim_publishes_nothing(self, slot):
        """An exception in the claim block publishes nothing."""
        w, r = slot.writer(), slot.reader()
        with pytest.raises(KeyError):
            with w.claim_frame((64, 64, 3)):
                raise KeyError("x")
        assert r.try_read_frame() is None and slot.status().published == 0

    def test_closed_producer_gives_last_frame_then_peer_closed(self, slot):
        """A fresh frame published before the producer closed is still delivered, then PeerClosedError."""
        w, r = slot.writer(), slot.reader()
        w.write_frame(_frame(9))
        w.close()
        with r.read_frame(timeout_s=1) as f:
            assert f.seq == 1
        with pytest.raises(PeerClosedError, match="closed"):
            r.read_frame(timeout_s=1)
        assert list(r.frames(timeout_s=1)) == []

    def test_close_wakes_a_blocked_reader(self, slot):
        """Closing the producer wakes a reader blocked in read_frame with PeerClosedError."""
        w, r = slot.writer(), slot.reader()
        threading.Timer(0.05, w.close).start()
        with pytest.raises(PeerClosedError):
            r.read_frame(timeout_s=5)


class TestLifetime:
    def test_default_four_buffers_let_the_reader_keep_one_frame(self, slot):
        """With 4 buffers a kept array pins its buffer while reading goes on; the kept bytes never change;
        a second kept frame makes the next read raise ImageHeldError until one is dropped."""
        w, r = slot.writer(), slot.reader()
        w.write_frame(_frame(1))
        with r.read_frame(0) as f:
            k1 = f.array
        for i in range(2, 20):
            w.write_frame(_frame(i))
            assert (k1 == 1).all()
        with r.read_frame(0) as f:
            k2 = f.array[1:]
        assert r.held_seqs == [1, 19]
        for i in range(20, 40):
            w.write_frame(_frame(i))
        assert (k1 == 1).all() and (k2 == 19).all()
        with pytest.raises(ImageHeldError, match=r"\[1, 19\]"):
            r.read_frame(0)
        del k1
        with r.read_frame(0) as f:
            assert f.seq == 39 and (f.array == 39).all()
        assert (k2 == 19).all()

    def test_three_buffers_is_a_plain_triple_buffer(self):
        """With 3 buffers one kept array already blocks the next read (ImageHeldError), never its bytes."""
        with LatestSlot.create(None, 4096, buffers=3) as s:
            w, r = s.writer(), s.reader()
            w.write_frame(_frame(1, (16, 16)), pixel_format="GRAY")
            with r.read_frame(0) as f:
                kept = f.array
            for i in range(2, 10):
                w.write_frame(_frame(i, (16, 16)), pixel_format="GRAY")
            with pytest.raises(ImageHeldError):
                r.read_frame(0)
            assert (kept == 1).all()
            del kept
            with r.read_frame(0) as f:
                assert f.seq == 9


class TestBadInput:
    def test_too_large_names_sizes(self, slot):
        """A frame over max_frame_bytes raises ImageTooLargeError with both sizes."""
        w = slot.writer()
        with pytest.raises(ImageTooLargeError, match=r"49152.*12288"):
            w.claim_frame((128, 128, 3))

    def test_second_live_writer_or_reader_is_busy(self, slot):
        """Each end can be held by one live process (here: this one) at a time."""
        w, r = slot.writer(), slot.reader()
        with pytest.raises(RingBusyError, match="writer"):
            slot.writer()
        with pytest.raises(RingBusyError, match="reader"):
            slot.reader()
        w.close()
        slot.writer().close()  # a closed end can be taken again
        r.close()

    def test_closed_handles_raise(self, slot):
        """Using a closed end raises RingClosedError."""
        w, r = slot.writer(), slot.reader()
        w.close()
        r.close()
        with pytest.raises(RingClosedError):
            w.claim_frame((4, 4, 3))
        with pytest.raises(RingClosedError):
            r.try_read_frame()

    def test_corrupt_header_in_slot_names_field(self, slot):
        """A scribbled header in the slot raises ImageHeaderError naming the field and value."""
        w, r = slot.writer(), slot.reader()
        w.write_frame(_frame(1))
        # the published buffer is whatever the exchange word names; scribble on every buffer's ndim
        buf = slot.region.buffer()
        size = slot.status().slot_size
        for i in range(slot.status().nbuf):
            struct.pack_into("<B", buf, lib.EP_LATEST_CTL_SIZE + i * size + 7, 9)
        with pytest.raises(ImageHeaderError, match="ndim = 9") as ei:
            r.read_frame(0)
        assert ei.value.field == "ndim"

    def test_region_that_is_not_a_slot(self):
        """Attaching a region that holds no latest slot raises RingCorruptError naming the magic."""
        region = SharedRegion.anonymous(1 << 16)
        try:
            with pytest.raises(RingCorruptError, match="magic 0x00000000"):
                LatestSlot.from_fd(region.fd)
        finally:
            region.close()

    @pytest.mark.parametrize("kw,match", [({"max_frame_bytes": 0}, "max_frame_bytes"),
                                          ({"max_frame_bytes": 64, "buffers": 2}, "buffers"),
                                          ({"max_frame_bytes": 64, "buffers": 9}, "buffers")])
    def test_bad_create_arguments(self, kw, match):
        """create() refuses bad sizes and buffer counts, naming the value."""
        with pytest.raises(ValueError, match=match):
            LatestSlot.create(None, **kw)


class TestAttach:
    def test_attach_by_name_and_unlink_on_exit(self, shm_name):
        """A named slot is reachable by name from a second handle; the creator's with unlinks it."""
        with LatestSlot.create(shm_name, 1024) as s:
            w = s.writer()
            other = LatestSlot.attach(shm_name)
            r = other.reader()
            w.write_frame(np.ones((8, 8), np.uint8), pixel_format="GRAY")
            with r.read_frame(0) as f:
                assert f.seq == 1
            other.close()
        assert not os.path.exists(f"/dev/shm/edgepipe.{shm_name}")

    def test_previous_layout_version_is_refused(self, shm_name):
        """A slot laid out by the previous layout version (2: owner words without generations, no publish
        count in the state word) raises LayoutVersionError naming both versions; with the version restored
        it attaches again."""
        with LatestSlot.create(shm_name, 1024) as s:
            old = lib.EP_LATEST_VERSION - 1
            s.region.buffer()[4:8] = struct.pack("=I", old)
            for attach in (lambda: LatestSlot.attach(shm_name), lambda: LatestSlot.from_fd(s.fd)):
                with pytest.raises(LayoutVersionError) as ei:
                    attach()
                assert str(old) in str(ei.value) and str(lib.EP_LATEST_VERSION) in str(ei.value)
            s.region.buffer()[4:8] = struct.pack("=I", lib.EP_LATEST_VERSION)
            LatestSlot.attach(shm_name).close()

    def test_empty_segment_is_corrupt_like_a_ring(self, shm_name):
        """A zero-length segment under the slot's name raises RingCorruptError naming it, as Ring.attach does."""
        path = f"/dev/shm/edgepipe.{shm_name}"
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
        try:
            with pytest.raises(RingCorruptError, match=shm_name):
                LatestSlot.attach(shm_name)
        finally:
            os.unlink(path)


# ---------------------------------------------------------------------------------------------------
# two processes

SHAPE = (120, 160, 3)
N_FRAMES = 300


def _fill(arr: np.ndarray, seq: int) -> int:
    """Fill a frame from its seq: every 4-byte word holds seq, then a seq-dependent ramp in the last row.
    Returns the crc32 the consumer must see."""
    flat = arr.reshape(-1)
    flat.view(np.uint32)[:] = seq
    flat[-64:] = (np.arange(64, dtype=np.uint32) * 7 + seq).astype(np.uint8)
    return zlib.crc32(flat)


def _check(arr: np.ndarray, seq: int, crc: int) -> str | None:
    flat = arr.reshape(-1)
    words = flat[:-64].view(np.uint32)
    if not (words == seq).all():
        bad = np.flatnonzero(words != seq)
        return f"seq {seq}: torn/stale words at {bad[:3].tolist()} (values {words[bad[:3]].tolist()})"
    if zlib.crc32(flat) != crc:
        return f"seq {seq}: checksum {zlib.crc32(flat):#x} != {crc:#x}"
    return None


def _ring_producer(fd: int, n: int) -> None:
    ring = Ring.from_fd(fd)
    w = FrameWriter(ring.writer())
    for seq in range(1, n + 1):
        c = w.claim_frame(SHAPE, timeout_s=30)
        with c as arr:
            c.source_id = _fill(arr, seq)
    w.close()
    ring.close()


def _latest_producer(fd: int, seconds: float, shape, q) -> None:
    slot = LatestSlot.from_fd(fd)
    w = slot.writer()
    seq = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seq += 1
        c = w.claim_frame(shape, pixel_format="RAW")
        with c as arr:
            c.source_id = _fill(arr, seq)
    w.close()
    slot.close()
    q.put(seq)


class TestTwoProcesses:
    def test_ring_frames_cross_processes_in_order_and_intact(self):
        """A producer process sends 300 frames through a memfd ring; every one arrives, in seq order, with
        the pixels and checksum its seq dictates."""
        with Ring.create(capacity=1 << 20) as ring:
            r = FrameReader(ring.reader())
            p = _FORK.Process(target=_ring_producer, args=(ring.fd, N_FRAMES))
            p.start()
            seqs, problems = [], []
            for f in r.frames(timeout_s=30):
                seqs.append(f.seq)
                err = _check(f.array, f.seq, f.source_id)
                if err:
                    problems.append(err)
            p.join(30)
            assert p.exitcode == 0
        assert problems == []
        assert seqs == list(range(1, N_FRAMES + 1))

    def test_latest_slot_reader_never_sees_a_torn_frame(self):
        """A producer process publishes as fast as it can for ~1 s while this process reads: every frame
        read is whole (all words equal its seq, checksum matches), seqs only increase, and the counters
        add up (delivered + overwritten == published)."""
        _torn_frame_run(seconds=1.0, shape=(64, 256))


def _torn_frame_run(seconds: float, shape) -> None:
    nbytes = int(np.prod(shape))
    with LatestSlot.create(None, nbytes) as slot:
        r = slot.reader(spin_ns=0)
        q = _FORK.Queue()
        p = _FORK.Process(target=_latest_producer, args=(slot.fd, seconds, shape, q))
        p.start()
        last, reads, problems = 0, 0, []
        while True:
            try:
                ctx = r.read_frame(timeout_s=30)
            except PeerClosedError:
                break
            with ctx as f:
                if f.seq <= last:
                    problems.append(f"seq went {last} -> {f.seq}")
                last = f.seq
                err = _check(f.array, f.seq, f.source_id)
                if err:
                    problems.append(err)
                reads += 1
        published = q.get(timeout=30)
        p.join(30)
        s = slot.status()
    assert p.exitcode == 0
    assert problems == [], problems[:5]
    assert last == published == s.published
    assert s.delivered == reads >= 10
    assert s.delivered + s.overwritten == s.published


@pytest.mark.stress
def test_latest_slot_torn_frame_stress():
    """The torn-frame run for 20 s with frames of 1 MB (stress marker)."""
    _torn_frame_run(seconds=20.0, shape=(1024, 1024))


class _CloseSpy:
    """Stands in for edgepipe.latest.lib: holds the C call ``held`` open for a while (a racing close would
    free the handle then) and counts such calls still running when ``close`` (which frees it) is called."""

    def __init__(self, real, held: str, close: str):
        self._real = real
        self._held, self._close = held, close
        self.in_call = threading.Event()
        self.closing = threading.Event()
        self.busy = 0
        self.overlaps = 0

    def __getattr__(self, name):
        if name == self._held:
            return self._held_call
        if name == self._close:
            return self._close_call
        return getattr(self._real, name)

    def _held_call(self, *args):
        self.busy += 1
        self.in_call.set()
        self.closing.wait(0.5)
        try:
            return getattr(self._real, self._held)(*args)
        finally:
            self.busy -= 1

    def _close_call(self, h):
        self.closing.set()
        self.overlaps += self.busy
        return getattr(self._real, self._close)(h)


class TestCloseWhileReading:
    @pytest.mark.parametrize("blocking", [True, False])
    def test_close_never_frees_the_handle_under_a_running_call(self, slot, monkeypatch, blocking):
        """close() from another thread while read_frame/try_read_frame is inside a C call waits for that
        call before it frees the reader (no use after free); the read then returns or raises RingClosedError."""
        import edgepipe.latest as frames

        spy = _CloseSpy(frames.lib, "ep_latest_try_take", "ep_latest_reader_close")
        monkeypatch.setattr(frames, "lib", spy)
        w, r = slot.writer(), slot.reader()
        w.write_frame(_frame(1))
        out = []

        def read():
            try:
                ctx = r.read_frame(timeout_s=1) if blocking else r.try_read_frame()
                with ctx as f:
                    out.append(f.seq)
            except RingClosedError:
                out.append("closed")

        t = threading.Thread(target=read)
        t.start()
        assert spy.in_call.wait(5)
        r.close()
        t.join(5)
        assert spy.overlaps == 0
        assert out in ([1], ["closed"]) and r.closed


class TestCloseWhileWriting:
    def test_close_never_frees_the_writer_under_a_running_publish(self, slot, monkeypatch):
        """close() from another thread while write_frame is inside ep_latest_publish waits for that call
        before it frees the writer; the frame is published and the reader gets it."""
        import edgepipe.latest as frames

        spy = _CloseSpy(frames.lib, "ep_latest_publish", "ep_latest_writer_close")
        monkeypatch.setattr(frames, "lib", spy)
        w, r = slot.writer(), slot.reader()
        out = []
        t = threading.Thread(target=lambda: out.append(w.write_frame(_frame(7))))
        t.start()
        assert spy.in_call.wait(5)
        w.close()
        t.join(5)
        assert spy.overlaps == 0
        assert out == [1] and w.closed
        with r.read_frame(0) as f:
            assert f.seq == 1


class TestControlBlockScribbledAfterOpen:
    # offsets in struct ep_latest_ctl (csrc/ep_latest.c): slot_size 16, nbuf 32, the exchange word 128
    @pytest.mark.parametrize("end", ["writer", "reader"])
    def test_grown_buffer_count_is_caught_not_followed(self, slot, end):
        """A peer that raises nbuf/slot_size in the control block after both ends opened, and puts an
        index past the real buffers in the exchange word, gets RingCorruptError: each end keeps the
        geometry it validated at open and never computes an offset outside the region."""
        w, r = slot.writer(), slot.reader()
        buf = slot.region.buffer()
        struct.pack_into("<Q", buf, 16, 1 << 30)
        struct.pack_into("<I", buf, 32, 15)
        struct.pack_into("<I", buf, 128, 14 | (0x10 if end == "reader" else 0))
        with pytest.raises(RingCorruptError):
            if end == "writer":
                for _ in range(2):  # publish takes index 14 back; the next claim would use it
                    w.write_frame(_frame(1))
            else:
                r.read_frame(0)
        buf.release()


class TestProducerKilledMidPublish:
    def test_sigkill_during_publish_never_hands_one_buffer_to_both_ends(self, slot):
        """A producer process SIGKILLed at random points of a tight publish loop (so now and then between
        the exchange and its own bookkeeping) leaves a slot whose next producer never writes into the
        buffer the consumer is reading: a frame held by the reader keeps its bytes while more are published."""
        import signal

        r = slot.reader()
        for round_ in range(150):
            before = slot.status().published
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                try:
                    h = slot.writer()._h
                    while True:
                        lib.ep_latest_publish(h)
                finally:
                    os._exit(0)
            t_end = time.monotonic() + 5
            while slot.status().published < before + 200 + 37 * (round_ % 7) and time.monotonic() < t_end:
                pass
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            w = slot.writer()
            w.write_frame(_frame(1))
            with r.read_frame(0) as f:
                seq = f.seq
                w.write_frame(_frame(2))
                w.write_frame(_frame(3))
                assert f.seq == seq and int(f.array.max()) == int(f.array.min()) == 1, f"round {round_}"
            w.close()
