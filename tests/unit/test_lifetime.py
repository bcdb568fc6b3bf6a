"""Lifetimes under concurrency and hostile input: closing an end while another thread (or a signal
handler) is blocked in it, views that outlive the ring, Ctrl-C during a wait, and a corrupt control block
or data area. None of these may crash the interpreter or hang; each ends in a typed error."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from edgepipe import Ring, RingClosedError, RingCorruptError
from edgepipe._ffi import lib

WAITS = ["spin", "park", "hybrid"]
TAIL_OFF, HEAD_OFF = 128, 256  # byte offsets of tail and head in the control block (csrc/ep_ring.c)
DATA = lib.EP_RING_DATA_OFF


def _blocked(fn):
    """Run fn in a thread; return (thread, box) where box gets the exception or result."""
    box: list = []

    def run():
        try:
            box.append(fn())
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


class TestCloseWhileBlocked:
    @pytest.mark.parametrize("wait", WAITS)
    def test_reader_closed_from_another_thread(self, wait):
        """A reader blocked in read() raises RingClosedError when another thread closes it."""
        with Ring.create(capacity=4096) as ring:
            ring.writer()
            r = ring.reader(wait=wait)
            t, box = _blocked(lambda: r.read(timeout_s=30))
            time.sleep(0.1)  # let it block (spinning or parked); correctness does not depend on it
            r.close()
            t.join(30)
            assert not t.is_alive()
            assert isinstance(box[0], RingClosedError)

    @pytest.mark.parametrize("wait", WAITS)
    def test_writer_closed_from_another_thread(self, wait):
        """A writer blocked in write() on a full ring raises RingClosedError when another thread closes
        it, and the records already written stay readable."""
        with Ring.create(capacity=256) as ring:
            w = ring.writer(wait=wait)
            r = ring.reader()
            n = 0
            while w.try_write(bytes([n]) * 40):
                n += 1
            t, box = _blocked(lambda: w.write(b"x" * 40, timeout_s=30))
            time.sleep(0.1)
            w.close()
            t.join(30)
            assert isinstance(box[0], RingClosedError)
            assert [r.try_read() for _ in range(n)] == [bytes([i]) * 40 for i in range(n)]

    def test_signal_handler_closes_the_reader_it_interrupted(self):
        """A signal handler that closes the reader its own thread is blocked on does not deadlock: the
        read raises RingClosedError."""
        with Ring.create(capacity=4096) as ring:
            ring.writer()
            r = ring.reader(wait="park")
            old = signal.signal(signal.SIGUSR1, lambda *_: r.close())
            try:
                timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
                timer.start()
                with pytest.raises(RingClosedError):
                    r.read(timeout_s=30)
                timer.join()
            finally:
                signal.signal(signal.SIGUSR1, old)

    @pytest.mark.parametrize("wait", WAITS)
    def test_keyboard_interrupt_reaches_a_blocked_read(self, wait):
        """SIGINT during read() raises KeyboardInterrupt in the reader (long before its 30 s timeout),
        and the reader still works afterwards."""
        with Ring.create(capacity=4096) as ring:
            w = ring.writer()
            r = ring.reader(wait=wait)
            timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                r.read(timeout_s=30)
            timer.join()
            assert time.monotonic() - t0 < 25  # it did not simply run out the timeout
            w.try_write(b"still fine")
            assert r.read(timeout_s=1) == b"still fine"


class TestViewsOutliveTheRing:
    def _run(self, body: str) -> subprocess.CompletedProcess:
        # In a child process: a use-after-unmap would kill it with SIGSEGV, not the test runner.
        code = "from edgepipe import Ring\nimport numpy as np\n" + textwrap.dedent(body)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    def test_peeked_view_readable_after_close(self):
        """A view from try_peek() kept past ring.close() still reads its bytes instead of crashing."""
        p = self._run("""
            ring = Ring.create(capacity=4096)
            w, r = ring.writer(), ring.reader()
            w.try_write(b"kept")
            v = r.try_peek()
            ring.close()
            print(bytes(v).decode())
        """)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "kept"

    def test_numpy_array_over_a_claim_survives_close(self):
        """A numpy array made from a claim's view keeps the pages mapped after close (no SIGSEGV)."""
        p = self._run("""
            ring = Ring.create(capacity=4096)
            w = ring.writer()
            with w.claim(16) as buf:
                a = np.frombuffer(buf, np.uint8)
                buf[:] = bytes(range(16))
            ring.close()
            print(int(a.sum()))
        """)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == str(sum(range(16)))

    def test_view_after_with_block_is_released(self):
        """A claim's memoryview used after its with-block raises ValueError instead of writing into a
        slot the ring has handed on."""
        with Ring.create(capacity=4096) as ring:
            w = ring.writer()
            with w.claim(4) as buf:
                buf[:] = b"abcd"
            with pytest.raises(ValueError):
                buf[0] = 1


class TestHostileRegion:
    def _poke(self, ring: Ring, off: int, data: bytes) -> None:
        ring.region.buffer()[off : off + len(data)] = data

    def test_tail_far_ahead_is_corrupt_not_a_hang(self):
        """A tail more than a ring ahead of head makes the reader raise RingCorruptError at once."""
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader()
            w.try_write(b"ok")
            assert r.try_read() == b"ok"
            self._poke(ring, TAIL_OFF, struct.pack("<Q", 1 << 62))
            with pytest.raises(RingCorruptError):
                r.try_read()

    def test_padding_at_slot_zero_is_corrupt(self):
        """A padding record at slot 0 (which a real producer never writes) is refused, not looped on."""
        with Ring.create(capacity=4096) as ring:
            ring.writer()
            r = ring.reader()
            self._poke(ring, DATA, struct.pack("<II", 4096 - 8, 0xFFFFFFFF))
            self._poke(ring, TAIL_OFF, struct.pack("<Q", 4096))
            with pytest.raises(RingCorruptError):
                r.try_read()

    def test_oversized_header_is_corrupt_and_nothing_is_copied(self):
        """A header whose length exceeds max_payload is refused by every read path, and the good records
        before it are still delivered first."""
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader()
            w.try_write(b"good")  # 8 + 8 bytes at position 0
            self._poke(ring, DATA + 16, struct.pack("<II", 1 << 30, 1))
            self._poke(ring, TAIL_OFF, struct.pack("<Q", 32))
            buf, lens = np.zeros(64, np.uint8), np.zeros(4, np.uint32)
            assert r.read_packed(buf, lens) == 1 and bytes(buf[:4]) == b"good"
            for call in (r.try_read, r.try_peek, lambda: r.try_read_many(4),
                         lambda: r.read_into(bytearray(64)), lambda: r.read_packed(buf, lens)):
                with pytest.raises(RingCorruptError):
                    call()

    def test_misaligned_head_refuses_a_new_reader(self):
        """A reader will not open on a ring whose head is not 8-byte aligned."""
        with Ring.create(capacity=4096) as ring:
            self._poke(ring, HEAD_OFF, struct.pack("<Q", 3))
            self._poke(ring, TAIL_OFF, struct.pack("<Q", 8))
            with pytest.raises(RingCorruptError):
                ring.reader()
