"""What the segment under a ring or latest slot can do to the processes that map it (issue 14 points 7 and 8).

- Truncation: a named segment shrunk by another process of the same uid makes any access beyond its new end
  raise SIGBUS. The ends check the size on their slow paths (open, the peer checks of waits, status), and a
  SIGBUS guard (csrc/ep_peer.c) absorbs a fault in a hot-path copy; either way the process that notices
  raises RingCorruptError. Each case runs in a subprocess, so a SIGBUS fails the test instead of killing
  pytest.
- Reservation: creating a segment reserves its memory (fallocate), so a ring the machine can't back fails at
  create with RingNoMemoryError naming the size, instead of a SIGBUS at some later write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgepipe import Ring
from edgepipe._ffi import lib
from edgepipe.errors import RingCorruptError
from edgepipe.latest import LatestSlot

import edgepipe.errors as errors

ROOT = Path(__file__).resolve().parents[2]
SHM_DIR = "/dev/shm"


def _run(script: str, timeout: float = 120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


_TRUNCATE = """
import os, sys, threading, time
from edgepipe import Ring
from edgepipe.errors import RingCorruptError
from edgepipe.latest import LatestSlot
name, case = sys.argv[1], sys.argv[2]
short = 4096 + 512                                   # the control block survives, the data does not
if case.startswith("latest"):
    seg = LatestSlot.create(name, 4096, 3)
    w, r = seg.writer(), seg.reader(spin_ns=0)
else:
    seg = Ring.create(name, capacity=1 << 16)
    w, r = seg.writer(wait="park"), seg.reader(wait="park")
try:
    if case == "ring-blocked-writer":
        while w.try_write(b"x" * 1000):
            pass                                         # full: the next write waits for room
    def truncate_soon():
        time.sleep(0.3)                                  # the end under test is parked by then
        fd = os.open("/dev/shm/edgepipe." + name, os.O_RDWR)
        os.ftruncate(fd, short)                          # "another process": same uid, by name
        os.close(fd)
    t = threading.Thread(target=truncate_soon)
    t.start()
    try:
        if case == "ring-blocked-reader":
            r.read(timeout_s=10)
        elif case == "ring-blocked-writer":
            w.write(b"y" * 1000, timeout_s=10)
        elif case == "latest-blocked-reader":
            r.read_frame(timeout_s=10)
        print("no error")
    except RingCorruptError as e:
        print("RingCorruptError", "truncated" in str(e))
    except Exception as e:
        print(type(e).__name__, e)
    t.join()
    for what, call in (("status", seg.status), ("writer", seg.writer)):
        try:
            call()
            print(what, "no error")
        except RingCorruptError as e:
            print(what, "RingCorruptError", "truncated" in str(e))
finally:
    seg.unlink()
    seg.close()
"""


class TestTruncatedSegment:
    @pytest.mark.parametrize("case", ["ring-blocked-reader", "ring-blocked-writer", "latest-blocked-reader"])
    def test_truncation_is_reported_as_corrupt_not_a_crash(self, shm_name, case):
        """A named segment truncated (by name, as another process would) while an end is parked on it turns
        that wait into RingCorruptError saying it was truncated; status() and opening an end raise the same;
        no process dies of SIGBUS."""
        r = _run(_TRUNCATE.replace("sys.argv[1], sys.argv[2]", f"{shm_name!r}, {case!r}"))
        assert r.returncode == 0, f"exit {r.returncode} (SIGBUS is -7)\n{r.stdout}\n{r.stderr[-3000:]}"
        assert r.stdout.split("\n")[:3] == ["RingCorruptError True", "status RingCorruptError True",
                                            "writer RingCorruptError True"], r.stdout


_HOT_TRUNCATE = """
import faulthandler; faulthandler.dump_traceback_later(90, exit=True)  # a hang shows every thread's stack
import os, sys, threading, time
import numpy as np
from edgepipe import Ring
from edgepipe.errors import RingCorruptError
from edgepipe.latest import LatestSlot
name, kind = sys.argv[1], sys.argv[2]
seg = Ring.create(name, capacity=1 << 20) if kind.startswith("ring") else LatestSlot.create(name, 1 << 16, 3)
w, r = seg.writer(), seg.reader()
def truncate_soon():
    time.sleep(0.3)
    fd = os.open("/dev/shm/edgepipe." + name, os.O_RDWR)
    os.ftruncate(fd, 4096)                               # the control block survives, every data page goes
    os.close(fd)
t = threading.Thread(target=truncate_soon)
t.start()
n = 0
try:
    if kind.startswith("ring"):
        payload = b"x" * 3000
        buf = bytearray(4096)
        take = (lambda: r.read_into(buf)) if kind == "ring-into" else r.try_read
        while True:                                      # never waits: only hot paths touch the data
            if not w.try_write(payload):
                while take() is not None:
                    pass
            n += 1
    else:
        img = np.full((64, 64), 7, np.uint8)
        while True:
            w.write_frame(img, pixel_format="GRAY")
            f = r.try_read_frame()
            if f is not None:
                with f as fr:
                    assert int(fr.array.max()) in (0, 7)
            n += 1
except RingCorruptError as e:
    print("RingCorruptError", "truncated" in str(e), n > 0)
t.join()
seg.unlink()
seg.close()
"""


class TestTruncatedUnderHotPath:
    @pytest.mark.parametrize("kind", ["ring", "ring-into", "latest"])
    def test_truncation_during_copies_is_an_error_not_sigbus(self, shm_name, kind):
        """A named segment truncated while one process busy-writes and reads it with the non-blocking calls
        (only hot-path copies touch the data, no slow-path check runs; the ring's try_write, try_read and
        read_into run in edgepipe._fast, with the GIL kept) ends with RingCorruptError in that
        process instead of killing it with SIGBUS: the guard absorbs the fault and the next C call reports
        it."""
        r = _run(_HOT_TRUNCATE.replace("sys.argv[1], sys.argv[2]", f"{shm_name!r}, {kind!r}"))
        path = os.path.join(SHM_DIR, "edgepipe." + shm_name)
        left = os.path.exists(path)
        if left:
            os.unlink(path)
        assert r.returncode == 0, f"exit {r.returncode} (SIGBUS is -7)\n{r.stdout}\n{r.stderr[-3000:]}"
        assert r.stdout.strip() == "RingCorruptError True True", r.stdout + r.stderr[-2000:]
        assert not left, f"the subprocess left {path}: {r.stdout} {r.stderr[-2000:]}"


class TestReservedAtCreate:
    @pytest.mark.parametrize("named", [False, True], ids=["memfd", "named"])
    def test_unbackable_ring_fails_at_create_naming_the_size(self, shm_name, named):
        """Ring.create(capacity=1 TiB) on a machine with far less memory raises RingNoMemoryError (also a
        MemoryError) naming the size, and leaves no segment behind, instead of succeeding and dying of SIGBUS
        later."""
        cap = 1 << 40
        with pytest.raises(MemoryError) as ei:
            Ring.create(shm_name if named else None, capacity=cap)
        assert isinstance(ei.value, errors.RingNoMemoryError)
        assert str(lib.ep_ring_region_size(cap)) in str(ei.value)
        assert not os.path.exists(os.path.join(SHM_DIR, "edgepipe." + shm_name))

    @pytest.mark.parametrize("kind", ["ring", "latest"])
    def test_created_segment_is_backed_by_memory(self, kind):
        """Every byte of a new segment is allocated at create (st_blocks covers its size): nothing is left to
        fail on first touch."""
        seg = Ring.create(capacity=1 << 20) if kind == "ring" else LatestSlot.create(None, 1 << 18, 3)
        try:
            st = os.fstat(seg.fd)
            assert st.st_blocks * 512 >= st.st_size > 0
        finally:
            seg.close()


def test_corrupt_error_is_a_ring_error():
    """RingCorruptError stays a RingError (what callers catch)."""
    assert issubclass(RingCorruptError, errors.RingError)
