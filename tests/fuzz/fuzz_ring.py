"""Atheris harness: the ring reader's record walk (csrc/ep_ring.c, edgepipe.ring.RingReader) over a hostile
segment.

Each input builds a real memfd ring (capacity 64..4096), writes fuzzed bytes into its data area and fuzzed
head/tail positions into its control block (offsets of ``struct ep_ring_ctl``: tail on line pair 1 at 128,
head on line pair 2 at 256; checked against ``Ring.status()`` at import), opens the reader, and runs a
fuzzed script of reads: ``try_read``, ``peek_offset`` (held or released), ``try_peek``, ``read_packed``,
``batch_reader``, ``try_read_many``; in "hostile" inputs also stores of data bytes and of the tail between
reads, as a producer in another process could. Then it drains the ring with ``try_read``.

Every outcome is checked against a plain-Python model of the walk (``Model``: a header is checked against
the published tail and the capacity; padding only at the end; a tail behind the head, unaligned or more
than a ring ahead is corrupt, and stays corrupt while it is), so a wrong record, a record longer than
``max_payload``, a record handed out past the published tail, or a corruption that goes away on retry
is a finding, as are any exception but the documented ones (RingCorruptError, PeerClosedError for an
empty ring, ValueError for a too-small caller buffer or a batch read while a record is held), a crash, and
a drain that does not end within capacity / 4 reads.

Run directly (libFuzzer flags pass through):

    python tests/fuzz/fuzz_ring.py -max_total_time=600 [CORPUS_DIR]
"""

from __future__ import annotations

import struct

from _harness import instrument, main

with instrument("edgepipe.ring", "edgepipe._segment", "edgepipe.shm"):
    import numpy as np
    from edgepipe._ffi import lib

    from edgepipe.errors import PeerClosedError, RingCorruptError
    from edgepipe.ring import Ring


U64 = struct.Struct("<Q")
REC = struct.Struct("<II")
M64 = (1 << 64) - 1
DATA_OFF = lib.EP_RING_DATA_OFF
PAD = lib.EP_REC_PAD
TAIL_OFF, HEAD_OFF = 128, 256  # struct ep_ring_ctl: _Alignas(EP_LINE_PAIR = 128) tail, then head
HDR = struct.Struct("<BBQQB")  # capacity selector, flags, head, tail, op count
F_RAW, F_HOSTILE = 1, 2


def _check_offsets() -> None:
    """The control block offsets above are the compiled layout's (a wrong guess would fuzz nothing)."""
    with Ring.create(capacity=64) as ring:
        w, r = ring.writer(), ring.reader()
        w.try_write(b"abc")
        assert r.try_read() == b"abc"
        w.try_write(b"x")
        buf, s = ring.region.buffer(), ring.status()
        assert (U64.unpack_from(buf, TAIL_OFF)[0], U64.unpack_from(buf, HEAD_OFF)[0]) == (s.tail, s.head) == (32, 16)


_check_offsets()


class Model:
    """The reader's walk as ep_ring.c documents it: local head, cached tail (reloaded only when the head
    reaches it, and kept only if it is a possible tail), headers read fresh from the data area."""

    def __init__(self, buf: memoryview, cap: int, head: int) -> None:
        self.buf, self.cap, self.mask, self.maxp = buf, cap, cap - 1, cap // 2 - 8
        self.head = head
        self.tc = U64.unpack_from(buf, TAIL_OFF)[0]
        self.held: tuple[int, int, int] | None = None  # (payload offset, length, type) of a peeked record

    def peek(self):
        """('rec', h, len, type), ('empty', h) or ('corrupt', h); h is past any padding. Moves only tc."""
        h = self.head
        while True:
            if h == self.tc:
                t = U64.unpack_from(self.buf, TAIL_OFF)[0]
                if h == t:
                    return ("empty", h)
                if (t - h) & M64 > self.cap or t & 7:
                    return ("corrupt", h)
                self.tc = t
            off = h & self.mask
            ln, ty = REC.unpack_from(self.buf, DATA_OFF + off)
            size = 8 + ((ln + 7) & ~7)
            avail = (self.tc - h) & M64
            if ty == PAD:
                if off == 0 or size != self.cap - off or size > self.cap // 2 or size > avail:
                    return ("corrupt", h)
                h = (h + size) & M64
                continue
            if ln > self.maxp or size > self.cap - off or size > avail:
                return ("corrupt", h)
            return ("rec", h, ln, ty)

    def payload(self, h: int, ln: int) -> bytes:
        off = DATA_OFF + (h & self.mask) + 8
        return bytes(self.buf[off:off + ln])

    @staticmethod
    def size(ln: int) -> int:
        return 8 + ((ln + 7) & ~7)


def _single(m: Model, r, how: str, keep: bool) -> str:
    """One record through the single-record path (ep_ring_peek); returns the outcome kind."""
    if m.held is not None:
        off, ln, ty = m.held
        want = ("rec", None, ln, ty)
    else:
        want = m.peek()
    try:
        if how == "try_read":
            got = r.try_read()
        elif how == "peek_offset":
            n = r.peek_offset()
            got = None if n < 0 else bytes(r.data[r.record_offset:r.record_offset + n])
        else:
            v = r.try_peek()
            got = None if v is None else bytes(v)
            if v is not None:
                v.release()
    except RingCorruptError:
        assert want[0] == "corrupt", (how, want)
        m.head = want[1]
        return "corrupt"
    except PeerClosedError:
        assert want[0] == "empty", (how, want)
        m.head = want[1]
        return "empty"
    if want[0] != "rec":
        assert got is None and want[0] == "empty", (how, want, got)
        m.head = want[1]
        return "empty"
    assert got is not None, (how, want)
    _, h, ln, ty = want
    if m.held is None:
        m.head = h
        m.held = (DATA_OFF + (h & m.mask) + 8, ln, ty)
    off, ln, ty = m.held
    assert len(got) == ln <= m.maxp, (len(got), ln, m.maxp)
    assert got == bytes(m.buf[off:off + ln]), how
    assert r.last_type == ty and r.record_offset == off - DATA_OFF, (r.last_type, ty)
    if how == "peek_offset" and keep:
        return "rec"  # held: the next single read yields it again
    if how != "try_read":
        r.release()
    m.head = (m.head + Model.size(ln)) & M64
    m.held = None
    return "rec"


def _batch(m: Model, r, how: str, k: int, room: int) -> None:
    """Up to k records through ep_ring_try_read_batch into ``room`` bytes, checked against the model."""
    want, pos, i, first = [], m.head, 0, None
    if m.held is None:
        while i < k:
            before = m.head
            o = m.peek()
            if o[0] == "corrupt":
                m.head = before
                first = first or ("corrupt" if i == 0 else None)
                break
            if o[0] == "empty":
                m.head = o[1]
                first = first or ("empty" if i == 0 else None)
                break
            _, h, ln, ty = o
            if ln > room:
                m.head = before
                first = first or ("nobufs" if i == 0 else None)
                break
            want.append((m.payload(h, ln), ty))
            room -= ln
            m.head = (h + Model.size(ln)) & M64
            i += 1
    del pos
    try:
        if how == "many":
            got = [(bytes(b), None) for b in r.try_read_many(k)]
        else:
            buf = np.zeros(max(room + sum(len(p) for p, _ in want), 0), np.uint8)
            lens, types = np.zeros(k, np.uint32), np.zeros(k, np.uint32)
            if how == "packed":
                n = r.read_packed(buf, lens, types)
            else:
                n = r.batch_reader(buf, lens, types)()
            got, at = [], 0
            for j in range(n):
                got.append((bytes(buf[at:at + lens[j]]), int(types[j])))
                at += int(lens[j])
    except ValueError as e:
        assert (m.held is not None and "held" in str(e)) or (first == "nobufs" and "stays queued" in str(e)), \
            (str(e), first)
        return
    except RingCorruptError:
        assert first == "corrupt", first
        return
    except PeerClosedError:
        assert first == "empty", first
        return
    assert m.held is None and first in (None, "empty"), (first, len(got))
    assert len(got) == len(want), (len(got), len(want))
    for (gp, gt), (wp, wt) in zip(got, want):
        assert gp == wp and len(gp) <= m.maxp and (gt is None or gt == wt), (gp[:16], wp[:16], gt, wt)


def test_one_input(data: bytes) -> None:
    if len(data) < HDR.size:
        return
    sel, flags, head, tail, nops = HDR.unpack_from(data)
    cap = 64 << (sel % 7)
    nops %= 33
    ops = data[HDR.size:HDR.size + 4 * nops]
    fill = data[HDR.size + 4 * nops:][:cap]
    if not flags & F_RAW:
        head &= ~7 & M64
        tail = (head + ((tail % (cap + 1)) & ~7)) & M64
    hostile = bool(flags & F_HOSTILE)
    with Ring.create(capacity=cap) as ring:
        buf = ring.region.buffer()
        buf[DATA_OFF:DATA_OFF + len(fill)] = fill
        U64.pack_into(buf, TAIL_OFF, tail)
        U64.pack_into(buf, HEAD_OFF, head)
        try:
            r = ring.reader()
        except RingCorruptError:
            assert (head | tail) & 7 or (tail - head) & M64 > cap, (head, tail, cap)
            return
        assert not ((head | tail) & 7 or (tail - head) & M64 > cap), (head, tail, cap)
        assert r.max_payload == cap // 2 - 8
        m = Model(buf, cap, head)
        for j in range(0, len(ops) - 3, 4):
            op, a, b, c = ops[j:j + 4]
            op %= 8
            if op == 6 and hostile:
                buf[DATA_OFF + ((m.head + a) & m.mask)] = c
            elif op == 7 and hostile:
                t = U64.unpack_from(buf, TAIL_OFF)[0]
                U64.pack_into(buf, TAIL_OFF, (t + (a - 128) * 8 + (b & 7 if c & 1 else 0)) & M64)
            elif op in (0, 6, 7):
                _single(m, r, "try_read", False)
            elif op == 1:
                _single(m, r, "peek_offset", bool(a & 1))
            elif op == 2:
                _single(m, r, "try_peek", False)
            else:
                how = {3: "packed", 4: "many", 5: "reader"}[op]
                _batch(m, r, how, a % 8 + 1, cap if how == "many" else b * 8)
        # Drain: every read moves the head by >= 8 bytes; the cached tail is at most a ring ahead of the head,
        # and the tail in the control block (no longer moving) at most a ring ahead of that when it is
        # taken, so the walk ends (empty, or corrupt three times running) within 2 * cap / 8 reads.
        corrupt, limit = 0, cap // 4 + 8
        for _ in range(limit):
            out = _single(m, r, "try_read", False)
            if out == "empty":
                return
            if out == "corrupt":
                corrupt += 1
                if corrupt == 3:
                    return
        raise AssertionError(f"the walk did not end within {limit} reads (capacity {cap})")


def seeds() -> dict[str, bytes]:
    """Rings written by a real writer (records, padding at the wrap, a held-back tail), as inputs."""
    out = {}
    for name, cap, recs, flags, ops in (
        ("few", 256, [b"a" * 5, b"", b"b" * 40], 0, b"\x00\x00\x00\x00\x01\x01\x00\x00\x03\x07\x20\x00"),
        ("wrap", 128, [b"x" * 40, b"y" * 40, b"z" * 20], 0, b"\x04\x07\x00\x00\x05\x07\xff\x00"),
        ("hostile", 512, [b"h" * 100, b"i" * 3, b"j" * 60], F_HOSTILE,
         b"\x06\x00\x00\xff\x00\x00\x00\x00\x07\x7f\x00\x00\x00\x00\x00\x00\x07\x90\x00\x00"),
    ):
        with Ring.create(capacity=cap) as ring:
            w, r = ring.writer(), ring.reader()
            if name == "wrap":
                w.try_write(b"p" * 40)
                r.try_read()
            for p in recs:
                w.try_write(p)
            s, buf = ring.status(), ring.region.buffer()
            body = bytes(buf[DATA_OFF:DATA_OFF + cap])
        sel = {64 << i: i for i in range(7)}[cap]
        out[f"ring-{name}"] = HDR.pack(sel, flags | F_RAW, s.head, s.tail, len(ops) // 4) + ops + body
    return out


if __name__ == "__main__":
    main(test_one_input, seeds)
