"""The two-process stress harness: a record stream both ends can derive from a sequence number, producer
and consumer loops for each API family, and :func:`run_pair`, which runs one of each in its own process.

A record is ``{u64 seq; u32 n; u32 crc32(payload)}`` followed by ``n`` payload bytes. Both ends derive the
size and the payload of record ``seq`` from ``seq % PERIOD`` and a seeded random pool, so the consumer can
check every byte it receives. The period lets the batched loops build and check whole batches with a few
NumPy operations instead of Python work per record; it is safe because stale bytes in a ring can only come
from the last few ring-fulls of records (at most ``capacity / 24`` records each), never from a record a whole
period (8191 records) earlier, so a stale or torn record never matches its expected bytes by accident.

Nothing here asserts: the consumer counts ``lost`` (a gap before a later seq), ``reordered`` (a seq at or
below one already seen), ``corrupt`` (wrong length, checksum or payload) and reports them, with the first few
problems spelled out, to the test that started it.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import struct
import time
import traceback
import zlib

import numpy as np

from edgepipe import Ring
from edgepipe.errors import PeerClosedError

HDR = struct.Struct("<QII")  # seq, payload bytes, crc32 of the payload
PERIOD = 8191  # records; a prime, so sizes and ring positions never fall into step
_CTX = mp.get_context("fork")


class Stream:
    """The records ``0, 1, 2, ...`` of one run: sizes from a mix of small, medium and near-maximal
    payloads (so a small ring wraps, pads, fills and empties constantly), payload bytes from a random pool.

    Args:
        capacity: the ring's capacity; payloads stay within its ``max_payload``.
        seed: makes the stream reproducible; both ends must use the same one.
        fixed: if given, every payload has exactly this many bytes (for fixed-size batch paths).
        mix: a key of MIXES, the share of each size class.
    """

    MIXES = {  # cumulative shares of small (0-48 B), medium (49-512 B), large (to max/4) payloads; the
        "wide": (0.55, 0.85, 0.97),  # rest are huge (max/2 to max): a few records fill the ring
        "small": (0.80, 0.99, 0.999),  # ~100 B on average: for 1e8-record runs
    }

    def __init__(self, capacity: int, seed: int, fixed: int | None = None, mix: str = "wide") -> None:
        rng = np.random.default_rng(seed)
        top = capacity // 2 - 8 - HDR.size  # largest payload a record can carry
        if fixed is not None:
            sizes = np.full(PERIOD, fixed, dtype=np.int64)
        else:
            a, b, c = self.MIXES[mix]
            u = rng.random(PERIOD)
            sizes = np.where(
                u < a, rng.integers(0, 49, PERIOD),
                np.where(u < b, rng.integers(49, 513, PERIOD),
                         np.where(u < c, rng.integers(0, top // 4 + 1, PERIOD),
                                  rng.integers(top // 2, top + 1, PERIOD))))
            sizes = np.minimum(sizes, top)
            sizes[:4] = (0, top, 1, top)  # the extremes early, every period
        pool = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8).tobytes()
        starts = np.concatenate(([0], np.cumsum(sizes)))
        self.payloads = [pool[starts[i] : starts[i + 1]] for i in range(PERIOD)]
        self.crcs = [zlib.crc32(p) for p in self.payloads]
        self.sizes = sizes
        self.rec_lens = np.tile((sizes + HDR.size).astype(np.uint32), 2)  # two periods, like template
        # Two periods of records back to back with seq 0: any run of <= PERIOD records is one slice.
        one = b"".join(HDR.pack(0, len(p), c) + p for p, c in zip(self.payloads, self.crcs))
        self.template = np.frombuffer(one + one, dtype=np.uint8)
        self.rec_off = np.concatenate(([0], np.cumsum(self.rec_lens, dtype=np.int64)))
        self.max_rec = int(self.rec_lens.max())

    # -- one record at a time -------------------------------------------------------------------------
    def record(self, seq: int) -> bytes:
        i = seq % PERIOD
        p = self.payloads[i]
        return HDR.pack(seq, len(p), self.crcs[i]) + p

    def check(self, rec, expected: int, tally: Tally) -> int:
        """Check one received record against the stream; return the next expected seq."""
        if len(rec) < HDR.size:
            tally.bad("corrupt", expected, f"record of {len(rec)} bytes is shorter than the header")
            return expected + 1
        seq, n, crc = HDR.unpack_from(rec)
        payload = rec[HDR.size :]
        if seq != expected:
            if seq > expected and seq - expected < 1 << 40:
                tally.bad("lost", expected, f"got seq {seq}: {seq - expected} records missing", seq - expected)
            else:
                tally.bad("reordered", expected, f"got seq {seq} again or out of order")
                return expected
        i = seq % PERIOD
        if n != len(payload) or n != len(self.payloads[i]):
            tally.bad("corrupt", seq, f"length field {n}, payload {len(payload)}, stream {len(self.payloads[i])}")
        elif zlib.crc32(payload) != crc or crc != self.crcs[i]:
            tally.bad("corrupt", seq, f"crc32 {zlib.crc32(payload):#x} field {crc:#x} stream {self.crcs[i]:#x}")
        elif payload != self.payloads[i]:
            tally.bad("corrupt", seq, "payload differs from the stream (but its crc matched)")
        tally.received += 1
        return seq + 1

    # -- batches --------------------------------------------------------------------------------------
    def packed(self, seq: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Records ``seq .. seq+k-1`` (k <= PERIOD) packed back to back: (bytes, lens, byte offsets)."""
        i = seq % PERIOD
        a, b = self.rec_off[i], self.rec_off[i + k]
        buf = self.template[a:b].copy()
        offs = self.rec_off[i : i + k + 1] - a
        seqs = np.arange(seq, seq + k, dtype="<u8").view(np.uint8).reshape(k, 8)
        buf[offs[:-1, None] + np.arange(8)] = seqs
        return buf, self.rec_lens[i : i + k], offs

    def check_packed(self, buf: np.ndarray, lens: np.ndarray, expected: int, tally: Tally) -> int:
        """Check ``len(lens)`` records packed in ``buf`` (the first is expected to be ``expected``) in a few
        vectorised comparisons; fall back to record-by-record checks to describe any mismatch."""
        k = len(lens)
        i = expected % PERIOD
        offs = np.concatenate(([0], np.cumsum(lens, dtype=np.int64)))
        total = int(offs[-1])
        if k <= PERIOD and np.array_equal(lens, self.rec_lens[i : i + k]):
            got = buf[offs[:-1, None] + np.arange(8)].copy().view("<u8").ravel()
            if np.array_equal(got, np.arange(expected, expected + k, dtype=np.uint64)):
                work = buf[:total].copy()
                work[offs[:-1, None] + np.arange(8)] = 0
                a = self.rec_off[i]
                if np.array_equal(work, self.template[a : a + total]):
                    # Equal bytes mean equal crc fields, and each template crc is crc32 of its payload.
                    tally.received += k
                    return expected + k
        raw = buf[:total].tobytes()
        for j in range(k):
            expected = self.check(raw[offs[j] : offs[j + 1]], expected, tally)
        return expected


class Tally:
    """What the consumer saw."""

    def __init__(self) -> None:
        self.received = 0
        self.lost = 0
        self.reordered = 0
        self.corrupt = 0
        self.problems: list[str] = []
        self.next_seq = 0  # one past the last seq seen

    def bad(self, kind: str, seq: int, what: str, count: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + count)
        if len(self.problems) < 10:
            self.problems.append(f"{kind} at seq {seq}: {what}")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("received", "lost", "reordered", "corrupt", "problems")}


# ---------------------------------------------------------------------------------------------------
# pacing: make both ends stall now and then, so the blocking variants really park and wake


def _pauser(every: int, seed: int):
    """A function to call once per record (or per batch call) that sleeps ~0.1 ms at pseudo-random calls,
    about once per ``every`` calls; None if ``every`` is 0."""
    if not every:
        return None
    rng = np.random.default_rng(seed)
    gaps = itertools.cycle(rng.integers(1, 2 * every, 1 << 16).tolist())
    left = next(gaps)

    def pause() -> None:
        nonlocal left
        left -= 1
        if left == 0:
            left = next(gaps)
            time.sleep(0.0001)

    return pause


# ---------------------------------------------------------------------------------------------------
# producers: (writer, stream, n, pause) -> None; each writes records 0 .. n-1 in order


def produce_single(w, s: Stream, n: int, pause) -> None:
    write = w.write
    rec = s.record
    for seq in range(n):
        if pause:
            pause()
        write(rec(seq))


def produce_zerocopy(w, s: Stream, n: int, pause) -> None:
    """claim() in place; every 7th record claims spare room and shrinks with commit(k); every 101st is first
    claimed, half written and abandoned with an exception (abort), then written properly."""
    for seq in range(n):
        if pause:
            pause()
        rec = s.record(seq)
        k = len(rec)
        if seq % 101 == 50:
            try:
                with w.claim(k) as buf:
                    buf[: k // 2] = b"\xee" * (k // 2)
                    raise _Abandon
            except _Abandon:
                pass
        if seq % 7 == 3:
            c = w.claim(min(k + 64 + seq % 300, w.max_payload))
            with c as buf:
                buf[:k] = rec
                buf[k:] = b"\xdd" * (len(buf) - k)  # bytes beyond the commit must never be read
                c.commit(k)
        else:
            with w.claim(k) as buf:
                buf[:] = rec


class _Abandon(Exception):
    pass


def produce_packed(w, s: Stream, n: int, pause) -> None:
    """write_packed() in batches; when the ring is full, one blocking write() waits with the policy."""
    window = w.max_payload // 12 + 2  # more records than the ring can hold at once
    seq = 0
    while seq < n:
        k = min(PERIOD, n - seq, 4096)
        buf, lens, offs = s.packed(seq, k)
        i = 0
        while i < k:
            if pause:
                pause()
            c = w.write_packed(buf[offs[i] :], lens[i : i + window])
            if c == 0:
                w.write(buf[offs[i] : offs[i + 1]])
                c = 1
            i += c
        seq += k


def produce_fixed(w, s: Stream, n: int, pause) -> None:
    """try_write_many() with a 2-D uint8 array (the fixed-size fast path); write_many() when full."""
    size = int(s.rec_lens[0])
    seq = 0
    while seq < n:
        k = min(PERIOD, n - seq, 2048)
        buf, _, _ = s.packed(seq, k)
        rows = buf.reshape(k, size)
        i = 0
        while i < k:
            if pause:
                pause()
            c = w.try_write_many(rows[i:])
            if c == 0:
                c = w.write_many(rows[i : i + 1])
            i += c
        seq += k


# ---------------------------------------------------------------------------------------------------
# consumers: (reader, stream, tally) -> None; each reads until PeerClosedError (the producer closed)


def consume_single(r, s: Stream, tally: Tally, pause) -> None:
    read = r.read
    check = s.check
    seq = 0
    try:
        while True:
            if pause:
                pause()
            seq = check(read(), seq, tally)
    except PeerClosedError:
        pass
    tally.next_seq = seq


def consume_zerocopy(r, s: Stream, tally: Tally, pause) -> None:
    seq = 0
    try:
        while True:
            if pause:
                pause()
            with r.peek() as view:
                seq = s.check(view, seq, tally)
    except PeerClosedError:
        pass
    tally.next_seq = seq


def consume_packed(r, s: Stream, tally: Tally, pause) -> None:
    buf = np.empty(2 * r.max_payload + 16, dtype=np.uint8)  # a full ring
    lens = np.empty(r.max_payload // 12 + 2, dtype=np.uint32)
    seq = 0
    try:
        while True:
            if pause:
                pause()
            c = r.read_packed(buf, lens)
            if c:
                seq = s.check_packed(buf, lens[:c], seq, tally)
            else:
                r.wait()
    except PeerClosedError:
        pass
    tally.next_seq = seq


def consume_many(r, s: Stream, tally: Tally, pause) -> None:
    seq = 0
    try:
        while True:
            if pause:
                pause()
            for rec in r.read_many(512):
                seq = s.check(rec, seq, tally)
    except PeerClosedError:
        pass
    tally.next_seq = seq


PRODUCERS = {"single": produce_single, "zerocopy": produce_zerocopy, "packed": produce_packed,
             "fixed": produce_fixed}
CONSUMERS = {"single": consume_single, "zerocopy": consume_zerocopy, "packed": consume_packed,
             "fixed": consume_many}


# ---------------------------------------------------------------------------------------------------
# the two processes


def _stream_for(cfg: dict) -> Stream:
    return Stream(cfg["capacity"], cfg["seed"], cfg.get("fixed"), cfg.get("mix", "wide"))


def _producer_main(fd: int, cfg: dict, conn) -> None:
    try:
        s = _stream_for(cfg)
        ring = Ring.from_fd(fd)
        w = ring.writer(wait=cfg["wait"])
        t0 = time.perf_counter()
        PRODUCERS[cfg["api"]](w, s, cfg["n"], _pauser(cfg.get("pause_every", 0), cfg["seed"] + 1))
        elapsed = time.perf_counter() - t0
        w.close()  # the consumer drains the ring, then sees PeerClosedError: the end of the stream
        ring.close()
        conn.send({"ok": True, "written": cfg["n"], "elapsed_s": elapsed})
    except BaseException:
        conn.send({"ok": False, "error": traceback.format_exc()})
    finally:
        conn.close()


def _consumer_main(fd: int, cfg: dict, conn) -> None:
    try:
        s = _stream_for(cfg)
        ring = Ring.from_fd(fd)
        r = ring.reader(wait=cfg["wait"])
        tally = Tally()
        t0 = time.perf_counter()
        CONSUMERS[cfg["api"]](r, s, tally, _pauser(cfg.get("pause_every", 0), cfg["seed"] + 2))
        elapsed = time.perf_counter() - t0
        r.close()
        ring.close()
        out = tally.as_dict()
        out.update(ok=True, next_seq=tally.next_seq, elapsed_s=elapsed)
        conn.send(out)
    except BaseException:
        conn.send({"ok": False, "error": traceback.format_exc()})
    finally:
        conn.close()


def run_pair(cfg: dict, timeout_s: float) -> tuple[dict, dict, object]:
    """Run one producer and one consumer process over a fresh anonymous (memfd) ring.

    ``cfg``: api (a PRODUCERS key), wait ('spin', 'park', 'hybrid'), n (records), capacity, seed, and
    optionally pause_every (calls between short sleeps on each side), fixed (payload size) and mix.
    Returns (producer report, consumer report, final RingStatus). The parent never opens an end: it only
    creates the ring, hands its fd to the children and reads the control block at the end.
    """
    ring = Ring.create(capacity=cfg["capacity"])
    procs, conns = [], []
    try:
        for main in (_consumer_main, _producer_main):
            rx, tx = _CTX.Pipe(duplex=False)
            p = _CTX.Process(target=main, args=(ring.fd, cfg, tx), daemon=True)
            p.start()
            tx.close()
            procs.append(p)
            conns.append(rx)
        deadline = time.monotonic() + timeout_s
        reports = []
        for p, rx in zip(procs, conns):
            if not rx.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{p.name} gave no report within {timeout_s} s; status {ring.status()}")
            reports.append(rx.recv())
            p.join(max(0.0, deadline - time.monotonic()))
        cons, prod = reports
        return prod, cons, ring.status()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        for rx in conns:
            rx.close()
        ring.close()
