"""The text detector: one ONNX Runtime session, a preallocated input, DB post-processing.

The bundled model is PaddleOCR's PP-OCRv4 text detector (``ch_PP-OCRv4_det_infer.onnx``, Apache-2.0, taken from
the ``rapidocr-onnxruntime`` 1.4.4 wheel; see ``edgepipe/data/models/NOTICE.md``). It is vendored rather than
depended on so that the demo works offline after ``pip install .`` and so that edgepipe does not inherit that
wheel's ``Requires-Python <3.13`` cap.

Per frame, :meth:`TextDetector.run` does no allocation of its own: the frame is resized (only when its size
differs from the model input) into a preallocated buffer, then one NumPy ufunc reads it through a reversed,
transposed view (BGR -> RGB, HWC -> CHW, uint8 -> float32, ``x * 2/255``) straight into the preallocated NCHW
input, and one in-place subtraction finishes ``(x/255 - 0.5) / 0.5``. The session runs through an I/O binding
whose input and output are those preallocated arrays, so ORT writes the probability map in place too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepipe._data import data_path
from edgepipe._extras import require
from edgepipe.errors import ModelInputError, ModelLoadError, ModelNotFoundError
from edgepipe.stages.inference.postprocess import DBPostprocess, Detection

__all__ = ["ModelSpec", "TextDetector", "bundled_model_path", "fit_input_hw"]

BUNDLED_MODEL = "ch_PP-OCRv4_det_infer.onnx"
PIXEL_FORMATS = ("BGR", "RGB", "GRAY")  # what the detector takes; anything else is a bad frame
_ALIGN = 32  # the detector's feature pyramid halves H and W five times


def bundled_model_path() -> Path:
    """Path of the vendored PP-OCRv4 text detection model."""
    return data_path("models", BUNDLED_MODEL)


def _ort():
    return require("onnxruntime", "the ONNX text detector")  # lazy: importing it costs ~150 ms


def fit_input_hw(frame_hw: tuple[int, int], max_side: int = 960) -> tuple[int, int]:
    """The model input size for frames of ``frame_hw``: each side rounded to a multiple of 32, the longer side
    at most ``max_side`` (the aspect ratio is kept before rounding).

    >>> fit_input_hw((480, 640)), fit_input_hw((1080, 1920)), fit_input_hw((10, 10))
    ((480, 640), (544, 960), (32, 32))
    """
    h, w = frame_hw
    scale = min(1.0, max_side / max(h, w))
    return (max(_ALIGN, round(h * scale / _ALIGN) * _ALIGN), max(_ALIGN, round(w * scale / _ALIGN) * _ALIGN))


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker process needs to build its own :class:`TextDetector` (it travels as JSON).

    Attributes:
        path: the .onnx file; ``None`` means the bundled model.
        input_hw: model input (H, W), multiples of 32; ``None``: fixed by the model, else fitted to the first frame.
        thresh, box_thresh, unclip_ratio, max_candidates, dilate: DB post-processing, see :class:`DBPostprocess`.
    """

    path: str | None = None
    input_hw: tuple[int, int] | None = None
    thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.6
    max_candidates: int = 1000
    dilate: bool = True

    @classmethod
    def coerce(cls, model: ModelSpec | str | os.PathLike | None) -> ModelSpec:
        if model is None or isinstance(model, ModelSpec):
            return model or cls()
        if isinstance(model, (str, os.PathLike)):
            return cls(path=os.fspath(model))
        raise TypeError(f"model must be a path, a ModelSpec or None, got {model!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        d = json.loads(text)
        if d.get("input_hw") is not None:
            d["input_hw"] = tuple(d["input_hw"])
        return cls(**d)


def _file_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{path.name}@sha256:{h.hexdigest()[:12]}"


class TextDetector:
    """A DB text detector (the bundled PP-OCRv4 one by default) on one ONNX Runtime CPU session.

    Args:
        model: path of the .onnx file or a :class:`ModelSpec`; ``None`` for the bundled model.
        intra_op_threads: ORT intra-op threads (``inter_op`` is always 1).
        input_hw: model input size (H, W), multiples of 32. Default: the model's fixed size, or fitted to the
            first frame (:func:`fit_input_hw`) and kept from then on.
        spin: let ORT's intra-op threads spin while idle (faster on an otherwise idle machine with
            ``intra_op_threads`` > 1, much slower when other processes want the same cores).

    Raises:
        ModelNotFoundError: the file does not exist.
        ModelLoadError: ORT cannot load it, or it is not a [N,3,H,W] float -> [N,1,H,W] detector.
        ModelInputError: ``input_hw`` is not multiples of 32 or contradicts the model's fixed size.

    >>> det = TextDetector()                       # doctest: +SKIP
    >>> det.detect(frame_bgr)                      # doctest: +SKIP
    [Detection(x_min=38.0, y_min=52.0, x_max=322.0, y_max=94.0, score=0.87), ...]
    """

    def __init__(
        self, model: ModelSpec | str | os.PathLike | None = None, *, intra_op_threads: int = 1, input_hw=None,
        spin: bool = False,
    ) -> None:
        spec = ModelSpec.coerce(model)
        if input_hw is not None:
            spec = ModelSpec(**{**asdict(spec), "input_hw": tuple(input_hw)})
        if not isinstance(intra_op_threads, int) or intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be an int >= 1, got {intra_op_threads!r}")
        path = Path(spec.path) if spec.path else bundled_model_path()
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {str(path)!r}")
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # ORT's intra-op threads spin between parallel sections by default. Beside other processes on the same
        # cores (the other workers, the pipeline) that made 2-thread runs 2-3x slower here (53-60 ms without
        # spinning, 97-164 ms with it, machine busy), so it is off unless asked for.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf classes
            raise ModelLoadError(f"cannot load model {str(path)!r}: {e}") from None
        ins, outs = sess.get_inputs(), sess.get_outputs()
        if len(ins) != 1 or ins[0].type != "tensor(float)" or len(ins[0].shape) != 4 or ins[0].shape[1] != 3:
            got = [(i.name, i.shape, i.type) for i in ins]
            raise ModelLoadError(f"model {str(path)!r} must take one float [N,3,H,W] input, it takes {got}")
        if len(outs) < 1 or len(outs[0].shape) != 4:
            got = [(o.name, o.shape) for o in outs]
            raise ModelLoadError(f"model {str(path)!r} must output a [N,1,H,W] map, it outputs {got}")
        self.spec = spec
        self.path = path
        self.model_id = _file_id(path)
        self.intra_op_threads = intra_op_threads
        self._sess = sess
        self._in_name, self._out_name = ins[0].name, outs[0].name
        fixed = tuple(d if isinstance(d, int) and d > 0 else None for d in ins[0].shape[2:])
        self._fixed_hw = fixed if None not in fixed else None
        self._batch = ins[0].shape[0] if isinstance(ins[0].shape[0], int) and ins[0].shape[0] > 0 else None
        self.post = DBPostprocess(
            spec.thresh, spec.box_thresh, spec.unclip_ratio, spec.max_candidates, dilate=spec.dilate
        )
        self._hw: tuple[int, int] | None = None
        if spec.input_hw is not None or self._fixed_hw is not None:
            self._allocate(spec.input_hw or self._fixed_hw)

    # -- buffers ------------------------------------------------------------------------------------------------
    def _allocate(self, hw) -> None:
        try:
            h, w = (int(v) for v in hw)
        except (TypeError, ValueError):
            raise ModelInputError(f"input_hw must be (H, W), got {hw!r}") from None
        if h < _ALIGN or w < _ALIGN or h % _ALIGN or w % _ALIGN:
            raise ModelInputError(f"input_hw must be multiples of {_ALIGN} (>= {_ALIGN}), got {hw!r}")
        if self._fixed_hw is not None and (h, w) != self._fixed_hw:
            raise ModelInputError(f"model {self.path.name!r} takes input {self._fixed_hw} only, got input_hw {hw!r}")
        self._hw = (h, w)
        self._resized = np.empty((h, w, 3), np.uint8)
        self._resized_gray = np.empty((h, w), np.uint8)
        self._input = np.zeros((1, 3, h, w), np.float32)
        self._prob = np.zeros((1, 1, h, w), np.float32)
        io = self._sess.io_binding()
        io.bind_cpu_input(self._in_name, self._input)
        io.bind_output(self._out_name, "cpu", 0, np.float32, list(self._prob.shape), self._prob.ctypes.data)
        self._io = io

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """Model input (H, W); None until fixed by the model, the constructor or the first frame."""
        return self._hw

    @property
    def input_array(self) -> np.ndarray:
        """The preallocated (1, 3, H, W) float32 input (filled by :meth:`preprocess`)."""
        return self._input

    # -- per frame ----------------------------------------------------------------------------------------------
    @staticmethod
    def check_frame(frame: np.ndarray, pixel_format: str = "BGR") -> None:
        """Raise :class:`ModelInputError` unless ``frame`` is a uint8 image the detector can take."""
        if not isinstance(frame, np.ndarray):
            raise ModelInputError(f"frame must be a numpy array, got {type(frame).__name__}")
        if pixel_format not in PIXEL_FORMATS:
            raise ModelInputError(f"pixel format {pixel_format!r} not supported; use one of {PIXEL_FORMATS}")
        if frame.dtype != np.uint8:
            raise ModelInputError(f"frame dtype must be uint8, got {frame.dtype} (shape {frame.shape})")
        gray = pixel_format == "GRAY"
        ok = (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1)) if gray else (
            frame.ndim == 3 and frame.shape[2] == 3
        )
        if not ok or frame.shape[0] < 1 or frame.shape[1] < 1:
            want = "(H, W) or (H, W, 1)" if gray else "(H, W, 3)"
            raise ModelInputError(f"{pixel_format} frame must have shape {want}, got {frame.shape}")

    def preprocess(self, frame: np.ndarray, pixel_format: str = "BGR") -> np.ndarray:
        """Fill the preallocated NCHW input from ``frame`` and return it (no allocation once sized)."""
        self.check_frame(frame, pixel_format)
        if self._hw is None:
            self._allocate(self.spec.input_hw or fit_input_hw(frame.shape[:2]))
        h, w = self._hw
        gray = pixel_format == "GRAY"
        src = frame[:, :, 0] if gray and frame.ndim == 3 else frame
        if src.shape[:2] != (h, w):
            cv2 = _cv2()
            dst = self._resized_gray if gray else self._resized
            src = cv2.resize(src, (w, h), dst=dst, interpolation=cv2.INTER_LINEAR)
        if gray:
            chw = np.broadcast_to(src, (3, h, w))
        elif pixel_format == "BGR":
            chw = src[:, :, ::-1].transpose(2, 0, 1)  # a view: BGR -> RGB and HWC -> CHW without a copy
        else:
            chw = src.transpose(2, 0, 1)
        x = self._input[0]
        np.multiply(chw, np.float32(2.0 / 255.0), out=x, casting="unsafe")
        np.subtract(x, np.float32(1.0), out=x)  # (v/255 - 0.5) / 0.5
        return self._input

    def infer(self) -> np.ndarray:
        """Run the session on the current input; returns the (H, W) probability map (an internal buffer)."""
        self._sess.run_with_iobinding(self._io)
        return self._prob[0, 0]

    def run(self, frame: np.ndarray, pixel_format: str = "BGR") -> np.ndarray:
        """preprocess + infer: the (H, W) probability map of ``frame`` (valid until the next call)."""
        self.preprocess(frame, pixel_format)
        return self.infer()

    def postprocess(self, prob: np.ndarray, frame_hw: tuple[int, int]) -> list[Detection]:
        """Boxes of the last map in the pixels of a frame of ``frame_hw``."""
        fh, fw = frame_hw
        h, w = prob.shape
        return self.post(prob, (fw / w, fh / h), (fw, fh))

    def detect(self, frame: np.ndarray, pixel_format: str = "BGR") -> list[Detection]:
        """Text boxes of ``frame`` in its own pixel coordinates, with scores."""
        return self.postprocess(self.run(frame, pixel_format), frame.shape[:2])

    def __repr__(self) -> str:
        return f"<TextDetector {self.model_id} input_hw={self._hw} threads={self.intra_op_threads}>"


def _cv2():
    return require("cv2", "resizing frames for the detector")
