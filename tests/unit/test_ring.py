"""edgepipe.ring: Ring, RingWriter, RingReader and WaitPolicy.

Most tests use an anonymous (memfd) ring of CAP bytes with both ends in this process; named rings use the
``shm_name`` fixture and are unlinked inside the test. Tests that need a second process fork one
(``multiprocessing`` "fork" context) and hand it the ring's fd. Waits are bounded by generous timeouts that
only turn a hang into a failure; nothing here asserts how long anything took.
"""

from __future__ import annotations

import array
import math
import multiprocessing as mp
import os
import re
import random
import stat
import struct
import threading
import time
import zlib

import numpy as np
import pytest

from edgepipe import (
    LayoutVersionError,
    PeerClosedError,
    RecordTooLargeError,
    Ring,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingReader,
    RingTimeoutError,
    RingWriter,
    SharedRegion,
    WaitPolicy,
    clock,
)
from edgepipe._ffi import lib

CAP = 256
MAX = CAP // 2 - 8  # 120: the largest payload of a CAP ring
HDR = 8
PAD_TYPE = 0xFFFFFFFF
MAX_TYPE = 0xFFFFFFFE
POLICIES = ["spin", "park", "hybrid"]
SHM_DIR = "/dev/shm"

def _own_segments() -> set[str]:
    """/dev/shm as this test session sees it: less the per-test names other test runs on this shared machine
    create meanwhile (conftest's shm_name: edgepipe.t-<their pid>-...)."""
    others = re.compile(rf"^edgepipe\.t-(?!{os.getpid()}-)\d+-")
    return {e for e in os.listdir(SHM_DIR) if not others.match(e)}

FORK = mp.get_context("fork")

# Two records every "bad input" test starts with; they must survive whatever the test does wrong.
SEED = [(b"first", 3), (b"second record", 4)]


def rec_size(n: int) -> int:
    """Bytes a record of n payload bytes takes in the ring: header plus payload rounded up to 8."""
    return HDR + (n + 7) // 8 * 8


def shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, "edgepipe." + name)


@pytest.fixture
def ring():
    """An anonymous ring of CAP bytes, closed after the test."""
    ring = Ring.create(capacity=CAP)
    yield ring
    ring.close()


@pytest.fixture
def ends(ring):
    """(ring, writer, reader) on a fresh anonymous ring."""
    return ring, ring.writer(), ring.reader()


@pytest.fixture
def seeded(ends):
    """(ring, writer, reader) with the SEED records queued."""
    ring, w, r = ends
    for payload, type_id in SEED:
        assert w.try_write(payload, type_id)
    return ring, w, r


def assert_seed_intact(ring: Ring, w: RingWriter, r: RingReader) -> None:
    """The SEED records, and only they, are queued, in order with their types; the ring still works."""
    assert ring.status().queued == len(SEED)
    got = []
    for _ in SEED:
        payload = r.try_read()
        got.append((payload, r.last_type))
    assert got == SEED
    assert r.try_read() is None
    assert w.try_write(b"after", 9)
    assert r.try_read() == b"after"
    assert r.last_type == 9


def fill(w: RingWriter, size: int = 100) -> int:
    """Write size-byte records until the ring is full; return how many fit."""
    n = 0
    while w.try_write(bytes([n % 256]) * size):
        n += 1
    return n


def _wait_until(cond, limit_s: float = 30.0) -> bool:
    """Poll cond() until it holds or limit_s passes (a hang guard, not a timing check); return cond()."""
    deadline = time.monotonic() + limit_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.001)
    return cond()


def run_child(target, *args, timeout_s: float = 60) -> int:
    """Run target(*args) in a forked process and return its exit code."""
    p = FORK.Process(target=target, args=args)
    p.start()
    p.join(timeout_s)
    if p.is_alive():
        p.kill()
        p.join()
    return p.exitcode


# ---------------------------------------------------------------------------------------------------
# creating and attaching


class TestCreate:
    def test_anonymous_ring_facts(self, ring):
        """An anonymous ring reports its capacity, max payload, region size and no name."""
        assert ring.name is None
        assert ring.capacity == CAP
        assert ring.max_payload == MAX
        s = ring.status()
        assert s.capacity == CAP
        assert s.max_payload == MAX
        assert s.region_size == lib.EP_RING_DATA_OFF + CAP
        assert s.version == lib.EP_RING_VERSION
        assert s.creator_pid == os.getpid()
        assert (s.head, s.tail, s.used, s.records_written, s.records_read) == (0, 0, 0, 0, 0)

    def test_anonymous_ring_leaves_nothing_in_dev_shm(self):
        """Creating and closing a memfd ring adds nothing to /dev/shm."""
        before = _own_segments()
        ring = Ring.create(capacity=4096)
        assert _own_segments() == before
        ring.close()

    @pytest.mark.parametrize("capacity", [64, 128, 4096, 1 << 20])
    def test_power_of_two_capacities(self, capacity):
        """Every power of two from the minimum up gives a ring with max_payload = capacity/2 - 8."""
        with Ring.create(capacity=capacity) as ring:
            assert ring.capacity == capacity
            w = ring.writer()
            assert w.max_payload == capacity // 2 - 8

    def test_named_ring_is_a_0600_file(self, shm_name):
        """A named ring is /dev/shm/edgepipe.<name>, mode 0600, sized control page plus capacity."""
        ring = Ring.create(shm_name, capacity=4096)
        try:
            st = os.stat(shm_path(shm_name))
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_size == lib.EP_RING_DATA_OFF + 4096
            assert ring.name == shm_name
        finally:
            ring.unlink()
            ring.close()

    def test_with_unlinks_the_creators_named_ring(self, shm_name):
        """Leaving ``with Ring.create(name)`` in the creating process removes the name and closes the ring."""
        with Ring.create(shm_name, capacity=4096) as ring:
            assert os.path.exists(shm_path(shm_name))
        assert not os.path.exists(shm_path(shm_name))
        assert ring.closed

    def test_create_existing_name_raises(self, shm_name):
        """Creating a ring under a name that exists raises FileExistsError and leaves the first ring alone."""
        with Ring.create(shm_name, capacity=4096) as ring:
            w = ring.writer()
            assert w.try_write(b"mine")
            with pytest.raises(FileExistsError) as ei:
                Ring.create(shm_name, capacity=4096)
            assert shm_name in str(ei.value)
            assert ring.reader().try_read() == b"mine"

    def test_attach_by_name_shares_records(self, shm_name):
        """A ring attached by name sees records written through the creator's handle."""
        with Ring.create(shm_name, capacity=4096) as ring:
            w = ring.writer()
            w.try_write(b"across", 12)
            other = Ring.attach(shm_name)
            try:
                r = other.reader()
                assert r.try_read() == b"across"
                assert r.last_type == 12
                assert other.capacity == 4096
            finally:
                other.close()

    def test_attacher_with_does_not_unlink(self, shm_name):
        """``with Ring.attach(name)`` in another process leaves the name in place on exit."""

        def child(name):
            with Ring.attach(name) as ring:
                ring.writer().try_write(b"child was here")

        with Ring.create(shm_name, capacity=4096) as ring:
            assert run_child(child, shm_name) == 0
            assert os.path.exists(shm_path(shm_name))
            assert ring.reader().try_read() == b"child was here"

    def test_attach_missing_raises_file_not_found(self, shm_name):
        """Attaching a ring nobody created raises FileNotFoundError naming it."""
        with pytest.raises(FileNotFoundError) as ei:
            Ring.attach(shm_name)
        assert shm_name in str(ei.value)

    def test_attach_waits_for_the_creator(self, shm_name):
        """attach(wait_s=...) succeeds once a creator that starts later has made the ring."""
        made = threading.Event()

        def creator():
            time.sleep(0.05)
            ring = Ring.create(shm_name, capacity=4096)
            ring.writer().try_write(b"late")
            ring.close()
            made.set()

        t = threading.Thread(target=creator)
        t.start()
        try:
            ring = Ring.attach(shm_name, wait_s=30)
            try:
                made.wait(30)
                assert ring.reader().try_read() == b"late"
            finally:
                ring.close()
        finally:
            t.join(30)
            if os.path.exists(shm_path(shm_name)):
                os.unlink(shm_path(shm_name))

    def test_attach_waits_through_an_empty_segment(self, shm_name):
        """attach(wait_s=...) keeps waiting while the segment exists but is not yet sized (creator between
        shm_open and ftruncate) and succeeds once the ring is initialised."""
        path = shm_path(shm_name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)  # what shm_open(O_CREAT) leaves
        region_size = lib.ep_ring_region_size(4096)

        def finish():
            time.sleep(0.05)
            os.ftruncate(fd, region_size)
            region = SharedRegion.from_fd(fd)
            assert lib.ep_ring_init(region.address, region.size, 4096) == 0
            region.close()

        t = threading.Thread(target=finish)
        t.start()
        try:
            ring = Ring.attach(shm_name, wait_s=30)
            assert ring.capacity == 4096
            ring.close()
        finally:
            t.join(30)
            os.close(fd)
            os.unlink(path)

    def test_from_fd_shares_records(self, ends):
        """Ring.from_fd maps the same ring: a second view reads its status and its records."""
        ring, w, r = ends
        other = Ring.from_fd(ring.fd)
        try:
            w.try_write(b"via fd")
            assert other.status().queued == 1
            assert other.capacity == CAP
        finally:
            other.close()
        assert r.try_read() == b"via fd"


# ---------------------------------------------------------------------------------------------------
# bad input: a specific exception naming the bad value, and the queued records stay readable


class TestBadCapacity:
    @pytest.mark.parametrize("capacity", [100, 65, 192, 3 << 10, 2**40 + 2**39])
    def test_not_a_power_of_two(self, capacity):
        """A capacity that is not a power of two raises ValueError naming it."""
        with pytest.raises(ValueError, match=str(capacity)):
            Ring.create(capacity=capacity)

    @pytest.mark.parametrize("capacity", [0, 1, 2, 32, -64, 2**41])
    def test_out_of_range(self, capacity):
        """A capacity below 64 or above 1 TiB raises ValueError naming it."""
        with pytest.raises(ValueError, match=str(capacity)):
            Ring.create(capacity=capacity)

    @pytest.mark.parametrize("capacity", [1024.0, "1024", None, True, b"1024"])
    def test_not_an_int(self, capacity):
        """A capacity that is not an int (bool included) raises TypeError naming it."""
        with pytest.raises(TypeError) as ei:
            Ring.create(capacity=capacity)
        assert repr(capacity) in str(ei.value)

    def test_bad_capacity_creates_no_segment(self, shm_name):
        """A named ring with a bad capacity leaves nothing in /dev/shm."""
        with pytest.raises(ValueError):
            Ring.create(shm_name, capacity=100)
        assert not os.path.exists(shm_path(shm_name))

    @pytest.mark.parametrize("name", ["", "a/b", "..", ".x", "é"])
    def test_bad_name(self, name):
        """A bad ring name raises ValueError naming it, for create and attach."""
        with pytest.raises(ValueError) as ei:
            Ring.create(name, capacity=4096)
        assert repr(name) in str(ei.value)
        with pytest.raises(ValueError) as ei:
            Ring.attach(name)
        assert repr(name) in str(ei.value)


OVERSIZE = {
    "try_write": lambda w, n: w.try_write(b"x" * n),
    "write": lambda w, n: w.write(b"x" * n, timeout_s=1),
    "claim": lambda w, n: w.claim(n),
    "try_claim": lambda w, n: w.try_claim(n),
    "try_write_many-list": lambda w, n: w.try_write_many([b"ok", b"x" * n]),
    "try_write_many-ndarray": lambda w, n: w.try_write_many(np.zeros((2, n), np.uint8)),
    "write_many-ndarray": lambda w, n: w.write_many(np.zeros((2, n), np.uint8), timeout_s=1),
    "write_packed": lambda w, n: w.write_packed(b"o" + b"x" * n, np.array([1, n], np.uint32)),
}


class TestBadRecords:
    @pytest.mark.parametrize("how", sorted(OVERSIZE))
    @pytest.mark.parametrize("n", [MAX + 1, 1000, 10_000])
    def test_oversize_record(self, seeded, how, n):
        """A record over max_payload raises RecordTooLargeError naming its size and max_payload, writes
        nothing of its batch, and leaves the queued records readable."""
        ring, w, r = seeded
        with pytest.raises(RecordTooLargeError) as ei:
            OVERSIZE[how](w, n)
        assert str(n) in str(ei.value)
        assert str(MAX) in str(ei.value)
        assert_seed_intact(ring, w, r)

    def test_oversize_is_a_value_error(self, seeded):
        """RecordTooLargeError is caught by ``except ValueError``."""
        ring, w, r = seeded
        with pytest.raises(ValueError):
            w.try_write(b"x" * (MAX + 1))
        assert_seed_intact(ring, w, r)

    @pytest.mark.parametrize("payload", ["text", 5, None, [1, 2], {"a": 1}, 1.5, object()], ids=repr)
    @pytest.mark.parametrize("how", ["try_write", "write"])
    def test_payload_not_bytes_like(self, seeded, payload, how):
        """A payload that is not bytes-like raises TypeError naming its type and value."""
        ring, w, r = seeded
        with pytest.raises(TypeError) as ei:
            w.try_write(payload) if how == "try_write" else w.write(payload, timeout_s=1)
        msg = str(ei.value)
        assert type(payload).__name__ in msg
        assert repr(payload)[:40] in msg
        assert_seed_intact(ring, w, r)

    @pytest.mark.parametrize("bad", ["text", 5, None, [1, 2]], ids=repr)
    def test_try_write_many_item_not_bytes_like(self, seeded, bad):
        """A batch with a non-bytes-like item raises TypeError naming it and writes none of the batch."""
        ring, w, r = seeded
        with pytest.raises(TypeError) as ei:
            w.try_write_many([b"fine", bad])
        assert repr(bad) in str(ei.value)
        assert_seed_intact(ring, w, r)

    def test_try_write_many_of_bytes_is_refused(self, seeded):
        """Passing one bytes object as the batch raises TypeError instead of writing each byte."""
        ring, w, r = seeded
        with pytest.raises(TypeError, match="bytes"):
            w.try_write_many(b"abc")
        assert_seed_intact(ring, w, r)


TYPE_CALLS = {
    "try_write": lambda w, t: w.try_write(b"x", t),
    "write": lambda w, t: w.write(b"x", t, timeout_s=1),
    "claim": lambda w, t: w.claim(1, t),
    "try_claim": lambda w, t: w.try_claim(1, t),
    "try_write_many-list": lambda w, t: w.try_write_many([b"x"], t),
    "try_write_many-ndarray": lambda w, t: w.try_write_many(np.zeros((1, 4), np.uint8), t),
    "write_packed": lambda w, t: w.write_packed(b"x", np.array([1], np.uint32), t),
}


class TestBadTypeId:
    @pytest.mark.parametrize("how", sorted(TYPE_CALLS))
    @pytest.mark.parametrize("type_id", [-1, PAD_TYPE, 2**32, 2**64], ids=str)
    def test_out_of_range_type_id(self, seeded, how, type_id):
        """A type_id outside 0..0xFFFFFFFE (0xFFFFFFFF marks padding) raises ValueError naming it."""
        ring, w, r = seeded
        with pytest.raises(ValueError) as ei:
            TYPE_CALLS[how](w, type_id)
        assert str(type_id) in str(ei.value)
        assert_seed_intact(ring, w, r)

    @pytest.mark.parametrize("how", sorted(TYPE_CALLS))
    @pytest.mark.parametrize("type_id", ["1", 1.5, None], ids=repr)
    def test_non_int_type_id(self, seeded, how, type_id):
        """A type_id that is not an int raises TypeError naming it."""
        ring, w, r = seeded
        with pytest.raises(TypeError) as ei:
            TYPE_CALLS[how](w, type_id)
        assert repr(type_id) in str(ei.value)
        assert_seed_intact(ring, w, r)

    @pytest.mark.parametrize("type_id", [0, 1, 2**31, MAX_TYPE])
    def test_edge_type_ids_are_accepted(self, ends, type_id):
        """The smallest and largest allowed type ids round-trip."""
        _, w, r = ends
        assert w.try_write(b"t", type_id)
        assert r.try_read() == b"t"
        assert r.last_type == type_id


TIMEOUT_CALLS = {
    "read": lambda w, r, t: r.read(timeout_s=t),
    "read_into": lambda w, r, t: r.read_into(bytearray(64), timeout_s=t),
    "peek": lambda w, r, t: r.peek(timeout_s=t),
    "read_many": lambda w, r, t: r.read_many(4, timeout_s=t),
    "wait": lambda w, r, t: r.wait(timeout_s=t),
    "write": lambda w, r, t: w.write(b"x", timeout_s=t),
    "claim": lambda w, r, t: w.claim(1, timeout_s=t),
    "write_many": lambda w, r, t: w.write_many(np.zeros((1, 4), np.uint8), timeout_s=t),
}


class TestBadTimeout:
    @pytest.mark.parametrize("how", sorted(TIMEOUT_CALLS))
    @pytest.mark.parametrize("timeout_s", [-1, -0.001, -math.inf, math.nan], ids=repr)
    def test_negative_or_nan_timeout(self, seeded, how, timeout_s):
        """A negative or NaN timeout raises ValueError naming it, before touching the ring."""
        ring, w, r = seeded
        with pytest.raises(ValueError) as ei:
            TIMEOUT_CALLS[how](w, r, timeout_s)
        assert repr(timeout_s) in str(ei.value)
        assert_seed_intact(ring, w, r)

    @pytest.mark.parametrize("how", sorted(TIMEOUT_CALLS))
    def test_non_number_timeout(self, seeded, how):
        """A timeout that is not a number raises TypeError naming it."""
        ring, w, r = seeded
        with pytest.raises(TypeError, match="'1'"):
            TIMEOUT_CALLS[how](w, r, "1")
        assert_seed_intact(ring, w, r)


class TestBadSegment:
    def _poke_version(self, ring: Ring, version: int) -> None:
        ring.region.buffer()[4:8] = struct.pack("=I", version)

    def test_other_layout_version(self, shm_name):
        """Attaching a ring of another layout version raises LayoutVersionError naming both versions; once
        the version is right again its records read back."""
        with Ring.create(shm_name, capacity=4096) as ring:
            w = ring.writer()
            w.try_write(b"kept", 2)
            self._poke_version(ring, 7)
            for attach in (lambda: Ring.attach(shm_name), lambda: Ring.from_fd(ring.fd)):
                with pytest.raises(LayoutVersionError) as ei:
                    attach()
                assert "7" in str(ei.value)
                assert str(lib.EP_RING_VERSION) in str(ei.value)
            self._poke_version(ring, lib.EP_RING_VERSION)
            other = Ring.attach(shm_name)
            try:
                r = other.reader()
                assert r.try_read() == b"kept"
                assert r.last_type == 2
            finally:
                other.close()

    def test_segment_smaller_than_a_control_block(self, shm_name):
        """A named segment too small to hold a ring raises RingCorruptError naming it and its size."""
        region = SharedRegion.create(shm_name, 100)
        try:
            with pytest.raises(RingCorruptError) as ei:
                Ring.attach(shm_name)
            assert shm_name in str(ei.value)
            assert "100" in str(ei.value)
        finally:
            region.unlink()
            region.close()

    def test_truncated_ring(self, shm_name):
        """A ring whose segment was shrunk below control block plus capacity raises RingCorruptError naming
        both sizes."""
        with Ring.create(shm_name, capacity=4096) as ring:
            ring.writer().try_write(b"early")
            short = lib.EP_RING_DATA_OFF + 1024
            os.ftruncate(ring.fd, short)
            for attach in (lambda: Ring.attach(shm_name), lambda: Ring.from_fd(ring.fd)):
                with pytest.raises(RingCorruptError) as ei:
                    attach()
                assert str(short) in str(ei.value)
                assert str(lib.ep_ring_region_size(4096)) in str(ei.value)

    def test_empty_segment_is_corrupt_not_os_error(self, shm_name):
        """A zero-length segment under a ring's name raises RingCorruptError from attach."""
        path = shm_path(shm_name)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
        try:
            with pytest.raises(RingCorruptError) as ei:
                Ring.attach(shm_name)
            assert shm_name in str(ei.value)
        finally:
            os.unlink(path)

    @pytest.mark.parametrize("fill_with", ["random", "zeros"])
    def test_foreign_segment(self, shm_name, fill_with):
        """A segment of a ring's size holding random bytes or zeros raises RingCorruptError naming the magic."""
        size = lib.ep_ring_region_size(4096)
        region = SharedRegion.create(shm_name, size)
        try:
            if fill_with == "random":
                region.buffer()[:] = random.Random(1234).randbytes(size)
            magic = struct.unpack("=I", bytes(region.buffer()[:4]))[0]
            assert magic != lib.EP_RING_MAGIC
            for attach in (lambda: Ring.attach(shm_name), lambda: Ring.from_fd(region.fd)):
                with pytest.raises(RingCorruptError) as ei:
                    attach()
                assert f"{magic:#010x}" in str(ei.value)
                assert f"{lib.EP_RING_MAGIC:#010x}" in str(ei.value)
        finally:
            region.unlink()
            region.close()

    def test_attach_wait_gives_up_on_a_foreign_segment(self, shm_name):
        """attach(wait_s=...) on a segment that never becomes a ring raises RingCorruptError at the deadline."""
        region = SharedRegion.create(shm_name, lib.ep_ring_region_size(4096))
        try:
            with pytest.raises(RingCorruptError):
                Ring.attach(shm_name, wait_s=0.05)
        finally:
            region.unlink()
            region.close()


class TestHostileTail:
    """A tail the producer's process set behind the head, unaligned or more than a ring ahead is corrupt, and
    stays corrupt on every later call while it is bad (found by tests/fuzz/fuzz_ring.py: the reader used to
    cache the bad tail on the first check, so the retry walked up to it and handed out records nobody
    published)."""

    TAIL_OFF = 128  # struct ep_ring_ctl: tail starts line pair 1 (EP_LINE_PAIR = 128)

    @pytest.mark.parametrize("bad", ["unaligned", "too_far", "behind"])
    @pytest.mark.parametrize("first", ["try_read", "wait"])
    def test_bad_tail_stays_corrupt(self, ends, bad, first):
        ring, w, r = ends
        assert w.try_write(b"x" * 40)
        assert r.try_read() == b"x" * 40
        buf = ring.region.buffer()
        tail = struct.unpack_from("<Q", buf, self.TAIL_OFF)[0]
        assert tail == ring.status().tail == rec_size(40)
        new = {"unaligned": tail + 3, "too_far": tail + 2 * CAP, "behind": tail - 8}[bad]
        struct.pack_into("<Q", buf, self.TAIL_OFF, new)
        if first == "wait":
            r.wait(timeout_s=1)  # sees the tail move; must not take it on trust
        for read in (r.try_read, r.try_read, r.try_read_many, lambda: r.read(timeout_s=1), r.try_peek):
            with pytest.raises(RingCorruptError):
                read()
        struct.pack_into("<Q", buf, self.TAIL_OFF, tail)  # the tail is right again: so is the ring
        assert r.try_read() is None
        assert w.try_write(b"after")
        assert r.try_read() == b"after"


# ---------------------------------------------------------------------------------------------------
# peers: closed, busy, dead


WRITE_CALLS = {
    "try_write": lambda w: w.try_write(b"late"),
    "write": lambda w: w.write(b"late", timeout_s=5),
    "claim": lambda w: w.claim(4),
    "try_claim": lambda w: w.try_claim(4),
    "try_write_many-list": lambda w: w.try_write_many([b"late"]),
    "try_write_many-ndarray": lambda w: w.try_write_many(np.zeros((2, 4), np.uint8)),
    "write_packed": lambda w: w.write_packed(b"late", np.array([4], np.uint32)),
}

READ_CALLS = {
    "try_read": lambda r: r.try_read(),
    "read": lambda r: r.read(timeout_s=5),
    "read_into": lambda r: r.read_into(bytearray(64), timeout_s=5),
    "try_peek": lambda r: r.try_peek(),
    "peek": lambda r: r.peek(timeout_s=5),
    "try_read_many": lambda r: r.try_read_many(),
    "read_many": lambda r: r.read_many(timeout_s=5),
    "read_packed": lambda r: r.read_packed(bytearray(64), np.zeros(4, np.uint32)),
    "wait": lambda r: r.wait(timeout_s=5),
}


class TestPeerClosed:
    @pytest.mark.parametrize("how", sorted(WRITE_CALLS))
    def test_write_after_consumer_closed(self, seeded, how):
        """Once the consumer closed, every write raises PeerClosedError saying so, and queues nothing."""
        ring, w, r = seeded
        r.close()
        with pytest.raises(PeerClosedError) as ei:
            WRITE_CALLS[how](w)
        assert "closed" in str(ei.value)
        s = ring.status()
        assert s.consumer_closed
        assert s.queued == len(SEED)

    @pytest.mark.parametrize("how", sorted(READ_CALLS))
    def test_read_after_producer_closed_drains_first(self, seeded, how):
        """After the producer closed, the queued records still read back, then the call raises
        PeerClosedError."""
        ring, w, r = seeded
        w.close()
        assert [(r.try_read(), r.last_type) for _ in SEED] == SEED
        with pytest.raises(PeerClosedError) as ei:
            READ_CALLS[how](r)
        assert "closed" in str(ei.value)
        assert ring.status().producer_closed

    def test_blocked_read_ends_when_producer_closes(self, ring):
        """A reader blocked in read() in another thread gets PeerClosedError when the producer closes."""
        w, r = ring.writer(), ring.reader(wait="park")
        out: dict = {}

        def reader():
            try:
                out["got"] = r.read(timeout_s=30)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                out["err"] = e

        t = threading.Thread(target=reader)
        t.start()
        _wait_until(lambda: ring.status().consumer_parks > 0)
        w.close()
        t.join(30)
        assert isinstance(out.get("err"), PeerClosedError)

    def test_dead_producer_process(self, ring):
        """When the producer process dies, the reader drains its records and then gets PeerClosedError
        naming the death, instead of hanging."""

        def child(fd):
            w = Ring.from_fd(fd).writer()
            for i in range(3):
                w.try_write(struct.pack("=I", i))
            os._exit(0)  # no close(): the process just goes away

        r = ring.reader(wait="park")
        assert run_child(child, ring.fd) == 0
        assert [struct.unpack("=I", r.read(timeout_s=30))[0] for _ in range(3)] == [0, 1, 2]
        with pytest.raises(PeerClosedError) as ei:
            r.read(timeout_s=30)
        assert "died" in str(ei.value)

    def test_dead_consumer_process(self, ring):
        """When the consumer process dies, a writer blocked on a full ring gets PeerClosedError."""

        def child(fd):
            Ring.from_fd(fd).reader()
            os._exit(0)

        w = ring.writer(wait="park")
        fill(w)
        assert run_child(child, ring.fd) == 0
        with pytest.raises(PeerClosedError) as ei:
            w.write(b"x" * 100, timeout_s=30)
        assert "died" in str(ei.value)


def _hold_writer(fd, q, release):
    ring = Ring.from_fd(fd)
    w = ring.writer()
    w.try_write(b"from the first holder")
    q.put(os.getpid())
    release.wait(60)
    os._exit(0)


class TestBusy:
    def test_second_writer_in_same_process(self, ring):
        """A second writer on a ring whose writer is open in this process raises RingBusyError."""
        w = ring.writer()
        with pytest.raises(RingBusyError) as ei:
            ring.writer()
        assert str(os.getpid()) in str(ei.value)
        assert not w.closed
        assert w.try_write(b"still mine")

    def test_second_reader_in_same_process(self, ring):
        """A second reader on a ring whose reader is open in this process raises RingBusyError."""
        ring.reader()
        with pytest.raises(RingBusyError):
            ring.reader()

    def test_second_writer_through_another_mapping(self, ring):
        """A writer opened through a second mapping of a ring whose writer is open raises RingBusyError."""
        ring.writer()
        other = Ring.from_fd(ring.fd)
        try:
            with pytest.raises(RingBusyError):
                other.writer()
        finally:
            other.close()

    def test_new_writer_after_close_continues_the_stream(self, ring):
        """After the writer closes, a new writer opens and its records follow the old ones in order."""
        r = ring.reader()
        w1 = ring.writer()
        w1.try_write(b"one")
        w1.close()
        w2 = ring.writer()
        w2.try_write(b"two")
        assert r.try_read() == b"one"
        assert r.try_read() == b"two"
        assert ring.status().producer_pid == os.getpid()

    def test_new_reader_after_close_continues_the_stream(self, ring):
        """After the reader closes, a new reader opens where the old one stopped."""
        w = ring.writer()
        w.try_write_many(np.arange(12, dtype=np.uint8).reshape(3, 4))
        r1 = ring.reader()
        assert r1.try_read() == bytes([0, 1, 2, 3])
        r1.close()
        r2 = ring.reader()
        assert r2.try_read_many() == [bytes([4, 5, 6, 7]), bytes([8, 9, 10, 11])]

    def test_writer_held_by_live_process_then_taken_over(self, ring):
        """A writer held by another live process raises RingBusyError naming its pid; once that process is
        dead its end can be taken over, and what it wrote is still queued."""
        q, release = FORK.Queue(), FORK.Event()
        p = FORK.Process(target=_hold_writer, args=(ring.fd, q, release))
        p.start()
        try:
            pid = q.get(timeout=60)
            with pytest.raises(RingBusyError) as ei:
                ring.writer()
            assert str(pid) in str(ei.value)
            assert ring.status().producer_pid == pid
        finally:
            p.kill()
            p.join(60)
        w = ring.writer()
        assert ring.status().producer_pid == os.getpid()
        r = ring.reader()
        assert r.try_read() == b"from the first holder"
        assert w.try_write(b"new holder")
        assert r.try_read() == b"new holder"


# ---------------------------------------------------------------------------------------------------
# behaviour


class TestRoundTrip:
    @pytest.mark.parametrize("n", [0, 1, 7, 8, 9, MAX - 1, MAX])
    def test_sizes(self, ends, n):
        """Records of 0, 1, around 8 and up to max_payload bytes read back exactly."""
        _, w, r = ends
        payload = bytes(random.Random(n).randbytes(n))
        assert w.try_write(payload)
        got = r.try_read()
        assert type(got) is bytes
        assert got == payload

    @pytest.mark.parametrize(
        "make",
        [
            bytes,
            bytearray,
            memoryview,
            lambda b: memoryview(b).cast("I"),
            lambda b: array.array("d", b),
            lambda b: np.frombuffer(b, np.uint8).copy(),
            lambda b: np.frombuffer(b, np.uint32),
            lambda b: np.frombuffer(b, np.uint16).reshape(4, 4),
        ],
        ids=["bytes", "bytearray", "memoryview", "memoryview-I", "array-d", "ndarray-u8", "ndarray-u32", "ndarray-2d"],
    )
    @pytest.mark.parametrize("how", ["try_write", "write"])
    def test_bytes_like_payloads(self, ends, make, how):
        """Any C-contiguous bytes-like payload is written as all of its raw bytes, whatever its item size."""
        _, w, r = ends
        raw = bytes(range(32))
        payload = make(raw)
        assert w.try_write(payload) if how == "try_write" else w.write(payload, timeout_s=1) is None
        assert r.try_read() == raw

    def test_all_byte_values(self, ends):
        """Every byte value 0..255 survives the trip, split over records of at most max_payload bytes."""
        _, w, r = ends
        raw = bytes(range(256))
        chunks = [raw[i : i + MAX] for i in range(0, len(raw), MAX)]
        assert w.try_write_many(np.frombuffer(raw[: MAX * 2], np.uint8).reshape(2, MAX)) == 2
        assert r.try_read_many() == chunks[:2]
        assert w.try_write(chunks[2])
        assert b"".join(chunks[:2]) + r.try_read() == raw

    def test_types_follow_records(self, ends):
        """last_type is the type of the record just read, for each record in turn."""
        _, w, r = ends
        for t in (1, 0, 77, MAX_TYPE):
            w.try_write(b"r%d" % t, t)
        seen = []
        for _ in range(4):
            r.try_read()
            seen.append(r.last_type)
        assert seen == [1, 0, 77, MAX_TYPE]

    def test_blocking_write_and_read(self, ends):
        """write() and read() with room and data behave like try_write and try_read."""
        _, w, r = ends
        w.write(b"blocking", 3, timeout_s=1)
        assert r.read(timeout_s=1) == b"blocking"
        assert r.last_type == 3

    def test_many_records_through_many_wraps(self, ends):
        """Two thousand records of varied sizes pass through a small ring in order and intact."""
        _, w, r = ends
        rng = random.Random(7)
        for i in range(2000):
            payload = struct.pack("=I", i) + rng.randbytes(rng.randrange(0, MAX - 3))
            assert w.try_write(payload, i % 5)
            assert r.try_read() == payload
            assert r.last_type == i % 5
        assert ring_positions_ok(ends[0])


def ring_positions_ok(ring: Ring) -> bool:
    s = ring.status()
    return s.used == s.tail - s.head == 0 and s.records_written == s.records_read


class TestWrap:
    def test_padding_at_the_end(self, ends):
        """A record that does not fit before the end is preceded by padding and starts at slot 0."""
        ring, w, r = ends
        size = 100  # rec_size 112: two fit, the third must wrap
        assert fill(w, size) == 2
        s = ring.status()
        assert s.tail == 2 * rec_size(size) == 224
        assert r.try_read() == bytes([0]) * size
        assert r.try_read() == bytes([1]) * size
        assert ring.status().head == 224
        assert w.try_write(b"w" * size, 6)
        s = ring.status()
        assert s.tail == CAP + rec_size(size)  # 32 bytes of padding, then the record at slot 0
        assert s.used == s.tail - s.head == CAP - 224 + rec_size(size)
        assert r.try_read() == b"w" * size
        assert r.last_type == 6
        s = ring.status()
        assert s.head == s.tail == CAP + rec_size(size)
        assert s.records_written == s.records_read == 3

    def test_exact_fit_at_the_end_needs_no_padding(self, ends):
        """A record that ends exactly at the end of the data area is written without padding."""
        ring, w, r = ends
        assert w.try_write(b"a" * MAX)  # 128 bytes
        assert w.try_write(b"b" * MAX)  # 128 bytes: exactly to the end
        assert ring.status().tail == CAP
        assert not w.try_write(b"")
        assert r.try_read() == b"a" * MAX
        assert w.try_write(b"c" * MAX)
        assert ring.status().tail == CAP + rec_size(MAX)
        assert [r.try_read(), r.try_read()] == [b"b" * MAX, b"c" * MAX]

    def test_padding_counts_against_room(self, ends):
        """A record that would fit in the free bytes, but not contiguously before the end, does not fit
        until the padding it needs is free too."""
        ring, w, r = ends
        assert w.try_write(b"a" * 40)  # [0, 48)
        assert w.try_write(b"b" * 100)  # [48, 160)
        assert r.try_read() == b"a" * 40  # head 48: 144 bytes free, 96 of them before the end
        assert not w.try_write(b"c" * 100)  # needs 96 padding + 112 = 208 > 144
        assert ring.status().full_events == 1
        assert r.try_read() == b"b" * 100  # head 160: 256 free
        assert w.try_write(b"c" * 100)
        assert ring.status().tail == CAP + rec_size(100)
        assert r.try_read() == b"c" * 100

    def test_fill_drain_fill_again(self, ends):
        """Filling, draining and refilling a ring many times over the end loses and reorders nothing."""
        ring, w, r = ends
        seq = 0
        for round_ in range(20):
            size = 8 + round_ * 5
            batch = []
            while True:
                payload = struct.pack("=I", seq) + bytes([round_]) * (size - 4)
                if not w.try_write(payload):
                    break
                batch.append(payload)
                seq += 1
            assert batch
            assert [r.try_read() for _ in batch] == batch
            assert r.try_read() is None
        assert ring.status().records_read == seq


class TestClaim:
    def test_commit_on_clean_exit(self, ends):
        """Bytes written into a claimed view are published with the claim's type when the block exits."""
        ring, w, r = ends
        with w.claim(5, type_id=4) as buf:
            assert isinstance(buf, memoryview)
            assert len(buf) == 5 and not buf.readonly
            assert ring.status().records_written == 0  # nothing visible while claimed
            buf[:] = b"hello"
        assert r.try_read() == b"hello"
        assert r.last_type == 4

    def test_commit_shrinks(self, ends):
        """commit(k) publishes only the first k bytes and the tail moves by a k-byte record."""
        ring, w, r = ends
        c = w.claim(100, type_id=2)
        with c as buf:
            buf[:3] = b"abc"
            c.commit(3)
        assert ring.status().tail == rec_size(3)
        assert r.try_read() == b"abc"
        assert w.try_write(b"next")
        assert r.try_read() == b"next"

    def test_commit_zero(self, ends):
        """commit(0) publishes an empty record."""
        _, w, r = ends
        c = w.claim(10)
        c.commit(0)
        assert r.try_read() == b""

    @pytest.mark.parametrize("k", [-1, 11, 1.5, "3"], ids=repr)
    def test_commit_bad_size(self, ends, k):
        """commit(k) outside 0..size raises ValueError naming k and leaves the claim open."""
        _, w, r = ends
        c = w.claim(10)
        with pytest.raises(ValueError) as ei:
            c.commit(k)
        assert repr(k) in str(ei.value)
        c.view[:2] = b"ok"
        c.commit(2)
        assert r.try_read() == b"ok"

    def test_explicit_abort_publishes_nothing(self, ends):
        """abort() publishes nothing, moves no position, and the next write goes where the claim was."""
        ring, w, r = ends
        before = ring.status()
        c = w.claim(50)
        c.view[:] = b"z" * 50
        c.abort()
        c.abort()  # twice is harmless
        after = ring.status()
        assert (after.tail, after.records_written) == (before.tail, before.records_written)
        assert r.try_read() is None
        assert w.try_write(b"real")
        assert r.try_read() == b"real"
        assert ring.status().tail == rec_size(4)

    def test_exception_in_with_aborts(self, ends):
        """An exception escaping ``with claim()`` aborts the record and propagates."""
        ring, w, r = ends
        with pytest.raises(KeyError):
            with w.claim(8) as buf:
                buf[:] = b"abandon!"
                raise KeyError("boom")
        assert r.try_read() is None
        assert ring.status().records_written == 0
        assert w.try_write(b"fine")
        assert r.try_read() == b"fine"

    def test_abort_of_a_wrapping_claim(self, ends):
        """Aborting a claim that needed padding publishes neither the padding nor the record."""
        ring, w, r = ends
        w.try_write(b"a" * 100)
        w.try_write(b"b" * 100)
        r.try_read()
        r.try_read()  # head = tail = 224: a 100-byte claim must wrap
        c = w.claim(100)
        c.abort()
        assert ring.status().tail == 224
        assert w.try_write(b"s" * 8)  # fits before the end: no padding
        assert ring.status().tail == 224 + rec_size(8)
        assert r.try_read() == b"s" * 8

    def test_commit_after_done_raises(self, ends):
        """Committing a claim that was already committed or aborted raises ValueError."""
        _, w, _ = ends
        c = w.claim(4)
        c.commit()
        with pytest.raises(ValueError):
            c.commit()
        c2 = w.claim(4)
        c2.abort()
        with pytest.raises(ValueError):
            c2.commit()

    def test_view_is_released_after_the_block(self, ends):
        """The claimed view cannot be used once the block has committed it."""
        _, w, _ = ends
        with w.claim(4) as buf:
            buf[:] = b"1234"
        with pytest.raises(ValueError):
            buf[0] = 1

    def test_one_claim_at_a_time(self, ends):
        """While a claim is open, another claim or a write raises ValueError and queues nothing."""
        ring, w, r = ends
        c = w.claim(4)
        with pytest.raises(ValueError, match="claim"):
            w.claim(4)
        with pytest.raises(ValueError, match="claim"):
            w.try_write(b"x")
        c.view[:] = b"only"
        c.commit()
        assert r.try_read_many() == [b"only"]
        assert ring.status().records_written == 1

    def test_claim_max_payload(self, ends):
        """A claim of exactly max_payload bytes commits and reads back."""
        _, w, r = ends
        with w.claim(MAX) as buf:
            buf[:] = b"m" * MAX
        assert r.try_read() == b"m" * MAX

    def test_try_claim_none_when_full(self, ends):
        """try_claim returns None on a full ring and counts a full event; after a read it succeeds."""
        ring, w, r = ends
        fill(w)
        events = ring.status().full_events
        assert w.try_claim(100) is None
        assert ring.status().full_events == events + 1
        r.try_read()
        c = w.try_claim(100)
        assert c is not None
        with c as buf:
            buf[:] = b"q" * 100

    @pytest.mark.parametrize("size", [-1, 1.5, "4", None], ids=repr)
    def test_bad_claim_size(self, seeded, size):
        """A negative or non-int claim size raises ValueError/TypeError naming it."""
        ring, w, r = seeded
        with pytest.raises((ValueError, TypeError)) as ei:
            w.claim(size)
        assert repr(size) in str(ei.value) or str(size) in str(ei.value)
        assert_seed_intact(ring, w, r)


class TestPeek:
    def test_peek_then_release(self, ends):
        """try_peek shows the next record read-only without consuming it; release consumes it."""
        ring, w, r = ends
        w.try_write(b"look", 8)
        w.try_write(b"next", 9)
        view = r.try_peek()
        assert bytes(view) == b"look"
        assert view.readonly
        assert r.last_type == 8
        assert ring.status().records_read == 0
        r.release()
        assert ring.status().records_read == 1
        assert r.try_read() == b"next"

    def test_peek_twice_is_the_same_record(self, ends):
        """Peeking again before release yields the same record."""
        _, w, r = ends
        w.try_write(b"one")
        w.try_write(b"two")
        assert bytes(r.try_peek()) == b"one"
        assert bytes(r.try_peek()) == b"one"
        r.release()
        assert bytes(r.try_peek()) == b"two"
        r.release()

    def test_peek_view_is_read_only(self, ends):
        """Writing through a peeked view raises TypeError."""
        _, w, r = ends
        w.try_write(b"ro")
        view = r.try_peek()
        with pytest.raises(TypeError):
            view[0] = 0
        r.release()

    def test_peek_empty_is_none(self, ends):
        """try_peek on an empty ring returns None."""
        _, _, r = ends
        assert r.try_peek() is None

    def test_release_without_peek(self, ends):
        """release() with nothing peeked raises ValueError."""
        _, w, r = ends
        w.try_write(b"x")
        with pytest.raises(ValueError):
            r.release()
        assert r.try_read() == b"x"

    def test_with_peek_releases(self, ends):
        """``with reader.peek()`` yields the record and consumes it when the block exits."""
        ring, w, r = ends
        w.try_write(b"inplace", 5)
        with r.peek(timeout_s=1) as view:
            assert bytes(view) == b"inplace"
            assert r.last_type == 5
        assert ring.status().records_read == 1
        with pytest.raises(ValueError):
            bytes(view)  # released with the block
        assert r.try_read() is None

    def test_with_peek_releases_on_exception(self, ends):
        """An exception in a ``with peek()`` block still consumes the record and propagates."""
        _, w, r = ends
        w.try_write(b"a")
        w.try_write(b"b")
        with pytest.raises(KeyError):
            with r.peek(timeout_s=1):
                raise KeyError
        assert r.try_read() == b"b"

    @pytest.mark.parametrize(
        "how",
        ["try_read_many", "read_into", "read_packed"],
    )
    def test_batch_read_while_peeked(self, ends, how):
        """While a peeked record is held, a batch read raises ValueError saying to release it, and the
        peeked record is still the next one."""
        _, w, r = ends
        w.try_write(b"held")
        w.try_write(b"after")
        assert bytes(r.try_peek()) == b"held"
        call = {
            "try_read_many": lambda: r.try_read_many(),
            "read_into": lambda: r.read_into(bytearray(8)),
            "read_packed": lambda: r.read_packed(bytearray(8), np.zeros(2, np.uint32)),
        }[how]
        with pytest.raises(ValueError, match="release"):
            call()
        assert bytes(r.try_peek()) == b"held"
        r.release()
        assert r.try_read_many() == [b"after"]

    def test_peek_across_the_wrap(self, ends):
        """A peeked record after padding is the whole record, starting at slot 0."""
        _, w, r = ends
        fill(w)
        r.try_read()
        r.try_read()
        w.try_write(b"p" * 100)
        assert bytes(r.try_peek()) == b"p" * 100
        r.release()


class TestReadInto:
    def test_fits(self, ends):
        """read_into copies the record into the buffer and returns its length."""
        _, w, r = ends
        w.try_write(b"into", 6)
        buf = bytearray(16)
        assert r.read_into(buf) == 4
        assert buf[:4] == b"into"
        assert buf[4:] == bytes(12)

    def test_sets_last_type(self, ends):
        """read_into sets last_type to the type of the record it read."""
        _, w, r = ends
        w.try_write(b"a", 6)
        w.try_write(b"b", 7)
        r.read_into(bytearray(8))
        assert r.last_type == 6
        r.read_into(bytearray(8))
        assert r.last_type == 7

    def test_numpy_target(self, ends):
        """read_into fills a numpy array in place."""
        _, w, r = ends
        src = np.arange(16, dtype=np.float32)
        w.try_write(src)
        dst = np.zeros(16, np.float32)
        assert r.read_into(dst) == 64
        assert np.array_equal(src, dst)

    def test_empty_is_none(self, ends):
        """read_into on an empty ring returns None at once by default and after a timeout if given one."""
        _, _, r = ends
        assert r.read_into(bytearray(8)) is None
        assert r.read_into(bytearray(8), timeout_s=0.02) is None

    def test_too_small_raises_and_keeps_the_record(self, ends):
        """A buffer smaller than the record raises ValueError naming both sizes; the record stays queued."""
        ring, w, r = ends
        w.try_write(b"0123456789", 3)
        with pytest.raises(ValueError) as ei:
            r.read_into(bytearray(4))
        assert "10" in str(ei.value) and "4" in str(ei.value)
        assert ring.status().queued == 1
        assert r.try_read() == b"0123456789"
        assert r.last_type == 3

    def test_too_small_then_big_enough(self, ends):
        """After a too-small buffer, read_into with room reads the same record."""
        _, w, r = ends
        w.try_write(b"0123456789")
        with pytest.raises(ValueError):
            r.read_into(bytearray(4))
        buf = bytearray(16)
        assert r.read_into(buf) == 10
        assert buf[:10] == b"0123456789"

    def test_read_only_buffer_raises_type_error(self, ends):
        """A read-only buffer raises TypeError naming its type; the record stays queued."""
        _, w, r = ends
        w.try_write(b"x")
        with pytest.raises(TypeError, match="bytes"):
            r.read_into(b"abcdefgh")
        assert r.try_read() == b"x"


class TestBatch:
    def test_try_write_many_list(self, ends):
        """A list of records is written in order in one call and the count returned."""
        ring, w, r = ends
        recs = [b"", b"a", b"bb" * 10, bytearray(b"ccc"), memoryview(b"dddd")]
        assert w.try_write_many(recs, type_id=3) == 5
        assert ring.status().records_written == 5
        assert r.try_read_many() == [bytes(x) for x in recs]

    def test_try_write_many_list_prefix_when_partly_full(self, ends):
        """On a ring with room for only some records, try_write_many writes and counts a prefix."""
        _, w, r = ends
        recs = [bytes([i]) * 100 for i in range(5)]
        assert w.try_write_many(recs) == 2
        assert w.try_write_many(recs[2:]) == 0
        assert r.try_read_many() == recs[:2]

    def test_try_write_many_ndarray(self, ends):
        """Rows of a 2-D C-contiguous uint8 array are written as fixed-size records."""
        _, w, r = ends
        a = np.arange(40, dtype=np.uint8).reshape(5, 8)
        assert w.try_write_many(a, type_id=11) == 5
        assert r.try_read_many() == [row.tobytes() for row in a]

    def test_try_write_many_ndarray_prefix_when_partly_full(self, ends):
        """A 2-D array larger than the free room writes a prefix of its rows and returns its length."""
        ring, w, r = ends
        a = np.repeat(np.arange(5, dtype=np.uint8)[:, None], 100, axis=1)  # row i is 100 bytes of i
        assert w.try_write_many(a) == 2
        assert ring.status().records_written == 2
        assert r.try_read_many() == [a[0].tobytes(), a[1].tobytes()]
        assert w.try_write_many(a[2:]) == 2

    def test_try_write_many_empty(self, ends):
        """An empty list or a zero-row array writes nothing and returns 0."""
        ring, w, _ = ends
        assert w.try_write_many([]) == 0
        assert w.try_write_many(np.zeros((0, 8), np.uint8)) == 0
        assert ring.status().records_written == 0

    def test_try_write_many_non_contiguous_array(self, ends):
        """A non-C-contiguous 2-D array raises ValueError and writes nothing."""
        ring, w, _ = ends
        a = np.zeros((8, 4), np.uint8)[:, ::2]
        with pytest.raises(ValueError):
            w.try_write_many(a)
        assert ring.status().records_written == 0

    def test_write_packed_read_packed(self, ends):
        """Records packed back to back with uint32 lengths come back packed with lengths and types."""
        _, w, r = ends
        payload = np.frombuffer(b"abbcccdddd", np.uint8)
        lens = np.array([1, 2, 3, 4, 0], np.uint32)
        assert w.write_packed(payload, lens, type_id=21) == 5
        buf = np.zeros(64, np.uint8)
        out_lens = np.zeros(8, np.uint32)
        out_types = np.zeros(8, np.uint32)
        assert r.read_packed(buf, out_lens, out_types) == 5
        assert out_lens[:5].tolist() == [1, 2, 3, 4, 0]
        assert out_types[:5].tolist() == [21] * 5
        assert buf[:10].tobytes() == b"abbcccdddd"
        assert r.read_packed(buf, out_lens) == 0

    def test_read_packed_stops_at_lens_and_buffer(self, ends):
        """read_packed takes no more records than lens holds and than fit in buf, leaving the rest queued."""
        _, w, r = ends
        w.write_packed(bytes(range(40)), np.array([10] * 4, np.uint32))
        lens = np.zeros(1, np.uint32)
        assert r.read_packed(bytearray(64), lens) == 1
        lens = np.zeros(4, np.uint32)
        buf = bytearray(25)
        assert r.read_packed(buf, lens) == 2
        assert bytes(buf[:20]) == bytes(range(10, 30))
        assert r.try_read() == bytes(range(30, 40))

    def test_read_packed_too_small_for_first(self, ends):
        """read_packed raises ValueError when the first record does not fit, and the record stays queued
        for the next read_packed."""
        _, w, r = ends
        w.try_write(b"x" * 30)
        lens = np.zeros(4, np.uint32)
        with pytest.raises(ValueError):
            r.read_packed(bytearray(10), lens)
        assert r.read_packed(bytearray(64), lens) == 1
        assert lens[0] == 30

    def test_write_packed_prefix_when_partly_full(self, ends):
        """write_packed writes the prefix that fits and returns its length."""
        _, w, r = ends
        data = bytes(range(100, 105)) * 100
        assert w.write_packed(data, np.array([100] * 5, np.uint32)) == 2
        assert r.try_read_many() == [data[:100], data[100:200]]

    def test_write_packed_lens_beyond_buffer(self, seeded):
        """Lengths adding up to more than the buffer raise ValueError naming both totals."""
        ring, w, r = seeded
        with pytest.raises(ValueError) as ei:
            w.write_packed(b"abc", np.array([2, 2], np.uint32))
        assert "4" in str(ei.value) and "3" in str(ei.value)
        assert_seed_intact(ring, w, r)

    @pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.float32])
    def test_packed_lens_must_be_uint32(self, seeded, dtype):
        """write_packed and read_packed refuse a lens array that is not uint32 with TypeError naming its type."""
        ring, w, r = seeded
        with pytest.raises(TypeError):
            w.write_packed(b"abc", np.array([1, 2], dtype))
        with pytest.raises(TypeError):
            r.read_packed(bytearray(64), np.zeros(4, dtype))
        assert_seed_intact(ring, w, r)

    def test_try_read_many_max_n(self, ends):
        """try_read_many returns at most max_n records, oldest first, and [] when empty."""
        _, w, r = ends
        w.try_write_many(np.arange(10, dtype=np.uint8).reshape(10, 1))
        assert r.try_read_many(3) == [b"\x00", b"\x01", b"\x02"]
        assert r.try_read_many(100) == [bytes([i]) for i in range(3, 10)]
        assert r.try_read_many() == []

    @pytest.mark.parametrize("max_n", [0, -1, 1.5, "2"], ids=repr)
    def test_try_read_many_bad_max_n(self, seeded, max_n):
        """A max_n that is not a positive int raises ValueError naming it."""
        ring, w, r = seeded
        with pytest.raises(ValueError) as ei:
            r.try_read_many(max_n)
        assert repr(max_n) in str(ei.value)
        assert_seed_intact(ring, w, r)

    def test_read_many_returns_what_is_queued(self, ends):
        """read_many returns the queued records without waiting when some are there."""
        _, w, r = ends
        w.try_write(b"1")
        w.try_write(b"2")
        assert r.read_many(10, timeout_s=5) == [b"1", b"2"]

    def test_write_many_ndarray_all_in(self, ends):
        """write_many with room writes every row and returns the count."""
        _, w, r = ends
        a = np.arange(30, dtype=np.uint8).reshape(3, 10)
        assert w.write_many(a, timeout_s=1) == 3
        assert r.try_read_many() == [row.tobytes() for row in a]

    def test_write_many_list_all_in(self, ends):
        """write_many with a list of records writes them all in order."""
        _, w, r = ends
        assert w.write_many([b"a", b"b", b"c"], timeout_s=1) == 3
        assert r.try_read_many() == [b"a", b"b", b"c"]


class TestStatus:
    def test_counters_follow_traffic(self, ends):
        """records_written, records_read, used, queued and full_events track what happened."""
        ring, w, r = ends
        for i in range(3):
            w.try_write(bytes(10 * i))
        s = ring.status()
        assert (s.records_written, s.records_read, s.queued) == (3, 0, 3)
        assert s.used == s.tail - s.head == rec_size(0) + rec_size(10) + rec_size(20)
        r.try_read()
        s = ring.status()
        assert (s.records_read, s.queued, s.head) == (1, 2, rec_size(0))
        fill(w)
        fill(w)
        assert ring.status().full_events == 2
        s = ring.status()
        assert s.used <= s.capacity

    def test_pids_and_flags(self, ends):
        """status shows both ends' pids, open flags and heartbeats from this process."""
        ring, w, r = ends
        t0 = clock.now_ns()
        s = ring.status()
        assert s.producer_pid == s.consumer_pid == s.creator_pid == os.getpid()
        assert not s.producer_closed and not s.consumer_closed
        assert 0 < s.producer_beat_ns <= t0
        assert 0 < s.consumer_beat_ns <= t0
        w.close()
        r.close()
        s = ring.status()
        assert s.producer_closed and s.consumer_closed

    def test_status_is_a_frozen_snapshot(self, ends):
        """A RingStatus does not change when the ring does, and cannot be modified."""
        ring, w, _ = ends
        s = ring.status()
        w.try_write(b"x")
        assert s.records_written == 0
        with pytest.raises(AttributeError):
            s.used = 1  # type: ignore[misc]


class TestTimeouts:
    @pytest.mark.parametrize("policy", POLICIES)
    def test_read_on_empty(self, ring, policy):
        """read(timeout_s=0.05) on an empty ring raises RingTimeoutError (a TimeoutError) naming the timeout."""
        ring.writer()
        r = ring.reader(wait=policy)
        with pytest.raises(TimeoutError) as ei:
            r.read(timeout_s=0.05)
        assert isinstance(ei.value, RingTimeoutError)
        assert "0.05" in str(ei.value)
        assert r.try_read() is None

    @pytest.mark.parametrize("policy", POLICIES)
    def test_write_on_full(self, ring, policy):
        """write(timeout_s=0.05) on a full ring raises RingTimeoutError and queues nothing more."""
        w = ring.writer(wait=policy)
        ring.reader()
        n = fill(w)
        with pytest.raises(RingTimeoutError) as ei:
            w.write(b"x" * 100, timeout_s=0.05)
        assert "0.05" in str(ei.value)
        assert ring.status().records_written == n

    @pytest.mark.parametrize("policy", POLICIES)
    def test_claim_on_full(self, ring, policy):
        """claim(timeout_s=0.05) on a full ring raises RingTimeoutError."""
        w = ring.writer(wait=policy)
        ring.reader()
        fill(w)
        with pytest.raises(RingTimeoutError):
            w.claim(100, timeout_s=0.05)

    @pytest.mark.parametrize("policy", POLICIES)
    def test_write_many_on_full_reports_written(self, ring, policy):
        """write_many that times out raises RingTimeoutError whose ``written`` counts the rows that went in."""
        w = ring.writer(wait=policy)
        ring.reader()
        a = np.zeros((5, 100), np.uint8)
        with pytest.raises(RingTimeoutError) as ei:
            w.write_many(a, timeout_s=0.05)
        assert ei.value.written == 2
        assert ring.status().records_written == 2

    @pytest.mark.parametrize("policy", POLICIES)
    def test_wait_and_peek_on_empty(self, ring, policy):
        """wait(0.05) on an empty ring returns False; peek(0.05) raises RingTimeoutError."""
        ring.writer()
        r = ring.reader(wait=policy)
        assert r.wait(timeout_s=0.05) is False
        with pytest.raises(RingTimeoutError):
            r.peek(timeout_s=0.05)

    def test_wait_true_when_queued(self, ends):
        """wait() returns True at once when a record is queued, and consumes nothing."""
        ring, w, r = ends
        w.try_write(b"x")
        assert r.wait(timeout_s=5) is True
        assert ring.status().queued == 1

    def test_park_policy_parks_and_spin_does_not(self, ring):
        """A timed-out read parks on the futex with 'park' and never with 'spin'."""
        ring.writer()
        r = ring.reader(wait="spin")
        with pytest.raises(RingTimeoutError):
            r.read(timeout_s=0.02)
        assert ring.status().consumer_parks == 0
        r.set_wait("park")
        with pytest.raises(RingTimeoutError):
            r.read(timeout_s=0.02)
        assert ring.status().consumer_parks >= 1

    def test_zero_timeout_does_not_wait(self, ends):
        """timeout_s=0 on an empty ring raises RingTimeoutError without parking."""
        ring, _, r = ends
        r.set_wait("park")
        with pytest.raises(RingTimeoutError):
            r.read(timeout_s=0)
        assert ring.status().consumer_parks == 0


class TestWaitPolicy:
    @pytest.fixture(autouse=True)
    def wake_25us(self, monkeypatch):
        """Every test here sees a 25 us futex wake, as if measured (the real one varies by machine)."""
        import edgepipe.wait

        monkeypatch.setattr(edgepipe.wait, "_cost", edgepipe.wait.WakeCost(25_000, "measured"))

    @pytest.mark.parametrize(
        "budget_s,mode,spin_ns",
        [(0, "spin", 0), (20e-6, "spin", 0), (49e-6, "spin", 0), (50e-6, "hybrid", 25_000),
         (500e-6, "hybrid", 25_000), (1e-3, "hybrid", 2_000), (0.1, "hybrid", 2_000),
         (None, "hybrid", 2_000), (math.inf, "hybrid", 2_000)],
    )
    def test_from_budget(self, budget_s, mode, spin_ns):
        """from_budget spins under two wakes, spins a wake then parks under 1 ms, else spins 2 us then parks."""
        p = WaitPolicy.from_budget(budget_s)
        assert (p.mode, p.spin_ns) == (mode, spin_ns)

    @pytest.mark.parametrize("budget_s", [-1e-6, math.nan])
    def test_from_budget_rejects_bad_budget(self, budget_s):
        """A negative or NaN budget raises ValueError naming it."""
        with pytest.raises(ValueError, match=repr(budget_s)):
            WaitPolicy.from_budget(budget_s)

    def test_default_is_hybrid(self):
        """The default policy is hybrid with this machine's spin (here the 25 us wake the fixture set)."""
        assert WaitPolicy() == WaitPolicy("hybrid", 25_000)
        assert WaitPolicy.coerce(None) == WaitPolicy()

    def test_default_spin_follows_the_measured_wake(self, monkeypatch):
        """The default spin and from_budget's thresholds come from the measured wake, not a constant."""
        import edgepipe.wait

        monkeypatch.setattr(edgepipe.wait, "_cost", edgepipe.wait.WakeCost(7_000, "measured"))
        assert WaitPolicy().spin_ns == 7_000
        assert WaitPolicy("park").spin_ns == 7_000  # unused while parking, but one default everywhere
        assert WaitPolicy.from_budget(13e-6) == WaitPolicy("spin", 0)  # under two 7 us wakes
        assert WaitPolicy.from_budget(14e-6) == WaitPolicy("hybrid", 7_000)
        assert WaitPolicy("hybrid", 0).spin_ns == 0  # an explicit spin is kept

    @pytest.mark.parametrize("mode", ["spin", "park", "hybrid"])
    def test_coerce_strings(self, mode):
        """coerce accepts each mode name and a WaitPolicy passes through unchanged."""
        p = WaitPolicy.coerce(mode)
        assert p.mode == mode
        assert WaitPolicy.coerce(p) is p

    def test_bad_mode(self):
        """An unknown mode raises ValueError naming it."""
        with pytest.raises(ValueError, match="'sleep'"):
            WaitPolicy("sleep")
        with pytest.raises(ValueError, match="'sleep'"):
            WaitPolicy.coerce("sleep")

    @pytest.mark.parametrize("spin_ns", [-1, 1.5, True], ids=repr)
    def test_bad_spin(self, spin_ns):
        """A negative or non-int spin_ns raises ValueError naming it."""
        with pytest.raises(ValueError, match=repr(spin_ns)):
            WaitPolicy("hybrid", spin_ns)

    @pytest.mark.parametrize("wait", [3, 1.0, ["spin"]], ids=repr)
    def test_coerce_bad_type(self, wait):
        """coerce of something that is not a policy, a mode name or None raises TypeError naming it."""
        with pytest.raises(TypeError, match=repr(wait).replace("[", r"\[").replace("]", r"\]")):
            WaitPolicy.coerce(wait)

    @pytest.mark.parametrize("wait", ["spin", "park", "hybrid", WaitPolicy("hybrid", 1000), None])
    def test_ends_accept_every_policy(self, ring, wait):
        """Both ends open with, and switch to, any policy."""
        w = ring.writer(wait=wait)
        r = ring.reader(wait=wait)
        w.set_wait(wait or "hybrid")
        r.set_wait(wait or "hybrid")
        w.try_write(b"ok")
        assert r.read(timeout_s=5) == b"ok"

    def test_frozen(self):
        """A WaitPolicy cannot be modified."""
        with pytest.raises(AttributeError):
            WaitPolicy().mode = "spin"  # type: ignore[misc]


class TestRepr:
    def test_ring_repr(self, ends):
        """A ring's repr shows its name (or memfd), capacity, used bytes and queued records."""
        ring, w, _ = ends
        w.try_write(b"abc")
        assert repr(ring) == f"<Ring 'memfd' capacity={CAP} used={rec_size(3)} queued=1>"

    def test_named_ring_repr(self, shm_name):
        """A named ring's repr shows its name."""
        with Ring.create(shm_name, capacity=4096) as ring:
            assert repr(ring) == f"<Ring {shm_name!r} capacity=4096 used=0 queued=0>"

    def test_end_reprs(self, ends):
        """Writer and reader reprs show the ring, capacity and used bytes or queued records."""
        _, w, r = ends
        w.try_write(b"abc")
        assert repr(w) == f"<RingWriter 'memfd' capacity={CAP} used={rec_size(3)}>"
        assert repr(r) == f"<RingReader 'memfd' capacity={CAP} queued=1>"

    def test_closed_reprs(self, ends):
        """Closed handles and rings say so in their repr."""
        ring, w, r = ends
        w.close()
        r.close()
        assert repr(w) == "<RingWriter 'memfd' closed>"
        assert repr(r) == "<RingReader 'memfd' closed>"
        ring.close()
        assert repr(ring) == "<Ring 'memfd' closed>"

    def test_wait_policy_repr(self):
        """A WaitPolicy's repr shows its mode and spin."""
        assert repr(WaitPolicy("park", 0)) == "WaitPolicy(mode='park', spin_ns=0)"


WRITER_METHODS = {
    "try_write": lambda w: w.try_write(b"x"),
    "write": lambda w: w.write(b"x", timeout_s=0),
    "claim": lambda w: w.claim(1),
    "try_claim": lambda w: w.try_claim(1),
    "try_write_many-list": lambda w: w.try_write_many([b"x"]),
    "try_write_many-ndarray": lambda w: w.try_write_many(np.zeros((1, 1), np.uint8)),
    "write_many": lambda w: w.write_many([b"x"], timeout_s=0),
    "write_packed": lambda w: w.write_packed(b"x", np.array([1], np.uint32)),
    "set_wait": lambda w: w.set_wait("spin"),
}

READER_METHODS = {
    "try_read": lambda r: r.try_read(),
    "read": lambda r: r.read(timeout_s=0),
    "read_into": lambda r: r.read_into(bytearray(8)),
    "try_peek": lambda r: r.try_peek(),
    "peek": lambda r: r.peek(timeout_s=0),
    "release": lambda r: r.release(),
    "try_read_many": lambda r: r.try_read_many(),
    "read_many": lambda r: r.read_many(timeout_s=0),
    "read_packed": lambda r: r.read_packed(bytearray(8), np.zeros(1, np.uint32)),
    "wait": lambda r: r.wait(timeout_s=0),
    "set_wait": lambda r: r.set_wait("spin"),
    "last_type": lambda r: r.last_type,
}


class TestClose:
    def test_close_twice(self, ends):
        """Writer and reader close() may be called twice; closed reports it."""
        _, w, r = ends
        for h in (w, r):
            assert not h.closed
            h.close()
            h.close()
            assert h.closed

    def test_with_closes_an_end(self, ring):
        """Leaving ``with ring.writer()`` / ``with ring.reader()`` closes the end."""
        with ring.writer() as w, ring.reader() as r:
            w.try_write(b"x")
            assert r.try_read() == b"x"
        assert w.closed and r.closed
        s = ring.status()
        assert s.producer_closed and s.consumer_closed

    @pytest.mark.parametrize("how", sorted(WRITER_METHODS))
    def test_writer_methods_after_close(self, ends, how):
        """Every writer method on a closed writer raises RingClosedError naming the handle."""
        _, w, _ = ends
        w.close()
        with pytest.raises(RingClosedError, match="RingWriter"):
            WRITER_METHODS[how](w)

    @pytest.mark.parametrize("how", sorted(READER_METHODS))
    def test_reader_methods_after_close(self, ends, how):
        """Every reader method (and last_type) on a closed reader raises RingClosedError naming the handle."""
        ring, w, r = ends
        w.try_write(b"queued", 4)
        r.close()
        with pytest.raises(RingClosedError, match="RingReader"):
            READER_METHODS[how](r)

    def test_claim_outliving_its_writer(self, ends):
        """Committing a claim after its writer closed raises RingClosedError."""
        _, w, _ = ends
        c = w.claim(4)
        w.close()
        with pytest.raises(RingClosedError):
            c.commit()

    def test_ring_close_closes_its_handles(self, ring):
        """Ring.close() closes every end opened through it, which other mappings then see as closed."""
        w, r = ring.writer(), ring.reader()
        watcher = Ring.from_fd(ring.fd)
        try:
            ring.close()
            ring.close()
            assert w.closed and r.closed and ring.closed
            s = watcher.status()
            assert s.producer_closed and s.consumer_closed
            with pytest.raises(RingClosedError):
                w.try_write(b"x")
            with pytest.raises(RingClosedError):
                r.try_read()
        finally:
            watcher.close()

    @pytest.mark.parametrize(
        "how",
        ["status", "fd", "capacity", "max_payload", "writer", "reader"],
    )
    def test_ring_after_close(self, ring, how):
        """Every Ring accessor on a closed ring raises RingClosedError."""
        ring.close()
        with pytest.raises(RingClosedError):
            attr = getattr(ring, how)
            attr() if callable(attr) else None

    def test_closed_end_frees_the_slot(self, ring):
        """A closed end can be reopened through the same ring."""
        ring.writer().close()
        ring.reader().close()
        w, r = ring.writer(), ring.reader()
        w.try_write(b"again")
        assert r.try_read() == b"again"


# ---------------------------------------------------------------------------------------------------
# blocking across threads: the GIL is released while a call waits in C


class TestBlockingThreads:
    @pytest.mark.parametrize("policy", ["park", "hybrid"])
    def test_blocked_reader_is_woken_by_writer(self, policy):
        """A reader thread blocked in read() is woken by a write from the main thread, and the main thread
        runs Python while the reader is blocked (so read() does not hold the GIL)."""
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader(wait=policy)
            out: dict = {}

            def reader():
                try:
                    out["got"] = (r.read(timeout_s=60), r.last_type)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    out["err"] = e

            t = threading.Thread(target=reader)
            t.start()
            # The main thread polls (Python code) until the reader has parked inside read().
            parked = _wait_until(lambda: ring.status().consumer_parks > 0)
            busy = sum(i * i for i in range(10_000))  # more Python while the reader blocks
            still_blocked = t.is_alive() and not out
            w.write(b"wake up", type_id=9)
            t.join(60)
            assert parked and still_blocked and busy > 0
            assert out == {"got": (b"wake up", 9)}

    @pytest.mark.parametrize("policy", ["park", "hybrid"])
    def test_blocked_writer_is_woken_by_reader(self, policy):
        """A writer thread blocked in write() on a full ring is woken when the main thread reads."""
        with Ring.create(capacity=256) as ring:
            w, r = ring.writer(wait=policy), ring.reader()
            n = fill(w)
            out: dict = {}

            def writer():
                try:
                    w.write(b"Z" * 100, type_id=2, timeout_s=60)
                    out["done"] = True
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    out["err"] = e

            t = threading.Thread(target=writer)
            t.start()
            parked = _wait_until(lambda: ring.status().producer_parks > 0)
            still_blocked = t.is_alive() and not out
            first = r.try_read()
            t.join(60)
            assert parked and still_blocked
            assert out == {"done": True}
            assert first == bytes([0]) * 100
            rest = r.try_read_many()
            assert rest[-1] == b"Z" * 100
            assert len(rest) == n

    def test_blocked_peek_is_woken(self):
        """A thread blocked in ``peek()`` gets the record a writer sends."""
        with Ring.create(capacity=4096) as ring:
            w, r = ring.writer(), ring.reader(wait="park")
            out: dict = {}

            def reader():
                with r.peek(timeout_s=60) as view:
                    out["got"] = bytes(view)

            t = threading.Thread(target=reader)
            t.start()
            _wait_until(lambda: ring.status().consumer_parks > 0)
            w.try_write(b"peeked")
            t.join(60)
            assert out == {"got": b"peeked"}
            assert ring.status().records_read == 1


# ---------------------------------------------------------------------------------------------------
# two processes: sequence numbers and checksums


def _produce(fd: int, count: int, seed: int) -> None:
    ring = Ring.from_fd(fd)
    w = ring.writer(wait="hybrid")
    rng = random.Random(seed)
    max_body = w.max_payload - 8
    for seq in range(count):
        body = rng.randbytes(rng.randrange(0, max_body + 1))
        w.write(struct.pack("=II", seq, zlib.crc32(body)) + body, type_id=seq % 7, timeout_s=60)
    w.close()
    ring.close()


class TestTwoProcesses:
    @pytest.mark.parametrize("policy", ["park", "hybrid"])
    def test_sequence_and_checksums(self, policy):
        """Records from a producer process arrive in order with intact checksums and types, then the
        producer's close ends the stream with PeerClosedError."""
        count = 5000
        with Ring.create(capacity=1024) as ring:
            r = ring.reader(wait=policy)
            p = FORK.Process(target=_produce, args=(ring.fd, count, 99))
            p.start()
            try:
                for seq in range(count):
                    rec = r.read(timeout_s=60)
                    got_seq, crc = struct.unpack_from("=II", rec)
                    assert got_seq == seq
                    assert zlib.crc32(rec[8:]) == crc
                    assert r.last_type == seq % 7
                with pytest.raises(PeerClosedError):
                    r.read(timeout_s=60)
            finally:
                p.join(60)
            assert p.exitcode == 0
            s = ring.status()
            assert s.records_written == s.records_read == count
