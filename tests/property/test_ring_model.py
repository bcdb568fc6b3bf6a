"""Property tests for the SPSC ring: a Hypothesis state machine drives a small ring (64..1024 bytes) with
both ends in this process against a ``deque`` model that also tracks the byte positions, and a round-trip
property for single payloads.

The model's room rule is the ring's: a record of n payload bytes needs ``rec_size(n) = 8 + round_up(n, 8)``
contiguous bytes before the end of the data area; if fewer are left, the gap to the end is consumed as
padding and the record starts at slot 0. It fits iff ``tail + pad + rec_size(n) - head <= capacity``.
Bounded with ``max_examples`` so the file runs well under a minute on a 2-core VM.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from strategies import (
    batches,
    capacities,
    fixed_batches,
    max_payload,
    payloads,
    payloads_of_size,
    rec_size,
    sizes,
    type_ids,
)

from edgepipe import Ring


@dataclass
class Queued:
    payload: bytes
    type_id: int
    span: int  # bytes the record moved the tail by: padding before it plus its own rec_size


class RingModel:
    """What the ring should hold: the queued records in order, and the producer/consumer byte positions."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tail = 0
        self.head = 0
        self.queue: deque[Queued] = deque()
        self.written = 0
        self.read = 0
        self.full_events = 0

    def padding(self, n: int) -> int | None:
        """Padding a record of n bytes needs at the current tail, or None if it does not fit."""
        need = rec_size(n)
        to_end = self.capacity - self.tail % self.capacity
        pad = 0 if need <= to_end else to_end
        if self.tail + pad + need - self.head > self.capacity:
            return None
        return pad

    def push(self, payload: bytes, type_id: int, pad: int) -> None:
        """Append a record committed at tail + pad (a claim may commit fewer bytes than it reserved)."""
        span = pad + rec_size(len(payload))
        self.queue.append(Queued(payload, type_id, span))
        self.tail += span
        self.written += 1

    def try_push(self, payload: bytes, type_id: int) -> bool:
        pad = self.padding(len(payload))
        if pad is None:
            return False
        self.push(payload, type_id, pad)
        return True

    def push_batch(self, records: list[bytes], type_id: int) -> int:
        """Append the prefix of records that fits, in order; a batch that fits none is one full event."""
        k = 0
        for rec in records:
            if not self.try_push(rec, type_id):
                break
            k += 1
        if k == 0:
            self.full_events += 1
        return k

    def pop(self) -> Queued:
        q = self.queue.popleft()
        self.head += q.span
        self.read += 1
        return q


class RingMachine(RuleBasedStateMachine):
    """Random sequences of every non-blocking ring operation, checked record by record against RingModel."""

    def __init__(self) -> None:
        super().__init__()
        self.ring: Ring | None = None

    @initialize(capacity=capacities())
    def open_ring(self, capacity):
        self.ring = Ring.create(capacity=capacity)
        self.w = self.ring.writer()
        self.r = self.ring.reader()
        self.model = RingModel(capacity)
        self.max = max_payload(capacity)

    def teardown(self) -> None:
        if self.ring is not None:
            self.r.close()
            self.w.close()
            self.ring.close()

    # -- helpers ------------------------------------------------------------------------------------
    def _expect_record(self, got: bytes, last_type: int) -> None:
        want = self.model.pop()
        assert got == want.payload
        assert last_type == want.type_id

    def _no_room(self) -> None:
        self.model.full_events += 1

    # -- writes -------------------------------------------------------------------------------------
    @rule(data=st.data())
    def try_write(self, data):
        payload = data.draw(payloads(self.max), label="payload")
        type_id = data.draw(type_ids(), label="type_id")
        pad = self.model.padding(len(payload))
        fits = pad is not None
        event("try_write: " + ("full" if not fits else "fits after padding" if pad else "fits"))
        assert self.w.try_write(payload, type_id) is fits
        if fits:
            self.model.try_push(payload, type_id)
        else:
            self._no_room()

    @rule(data=st.data())
    def claim_commit(self, data):
        size = data.draw(sizes(self.max), label="claim size")
        keep = data.draw(st.integers(0, size), label="commit size")
        use_with = data.draw(st.booleans(), label="with block")
        type_id = data.draw(type_ids(), label="type_id")
        payload = data.draw(payloads_of_size(size), label="payload")
        pad = self.model.padding(size)
        event("claim_commit: " + ("full" if pad is None else "shrunk" if keep < size else "whole"))
        claim = self.w.try_claim(size, type_id)
        assert (claim is None) is (pad is None)
        if claim is None:
            self._no_room()
            return
        if use_with:
            with claim as view:
                assert len(view) == size
                view[:] = payload
                if keep != size:
                    claim.commit(keep)
        else:
            claim.view[:] = payload
            claim.commit(keep)
        self.model.push(payload[:keep], type_id, pad)

    @rule(data=st.data())
    def claim_abort(self, data):
        size = data.draw(sizes(self.max), label="claim size")
        by_exception = data.draw(st.booleans(), label="abort by exception")
        fits = self.model.padding(size) is not None
        claim = self.w.try_claim(size)
        assert (claim is None) is (not fits)
        if claim is None:
            self._no_room()
            return
        if by_exception:
            with pytest.raises(KeyError):
                with claim as view:
                    view[:] = b"\xee" * size
                    raise KeyError("abandon")
        else:
            claim.view[:] = b"\xdd" * size
            claim.abort()

    @rule(data=st.data())
    def try_write_many_list(self, data):
        records = data.draw(batches(self.max), label="records")
        type_id = data.draw(type_ids(), label="type_id")
        expected = self.model.push_batch(records, type_id)
        event(f"try_write_many: {'all' if expected == len(records) else 'none' if expected == 0 else 'a prefix'}")
        assert self.w.try_write_many(records, type_id) == expected

    @rule(data=st.data())
    def try_write_many_array(self, data):
        rows, size, seed = data.draw(fixed_batches(self.max), label="rows, size, seed")
        type_id = data.draw(type_ids(), label="type_id")
        arr = np.frombuffer(random.Random(seed).randbytes(rows * size), np.uint8).reshape(rows, size)
        records = [row.tobytes() for row in arr]
        assert self.w.try_write_many(arr, type_id) == self.model.push_batch(records, type_id)

    @rule(data=st.data())
    def write_packed(self, data):
        records = data.draw(batches(self.max), label="records")
        type_id = data.draw(type_ids(), label="type_id")
        lens = np.array([len(r) for r in records], np.uint32)
        assert self.w.write_packed(b"".join(records), lens, type_id) == self.model.push_batch(records, type_id)

    # -- reads --------------------------------------------------------------------------------------
    @rule()
    def try_read(self):
        got = self.r.try_read()
        if not self.model.queue:
            assert got is None
            return
        self._expect_record(got, self.r.last_type)

    @rule(max_n=st.integers(1, 8))
    def try_read_many(self, max_n):
        got = self.r.try_read_many(max_n)
        want = [self.model.pop().payload for _ in range(min(max_n, len(self.model.queue)))]
        assert got == want

    @rule(data=st.data())
    def read_packed(self, data):
        nlens = data.draw(st.integers(1, 8), label="lens slots")
        buf_size = data.draw(st.integers(0, self.model.capacity), label="buffer bytes")
        with_types = data.draw(st.booleans(), label="types array")
        buf = np.zeros(buf_size, np.uint8)
        lens = np.zeros(nlens, np.uint32)
        types = np.zeros(nlens, np.uint32) if with_types else None
        # Expected: records in order while they fit in both lens and buf.
        take, room = [], buf_size
        for q in self.model.queue:
            if len(take) == nlens or len(q.payload) > room:
                break
            take.append(q)
            room -= len(q.payload)
        event("read_packed: " + ("too small" if self.model.queue and not take else f"{len(take)} records"))
        if self.model.queue and not take:
            with pytest.raises(ValueError):
                self.r.read_packed(buf, lens, types)
            return  # the record stays queued: the model is unchanged
        assert self.r.read_packed(buf, lens, types) == len(take)
        pos = 0
        for i, q in enumerate(take):
            assert lens[i] == len(q.payload)
            assert buf[pos : pos + lens[i]].tobytes() == q.payload
            if types is not None:
                assert types[i] == q.type_id
            pos += len(q.payload)
            self.model.pop()

    @rule(twice=st.booleans())
    def peek_release(self, twice):
        view = self.r.try_peek()
        if not self.model.queue:
            assert view is None
            return
        front = self.model.queue[0]
        assert bytes(view) == front.payload
        assert self.r.last_type == front.type_id
        if twice:
            assert bytes(self.r.try_peek()) == front.payload
        self.r.release()
        self.model.pop()

    @rule()
    def with_peek(self):
        if not self.model.queue:
            assert self.r.try_peek() is None
            return
        with self.r.peek(timeout_s=0) as view:
            got = bytes(view)
        self._expect_record(got, self.r.last_type)

    # -- invariants ---------------------------------------------------------------------------------
    @invariant()
    def positions_and_counters_match(self):
        if self.ring is None:
            return
        s = self.ring.status()
        m = self.model
        assert s.used <= s.capacity == m.capacity
        assert (s.tail, s.head) == (m.tail, m.head)
        assert s.used == m.tail - m.head
        assert s.records_written - s.records_read == len(m.queue)
        assert (s.records_written, s.records_read) == (m.written, m.read)
        assert s.full_events == m.full_events


RingMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingMachine = RingMachine.TestCase
TestRingMachine.__doc__ = "Every random sequence of ring operations agrees with the deque model, byte for byte."


WRITE_PATHS = ["try_write", "write", "claim", "try_write_many", "write_packed"]
READ_PATHS = ["try_read", "read", "peek", "read_into", "try_read_many", "read_packed"]


def _write(w, how: str, payload: bytes, type_id: int) -> None:
    if how == "try_write":
        assert w.try_write(payload, type_id)
    elif how == "write":
        w.write(payload, type_id, timeout_s=5)
    elif how == "claim":
        with w.claim(len(payload), type_id) as view:
            view[:] = payload
    elif how == "try_write_many":
        assert w.try_write_many([payload], type_id) == 1
    else:
        assert w.write_packed(payload, np.array([len(payload)], np.uint32), type_id) == 1


def _read(r, how: str, capacity: int) -> tuple[bytes, int | None]:
    """Read one record; return it and its type (None where the path reports no type)."""
    if how == "try_read":
        return r.try_read(), r.last_type
    if how == "read":
        return r.read(timeout_s=5), r.last_type
    if how == "peek":
        with r.peek(timeout_s=5) as view:
            return bytes(view), r.last_type
    if how == "read_into":
        buf = bytearray(capacity)
        n = r.read_into(buf, timeout_s=5)
        return bytes(buf[:n]), r.last_type
    if how == "try_read_many":
        (got,) = r.try_read_many(1)
        return got, None
    buf, lens, types = np.zeros(capacity, np.uint8), np.zeros(1, np.uint32), np.zeros(1, np.uint32)
    assert r.read_packed(buf, lens, types) == 1
    return buf[: lens[0]].tobytes(), int(types[0])


class TestRoundTrip:
    @settings(max_examples=300, deadline=None)
    @given(capacity=capacities(), data=st.data())
    def test_any_payload_round_trips(self, capacity, data):
        """Any payload of 0..max_payload bytes, at any ring offset, reads back exactly with its type."""
        payload = data.draw(payloads(max_payload(capacity)), label="payload")
        type_id = data.draw(type_ids(), label="type_id")
        filler = data.draw(st.lists(sizes(max_payload(capacity)), max_size=3), label="filler sizes")
        with Ring.create(capacity=capacity) as ring:
            w, r = ring.writer(), ring.reader()
            for n in filler:  # move the positions so the record may need padding or land anywhere
                assert w.try_write(bytes(n))
                assert r.try_read() == bytes(n)
            assert w.try_write(payload, type_id)
            assert r.try_read() == payload
            assert r.last_type == type_id
            assert r.try_read() is None

    @settings(max_examples=200, deadline=None)
    @given(
        capacity=capacities(),
        write_how=st.sampled_from(WRITE_PATHS),
        read_how=st.sampled_from(READ_PATHS),
        data=st.data(),
    )
    def test_every_write_path_meets_every_read_path(self, capacity, write_how, read_how, data):
        """A payload written by any write method reads back exactly, with its type, through any read method."""
        payload = data.draw(payloads(max_payload(capacity)), label="payload")
        type_id = data.draw(type_ids(), label="type_id")
        offset = data.draw(st.integers(0, capacity // 8 - 1), label="offset in 8-byte slots")
        with Ring.create(capacity=capacity) as ring:
            w, r = ring.writer(), ring.reader()
            while offset > 0:  # advance both positions by `offset` slots using records of whole slots
                n = min(offset, max_payload(capacity) // 8 + 1)
                assert w.try_write(bytes(8 * (n - 1)))
                r.try_read()
                offset -= n
            _write(w, write_how, payload, type_id)
            got, got_type = _read(r, read_how, capacity)
            assert got == payload
            if got_type is not None:
                assert got_type == type_id
