"""The ring's GIL-keeping try calls (edgepipe._fast) keep the guarantees of the cffi calls they replace: the
end's state changes (lease, close, another thread's close) reach them through the one `_h` attribute, and
bad input gets the same typed errors. tests/property/test_fast_path_model.py compares the two paths step
by step.
"""

from __future__ import annotations

import threading

import pytest

from edgepipe import Ring
from edgepipe.errors import PeerClosedError, RingBusyError, RingClosedError
from edgepipe.ring import RingWriter


class TestEndState:
    def test_a_leased_writer_refuses_try_write_then_writes_after_release(self):
        """While a C loop holds the writer, try_write raises RingBusyError naming the owner (nothing
        written); after the lease is released the same writer writes again."""
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader()
            lease = w.lease("the IMU loop")
            with pytest.raises(RingBusyError, match="the IMU loop"):
                w.try_write(b"x")
            assert r.try_read() is None
            lease.release()
            assert w.try_write(b"y")
            assert r.try_read() == b"y"

    def test_closed_ends_raise_ring_closed_error(self):
        """After close(), try_write, try_read and read_into raise RingClosedError (not a crash)."""
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader()
            w.close()
            r.close()
            with pytest.raises(RingClosedError):
                w.try_write(b"x")
            with pytest.raises(RingClosedError):
                r.try_read()
            with pytest.raises(RingClosedError):
                r.read_into(bytearray(8))

    def test_close_from_another_thread_between_try_calls(self):
        """A thread closing the reader while another loops on try_read / read_into ends that loop with
        RingClosedError, or PeerClosedError once the writer is gone, never a crash or a wrong record."""
        with Ring.create(capacity=1 << 16) as ring:
            w, r = ring.writer(), ring.reader()
            seen, errors = [], []

            def loop():
                buf = bytearray(64)
                try:
                    i = 0
                    while True:
                        x = r.try_read() if i & 1 else (bytes(buf[:n]) if (n := r.read_into(buf)) is not None else None)
                        if x is not None:
                            seen.append(x)
                        i += 1
                except (RingClosedError, PeerClosedError) as e:
                    errors.append(e)

            t = threading.Thread(target=loop)
            t.start()
            for k in range(2000):
                while not w.try_write(k.to_bytes(8, "little")):
                    pass
            r.close()
            t.join(60)
            assert not t.is_alive()
            assert isinstance(errors[0], RingClosedError)
            assert seen == [k.to_bytes(8, "little") for k in range(len(seen))]


class TestBadInput:
    @pytest.mark.parametrize("bad, exc", [("text", TypeError), (12, TypeError), (None, TypeError)])
    def test_payload_that_is_not_bytes_like(self, bad, exc):
        """A non-buffer payload is a TypeError naming its type, the same as through cffi; nothing queued."""
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader()
            with pytest.raises(exc, match=type(bad).__name__):
                w.try_write(bad)
            with pytest.raises(exc, match=type(bad).__name__):
                RingWriter._cffi_try_write(w, bad)
            assert r.try_read() is None

    def test_record_too_big_for_buf_stays_queued(self):
        """read_into a buffer smaller than the next record raises ValueError with both sizes and leaves the
        record queued."""
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader()
            w.try_write(b"0123456789")
            with pytest.raises(ValueError, match="10 bytes but buf holds only 4"):
                r.read_into(bytearray(4))
            assert r.try_read() == b"0123456789"
