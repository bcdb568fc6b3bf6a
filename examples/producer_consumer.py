"""Two processes, one shared-memory ring: a producer streams stamped records, a consumer checks them and
reports the handoff latency.

    python examples/producer_consumer.py                 # 200 000 records at full speed
    python examples/producer_consumer.py --rate-hz 1000  # paced like a 1 kHz sensor
    python examples/producer_consumer.py --wait park     # the consumer sleeps instead of spinning

The ring is an anonymous memfd: the producer creates it and hands the fd to the consumer process it starts
(``pass_fds``), so nothing is named in /dev/shm and nothing can leak, even on kill -9. The producer prints
its progress once a second; Ctrl-C stops it early, and the consumer still checks everything that was sent
(the producer's last record, type 2, says how many).
"""

from __future__ import annotations

import argparse
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np

import edgepipe

RECORD = struct.Struct("<QqQ")  # seq, producer stamp (CLOCK_MONOTONIC_RAW ns), checksum of the body
BODY = 40  # bytes of fake sensor payload after the header: 64 B records in all
T_DATA, T_END = 1, 2  # record types: a stamped record; the end (u64: how many were sent)


def body_for(seq: int) -> bytes:
    return (seq.to_bytes(8, "little") * (BODY // 8))[:BODY]


def produce(args: argparse.Namespace) -> int:
    ring = edgepipe.Ring.create(capacity=1 << 16)
    consumer = subprocess.Popen(
        [sys.executable, __file__, "--role", "consumer", "--fd", str(ring.fd), "--count", str(args.count),
         "--wait", args.wait],
        pass_fds=[ring.fd],
    )
    writer = ring.writer()
    # Start the clock once the consumer has opened its end, so its start-up is not counted as latency.
    deadline = time.monotonic() + 30
    while ring.status().consumer_pid == 0 and consumer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    period_ns = int(1e9 / args.rate_hz) if args.rate_hz else 0
    next_ns = edgepipe.monotonic_ns()
    t0 = time.perf_counter()
    next_report = t0 + 1.0
    sent = 0
    try:
        try:
            for seq in range(args.count):
                if period_ns:
                    next_ns += period_ns
                    while edgepipe.monotonic_ns() < next_ns:
                        time.sleep(0)
                body = body_for(seq)
                writer.write(RECORD.pack(seq, edgepipe.now_ns(), zlib.crc32(body)) + body, T_DATA, timeout_s=5.0)
                sent += 1
                if not seq & 255 and time.perf_counter() >= next_report:  # progress, once a second
                    next_report += 1.0
                    print(f"producer: sent {sent:,} of {args.count:,} records "
                          f"({sent / (time.perf_counter() - t0):,.0f} records/s)", flush=True)
        except KeyboardInterrupt:
            print(f"producer: stopped (Ctrl-C) after {sent:,} records", flush=True)
        writer.write(sent.to_bytes(8, "little"), T_END, timeout_s=5.0)
        writer.close()  # the consumer drains what is queued, then sees PeerClosedError
        elapsed = time.perf_counter() - t0
        rc = consumer.wait(timeout=30)
    finally:
        if consumer.poll() is None:
            consumer.kill()
        ring.close()
    print(f"producer: {sent} records in {elapsed:.3f} s ({sent / elapsed:,.0f} records/s)")
    return rc


def consume(args: argparse.Namespace) -> int:
    # Ctrl-C in a terminal reaches both processes; the producer decides when the stream ends (its T_END record)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ring = edgepipe.Ring.from_fd(args.fd)
    reader = ring.reader(wait=args.wait)
    lat = np.empty(args.count, dtype=np.int64)
    n = bad = 0
    expected = args.count
    while True:
        try:
            rec = reader.read(timeout_s=10.0)
        except edgepipe.PeerClosedError:
            break
        now = edgepipe.now_ns()
        if reader.last_type == T_END:
            expected = int.from_bytes(rec, "little")
            continue
        seq, stamp, csum = RECORD.unpack_from(rec)
        body = rec[RECORD.size:]
        if seq != n or body != body_for(seq) or csum != zlib.crc32(body):
            bad += 1
        lat[n] = now - stamp
        n += 1
    st = ring.status()
    ring.close()
    lat_us = lat[:n] / 1e3
    p50, p99, p999 = np.percentile(lat_us, [50, 99, 99.9]) if n else (0, 0, 0)
    print(f"consumer: {n} records, {bad} bad, {expected - n} lost")
    print(f"handoff latency (us): p50 {p50:.2f}  p99 {p99:.2f}  p99.9 {p999:.2f}  (includes queueing)")
    print(f"ring: parks={st.consumer_parks} wakes={st.producer_wakes} full_events={st.full_events} "
          f"late_wakeups={st.late_wakeups}")
    return 0 if n == expected and bad == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["producer", "consumer"], default="producer")
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--rate-hz", type=float, default=0.0, help="pace the producer (0: as fast as possible)")
    p.add_argument("--wait", choices=["spin", "park", "hybrid"], default="hybrid")
    args = p.parse_args()
    return consume(args) if args.role == "consumer" else produce(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the stream started
        sys.exit(0)
