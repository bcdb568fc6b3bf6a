"""Single-process micro-benchmarks with pytest-benchmark: the cost of one call of each hot path, from Python.

    pytest benchmarks/test_micro.py                      # a table of min/median/mean per call
    pytest benchmarks/test_micro.py --benchmark-json=out.json
    pytest benchmarks/test_micro.py --benchmark-compare  # against the last saved run (--benchmark-autosave)

These time the calls themselves (no second process, no waiting), so they are steadier than the two-process
benchmarks beside them and suit before/after comparisons of a change; they say nothing about hand-off latency
between processes, which the scripts in this folder measure. Each benchmark also asserts what it moved, so a
fast wrong answer fails. Not part of the default test run (the project's testpaths is tests/).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgepipe import FrameSocket, Madgwick, Ring
from edgepipe.frames import FrameReader, FrameWriter
from edgepipe.latest import LatestSlot

RECORD = bytes(range(64))


@pytest.fixture
def ring_ends():
    ring = Ring.create(capacity=1 << 20)
    yield ring.writer(), ring.reader()
    ring.close()


def test_ring_try_write_try_read_64b(benchmark, ring_ends):
    """One 64-byte record in and out of a ring (try_write + try_read)."""
    w, r = ring_ends

    def pair():
        w.try_write(RECORD)
        return r.try_read()

    assert benchmark(pair) == RECORD


def test_ring_batch_1024_records(benchmark, ring_ends):
    """1024 fixed 64-byte records through batch_writer / batch_reader (one C call each way)."""
    w, r = ring_ends
    rows = np.tile(np.frombuffer(RECORD, np.uint8), (1024, 1))
    out = np.zeros((1024, 64), np.uint8)
    lens = np.zeros(1024, np.uint32)
    write, read = w.batch_writer(rows), r.batch_reader(out, lens)

    def batch():
        write()
        return read()

    assert benchmark(batch) == 1024
    assert bytes(out[1023]) == RECORD


def test_frame_socket_1kb_send_recv(benchmark):
    """One 1 KB frame over a FrameSocket pair (send_bytes + recv_bytes, same process)."""
    a, b = FrameSocket.pair()
    payload = b"x" * 1024

    def pair():
        a.send_bytes(payload)
        return b.recv_bytes(timeout_s=1)

    try:
        assert benchmark(pair) == payload
    finally:
        a.close()
        b.close()


def test_madgwick_update_per_sample(benchmark):
    """One Madgwick IMU update through cffi (gyro rad/s, accel in any unit)."""
    f = Madgwick(beta=0.1, dt_s=0.001)
    q = benchmark(f.update, (0.01, -0.02, 0.03), (0.0, 0.0, 9.81))
    assert abs(sum(c * c for c in q) - 1.0) < 1e-9


def test_madgwick_batch_1000(benchmark):
    """1000 Madgwick updates in one batch call."""
    f = Madgwick(beta=0.1, dt_s=0.001)
    gyr = np.tile([0.01, -0.02, 0.03], (1000, 1))
    acc = np.tile([0.0, 0.0, 9.81], (1000, 1))
    qs = benchmark(f.update_batch, gyr, acc)
    assert qs.shape == (1000, 4) and np.allclose((qs**2).sum(axis=1), 1.0)


@pytest.mark.parametrize("shape", [(480, 640, 3), (1080, 1920, 3)], ids=["480p", "1080p"])
def test_frame_ring_write_read(benchmark, shape):
    """One uint8 frame copied into a frame ring (write_frame) and read back in place (read_frame)."""
    src = np.random.default_rng(0).integers(0, 255, shape, np.uint8)
    ring = Ring.create(capacity=1 << 24)
    w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())

    def pair():
        w.write_frame(src)
        with r.read_frame(0) as f:
            return int(f.array[-1, -1, -1])

    try:
        assert benchmark(pair) == int(src[-1, -1, -1])
    finally:
        ring.close()


def test_latest_slot_publish_take_480p(benchmark):
    """One 480x640x3 frame published to a latest slot and taken (write_frame + read_frame)."""
    src = np.random.default_rng(1).integers(0, 255, (480, 640, 3), np.uint8)
    slot = LatestSlot.create(None, src.nbytes)
    w, r = slot.writer(), slot.reader()

    def pair():
        w.write_frame(src)
        with r.read_frame(0) as f:
            return int(f.array[0, 0, 0])

    try:
        assert benchmark(pair) == int(src[0, 0, 0])
    finally:
        w.close()
        r.close()
        slot.close()


# -- a finite timeout on the ready path (issue 16): it must cost what timeout_s=None costs ---------------------
# Each call finds its record (or room) already there, so no case waits: compare the rows of one call across
# its timeouts (None, an int, a float) in the same run; callgrind_hot.py counts the same calls' instructions.
TIMEOUTS = [None, 60, 60.0]


@pytest.mark.parametrize("timeout_s", TIMEOUTS, ids=repr)
def test_ready_read_with_timeout(benchmark, ring_ends, timeout_s):
    """try_write + read(timeout_s) of a 64-byte record that is already queued."""
    w, r = ring_ends

    def call():
        w.try_write(RECORD)
        return r.read(timeout_s=timeout_s)

    assert benchmark(call) == RECORD


@pytest.mark.parametrize("timeout_s", TIMEOUTS, ids=repr)
def test_ready_write_with_timeout(benchmark, ring_ends, timeout_s):
    """write(timeout_s) of a 64-byte record into a ring with room, + try_read."""
    w, r = ring_ends

    def call():
        w.write(RECORD, timeout_s=timeout_s)
        return r.try_read()

    assert benchmark(call) == RECORD


@pytest.mark.parametrize("timeout_s", TIMEOUTS, ids=repr)
def test_ready_wait_with_timeout(benchmark, ring_ends, timeout_s):
    """try_write + wait(timeout_s) + try_read: wait finds the record there."""
    w, r = ring_ends

    def call():
        w.try_write(RECORD)
        ok = r.wait(timeout_s)
        return ok and r.try_read()

    assert benchmark(call) == RECORD


@pytest.mark.parametrize("timeout_s", TIMEOUTS, ids=repr)
def test_ready_wait_room_with_timeout(benchmark, ring_ends, timeout_s):
    """wait_room(64, timeout_s) + try_write + try_read: wait_room finds room there."""
    w, r = ring_ends

    def call():
        ok = w.wait_room(64, timeout_s)
        w.try_write(RECORD)
        return ok and r.try_read()

    assert benchmark(call) == RECORD


@pytest.mark.parametrize("timeout_s", TIMEOUTS, ids=repr)
def test_ready_read_frame_with_timeout(benchmark, timeout_s):
    """write_frame + read_frame(timeout_s) of a 48x64x3 frame through a frame ring."""
    src = np.zeros((48, 64, 3), np.uint8)
    src[-1, -1, -1] = 7
    ring = Ring.create(capacity=1 << 20)
    w, r = FrameWriter(ring.writer()), FrameReader(ring.reader())

    def call():
        w.write_frame(src, timeout_s=timeout_s)
        with r.read_frame(timeout_s) as f:
            return int(f.array[-1, -1, -1])

    try:
        assert benchmark(call) == 7
    finally:
        ring.close()


def test_bridge_clock_estimate_full_window(benchmark):
    """ClockEstimate.estimate() over a full window (4096 exchanges in bursts of 8, 250 ppm drift, trips of
    50-300 us): the receiving bridge recomputes it every 0.25 s holding the GIL, while its zenoh callbacks
    wait."""
    import random

    from edgepipe.bridge.clock import ClockEstimate

    rng = random.Random(7)
    est = ClockEstimate()
    t1 = 10**12
    for i in range(4096):
        t1 += 30_000_000 if i % 8 == 0 else 300_000
        out, back = rng.uniform(25_000, 150_000), rng.uniform(25_000, 150_000)
        remote = t1 + out + 3_700_000_000 + int(t1 * 250e-6)
        est.add(t1, int(remote), int(remote) + 10_000, int(t1 + out + 10_000 + back))
    e = benchmark(est.estimate)
    assert e is not None and e.samples == 4096
