"""The receiving bridge's short path for stamped records (edgepipe.bridge.stage ``_receiver``): it writes the very
bytes, and keeps the very counters, that the general path (``_on_sample``) does, and leaves every other sample
to it; and a sending bridge with several inputs waits on their rings instead of sleeping (loopback)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from edgepipe.pipeline.api import Inlet, Outlet
from edgepipe.pipeline.wire import Hop, pack_record, unpack_record
from edgepipe.ring import Ring

pytest.importorskip("zenoh", reason="the bridge extra (eclipse-zenoh) is not installed")

import edgepipe.bridge.stage as stage_mod
from edgepipe.bridge.stage import BridgeStage
from edgepipe.bridge.wire import HEADER, pack

KEY = "edgepipe/A/nums"
NOW = 9_000_000_000
HANG_S = 60


class _Payload:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_bytes(self) -> bytes:
        return self.data


class _Sample:
    def __init__(self, data: bytes) -> None:
        self.payload = _Payload(data)
        self.key_expr = KEY


class _Estimate:
    """A fixed clock mapping, standing in for edgepipe.bridge.clock's estimate."""

    def to_local(self, remote_ns: int) -> float:
        return remote_ns - 1234.5


def _end(ring: Ring, mode: str = "lossless", est=None):
    """A receiving bridge end (no session) feeding ``ring``, its clock fixed at NOW: (stage, callback)."""
    down = BridgeStage("down", outputs={"nums": "nums"}, remote="A", pipeline="B",
                       connect=["tcp/127.0.0.1:9"], max_bytes=4096)
    down.now = lambda: NOW
    down.estimate = est
    return down, down._bind_output(KEY, Outlet(ring.writer(), "nums", 7, mode=mode))


def _records() -> list[bytes]:
    """Envelopes of stamped records: 0 to 3 hops, redelivered or not, empty and 1 KB payloads, a gap in the
    bridge's numbering (seq 4 -> 6) and one more before the last, a record that is not stamped at all."""
    out, seq = [], 0
    for nhops in range(4):
        for flags in (0, 1):
            for size in (0, 1000):
                hops = [Hop(i, i + 1, 1000 * i, 1000 * i + 5) for i in range(nhops)]
                rec = pack_record(bytes([seq % 251]) * size, 100 + seq, 5_000 + seq, hops, flags)
                out.append(pack(rec, seq=seq + (seq >= 5), send_ns=7_000 + seq, type_id=1))
                seq += 1
    out.append(pack(b"plain bytes, no stamps", seq=seq + 2, send_ns=1, type_id=1))
    return out


def _drain(ring: Ring) -> list[bytes]:
    r, got = ring.reader(), []
    while (b := r.try_read()) is not None:
        got.append(b)
    return got


class TestShortPath:
    @pytest.mark.parametrize("est", [None, _Estimate()], ids=["no-estimate", "estimate"])
    def test_writes_the_bytes_and_counts_of_the_general_path(self, est):
        """Every record gives byte-identical ring records and identical counters (received, bytes, lost,
        restamped_without_clock, the wire latencies) on the short path and on the general one."""
        envs = _records()
        with Ring.create(capacity=1 << 20) as fast_ring, Ring.create(capacity=1 << 20) as slow_ring:
            fast, cb = _end(fast_ring, est=est)
            slow, _ = _end(slow_ring, est=est)
            for e in envs:
                cb(_Sample(e))
                slow._on_sample(KEY, e)
            fast_got, slow_got = _drain(fast_ring), _drain(slow_ring)
        assert len(fast_got) == len(envs) and fast_got == slow_got
        a, b = fast.checkers[KEY], slow.checkers[KEY]
        assert (a.received, a.bytes, a.lost, a.next_seq, a.last_send_ns, a.dropped) == \
               (b.received, b.bytes, b.lost, b.next_seq, b.last_send_ns, b.dropped)
        assert a.lost == 2  # the two gaps in the numbering
        assert fast.restamped_without_clock == slow.restamped_without_clock == (0 if est else len(envs) - 1)
        assert list(fast.wire_ns) == list(slow.wire_ns)
        rec = unpack_record(fast_got[-2])  # the last stamped one: one hop of this stage, on this clock
        cap = (5_000 + 15 - 1234.5) if est else NOW - (7_000 + 15 - (5_000 + 15))
        assert (rec.seq, rec.capture_ns, rec.redelivered) == (115, int(cap), True)
        assert [(h.stage, h.receive_ns, h.publish_ns) for h in rec.hops] == [(7, int(cap), NOW)]
        assert fast_got[-1] == b"plain bytes, no stamps"

    def test_bad_samples_still_get_their_reasons(self):
        """A corrupted body, an oversize record and a body shorter than its stamps leave the short path and are
        counted (malformed, oversize) or passed on unchanged, as the general path does."""
        good = pack(pack_record(b"x" * 100, 1, 2, []), seq=0, send_ns=3)
        corrupt = good[:-1] + bytes([good[-1] ^ 1])
        oversize = pack(pack_record(bytes(5000), 1, 2, []), seq=1, send_ns=3)
        truncated_hops = pack(pack_record(b"", 1, 2, [])[:4] + (9).to_bytes(2, "little")
                              + pack_record(b"", 1, 2, [])[6:], seq=2, send_ns=3)
        with Ring.create(capacity=1 << 16) as ring:
            down, cb = _end(ring)
            for e in (corrupt, oversize, truncated_hops, good):
                cb(_Sample(e))
            got = _drain(ring)
        chk = down.checkers[KEY]
        assert chk.dropped == {"malformed": 1, "oversize": 1}
        assert got[0] == truncated_hops[HEADER.size:]  # claims 9 hops it does not carry: not restamped
        assert unpack_record(got[1]).payload == b"x" * 100 and len(got) == 2

    def test_a_full_drop_link_counts_one_drop_per_record(self):
        """On a full drop-mode ring the short path's try and the drop path count each lost record once."""
        with Ring.create(capacity=4096) as ring:
            down, cb = _end(ring, mode="drop")
            env = pack(pack_record(bytes(1500), 1, 2, []), seq=0, send_ns=3)
            sent = 0
            while not down.checkers[KEY].dropped:
                cb(_Sample(env))
                sent += 1
            for _ in range(3):
                cb(_Sample(env))
            got = _drain(ring)
        assert down.checkers[KEY].dropped == {"ring full": 4}
        assert len(got) == sent - 1 and down.checkers[KEY].received == sent + 3

    def test_a_full_lossless_link_waits_until_stopped(self):
        """On a full lossless ring the short path falls back to the waiting write, which gives up (and counts)
        only once the stage is stopping."""
        with Ring.create(capacity=4096) as ring:
            down, cb = _end(ring)
            env = pack(pack_record(bytes(1500), 1, 2, []), seq=0, send_ns=3)
            _ = ring.reader()  # a live consumer: a full ring waits rather than failing
            while ring.status().used + 1600 <= ring.capacity:
                cb(_Sample(env))
            t = threading.Thread(target=cb, args=(_Sample(env),))
            t.start()
            t.join(0.3)
            assert t.is_alive() and not down.checkers[KEY].dropped  # still waiting for room
            down.stop()
            t.join(HANG_S)
        assert not t.is_alive() and down.checkers[KEY].dropped == {"stopped while ring full": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _CountingTime:
    """``time`` for edgepipe.bridge.stage, counting the sleeps of one thread."""

    def __init__(self) -> None:
        self.thread: int | None = None
        self.sleeps = 0

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, s: float) -> None:
        if threading.get_ident() == self.thread:
            self.sleeps += 1
        time.sleep(s)


class TestSeveralInputs:
    def test_an_idle_sender_with_two_matched_inputs_waits_on_their_rings(self, monkeypatch):
        """A sending bridge with two inputs, both matched and idle, does not sleep-poll (it waits on one ring
        at a time); records written on either input then cross, in order, each on its own key."""
        clock = _CountingTime()
        monkeypatch.setattr(stage_mod, "time", clock)
        port = _free_port()
        with Ring.create(capacity=1 << 16) as a1, Ring.create(capacity=1 << 16) as a2, \
                Ring.create(capacity=1 << 16) as b1, Ring.create(capacity=1 << 16) as b2:
            up = BridgeStage("up", inputs={"n": "nums", "m": "more"}, pipeline="A",
                             listen=[f"tcp/127.0.0.1:{port}"], clock_period_ms=0)
            down = BridgeStage("down", outputs={"nums": "nums", "more": "more"}, remote="A", pipeline="B",
                               connect=[f"tcp/127.0.0.1:{port}"], clock_period_ms=0)
            up.attach(inputs={"n": Inlet(a1.reader(), "nums"), "m": Inlet(a2.reader(), "more")}, outputs={})
            down.attach(inputs={}, outputs={"nums": Outlet(b1.writer(), "nums", 1),
                                            "more": Outlet(b2.writer(), "more", 1)})
            tu = threading.Thread(target=up.run, daemon=True)
            td = threading.Thread(target=down.run, daemon=True)
            td.start()
            tu.start()
            clock.thread = tu.ident
            try:
                src1, src2 = Outlet(a1.writer(), "nums", 0), Outlet(a2.writer(), "more", 0)
                sink1, sink2 = Inlet(b1.reader(), "nums"), Inlet(b2.reader(), "more")
                src1.emit(b"first", seq=0)  # crosses once both links are matched
                assert sink1.receive(timeout_s=HANG_S).payload == b"first"
                src2.emit(b"second", seq=0)
                assert sink2.receive(timeout_s=HANG_S).payload == b"second"
                before = clock.sleeps
                time.sleep(0.5)  # idle, both matched
                idle_sleeps = clock.sleeps - before
                for i in range(20):
                    (src1 if i % 2 else src2).emit(i.to_bytes(2, "little"), seq=i)
                got1 = [sink1.receive(timeout_s=HANG_S).seq for _ in range(10)]
                got2 = [sink2.receive(timeout_s=HANG_S).seq for _ in range(10)]
            finally:
                for s in (up, down):
                    s.stop()
                for t in (tu, td):
                    t.join(30)
        assert idle_sleeps == 0
        assert got1 == list(range(1, 20, 2)) and got2 == list(range(0, 20, 2))
