"""Three API edges of the ring and frame handles (issue 16): ``try_*`` writes that return instead of raising,
``Frame.release()``, and the batch paths for variable-size records (``batch_reader(...).views`` and
``batch_writer`` over a list).

"Nothing raised" is checked with a ``sys.settrace`` tracer that records every exception event in every Python
frame the call runs (an exception raised and caught inside counts as one); one test shows the tracer does see
the exception the blocking form raises.
"""

from __future__ import annotations

import random
import struct
import sys
import zlib
from array import array

import numpy as np
import pytest

from edgepipe import (
    FrameReader,
    FrameWriter,
    ImageHeldError,
    ImageReleasedError,
    LatestSlot,
    PeerClosedError,
    RecordTooLargeError,
    Ring,
    RingTimeoutError,
)


def exceptions_during(fn):
    """Run fn(); return (its result, every exception event in the Python frames it ran)."""
    events = []

    def tracer(frame, event, arg):
        if event == "exception":
            events.append(f"{frame.f_code.co_name}: {arg[0].__name__}")
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = fn()
    finally:
        sys.settrace(old)
    return result, events


def full_frame_ring():
    """A ring with one frame channel whose ring no longer has room for a 16x16x3 frame."""
    ring = Ring.create(capacity=1 << 12)
    w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
    img = np.zeros((16, 16, 3), np.uint8)
    n = 0
    while w.try_write_frame(img) is not None:
        n += 1
    return ring, w, r, img, n


class TestTryNeverRaises:
    def test_try_write_frame_on_a_full_ring(self):
        """try_write_frame on a full ring returns None with no exception raised or caught anywhere inside;
        after a frame is read it writes again."""
        ring, w, r, img, n = full_frame_ring()
        with ring:
            assert n >= 2
            got, events = exceptions_during(lambda: w.try_write_frame(img))
            assert got is None and events == []
            with r.read_frame(timeout_s=1) as f:
                assert f.seq == 1
            assert w.try_write_frame(img) == n + 1

    def test_the_tracer_sees_what_write_frame_raises(self):
        """The check above can fail: write_frame(timeout_s=0) on the same full ring raises RingTimeoutError,
        and the tracer records it."""
        ring, w, _r, img, _n = full_frame_ring()
        with ring:
            def attempt():
                try:
                    w.write_frame(img, timeout_s=0)
                except RingTimeoutError:
                    return "raised"
            got, events = exceptions_during(attempt)
            assert got == "raised" and any("RingTimeoutError" in e for e in events)

    def test_try_claim_frame_on_a_full_ring(self):
        """try_claim_frame returns None on a full ring without raising; with room it claims and publishes."""
        ring, w, r, img, n = full_frame_ring()
        with ring:
            got, events = exceptions_during(lambda: w.try_claim_frame((16, 16, 3)))
            assert got is None and events == []
            with r.read_frame(timeout_s=1):
                pass
            claim = w.try_claim_frame((16, 16, 3))
            with claim as arr:
                arr[:] = 5
            assert claim.seq == n + 1

    def test_ring_try_claim_on_a_full_ring(self):
        """RingWriter.try_claim and try_claim_offset return None / -1 on a full ring without raising."""
        with Ring.create(capacity=256) as ring:
            w = ring.writer()
            while w.try_write(b"x" * 50):
                pass
            got, events = exceptions_during(lambda: (w.try_claim(50), w.try_claim_offset(50)))
            assert got == (None, -1) and events == []
            r = ring.reader()
            r.try_read()
            r.try_read()
            with w.try_claim(50) as buf:
                buf[:] = b"y" * 50
            off = w.try_claim_offset(8)
            assert off >= 0
            w.abort_offset()

    def test_try_forms_still_raise_errors(self):
        """Only "not now" is quiet: a closed consumer is still PeerClosedError from try_write_frame."""
        ring, w, r, img, _n = full_frame_ring()
        with ring:
            r.close()
            with pytest.raises(PeerClosedError):
                w.try_write_frame(img)

    def test_latest_try_write_frame_always_publishes(self):
        """A latest slot always has room: try_write_frame returns each new seq, raising nothing."""
        with LatestSlot.create(None, max_frame_bytes=64) as slot:
            w = slot.writer()
            img = np.ones((8, 8), np.uint8)
            got, events = exceptions_during(lambda: [w.try_write_frame(img, pixel_format="GRAY") for _ in range(5)])
            assert got == [1, 2, 3, 4, 5] and events == []


class TestFrameRelease:
    def test_release_inside_the_block(self):
        """release() gives the frame back inside its block: array raises ImageReleasedError, the next frame
        can be read at once, and the block's end counts nothing twice."""
        with Ring.create(capacity=1 << 12) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            for i in (1, 2):
                w.write_frame(np.full((4, 4), i, np.uint8), pixel_format="GRAY")
            with r.read_frame(timeout_s=1) as f:
                assert int(f.array.sum()) == 16 and not f.released
                f.release()
                assert f.released
                with pytest.raises(ImageReleasedError, match="frame seq 1 was released"):
                    f.array
                with r.read_frame(timeout_s=1) as g:
                    assert g.seq == 2 and int(g.array.sum()) == 32
            assert r.frames_read == 2

    def test_without_release_the_next_read_waits_for_the_block(self):
        """The contrast: without release(), reading inside a frame's block is refused (one frame at a time)."""
        with Ring.create(capacity=1 << 12) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            for i in (1, 2):
                w.write_frame(np.full((4, 4), i, np.uint8), pixel_format="GRAY")
            with r.read_frame(timeout_s=1):
                with pytest.raises(ImageHeldError, match="previous frame is still open"):
                    r.read_frame(timeout_s=1)

    def test_release_is_idempotent(self):
        """release() twice, and release() then the block's end, give the slot back once."""
        with LatestSlot.create(None, max_frame_bytes=16) as slot:
            w, r = slot.writer(), slot.reader()
            w.write_frame(np.ones((4, 4), np.uint8), pixel_format="GRAY")
            with r.read_frame(timeout_s=1) as f:
                f.release()
                f.release()
            f.release()
            assert r.frames_read == 1 and r.held_seqs == []

    def test_views_kept_past_release_hold_the_slot(self):
        """An array taken before release() stays valid and keeps its ring record held, exactly as one kept
        past a with block: the next read raises ImageHeldError until the array is dropped."""
        with Ring.create(capacity=1 << 12) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            for i in (1, 2):
                w.write_frame(np.full((4, 4), i, np.uint8), pixel_format="GRAY")
            with r.read_frame(timeout_s=1) as f:
                kept = f.array[1:3]
                f.release()
                assert r.held_seq == 1
                with pytest.raises(ImageHeldError, match="still pins frame seq 1"):
                    r.read_frame(timeout_s=1)
                assert int(kept.sum()) == 8
                del kept
                with r.read_frame(timeout_s=1) as g:
                    assert g.seq == 2

    def test_latest_views_kept_past_release(self):
        """On a latest slot a kept array pins its buffer (held_seqs) and the reader reads on."""
        with LatestSlot.create(None, max_frame_bytes=16) as slot:
            w, r = slot.writer(), slot.reader()
            w.write_frame(np.full((4, 4), 3, np.uint8), pixel_format="GRAY")
            with r.read_frame(timeout_s=1) as f:
                kept = f.array
                f.release()
            assert r.held_seqs == [1]
            w.write_frame(np.full((4, 4), 4, np.uint8), pixel_format="GRAY")
            with r.read_frame(timeout_s=1) as g:
                assert g.seq == 2 and int(g.array[0, 0]) == 4
            assert int(kept[0, 0]) == 3
            del kept
            assert r.held_seqs == []

    def test_release_without_a_with(self):
        """A frame taken from a read_frame() result kept without `with` can be released by hand."""
        with Ring.create(capacity=1 << 12) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            for i in (1, 2):
                w.write_frame(np.full((4, 4), i, np.uint8), pixel_format="GRAY")
            ctx = r.read_frame(timeout_s=1)
            f = ctx.__enter__()
            f.release()
            with r.read_frame(timeout_s=1) as g:
                assert g.seq == 2
            del ctx


HDR = struct.Struct("<II")  # seq, crc32 of the rest


def rec(seq: int, size: int) -> bytes:
    body = bytes((seq + i) & 0xFF for i in range(size))
    return HDR.pack(seq, zlib.crc32(body)) + body


class TestBatchViews:
    def test_views_over_variable_size_records(self):
        """read.views(n) yields each record of the batch as a memoryview, offsets computed from lens: every
        record of random size (0 to 300 bytes of body) comes back exactly, in order, batch after batch."""
        rnd = random.Random(16)
        records = [rec(i, rnd.randrange(0, 300)) for i in range(400)]
        with Ring.create(capacity=1 << 12) as ring:
            w, r = ring.writer(), ring.reader()
            buf, lens = np.zeros(1 << 12, np.uint8), np.zeros(16, np.uint32)
            read = r.batch_reader(buf, lens)
            got = []
            sent = 0
            while len(got) < len(records):
                sent += w.try_write_many(records[sent:])
                n = read()
                views = list(read.views(n))
                assert [len(v) for v in views] == lens[:n].tolist()
                got += [bytes(v) for v in views]
            assert got == records

    def test_views_of_a_wider_dtype_buffer_count_bytes(self):
        """The buffer may be of any dtype: views are in bytes, and types line up with them."""
        with Ring.create(capacity=1 << 12) as ring:
            w = ring.writer()
            w.try_write(b"abc", type_id=7)
            w.try_write(b"defgh", type_id=9)
            buf, lens, types = np.zeros(64, np.uint32), np.zeros(4, np.uint32), np.zeros(4, np.uint32)
            read = ring.reader().batch_reader(buf, lens, types)
            n = read()
            assert [(bytes(v), int(t)) for v, t in zip(read.views(n), types)] == [(b"abc", 7), (b"defgh", 9)]

    def test_bad_count_refused(self):
        """views(n) takes the count read() returned: more than lens holds, or not an int, is a ValueError."""
        with Ring.create(capacity=1 << 12) as ring:
            read = ring.reader().batch_reader(np.zeros(64, np.uint8), np.zeros(4, np.uint32))
            assert list(read.views(read())) == []
            for bad in (5, -1, 1.0, True):
                with pytest.raises(ValueError, match=f"n must be an int in 0..4 .*got {bad!r}"):
                    read.views(bad)


class TestBatchWriterList:
    def test_list_of_varying_sizes(self):
        """batch_writer over a list of records of varying sizes and types (bytes, bytearray, memoryview, a
        uint16 array whose len is not its byte count): each arrives exactly, walking start through the list."""
        rnd = random.Random(7)
        records = []
        for i in range(300):
            b = rec(i, rnd.randrange(0, 200))
            records.append([bytes, bytearray, memoryview][i % 3](b) if i % 4 else
                           np.frombuffer(b + b"\0" * (len(b) % 2), np.uint16))
        want = [bytes(memoryview(x)) for x in records]
        with Ring.create(capacity=1 << 12) as ring:
            w, r = ring.writer(), ring.reader()
            write = w.batch_writer(records)
            done, got = 0, []
            while done < len(records):
                done += write(start=done)
                got += r.try_read_many(1000)
            assert got == want

    def test_list_refilled_in_place(self):
        """The list is read at each call: refill or grow it between calls."""
        with Ring.create(capacity=1 << 12) as ring:
            rows = [b"a", b"bb"]
            write = ring.writer().batch_writer(rows)
            assert write() == 2
            rows[:] = [b"ccc", b"dddd", b"eeeee"]
            assert write(n=2, start=1) == 2
            assert ring.reader().try_read_many() == [b"a", b"bb", b"dddd", b"eeeee"]

    def test_more_than_the_ring_holds(self):
        """A list far larger than the ring: write() takes what fits, returns that count, never blocks."""
        with Ring.create(capacity=1 << 10) as ring:
            rows = [bytes([i % 256]) * 100 for i in range(1000)]
            write = ring.writer().batch_writer(rows)
            n = write()
            assert 0 < n < 10
            assert write(start=n) == 0  # full
            assert ring.reader().try_read_many() == rows[:n]

    def test_too_large_writes_nothing(self):
        """A record over max_payload anywhere in the slice: RecordTooLargeError, nothing of it written."""
        with Ring.create(capacity=1 << 10) as ring:
            w, r = ring.writer(), ring.reader()
            w.try_write(b"queued")
            write = w.batch_writer([b"ok", b"x" * 600])
            with pytest.raises(RecordTooLargeError, match="record of 600 bytes exceeds max_payload 504"):
                write()
            assert r.try_read_many() == [b"queued"]

    def test_bad_records_and_bounds(self):
        """A non-buffer record is a TypeError naming it; a slice outside the list a ValueError; neither
        writes anything."""
        with Ring.create(capacity=1 << 10) as ring:
            w, r = ring.writer(), ring.reader()
            with pytest.raises(TypeError, match="every record must be bytes-like, got str: 'text'"):
                w.batch_writer([b"ok", "text"])()
            write = w.batch_writer([b"a", b"b"])
            for n, start in ((3, 0), (1, 2), (-1, 1), (None, 3)):
                with pytest.raises(ValueError, match="outside the 2 records of the list"):
                    write(n, start)
            with pytest.raises(TypeError, match="a 2-D C-contiguous array or a list of bytes-like records"):
                w.batch_writer((b"a", b"b"))
            assert r.try_read_many() == []

    def test_array_rows_default_to_the_rest(self):
        """The array form's write() with no n writes from start to the last row."""
        with Ring.create(capacity=1 << 12) as ring:
            rows = np.arange(32, dtype=np.uint8).reshape(4, 8)
            write = ring.writer().batch_writer(rows)
            assert write(start=1) == 3
            assert ring.reader().try_read_many() == [bytes(rows[i]) for i in (1, 2, 3)]
