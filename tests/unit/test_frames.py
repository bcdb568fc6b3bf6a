"""edgepipe.frames over a ring: claim/commit/abort, write/read round trips for every dtype and ndim, header
fields and stamps, alignment, the lifetime rule for arrays kept past their block, and typed errors for bad
shapes, frames too large for the ring and corrupt headers."""

from __future__ import annotations

import gc
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe import Ring, now_ns
from edgepipe._ffi import lib
from edgepipe.errors import (
    ImageHeaderError,
    ImageHeldError,
    ImageReleasedError,
    ImageShapeError,
    ImageTooLargeError,
    PeerClosedError,
    RingTimeoutError,
)
from edgepipe.frames import PIXEL_FORMATS, FrameReader, FrameWriter
from edgepipe.latest import LatestSlot


@pytest.fixture
def pair():
    ring = Ring.create(capacity=1 << 20)
    w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
    yield ring, w, r
    ring.close()


class TestRoundTrip:
    def test_claim_frame_fills_in_place_and_reader_sees_same_bytes(self, pair):
        """Pixels written through claim_frame arrive bit-exact, with the header fields the writer set."""
        _, w, r = pair
        img = np.random.default_rng(1).integers(0, 256, (48, 64, 3), np.uint8)
        t0 = now_ns()
        c = w.claim_frame(img.shape, pixel_format="RGB", source_id=7)
        with c as arr:
            arr[:] = img
            c.capture_ns = 123
        assert c.seq == 1 and w.frames_written == 1
        with r.read_frame(timeout_s=1) as f:
            assert np.array_equal(f.array, img)
            assert (f.seq, f.capture_ns, f.source_id, f.pixel_format) == (1, 123, 7, "RGB")
            assert f.shape == (48, 64, 3) and f.dtype == np.uint8
            assert t0 <= f.publish_ns <= now_ns()
            assert not f.array.flags.writeable
            assert f.array.ctypes.data % 64 == 0

    @pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "?"])
    def test_every_dtype_round_trips(self, pair, dtype):
        """Each supported dtype comes back with the same dtype and values."""
        _, w, r = pair
        a = (np.arange(24).reshape(2, 3, 4) % 2 == 0) if dtype == "?" else np.arange(24, dtype=dtype).reshape(2, 3, 4)
        w.write_frame(a, pixel_format="RAW")
        with r.read_frame(0) as f:
            assert f.dtype == a.dtype and np.array_equal(f.array, a)

    @pytest.mark.parametrize("shape", [(5,), (4, 6), (4, 6, 3), (2, 3, 4, 5)])
    def test_one_to_four_dims(self, pair, shape):
        """Arrays of 1 to 4 dimensions round-trip with their shape; the pixels are 64-byte aligned."""
        _, w, r = pair
        a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        w.write_frame(a, pixel_format="RAW")
        with r.read_frame(0) as f:
            assert f.shape == shape and np.array_equal(f.array, a)
            assert f.array.ctypes.data % 64 == 0

    def test_non_contiguous_input_is_copied_correctly(self, pair):
        """write_frame accepts a strided view and stores it C-contiguous."""
        _, w, r = pair
        a = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)[::2, ::3]
        w.write_frame(a)
        with r.read_frame(0) as f:
            assert np.array_equal(f.array, a)

    def test_seq_counts_and_copy_is_owned(self, pair):
        """seq increases by one per frame; copy() is writable and survives the block."""
        _, w, r = pair
        seqs = [w.write_frame(np.full((4, 4), i, np.uint8), pixel_format="GRAY") for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        kept = []
        for i in range(5):
            with r.read_frame(0) as f:
                assert f.seq == i + 1
                kept.append(f.copy())
        assert [int(k[0, 0]) for k in kept] == list(range(5))
        kept[0][0, 0] = 99  # owned and writable

    def test_exception_in_block_abandons_the_frame(self, pair):
        """An exception inside claim_frame's block publishes nothing and leaves the ring usable."""
        _, w, r = pair
        with pytest.raises(RuntimeError):
            with w.claim_frame((8, 8), pixel_format="GRAY") as arr:
                arr[:] = 1
                raise RuntimeError("decoder failed")
        assert r.try_read_frame() is None
        w.write_frame(np.zeros((8, 8), np.uint8), pixel_format="GRAY")
        with r.read_frame(0) as f:
            assert f.seq == 1

    def test_yuv_layouts(self, pair):
        """NV12 and I420 frames are (h*3/2, w) uint8 planes; other layouts are refused."""
        _, w, r = pair
        w.write_frame(np.zeros((720, 640), np.uint8), pixel_format="NV12")
        with r.read_frame(0) as f:
            assert f.pixel_format == "NV12"
        with pytest.raises(ImageShapeError, match="I420"):
            w.write_frame(np.zeros((480, 640), np.uint16), pixel_format="I420")

    def test_frames_iterator_ends_when_producer_closes(self, pair):
        """frames() yields every queued frame, then stops once the producer closed."""
        _, w, r = pair
        for i in range(3):
            w.write_frame(np.full((2, 2), i, np.uint8), pixel_format="GRAY")
        w.close()
        assert [int(f.array[0, 0]) for f in r.frames(timeout_s=1)] == [0, 1, 2]


class TestNonBlocking:
    def test_try_read_empty_returns_none_and_read_times_out(self, pair):
        """An empty ring: try_read_frame gives None, read_frame raises RingTimeoutError."""
        _, _, r = pair
        assert r.try_read_frame() is None
        with pytest.raises(RingTimeoutError):
            r.read_frame(timeout_s=0.01)

    def test_try_write_full_returns_none_and_nothing_is_lost(self):
        """A full ring: try_write_frame returns None; the queued frames still read back in order."""
        with Ring.create(capacity=1 << 16) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            seqs = []
            while (s := w.try_write_frame(np.full((64, 64), len(seqs), np.uint8), pixel_format="GRAY")) is not None:
                seqs.append(s)
            assert len(seqs) >= 2
            with pytest.raises(RingTimeoutError):
                w.write_frame(np.zeros((64, 64), np.uint8), pixel_format="GRAY", timeout_s=0.01)
            got = []
            while (c := r.try_read_frame()) is not None:
                with c as f:
                    got.append((f.seq, int(f.array[0, 0])))
            assert got == [(s, i) for i, s in enumerate(seqs)]

    def test_reader_gets_peer_closed_after_draining(self, pair):
        """Once the producer closed, queued frames still read, then PeerClosedError."""
        _, w, r = pair
        w.write_frame(np.ones((2, 2), np.uint8), pixel_format="GRAY")
        w.close()
        with r.read_frame(0) as f:
            assert f.seq == 1
        with pytest.raises(PeerClosedError):
            r.read_frame(timeout_s=1)


class TestLifetime:
    def test_array_after_block_raises(self, pair):
        """Frame.array after the block raises ImageReleasedError naming the seq."""
        _, w, r = pair
        w.write_frame(np.zeros((2, 2), np.uint8), pixel_format="GRAY")
        with r.read_frame(0) as f:
            pass
        with pytest.raises(ImageReleasedError, match="seq 1"):
            f.array

    def test_kept_array_pins_its_record_and_never_sees_recycled_bytes(self):
        """An array kept past its block keeps its record held: the producer cannot overwrite those bytes
        (the ring fills up instead), the next read raises ImageHeldError, and once the array is dropped
        reading continues with nothing lost."""
        with Ring.create(capacity=1 << 16) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            w.write_frame(np.full((64, 64), 11, np.uint8), pixel_format="GRAY")
            with r.read_frame(0) as f:
                kept = f.array[8:16]  # a view of the view escapes
            written = 1
            for i in range(100):  # try hard to recycle the bytes under `kept`
                if w.try_write_frame(np.full((64, 64), 200 + i % 50, np.uint8), pixel_format="GRAY") is None:
                    break
                written += 1
            assert written < 100  # the held record stopped the producer
            assert (kept == 11).all()
            with pytest.raises(ImageHeldError, match="seq 1"):
                r.read_frame(0)
            assert r.held_seq == 1
            del kept
            got = []
            while (c := r.try_read_frame()) is not None:
                with c as fr:
                    got.append(fr.seq)
            assert got == list(range(2, written + 1))

    def test_array_in_reference_cycle_is_collected_on_next_read(self, pair):
        """A kept array that is only garbage in a reference cycle is collected by the next read."""
        _, w, r = pair
        for _ in range(2):
            w.write_frame(np.zeros((4, 4), np.uint8), pixel_format="GRAY")
        with r.read_frame(0) as f:
            cyc = [f.array]
            cyc.append(cyc)
        del cyc
        with r.read_frame(0) as f:
            assert f.seq == 2

    def test_writer_array_is_read_only_after_publish(self, pair):
        """The writer's array cannot be written through after its block (it would change a published frame)."""
        _, w, _ = pair
        with w.claim_frame((4, 4), pixel_format="GRAY") as arr:
            arr[:] = 1
        with pytest.raises(ValueError):
            arr[0, 0] = 2


class TestBadInput:
    def test_frame_too_large_names_sizes(self, pair):
        """A frame over max_frame_bytes raises ImageTooLargeError giving both sizes; nothing is written."""
        _, w, r = pair
        with pytest.raises(ImageTooLargeError, match=r"1080, 1920, 3.*6220984 bytes.*max_payload is 524280"):
            w.claim_frame((1080, 1920, 3))
        assert r.try_read_frame() is None

    @pytest.mark.parametrize(
        "shape,dtype,fmt,match",
        [
            ((4, 4, 4), "u1", "BGR", r"\(height, width, 3\), got \(4, 4, 4\)"),
            ((4, 4, 3), "u1", "GRAY", "GRAY"),
            ((1, 2, 3, 4, 5), "u1", "RAW", "5 dims"),
            ((4, 0), "u1", "RAW", r"got shape \(4, 0\)"),
            ((4, 4), "c8", "RAW", "'<c8'"),
            ((4, 4), ">u2", "RAW", "'>u2'"),
            ((4, 4), "u1", "YUYV", "'YUYV'"),
        ],
    )
    def test_bad_shape_dtype_or_format(self, pair, shape, dtype, fmt, match):
        """Unsupported shapes, dtypes and pixel formats raise ImageShapeError naming the value."""
        _, w, _ = pair
        with pytest.raises(ImageShapeError, match=match):
            w.claim_frame(shape, dtype, pixel_format=fmt)

    def test_assigning_wrong_shape_into_claim_fails_and_aborts(self, pair):
        """Copying a mismatched array into a claimed slot raises and publishes nothing."""
        _, w, r = pair
        with pytest.raises(ValueError):
            with w.claim_frame((4, 4, 3)) as arr:
                arr[:] = np.zeros((5, 4, 3), np.uint8)
        assert r.try_read_frame() is None

    def test_copy_from_refuses_a_mismatched_array(self, pair):
        """claim.copy_from raises ImageShapeError naming both layouts for a wrong shape or dtype; the
        claim is abandoned and nothing is published."""
        _, w, r = pair
        c = w.claim_frame((4, 4, 3))
        with pytest.raises(ImageShapeError, match=r"\(5, 4, 3\) uint8 does not match the claimed slot \(4, 4, 3\)"):
            with c:
                c.copy_from(np.zeros((5, 4, 3), np.uint8))
        c = w.claim_frame((4, 4, 3))
        with pytest.raises(ImageShapeError, match="float32"):
            with c:
                c.copy_from(np.zeros((4, 4, 3), np.float32))
        assert r.try_read_frame() is None
        c = w.claim_frame((4, 4, 3))
        with c:
            c.copy_from(np.full((4, 4, 3), 6, np.uint8))
        with r.read_frame(0) as f:
            assert int(f.array.sum()) == 6 * 48

    def test_pixel_formats_constant(self):
        """PIXEL_FORMATS lists the names in the order of the C codes."""
        assert PIXEL_FORMATS == ("BGR", "RGB", "GRAY", "NV12", "I420", "RAW")
        assert lib.EP_PIX_RAW == PIXEL_FORMATS.index("RAW")

    def test_wrapping_the_wrong_end_is_a_type_error(self, pair):
        """FrameWriter needs a RingWriter and FrameReader a RingReader."""
        ring, _, _ = pair
        with pytest.raises(TypeError, match="RingWriter"):
            FrameWriter(object())
        with pytest.raises(TypeError, match="RingReader"):
            FrameReader("ring")


def _corrupt(ring, w, r, field_off: int, fmt: str, value) -> None:
    """Write a frame, then scribble ``value`` into its header at ``field_off``."""
    with w.claim_frame((8, 8), pixel_format="GRAY") as arr:
        arr[:] = 0
    view = r._r.try_peek()  # the record in place; the ring's data area is writable memory
    off = r._r._io.off
    data = ring.region.buffer()[lib.EP_RING_DATA_OFF:]
    struct.pack_into(fmt, data, off + field_off, value)
    del view


class TestCorruptHeader:
    @pytest.mark.parametrize(
        "field,off,fmt,value,match",
        [
            ("magic", 0, "<I", 0xDEADBEEF, "magic = '0xdeadbeef'"),
            ("version", 4, "<H", 9, "version = 9"),
            ("dtype", 6, "<B", 77, "dtype = 77"),
            ("ndim", 7, "<B", 6, "ndim = 6"),
            ("pixel_format", 8, "<I", 42, "pixel_format = 42"),
            ("data_off", 12, "<I", 1 << 30, "data_off = 1073741824"),
            ("nbytes", 16, "<Q", 65, "nbytes = 65"),
            ("shape", 56, "<Q", 0, "shape = "),
            ("strides", 88, "<q", 3, r"strides = \(3, 1\)"),
        ],
    )
    def test_corrupt_field_is_named_and_record_skipped(self, pair, field, off, fmt, value, match):
        """A header field that cannot be right raises ImageHeaderError naming the field and value; the
        bad record is skipped and the next frame reads fine."""
        ring, w, r = pair
        _corrupt(ring, w, r, off, fmt, value)
        w.write_frame(np.full((8, 8), 5, np.uint8), pixel_format="GRAY")
        with pytest.raises(ImageHeaderError, match=match) as ei:
            r.read_frame(0)
        assert ei.value.field == field
        assert r.corrupt == 1
        with r.read_frame(0) as f:
            assert f.seq == 2 and int(f.array[0, 0]) == 5

    def test_foreign_record_type_is_refused(self, pair):
        """A plain ring record (not a frame) raises ImageHeaderError naming its type."""
        ring, _, r = pair
        ring._handles[0].try_write(b"x" * 200, type_id=3)
        with pytest.raises(ImageHeaderError, match="type 0x3"):
            r.read_frame(0)
        gc.collect()


class TestProperties:
    @settings(max_examples=60, deadline=None)
    @given(
        dtype=st.sampled_from(["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "?"]),
        shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple),
        seed=st.integers(0, 2**32 - 1),
        source_id=st.integers(0, 2**64 - 1),
        capture_ns=st.integers(-(2**63), 2**63 - 1),
    )
    def test_any_array_round_trips_through_ring_and_latest_slot(self, dtype, shape, seed, source_id, capture_ns):
        """Any supported dtype and shape of 1-4 dims comes back bit-exact, with its header fields, from a
        ring and from a latest slot, and the pixels are 64-byte aligned."""
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 256, int(np.prod(shape)) * np.dtype(dtype).itemsize, np.uint8).view(dtype).reshape(shape)
        with Ring.create(capacity=1 << 18) as ring, LatestSlot.create(None, 8 * 9**4) as slot:
            for w, r in ((FrameWriter(ring.writer()), FrameReader(ring.reader())), (slot.writer(), slot.reader())):
                w.write_frame(a, pixel_format="RAW", source_id=source_id, capture_ns=capture_ns)
                with r.read_frame(0) as f:
                    assert f.dtype == a.dtype and f.shape == a.shape
                    assert f.array.tobytes() == a.tobytes()
                    assert (f.source_id, f.capture_ns, f.seq) == (source_id, capture_ns, 1)
                    assert f.array.ctypes.data % 64 == 0


class TestReadWithoutWith:
    def test_ring_read_frame_dropped_unentered_gives_the_frame_back(self):
        """A read_frame() result dropped without a with block releases its frame; the next read continues."""
        with Ring.create(capacity=1 << 16) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            for i in range(3):
                w.write_frame(np.full((4, 4), i, np.uint8), pixel_format="GRAY")
            r.read_frame(0)  # never entered
            with r.read_frame(0) as f:
                assert (f.seq, int(f.array[0, 0])) == (2, 1)
            assert r.frames_read == 2

    def test_ring_read_frame_kept_unentered_names_the_cause(self):
        """While an unentered read_frame() result is still referenced, the next read says why it must wait."""
        with Ring.create(capacity=1 << 16) as ring:
            w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())
            for i in range(2):
                w.write_frame(np.full((4, 4), i, np.uint8), pixel_format="GRAY")
            ctx = r.read_frame(0)
            with pytest.raises(ImageHeldError, match="without a with"):
                r.read_frame(0)
            del ctx
            with r.read_frame(0) as f:
                assert f.seq == 2

    def test_latest_read_frame_dropped_unentered_gives_the_buffer_back(self):
        """On a latest slot, a dropped unentered read gives its buffer back and the newest frame reads."""
        with LatestSlot.create(None, 1024) as s:
            w, r = s.writer(), s.reader()
            w.write_frame(np.ones((4, 4), np.uint8), pixel_format="GRAY")
            r.read_frame(0)
            w.write_frame(np.full((4, 4), 2, np.uint8), pixel_format="GRAY")
            with r.read_frame(0) as f:
                assert (f.seq, int(f.array[0, 0])) == (2, 2)
