"""Text detection on real frames: capture -> shared-memory ring -> InferenceStage workers -> results ring.

    python examples/infer_frames.py                      # the bundled photographed text pages, 20 frames
    python examples/infer_frames.py video.mp4 --frames 50 --workers 2 --budget-ms 500
    python examples/infer_frames.py photo.jpg --model det_int8.onnx   # e.g. a model from `edgepipe quantize`

A CaptureStage decodes the source straight into a frame ring; the InferenceStage copies each frame into the
least loaded worker's ring, the worker process runs the bundled PP-OCRv4 text detector (ONNX Runtime) on it,
and this script reads the edgepipe.v1.InferenceResult records from the result ring and prints the boxes.
Everything runs offline; the stages run as threads here, the workers as processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from edgepipe import InferenceStage, ModelSpec, Ring, RingTimeoutError
from edgepipe import messages as pb
from edgepipe.stages.capture import CaptureStage, sample_text_images
from edgepipe.frames import FrameReader, FrameWriter


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", help="video file, image, image folder or camera (default: bundled text pages)")
    ap.add_argument("--frames", type=int, default=20, help="frames to infer (default 20)")
    ap.add_argument("--fps", type=float, default=10.0, help="capture rate (default 10)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes (default: one per core)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per worker (default 1)")
    ap.add_argument("--budget-ms", type=float, default=None, help="drop frames older than this when a worker gets them")
    ap.add_argument("--model", default=None, help=".onnx text detector (default: the bundled PP-OCRv4 one)")
    args = ap.parse_args()
    source = args.source or str(Path(sample_text_images()[0]).parent)

    frames = Ring.create(None, 1 << 25)  # anonymous memfd rings: nothing to clean up after a crash
    results = Ring.create(None, 1 << 20)
    capture = CaptureStage(source, FrameWriter(frames.writer()), fps=args.fps, loop=True, max_frames=args.frames)
    infer = InferenceStage(FrameReader(frames.reader()), results.writer(), model=ModelSpec(path=args.model),
                           workers=args.workers, intra_op_threads=args.threads, budget_ms=args.budget_ms)
    out = results.reader()
    print(f"source {source}: {args.workers} worker(s) x {args.threads} thread(s)")
    got = [0]  # results printed (a list, so a Ctrl-C part-way still counts them)
    t0 = time.monotonic()
    with infer:
        try:
            infer.wait_ready(timeout_s=120)  # workers load the model first; then frames start flowing
            t0 = time.monotonic()
            capture.start()
            print_results(out, infer, args.frames, t0, got)
        except KeyboardInterrupt:  # Ctrl-C: stop capture, let the stages close, report what came back
            print("stopped (Ctrl-C)", flush=True)
        except Exception as e:  # noqa: BLE001 - e.g. no worker could load the model: reported below
            print(f"inference stage not ready: {e}", file=sys.stderr)
        if capture.state != "new":
            capture.stop()
            capture.join()
    s = infer.stats()
    print(f"{got[0]} results in {time.monotonic() - t0:.1f} s; " + ", ".join(
        f"{k} {s[k]}" for k in ("frames_in", "dispatched", "dropped_deadline", "bad_frames", "frames_lost",
                                "worker_crashes")))
    if s["error"]:
        print(f"inference stage failed: {s['error']}", file=sys.stderr)
    frames.close()
    results.close()
    return 0 if got[0] and not s["error"] else 1


def print_results(out, infer, frames: int, t0: float, got: list[int]) -> None:
    """Read InferenceResults and print each one's boxes until ``frames`` are accounted for."""
    while got[0] + infer.counters["dropped_deadline"] + infer.counters["bad_frames"] < frames:
        if infer.state == "failed" or time.monotonic() - t0 > 120:
            break
        try:
            data = out.read(timeout_s=0.5)
        except RingTimeoutError:
            continue
        r = pb.InferenceResult.FromString(data)
        got[0] += 1
        ms = (r.inference_end_ns - r.inference_start_ns) / 1e6
        e2e = (r.stamps.publish_ns[-1] - r.stamps.capture_ns) / 1e6
        boxes = sorted(r.detections.boxes, key=lambda b: (b.y_min, b.x_min))
        print(f"frame {r.frame_seq:4d}: {len(boxes):2d} text boxes  model {ms:5.1f} ms  capture->result {e2e:6.1f} ms",
              flush=True)
        for b in boxes[:3]:
            print(f"    ({b.x_min:6.1f}, {b.y_min:6.1f}) - ({b.x_max:6.1f}, {b.y_max:6.1f})  score {b.score:.2f}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while starting or closing
        sys.exit(0)
