"""Capture frames into shared memory for other processes: the producer half of a camera pipeline.

    python examples/camera_producer.py                     # the bundled clip at 10 fps, looping, ring "camera0"
    python examples/frame_consumer.py                      # in a second terminal: frames arrive there
    python examples/camera_producer.py --both              # one command: starts the consumer too

    python examples/camera_producer.py --latest            # a latest-only slot instead of the lossless ring
    python examples/camera_producer.py --source pattern:1280x720 --fps 60
    python examples/camera_producer.py --source /dev/video0 --size 1280x720 --fourcc MJPG   # a real camera
    python examples/camera_producer.py --source rtsp://camera.local/stream

The segment is named (``/dev/shm/edgepipe.<name>``) so a consumer started by hand can attach it; the
producer unlinks it on exit. A viewer can come and go: while no consumer has the ring open (it exited, or
none attached yet and the ring is full), the producer keeps running and drops frames (counted in
``dropped_no_consumer`` / ``dropped_full``); the next viewer attaches the same ring. Ctrl-C stops it. Frames are decoded straight into the ring slot (no copy) and each carries its
capture stamp, so the consumer can print the capture-to-read latency.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import edgepipe
from edgepipe.stages.capture import CaptureStage, open_source, sample_video


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default=str(sample_video()),
                   help="video file, image folder, /dev/videoN, camera index, rtsp/http URL, or pattern[:WxH] "
                        "(default: the bundled clip)")
    p.add_argument("--name", default="camera0", help="shared-memory name (default camera0)")
    p.add_argument("--latest", action="store_true", help="publish into a latest-only slot, not a ring")
    p.add_argument("--fps", type=float, default=None, help="pace at this rate (default: the source's)")
    p.add_argument("--fast", action="store_true", help="as fast as possible, no pacing")
    p.add_argument("--once", action="store_true", help="play a file once instead of looping")
    p.add_argument("--size", default=None, help="camera/pattern size WxH")
    p.add_argument("--fourcc", default=None, help="camera FOURCC, e.g. MJPG")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--both", action="store_true", help="also start examples/frame_consumer.py")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    src = open_source(args.source if not args.source.isdigit() else int(args.source), size=size, fps=args.fps,
                      fourcc=args.fourcc)
    src.open()  # learn the frame size before sizing the ring
    h, w, ch = src.shape
    frame_bytes = h * w * ch
    if args.latest:
        chan = edgepipe.LatestSlot.create(args.name, frame_bytes)
        writer = chan.writer()
    else:
        capacity = 1 << max(20, (8 * (frame_bytes + 256)).bit_length())  # room for about 8 frames
        chan = edgepipe.Ring.create(args.name, capacity=capacity)
        writer = edgepipe.FrameWriter(chan.writer())
    try:
        return run(args, src, chan, writer, kind=("latest slot" if args.latest else
                                                  f"ring of {chan.status().capacity >> 20} MB"))
    finally:  # also on a second Ctrl-C: the named segment never outlives us
        src.close()
        chan.unlink()
        chan.close()


def run(args, src, chan, writer, kind: str) -> int:
    h, w, _ = src.shape
    # A viewer may come and go: never fail because nobody reads (stall_timeout_s=None, on_consumer_closed).
    # Recorded sources wait for room while a viewer reads; live ones drop.
    stage = CaptureStage(src, writer, fps=args.fps, loop=not args.once, realtime=not args.fast,
                         stall_timeout_s=None, on_consumer_closed="drop", name="camera")
    consumer = None
    if args.both:
        here = Path(__file__).parent
        cmd = [sys.executable, str(here / "frame_consumer.py"), "--name", args.name]
        consumer = subprocess.Popen(cmd + (["--latest"] if args.latest else []))
    # Ctrl-C and SIGTERM only ask the stage to stop; the loop below then sees it end. (A KeyboardInterrupt
    # raised inside Thread.join can leave the join returning before the thread has ended.)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stage.stop())
    print(f"camera_producer: {src.describe} {w}x{h} -> {kind} {args.name!r} (Ctrl-C stops)", flush=True)
    stage.start()
    t_end = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        while stage.join(1.0) is None:
            s = stage.stats()
            print(f"  grabbed {s['grabbed']}  published {s['published']}  dropped {s['dropped']}  "
                  f"fps {s.get('fps', 0)}", flush=True)
            if t_end is not None and time.monotonic() >= t_end:
                stage.stop()
    except KeyboardInterrupt:
        stage.stop()
    while (status := stage.join(1.0)) is None:
        pass
    writer.close()  # the consumer drains, then sees the producer gone
    if consumer is not None:
        try:
            consumer.wait(10)
        except subprocess.TimeoutExpired:
            consumer.terminate()
    print(f"camera_producer: {stage.stats()}")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while setting up or shutting down: no traceback, nothing left behind
        sys.exit(0)
