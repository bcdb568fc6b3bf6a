"""``edgepipe quantize``: the command line of :func:`edgepipe.stages.inference.quantize.quantize_model`.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="edgepipe").add_subparsers(dest="command")
>>> add_subcommand(sub)
>>> sub.choices["quantize"].parse_args(["out.onnx", "--input-size", "320x320"]).input_size
'320x320'
"""

from __future__ import annotations

import sys

from edgepipe.errors import EdgepipeError
from edgepipe.stages.inference.quantize import quantize_model

__all__: list[str] = []  # a subcommand, not API


def add_subcommand(sub) -> None:
    """Register ``edgepipe quantize`` on an argparse subparsers object (called by edgepipe.cli.main)."""
    p = sub.add_parser("quantize", help="static INT8 quantization of the text detector, calibrated on real frames",
                       description="Quantize the text detector to static INT8 (QDQ, per-channel weights), calibrated "
                                   "on real frames, then compare it with FP32 on held-out frames (never calibrated "
                                   "on; the count is printed) and write it only if the mask IoU reaches --min-iou. "
                                   "Prints FP32 vs INT8 latency at 1 and 2 threads.")
    p.add_argument("output", help="where to write the INT8 .onnx")
    p.add_argument("--model", help="FP32 .onnx detector (default: the bundled PP-OCRv4 one)")
    p.add_argument("--calibration", action="append",
                   help="video file, image file or image folder (repeatable; default: the bundled real frames)")
    p.add_argument("--held-out", action="append",
                   help="frames for the accuracy check only (repeatable; default: the bundled upright text page "
                        "and a photo without text, or with --calibration every 4th of its frames, at least 2)")
    p.add_argument("--input-size", default="480x640", help="fixed HxW of the INT8 model (default 480x640)")
    p.add_argument("--frames", type=int, default=24, help="frames read for calibration + held-out (default 24)")
    p.add_argument("--min-iou", type=float, default=0.85, help="mask IoU vs FP32 required to write (default 0.85)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per latency figure (default 20)")
    p.add_argument("--dynamic", action="store_true", help="dynamic INT8 (not recommended: slower on conv nets)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:

    try:
        h, w = (int(v) for v in args.input_size.lower().split("x"))
    except ValueError:
        print(f"edgepipe quantize: --input-size must be HxW, got {args.input_size!r}", file=sys.stderr)
        return 2
    try:
        quantize_model(args.output, args.calibration, held_out=args.held_out, model=args.model, input_hw=(h, w), max_frames=args.frames,
                       min_iou=args.min_iou, dynamic=args.dynamic, runs=args.runs)
    except (EdgepipeError, ValueError) as e:
        print(f"edgepipe quantize: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
