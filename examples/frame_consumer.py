"""Read frames another process captures (examples/camera_producer.py) and report what arrives.

    python examples/frame_consumer.py              # attach ring "camera0" (waits up to 30 s for it)
    python examples/frame_consumer.py --latest     # attach a latest-only slot instead
    python examples/frame_consumer.py --slow-ms 50 # a slow consumer: with --latest it skips to the newest

Each frame is a read-only numpy array over shared memory: no copy. Once a second it prints frames per
second, the capture-to-read latency (stamps from CLOCK_MONOTONIC_RAW, the same clock in both processes)
and the mean brightness of the last frame. Ends when the producer closes, or on Ctrl-C: the viewer closes its
end and goes, the producer keeps running, and a viewer started later attaches the same ring.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import edgepipe


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="camera0")
    p.add_argument("--latest", action="store_true", help="the producer uses a latest-only slot")
    p.add_argument("--slow-ms", type=float, default=0.0, help="pretend each frame takes this long to process")
    args = p.parse_args(argv)
    if args.latest:
        chan = edgepipe.LatestSlot.attach(args.name, wait_s=30)
        reader = chan.reader()
    else:
        chan = edgepipe.Ring.attach(args.name, wait_s=30)
        reader = edgepipe.FrameReader(chan.reader())
    print(f"frame_consumer: attached {args.name!r}", flush=True)
    n, lat_ms, t_report, last_seq, skipped = 0, [], time.monotonic() + 1.0, 0, 0
    try:
        for f in reader.frames():
            lat_ms.append((edgepipe.now_ns() - f.capture_ns) / 1e6)
            mean = float(f.array[::8, ::8].mean())  # touch the frame: a strided mean
            skipped += max(0, f.seq - last_seq - 1) if last_seq else 0
            last_seq = f.seq
            n += 1
            if args.slow_ms:
                time.sleep(args.slow_ms / 1e3)
            if time.monotonic() >= t_report:
                lat = np.asarray(lat_ms)
                print(f"  {n} frames/s  seq {f.seq}  {f.shape} {f.pixel_format}  capture->read p50 "
                      f"{np.percentile(lat, 50):.2f} ms max {lat.max():.2f} ms  skipped {skipped}  mean {mean:.1f}",
                      flush=True)
                n, lat_ms, t_report = 0, [], time.monotonic() + 1.0
        print("frame_consumer: producer closed; done", flush=True)
    except KeyboardInterrupt:
        print("frame_consumer: stopped (Ctrl-C); the producer goes on", flush=True)
    finally:
        reader.close()  # marks our end closed: the producer drops frames until a viewer attaches again
        chan.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the frames loop (e.g. while waiting for the producer)
        sys.exit(0)
