"""The C core's calling contract (edgepipe.h), checked through the cffi binding: a NULL handle is -EBADF for
every exported handle function, status calls check the mapping size before reading, lengths travel as 64-bit
values (a record over 2 GiB is neither truncated nor published twice), and the latest slot's wait saturates
its deadline instead of overflowing.

Issue 14 points 2 and 6, issue 13's NULL-handle contract. Huge rings here are sparse memfds sized with
ftruncate and initialised by hand (Ring.create reserves memory, which is the point of another test): an
8 GiB ring costs a few pages, and a 4 GiB payload is a never-touched anonymous mapping.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgepipe import Ring
from edgepipe._ffi import ffi, lib
from edgepipe.errors import RecordTooLargeError
from edgepipe.latest import LatestSlot
from edgepipe.shm import SharedRegion

ROOT = Path(__file__).resolve().parents[2]

_NULL_CALLS = r"""
import json, sys
from edgepipe._ffi import ffi, lib
N = ffi.NULL
buf = ffi.new("char[]", 64)
u32 = ffi.new("uint32_t[]", 4)
calls = {
    "ep_ring_writer_close": lambda: lib.ep_ring_writer_close(N),
    "ep_ring_writer_set_wait": lambda: lib.ep_ring_writer_set_wait(N, lib.EP_WAIT_PARK, 0),
    "ep_ring_try_write": lambda: lib.ep_ring_try_write(N, buf, 8, 1),
    "ep_ring_write": lambda: lib.ep_ring_write(N, buf, 8, 1, 0),
    "ep_ring_claim": lambda: lib.ep_ring_claim(N, 8),
    "ep_ring_commit": lambda: lib.ep_ring_commit(N, 8, 1),
    "ep_ring_abort": lambda: lib.ep_ring_abort(N),
    "ep_ring_try_write_batch": lambda: lib.ep_ring_try_write_batch(N, buf, u32, 1, 1),
    "ep_ring_try_write_fixed": lambda: lib.ep_ring_try_write_fixed(N, buf, 8, 1, 1),
    "ep_ring_writer_wait": lambda: lib.ep_ring_writer_wait(N, 8, 0),
    "ep_ring_writer_cancel": lambda: lib.ep_ring_writer_cancel(N),
    "ep_ring_reader_close": lambda: lib.ep_ring_reader_close(N),
    "ep_ring_reader_set_wait": lambda: lib.ep_ring_reader_set_wait(N, lib.EP_WAIT_PARK, 0),
    "ep_ring_try_read": lambda: lib.ep_ring_try_read(N),
    "ep_ring_read": lambda: lib.ep_ring_read(N, 0),
    "ep_ring_peek": lambda: lib.ep_ring_peek(N),
    "ep_ring_release": lambda: lib.ep_ring_release(N),
    "ep_ring_try_read_batch": lambda: lib.ep_ring_try_read_batch(N, buf, 64, u32, u32, 4),
    "ep_ring_reader_wait": lambda: lib.ep_ring_reader_wait(N, 0),
    "ep_ring_reader_cancel": lambda: lib.ep_ring_reader_cancel(N),
    "ep_latest_writer_close": lambda: lib.ep_latest_writer_close(N),
    "ep_latest_writer_slot": lambda: lib.ep_latest_writer_slot(N),
    "ep_latest_publish": lambda: lib.ep_latest_publish(N),
    "ep_latest_reader_close": lambda: lib.ep_latest_reader_close(N),
    "ep_latest_reader_cancel": lambda: lib.ep_latest_reader_cancel(N),
    "ep_latest_reader_set_spin": lambda: lib.ep_latest_reader_set_spin(N, 0),
    "ep_latest_try_take": lambda: lib.ep_latest_try_take(N, 0),
    "ep_latest_wait": lambda: lib.ep_latest_wait(N, 0),
}
out = {}
for name, call in calls.items():
    print(name, flush=True)          # the last name printed is the one that crashed
    out[name] = call()
out["ep_ring_reader_io"] = int(lib.ep_ring_reader_io(N) == N)
out["ep_ring_reader_scratch"] = int(lib.ep_ring_reader_scratch(N) == N)
out["ep_latest_reader_owned"] = lib.ep_latest_reader_owned(N)
print("RESULT " + json.dumps(out))
"""


def _sparse_ring(capacity: int) -> Ring:
    """A ring over a memfd that is only ftruncated (no pages reserved): virtual size, a few real pages."""
    size = lib.ep_ring_region_size(capacity)
    fd = os.memfd_create("edgepipe-test-sparse")
    try:
        os.ftruncate(fd, size)
        region = SharedRegion.from_fd(fd)
    finally:
        os.close(fd)
    assert lib.ep_ring_init(region.address, region.size, capacity) == 0
    return Ring(region)


def _virtual_bytes(n: int) -> memoryview:
    """n readable bytes that cost no memory until touched (an anonymous private mapping)."""
    return memoryview(mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ))


class TestNullHandles:
    def test_every_handle_function_returns_ebadf_for_null(self):
        """Each exported function that takes a ring or latest-slot handle returns -EBADF for NULL (pointer
        getters return NULL, the owned mask 0) instead of dereferencing it; run in a subprocess, since
        before the fix the first such call crashed the interpreter."""
        r = subprocess.run([sys.executable, "-c", _NULL_CALLS], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 0, f"crashed (rc {r.returncode}) in {r.stdout.split()[-1:]}\n{r.stderr[-2000:]}"
        res = json.loads(r.stdout.split("RESULT ", 1)[1])
        pointers = {"ep_ring_reader_io", "ep_ring_reader_scratch"}
        bad = {k: v for k, v in res.items()
               if k not in pointers and k != "ep_latest_reader_owned" and v != -errno.EBADF}
        assert not bad, f"not -EBADF: {bad}"
        assert all(res[k] == 1 for k in pointers) and res["ep_latest_reader_owned"] == 0


class TestStatusChecksTheMappingSize:
    @pytest.mark.parametrize("kind", ["ring", "latest"])
    def test_status_of_a_mapping_too_small_for_the_control_block_reads_nothing(self, kind):
        """ep_ring_status / ep_latest_status given a mapping size below the control block return -EBADMSG
        and leave the output zeroed, without reading the (too short) mapping."""
        if kind == "ring":
            with Ring.create(capacity=4096) as seg:
                out = ffi.new("struct ep_ring_status *")
                assert lib.ep_ring_status(seg.region.address, lib.EP_RING_DATA_OFF - 1, out) == -errno.EBADMSG
                assert out.magic == 0 and out.capacity == 0
                assert lib.ep_ring_status(seg.region.address, seg.region.size, out) == 0
                assert out.capacity == 4096
        else:
            with LatestSlot.create(None, 4096, 3) as seg:
                out = ffi.new("struct ep_latest_status *")
                assert lib.ep_latest_status(seg.region.address, lib.EP_LATEST_CTL_SIZE - 1, out) == -errno.EBADMSG
                assert out.magic == 0 and out.nbuf == 0
                assert lib.ep_latest_status(seg.region.address, seg.region.size, out) == 0
                assert out.nbuf == 3


class TestLengthsBeyondInt:
    def test_max_payload_is_capped_by_the_u32_length_field(self):
        """On an 8 GiB ring (capacity/2 - 8 > 4 GiB) max_payload is EP_REC_MAX_LEN, what a record header's
        u32 length can say, not capacity/2 - 8."""
        with _sparse_ring(1 << 33) as ring:
            assert ring.max_payload == lib.EP_REC_MAX_LEN < (1 << 32)
            assert ring.status().max_payload == lib.EP_REC_MAX_LEN

    def test_record_over_4_gib_is_refused_up_front_naming_its_size(self):
        """try_write of a 4 GiB + 8 payload raises RecordTooLargeError naming the size (not OverflowError),
        and nothing is published."""
        n = (1 << 32) + 8
        with _sparse_ring(1 << 33) as ring:
            w = ring.writer()
            with pytest.raises(RecordTooLargeError) as ei:
                w.try_write(_virtual_bytes(n))
            assert str(n) in str(ei.value)
            with pytest.raises(RecordTooLargeError):
                w.claim(n)
            assert ring.status().records_written == 0

    def test_record_over_2_gib_commits_once_and_peeks_at_full_length(self):
        """A 2 GiB + 64 record claimed and committed in place (no copy: a few pages are touched) commits
        without error, exactly once, and the reader peeks it at its full length: lengths are never squeezed
        through a C int."""
        n = (1 << 31) + 64
        with _sparse_ring(1 << 33) as ring:
            w, r = ring.writer(), ring.reader()
            with w.claim(n, type_id=7) as buf:
                assert len(buf) == n
                buf[:4] = b"head"
                buf[-4:] = b"tail"
            assert ring.status().records_written == 1
            view = r.try_peek()
            assert view is not None and len(view) == n and r.last_type == 7
            assert bytes(view[:4]) == b"head" and bytes(view[-4:]) == b"tail"
            view.release()
            r.release()
            assert r.try_peek() is None
            assert ring.status().records_read == 1


class TestLatestWaitDeadline:
    def test_huge_timeout_saturates_instead_of_timing_out_at_once(self):
        """ep_latest_wait with a timeout near INT64_MAX waits (now + timeout saturates) and returns 0 when a
        frame is published, instead of overflowing into a deadline in the past and returning -ETIMEDOUT."""
        with LatestSlot.create(None, 4096, 3) as slot:
            w, r = slot.writer(), slot.reader()

            done = threading.Event()

            def publish_later():
                time.sleep(0.3)
                try:
                    w.write_frame(np.zeros((4, 4), np.uint8), pixel_format="GRAY")
                finally:
                    if not done.wait(30):
                        lib.ep_latest_reader_cancel(r._h)  # never hang the suite if the wait misses it

            t = threading.Thread(target=publish_later)
            t.start()
            try:
                rc = lib.ep_latest_wait(r._h, (1 << 63) - 1)
            finally:
                done.set()
                t.join()
            assert rc == 0
