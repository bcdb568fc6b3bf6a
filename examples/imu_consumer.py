"""A second process reading quaternions from the IMU ring. One command starts both: this process runs the
C sampling loop (ImuStage) into an anonymous shared-memory ring and starts a consumer process that gets the
ring's fd; the consumer reads ImuSample batches, prints a quaternion now and then, and checks that the
sequence numbers have no gaps.

    python examples/imu_consumer.py                   # 3 s of the bundled recording at 1000 Hz
    python examples/imu_consumer.py --source synthetic --seconds 5
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import numpy as np

from edgepipe import PeerClosedError, Ring
from edgepipe.stages.imu import CsvSource, ImuReader, ImuStage, SyntheticSource


def consumer(fd: int) -> int:
    # Ctrl-C in a terminal reaches both processes; the producer decides when the stream ends (it closes its end)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ring = Ring.from_fd(fd)
    reader = ImuReader(ring.reader(), max_batch=256)
    n, gaps, expect, every = 0, 0, 0, 500
    lat = []
    try:
        while True:
            batch = reader.read(timeout_s=0.5)
            if not len(batch):
                continue
            seq = batch["seq"]
            gaps += int(seq[0] != expect) + int((np.diff(seq) != 1).sum())
            expect = int(seq[-1]) + 1
            for i in np.flatnonzero(seq % every == 0):
                w, x, y, z = batch["q"][i]
                print(f"[consumer pid {os.getpid()}] seq {int(seq[i]):6d}  "
                      f"q = ({w:+.4f}, {x:+.4f}, {y:+.4f}, {z:+.4f})", flush=True)
            lat.append(batch["publish_ns"] - batch["sample_ns"])
            n += len(batch)
    except PeerClosedError:
        pass  # the producer finished and everything it wrote has been read
    finally:
        ring.close()
    span = np.concatenate(lat) if lat else np.zeros(1)
    print(f"[consumer] read {n} samples, {gaps} sequence gaps; sample->publish p50 {np.median(span):.0f} ns")
    return 0 if gaps == 0 else 1


def producer(args) -> int:
    if args.source == "synthetic":
        src = SyntheticSource.rotating(rate_dps=45.0, axis="z", rate_hz=args.rate_hz)
    else:
        src = CsvSource(args.source, resample_hz=args.rate_hz, loop=True)
    with Ring.create(capacity=1 << 20) as ring:
        child = subprocess.Popen([sys.executable, __file__, "--consumer-fd", str(ring.fd)], pass_fds=(ring.fd,))
        writer = ring.writer()
        stage = ImuStage(src, rate_hz=args.rate_hz, wait=args.wait, output=writer, duration_s=args.seconds)
        rc = stage.run()  # Ctrl-C stops it like --seconds running out (Stage.run)
        writer.close()  # the consumer sees the producer gone once it has drained the ring
        s = stage.stats()
        print(f"[producer] {s['samples']} samples, published {s['published']}, dropped {s['dropped']}, "
              f"missed deadlines {s['missed']}, jitter p99 {s['jitter_us']['p99']:.2f} us, "
              f"CPU {s['cpu_percent']:.1f} %")
        crc = child.wait(timeout=30)
    return rc or crc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--source", default="ngimu", help="'synthetic', a bundled recording name, or a CSV path")
    p.add_argument("--rate-hz", type=float, default=1000.0)
    p.add_argument("--wait", choices=("sleep", "hybrid"), default="sleep")
    p.add_argument("--consumer-fd", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.consumer_fd is not None:
        return consumer(a.consumer_fd)
    return producer(a)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # Ctrl-C while starting or closing
        raise SystemExit(0) from None
