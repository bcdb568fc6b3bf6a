"""A kill -9 campaign over every kind of producer edgepipe has: a ring writer, a frame writer, a latest-slot
writer and the IMU loop (C thread writing into a ring). Each round starts a producer process on a memfd
segment (or a named one), lets it run for a random time, kills it with SIGKILL at whatever point it has
reached, and measures, on the consumer side in this process:

- detection: from the kill to the consumer's PeerClosedError (the promise: within 100 ms p99);
- corruption: every record/frame carries a sequence number and a CRC32 of its payload; a bad CRC, a
  sequence that goes backwards, or (on lossless rings) a gap is corruption;
- leaks: nothing named ``edgepipe.*`` is left in /dev/shm.

The killed child is deliberately not reaped until the consumer has noticed (a zombie is a dead peer, which
``kill(pid, 0)`` would call alive). Run as a script for the figures:

    python tests/stress/kill_campaign.py --kills 200

``tests/unit/test_kill_campaign.py`` runs a bounded campaign in the default suite and a long one under
``-m stress``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from edgepipe import (
    FrameReader,
    ImuReader,
    LatestSlot,
    PeerClosedError,
    Ring,
    RingTimeoutError,
    clock,
)

KINDS = ("ring", "frames", "latest", "imu")
_REC = struct.Struct("<QI")  # seq, crc32 of the payload that follows

# The producer side, run in a child process: argv = kind, fd. Writes forever until killed.
_CHILD = r"""
import os, struct, sys, zlib
import numpy as np
kind, fd = sys.argv[1], int(sys.argv[2])
REC = struct.Struct("<QI")
if kind == "ring":
    from edgepipe import Ring
    w = Ring.from_fd(fd).writer()
    seq = 0
    while True:
        body = os.urandom(8 + (seq * 7919) % 200)
        w.write(REC.pack(seq, zlib.crc32(body)) + body, timeout_s=None)
        seq += 1
elif kind in ("frames", "latest"):
    from edgepipe import FrameWriter, LatestSlot, Ring
    w = FrameWriter(Ring.from_fd(fd).writer()) if kind == "frames" else LatestSlot.from_fd(fd).writer()
    seq = 0
    while True:
        img = np.random.default_rng(seq).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        flat = img.reshape(-1)
        flat[:12] = np.frombuffer(REC.pack(seq, zlib.crc32(flat[12:].tobytes())), np.uint8)
        w.write_frame(img, timeout_s=None)
        seq += 1
elif kind == "imu":
    from edgepipe import ImuStage, Ring, SyntheticSource
    st = ImuStage(SyntheticSource.rotating(90.0), rate_hz=2000, wait="sleep", output=Ring.from_fd(fd).writer())
    st.run()
"""


@dataclass
class Result:
    kind: str
    kills: int = 0
    detect_ms: list[float] = field(default_factory=list)
    received: int = 0
    corrupt: int = 0
    gaps: int = 0
    undetected: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        d = np.array(self.detect_ms) if self.detect_ms else np.array([np.inf])
        return {"kind": self.kind, "kills": self.kills, "received": self.received, "corrupt": self.corrupt,
                "gaps": self.gaps, "undetected": self.undetected,
                "detect_ms_p50": float(np.percentile(d, 50)), "detect_ms_p99": float(np.percentile(d, 99)),
                "detect_ms_max": float(np.max(d))}


def _segment(kind: str):
    if kind == "latest":
        return LatestSlot.create(None, max_frame_bytes=48 * 64 * 3, buffers=4)
    return Ring.create(capacity=1 << 18)


def _check_frame(f, last: int, res: Result) -> int:
    a = f.array.reshape(-1)
    seq, crc = _REC.unpack(a[:12].tobytes())
    if zlib.crc32(a[12:].tobytes()) != crc:
        res.corrupt += 1
    if seq <= last:
        res.corrupt += 1
    return seq


def one_round(kind: str, res: Result, rng: random.Random, detect_timeout_s: float = 5.0) -> None:
    """Start a producer, consume until a random kill, measure the detection; leave nothing behind."""
    seg = _segment(kind)
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, kind, str(seg.fd)], pass_fds=(seg.fd,),
                                stdin=subprocess.DEVNULL)
        reader = seg.reader()
        res_received_before = res.received
        frames = FrameReader(reader) if kind == "frames" else None
        imu = ImuReader(reader) if kind == "imu" else None
        kill_after_s = rng.uniform(0.02, 0.3)  # counted from the first record: the producer's end is open
        kill_at = None
        t_start = time.monotonic()
        t_kill = None
        last = -1
        while True:
            if kill_at is None and res_received_before != res.received:
                kill_at = time.monotonic() + kill_after_s
            if kill_at is None and time.monotonic() - t_start > 30:
                res.notes.append(f"{kind}: the producer published nothing in 30 s (exit {proc.poll()})")
                return
            if t_kill is None and kill_at is not None and time.monotonic() >= kill_at:
                t_kill = clock.now_ns()
                os.kill(proc.pid, signal.SIGKILL)  # not reaped: a zombie until after detection
            try:
                if kind == "ring":
                    data = reader.read(timeout_s=0.2)
                    seq, crc = _REC.unpack_from(data)
                    if zlib.crc32(data[_REC.size:]) != crc:
                        res.corrupt += 1
                    if seq != last + 1:
                        res.gaps += 1
                    last = seq
                elif kind == "frames":
                    with frames.read_frame(timeout_s=0.2) as f:
                        seq = _check_frame(f, last, res)
                    if seq != last + 1:
                        res.gaps += 1
                    last = seq
                elif kind == "latest":
                    with reader.read_frame(timeout_s=0.2) as f:
                        last = _check_frame(f, last, res)
                else:
                    batch = imu.read(timeout_s=0.2)
                    if len(batch) == 0:
                        raise RingTimeoutError("no samples")
                    for s in batch["seq"]:
                        if int(s) != last + 1:
                            res.gaps += 1
                        last = int(s)
                res.received += 1
            except PeerClosedError:
                if t_kill is None:
                    res.notes.append(f"{kind}: PeerClosedError before the kill (child exit {proc.poll()})")
                    return
                res.detect_ms.append((clock.now_ns() - t_kill) / 1e6)
                break
            except RingTimeoutError:
                if t_kill is not None and (clock.now_ns() - t_kill) / 1e9 > detect_timeout_s:
                    res.undetected += 1
                    break
        res.kills += 1
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        seg.close()


def campaign(kinds=KINDS, kills: int = 10, seed: int | None = None) -> dict[str, Result]:
    rng = random.Random(seed)
    out = {k: Result(k) for k in kinds}
    order = [k for k in kinds for _ in range(kills)]
    rng.shuffle(order)
    for k in order:
        one_round(k, out[k], rng)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=50, help="kills per kind (default 50)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = campaign(a.kinds.split(","), a.kills, a.seed)
    rows = [r.summary() for r in res.values()]
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'kind':8} {'kills':>5} {'recv':>7} {'corrupt':>7} {'gaps':>4} {'undet':>5} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
        for r in rows:
            print(f"{r['kind']:8} {r['kills']:5d} {r['received']:7d} {r['corrupt']:7d} {r['gaps']:4d} "
                  f"{r['undetected']:5d} {r['detect_ms_p50']:7.1f} {r['detect_ms_p99']:7.1f} {r['detect_ms_max']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
