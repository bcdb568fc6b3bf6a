"""What the variable-size batch paths and a failed try_write_frame cost, each beside its peers (standalone).

One process pinned to the first of ``--cpus`` writes a batch of 256 records into a 1 MiB ring and reads it
back, over and over for ``--seconds`` per case; only the side a case is about is timed (perf_counter_ns
around each call), and the result is nanoseconds per record (per call for the frame cases). Record sizes are
``--size`` bytes (fixed cases) or uniform in 8 .. 2 * size - 8 (variable cases, same mean). Every case checks
what it moved: the writer cases read the batch back and compare it, the reader cases compare what they got.
Cases run round-robin (``--rounds``) so drift on this shared VM spreads over all of them.

  writer   rows        batch_writer(2-D uint8 array): fixed size, the fastest path
           list-fixed  batch_writer(list of bytes), all --size bytes
           list-var    batch_writer(list of bytes), variable sizes      <- new
           many-var    try_write_many(list of bytes), variable sizes     (peer)
           packed-var  write_packed(numpy buf, uint32 lens), variable    (peer: the caller packs)
  reader   read        batch_reader read() alone (offsets left to the caller)
           views       read() + iterating read.views(n)                  <- new
           many        try_read_many(256): a list of bytes               (peer)
  frames   try-full    try_write_frame on a full ring -> None            <- new (nothing raised)
           old-full    write_frame(timeout_s=0) raising RingTimeoutError, caught: what try_write_frame did

    python benchmarks/batch_paths.py --seconds 1 --rounds 3
"""

from __future__ import annotations

import os
import random
import time

import _common as C
import numpy as np

from edgepipe import FrameWriter, Ring, RingTimeoutError

BATCH = 256


def sizes(size: int, var: bool, rnd: random.Random) -> list[int]:
    return [rnd.randrange(8, 2 * size - 7) if var else size for _ in range(BATCH)]


def records_of(lens: list[int], rnd: random.Random) -> list[bytes]:
    return [rnd.randbytes(n) for n in lens]


def writer_case(kind: str, size: int, seconds: float) -> float:
    rnd = random.Random(1)
    lens = sizes(size, kind != "rows" and kind != "list-fixed", rnd)
    recs = records_of(lens, rnd)
    with Ring.create(capacity=1 << 20) as ring:
        w, r = ring.writer(), ring.reader()
        if kind == "rows":
            rows = np.frombuffer(b"".join(recs), np.uint8).reshape(BATCH, size).copy()
            write = w.batch_writer(rows)
            call = write
        elif kind in ("list-fixed", "list-var"):
            call = w.batch_writer(recs)
        elif kind == "many-var":
            def call():
                return w.try_write_many(recs)
        else:
            buf = np.frombuffer(b"".join(recs), np.uint8)
            lens_a = np.array(lens, np.uint32)

            def call():
                return w.write_packed(buf, lens_a)
        spent = moved = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter_ns()
            n = call()
            spent += time.perf_counter_ns() - t0
            assert n == BATCH, (kind, n)
            got = r.try_read_many(BATCH)
            assert got == recs, kind
            moved += n
        return spent / moved


def reader_case(kind: str, size: int, seconds: float) -> float:
    rnd = random.Random(2)
    lens = sizes(size, True, rnd)
    recs = records_of(lens, rnd)
    packed = np.frombuffer(b"".join(recs), np.uint8)
    lens_a = np.array(lens, np.uint32)
    with Ring.create(capacity=1 << 20) as ring:
        w, r = ring.writer(), ring.reader()
        buf, lbuf = np.zeros(1 << 16, np.uint8), np.zeros(BATCH, np.uint32)
        read = r.batch_reader(buf, lbuf)
        spent = moved = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert w.write_packed(packed, lens_a) == BATCH
            if kind == "read":
                t0 = time.perf_counter_ns()
                n = read()
                spent += time.perf_counter_ns() - t0
                assert n == BATCH and bytes(buf[: len(packed)]) == packed.tobytes()
            elif kind == "views":
                t0 = time.perf_counter_ns()
                n = read()
                got = [v for v in read.views(n)]
                spent += time.perf_counter_ns() - t0
                assert [bytes(v) for v in got] == recs
                del got
            else:
                t0 = time.perf_counter_ns()
                got = r.try_read_many(BATCH)
                spent += time.perf_counter_ns() - t0
                n = len(got)
                assert got == recs
            moved += n
        return spent / moved


def frame_case(kind: str, seconds: float) -> float:
    img = np.zeros((16, 16, 3), np.uint8)
    with Ring.create(capacity=1 << 12) as ring:
        w = FrameWriter(ring.writer())
        ring.reader()  # a live consumer that never reads: the ring stays full
        while w.try_write_frame(img) is not None:
            pass
        spent = calls = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(100):
                if kind == "try-full":
                    t0 = time.perf_counter_ns()
                    got = w.try_write_frame(img)
                    spent += time.perf_counter_ns() - t0
                else:
                    t0 = time.perf_counter_ns()
                    try:
                        got = w.write_frame(img, timeout_s=0)
                    except RingTimeoutError:
                        got = None
                    spent += time.perf_counter_ns() - t0
                assert got is None
            calls += 100
        return spent / calls


CASES = [("writer", k) for k in ("rows", "list-fixed", "list-var", "many-var", "packed-var")] + \
        [("reader", k) for k in ("read", "views", "many")] + [("frames", k) for k in ("try-full", "old-full")]


PEERS = {"many-var", "packed-var", "many", "old-full"}  # not the path under test: reported as peers


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], 1.0)
    env = C.print_header("batch_paths: variable-size batches and failed try_write_frame", args)
    os.sched_setaffinity(0, {args.cpus[0]})
    results: dict[tuple[str, str], list[float]] = {c: [] for c in CASES}
    for _ in range(args.rounds):
        for group, kind in CASES:
            if not C.selected(kind, args.only):
                continue
            if group == "writer":
                v = writer_case(kind, args.size, args.seconds)
            elif group == "reader":
                v = reader_case(kind, args.size, args.seconds)
            else:
                v = frame_case(kind, args.seconds)
            results[(group, kind)].append(v)
    base = {"writer": "rows", "reader": "read", "frames": "old-full"}
    rows, out = [], []
    for (group, kind), vals in results.items():
        if not vals:
            continue
        ref = results.get((group, base[group])) or [float("nan")]
        med, rmed = float(np.median(vals)), float(np.median(ref))
        unit = "ns/call" if group == "frames" else "ns/record"
        rows.append([f"{group} {kind}", f"{med:.0f}", " ".join(f"{v:.0f}" for v in vals), unit,
                     f"{med / rmed:.2f}x {base[group]}"])
        metric = "ns_per_call" if group == "frames" else "ns_per_record"
        out += [{"case": f"{group} {kind}", "group": group, "edgepipe": kind not in PEERS, "round": i + 1,
                 metric: v} for i, v in enumerate(vals)]
    print(C.table(["case", "median", "rounds", "unit", "ratio"], rows))
    C.write_json(args.json, env, args, out)


if __name__ == "__main__":
    main()
