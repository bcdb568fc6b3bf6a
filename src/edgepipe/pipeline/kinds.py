"""The built-in kinds' factories: the sensor, camera and inference stages take their ring ends wrapped in
their own reader and writer types; these build them from the bare ends a stage process is handed
(registered as ``capture``, ``imu`` and ``inference`` in edgepipe.pipeline.config, resolved by import path).

Each factory's keywords without a default are its ports, documented in its ``Inputs:`` / ``Outputs:``
sections; its own params in ``Args:``; and its ``**params`` go to the stage class named by its ``forwards``
attribute (less ``supplies``, which the factory builds itself), whose signature and docstring document them
(edgepipe.pipeline.params reads all of it for checking and for ``edgepipe kinds``).

>>> from edgepipe.pipeline.config import stage_kinds
>>> stage_kinds()["inference"]
'edgepipe.pipeline.kinds:inference_kind'
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []  # shared inside edgepipe.pipeline, not public API


def _forwards(target: str, supplies: tuple[str, ...] = ()):
    def mark(fn):
        fn.forwards, fn.supplies = target, supplies
        return fn
    return mark


@_forwards("edgepipe.stages.capture:CaptureStage")
def capture_kind(name: str, output, source: Any = None, video: str | None = None, **params: Any):
    """Frames from a video file, a folder of images, a camera or a stream, published as numpy frame records
    (OpenCV; edgepipe.stages.capture.CaptureStage).

    Args:
        source: a camera index or ``/dev/videoN``, an ``rtsp://``/``http://`` URL, ``"pattern"``, or a file or
            folder (see edgepipe.stages.capture.open_source); ``video`` is the same for files.
        video: a video file or a folder of images (relative to the pipeline file; ``pkg:`` names a file
            shipped with edgepipe).

    Outputs:
        output: the frames: a lossless or drop ring, or a ``latest`` slot.
    """
    from edgepipe.stages.capture import CaptureStage
    from edgepipe.frames import FrameWriter
    from edgepipe.ring import RingWriter

    out = FrameWriter(output) if isinstance(output, RingWriter) else output
    src = source if source is not None else video
    if src is None:
        raise ValueError(f"capture stage {name!r} needs params.video (a file) or params.source")
    return CaptureStage(src, out, name=name, **params)


@_forwards("edgepipe.stages.imu:ImuStage", supplies=("source",))
def imu_kind(name: str, output, recording: str | None = None, csv: str | None = None, synthetic: bool = False,
             source_params: dict[str, Any] | None = None, **params: Any):
    """IMU samples at a fixed rate from the C loop with AHRS attitude, as 192-byte ImuSample records
    (edgepipe.stages.imu.ImuStage).

    Args:
        recording: a bundled recording by name (default ``"ngimu"``) or a CSV file: played back as the source.
        csv: a CSV file of samples (relative to the pipeline file); takes precedence over ``recording``.
        synthetic: a synthetic source (a known motion, no file) instead of a recording.
        source_params: keywords of the source (CsvSource or SyntheticSource), e.g. ``{ resample_hz = 1000,
            loop = true }``.

    Outputs:
        output: the samples (a ring of capacity >= 512).
    """
    from edgepipe.stages.imu import CsvSource, ImuStage, SyntheticSource

    sp = dict(source_params or {})
    src = SyntheticSource(**sp) if synthetic else CsvSource(csv or recording or "ngimu", **sp)
    return ImuStage(src, output=output, name=name, **params)


@_forwards("edgepipe.stages.inference:InferenceStage", supplies=("model",))
def inference_kind(name: str, input, output, model: str | None = None, input_hw: list[int] | None = None,  # noqa: A002
                   **params: Any):
    """A text detector (ONNX Runtime) on every frame in worker processes, publishing InferenceResult
    records (edgepipe.stages.inference.InferenceStage).

    Args:
        model: path of a .onnx detector (relative to the pipeline file); default the bundled one.
        input_hw: the model input ``[H, W]`` (multiples of 32); default fitted to the first frame (longer
            side at most 960). A larger input finds smaller text, slower (an offload server's choice).

    Inputs:
        input: the frames (a lossless or drop ring, or a ``latest`` slot).

    Outputs:
        output: one serialized edgepipe.v1.InferenceResult per frame.
    """
    from edgepipe.frames import FrameReader
    from edgepipe.stages.inference import InferenceStage
    from edgepipe.ring import RingReader

    from edgepipe.stages.inference import ModelSpec

    inp = FrameReader(input) if isinstance(input, RingReader) else input
    if input_hw is not None:
        if (not isinstance(input_hw, (list, tuple)) or len(input_hw) != 2
                or not all(isinstance(v, int) and v > 0 and v % 32 == 0 for v in input_hw)):
            raise ValueError(f"inference stage {name!r}: input_hw must be [H, W], multiples of 32, got {input_hw!r}")
        return InferenceStage(inp, output, ModelSpec(path=model, input_hw=(input_hw[0], input_hw[1])), name=name,
                              **params)
    return InferenceStage(inp, output, model, name=name, **params)
