"""A wait whose deadline has already passed (a zero timeout) answers at once in every wait mode (csrc/ep_wait.c):
tests/c/wait_deadline.c calls the eventcount with a ready() that counts its calls. Before the fix a spin or
hybrid wait polled it 66 times (64 spin turns before its first clock read) for a deadline it was already past,
which cost every FrameReader.read_frame() that found the ring empty ~2 us of spinning; RingReader.wait(0)'s
result is unchanged."""

from __future__ import annotations

from _cbuild import PLAIN_FLAGS, RING_CORE, build, run, sources

from edgepipe import Ring

SOURCES = sources("wait_deadline.c", *RING_CORE)


def test_an_expired_deadline_returns_without_spinning(tmp_path):
    exe = build(tmp_path, "wait_deadline", [*PLAIN_FLAGS, "-Werror"], SOURCES)
    r = run(exe, timeout=60)
    print(r.stdout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    assert "wait_deadline: OK" in r.stdout
    for mode in ("spin", "park", "hybrid"):
        assert f"{mode:<6} expired deadline: rc -110, ready() called" in r.stdout


def test_zero_timeout_waits_still_see_what_is_there():
    """The Python ends over the same wait: wait(0) is False on an empty ring and True once a record is queued,
    for every policy; read_frame(timeout_s=0) on an empty ring still raises its timeout."""
    import numpy as np
    import pytest

    from edgepipe import FrameReader, FrameWriter
    from edgepipe.errors import RingTimeoutError

    for wait in ("spin", "park", "hybrid"):
        with Ring.create(capacity=1 << 16) as ring:
            w, r = ring.writer(), ring.reader(wait=wait)
            assert r.wait(0) is False
            w.write(b"x")
            assert r.wait(0) is True and r.read(timeout_s=0) == b"x"
            assert r.wait(0) is False
            fw, fr = FrameWriter(w), FrameReader(r)
            with pytest.raises(RingTimeoutError):
                fr.read_frame(timeout_s=0)
            fw.write_frame(np.zeros((2, 2), np.uint8), pixel_format="GRAY")
            with fr.read_frame(timeout_s=0) as f:
                assert f.seq == 2  # seq counts ring records: the bytes record was the first
            w.close()
            r.close()
