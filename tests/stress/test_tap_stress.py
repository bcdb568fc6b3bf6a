"""Three processes around one tapped link: a producer publishes sequence-numbered, checksummed records
through an Outlet with a Tap into a small lossless ring; a consumer reads every one of them; a recorder
reads the tap's side ring, sometimes slowly. The consumer must see every record in order and intact; the
recorder must see only intact records in increasing order, exactly as many as the tap says it took; taken
plus dropped is everything offered. Small rings make the tap full (and the link full) all the time.

Default run: 100 000 records (a few seconds); ``pytest -m stress`` runs 5 million.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import struct
import zlib

import pytest

from edgepipe.errors import PeerClosedError
from edgepipe.pipeline.api import Outlet
from edgepipe.pipeline.tap import Tap
from edgepipe.pipeline.wire import unpack_record
from edgepipe.ring import Ring

_REC = struct.Struct("<QI")  # seq, crc32 of the body


def _body(seq: int) -> bytes:
    n = 8 + (seq * 2654435761) % 500
    return (seq.to_bytes(8, "little") * (n // 8 + 1))[:n]


def _producer(main_fd: int, tap_fd: int, n: int, conn) -> None:
    main, side = Ring.from_fd(main_fd), Ring.from_fd(tap_fd)
    tap = Tap(side.writer(), "link")
    out = Outlet(main.writer(), "link", tap=tap)
    for seq in range(n):
        b = _body(seq)
        out.emit(_REC.pack(seq, zlib.crc32(b)) + b, seq=seq)
    out.close()
    conn.send((tap.offered, tap.taken, dict(tap.dropped)))


def _reader(fd: int, slow: bool, conn) -> None:
    ring = Ring.from_fd(fd)
    r = ring.reader()
    rnd = random.Random(7)
    seqs, bad = [], 0
    while True:
        try:
            d = r.read(timeout_s=60)
        except PeerClosedError:
            break
        rec = unpack_record(d)
        seq, crc = _REC.unpack_from(rec.payload, 0)
        body = rec.payload[_REC.size:]
        if zlib.crc32(body) != crc or body != _body(seq) or rec.seq != seq:
            bad += 1
        seqs.append(seq)
        if slow and rnd.random() < 0.001:
            os.sched_yield()
            r.wait(0.002)  # stall now and then: the tap fills
    conn.send((seqs, bad))


def _run(n: int) -> None:
    ctx = mp.get_context("fork")
    with Ring.create(capacity=1 << 14) as main, Ring.create(capacity=1 << 13) as side:
        pipes = [ctx.Pipe() for _ in range(3)]
        procs = [ctx.Process(target=_producer, args=(main.fd, side.fd, n, pipes[0][1])),
                 ctx.Process(target=_reader, args=(main.fd, False, pipes[1][1])),
                 ctx.Process(target=_reader, args=(side.fd, True, pipes[2][1]))]
        for p in procs:
            p.start()
        offered, taken, dropped = pipes[0][0].recv()
        seqs, bad = pipes[1][0].recv()
        tseqs, tbad = pipes[2][0].recv()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    assert bad == 0 and seqs == list(range(n))
    assert offered == n and taken + sum(dropped.values()) == n and set(dropped) <= {"tap full"}
    assert tbad == 0 and len(tseqs) == taken and all(a < b for a, b in zip(tseqs, tseqs[1:]))


def test_tapped_link_three_processes():
    """100 000 records: the link loses nothing, the tap keeps what it took intact and in order."""
    _run(100_000)


@pytest.mark.stress
def test_tapped_link_three_processes_long():
    """5 million records, same checks."""
    _run(5_000_000 * int(os.environ.get("EDGEPIPE_STRESS_SCALE", "1")))
