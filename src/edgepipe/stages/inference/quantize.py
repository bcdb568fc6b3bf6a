"""``edgepipe quantize``: static INT8 (QDQ, per-channel weights) for the text detector, calibrated on real frames.

The recipe (onnxruntime.quantization), and why each step is there:

1. fix the input shape to [1, 3, H, W]: static quantization and ``quant_pre_process`` need concrete shapes
   (on the dynamic model symbolic shape inference stops with "Incomplete symbolic shape inference");
2. raise the opset to 17 if it is under 13: per-channel QDQ writes ``DequantizeLinear(axis=...)``, which opset
   12 lacks, and the model it writes then does not load (``INVALID_GRAPH ... Unrecognized attribute: axis``);
3. ``quant_pre_process`` (shape inference + graph optimisation; needs sympy);
4. ``quantize_static`` with QDQ, uint8 activations, int8 per-channel weights, MinMax calibration on real frames
   preprocessed exactly as the detector does it. Calibrating on noise gives a model that finds no text at all.

Then it measures FP32 against INT8 on held-out frames (IoU of the thresholded text masks, summed over frames,
and the share of FP32 boxes the INT8 model matches at box IoU >= 0.5) and latency (p50 over ``runs`` runs at 1
and 2 ORT threads), and writes the INT8 model only if the mask IoU reaches ``min_iou``; otherwise it raises
:class:`~edgepipe.errors.QuantizationAccuracyError` and writes nothing.

Dynamic INT8 is available (``dynamic=True``) with a warning: on these conv nets it runs ConvInteger kernels
and was about 4x *slower* than FP32 here.

>>> from edgepipe.stages.inference.quantize import calibration_frames
>>> calibration_frames("/nonexistent/folder")
Traceback (most recent call last):
  ...
edgepipe.errors.CalibrationError: calibration source '/nonexistent/folder' does not exist
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe._data import DATA_DIR
from edgepipe._extras import require
from edgepipe.errors import CalibrationError, ModelLoadError, QuantizationAccuracyError

__all__ = ["QuantizeReport", "calibration_frames", "quantize_model"]

_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
_VIDEO_EXT = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}


def _cv2():
    return require("cv2", "reading calibration frames")


# Held out of the default calibration: the upright text page (INT8 must find the same lines as FP32) and a photo
# with no text (INT8 must not find text where FP32 finds none).
DEFAULT_HELD_OUT = ("video/text/imageTextN.png", "models/samples/rocket.jpg")


def default_sources() -> tuple[list[Path], list[Path]]:
    """The bundled real frames as (calibration, held-out) sources: the sample photographs, the rotated text
    page and the bundled camera video calibrate (video last, so it only fills up ``max_frames``); the upright
    text page and one photo without text (:data:`DEFAULT_HELD_OUT`) are held out, never calibrated on. Without
    the frames data the held-out list may be short; quantize_model then splits the calibration frames."""
    pkg = DATA_DIR
    held = [pkg / p for p in DEFAULT_HELD_OUT if (pkg / p).exists()]
    photos = sorted(p for p in (pkg / "models" / "samples").glob("*") if p.suffix.lower() in _IMAGE_EXT)
    calib = [p for p in (*photos, pkg / "video" / "text" / "imageTextR.png", pkg / "video" / "vtest_100.mp4")
             if p.exists() and p not in held]
    return calib, held


def calibration_frames(source, max_frames: int = 32) -> list[np.ndarray]:
    """Real BGR uint8 frames from a video file, an image file or a folder of images (sorted by name).

    A video gives up to ``max_frames`` frames spread evenly over its length; a folder its first ``max_frames``
    readable images (unreadable files are skipped). Several sources may be given as a list.

    Raises:
        CalibrationError: the source does not exist or gives no usable frame.
    """
    if isinstance(source, (list, tuple)):
        frames: list[np.ndarray] = []
        for s in source:
            frames += calibration_frames(s, max_frames - len(frames))
            if len(frames) >= max_frames:
                break
        return frames
    cv2 = _cv2()
    path = Path(source)
    if not path.exists():
        raise CalibrationError(f"calibration source {str(source)!r} does not exist")
    frames = []
    if path.is_dir():
        for p in sorted(path.iterdir()):
            if len(frames) >= max_frames:
                break
            if p.suffix.lower() in _IMAGE_EXT:
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if img is not None and img.size:
                    frames.append(img)
        if not frames:
            raise CalibrationError(f"calibration folder {str(source)!r} has no readable images ({sorted(_IMAGE_EXT)})")
        return frames
    if path.suffix.lower() in _IMAGE_EXT:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise CalibrationError(f"calibration image {str(source)!r} cannot be read")
        return [img]
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        step = max(1, n // max_frames) if n > 0 else 1
        i = 0
        while cap.isOpened() and len(frames) < max_frames:
            ok, img = cap.read()
            if not ok:
                break
            if i % step == 0:
                frames.append(img)
            i += 1
    finally:
        cap.release()
    if not frames:
        raise CalibrationError(f"calibration source {str(source)!r} is neither a readable video nor an image")
    return frames


@dataclass
class QuantizeReport:
    """What quantize_model measured. Latencies are p50 ms keyed by thread count."""

    output: str | None
    mode: str
    input_hw: tuple[int, int]
    calibration_frames: int
    held_out_frames: int
    mask_iou: float
    box_recall: float
    fp32_ms: dict[int, float] = field(default_factory=dict)
    int8_ms: dict[int, float] = field(default_factory=dict)
    fp32_bytes: int = 0
    int8_bytes: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"mode            {self.mode}   input {self.input_hw[0]}x{self.input_hw[1]}   "
            f"calibration frames {self.calibration_frames}   held-out frames {self.held_out_frames}",
            f"size            FP32 {self.fp32_bytes / 1e6:.2f} MB   INT8 {self.int8_bytes / 1e6:.2f} MB",
        ]
        for t in sorted(self.fp32_ms):
            f, q = self.fp32_ms[t], self.int8_ms.get(t, float("nan"))
            out.append(f"latency p50     {t} thread{'s' if t > 1 else ' '}  FP32 {f:7.1f} ms   INT8 {q:7.1f} ms   "
                       f"speed-up {f / q:.2f}x")
        out.append(f"accuracy        mask IoU vs FP32 {self.mask_iou:.3f}   FP32 boxes matched {self.box_recall:.1%}")
        out.append(f"output          {self.output or '(not written)'}   ({self.seconds:.1f} s)")
        return out


def _fix_and_upgrade(src: Path, dst: Path, input_hw: tuple[int, int]) -> None:
    onnx = require("onnx", "quantization")
    version_converter = require("onnx.version_converter", "quantization")

    try:
        m = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends
        raise ModelLoadError(f"cannot read model {str(src)!r}: {e}") from None
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelLoadError(f"model {str(src)!r} input has rank {len(dims)}, expected [N,3,H,W]")
    for d, v in zip(dims, (1, 3, *input_hw)):
        d.ClearField("dim_param")
        d.dim_value = v
    for out in m.graph.output:
        for d in out.type.tensor_type.shape.dim:  # let shape inference fill the outputs in from the input
            d.ClearField("dim_param")
            d.ClearField("dim_value")
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        m = version_converter.convert_version(m, 17)
    onnx.save(m, str(dst))


class _Reader:
    """CalibrationDataReader over preprocessed frames."""

    def __init__(self, name: str, inputs: list[np.ndarray]) -> None:
        self._name = name
        self._it = iter(inputs)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self._name: x}

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        pass


def _p50_ms(det, frame: np.ndarray, runs: int) -> float:
    det.preprocess(frame)
    for _ in range(2):
        det.infer()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        det.infer()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def quantize_model(
    output,
    calibration=None,
    *,
    held_out=None,
    model=None,
    input_hw: tuple[int, int] = (480, 640),
    max_frames: int = 24,
    held_out_every: int = 4,
    min_iou: float = 0.85,
    dynamic: bool = False,
    threads: tuple[int, ...] = (1, 2),
    runs: int = 20,
    log=print,
) -> QuantizeReport:
    """Quantize the detector ``model`` (default: the bundled one) to INT8 and write it to ``output``.

    Args:
        output: path of the INT8 .onnx to write (only written when accuracy passes).
        calibration: video file, image file, image folder, or a list of them; default the bundled real frames.
        held_out: frames for the accuracy check only (same kinds of source); default every ``held_out_every``-th
            calibration frame, at least two (and for the default calibration, :data:`DEFAULT_HELD_OUT`).
        input_hw: the fixed input size of the INT8 model (multiples of 32).
        max_frames: frames read from the calibration sources.
        held_out_every: every n-th frame is held out for the accuracy check, never calibrated on.
        min_iou: the mask IoU against FP32 the INT8 model must reach to be written.
        dynamic: dynamic INT8 instead of static (warned against: slower on conv nets).
        threads, runs: latency measurement settings.
        log: where progress lines go (``print`` by default; None for quiet).

    Raises:
        CalibrationError: no usable frames, or the held-out frames have no text for FP32 to compare against.
        QuantizationAccuracyError: INT8 mask IoU under ``min_iou`` (nothing written).
        ModelNotFoundError, ModelLoadError, ModelInputError: the model or input_hw.
    """
    from edgepipe.stages.inference.model import TextDetector, bundled_model_path

    t_start = time.perf_counter()
    say = log or (lambda *a, **k: None)
    src = Path(model) if model else bundled_model_path()
    fp32 = TextDetector(src, input_hw=input_hw)  # checks the file, its kind and input_hw first
    if not isinstance(held_out_every, int) or held_out_every < 2:
        raise ValueError(f"held_out_every must be an int >= 2, got {held_out_every!r}")
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou!r}")
    if calibration is None:
        calibration, default_held = default_sources()
        held_out = held_out if held_out is not None else (default_held if len(default_held) >= 2 else None)
    frames = calibration_frames(calibration, max_frames)
    if held_out is not None:
        calib, held = frames, calibration_frames(held_out, max_frames)
    else:
        # every n-th frame, and at least two: one frame is too few to judge a model by
        idx = list(range(held_out_every - 1, len(frames), held_out_every))
        for i in range(len(frames) - 1, -1, -1):  # too few: the last frames too
            if len(idx) >= 2:
                break
            if i not in idx:
                idx.append(i)
        if len(frames) - len(idx) < 1:
            raise CalibrationError(
                f"{len(frames)} frame(s) from {calibration!r}: need at least 3 (calibration, and 2 held out for the "
                f"accuracy check), or give held_out frames"
            )
        held = [frames[i] for i in idx]
        calib = [f for i, f in enumerate(frames) if i not in idx]
    say(f"{len(calib)} real frames for calibration, {len(held)} held out for the accuracy check (never calibrated on)")

    require("onnxruntime.quantization", "quantization")
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    mode = "dynamic" if dynamic else "static QDQ per-channel"
    with tempfile.TemporaryDirectory(prefix="edgepipe-quant-") as tmp:
        fixed, pre, q = Path(tmp, "fixed.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        _fix_and_upgrade(src, fixed, fp32.input_hw)
        quant_pre_process(str(fixed), str(pre))
        if dynamic:
            msg = "dynamic INT8 runs ConvInteger on this conv net and was ~4x slower than FP32 here; prefer static"
            warnings.warn(msg, stacklevel=2)
            say(f"WARNING: {msg}")
            quantize_dynamic(str(pre), str(q), weight_type=QuantType.QInt8)
        else:
            inputs = [fp32.preprocess(f).copy() for f in calib]
            quantize_static(
                str(pre), str(q), _Reader(fp32._in_name, inputs), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
        int8 = TextDetector(q, input_hw=fp32.input_hw)
        inter = union = matched = total = 0
        for f in held:
            a = fp32.run(f) > fp32.post.thresh
            boxes_a = fp32.postprocess(fp32._prob[0, 0], f.shape[:2])
            b = int8.run(f) > int8.post.thresh
            boxes_b = int8.postprocess(int8._prob[0, 0], f.shape[:2])
            inter += int(np.logical_and(a, b).sum())
            union += int(np.logical_or(a, b).sum())
            total += len(boxes_a)
            matched += sum(1 for x in boxes_a if any(_box_iou(x, y) >= 0.5 for y in boxes_b))
        if union == 0:
            raise CalibrationError(
                f"the {len(held)} held-out frames contain no text for the FP32 model, so INT8 accuracy cannot be "
                f"measured; add frames with text to the calibration source {calibration!r}"
            )
        report = QuantizeReport(
            output=None, mode=mode, input_hw=fp32.input_hw, calibration_frames=len(calib), held_out_frames=len(held),
            mask_iou=inter / union, box_recall=matched / total if total else 1.0,
            fp32_bytes=src.stat().st_size, int8_bytes=q.stat().st_size,
        )
        probe = held[0]
        for t in threads:
            report.fp32_ms[t] = _p50_ms(TextDetector(src, input_hw=fp32.input_hw, intra_op_threads=t), probe, runs)
            report.int8_ms[t] = _p50_ms(TextDetector(q, input_hw=fp32.input_hw, intra_op_threads=t), probe, runs)
        report.seconds = time.perf_counter() - t_start
        if report.mask_iou < min_iou:
            for line in report.lines():
                say(line)
            raise QuantizationAccuracyError(
                f"INT8 mask IoU vs FP32 is {report.mask_iou:.3f}, under min_iou {min_iou}; {str(output)!r} not written"
            )
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(q, out)
        report.output = os.fspath(out)
    for line in report.lines():
        say(line)
    return report
