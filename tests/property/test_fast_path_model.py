"""The GIL-keeping fast path (edgepipe._fast, csrc/py_fast.c) against the cffi path it replaced.

A Hypothesis state machine drives two rings of the same capacity with the same operations: one through the
public methods (``try_write``, ``try_read``, ``read_into``: the C extension), one through the cffi forms
those methods fall back to (``_cffi_try_write``, ``_cffi_try_read``, ``_cffi_read_into``). Each step must
give the same result, or an exception of the same type with the same message, and after each step both
rings must be in the same state: positions, fill, counters, the last record type. Payloads come as bytes,
bytearray, memoryview, numpy arrays and things that are not buffers; type ids and timeouts include bad ones;
the ends get closed along the way.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from strategies import capacities, max_payload

from edgepipe import Ring
from edgepipe.ring import RingReader, RingWriter

STATE = ("head", "tail", "used", "records_written", "records_read", "full_events", "producer_closed",
         "consumer_closed")


def outcome(call, *args, **kw):
    """What a call did: ("ok", result) or ("raised", exception type, message)."""
    try:
        return ("ok", call(*args, **kw))
    except Exception as e:  # noqa: BLE001 - compared, not swallowed
        return ("raised", type(e), str(e))


payload_kinds = st.sampled_from(["bytes", "bytearray", "memoryview", "numpy-u8", "numpy-f64", "str", "int",
                                 "strided"])
good_types = st.integers(0, 0xFFFFFFFE)
bad_types = st.sampled_from([-1, 0xFFFFFFFF, 1 << 40, 1.0, None, "1", True])
# no None: a read that waits forever on an empty ring would hang the test
timeouts = st.sampled_from([0, 0.0, 0.001, 1e-9, -1, float("nan"), "0", False])


def make_payload(kind: str, n: int):
    raw = bytes((i * 7 + n) & 0xFF for i in range(n))
    if kind == "bytes":
        return raw
    if kind == "bytearray":
        return bytearray(raw)
    if kind == "memoryview":
        return memoryview(raw)
    if kind == "numpy-u8":
        return np.frombuffer(raw, np.uint8).copy()
    if kind == "numpy-f64":
        return np.arange(max(n // 8, 0), dtype=np.float64)
    if kind == "strided":
        return np.frombuffer(raw + raw, np.uint8)[::2]
    if kind == "str":
        return "x" * n
    return n


class FastAgainstCffi(RuleBasedStateMachine):
    @initialize(capacity=capacities())
    def open(self, capacity):
        self.rings = [Ring.create(capacity=capacity), Ring.create(capacity=capacity)]
        self.w = [r.writer() for r in self.rings]
        self.r = [r.reader() for r in self.rings]
        self.max = max_payload(capacity)

    def both(self, fast, cffi):
        a, b = fast(), cffi()
        assert a == b, f"fast path {a!r} != cffi path {b!r}"
        return a

    @rule(kind=payload_kinds, n=st.integers(0, 600), type_id=st.one_of(good_types, bad_types),
          pass_type=st.sampled_from(["no", "positional", "keyword"]))
    def try_write(self, kind, n, type_id, pass_type):
        p = make_payload(kind, min(n, self.max + 8))
        args = {"no": ((p,), {}), "positional": ((p, type_id), {}), "keyword": ((p,), {"type_id": type_id})}
        a, kw = args[pass_type]
        self.both(lambda: outcome(self.w[0].try_write, *a, **kw),
                  lambda: outcome(RingWriter._cffi_try_write, self.w[1], *a, **kw))

    @rule()
    def try_read(self):
        self.both(lambda: outcome(self.r[0].try_read), lambda: outcome(RingReader._cffi_try_read, self.r[1]))

    @rule(size=st.integers(0, 600), timeout=timeouts, how=st.sampled_from(["none", "positional", "keyword"]),
          kind=st.sampled_from(["bytearray", "numpy", "bytes", "readonly-view"]))
    def read_into(self, size, timeout, how, kind):
        bufs = []

        def buf():
            b = {"bytearray": lambda: bytearray(size), "numpy": lambda: np.zeros(size, np.uint8),
                 "bytes": lambda: bytes(size), "readonly-view": lambda: memoryview(bytes(size))}[kind]()
            bufs.append(b)
            return b

        def call(f, end):
            b = buf()
            if how == "none":
                return outcome(f, end, b)
            if how == "positional":
                return outcome(f, end, b, timeout)
            return outcome(f, end, b, timeout_s=timeout)

        self.both(lambda: call(RingReader.read_into, self.r[0]), lambda: call(RingReader._cffi_read_into, self.r[1]))
        assert bytes(bufs[0]) == bytes(bufs[1])

    @precondition(lambda self: not self.w[0].closed)
    @rule()
    def close_writer(self):
        for w in self.w:
            w.close()

    @precondition(lambda self: not self.r[0].closed)
    @rule()
    def close_reader(self):
        for r in self.r:
            r.close()

    @invariant()
    def same_state(self):
        if not hasattr(self, "rings"):
            return
        a, b = (r.status() for r in self.rings)
        assert [getattr(a, k) for k in STATE] == [getattr(b, k) for k in STATE]
        if not self.r[0].closed:
            assert self.r[0].last_type == self.r[1].last_type

    def teardown(self):
        for r in getattr(self, "rings", ()):
            r.close()


FastAgainstCffi.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
TestFastAgainstCffi = FastAgainstCffi.TestCase
