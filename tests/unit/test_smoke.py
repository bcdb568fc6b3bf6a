"""Smoke test: the compiled core imports, the clock reads, and one record crosses a ring.

Kept free of fixtures and of anything slow so it also runs against a freshly built wheel
(``pip install dist/edgepipe-*.whl && pytest tests/unit/test_smoke.py``).
"""

from __future__ import annotations

import time

import edgepipe
import edgepipe._ffi
from edgepipe import clock

# 2020-01-01T00:00:00Z: any wall clock before this is not set at all.
_WALL_FLOOR_NS = 1_577_836_800 * 10**9


class TestImport:
    def test_ffi_module_exposes_ffi_and_lib(self):
        """The compiled extension exposes cffi's ``ffi`` and ``lib`` with the ring entry points."""
        assert hasattr(edgepipe._ffi, "ffi")
        for name in ("ep_ring_try_write", "ep_ring_try_read", "ep_shm_create", "ep_clock_now_ns"):
            assert callable(getattr(edgepipe._ffi.lib, name)), name

    def test_fast_path_extension_is_built_and_used(self):
        """edgepipe._fast (the GIL-keeping try calls, built by the same setup.py) is in the install, and the
        ring ends run on it."""
        import edgepipe._fast

        assert issubclass(edgepipe.RingWriter, edgepipe._fast.RingWriterCore)
        assert issubclass(edgepipe.RingReader, edgepipe._fast.RingReaderCore)
        assert edgepipe.RingWriter.try_write is edgepipe._fast.RingWriterCore.__dict__["try_write"]

    def test_layout_constants_are_compiled_in(self):
        """The header constants reach Python with the values DESIGN.md describes."""
        lib = edgepipe._ffi.lib
        assert lib.EP_REC_HDR == 8
        assert lib.EP_REC_PAD == 0xFFFFFFFF
        assert lib.EP_RING_MIN_CAPACITY == 64
        assert lib.EP_RING_VERSION >= 1


class TestClock:
    def test_now_ns_increases(self):
        """Two RAW readings a millisecond apart are strictly increasing."""
        t0 = clock.now_ns()
        time.sleep(0.001)
        t1 = clock.now_ns()
        assert isinstance(t0, int)
        assert t1 > t0 > 0

    def test_monotonic_and_wall_are_plausible(self):
        """monotonic_ns is positive and wall_ns is a time after 2020."""
        assert clock.monotonic_ns() > 0
        assert clock.wall_ns() > _WALL_FLOOR_NS

    def test_mapping_is_consistent(self):
        """mapping() maps its own RAW instant to its own wall instant, with a small positive uncertainty."""
        m = clock.mapping()
        assert m.raw_to_wall_ns(m.raw_ns) == m.wall_ns
        assert m.raw_to_mono_ns(m.raw_ns) == m.mono_ns
        assert 0 < m.uncertainty_ns < 10_000_000


class TestRoundTrip:
    def test_one_record_crosses_an_anonymous_ring(self):
        """A record written to a fresh memfd ring reads back byte for byte."""
        with edgepipe.Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader()
            assert w.try_write(b"smoke", type_id=5)
            assert r.try_read() == b"smoke"
            assert r.last_type == 5
