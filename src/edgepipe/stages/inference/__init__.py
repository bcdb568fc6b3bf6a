"""Inference on frames: the bundled PP-OCRv4 text detector and the multiprocess :class:`InferenceStage`.

- :class:`TextDetector` (``model.py``): one ONNX Runtime session, preallocated NCHW input, DB post-processing.
- :class:`DBPostprocess` (``postprocess.py``): probability map -> :class:`Detection` boxes with scores.
- :class:`InferenceStage` (``stage.py``): N worker processes fed through per-worker shared-memory rings.

onnxruntime and OpenCV are imported only when a detector is built or a map is post-processed.

>>> from edgepipe.stages.inference import bundled_model_path
>>> bundled_model_path().name, bundled_model_path().stat().st_size
('ch_PP-OCRv4_det_infer.onnx', 4745517)
"""

from edgepipe.stages.inference.model import ModelSpec, TextDetector, bundled_model_path, fit_input_hw
from edgepipe.stages.inference.postprocess import DBPostprocess, Detection
from edgepipe.stages.inference.stage import RESULT_TYPE_ID, InferenceStage  # noqa: F401 - RESULT_TYPE_ID: the record type

__all__ = [
    "DBPostprocess",
    "Detection",
    "InferenceStage",
    "ModelSpec",
    "TextDetector",
    "bundled_model_path",
    "fit_input_hw",
]
